"""The streamed-HTTP benchmark, once, in smoke mode: it must keep running (no timing asserted)."""

from __future__ import annotations

import subprocess
import sys

from helpers import ROOT


def test_http_stream_benchmark_runs_in_smoke_mode():
    result = subprocess.run([sys.executable, str(ROOT / "bench" / "http_stream.py"), "--smoke"],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "| download | 4 MB |" in result.stdout and "| upload | 4 MB |" in result.stdout
