"""Benchmark peers for the modules (HTTP, queue delivery, pub/sub fan-out, cron) and their
baselines. Each measuring role prints one JSON line.

    python bench/module_peer.py http-worker URL                 # our SDK: GET bench/hello
    python bench/module_peer.py bare-http                       # the baseline: aiohttp alone
    python bench/module_peer.py http-client BASE_URL CONCURRENCY SECONDS
    python bench/module_peer.py deliver URL IN_FLIGHT SECONDS   # enqueue -> delivery
    python bench/module_peer.py fanout URL SUBSCRIBERS IN_FLIGHT SECONDS publish|direct
    python bench/module_peer.py cron URL JOBS SECONDS           # lateness of 1 s jobs
    python bench/module_peer.py timers JOBS SECONDS             # the baseline: loop timers

The WebSocket peers are raw picows (no SDK), like ``peers.py``, so that what a run measures is
the engine; the HTTP worker is a user's worker on our SDK.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import sys
import threading
import time
from typing import Any, Callable, Optional

import uvloop
from picows import WSFrame, WSListener, WSMsgType, WSTransport, ws_connect

TEXT = WSMsgType.TEXT
HELLO_PATH = "bench/hello"
WARMUP_ROUNDS = 20


def compact(message: Any) -> bytes:
    return json.dumps(message, separators=(",", ":")).encode()


def percentiles(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)
    if not ordered:
        return {"p50_us": float("nan"), "p99_us": float("nan")}
    return {"p50_us": ordered[len(ordered) // 2] * 1e6, "p99_us": ordered[int(len(ordered) * 0.99)] * 1e6}


def hello(name: Optional[str]) -> dict[str, Any]:
    """The work behind ``GET /bench/hello?name=…`` in both the worker and the bare server."""
    return {"hello": name or "world", "n": 1}


# ----------------------------------------------------------------------------- HTTP


def http_worker(url: str) -> None:
    # A user's worker: the plain SDK (not the plugin's TestWorker, whose call counting would be
    # measured too).
    from iii import InitOptions, register_worker
    from iii.testing import wait_for_functions

    worker = register_worker(url, InitOptions(worker_name="bench-http", otel={"enabled": False}))

    async def handle(request: dict[str, Any]) -> dict[str, Any]:
        return {"status_code": 200, "body": hello(request["query_params"].get("name"))}

    worker.register_function("bench::hello", handle)
    wait_for_functions(worker, ["bench::hello"])
    worker.register_trigger({"type": "http", "function_id": "bench::hello",
                             "config": {"api_path": HELLO_PATH, "http_method": "GET"}})
    print("ready", flush=True)
    threading.Event().wait()  # until killed


async def bare_http() -> None:
    from aiohttp import web

    async def handle(request: web.Request) -> web.Response:
        return web.json_response(hello(request.query.get("name")))

    app = web.Application()
    app.router.add_get("/" + HELLO_PATH, handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    print(f"listening on http://{host}:{port}", flush=True)
    await asyncio.Event().wait()


async def http_client(base_url: str, concurrency: int, seconds: float) -> None:
    import aiohttp

    target = f"{base_url}/{HELLO_PATH}?name=bench"
    latencies: list[float] = []
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:
        async def one() -> None:
            async with session.get(target) as response:
                assert response.status == 200, response.status
                await response.read()

        for _ in range(WARMUP_ROUNDS):  # warm up: connections opened
            await asyncio.gather(*(one() for _ in range(concurrency)))
        stop_at = time.perf_counter() + seconds

        async def loop() -> None:
            while time.perf_counter() < stop_at:
                began = time.perf_counter()
                await one()
                latencies.append(time.perf_counter() - began)

        began = time.perf_counter()
        await asyncio.gather(*(loop() for _ in range(concurrency)))
        elapsed = time.perf_counter() - began
    print(json.dumps({"requests": len(latencies), "warmup_requests": WARMUP_ROUNDS * concurrency, "seconds": elapsed,
                      **percentiles(latencies)}), flush=True)


# ----------------------------------------------------------------------------- raw protocol peers


class Peer(WSListener):
    """A raw connection: registers itself, answers invocations with ``on_invoke``, settles its
    own calls' futures."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.transport: WSTransport = None  # type: ignore[assignment]
        self.waiting: dict[str, asyncio.Future] = {}
        self.on_invoke: Callable[[dict[str, Any]], None] = lambda message: None
        self.on_result: Callable[[dict[str, Any]], None] = lambda message: None
        self._ids = itertools.count()

    def on_ws_connected(self, transport: WSTransport) -> None:
        self.transport = transport
        self.send({"type": "invokefunction", "function_id": "engine::workers::register", "action": {"type": "void"},
                   "data": {"runtime": "bench", "name": self.name, "pid": 0}})

    def send(self, message: Any) -> None:
        self.transport.send(TEXT, compact(message))

    def answer(self, message: dict[str, Any]) -> None:
        self.transport.send(TEXT, compact({"type": "invocationresult", "invocation_id": message["invocation_id"],
                                           "function_id": message["function_id"], "result": None}))

    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        if frame.msg_type is not TEXT:
            return
        message = json.loads(frame.get_payload_as_bytes())
        kind = message.get("type")
        if kind == "invokefunction":
            self.on_invoke(message)
        elif kind == "invocationresult":
            future = self.waiting.pop(message["invocation_id"], None)
            if future is not None:
                future.set_result(message)
            else:
                self.on_result(message)

    def new_id(self) -> str:
        return f"{self.name}-{next(self._ids)}"

    async def call(self, function_id: str, data: Any) -> Any:
        invocation_id = self.new_id()
        future = self.waiting[invocation_id] = asyncio.get_running_loop().create_future()
        self.send({"type": "invokefunction", "invocation_id": invocation_id, "function_id": function_id, "data": data})
        answer = await asyncio.wait_for(future, 30)
        if "error" in answer and answer["error"]:
            raise RuntimeError(f"{function_id}: {answer['error']}")
        return answer.get("result")

    async def serve(self, function_id: str, trigger: Optional[tuple[str, dict[str, Any]]] = None) -> None:
        """Register ``function_id`` (bound to ``trigger`` = (type, config)); returns once the
        engine has applied it (a call on the same connection is answered after it)."""
        self.send({"type": "registerfunction", "id": function_id})
        if trigger is not None:
            self.send({"type": "registertrigger", "id": self.new_id(), "trigger_type": trigger[0],
                       "function_id": function_id, "config": trigger[1]})
        await self.call("engine::functions::list", {})


