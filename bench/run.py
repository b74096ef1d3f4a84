"""Runs every benchmark section, prints one table and saves the results.

    python bench/run.py                 # full run (a few minutes), results in bench/results/
    python bench/run.py --smoke         # seconds: proves every section still runs
    python bench/run.py --sections e2e,clients --reps 7

Sections:
  codec    route-classify an invokefunction (compiled and pure codec) vs full decode+encode
           with orjson and msgspec; ns per frame
  e2e      caller → relay → callee on loopback; our engine vs the bare picows relay, interleaved
           (A B A B …), medians of --reps: 1 in flight pinned to cpu0, 64 in flight unpinned;
           160 B and 4 KiB payloads; calls/s, p50/p99, relay CPU µs per call
  clients  our SDK vs the official Python SDK (sequential trigger() calls) against our engine:
           calls/s and client CPU µs per call; ours also with its direct call channel off
           (III_DIRECT_TRIGGER=0: every call through the SDK's loop thread)
  scale    N idle workers (1k, 10k): engine RSS per connection, engine::workers::list latency
  stores   state::set and enqueue (receipts; a callee takes the jobs), 64 in flight, against an
           engine whose state and queue are in_memory and one where they are file_based (SQLite),
           interleaved, medians of --reps: calls/s, p50/p99, engine CPU µs per call, and the
           file_based / in_memory ratio of calls/s (median of the paired runs)
  http, state, pubsub, cron
           the modules, each against a same-run baseline: see bench/modules.py
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import msgspec

sys.path.insert(0, str(Path(__file__).resolve().parent))

import modules  # noqa: E402
from harness import (  # noqa: E402
    BENCH,
    Callee,
    machine_facts,
    median,
    raise_fd_limit,
    rss_bytes,
    cpu_seconds,
    run_calls,
    start_server,
)

ROOT = BENCH.parent
FUNCTION = "bench::echo"
SIZES = (160, 4096)


# ----------------------------------------------------------------------------- codec


def invoke_frame(size: int) -> bytes:
    blob = "x" * max(0, size - 140)
    frame = ('{"type":"invokefunction","invocation_id":"00000001-0000-4000-8000-000000000000",'
             f'"function_id":"bench::echo","data":{{"blob":"{blob}","n":1}}}}').encode()
    return frame


def time_ns(function: Any, argument: Any, seconds: float) -> float:
    """Median ns per call over 5 timed batches."""
    batch = 1000
    samples = []
    for _ in range(5):
        deadline = time.perf_counter() + seconds / 5
        count = 0
        began = time.perf_counter_ns()
        while time.perf_counter() < deadline:
            for _ in range(batch):
                function(argument)
            count += batch
        samples.append((time.perf_counter_ns() - began) / count)
    return median(samples)


def codec_twins() -> dict[str, Any]:
    from iii import _codec_py

    twins = {"py": _codec_py}
    try:
        from iii import _codec

        twins["c"] = _codec
    except ImportError:
        pass
    return twins


def router_of(codec: Any) -> Any:
    """What the engine does to a forwarded call: one scan, the caller spliced in, re-framed."""
    field = codec.caller_field("00000000-0000-4000-8000-000000000001")

    def classify_and_forward(frame: bytes) -> bytes:
        return codec.route_frame(frame, field)[3]
    return classify_and_forward


def orjson_full(frame: bytes) -> bytes:
    """The naive alternative: decode everything, add the caller, encode everything."""
    import orjson

    value = orjson.loads(frame)
    value["data"]["_caller_worker_id"] = "w"
    return orjson.dumps(value)


_msgspec_encoder, _msgspec_decoder = msgspec.json.Encoder(), msgspec.json.Decoder()


def msgspec_full(frame: bytes) -> bytes:
    value = _msgspec_decoder.decode(frame)
    value["data"]["_caller_worker_id"] = "w"
    return _msgspec_encoder.encode(value)


def codec_section(seconds: float) -> list[dict[str, Any]]:
    twins = codec_twins()
    rows = []
    for size in SIZES:
        frame = invoke_frame(size)
        row: dict[str, Any] = {"size": size}
        for name, codec in twins.items():
            row[f"route_{name}_ns"] = time_ns(router_of(codec), frame, seconds)
        row["orjson_full_ns"] = time_ns(orjson_full, frame, seconds)
        row["msgspec_full_ns"] = time_ns(msgspec_full, frame, seconds)
        rows.append(row)
    return rows


# ----------------------------------------------------------------------------- e2e


def e2e_section(reps: int, seconds: float) -> list[dict[str, Any]]:
    servers = {kind: start_server(kind) for kind in ("engine", "relay")}
    callees = {kind: Callee(server.url, FUNCTION) for kind, server in servers.items()}
    try:
        rows = []
        for pinned, in_flight in ((True, 1), (False, 64)):
            for size in SIZES:
                runs: dict[str, list[dict[str, Any]]] = {"engine": [], "relay": []}
                for _ in range(reps):  # interleaved: A B A B …
                    for kind in ("engine", "relay"):
                        runs[kind].append(run_calls(servers[kind], callees[kind], FUNCTION, size, in_flight, seconds, 10**9, pinned))
                row: dict[str, Any] = {"in_flight": in_flight, "pinned": pinned, "size": size}
                for kind, results in runs.items():
                    for key in ("calls_per_s", "p50_us", "p99_us", "cpu_us_per_call"):
                        row[f"{kind}_{key}"] = median([r[key] for r in results])
                row["ratio_calls"] = row["engine_calls_per_s"] / row["relay_calls_per_s"]
                row["ratio_cpu"] = row["engine_cpu_us_per_call"] / row["relay_cpu_us_per_call"]
                rows.append(row)
        return rows
    finally:
        for callee in callees.values():
            callee.stop()
        for server in servers.values():
            server.stop()


# ----------------------------------------------------------------------------- clients


def official_python() -> str:
    return os.environ.get("III_OFFICIAL_PYTHON") or str(ROOT / ".venv-official" / "bin" / "python")


def clients_section(reps: int, calls: int) -> list[dict[str, Any]]:
    """Ours (calls on the direct call channel, the default), ours with it off
    (``III_DIRECT_TRIGGER=0``: every call through the SDK's loop thread) and the official SDK,
    interleaved in each rep."""
    base = {**os.environ, "OTEL_ENABLED": "false"}
    base.pop("III_DIRECT_TRIGGER", None)
    sdks = {
        "ours": (sys.executable, base),
        "ours_loop": (sys.executable, {**base, "III_DIRECT_TRIGGER": "0"}),
        "official": (official_python(), base),
    }
    if not Path(sdks["official"][0]).exists():
        raise SystemExit(f"the official SDK venv is missing ({sdks['official'][0]}): run scripts/bootstrap.sh")
    engine = start_server("engine")
    peer = str(BENCH / "sdk_peer.py")
    try:
        rows = []
        for size in SIZES:
            runs: dict[str, list[dict[str, Any]]] = {sdk: [] for sdk in sdks}
            for _ in range(reps):
                for sdk, (python, env) in sdks.items():
                    callee = subprocess.Popen([python, peer, "callee", engine.url], stdout=subprocess.PIPE, text=True, env=env)
                    try:
                        if callee.stdout.readline().strip() != "ready":  # type: ignore[union-attr]
                            raise RuntimeError(f"{sdk} callee did not start")
                        out = subprocess.run([python, peer, "caller", engine.url, str(calls), str(size)],
                                             capture_output=True, text=True, timeout=300, env=env)
                        if out.returncode != 0:
                            raise RuntimeError(f"{sdk} caller failed: {out.stderr[-2000:]}")
                        runs[sdk].append(json.loads(out.stdout.strip().splitlines()[-1]))
                    finally:
                        callee.terminate()
                        callee.wait(10)
            row: dict[str, Any] = {"size": size}
            for sdk, results in runs.items():
                row[f"{sdk}_calls_per_s"] = median([r["calls_per_s"] for r in results])
                row[f"{sdk}_cpu_us_per_call"] = median([r["client_cpu_us_per_call"] for r in results])
            row["cpu_ratio"] = row["ours_cpu_us_per_call"] / row["official_cpu_us_per_call"]
            row["loop_cpu_ratio"] = row["ours_loop_cpu_us_per_call"] / row["official_cpu_us_per_call"]
            rows.append(row)
        return rows
    finally:
        engine.stop()


# ----------------------------------------------------------------------------- scale


async def _list_latency(url: str, samples: int) -> float:
    sys.path.insert(0, str(ROOT / "tests"))
    from helpers import RawClient

    client = await RawClient.connect(url)
    timings = []
    for _ in range(samples):
        began = time.perf_counter()
        answer = await client.call("engine::workers::list", {}, timeout=60)
        timings.append(time.perf_counter() - began)
    await client.close()
    assert "result" in answer, answer
    return median(timings) * 1000


def scale_section(counts: list[int]) -> list[dict[str, Any]]:
    raise_fd_limit()
    rows = []
    for count in counts:
        engine = start_server("engine")
        try:
            time.sleep(0.5)
            before = rss_bytes(engine.pid)
            idle = subprocess.Popen([sys.executable, str(BENCH / "idle.py"), engine.url, str(count)],
                                    stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
            line = idle.stdout.readline().strip()  # type: ignore[union-attr]
            if line != f"connected {count}":
                raise RuntimeError(f"idle clients failed: {line}")
            time.sleep(1.0)  # registrations are void calls: let the engine apply them
            after = rss_bytes(engine.pid)
            latency = asyncio.run(_list_latency(engine.url, 5))
            idle.stdin.close()  # type: ignore[union-attr]
            idle.wait(60)
            rows.append({"workers": count, "rss_per_worker_kib": (after - before) / count / 1024, "list_ms": latency})
        finally:
            engine.stop()
    return rows


# ----------------------------------------------------------------------------- stores

STORE_METHODS = ("in_memory", "file_based")
STORE_CALLS = ("set", "enqueue")
STORE_IN_FLIGHT = 64


def store_modules(method: str, directory: Path) -> str:
    """``config.yaml`` entries putting state and the queues on ``method`` (files in ``directory``);
    the ``default`` queue runs 64 jobs at once so that its callee keeps up."""
    def adapter(name: str, file: str) -> str:
        return f"{{name: {name}, config: {{store_method: {method}, file_path: '{directory / file}'}}}}"

    return (
        f"  - name: iii-state\n    config: {{adapter: {adapter('kv', 'state.db')}}}\n"
        f"  - name: iii-queue\n    config: {{queue_configs: {{default: {{concurrency: 64}}}}, adapter: {adapter('builtin', 'queue.db')}}}\n"
    )


def store_run(server: Any, call: str, seconds: float) -> dict[str, Any]:
    cpu_before = cpu_seconds(server.pid)
    out = subprocess.run(
        [sys.executable, str(BENCH / "store_peer.py"), server.url, call, str(STORE_IN_FLIGHT), str(seconds)],
        capture_output=True, text=True, timeout=seconds + 120,
    )
    cpu_after = cpu_seconds(server.pid)
    if out.returncode != 0:
        raise RuntimeError(f"store caller failed: {out.stderr[-2000:]}")
    result = json.loads(out.stdout.strip().splitlines()[-1])
    result["calls_per_s"] = result["calls"] / result["seconds"]
    result["cpu_us_per_call"] = (cpu_after - cpu_before) / max(result["calls"], 1) * 1e6
    return result


def stores_section(reps: int, seconds: float) -> list[dict[str, Any]]:
    directory = Path(tempfile.mkdtemp(prefix="iii-bench-stores-"))
    servers = {method: start_server("engine", store_modules(method, directory / method)) for method in STORE_METHODS}
    consumers = {method: Callee(server.url, "bench::job") for method, server in servers.items()}
    try:
        rows = []
        for call in STORE_CALLS:
            runs: dict[str, list[dict[str, Any]]] = {method: [] for method in STORE_METHODS}
            for _ in range(reps):  # interleaved: A B A B …
                for method in STORE_METHODS:
                    runs[method].append(store_run(servers[method], call, seconds))
            row: dict[str, Any] = {"call": call, "in_flight": STORE_IN_FLIGHT}
            for method, results in runs.items():
                for key in ("calls_per_s", "p50_us", "p99_us", "cpu_us_per_call"):
                    row[f"{method}_{key}"] = median([r[key] for r in results])
            # Each file_based run against the in_memory run just before it: the machine drifts.
            row["ratio_calls"] = median([
                durable["calls_per_s"] / memory["calls_per_s"]
                for memory, durable in zip(runs["in_memory"], runs["file_based"])
            ])
            rows.append(row)
        return rows
    finally:
        for consumer in consumers.values():
            consumer.stop()
        for server in servers.values():
            server.stop()
        shutil.rmtree(directory, ignore_errors=True)


# ----------------------------------------------------------------------------- report


def table(results: dict[str, Any]) -> str:
    lines = []
    if "codec" in results:
        lines += ["codec: route an invokefunction (ns/frame, lower is better)",
                  "| size | ours compiled | ours pure | orjson decode+encode | msgspec decode+encode |", "|---|---|---|---|---|"]
        for r in results["codec"]:
            lines.append(f"| {r['size']} B | {r.get('route_c_ns', float('nan')):.0f} | {r['route_py_ns']:.0f} | {r['orjson_full_ns']:.0f} | {r['msgspec_full_ns']:.0f} |")
        lines.append("")
    if "e2e" in results:
        lines += ["end to end: caller → engine|relay → callee (medians; ratio = engine / bare picows relay)",
                  "| in flight | size | engine calls/s | relay calls/s | ratio | engine p50/p99 µs | relay p50/p99 µs | engine CPU µs/call | relay CPU µs/call | CPU ratio |",
                  "|---|---|---|---|---|---|---|---|---|---|"]
        for r in results["e2e"]:
            flight = "1 (pinned cpu0)" if r["pinned"] else str(r["in_flight"])
            lines.append(
                f"| {flight} | {r['size']} B | {r['engine_calls_per_s']:,.0f} | {r['relay_calls_per_s']:,.0f} | {r['ratio_calls']:.2f} | "
                f"{r['engine_p50_us']:.0f}/{r['engine_p99_us']:.0f} | {r['relay_p50_us']:.0f}/{r['relay_p99_us']:.0f} | "
                f"{r['engine_cpu_us_per_call']:.1f} | {r['relay_cpu_us_per_call']:.1f} | {r['ratio_cpu']:.2f} |")
        by = {(r["pinned"], r["size"]): r["engine_cpu_us_per_call"] for r in results["e2e"]}
        ratios = [by[(p, 4096)] / by[(p, 160)] for p in (True, False) if (p, 160) in by and (p, 4096) in by]
        if ratios:
            lines.append(f"engine CPU, 4 KiB vs 160 B: {' / '.join(f'{x:.2f}×' for x in ratios)} (1 in flight / 64 in flight)")
        lines.append("")
    if "clients" in results:
        lines += ["clients: sequential trigger() against our engine; client CPU per call",
                  "(ours: the default, the calling thread's own call channel; ours via loop: III_DIRECT_TRIGGER=0, through the SDK's loop thread)",
                  "| size | ours calls/s | ours via loop calls/s | official calls/s | ours CPU µs/call | ours via loop CPU µs/call "
                  "| official CPU µs/call | CPU ratio ours / ours via loop, to official |", "|---|---|---|---|---|---|---|---|"]
        for r in results["clients"]:
            lines.append(f"| {r['size']} B | {r['ours_calls_per_s']:,.0f} | {r['ours_loop_calls_per_s']:,.0f} | {r['official_calls_per_s']:,.0f} | "
                         f"{r['ours_cpu_us_per_call']:.1f} | {r['ours_loop_cpu_us_per_call']:.1f} | {r['official_cpu_us_per_call']:.1f} | "
                         f"{r['cpu_ratio']:.2f} / {r['loop_cpu_ratio']:.2f} |")
        lines.append("")
    if "scale" in results:
        lines += ["scale: idle connected workers", "| workers | engine RSS per worker | engine::workers::list |", "|---|---|---|"]
        for r in results["scale"]:
            lines.append(f"| {r['workers']:,} | {r['rss_per_worker_kib']:.1f} KiB | {r['list_ms']:.1f} ms |")
        lines.append("")
    if "stores" in results:
        lines += ["stores: 64 calls in flight, in_memory vs file_based (SQLite, acknowledged once committed); ratio: median of paired runs",
                  "| call | in_memory calls/s | file_based calls/s | ratio | in_memory p50/p99 µs | file_based p50/p99 µs | in_memory CPU µs/call | file_based CPU µs/call |",
                  "|---|---|---|---|---|---|---|---|"]
        for r in results["stores"]:
            call = "state::set" if r["call"] == "set" else "enqueue (receipt)"
            lines.append(
                f"| {call} | {r['in_memory_calls_per_s']:,.0f} | {r['file_based_calls_per_s']:,.0f} | {r['ratio_calls']:.2f} | "
                f"{r['in_memory_p50_us']:.0f}/{r['in_memory_p99_us']:.0f} | {r['file_based_p50_us']:.0f}/{r['file_based_p99_us']:.0f} | "
                f"{r['in_memory_cpu_us_per_call']:.1f} | {r['file_based_cpu_us_per_call']:.1f} |")
        lines.append("")
    lines += modules.table(results)
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--smoke", action="store_true", help="tiny counts: check that every section runs")
    parser.add_argument("--sections", default="codec,e2e,clients,scale,stores,http,state,pubsub,cron")
    parser.add_argument("--reps", type=int, default=5, help="interleaved repetitions (medians)")
    parser.add_argument("--seconds", type=float, default=2.0, help="length of one e2e run")
    parser.add_argument("--cron-seconds", type=float, default=10.0, help="length of one cron run")
    parser.add_argument("--no-save", action="store_true")
    args = parser.parse_args()
    sections = args.sections.split(",")
    reps, seconds = (1, 0.2) if args.smoke else (args.reps, args.seconds)
    results: dict[str, Any] = {"machine": machine_facts(), "when": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                               "smoke": args.smoke, "reps": reps, "seconds": seconds}
    if "codec" in sections:
        results["codec"] = codec_section(0.05 if args.smoke else 1.0)
    if "e2e" in sections:
        results["e2e"] = e2e_section(reps, seconds)
    if "clients" in sections:
        results["clients"] = clients_section(reps, 200 if args.smoke else 3000)
    if "scale" in sections:
        results["scale"] = scale_section([50] if args.smoke else [1000, 10000])
    if "stores" in sections:
        results["stores"] = stores_section(reps, seconds)
    for name, section in modules.SECTIONS.items():
        if name in sections:
            length = (2.5 if args.smoke else args.cron_seconds) if name == "cron" else seconds
            results[name] = section(reps, length)
    print(table(results))
    if not (args.smoke or args.no_save):
        out = BENCH / "results" / f"{results['when'][:19].replace(':', '-')}.json"
        out.parent.mkdir(exist_ok=True)
        out.write_text(json.dumps(results, indent=2) + "\n")
        (BENCH / "results" / "latest.md").write_text(f"Measured {results['when']} on {results['machine']}\n\n" + table(results) + "\n")
        print(f"\nsaved {out}")


if __name__ == "__main__":
    main()
