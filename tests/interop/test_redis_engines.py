"""Two engines on one Redis (state, stream and pub/sub on the redis adapters) with official-SDK
workers on different engines: a write on one engine reaches the bindings and stream clients of
the other, each once; a publish reaches subscribers on both; Redis restarted mid-run."""

from __future__ import annotations

import asyncio
import json
import re
import socket
import sys
from typing import Any

import pytest

from helpers import RawClient, Workers

pytestmark = pytest.mark.interop

_STREAM_LINE = re.compile(r"iii-stream listening on (ws://\S+)")


def engine_config(redis_url: str) -> str:
    adapter = f"      adapter:\n        name: redis\n        config:\n          redis_url: {redis_url}\n"
    return (
        "workers:\n"
        "  - name: iii-worker-manager\n    config:\n      host: 127.0.0.1\n      port: 0\n"
        "  - name: iii-http\n    config:\n      host: 127.0.0.1\n      port: 0\n"
        "  - name: iii-stream\n    config:\n      host: 127.0.0.1\n      port: 0\n" + adapter
        + "  - name: iii-state\n    config:\n" + adapter
        + "  - name: iii-pubsub\n    config:\n" + adapter
    )


async def start_engine(procs: Any, redis_url: str, tmp: Any) -> tuple[Any, str]:
    """An engine subprocess on ``redis_url``: itself and its stream WebSocket URL."""
    tmp.mkdir()
    engine = await procs.engine(config=engine_config(redis_url), tmp=tmp)
    line = await engine.proc.expect(lambda item: isinstance(item, str) and bool(_STREAM_LINE.search(item)), 15)
    return engine, _STREAM_LINE.search(line).group(1).replace("0.0.0.0", "127.0.0.1")


async def call(client: RawClient, function_id: str, data: Any) -> Any:
    frame = await client.call(function_id, data)
    assert "error" not in frame or frame["error"] is None, frame
    return frame.get("result")


def events(proc: Any, trigger_type: str, matches: Any = lambda event: True) -> list:
    return [line["event"] for line in proc.lines
            if isinstance(line, dict) and line.get("type") == trigger_type and matches(line.get("event"))]


async def subscribers(redis_url: str, topic: str, count: int) -> None:
    """Return once ``count`` engines subscribed ``topic`` (they do it in the background)."""
    from iii.modules._redis import connect

    redis = await connect(redis_url)
    try:
        for _ in range(500):
            if (await redis.pubsub_numsub(topic))[0][1] >= count:
                return
            await asyncio.sleep(0.01)
        raise AssertionError(f"{topic}: not {count} subscribers")
    finally:
        await redis.aclose()


