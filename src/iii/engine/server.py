"""The engine's WebSocket server: picows listeners pumping frames into the router.

Path ``/`` carries the worker protocol, ``/otel`` is the SDKs' telemetry socket (accepted and
drained, never a worker); anything else is answered 404. Each frame is handled inside the picows
callback; messages fragmented over several frames are reassembled up to 64 MiB. What the router
sends goes out at once, except while a read that brought several frames is processed: then it is
written once per worker when the read's last frame is done.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any, Optional

from picows import WSCloseCode, WSFrame, WSListener, WSMsgType, WSTransport, WSUpgradeRequest, ws_create_server

from iii import __version__
from iii.codec import IMPLEMENTATION
from iii.engine.config import EngineConfig, ListenerConfig
from iii.engine.registry import Connection
from iii.engine.router import Router
from iii.protocol import MAX_MESSAGE_SIZE
from iii.workers import install_modules

if IMPLEMENTATION == "c":  # the compiled codec is in use: the compiled frame path goes with it
    try:
        from iii.engine._frames import FrameListener
    except ImportError:
        from iii.engine._frames_py import FrameListener
else:
    from iii.engine._frames_py import FrameListener

__all__ = ["Engine"]

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


def _now_ms() -> int:
    return int(time.time() * 1000)


def _answer_close(transport: WSTransport, frame: WSFrame) -> None:
    transport.send_close(frame.get_close_code())
    transport.disconnect()


class WorkerListener(FrameListener):
    """One worker connection on ``/`` (the per-frame path is in the ``FrameListener`` twins)."""

    __slots__ = (
        "_grace", "_parts", "_parts_size", "_skipping",
        "_paused_at", "_stall_check", "_write",
    )

    def __init__(self, engine: Engine) -> None:
        self._engine = engine
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
    """An engine process: one router, one picows server per configured listener."""

    def __init__(self, config: EngineConfig) -> None:
        self.config = config
        self.router: Router = None  # type: ignore[assignment]  # made in start(), on the loop
        self.listeners: set[WorkerListener] = set()
        #: A read brought several frames: what they produce is queued per worker until it ends.
        self.batching = False
        #: Listeners with frames queued in this batch.
        self.dirty: list[WorkerListener] = []
        self._servers: list[asyncio.AbstractServer] = []
        #: The in-process modules (iii.workers), installed at start.
        self.modules: list[Any] = []
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

    def _route(self, request: WSUpgradeRequest) -> Any:
        path = request.path.split(b"?", 1)[0].rstrip(b"/")
        if path == b"":
            return WorkerListener(self)
        if path == b"/otel":
            return TelemetryListener()
        return None  # picows answers 404

    async def start(self) -> list[str]:
        """Bind every listener; returns their ``ws://`` URLs (with the real port for port 0)."""
        loop = asyncio.get_running_loop()
        self.router = Router(
            grace_ms=self.config.grace_ms,
            now_ms=_now_ms(),
            defer=loop.call_soon,
            version=__version__,
        )
        self.modules = install_modules(self.router, self.config.modules, _now_ms())
        for module in self.modules:
            if hasattr(module, "start"):
                await module.start()
        for listener in self.config.listeners:
            server = await self._serve(listener)
            self._servers.append(server)
            for sock in server.sockets:
                host, port = sock.getsockname()[:2]
                url = f"ws://{host}:{port}" if ":" not in host else f"ws://[{host}]:{port}"
                self.urls.append(url)
                log.info("iii engine %s listening on %s", __version__, url)
        return self.urls

    async def _serve(self, listener: ListenerConfig) -> asyncio.AbstractServer:
        return await ws_create_server(
            self._route,
            listener.host,
            listener.port,
            websocket_handshake_timeout=listener.handshake_timeout_ms / 1000,
            max_frame_size=MAX_MESSAGE_SIZE,
            enable_auto_pong=True,
            disconnect_on_exception=False,
            reuse_address=True,
        )

    async def stop(self) -> None:
        """Stop accepting, close every worker socket (their cleanup runs), release the ports."""
        for server in self._servers:
            server.close()
        for listener in list(self.listeners):
            listener.shutdown()
        for server in self._servers:
            await server.wait_closed()
        self._servers.clear()
        for module in self.modules:
            if hasattr(module, "stop"):
                await module.stop()
