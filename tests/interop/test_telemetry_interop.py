"""The official SDKs' telemetry (their ``/otel`` socket: LOGS, OTLP and MTRC frames) read back
through ``engine::logs::list``, ``engine::traces::list|tree`` and ``engine::workers::list``."""

from __future__ import annotations

import asyncio
import time
from typing import Any, Awaitable, Callable

import pytest

from helpers import RawClient, call_results

pytestmark = pytest.mark.interop

OTHER = {"python": "node", "node": "python"}
SERVICE = {"python": "iii-python-sdk", "node": "iii-node"}


async def poll(fetch: Callable[[], Awaitable[Any]], ready: Callable[[Any], bool], timeout: float = 20) -> Any:
    """``fetch()`` until ``ready`` holds for its value (the SDKs export on their own timers:
    there is no event to wait for); fails after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = await fetch()
        if ready(value):
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"not ready after {timeout}s: {value}")
        await asyncio.sleep(0.1)


@pytest.mark.parametrize("runtime", ["python", "node"])
async def test_sdk_logs_are_listed_with_their_trace(workers, engine, runtime):
    owner = await workers.start(runtime, "tel-logger", "--fn", "tel::log=log", "--stay")
    await owner.key("ready")
    caller = await workers.start(OTHER[runtime], "tel-caller", calls=[{"function_id": "tel::log", "payload": {"n": 7}}])
    (outcome,) = await call_results(caller, 1)
    assert outcome["result"]["n"] == 7
    client = await RawClient.connect(engine.url)

    async def logs() -> Any:
        return (await client.call("engine::logs::list", {"severity_min": 9}))["result"]

    listed = await poll(logs, lambda r: any(log["body"] == "log from tel::log" for log in r["logs"]))
    (record,) = [log for log in listed["logs"] if log["body"] == "log from tel::log"]
    assert record["severity_number"] == 9
    # The Node SDK's Logger sets no severity text (only the number).
    assert record["severity_text"] == {"python": "INFO", "node": ""}[runtime]
    assert record["timestamp_unix_nano"] > 1_600_000_000 * 10**9
    assert isinstance(record["attributes"], dict) and isinstance(record["resource"], dict)
    # Logged inside the handler's `execute` span: the log names its trace, whose span is stored.
    assert record["trace_id"] and len(record["trace_id"]) == 32

    async def tree() -> Any:
        return (await client.call("engine::traces::tree", {"trace_id": record["trace_id"]}))["result"]

    trace = await poll(tree, lambda r: any(node["name"] == "execute tel::log" for node in r["roots"]))
    (root,) = [node for node in trace["roots"] if node["name"] == "execute tel::log"]
    assert root["span_id"] == record["span_id"]
    assert root["service_name"] == SERVICE[runtime] or root["service_name"] != "unknown"
    # Filters: an unknown trace has none; severity_min above INFO drops it.
    none = (await client.call("engine::logs::list", {"trace_id": "0" * 31 + "1"}))["result"]
    assert none["logs"] == [] and none["total"] == 0
    above = (await client.call("engine::logs::list", {"severity_min": 13}))["result"]
    assert all(log["severity_number"] >= 13 for log in above["logs"])


@pytest.mark.parametrize("relay_runtime", ["python", "node"])
async def test_a_trace_crosses_workers_of_both_sdks(workers, engine, relay_runtime):
    """A handler in one SDK calls a function of the other: the callee's span is a child of the
    caller's in one trace (the engine forwards the caller's traceparent)."""
    relay = await workers.start(relay_runtime, "tel-relay", "--fn", "tel::relay=relay", "--stay")
    adder = await workers.start(OTHER[relay_runtime], "tel-adder", "--fn", "tel::add=add", "--stay")
    await relay.key("ready")
    await adder.key("ready")
    caller = await workers.start(
        relay_runtime, "tel-caller",
        calls=[{"function_id": "tel::relay", "payload": {"target": "tel::add", "payload": {"a": 1, "b": 2}}}],
    )
    (outcome,) = await call_results(caller, 1)
    assert outcome["result"] == {"c": 3}
    client = await RawClient.connect(engine.url)

    async def callee_spans() -> Any:
        request = {"name": "execute tel::add", "search_all_spans": True, "include_internal": True}
        return (await client.call("engine::traces::list", request))["result"]

    found = await poll(callee_spans, lambda r: any(s["name"] == "execute tel::add" for s in r["spans"]))
    (callee,) = [s for s in found["spans"] if s["name"] == "execute tel::add"]
    assert callee["parent_span_id"] is not None

    def find(nodes: list, name: str) -> Any:
        for node in nodes:
            if node["name"] == name:
                return node
            hit = find(node["children"], name)
            if hit is not None:
                return hit
        return None

    async def tree() -> Any:
        return (await client.call("engine::traces::tree", {"trace_id": callee["trace_id"]}))["result"]

    trace = await poll(tree, lambda r: find(find(r["roots"], "execute tel::relay")["children"] if find(r["roots"], "execute tel::relay") else [], "execute tel::add") is not None)
    relay_span = find(trace["roots"], "execute tel::relay")
    callee_span = find(relay_span["children"], "execute tel::add")
    assert callee_span["trace_id"] == relay_span["trace_id"] == callee["trace_id"]
    assert relay_span["service_name"] != callee_span["service_name"]  # two SDKs, one trace
    assert callee_span["status"] in ("ok", "unset") and callee_span["end_time_unix_nano"] >= callee_span["start_time_unix_nano"]
    # Root listing: the relay's trace shows up as one row whose root is not the callee.
    roots = (await client.call("engine::traces::list", {"trace_id": callee["trace_id"]}))["result"]
    assert "execute tel::add" not in [s["name"] for s in roots["spans"]]
    assert roots["storage"]["archive"] == "disabled"


# The Node SDK exports its worker gauges; the Python SDK 0.25.0 has them but never registers them
# (nothing calls its `register_worker_gauges`), so its workers have no latest_metrics.
@pytest.mark.parametrize("runtime", ["node"])
async def test_worker_gauges_become_latest_metrics(workers, engine, runtime):
    owner = await workers.start(runtime, "tel-gauges", "--fn", "tel::echo=echo", "--metrics-ms", "300", "--stay")
    await owner.key("ready")
    client = await RawClient.connect(engine.url)

    async def row() -> Any:
        rows = (await client.call("engine::workers::list", {}))["result"]["workers"]
        return next((w for w in rows if w["name"] == "tel-gauges"), None)

    listed = await poll(row, lambda w: w is not None and "latest_metrics" in w and "memory_rss" in w["latest_metrics"])
    latest = listed["latest_metrics"]
    assert latest["memory_rss"] > 1024 * 1024 and isinstance(latest["memory_rss"], int)
    assert latest["timestamp_ms"] > 1_600_000_000_000
    info = (await client.call("engine::workers::info", {"name": "tel-gauges"}))["result"]["worker"]
    assert info["latest_metrics"]["memory_rss"] > 0
    metrics = (await client.call("engine::metrics::list", {"metric_name": "iii.worker.memory.rss"}))["result"]
    assert metrics["sdk_metrics"] and all(m["name"] == "iii.worker.memory.rss" for m in metrics["sdk_metrics"])
    assert metrics["sdk_metrics"][0]["metric_type"] == "gauge"
    # Other workers (the module rows) have none.
    rows = (await client.call("engine::workers::list", {}))["result"]["workers"]
    assert all("latest_metrics" not in w for w in rows if w["runtime"] == "engine")
