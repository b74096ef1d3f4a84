"""End to end, clients and scale, as pytest-benchmark entries (one round each; the numbers that
matter are in ``extra_info``). ``III_BENCH_SMOKE=1`` makes every run tiny."""

from __future__ import annotations

import os

import run

SMOKE = bool(os.environ.get("III_BENCH_SMOKE"))
REPS, SECONDS = (1, 0.2) if SMOKE else (5, 2.0)


def _record(benchmark, section, rows):
    benchmark.extra_info[section] = rows
    print("\n" + run.table({section: rows}))


def test_end_to_end_engine_vs_bare_relay(benchmark):
    rows = benchmark.pedantic(run.e2e_section, args=(REPS, SECONDS), rounds=1, iterations=1)
    assert all(r["engine_calls_per_s"] > 0 and r["relay_calls_per_s"] > 0 for r in rows)
    _record(benchmark, "e2e", rows)


def test_clients_ours_vs_official(benchmark):
    rows = benchmark.pedantic(run.clients_section, args=(REPS, 200 if SMOKE else 3000), rounds=1, iterations=1)
    _record(benchmark, "clients", rows)


def test_idle_workers_scale(benchmark):
    rows = benchmark.pedantic(run.scale_section, args=([50] if SMOKE else [1000, 10000],), rounds=1, iterations=1)
    _record(benchmark, "scale", rows)
