"""iii-stream's WebSocket clients when they misbehave: one that stops reading is dropped (and
only it), bad messages are logged once per client and kind, a join handler that never answers
refuses the join at its deadline, a client flooding joins is no longer read until they are
handled. Real sockets, an in-process engine."""

from __future__ import annotations

import asyncio
import json
import logging

import pytest
from picows import WSMsgType

from helpers import RawClient, in_process_engine

#: In-process engines: every test runs on the stdlib loop and on uvloop.
pytestmark = pytest.mark.both_loops

ITEM = "x" * (64 * 1024)


def running(tmp_path, stream_config: str):
    """An engine whose iii-stream entry has ``stream_config`` (YAML flow mapping members)."""
    text = (
        "workers:\n"
        "  - name: iii-http\n    config: {host: 127.0.0.1, port: 0}\n"
        f"  - name: iii-stream\n    config: {{host: 127.0.0.1, port: 0, {stream_config}}}\n"
    )
    return in_process_engine(text, tmp_path)


async def joined(engine, subscription: str) -> RawClient:
    """A client subscribed to chat/room-1 (its ``sync`` read)."""
    client = await RawClient.connect(engine.modules["iii-stream"].url, path="")
    data = {"subscriptionId": subscription, "streamName": "chat", "groupId": "room-1"}
    client.send_bytes(json.dumps({"type": "join", "data": data}).encode())
    assert (await client.recv())["event"]["type"] in ("sync", "unauthorized")
    return client


def server_side(engine, subscription: str):
    """The engine's StreamClient holding ``subscription``."""
    (client,) = [c for c in engine.modules["iii-stream"].clients if subscription in c.subscriptions]
    return client


async def send_event(worker: RawClient, n: int) -> None:
    await worker.call("stream::send", {"stream_name": "chat", "group_id": "room-1", "type": "big", "data": [n, ITEM]})


def warnings(caplog, text: str) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.levelno == logging.WARNING and text in r.getMessage()]


async def test_a_client_that_stops_reading_is_dropped_and_the_others_keep_receiving(tmp_path, caplog):
    limit = 1024 * 1024
    async with running(tmp_path, f"max_client_buffer_bytes: {limit}") as engine:
        worker = await RawClient.connect(engine.urls[0])
        slow, fast = await joined(engine, "slow"), await joined(engine, "fast")
        engine_side = server_side(engine, "slow")
        buffer = engine_side._transport.underlying_transport
        slow.transport.underlying_transport.pause_reading()
        most = sent = 0
        while engine_side in engine.modules["iii-stream"].clients:
            assert sent < 1000, "the client that does not read was never dropped (64 MiB sent)"
            await send_event(worker, sent)
            sent += 1
            most = max(most, buffer.get_write_buffer_size())
        assert most <= limit  # what waits for it never went past its cap
        assert len(warnings(caplog, "is not reading")) == 1
        for n in range(3):  # the others still get every event, after the drop too
            await send_event(worker, sent + n)
        received = [(await fast.recv())["event"]["event"]["data"][0] for _ in range(sent + 3)]
        assert received == list(range(sent + 3))
        await fast.close()
        await slow.close()
        await worker.close()
    assert len(warnings(caplog, "is not reading")) == 1


async def test_a_client_that_stays_behind_is_dropped_after_the_stall_timeout(tmp_path, caplog):
    async with running(tmp_path, "client_stall_timeout_ms: 300") as engine:
        worker = await RawClient.connect(engine.urls[0])
        slow = await joined(engine, "slow")
        engine_side = server_side(engine, "slow")
        slow.transport.underlying_transport.pause_reading()
        sent = 0
        while engine_side._stall is None:  # until it is behind (the kernel buffers are full)
            assert sent < 1000
            await send_event(worker, sent)
            sent += 1
        behind = asyncio.get_running_loop().time()
        while engine_side in engine.modules["iii-stream"].clients:
            await asyncio.sleep(0.02)
        assert 0.25 <= asyncio.get_running_loop().time() - behind < 2
        (dropped,) = warnings(caplog, "is not reading")
        assert "after 300 ms" in dropped.getMessage()
        await slow.close()
        await worker.close()


