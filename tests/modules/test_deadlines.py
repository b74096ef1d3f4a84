"""Every call a module makes has a deadline: what each module does when it passes (no sockets,
a fake clock; cron's case is in test_cron.py, http's and stream's in their real-socket tests)."""

from __future__ import annotations

import pytest

from helpers import FakeClock, clocked_router, connected
from iii.modules import pubsub, queue, state


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(1_000_000.0)


def test_a_queue_job_whose_handler_hangs_is_retried_and_frees_its_slot(codec, clock):
    router = clocked_router(clock)
    queue.install(
        router,
        queue.QueueConfig(
            invocation_timeout_ms=1000,
            queue_configs={"one": queue.QueueSettings(concurrency=1, backoff_ms=500, max_retries=3)},
        ),
        clock,
    )
    worker = connected(router, "worker", "jobs::hang")
    caller = connected(router, "caller")
    caller.send(type="invokefunction", invocation_id="e1", function_id="jobs::hang", data={"n": 1},
                action={"type": "enqueue", "queue": "one"})
    caller.send(type="invokefunction", invocation_id="e2", function_id="jobs::hang", data={"n": 2},
                action={"type": "enqueue", "queue": "one"})
    assert [f["invocation_id"] for f in caller.take()] == ["e1", "e2"]  # receipts
    assert [f["data"] for f in worker.take()] == [{"n": 1}]  # one slot
    clock.advance(1.0)  # the deadline: the slot is free again, the job backs off
    assert [f["data"] for f in worker.take()] == [{"n": 2}]
    assert worker.conn.inbound_active == 1
    clock.advance(0.5)  # n=2 holds the slot until its own deadline; then n=1 comes back first
    clock.advance(0.5)
    assert [f["data"] for f in worker.take()] == [{"n": 1}]
    stats = caller.result_of("engine::queue::topic_stats", {"topic": "one"})["result"]
    assert (stats["dlq_depth"], stats["delivered"]) == (0, 0)


def test_state_and_pubsub_deliveries_have_deadlines(codec, clock):
    router = clocked_router(clock)
    state.install(router, state.StateConfig(invocation_timeout_ms=700))
    pubsub.install(router, pubsub.PubSubConfig(invocation_timeout_ms=700))
    watcher = connected(router, "watcher", "w::on-state", "w::on-topic")
    watcher.send(type="registertrigger", id="s", trigger_type="state", function_id="w::on-state", config={})
    watcher.send(type="registertrigger", id="p", trigger_type="subscribe", function_id="w::on-topic",
                 config={"topic": "t"})
    writer = connected(router, "writer")
    writer.result_of("state::set", {"scope": "a", "key": "b", "value": 1})
    writer.result_of("publish", {"topic": "t", "data": 1})
    router.flush_events()
    assert len(watcher.take()) == 2 and watcher.conn.status == "busy"
    clock.advance(0.7)
    assert watcher.conn.status == "available" and router.pending == {}
