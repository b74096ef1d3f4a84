"""The iii-stream module over real sockets: functions, events to bindings and to clients."""

from __future__ import annotations

import json

import pytest
from picows import WSMsgType

from helpers import LOCAL_MODULES, RawClient, in_process_engine

#: In-process engines: every test runs on the stdlib loop and on uvloop.
pytestmark = pytest.mark.both_loops


@pytest.fixture
async def engine(tmp_path):
    async with in_process_engine("workers:\n" + LOCAL_MODULES, tmp_path) as engine:
        yield engine


def stream_url(engine) -> str:
    return engine.modules["iii-stream"].url


async def subscriber(engine) -> RawClient:
    return await RawClient.connect(stream_url(engine), path="")  # no welcome on this socket


def join(client: RawClient, subscription: str, group: str = "room-1", item=None, kind: str = "join") -> None:
    data = {"subscriptionId": subscription, "streamName": "chat", "groupId": group}
    if item is not None:
        data["id"] = item
    client.send_bytes(json.dumps({"type": kind, "data": data}).encode(), WSMsgType.TEXT)


async def test_items_and_their_events_reach_subscribers_and_bindings(engine):
    worker = await RawClient.connect(engine.urls[0])
    await worker.register("chat")
    worker.send(type="registerfunction", id="chat::on")
    worker.send(type="registertrigger", id="w", trigger_type="stream", function_id="chat::on", config={"stream_name": "chat", "group_id": "room-1"})
    first = await worker.call("stream::set", {"stream_name": "chat", "group_id": "room-1", "item_id": "m1", "data": {"text": "hi"}})
    assert first["result"] == {"old_value": None, "new_value": {"text": "hi"}}
    created = await worker.recv_until(lambda f: f.get("function_id") == "chat::on")
    assert {k: created["data"][k] for k in ("type", "streamName", "groupId", "id", "event")} == {
        "type": "stream", "streamName": "chat", "groupId": "room-1", "id": "m1", "event": {"type": "create", "data": {"text": "hi"}},
    }

    client = await subscriber(engine)
    join(client, "s1")
    sync = await client.recv()
    assert sync["event"] == {"type": "sync", "data": [{"text": "hi"}]}
    await worker.call("stream::update", {"stream_name": "chat", "group_id": "room-1", "item_id": "m1", "ops": [{"type": "set", "path": "text", "value": "yo"}]})
    assert (await client.recv())["event"] == {"type": "update", "data": {"text": "yo"}}
    await worker.call("stream::set", {"stream_name": "chat", "group_id": "room-2", "item_id": "x", "data": 1})  # another group
    await worker.call("stream::send", {"stream_name": "chat", "group_id": "room-1", "type": "typing", "data": {"who": "ada"}})
    assert (await client.recv())["event"] == {"type": "event", "event": {"type": "typing", "data": {"who": "ada"}}}
    assert (await worker.call("stream::delete", {"stream_name": "chat", "group_id": "room-1", "item_id": "m1"}))["result"] == {"old_value": {"text": "yo"}}
    assert (await client.recv())["event"] == {"type": "delete", "data": {"text": "yo"}}
    assert (await worker.call("stream::list_all", {}))["result"] == {"stream": [{"id": "chat", "groups": ["room-2"]}], "count": 1}
    assert (await worker.call("stream::list_groups", {"stream_name": "chat"}))["result"] == ["room-2"]
    assert (await worker.call("stream::get", {"stream_name": "chat", "group_id": "room-2", "item_id": "x"}))["result"] == 1
    listed = await worker.call("stream::list", {"stream_name": "chat", "group_id": "room-2", "with_ids": True})
    assert listed["result"] == [{"id": "x", "data": 1}]
    await client.close()
    await worker.close()


async def test_join_handlers_can_refuse_and_leave_handlers_are_told(engine):
    gatekeeper = await RawClient.connect(engine.urls[0])
    await gatekeeper.register("gate")
    for function_id, trigger_type in (("gate::join", "stream:join"), ("gate::leave", "stream:leave")):
        gatekeeper.send(type="registerfunction", id=function_id)
        gatekeeper.send(type="registertrigger", id=function_id, trigger_type=trigger_type, function_id=function_id, config={})
    await gatekeeper.call("engine::workers::list", {})
    client = await subscriber(engine)

    async def answer_join(allow: bool) -> dict:
        call = await gatekeeper.recv_until(lambda f: f.get("function_id") == "gate::join")
        gatekeeper.send(type="invocationresult", invocation_id=call["invocation_id"], function_id="gate::join",
                        result=None if allow else {"unauthorized": True})
        return call["data"]

    join(client, "denied", group="secret")
    assert (await answer_join(False))["group_id"] == "secret"
    assert (await client.recv())["event"] == {"type": "unauthorized"}
    join(client, "s2", item="m9")
    assert await answer_join(True) == {"subscription_id": "s2", "stream_name": "chat", "group_id": "room-1", "id": "m9", "context": None}
    assert (await client.recv())["event"] == {"type": "sync", "data": None}
    join(client, "s2", item="m9", kind="leave")
    left = await gatekeeper.recv_until(lambda f: f.get("function_id") == "gate::leave")
    assert left["data"]["subscription_id"] == "s2"
    await client.close()
    await gatekeeper.close()


async def test_the_file_based_store_keeps_items_across_restarts(tmp_path):
    path = tmp_path / "streams.json"
    text = (
        "workers:\n  - name: iii-stream\n    config:\n      host: 127.0.0.1\n      port: 0\n"
        f"      adapter: {{name: kv, config: {{store_method: file_based, file_path: '{path}'}}}}\n"
    )
    for round_ in ("write", "read"):
        async with in_process_engine(text, tmp_path) as engine:
            worker = await RawClient.connect(engine.urls[0])
            item = {"stream_name": "chat", "group_id": "room-1", "item_id": "m1"}
            if round_ == "write":
                await worker.call("stream::set", {**item, "data": {"text": "kept"}})
            else:
                assert (await worker.call("stream::get", item))["result"] == {"text": "kept"}
            await worker.close()
