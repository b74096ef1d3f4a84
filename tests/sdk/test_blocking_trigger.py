"""The synchronous ``trigger()`` (the calling thread blocks on a lock the SDK's loop releases),
against a real engine from the ``iii.testing`` plugin's fixtures."""

from __future__ import annotations

import threading
import uuid

import pytest

from iii import InvocationError, TriggerAction
from iii.sdk._protocol import WorkerProtocol

from helpers import calls_from_threads


def test_a_call_past_its_timeout_fails_and_its_late_answer_is_dropped(iii_worker, iii_client):
    release = threading.Event()
    iii_worker.register_function("t::slow", lambda data: release.wait(10) and {"late": True})
    iii_worker.register_function("t::echo", lambda data: data)
    with pytest.raises(InvocationError) as failed:
        iii_client.trigger({"function_id": "t::slow", "payload": {}, "timeout_ms": 200})
    assert failed.value.code == "TIMEOUT"
    release.set()
    iii_worker.wait_for_calls("t::slow", 1)  # the late answer reached the client by now or soon
    assert [iii_client.trigger({"function_id": "t::echo", "payload": n}) for n in range(3)] == [0, 1, 2]


def test_errors_and_void_calls(iii_worker, iii_client):
    def fail(data):
        raise ValueError("no")

    iii_worker.register_function("t::fail", fail)
    with pytest.raises(InvocationError) as failed:
        iii_client.trigger({"function_id": "t::fail", "payload": {}})
    assert failed.value.code == "invocation_failed"
    assert iii_client.trigger({"function_id": "t::fail", "payload": {}, "action": TriggerAction.Void()}) is None
    with pytest.raises(InvocationError) as missing:
        iii_client.trigger({"function_id": "t::nobody", "payload": {}})
    assert missing.value.code == "function_not_found"


def test_calls_from_many_threads_each_get_their_own_answer(iii_worker, iii_client):
    iii_worker.register_function("t::echo", lambda data: data)
    answers = calls_from_threads(iii_client, "t::echo", 4, 20)
    assert answers == {t: [[t, n] for n in range(20)] for t in range(4)}


def test_invocation_ids_are_unique_uuid4s_without_a_random_draw_per_call():
    first, second = (WorkerProtocol({}, None, 1000) for _ in range(2))
    ids = [first.prepare_call({"function_id": "f", "payload": None}).invocation_id for _ in range(1000)]
    ids.append(second.prepare_call({"function_id": "f", "payload": None}).invocation_id)
    assert len(set(ids)) == len(ids)
    assert all(uuid.UUID(i).version == 4 and str(uuid.UUID(i)) == i for i in ids)
