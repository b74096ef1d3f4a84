# cython: language_level=3, annotation_typing=False
# The compiled twin of iii._codec_py: the same source, compiled by Cython, so the two cannot
# drift. annotation_typing=False keeps type hints as hints (no extra runtime checks), so both
# twins accept exactly the same arguments. Hand-tuned overrides follow the include, each only
# where bench/ showed it pays; the codec tests and a property test hold them to the pure twin.
include "_codec_py.py"

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from cpython.unicode cimport PyUnicode_DecodeASCII
from libc.string cimport memchr, memcmp, memcpy, memset


cdef extern from "string.h":
    void *memmem(const void *haystack, size_t haystacklen, const void *needle, size_t needlelen)


# The C under _c/: route_frame's string scan (a variant per instruction set) and a UTF-8 check.
cdef extern from "scan.h" nogil:
    const unsigned char *iii_string_run(const unsigned char *p, const unsigned char *end)
    int iii_scan_select(const char *name)
    const char *iii_scan_name()
    const unsigned char *iii_utf8_check(const unsigned char *p, const unsigned char *end)


_pure_with_caller = with_caller


def with_caller(data, field):
    """C override of the pure ``with_caller``: one ``memmem`` and one copy of the payload.

    (bytes.__contains__ and slicing cost ~0.5 µs more per call on a 160 B payload.)
    """
    if type(data) is not bytes or type(field) is not bytes:
        return _pure_with_caller(data, field)
    cdef const char *src = PyBytes_AS_STRING(data)
    cdef Py_ssize_t size = PyBytes_GET_SIZE(data)
    if size == 0 or src[0] != b'{':
        return data
    if memmem(src, size, b'"_caller_worker_id"', 19) != NULL:
        return _pure_with_caller(data, field)  # rare: rewrite it whole, as the pure twin does
    cdef const char *extra = PyBytes_AS_STRING(field)
    cdef Py_ssize_t extra_size = PyBytes_GET_SIZE(field)
    cdef Py_ssize_t inner = 1
    while inner < size - 1 and (src[inner] == b' ' or src[inner] == b'\t' or src[inner] == b'\r' or src[inner] == b'\n'):
        inner += 1
    cdef bint empty = inner >= size - 1
    cdef Py_ssize_t head = 1 if empty else size - 1
    out = PyBytes_FromStringAndSize(NULL, head + (0 if empty else 1) + extra_size + 1)
    cdef char *dst = PyBytes_AS_STRING(out)
    memcpy(dst, src, head)
    if not empty:
        dst[head] = b','
        head += 1
    memcpy(dst + head, extra, extra_size)
    dst[head + extra_size] = b'}'
    return out


_pure_decode_frame = decode_frame


def decode_frame(frame):
    """C override of the pure ``decode_frame``: UTF-8 checked in place, not decoded to a str.

    (Decoding a 4 KiB frame of mixed-script text to a str costs ~4 µs, three times the decode.)
    """
    if type(frame) is not bytes:
        return _pure_decode_frame(frame)
    cdef const unsigned char *start = <const unsigned char *>PyBytes_AS_STRING(frame)
    cdef const unsigned char *end = start + PyBytes_GET_SIZE(frame)
    cdef const unsigned char *bad = iii_utf8_check(start, end)
    if bad != end:
        raise DecodeError(_BAD_UTF8 % (bad - start))
    try:
        return _frame_decoder.decode(frame)
    except RecursionError:
        raise DecodeError(_TOO_DEEP) from None


# ---------------------------------------------------------------------------- route_frame
# A single pass over the frame: the top-level members are located, routing strings read in place,
# every other value skipped but validated (at least as strictly as msgspec's decoder, and the
# UTF-8 of strings too, which msgspec does not check in payloads it keeps raw: on anything
# doubtful the scan gives up and the full decoder decides). Strings, where payload bytes mostly
# are, are scanned 16 or 32 bytes at a time by the C variants under _c/ (SSE2, AVX2, NEON).

iii_scan_select(NULL)


