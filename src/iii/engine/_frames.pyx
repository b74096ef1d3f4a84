# cython: language_level=3
# The compiled twin of iii.engine._frames_py (read that file first: same behaviour, same names).
# A cdef subclass of picows' WSListener: picows calls on_ws_frame through its C vtable, the
# frame's fields are C fields, and a call is routed straight from picows' read buffer (the
# forwarded frame is the only copy made of it).
from picows.picows cimport WSFrame, WSListener, WSMsgType, WSTransport

from iii._codec cimport route_buffer

from iii._codec import ROUTE_RESULT

__all__ = ["FrameListener"]


cdef class FrameListener(WSListener):
    cdef public object _engine
    cdef public object _conn
    cdef public bytes _caller
    cdef public object _forward
    cdef public object _handle
    cdef public list _out
    cdef public object _transport
    cdef public bint _heard

    cpdef on_ws_frame(self, WSTransport transport, WSFrame frame):
        self._heard = True
        cdef bint last = frame.last_in_buffer
        engine = self._engine
        if not last:
            engine.start_batch()
        try:
            if frame.msg_type == WSMsgType.TEXT and frame.fin:
                routed = route_buffer(<const unsigned char *>frame.payload_ptr, frame.payload_size, self._caller)
                # Only an answer is forwarded as received, and only the full path decodes.
                payload = None
                if routed is None or (<tuple>routed)[0] == ROUTE_RESULT:
                    payload = frame.get_payload_as_bytes()
                if routed is None or not self._forward(self._conn, routed, payload):
                    self._handle(self._conn, payload if payload is not None else frame.get_payload_as_bytes())
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
