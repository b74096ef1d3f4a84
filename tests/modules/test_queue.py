"""The iii-queue module without sockets: enqueue, delivery, retries, dead letters, the file_based
store and its failures (both codecs)."""

from __future__ import annotations

import asyncio
from typing import Callable

import msgspec
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
        "depth": 0, "in_flight": 0, "consumer_count": 10, "dlq_depth": 0, "config": None, "delivered": 1, "failed": 0,
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
    "config, message",
    [
        ({"queue_configs": {"q": {"concurrency": 0}}}, "Expected `int` >= 1 - at `$.queue_configs[...].concurrency`"),
        ({"queue_configs": {"q": {"max_retries": -1}}}, "Expected `int` >= 0 - at `$.queue_configs[...].max_retries`"),
        ({"queue_configs": {"q": {"backoff_ms": -5}}}, "at `$.queue_configs[...].backoff_ms`"),
        ({"queue_configs": {"q": {"type": "fifo"}}}, "queue 'q': a fifo queue needs message_group_field"),
        ({"queue_configs": {"q": {"type": "lifo"}}}, "at `$.queue_configs[...].type`"),
        ({"adapter": {"name": "builtin", "config": {"store_method": "file_based", "save_interval_ms": "soon"}}},
         "at `$.adapter.config.save_interval_ms`"),
        ({"adapter": {"name": "rabbitmq", "config": {"amqp_url": "amqp://x"}}}, "adapter 'rabbitmq' is not available here"),
        ({"adapter": {"name": "kv"}}, "Invalid value 'kv' - at `$.adapter.name`"),
    ],
)
def test_bad_queue_settings_are_refused(config, message):
    with pytest.raises(msgspec.ValidationError) as refused:
        msgspec.convert(config, QueueConfig)
    assert message in str(refused.value)


def attempts_until_dead(worker: Peer, clock: FakeClock, limit: int = 20) -> int:
    """Fail every delivery of the one job in flight until it stops coming; returns how many came."""
    attempts = 0
    while attempts < limit:
        calls = deliveries(worker)
        if not calls:
            return attempts
        (call,) = calls
        attempts += 1
        reply(worker, call, error=True)
        clock.advance(3600)
    raise AssertionError(f"still delivered after {limit} attempts")


@pytest.mark.parametrize("max_retries, attempts", [(0, 1), (1, 1), (2, 2), (3, 3)])
def test_a_named_queues_max_retries_counts_every_attempt(codec, clock, max_retries, attempts):
    """As the original's builtin adapter: ``max_retries`` is the number of attempts in all, and 0
    still makes the one attempt."""
    router = queue_router(clock, jobs=QueueSettings(max_retries=max_retries))
    worker = connected(router, "worker", "jobs::fail")
    caller = connected(router, "caller")
    enqueue(caller, "jobs::fail", 1, "jobs")
    assert attempts_until_dead(worker, clock) == attempts
    assert stats(caller, "jobs")["dlq_depth"] == 1


@pytest.mark.parametrize("max_retries, attempts", [(None, 3), (0, 1), (1, 2), (2, 3), (4, 5)])
def test_a_durable_subscribers_max_retries_counts_retries_after_the_first_attempt(router, clock, max_retries, attempts):
    """As the original: ``maxRetries: N`` is the first attempt and N retries; absent, 3 attempts."""
    worker = connected(router, "worker", "t::fail")
    queue_config = {} if max_retries is None else {"maxRetries": max_retries}
    subscribe(router, worker, "f", "t::fail", topic="t", queue_config=queue_config)
    publisher = connected(router, "publisher")
    publisher.result_of("iii::durable::publish", {"topic": "t", "data": 1})
    assert attempts_until_dead(worker, clock) == attempts
    assert stats(publisher, "t::t::fail")["dlq_depth"] == 1


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


def file_based(path, **queues) -> QueueConfig:
    return msgspec.convert(
        {"queue_configs": queues, "adapter": {"name": "builtin", "config": {"store_method": "file_based", "file_path": str(path)}}},
        QueueConfig,
    )


