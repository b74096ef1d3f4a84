"""The routing core without sockets: frames in, frames out (run against both codec twins)."""

from __future__ import annotations

import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from helpers import Peer, connected, make_router
from iii.engine.registry import EngineError
from iii.engine.router import Router


@pytest.fixture
def router(codec) -> Router:
    return make_router()


# --------------------------------------------------------------------------- invocations


def test_call_is_routed_with_caller_id_and_result_forwarded_verbatim(router):
    owner = connected(router, "owner", "math::add")
    caller = connected(router, "caller")
    caller.call("math::add", {"a": 2, "b": 3}, metadata={"tenant": "acme"}, traceparent="00-abc")
    (invoke,) = owner.take()
    assert invoke == {
        "type": "invokefunction",
        "function_id": "math::add",
        "invocation_id": "inv-1",
        "data": {"a": 2, "b": 3, "_caller_worker_id": caller.id},
        "metadata": {"tenant": "acme"},
        "traceparent": "00-abc",
    }
    assert owner.conn.status == "busy"
    result = b'{"invocation_id":"inv-1","function_id":"math::add","result":{"c":5},"type":"invocationresult"}'
    owner.send_raw(result)
    assert caller.outbox == [result]
    assert router.pending == {} and owner.conn.status == "available"
    assert caller.conn.invocations == set() and owner.conn.invocations == set()


@pytest.mark.parametrize(
    "data, forwarded",
    [
        (None, None),
        ([1, 2], [1, 2]),
        ("text", "text"),
        ({}, {"_caller_worker_id": "CALLER"}),
        ({"_caller_worker_id": "spoofed", "x": 1}, {"_caller_worker_id": "CALLER", "x": 1}),
    ],
)
def test_caller_id_is_added_to_objects_only_and_cannot_be_spoofed(router, data, forwarded):
    owner = connected(router, "owner", "f::x")
    caller = connected(router, "caller")
    caller.call("f::x", data)
    (invoke,) = owner.take()
    expected = json.loads(json.dumps(forwarded).replace("CALLER", caller.id))
    assert invoke["data"] == expected


def test_missing_data_reads_as_null(router):
    owner = connected(router, "owner", "f::x")
    caller = connected(router, "caller")
    caller.send(type="invokefunction", invocation_id="i", function_id="f::x")
    assert owner.take()[0]["data"] is None


def test_void_call_gets_no_reply_and_the_owners_answer_is_dropped(router):
    owner = connected(router, "owner", "f::x")
    caller = connected(router, "caller")
    caller.send(type="invokefunction", function_id="f::x", data={}, action={"type": "void"})
    (invoke,) = owner.take()
    assert invoke["invocation_id"]  # the owner still gets an id
    owner.send(type="invocationresult", invocation_id=invoke["invocation_id"], function_id="f::x", result=1)
    assert caller.take() == [] and router.pending == {}


def test_unknown_function_names_the_namespaces_where_it_exists(router):
    owner = Peer(router)
    owner.register("owner", namespace="billing")
    owner.function("pay::charge")
    caller = connected(router, "caller")
    frame = caller.result_of("pay::charge", {})
    assert frame["error"] == {
        "code": "function_not_found",
        "message": "Function pay::charge not found in namespace default. "
        "It is registered in namespace(s): billing.",
    }
    caller.call("pay::charge", {}, invocation_id="ok", namespace="billing")
    assert owner.take()[0]["invocation_id"] == "ok"


@pytest.mark.parametrize("namespace", [None, "  "])
def test_null_or_blank_namespace_is_refused(router, namespace):
    caller = connected(router, "caller")
    frame = caller.result_of("engine::workers::list", {}, namespace=namespace)
    assert frame["error"]["code"] == "INVALID_NAMESPACE"


