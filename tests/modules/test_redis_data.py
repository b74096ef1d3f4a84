"""The redis adapters of iii-state, iii-stream and iii-pubsub against a real redis-server, on one
engine: the update script against the embedded ops, the original's key layout, change events,
errors while Redis is down and recovery after it restarts."""

from __future__ import annotations

import asyncio
import copy
import json
import re
import socket
import uuid
from typing import Any

import pytest
from picows import WSMsgType

from helpers import RawClient, _Collector, in_process_engine
from iii import codec
from iii.modules._redis import RedisUnavailable, connect
from iii.modules._redis_stores import RedisHashes, glob_escape
from iii.modules.update_ops import apply_ops, prepare_ops

ORDERS = [
    {"type": "set", "path": "status", "value": "active"},
    {"type": "increment", "path": "count", "by": 2},
    {"type": "decrement", "path": "count", "by": 5},
    {"type": "decrement", "path": "debt", "by": 4},
    {"type": "merge", "path": ["profile", "address"], "value": {"city": "Lisbon"}},
    {"type": "append", "path": "events", "value": {"e": 1}},
    {"type": "append", "path": "events", "value": {"e": 2}},
    {"type": "append", "path": "log", "value": "a"},
    {"type": "append", "path": "log", "value": "b"},
    {"type": "increment", "path": "status"},
    {"type": "merge", "value": {"__proto__": {}}},
    {"type": "append", "path": "count", "value": 1},
    {"type": "remove", "path": "debt"},
    {"type": "explode"},
]

#: (stored value or None, ops): each applied by the Redis script and by ``apply_ops``.
UPDATE_CASES = [
    (None, ORDERS),
    (None, [{"type": "set", "path": "", "value": 5}, {"type": "increment", "path": "", "by": 2}]),
    (7, [{"type": "set", "path": "x", "value": 1}]),
    (7, [{"type": "remove", "path": ""}]),
    (None, [{"type": "merge", "value": {"a": 1}}]),
    (None, [{"type": "merge", "path": ["a"] * 33, "value": {}}]),
    (None, [{"type": "merge", "path": ["a", ""], "value": {}}]),
    (None, [{"type": "merge", "path": "x" * 257, "value": {}}]),
    (None, [{"type": "merge", "path": ["constructor"], "value": {}}]),
    (None, [{"type": "merge", "value": 3}]),
    (None, [{"type": "merge", "value": {"a": {"a": {"a": {"a": {"a": {"a": {"a": {"a": {"a": {"a": {"a": {"a": {"a": {"a": {"a": {"a": {"a": 1}}}}}}}}}}}}}}}}}}]),
    (None, [{"type": "merge", "value": {str(i): i for i in range(1025)}}]),
    (None, [{"type": "increment", "path": "n", "by": 1.5}, {"type": "increment", "path": "n", "by": True}]),
    # cjson's quirks, fixed: [] stays [], {} stays {}, key order, big and float numbers, text
    ({"z": [], "a": {}, "m": [[], {}]}, [{"type": "set", "path": "b", "value": []}, {"type": "append", "path": "z", "value": []}]),
    ({"big": 12345678901234567890, "f": 1.5, "e": 1e300, "neg": -3}, [
        {"type": "increment", "path": "big", "by": 99999999999999999999},
        {"type": "increment", "path": "f", "by": 1},
        {"type": "decrement", "path": "neg", "by": -3},
        {"type": "increment", "path": "e", "by": 1},
        {"type": "decrement", "path": "new", "by": 12345678901234567890123},
    ]),
    ({"f": 0.1}, [{"type": "increment", "path": "f", "by": 1}]),
    ({"s": "é\u2603\U0001f600 \"q\" \\ \n\t\u0001/"}, [{"type": "append", "path": "s", "value": "→\u0000"}]),
    ([1, 2], [{"type": "append", "value": 3}, {"type": "set", "path": "k", "value": 1}, {"type": "increment", "path": "k"},
              {"type": "remove", "path": "k"}, {"type": "merge", "value": {"a": 1}}]),
    ("text", [{"type": "append", "value": "more"}, {"type": "append", "value": 1}]),
    (None, [{"type": "remove", "path": ""}, {"type": "append", "value": "s"}]),
    (None, [{"type": "remove", "path": ""}, {"type": "append", "value": {"x": 1}}]),
    ({"a": None, "b": 1, "c": "s"}, [
        {"type": "append", "path": "a", "value": "x"},
        {"type": "append", "path": ["b", "c"], "value": 1},
        {"type": "merge", "path": ["c"], "value": {"x": 1}},
        {"type": "merge", "path": ["a", "b"], "value": {"x": 1}},
        {"type": "append", "path": ["n", "m", "l"], "value": "s"},
        {"type": "increment", "path": "c"},
        {"type": "increment", "path": "a"},
        {"type": "increment", "path": ""},
        {"type": "decrement", "path": ""},
    ]),
    ({"keep": 1, "a": 2}, [{"type": "set", "path": "a", "value": None}, {"type": "remove", "path": "keep"}, {"type": "set", "path": "keep", "value": True}]),
    (None, [{"type": "set", "path": 3, "value": 1}, {"type": "increment", "path": ["x"]}, {"type": "remove", "path": {"k": 1}}]),
    (5, [{"type": "set", "path": 3, "value": 1}, {"type": "merge", "path": 4, "value": {}}, {"type": "merge", "path": [1], "value": {}}]),
    (None, [{"type": "merge", "path": 4, "value": {}}, {"type": "append", "path": [1], "value": 1}, "not an op", {"type": 1}]),
    (None, [{"type": "set", "path": "", "value": None}, {"type": "increment", "path": "n"}]),
    (None, []),
    (None, [{"type": "merge", "path": [], "value": {"é": [1, {"b": []}]}}, {"type": "set", "path": "", "value": [{"x": [[]]}]}]),
]


