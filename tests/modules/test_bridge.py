"""``iii-bridge`` and the ``bridge`` adapters, two engines on the test's loop: a backend (kv state
and stream, local pub/sub, builtin queue) and a bridged engine whose modules run on it.

The official SDK workers against the same topology (engine subprocesses): tests/interop/test_bridge_interop.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from pathlib import Path
from typing import Any

import pytest

from helpers import RawClient, in_process_engine
from iii.config import ConfigError, parse_config

BACKEND = """
workers:
  - name: iii-stream
    config: {host: 127.0.0.1, port: 0}
  - name: iii-http
    config: {host: 127.0.0.1, port: 0}
"""


def bridged_config(url: str, *, bridge: str = "", stream_port: bool = True) -> str:
    adapter = f"{{name: bridge, config: {{bridge_url: '{url}'}}}}"
    return (
        "workers:\n"
        f"  - name: iii-state\n    config: {{adapter: {adapter}}}\n"
        f"  - name: iii-stream\n    config: {{host: 127.0.0.1, port: 0, adapter: {adapter}}}\n"
        f"  - name: iii-queue\n    config: {{adapter: {adapter}}}\n"
        "  - name: iii-http\n    config: {host: 127.0.0.1, port: 0}\n"
        + bridge
    )


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.asynccontextmanager
async def engines(tmp_path: Path, bridge: str = ""):
    """``(backend, bridged, client of backend, client of bridged)``, all closed at the end."""
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    async with in_process_engine(BACKEND, tmp_path / "a") as backend:
        url = backend.urls[0]
        async with in_process_engine(bridged_config(url, bridge=bridge.replace("REMOTE", url)), tmp_path / "b") as bridged:
            on_backend = await RawClient.connect(url)
            on_bridged = await RawClient.connect(bridged.urls[0])
            for client in (on_backend, on_bridged):  # registrations apply at once, not after a grace
                await client.register("test-client")
            try:
                yield backend, bridged, on_backend, on_bridged
            finally:
                await on_backend.close()
                await on_bridged.close()


async def result(client: RawClient, function_id: str, data: Any = None) -> Any:
    frame = await client.call(function_id, data)
    assert "error" not in frame or frame["error"] is None, frame
    return frame.get("result")


async def error(client: RawClient, function_id: str, data: Any = None) -> dict[str, Any]:
    frame = await client.call(function_id, data)
    assert frame.get("error"), frame
    return frame["error"]


async def wait_for_worker(client: RawClient, name: str, timeout: float = 10) -> None:
    """Until ``name`` is connected to the engine ``client`` is on (a bridge has connected)."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        workers = (await result(client, "engine::workers::list", {}))["workers"]
        if name in [worker.get("name") for worker in workers]:
            return
        assert asyncio.get_running_loop().time() < deadline, f"{name} never connected: {workers}"
        await asyncio.sleep(0.02)  # polled: the engine has no event for one worker's arrival


async def test_state_runs_on_the_backend_with_the_local_shapes(tmp_path):
    async with engines(tmp_path) as (_, _, backend, bridged):
        assert await result(bridged, "state::set", {"scope": "s", "key": "k", "value": {"n": 1}}) == {
            "old_value": None, "new_value": {"n": 1}
        }
        assert await result(bridged, "state::set", {"scope": "s", "key": "k", "value": {"n": 2}}) == {
            "old_value": {"n": 1}, "new_value": {"n": 2}
        }
        assert await result(backend, "state::get", {"scope": "s", "key": "k"}) == {"n": 2}  # lives there
        assert await result(bridged, "state::get", {"scope": "s", "key": "k"}) == {"n": 2}
        assert await result(bridged, "state::update", {"scope": "s", "key": "k", "ops": [
            {"type": "increment", "path": "n", "by": 3}]}) == {"old_value": {"n": 2}, "new_value": {"n": 5}}
        assert await result(bridged, "state::list", {"scope": "s"}) == [{"n": 5}]
        assert await result(bridged, "state::list_groups", {}) == {"groups": ["s"]}
        assert await result(bridged, "state::delete", {"scope": "s", "key": "k"}) == {"n": 5}
        assert await result(bridged, "state::get", {"scope": "s", "key": "k"}) is None
        assert await result(bridged, "state::delete", {"scope": "s", "key": "missing"}) is None
        bad = await error(bridged, "state::get", {"scope": "s"})
        assert bad["code"] == "deserialization_error"  # checked here, before any round trip


