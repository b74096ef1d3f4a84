"""The original SDK suites' bridge topology, as engine subprocesses: a **backend** (kv state and
stream, local pub/sub) and a **bridged** engine (state and stream on ``bridge`` adapters, and an
``iii-bridge`` to the backend), with official SDK workers (Python 0.25.0, Node 0.22.1) asserting
what the original's bridge-state / bridge-stream tests assert, ``iii-bridge`` expose / forward /
invoke / invoke_async across the two engines, durable subscribers served by the backend's queue,
and the bridge's reconnect and replay when the backend restarts."""

from __future__ import annotations

import asyncio
import json
import socket
from typing import Any

import pytest

from helpers import EngineProc, Procs, RawClient, Workers, call_results

pytestmark = pytest.mark.interop


def backend_config(port: int) -> str:
    """``sdk/fixtures/config-bridge-backend.yaml`` on 127.0.0.1 and free ports."""
    return f"""workers:
  - name: iii-worker-manager
    config: {{host: 127.0.0.1, port: {port}}}
  - name: iii-stream
    config: {{port: 0, host: 127.0.0.1, adapter: {{name: kv, config: {{store_method: in_memory}}}}}}
  - name: iii-state
    config: {{adapter: {{name: kv, config: {{store_method: in_memory}}}}}}
  - name: iii-pubsub
    config: {{adapter: {{name: local}}}}
  - name: iii-http
    config: {{host: 127.0.0.1, port: 0}}
  - name: iii-observability
    config: {{enabled: false}}
"""


def bridged_config(backend_url: str) -> str:
    """``sdk/fixtures/config-bridge.yaml`` (free ports), plus the queue's bridge adapter and an
    ``iii-bridge`` to the backend."""
    return f"""workers:
  - name: iii-worker-manager
    config: {{host: 127.0.0.1, port: 0}}
  - name: iii-stream
    config: {{port: 0, host: 127.0.0.1, adapter: {{name: bridge, config: {{bridge_url: '{backend_url}'}}}}}}
  - name: iii-state
    config: {{adapter: {{name: bridge, config: {{bridge_url: '{backend_url}'}}}}}}
  - name: iii-pubsub
    config: {{adapter: {{name: local}}}}
  - name: iii-http
    config: {{host: 127.0.0.1, port: 0}}
  - name: iii-observability
    config: {{enabled: false}}
  - name: iii-queue
    config: {{adapter: {{name: bridge, config: {{bridge_url: '{backend_url}'}}}}}}
  - name: iii-bridge
    config:
      url: {backend_url}
      expose:
        - local_function: bridged::echo
          remote_function: from_bridged::echo
      forward:
        - local_function: to_backend::add
          remote_function: backend::add
          timeout_ms: 5000
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


async def start_pair(procs: Procs, tmp_path: Any) -> tuple[EngineProc, EngineProc, int]:
    port = free_port()
    backend = await procs.engine(config=backend_config(port), tmp=tmp_path / "backend")
    bridged = await procs.engine(config=bridged_config(backend.url), tmp=tmp_path / "bridged")
    return backend, bridged, port


def state_calls(scope: str) -> list[dict[str, Any]]:
    """bridge-state.test.ts, in order (its fresh list scope is ``scope + "-list"``)."""
    item = {"scope": scope, "key": "bridge-test-item"}
    return [
        {"function_id": "state::delete", "payload": item},
        {"function_id": "state::set", "payload": {**item, "value": {"id": "1", "v": "first"}}},
        {"function_id": "state::set", "payload": {**item, "value": {"id": "1", "v": "second"}}},
        {"function_id": "state::get", "payload": item},
        {"function_id": "state::delete", "payload": item},
        {"function_id": "state::get", "payload": item},
        {"function_id": "state::delete", "payload": {"scope": scope, "key": "never-set"}},
        *({"function_id": "state::set", "payload": {"scope": scope + "-list", "key": f"k{n}", "value": {"id": str(n)}}}
          for n in (3, 1, 2)),
        {"function_id": "state::list", "payload": {"scope": scope + "-list"}},
    ]


def stream_calls(group: str) -> list[dict[str, Any]]:
    """bridge-stream.test.ts, in order (its fresh list group is ``group + "-list"``)."""
    item = {"stream_name": "bridge-test-stream", "group_id": group, "item_id": "bridge-test-item"}
    listed = {"stream_name": "bridge-test-stream", "group_id": group + "-list"}
    return [
        {"function_id": "stream::delete", "payload": item},
        {"function_id": "stream::set", "payload": {**item, "data": {"id": "1", "v": "first"}}},
        {"function_id": "stream::set", "payload": {**item, "data": {"id": "1", "v": "second"}}},
        {"function_id": "stream::get", "payload": item},
        {"function_id": "stream::delete", "payload": item},
        {"function_id": "stream::get", "payload": item},
        {"function_id": "stream::delete", "payload": {**item, "item_id": "never-set"}},
        *({"function_id": "stream::set", "payload": {**listed, "item_id": f"i{n}", "data": {"id": str(n)}}}
          for n in (3, 1, 2)),
        {"function_id": "stream::list", "payload": listed},
    ]


def check_crud(outcomes: list[dict[str, Any]], kind: str) -> None:
    """What the original's bridge suites assert, on the results as the workers saw them."""
    assert all("error" not in outcome for outcome in outcomes), outcomes
    results = [outcome["result"] for outcome in outcomes]
    first, second = {"id": "1", "v": "first"}, {"id": "1", "v": "second"}
    assert results[1] == {"old_value": None, "new_value": first}
    assert results[2] == {"old_value": first, "new_value": second}
    assert results[3] == second
    assert results[5] is None  # gone after the delete
    if kind == "stream":
        assert results[4] == {"old_value": second} and results[6] == {"old_value": None}
    else:
        assert results[4] == second and results[6] is None
    assert sorted(results[10], key=lambda value: value["id"]) == [{"id": "1"}, {"id": "2"}, {"id": "3"}]