@pytest.fixture
async def hashes(redis_server):
    store = RedisHashes(redis_server.url)
    await store.open()
    yield store
    await store.close()


@pytest.mark.parametrize("stored, ops", UPDATE_CASES)
async def test_the_update_script_gives_what_the_embedded_ops_give(hashes, stored, ops):
    if stored is not None:
        await hashes.client.hset("state:s", "k", codec.encode_json(stored))
    expected_value, expected_errors = apply_ops(copy.deepcopy(stored), copy.deepcopy(ops))
    prepared, errors = prepare_ops(copy.deepcopy(ops))
    outcome = await hashes.update("state:s", "k", prepared, None, "", "state", b"")
    if outcome.errors is not None:
        errors = sorted(errors + json.loads(outcome.errors), key=lambda error: error["op_index"])
    assert outcome.new == codec.encode_json(expected_value)  # same bytes: order, [] and numbers kept
    assert errors == expected_errors
    assert await hashes.client.hget("state:s", "k") == outcome.new


async def test_a_stored_text_that_is_not_json_fails_the_update(hashes):
    await hashes.client.hset("state:s", "k", b"{nope")
    with pytest.raises(Exception, match="Redis atomic update script failed: failed to decode existing JSON"):
        await hashes.update("state:s", "k", [], None, "", "state", b"")


def test_glob_characters_are_escaped():
    assert glob_escape("a*b?[c]\\") == "a\\*b\\?\\[c\\]\\\\"


# --------------------------------------------------------------------------- one engine


def redis_config(url: str, *modules: str) -> str:
    adapter = f"      adapter:\n        name: redis\n        config:\n          redis_url: {url}\n"
    text = "workers:\n  - name: iii-http\n    config:\n      host: 127.0.0.1\n      port: 0\n"
    if "iii-stream" not in modules:
        text += "  - name: iii-stream\n    config:\n      host: 127.0.0.1\n      port: 0\n"
    for module in modules:
        text += f"  - name: {module}\n    config:\n"
        if module == "iii-stream":
            text += "      host: 127.0.0.1\n      port: 0\n"
        text += adapter
    return text


