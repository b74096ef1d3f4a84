"""Benchmark peer for the stores: keeps ``state::set`` or enqueue calls going against an engine.

    python bench/store_peer.py URL set|get|enqueue IN_FLIGHT SECONDS

``set`` writes ~160 B values over 10,000 keys of one scope, ``get`` reads them; ``enqueue`` sends
``TriggerAction.Enqueue`` calls of ``bench::job`` to the ``default`` queue (a ``peers.py callee``
answers the deliveries) and, after the timed run, waits for the queue to drain so that the next
run starts empty. Prints one JSON line: ``{"calls", "seconds", "p50_us", "p99_us"}``.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time

import uvloop
from picows import WSFrame, WSListener, WSTransport, ws_connect

from peers import TEXT, Caller, invocation_id_of

JOB_FUNCTION = "bench::job"
KEYS = 10_000
_BLOB = "x" * 100
_TEMPLATES = {
    "set": (
        '{"type":"invokefunction","invocation_id":"%08d-0000-4000-8000-000000000000",'
        '"function_id":"state::set","data":{"scope":"bench","key":"k%d","value":{"blob":"' + _BLOB + '","n":1}}}'
    ),
    "get": (
        '{"type":"invokefunction","invocation_id":"%08d-0000-4000-8000-000000000000",'
        '"function_id":"state::get","data":{"scope":"bench","key":"k%d"}}'
    ),
    "enqueue": (
        '{"type":"invokefunction","invocation_id":"%08d-0000-4000-8000-000000000000",'
        f'"function_id":"{JOB_FUNCTION}","data":{{"blob":"{_BLOB}","n":%d}},'
        '"action":{"type":"enqueue","queue":"default"}}'
    ),
}
_DRAIN_TIMEOUT_S = 60.0


class StoreCaller(Caller):
    """:class:`peers.Caller` with a store call instead of an echo."""

    def __init__(self, kind: str, in_flight: int) -> None:
        super().__init__(JOB_FUNCTION, 0, in_flight, 10**9)
        self.template = _TEMPLATES[kind]

    def send_one(self) -> None:
        self.counter += 1
        frame = (self.template % (self.counter, self.counter % KEYS)).encode()
        self.sent_at[invocation_id_of(frame)] = time.perf_counter()
        self.transport.send(TEXT, frame)


class Inbox(WSListener):
    """Every text frame received, in a queue."""

    def __init__(self) -> None:
        self.frames: asyncio.Queue = asyncio.Queue()

    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        if frame.msg_type is TEXT:
            self.frames.put_nowait(json.loads(frame.get_payload_as_bytes()))


async def drain(url: str) -> None:
    """Wait until the ``default`` queue has no job waiting or in delivery."""
    transport, inbox = await ws_connect(Inbox, url)
    stats = b'{"type":"invokefunction","invocation_id":"drain","function_id":"engine::queue::topic_stats","data":{"topic":"default"}}'
    deadline = time.monotonic() + _DRAIN_TIMEOUT_S
    while time.monotonic() < deadline:
        transport.send(TEXT, stats)
        answer = await asyncio.wait_for(inbox.frames.get(), _DRAIN_TIMEOUT_S)
        while answer.get("invocation_id") != "drain":  # the welcome
            answer = await asyncio.wait_for(inbox.frames.get(), _DRAIN_TIMEOUT_S)
        if answer["result"]["depth"] == 0:
            break
        await asyncio.sleep(0.05)
    transport.disconnect()


async def run(url: str, kind: str, in_flight: int, seconds: float) -> None:
    transport, caller = await ws_connect(lambda: StoreCaller(kind, in_flight), url)
    began = time.perf_counter()
    caller.start(seconds)
    await asyncio.wait_for(caller.done, seconds + 30)
    elapsed = time.perf_counter() - began
    transport.disconnect()
    latencies = sorted(caller.latencies)
    if kind == "enqueue":
        await drain(url)
    print(json.dumps({
        "calls": len(latencies),
        "seconds": elapsed,
        "p50_us": latencies[len(latencies) // 2] * 1e6,
        "p99_us": latencies[int(len(latencies) * 0.99)] * 1e6,
    }), flush=True)


if __name__ == "__main__":
    uvloop.run(run(sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])))