async def test_bridged_state_stream_and_iii_bridge_with_official_workers(procs, tmp_path, official_python, node):
    backend, bridged, _ = await start_pair(procs, tmp_path)
    on_backend, on_bridged = Workers(procs, backend, official_python, node), Workers(procs, bridged, official_python, node)

    # §11.5: state and stream CRUD through the bridged engine, with the local result shapes.
    for runtime in ("python", "node"):
        state = await on_bridged.start(runtime, f"state-{runtime}", calls=state_calls(f"bridge-state-{runtime}"))
        check_crud(await call_results(state, 11), "state")
        stream = await on_bridged.start(runtime, f"stream-{runtime}", calls=stream_calls(f"bridge-group-{runtime}"))
        check_crud(await call_results(stream, 11), "stream")
    client = await RawClient.connect(backend.url)  # the data lives on the backend
    try:
        stored = await client.call("stream::list", {"stream_name": "bridge-test-stream", "group_id": "bridge-group-node-list"})
        assert len(stored["result"]) == 3
        stored = await client.call("state::get", {"scope": "bridge-state-python-list", "key": "k1"})
        assert stored["result"] == {"id": "1"}

        # iii-bridge: a Python worker on the backend, a Node worker on the bridged engine.
        server = await on_backend.start(
            "python", "backend-fns", "--fn", "backend::add=add", "--fn", "backend::fail=fail",
            "--fn", "backend::slow=slow", "--stay",
        )
        await server.key("ready")
        echo = await on_bridged.start("node", "bridged-fns", "--fn", "bridged::echo=echo", "--stay")
        await echo.key("ready")
        caller = await on_bridged.start("node", "bridged-caller", calls=[
            {"function_id": "to_backend::add", "payload": {"a": 2, "b": 3}},
            {"function_id": "bridge.invoke", "payload": {"function_id": "backend::add", "data": {"a": 1, "b": 1}}},
            {"function_id": "bridge.invoke", "payload": {"function_id": "backend::fail", "data": {}}},
            {"function_id": "bridge.invoke_async", "payload": {"function_id": "backend::slow", "data": {"seconds": 0}}},
            {"function_id": "bridge.invoke", "payload": {"timeout_ms": 100}},
        ])
        added, invoked, failed, fired, bad = await call_results(caller, 5)
        assert added["result"] == {"c": 5}
        assert invoked["result"] == {"c": 2}
        assert failed["error"]["code"] == "bridge_error"
        # (the Node SDK puts the code in front: "bridge_error: remote error (…")
        assert "remote error (invocation_failed): boom from backend::fail" in failed["error"]["message"]
        assert fired.get("result") is None and "error" not in fired
        await server.key("started", "backend::slow")  # the fire-and-forget call got there
        assert bad["error"]["code"] == "deserialization_error"

        await client.wait_for_function("from_bridged::echo")  # exposed there by the bridge
        remote_caller = await on_backend.start("python", "backend-caller", calls=[
            {"function_id": "from_bridged::echo", "payload": {"x": 1}},
        ])
        (echoed,) = await call_results(remote_caller, 1)
        assert echoed["result"]["x"] == 1
    finally:
        await client.close()


