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


@pytest.mark.parametrize("size", SIZES)
def test_orjson_full(benchmark, size):
    benchmark(orjson_full, invoke_frame(size))


@pytest.mark.parametrize("size", SIZES)
def test_msgspec_full(benchmark, size):
    benchmark(msgspec_full, invoke_frame(size))
