"""The engine's WebSocket server: picows listeners pumping frames into the router.

Path ``/`` carries the worker protocol, ``/otel`` is the SDKs' telemetry socket (accepted and
drained, never a worker); anything else is answered 404. Each frame is handled inside the picows
callback; messages fragmented over several frames are reassembled up to 64 MiB. What the router
sends goes out at once, except while a read that brought several frames is processed: then it is
written once per worker when the read's last frame is done.

Every connection is pinged every ``ping_interval_ms``; one that has sent nothing (not even a
pong) for ``idle_timeout_ms`` is dropped, so a worker whose process stopped without closing its
socket does not keep calls waiting. One timer expires the engine's own calls at their deadlines.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Annotated, Any, Optional

import msgspec
from msgspec import Meta
from picows import WSCloseCode, WSFrame, WSListener, WSMsgType, WSTransport, WSUpgradeRequest, ws_create_server

from iii._version import __version__
from iii.engine.frames import FrameListener
from iii.engine.registry import Connection
from iii.engine.router import Router
from iii.protocol import DEFAULT_GRACE_MS, DEFAULT_HOST, DEFAULT_PORT, MAX_MESSAGE_SIZE

__all__ = ["Engine", "ListenerConfig"]

log = logging.getLogger("iii.engine")

_TEXT = WSMsgType.TEXT
_BINARY = WSMsgType.BINARY
_CONTINUATION = WSMsgType.CONTINUATION
_CLOSE = WSMsgType.CLOSE
#: Outbound bytes buffered for a worker before the engine watches whether it still reads.
_HIGH_WATER = 4 * 1024 * 1024
#: A worker that does not read is dropped once this much waits for it, or after this long.
STALLED_BUFFER_LIMIT = 256 * 1024 * 1024
STALLED_GRACE_S = 30.0
_STALL_CHECK_S = 0.5
#: Binary frames with these prefixes are OpenTelemetry payloads, not protocol messages.
_TELEMETRY_PREFIXES = (b"OTLP", b"MTRC", b"LOGS")


_SMALL_TEXT_HEADERS = tuple(bytes((0x81, size)) for size in range(126))


def _text_header(size: int) -> bytes:
    """Header of a final, unmasked text frame (what a server sends) of ``size`` bytes."""
    if size < 126:
        return _SMALL_TEXT_HEADERS[size]
    if size < 65536:
        return b"\x81\x7e" + size.to_bytes(2, "big")
    return b"\x81\x7f" + size.to_bytes(8, "big")


class ListenerConfig(msgspec.Struct, forbid_unknown_fields=True):
    """One worker WebSocket listener (the ``config`` of an ``iii-worker-manager`` entry)."""

    host: Annotated[str, Meta(min_length=1)] = DEFAULT_HOST
    port: Annotated[int, Meta(ge=0, le=65535)] = DEFAULT_PORT
    handshake_timeout_ms: Annotated[int, Meta(ge=1, le=3_600_000)] = 10000
    #: How often each connection is pinged.
    ping_interval_ms: Annotated[int, Meta(ge=100, le=3_600_000)] = 20_000
    #: A connection that sent nothing for this long is dropped (its callers get
    #: ``invocation_stopped``).
    idle_timeout_ms: Annotated[int, Meta(ge=100, le=3_600_000)] = 60_000


def _now_ms() -> int:
    return int(time.time() * 1000)


def _answer_close(transport: WSTransport, frame: WSFrame) -> None:
    transport.send_close(frame.get_close_code())
    transport.disconnect()


class WorkerListener(FrameListener):
    """One worker connection on ``/`` (the per-frame path is in the ``FrameListener`` twins)."""

    __slots__ = (
        "_grace", "_parts", "_parts_size", "_skipping",
        "_paused_at", "_stall_check", "_write", "_idle_since", "_config",
    )

    def __init__(self, engine: Engine, config: ListenerConfig) -> None:
        self._engine = engine
        self._config = config
        self._forward = engine.router.forward  # bound once: called for every frame
        self._handle = engine.router.handle
        self._transport: Optional[WSTransport] = None
        self._conn: Optional[Connection] = None
        self._grace: Optional[asyncio.TimerHandle] = None
        self._parts: list[bytes] = []
        self._parts_size = 0
        self._skipping = False  # discarding the rest of an oversized fragmented message
        self._paused_at = 0.0
        self._stall_check: Optional[asyncio.TimerHandle] = None
        #: Messages for this worker waiting for the end of the batch.
        self._out: list[bytes] = []
        self._write: Any = None
        #: Set by every frame the worker sends (the frame path does it, cheaply).
        self._heard = True
        #: When the heartbeat first found it silent (loop time), or ``None``.
        self._idle_since: Optional[float] = None

    def on_ws_connected(self, transport: WSTransport) -> None:
        self._transport = transport
        transport.underlying_transport.set_write_buffer_limits(high=_HIGH_WATER)
        self._engine.listeners.add(self)
        peer = transport.underlying_transport.get_extra_info("peername")
        router = self._engine.router
        self._write = transport.underlying_transport.writelines
        self._conn = conn = router.connect(self._send, self._close, peer[0] if peer else None, _now_ms())
        self._caller = conn.caller_field
        self._grace = asyncio.get_running_loop().call_later(
            router.grace_ms / 1000, router.expire_grace, conn
        )

    def flush(self) -> None:
        out = self._out
        if not out:
            return
        self._out = []
        transport = self._transport
        if transport is None or transport.is_disconnected:
            return
        if len(out) == 1:  # the common case at low load: picows frames it in C
            transport.send(_TEXT, out[0])
            return
        frames = []
        for data in out:
            frames.append(_text_header(len(data)))
            frames.append(data)
        self._write(frames)

    def _close(self) -> None:
        self.flush()  # what was sent before the close (a rejection, say) goes first
        transport = self._transport
        if transport is not None and not transport.is_disconnected:
            transport.send_close(WSCloseCode.OK)
            transport.disconnect()

    def _frame_failed(self) -> None:
        log.exception("worker %s: frame handling failed", self._conn.id)  # type: ignore[union-attr]

    def _other_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        msg_type = frame.msg_type
        if msg_type is _TEXT or msg_type is _BINARY:
            if frame.fin:
                self._deliver(frame.get_payload_as_bytes(), msg_type is _BINARY)
                return
            self._parts = [frame.get_payload_as_bytes()]
            self._parts_size = frame.payload_size
            self._skipping = False
        elif msg_type is _CONTINUATION:
            if not self._skipping:
                self._parts_size += frame.payload_size
                if self._parts_size > MAX_MESSAGE_SIZE:
                    self._skipping = True
                    self._parts = []
                    self._conn.frames_dropped += 1  # type: ignore[union-attr]
                    log.warning(
                        "worker %s: dropped a message larger than %d bytes",
                        self._conn.id,  # type: ignore[union-attr]
                        MAX_MESSAGE_SIZE,
                    )
                else:
                    self._parts.append(frame.get_payload_as_bytes())
            if frame.fin:
                parts, self._parts = self._parts, []
                if not self._skipping and parts:
                    self._deliver(b"".join(parts), False)
                self._skipping = False
        elif msg_type is _CLOSE:
            _answer_close(transport, frame)

    def _deliver(self, payload: bytes, binary: bool) -> None:
        if not (binary and payload[:4] in _TELEMETRY_PREFIXES):
            self._engine.router.receive(self._conn, payload)

    def pause_writing(self) -> None:
        """The worker is not keeping up with what it is sent: watch it (it may be stuck)."""
        if self._stall_check is None:
            loop = asyncio.get_running_loop()
            self._paused_at = loop.time()
            self._stall_check = loop.call_later(_STALL_CHECK_S, self._check_stalled)

    def resume_writing(self) -> None:
        if self._stall_check is not None:
            self._stall_check.cancel()
            self._stall_check = None

    def _check_stalled(self) -> None:
        """Drop a worker that stopped reading before what waits for it exhausts memory."""
        transport = self._transport
        loop = asyncio.get_running_loop()
        waiting = transport.underlying_transport.get_write_buffer_size()  # type: ignore[union-attr]
        if waiting > STALLED_BUFFER_LIMIT or loop.time() - self._paused_at > STALLED_GRACE_S:
            log.warning(
                "worker %s is not reading (%d bytes waiting for it): disconnecting it",
                self._conn.id,  # type: ignore[union-attr]
                waiting,
            )
            self._stall_check = None
            transport.disconnect(graceful=False)  # type: ignore[union-attr]
        else:
            self._stall_check = loop.call_later(_STALL_CHECK_S, self._check_stalled)

    def on_ws_disconnected(self, transport: WSTransport) -> None:
        self._out = []
        if self._stall_check is not None:
            self._stall_check.cancel()
        if self._grace is not None:
            self._grace.cancel()
        if self._conn is not None:
            try:
                self._engine.router.disconnect(self._conn)
            except Exception:
                log.exception("worker %s: cleanup failed", self._conn.id)
        self._engine.listeners.discard(self)

    def heartbeat(self, now: float) -> None:
        """Ping the worker; drop it when it has been silent for ``idle_timeout_ms``."""
        transport = self._transport
        if transport is None or transport.is_disconnected:
            return
        if self._heard:
            self._heard = False
            self._idle_since = now
        elif self._idle_since is not None and now - self._idle_since >= self._config.idle_timeout_ms / 1000:
            log.warning(
                "worker %s sent nothing for %d ms (not even a pong): disconnecting it",
                self._conn.id,  # type: ignore[union-attr]
                self._config.idle_timeout_ms,
            )
            transport.disconnect(graceful=False)
            return
        transport.send_ping()

    def shutdown(self) -> None:
        self.flush()
        transport = self._transport
        if transport is not None and not transport.is_disconnected:
            transport.send_close(WSCloseCode.GOING_AWAY)
            transport.disconnect()


class TelemetryListener(WSListener):
    """The SDKs' ``/otel`` socket: accepted and drained (telemetry is not ingested yet)."""

    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        if frame.msg_type is _CLOSE:
            _answer_close(transport, frame)