async def test_the_bridge_reconnects_and_replays_after_the_backend_restarts(procs, tmp_path, official_python, node):
    backend, bridged, port = await start_pair(procs, tmp_path)
    on_bridged = Workers(procs, bridged, official_python, node)
    echo = await on_bridged.start("python", "bridged-fns", "--fn", "bridged::echo=echo", "--stay")
    await echo.key("ready")
    client = await RawClient.connect(backend.url)
    await client.wait_for_function("from_bridged::echo")
    await client.close()

    await backend.proc.stop()  # kill -9
    # A call made while the backend is down waits (queued by the bridge) ...
    writer = await on_bridged.start("node", "writer", calls=[
        {"function_id": "state::set", "payload": {"scope": "restart", "key": "k", "value": 1}},
    ])
    await writer.expect(lambda line: isinstance(line, dict) and "ready" in line)
    restarted = await procs.engine(config=backend_config(port), tmp=tmp_path / "backend")
    # ... and is sent once the bridge has reconnected, within its timeout.
    (written,) = await call_results(writer, 1)
    assert written["result"] == {"old_value": None, "new_value": 1}
    client = await RawClient.connect(restarted.url)
    try:
        stored = await client.call("state::get", {"scope": "restart", "key": "k"})
        assert stored["result"] == 1
        await client.wait_for_function("from_bridged::echo")  # the exposed function, replayed
        caller = await Workers(procs, restarted, official_python, node).start("python", "caller", calls=[
            {"function_id": "from_bridged::echo", "payload": {"again": True}},
        ])
        (echoed,) = await call_results(caller, 1)
        assert echoed["result"]["again"] is True
    finally:
        await client.close()


async def remote_subscribers(client: RawClient, topic: str) -> int:
    listed = await client.call("engine::triggers::list", {"include_internal": True})
    return sum(1 for trigger in listed["result"]["triggers"]
               if trigger["trigger_type"] == "durable:subscriber" and trigger["config"].get("topic") == topic)


async def test_durable_subscribers_on_a_bridged_engine_are_served_by_the_backend_queue(
    procs, tmp_path, official_python, node
):
    backend, bridged, _ = await start_pair(procs, tmp_path)
    on_bridged = Workers(procs, bridged, official_python, node)
    retry_fast = json.dumps({"topic": "orders", "queue_config": {"maxRetries": 1, "backoffDelayMs": 10}})
    subscriber = await on_bridged.start(
        "python", "subscriber", "--watch", 'durable:subscriber={"topic": "orders"}',
        "--fn", "orders::reject=fail", "--bind", f"orders::reject=durable:subscriber={retry_fast}", "--stay",
    )
    await subscriber.key("ready")
    client = await RawClient.connect(backend.url)
    try:
        deadline = asyncio.get_running_loop().time() + 10
        while await remote_subscribers(client, "orders") < 2:  # the bridge binds them there
            assert asyncio.get_running_loop().time() < deadline, "the remote bindings never came"
            await asyncio.sleep(0.05)
        publisher = await on_bridged.start("node", "publisher", calls=[
            {"function_id": "iii::durable::publish", "payload": {"topic": "orders", "data": {"id": 7}}},
        ])
        (published,) = await call_results(publisher, 1)
        assert "error" not in published
        delivered = await subscriber.key("event")
        assert delivered["event"]["id"] == 7 and delivered["type"] == "durable:subscriber"
        # The failing subscriber: retried by the backend's queue, then dead-lettered there.
        deadline = asyncio.get_running_loop().time() + 10
        while not (dead := (await client.call("engine::queue::dlq_topics", {}))["result"]):
            assert asyncio.get_running_loop().time() < deadline, "never dead-lettered"
            await asyncio.sleep(0.05)
        assert [topic["message_count"] for topic in dead] == [1]
        (letter,) = (await client.call("engine::queue::dlq_messages", {"topic": dead[0]["topic"]}))["result"]
        assert letter["retries"] == 2 and "boom from orders::reject" in letter["error"]
    finally:
        await client.close()