def _string_scan(name=None):
    """The string scan variant ``route_frame`` runs: ``"avx2"``, ``"sse2"``, ``"neon"`` or
    ``"portable"``. The tests pass a name to run each one this build and CPU have.

    Raises:
        ValueError: no such variant here.
    """
    if name is not None and not iii_scan_select(name.encode()):
        raise ValueError(f"no {name!r} string scan in this build or on this CPU")
    return iii_scan_name().decode()


cdef enum:
    MAX_DEPTH = 64  # deeper payloads are left to the full decoder

# Members route_frame reads; any other member is skipped (and validated).
cdef enum Member:
    M_OTHER, M_TYPE, M_INVOCATION_ID, M_FUNCTION_ID, M_DATA, M_METADATA, M_ACTION, M_NAMESPACE,
    M_TRACEPARENT, M_BAGGAGE, M_ERROR, M_COUNT


cdef inline const unsigned char *_skip_space(const unsigned char *p, const unsigned char *end) noexcept nogil:
    while p < end and (p[0] == 0x20 or p[0] == 0x0A or p[0] == 0x0D or p[0] == 0x09):
        p += 1
    return p


cdef inline int _hex(unsigned char c) noexcept nogil:
    if 0x30 <= c <= 0x39:
        return c - 0x30
    c |= 0x20
    if 0x61 <= c <= 0x66:
        return c - 0x61 + 10
    return -1


cdef int _unicode_escape(const unsigned char *p, const unsigned char *end) noexcept nogil:
    """The code unit of the ``\\uXXXX`` escape at ``p``, or -1."""
    cdef int i, digit, code = 0
    if end - p < 6:
        return -1
    for i in range(2, 6):
        digit = _hex(p[i])
        if digit < 0:
            return -1
        code = code * 16 + digit
    return code


cdef const unsigned char *_skip_string(const unsigned char *p, const unsigned char *end) noexcept nogil:
    """``p`` is just past the opening quote; returns just past the closing one, or NULL."""
    cdef int code
    cdef unsigned char c
    while True:
        p = iii_string_run(p, end)
        if p >= end:
            return NULL
        c = p[0]
        if c == 0x22:  # '"'
            return p + 1
        if c == 0x5C:  # '\\'
            if p + 1 >= end:
                return NULL
            c = p[1]
            if c == 0x75:  # 'u': four hex digits; a surrogate only as a high+low pair
                code = _unicode_escape(p, end)
                if 0xDC00 <= code <= 0xDFFF or code < 0:
                    return NULL
                p += 6
                if code >= 0xD800 and code <= 0xDBFF:  # a high surrogate: its low half follows
                    if not (p + 1 < end and p[0] == 0x5C and p[1] == 0x75):
                        return NULL
                    code = _unicode_escape(p, end)
                    if not 0xDC00 <= code <= 0xDFFF:
                        return NULL
                    p += 6
            elif c == 0x22 or c == 0x5C or c == 0x2F or c == 0x62 or c == 0x66 or c == 0x6E or c == 0x72 or c == 0x74:
                p += 2
            else:
                return NULL
        else:  # a control character, or UTF-8 that is not well formed
            return NULL


cdef inline const unsigned char *_skip_digits(const unsigned char *p, const unsigned char *end) noexcept nogil:
    """At least one digit, or NULL."""
    if p >= end or not (0x30 <= p[0] <= 0x39):
        return NULL
    while p < end and 0x30 <= p[0] <= 0x39:
        p += 1
    return p


cdef const unsigned char *_skip_number(const unsigned char *p, const unsigned char *end) noexcept nogil:
    if p[0] == 0x2D:  # '-'
        p += 1
    if p < end and p[0] == 0x30:  # a leading zero stands alone
        p += 1
    else:
        p = _skip_digits(p, end)
        if p == NULL:
            return NULL
    if p < end and p[0] == 0x2E:  # '.'
        p = _skip_digits(p + 1, end)
        if p == NULL:
            return NULL
    if p < end and (p[0] == 0x65 or p[0] == 0x45):  # 'e' / 'E'
        p += 1
        if p < end and (p[0] == 0x2B or p[0] == 0x2D):
            p += 1
        p = _skip_digits(p, end)
    return p


