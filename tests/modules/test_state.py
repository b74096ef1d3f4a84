"""The iii-state module without sockets: functions, update ops, the state trigger, the file_based
store and its failures, the typed adapter config (both codecs)."""

from __future__ import annotations

import asyncio
import sqlite3
from typing import Any

import msgspec
import pytest

from helpers import Peer, connected, make_router
from iii.engine.router import Router
from iii.app import install_modules
from iii.modules.state import State, StateConfig


def state_router(**state_config) -> Router:
    return make_router({"iii-state": StateConfig(**state_config)})


@pytest.fixture
def router(codec) -> Router:
    return state_router()


def result(peer: Peer, function_id: str, data) -> dict:
    frame = peer.result_of(function_id, data)
    return frame.get("error") or frame.get("result")


def test_set_get_delete_list_and_groups(router):
    peer = connected(router, "peer")
    assert result(peer, "state::set", {"scope": "s", "key": "a", "value": {"n": 1}}) == {"old_value": None, "new_value": {"n": 1}}
    assert result(peer, "state::set", {"scope": "s", "key": "a", "data": [2]}) == {"old_value": {"n": 1}, "new_value": [2]}
    assert result(peer, "state::set", {"scope": "t", "key": "b", "value": None}) == {"old_value": None, "new_value": None}
    assert result(peer, "state::get", {"scope": "s", "key": "a"}) == [2]
    assert result(peer, "state::get", {"scope": "s", "key": "missing"}) is None
    assert sorted(map(repr, result(peer, "state::list", {"scope": "s"}))) == ["[2]"]
    result(peer, "state::set", {"scope": "s", "key": "0", "value": "zero"})
    assert result(peer, "state::list", {"scope": "s", "with_keys": True}) == [{"key": "0", "value": "zero"}, {"key": "a", "value": [2]}]
    result(peer, "state::delete", {"scope": "s", "key": "0"})
    assert result(peer, "state::list_groups", {}) == {"groups": ["s", "t"]}
    assert result(peer, "state::delete", {"scope": "s", "key": "a"}) == [2]
    assert result(peer, "state::delete", {"scope": "s", "key": "a"}) is None
    assert result(peer, "state::list_groups", {}) == {"groups": ["t"]}


@pytest.mark.parametrize(
    "function_id, data",
    [
        ("state::set", {"scope": "s", "key": "k"}),
        ("state::set", {"scope": 1, "key": "k", "value": 1}),
        ("state::get", {"scope": "s"}),
        ("state::update", {"scope": "s", "key": "k", "ops": "nope"}),
        ("state::list", {}),
    ],
)
def test_bad_input_is_a_deserialization_error(router, function_id, data):
    peer = connected(router, "peer")
    assert result(peer, function_id, data)["code"] == "deserialization_error"


def test_values_over_the_configured_size_are_refused(codec):
    peer = connected(state_router(max_value_bytes=10), "peer")
    error = result(peer, "state::set", {"scope": "s", "key": "k", "value": "x" * 20})
    assert error == {"code": "VALUE_TOO_LARGE", "message": "value of 22 bytes exceeds the configured max_value_bytes limit of 10"}
    assert result(peer, "state::get", {"scope": "s", "key": "k"}) is None


def update(peer: Peer, ops, key: str = "k") -> dict:
    return result(peer, "state::update", {"scope": "s", "key": key, "ops": ops})


def test_update_ops_apply_in_order_and_report_failures_without_stopping(router):
    peer = connected(router, "peer")
    outcome = update(peer, [
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
    ])
    assert outcome["old_value"] is None
    assert outcome["new_value"] == {
        "status": "active", "count": -3, "profile": {"address": {"city": "Lisbon"}},
        "events": [{"e": 1}, {"e": 2}], "log": "ab",
    }
    assert [(e["op_index"], e["code"]) for e in outcome["errors"]] == [
        (9, "increment.not_number"), (10, "merge.value.proto_polluted"), (11, "append.type_mismatch"),
        (13, "op.unknown_type"),
    ]


def test_update_on_the_root(router):
    peer = connected(router, "peer")
    assert update(peer, [{"type": "set", "path": "", "value": 5}, {"type": "increment", "path": "", "by": 2}])["new_value"] == 7
    assert update(peer, [{"type": "set", "path": "x", "value": 1}])["errors"][0]["code"] == "set.target_not_object"
    assert update(peer, [{"type": "remove", "path": ""}]) == {"old_value": 7, "new_value": None}
    assert "errors" not in update(peer, [{"type": "merge", "value": {"a": 1}}], key="fresh")


