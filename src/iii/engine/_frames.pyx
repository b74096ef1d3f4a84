# cython: language_level=3
# The compiled twin of iii.engine._frames_py (read that file first: same behaviour, same names).
# A cdef subclass of picows' WSListener: picows calls on_ws_frame through its C vtable and the
# frame's fields are C fields, so a routed frame costs no Python call before the router's.
from picows.picows cimport WSFrame, WSListener, WSMsgType, WSTransport

__all__ = ["FrameListener"]


cdef class FrameListener(WSListener):
    cdef public object _engine
    cdef public object _receive
    cdef public object _conn
    cdef public list _out
    cdef public object _transport

    cpdef on_ws_frame(self, WSTransport transport, WSFrame frame):
        cdef bint last = frame.last_in_buffer
        engine = self._engine
        if not last:
            engine.start_batch()
        try:
            if frame.msg_type == WSMsgType.TEXT and frame.fin:
                self._receive(self._conn, frame.get_payload_as_bytes())
            else:
                self._other_frame(transport, frame)
        except Exception:
            self._frame_failed()
        if last and engine.batching:
            engine.end_batch()

    def _send(self, data):
        cdef WSTransport transport
        if self._engine.batching:
            if not self._out:
                self._engine.dirty.append(self)
            self._out.append(data)
        elif self._transport is not None:
            transport = self._transport
            if not transport.is_disconnected:
                transport.send(WSMsgType.TEXT, data)