async def call(client: RawClient, function_id: str, data: Any) -> Any:
    """Call ``function_id``; the calls of bound functions that arrive meanwhile are kept for
    :func:`invocations`."""
    invocation_id = uuid.uuid4().hex
    client.send(type="invokefunction", invocation_id=invocation_id, function_id=function_id, data=data)
    while True:
        frame = await client.recv()
        if frame.get("type") == "invocationresult" and frame.get("invocation_id") == invocation_id:
            return frame.get("error") or frame.get("result")
        if frame.get("type") == "invokefunction":
            _kept(client).append(frame)


def _kept(client: RawClient) -> list:
    if not hasattr(client, "kept"):
        client.kept = []  # type: ignore[attr-defined]
    return client.kept  # type: ignore[attr-defined]


async def invocations(client: RawClient, function_id: str, timeout: float = 10) -> Any:
    """The next call of ``function_id`` the engine sends ``client`` (answered: ``true`` for a
    condition function, else ``null``)."""
    kept = _kept(client)
    frame = next((f for f in kept if f.get("function_id") == function_id), None)
    if frame is not None:
        kept.remove(frame)
    else:
        while True:
            frame = await client.recv(timeout)
            if frame.get("type") == "invokefunction":
                if frame.get("function_id") == function_id:
                    break
                kept.append(frame)
    if frame.get("invocation_id"):
        client.send(type="invocationresult", invocation_id=frame["invocation_id"], function_id=function_id, result=None)
    return frame["data"]


async def test_state_on_redis_keeps_the_original_layout_and_fires_each_binding_once(redis_server, tmp_path):
    redis = await connect(redis_server.url)
    async with in_process_engine(redis_config(redis_server.url, "iii-state"), tmp_path) as app:
        client = await RawClient.connect(app.urls[0])
        await client.register("w")
        client.send(type="registerfunction", id="w::on-state")
        client.send(type="registertrigger", id="t1", trigger_type="state", function_id="w::on-state", config={"scope": "s"})
        assert await call(client, "state::set", {"scope": "s", "key": "a", "value": {"n": 1, "l": []}}) == {
            "old_value": None, "new_value": {"n": 1, "l": []}}
        assert await redis.hget("state:s", "a") == b'{"n":1,"l":[]}'
        first = await invocations(client, "w::on-state")
        assert first == {"type": "state", "event_type": "state:created", "scope": "s", "key": "a",
                         "old_value": None, "new_value": {"n": 1, "l": []}}
        assert await call(client, "state::update", {"scope": "s", "key": "a", "ops": [
            {"type": "increment", "path": "n", "by": 2}, {"type": "append", "path": "l", "value": 1},
            {"type": "increment", "path": "l"}]}) == {
            "old_value": {"n": 1, "l": []}, "new_value": {"n": 3, "l": [1]},
            "errors": [{"op_index": 2, "code": "increment.not_number", "message": "increment needs a number, found list"}]}
        assert (await invocations(client, "w::on-state"))["event_type"] == "state:updated"
        assert await call(client, "state::get", {"scope": "s", "key": "a"}) == {"n": 3, "l": [1]}
        assert await call(client, "state::get", {"scope": "s", "key": "missing"}) is None
        await call(client, "state::set", {"scope": "s*[x]", "key": "b", "value": 2})
        await call(client, "state::set", {"scope": "s", "key": "0", "value": "zero"})
        assert (await invocations(client, "w::on-state"))["key"] == "0"  # s*[x] is not watched
        assert await call(client, "state::list", {"scope": "s", "with_keys": True}) == [
            {"key": "0", "value": "zero"}, {"key": "a", "value": {"n": 3, "l": [1]}}]
        assert sorted(map(json.dumps, await call(client, "state::list", {"scope": "s"}))) == ['"zero"', '{"n": 3, "l": [1]}']
        assert await call(client, "state::list_groups", {}) == {"groups": ["s", "s*[x]"]}
        assert await call(client, "state::delete", {"scope": "s", "key": "a"}) == {"n": 3, "l": [1]}
        deleted = await invocations(client, "w::on-state")
        assert (deleted["event_type"], deleted["new_value"]) == ("state:deleted", None)
        assert await call(client, "state::delete", {"scope": "s", "key": "a"}) is None
        await call(client, "state::set", {"scope": "s", "key": "last", "value": 0})
        # every write so far fired exactly once: the next event is the last write's
        assert (await invocations(client, "w::on-state"))["event_type"] == "state:deleted"
        assert (await invocations(client, "w::on-state"))["key"] == "last"
        await redis.hset("state:s", "junk", b"{not json")
        error = await call(client, "state::get", {"scope": "s", "key": "junk"})
        assert error["code"] == "GET_ERROR" and "Failed to deserialize value from Redis" in error["message"]
        assert (await call(client, "state::list", {"scope": "s"}))["code"] == "LIST_ERROR"
        assert await call(client, "state::set", {"scope": "s", "key": "junk", "value": 1}) == {"old_value": None, "new_value": 1}
        await client.close()
    await redis.aclose()