def test_owner_disconnect_stops_in_flight_calls(router):
    owner = connected(router, "owner", "slow::x")
    caller = connected(router, "caller")
    caller.call("slow::x", {}, invocation_id="a")
    caller.call("slow::x", {}, invocation_id="b")
    router.disconnect(owner.conn)
    frames = caller.take()
    assert sorted(f["invocation_id"] for f in frames) == ["a", "b"]
    assert all(f["error"] == {"code": "invocation_stopped", "message": "Invocation stopped"} for f in frames)
    assert router.pending == {} and caller.conn.invocations == set()
    assert caller.result_of("slow::x", {})["error"]["code"] == "function_not_found"


def test_caller_disconnect_forgets_its_calls_and_late_results_are_ignored(router):
    owner = connected(router, "owner", "slow::x")
    caller = connected(router, "caller")
    caller.call("slow::x", {}, invocation_id="a")
    assert owner.take()[0]["invocation_id"] == "a"
    router.disconnect(caller.conn)
    assert router.pending == {} and owner.conn.inbound_active == 0
    owner.send(type="invocationresult", invocation_id="a", function_id="slow::x", result=1)
    owner.send(type="invocationresult", invocation_id="never-seen", function_id="slow::x")
    assert caller.take() == [] and owner.take() == []


def test_a_worker_that_leaves_while_calling_itself_is_cleaned_up(router):
    """Its own call is both to it and by it: cleanup must not trip over that (it once raised
    "set changed size during iteration" and left its triggers and types behind)."""
    watcher = connected(router, "watcher", "w::on")
    watcher.send(type="registertrigger", id="w", trigger_type="engine::workers-available", function_id="w::on")
    loner = connected(router, "loner", "loner::echo")
    loner.send(type="registertriggertype", id="loner-type", description="d")
    loner.send(type="registertrigger", id="t", trigger_type="loner-type", function_id="loner::echo")
    loner.call("loner::echo", {}, invocation_id="self")
    loner.call("loner::echo", {}, invocation_id="self-2")
    watcher.take()
    router.disconnect(loner.conn)
    assert "self" not in router.pending and "self-2" not in router.pending
    assert router.bindings.keys() == {"w"} and router.parked == {}
    assert ("default", "loner-type") not in router.trigger_types
    assert [f["data"]["event"] for f in watcher.take()] == ["worker_disconnected"]


def test_engine_calls_ask_for_a_batch_unless_told_they_come_alone():
    batches = []
    router = make_router(batch=lambda: batches.append(1))
    owner = connected(router, "owner", "job::run")
    router.invoke("default", "job::run", b"{}", timeout_ms=1000)
    assert len(batches) == 1
    router.invoke("default", "job::run", b"{}", timeout_ms=1000, batched=False)
    assert len(batches) == 1 and len(owner.take()) == 2


def test_engine_calls_time_out_and_free_the_worker(codec):
    now = [1_000_000]
    wakes = []
    router = make_router(clock=lambda: now[0], wake=wakes.append)
    owner = connected(router, "owner", "slow::x")
    answers = []
    router.invoke("default", "slow::x", b"{}", on_result=lambda result, error: answers.append(error), timeout_ms=500)
    router.invoke("default", "slow::x", b"{}", on_result=lambda result, error: answers.append(error), timeout_ms=900)
    assert wakes == [now[0] + 500]  # the later deadline does not move the timer
    first, second = owner.take()
    assert owner.conn.status == "busy"
    now[0] += 499
    assert router.expire_calls() == now[0] + 1 and answers == []
    now[0] += 1
    assert router.expire_calls() == now[0] + 400
    assert [(e.code, e.message) for e in answers] == [("TIMEOUT", "Invocation of slow::x timed out")]
    owner.send(type="invocationresult", invocation_id=first["invocation_id"], function_id="slow::x", result=1)
    owner.send(type="invocationresult", invocation_id=second["invocation_id"], function_id="slow::x", result=2)
    assert len(answers) == 2 and answers[1] is None  # the late answer was dropped, the other one counts
    now[0] += 1000
    assert router.expire_calls() is None and len(answers) == 2
    assert router.pending == {} and owner.conn.status == "available" and owner.conn.inbound_active == 0


