"""Custom stream backends: a worker's ``stream::<op>(<name>)`` functions serve that stream's
``stream::*`` calls (inputs rebuilt from the parsed fields, results and errors as the original
maps them), the events of its writes still go out, other streams keep the engine's store.
Real sockets: an in-process engine, a raw worker as the backend."""

from __future__ import annotations

import asyncio
from typing import Any, Callable

import pytest

from helpers import RawClient, in_process_engine

pytestmark = pytest.mark.both_loops

CONFIG = "workers:\n  - name: iii-stream\n    config: {host: 127.0.0.1, port: 0}\n"
OPS = ("get", "set", "delete", "list", "list_groups", "update")


class Backend:
    """A raw worker serving ``stream::<op>(custom)``: answers with ``answer(op, data)``."""

    def __init__(self, client: RawClient, answer: Callable[[str, Any], Any]) -> None:
        self.client = client
        self.answer = answer
        self.seen: list[tuple[str, Any]] = []
        self.task = asyncio.ensure_future(self._serve())

    async def _serve(self) -> None:
        while True:
            frame = await self.client.recv(timeout=60)
            if frame.get("type") != "invokefunction" or not frame["function_id"].endswith("(custom)"):
                continue
            op = frame["function_id"][len("stream::"):-len("(custom)")]
            self.seen.append((op, frame["data"]))
            reply = self.answer(op, frame["data"])
            if isinstance(reply, Exception):
                self.client.send(type="invocationresult", invocation_id=frame["invocation_id"],
                                 function_id=frame["function_id"], error={"code": "backend_down", "message": str(reply)})
            else:
                self.client.send(type="invocationresult", invocation_id=frame["invocation_id"],
                                 function_id=frame["function_id"], result=reply)


async def backend(engine, answer, ops=OPS) -> Backend:
    client = await RawClient.connect(engine.urls[0])
    await client.register("backend")
    for op in ops:
        client.send(type="registerfunction", id=f"stream::{op}(custom)")
    await client.wait_for_function(f"stream::{ops[-1]}(custom)")
    return Backend(client, answer)


async def caller(engine, name: str = "caller") -> RawClient:
    client = await RawClient.connect(engine.urls[0])
    await client.register(name)
    return client


def dict_store() -> tuple[dict, Callable[[str, Any], Any]]:
    """An in-memory backend keyed ``group::item``, as the SDK suites' backends are."""
    items: dict[str, Any] = {}

    def answer(op: str, data: Any) -> Any:
        key = f"{data.get('group_id')}::{data.get('item_id')}"
        if op == "get":
            return items.get(key)
        if op == "set":
            old, items[key] = items.get(key), data["data"]
            return {"old_value": old, "new_value": data["data"]}
        if op == "delete":
            return {"old_value": items.pop(key, None)}
        if op == "list":
            return [v for k, v in items.items() if k.startswith(data["group_id"] + "::")]
        if op == "list_groups":
            return sorted({k.split("::")[0] for k in items})
        return None

    return items, answer


ITEM = {"stream_name": "custom", "group_id": "g", "item_id": "i"}


async def test_a_custom_stream_is_served_by_its_backend_and_its_events_still_go_out(tmp_path):
    async with in_process_engine(CONFIG, tmp_path) as engine:
        items, answer = dict_store()
        served = await backend(engine, answer)
        client, watcher = await caller(engine), await caller(engine, "watcher")
        watcher.send(type="registerfunction", id="watch")
        watcher.send(type="registertrigger", id="w", trigger_type="stream", function_id="watch", config={"stream_name": "custom"})
        await client.wait_for_function("watch")

        set_answer = await client.call("stream::set", {**ITEM, "data": {"name": "Test", "value": 100}})
        assert set_answer["result"] == {"old_value": None, "new_value": {"name": "Test", "value": 100}}
        assert items == {"g::i": {"name": "Test", "value": 100}}
        assert served.seen[0] == ("set", {**ITEM, "data": {"name": "Test", "value": 100}})  # no _caller_worker_id
        event = await watcher.recv_until(lambda f: f.get("type") == "invokefunction" and f["function_id"] == "watch")
        assert event["data"]["event"] == {"type": "create", "data": {"name": "Test", "value": 100}}

        assert (await client.call("stream::get", ITEM))["result"] == {"name": "Test", "value": 100}
        assert (await client.call("stream::list", {"stream_name": "custom", "group_id": "g"}))["result"] == [{"name": "Test", "value": 100}]
        assert (await client.call("stream::list_groups", {"stream_name": "custom"}))["result"] == ["g"]
        assert (await client.call("stream::delete", ITEM))["result"] == {"old_value": {"name": "Test", "value": 100}}
        event = await watcher.recv_until(lambda f: f.get("type") == "invokefunction" and f["function_id"] == "watch")
        assert event["data"]["event"]["type"] == "delete"
        assert (await client.call("stream::get", ITEM)).get("result") is None
        # Another stream keeps the engine's own store.
        other = {**ITEM, "stream_name": "plain"}
        await client.call("stream::set", {**other, "data": 1})
        assert (await client.call("stream::get", other))["result"] == 1
        # Nothing of the plain stream reached the backend (its set neither: only the store has it).
        assert all(data["stream_name"] == "custom" for _, data in served.seen) and items == {}
        served.task.cancel()


async def test_backend_failures_are_mapped_as_the_original_maps_them(tmp_path):
    async with in_process_engine(CONFIG, tmp_path) as engine:
        replies: dict[str, Any] = {}
        served = await backend(engine, lambda op, data: replies[op])
        client = await caller(engine)
        replies.update(set=None, delete=RuntimeError("disk gone"), get=RuntimeError("no"), update=[1])
        assert (await client.call("stream::set", {**ITEM, "data": 1}))["error"] == {
            "code": "STREAM_SET_ERROR", "message": "Failed to set value: Function returned no result"}
        assert (await client.call("stream::delete", ITEM))["error"] == {
            "code": "STREAM_DELETE_ERROR", "message": "Failed to delete value: disk gone"}
        assert (await client.call("stream::get", ITEM))["error"] == {"code": "backend_down", "message": "no"}
        update = await client.call("stream::update", {**ITEM, "ops": []})
        assert update["error"]["code"] == "JSON_ERROR"
        served.task.cancel()


async def test_a_backend_that_does_not_answer_fails_the_call_at_the_deadline(tmp_path):
    config = "workers:\n  - name: iii-stream\n    config: {host: 127.0.0.1, port: 0, invocation_timeout_ms: 200}\n"
    async with in_process_engine(config, tmp_path) as engine:
        silent = await RawClient.connect(engine.urls[0])
        await silent.register("silent")
        silent.send(type="registerfunction", id="stream::get(custom)")
        await silent.wait_for_function("stream::get(custom)")
        client = await caller(engine)
        answer = await client.call("stream::get", ITEM)
        assert answer["error"]["code"] == "TIMEOUT"
