"""The frame codec, both twins: decoding what the official SDKs send, encoding what they read."""

from __future__ import annotations

import errno
import json
import socket
import struct

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from iii.protocol import ActionEnqueue, ActionVoid, ErrorBody, InvokeFunction, RegisterTrigger

from helpers import VECTORS


def captured_worker_frames():
    frames = []
    for path in sorted(VECTORS.glob("*.jsonl")):
        if path.name.endswith(".observed.jsonl"):
            continue
        for line in path.read_text().splitlines():
            record = json.loads(line)
            if record.get("dir") == "worker->engine" and "frame" in record and record.get("path") == "/":
                frames.append(pytest.param(record["frame"], id=f"{path.stem}:{record['frame'].get('type')}"))
    return frames


CAPTURED = captured_worker_frames()


def test_vectors_are_there():
    assert len(CAPTURED) > 50, f"no captured frames found under {VECTORS}"


@pytest.mark.parametrize("frame", CAPTURED)
def test_every_captured_sdk_frame_decodes(codec, frame):
    msg = codec.decode_frame(json.dumps(frame).encode())
    assert type(msg).__struct_config__.tag == frame["type"]
    if isinstance(msg, InvokeFunction) and "data" in frame:
        assert json.loads(bytes(msg.data)) == frame["data"]


def test_payloads_stay_raw_and_routing_fields_are_read(codec):
    raw = b'{"data":{"deep":[1,{"x":"y"}]},"function_id":"math::add","invocation_id":"i-1","action":{"type":"void"},"namespace":"default","type":"invokefunction"}'
    msg = codec.decode_frame(raw)
    assert isinstance(msg.data, msgspec.Raw) and bytes(msg.data) == b'{"deep":[1,{"x":"y"}]}'
    assert (msg.function_id, msg.invocation_id, msg.namespace) == ("math::add", "i-1", "default")
    assert isinstance(msg.action, ActionVoid)
    enqueue = codec.decode_frame(b'{"type":"invokefunction","function_id":"f","action":{"type":"enqueue","queue":"q"}}')
    assert enqueue.action == ActionEnqueue(queue="q")
    assert enqueue.namespace is msgspec.UNSET and not enqueue.data


@pytest.mark.parametrize(
    "raw, where",
    [
        (b'{"type":"invokefunction","function_id":1}', "$.function_id"),
        (b'{"type":"bogus"}', "$.type"),
        (b"{", "truncated"),
        # msgspec keeps payloads raw without checking their UTF-8; the codec checks it.
        (b'{"type":"invokefunction","function_id":"f","data":"\xff"}', "invalid UTF-8 at byte 51"),
        (b'{"type":"invokefunction","function_id":"f","data":{"k\xed\xa0\x80":1}}', "invalid UTF-8 at byte 53"),
    ],
)
def test_decode_errors_name_the_problem(codec, raw, where):
    with pytest.raises(codec.DecodeError) as info:
        codec.decode_frame(raw)
    assert where in str(info.value)


def test_probe_reads_type_and_id_of_a_bad_frame(codec):
    probe = codec.probe_frame(b'{"type":"invokefunction","invocation_id":"x","function_id":1}')
    assert (probe.type, probe.invocation_id) == ("invokefunction", "x")
    assert codec.probe_frame(b"garbage").type is None


def test_encoders_produce_what_the_sdks_read(codec):
    assert json.loads(codec.encode_invoke("i", "f::x", b'{"a":1}', b'{"m":2}', "tp", None)) == {
        "type": "invokefunction", "function_id": "f::x", "invocation_id": "i",
        "data": {"a": 1}, "metadata": {"m": 2}, "traceparent": "tp",
    }
    assert json.loads(codec.encode_invoke("i", "f", b"", b"", None, None))["data"] is None
    assert json.loads(codec.encode_result("i", "f", b"null")) == {"type": "invocationresult", "invocation_id": "i", "function_id": "f"}
    assert json.loads(codec.encode_error_result("i", "f", ErrorBody("c", "m"))) == {
        "type": "invocationresult", "invocation_id": "i", "function_id": "f", "error": {"code": "c", "message": "m"},
    }
    trigger = RegisterTrigger(id="t", trigger_type="x", function_id="f", config=msgspec.Raw(b"null"))
    assert json.loads(codec.encode_message(trigger)) == {"type": "registertrigger", "id": "t", "trigger_type": "x", "function_id": "f", "config": None}


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=12,
)


