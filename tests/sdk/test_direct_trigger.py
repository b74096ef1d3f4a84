"""The direct call channel of the synchronous ``trigger()`` (``iii.sdk._direct``): which calls take
it, and that a call taking it behaves as one through the worker's own connection (ordering after
registrations, timeouts, errors, enqueue, a channel lost mid-call, shutdown), against a real engine
from the ``iii.testing`` plugin's fixtures."""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

import pytest

from iii import InitOptions, InvocationError, RegistrationRejectedError, TriggerAction, register_worker
from iii.iii_constants import ReconnectionConfig
from iii.sdk import client as client_module
from iii.sdk._direct import LOST, TIMED_OUT, DirectChannel
from iii.sdk._protocol import Answer

from helpers import calls_from_threads

_WAIT_S = 15


class DirectCalls:
    """Counts what the direct channel of one client did with its calls."""

    def __init__(self, iii: Any) -> None:
        self.direct: DirectChannel = iii._direct
        assert self.direct is not None
        iii.trigger({"function_id": "state::get", "payload": {"scope": "warm", "key": "up"}})  # opens it
        assert self.direct.opened.wait(_WAIT_S), "the direct channel did not open"
        self.outcomes: list[Any] = []
        call = self.direct.call

        def counted(*args: Any) -> Any:
            outcome = call(*args)
            self.outcomes.append(outcome)
            return outcome

        self.direct.call = counted  # type: ignore[method-assign]

    @property
    def answered(self) -> int:
        return sum(1 for outcome in self.outcomes if type(outcome) is Answer)


@pytest.fixture
def direct(iii_client) -> DirectCalls:
    return DirectCalls(iii_client.client)


def test_sync_calls_take_the_direct_channel_and_it_is_no_worker(iii_worker, iii_client, direct):
    iii_worker.register_function("t::echo", lambda data: data)
    answers = [iii_client.trigger({"function_id": "t::echo", "payload": [n]}) for n in range(20)]
    assert answers == [[n] for n in range(20)]
    assert direct.answered >= 19  # the first may go through the loop (the engine has yet to answer one)
    listed = iii_client.trigger({"function_id": "engine::workers::list", "payload": {}})["workers"]
    connections = sorted(str(row["name"]) for row in listed if row["runtime"] != "engine")  # not the modules
    assert connections == ["iii-test-client", "iii-test-worker"]  # no row for the direct channels


def test_a_direct_call_is_the_workers_own(iii_engine, iii_worker, iii_client):
    """The engine takes the channel for the calling worker: its callee sees the worker's id as
    ``_caller_worker_id``, and watchers of ``engine::workers-available`` see no connection come."""
    callers: list[str] = []
    events: list[tuple[str, str]] = []
    iii_worker.register_function("t::who", lambda data: callers.append(data.pop("_caller_worker_id")) or data)
    iii_worker.register_function("t::watch", lambda data: events.append((data["event"], data["worker_id"])))
    iii_worker.register_trigger({"type": "engine::workers-available", "function_id": "t::watch", "config": {}})
    iii_worker.trigger({"function_id": "engine::functions::list", "payload": {}})  # the binding is in
    caller = register_worker(iii_engine.url, InitOptions(worker_name="direct-caller", otel={"enabled": False}))
    try:
        direct = DirectCalls(caller)
        assert [caller.trigger({"function_id": "t::who", "payload": {"n": n}}) for n in range(5)] == [{"n": n} for n in range(5)]
        assert direct.answered == 5
        assert set(callers) == {caller.worker_id}
    finally:
        caller.shutdown()
    deadline = time.monotonic() + _WAIT_S
    while ("worker_disconnected", caller.worker_id) not in events and time.monotonic() < deadline:
        time.sleep(0.02)  # the event is delivered by a void call to this process: no handle to await
    assert {worker_id for _, worker_id in events} == {caller.worker_id}  # no other connection
    assert [event for event, _ in events].count("worker_connected") == 1


def test_a_registration_is_in_effect_for_the_next_call_from_the_same_thread(iii_client, direct):
    iii = iii_client.client
    iii.register_function("t::first", lambda data: data)
    iii_client.trigger({"function_id": "t::first", "payload": 0})
    for n in range(30):  # each registration goes through the loop; the call right after must see it
        iii.register_function(f"t::new-{n}", lambda data, n=n: {"n": n, "data": data})
        assert iii.trigger({"function_id": f"t::new-{n}", "payload": n}) == {"n": n, "data": n}
        assert iii.trigger({"function_id": f"t::new-{n}", "payload": n}) == {"n": n, "data": n}
    assert direct.answered >= 30  # the second call of each pair
    binding = iii.register_trigger({"type": "state", "function_id": "t::first", "config": {"scope": "s"}})
    assert iii._main_sent > iii._main_settled  # the next call goes after the binding
    binding.unregister()


