"""An SDK worker for the client benchmark: runs on whichever ``iii`` is installed (the official
``iii-sdk`` or ours), through the public API only.

    python bench/sdk_peer.py callee URL
    python bench/sdk_peer.py caller URL CALLS PAYLOAD_BYTES

The caller makes CALLS sequential ``trigger()`` calls and prints one JSON line with calls/s and
this process's CPU time per call (all threads: the SDK's loop thread included).
"""

from __future__ import annotations

import json
import signal
import sys
import threading
import time

from iii import InitOptions, register_worker


async def echo(data):
    return {"ok": True}


def main(argv: list[str]) -> None:
    role, url = argv[0], argv[1]
    worker = register_worker(url, InitOptions(worker_name=f"bench-sdk-{role}", otel={"enabled": False}))
    if role == "callee":
        worker.register_function("bench::sdk-echo", echo)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:  # ready once the engine lists the function
            listed = worker.trigger({"function_id": "engine::functions::list", "payload": {"prefix": "bench::"}})
            if listed["functions"]:
                break
            time.sleep(0.02)
        print("ready", flush=True)
        stopped = threading.Event()
        signal.signal(signal.SIGTERM, lambda *_: stopped.set())
        stopped.wait()
        worker.shutdown()
        return
    calls, payload_bytes = int(argv[2]), int(argv[3])
    payload = {"blob": "x" * max(0, payload_bytes - 40), "n": 1}
    request = {"function_id": "bench::sdk-echo", "payload": payload}
    for _ in range(min(200, calls)):  # warm up
        worker.trigger(request)
    cpu, wall = time.process_time(), time.perf_counter()
    for _ in range(calls):
        worker.trigger(request)
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    print(json.dumps({"calls": calls, "calls_per_s": calls / wall, "client_cpu_us_per_call": cpu / calls * 1e6}), flush=True)
    worker.shutdown()


if __name__ == "__main__":
    main(sys.argv[1:])
