"""A call across two engines (``iii-cluster``) vs a call within one, in the same run.

    python bench/cluster.py                  # ~1 minute; results in bench/results/cluster-*.json
    python bench/cluster.py --smoke          # seconds: proves it still runs (nothing saved)

Two engines share a redis-server started here; the callee is a worker on our SDK
(``sdk_peer.py callee``) connected to engine B. The same callers run against B (the call stays
in one engine) and against A (A forwards it on its link to B and the answer comes back),
interleaved B A B A …, medians of ``--reps``:

- ``peers.py caller`` (bare protocol, so the engines are what is measured): 1 call in flight
  and 64 in flight, 160 B payload: calls/s, p50/p99 latency;
- ``sdk_peer.py caller`` (our SDK, sequential ``trigger()`` calls): calls/s.
"""

from __future__ import annotations

import argparse
import datetime
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import BENCH, machine_facts, median, start_redis, start_server  # noqa: E402

FUNCTION = "bench::sdk-echo"
PAYLOAD = 160


def wait_listed(url: str, function_id: str, timeout: float = 30) -> None:
    """Return once the engine at ``url`` lists ``function_id`` (learned from the other engine)."""
    from iii import InitOptions, register_worker

    worker = register_worker(url, InitOptions(worker_name="bench-probe", otel={"enabled": False}))
    try:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            listed = worker.trigger({"function_id": "engine::functions::list", "payload": {"prefix": function_id}})
            if listed["functions"]:
                return
            time.sleep(0.05)
        raise RuntimeError(f"{function_id} not listed at {url}")
    finally:
        worker.shutdown()


def raw_calls(url: str, in_flight: int, seconds: float) -> dict[str, Any]:
    out = subprocess.run(
        [sys.executable, str(BENCH / "peers.py"), "caller", url, FUNCTION, str(PAYLOAD), str(in_flight), str(seconds), "100000000"],
        capture_output=True, text=True, timeout=seconds + 60, check=True,
    ).stdout
    result = json.loads(out.strip().splitlines()[-1])
    result["calls_per_s"] = result["calls"] / result["seconds"]
    return result


def sdk_calls(url: str, calls: int) -> dict[str, Any]:
    out = subprocess.run(
        [sys.executable, str(BENCH / "sdk_peer.py"), "caller", url, str(calls), str(PAYLOAD)],
        capture_output=True, text=True, timeout=120, check=True,
    ).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--sdk-calls", type=int, default=3000)
    parser.add_argument("--callee", choices=("sdk", "raw"), default="sdk",
                        help="the callee: a worker on our SDK, or the bare-protocol peer (the engines' own cost)")
    parser.add_argument("--smoke", action="store_true", help="tiny runs, results not saved")
    args = parser.parse_args()
    if args.smoke:
        args.seconds, args.reps, args.sdk_calls = 0.3, 1, 50

    redis, redis_url = start_redis()
    engines = []
    callee = None
    try:
        for name in ("a", "b"):
            engines.append(start_server("engine", (
                f"  - name: iii-cluster\n    config: {{redis_url: '{redis_url}', name: {name}}}\n"
            )))
        engine_a, engine_b = engines
        command = (["sdk_peer.py", "callee", engine_b.url] if args.callee == "sdk"
                   else ["peers.py", "callee", engine_b.url, FUNCTION])
        callee = subprocess.Popen([sys.executable, str(BENCH / command[0]), *command[1:]], stdout=subprocess.PIPE, text=True)
        assert callee.stdout is not None and callee.stdout.readline().strip() == "ready"
        wait_listed(engine_a.url, FUNCTION)

        runs: dict[str, dict[str, list[dict[str, Any]]]] = {"within": {}, "across": {}}
        for _ in range(args.reps):
            for where, url in (("within", engine_b.url), ("across", engine_a.url)):
                for in_flight in (1, 64):
                    runs[where].setdefault(f"raw-{in_flight}", []).append(raw_calls(url, in_flight, args.seconds))
                runs[where].setdefault("sdk", []).append(sdk_calls(url, args.sdk_calls))

        table = {}
        for where, by_case in runs.items():
            table[where] = {
                case: {key: median([r[key] for r in results]) for key in results[0] if key in ("calls_per_s", "p50_us", "p99_us")}
                for case, results in by_case.items()
            }
        rows = []
        for case in ("raw-1", "raw-64", "sdk"):
            within, across = table["within"][case], table["across"][case]
            row = {"case": case, "within": within, "across": across,
                   "calls_per_s_ratio": within["calls_per_s"] / across["calls_per_s"]}
            if "p50_us" in within:
                row["p50_ratio"] = across["p50_us"] / within["p50_us"]
                row["p99_ratio"] = across["p99_us"] / within["p99_us"]
            rows.append(row)
        print(f"{'case':8} {'within calls/s':>15} {'across calls/s':>15} {'cost ×':>7} {'p50 µs in/across':>18} {'p99 µs in/across':>18}")
        for row in rows:
            within, across = row["within"], row["across"]
            latency = (f"{within['p50_us']:8.0f}/{across['p50_us']:<8.0f} {within['p99_us']:9.0f}/{across['p99_us']:<8.0f}"
                       if "p50_us" in within else "")
            print(f"{row['case']:8} {within['calls_per_s']:15.0f} {across['calls_per_s']:15.0f} {row['calls_per_s_ratio']:7.2f} {latency}")
        if args.smoke:
            return
        stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H-%M-%S")
        out = BENCH / "results" / f"cluster-{args.callee}-{stamp}.json"
        out.write_text(json.dumps({"machine": machine_facts(), "args": vars(args), "rows": rows, "runs": runs}, indent=1))
        print(f"saved {out.relative_to(BENCH.parent)}")
    finally:
        if callee is not None:
            callee.kill()
            callee.wait()
        for engine in engines:
            engine.stop()
        redis.kill()
        redis.wait()


if __name__ == "__main__":
    main()