async def test_bad_messages_are_logged_once_per_client_and_kind(tmp_path, caplog):
    caplog.set_level(logging.INFO)
    async with running(tmp_path, "invocation_timeout_ms: 5000") as engine:
        client = await RawClient.connect(engine.modules["iii-stream"].url, path="")
        for raw in (b"not json", b'{"type": ', b'{"x": ' + b"[" * 100_000, b'{"type": "ping"}', b'{"type": "ping"}'):
            client.send_bytes(raw)
        bad_type = {"type": "dance", "data": {"subscriptionId": "s", "streamName": "chat", "groupId": "g"}}
        for _ in range(2):
            client.send_bytes(json.dumps(bad_type).encode())
            client.send_bytes(b"\x00\x01", WSMsgType.BINARY)
        join = {"type": "join", "data": {"subscriptionId": "s1", "streamName": "chat", "groupId": "room-1"}}
        client.send_bytes(json.dumps(join).encode())
        assert (await client.recv())["event"] == {"type": "sync", "data": []}  # still served
        engine_side = server_side(engine, "s1")
        assert engine_side.bad_input == {
            "malformed JSON": 3, "an invalid message": 2, "an unknown message type": 2, "a binary frame": 2,
        }
        assert [len(warnings(caplog, kind)) for kind in engine_side.bad_input] == [1, 1, 1, 1]
        other = await RawClient.connect(engine.modules["iii-stream"].url, path="")
        other.send_bytes(b"not json")
        other.send_bytes(json.dumps(join).encode())
        await other.recv()
        assert len(warnings(caplog, "malformed JSON")) == 2  # once per client
        await client.close()
        await other.close()
        await asyncio.sleep(0.05)
    assert len(warnings(caplog, "5 more bad messages that were not logged")) == 1
    assert not [r for r in caplog.records if r.exc_info or r.levelno >= logging.ERROR]


async def test_a_join_handler_that_never_answers_refuses_the_join_at_its_deadline(tmp_path):
    async with running(tmp_path, "invocation_timeout_ms: 300") as engine:
        gatekeeper = await RawClient.connect(engine.urls[0])
        await gatekeeper.register("gate")
        gatekeeper.send(type="registerfunction", id="gate::join")
        gatekeeper.send(type="registertrigger", id="j", trigger_type="stream:join", function_id="gate::join", config={})
        await gatekeeper.call("engine::workers::list", {})
        client = await RawClient.connect(engine.modules["iii-stream"].url, path="")
        loop = asyncio.get_running_loop()
        for subscription in ("s1", "s2"):  # the first refusal does not hold up the client's next join
            started = loop.time()
            data = {"subscriptionId": subscription, "streamName": "chat", "groupId": "room-1"}
            client.send_bytes(json.dumps({"type": "join", "data": data}).encode())
            assert (await client.recv(timeout=5))["event"] == {"type": "unauthorized"}
            assert 0.25 <= loop.time() - started < 2
        listed = await gatekeeper.call("engine::workers::list", {})
        (row,) = [w for w in listed["result"]["workers"] if w["id"] == gatekeeper.worker_id]
        assert row["status"] == "available"  # the engine forgot the calls it gave up on
        await client.close()
        await gatekeeper.close()


async def test_a_client_flooding_joins_is_not_read_until_they_are_handled(tmp_path):
    async with running(tmp_path, "invocation_timeout_ms: 10000") as engine:
        gatekeeper = await RawClient.connect(engine.urls[0])
        await gatekeeper.register("gate")
        gatekeeper.send(type="registerfunction", id="gate::join")
        gatekeeper.send(type="registertrigger", id="j", trigger_type="stream:join", function_id="gate::join", config={})
        await gatekeeper.call("engine::workers::list", {})
        client = await joined_without_handlers(engine, gatekeeper)
        engine_side = server_side(engine, "first")
        for batch in range(10):  # 200 joins, while their handler answers none
            for n in range(20):
                data = {"subscriptionId": f"s{batch}-{n}", "streamName": "chat", "groupId": "room-1"}
                client.send_bytes(json.dumps({"type": "join", "data": data}).encode())
            await asyncio.sleep(0.02)
        assert engine_side._inbox.qsize() <= 64 + 20  # the cap, plus what one read brought

        async def answer_joins() -> None:
            while True:
                call = await gatekeeper.recv_until(lambda f: f.get("function_id") == "gate::join", timeout=30)
                gatekeeper.send(type="invocationresult", invocation_id=call["invocation_id"],
                                function_id="gate::join", result=None)

        answering = asyncio.ensure_future(answer_joins())
        synced = [await client.recv() for _ in range(200)]  # reading resumed: every join answered
        assert {s["event"]["type"] for s in synced} == {"sync"}
        assert len(engine_side.subscriptions) == 201
        answering.cancel()
        await client.close()
        await gatekeeper.close()


async def joined_without_handlers(engine, gatekeeper: RawClient) -> RawClient:
    """A client subscribed as ``first`` (its join answered by the gatekeeper)."""
    client = await RawClient.connect(engine.modules["iii-stream"].url, path="")
    data = {"subscriptionId": "first", "streamName": "chat", "groupId": "room-1"}
    client.send_bytes(json.dumps({"type": "join", "data": data}).encode())
    call = await gatekeeper.recv_until(lambda f: f.get("function_id") == "gate::join")
    gatekeeper.send(type="invocationresult", invocation_id=call["invocation_id"], function_id="gate::join", result=None)
    assert (await client.recv())["event"]["type"] == "sync"
    return client
