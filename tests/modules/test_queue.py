"""The iii-queue module without sockets: enqueue, delivery, retries, dead letters (both codecs)."""

from __future__ import annotations


import pytest

from helpers import FakeClock, Peer, connected, make_router
from iii.engine.router import Router
from iii.modules import queue
from iii.modules.queue import QueueConfig, QueueSettings


def queue_router(clock: FakeClock, **queues: QueueSettings) -> Router:
    router = make_router(clock=lambda: int(clock.now * 1000))
    queue.install(router, QueueConfig(queue_configs=queues), clock)
    return router


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(1_000_000.0)


@pytest.fixture
def router(codec, clock) -> Router:
    return queue_router(clock)


def enqueue(peer: Peer, function_id: str, data, queue_name: str = "default", invocation_id: str = "q") -> dict:
    peer.send(type="invokefunction", invocation_id=invocation_id, function_id=function_id, data=data,
              action={"type": "enqueue", "queue": queue_name}, metadata={"not": "delivered"})
    (answer,) = [f for f in peer.take() if f.get("invocation_id") == invocation_id]
    return answer


def deliveries(peer: Peer) -> list[dict]:
    return [f for f in peer.take() if f["type"] == "invokefunction"]


def reply(peer: Peer, call: dict, error: bool = False) -> None:
    outcome = {"error": {"code": "boom", "message": "nope"}} if error else {"result": {"ok": True}}
    peer.send(type="invocationresult", invocation_id=call["invocation_id"], function_id=call["function_id"], **outcome)


def stats(peer: Peer, name: str = "default") -> dict:
    return peer.result_of("engine::queue::topic_stats", {"topic": name})["result"]


def test_an_enqueued_job_is_acknowledged_then_delivered(router):
    worker = connected(router, "worker", "jobs::send")
    caller = connected(router, "caller")
    answer = enqueue(caller, "jobs::send", {"to": "a@b.c"})
    receipt = answer["result"]["messageReceiptId"]
    (job,) = deliveries(worker)
    assert job["data"] == {"to": "a@b.c"} and "metadata" not in job  # no caller id, no metadata
    assert job["invocation_id"] != receipt
    reply(worker, job)
    assert caller.take() == []  # the enqueuer never sees the function's result
    assert stats(caller) | {"config": None} == {
        "depth": 0, "consumer_count": 10, "dlq_depth": 0, "config": None, "delivered": 1, "failed": 0,
    }


def test_an_unknown_queue_is_an_enqueue_error(router):
    caller = connected(router, "caller")
    assert enqueue(caller, "jobs::send", {}, "jobs")["error"] == {
        "code": "enqueue_error", "message": "queue_not_found: Queue 'jobs' not found",
    }


def test_failures_back_off_exponentially_then_go_to_the_dlq_and_can_be_redriven(router, clock):
    worker = connected(router, "worker", "jobs::flaky")
    caller = connected(router, "caller")
    receipt = enqueue(caller, "jobs::flaky", {"n": 1})["result"]["messageReceiptId"]
    (first,) = deliveries(worker)
    reply(worker, first, error=True)
    clock.advance(0.999)
    assert deliveries(worker) == []
    clock.advance(0.001)  # 1 s after the first failure
    (second,) = deliveries(worker)
    reply(worker, second, error=True)
    clock.advance(1.999)
    assert deliveries(worker) == []
    clock.advance(0.001)  # 2 s after the second
    (third,) = deliveries(worker)
    reply(worker, third, error=True)  # max_retries (3) attempts: dead
    clock.advance(60)
    assert deliveries(worker) == []
    (dead,) = caller.result_of("engine::queue::dlq_messages", {"topic": "default"})["result"]
    assert (dead["id"], dead["payload"], dead["retries"], dead["error"]) == (receipt, {"n": 1}, 3, "boom: nope")
    assert caller.result_of("engine::queue::dlq_topics", {})["result"] == [
        {"topic": "default", "broker_type": "function_queue", "message_count": 1}
    ]
    assert caller.result_of("iii::queue::redrive", {"queue": "default"})["result"] == {"queue": "default", "redriven": 1}
    (again,) = deliveries(worker)
    reply(worker, again)
    assert stats(caller)["dlq_depth"] == 0 and stats(caller)["delivered"] == 1


