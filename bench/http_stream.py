"""Streamed HTTP throughput: MB/s of a download and an upload through the engine (iii-http, two
data channels, a handler worker on our SDK) against a bare aiohttp server doing the same in the
same run, interleaved (A B A B …), medians of --reps; the engine's CPU per MB and RSS growth.

    python bench/http_stream.py                 # 64 MB per transfer, 5 reps
    python bench/http_stream.py --smoke         # seconds: proves it still runs
    python bench/http_stream.py --mb 256 --reps 7

The handler (``--role worker``) and the bare server (``--role bare``) are this file too: both
write the body in 64 KiB chunks and read uploads chunk by chunk, never whole.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from statistics import median
from typing import Any

import psutil

BENCH = Path(__file__).resolve().parent

CHUNK = 64 * 1024
BLOCK = bytes(range(256)) * (CHUNK // 256)
_HTTP_URL = re.compile(r"iii-http listening on (http://\S+)")
_WS_URL = re.compile(r"iii engine \S+ listening on (ws://\S+)")


# ----------------------------------------------------------------------------- the two servers


def run_worker(url: str) -> None:
    """The engine's handlers: GET /bench/download/:size streams, POST /bench/upload counts."""
    from iii import InitOptions, register_worker

    worker = register_worker(url, InitOptions(worker_name="bench-http"))

    async def download(req: Any) -> None:
        size, res = int(req["path_params"]["size"]), req["response"]
        await res.send_message_async('{"type":"set_headers","headers":{"content-type":"application/octet-stream"}}')
        for sent in range(0, size, CHUNK):
            await res.write(BLOCK[: min(CHUNK, size - sent)])
        await res.close_async()

    async def upload(req: Any) -> dict[str, Any]:
        size = 0
        async for chunk in req["request_body"]:
            size += len(chunk)
        return {"status_code": 200, "body": {"size": size}}

    for function_id, handler, path, method in (("bench::download", download, "bench/download/:size", "GET"),
                                                ("bench::upload", upload, "bench/upload", "POST")):
        worker.register_function(function_id, handler)
        worker.register_trigger({"type": "http", "function_id": function_id, "config": {"api_path": path, "http_method": method}})
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        triggers = worker.trigger({"function_id": "engine::triggers::list", "payload": {}})["triggers"]
        if {"bench::download", "bench::upload"} <= {t.get("function_id") for t in triggers}:
            break
        time.sleep(0.05)
    print("ready", flush=True)
    sys.stdin.read()
    worker.shutdown()


def run_bare() -> None:
    """The baseline: the same two routes on a bare aiohttp server."""
    from aiohttp import web

    async def download(request: web.Request) -> web.StreamResponse:
        size = int(request.match_info["size"])
        response = web.StreamResponse(headers={"content-type": "application/octet-stream"})
        await response.prepare(request)
        for sent in range(0, size, CHUNK):
            await response.write(BLOCK[: min(CHUNK, size - sent)])
        await response.write_eof()
        return response

    async def upload(request: web.Request) -> web.Response:
        size = 0
        async for chunk in request.content.iter_chunked(CHUNK):
            size += len(chunk)
        return web.json_response({"size": size})

    async def main() -> None:
        app = web.Application()
        app.add_routes([web.get("/bench/download/{size}", download), web.post("/bench/upload", upload)])
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        host, port = runner.addresses[0][:2]
        print(f"iii-http listening on http://{host}:{port}", flush=True)
        await asyncio.Event().wait()

    asyncio.run(main())


# ----------------------------------------------------------------------------- the measurement


def _wait_for(path: Path, pattern: re.Pattern[str], process: subprocess.Popen[Any], what: str) -> str:
    deadline = time.monotonic() + 30
    while True:
        match = pattern.search(path.read_text())
        if match:
            return match.group(1)
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            raise RuntimeError(f"{what} did not start: {path.read_text()}")
        time.sleep(0.05)


