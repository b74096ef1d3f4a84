"""Codec: route-classify an invokefunction vs a full decode+encode (ns per frame)."""

from __future__ import annotations

import msgspec
import orjson
import pytest

from run import SIZES, invoke_frame

_encoder, _decoder = msgspec.json.Encoder(), msgspec.json.Decoder()


def twins():
    from iii import _codec_py

    found = [pytest.param(_codec_py, id="py")]
    try:
        from iii import _codec

        found.append(pytest.param(_codec, id="c"))
    except ImportError:
        pass
    return found


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("codec", twins())
def test_route(benchmark, codec, size):
    frame = invoke_frame(size)
    field = codec.caller_field("00000000-0000-4000-8000-000000000001")

    def route():
        msg = codec.decode_frame(frame)
        return codec.encode_invoke(msg.invocation_id, msg.function_id, codec.with_caller(bytes(msg.data), field), b"", None, None)

    assert orjson.loads(benchmark(route))["data"]["_caller_worker_id"]


@pytest.mark.parametrize("size", SIZES)
def test_orjson_full(benchmark, size):
    frame = invoke_frame(size)

    def full():
        value = orjson.loads(frame)
        value["data"]["_caller_worker_id"] = "w"
        return orjson.dumps(value)

    benchmark(full)


@pytest.mark.parametrize("size", SIZES)
def test_msgspec_full(benchmark, size):
    frame = invoke_frame(size)

    def full():
        value = _decoder.decode(frame)
        value["data"]["_caller_worker_id"] = "w"
        return _encoder.encode(value)

    benchmark(full)
