"""What the engine does with every frame of a worker connection, pure-Python twin.

``_frames.pyx`` is the compiled twin: a ``cdef`` subclass of picows' ``WSListener`` (its Cython
API), so picows calls the frame handler as C, the frame's fields are read as C and calls are
routed straight from picows' read buffer. Both hand a frame to the router the same way:
``Router.forward`` what ``route_frame`` routes, ``Router.handle`` the rest. The rest of a
worker's listener (connect, fragments, stalls, heartbeat, teardown) is
``server.WorkerListener``, which subclasses whichever twin :mod:`iii.engine.frames` picks and
provides ``_other_frame`` and ``_frame_failed``.
"""

from __future__ import annotations

from typing import Any

from picows import WSFrame, WSListener, WSMsgType, WSTransport

from iii.codec import route_frame

__all__ = ["FrameListener"]

_TEXT = WSMsgType.TEXT


class FrameListener(WSListener):
    """The per-frame path: route whole text messages, send what the router answers."""

    __slots__ = ("_engine", "_conn", "_caller", "_forward", "_handle", "_out", "_transport", "_heard")

    _engine: Any
    _conn: Any
    #: The connection's ``caller_field`` (what ``route_frame`` splices into calls it makes).
    _caller: bytes
    #: The router's ``forward`` and ``handle``.
    _forward: Any
    _handle: Any
    #: Messages for this worker waiting for the end of the batch.
    _out: list[bytes]
    _transport: Any
    #: The worker sent something since the last heartbeat (it is alive).
    _heard: bool

    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        self._heard = True
        last = frame.last_in_buffer
        engine = self._engine
        if not last:  # more frames in this read: what they produce leaves in one write per worker
            engine.start_batch()
        try:
            if frame.msg_type is _TEXT and frame.fin:  # the hot path: one whole protocol message
                payload = frame.get_payload_as_bytes()
                routed = route_frame(payload, self._caller)
                if routed is None or not self._forward(self._conn, routed, payload):
                    self._handle(self._conn, payload)
            else:
                self._other_frame(transport, frame)  # type: ignore[attr-defined]
        except Exception:  # a router bug must cost one frame, never the connection
            self._frame_failed()  # type: ignore[attr-defined]
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
