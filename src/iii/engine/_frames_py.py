# cython: annotation_typing=False
# (Cython takes its types from _frames.pxd only: the annotations are for readers and mypy.)
"""The picows listeners: a worker's connection on ``/``, the SDKs' telemetry socket on ``/otel``.

This file is both twins. Run as Python it is the readable reference; Cython compiles the same
source into ``iii.engine._frames`` with ``_frames.pxd`` declaring ``WorkerListener`` a ``cdef``
subclass of picows' ``WSListener`` (its Cython API): picows then calls its callbacks through the C
vtable, the frame's fields are C fields, and a call is routed straight from picows' read buffer
(the forwarded frame is the only copy made of it). :mod:`iii.engine.frames` picks one.

Each frame is handled inside the picows callback: ``Router.forward`` what ``route_frame`` routes,
``Router.handle`` the rest; messages fragmented over several frames are reassembled up to 64 MiB.
What the router sends goes out at once, except while a read that brought several frames is
processed: then it is written once per worker when the read's last frame is done. A worker that
stops reading is dropped (its listener's ``max_write_buffer_bytes`` / ``stall_timeout_ms``); one that sends
nothing, not even a pong, for ``idle_timeout_ms`` too.
"""

from __future__ import annotations

import asyncio
import logging
import time
from functools import partial
from typing import Any, Optional

from picows import WSCloseCode

from iii.codec import route_frame
from iii.engine import ticker
from iii.engine.rbac import Session, auth_error_frame
from iii.protocol import CALL_CHANNEL_HEADER, MAX_MESSAGE_SIZE

try:
    import cython  # type: ignore[import-untyped]
except ImportError:  # Cython only builds the compiled twin; without it this runs as Python
    from types import SimpleNamespace

    cython = SimpleNamespace(compiled=False)

if cython.compiled:  # picows' C types are cimported by _frames.pxd
    from iii._codec import ROUTE_RESULT
else:
    from picows import WSFrame, WSListener, WSMsgType, WSTransport

__all__ = ["TelemetryListener", "WorkerListener"]

log = logging.getLogger("iii.engine")

_TEXT = WSMsgType.TEXT
_BINARY = WSMsgType.BINARY
_CONTINUATION = WSMsgType.CONTINUATION
_CLOSE = WSMsgType.CLOSE
#: Outbound bytes buffered for a worker before the engine watches whether it still reads.
_HIGH_WATER = 4 * 1024 * 1024
_STALL_CHECK_S = 0.5
#: What a connection may send while its auth call runs (replayed once it is admitted).
_MAX_EARLY_FRAMES = 256
_MAX_EARLY_BYTES = 4 * 1024 * 1024
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


