"""A link from another engine of the cluster (``iii-cluster``) on the worker listener.

Another engine opens one WebSocket to this engine's worker listener, presenting the cluster's
token in the :data:`PEER_TOKEN_HEADER` header and its id in :data:`PEER_ENGINE_HEADER`; every
call its workers make to a function of this engine arrives on it as an ``invokefunction`` and
its answer leaves on it. The link is no worker: it is not listed, fires no worker events, needs
no namespace. Its frames go to :meth:`Router.handle_peer`; what the router sends back is written
with the rest of the read's batch (one write per read), like a worker's.
"""

from __future__ import annotations

import hmac
import logging
from typing import Any, Optional

from picows import WSCloseCode, WSFrame, WSListener, WSMsgType, WSTransport, WSUpgradeRequest

__all__ = ["PEER_ENGINE_HEADER", "PEER_TOKEN_HEADER", "PeerListener", "peer_of"]

log = logging.getLogger("iii.engine")

PEER_TOKEN_HEADER = "x-iii-cluster-token"
PEER_ENGINE_HEADER = "x-iii-cluster-engine"
_TEXT = WSMsgType.TEXT


def _text_header(size: int) -> bytes:
    """Header of a final, unmasked text frame (what a server sends) of ``size`` bytes."""
    if size < 126:
        return bytes((0x81, size))
    if size < 65536:
        return b"\x81\x7e" + size.to_bytes(2, "big")
    return b"\x81\x7f" + size.to_bytes(8, "big")


def peer_of(request: WSUpgradeRequest, token: Optional[str]) -> Optional[str]:
    """The id of the engine a connection request comes from, if it presents ``token``."""
    if token is None:
        return None
    presented = request.headers.get(PEER_TOKEN_HEADER)
    engine_id = request.headers.get(PEER_ENGINE_HEADER)
    if presented is None or not engine_id or not hmac.compare_digest(presented.encode(), token.encode()):
        return None
    return engine_id


class PeerListener(WSListener):
    """One peer engine's link (see the module docstring).

    Args:
        engine: the :class:`~iii.engine.server.Engine`.
        config: the listener config it was accepted on (its heartbeat and idle timeout apply).
        engine_id: the peer engine's id.
    """

    def __init__(self, engine: Any, config: Any, engine_id: str) -> None:
        self._engine = engine
        self._config = config
        self._engine_id = engine_id
        self._transport: Any = None
        self._conn: Any = None
        self._out: list[bytes] = []
        self._heard = True
        self._idle_since: Optional[float] = None

    def on_ws_connected(self, transport: WSTransport) -> None:
        self._transport = transport
        self._engine.listeners.add(self)
        peer = transport.underlying_transport.get_extra_info("peername")
        self._conn = self._engine.router.connect_peer(self._engine_id, self._send, self._close, peer[0] if peer else None)
        log.info("cluster: engine %s linked in", self._engine_id)

    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        self._heard = True
        engine = self._engine
        last = frame.last_in_buffer
        if not last:
            engine.start_batch()
        try:
            if frame.msg_type == _TEXT and frame.fin:
                engine.router.handle_peer(self._conn, frame.get_payload_as_bytes())
            elif frame.msg_type == WSMsgType.CLOSE:
                transport.send_close(frame.get_close_code())
                transport.disconnect()
        except Exception:
            log.exception("cluster: a frame from engine %s failed", self._engine_id)
        if last and engine.batching:
            engine.end_batch()

    def _send(self, data: bytes) -> None:
        if self._engine.batching:
            if not self._out:
                self._engine.dirty.append(self)
            self._out.append(data)
        elif self._transport is not None and not self._transport.is_disconnected:
            self._transport.send(_TEXT, data)
            self._check_buffer()

    def flush(self) -> None:
        out, self._out = self._out, []
        transport = self._transport
        if transport is None or transport.is_disconnected:
            return
        if len(out) == 1:
            transport.send(_TEXT, out[0])
        else:  # one write for the batch
            frames = []
            for data in out:
                frames.append(_text_header(len(data)))
                frames.append(data)
            transport.underlying_transport.writelines(frames)
        self._check_buffer()

    def _check_buffer(self) -> None:
        """A peer that does not read its answers is dropped before they exhaust memory."""
        waiting = self._transport.underlying_transport.get_write_buffer_size()
        if waiting > self._config.max_write_buffer_bytes:
            log.warning("cluster: engine %s is not reading (%d bytes wait for it): closing its link", self._engine_id, waiting)
            self._transport.disconnect(graceful=False)

    def _close(self) -> None:
        if self._transport is not None and not self._transport.is_disconnected:
            self._transport.send_close(WSCloseCode.POLICY_VIOLATION)
            self._transport.disconnect()

    def on_ws_disconnected(self, transport: WSTransport) -> None:
        self._out = []
        if self._conn is not None:
            self._engine.router.disconnect(self._conn)
        self._engine.listeners.discard(self)
        log.info("cluster: engine %s's link closed", self._engine_id)

    def heartbeat(self, now: float) -> None:
        """Ping the link; drop it when it has been silent for the listener's idle timeout."""
        if self._heard:
            self._heard = False
            self._idle_since = now
        transport = self._transport
        if transport is None or transport.is_disconnected:
            return
        if self._idle_since is not None and now - self._idle_since >= self._config.idle_timeout_ms / 1000:
            log.warning("cluster: engine %s's link is silent: closing it", self._engine_id)
            transport.disconnect(graceful=False)
        else:
            transport.send_ping()

    def shutdown(self) -> None:
        self.flush()
        if self._transport is not None and not self._transport.is_disconnected:
            self._transport.send_close(WSCloseCode.GOING_AWAY)
            self._transport.disconnect()