def test_a_builtin_may_answer_later_with_a_future(codec):
    import asyncio

    loop = asyncio.new_event_loop()
    try:
        router = make_router()
        pending: list[asyncio.Future] = []

        def later(host, caller, data):
            pending.append(loop.create_future())
            return pending[-1]

        router.add_function("later::fn", later, module="test")
        caller = connected(router, "caller")
        caller.call("later::fn", {}, invocation_id="a")
        caller.call("later::fn", {}, invocation_id="b")
        assert caller.take() == []
        pending[0].set_result({"ok": True})
        pending[1].set_exception(EngineError("NOPE", "refused"))
        loop.run_until_complete(asyncio.sleep(0))
        answers = {f["invocation_id"]: f.get("result", f.get("error")) for f in caller.take()}
        assert answers == {"a": {"ok": True}, "b": {"code": "NOPE", "message": "refused"}}
    finally:
        loop.close()


def test_engine_trigger_types_cannot_be_taken_over_by_a_worker(router):
    router.add_trigger_type("http", object(), module="test", description="the engine's own")
    thief = connected(router, "thief")
    for type_id in ("http", "engine::workers-available"):
        thief.send(type="registertriggertype", id=type_id, description="mine now")
        assert thief.take() == [
            {"type": "registrationrejected", "code": "TRIGGER_TYPE_RESERVED", "namespace": "default", "owner_worker_id": ""}
        ]
    assert router.trigger_types[("default", "http")].owner is None
    thief.send(type="registertriggertype", id="webhook", description="a new type is fine")
    assert thief.take() == [] and ("default", "webhook") in router.trigger_types


def test_an_answer_that_cannot_be_relayed_fails_the_call_at_once(router):
    owner = connected(router, "owner", "f::x")
    caller = connected(router, "caller")
    caller.call("f::x", {}, invocation_id="a")
    owner.take()
    owner.send_raw(b'{"type":"invocationresult","invocation_id":"a","function_id":"f::x","result":"\xff"}')
    (failed,) = caller.take()
    assert failed["invocation_id"] == "a" and failed["error"]["code"] == "deserialization_error"
    assert "invalid UTF-8" in failed["error"]["message"] and "f::x" in failed["error"]["message"]
    assert router.pending == {} and owner.conn.status == "available"


def test_only_the_target_can_answer_an_invocation(router):
    connected(router, "owner", "f::x")
    caller = connected(router, "caller")
    intruder = connected(router, "intruder")
    caller.call("f::x", {}, invocation_id="a")
    intruder.send(type="invocationresult", invocation_id="a", function_id="f::x", result="forged")
    assert caller.take() == [] and "a" in router.pending


def test_duplicate_invocation_id_in_flight_is_refused(router):
    connected(router, "owner", "f::x")
    first = connected(router, "first")
    second = connected(router, "second")
    first.call("f::x", {}, invocation_id="same")
    second.call("f::x", {}, invocation_id="same")
    (frame,) = second.take()
    assert frame["error"]["code"] == "duplicate_invocation_id"
    assert router.pending["same"].caller is first.conn


def test_error_bodies_are_normalised_for_the_sdks(router):
    owner = connected(router, "owner", "f::x")
    caller = connected(router, "caller")
    caller.call("f::x", {}, invocation_id="a")
    owner.send(
        type="invocationresult", invocation_id="a", function_id="f::x",
        error={"code": "invocation_failed", "message": "boom", "stacktrace": None},
    )
    caller.call("f::x", {}, invocation_id="b")
    owner.send(type="invocationresult", invocation_id="b", function_id="f::x", error="weird")
    first, second = caller.take()
    assert first["error"] == {"code": "invocation_failed", "message": "boom"}
    assert second["error"] == {"code": "UNKNOWN", "message": '"weird"'}
    assert owner.conn.invocations_failed == 2


