"""The engine's own counters: calls by function and outcome, sampled call latency, workers.

Cheap to keep: the routed path adds one to its function's ``calls`` and times a sample of them
(each call until :data:`SAMPLE_EVERY` were timed, then one in :data:`SAMPLE_EVERY`: two clock
reads and a slightly bigger record each); outcomes other than success are counted where they
are handled (the full path, the expiry timer, a disconnect); successes of routed calls are what
is left. Everything else is read when it is asked for (:meth:`EngineStats.families`,
:meth:`EngineStats.snapshot`).
"""

from __future__ import annotations

from bisect import bisect_left
from typing import Any, Iterable

from iii.engine.host import MetricFamily

__all__ = ["EngineStats", "FunctionStats", "LATENCY_BOUNDS_S", "SAMPLE_EVERY"]

#: Call latency buckets (seconds).
LATENCY_BOUNDS_S = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
#: Routed calls are timed when ``calls & mask == 0``: every call at first, one in 64 once 64 were.
SAMPLE_EVERY = 64


class FunctionStats:
    """One function's calls (kept across its re-registrations: counters only grow)."""

    __slots__ = ("namespace", "function_id", "builtin", "calls", "mask", "errors", "timeouts", "stopped",
                 "buckets", "latency_sum", "latency_count")

    def __init__(self, namespace: str, function_id: str, builtin: bool) -> None:
        self.namespace = namespace
        self.function_id = function_id
        self.builtin = builtin
        self.calls = 0
        #: A routed call is timed when ``calls & mask == 0``.
        self.mask = 0
        self.errors = 0
        self.timeouts = 0
        self.stopped = 0
        self.buckets = [0] * (len(LATENCY_BOUNDS_S) + 1)
        self.latency_sum = 0.0
        self.latency_count = 0

    def observe_ns(self, elapsed_ns: int) -> None:
        seconds = elapsed_ns / 1e9
        self.buckets[bisect_left(LATENCY_BOUNDS_S, seconds)] += 1
        self.latency_sum += seconds
        self.latency_count += 1
        if self.latency_count == SAMPLE_EVERY:
            self.mask = SAMPLE_EVERY - 1


class EngineStats:
    """Every function's :class:`FunctionStats` and the worker connection counts."""

    def __init__(self) -> None:
        self.functions: dict[tuple[str, str], FunctionStats] = {}
        self.spawns = 0
        self.deaths = 0
        #: Bad frames of connections that are gone (the live ones count their own).
        self.frames_dropped_gone = 0

    def of(self, namespace: str, function_id: str, builtin: bool) -> FunctionStats:
        stats = self.functions.get((namespace, function_id))
        if stats is None:
            stats = self.functions[(namespace, function_id)] = FunctionStats(namespace, function_id, builtin)
        stats.builtin = builtin
        return stats

    def get(self, namespace: str, function_id: str) -> Any:
        return self.functions.get((namespace, function_id))

    def snapshot(self) -> dict[str, Any]:
        """``engine::metrics::list``'s counters: built-ins' outcomes; a routed call is
        ``deferred`` (its outcome is its worker's)."""
        success = error = deferred = 0
        by_function: dict[str, int] = {}
        for stats in self.functions.values():
            if not stats.calls:
                continue
            by_function[stats.function_id] = by_function.get(stats.function_id, 0) + stats.calls
            if stats.builtin:
                error += stats.errors
                success += stats.calls - stats.errors
            else:
                deferred += stats.calls
        return {
            "invocations": {"total": success + error + deferred, "success": success, "error": error,
                            "deferred": deferred, "by_function": by_function},
            "workers": {"spawns": self.spawns, "deaths": self.deaths, "active": max(0, self.spawns - self.deaths)},
        }

    def families(self, connections: Iterable[Any], pending: Iterable[Any]) -> list[MetricFamily]:
        """The engine's metrics as of now."""
        connections = list(connections)
        busy: dict[tuple[str, str], int] = {}
        for call in pending:
            key = (call.target.namespace, call.function_id)
            busy[key] = busy.get(key, 0) + 1
        outcomes = MetricFamily("iii_invocations", "counter", "Calls by function and outcome (routed calls "
                                "still in flight are not counted yet)", ("namespace", "function", "outcome"))
        latency = MetricFamily("iii_invocation_duration_seconds", "histogram",
                               f"Call latency (routed calls: the first {SAMPLE_EVERY}, then one in {SAMPLE_EVERY}; built-ins: all)",
                               ("namespace", "function"))
        for (namespace, function_id), stats in sorted(self.functions.items()):
            if not stats.calls:
                continue
            failed = stats.errors + stats.timeouts + stats.stopped
            ok = stats.calls - failed - busy.get((namespace, function_id), 0)
            for outcome, count in (("ok", ok), ("error", stats.errors), ("timeout", stats.timeouts), ("stopped", stats.stopped)):
                if count or outcome == "ok":
                    outcomes.samples.append(((namespace, function_id, outcome), max(0, count)))
            if stats.latency_count:
                cumulative, total = [], 0
                for count in stats.buckets:
                    total += count
                    cumulative.append(total)
                latency.samples.append(((namespace, function_id), (LATENCY_BOUNDS_S, cumulative, stats.latency_sum)))
        live = [c for c in connections if not c.closed]
        buffered = [(c, c.buffered()) for c in live if c.buffered is not None]
        return [
            MetricFamily("iii_workers_connected", "gauge", "Worker connections", (), [((), len(live))]),
            MetricFamily("iii_worker_connections", "counter", "Worker connections opened", (), [((), self.spawns)]),
            MetricFamily("iii_worker_disconnections", "counter", "Worker connections closed", (), [((), self.deaths)]),
            MetricFamily("iii_invocations_in_flight", "gauge", "Calls routed to workers and not answered yet", (),
                         [((), sum(busy.values()))]),
            outcomes,
            latency,
            MetricFamily("iii_frames_dropped", "counter", "Bad frames from workers, dropped", (),
                         [((), self.frames_dropped_gone + sum(c.frames_dropped for c in connections))]),
            MetricFamily("iii_write_buffer_bytes", "gauge", "Bytes waiting for slow workers to read them",
                         ("worker",), [((c.id,), size) for c, size in buffered if size]),
            MetricFamily("iii_write_buffer_bytes_total", "gauge", "Bytes waiting for all workers to read them", (),
                         [((), sum(size for _, size in buffered))]),
        ]
