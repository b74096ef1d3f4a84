"""The SDK's sans-I/O core (:mod:`iii.sdk._protocol`) driven with bytes: no socket, no loop.

Where the official Python SDK was captured doing the same thing (``tests/data/vectors``), the
frames are compared with its frames, volatile values (uuids, traceparent, stack traces) aside.
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path
from typing import Any

import pytest

from iii import InitOptions, InvocationError, RegistrationRejectedError, TriggerAction, TriggerHandler
from iii.iii_constants import MAX_QUEUE_SIZE
from iii.sdk._protocol import (
    BindTrigger,
    CallFailed,
    CallResolved,
    InvokeHandler,
    UnbindTrigger,
    Welcomed,
    WorkerProtocol,
    WorkerRejected,
    worker_metadata,
)
from iii.triggers import RegisterTriggerTypeInput

VECTORS = Path(__file__).resolve().parent.parent / "data" / "vectors"
_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def capture(name: str) -> list[dict[str, Any]]:
    """The main-socket frames of ``python-0.25.0-<name>.jsonl``, in order, with their direction."""
    lines = (json.loads(line) for line in (VECTORS / f"python-0.25.0-{name}.jsonl").read_text().splitlines())
    return [line for line in lines if "frame" in line and line["path"] == "/"]


def official(name: str, conn: int = 1) -> list[dict[str, Any]]:
    """What the official SDK sent on connection ``conn`` of a capture, normalised."""
    return [normalised(line["frame"]) for line in capture(name) if line["dir"] == "worker->engine" and line["conn"] == conn]


def from_engine(name: str) -> list[bytes]:
    """What the capture's engine sent, as bytes to feed the core."""
    return [json.dumps(line["frame"]).encode() for line in capture(name) if line["dir"] == "engine->worker"]


def normalised(frame: Any) -> Any:
    """A frame (or its bytes) with what differs on every run replaced: uuids, traceparent,
    stack traces."""
    return _volatile_replaced(json.loads(frame) if isinstance(frame, bytes) else frame)


def _volatile_replaced(value: Any) -> Any:
    if isinstance(value, dict):
        return {
            key: "<stack>" if key == "stacktrace" else _volatile_replaced(item)
            for key, item in value.items()
            if key != "traceparent"
        }
    if isinstance(value, list):
        return [_volatile_replaced(item) for item in value]
    if isinstance(value, str):
        return _UUID.sub("<id>", value)
    return value


def new_protocol(namespace: Any = None) -> WorkerProtocol:
    return WorkerProtocol(worker_metadata(InitOptions(worker_name="core"), namespace), namespace, 30_000)


def connected() -> WorkerProtocol:
    protocol = new_protocol()
    protocol.connection_opened()
    protocol.data_to_send()
    return protocol


def sent(protocol: WorkerProtocol) -> list[dict[str, Any]]:
    return [normalised(frame) for frame in protocol.data_to_send()]


def run(protocol: WorkerProtocol, event: InvokeHandler) -> None:
    """What the pump does with a sync handler, inline."""
    try:
        result = event.handler(*event.args)
    except Exception as exc:
        protocol.handler_raised(event, exc)
    else:
        protocol.handler_returned(event, result)


class Provider(TriggerHandler):
    async def register_trigger(self, config):
        pass

    async def unregister_trigger(self, config):
        pass


# ---------------------------------------------------------------------- frames like the official SDK's


def test_first_connect_sends_the_register_call_shaped_like_the_official():
    protocol = new_protocol()
    protocol.connection_opened()
    (ours,) = sent(protocol)
    (theirs,) = [frame for frame in official("register") if frame.get("function_id") == "engine::workers::register"]
    assert {k: v for k, v in ours.items() if k != "data"} == {k: v for k, v in theirs.items() if k != "data"}
    # No "features": observe and local dispatch are not implemented, so none is announced.
    assert list(ours["data"]) == [key for key in theirs["data"] if key != "features"]
    assert ours["data"]["name"] == "core" and ours["data"]["namespace"] is None and ours["data"]["isolation"] is None