def test_enqueue_without_a_queue_provider_is_a_clear_error(router):
    caller = connected(router, "caller")
    frame = caller.result_of("f::x", {}, action={"type": "enqueue", "queue": "jobs"})
    assert frame["error"]["code"] == "enqueue_error"
    assert "no queue provider" in frame["error"]["message"]


# --------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    "raw",
    [
        b"not json",
        b"\xff\xfe\x00",
        b"[1,2,3]",
        b"",
        b"   ",
        b'{"type":"nosuchtype"}',
        b'{"type":"registerfunction"}',
        b'{"type":"registerfunction","id":42}',
        b'{"type":"invocationresult","invocation_id":7}',
        b'{"no_type":true}',
        b'{"type":"invokefunction","function_id":"x","action":{"type":"teleport"}}',
        b'{"type":"invokefunction","function_id":"x","invocation_id":"i","data":' + b"[" * 5000 + b"]" * 5000 + b"}",
    ],
)
def test_bad_frames_are_dropped_and_the_connection_lives_on(router, raw):
    peer = connected(router, "peer")
    peer.send_raw(raw)
    assert peer.take() == [] and not peer.closed
    assert peer.conn.frames_dropped == 1
    assert peer.result_of("engine::workers::list", {})["result"]["workers"]


def test_a_call_with_an_id_and_a_bad_field_gets_an_error_not_a_timeout(router):
    peer = connected(router, "peer")
    peer.send(type="invokefunction", invocation_id="x", function_id=123, data={})
    (frame,) = peer.take()
    assert frame["invocation_id"] == "x"
    assert frame["error"]["code"] == "deserialization_error"
    assert "function_id" in frame["error"]["message"]


def test_unknown_extra_fields_are_ignored(router):
    provider = connected(router, "provider")
    provider.send(type="registertriggertype", id="hook", description="d")
    binder = connected(router, "binder")
    binder.send(type="registertrigger", id="t1", trigger_type="hook", function_id="f::x", message_type="registertrigger")
    assert provider.take()[0]["id"] == "t1"


def test_builtin_input_of_the_wrong_type_is_a_deserialization_error(router):
    peer = connected(router, "peer")
    frame = peer.result_of("engine::functions::list", {"include_internal": "yes"})
    assert frame["error"]["code"] == "deserialization_error"
    assert frame["error"]["message"].startswith("Failed to deserialize input for engine::functions::list")


# --------------------------------------------------------------------------- registration


def test_registrations_are_held_until_the_namespace_is_known(router):
    peer = Peer(router)
    peer.function("orders::create")
    assert router.find_function("default", "orders::create") is None
    peer.register("orders", namespace="shop")
    assert router.find_function("shop", "orders::create").owner is peer.conn
    assert router.find_function("default", "orders::create") is None


def test_grace_expiry_applies_held_registrations_in_default(router):
    peer = Peer(router)
    peer.function("orders::create")
    router.expire_grace(peer.conn)
    assert router.find_function("default", "orders::create").owner is peer.conn
    peer.register("late", namespace="shop")  # the fixed namespace wins
    assert peer.conn.namespace == "default" and peer.conn.name == "late"


def test_second_worker_with_the_same_name_is_rejected_and_closed(router):
    first = connected(router, "billing", "bill::a")
    second = Peer(router)
    second.function("bill::b")
    second.register("billing")
    assert second.take() == [
        {
            "type": "registrationrejected",
            "code": "WORKER_NAMESPACE_CONFLICT",
            "namespace": "default",
            "owner_worker_id": first.id,
            "worker_name": "billing",
        }
    ]
    assert second.closed and second.id not in router.connections
    assert router.find_function("default", "bill::b") is None
    assert router.names[("default", "billing")] is first.conn
    router.disconnect(first.conn)
    third = connected(router, "billing")  # a departed holder frees the name
    assert router.names[("default", "billing")] is third.conn