class WorkerListener(WSListener):
    """One worker connection on ``/``.

    Args:
        engine: the :class:`~iii.engine.server.Engine` (its router, batch and listener set).
        config: the :class:`~iii.engine.server.ListenerConfig` it was accepted on.
    """

    __slots__ = (
        "_engine", "_config", "_conn", "_caller", "_forward", "_handle", "_transport", "_out",
        "_write", "_heard", "_idle_since", "_grace", "_parts", "_parts_size", "_skipping",
        "_paused_at", "_stall_check", "_policy", "_early", "_early_size",
    )

    def __init__(self, engine: Any, config: Any) -> None:
        self._engine = engine
        self._config = config
        self._forward = engine.router.forward  # bound once: called for every frame
        self._handle = engine.router.handle
        self._transport: Optional[WSTransport] = None
        self._conn: Any = None
        #: The connection's ``caller_field`` (what ``route_frame`` splices into calls it makes).
        self._caller: bytes = b""
        self._grace: Any = None  # the namespace grace timer (a ticker's, for the default 5 s)
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
        #: The listener's RBAC policy (``None``: a trusted listener, calls take the fast path).
        self._policy: Any = None
        #: Frames received while the auth call runs (``_MAX_EARLY_*`` bounds them).
        self._early: list[bytes] = []
        self._early_size = 0

    def on_ws_connected(self, transport: WSTransport) -> None:
        self._transport = transport
        transport.underlying_transport.set_write_buffer_limits(high=_HIGH_WATER)
        self._engine.listeners.add(self)
        self._write = transport.underlying_transport.writelines
        peer = transport.underlying_transport.get_extra_info("peername")
        ip = peer[0] if peer else None
        call_channel = transport.request.headers.get(CALL_CHANNEL_HEADER)
        if call_channel is not None:
            self._admit_call_channel(call_channel, ip)
            return
        self._policy = policy = self._engine.policy_of(self._config)
        if policy is None:
            self._admit(None, ip)
            return
        # Nothing is registered (not even `workerregistered` sent) until the auth call says who
        # this is; what the worker sends meanwhile waits, bounded.
        self._forward = _decline
        self._handle = self._hold_early
        policy.authenticate(self._engine.router, transport.request, ip, partial(self._authenticated, ip=ip))

    def _admit(self, session: Optional[Session], ip: Optional[str]) -> None:
        router = self._engine.router
        self._conn = conn = router.connect(self._send, self._close, ip, _now_ms(), session)
        self._caller = conn.caller_field
        conn.buffered = self._transport.underlying_transport.get_write_buffer_size
        self._grace = ticker.call_later(router.grace_ms / 1000, router.expire_grace, conn)

    def _admit_call_channel(self, header: str, ip: Optional[str]) -> None:
        """A worker's call channel: admitted on its worker's proof, with no auth call of its own
        (it acts as that worker); refused (closed) when the proof names no live worker."""
        router = self._engine.router
        owner_id, _, owner_token = header.partition(" ")
        conn = router.connect_call_channel(owner_id, owner_token, self._send, self._close, ip, _now_ms())
        if conn is None:
            log.debug("refused a call channel for worker %r: no such worker connected, or a wrong token", owner_id[:64])
            self._transport.send_close(WSCloseCode.POLICY_VIOLATION)  # type: ignore[union-attr]
            self._transport.disconnect()  # type: ignore[union-attr]
            return
        self._conn = conn
        self._caller = conn.caller_field
        conn.buffered = self._transport.underlying_transport.get_write_buffer_size  # type: ignore[union-attr]
        if conn.session is not None:
            self._forward = router.forward_answer
        self._handle = router.handle_call_channel

    def _authenticated(self, session: Optional[Session], reason: Optional[str], ip: Optional[str]) -> None:
        transport = self._transport
        if transport is None or transport.is_disconnected:
            return
        if session is None:
            self._policy.log_refusal(ip, reason or "", asyncio.get_running_loop().time())
            self._early = []
            transport.send(_TEXT, auth_error_frame(reason or "authentication failed"))
            transport.send_close(WSCloseCode.OK)
            transport.disconnect()
            return
        router = self._engine.router
        self._admit(session, ip)
        self._forward = router.forward_answer
        self._handle = router.handle
        early, self._early = self._early, []
        for payload in early:
            router.receive(self._conn, payload)

    def _hold_early(self, conn: Any, payload: bytes) -> None:
        """A frame that arrived before the connection was admitted: kept for after the auth."""
        if self._conn is not None:  # admitted meanwhile (a reassembled fragment)
            self._engine.router.receive(self._conn, payload)
            return
        self._early.append(payload)
        self._early_size += len(payload)
        if len(self._early) > _MAX_EARLY_FRAMES or self._early_size > _MAX_EARLY_BYTES:
            log.warning("a connection sent more than %d frames before it was authenticated: disconnecting it", _MAX_EARLY_FRAMES)
            self._early = []
            self._transport.disconnect(graceful=False)  # type: ignore[union-attr]

    def _who(self) -> str:
        return f"worker {self._conn.id}" if self._conn is not None else "a connection being authenticated"

    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        """The per-frame path: route whole text messages, send what the router answers."""
        self._heard = True
        last = frame.last_in_buffer
        engine = self._engine
        if not last:  # more frames in this read: what they produce leaves in one write per worker
            engine.start_batch()
        try:
            if frame.msg_type == _TEXT and frame.fin:  # the hot path: one whole protocol message
                if cython.compiled:  # route from picows' read buffer: the payload is copied out
                    # only for what needs it as bytes (an answer, the full decoder)
                    routed = route_buffer(  # type: ignore[name-defined]  # noqa: F821  (_frames.pxd)
                        cython.cast(cython.p_uchar, frame.payload_ptr),  # type: ignore[attr-defined]
                        frame.payload_size,
                        self._caller,
                    )
                    payload = None
                    if routed is None or cython.cast(tuple, routed)[0] == ROUTE_RESULT:
                        payload = frame.get_payload_as_bytes()
                else:
                    payload = frame.get_payload_as_bytes()
                    routed = route_frame(payload, self._caller)
                if routed is None or not self._forward(self._conn, routed, payload):
                    self._handle(self._conn, payload if payload is not None else frame.get_payload_as_bytes())
            else:
                self._other_frame(transport, frame)
        except Exception:  # a router bug must cost one frame, never the connection
            log.exception("%s: frame handling failed", self._who())
        if last and engine.batching:
            engine.end_batch()

    def _send(self, data: bytes) -> None:
        """Send ``data`` as a text frame: now, or with the rest of the batch (one write for all)."""
        if self._engine.batching:
            out = self._out
            if not out:
                self._engine.dirty.append(self)
            out.append(data)
        else:
            transport = self._transport
            if transport is not None and not transport.is_disconnected:
                transport.send(_TEXT, data)

    def flush(self) -> None:
        """Write what the batch queued for this worker (one write)."""
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
        """The router refused or retired this connection: ``POLICY_VIOLATION``, not ``OK``. A
        refused iii-sdk 0.11.3 worker (its name held, say, by its own half-open old socket)
        retries with backoff after it; after a 1000 close it would sit dead, still "connected"."""
        self.flush()  # what was sent before the close (a rejection, say) goes first
        transport = self._transport
        if transport is not None and not transport.is_disconnected:
            transport.send_close(WSCloseCode.POLICY_VIOLATION)
            transport.disconnect()

    def _other_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        msg_type = frame.msg_type
        if msg_type == _TEXT or msg_type == _BINARY:
            if frame.fin:
                self._deliver(frame.get_payload_as_bytes(), msg_type == _BINARY)
                return
            self._parts = [frame.get_payload_as_bytes()]
            self._parts_size = frame.payload_size
            self._skipping = False
        elif msg_type == _CONTINUATION:
            if not self._skipping:
                self._parts_size += frame.payload_size
                if self._parts_size > MAX_MESSAGE_SIZE:
                    self._skipping = True
                    self._parts = []
                    if self._conn is not None:
                        self._conn.frames_dropped += 1
                    log.warning("%s: dropped a message larger than %d bytes", self._who(), MAX_MESSAGE_SIZE)
                else:
                    self._parts.append(frame.get_payload_as_bytes())
            if frame.fin:
                parts, self._parts = self._parts, []
                if not self._skipping and parts:
                    self._deliver(b"".join(parts), False)
                self._skipping = False
        elif msg_type == _CLOSE:
            _answer_close(transport, frame)

    def _deliver(self, payload: bytes, binary: bool) -> None:
        if binary and payload[:4] in _TELEMETRY_PREFIXES:
            if self._conn is not None:  # an unauthenticated client's telemetry is not kept
                self._engine.router.telemetry_frame(payload)
        elif self._conn is None:
            self._hold_early(None, payload)
        else:
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
        config = self._config
        loop = asyncio.get_running_loop()
        waiting = transport.underlying_transport.get_write_buffer_size()  # type: ignore[union-attr]
        if waiting > config.max_write_buffer_bytes or loop.time() - self._paused_at > config.stall_timeout_ms / 1000:
            log.warning("%s is not reading (%d bytes waiting for it): disconnecting it", self._who(), waiting)
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
        if self._heard:
            self._heard = False
            self._idle_since = now
        _ping_or_drop(self._transport, self._idle_since, now, self._config, self._who())

    def shutdown(self) -> None:
        """Send what is queued, then close with ``SERVICE_RESTART`` (the engine is stopping: come
        back). Not ``GOING_AWAY``: older Python SDKs (0.11.3, 0.1.0; fixed by 0.25) take a
        1000/1001 close for the end and never reconnect; the original drops the socket unclosed."""
        self.flush()
        transport = self._transport
        if transport is not None and not transport.is_disconnected:
            transport.send_close(WSCloseCode.SERVICE_RESTART)
            transport.disconnect()