def test_a_dead_letter_can_be_discarded(router, clock):
    worker = connected(router, "worker", "jobs::bad")
    caller = connected(router, "caller")
    receipt = enqueue(caller, "jobs::bad", 1)["result"]["messageReceiptId"]
    for _ in range(3):
        (call,) = deliveries(worker)
        reply(worker, call, error=True)
        clock.advance(10)
    answer = caller.result_of("iii::queue::discard_message", {"queue": "default", "message_id": receipt})
    assert answer["result"] == {"queue": "default", "message_id": receipt, "redriven": 1}
    assert stats(caller)["dlq_depth"] == 0


def test_concurrency_bounds_the_jobs_in_flight(codec, clock):
    router = queue_router(clock, small=QueueSettings(concurrency=2))
    worker = connected(router, "worker", "jobs::work")
    caller = connected(router, "caller")
    for index in range(3):
        enqueue(caller, "jobs::work", index, "small", invocation_id=f"q{index}")
    first, second = deliveries(worker)
    assert stats(caller, "small")["depth"] == 3
    reply(worker, first)
    (third,) = deliveries(worker)
    assert [c["data"] for c in (first, second, third)] == [0, 1, 2]


def test_a_fifo_queue_keeps_order_through_retries_and_needs_its_group_field(codec, clock):
    router = queue_router(clock, payments=QueueSettings(type="fifo", message_group_field="account"))
    worker = connected(router, "worker", "pay::apply")
    caller = connected(router, "caller")
    missing = enqueue(caller, "pay::apply", {"amount": 1}, "payments", invocation_id="bad")
    assert missing["error"]["message"] == (
        "message_group_missing: FIFO queue 'payments' requires field 'account' in data, but it was not found"
    )
    for index in range(2):
        enqueue(caller, "pay::apply", {"account": "a", "n": index}, "payments", invocation_id=f"q{index}")
    (first,) = deliveries(worker)
    reply(worker, first, error=True)
    clock.advance(5)
    (retried,) = deliveries(worker)  # the failed job again, not the one behind it
    assert retried["data"]["n"] == 0
    reply(worker, retried)
    (second,) = deliveries(worker)
    assert second["data"]["n"] == 1


def test_without_an_id_the_job_is_still_enqueued(router):
    worker = connected(router, "worker", "jobs::send")
    caller = connected(router, "caller")
    caller.send(type="invokefunction", function_id="jobs::send", data={"x": 1}, action={"type": "enqueue", "queue": "default"})
    assert caller.take() == []
    assert [c["data"] for c in deliveries(worker)] == [{"x": 1}]


@pytest.mark.parametrize(
    "settings, message",
    [({"concurrency": 0}, "at least 1"), ({"type": "fifo"}, "message_group_field"), ({"type": "lifo"}, "type")],
)
def test_bad_queue_settings_are_refused(settings, message):
    import msgspec

    with pytest.raises(msgspec.ValidationError, match=message):
        msgspec.convert({"queue_configs": {"q": settings}}, QueueConfig)


def subscribe(router: Router, peer: Peer, binding_id: str, function_id: str, **config) -> list:
    peer.send(type="registertrigger", id=binding_id, trigger_type="durable:subscriber", function_id=function_id, config=config)
    router.flush_events()
    return peer.take()