async def test_state_update_respects_max_value_bytes(redis_server, tmp_path):
    config = redis_config(redis_server.url, "iii-state") + "      max_value_bytes: 12\n"
    async with in_process_engine(config, tmp_path) as app:
        client = await RawClient.connect(app.urls[0])
        assert (await call(client, "state::update", {"scope": "s", "key": "k", "ops": [{"type": "set", "path": "a", "value": 1}]}))[
            "new_value"] == {"a": 1}
        error = await call(client, "state::update", {"scope": "s", "key": "k", "ops": [{"type": "set", "path": "b", "value": "long text"}]})
        assert error == {"code": "VALUE_TOO_LARGE", "message": "value of 23 bytes exceeds the configured max_value_bytes limit of 12"}
        assert await call(client, "state::get", {"scope": "s", "key": "k"}) == {"a": 1}
        await client.close()


async def test_redis_down_is_an_error_not_a_hang_and_everything_comes_back(redis_server, tmp_path):
    config = redis_config(redis_server.url, "iii-state", "iii-pubsub")
    async with in_process_engine(config, tmp_path) as app:
        client = await RawClient.connect(app.urls[0])
        await client.register("w")
        client.send(type="registerfunction", id="w::on-state")
        client.send(type="registertrigger", id="t1", trigger_type="state", function_id="w::on-state", config={})
        client.send(type="registerfunction", id="w::on-news")
        client.send(type="registertrigger", id="t2", trigger_type="subscribe", function_id="w::on-news", config={"topic": "news"})
        await call(client, "state::set", {"scope": "s", "key": "k", "value": 1})
        await invocations(client, "w::on-state")
        redis_server.kill()
        for function_id, data, code in [
            ("state::get", {"scope": "s", "key": "k"}, "GET_ERROR"),
            ("state::set", {"scope": "s", "key": "k", "value": 2}, "SET_ERROR"),
            ("state::update", {"scope": "s", "key": "k", "ops": []}, "UPDATE_ERROR"),
            ("state::delete", {"scope": "s", "key": "k"}, "DELETE_ERROR"),
            ("state::list", {"scope": "s"}, "LIST_ERROR"),
            ("state::list_groups", {}, "LIST_GROUPS_ERROR"),
            ("publish", {"topic": "news", "data": 1}, "publish_error"),
        ]:
            error = await call(client, function_id, data)
            assert error["code"] == code, error
            assert f"Redis at {redis_server.url}" in error["message"]
        redis_server.start()
        assert await call(client, "state::get", {"scope": "s", "key": "k"}) == 1  # AOF kept it
        # events flow again once the subscribers are back: writes until one is seen, bounded
        for attempt in range(100):
            await call(client, "state::set", {"scope": "s", "key": "k", "value": attempt})
            try:
                event = await invocations(client, "w::on-state", timeout=0.2)
                break
            except TimeoutError:
                continue
        assert event["event_type"] == "state:updated"
        for attempt in range(100):
            await call(client, "publish", {"topic": "news", "data": attempt})
            try:
                await invocations(client, "w::on-news", timeout=0.2)
                break
            except TimeoutError:
                continue
        else:
            raise AssertionError("the subscribe binding never fired after the restart")
        await client.close()