@pytest.mark.parametrize(
    "op, code",
    [
        ({"type": "merge", "path": ["a"] * 33, "value": {}}, "merge.path.too_deep"),
        ({"type": "merge", "path": ["a", ""], "value": {}}, "merge.path.empty_segment"),
        ({"type": "merge", "path": "x" * 257, "value": {}}, "merge.path.segment_too_long"),
        ({"type": "merge", "path": ["constructor"], "value": {}}, "merge.path.proto_polluted"),
        ({"type": "merge", "value": 3}, "merge.value.not_an_object"),
        ({"type": "merge", "value": {"a": {"a": {"a": {"a": {"a": {"a": {"a": {"a": {"a": {"a": {"a": {"a": {"a": {"a": {"a": {"a": {"a": 1}}}}}}}}}}}}}}}}}}, "merge.value.too_deep"),
        ({"type": "merge", "value": {str(i): i for i in range(1025)}}, "merge.value.too_many_keys"),
        ({"type": "increment", "path": "n", "by": 1.5}, "increment.by.not_integer"),
    ],
)
def test_merge_guards(router, op, code):
    peer = connected(router, "peer")
    assert [error["code"] for error in update(peer, [op])["errors"]] == [code]


def watch(router: Router, peer: Peer, binding_id: str, **config) -> None:
    function_id = f"{peer.conn.name}::on-{binding_id}"
    peer.function(function_id)
    peer.send(type="registertrigger", id=binding_id, trigger_type="state", function_id=function_id, config=config)
    router.flush_events()
    peer.take()


def events(router: Router, peer: Peer) -> list:
    router.flush_events()  # the fan-out runs after the write (deferred)
    return [(f["function_id"].rsplit("-", 1)[1], f["data"]) for f in peer.take() if f["type"] == "invokefunction"]


def test_the_state_trigger_fires_after_matching_writes(router):
    watcher = connected(router, "watcher")
    watch(router, watcher, "all")
    watch(router, watcher, "orders", scope="orders")
    watch(router, watcher, "o1", scope="orders", key="o-1")
    writer = connected(router, "writer")
    result(writer, "state::set", {"scope": "orders", "key": "o-1", "value": 1})
    created = {"type": "state", "event_type": "state:created", "scope": "orders", "key": "o-1", "old_value": None, "new_value": 1}
    assert events(router, watcher) == [("all", created), ("orders", created), ("o1", created)]
    result(writer, "state::update", {"scope": "orders", "key": "o-2", "ops": [{"type": "set", "path": "a", "value": 1}]})
    assert [name for name, _ in events(router, watcher)] == ["all", "orders"]
    result(writer, "state::delete", {"scope": "other", "key": "nothing"})
    deleted = {"type": "state", "event_type": "state:deleted", "scope": "other", "key": "nothing", "old_value": None, "new_value": None}
    assert events(router, watcher) == [("all", deleted)]
    result(writer, "state::set", {"scope": "orders", "key": "o-1", "value": 2})
    assert {event["event_type"] for _, event in events(router, watcher)} == {"state:updated"}


def test_a_condition_function_gates_the_handler(router):
    watcher = connected(router, "watcher", "w::gate")
    watch(router, watcher, "gated", condition_function_id="w::gate")
    writer = connected(router, "writer")
    for answer, called in (({"result": False}, False), ({"result": True}, True), ({}, True), ({"error": {"code": "x", "message": "y"}}, False)):
        result(writer, "state::set", {"scope": "s", "key": "k", "value": 1})
        router.flush_events()
        (gate,) = watcher.take()
        assert gate["function_id"] == "w::gate" and gate["data"]["event_type"] in ("state:created", "state:updated")
        watcher.send(type="invocationresult", invocation_id=gate["invocation_id"], function_id="w::gate", **answer)
        handled = watcher.take()
        assert [f["function_id"] for f in handled] == (["watcher::on-gated"] if called else [])


def test_triggers_can_be_disabled(codec):
    router = state_router(triggers_enabled=False)
    watcher = connected(router, "watcher")
    watch(router, watcher, "all")
    result(watcher, "state::set", {"scope": "s", "key": "k", "value": 1})
    assert events(router, watcher) == []


def file_based(path) -> StateConfig:
    return msgspec.convert(
        {"adapter": {"name": "kv", "config": {"store_method": "file_based", "file_path": str(path)}}}, StateConfig
    )


async def started(config: StateConfig) -> tuple[Router, State]:
    router = make_router()
    state = install_modules(router, {"iii-state": config})["iii-state"]
    await state.start()
    return router, state


async def answer_to(peer: Peer, invocation_id: str) -> Any:
    """The answer to a call that may come after the store's commit (a loop turn or two later)."""
    for _ in range(20):
        frames = [f for f in peer.take() if f.get("invocation_id") == invocation_id]
        if frames:
            return frames[0].get("error") or frames[0].get("result")
        await asyncio.sleep(0)
    raise AssertionError(f"no answer to {invocation_id}")


async def answered(peer: Peer, function_id: str, data) -> Any:
    peer.call(function_id, data, invocation_id="q")
    return await answer_to(peer, "q")


