"""Process orchestration for the end-to-end benchmarks (caller → relay → callee on loopback).

A *relay* is our engine (``python -m iii``) or the bare picows relay (``bench/relay.py``); both
get the same peers (``bench/peers.py``) and the same frames. CPU time of the relay process is
read from ``/proc`` before and after each run, so "CPU µs per call" is the relay's own cost.
"""

from __future__ import annotations

import json
import os
import re
import resource
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Optional

BENCH = Path(__file__).resolve().parent
_URL = re.compile(r"(?:^|iii engine \S+ )listening on (ws://\S+)")  # the relay's line or the engine's
_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
ALL_CPUS = set(range(os.cpu_count() or 1))


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _CLOCK_TICKS


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for {pid}")


def raise_fd_limit() -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def _read_until(stream: IO[str], pattern: re.Pattern[str], what: str, timeout: float = 30) -> re.Match[str]:
    deadline = time.monotonic() + timeout
    lines = []
    while time.monotonic() < deadline:
        line = stream.readline()
        if not line:
            break
        lines.append(line)
        match = pattern.search(line)
        if match:
            return match
    raise RuntimeError(f"{what} did not start: {''.join(lines)}")


@dataclass
class Server:
    kind: str
    process: subprocess.Popen[str]
    url: str

    @property
    def pid(self) -> int:
        return self.process.pid

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def start_server(kind: str, modules: str = "") -> Server:
    """``engine`` (ours, from a temp config on a free loopback port, plus the ``workers:`` entries
    in ``modules``) or ``relay`` (the baseline)."""
    if kind == "engine":
        config = Path(tempfile.mkdtemp(prefix="iii-bench-")) / "config.yaml"
        config.write_text(
            "workers:\n  - name: iii-worker-manager\n    config:\n      host: 127.0.0.1\n      port: 0\n"
            "  - name: iii-http\n    config:\n      host: 127.0.0.1\n      port: 0\n"
            "  - name: iii-stream\n    config:\n      host: 127.0.0.1\n      port: 0\n"
            + modules
        )
        command = [sys.executable, "-m", "iii", "-c", str(config)]
    else:
        command = [sys.executable, str(BENCH / "relay.py"), "0"]
    log = tempfile.NamedTemporaryFile(prefix=f"iii-bench-{kind}-", suffix=".log", delete=False)
    process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, text=True, env={**os.environ, "III_NAMESPACE_GRACE_MS": "50"})
    deadline = time.monotonic() + 30
    while True:
        match = _URL.search(Path(log.name).read_text())
        if match:
            url = match.group(1)
            break
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            raise RuntimeError(f"{kind} did not start: {Path(log.name).read_text()}")
        time.sleep(0.05)
    return Server(kind, process, url)


class Callee:
    def __init__(self, url: str, function_id: str, python: str = sys.executable) -> None:
        self.process = subprocess.Popen(
            [python, str(BENCH / "peers.py"), "callee", url, function_id], stdout=subprocess.PIPE, text=True
        )
        _read_until(self.process.stdout, re.compile("ready"), "callee")  # type: ignore[arg-type]

    def stop(self) -> None:
        self.process.kill()
        self.process.wait()


def start_redis(fsync: Optional[str] = None) -> tuple["subprocess.Popen[bytes]", str]:
    """A redis-server on a free loopback port, without persistence (or with AOF and ``fsync``
    ``always`` or ``everysec``, in a directory of its own); returns it and its URL."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    persistence = ["--appendonly", "no", "--dir", tempfile.gettempdir()] if fsync is None else [
        "--appendonly", "yes", "--appendfsync", fsync, "--dir", tempfile.mkdtemp(prefix="iii-bench-redis-")]
    process = subprocess.Popen(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", *persistence],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as sock:
                sock.sendall(b"PING\r\n")
                if sock.recv(16).startswith(b"+PONG"):
                    return process, f"redis://127.0.0.1:{port}/0"
        except OSError:
            time.sleep(0.02)
    process.kill()
    raise RuntimeError("redis-server did not start")


def pin(pids: list[int], cpus: set[int]) -> None:
    for pid in pids:
        os.sched_setaffinity(pid, cpus)


def run_calls(
    server: Server,
    callee: Callee,
    function_id: str,
    payload_bytes: int,
    in_flight: int,
    seconds: float,
    max_calls: int,
    pinned: bool,
) -> dict[str, Any]:
    """One timed run; returns calls/s, latency percentiles and the relay's CPU per call."""
    cpus = {0} if pinned else ALL_CPUS
    pin([server.pid, callee.process.pid], cpus)
    caller = subprocess.Popen(
        [sys.executable, str(BENCH / "peers.py"), "caller", server.url, function_id,
         str(payload_bytes), str(in_flight), str(seconds), str(max_calls)],
        stdout=subprocess.PIPE, text=True,
    )
    pin([caller.pid], cpus)
    cpu_before = cpu_seconds(server.pid)
    out, _ = caller.communicate(timeout=seconds + 60)
    cpu_after = cpu_seconds(server.pid)
    if caller.returncode != 0:
        raise RuntimeError(f"caller failed against {server.kind}: {out}")
    result = json.loads(out.strip().splitlines()[-1])
    result["calls_per_s"] = result["calls"] / result["seconds"]
    result["cpu_us_per_call"] = (cpu_after - cpu_before) / max(result["calls"], 1) * 1e6
    return result


def median(values: list[float]) -> float:
    ordered = sorted(values)
    middle = len(ordered) // 2
    return ordered[middle] if len(ordered) % 2 else (ordered[middle - 1] + ordered[middle]) / 2


def machine_facts() -> dict[str, Any]:
    model: Optional[str] = None
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            model = line.split(":", 1)[1].strip()
            break
    import msgspec
    import picows
    import uvloop

    from iii import codec

    return {
        "cpu": model,
        "cpus": os.cpu_count(),
        "python": sys.version.split()[0],
        "uvloop": uvloop.__version__,
        "picows": getattr(picows, "__version__", "?"),
        "msgspec": msgspec.__version__,
        "codec": codec.IMPLEMENTATION,
        "kernel": os.uname().release,
    }
