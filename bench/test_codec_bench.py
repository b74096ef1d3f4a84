"""Codec: route-classify an invokefunction vs a full decode+encode (ns per frame)."""

from __future__ import annotations

import orjson
import pytest

from run import SIZES, codec_twins, invoke_frame, msgspec_full, orjson_full, router_of


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("twin", sorted(codec_twins()))
def test_route(benchmark, twin, size):
    frame = invoke_frame(size)
    forwarded = benchmark(router_of(codec_twins()[twin]), frame)
    assert orjson.loads(forwarded)["data"]["_caller_worker_id"]


def utf8_frame(size: int) -> bytes:
    """``invoke_frame(size)`` with mixed-script text (2, 3 and 4-byte UTF-8) for its ASCII blob:
    the scan checks the UTF-8 of every non-ASCII byte."""
    text = ("héllo ☃ 🎉 " * size).encode()[: max(0, size - 140)].decode(errors="ignore")
    return invoke_frame(0).replace(b'"blob":""', b'"blob":"' + text.encode() + b'"')


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("twin", sorted(codec_twins()))
def test_route_utf8(benchmark, twin, size):
    forwarded = benchmark(router_of(codec_twins()[twin]), utf8_frame(size))
    assert orjson.loads(forwarded)["data"]["blob"].startswith("héllo ☃ 🎉")


@pytest.mark.parametrize("size", SIZES)
def test_orjson_full(benchmark, size):
    benchmark(orjson_full, invoke_frame(size))


@pytest.mark.parametrize("size", SIZES)
def test_msgspec_full(benchmark, size):
    benchmark(msgspec_full, invoke_frame(size))
