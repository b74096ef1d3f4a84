"""The ticker: long timers run on their loop, in order, cancellable, without a loop timer."""

from __future__ import annotations

import asyncio
import time

import pytest

from iii.engine import ticker

pytestmark = pytest.mark.both_loops


@pytest.fixture
def quick(monkeypatch):
    """Delays from 50 ms go to the ticker (the real threshold is a second: tests stay short)."""
    monkeypatch.setattr(ticker, "COARSE_MIN_S", 0.05)


async def test_fires_on_the_loop_in_due_order(quick):
    loop = asyncio.get_running_loop()
    fired: list[str] = []
    done = loop.create_future()

    def note(name: str) -> None:
        assert asyncio.get_running_loop() is loop  # handed to the loop, not run on the thread
        fired.append(name)
        if len(fired) == 3:
            done.set_result(None)

    began = time.monotonic()  # the ticker's clock (uvloop's loop.time() is cached, in ms)
    handles = [ticker.call_later(0.15, note, "c"), ticker.call_later(0.05, note, "a"), ticker.call_later(0.1, note, "b")]
    assert all(isinstance(handle, ticker.TickHandle) for handle in handles)
    await asyncio.wait_for(done, 5)
    assert fired == ["a", "b", "c"]
    assert time.monotonic() - began >= 0.15
    for handle in handles:  # fired: as an asyncio.TimerHandle, not cancelled, and cancel() does nothing
        handle.cancel()
        assert not handle.cancelled()


async def test_a_cancelled_timer_does_not_fire(quick):
    loop = asyncio.get_running_loop()
    fired: list[str] = []
    later = loop.create_future()
    cancelled = ticker.call_later(0.05, fired.append, "cancelled")
    ticker.call_later(0.1, later.set_result, None)
    cancelled.cancel()
    assert cancelled.cancelled()
    await asyncio.wait_for(later, 5)
    assert fired == []


async def test_a_new_earliest_timer_wakes_the_thread(quick):
    """The thread sleeping until a far timer is woken for a nearer one set after it."""
    loop = asyncio.get_running_loop()
    far = ticker.call_later(60, lambda: None)
    near = loop.create_future()
    try:
        began = loop.time()
        ticker.call_later(0.05, near.set_result, None)
        await asyncio.wait_for(near, 5)
        assert loop.time() - began < 5
    finally:
        far.cancel()


async def test_many_cancelled_timers_are_dropped(quick):
    handles = [ticker.call_later(600, lambda: None) for _ in range(1000)]
    for handle in handles:
        handle.cancel()
    ticker.call_later(600, lambda: None).cancel()  # the next add compacts the heap
    assert len(ticker._TICKER._heap) < 200


async def test_short_delays_stay_on_the_loop():
    handle = ticker.call_later(0.01, lambda: None)
    assert not isinstance(handle, ticker.TickHandle)
    handle.cancel()


async def test_an_engine_at_rest_has_no_loop_timer(tmp_path):
    """The engine's periodic timers (heartbeat, sweeps) leave the loop's waits without a timeout,
    as a bare relay's (issue #16): on the stdlib loop, nothing is scheduled."""
    from helpers import LOCAL_MODULES, in_process_engine

    loop = asyncio.get_running_loop()
    if not hasattr(loop, "_scheduled"):
        pytest.skip("only the stdlib loop shows its timers")
    async with in_process_engine("workers:\n" + LOCAL_MODULES, tmp_path):
        pending = [handle for handle in loop._scheduled if not handle.cancelled()]
        assert pending == []
