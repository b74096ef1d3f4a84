"""The iii-cron module without sockets or waiting: a fake clock drives the jobs (both codecs)."""

from __future__ import annotations

import datetime
from typing import Callable

import pytest

from helpers import FakeClock, Peer, clocked_router, connected, make_router
from iii.engine.router import Router
from iii.modules import cron

START = datetime.datetime(2026, 1, 1, 8, 59, 58, tzinfo=datetime.timezone.utc).timestamp()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(START)


@pytest.fixture
def router(codec, clock) -> Router:
    """Deadlines do not fall due here (nothing calls ``expire_calls``): see the test of them."""
    router = make_router(clock=lambda: int(clock.now * 1000))
    cron.install(router, None, clock)
    return router


def schedule(router: Router, peer: Peer, binding_id: str, **config) -> list:
    function_id = f"{peer.conn.name}::{binding_id}"
    peer.function(function_id)
    peer.send(type="registertrigger", id=binding_id, trigger_type="cron", function_id=function_id, config=config)
    router.flush_events()
    return peer.take()


def answer(peer: Peer, call: dict) -> None:
    peer.send(type="invocationresult", invocation_id=call["invocation_id"], function_id=call["function_id"], result=None)


@pytest.mark.parametrize(
    "expression, converted",
    [
        ("*/5 * * * * *", "*/5 * * * * *"),
        ("0 0 9 * * MON-FRI", "0 0 9 * * MON-FRI"),
        ("0 0 9 * * 2-6", "0 0 9 * * 1-5"),  # 1 = Sunday here, 0 = Sunday in croniter
        ("0 0 0 * * 1/2", "0 0 0 * * 0/2"),  # the step is not a day
        ("0 0 0 * * 6#3", "0 0 0 * * 5#3"),  # nor the n of "the nth"
        ("0 30 2 1 * * 2027", "0 30 2 1 * * 2027"),
        ("@Daily", "@daily"),
    ],
)
def test_expressions_are_read_seconds_first_with_sunday_as_1(expression, converted):
    assert cron.parse_expression(expression) == converted


@pytest.mark.parametrize(
    "expression, message",
    [
        ("", "Cron expression is required"),
        ("* * * * *", "expected 6 or 7 fields"),
        ("0 0 0 * * * 2027 1", "expected 6 or 7 fields"),
        ("61 * * * * *", "out of range"),
        ("0 0 0 * * 0", "day-of-week runs from 1 (Sunday) to 7"),
        ("0 0 0 * * 8", "day-of-week runs from 1 (Sunday) to 7"),
        ("@every", "unknown shorthand"),
    ],
)
def test_bad_expressions_are_refused_with_the_reason(router, expression, message):
    peer = connected(router, "peer")
    (refusal,) = schedule(router, peer, "job", expression=expression)
    assert refusal["error"]["code"] == "trigger_registration_failed"
    assert message in refusal["error"]["message"]


def test_a_job_fires_at_each_instant_with_the_cron_payload(router, clock):
    peer = connected(router, "peer")
    assert schedule(router, peer, "job", expression="0 0 9 * * *") == []
    clock.advance(1.5)
    assert peer.take() == []  # 08:59:59.5
    clock.advance(0.5)
    (call,) = peer.take()
    assert call["function_id"] == "peer::job"
    assert call["data"] == {
        "trigger": "cron", "job_id": "job",
        "scheduled_time": "2026-01-01T09:00:00+00:00", "actual_time": "2026-01-01T09:00:00+00:00",
    }
    answer(peer, call)
    clock.advance(24 * 3600)
    assert [c["data"]["scheduled_time"] for c in peer.take()] == ["2026-01-02T09:00:00+00:00"]


def test_runs_never_overlap_and_missed_ticks_are_skipped(router, clock):
    peer = connected(router, "peer")
    schedule(router, peer, "tick", expression="* * * * * *")
    clock.advance(1)
    (first,) = peer.take()
    assert clock.pending == 0  # waiting for the answer, not for the next tick
    clock.advance(5)
    assert peer.take() == []
    answer(peer, first)  # at 09:00:05: the next run is the next whole second
    clock.advance(1)
    (second,) = peer.take()
    assert (first["data"]["scheduled_time"], second["data"]["scheduled_time"]) == (
        "2026-01-01T08:59:59+00:00", "2026-01-01T09:00:05+00:00",
    )


def test_reregistering_replaces_the_job_and_unregistering_stops_it(router, clock):
    peer = connected(router, "peer")
    schedule(router, peer, "job", expression="*/10 * * * * *")
    peer.send(type="registertrigger", id="job", trigger_type="cron", function_id="peer::job", config={"expression": "0 * * * * *"})
    assert clock.pending == 1
    clock.advance(2)  # 09:00:00 matches both; one job only
    (call,) = peer.take()
    answer(peer, call)
    peer.send(type="unregistertrigger", id="job")
    assert clock.pending == 0
    clock.advance(3600)
    assert peer.take() == []


def test_a_condition_false_skips_the_run_but_not_the_schedule(router, clock):
    peer = connected(router, "peer", "peer::gate")
    schedule(router, peer, "job", expression="* * * * * *", condition_function_id="peer::gate")
    clock.advance(1)
    (gate,) = peer.take()
    assert gate["function_id"] == "peer::gate"
    peer.send(type="invocationresult", invocation_id=gate["invocation_id"], function_id="peer::gate", result=False)
    assert peer.take() == [] and clock.pending == 1


class EarlyClock(FakeClock):
    """Long timers fire 2 ms before they are due, as loop timers of coarse resolution may."""

    def call_later(self, delay: float, callback: Callable[[], None]):
        return super().call_later(delay - 0.002 if delay > 0.01 else delay, callback)


def test_a_timer_that_fires_early_neither_runs_early_nor_runs_twice(codec):
    clock = EarlyClock(START)
    router = make_router(clock=lambda: int(clock.now * 1000))
    cron.install(router, None, clock)
    peer = connected(router, "peer")
    schedule(router, peer, "tick", expression="* * * * * *")
    seen = []
    for _ in range(3):
        clock.advance(1)
        for call in peer.take():
            seen.append((call["data"]["scheduled_time"], call["data"]["actual_time"] >= call["data"]["scheduled_time"]))
            answer(peer, call)
    assert seen == [
        ("2026-01-01T08:59:59+00:00", True), ("2026-01-01T09:00:00+00:00", True), ("2026-01-01T09:00:01+00:00", True),
    ]


def test_a_run_that_never_answers_is_given_up_and_the_job_goes_on(codec, clock):
    """A hung function costs one run, not the job: at the deadline the engine forgets the call
    (the worker is no longer busy) and the job waits for its next instant."""
    router = clocked_router(clock)
    cron.install(router, cron.CronConfig(invocation_timeout_ms=2500), clock)
    peer = connected(router, "peer")
    schedule(router, peer, "tick", expression="*/5 * * * * *")  # 09:00:00, :05, :10 …
    clock.advance(2)
    (hung,) = peer.take()  # 09:00:00, never answered
    assert peer.conn.status == "busy"
    clock.advance(2.5)  # 09:00:02.5: the deadline
    assert peer.conn.status == "available" and peer.take() == []
    clock.advance(2.5)  # 09:00:05
    (again,) = peer.take()
    assert again["data"]["scheduled_time"] == "2026-01-01T09:00:05+00:00"
    answer(peer, hung)  # too late: dropped, and it does not count as the second run's answer
    assert peer.conn.status == "busy"
