"""The benchmark suite, once, in smoke mode: it must keep running (no timing is asserted)."""

from __future__ import annotations

import os
import subprocess
import sys

from helpers import ROOT


def test_benchmarks_run_in_smoke_mode(official_python):
    result = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "run.py"), "--smoke"],
        capture_output=True, text=True, timeout=600, env={**os.environ, "III_OFFICIAL_PYTHON": official_python},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    for heading in ("codec:", "end to end:", "clients:", "scale:", "http:", "state and queue:", "pubsub:", "cron:"):
        assert heading in result.stdout
    assert result.stdout.count("| 160 B |") >= 4