async def test_the_file_based_store_keeps_values_across_restarts(codec, tmp_path):
    path = tmp_path / "data" / "state.db"
    router, state = await started(file_based(path))
    peer = connected(router, "peer")
    peer.call("state::set", {"scope": "s", "key": "a", "value": {"n": [1, "two"]}}, invocation_id="first")
    assert peer.take() == []  # answered once committed, not before
    assert await answer_to(peer, "first") == {"old_value": None, "new_value": {"n": [1, "two"]}}
    assert await answered(peer, "state::set", {"scope": "s", "key": "b", "value": 2}) == {"old_value": None, "new_value": 2}
    assert await answered(peer, "state::update", {"scope": "s", "key": "c", "ops": [{"type": "increment", "path": "n", "by": 2}]}) == {
        "old_value": None, "new_value": {"n": 2},
    }
    assert await answered(peer, "state::delete", {"scope": "s", "key": "b"}) == 2
    assert result(peer, "state::get", {"scope": "s", "key": "c"}) == {"n": 2}  # reads answer at once
    # Not stopped: what was answered is in the file already (test_durable.py kills a real engine).

    router, restarted = await started(file_based(path))
    peer = connected(router, "peer")
    assert result(peer, "state::get", {"scope": "s", "key": "a"}) == {"n": [1, "two"]}
    assert result(peer, "state::get", {"scope": "s", "key": "b"}) is None
    assert result(peer, "state::list_groups", {}) == {"groups": ["s"]}
    await restarted.stop()
    await state.stop()


async def test_a_failed_commit_is_an_error_and_memory_keeps_what_the_file_has(codec, tmp_path):
    router, state = await started(file_based(tmp_path / "state.db"))
    watcher = connected(router, "watcher")
    watch(router, watcher, "all")
    peer = connected(router, "peer")
    assert await answered(peer, "state::set", {"scope": "s", "key": "a", "value": "kept"}) == {"old_value": None, "new_value": "kept"}
    assert len(events(router, watcher)) == 1
    # The file is full: a real SQLITE_FULL from the next write that needs a page.
    database = state.store.journal._db
    pages = database.execute("PRAGMA page_count").fetchone()[0]
    database.execute(f"PRAGMA max_page_count = {pages}")
    big = "x" * 100_000
    peer.call("state::set", {"scope": "s", "key": "a", "value": big}, invocation_id="w1")
    peer.call("state::set", {"scope": "t", "key": "new", "value": big}, invocation_id="w2")
    peer.call("state::delete", {"scope": "s", "key": "a"}, invocation_id="w3")
    assert result(peer, "state::get", {"scope": "t", "key": "new"}) == big  # in memory until the commit
    for _ in range(5):
        await asyncio.sleep(0)
    errors = {f["invocation_id"]: f["error"]["code"] for f in peer.take() if "error" in f}
    assert errors == {"w1": "STORE_ERROR", "w2": "STORE_ERROR", "w3": "STORE_ERROR"}
    assert events(router, watcher) == []  # no event for a write that was not kept
    assert result(peer, "state::get", {"scope": "s", "key": "a"}) == "kept"
    assert result(peer, "state::get", {"scope": "t", "key": "new"}) is None
    assert result(peer, "state::list_groups", {}) == {"groups": ["s"]}
    database.execute("PRAGMA max_page_count = 1073741823")  # room again: writes go on
    assert await answered(peer, "state::set", {"scope": "s", "key": "a", "value": "next"}) == {"old_value": "kept", "new_value": "next"}
    await state.stop()


async def test_a_file_that_is_not_a_database_is_refused_at_start(tmp_path):
    path = tmp_path / "state_store"
    path.write_text('{"s": {"a": 1}}')  # e.g. the JSON snapshot of an earlier version
    state = install_modules(make_router(), {"iii-state": file_based(path)})["iii-state"]
    with pytest.raises(sqlite3.DatabaseError, match="file_path must name a SQLite database"):
        await state.start()


@pytest.mark.parametrize(
    "adapter, message",
    [
        ({"name": "kv", "config": {"save_interval_ms": "soon"}}, "Expected `int | null`, got `str` - at `$.adapter.config.save_interval_ms`"),
        ({"name": "kv", "config": {"save_interval_ms": -1}}, "at `$.adapter.config.save_interval_ms`"),
        ({"name": "kv", "config": {"store_method": "disk"}}, "at `$.adapter.config.store_method`"),
        ({"name": "kv", "config": {"file": "x"}}, "unknown field `file` - at `$.adapter.config`"),
        ({"name": "bridge", "config": {"url": "ws://x"}}, "unknown field `url` - at `$.adapter.config`"),
        ({"name": "redis", "config": {"url": "redis://x"}}, "unknown field `url` - at `$.adapter.config`"),
        ({"name": "memory"}, "Invalid value 'memory' - at `$.adapter.name`"),
    ],
)
def test_the_adapter_config_is_typed(adapter, message):
    with pytest.raises(msgspec.ValidationError) as refused:
        msgspec.convert({"adapter": adapter}, StateConfig)
    assert message in str(refused.value)


def test_the_original_adapter_keys_are_accepted():
    config = msgspec.convert(
        {"adapter": {"name": "kv", "config": {"store_method": "file_based", "file_path": "/x/s.db", "save_interval_ms": 100}},
         "save_interval_ms": 5000},
        StateConfig,
    )
    assert config.adapter.config.file_path == "/x/s.db"
    assert msgspec.convert({"adapter": {"name": "kv", "config": None}}, StateConfig).adapter.config is None
