"""Streamed HTTP throughput (engine vs bare aiohttp, same run) as a pytest-benchmark entry (one
round; the numbers are in ``extra_info``). ``III_BENCH_SMOKE=1`` makes it tiny."""

from __future__ import annotations

import os

import http_stream

SMOKE = bool(os.environ.get("III_BENCH_SMOKE"))


def test_streamed_http_engine_vs_bare_aiohttp(benchmark):
    reps, size_mb = (1, 4) if SMOKE else (5, 64)
    rows = benchmark.pedantic(http_stream.http_stream_section, args=(reps, size_mb), rounds=1, iterations=1)
    assert all(r["engine_mb_per_s"] > 0 and r["bare_mb_per_s"] > 0 for r in rows)
    benchmark.extra_info["http_stream"] = rows
    print("\n" + http_stream.table(rows))