def test_registration_frames_match_the_official_sdk():
    protocol = connected()
    add = protocol.register_function(
        "math::add",
        lambda data: {"c": data["a"] + data["b"]},
        description="Add two numbers.",
        metadata={"owner": "math-team"},
        request_format={"type": "object", "properties": {"a": {"type": "number"}, "b": {"type": "number"}}},
        response_format={"type": "object", "properties": {"c": {"type": "number"}}},
    )
    protocol.announce(add.frame)
    protocol.announce(protocol.register_function("capture::plain", lambda data: None).frame)
    hook = RegisterTriggerTypeInput(
        id="capture-hook",
        description="A custom trigger type provided by this worker",
        trigger_request_format={"type": "object", "properties": {"topic": {"type": "string"}}},
        call_request_format={"type": "object"},
    )
    provider = Provider()
    protocol.announce(protocol.register_trigger_type(hook, provider))
    cron_id, frame = protocol.register_trigger(
        {"type": "cron", "function_id": "capture::plain", "config": {"expression": "0 */5 * * * * *"}}
    )
    protocol.announce(frame)
    hook_id, frame = protocol.register_trigger(
        {"type": "capture-hook", "function_id": "math::add", "config": {"topic": "orders"}, "metadata": {"why": "capture"}}
    )
    protocol.announce(frame)
    protocol.announce(protocol.register_trigger({"type": "engine::workers-available", "function_id": "capture::plain", "config": {}})[1])

    # The engine forwards the capture-hook binding to its provider, this same worker.
    engine = from_engine("register")
    bind_frame = next(frame for frame in engine if b'"registertrigger"' in frame)
    (bind,) = protocol.receive(bind_frame.replace(b"503355a2-e4c9-4e72-b706-03af7338a29b", hook_id.encode()))
    assert isinstance(bind, BindTrigger) and bind.provider is provider and bind.trigger_type == "capture-hook"
    assert (bind.config.id, bind.config.function_id, bind.config.config, bind.config.metadata) == (
        hook_id, "math::add", {"topic": "orders"}, {"why": "capture"}
    )
    protocol.trigger_bound(bind, None)
    (unbind,) = protocol.receive(json.dumps({"type": "unregistertrigger", "id": hook_id, "trigger_type": "capture-hook"}).encode())
    assert isinstance(unbind, UnbindTrigger) and (unbind.config.id, unbind.config.function_id) == (hook_id, "")

    protocol.announce(protocol.unregister_trigger(hook_id, "capture-hook"))
    protocol.announce(protocol.unregister_trigger(cron_id, "cron"))
    protocol.announce(protocol.unregister_function(add))
    protocol.announce(protocol.unregister_trigger_type("capture-hook"))
    theirs = [frame for frame in official("register") if frame.get("function_id") != "engine::workers::register"]
    assert sent(protocol) == theirs
    assert protocol.unregister_function(add) is None and protocol.unregister_trigger(hook_id, "capture-hook") is None


def _request_like(frame: dict[str, Any]) -> dict[str, Any]:
    """The ``trigger`` request that made an official ``invokefunction`` frame."""
    request: dict[str, Any] = {"function_id": frame["function_id"], "payload": frame.get("data")}
    if "metadata" in frame:
        request["metadata"] = frame["metadata"]
    action = frame.get("action")
    if action == {"type": "void"}:
        request["action"] = TriggerAction.Void()
    elif action is not None:
        request["action"] = TriggerAction.Enqueue(queue=action["queue"])
    return request