def _decline(conn: Any, routed: Any, payload: Any) -> bool:
    """The ``forward`` of a connection being authenticated: everything goes to ``_hold_early``."""
    return False


def _ping_or_drop(transport: Any, idle_since: Optional[float], now: float, config: Any, who: str) -> None:
    """Ping a connection, or drop it when nothing came from it for ``idle_timeout_ms`` since
    ``idle_since`` (the heartbeat that first found it silent)."""
    if transport is None or transport.is_disconnected:
        return
    if idle_since is not None and now - idle_since >= config.idle_timeout_ms / 1000:
        log.warning("%s sent nothing for %d ms (not even a pong): disconnecting it", who, config.idle_timeout_ms)
        transport.disconnect(graceful=False)
    else:
        transport.send_ping()


class TelemetryListener(WSListener):
    """The SDKs' ``/otel`` socket: its binary ``OTLP`` / ``LOGS`` / ``MTRC`` messages go to the
    router's telemetry sink (other binary messages are logged once and dropped, text is ignored,
    nothing is ever sent back but pongs and the close); kept alive, dropped when silent and closed
    at shutdown like a worker's. A message is reassembled from fragments up to 64 MiB."""

    def __init__(self, engine: Any, config: Any) -> None:
        self._engine = engine
        self._config = config
        self._transport: Any = None
        self._heard = True
        self._idle_since: Optional[float] = None
        self._parts: list[bytes] = []
        self._parts_size = 0
        #: The message being reassembled is binary (and within the size limit).
        self._binary = False
        self._warned = False

    def on_ws_connected(self, transport: WSTransport) -> None:
        self._transport = transport
        self._engine.listeners.add(self)

    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        self._heard = True
        msg_type = frame.msg_type
        if msg_type == _BINARY:
            if frame.fin:
                self._deliver(frame.get_payload_as_bytes())
            else:
                self._binary = True
                self._parts = [frame.get_payload_as_bytes()]
                self._parts_size = frame.payload_size
        elif msg_type == _TEXT:
            self._binary = False  # ignored, its continuations too
        elif msg_type == _CONTINUATION:
            if self._binary:
                self._parts_size += frame.payload_size
                if self._parts_size > MAX_MESSAGE_SIZE:
                    log.warning("a telemetry socket sent a message larger than %d bytes: dropped", MAX_MESSAGE_SIZE)
                    self._binary = False
                    self._parts = []
                else:
                    self._parts.append(frame.get_payload_as_bytes())
            if frame.fin:
                if self._binary:
                    self._deliver(b"".join(self._parts))
                self._binary = False
                self._parts = []
        elif msg_type == _CLOSE:
            _answer_close(transport, frame)

    def _deliver(self, payload: bytes) -> None:
        if payload[:4] in _TELEMETRY_PREFIXES:
            self._engine.router.telemetry_frame(payload)
        elif not self._warned:
            self._warned = True
            log.warning("a telemetry socket sent a binary message with unknown prefix %r: dropped (and its others)", payload[:4])

    def on_ws_disconnected(self, transport: WSTransport) -> None:
        self._parts = []
        self._engine.listeners.discard(self)

    def heartbeat(self, now: float) -> None:
        if self._heard:
            self._heard = False
            self._idle_since = now
        _ping_or_drop(self._transport, self._idle_since, now, self._config, "a telemetry socket")

    def shutdown(self) -> None:
        transport = self._transport
        if transport is not None and not transport.is_disconnected:
            transport.send_close(WSCloseCode.GOING_AWAY)
            transport.disconnect()
