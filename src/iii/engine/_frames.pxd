# cython: language_level=3
# Makes the Cython build of _frames_py.py (compiled as iii.engine._frames) a cdef subclass of
# picows' WSListener: picows calls its callbacks through the C vtable and its hot path reads the
# frame's C fields. The cimports below stand in for the Python names of the same source.
import cython

from picows.picows cimport WSFrame, WSListener, WSMsgType, WSTransport

from iii._codec cimport route_buffer

cdef WSMsgType _TEXT, _BINARY, _CONTINUATION, _CLOSE
cdef object ROUTE_RESULT


cdef class WorkerListener(WSListener):
    cdef public object _engine
    cdef public object _config
    cdef public object _conn
    cdef public bytes _caller
    cdef public object _forward
    cdef public object _handle
    cdef public WSTransport _transport
    cdef public list _out
    cdef public object _write
    cdef public bint _heard
    cdef public object _idle_since
    cdef public object _grace
    cdef public list _parts
    cdef public Py_ssize_t _parts_size
    cdef public bint _skipping
    cdef public double _paused_at
    cdef public object _stall_check
    cdef public object _policy
    cdef public list _early
    cdef public Py_ssize_t _early_size

    cpdef on_ws_connected(self, WSTransport transport)
    @cython.locals(last=bint, payload=bytes)
    cpdef on_ws_frame(self, WSTransport transport, WSFrame frame)
    cpdef on_ws_disconnected(self, WSTransport transport)
    cpdef pause_writing(self)
    cpdef resume_writing(self)
    @cython.locals(out=list, transport=WSTransport)
    cpdef flush(self)