async def test_an_unreachable_redis_stops_the_engine_start_with_the_original_message(tmp_path):
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        url = f"redis://127.0.0.1:{probe.getsockname()[1]}/0"
    for module in ("iii-state", "iii-stream", "iii-pubsub"):
        with pytest.raises(RedisUnavailable, match=re.escape(f"failed to create worker '{module}': Failed to connect to Redis at {url}")):
            async with in_process_engine(redis_config(url, module), tmp_path):
                pass


async def test_pubsub_on_redis_fires_every_binding_of_a_topic_with_its_condition(redis_server, tmp_path):
    redis = await connect(redis_server.url)
    async with in_process_engine(redis_config(redis_server.url, "iii-pubsub"), tmp_path) as app:
        client = await RawClient.connect(app.urls[0])
        await client.register("w")
        for name in ("first", "second", "gated"):
            client.send(type="registerfunction", id=f"w::{name}")
        client.send(type="registerfunction", id="w::only-big")
        client.send(type="registertrigger", id="t1", trigger_type="subscribe", function_id="w::first", config={"topic": "news"})
        client.send(type="registertrigger", id="t2", trigger_type="subscribe", function_id="w::second", config={"topic": "news"})
        client.send(type="registertrigger", id="t3", trigger_type="subscribe", function_id="w::gated",
                    config={"topic": "news", "condition_function_id": "w::only-big"})
        for _ in range(200):  # the engine subscribes in the background: wait for Redis to say so
            if (await redis.pubsub_numsub("news"))[0][1] == 1:
                break
            await asyncio.sleep(0.01)
        await redis.publish("news", b'{"n": 1}')  # any Redis client may publish
        await call(client, "publish", {"topic": "news", "data": {"n": 100}})
        await call(client, "publish", {"topic": "other", "data": 0})
        await redis.publish("news", b"not json")
        seen: dict[str, list] = {"w::first": [], "w::second": [], "w::gated": []}
        while len(seen["w::first"]) < 2 or len(seen["w::second"]) < 2 or not seen["w::gated"]:
            kept = _kept(client)
            frame = kept.pop(0) if kept else await client.recv_until(lambda f: f.get("type") == "invokefunction")
            answer = frame["data"]["n"] > 10 if frame["function_id"] == "w::only-big" else None
            client.send(type="invocationresult", invocation_id=frame["invocation_id"], function_id=frame["function_id"], result=answer)
            if frame["function_id"] in seen:
                seen[frame["function_id"]].append(frame["data"])
        assert seen == {"w::first": [{"n": 1}, {"n": 100}], "w::second": [{"n": 1}, {"n": 100}], "w::gated": [{"n": 100}]}
        # the topic is left once its last binding goes
        for binding in ("t1", "t2", "t3"):
            client.send(type="unregistertrigger", id=binding, trigger_type="subscribe")
        for _ in range(200):
            if (await redis.pubsub_numsub("news"))[0][1] == 0:
                break
            await asyncio.sleep(0.01)
        assert (await redis.pubsub_numsub("news"))[0][1] == 0
        await client.close()
    await redis.aclose()


