"""Benchmark peers: a minimal callee and caller speaking the iii protocol over picows.

Both are deliberately thin (bytes in, bytes out, no SDK) so that what a run measures is the
relay in the middle: our engine, or the bare relay of ``relay.py``. Run as processes:

    python bench/peers.py callee URL FUNCTION_ID
    python bench/peers.py caller URL FUNCTION_ID PAYLOAD_BYTES IN_FLIGHT SECONDS MAX_CALLS

The caller prints one JSON line: ``{"calls", "seconds", "p50_us", "p99_us"}``.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time

import uvloop
from picows import WSFrame, WSListener, WSMsgType, WSTransport, ws_connect

TEXT = WSMsgType.TEXT
_ID_KEY = b'"invocation_id":"'


def _compact(message: dict) -> bytes:
    return json.dumps(message, separators=(",", ":")).encode()


def invocation_id_of(frame: bytes) -> bytes:
    start = frame.index(_ID_KEY) + len(_ID_KEY)
    return frame[start : frame.index(b'"', start)]


class Callee(WSListener):
    """Answers every invocation with a fixed small result."""

    def __init__(self, function_id: str) -> None:
        self.function_id = function_id.encode()
        self.ready = asyncio.get_event_loop().create_future()

    def on_ws_connected(self, transport: WSTransport) -> None:
        transport.send(TEXT, _compact({"type": "registerfunction", "id": self.function_id.decode()}))
        transport.send(TEXT, _compact({
            "type": "invokefunction", "function_id": "engine::workers::register", "action": {"type": "void"},
            "data": {"runtime": "bench", "name": "bench-callee", "pid": 0},
        }))

    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        if frame.msg_type is not TEXT:
            return
        payload = frame.get_payload_as_bytes()
        if payload.startswith(b'{"type":"invokefunction"'):
            transport.send(
                TEXT,
                b'{"type":"invocationresult","invocation_id":"' + invocation_id_of(payload)
                + b'","function_id":"' + self.function_id + b'","result":{"ok":true}}',
            )


class Caller(WSListener):
    """Keeps ``in_flight`` calls going; records each call's latency."""

    def __init__(self, function_id: str, payload_bytes: int, in_flight: int, max_calls: int) -> None:
        blob = "x" * max(0, payload_bytes - 150)
        self.template = (
            '{"type":"invokefunction","invocation_id":"%08d-0000-4000-8000-000000000000",'
            f'"function_id":"{function_id}","data":{{"blob":"{blob}","n":1}}}}'
        )
        self.in_flight = in_flight
        self.max_calls = max_calls
        self.sent_at: dict[bytes, float] = {}
        self.latencies: list[float] = []
        self.counter = 0
        self.stop_at = 0.0
        self.done = asyncio.get_event_loop().create_future()
        self.transport: WSTransport = None  # type: ignore[assignment]

    def start(self, seconds: float) -> None:
        self.stop_at = time.perf_counter() + seconds
        for _ in range(self.in_flight):
            self.send_one()

    def send_one(self) -> None:
        self.counter += 1
        frame = (self.template % self.counter).encode()
        self.sent_at[invocation_id_of(frame)] = time.perf_counter()
        self.transport.send(TEXT, frame)

    def on_ws_connected(self, transport: WSTransport) -> None:
        self.transport = transport

    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        if frame.msg_type is not TEXT:
            return
        payload = frame.get_payload_as_bytes()
        if not payload.startswith(b'{"type":"invocationresult"') and b'"invocationresult"' not in payload:
            return
        now = time.perf_counter()
        started = self.sent_at.pop(invocation_id_of(payload), None)
        if started is None:
            return
        self.latencies.append(now - started)
        if now < self.stop_at and self.counter < self.max_calls:
            self.send_one()
        elif not self.sent_at and not self.done.done():
            self.done.set_result(None)


async def run_callee(url: str, function_id: str) -> None:
    transport, _ = await ws_connect(lambda: Callee(function_id), url)
    print("ready", flush=True)
    await transport.wait_disconnected()


async def run_caller(url: str, function_id: str, payload_bytes: int, in_flight: int, seconds: float, max_calls: int) -> None:
    transport, caller = await ws_connect(lambda: Caller(function_id, payload_bytes, in_flight, max_calls), url)
    began = time.perf_counter()
    caller.start(seconds)
    await asyncio.wait_for(caller.done, seconds + 30)
    elapsed = time.perf_counter() - began
    latencies = sorted(caller.latencies)
    print(json.dumps({
        "calls": len(latencies),
        "seconds": elapsed,
        "p50_us": latencies[len(latencies) // 2] * 1e6,
        "p99_us": latencies[int(len(latencies) * 0.99)] * 1e6,
    }), flush=True)
    transport.disconnect()


def main(argv: list[str]) -> None:
    role, url, function_id = argv[:3]
    if role == "callee":
        uvloop.run(run_callee(url, function_id))
    else:
        uvloop.run(run_caller(url, function_id, int(argv[3]), int(argv[4]), float(argv[5]), int(argv[6])))


if __name__ == "__main__":
    main(sys.argv[1:])