async def test_state_triggers_fire_on_the_writer_and_on_the_backend(tmp_path):
    async with engines(tmp_path) as (_, _, backend, bridged):
        for client, name in ((backend, "on-backend"), (bridged, "on-bridged")):
            client.send(type="registerfunction", id=name)
            client.send(type="registertrigger", id=name, trigger_type="state", function_id=name, config={"scope": "t"})
            await result(client, "engine::functions::list", {})  # the binding is in before this answers
        # Not awaited: the writer's trigger may be called before the write is answered.
        bridged.send(type="invokefunction", invocation_id="w", function_id="state::set",
                     data={"scope": "t", "key": "k", "value": 1})
        for client, name in ((backend, "on-backend"), (bridged, "on-bridged")):
            event = await client.recv_until(lambda f: f.get("type") == "invokefunction" and f["function_id"] == name)
            assert event["data"]["event_type"] == "state:created"
            assert event["data"]["new_value"] == 1


async def test_stream_runs_on_the_backend_and_events_reach_bridged_clients(tmp_path):
    async with engines(tmp_path) as (_, bridged_app, backend, bridged):
        assert await result(bridged, "stream::set", {
            "stream_name": "chat", "group_id": "room", "item_id": "m1", "data": {"text": "hi"}
        }) == {"old_value": None, "new_value": {"text": "hi"}}
        assert await result(backend, "stream::get", {"stream_name": "chat", "group_id": "room", "item_id": "m1"}) == {
            "text": "hi"
        }
        assert await result(bridged, "stream::list", {"stream_name": "chat", "group_id": "room"}) == [{"text": "hi"}]
        assert await result(bridged, "stream::list_groups", {"stream_name": "chat"}) == ["room"]
        listed = await result(bridged, "stream::list_all", {})  # forwarded, not empty as in the original
        assert listed == {"stream": [{"id": "chat", "groups": ["room"]}], "count": 1}

        # A WebSocket client of the bridged engine: its sync is read from the backend, and a
        # write through the bridge comes back to it through the backend's stream.events topic.
        await wait_for_worker(backend, "iii-stream-bridge")
        await backend.wait_for_function("publish")
        stream_url = bridged_app.modules["iii-stream"].url
        client = await RawClient.connect(stream_url, "/stream")
        try:
            client.send(type="join", data={"subscriptionId": "sub", "streamName": "chat", "groupId": "room"})
            sync = await client.recv()
            assert sync["event"] == {"type": "sync", "data": [{"text": "hi"}]}
            triggers = await result(backend, "engine::triggers::list", {"include_internal": True})
            assert any(t["trigger_type"] == "subscribe" and t["config"] == {"topic": "stream.events"}
                       for t in triggers["triggers"]), triggers
            await result(bridged, "stream::set", {
                "stream_name": "chat", "group_id": "room", "item_id": "m2", "data": {"text": "yo"}
            })
            event = await client.recv()
            assert (event["streamName"], event["groupId"], event["id"]) == ("chat", "room", "m2")
            assert event["event"] == {"type": "create", "data": {"text": "yo"}}
        finally:
            await client.close()
        assert await result(bridged, "stream::delete", {"stream_name": "chat", "group_id": "room", "item_id": "m2"}) == {
            "old_value": {"text": "yo"}
        }
        assert await result(bridged, "stream::delete", {"stream_name": "chat", "group_id": "room", "item_id": "m2"}) == {
            "old_value": None
        }


