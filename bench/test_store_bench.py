"""The file_based stores against the in-memory ones, as a pytest-benchmark entry (one round; the
numbers that matter are in ``extra_info``). ``III_BENCH_SMOKE=1`` makes the runs tiny."""

from __future__ import annotations

import os

import run

SMOKE = bool(os.environ.get("III_BENCH_SMOKE"))
REPS, SECONDS = (1, 0.2) if SMOKE else (5, 2.0)


def test_file_based_vs_in_memory_stores(benchmark):
    rows = benchmark.pedantic(run.stores_section, args=(REPS, SECONDS), rounds=1, iterations=1)
    assert all(r["in_memory_calls_per_s"] > 0 and r["file_based_calls_per_s"] > 0 for r in rows)
    benchmark.extra_info["stores"] = rows
    print("\n" + run.table({"stores": rows}))