async def started(config: QueueConfig, clock: FakeClock) -> tuple[Router, queue.Queues]:
    router = make_router(clock=lambda: int(clock.now * 1000))
    queues = queue.install(router, config, clock)
    await queues.start()
    return router, queues


async def turns(count: int = 4) -> None:
    """Let the store commit and the answers that waited for it go out."""
    for _ in range(count):
        await asyncio.sleep(0)


async def test_the_file_based_store_keeps_jobs_and_dead_letters_across_restarts(codec, clock, tmp_path):
    path = tmp_path / "queues.db"
    router, queues = await started(file_based(path), clock)
    worker = connected(router, "worker", "jobs::run")
    caller = connected(router, "caller")
    for index, invocation_id in enumerate("abc", 1):
        caller.send(type="invokefunction", invocation_id=invocation_id, function_id="jobs::run", data={"n": index},
                    action={"type": "enqueue", "queue": "default"})
    assert caller.take() == [] and deliveries(worker) == []  # neither receipt nor delivery before the commit
    await turns()
    receipts = {f["invocation_id"]: f["result"]["messageReceiptId"] for f in caller.take()}
    assert sorted(receipts) == ["a", "b", "c"]
    first, second, third = deliveries(worker)
    reply(worker, first)  # acked: gone for good once committed
    for _ in range(3):  # the third dies
        reply(worker, third, error=True)
        await turns()
        clock.advance(10)
        third = next(iter(deliveries(worker)), third)
    await turns()
    # Not stopped: the second is still in delivery and runs again after the restart.

    router, restarted = await started(file_based(path), clock)
    worker = connected(router, "worker", "jobs::run")
    caller = connected(router, "caller")
    assert deliveries(worker) == []  # restored jobs give their workers time to come back
    clock.advance(queue.RESTORED_JOBS_DELAY_S)
    assert [job["data"] for job in deliveries(worker)] == [{"n": 2}]
    (dead,) = caller.result_of("engine::queue::dlq_messages", {"topic": "default"})["result"]
    assert (dead["id"], dead["payload"], dead["retries"]) == (receipts["c"], {"n": 3}, 3)
    caller.call("iii::queue::redrive", {"queue": "default"}, invocation_id="r")
    await turns()
    assert [f["result"] for f in caller.take()] == [{"queue": "default", "redriven": 1}]
    assert [job["data"] for job in deliveries(worker)] == [{"n": 3}]
    await restarted.stop()
    await queues.stop()


async def test_durable_topic_messages_are_kept_and_wait_for_their_subscriber(codec, clock, tmp_path):
    path = tmp_path / "queues.db"
    router, queues = await started(file_based(path), clock)
    worker = connected(router, "worker", "orders::bill")
    subscribe(router, worker, "b1", "orders::bill", topic="orders", queue_config={"maxRetries": 0})
    publisher = connected(router, "publisher")
    publisher.call("iii::durable::publish", {"topic": "orders", "data": {"id": 1}}, invocation_id="p")
    assert publisher.take() == []
    await turns()
    (answer,) = publisher.take()
    assert answer["invocation_id"] == "p" and "error" not in answer
    assert [c["data"] for c in deliveries(worker)] == [{"id": 1}]  # in delivery when the engine dies

    router, restarted = await started(file_based(path), clock)
    worker = connected(router, "worker", "orders::bill")
    clock.advance(60)
    assert deliveries(worker) == []  # no binding yet: it waits
    frames = subscribe(router, worker, "b1", "orders::bill", topic="orders", queue_config={"maxRetries": 0})
    (again,) = [f for f in frames if f["type"] == "invokefunction"]  # at once: the subscriber is back
    assert again["data"] == {"id": 1}
    worker.send(type="unregistertrigger", id="b1")
    reply(worker, again, error=True)  # one attempt (maxRetries 0): dead, and kept so
    await turns()
    stats_ = worker.result_of("engine::queue::topic_stats", {"topic": "orders::orders::bill"})["result"]
    assert (stats_["depth"], stats_["dlq_depth"]) == (0, 1)
    await restarted.stop()
    await queues.stop()