def test_a_durable_topic_fans_out_to_each_subscribing_function_once(router, clock):
    worker = connected(router, "worker", "orders::bill", "orders::ship", "orders::gate")
    assert subscribe(router, worker, "b1", "orders::bill", topic="orders") == []
    subscribe(router, worker, "b2", "orders::bill", queue="orders")  # same function: same queue
    subscribe(router, worker, "s1", "orders::ship", topic="orders", queue_config={"maxRetries": 2, "backoffDelayMs": 500})
    subscribe(router, worker, "g1", "orders::gate", topic="other")
    publisher = connected(router, "publisher")
    assert publisher.result_of("iii::durable::publish", {"topic": "orders", "data": {"id": 7}}).get("result") is None
    calls = {c["function_id"]: c for c in deliveries(worker)}
    assert sorted(calls) == ["orders::bill", "orders::ship"]
    assert calls["orders::bill"]["data"] == {"id": 7} and "metadata" not in calls["orders::bill"]
    reply(worker, calls["orders::bill"])
    reply(worker, calls["orders::ship"], error=True)
    clock.advance(0.5)
    (retried,) = deliveries(worker)
    assert retried["function_id"] == "orders::ship"
    topics = publisher.result_of("engine::queue::list_topics", {})["result"]
    assert {"name": "orders", "broker_type": "builtin", "subscriber_count": 2} in topics


def test_durable_subscriber_conditions_and_unsubscribing(router):
    worker = connected(router, "worker", "t::handler", "t::gate")
    subscribe(router, worker, "h", "t::handler", topic="t", condition_function_id="t::gate")
    publisher = connected(router, "publisher")
    publisher.result_of("iii::durable::publish", {"topic": "t", "data": 1})
    (gate,) = deliveries(worker)
    assert gate["function_id"] == "t::gate"
    worker.send(type="invocationresult", invocation_id=gate["invocation_id"], function_id="t::gate", result=False)
    assert deliveries(worker) == []  # acked without a call
    worker.send(type="unregistertrigger", id="h")
    publisher.result_of("iii::durable::publish", {"topic": "t", "data": 2})
    assert deliveries(worker) == []
    refusal = subscribe(router, worker, "none", "t::handler")
    assert "Topic is not set" in refusal[0]["error"]["message"]
    assert publisher.result_of("iii::durable::publish", {"data": 1})["error"]["code"] == "topic_not_set"


async def test_the_file_based_store_keeps_jobs_and_dead_letters_across_restarts(codec, clock, tmp_path):
    path = tmp_path / "queues.json"
    config = QueueConfig(adapter={"name": "builtin", "config": {"store_method": "file_based", "file_path": str(path)}})

    async def started() -> tuple[Router, queue.Queues]:
        router = make_router()
        queues = queue.install(router, config, clock)
        await queues.start()
        return router, queues

    router, queues = await started()
    worker = connected(router, "worker", "jobs::run")
    caller = connected(router, "caller")
    enqueue(caller, "jobs::run", {"n": 1}, invocation_id="a")
    enqueue(caller, "jobs::run", {"n": 2}, invocation_id="b")
    dead_receipt = enqueue(caller, "jobs::run", {"n": 3}, invocation_id="c")["result"]["messageReceiptId"]
    first, second, third = deliveries(worker)
    reply(worker, first)  # acked: gone for good
    for _ in range(3):  # the third dies
        reply(worker, third, error=True)
        clock.advance(10)
        third = next(iter(deliveries(worker)), third)
    await queues.stop()  # the second is still in delivery: it runs again after the restart

    router, queues = await started()
    worker = connected(router, "worker", "jobs::run")
    caller = connected(router, "caller")
    assert deliveries(worker) == []  # restored jobs give their workers time to come back
    clock.advance(queue.RESTORED_JOBS_DELAY_S)
    assert [job["data"] for job in deliveries(worker)] == [{"n": 2}]
    (dead,) = caller.result_of("engine::queue::dlq_messages", {"topic": "default"})["result"]
    assert (dead["id"], dead["payload"], dead["retries"]) == (dead_receipt, {"n": 3}, 3)
    await queues.stop()