cdef const unsigned char *_skip_value(const unsigned char *p, const unsigned char *end, int depth) noexcept nogil:
    """``p`` is at the value; returns just past it, or NULL if it is not (plainly) valid."""
    cdef unsigned char c
    if p >= end:
        return NULL
    c = p[0]
    if c == 0x22:
        return _skip_string(p + 1, end)
    if c == 0x7B or c == 0x5B:  # '{' or '['
        if depth >= MAX_DEPTH:
            return NULL
        p = _skip_space(p + 1, end)
        if p < end and p[0] == c + 2:  # '}' / ']': empty
            return p + 1
        while True:
            if c == 0x7B:
                if p >= end or p[0] != 0x22:
                    return NULL
                p = _skip_string(p + 1, end)
                if p == NULL:
                    return NULL
                p = _skip_space(p, end)
                if p >= end or p[0] != 0x3A:  # ':'
                    return NULL
                p = _skip_space(p + 1, end)
            p = _skip_value(p, end, depth + 1)
            if p == NULL:
                return NULL
            p = _skip_space(p, end)
            if p >= end:
                return NULL
            if p[0] == c + 2:
                return p + 1
            if p[0] != 0x2C:  # ','
                return NULL
            p = _skip_space(p + 1, end)
    if c == 0x74:
        return p + 4 if end - p >= 4 and memcmp(p, b"true", 4) == 0 else NULL
    if c == 0x66:
        return p + 5 if end - p >= 5 and memcmp(p, b"false", 5) == 0 else NULL
    if c == 0x6E:
        return p + 4 if end - p >= 4 and memcmp(p, b"null", 4) == 0 else NULL
    if c == 0x2D or 0x30 <= c <= 0x39:
        return _skip_number(p, end)
    return NULL


cdef const unsigned char *_skip_plain_string(const unsigned char *p, const unsigned char *end) noexcept nogil:
    """A string of printable ASCII without escapes (ids are): ``p`` past the opening quote."""
    while p < end:
        if p[0] == 0x22:
            return p + 1
        if p[0] < 0x20 or p[0] >= 0x7F or p[0] == 0x5C:
            return NULL
        p += 1
    return NULL


cdef Member _member(const unsigned char *key, Py_ssize_t size) noexcept nogil:
    if size == 4:
        if memcmp(key, b"type", 4) == 0:
            return M_TYPE
        if memcmp(key, b"data", 4) == 0:
            return M_DATA
    elif size == 13 and memcmp(key, b"invocation_id", 13) == 0:
        return M_INVOCATION_ID
    elif size == 11:
        if memcmp(key, b"function_id", 11) == 0:
            return M_FUNCTION_ID
        if memcmp(key, b"traceparent", 11) == 0:
            return M_TRACEPARENT
    elif size == 8 and memcmp(key, b"metadata", 8) == 0:
        return M_METADATA
    elif size == 6 and memcmp(key, b"action", 6) == 0:
        return M_ACTION
    elif size == 9 and memcmp(key, b"namespace", 9) == 0:
        return M_NAMESPACE
    elif size == 7 and memcmp(key, b"baggage", 7) == 0:
        return M_BAGGAGE
    elif size == 5 and memcmp(key, b"error", 5) == 0:
        return M_ERROR
    return M_OTHER


cdef inline bint _is_string_member(Member member) noexcept nogil:
    return (
        member == M_TYPE or member == M_INVOCATION_ID or member == M_FUNCTION_ID
        or member == M_TRACEPARENT or member == M_BAGGAGE
    )


cdef inline char *_put(char *dst, const void *src, Py_ssize_t size) noexcept nogil:
    memcpy(dst, src, size)
    return dst + size


_pure_route_frame = route_frame