def test_call_frames_match_the_official_sdk():
    calls = [
        frame
        for frame in official("trigger")
        if frame["type"] == "invokefunction" and frame["function_id"] != "engine::workers::register"
    ]
    # among them: no payload, metadata, Void, Enqueue, engine::* ids (namespace "default")
    assert [call for call in calls if "data" not in call and call.get("action") is None]
    assert [call for call in calls if "metadata" in call]
    assert {call["action"]["type"] for call in calls if "action" in call} == {"void", "enqueue"}
    assert [call for call in calls if call.get("namespace") == "default"]
    protocol = new_protocol()
    for frame in calls:
        call = protocol.prepare_call(_request_like(frame))
        assert normalised(call.frame) == frame
        assert (call.invocation_id is None) == (frame.get("action") == {"type": "void"})


def test_calls_carry_the_workers_namespace_except_to_engine_functions():
    protocol = new_protocol("billing")
    assert json.loads(protocol.prepare_call({"function_id": "a::b"}).frame)["namespace"] == "billing"
    assert json.loads(protocol.prepare_call({"function_id": "engine::workers::list"}).frame)["namespace"] == "default"
    assert json.loads(protocol.prepare_call({"function_id": "a::b", "namespace": "x"}).frame)["namespace"] == "x"
    with pytest.raises(ValueError, match="namespace is empty"):
        protocol.prepare_call({"function_id": "a::b", "namespace": "  "})


def test_invocations_run_handlers_and_answer_like_the_official_sdk():
    protocol = connected()

    def fail(data):
        raise RuntimeError(f"boom: {data['why']}")

    protocol.register_function("math::add", lambda data: {"c": data["a"] + data["b"]})
    protocol.register_function("capture::fail", fail)
    protocol.register_function("capture::sink", lambda data: None)
    protocol.register_function("capture::meta", lambda data, metadata=None: {"data": data, "metadata": metadata})
    protocol.register_function("capture::none", lambda data: None)
    invocations = [frame for frame in from_engine("invoke") if b'"invokefunction"' in frame]
    for frame in invocations:
        for event in protocol.receive(frame):
            assert isinstance(event, InvokeHandler)
            run(protocol, event)
    theirs = [frame for frame in official("invoke") if frame["type"] == "invocationresult"]
    assert sent(protocol) == theirs  # the void call to capture::sink is not answered


def test_invocation_events_carry_what_the_handler_needs():
    protocol = connected()

    async def with_metadata(data, *, metadata=None):
        return None

    protocol.register_function("f::meta", with_metadata)
    protocol.register_function("f::plain", lambda data, *rest: None)
    call = {"type": "invokefunction", "function_id": "f::meta", "invocation_id": "i1", "data": {"x": 1}, "metadata": {"t": 2}}
    (event,) = protocol.receive(json.dumps(call).encode())
    assert event == InvokeHandler(with_metadata, True, "f::meta", "i1", ({"x": 1}, {"t": 2}))
    (event,) = protocol.receive(json.dumps({**call, "function_id": "f::plain", "invocation_id": None}).encode())
    assert (event.is_async, event.invocation_id, event.args) == (False, None, ({"x": 1},))


def test_results_that_cannot_be_encoded_fail_the_invocation():
    protocol = connected()
    protocol.register_function("f::odd", lambda data: object())
    (event,) = protocol.receive(b'{"type":"invokefunction","function_id":"f::odd","invocation_id":"i1"}')
    run(protocol, event)
    (answer,) = sent(protocol)
    assert answer["error"]["code"] == "invocation_failed" and "not JSON serializable" in answer["error"]["message"]


def test_http_invoked_functions_are_not_run_here():
    protocol = connected()
    function = protocol.register_function("f::remote", {"url": "https://example.com/hook", "method": "POST"})
    assert json.loads(function.frame)["invocation"] == {"url": "https://example.com/hook", "method": "POST"}
    assert protocol.receive(b'{"type":"invokefunction","function_id":"f::remote","invocation_id":"i1"}') == []
    assert sent(protocol)[0]["error"]["code"] == "function_not_invokable"