def test_a_void_call_is_in_effect_for_the_next_call(iii_client, direct):
    for n in range(20):
        iii_client.trigger({"function_id": "state::set", "payload": {"scope": "void", "key": "k", "value": n}, "action": TriggerAction.Void()})
        assert iii_client.trigger({"function_id": "state::get", "payload": {"scope": "void", "key": "k"}}) == n
        assert iii_client.trigger({"function_id": "state::get", "payload": {"scope": "void", "key": "k"}}) == n
    assert direct.answered >= 20


def test_errors_timeouts_and_enqueue_on_the_direct_channel(iii_worker, iii_client, direct):
    release = threading.Event()

    def fail(data):
        raise ValueError("no")

    iii_worker.register_function("t::fail", fail)
    iii_worker.register_function("t::slow", lambda data: release.wait(10) and {"late": True})
    iii_worker.register_function("t::echo", lambda data: data)
    iii_client.trigger({"function_id": "t::echo", "payload": 0})
    with pytest.raises(InvocationError) as failed:
        iii_client.trigger({"function_id": "t::fail", "payload": {}})
    assert failed.value.code == "invocation_failed" and failed.value.function_id == "t::fail"
    with pytest.raises(InvocationError) as missing:
        iii_client.trigger({"function_id": "t::nobody", "payload": {}})
    assert missing.value.code == "function_not_found"
    started = time.monotonic()
    with pytest.raises(InvocationError) as timed_out:
        iii_client.trigger({"function_id": "t::slow", "payload": {}, "timeout_ms": 300})
    assert timed_out.value.code == "TIMEOUT" and time.monotonic() - started >= 0.29
    assert timed_out.value.invocation_id is not None
    release.set()
    iii_worker.wait_for_calls("t::slow", 1)
    # The late answer waits on the channel: the next calls skip it.
    assert [iii_client.trigger({"function_id": "t::echo", "payload": n}) for n in range(3)] == [0, 1, 2]
    receipt = iii_client.trigger({"function_id": "t::echo", "payload": "queued", "action": TriggerAction.Enqueue(queue="default")})
    assert isinstance(receipt["messageReceiptId"], str)
    iii_worker.wait_for_calls("t::echo", 5)
    assert direct.answered >= 6 and TIMED_OUT in direct.outcomes  # all but the first echo, maybe


def test_a_call_whose_channel_is_lost_is_not_resent_and_times_out(iii_worker, iii_client, direct):
    started_call = threading.Event()
    release = threading.Event()

    def slow(data):
        started_call.set()
        release.wait(10)
        return "late"

    iii_worker.register_function("t::slow", slow)
    iii_worker.register_function("t::echo", lambda data: data)
    iii_client.trigger({"function_id": "t::echo", "payload": 0})
    outcome: dict[str, Any] = {}

    def call() -> None:
        began = time.monotonic()
        try:
            iii_client.trigger({"function_id": "t::slow", "payload": {}, "timeout_ms": 1500})
        except InvocationError as exc:
            outcome["error"] = exc
        outcome["elapsed"] = time.monotonic() - began

    caller = threading.Thread(target=call)
    caller.start()
    assert started_call.wait(_WAIT_S)
    direct.direct.close(final=False)  # the socket fails under the waiting call
    caller.join(_WAIT_S)
    release.set()
    assert outcome["error"].code == "TIMEOUT" and outcome["elapsed"] >= 1.4
    assert LOST in direct.outcomes
    assert iii_client.trigger({"function_id": "t::echo", "payload": 1}) == 1  # through the loop meanwhile
    iii_worker.wait_for_calls("t::slow", 1)
    assert iii_worker.calls("t::slow") == 1  # run once, never resent


def test_shutdown_fails_a_waiting_direct_call(iii_engine, iii_worker):
    entered = threading.Event()
    iii_worker.register_function("t::hang", lambda data: entered.set() or threading.Event().wait(10))
    iii_worker.register_function("t::echo", lambda data: data)
    iii = register_worker(iii_engine.url, InitOptions(worker_name="shutdown-caller", otel={"enabled": False}))
    direct = DirectCalls(iii)
    iii.trigger({"function_id": "t::echo", "payload": 0})
    failure: dict[str, Any] = {}

    def call() -> None:
        try:
            iii.trigger({"function_id": "t::hang", "payload": {}, "timeout_ms": 20_000})
        except InvocationError as exc:
            failure["code"] = exc.code

    caller = threading.Thread(target=call)
    caller.start()
    assert entered.wait(_WAIT_S)
    began = time.monotonic()
    iii.shutdown()
    caller.join(_WAIT_S)
    assert failure == {"code": "SHUTDOWN"} and time.monotonic() - began < 10
    assert LOST in direct.outcomes


def test_engine_calls_and_contended_calls_go_through_the_loop(iii_worker, iii_client, direct):
    iii_worker.register_function("t::echo", lambda data: data)
    iii_client.trigger({"function_id": "t::echo", "payload": 0})
    before = len(direct.outcomes)
    iii_client.trigger({"function_id": "engine::functions::list", "payload": {}})
    assert len(direct.outcomes) == before  # engine::* calls act on the caller's own connection
    answers = calls_from_threads(iii_client, "t::echo", 4, 50)
    assert answers == {t: [[t, n] for n in range(50)] for t in range(4)}
    assert len(direct.outcomes) - before < 200  # some calls found the channel busy