def test_function_owned_by_another_live_worker_is_refused(router):
    owner = connected(router, "owner", "f::x")
    other = connected(router, "other")
    other.function("f::x")
    assert other.take() == [
        {
            "type": "registrationrejected",
            "code": "FUNCTION_NAMESPACE_CONFLICT",
            "namespace": "default",
            "owner_worker_id": owner.id,
            "function_id": "f::x",
        }
    ]
    other.function("engine::workers::list")
    assert other.take()[0]["owner_worker_id"] == ""
    assert router.find_function("default", "engine::workers::list").owner is None


def test_unregister_function_only_by_its_owner(router):
    owner = connected(router, "owner", "f::x")
    other = connected(router, "other")
    other.send(type="unregisterfunction", id="f::x")
    assert router.find_function("default", "f::x").owner is owner.conn
    owner.send(type="unregisterfunction", id="f::x")
    assert router.find_function("default", "f::x") is None


def test_reattach_retires_the_previous_connection(router):
    old = connected(router, "svc", "svc::a")
    new = Peer(router)
    new.send(type="reattach", previous_worker_id=old.id, reattach_token="wrong")
    assert old.id in router.connections
    new.send(type="reattach", previous_worker_id=old.id, reattach_token=old.conn.token)
    assert old.closed and old.id not in router.connections
    assert router.find_function("default", "svc::a") is None
    new.register("svc")  # the name is free again
    assert router.names[("default", "svc")] is new.conn


def test_ping_gets_pong(router):
    peer = connected(router, "peer")
    peer.send(type="ping")
    assert peer.take() == [{"type": "pong"}]


# --------------------------------------------------------------------------- triggers


def test_binding_waits_for_its_provider_and_follows_it_across_reconnects(router):
    binder = connected(router, "binder", "job::run")
    binder.send(type="registertrigger", id="t1", trigger_type="webhook", function_id="job::run", config={"path": "/x"}, metadata={"m": 1})
    assert "t1" in router.parked and binder.take() == []

    provider = connected(router, "provider")
    provider.send(type="registertriggertype", id="webhook", description="hooks")
    delivered = {
        "type": "registertrigger", "id": "t1", "trigger_type": "webhook",
        "function_id": "job::run", "config": {"path": "/x"}, "metadata": {"m": 1},
    }
    assert provider.take() == [delivered]
    assert "t1" in router.bindings

    router.disconnect(provider.conn)
    assert "t1" in router.parked and "t1" not in router.bindings
    again = connected(router, "provider")
    again.send(type="registertriggertype", id="webhook", description="hooks")
    assert again.take() == [delivered]  # exactly once, same id

    router.disconnect(binder.conn)
    assert again.take() == [{"type": "unregistertrigger", "id": "t1", "trigger_type": "webhook"}]
    assert router.bindings == {} and router.parked == {}


def test_provider_refusal_parks_the_binding_and_tells_the_binder(router):
    provider = connected(router, "provider")
    provider.send(type="registertriggertype", id="hook", description="d")
    binder = connected(router, "binder")
    binder.send(type="registertrigger", id="t1", trigger_type="hook", function_id="f::x")
    assert provider.take()[0]["config"] is None
    error = {"code": "trigger_registration_failed", "message": "bad config"}
    binder.send(type="triggerregistrationresult", id="t1", trigger_type="hook", function_id="f::x", error=error)
    assert "t1" in router.bindings  # only the provider's verdict counts
    provider.send(type="triggerregistrationresult", id="t1", trigger_type="hook", function_id="f::x", error=error)
    assert "t1" in router.parked
    assert binder.take() == [
        {"type": "triggerregistrationresult", "id": "t1", "trigger_type": "hook", "function_id": "f::x", "error": error}
    ]


def test_unregister_trigger_type_hands_bindings_back_to_the_parking(router):
    provider = connected(router, "provider")
    provider.send(type="registertriggertype", id="hook", description="d")
    binder = connected(router, "binder")
    binder.send(type="registertrigger", id="t1", trigger_type="hook", function_id="f::x")
    provider.send(type="unregistertriggertype", id="hook")
    assert ("default", "hook") not in router.trigger_types and "t1" in router.parked