def fill(queues: queue.Queues) -> Callable[[], None]:
    """Make the file full (a real SQLITE_FULL for the next write that needs a page); returns what
    gives it room again."""
    database = queues.store.journal._db
    pages = database.execute("PRAGMA page_count").fetchone()[0]
    database.execute(f"PRAGMA max_page_count = {pages}")
    return lambda: database.execute("PRAGMA max_page_count = 1073741823")


async def test_what_the_file_cannot_keep_is_refused_or_done_again(codec, clock, tmp_path):
    router, queues = await started(file_based(tmp_path / "queues.db"), clock)
    worker = connected(router, "worker", "jobs::run")
    caller = connected(router, "caller")
    big = "x" * 100_000
    # An enqueue the file cannot keep is an enqueue error, and nothing is delivered.
    make_room = fill(queues)
    caller.send(type="invokefunction", invocation_id="e", function_id="jobs::run", data=big,
                action={"type": "enqueue", "queue": "default"})
    await turns()
    (refused,) = caller.take()
    assert refused["error"]["code"] == "enqueue_error" and "STORE_ERROR" in refused["error"]["message"]
    assert deliveries(worker) == [] and stats(caller)["depth"] == 0
    make_room()
    # A job whose completion the file cannot record is delivered again (the file still has it).
    caller.send(type="invokefunction", invocation_id="k", function_id="jobs::run", data=big,
                action={"type": "enqueue", "queue": "default"})
    await turns()
    (job,) = deliveries(worker)
    database = queues.store.journal._db
    database.execute("CREATE TRIGGER no_deletes BEFORE DELETE ON queue_jobs BEGIN SELECT RAISE(FAIL, 'disk trouble'); END")
    reply(worker, job)
    await turns()
    (again,) = deliveries(worker)
    assert again["data"] == big
    database.execute("DROP TRIGGER no_deletes")
    reply(worker, again)
    await turns()
    assert database.execute("SELECT count(*) FROM queue_jobs").fetchone()[0] == 0
    await queues.stop()


async def test_dead_letter_moves_the_file_cannot_keep_are_undone(codec, clock, tmp_path):
    router, queues = await started(file_based(tmp_path / "queues.db", once={"max_retries": 1}), clock)
    worker = connected(router, "worker", "jobs::run")
    caller = connected(router, "caller")
    database = queues.store.journal._db

    def refuse(operation: str) -> None:
        database.execute(f"CREATE TRIGGER refused BEFORE {operation} ON queue_jobs BEGIN SELECT RAISE(FAIL, 'disk trouble'); END")

    async def answer(function_id: str, data) -> dict:
        caller.call(function_id, data, invocation_id="q")
        await turns()
        (frame,) = caller.take()
        return frame

    caller.send(type="invokefunction", invocation_id="e", function_id="jobs::run", data=1,
                action={"type": "enqueue", "queue": "once"})
    await turns()
    receipt = caller.take()[0]["result"]["messageReceiptId"]
    (job,) = deliveries(worker)
    refuse("UPDATE")
    reply(worker, job, error=True)  # dead, but the file cannot say so: it is delivered again
    await turns()
    (job,) = deliveries(worker)
    assert stats(caller, "once")["dlq_depth"] == 0
    database.execute("DROP TRIGGER refused")
    reply(worker, job, error=True)
    await turns()
    assert stats(caller, "once")["dlq_depth"] == 1
    refuse("DELETE")
    refused = await answer("iii::queue::discard_message", {"queue": "once", "message_id": receipt})
    assert refused["error"]["code"] == "STORE_ERROR" and stats(caller, "once")["dlq_depth"] == 1
    database.execute("DROP TRIGGER refused")
    refuse("UPDATE")
    refused = await answer("iii::queue::redrive", {"queue": "once"})
    assert refused["error"]["code"] == "STORE_ERROR" and stats(caller, "once")["dlq_depth"] == 1
    assert deliveries(worker) == []
    database.execute("DROP TRIGGER refused")
    assert (await answer("iii::queue::redrive", {"queue": "once"}))["result"] == {"queue": "once", "redriven": 1}
    (job,) = deliveries(worker)
    assert (job["data"], stats(caller, "once")["dlq_depth"]) == (1, 0)
    await queues.stop()