def test_registering_twice_or_without_a_handler_raises():
    protocol = new_protocol()
    protocol.register_function("f::once", lambda data: data)
    with pytest.raises(ValueError, match="already registered"):
        protocol.register_function("f::once", lambda data: data)
    with pytest.raises(ValueError):
        protocol.register_function("", lambda data: data)
    with pytest.raises(TypeError):
        protocol.register_function("f::bad", 42)


def test_a_refused_binding_is_reported_to_the_engine():
    protocol = connected()
    protocol.register_trigger_type(RegisterTriggerTypeInput(id="hook"), Provider())
    bind = {"type": "registertrigger", "id": "t1", "trigger_type": "hook", "function_id": "f::x", "config": {}}
    (event,) = protocol.receive(json.dumps(bind).encode())
    protocol.trigger_bound(event, ValueError("no such topic"))
    assert sent(protocol) == [
        {
            "type": "triggerregistrationresult",
            "id": "t1",
            "trigger_type": "hook",
            "function_id": "f::x",
            "error": {"code": "trigger_registration_failed", "message": "no such topic"},
        }
    ]
    assert protocol.receive(json.dumps({**bind, "trigger_type": "other"}).encode()) == []  # not ours: ignored


# ---------------------------------------------------------------------- calls in flight


def test_results_reach_the_waiter_of_their_call():
    protocol = connected()
    first = protocol.prepare_call({"function_id": "a::one", "payload": 1})
    second = protocol.prepare_call({"function_id": "a::two", "payload": 2})
    assert protocol.start_call(first, "waiter-1") is None and protocol.start_call(second, "waiter-2") is None
    assert [frame["function_id"] for frame in sent(protocol)] == ["a::one", "a::two"]
    result = {"type": "invocationresult", "invocation_id": second.invocation_id, "function_id": "a::two", "result": {"n": 2}}
    assert protocol.receive(json.dumps(result).encode()) == [CallResolved("waiter-2", {"n": 2})]
    error = {"code": "invocation_stopped", "message": "Invocation stopped"}
    (failed,) = protocol.receive(json.dumps({"type": "invocationresult", "invocation_id": first.invocation_id, "error": error}).encode())
    assert isinstance(failed, CallFailed) and failed.waiter == "waiter-1"
    assert isinstance(failed.error, InvocationError)
    assert (failed.error.code, failed.error.message, failed.error.function_id, failed.error.invocation_id) == (
        "invocation_stopped", "Invocation stopped", "a::one", first.invocation_id
    )
    assert protocol.receive(json.dumps(result).encode()) == []  # answered already


def test_odd_error_bodies_fail_calls_as_the_official_sdk_does():
    """The error results of the ``trigger`` capture, replayed to calls of ours."""
    protocol = connected()
    codes = []
    for frame in from_engine("trigger"):
        message = json.loads(frame)
        if message["type"] != "invocationresult" or "error" not in message:
            continue
        call = protocol.prepare_call({"function_id": message["function_id"], "payload": {}})
        protocol.start_call(call, "waiter")
        message["invocation_id"] = call.invocation_id
        (event,) = protocol.receive(json.dumps(message).encode())
        assert isinstance(event, CallFailed)
        codes.append((event.error.code, event.error.message))
    observed = [json.loads(line) for line in (VECTORS / "python-0.25.0-trigger.observed.jsonl").read_text().splitlines()]
    theirs = [(step["code"], step["message"]) for step in observed if step.get("code") not in (None, "TIMEOUT")]
    assert codes == theirs


def test_a_timed_out_call_fails_with_timeout_and_its_late_result_is_dropped():
    protocol = connected()
    call = protocol.prepare_call({"function_id": "slow::one", "timeout_ms": 250})
    protocol.start_call(call, "waiter")
    expired = protocol.time_out(call.invocation_id)
    assert isinstance(expired, CallFailed) and expired.waiter == "waiter"
    assert (expired.error.code, expired.error.message) == ("TIMEOUT", "invocation timed out after 250ms")
    late = {"type": "invocationresult", "invocation_id": call.invocation_id, "result": 1}
    assert protocol.receive(json.dumps(late).encode()) == []
    assert protocol.time_out(call.invocation_id) is None