async def connect(url: str, name: str) -> Peer:
    _, peer = await ws_connect(lambda: Peer(name), url)
    return peer


async def deliver(url: str, in_flight: int, seconds: float) -> None:
    """Keep ``in_flight`` jobs between enqueue and delivery; this peer is also the consumer."""
    peer = await connect(url, "bench-deliver")
    sent_at: dict[int, float] = {}
    latencies: list[float] = []
    counter = itertools.count()
    stop_at = 0.0
    done = asyncio.get_running_loop().create_future()

    def enqueue() -> None:
        n = next(counter)
        sent_at[n] = time.perf_counter()
        peer.send({"type": "invokefunction", "invocation_id": peer.new_id(), "function_id": "bench::job",
                   "data": {"n": n}, "action": {"type": "enqueue", "queue": "default"}})

    def delivered(message: dict[str, Any]) -> None:
        peer.answer(message)
        began = sent_at.pop(message["data"]["n"], None)
        if began is None:
            return
        now = time.perf_counter()
        latencies.append(now - began)
        if now < stop_at:
            enqueue()
        elif not sent_at and not done.done():
            done.set_result(None)

    peer.on_invoke = delivered
    await peer.serve("bench::job")
    began = time.perf_counter()
    stop_at = began + seconds
    for _ in range(in_flight):
        enqueue()
    await asyncio.wait_for(done, seconds + 60)
    elapsed = time.perf_counter() - began
    print(json.dumps({"messages": len(latencies), "seconds": elapsed, **percentiles(latencies)}), flush=True)


