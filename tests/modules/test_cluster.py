"""Several engines as one (``iii-cluster``): engine subprocesses sharing a real redis-server,
official-SDK workers (Python 0.25.0, Node 0.22.1) on different engines."""

from __future__ import annotations

import asyncio
import json
import signal
from pathlib import Path
from typing import Any

import pytest
from picows import WSMsgType, ws_connect

from helpers import EngineProc, Procs, RawClient, Workers, _Collector, call_results, in_process_engine
from iii.modules._redis import connect

pytestmark = pytest.mark.interop

#: Short heartbeats: an engine that dies leaves the others' view within 3 of them (0.75 s).
HEARTBEAT_MS = 250


def cluster_config(redis_url: str, name: str) -> str:
    return (
        "workers:\n"
        "  - name: iii-worker-manager\n    config: {host: 127.0.0.1, port: 0}\n"
        "  - name: iii-http\n    config: {host: 127.0.0.1, port: 0}\n"
        "  - name: iii-stream\n    config: {host: 127.0.0.1, port: 0}\n"
        f"  - name: iii-cluster\n    config: {{redis_url: '{redis_url}', name: {name}, heartbeat_ms: {HEARTBEAT_MS}}}\n"
    )


async def start_engines(procs: Procs, tmp: Path, redis_url: str, *names: str) -> list[EngineProc]:
    return [
        await procs.engine(config=cluster_config(redis_url, name), tmp=tmp / name)
        for name in names
    ]


def sdk_workers(procs, engine, official_python, node) -> Workers:
    return Workers(procs, engine, official_python, node)


async def listed(client: RawClient, list_id: str, key: str, **data: Any) -> list[dict]:
    return (await client.call(list_id, data))["result"][key]


