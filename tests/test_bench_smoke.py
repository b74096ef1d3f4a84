"""The benchmark suite, once, in smoke mode: it must keep running (no timing is asserted)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest

from helpers import ROOT


def smoke(official_python: str, *sections: str) -> str:
    result = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "run.py"), "--smoke", "--sections", ",".join(sections)],
        capture_output=True, text=True, timeout=600, env={**os.environ, "III_OFFICIAL_PYTHON": official_python},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


@pytest.mark.timeout(660)  # bounded by the run's own timeout; a loaded machine makes it slow
def test_benchmarks_run_in_smoke_mode(official_python):
    out = smoke(official_python, "codec", "e2e", "clients", "scale", "stores")
    for heading in ("codec:", "end to end:", "clients:", "scale:", "stores:"):
        assert heading in out
    assert out.count("| 160 B |") >= 4


@pytest.mark.timeout(660)
def test_module_benchmarks_run_in_smoke_mode(official_python):
    out = smoke(official_python, "http", "state", "pubsub", "cron")
    for heading in ("http:", "state and queue:", "pubsub:", "cron:"):
        assert heading in out
    assert out.count("| in_memory |") == 4 and out.count("| durable |") == 3
    if shutil.which("redis-server"):  # the queue on Redis, two fsync policies
        assert out.count("| enqueue → delivery | redis (fsync ") == 2


@pytest.mark.timeout(300)
def test_cluster_benchmark_runs_in_smoke_mode(redis_server):  # (the fixture: redis-server is there)
    result = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "cluster.py"), "--smoke"], capture_output=True, text=True, timeout=240,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert [line.split()[0] for line in result.stdout.splitlines()[1:4]] == ["raw-1", "raw-64", "sdk"]
