"""The module benchmark sections of ``run.py``, each against a baseline measured in the same run
(interleaved: engine, baseline, engine, baseline …; medians of the repetitions). Engines are
started with :func:`iii.testing.start_engine`, the plugin's engine.

  http    GET bench/hello?name=… returning a small JSON body: aiohttp client → engine (iii-http)
          → our SDK worker → back, vs a bare aiohttp handler doing the same work in one process;
          requests/s, p50/p99 at 1 (client, engine and worker pinned to cpu0; the bare server
          too) and 64 concurrent
  state   state::set and state::get (64 in flight, raw protocol peer), in memory, durable
          (SQLite) and on Redis (the redis adapter, a local redis-server without persistence;
          skipped when redis-server is not installed), vs a routed call to a worker (the
          engine's own hot path) in the same run
  queue   enqueue → delivery: 64 jobs between enqueue and delivery, msgs/s and latency, in
          memory, durable (SQLite) and on Redis (the queue's redis adapter, a local redis-server
          with AOF, fsync on every write or every second), vs a routed call
  pubsub  publish to 10 subscribers: deliveries/s and publish → last delivery, vs the same
          deliveries made as 10 direct calls per message
  cron    10 jobs every second for --cron-seconds: how late each run reaches the worker
          (p50/p99), vs loop timers due at the same instants in a bare process
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any, Optional

from harness import ALL_CPUS, BENCH, cpu_seconds, median, pin, start_redis
from iii.testing import EngineProcess, start_engine

PEER = str(BENCH / "module_peer.py")
_ENV = {**os.environ, "OTEL_ENABLED": "false"}
SUBSCRIBERS = 10
CRON_JOBS = 10
IN_FLIGHT = 64


def _run(args: list[str], timeout: float, cpus: Optional[set[int]] = None) -> dict[str, Any]:
    process = subprocess.Popen([sys.executable, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_ENV)
    if cpus is not None:
        pin([process.pid], cpus)
    out, err = process.communicate(timeout=timeout)
    if process.returncode != 0:
        raise RuntimeError(f"{args[:2]} failed: {err[-2000:]}")
    return json.loads(out.strip().splitlines()[-1])


def _start(args: list[str], ready: str) -> "subprocess.Popen[str]":
    """A long-running peer; returns once it printed a line starting with ``ready``."""
    process = subprocess.Popen([sys.executable, *args], stdout=subprocess.PIPE, text=True, env=_ENV)
    line = process.stdout.readline()  # type: ignore[union-attr]
    if not line.startswith(ready):
        process.kill()
        raise RuntimeError(f"{args[:2]} did not start: {line!r}")
    process.ready_line = line.strip()  # type: ignore[attr-defined]
    return process


def _stop(process: "subprocess.Popen[str]") -> None:
    process.kill()
    process.wait()


def _engine(durable: bool = False) -> EngineProcess:
    return start_engine(durable=durable, env={"III_NAMESPACE_GRACE_MS": "50"})


def _medians(runs: list[dict[str, Any]], keys: tuple[str, ...]) -> dict[str, float]:
    return {key: median([run[key] for run in runs]) for key in keys}


# ----------------------------------------------------------------------------- http


def http_section(reps: int, seconds: float) -> list[dict[str, Any]]:
    engine = _engine()
    worker = _start([PEER, "http-worker", engine.url], "ready")
    bare = _start([PEER, "bare-http"], "listening on ")
    targets = {"engine": (engine.http_url, [engine.pid, worker.pid]), "bare": (bare.ready_line.split()[-1], [bare.pid])}  # type: ignore[attr-defined]
    try:
        rows = []
        for concurrency in (1, 64):
            cpus = {0} if concurrency == 1 else ALL_CPUS  # one in flight: no cross-CPU wake-ups
            runs: dict[str, list[dict[str, Any]]] = {"engine": [], "bare": []}
            for _ in range(reps):
                for kind, (url, pids) in targets.items():
                    pin(pids, cpus)
                    before = sum(cpu_seconds(pid) for pid in pids)
                    result = _run([PEER, "http-client", str(url), str(concurrency), str(seconds)], seconds + 120, cpus)
                    result["requests_per_s"] = result["requests"] / result["seconds"]
                    # the server side's CPU: engine + worker, or the bare server (the client's
                    # warm-up requests counted too)
                    served = result["requests"] + result["warmup_requests"]
                    result["server_cpu_us"] = (sum(cpu_seconds(pid) for pid in pids) - before) / served * 1e6
                    runs[kind].append(result)
            row: dict[str, Any] = {"concurrency": concurrency}
            for kind, results in runs.items():
                for key, value in _medians(results, ("requests_per_s", "p50_us", "p99_us", "server_cpu_us")).items():
                    row[f"{kind}_{key}"] = value
            row["ratio_requests"] = median([e["requests_per_s"] / b["requests_per_s"] for e, b in zip(runs["engine"], runs["bare"])])
            row["ratio_p50"] = row["engine_p50_us"] / row["bare_p50_us"]
            rows.append(row)
        return rows
    finally:
        for process in (worker, bare):
            _stop(process)
        engine.stop()


# ----------------------------------------------------------------------------- state and queue


def _store_run(engine: EngineProcess, role: list[str], seconds: float) -> dict[str, Any]:
    before = cpu_seconds(engine.pid)
    result = _run(role, seconds + 120)
    calls = result.get("calls", result.get("messages"))
    result["per_s"] = calls / result["seconds"]
    result["cpu_us"] = (cpu_seconds(engine.pid) - before) / max(calls, 1) * 1e6
    return result


def stores_section(reps: int, seconds: float) -> list[dict[str, Any]]:
    """state::set, state::get and enqueue → delivery on in-memory and durable engines, and a
    routed call on the in-memory one, interleaved."""
    engines = {"in_memory": _engine(), "durable": _engine(durable=True)}
    redis_servers = []
    if shutil.which("redis-server"):
        redis, redis_url = start_redis()
        redis_servers.append(redis)
        engines["redis"] = start_engine(
            {"iii-state": {"adapter": {"name": "redis", "config": {"redis_url": redis_url}}}},
            env={"III_NAMESPACE_GRACE_MS": "50"},
        )
        for fsync in ("always", "everysec"):  # the queue on Redis (enqueue → delivery only)
            redis, redis_url = start_redis(fsync)
            redis_servers.append(redis)
            engines[f"redis (fsync {fsync})"] = start_engine(
                {"iii-queue": {"adapter": {"name": "redis", "config": {"redis_url": redis_url}}}},
                env={"III_NAMESPACE_GRACE_MS": "50"},
            )
    callee = _start([str(BENCH / "peers.py"), "callee", engines["in_memory"].url, "bench::echo"], "ready")
    try:
        cases: list[tuple[str, str, list[str]]] = []
        for store in engines:
            url = engines[store].url
            for op in ("set", "get") if not store.startswith("redis (") else ():
                cases.append((f"state::{op}", store, [str(BENCH / "store_peer.py"), url, op, str(IN_FLIGHT), str(seconds)]))
            if store == "redis":  # the queue stays builtin there
                continue
            cases.append(("enqueue → delivery", store, [PEER, "deliver", url, str(IN_FLIGHT), str(seconds)]))
        baseline = [str(BENCH / "peers.py"), "caller", engines["in_memory"].url, "bench::echo", "160", str(IN_FLIGHT), str(seconds), str(10**9)]
        runs: dict[tuple[str, str], list[dict[str, Any]]] = {}
        for _ in range(reps):
            for op, store, role in cases:
                runs.setdefault((op, store), []).append(_store_run(engines[store], role, seconds))
            runs.setdefault(("routed call", "in_memory"), []).append(_store_run(engines["in_memory"], baseline, seconds))
        routed = median([r["per_s"] for r in runs[("routed call", "in_memory")]])
        rows = []
        for (op, store), results in runs.items():
            row = {"op": op, "store": store, **_medians(results, ("per_s", "p50_us", "p99_us", "cpu_us"))}
            row["routed_per_s"] = routed
            row["ratio_routed"] = row["per_s"] / routed
            rows.append(row)
        return rows
    finally:
        _stop(callee)
        for engine in engines.values():
            engine.stop()
        for redis in redis_servers:
            _stop(redis)  # type: ignore[arg-type]


# ----------------------------------------------------------------------------- pub/sub


def pubsub_section(reps: int, seconds: float) -> list[dict[str, Any]]:
    engine = _engine()
    try:
        runs: dict[str, list[dict[str, Any]]] = {"publish": [], "direct": []}
        for _ in range(reps):
            for mode in runs:
                before = cpu_seconds(engine.pid)
                result = _run([PEER, "fanout", engine.url, str(SUBSCRIBERS), str(IN_FLIGHT), str(seconds), mode], seconds + 120)
                result["deliveries_per_s"] = result["deliveries"] / result["seconds"]
                result["cpu_us"] = (cpu_seconds(engine.pid) - before) / max(result["deliveries"], 1) * 1e6
                runs[mode].append(result)
        row: dict[str, Any] = {"subscribers": SUBSCRIBERS, "in_flight": IN_FLIGHT}
        for mode, results in runs.items():
            for key, value in _medians(results, ("deliveries_per_s", "p50_us", "p99_us", "cpu_us")).items():
                row[f"{mode}_{key}"] = value
        row["ratio_deliveries"] = median([p["deliveries_per_s"] / d["deliveries_per_s"] for p, d in zip(runs["publish"], runs["direct"])])
        return [row]
    finally:
        engine.stop()


# ----------------------------------------------------------------------------- cron


def cron_section(reps: int, seconds: float) -> list[dict[str, Any]]:
    """One engine run and one baseline run of ``seconds`` each per repetition."""
    engine = _engine()
    try:
        runs: dict[str, list[dict[str, Any]]] = {"engine": [], "timers": []}
        for _ in range(reps):
            runs["engine"].append(_run([PEER, "cron", engine.url, str(CRON_JOBS), str(seconds)], seconds + 60))
            runs["timers"].append(_run([PEER, "timers", str(CRON_JOBS), str(seconds)], seconds + 60))
        row: dict[str, Any] = {"jobs": CRON_JOBS, "seconds": seconds}
        for kind, results in runs.items():
            row[f"{kind}_runs"] = sum(r["runs"] for r in results)
            for key, value in _medians(results, ("p50_us", "p99_us")).items():
                row[f"{kind}_{key}"] = value
        return [row]
    finally:
        engine.stop()


# ----------------------------------------------------------------------------- report


def table(results: dict[str, Any]) -> list[str]:
    lines: list[str] = []
    if "http" in results:
        lines += ["http: GET returning a small JSON body; aiohttp client → engine → our SDK worker → back vs a bare aiohttp handler (medians; ratio: median of paired runs)",
                  "| concurrent | engine req/s | bare req/s | ratio | engine p50/p99 µs | bare p50/p99 µs | p50 ratio | engine+worker CPU µs/req | bare CPU µs/req |", "|---|---|---|---|---|---|---|---|---|"]
        for r in results["http"]:
            flight = "1 (pinned cpu0)" if r["concurrency"] == 1 else str(r["concurrency"])
            lines.append(f"| {flight} | {r['engine_requests_per_s']:,.0f} | {r['bare_requests_per_s']:,.0f} | {r['ratio_requests']:.2f} | "
                         f"{r['engine_p50_us']:.0f}/{r['engine_p99_us']:.0f} | {r['bare_p50_us']:.0f}/{r['bare_p99_us']:.0f} | {r['ratio_p50']:.2f} | "
                         f"{r.get('engine_server_cpu_us', float('nan')):.0f} | {r.get('bare_server_cpu_us', float('nan')):.0f} |")
        lines.append("")
    if "state" in results:
        lines += [f"state and queue: {IN_FLIGHT} in flight from a raw-protocol worker; baseline: a routed call to a worker on the in-memory engine, same run",
                  "| op | store | ops/s | vs routed call | p50/p99 µs | engine CPU µs/op |", "|---|---|---|---|---|---|"]
        for r in results["state"]:
            lines.append(f"| {r['op']} | {r['store']} | {r['per_s']:,.0f} | {r['ratio_routed']:.2f} | {r['p50_us']:.0f}/{r['p99_us']:.0f} | {r['cpu_us']:.1f} |")
        lines.append("")
    if "pubsub" in results:
        lines += [f"pubsub: publish to {SUBSCRIBERS} subscribers, {IN_FLIGHT} messages in flight, vs {SUBSCRIBERS} direct calls per message",
                  "| publish deliveries/s | direct deliveries/s | ratio | publish p50/p99 µs (to last) | direct p50/p99 µs | engine CPU µs/delivery publish / direct |", "|---|---|---|---|---|---|"]
        for r in results["pubsub"]:
            lines.append(f"| {r['publish_deliveries_per_s']:,.0f} | {r['direct_deliveries_per_s']:,.0f} | {r['ratio_deliveries']:.2f} | "
                         f"{r['publish_p50_us']:.0f}/{r['publish_p99_us']:.0f} | {r['direct_p50_us']:.0f}/{r['direct_p99_us']:.0f} | "
                         f"{r['publish_cpu_us']:.1f} / {r['direct_cpu_us']:.1f} |")
        lines.append("")
    if "cron" in results:
        lines += [f"cron: {CRON_JOBS} jobs every second; lateness at the worker vs loop timers in a bare process",
                  "| runs engine / timers | engine p50/p99 ms | timers p50/p99 ms |", "|---|---|---|"]
        for r in results["cron"]:
            lines.append(f"| {r['engine_runs']} / {r['timers_runs']} | {r['engine_p50_us'] / 1000:.2f}/{r['engine_p99_us'] / 1000:.2f} | "
                         f"{r['timers_p50_us'] / 1000:.2f}/{r['timers_p99_us'] / 1000:.2f} |")
        lines.append("")
    return lines


SECTIONS = {"http": http_section, "state": stores_section, "pubsub": pubsub_section, "cron": cron_section}
