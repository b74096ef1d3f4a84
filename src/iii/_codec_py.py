"""Frame codec, pure-Python reference: classify inbound frames and build outbound ones.

Inbound frames decode into the protocol Structs with every payload kept as raw JSON bytes,
so routing reads only ``type``, ids, namespace and action. Outbound frames are encoded from the
same Structs, splicing forwarded payloads in verbatim. ``_codec.pyx`` compiles this very file
(``include``), so both twins share one source and behave identically.
"""

import os
import random
import struct
from typing import Union

import msgspec

from iii.protocol import (
    ABSENT,
    INBOUND_TYPES,
    OUTBOUND_TYPES,
    ErrorBody,
    InvocationResult,
    InvokeFunction,
    Message,
    TypeProbe,
)

__all__ = [
    "DecodeError",
    "ROUTE_INVOKE",
    "ROUTE_RESULT",
    "route_frame",
    "decode_frame",
    "decode_engine_frame",
    "probe_frame",
    "encode_message",
    "caller_field",
    "with_caller",
    "encode_invoke",
    "encode_result",
    "encode_error_result",
    "encode_json",
    "decode_json",
    "client_text_frames",
    "send_text_frame",
    "receive_into",
]

DecodeError = msgspec.DecodeError
_frame_decoder = msgspec.json.Decoder(Union[INBOUND_TYPES])  # type: ignore[valid-type]
_engine_frame_decoder = msgspec.json.Decoder(Union[OUTBOUND_TYPES])  # type: ignore[valid-type]
_probe_decoder = msgspec.json.Decoder(TypeProbe)
_encoder = msgspec.json.Encoder()
_json_decoder = msgspec.json.Decoder()
_CALLER_KEY = b'"_caller_worker_id"'
_JSON_SPACE = b" \t\r\n"
_TOO_DEEP = "JSON is malformed: nested too deeply"
_BAD_UTF8 = "JSON is malformed: invalid UTF-8 at byte %d"
_INVOKE_HEAD = b'{"type":"invokefunction","invocation_id":'
#: What :func:`route_frame` found: a plain call to forward, or an answer to pass back.
ROUTE_INVOKE = 1
ROUTE_RESULT = 2


def route_frame(frame: bytes, caller: bytes) -> Union[tuple, None]:
    """The routing fast path: read a frame only as far as forwarding it needs.

    Returns ``(ROUTE_INVOKE, invocation_id, function_id, frame_for_owner)`` for a plain call
    (an ``invokefunction`` with an id, no action, the default namespace) whose data does not name
    ``_caller_worker_id`` itself; ``frame_for_owner`` is what :func:`encode_invoke` makes of it,
    with ``caller`` (from :func:`caller_field`) spliced into the data. Returns
    ``(ROUTE_RESULT, invocation_id, None, None)`` for an ``invocationresult`` without ``error``,
    which is forwarded as received. Anything else, malformed frames included, returns ``None``:
    the caller decodes it fully (:func:`decode_frame`). The compiled twin may also answer
    ``None`` for frames this one routes (escaped or non-ASCII ids, duplicate keys); it never
    routes a frame the full decoder would reject.
    """
    try:
        msg = decode_frame(frame)
    except DecodeError:
        return None
    msg_type = type(msg)
    if msg_type is InvocationResult:
        return None if msg.error else (ROUTE_RESULT, msg.invocation_id, None, None)
    if msg_type is not InvokeFunction:
        return None
    if msg.invocation_id is None or msg.action is not None or msg.namespace is not msgspec.UNSET:
        return None
    data = bytes(msg.data) if msg.data else b"null"
    if data[0] == 0x7B and _CALLER_KEY in data:
        return None
    out = encode_invoke(
        msg.invocation_id,
        msg.function_id,
        with_caller(data, caller),
        bytes(msg.metadata) if msg.metadata else b"",
        msg.traceparent,
        msg.baggage,
    )
    return ROUTE_INVOKE, msg.invocation_id, msg.function_id, out


def decode_frame(frame: bytes) -> Message:
    """Decode one inbound frame; payload fields stay raw.

    Raises:
        msgspec.DecodeError: malformed JSON or UTF-8, nested too deeply, unknown ``type`` or a
            field of the wrong type (its message names the JSON path).
    """
    # msgspec checks the UTF-8 of the strings it decodes but not of the payloads it keeps raw,
    # and an SDK handed a forwarded payload that is not UTF-8 drops its connection.
    if not frame.isascii():
        _check_utf8(frame)
    try:
        return _frame_decoder.decode(frame)
    except RecursionError:
        raise DecodeError(_TOO_DEEP) from None


def _check_utf8(frame: bytes) -> None:
    try:
        frame.decode()
    except UnicodeDecodeError as exc:
        raise DecodeError(_BAD_UTF8 % exc.start) from None


def decode_engine_frame(frame: bytes) -> Message:
    """Decode one frame the engine sent to a worker (the SDK side); payloads stay raw."""
    try:
        return _engine_frame_decoder.decode(frame)
    except RecursionError:
        raise DecodeError(_TOO_DEEP) from None