async def until(check, timeout: float = 10.0, every: float = 0.05) -> Any:
    """Poll ``check()`` (an awaitable factory) until it returns something truthy."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        value = await check()
        if value:
            return value
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"not true within {timeout}s: last {value!r}")
        await asyncio.sleep(every)


async def test_a_python_worker_calls_a_node_worker_on_another_engine_and_back(
    procs, tmp_path, redis_server, official_python, node
):
    engine_a, engine_b = await start_engines(procs, tmp_path, redis_server.url, "a", "b")
    on_a = sdk_workers(procs, engine_a, official_python, node)
    on_b = sdk_workers(procs, engine_b, official_python, node)
    math = await on_b.node("math", "--fn", "math::add=add", "--fn", "math::fail=fail", "--fn", "job::mark=slow", "--stay")
    await math.key("ready")
    await (await on_a.python("py", "--fn", "py::echo=echo", "--stay")).key("ready")
    probe_a = await RawClient.connect(engine_a.url)
    probe_b = await RawClient.connect(engine_b.url)
    await probe_a.wait_for_function("math::add")
    await probe_b.wait_for_function("py::echo")

    caller = await on_a.python("caller", calls=[
        {"function_id": "math::add", "payload": {"a": 2, "b": 3}},
        {"function_id": "math::fail", "payload": {}},
        {"function_id": "job::mark", "payload": {"seconds": 0.001, "via": "void"}, "action": "void"},
        {"function_id": "job::mark", "payload": {"seconds": 0.001, "via": "queue"}, "action": "default"},
    ])
    added, failed, void, enqueued = await call_results(caller, 4)
    assert added["result"] == {"c": 5}
    assert failed["error"]["code"] == "invocation_failed" and "boom from math::fail" in failed["error"]["message"]
    assert "error" not in void
    assert "messageReceiptId" in enqueued["result"]
    # The void call and the queued job both ran on engine B's worker.
    await math.expect(lambda item: item == {"started": "job::mark"})
    await math.expect(lambda item: item == {"started": "job::mark"} and math.lines.count(item) >= 2)

    back = await on_b.node("back", calls=[{"function_id": "py::echo", "payload": {"from": "b"}}])
    (echoed,) = await call_results(back, 1)
    assert echoed["result"]["from"] == "b"


async def test_replicas_a_local_owner_first_else_spread_over_the_others(
    procs, tmp_path, redis_server, official_python, node
):
    engine_a, engine_b, engine_c = await start_engines(procs, tmp_path, redis_server.url, "a", "b", "c")
    replica_a = await sdk_workers(procs, engine_a, official_python, node).python("rep", "--fn", "rep::run=slow", "--stay")
    replica_b = await sdk_workers(procs, engine_b, official_python, node).node("rep", "--fn", "rep::run=slow", "--stay")
    await replica_a.key("ready")
    await replica_b.key("ready")
    probe_c = await RawClient.connect(engine_c.url)

    async def both_listed() -> bool:
        rows = await listed(probe_c, "engine::functions::list", "functions")
        return {r["engine"]["name"] for r in rows if r["function_id"] == "rep::run"} == {"a", "b"}

    await until(both_listed)
    started = lambda proc: sum(1 for line in proc.lines if line == {"started": "rep::run"})  # noqa: E731

    probe_a = await RawClient.connect(engine_a.url)
    for index in range(4):  # on engine A: its own replica serves
        assert "result" in await probe_a.call("rep::run", {"seconds": 0.001})
    assert (started(replica_a), started(replica_b)) == (4, 0)

    for index in range(6):  # on engine C (no replica): spread over A and B
        assert "result" in await probe_c.call("rep::run", {"seconds": 0.001})
    assert (started(replica_a), started(replica_b)) == (7, 3)


async def test_an_engine_killed_leaves_the_view_and_its_calls_in_flight_stop(
    procs, tmp_path, redis_server, official_python, node
):
    engine_a, engine_b = await start_engines(procs, tmp_path, redis_server.url, "a", "b")
    slow = await sdk_workers(procs, engine_b, official_python, node).node("slow", "--fn", "slow::op=slow", "--stay")
    await slow.key("ready")
    local = await sdk_workers(procs, engine_a, official_python, node).python("local", "--fn", "local::add=add", "--stay")
    await local.key("ready")
    probe_a = await RawClient.connect(engine_a.url)
    await probe_a.wait_for_function("slow::op")

    caller = await sdk_workers(procs, engine_a, official_python, node).python(
        "caller", calls=[{"function_id": "slow::op", "payload": {"seconds": 30}, "timeout_ms": 60000}]
    )
    await slow.key("started")
    engine_b.proc.kill()  # kill -9
    (outcome,) = await call_results(caller, 1)
    assert outcome["error"]["code"] == "invocation_stopped"

    async def gone() -> bool:
        rows = await listed(probe_a, "engine::functions::list", "functions")
        workers = await listed(probe_a, "engine::workers::list", "workers")
        return "slow::op" not in {r["function_id"] for r in rows} and "slow" not in {w["name"] for w in workers}

    await until(gone, timeout=5)  # its link closed: at once (its key would take 3 heartbeats)
    # Nothing else stopped: calls between A's workers go on.
    assert (await probe_a.call("local::add", {"a": 1, "b": 2}))["result"] == {"c": 3}
    gone_call = await probe_a.call("slow::op", {"seconds": 0.001})
    assert gone_call["error"]["code"] == "function_not_found"


async def test_the_lists_show_the_cluster_and_events_fire_on_every_engine(
    procs, tmp_path, redis_server, official_python, node
):
    engine_a, engine_b = await start_engines(procs, tmp_path, redis_server.url, "a", "b")
    probe_a = await RawClient.connect(engine_a.url)
    await probe_a.register("probe")  # its registrations apply at once, not after the grace period
    probe_a.send(type="registerfunction", id="probe::workers")
    probe_a.send(type="registertrigger", id="probe::workers", trigger_type="engine::workers-available",
                 function_id="probe::workers", config={})
    await probe_a.call("engine::functions::list", {})  # the binding is in place once this answers

    worker = await sdk_workers(procs, engine_b, official_python, node).python(
        "lister", "--fn", "list::fn=echo", "--bind", 'list::fn=cron={"expression": "0 0 1 1 * *"}', "--stay"
    )
    ready = await worker.key("ready")
    event = await probe_a.recv_until(
        lambda f: f.get("function_id") == "probe::workers" and f["data"]["worker_id"] == ready["worker_id"]
    )
    assert event["data"]["event"] in ("worker_connected", "worker_metadata_updated")
    await probe_a.wait_for_function("list::fn")  # engine::functions-available fired on A

    functions = await listed(probe_a, "engine::functions::list", "functions")
    (row,) = [r for r in functions if r["function_id"] == "list::fn"]
    assert row["engine"]["name"] == "b" and row["worker_name"] == "lister"
    assert {r["engine"]["name"] for r in functions if r["function_id"] == "probe::workers"} == {"a"}

    workers = await listed(probe_a, "engine::workers::list", "workers")
    (lister,) = [w for w in workers if w["name"] == "lister"]
    assert lister["engine"]["name"] == "b" and lister["id"] == ready["worker_id"]

    async def trigger_row() -> Any:
        rows = await listed(probe_a, "engine::triggers::list", "triggers")
        return [r for r in rows if r["function_id"] == "list::fn"]

    (trigger,) = await until(trigger_row)
    assert trigger["trigger_type"] == "cron" and trigger["engine"]["name"] == "b"


async def test_redis_restarted_the_registry_is_published_again(procs, tmp_path, redis_server, official_python, node):
    engine_a, engine_b = await start_engines(procs, tmp_path, redis_server.url, "a", "b")
    first = await sdk_workers(procs, engine_b, official_python, node).node("first", "--fn", "first::add=add", "--stay")
    await first.key("ready")
    probe_a = await RawClient.connect(engine_a.url)
    await probe_a.wait_for_function("first::add")

    redis_server.kill()
    # Redis down: calls on one engine, and over the link already open, go on.
    assert (await probe_a.call("first::add", {"a": 1, "b": 1}))["result"] == {"c": 2}
    redis_server.start()

    second = await sdk_workers(procs, engine_b, official_python, node).python("second", "--fn", "second::add=add", "--stay")
    await second.key("ready")

    async def registered() -> bool:
        rows = await listed(probe_a, "engine::functions::list", "functions")
        return {"first::add", "second::add"} <= {r["function_id"] for r in rows}

    await until(registered, timeout=15)
    assert (await probe_a.call("second::add", {"a": 2, "b": 2}))["result"] == {"c": 4}
    assert (await probe_a.call("first::add", {"a": 3, "b": 3}))["result"] == {"c": 6}


async def test_redis_losing_every_key_costs_no_call(procs, tmp_path, redis_server, official_python, node):
    """FLUSHALL (a Redis restarted without persistence): the engines publish themselves again and
    keep each other; a call in flight across them is answered."""
    engine_a, engine_b = await start_engines(procs, tmp_path, redis_server.url, "a", "b")
    slow = await sdk_workers(procs, engine_b, official_python, node).node("slow", "--fn", "slow::op=slow", "--stay")
    await slow.key("ready")
    probe_a = await RawClient.connect(engine_a.url)
    await probe_a.wait_for_function("slow::op")
    client = await connect(redis_server.url)
    try:
        probe_a.send(type="invokefunction", invocation_id="in-flight", function_id="slow::op", data={"seconds": 2})
        await slow.key("started")
        await client.flushall()
        answer = await probe_a.recv_until(lambda f: f.get("invocation_id") == "in-flight", timeout=10)
        assert answer["result"] == {"slept": True}

        async def republished() -> bool:
            return len([key async for key in client.scan_iter(match="iii:cluster:engine:*")]) == 2

        await until(republished)
        assert (await probe_a.call("slow::op", {"seconds": 0.001}))["result"] == {"slept": True}
    finally:
        await client.aclose()


def test_the_config_is_checked():
    from iii.config import ConfigError, parse_config

    config = parse_config("workers:\n  - name: iii-cluster\n    config: {redis_url: 'redis://r:6379', name: a}\n", Path("c.yaml"))
    assert config.modules["iii-cluster"].heartbeat_ms == 1000
    with pytest.raises(ConfigError, match="heartbeat"):
        parse_config("workers:\n  - name: iii-cluster\n    config: {heartbeat_ms: 5}\n", Path("c.yaml"))
    with pytest.raises(ConfigError, match="unknown"):
        parse_config("workers:\n  - name: iii-cluster\n    config: {redis: x}\n", Path("c.yaml"))


async def test_an_engine_that_hangs_leaves_the_view(procs, tmp_path, redis_server, official_python, node):
    """SIGSTOP: its sockets stay open but it answers nothing and renews nothing; the others drop
    it (the link's pings go unanswered, its key expires) and stop its calls in flight."""
    engine_a, engine_b = await start_engines(procs, tmp_path, redis_server.url, "a", "b")
    worker = await sdk_workers(procs, engine_b, official_python, node).node("hung", "--fn", "hung::op=slow", "--stay")
    await worker.key("ready")
    probe_a = await RawClient.connect(engine_a.url)
    await probe_a.wait_for_function("hung::op")
    probe_a.send(type="invokefunction", invocation_id="in-flight", function_id="hung::op", data={"seconds": 30})
    await worker.key("started")
    engine_b.proc.kill(signal.SIGSTOP)
    try:
        stopped = await probe_a.recv_until(lambda f: f.get("invocation_id") == "in-flight", timeout=10)
        assert stopped["error"]["code"] == "invocation_stopped"
        rows = await listed(probe_a, "engine::functions::list", "functions")
        assert "hung::op" not in {r["function_id"] for r in rows}
    finally:
        engine_b.proc.kill()  # SIGKILL ends a stopped process too


async def test_only_the_cluster_token_makes_a_peer(tmp_path, redis_server):
    """A connection without the token, or with a wrong one, is an ordinary worker; with it, a
    peer: not listed, and its calls reach this engine's workers as sent."""
    config = (
        f"workers:\n  - name: iii-cluster\n    config: {{redis_url: '{redis_server.url}', name: solo}}\n"
        "  - name: iii-http\n    config: {port: 0}\n  - name: iii-stream\n    config: {port: 0}\n"
    )
    async with in_process_engine(config, tmp_path) as app:
        url = app.urls[0]
        client = await connect(redis_server.url)
        token = (await client.get("iii:cluster:token")).decode()
        await client.aclose()
        owner = await RawClient.connect(url)
        await owner.register("math")
        owner.send(type="registerfunction", id="math::add")
        await owner.wait_for_function("math::add")

        impostor = await RawClient.connect(url)  # no token: a worker, welcomed as one
        assert impostor.worker_id
        await impostor.register("impostor")  # (listed once announced, as every worker)
        wrong, wrong_listener = await ws_connect(
            _Collector, url, extra_headers={"x-iii-cluster-token": "guess", "x-iii-cluster-engine": "x"}
        )
        assert (await asyncio.wait_for(wrong_listener.queue.get(), 5))["type"] == "workerregistered"
        wrong.disconnect()

        peer, peer_listener = await ws_connect(
            _Collector, url, extra_headers={"x-iii-cluster-token": token, "x-iii-cluster-engine": "other"}
        )
        call = {"type": "invokefunction", "invocation_id": "p1", "function_id": "math::add",
                "data": {"a": 1, "_caller_worker_id": "elsewhere"}}
        peer.send(WSMsgType.TEXT, json.dumps(call, separators=(",", ":")).encode())
        delivered = await owner.recv_until(lambda f: f.get("type") == "invokefunction" and f["invocation_id"] == "p1")
        assert delivered["data"] == {"a": 1, "_caller_worker_id": "elsewhere"}
        owner.send(type="invocationresult", invocation_id="p1", function_id="math::add", result={"c": 2})
        answer = await asyncio.wait_for(peer_listener.queue.get(), 5)  # the first frame it gets
        assert answer == {"type": "invocationresult", "invocation_id": "p1", "function_id": "math::add", "result": {"c": 2}}
        workers = await listed(owner, "engine::workers::list", "workers")
        assert sorted(w["id"] for w in workers if w["runtime"] != "engine") == sorted([owner.worker_id, impostor.worker_id])
        peer.disconnect()
        await impostor.close()