class Engine:
    """One router and a picows server per listener: :meth:`open` makes the router (on the running
    loop), :meth:`listen` binds the listeners, :meth:`stop` ends it all.

    Args:
        listeners: the worker listeners to serve.
        grace_ms: how long a connection's registrations wait for its namespace.
    """

    def __init__(self, listeners: list[ListenerConfig], grace_ms: int = DEFAULT_GRACE_MS) -> None:
        self._listener_configs = listeners
        self._grace_ms = grace_ms
        self.router: Router = None  # type: ignore[assignment]  # made in open(), on the loop
        self.listeners: set[WorkerListener] = set()
        #: A read brought several frames: what they produce is queued per worker until it ends.
        self.batching = False
        #: Listeners with frames queued in this batch.
        self.dirty: list[WorkerListener] = []
        self._servers: list[asyncio.AbstractServer] = []
        #: Listener config -> its next heartbeat.
        self._heartbeats: dict[int, asyncio.TimerHandle] = {}
        #: The timer that expires the engine's own calls at their deadline.
        self._expiry: Optional[asyncio.TimerHandle] = None
        self._expiry_due_ms = 0
        self.urls: list[str] = []

    def start_batch(self) -> None:
        if not self.batching:
            self.batching = True
            # picows may stop delivering a read's frames early (a protocol error in the next one):
            # the batch then ends on the next loop iteration instead of waiting for another read.
            asyncio.get_running_loop().call_soon(self.end_batch)

    def end_batch(self) -> None:
        """Write every worker's queued frames, one write per worker."""
        self.batching = False
        dirty, self.dirty = self.dirty, []
        for listener in dirty:
            listener.flush()

    def open(self) -> Router:
        """Make the router, on the running loop (whoever assembles the engine installs its
        functions and modules on it before :meth:`listen`)."""
        loop = asyncio.get_running_loop()
        self.router = Router(
            grace_ms=self._grace_ms,
            clock=_now_ms,
            defer=loop.call_soon,
            wake=self._expire_at,
            version=__version__,
        )
        return self.router

    def _expire_at(self, deadline_ms: int) -> None:
        """Have the router's due calls expired at ``deadline_ms`` (or earlier, if already due)."""
        if self._expiry is not None:
            if self._expiry_due_ms <= deadline_ms:
                return
            self._expiry.cancel()
        self._expiry_due_ms = deadline_ms
        delay = max(0.0, (deadline_ms - _now_ms()) / 1000)
        self._expiry = asyncio.get_running_loop().call_later(delay, self._expire)

    def _expire(self) -> None:
        self._expiry = None
        next_deadline = self.router.expire_calls()
        if next_deadline is not None:
            self._expire_at(next_deadline)

    def _heartbeat(self, config: ListenerConfig) -> None:
        """Ping the connections of one listener (and drop the silent ones); come back later."""
        loop = asyncio.get_running_loop()
        now = loop.time()
        for listener in list(self.listeners):
            if listener._config is config:
                listener.heartbeat(now)
        self._heartbeats[id(config)] = loop.call_later(config.ping_interval_ms / 1000, self._heartbeat, config)

    async def listen(self) -> list[str]:
        """Bind every listener; returns their ``ws://`` URLs (with the real port for port 0)."""
        loop = asyncio.get_running_loop()
        for config in self._listener_configs:
            server = await self._serve(config)
            self._servers.append(server)
            self._heartbeats[id(config)] = loop.call_later(config.ping_interval_ms / 1000, self._heartbeat, config)
            for sock in server.sockets:
                host, port = sock.getsockname()[:2]
                url = f"ws://{host}:{port}" if ":" not in host else f"ws://[{host}]:{port}"
                self.urls.append(url)
                log.info("iii engine %s listening on %s", __version__, url)
        return self.urls

    async def _serve(self, config: ListenerConfig) -> asyncio.AbstractServer:
        def route(request: WSUpgradeRequest) -> Any:
            path = request.path.split(b"?", 1)[0].rstrip(b"/")
            if path == b"":
                return WorkerListener(self, config)
            if path == b"/otel":
                return TelemetryListener()
            return None  # picows answers 404

        return await ws_create_server(
            route,
            config.host,
            config.port,
            websocket_handshake_timeout=config.handshake_timeout_ms / 1000,
            max_frame_size=MAX_MESSAGE_SIZE,
            enable_auto_pong=True,
            disconnect_on_exception=False,
            reuse_address=True,
        )

    async def stop(self) -> None:
        """Stop accepting, close every worker socket (their cleanup runs), release the ports."""
        for timer in self._heartbeats.values():
            timer.cancel()
        self._heartbeats.clear()
        if self._expiry is not None:
            self._expiry.cancel()
            self._expiry = None
        for server in self._servers:
            server.close()
        for listener in list(self.listeners):
            listener.shutdown()
        for server in self._servers:
            await server.wait_closed()
        self._servers.clear()