async def fanout(url: str, subscribers: int, in_flight: int, seconds: float, mode: str) -> None:
    """``publish`` to a topic with ``subscribers`` (``mode`` publish), or the same deliveries as
    one direct call per subscriber (``mode`` direct); a message is done when every subscriber
    has it. Keeps ``in_flight`` messages going."""
    subs = [await connect(url, f"bench-sub-{i}") for i in range(subscribers)]
    remaining: dict[int, int] = {}
    sent_at: dict[int, float] = {}
    latencies: list[float] = []
    delivered = 0
    counter = itertools.count()
    stop_at = 0.0
    done = asyncio.get_running_loop().create_future()
    publisher = await connect(url, "bench-publisher")

    def send() -> None:
        n = next(counter)
        remaining[n] = subscribers
        sent_at[n] = time.perf_counter()
        if mode == "publish":
            publisher.send({"type": "invokefunction", "invocation_id": publisher.new_id(), "function_id": "publish",
                            "data": {"topic": "bench", "data": {"n": n}}})
        else:
            for i in range(subscribers):
                publisher.send({"type": "invokefunction", "invocation_id": publisher.new_id(),
                                "function_id": f"bench::sub-{i}", "data": {"n": n}})

    def received(sub: Peer, message: dict[str, Any]) -> None:
        nonlocal delivered
        sub.answer(message)
        n = message["data"]["n"]
        delivered += 1
        remaining[n] -= 1
        if remaining[n]:
            return
        del remaining[n]
        now = time.perf_counter()
        latencies.append(now - sent_at.pop(n))
        if now < stop_at:
            send()
        elif not sent_at and not done.done():
            done.set_result(None)

    for i, sub in enumerate(subs):
        sub.on_invoke = lambda message, sub=sub: received(sub, message)
        await sub.serve(f"bench::sub-{i}", ("subscribe", {"topic": "bench"}) if mode == "publish" else None)
    began = time.perf_counter()
    stop_at = began + seconds
    for _ in range(in_flight):
        send()
    await asyncio.wait_for(done, seconds + 60)
    elapsed = time.perf_counter() - began
    print(json.dumps({"messages": len(latencies), "deliveries": delivered, "seconds": elapsed, **percentiles(latencies)}), flush=True)


# ----------------------------------------------------------------------------- cron


async def cron(url: str, jobs: int, seconds: float) -> None:
    """``jobs`` cron bindings firing every second; records how late each run reached the worker."""
    peer = await connect(url, "bench-cron")
    late: list[float] = []

    def tick(message: dict[str, Any]) -> None:
        arrived = time.time()
        peer.answer(message)
        late.append(arrived - int(arrived))

    peer.on_invoke = tick
    for i in range(jobs):
        await peer.serve(f"bench::tick-{i}", ("cron", {"expression": "* * * * * *"}))
    await asyncio.sleep(seconds)
    print(json.dumps({"runs": len(late), **percentiles(late)}), flush=True)


async def timers(jobs: int, seconds: float) -> None:
    """The baseline: ``jobs`` loop timers due at every whole second (what a scheduler with nothing
    else to do achieves on this loop)."""
    loop = asyncio.get_running_loop()
    late: list[float] = []

    def tick() -> None:
        arrived = time.time()
        late.append(arrived - int(arrived))
        schedule()

    def schedule() -> None:
        now = time.time()
        loop.call_later(int(now) + 1 - now, tick)

    for _ in range(jobs):
        schedule()
    await asyncio.sleep(seconds)
    print(json.dumps({"runs": len(late), **percentiles(late)}), flush=True)


def main(argv: list[str]) -> None:
    role, args = argv[0], argv[1:]
    if role == "http-worker":
        http_worker(args[0])
    elif role == "bare-http":
        uvloop.run(bare_http())
    elif role == "http-client":
        uvloop.run(http_client(args[0], int(args[1]), float(args[2])))
    elif role == "deliver":
        uvloop.run(deliver(args[0], int(args[1]), float(args[2])))
    elif role == "fanout":
        uvloop.run(fanout(args[0], int(args[1]), int(args[2]), float(args[3]), args[4]))
    elif role == "cron":
        uvloop.run(cron(args[0], int(args[1]), float(args[2])))
    elif role == "timers":
        uvloop.run(timers(int(args[0]), float(args[1])))
    else:
        raise SystemExit(f"unknown role {role}")


if __name__ == "__main__":
    main(sys.argv[1:])
