"""How long stopping takes: ``iii worker stop``, ``iii worker restart``, and Ctrl-C of the engine
with 0, 1 and 2 managed workers (each a Python worker that exits on SIGTERM); and, without the
CLI's own start-up, ``worker::stop`` called over an open connection until the worker is gone.

    python bench/stop_times.py [ROUNDS]

Prints one line per measurement (the median of ROUNDS, default 3) in seconds.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from iii.cli.trigger import connect

WORKER = '''
import os, signal, threading
from iii import InitOptions, register_worker
worker = register_worker(options=InitOptions())
worker.register_function(os.environ["III_WORKER_NAME"] + "::ping", lambda data: "pong")
stopped = threading.Event()
signal.signal(signal.SIGTERM, lambda *_: stopped.set())
stopped.wait()
worker.shutdown()
'''
_URL = re.compile(rb"iii engine \S+ listening on ws://127.0.0.1:(\d+)")
_TIMEOUT_S = 60


def _project(root: Path, workers: int) -> Path:
    config = "workers:\n  - name: iii-worker-manager\n    config: {host: 127.0.0.1, port: 0}\n"
    config += "  - name: iii-http\n    config: {host: 127.0.0.1, port: 0}\n"
    config += "  - name: iii-stream\n    config: {host: 127.0.0.1, port: 0}\n"
    for index in range(workers):
        directory = root / f"w{index}"
        directory.mkdir()
        (directory / "iii.worker.yaml").write_text(f"name: w{index}\nscripts:\n  install: ''\n  start: python main.py\n")
        (directory / "main.py").write_text(WORKER)
        config += f"  - name: w{index}\n    worker_path: {directory}\n"
    (root / "config.yaml").write_text(config)
    return root / "config.yaml"


def _cli(*args: str, env: dict[str, str]) -> None:
    done = subprocess.run([sys.executable, "-m", "iii", *args], env=env, timeout=_TIMEOUT_S,
                          stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    if done.returncode != 0:
        raise RuntimeError(f"iii {' '.join(args)} failed: {done.stderr.decode()}")  # noqa


def _start_engine(config: Path, env: dict[str, str], workers: int) -> tuple[subprocess.Popen, str]:
    log = config.parent / "engine.log"
    engine = subprocess.Popen([sys.executable, "-m", "iii", "-c", str(config)], env=env,
                              stdout=log.open("wb"), stderr=subprocess.STDOUT)
    port = None
    deadline = time.monotonic() + _TIMEOUT_S
    while port is None and time.monotonic() < deadline:
        match = _URL.search(log.read_bytes())
        port = match.group(1).decode() if match else None
        time.sleep(0.05)
    assert port is not None, "the engine did not start"
    try:
        for index in range(workers):  # `worker start` returns once the worker is connected
            _cli("-c", str(config), "worker", "start", f"w{index}", "--port", port, env=env)
    except RuntimeError:
        engine.kill()
        print(log.read_text(), file=sys.stderr)
        raise
    return engine, port


_connect_s = 0.0


async def _stop_over_connection(url: str, name: str) -> None:
    """Connect, then time ``worker::stop`` until the engine reports it stopped and disconnected."""
    global _connect_s
    began = time.monotonic()
    client = await connect(url, "stop-times")
    _connect_s = time.monotonic() - began

    async def call(function_id: str, payload: dict) -> dict:
        return await client.trigger_async({"function_id": function_id, "payload": payload, "timeout_ms": 10000})

    try:
        await call("worker::stop", {"name": name})
        deadline = time.monotonic() + _TIMEOUT_S
        while time.monotonic() < deadline:
            state = await call("worker::status", {"name": name})
            rows = (await call("engine::workers::list", {}))["workers"]
            if state["state"] == "stopped" and name not in {row["name"] for row in rows}:
                return
            await asyncio.sleep(0.01)
        raise TimeoutError(name)
    finally:
        await client.shutdown_async()


def measure(workers: int, action: str) -> float:
    with tempfile.TemporaryDirectory() as scratch:
        root = Path(scratch)
        env = {**os.environ, "III_LOGS_DIR": str(root / "logs"), "III_URL": ""}
        config = _project(root, workers)
        engine, port = _start_engine(config, env, workers)
        try:
            if os.environ.get("STOP_TIMES_DEBUG"):
                print((root / "engine.log").read_text(), file=sys.stderr)
            began = time.monotonic()
            if action == "ctrl-c":
                engine.send_signal(signal.SIGINT)
                engine.wait(_TIMEOUT_S)
            elif action == "worker::stop":
                asyncio.run(_stop_over_connection(f"ws://127.0.0.1:{port}", "w0"))
                return time.monotonic() - began - _connect_s
            else:
                _cli("-c", str(config), "worker", action, "w0", "--port", port, env=env)
            return time.monotonic() - began
        finally:
            if engine.poll() is None:
                engine.send_signal(signal.SIGINT)
                engine.wait(_TIMEOUT_S)


def main() -> None:
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 3
    times = []
    for _ in range(rounds):
        began = time.monotonic()
        _cli("--version", env=dict(os.environ))
        times.append(time.monotonic() - began)
    print(f"{'iii --version (start-up)':<22} {statistics.median(times):6.2f} s  (runs: {', '.join(f'{t:.2f}' for t in times)})", flush=True)
    for label, workers, action in (
        ("worker::stop (engine)", 1, "worker::stop"),
        ("iii worker stop", 1, "stop"),
        ("iii worker restart", 1, "restart"),
        ("Ctrl-C, 0 workers", 0, "ctrl-c"),
        ("Ctrl-C, 1 worker", 1, "ctrl-c"),
        ("Ctrl-C, 2 workers", 2, "ctrl-c"),
    ):
        times = [measure(workers, action) for _ in range(rounds)]
        print(f"{label:<22} {statistics.median(times):6.2f} s  (runs: {', '.join(f'{t:.2f}' for t in times)})", flush=True)


if __name__ == "__main__":
    main()
