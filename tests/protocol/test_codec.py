"""The frame codec, both twins: decoding what the official SDKs send, encoding what they read."""

from __future__ import annotations

import json

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
    out = codec.client_text_frames(payloads)
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
    assert unmasked == payloads