def test_blank_binding_namespace_is_refused(router):
    binder = connected(router, "binder")
    binder.send(type="registertrigger", id="t1", trigger_type="hook", function_id="f::x", trigger_namespace=" ")
    (frame,) = binder.take()
    assert frame["error"]["code"] == "INVALID_NAMESPACE" and "trigger_namespace" in frame["error"]["message"]


def test_workers_available_fires_on_connect_and_disconnect(router):
    watcher = connected(router, "watcher", "watch::workers")
    watcher.send(type="registertrigger", id="w", trigger_type="engine::workers-available", function_id="watch::workers", config={}, metadata={"k": "v"})
    other = Peer(router)
    (event,) = watcher.take()
    assert event["function_id"] == "watch::workers"
    assert event["data"] == {"event": "worker_connected", "worker_id": other.id}
    assert event["metadata"] == {"k": "v"}
    other.register("other")
    assert watcher.take()[0]["data"]["event"] == "worker_metadata_updated"
    router.disconnect(other.conn)
    assert [f["data"] for f in watcher.take()] == [{"event": "worker_disconnected", "worker_id": other.id}]


def test_functions_available_fires_once_per_batch_with_the_snapshot(router):
    watcher = connected(router, "watcher", "watch::fns")
    watcher.send(type="registertrigger", id="f", trigger_type="engine::functions-available", function_id="watch::fns", config={})
    worker = connected(router, "worker")
    watcher.take()
    worker.function("a::one")
    worker.function("a::two")
    router.flush_events()
    (event,) = watcher.take()
    ids = {f["function_id"] for f in event["data"]["functions"]}
    assert event["data"]["event"] == "functions_changed"
    assert {"a::one", "a::two", "watch::fns", "engine::workers::list"} <= ids
    worker.function("a::three")
    worker.send(type="unregisterfunction", id="a::three")
    router.flush_events()
    assert watcher.take() == []  # added and removed within one batch: nothing changed


# --------------------------------------------------------------------------- discovery


def test_workers_list_rows_and_lifecycle_states(router):
    owner = connected(router, "owner", "f::x")
    fresh = Peer(router)
    caller = connected(router, "caller")
    rows = {r["id"]: r for r in caller.result_of("engine::workers::list", {})["result"]["workers"]}
    assert fresh.id not in rows  # it never called engine::workers::register: no worker to list
    assert rows[owner.id]["status"] == "available"
    assert rows["iii-engine-functions"]["runtime"] == "engine"
    assert set(rows[owner.id]) >= {
        "id", "name", "namespace", "runtime", "version", "os", "pid", "status",
        "connected_at_ms", "function_count", "active_invocations", "metrics",
    }
    caller.call("f::x", {}, invocation_id="busy")
    busy = caller.result_of("engine::workers::list", {"worker_id": owner.id})["result"]["workers"]
    assert [(w["id"], w["status"], w["active_invocations"]) for w in busy] == [(owner.id, "busy", 1)]
    only_busy = caller.result_of("engine::workers::list", {"status": "busy"})["result"]["workers"]
    assert [w["id"] for w in only_busy] == [owner.id]


def test_functions_list_hides_internal_unless_asked(router):
    peer = connected(router, "peer", "pub::a")
    peer.function("priv::b", metadata={"internal": True}, description="hidden")
    ids = [f["function_id"] for f in peer.result_of("engine::functions::list", {})["result"]["functions"]]
    assert ids == ["pub::a"]
    everything = peer.result_of("engine::functions::list", {"include_internal": True})["result"]["functions"]
    assert {"pub::a", "priv::b", "engine::functions::list"} <= {f["function_id"] for f in everything}
    found = peer.result_of("engine::functions::list", {"search": "hid", "include_internal": True})["result"]
    assert [f["function_id"] for f in found["functions"]] == ["priv::b"]