@pytest.mark.parametrize("runtime", ["python", "node"])
async def test_writes_on_one_engine_reach_bindings_and_clients_on_the_other(
    procs, redis_server, tmp_path, official_python, node, runtime
):
    engine_a, _ = await start_engine(procs, redis_server.url, tmp_path / "a")
    engine_b, stream_b = await start_engine(procs, redis_server.url, tmp_path / "b")
    watcher_b = await Workers(procs, engine_b, official_python, node).start(
        runtime, f"b-{runtime}",
        "--watch", 'state={"scope": "orders"}', "--watch", 'stream={"stream_name": "chat"}',
        "--watch", 'subscribe={"topic": "news"}', "--stay",
    )
    other = "node" if runtime == "python" else "python"
    watcher_a = await Workers(procs, engine_a, official_python, node).start(
        other, f"a-{other}", "--watch", 'subscribe={"topic": "news"}', "--stay",
    )
    await watcher_b.key("ready")
    await watcher_a.key("ready")
    await subscribers(redis_server.url, "news", 2)

    client_b = await RawClient.connect(stream_b, path="")
    client_b.send_bytes(json.dumps({"type": "join", "data": {"subscriptionId": "s", "streamName": "chat", "groupId": "room"}}).encode())
    assert (await client_b.recv())["event"] == {"type": "sync", "data": []}

    writer = await RawClient.connect(engine_a.url)
    await call(writer, "state::set", {"scope": "orders", "key": "o-1", "value": {"total": 10}})
    await call(writer, "state::set", {"scope": "elsewhere", "key": "x", "value": 1})
    await call(writer, "state::update", {"scope": "orders", "key": "o-1", "ops": [{"type": "increment", "path": "total", "by": 5}]})
    await call(writer, "stream::set", {"stream_name": "chat", "group_id": "room", "item_id": "m-1", "data": {"text": "hi"}})
    await call(writer, "publish", {"topic": "news", "data": {"n": 1}})
    await call(writer, "state::set", {"scope": "orders", "key": "last", "value": True})

    pushed = await client_b.recv()
    assert (pushed["streamName"], pushed["id"], pushed["event"]) == ("chat", "m-1", {"type": "create", "data": {"text": "hi"}})
    await watcher_b.expect(lambda line: isinstance(line, dict) and (line.get("event") or {}).get("key") == "last")
    await watcher_b.expect(lambda line: isinstance(line, dict) and line.get("type") == "stream")
    await watcher_b.expect(lambda line: isinstance(line, dict) and line.get("type") == "subscribe")
    await watcher_a.expect(lambda line: isinstance(line, dict) and line.get("type") == "subscribe")
    # each write fired the binding on B once (events of one writer arrive in order: "last" is last)
    assert [(e["event_type"], e["key"], e["new_value"]) for e in events(watcher_b, "state")] == [
        ("state:created", "o-1", {"total": 10}), ("state:updated", "o-1", {"total": 15}), ("state:created", "last", True)]
    assert [e["event"]["type"] for e in events(watcher_b, "stream")] == ["create"]
    assert events(watcher_b, "subscribe") == [{"n": 1}]
    assert events(watcher_a, "subscribe") == [{"n": 1}]

    # Redis restarts: the engines reconnect, resubscribe and carry on (events published while it
    # was down are gone, as with any Redis pub/sub: write until one gets through, bounded)
    redis_server.restart()
    for attempt in range(100):
        await asyncio.sleep(0.05 * (attempt > 0))  # a paced retry loop, not a wait for an event
        frame = await writer.call("state::set", {"scope": "orders", "key": "after", "value": attempt})
        if frame.get("error"):
            continue
        try:
            await watcher_b.expect(lambda line: isinstance(line, dict) and (line.get("event") or {}).get("key") == "after", 0.5)
            break
        except AssertionError:
            continue
    else:
        raise AssertionError("no state event reached engine B after the restart")
    await subscribers(redis_server.url, "news", 2)
    await call(writer, "publish", {"topic": "news", "data": {"n": 2}})
    await call(writer, "stream::set", {"stream_name": "chat", "group_id": "room", "item_id": "m-2", "data": 2})
    assert (await client_b.recv())["id"] == "m-2"
    await watcher_b.expect(lambda line: isinstance(line, dict) and line.get("event") == {"n": 2})
    await watcher_a.expect(lambda line: isinstance(line, dict) and line.get("event") == {"n": 2})
    assert await call(writer, "state::get", {"scope": "orders", "key": "o-1"}) == {"total": 15}  # AOF kept it
    await client_b.close()
    await writer.close()


async def test_an_engine_whose_redis_is_unreachable_does_not_start(procs, tmp_path):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        url = f"redis://127.0.0.1:{probe.getsockname()[1]}/0"
    (tmp_path / "config.yaml").write_text(engine_config(url))
    engine = await procs.start(sys.executable, "-m", "iii", "-c", str(tmp_path / "config.yaml"), merge_stderr=True)
    assert await engine.wait() == 1
    line = await engine.expect(lambda line: "failed to create worker" in str(line), 5)
    assert re.search(f"failed to create worker 'iii-(stream|state|pubsub)': Failed to connect to Redis at {re.escape(url)}", line)