async def test_queue_topics_and_named_queues_run_on_the_backend(tmp_path):
    async with engines(tmp_path) as (_, _, backend, bridged):
        # A durable subscriber on the bridged engine whose function fails: the backend's queue
        # retries it, then dead-letters it.
        bridged.send(type="registerfunction", id="orders::handle")
        bridged.send(type="registertrigger", id="sub-1", trigger_type="durable:subscriber", function_id="orders::handle",
                     config={"topic": "orders", "queue_config": {"maxRetries": 1, "backoffDelayMs": 1}})
        await result(bridged, "engine::functions::list", {})  # the binding is in before this answers
        await wait_for_remote_binding(backend, "orders")
        await result(bridged, "iii::durable::publish", {"topic": "orders", "data": {"id": 7}})
        for attempt in range(2):
            delivery = await bridged.recv_until(lambda f: f.get("type") == "invokefunction"
                                                and f["function_id"] == "orders::handle")
            assert delivery["data"] == {"id": 7}
            bridged.send(type="invocationresult", invocation_id=delivery["invocation_id"], function_id="orders::handle",
                         error={"code": "nope", "message": f"attempt {attempt}"})
        dead = await wait_for(lambda: result(backend, "engine::queue::dlq_topics", {}), lambda topics: topics)
        assert len(dead) == 1 and dead[0]["message_count"] == 1
        (letter,) = await result(backend, "engine::queue::dlq_messages", {"topic": dead[0]["topic"]})
        assert letter["error"] == "nope: attempt 1"  # the local function's error, relayed as is

        # Dead letters and queue listings are the backend's to give.
        failed = await error(bridged, "iii::queue::redrive", {"queue": "x"})
        assert failed == {"code": "redrive_failed", "message": "Bridge queue adapter does not support DLQ operations"}
        assert await result(bridged, "engine::queue::list_topics", {}) == []

        # A named-queue job runs on the backend, where its function must be registered.
        backend.send(type="registerfunction", id="jobs::run")
        await backend.wait_for_function("jobs::run")
        bridged.send(type="invokefunction", invocation_id="enq-1", function_id="jobs::run", data={"job": 1},
                     action={"type": "enqueue", "queue": "default"})
        receipt = await bridged.recv_until(lambda f: f.get("invocation_id") == "enq-1")
        assert receipt["result"]["messageReceiptId"]
        job = await backend.recv_until(lambda f: f.get("type") == "invokefunction" and f["function_id"] == "jobs::run")
        assert job["data"] == {"job": 1}


async def wait_for_remote_binding(backend: RawClient, topic: str, timeout: float = 10) -> None:
    def bound(triggers: Any) -> bool:
        return any(t["trigger_type"] == "durable:subscriber" and t["config"].get("topic") == topic
                   for t in triggers["triggers"])

    await wait_for(lambda: result(backend, "engine::triggers::list", {"include_internal": True}), bound, timeout)


async def wait_for(read: Any, ready: Any, timeout: float = 10) -> Any:
    """Read until ``ready(value)``, polling (what is awaited happens on another engine)."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        value = await read()
        if ready(value):
            return value
        assert asyncio.get_running_loop().time() < deadline, f"not ready in {timeout}s: {value}"
        await asyncio.sleep(0.02)


III_BRIDGE = """  - name: iii-bridge
    config:
      url: REMOTE
      expose:
        - local_function: local::echo
          remote_function: from_bridged::echo
        - local_function: local::missing
      forward:
        - local_function: to_backend::add
          remote_function: backend::add
          timeout_ms: 300