def test_triggers_and_trigger_types_lists(router):
    peer = connected(router, "peer", "x::on")
    peer.send(type="registertriggertype", id="hook", description="Hooks", trigger_request_format={"type": "object"})
    peer.send(type="registertrigger", id="t1", trigger_type="hook", function_id="x::on", config={"a": 1})
    triggers = peer.result_of("engine::triggers::list", {})["result"]["triggers"]
    assert [(t["id"], t["trigger_type"], t["config"], t["worker_name"]) for t in triggers] == [("t1", "hook", {"a": 1}, "peer")]
    assert peer.result_of("engine::registered-triggers::list", {})["result"]["registered_triggers"] == triggers
    types = peer.result_of("engine::trigger-types::list", {})["result"]["trigger_types"]
    assert [(t["id"], t["configuration_schema"], t["instance_count"]) for t in types] == [("hook", {"type": "object"}, 1)]
    internal = peer.result_of("engine::trigger-types::list", {"include_internal": True})["result"]["trigger_types"]
    assert {"engine::workers-available", "engine::functions-available"} <= {t["id"] for t in internal}


def test_info_functions(router):
    peer = connected(router, "peer", "x::on")
    peer.send(type="registerfunction", id="x::doc", description="Doc", request_format={"type": "object"})
    peer.send(type="registertriggertype", id="hook", description="Hooks")
    peer.send(type="registertrigger", id="t1", trigger_type="hook", function_id="x::on", config=None)
    info = peer.result_of("engine::workers::info", {"name": "peer"})["result"]
    assert [f["function_id"] for f in info["functions"]] == ["x::doc", "x::on"]
    assert [t["id"] for t in info["trigger_types"]] == ["hook"]
    assert [t["id"] for t in info["registered_triggers"]] == ["t1"]
    missing = peer.result_of("engine::workers::info", {"name": "ghost"})["error"]
    assert missing == {"code": "NOT_FOUND", "message": "Worker 'ghost' is not connected."}
    doc = peer.result_of("engine::functions::info", {"function_id": "x::doc"})["result"]
    assert doc["request_schema"] == {"type": "object"} and doc["registered_triggers"] == []
    batch = peer.result_of("engine::functions::info", {"function_ids": ["x::on", "nope"]})["result"]["functions"]
    assert batch[0]["registered_triggers"] == [{"id": "t1", "trigger_type": "hook", "config": None}]
    assert batch[1] == {"function_id": "nope", "error": "not_found"}
    both = peer.result_of("engine::functions::info", {"function_id": "a", "function_ids": ["b"]})["error"]
    assert both["code"] == "INVALID_ARGUMENTS"
    hook = peer.result_of("engine::triggers::info", {"id": "hook"})["result"]
    assert hook["instance_count"] == 1 and hook["worker_name"] == "peer"
    binding = peer.result_of("engine::registered-triggers::info", {"id": "t1"})["result"]
    assert binding["trigger"]["id"] == "hook" and binding["function"]["function_id"] == "x::on"


def test_durable_triggers_outlive_their_creator(router):
    provider = connected(router, "provider")
    provider.send(type="registertriggertype", id="hook", description="d")
    creator = connected(router, "creator")
    created = creator.result_of("engine::register_trigger", {"trigger_type": "hook", "function_id": "f::x", "config": {"n": 1}})
    binding_id = created["result"]["id"]
    assert provider.take()[0]["id"] == binding_id
    router.disconnect(creator.conn)
    assert binding_id in router.bindings
    other = connected(router, "other")
    assert other.result_of("engine::unregister_trigger", {"id": binding_id})["result"] == {"removed": True}
    assert provider.take() == [{"type": "unregistertrigger", "id": binding_id, "trigger_type": "hook"}]
    assert other.result_of("engine::unregister_trigger", {"id": binding_id})["result"] == {"removed": False}