class Target:
    """A server under test: the engine with its handler worker, or the bare aiohttp server."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self.log = Path(tempfile.NamedTemporaryFile(prefix=f"iii-bench-http-{kind}-", suffix=".log", delete=False).name)
        self.worker: subprocess.Popen[str] | None = None
        if kind == "engine":
            config = Path(tempfile.mkdtemp(prefix="iii-bench-")) / "config.yaml"
            config.write_text("workers:\n  - name: iii-worker-manager\n    config:\n      host: 127.0.0.1\n      port: 0\n"
                              "  - name: iii-http\n    config:\n      host: 127.0.0.1\n      port: 0\n"
                              "  - name: iii-stream\n    config:\n      host: 127.0.0.1\n      port: 0\n")
            command = [sys.executable, "-m", "iii", "-c", str(config)]
        else:
            command = [sys.executable, __file__, "--role", "bare"]
        with self.log.open("w") as out:
            self.process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, text=True)
        self.base = _wait_for(self.log, _HTTP_URL, self.process, kind)
        if kind == "engine":
            ws = _wait_for(self.log, _WS_URL, self.process, kind)
            self.worker = subprocess.Popen([sys.executable, __file__, "--role", "worker", "--url", ws],
                                           stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
            assert self.worker.stdout is not None and self.worker.stdout.readline().strip() == "ready"

    def stop(self) -> None:
        for process in (self.worker, self.process):
            if process is not None and process.poll() is None:
                process.kill()
                process.wait()


async def _transfer(base: str, direction: str, size: int) -> float:
    """One download or upload of ``size`` bytes; returns its seconds."""
    import aiohttp

    async def body() -> Any:
        for sent in range(0, size, 1024 * 1024):
            yield BLOCK * 16 if size - sent >= 1024 * 1024 else (BLOCK * 16)[: size - sent]

    started = time.perf_counter()
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=600)) as session:
        if direction == "download":
            received = 0
            async with session.get(f"{base}/bench/download/{size}") as response:
                async for chunk in response.content.iter_any():
                    received += len(chunk)
            assert received == size, (received, size)
        else:
            async with session.post(f"{base}/bench/upload", data=body(), headers={"content-type": "application/octet-stream"}) as response:
                answer = await response.json()
            assert answer["size"] == size, answer
    return time.perf_counter() - started


def _cpu_seconds(process: psutil.Process) -> float:
    times = process.cpu_times()
    return times.user + times.system


def measure(target: Target, direction: str, size: int) -> dict[str, float]:
    process = psutil.Process(target.process.pid)
    worker = psutil.Process(target.worker.pid) if target.worker is not None else None
    cpu_before = _cpu_seconds(process)
    worker_before = _cpu_seconds(worker) if worker is not None else 0.0
    rss_before = process.memory_info().rss
    seconds = asyncio.run(_transfer(target.base, direction, size))
    megabytes = size / 1e6
    return {
        "mb_per_s": megabytes / seconds,
        "cpu_ms_per_mb": (_cpu_seconds(process) - cpu_before) / megabytes * 1000,
        "worker_cpu_ms_per_mb": (_cpu_seconds(worker) - worker_before) / megabytes * 1000 if worker is not None else 0.0,
        "rss_growth_mb": (process.memory_info().rss - rss_before) / 1e6,
    }


def http_stream_section(reps: int, size_mb: int) -> list[dict[str, Any]]:
    size = size_mb * 1_000_000
    engine, bare = Target("engine"), Target("bare")
    try:
        rows = []
        for direction in ("download", "upload"):
            runs: dict[str, list[dict[str, float]]] = {"engine": [], "bare": []}
            measure(engine, direction, min(size, 4_000_000))  # warm both up
            measure(bare, direction, min(size, 4_000_000))
            for _ in range(reps):
                runs["engine"].append(measure(engine, direction, size))
                runs["bare"].append(measure(bare, direction, size))
            row: dict[str, Any] = {"direction": direction, "size_mb": size_mb, "reps": reps}
            for kind, results in runs.items():
                row[f"{kind}_mb_per_s"] = median([r["mb_per_s"] for r in results])
                row[f"{kind}_cpu_ms_per_mb"] = median([r["cpu_ms_per_mb"] for r in results])
            row["handler_cpu_ms_per_mb"] = median([r["worker_cpu_ms_per_mb"] for r in runs["engine"]])
            row["engine_rss_growth_mb"] = max(r["rss_growth_mb"] for r in runs["engine"])
            row["ratio"] = median([e["mb_per_s"] / b["mb_per_s"] for e, b in zip(runs["engine"], runs["bare"], strict=True)])
            rows.append(row)
        return rows
    finally:
        engine.stop()
        bare.stop()


def table(rows: list[dict[str, Any]]) -> str:
    lines = [
        "streamed http (MB/s through iii-http + channels + an SDK handler vs a bare aiohttp server):",
        "| direction | size | engine MB/s | bare MB/s | engine / bare | engine CPU ms/MB | handler CPU ms/MB | bare CPU ms/MB | engine RSS growth |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['direction']} | {r['size_mb']} MB | {r['engine_mb_per_s']:.0f} | {r['bare_mb_per_s']:.0f} | "
            f"{r['ratio']:.2f}x | {r['engine_cpu_ms_per_mb']:.1f} | {r['handler_cpu_ms_per_mb']:.1f} | {r['bare_cpu_ms_per_mb']:.1f} | "
            f"{r['engine_rss_growth_mb']:.1f} MB |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--role", choices=["bench", "worker", "bare"], default="bench")
    parser.add_argument("--url")
    parser.add_argument("--smoke", action="store_true")
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--mb", type=int, default=64)
    args = parser.parse_args()
    if args.role == "worker":
        return run_worker(args.url)
    if args.role == "bare":
        return run_bare()
    reps, size_mb = (1, 4) if args.smoke else (args.reps, args.mb)
    rows = http_stream_section(reps, size_mb)
    print(table(rows))
    if not args.smoke:
        stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H-%M-%S")
        results = BENCH / "results" / f"http-stream-{stamp}.json"
        machine = {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()}
        results.write_text(json.dumps({"machine": machine, "http_stream": rows}, indent=2))
        (BENCH / "results" / "http-stream-latest.md").write_text(table(rows) + "\n")
        print(f"saved {results.relative_to(BENCH.parent)}")


if __name__ == "__main__":
    os.environ.setdefault("III_NAMESPACE_GRACE_MS", "50")
    main()
