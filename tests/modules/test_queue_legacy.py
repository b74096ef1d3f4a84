"""The names the original used before 0.11 for durable topics, ``enqueue`` and the ``queue``
trigger type, as workers on older SDKs and frameworks use them (both codecs)."""

from __future__ import annotations

import pytest

from helpers import FakeClock, Peer, connected, make_router
from iii.engine.router import Router
from iii.modules import queue
from iii.modules.queue import QueueConfig

#: A ``queue`` binding's config as the Python framework pinned to iii-sdk 0.11.3 (motia 1.0.x)
#: sends it: its own metadata beside the topic, and its QueueConfig model dumped by alias.
FRAMEWORK_CONFIG = {
    "topic": "orders",
    "metadata": {"step": "ProcessOrder", "flows": ["orders"]},
    "queue_config": {"type": "standard", "maxRetries": 1, "visibilityTimeout": 30, "delaySeconds": 0,
                     "backoffDelayMs": 100},
}


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(1_000_000.0)


@pytest.fixture
def router(codec, clock) -> Router:
    router = make_router(clock=lambda: int(clock.now * 1000))
    queue.install(router, QueueConfig(), clock)
    return router


def bind(router: Router, peer: Peer, binding_id: str, trigger_type: str, function_id: str, config: dict) -> list:
    peer.send(type="registertrigger", id=binding_id, trigger_type=trigger_type, function_id=function_id, config=config)
    router.flush_events()
    return peer.take()


def deliveries(peer: Peer) -> list[dict]:
    return [f for f in peer.take() if f["type"] == "invokefunction"]


def answer(peer: Peer, call: dict, *, fail: bool = False) -> None:
    outcome = {"error": {"code": "boom", "message": "not yet"}} if fail else {"result": None}
    peer.send(type="invocationresult", invocation_id=call["invocation_id"], function_id=call["function_id"], **outcome)


def test_both_names_reach_the_subscribers_bound_under_either(router):
    worker = connected(router, "worker", "old::handler", "new::handler")
    assert bind(router, worker, "old", "queue", "old::handler", {"topic": "orders"}) == []
    assert bind(router, worker, "new", "durable:subscriber", "new::handler", {"topic": "orders"}) == []
    publisher = connected(router, "publisher")
    for function_id, data in (("enqueue", {"id": 1}), ("iii::durable::publish", {"id": 2})):
        published = publisher.result_of(function_id, {"topic": "orders", "data": data})
        assert "error" not in published and published.get("result") is None  # as the original: no result
        calls = deliveries(worker)
        assert sorted((c["function_id"], c["data"]["id"]) for c in calls) == [
            ("new::handler", data["id"]), ("old::handler", data["id"])
        ]
        for call in calls:
            answer(worker, call)
    topics = publisher.result_of("engine::queue::list_topics", {})["result"]
    assert {"name": "orders", "broker_type": "builtin", "subscriber_count": 2} in topics


def test_a_framework_queue_binding_retries_then_dead_letters(router, clock):
    """The config older frameworks send is accepted (``type: standard`` is concurrent, extra keys
    ignored); ``maxRetries: 1`` is two attempts, then the message is in the function's DLQ."""
    worker = connected(router, "worker", "steps::ProcessOrder::trigger::0")
    assert bind(router, worker, "t", "queue", "steps::ProcessOrder::trigger::0", FRAMEWORK_CONFIG) == []
    publisher = connected(router, "publisher")
    publisher.result_of("enqueue", {"topic": "orders", "data": {"id": 7}})
    (first,) = deliveries(worker)
    answer(worker, first, fail=True)
    assert deliveries(worker) == []  # waits its backoff
    clock.advance(0.1)
    (retry,) = deliveries(worker)
    assert retry["data"] == {"id": 7}
    answer(worker, retry, fail=True)
    clock.advance(3600)
    assert deliveries(worker) == []
    queue_name = "orders::steps::ProcessOrder::trigger::0"
    (dead,) = publisher.result_of("engine::queue::dlq_messages", {"topic": queue_name})["result"]
    assert (dead["retries"], dead["error"]) == (2, "boom: not yet")
    assert publisher.result_of("iii::queue::redrive", {"queue": queue_name})["result"]["redriven"] == 1
    (redriven,) = deliveries(worker)
    assert redriven["data"] == {"id": 7}


def test_a_queue_binding_keeps_its_condition(router):
    worker = connected(router, "worker", "s::handler", "s::gate")
    bind(router, worker, "t", "queue", "s::handler", {"topic": "t", "condition_function_id": "s::gate"})
    connected(router, "publisher").result_of("enqueue", {"topic": "t", "data": 1})
    (gate,) = deliveries(worker)
    assert gate["function_id"] == "s::gate"
    worker.send(type="invocationresult", invocation_id=gate["invocation_id"], function_id="s::gate", result=True)
    (call,) = deliveries(worker)
    assert call["function_id"] == "s::handler"


def test_old_name_errors_are_the_originals(router):
    worker = connected(router, "worker", "s::handler")
    (refusal,) = bind(router, worker, "t", "queue", "s::handler", {"metadata": {}})
    assert refusal["type"] == "triggerregistrationresult" and "Topic is not set" in refusal["error"]["message"]
    publisher = connected(router, "publisher")
    assert publisher.result_of("enqueue", {"data": 1})["error"]["code"] == "topic_not_set"
    bad = publisher.result_of("enqueue", {"topic": 5})["error"]
    assert bad["code"] == "deserialization_error" and "enqueue" in bad["message"]


def test_the_old_names_are_listed_as_the_queue_modules(router):
    caller = connected(router, "caller")
    functions = caller.result_of("engine::functions::list", {})["result"]["functions"]
    enqueue = next(f for f in functions if f["function_id"] == "enqueue")
    assert "iii::durable::publish" in enqueue["description"]
    types = caller.result_of("engine::trigger-types::list", {"include_internal": True})["result"]["trigger_types"]
    by_id = {t["id"]: t for t in types}
    assert by_id["queue"]["configuration_schema"] == by_id["durable:subscriber"]["configuration_schema"]