"""


async def test_iii_bridge_expose_forward_invoke(tmp_path):
    async with engines(tmp_path, III_BRIDGE) as (_, _, backend, bridged):
        backend.send(type="registerfunction", id="backend::add")
        await backend.wait_for_function("backend::add")
        bridged.send(type="registerfunction", id="local::echo")
        await bridged.wait_for_function("local::echo")

        # forward: a local id for a remote function
        bridged.send(type="invokefunction", invocation_id="f1", function_id="to_backend::add", data={"a": 1})
        call = await backend.recv_until(lambda f: f.get("type") == "invokefunction" and f["function_id"] == "backend::add")
        assert call["data"]["a"] == 1  # (and the engine's _caller_worker_id: the bridge's worker id there)
        backend.send(type="invocationresult", invocation_id=call["invocation_id"], function_id="backend::add", result={"c": 2})
        assert (await bridged.recv_until(lambda f: f.get("invocation_id") == "f1"))["result"] == {"c": 2}

        # ... whose timeout_ms bounds it
        started = asyncio.get_running_loop().time()
        late = await error(bridged, "to_backend::add", {"a": 2})
        assert late["code"] == "bridge_error" and "invocation timed out" in late["message"]
        assert asyncio.get_running_loop().time() - started < 5

        # bridge.invoke: any remote function; its errors folded into bridge_error
        missing = await error(bridged, "bridge.invoke", {"function_id": "nope::x", "data": 1, "timeout_ms": 2000})
        assert missing["code"] == "bridge_error"
        assert missing["message"].startswith("remote error (function_not_found): ")
        listed = await result(bridged, "bridge.invoke", {"function_id": "engine::functions::list", "data": {}})
        assert "from_bridged::echo" in [f["function_id"] for f in listed["functions"]]
        bad = await error(bridged, "bridge.invoke", {"data": 1})
        assert bad["code"] == "deserialization_error" and bad["message"].startswith("Failed to parse invoke input: ")

        # bridge.invoke_async: null at once, the call happens there
        assert await result(bridged, "bridge.invoke_async", {"function_id": "backend::add", "data": {"a": 9}}) is None
        fired = await backend.recv_until(lambda f: f.get("type") == "invokefunction" and f["data"]["a"] == 9)
        assert fired["function_id"] == "backend::add"

        # expose: the remote calls a local function, errors pass through with their code
        backend.send(type="invokefunction", invocation_id="e1", function_id="from_bridged::echo", data={"x": 1})
        local = await bridged.recv_until(lambda f: f.get("type") == "invokefunction" and f["function_id"] == "local::echo")
        assert local["data"]["x"] == 1
        bridged.send(type="invocationresult", invocation_id=local["invocation_id"], function_id="local::echo",
                     error={"code": "E_LOCAL", "message": "no", "stacktrace": "at here"})
        relayed = await backend.recv_until(lambda f: f.get("invocation_id") == "e1")
        assert relayed["error"] == {"code": "E_LOCAL", "message": "no", "stacktrace": "at here"}
        gone = await error(backend, "local::missing", {})
        assert gone["code"] == "function_not_found"  # the local lookup's code, relayed


async def test_a_bridge_to_a_remote_that_is_down_does_not_hold_up_the_engine(tmp_path):
    down = f"ws://127.0.0.1:{free_port()}"
    config = bridged_config(down, bridge=III_BRIDGE.replace("REMOTE", down))
    started = asyncio.get_running_loop().time()
    async with in_process_engine(config, tmp_path) as bridged_app:
        assert asyncio.get_running_loop().time() - started < 5
        client = await RawClient.connect(bridged_app.urls[0])
        try:
            failed = await error(client, "bridge.invoke", {"function_id": "x::y", "timeout_ms": 200})
            assert failed == {"code": "bridge_error", "message": "invocation timed out after 200ms"}
            late = await error(client, "to_backend::add", {})
            assert late["code"] == "bridge_error" and "timed out after 300ms" in late["message"]
        finally:
            await client.close()


def test_config_is_strict(tmp_path):
    with pytest.raises(ConfigError, match="service_id"):
        parse_config("workers:\n  - name: iii-bridge\n    config: {url: 'ws://x:1', service_id: a}\n", tmp_path / "c")
    with pytest.raises(ConfigError, match="remote_function"):
        parse_config("workers:\n  - name: iii-bridge\n    config: {forward: [{local_function: a}]}\n", tmp_path / "c")
    config = parse_config("workers:\n  - name: iii-bridge\n", tmp_path / "c")
    assert config.modules["iii-bridge"].expose == []


async def test_the_bridge_is_opt_in(tmp_path):
    async with in_process_engine("workers: []\n", tmp_path) as app:
        assert "iii-bridge" not in app.modules
        assert app.router.find_function("default", "bridge.invoke") is None


async def test_a_second_engine_bridging_the_same_remote_namespace_is_refused(tmp_path):
    """Fixed worker names: the remote refuses a second ``iii-bridge-client`` in its namespace,
    which is fatal for that bridge (no reconnect) and fails its calls at once."""
    bridge = "workers:\n  - name: iii-bridge\n    config: {url: 'REMOTE'}\n"
    (tmp_path / "first").mkdir()
    (tmp_path / "second").mkdir()
    async with in_process_engine(BACKEND, tmp_path) as backend:
        remote = backend.urls[0]
        async with in_process_engine(bridge.replace("REMOTE", remote), tmp_path / "first") as first:
            on_backend = await RawClient.connect(remote)
            await wait_for_worker(on_backend, "iii-bridge-client")
            await on_backend.close()
            async with in_process_engine(bridge.replace("REMOTE", remote), tmp_path / "second") as second:
                refused = asyncio.Event()
                second.modules["iii-bridge"].client.client.add_connection_state_listener(
                    lambda state: state == "failed" and refused.set()
                )
                await asyncio.wait_for(refused.wait(), 10)
                for app, works in ((second, False), (first, True)):
                    client = await RawClient.connect(app.urls[0])
                    try:
                        frame = await client.call("bridge.invoke", {"function_id": "engine::workers::list", "data": {}})
                    finally:
                        await client.close()
                    if works:
                        assert frame["result"]["workers"]
                    else:
                        assert frame["error"]["code"] == "bridge_error"
                        assert "WORKER_NAMESPACE_CONFLICT" in frame["error"]["message"]


async def test_a_forward_may_not_take_an_existing_function_id(tmp_path):
    config = ("workers:\n  - name: iii-bridge\n    config:\n      url: ws://127.0.0.1:9\n"
              "      forward: [{local_function: state::get, remote_function: state::get}]\n")
    with pytest.raises(ConfigError, match="'state::get' is already a function"):
        async with in_process_engine(config, tmp_path):
            pass


async def test_the_bridge_connects_once_the_remote_is_up_and_drops_calls_that_timed_out(tmp_path):
    port = free_port()
    config = ("workers:\n  - name: iii-bridge\n    config:\n      url: ws://127.0.0.1:%d\n"
              "      forward: [{local_function: remote::set, remote_function: state::set, timeout_ms: 200}]\n" % port)
    (tmp_path / "remote").mkdir()
    async with in_process_engine(config, tmp_path) as bridged_app:
        client = await RawClient.connect(bridged_app.urls[0])
        try:
            failed = await error(client, "remote::set", {"scope": "late", "key": "k", "value": 1})
            assert failed == {"code": "bridge_error", "message": "invocation timed out after 200ms"}
            async with in_process_engine(BACKEND, tmp_path / "remote", port=port) as backend:
                on_backend = await RawClient.connect(backend.urls[0])
                try:
                    await wait_for_worker(on_backend, "iii-bridge-client")  # within its 2 s retry
                    # The write that timed out while queued was dropped, not sent late.
                    assert await result(client, "bridge.invoke", {"function_id": "state::get",
                                                                  "data": {"scope": "late", "key": "k"}}) is None
                finally:
                    await on_backend.close()
        finally:
            await client.close()
