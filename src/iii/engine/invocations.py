"""The invocation table: every call routed to a worker and not answered yet.

It alone opens, settles, halts and expires calls, and keeps these invariants:

- a key is in the table ⇔ it is in its target's ``invocations`` (and its caller's, if any);
- a connection's ``inbound_active`` is the number of open calls whose target it is (busy > 0);
- a call with a deadline is expired at most once, and never after it was settled.

The router's ``forward`` (the hot path) writes out :meth:`open` and :meth:`settle` inline for
plain calls and answers; the router's property test holds it to them.
"""

from __future__ import annotations

import heapq
from typing import Any, Callable, ClassVar, Optional

import msgspec

from iii.engine.registry import Connection

__all__ = ["Pending", "TimedPending", "Invocations"]


class Pending(msgspec.Struct):
    """An invocation routed to a worker and not answered yet (a Struct: one is made per call)."""

    #: Who gets the ``invocationresult``; ``None`` for void and engine-originated calls.
    caller: Optional[Connection]
    target: Connection
    function_id: str
    #: Engine-side continuation ``(result_raw, error_body)`` for engine-originated calls.
    on_result: Optional[Callable[[Any, Any], None]] = None
    #: When the engine gives up on it (ms on the router's clock); 0: never.
    deadline_ms: int = 0
    #: A :class:`TimedPending` (a call picked for timing): settling it records its latency.
    timed: ClassVar[bool] = False


class TimedPending(Pending):
    """A call picked for timing (a sample of the routed calls: the others cost no clock reads and
    no bigger record)."""

    #: Its function's ``FunctionStats``.
    stats: Any = None
    #: When it was sent (``time.perf_counter_ns``).
    started_ns: int = 0
    timed: ClassVar[bool] = True


class Invocations:
    """The open calls, by key (the invocation id the target sees)."""

    __slots__ = ("pending", "_deadlines")

    def __init__(self) -> None:
        self.pending: dict[str, Pending] = {}
        #: ``(deadline_ms, key)`` of calls with a deadline; entries of settled calls linger until
        #: they come up or the heap is mostly them (cheaper than removing each from the heap).
        self._deadlines: list[tuple[int, str]] = []

    def __contains__(self, key: str) -> bool:
        return key in self.pending

    def __len__(self) -> int:
        return len(self.pending)

    def get(self, key: str) -> Optional[Pending]:
        return self.pending.get(key)

    def open(self, pending: Pending, key: str) -> None:
        """Record a call just sent to ``pending.target``."""
        self.pending[key] = pending
        target = pending.target
        target.invocations.add(key)
        target.inbound_active += 1
        if pending.caller is not None:
            pending.caller.invocations.add(key)
        if pending.deadline_ms:
            deadlines = self._deadlines
            if len(deadlines) > 2 * len(self.pending) + 1024:  # mostly answered calls: drop them
                self._deadlines = deadlines = [
                    (deadline, k) for deadline, k in deadlines
                    if (p := self.pending.get(k)) is not None and p.deadline_ms == deadline
                ]
                heapq.heapify(deadlines)
            heapq.heappush(deadlines, (pending.deadline_ms, key))

    def settle(self, key: str) -> Pending:
        """The target answered (or the call is given up): forget it, the target is less busy."""
        pending = self.pending.pop(key)
        self._release(key, pending)
        return pending

    def _release(self, key: str, pending: Pending) -> None:
        target = pending.target
        target.invocations.discard(key)
        target.inbound_active -= 1
        if pending.caller is not None:
            pending.caller.invocations.discard(key)

    def halt(self, conn: Connection) -> list[tuple[str, Pending]]:
        """``conn`` is gone: forget every call to it or made by it.

        Returns the calls that were *to* it (their callers must be told); calls it made are
        dropped (their targets' late answers are ignored).
        """
        keys = list(conn.invocations)  # _release changes the set: work from a copy
        stopped = []
        for key in keys:
            pending = self.pending.pop(key, None)
            if pending is None:
                continue
            self._release(key, pending)
            if pending.target is conn:
                stopped.append((key, pending))
        conn.invocations.clear()
        return stopped

    def next_deadline(self) -> Optional[int]:
        """The earliest deadline still to come (possibly of a call since settled), or ``None``."""
        return self._deadlines[0][0] if self._deadlines else None

    def expire(self, now_ms: int) -> list[tuple[str, Pending]]:
        """Forget the calls whose deadline is past; returns them (their waiters must be told)."""
        expired = []
        deadlines = self._deadlines
        while deadlines and deadlines[0][0] <= now_ms:
            deadline_ms, key = heapq.heappop(deadlines)
            pending = self.pending.get(key)
            if pending is None or pending.deadline_ms != deadline_ms:
                continue  # answered in time
            del self.pending[key]
            self._release(key, pending)
            expired.append((key, pending))
        return expired