def test_a_void_call_is_settled_at_once():
    protocol = connected()
    call = protocol.prepare_call({"function_id": "a::b", "action": {"type": "void"}})
    assert protocol.start_call(call, "waiter") == CallResolved("waiter", None)
    assert "invocation_id" not in sent(protocol)[0]


def test_calls_in_flight_survive_a_dropped_connection_and_fail_on_shutdown():
    protocol = connected()
    call = protocol.prepare_call({"function_id": "a::b"})
    protocol.start_call(call, "waiter")
    protocol.connection_lost()  # as the official SDK: a drop does not fail calls in flight
    protocol.connection_opened()
    result = {"type": "invocationresult", "invocation_id": call.invocation_id, "result": "late but fine"}
    assert protocol.receive(json.dumps(result).encode()) == [CallResolved("waiter", "late but fine")]

    protocol.start_call(protocol.prepare_call({"function_id": "a::b"}), "waiter-1")
    protocol.start_call(protocol.prepare_call({"function_id": "a::c"}), "waiter-2")
    prepared = protocol.prepare_call({"function_id": "a::d"})
    events = protocol.shut_down()
    assert [event.waiter for event in events] == ["waiter-1", "waiter-2"]
    assert all(isinstance(event, CallFailed) and event.error.code == "SHUTDOWN" for event in events)
    refused = protocol.start_call(prepared, "waiter-3")
    assert isinstance(refused, CallFailed) and refused.error.code == "SHUTDOWN"
    with pytest.raises(InvocationError) as info:
        protocol.prepare_call({"function_id": "a::b"})
    assert info.value.code == "SHUTDOWN"


def test_a_rejected_worker_fails_its_calls_and_refuses_new_ones():
    protocol = connected()
    protocol.start_call(protocol.prepare_call({"function_id": "a::b"}), "waiter")
    rejection = {
        "type": "registrationrejected",
        "code": "WORKER_NAMESPACE_CONFLICT",
        "namespace": "billing",
        "owner_worker_id": "w-1",
        "worker_name": "core",
    }
    rejected, failed = protocol.receive(json.dumps(rejection).encode())
    assert isinstance(rejected, WorkerRejected) and failed == CallFailed("waiter", rejected.error)
    error = rejected.error
    assert isinstance(error, RegistrationRejectedError) and protocol.rejection is error
    assert (error.code, error.namespace, error.worker_name, error.owner_worker_id) == ("WORKER_NAMESPACE_CONFLICT", "billing", "core", "w-1")
    with pytest.raises(RegistrationRejectedError):
        protocol.prepare_call({"function_id": "a::b"})


def test_a_function_namespace_conflict_only_warns(caplog):
    protocol = connected()
    conflict = {
        "type": "registrationrejected",
        "code": "FUNCTION_NAMESPACE_CONFLICT",
        "namespace": "default",
        "owner_worker_id": "w-1",
        "function_id": "f::taken",
    }
    with caplog.at_level(logging.WARNING, logger="iii"):
        assert protocol.receive(json.dumps(conflict).encode()) == []
    assert "f::taken" in caplog.text and protocol.rejection is None


# ---------------------------------------------------------------------- connections