def probe_frame(frame: bytes) -> TypeProbe:
    """Best-effort read of ``type`` / ``invocation_id`` from a frame that failed to decode."""
    try:
        return _probe_decoder.decode(frame)
    except (msgspec.DecodeError, RecursionError):
        return TypeProbe()


def encode_message(message: Message) -> bytes:
    """Encode any protocol message compactly (absent optional fields are left out)."""
    return _encoder.encode(message)


def encode_json(value: object) -> bytes:
    return _encoder.encode(value)


def decode_json(raw: bytes) -> object:
    return _json_decoder.decode(raw)


def caller_field(worker_id: str) -> bytes:
    """The ``"_caller_worker_id":"<id>"`` member, encoded once per connection."""
    return _CALLER_KEY + b":" + _encoder.encode(worker_id)


def with_caller(data: bytes, field: bytes) -> bytes:
    """Add the caller member (from :func:`caller_field`) to a raw JSON value if it is an object.

    The payload is spliced, not decoded. A payload that already names ``_caller_worker_id`` is
    decoded and rewritten so the engine's value is the only one (no duplicate keys).
    """
    if not data or data[0] != 0x7B:  # not an object: "{"
        return data
    if _CALLER_KEY in data:
        obj = _json_decoder.decode(data)
        obj["_caller_worker_id"] = _json_decoder.decode(field[len(_CALLER_KEY) + 1 :])
        return _encoder.encode(obj)
    # Empty object? Only "{}" or "{" + whitespace + "}" (checked without copying the payload).
    if len(data) == 2 or (data[1] in _JSON_SPACE and not data[1:-1].strip()):
        return b"{" + field + b"}"
    return b"".join((data[:-1], b",", field, b"}"))


def encode_invoke(
    invocation_id: str,
    function_id: str,
    data: bytes,
    metadata: bytes,
    traceparent: Union[str, None],
    baggage: Union[str, None],
) -> bytes:
    """An ``invokefunction`` for the function's owner; ``data`` and ``metadata`` are raw JSON.

    Built by concatenation: the payload is copied once, never re-encoded.
    """
    encode = _encoder.encode
    parts = [_INVOKE_HEAD, encode(invocation_id), b',"function_id":', encode(function_id), b',"data":', data or b"null"]
    if metadata:
        parts += (b',"metadata":', metadata)
    if traceparent is not None:
        parts += (b',"traceparent":', encode(traceparent))
    if baggage is not None:
        parts += (b',"baggage":', encode(baggage))
    parts.append(b"}")
    return b"".join(parts)


def encode_result(invocation_id: str, function_id: str, result: bytes) -> bytes:
    """A successful ``invocationresult``; ``result`` is raw JSON (empty or ``null`` = no result)."""
    if result == b"null":
        result = b""
    return _encoder.encode(
        InvocationResult(
            invocation_id=invocation_id,
            function_id=function_id,
            result=msgspec.Raw(result) if result else ABSENT,
        )
    )


def encode_error_result(invocation_id: str, function_id: str, error: ErrorBody) -> bytes:
    """A failed ``invocationresult``."""
    return _encoder.encode(
        InvocationResult(
            invocation_id=invocation_id,
            function_id=function_id,
            error=msgspec.Raw(_encoder.encode(error)),
        )
    )


_mask_bits = random.Random().getrandbits  # masking keys: unpredictable enough (picows uses rand())


def client_text_frames(payloads: list) -> bytes:
    """``payloads`` as consecutive masked WebSocket text frames (a client's), for one write:
    handlers that finish in the same loop iteration answer in one system call, not one each."""
    out: list = []
    for payload in payloads:
        size = len(payload)
        if size < 126:
            head = struct.pack("!BB", 0x81, 0x80 | size)
        elif size < 65536:
            head = struct.pack("!BBH", 0x81, 0xFE, size)
        else:
            head = struct.pack("!BBQ", 0x81, 0xFF, size)
        key = _mask_bits(32).to_bytes(4, "big")
        keys = key * (size // 4 + 1)
        masked = (int.from_bytes(payload, "big") ^ int.from_bytes(keys[:size], "big")).to_bytes(size, "big")
        out += (head, key, masked)
    return b"".join(out)


def send_text_frame(fd: int, payload: bytes) -> None:
    """Write ``payload`` as one masked text frame on the blocking socket ``fd`` (the SDK's
    direct call channel), all of it, or raise ``OSError`` (``BlockingIOError``: the socket's
    send timeout expired), perhaps with part of it written."""
    frame = memoryview(client_text_frames([payload]))
    while frame:
        frame = frame[os.write(fd, frame):]


def receive_into(fd: int, buffer: bytearray) -> int:
    """Read once from the blocking socket ``fd`` into ``buffer``; how many bytes came (0: the
    peer closed). Raises ``OSError`` (``BlockingIOError``: the socket's receive timeout expired)."""
    return os.readv(fd, [buffer])