async def test_stream_on_redis_serves_items_clients_and_bindings_through_stream_events(redis_server, tmp_path):
    from picows import ws_connect

    redis = await connect(redis_server.url)
    async with in_process_engine(redis_config(redis_server.url, "iii-stream"), tmp_path) as app:
        streams = app.modules["iii-stream"]
        client = await RawClient.connect(app.urls[0])
        await client.register("w")
        client.send(type="registerfunction", id="w::on-stream")
        client.send(type="registertrigger", id="t1", trigger_type="stream", function_id="w::on-stream", config={"stream_name": "chat"})
        assert await call(client, "stream::set", {"stream_name": "chat", "group_id": "room", "item_id": "m1", "data": {"t": "hi"}}) == {
            "old_value": None, "new_value": {"t": "hi"}}
        assert await redis.hget("stream:chat:room", "m1") == b'{"t":"hi"}'
        created = await invocations(client, "w::on-stream")
        assert (created["streamName"], created["groupId"], created["id"], created["event"]) == (
            "chat", "room", "m1", {"type": "create", "data": {"t": "hi"}})

        transport, socket_client = await ws_connect(_Collector, streams.url)
        transport.send(WSMsgType.TEXT, json.dumps({"type": "join", "data": {"subscriptionId": "sub", "streamName": "chat", "groupId": "room"}}).encode())
        sync = await asyncio.wait_for(socket_client.queue.get(), 10)
        assert sync["event"] == {"type": "sync", "data": [{"t": "hi"}]}
        transport.send(WSMsgType.TEXT, json.dumps({"type": "join", "data": {"subscriptionId": "one", "streamName": "chat", "groupId": "room", "id": "m1"}}).encode())
        sync = await asyncio.wait_for(socket_client.queue.get(), 10)
        assert (sync["id"], sync["event"]) == ("m1", {"type": "sync", "data": {"t": "hi"}})
        transport.send(WSMsgType.TEXT, json.dumps({"type": "leave", "data": {"subscriptionId": "one", "streamName": "chat", "groupId": "room", "id": "m1"}}).encode())

        # a write by any Redis client in the original's format reaches clients and bindings alike
        await redis.publish("stream::events", json.dumps({"type": "stream", "timestamp": 1, "streamName": "chat", "groupId": "room",
                                                           "id": "x", "event": {"type": "update", "data": 1}}))
        assert (await asyncio.wait_for(socket_client.queue.get(), 10))["id"] == "x"
        assert (await invocations(client, "w::on-stream"))["id"] == "x"

        assert (await call(client, "stream::update", {"stream_name": "chat", "group_id": "room", "item_id": "m1",
                                                      "ops": [{"type": "set", "path": "t", "value": "yo"}]}))["new_value"] == {"t": "yo"}
        updated = await asyncio.wait_for(socket_client.queue.get(), 10)
        assert updated["event"] == {"type": "update", "data": {"t": "yo"}}
        assert (await invocations(client, "w::on-stream"))["event"]["type"] == "update"
        await call(client, "stream::send", {"stream_name": "chat", "group_id": "room", "type": "typing", "data": {"who": "a"}})
        assert (await asyncio.wait_for(socket_client.queue.get(), 10))["event"] == {
            "type": "event", "event": {"type": "typing", "data": {"who": "a"}}}
        assert await call(client, "stream::delete", {"stream_name": "chat", "group_id": "room", "item_id": "m1"}) == {"old_value": {"t": "yo"}}
        assert (await asyncio.wait_for(socket_client.queue.get(), 10))["event"] == {"type": "delete", "data": {"t": "yo"}}
        assert await call(client, "stream::delete", {"stream_name": "chat", "group_id": "room", "item_id": "m1"}) == {"old_value": None}

        for stream, group in [("chat", "a"), ("chat", "b*"), ("ch*", "c"), ("other", "d")]:
            await call(client, "stream::set", {"stream_name": stream, "group_id": group, "item_id": "i", "data": 1})
        assert await call(client, "stream::list_groups", {"stream_name": "chat"}) == ["a", "b*"]
        assert await call(client, "stream::list_groups", {"stream_name": "ch*"}) == ["c"]  # not chat's
        assert await call(client, "stream::list_all", {}) == {"stream": [
            {"id": "ch*", "groups": ["c"]}, {"id": "chat", "groups": ["a", "b*"]}, {"id": "other", "groups": ["d"]}], "count": 3}
        assert await call(client, "stream::list", {"stream_name": "chat", "group_id": "a", "with_ids": True}) == [{"id": "i", "data": 1}]
        assert await call(client, "stream::get", {"stream_name": "chat", "group_id": "a", "item_id": "i"}) == 1
        transport.disconnect()
        await client.close()
    await redis.aclose()


def test_the_adapters_are_typed():
    import msgspec

    from iii.modules.pubsub import PubSubConfig
    from iii.modules.state import StateConfig
    from iii.modules.stream import StreamConfig

    for config_type in (StateConfig, StreamConfig, PubSubConfig):
        assert msgspec.convert({"adapter": {"name": "redis"}}, config_type).adapter.config.redis_url == "redis://localhost:6379"
        with pytest.raises(msgspec.ValidationError, match="unknown field `url`"):
            msgspec.convert({"adapter": {"name": "redis", "config": {"url": "redis://x"}}}, config_type)





