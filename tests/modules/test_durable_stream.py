"""The iii-stream module's file_based store without sockets for the calls: answers and events once
committed, a failed commit answered with STORE_ERROR and undone, items kept across a restart."""

from __future__ import annotations

import asyncio
from typing import Any

import msgspec

from helpers import Peer, connected, make_router
from iii.app import install_modules
from iii.modules.stream import StreamConfig, Streams

ITEM = {"stream_name": "chat", "group_id": "room", "item_id": "m1"}


def file_based(path) -> StreamConfig:
    return msgspec.convert({
        "host": "127.0.0.1", "port": 0,
        "adapter": {"name": "kv", "config": {"store_method": "file_based", "file_path": str(path)}},
    }, StreamConfig)


async def started(path) -> tuple[Any, Streams]:
    router = make_router()
    streams = install_modules(router, {"iii-stream": file_based(path)})["iii-stream"]
    await streams.start()
    return router, streams


async def answers(peer: Peer, *invocation_ids: str) -> list[Any]:
    """The answers to calls that come after the store's commit (a loop turn or two later)."""
    seen: dict[str, Any] = {}
    for _ in range(20):
        for frame in peer.take():
            if frame.get("invocation_id") in invocation_ids:
                seen[frame["invocation_id"]] = frame.get("error") or frame.get("result")
        if len(seen) == len(invocation_ids):
            return [seen[invocation_id] for invocation_id in invocation_ids]
        await asyncio.sleep(0)
    raise AssertionError(f"no answer to {set(invocation_ids) - set(seen)}")


def watch(router, peer: Peer) -> None:
    peer.function("w::on")
    peer.send(type="registertrigger", id="w", trigger_type="stream", function_id="w::on", config={"stream_name": "chat"})
    router.flush_events()
    peer.take()


def events(router, peer: Peer) -> list:
    router.flush_events()
    return [f["data"]["event"] for f in peer.take() if f.get("function_id") == "w::on"]


async def test_writes_answer_and_fire_once_committed_and_survive_a_restart(codec, tmp_path):
    router, streams = await started(tmp_path / "stream.db")
    watcher = connected(router, "watcher")
    watch(router, watcher)
    writer = connected(router, "writer")
    writer.call("stream::set", {**ITEM, "data": {"text": "hi"}}, invocation_id="s")
    assert writer.take() == [] and events(router, watcher) == []  # nothing before the commit
    assert await answers(writer, "s") == [{"old_value": None, "new_value": {"text": "hi"}}]
    assert events(router, watcher) == [{"type": "create", "data": {"text": "hi"}}]
    writer.call("stream::update", {**ITEM, "ops": [{"type": "set", "path": "n", "value": 1}]}, invocation_id="u")
    assert (await answers(writer, "u"))[0]["new_value"] == {"text": "hi", "n": 1}
    writer.call("stream::set", {**ITEM, "item_id": "m2", "data": 2}, invocation_id="t")
    writer.call("stream::delete", {**ITEM, "item_id": "m2"}, invocation_id="d")
    assert (await answers(writer, "t", "d"))[1] == {"old_value": 2}
    assert [event["type"] for event in events(router, watcher)] == ["update", "create", "delete"]

    router, restarted = await started(tmp_path / "stream.db")  # the first was not stopped
    reader = connected(router, "reader")
    assert reader.result_of("stream::get", ITEM)["result"] == {"text": "hi", "n": 1}
    assert reader.result_of("stream::list", {"stream_name": "chat", "group_id": "room"})["result"] == [{"text": "hi", "n": 1}]
    await restarted.stop()
    await streams.stop()


async def test_a_failed_commit_is_an_error_without_events_and_memory_keeps_what_the_file_has(codec, tmp_path):
    router, streams = await started(tmp_path / "stream.db")
    watcher = connected(router, "watcher")
    watch(router, watcher)
    writer = connected(router, "writer")
    writer.call("stream::set", {**ITEM, "data": "kept"}, invocation_id="s")
    await answers(writer, "s")
    events(router, watcher)
    database = streams.store.journal._db
    database.execute(f"PRAGMA max_page_count = {database.execute('PRAGMA page_count').fetchone()[0]}")
    writer.call("stream::set", {**ITEM, "data": "x" * 100_000}, invocation_id="big")
    writer.call("stream::delete", ITEM, invocation_id="gone")
    assert [error["code"] for error in await answers(writer, "big", "gone")] == ["STORE_ERROR", "STORE_ERROR"]
    assert events(router, watcher) == []
    assert writer.result_of("stream::get", ITEM)["result"] == "kept"
    await streams.stop()
