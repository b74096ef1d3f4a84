"""The iii-state module without sockets: functions, update ops, the state trigger (both codecs)."""

from __future__ import annotations

import pytest

from helpers import Peer, connected, make_router
from iii.engine.router import Router
from iii.app import install_modules
from iii.modules.state import StateConfig


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


async def test_the_file_based_store_keeps_values_across_restarts(codec, tmp_path):
    path = tmp_path / "data" / "state.json"
    config = StateConfig(adapter={"name": "kv", "config": {"store_method": "file_based", "file_path": str(path)}})

    def started():
        router = make_router()
        state = install_modules(router, {"iii-state": config})["iii-state"]
        return router, state

    router, state = started()
    await state.start()
    peer = connected(router, "peer")
    result(peer, "state::set", {"scope": "s", "key": "a", "value": {"n": [1, "two"]}})
    result(peer, "state::set", {"scope": "s", "key": "b", "value": 2})
    result(peer, "state::delete", {"scope": "s", "key": "b"})
    await state.stop()  # what the save timer has not written yet goes now

    router, state = started()
    await state.start()
    peer = connected(router, "peer")
    assert result(peer, "state::get", {"scope": "s", "key": "a"}) == {"n": [1, "two"]}
    assert result(peer, "state::get", {"scope": "s", "key": "b"}) is None
    assert not path.with_name("state.json.tmp").exists()
    await state.stop()
