# C-level entry points of iii._codec for other compiled modules (iii.engine._frames).

cdef object route_buffer(const unsigned char *start, Py_ssize_t size, bytes caller)