def route_frame(frame, caller):
    """Compiled twin of the pure ``route_frame`` (same contract): one validating pass, no decode."""
    if type(frame) is not bytes or type(caller) is not bytes:
        return _pure_route_frame(frame, caller)
    return route_buffer(<const unsigned char *>PyBytes_AS_STRING(frame), PyBytes_GET_SIZE(frame), caller)


cdef object route_buffer(const unsigned char *start, Py_ssize_t size, bytes caller):
    """``route_frame`` over a frame still in a read buffer (``iii.engine._frames`` passes picows'
    own): a plain call is laid out for its owner without first copying it into a bytes object."""
    cdef const unsigned char *end = start + size
    # Value spans by member: [begin, stop); begin NULL = absent.
    cdef const unsigned char *begin[<int>M_COUNT]
    cdef const unsigned char *stop[<int>M_COUNT]
    cdef const unsigned char *p
    cdef const unsigned char *key
    cdef Member member
    memset(begin, 0, sizeof(begin))
    p = _skip_space(start, end)
    if p >= end or p[0] != 0x7B:
        return None
    p = _skip_space(p + 1, end)
    while True:
        if p >= end or p[0] != 0x22:
            return None
        key = p + 1
        p = _skip_string(key, end)
        if p == NULL or memchr(key, 0x5C, p - 1 - key) != NULL:  # escaped keys: full decoder
            return None
        member = _member(key, p - 1 - key)
        p = _skip_space(p, end)
        if p >= end or p[0] != 0x3A:
            return None
        p = _skip_space(p + 1, end)
        if member != M_OTHER:
            if begin[<int>member] != NULL:  # a repeated member: full decoder
                return None
            begin[<int>member] = p
        if _is_string_member(member) and p < end and p[0] == 0x22:
            p = _skip_plain_string(p + 1, end)
        else:
            p = _skip_value(p, end, 1)
        if p == NULL:
            return None
        if member != M_OTHER:
            stop[<int>member] = p
        p = _skip_space(p, end)
        if p >= end:
            return None
        if p[0] == 0x7D:  # '}'
            break
        if p[0] != 0x2C:
            return None
        p = _skip_space(p + 1, end)
    if _skip_space(p + 1, end) != end:
        return None
    # The ids and the type are plain strings; traceparent and baggage may also be null.
    if not (
        _present_string(begin, M_TYPE) and _present_string(begin, M_INVOCATION_ID)
        and _absent_or_string(begin, M_FUNCTION_ID, False)
        and _absent_or_string(begin, M_TRACEPARENT, True) and _absent_or_string(begin, M_BAGGAGE, True)
    ):
        return None
    p = begin[<int>M_TYPE]
    cdef Py_ssize_t type_size = stop[<int>M_TYPE] - p
    if type_size == 18 and memcmp(p, b'"invocationresult"', 18) == 0:
        if begin[<int>M_ERROR] != NULL:
            return None
        return (ROUTE_RESULT, _ascii(begin[<int>M_INVOCATION_ID], stop[<int>M_INVOCATION_ID]), None, None)
    if not (type_size == 16 and memcmp(p, b'"invokefunction"', 16) == 0):
        return None
    if begin[<int>M_ACTION] != NULL or begin[<int>M_NAMESPACE] != NULL or begin[<int>M_FUNCTION_ID] == NULL:
        return None
    return _forward_invoke(begin, stop, caller)


cdef str _ascii(const unsigned char *quoted, const unsigned char *after):
    """The str of a plain string value, given its span including the quotes."""
    return PyUnicode_DecodeASCII(<const char *>quoted + 1, after - quoted - 2, NULL)


cdef inline bint _present_string(const unsigned char **begin, Member member) noexcept:
    return begin[<int>member] != NULL and begin[<int>member][0] == 0x22


cdef inline bint _absent_or_string(const unsigned char **begin, Member member, bint nullable) noexcept:
    cdef const unsigned char *value = begin[<int>member]
    return value == NULL or value[0] == 0x22 or (nullable and value[0] == 0x6E)  # 'n': null