def test_replay_after_a_reconnect_follows_the_official_order():
    """The ``reconnect`` capture: a handler finishes while the socket is down; on the next
    connection come reattach, trigger types, functions, triggers, the queued result, register."""
    protocol = new_protocol()
    protocol.register_trigger_type(RegisterTriggerTypeInput(id="capture-hook", description="custom"), Provider())
    protocol.register_function("capture::slow", lambda data: {"slept_ms": data["ms"]}, description="sleeps")
    protocol.register_trigger({"type": "capture-hook", "function_id": "capture::slow", "config": {"topic": "t"}})
    protocol.connection_opened()
    protocol.data_to_send()
    engine = from_engine("reconnect")
    welcome = json.loads(engine[0])
    assert protocol.receive(engine[0]) == [Welcomed(welcome["worker_id"], welcome["reattach_token"])]
    (invocation,) = protocol.receive(next(frame for frame in engine if b'"invokefunction"' in frame))
    protocol.start_call(protocol.prepare_call({"function_id": "fake::echo"}), "waiter")
    sent(protocol)

    protocol.connection_lost()
    run(protocol, invocation)  # finishes offline: queued, not lost
    assert protocol.data_to_send() == []
    protocol.connection_opened()
    frames = protocol.data_to_send()
    *replay, register = [normalised(frame) for frame in frames]
    theirs = official("reconnect", conn=3)
    assert replay == theirs[: len(replay)]
    assert theirs[len(replay)]["function_id"] == register["function_id"] == "engine::workers::register"
    reattach = {"type": "reattach", "previous_worker_id": welcome["worker_id"], "reattach_token": welcome["reattach_token"]}
    assert json.loads(frames[0]) == reattach
    assert [frame["type"] for frame in replay] == [
        "reattach", "registertriggertype", "registerfunction", "registertrigger", "invocationresult"
    ]


def test_registrations_made_offline_are_replayed_once_and_calls_are_queued():
    protocol = new_protocol()
    function = protocol.register_function("f::late", lambda data: data)
    protocol.announce(function.frame)  # offline: not queued, the replay carries it
    for n in range(MAX_QUEUE_SIZE + 1):
        protocol.start_call(protocol.prepare_call({"function_id": "a::b", "payload": n}), n)
    assert protocol.data_to_send() == []
    protocol.connection_opened()
    replay = sent(protocol)
    assert replay[0] == {"type": "registerfunction", "id": "f::late"}
    calls = replay[1:-1]
    assert len(calls) == MAX_QUEUE_SIZE and calls[0]["data"] == 1  # the oldest was dropped
    assert replay[-1]["function_id"] == "engine::workers::register"


def test_a_call_that_timed_out_offline_is_never_sent():
    protocol = new_protocol()
    expired = protocol.prepare_call({"function_id": "a::b", "payload": "expired", "timeout_ms": 10})
    kept = protocol.prepare_call({"function_id": "a::b", "payload": "kept"})
    for call in (expired, kept):
        assert protocol.start_call(call, call.invocation_id) is None
    failed = protocol.time_out(expired.invocation_id)
    assert failed is not None and failed.error.code == "TIMEOUT"
    protocol.connection_opened()
    calls = [frame for frame in sent(protocol) if frame.get("function_id") == "a::b"]
    assert [frame["data"] for frame in calls] == ["kept"]


def test_frames_the_worker_does_not_act_on_are_ignored():
    protocol = connected()
    for frame in (b"not json", b'{"type":"ping"}', b'{"type":"surprise"}', b'{"type":"invocationresult"}'):
        assert protocol.receive(frame) == []
    assert protocol.data_to_send() == []


@pytest.mark.parametrize("namespace", [None, "team-a", 'odd"ns\u00e9'])
@pytest.mark.parametrize("function_id", ["math::add", 'quo"te::\u2603', "engine::functions::list"])
@pytest.mark.parametrize("payload", [None, {"a": [1, 2.5, None], "s": "\u00e9\n\""}, "text", [], 0])
def test_plain_call_frames_are_the_encoders_bytes(namespace, function_id, payload):
    """Calls without action or metadata are framed from cached parts: the same bytes as the
    general encoder's (which frames every other call)."""
    protocol = WorkerProtocol({}, namespace, 1000)
    for _ in range(2):  # the first fills the cache, the second uses it
        call = protocol.prepare_call({"function_id": function_id, "payload": payload})
        sent_namespace = "default" if function_id.startswith("engine::") else namespace
        expected = protocol._call_frame(function_id, call.invocation_id, payload, None, None, False, sent_namespace)
        assert call.frame == expected