FLOATS = [1e300, 1e15, 1e16, 2.5, 0.1, 1.0, 1e-5, 1e-6, 1.25e-5, 123456789012345680.0, 1.5e-7, -0.0, -2.5e-300,
          5e-324, 1.7976931348623157e308, 9999000000000000.0, 0.000012345678901234568, -123.456, 3e-5]


async def test_floats_are_written_as_our_encoder_writes_them(hashes):
    ops = [{"type": "increment", "path": f"f{index}", "by": 0} for index in range(len(FLOATS))]
    stored = {f"f{index}": value for index, value in enumerate(FLOATS)}
    # 1.0-based text: a float plus 0 is rewritten, so each goes through the script's float writer
    await hashes.client.hset("state:s", "k", codec.encode_json(stored))
    outcome = await hashes.update("state:s", "k", prepare_ops(ops)[0], None, "", "state", b"")
    assert outcome.new == codec.encode_json(apply_ops(dict(stored), ops)[0])


async def test_a_redis_that_stops_answering_fails_calls_at_the_deadline(redis_server, tmp_path, monkeypatch):
    import os
    import signal

    from iii.modules import _redis_stores

    monkeypatch.setattr(_redis_stores, "OP_DEADLINE_S", 0.5)
    async with in_process_engine(redis_config(redis_server.url, "iii-state", "iii-stream"), tmp_path) as app:
        client = await RawClient.connect(app.urls[0])
        assert (await call(client, "state::set", {"scope": "s", "key": "k", "value": 1}))["new_value"] == 1
        os.kill(redis_server.process.pid, signal.SIGSTOP)  # alive, silent
        try:
            loop = asyncio.get_running_loop()
            started = loop.time()
            error = await call(client, "state::get", {"scope": "s", "key": "k"})
            assert error == {"code": "GET_ERROR", "message": f"Failed to get value: Redis at {redis_server.url} did not answer within 0.5s"}
            error = await call(client, "stream::set", {"stream_name": "a", "group_id": "b", "item_id": "c", "data": 1})
            assert error["code"] == "STREAM_SET_ERROR" and "did not answer within 0.5s" in error["message"]
            assert loop.time() - started < 3
        finally:
            os.kill(redis_server.process.pid, signal.SIGCONT)
        assert await call(client, "state::get", {"scope": "s", "key": "k"}) == 1  # a new connection
        await client.close()


async def test_a_custom_stream_backend_keeps_serving_its_stream_and_its_events_go_through_redis(redis_server, tmp_path):
    async with in_process_engine(redis_config(redis_server.url, "iii-stream"), tmp_path) as app:
        backend = await RawClient.connect(app.urls[0])
        await backend.register("backend")
        backend.send(type="registerfunction", id="stream::set(custom)")
        backend.send(type="registerfunction", id="w::on-stream")
        backend.send(type="registertrigger", id="t1", trigger_type="stream", function_id="w::on-stream", config={"stream_name": "custom"})
        await backend.call("engine::workers::list", {})
        caller = await RawClient.connect(app.urls[0])
        caller.send(type="invokefunction", invocation_id="set-1", function_id="stream::set",
                    data={"stream_name": "custom", "group_id": "g", "item_id": "i", "data": {"x": 1}})
        request = await backend.recv_until(lambda f: f.get("type") == "invokefunction" and f["function_id"] == "stream::set(custom)")
        assert request["data"]["data"] == {"x": 1}
        backend.send(type="invocationresult", invocation_id=request["invocation_id"], function_id="stream::set(custom)",
                     result={"old_value": None, "new_value": {"x": 1}})
        answer = await caller.recv_until(lambda f: f.get("invocation_id") == "set-1")
        assert answer["result"] == {"old_value": None, "new_value": {"x": 1}}
        event = await invocations(backend, "w::on-stream")
        assert (event["streamName"], event["event"]) == ("custom", {"type": "create", "data": {"x": 1}})
        redis = await connect(redis_server.url)
        assert await redis.exists("stream:custom:g") == 0  # the backend keeps it, not Redis
        await redis.aclose()
        await caller.close()
        await backend.close()