cdef tuple _forward_invoke(const unsigned char **begin, const unsigned char **stop, bytes caller):
    """The ``invokefunction`` for the owner, laid out exactly as ``encode_invoke`` lays it out."""
    cdef const unsigned char *data = begin[<int>M_DATA]
    cdef Py_ssize_t data_size = 4  # "null" when absent
    cdef const unsigned char *inner
    cdef bint splice = False, empty = False
    if data != NULL:
        data_size = stop[<int>M_DATA] - data
        if data[0] == 0x7B:
            if memmem(data, data_size, b'"_caller_worker_id"', 19) != NULL:
                return None
            splice = True
            inner = _skip_space(data + 1, data + data_size)
            empty = inner[0] == 0x7D
    cdef Py_ssize_t caller_size = PyBytes_GET_SIZE(caller)
    cdef Py_ssize_t id_size = stop[<int>M_INVOCATION_ID] - begin[<int>M_INVOCATION_ID]
    cdef Py_ssize_t function_size = stop[<int>M_FUNCTION_ID] - begin[<int>M_FUNCTION_ID]
    cdef Py_ssize_t size = 41 + id_size + 15 + function_size + 8 + 1
    if splice:
        size += (2 + caller_size) if empty else (data_size + 1 + caller_size)
    else:
        size += data_size
    cdef bint metadata = begin[<int>M_METADATA] != NULL
    cdef bint traceparent = _present_string(begin, M_TRACEPARENT)
    cdef bint baggage = _present_string(begin, M_BAGGAGE)
    if metadata:
        size += 12 + (stop[<int>M_METADATA] - begin[<int>M_METADATA])
    if traceparent:
        size += 15 + (stop[<int>M_TRACEPARENT] - begin[<int>M_TRACEPARENT])
    if baggage:
        size += 11 + (stop[<int>M_BAGGAGE] - begin[<int>M_BAGGAGE])
    out = PyBytes_FromStringAndSize(NULL, size)
    cdef char *dst = PyBytes_AS_STRING(out)
    dst = _put(dst, b'{"type":"invokefunction","invocation_id":', 41)
    dst = _put(dst, begin[<int>M_INVOCATION_ID], id_size)
    dst = _put(dst, b',"function_id":', 15)
    dst = _put(dst, begin[<int>M_FUNCTION_ID], function_size)
    dst = _put(dst, b',"data":', 8)
    if data == NULL:
        dst = _put(dst, b"null", 4)
    elif not splice:
        dst = _put(dst, data, data_size)
    else:
        if empty:
            dst = _put(dst, b"{", 1)
        else:
            dst = _put(dst, data, data_size - 1)
            dst = _put(dst, b",", 1)
        dst = _put(dst, PyBytes_AS_STRING(caller), caller_size)
        dst = _put(dst, b"}", 1)
    if metadata:
        dst = _put(dst, b',"metadata":', 12)
        dst = _put(dst, begin[<int>M_METADATA], stop[<int>M_METADATA] - begin[<int>M_METADATA])
    if traceparent:
        dst = _put(dst, b',"traceparent":', 15)
        dst = _put(dst, begin[<int>M_TRACEPARENT], stop[<int>M_TRACEPARENT] - begin[<int>M_TRACEPARENT])
    if baggage:
        dst = _put(dst, b',"baggage":', 11)
        dst = _put(dst, begin[<int>M_BAGGAGE], stop[<int>M_BAGGAGE] - begin[<int>M_BAGGAGE])
    dst[0] = b'}'
    return (
        ROUTE_INVOKE,
        _ascii(begin[<int>M_INVOCATION_ID], stop[<int>M_INVOCATION_ID]),
        _ascii(begin[<int>M_FUNCTION_ID], stop[<int>M_FUNCTION_ID]),
        out,
    )


# ---------------------------------------------------------------------------- client_text_frames
from libc.stdlib cimport rand


_pure_client_text_frames = client_text_frames


