"""Timers of a second or more, kept off the event loop's timer heap.

While a loop has any timer pending, every wait for I/O (``epoll_wait``) carries a timeout, and
the kernel arms and cancels a high-resolution timer for each of them: about a microsecond per
wait, two waits per routed call at low load (issue #16). The engine's own timers are long and
periodic (heartbeats every 20 s, sweeps every minute), so they live here instead: one daemon
thread sleeps until the earliest of them is due and hands its callback to the loop with
``call_soon_threadsafe``; the loop, with no timer of its own, waits without a timeout. The thread
wakes only when a timer is due or a new earliest one is set; it costs nothing between.

A callback runs on its loop, in due order, a few milliseconds late at most (the thread needs the
GIL to hand it over). Shorter delays, where that matters, stay on the loop.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import threading
import time
from typing import Any, Callable, Union

__all__ = ["COARSE_MIN_S", "TickHandle", "call_later"]

#: Delays this long or longer go to the ticker thread; shorter ones to the loop.
COARSE_MIN_S = 1.0


class TickHandle:
    """A pending ticker timer (``cancel()`` it as an ``asyncio.TimerHandle``)."""

    __slots__ = ("_loop", "_callback", "_args", "_cancelled")

    def __init__(self, loop: asyncio.AbstractEventLoop, callback: Callable[..., Any], args: tuple) -> None:
        self._loop = loop
        self._callback = callback
        self._args = args
        self._cancelled = False

    def cancel(self) -> None:
        if self._callback is not None:  # neither fired nor cancelled yet
            self._cancelled = True
            self._callback = self._args = None  # type: ignore[assignment]  # drop references early
            _TICKER.cancelled_one()

    def cancelled(self) -> bool:
        return self._cancelled

    def _fire(self) -> None:
        """On the loop: run the callback unless cancelled meanwhile (then a cancel() does nothing)."""
        callback, args = self._callback, self._args
        if callback is not None:
            self._callback = self._args = None  # type: ignore[assignment]
            callback(*args)


class _Ticker:
    """The process's ticker thread and its heap of ``(due, seq, handle)`` (monotonic seconds)."""

    def __init__(self) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._heap: list[tuple[float, int, TickHandle]] = []
        self._seq = itertools.count()
        self._cancelled = 0
        self._thread: Union[threading.Thread, None] = None

    def add(self, due: float, handle: TickHandle) -> None:
        with self._cond:
            heap = self._heap
            if self._cancelled > 64 and self._cancelled * 2 > len(heap):  # mostly cancelled: drop them
                heap[:] = [entry for entry in heap if not entry[2]._cancelled]
                heapq.heapify(heap)
                self._cancelled = 0
            heapq.heappush(heap, (due, next(self._seq), handle))
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="iii-ticker", daemon=True)
                self._thread.start()
            elif heap[0][2] is handle:  # a new earliest timer: the thread sleeps too long
                self._cond.notify()

    def cancelled_one(self) -> None:
        with self._cond:
            self._cancelled += 1

    def _run(self) -> None:
        with self._cond:
            heap = self._heap
            while True:
                if not heap:
                    self._cond.wait()
                    continue
                due, _, handle = heap[0]
                wait = due - time.monotonic()
                if wait > 0:
                    self._cond.wait(wait)
                    continue
                heapq.heappop(heap)
                if handle._cancelled:
                    self._cancelled = max(0, self._cancelled - 1)
                    continue
                try:
                    handle._loop.call_soon_threadsafe(handle._fire)
                except RuntimeError:  # its loop is closed: nothing to run it on
                    pass


_TICKER = _Ticker()


def call_later(delay: float, callback: Callable[..., Any], *args: Any) -> Union[TickHandle, asyncio.TimerHandle]:
    """``loop.call_later`` on the running loop, through the ticker for delays of
    :data:`COARSE_MIN_S` or more; the handle has ``cancel()`` and ``cancelled()``."""
    loop = asyncio.get_running_loop()
    if delay < COARSE_MIN_S:
        return loop.call_later(delay, callback, *args)
    handle = TickHandle(loop, callback, args)
    _TICKER.add(time.monotonic() + delay, handle)
    return handle