def test_a_worker_that_makes_no_such_call_opens_no_channel(iii_engine):
    iii = register_worker(iii_engine.url, InitOptions(worker_name="server-only", otel={"enabled": False}))
    try:
        iii.trigger({"function_id": "engine::functions::list", "payload": {}})
        iii.trigger({"function_id": "state::set", "payload": {"scope": "s", "key": "k", "value": 1}, "action": TriggerAction.Void()})
        assert not iii._direct_wanted and iii._direct.sock is None
        iii.trigger({"function_id": "state::get", "payload": {"scope": "s", "key": "k"}})
        assert iii._direct.opened.wait(_WAIT_S)
    finally:
        iii.shutdown()


def test_the_direct_channel_is_off_when_asked(iii_engine, monkeypatch):
    monkeypatch.setenv(client_module.DIRECT_TRIGGER_ENV, "0")
    iii = register_worker(iii_engine.url, InitOptions(worker_name="no-direct", otel={"enabled": False}))
    try:
        assert iii._direct is None
        assert iii.trigger({"function_id": "state::get", "payload": {"scope": "s", "key": "k"}}) is None
    finally:
        iii.shutdown()


def test_a_rejected_worker_closes_its_direct_channel(iii_engine):
    first = register_worker(iii_engine.url, InitOptions(worker_name="twin", otel={"enabled": False}))
    failed = threading.Event()
    second = None
    try:
        try:
            second = register_worker(iii_engine.url, InitOptions(worker_name="twin", otel={"enabled": False}))
        except RegistrationRejectedError:
            pytest.skip("rejected before the client was returned")  # the rejection raced the connect wait
        second.add_connection_state_listener(lambda state: state == "failed" and failed.set())
        assert failed.wait(_WAIT_S)
        assert second._direct.closed and second._direct.sock is None
        with pytest.raises(RegistrationRejectedError):
            second.trigger({"function_id": "state::get", "payload": {"scope": "s", "key": "k"}})
    finally:
        if second is not None:
            second.shutdown()
        first.shutdown()


async def test_calls_during_a_reconnect_are_queued_or_dropped_at_their_timeout(procs, tmp_path):
    engine = await procs.engine(tmp=tmp_path / "first")
    port = int(engine.url.rsplit(":", 1)[1])
    backoff = ReconnectionConfig(initial_delay_ms=100, max_delay_ms=200, jitter_factor=0)
    options = InitOptions(worker_name="reconnecting", otel={"enabled": False}, reconnection_config=backoff)
    iii = await asyncio.to_thread(register_worker, engine.url, options)
    try:
        ran: list[Any] = []
        iii.register_function("t::record", lambda data: ran.append(data) or data)
        down, up = threading.Event(), threading.Event()
        iii.add_connection_state_listener(lambda state: (up if state == "connected" else down).set())
        assert await asyncio.to_thread(iii.trigger, {"function_id": "t::record", "payload": "first"}) == "first"
        direct = DirectCalls(iii)
        assert await asyncio.to_thread(iii.trigger, {"function_id": "t::record", "payload": "direct"}) == "direct"
        assert direct.answered == 1
        up.clear()
        await engine.proc.stop()
        assert await asyncio.to_thread(down.wait, _WAIT_S)
        # Calls to a built-in (the replay's held registrations would answer function_not_found
        # to a queued call of a worker's function, in the official SDK's order too).
        def state_set(key: str, timeout_ms: int) -> Any:
            request = {"function_id": "state::set", "payload": {"scope": "r", "key": key, "value": key}, "timeout_ms": timeout_ms}
            return iii.trigger(request)

        with pytest.raises(InvocationError) as timed_out:
            await asyncio.to_thread(state_set, "dropped", 300)
        assert timed_out.value.code == "TIMEOUT"
        queued = asyncio.ensure_future(asyncio.to_thread(state_set, "queued", 20_000))
        await procs.engine(tmp=tmp_path / "second", port=port)  # a new engine: its state is empty
        await asyncio.wait_for(queued, _WAIT_S)  # sent after the replay
        assert await asyncio.to_thread(up.wait, _WAIT_S)
        stored = {
            key: await asyncio.to_thread(iii.trigger, {"function_id": "state::get", "payload": {"scope": "r", "key": key}})
            for key in ("dropped", "queued")
        }
        assert stored == {"dropped": None, "queued": "queued"}  # the timed-out call was never sent
        assert await asyncio.to_thread(direct.direct.opened.wait, _WAIT_S)  # reopened with the connection
        for n in range(3):
            assert await asyncio.to_thread(iii.trigger, {"function_id": "t::record", "payload": n}) == n
        assert direct.answered >= 3
        assert ran == ["first", "direct", 0, 1, 2]
    finally:
        await asyncio.to_thread(iii.shutdown)