def client_text_frames(payloads):
    """C override of the pure ``client_text_frames``: masked in one pass, no big integers."""
    if type(payloads) is not list:
        return _pure_client_text_frames(payloads)
    cdef Py_ssize_t total = 0, size, head, i
    for payload in payloads:
        if type(payload) is not bytes:
            return _pure_client_text_frames(payloads)
        size = PyBytes_GET_SIZE(payload)
        total += size + (6 if size < 126 else 8 if size < 65536 else 14)
    out = PyBytes_FromStringAndSize(NULL, total)
    cdef unsigned char *dst = <unsigned char *>PyBytes_AS_STRING(out)
    cdef const unsigned char *src
    cdef unsigned int mask
    cdef unsigned long long mask8, chunk
    cdef unsigned char key[4]
    for payload in payloads:
        size = PyBytes_GET_SIZE(payload)
        dst[0] = 0x81
        if size < 126:
            dst[1] = 0x80 | <unsigned char>size
            head = 2
        elif size < 65536:
            dst[1] = 0xFE
            dst[2] = <unsigned char>(size >> 8)
            dst[3] = <unsigned char>size
            head = 4
        else:
            dst[1] = 0xFF
            for i in range(8):
                dst[2 + i] = <unsigned char>((<unsigned long long>size) >> (56 - 8 * i))
            head = 10
        mask = <unsigned int>rand()
        memcpy(key, &mask, 4)  # a local copy: stores to dst cannot alias it
        memcpy(dst + head, &mask, 4)
        head += 4
        src = <const unsigned char *>PyBytes_AS_STRING(payload)
        # Eight bytes at a time: the key repeated twice is the same bytes in memory on any endianness.
        mask8 = (<unsigned long long>mask << 32) | mask
        i = 0
        while i + 8 <= size:
            memcpy(&chunk, src + i, 8)
            chunk ^= mask8
            memcpy(dst + head + i, &chunk, 8)
            i += 8
        while i < size:
            dst[head + i] = src[i] ^ key[i & 3]
            i += 1
        dst += head + size
    return out


# ---------------------------------------------------------------------------- the direct call channel's I/O
# The SDK's synchronous calls: the frame masked and written, and the answer read into a kept
# buffer, one system call each with the GIL released (the pure twins go through os.write and
# os.readv, and Python's socket methods cost more again).
from cpython.buffer cimport PyBUF_WRITABLE, PyBuffer_Release, PyObject_GetBuffer
from cpython.exc cimport PyErr_CheckSignals
from libc.errno cimport EINTR, errno

cdef extern from "sys/socket.h" nogil:
    ssize_t send(int fd, const void *buf, size_t size, int flags)
    ssize_t recv(int fd, void *buf, size_t size, int flags)


cdef int _interrupted(int error) except -1:
    """Whether a system call that failed with ``error`` is to be retried (EINTR, after the
    signal handlers ran, as PEP 475 has Python's own calls do); raises OSError otherwise."""
    if error == EINTR:
        PyErr_CheckSignals()
        return 1
    raise OSError(error, os.strerror(error))


def send_text_frame(int fd, bytes payload):
    """C override of the pure ``send_text_frame``: ``send`` without the GIL until all is written."""
    frame = client_text_frames([payload])
    cdef const char *p = PyBytes_AS_STRING(frame)
    cdef Py_ssize_t left = PyBytes_GET_SIZE(frame)
    cdef ssize_t sent
    while left > 0:
        with nogil:
            sent = send(fd, p, left, 0)
        if sent < 0:
            _interrupted(errno)
            continue
        p += sent
        left -= sent


def receive_into(int fd, buffer):
    """C override of the pure ``receive_into``: one ``recv`` into the buffer, without the GIL
    (the buffer is held exported meanwhile: it cannot be resized under the read)."""
    cdef Py_buffer view
    cdef ssize_t got
    PyObject_GetBuffer(buffer, &view, PyBUF_WRITABLE)
    try:
        while True:
            with nogil:
                got = recv(fd, view.buf, view.len, 0)
            if got >= 0:
                return got
            _interrupted(errno)
    finally:
        PyBuffer_Release(&view)
