"""Trusted-listener calls while an RBAC listener is flooded with connections whose auth is slow.

    python bench/rbac_flood.py                      # 1,000 connections, 3 interleaved reps
    python bench/rbac_flood.py --connections 200 --reps 1 --seconds 2   # quick

One engine with two listeners: a trusted one (the auth worker, the bench callee and caller) and an
RBAC one whose auth function answers only after ``--auth-delay`` seconds, longer than the
listener's ``auth_timeout_ms``: every handshake that gets an auth call ends refused at the
deadline, the ones over ``max_pending_auth`` are refused at once (HTTP 503, before the
upgrade). The flood keeps ``--connections`` sockets trying (each reconnects at once when refused)
for the whole measured run, then closes them all. The same caller → engine → callee run on the trusted listener is timed without
and with the flood, interleaved; medians are printed (calls/s, p50/p99 µs) with the flood's
outcome counts and the engine's CPU per trusted call (which, under the flood, includes the
flood's handshakes). Everything shares the machine's CPUs; with ``--pin`` the engine and its
trusted peers run on cpu0 and the flood's client on the others (an attacker does not share the
engine's machine). Roles ``auth`` and ``flood`` are this script's own subprocesses.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import uvloop
from picows import WSFrame, WSListener, WSMsgType, WSTransport, ws_connect

sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import ALL_CPUS, Callee, Server, median, pin, raise_fd_limit, run_calls  # noqa: E402

FUNCTION = "bench::echo"
AUTH = "bench::slow-auth"
_URL = re.compile(r"iii engine \S+ listening on (ws://\S+)")


def start_engine(auth_timeout_ms: int, max_pending: int) -> tuple[subprocess.Popen[str], str, str]:
    """The engine; returns (process, trusted URL, RBAC URL)."""
    config = Path(tempfile.mkdtemp(prefix="iii-bench-rbac-")) / "config.yaml"
    config.write_text(
        "workers:\n"
        "  - name: iii-worker-manager\n    config: {host: 127.0.0.1, port: 0}\n"
        "  - name: iii-worker-manager\n    config:\n      host: 127.0.0.1\n      port: 0\n"
        f"      rbac:\n        auth_function_id: {AUTH}\n        auth_timeout_ms: {auth_timeout_ms}\n"
        f"        max_pending_auth: {max_pending}\n        expose_functions: ['match(\"{FUNCTION}\")']\n"
    )
    log = tempfile.NamedTemporaryFile(prefix="iii-bench-rbac-", suffix=".log", delete=False)
    process = subprocess.Popen([sys.executable, "-m", "iii", "-c", str(config)], stdout=log, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 30
    while True:
        urls = _URL.findall(Path(log.name).read_text())
        if len(urls) == 2:
            return process, urls[0], urls[1]
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            raise RuntimeError(f"engine did not start: {Path(log.name).read_text()}")
        time.sleep(0.05)


# ----------------------------------------------------------------------------- auth role


class SlowAuth(WSListener):
    """Registers the auth function and answers every call after ``delay`` seconds."""

    def __init__(self, delay: float) -> None:
        self.delay = delay
        self.transport: Any = None

    def on_ws_connected(self, transport: WSTransport) -> None:
        self.transport = transport
        transport.send(WSMsgType.TEXT, json.dumps({"type": "registerfunction", "id": AUTH}).encode())

    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        if frame.msg_type != WSMsgType.TEXT:
            return
        message = json.loads(frame.get_payload_as_bytes())
        if message.get("type") == "invokefunction" and message.get("invocation_id"):
            answer = json.dumps({
                "type": "invocationresult", "invocation_id": message["invocation_id"],
                "function_id": AUTH, "result": {"context": {}},
            }).encode()
            asyncio.get_running_loop().call_later(self.delay, self._answer, answer)

    def _answer(self, answer: bytes) -> None:
        if not self.transport.is_disconnected:
            self.transport.send(WSMsgType.TEXT, answer)


async def run_auth(url: str, delay: float) -> None:
    transport, _ = await ws_connect(lambda: SlowAuth(delay), url)
    print("ready", flush=True)
    await transport.wait_disconnected()


# ----------------------------------------------------------------------------- flood role


class FloodSocket(WSListener):
    """Sends a registration at once (held by the engine until the auth answers) and records how
    the engine ended the handshake."""

    def __init__(self) -> None:
        self.outcome = "closed"

    def on_ws_connected(self, transport: WSTransport) -> None:
        transport.send(WSMsgType.TEXT, b'{"type":"registerfunction","id":"flood::fn"}')

    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        if frame.msg_type == WSMsgType.TEXT and self.outcome == "closed":
            message = json.loads(frame.get_payload_as_bytes())
            if message.get("type") == "workerregistered":
                self.outcome = "admitted"
            else:
                text = message.get("error", {}).get("message", "")
                self.outcome = "refused: too many pending" if "too many" in text else "refused: auth timed out" if "timed out" in text else f"refused: {text[:40]}"
        elif frame.msg_type == WSMsgType.CLOSE:
            transport.send_close(frame.get_close_code())
            transport.disconnect()


async def run_flood(url: str, connections: int, seconds: float) -> None:
    outcomes: Counter[str] = Counter()
    live: set[WSTransport] = set()
    loop = asyncio.get_running_loop()
    stop_at = loop.time() + seconds

    async def keep_trying(index: int) -> None:
        while loop.time() < stop_at:
            try:
                transport, listener = await ws_connect(FloodSocket, f"{url}/?token=flood-{index}")
            except Exception as exc:
                if "503" in str(exc):  # max_pending_auth reached: refused before the upgrade
                    outcomes["refused: 503 before the upgrade"] += 1
                    continue
                outcomes[f"connect failed: {type(exc).__name__}"] += 1  # a full backlog, say
                await asyncio.sleep(0.05)
                continue
            live.add(transport)
            try:
                await asyncio.wait_for(transport.wait_disconnected(), max(0.01, stop_at - loop.time()))
            except asyncio.TimeoutError:
                pass
            live.discard(transport)
            outcomes[listener.outcome if transport.is_disconnected else "open at the end"] += 1

    tasks = [asyncio.ensure_future(keep_trying(index)) for index in range(connections)]
    print("started", flush=True)
    await asyncio.gather(*tasks)
    for transport in list(live):  # close them all
        transport.disconnect()
    print(json.dumps({"outcomes": dict(outcomes), "cpu_s": time.process_time(), "seconds": seconds}), flush=True)


# ----------------------------------------------------------------------------- orchestration


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("role", nargs="?", default="bench")
    parser.add_argument("args", nargs="*")
    parser.add_argument("--connections", type=int, default=1000)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--in-flight", type=int, default=16)
    parser.add_argument("--auth-delay", type=float, default=5.0)
    parser.add_argument("--auth-timeout-ms", type=int, default=1000)
    parser.add_argument("--max-pending", type=int, default=256)
    parser.add_argument("--pin", action="store_true", help="engine and trusted peers on cpu0, the flood elsewhere")
    options = parser.parse_args()
    if options.role == "auth":
        uvloop.run(run_auth(options.args[0], float(options.args[1])))
        return
    if options.role == "flood":
        raise_fd_limit()
        uvloop.run(run_flood(options.args[0], int(options.args[1]), float(options.args[2])))
        return
    raise_fd_limit()
    engine, trusted, restricted = start_engine(options.auth_timeout_ms, options.max_pending)
    server = Server("engine", engine, trusted)  # type: ignore[arg-type]
    auth = subprocess.Popen([sys.executable, __file__, "auth", trusted, str(options.auth_delay)], stdout=subprocess.PIPE, text=True)
    callee = None
    try:
        assert auth.stdout is not None and auth.stdout.readline().strip() == "ready"
        callee = Callee(trusted, FUNCTION)
        if options.pin:
            pin([auth.pid], {0})
        quiet, flooded, floods = [], [], []
        for _ in range(options.reps):
            quiet.append(run_calls(server, callee, FUNCTION, 160, options.in_flight, options.seconds, 10**9, options.pin))
            flood = subprocess.Popen(
                [sys.executable, __file__, "flood", restricted, str(options.connections), str(options.seconds + 1.5)],
                stdout=subprocess.PIPE, text=True,
            )
            if options.pin:
                pin([flood.pid], (ALL_CPUS - {0}) or ALL_CPUS)
            assert flood.stdout is not None and flood.stdout.readline().strip() == "started"
            time.sleep(0.5)  # the flood is in full swing before the timed run starts
            flooded.append(run_calls(server, callee, FUNCTION, 160, options.in_flight, options.seconds, 10**9, options.pin))
            out, _ = flood.communicate(timeout=options.seconds + 60)
            floods.append(json.loads(out.strip().splitlines()[-1]))
        print(f"trusted listener, {options.in_flight} calls in flight, 160 B, medians of {options.reps} "
              f"interleaved runs of {options.seconds:g} s; flood: {options.connections} sockets on the RBAC "
              f"listener, auth answers after {options.auth_delay:g} s, auth_timeout_ms {options.auth_timeout_ms}, "
              f"max_pending_auth {options.max_pending}{'; pinned' if options.pin else ''}")
        print("| run | calls/s | p50 µs | p99 µs | engine CPU µs/call |\n|---|---|---|---|---|")
        for label, runs in (("no flood", quiet), ("flood", flooded)):
            print(f"| {label} | {median([r['calls_per_s'] for r in runs]):,.0f} | "
                  f"{median([r['p50_us'] for r in runs]):,.0f} | {median([r['p99_us'] for r in runs]):,.0f} | "
                  f"{median([r['cpu_us_per_call'] for r in runs]):,.1f} |")
        ratio = median([f["calls_per_s"] / q["calls_per_s"] for q, f in zip(quiet, flooded)])
        print(f"flood / no flood calls/s (median of paired runs): {ratio:.2f}")
        totals: Counter[str] = Counter()
        for outcome in floods:
            totals.update(outcome["outcomes"])
        print("flood handshakes (all reps):", json.dumps(dict(totals)))
        print(f"the flood client's own CPU: {median([f['cpu_s'] / f['seconds'] for f in floods]):.2f} CPU-seconds per second")
    finally:
        if callee is not None:
            callee.stop()
        auth.kill()
        auth.wait()
        server.stop()


if __name__ == "__main__":
    os.environ.setdefault("III_NAMESPACE_GRACE_MS", "50")
    main()