@settings(max_examples=200, deadline=None)
@given(value=json_values, spacing=st.sampled_from([(",", ":"), (", ", ": ")]))
def test_caller_splice_equals_decode_and_set(value, spacing):
    """Property: splicing the caller id into raw bytes equals decoding, setting, re-encoding —
    and both twins give byte-identical output."""
    from iii import _codec_py

    twins = [_codec_py]
    try:
        from iii import _codec

        twins.append(_codec)
    except ImportError:
        pass
    raw = json.dumps(value, separators=spacing).encode()
    outputs = {twin.with_caller(raw, twin.caller_field("w-1")) for twin in twins}
    assert len(outputs) == 1
    (spliced,) = outputs
    expected = dict(value, _caller_worker_id="w-1") if isinstance(value, dict) else value
    assert json.loads(spliced) == expected


@pytest.mark.parametrize(
    "raw", [b"{}", b"{ }", b"{\n\t }", b'{"a":1}', b'{ "a" : 1 }', b"[]", b"null", b"", b'"s"', b'{"_caller_worker_id":1}']
)
def test_caller_splice_edge_cases_agree_across_twins(codec, raw):
    from iii import _codec_py

    field = codec.caller_field("w")
    assert codec.with_caller(raw, field) == _codec_py.with_caller(raw, field)
    if raw.startswith(b"{"):
        assert json.loads(codec.with_caller(raw, field))["_caller_worker_id"] == "w"


@pytest.mark.parametrize("sizes", [[0], [1, 3, 7, 8, 9, 15, 16, 17], [125, 126, 127, 4096, 65535], [65536, 70_003]])
def test_client_text_frames_are_masked_text_frames_of_the_payloads(codec, sizes):
    payloads = [bytes((n * 7 + k) % 256 for k in range(n)) for n in sizes]
    assert unmask_frames(codec.client_text_frames(payloads)) == payloads


def unmask_frames(out: bytes) -> list[bytes]:
    """The payloads of consecutive masked text frames."""
    offset, unmasked = 0, []
    while offset < len(out):
        assert out[offset] == 0x81 and out[offset + 1] & 0x80  # final text frame, masked
        size, offset = out[offset + 1] & 0x7F, offset + 2
        if size == 126:
            size, offset = int.from_bytes(out[offset:offset + 2], "big"), offset + 2
        elif size == 127:
            size, offset = int.from_bytes(out[offset:offset + 8], "big"), offset + 8
        key, offset = out[offset:offset + 4], offset + 4
        unmasked.append(bytes(b ^ key[k % 4] for k, b in enumerate(out[offset:offset + size])))
        offset += size
    return unmasked


# The SDK's direct call channel: one write of a whole frame, one read into a kept buffer.


@pytest.fixture
def socket_pair():
    ours, theirs = socket.socketpair()
    yield ours, theirs
    ours.close()
    theirs.close()


@pytest.mark.parametrize("size", [0, 125, 126, 70_003])
def test_send_text_frame_writes_the_whole_masked_frame(codec, socket_pair, size):
    ours, theirs = socket_pair
    payload = bytes((n * 7) % 256 for n in range(size))
    codec.send_text_frame(ours.fileno(), payload)
    ours.shutdown(socket.SHUT_RDWR)  # their reads end after the frame
    received = b""
    while chunk := theirs.recv(1 << 16):
        received += chunk
    assert unmask_frames(received) == [payload]


def test_send_text_frame_raises_when_the_peer_is_gone(codec, socket_pair):
    ours, theirs = socket_pair
    theirs.close()
    with pytest.raises(OSError):
        codec.send_text_frame(ours.fileno(), b"{}")


def test_receive_into_reads_once_into_the_buffer(codec, socket_pair):
    ours, theirs = socket_pair
    theirs.sendall(b"\x81\x02{}")
    buffer = memoryview(bytearray(64))
    assert codec.receive_into(ours.fileno(), buffer) == 4
    assert bytes(buffer[:4]) == b"\x81\x02{}"
    theirs.close()
    assert codec.receive_into(ours.fileno(), buffer) == 0  # the peer closed


def test_receive_into_raises_as_os_readv_does(codec, socket_pair):
    ours, _theirs = socket_pair
    ours.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, struct.pack("ll", 0, 20_000))  # 20 ms
    with pytest.raises(BlockingIOError):  # the receive timeout expired
        codec.receive_into(ours.fileno(), bytearray(16))
    with pytest.raises(OSError) as bad_fd:
        codec.receive_into(-1, bytearray(16))
    assert bad_fd.value.errno == errno.EBADF