def test_disconnect_is_idempotent(router):
    peer = connected(router, "peer", "f::x")
    watcher = connected(router, "watcher", "w::on")
    watcher.send(type="registertrigger", id="w", trigger_type="engine::workers-available", function_id="w::on")
    router.disconnect(peer.conn)
    router.disconnect(peer.conn)
    assert len([f for f in watcher.take() if f["data"]["event"] == "worker_disconnected"]) == 1


# --------------------------------------------------------------------------- property


_json = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**53), 2**53) | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=10,
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    data=_json,
    metadata=st.none() | st.dictionaries(st.text(max_size=5), _json, max_size=2),
    traceparent=st.none() | st.text(max_size=20),
    function_id=st.text(min_size=1, max_size=12).map(lambda s: "prop::" + s),  # never engine::
    invocation_id=st.text(min_size=1, max_size=15),
    type_last=st.booleans(),
)
def test_forwarding_equals_decode_then_reencode(router, data, metadata, traceparent, function_id, invocation_id, type_last):
    """Property: whatever the payload, the raw-splicing route gives the owner exactly what a full
    decode → add the caller → re-encode would, and the owner's answer reaches the caller intact."""
    owner = Peer(router)
    owner.register(f"owner-{len(router.connections)}")
    owner.function(function_id)
    caller = Peer(router)
    frame = {"invocation_id": invocation_id, "function_id": function_id, "data": data}
    if metadata is not None:
        frame["metadata"] = metadata
    if traceparent is not None:
        frame["traceparent"] = traceparent
    frame = {**frame, "type": "invokefunction"} if type_last else {"type": "invokefunction", **frame}
    owner.take()
    caller.send_raw(json.dumps(frame, ensure_ascii=False).encode())
    (forwarded,) = owner.take()
    # The inline Invocations.open of the hot path keeps the table's invariants.
    assert router.pending[invocation_id].target is owner.conn and owner.conn.inbound_active == 1
    assert invocation_id in owner.conn.invocations and invocation_id in caller.conn.invocations
    expected = {**data, "_caller_worker_id": caller.id} if isinstance(data, dict) else data
    assert forwarded["data"] == expected
    assert (forwarded["invocation_id"], forwarded["function_id"]) == (invocation_id, function_id)
    assert forwarded.get("metadata") == metadata and forwarded.get("traceparent") == traceparent
    answer = json.dumps({"type": "invocationresult", "invocation_id": invocation_id, "function_id": function_id, "result": data}).encode()
    owner.send_raw(answer)
    assert caller.outbox == [answer]
    # … and so does its inline Invocations.settle.
    assert invocation_id not in router.pending and owner.conn.inbound_active == 0
    assert owner.conn.invocations == set() and caller.conn.invocations == set()
    router.disconnect(owner.conn)
    router.disconnect(caller.conn)


def test_answered_calls_do_not_pile_up_in_the_deadline_heap(codec):
    now = [0]
    router = make_router(clock=lambda: now[0])
    owner = connected(router, "owner", "f::x")
    for _ in range(5000):
        router.invoke("default", "f::x", b"{}", timeout_ms=30_000)
        (call,) = owner.take()
        owner.send(type="invocationresult", invocation_id=call["invocation_id"], function_id="f::x", result=1)
    assert len(router.invocations._deadlines) <= 1024 + 2


def test_bad_frames_are_logged_once_per_connection_and_kind(router, caplog):
    peer = connected(router, "peer")
    other = connected(router, "other")
    with caplog.at_level("WARNING", logger="iii.engine"):
        for _ in range(3):
            peer.send_raw(b'{"type":"registerfunction","id":5}')
        peer.send_raw(b"not json")
        other.send_raw(b'{"type":"registerfunction","id":5}')
    logged = [r.getMessage() for r in caplog.records if "dropped a frame" in r.getMessage()]
    assert len(logged) == 3  # peer: registerfunction, unknown; other: registerfunction
    assert peer.conn.frames_dropped == 4 and other.conn.frames_dropped == 1
