"""``iii-observability`` on a sans-I/O router: telemetry frames in, the stores read back through
``engine::logs|traces|metrics|health`` with the spec's shapes, ``engine::log::*``, the ``log``
and ``trace`` trigger types, the engine's own spans and call counters, config."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional

import msgspec
import pytest

from helpers import ROOT, FakeClock, Peer, connected, make_router
from iii.config import ConfigError, parse_config
from iii.modules import observability
from iii.modules.observability import ObservabilityConfig

VECTORS = ROOT / "tests" / "data" / "vectors"
PY_SAMPLES = json.loads((VECTORS / "python-0.25.0-otel-samples.json").read_text())
NODE_SAMPLES = json.loads((VECTORS / "node-0.22.1-otel-samples.json").read_text())
T0 = 1_767_225_600_000_000_000
TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"


def engine(config: Optional[dict] = None, clock: Optional[FakeClock] = None) -> tuple[Any, Peer, Any]:
    """A router with the module (``config`` as its ``config.yaml`` block, ``None``: no entry)."""
    router = make_router()
    decoded = None if config is None else msgspec.convert(config, ObservabilityConfig)
    running = observability.install(router, decoded, scheduler=clock or FakeClock(1000.0))
    return router, Peer(router), running.observability


def frame(prefix: str, document: Any) -> bytes:
    return prefix.encode() + json.dumps(document).encode()


def span(span_id: str, name: str, parent: Optional[str] = None, start: int = 0, end: int = 1_000_000,
         trace: str = TRACE, service: str = "billing", attributes: Optional[dict] = None, status: int = 1) -> dict:
    return {
        "resource": {"attributes": [{"key": "service.name", "value": {"stringValue": service}}]},
        "scopeSpans": [{"scope": {"name": "iii-python-sdk", "version": "0.25.0"}, "spans": [{
            "traceId": trace, "spanId": span_id, "parentSpanId": parent or "", "name": name, "kind": 1,
            "startTimeUnixNano": str(T0 + start), "endTimeUnixNano": T0 + end if end else 0,
            "status": {"code": status, "message": "bad" if status == 2 else ""},
            "attributes": [{"key": k, "value": {"stringValue": v}} for k, v in (attributes or {}).items()],
        }]}],
    }


def send_spans(router: Any, *spans: dict) -> None:
    router.telemetry_frame(frame("OTLP", {"resourceSpans": list(spans)}))


def result(peer: Peer, function_id: str, data: Any = None) -> Any:
    answer = peer.result_of(function_id, data)
    assert "error" not in answer, answer
    return answer["result"]


def error(peer: Peer, function_id: str, data: Any = None) -> dict:
    return peer.result_of(function_id, data)["error"]


# --------------------------------------------------------------------------- ingestion


@pytest.mark.parametrize("samples", [PY_SAMPLES, NODE_SAMPLES], ids=["python", "node"])
def test_sdk_span_samples_are_stored_as_spec_spans(samples):
    router, peer, _ = engine()
    router.telemetry_frame(frame("OTLP", samples["OTLP"]))
    listed = result(peer, "engine::traces::list", {"search_all_spans": True, "include_internal": True})
    assert listed["total"] == len(listed["spans"]) > 0
    for row in listed["spans"]:
        assert len(row["trace_id"]) == 32 and len(row["span_id"]) == 16
        assert "parent_span_id" in row and row["status"] in ("ok", "error", "unset")
        assert all(isinstance(k, str) and isinstance(v, str) for k, v in row["attributes"])
        assert isinstance(row["start_time_unix_nano"], int) and row["end_time_unix_nano"] >= row["start_time_unix_nano"]
        assert row["service_name"] != "unknown" and row["events"] is not None and row["links"] == []
    assert listed["storage"] == {"archive": "disabled", "completeness": "complete", "known_dropped_spans": 0,
                                 "physical_bytes": 0, "max_disk_bytes": 0, "last_error": None}


def test_node_log_sample_is_stored_as_a_spec_log():
    router, peer, _ = engine()
    router.telemetry_frame(frame("LOGS", NODE_SAMPLES["LOGS"]))
    listed = result(peer, "engine::logs::list")
    assert listed["total"] == len(listed["logs"]) > 0
    record = listed["logs"][0]
    assert set(record) >= {"timestamp_unix_nano", "observed_timestamp_unix_nano", "severity_number", "severity_text",
                           "body", "attributes", "trace_id", "span_id", "resource", "service_name"}
    assert record["service_name"] == "iii-node" and record["resource"]["service.name"] == "iii-node"
    assert isinstance(record["attributes"], dict)


def test_bad_frames_are_dropped_and_the_rest_still_served():
    router, peer, module = engine()
    router.telemetry_frame(b"OTLP{not json")
    router.telemetry_frame(b"LOGS\xff\xfe")
    router.telemetry_frame(frame("OTLP", {"resourceSpans": [{"scopeSpans": [{"spans": [{"name": "no ids"}]}]}, "x"]}))
    assert module.frames_rejected == 2
    send_spans(router, span("00f067aa0ba902b7", "ok"))
    assert [s["name"] for s in result(peer, "engine::traces::list")["spans"]] == ["ok"]


def test_numbers_as_strings_nulls_and_ansi_are_read_leniently():
    router, peer, _ = engine()
    router.telemetry_frame(frame("LOGS", {"resourceLogs": [{"scopeLogs": [{"scope": {"name": None}, "logRecords": [{
        "timeUnixNano": str(T0), "severityNumber": 17, "severityText": "ERROR", "body": {"stringValue": "\x1b[31mred\x1b[0m"},
        "attributes": [{"key": "n", "value": {"intValue": "42"}}, {"key": "l", "value": {"arrayValue": {"values": [{"boolValue": True}]}}}],
        "traceId": "0" * 32, "spanId": ""}]}]}]}))
    (record,) = result(peer, "engine::logs::list")["logs"]
    assert record["body"] == "red" and record["attributes"] == {"n": 42, "l": [True]}
    assert record["trace_id"] is None and record["span_id"] is None and record["service_name"] == "unknown"
    assert record["timestamp_unix_nano"] == T0 and "instrumentation_scope_name" not in record


# --------------------------------------------------------------------------- engine::log::*


def test_engine_log_functions_store_logs_newest_first_and_paginate():
    router, peer, _ = engine({"logs_console_output": False})
    for level, message in (("info", "one"), ("warn", "two"), ("error", "three")):
        answer = peer.result_of(f"engine::log::{level}", {"message": message, "data": {"k": level}, "trace_id": TRACE,
                                                           "_caller_worker_id": "x"})
        assert "error" not in answer and answer.get("result") is None
    listed = result(peer, "engine::logs::list", {"limit": 2})
    assert listed["total"] == 3 and [log["body"] for log in listed["logs"]] == ["three", "two"]
    assert listed["query"] == {"trace_id": None, "span_id": None, "severity_min": None, "severity_text": None,
                               "start_time": None, "end_time": None, "offset": 0, "limit": 2}
    newest = listed["logs"][0]
    assert (newest["severity_number"], newest["severity_text"]) == (17, "ERROR")
    assert newest["attributes"] == {"k": "error"} and newest["service_name"] == "unknown"
    assert newest["resource"]["service.name"] == "iii" and newest["instrumentation_scope_name"] == "iii"
    assert [log["body"] for log in result(peer, "engine::logs::list", {"offset": 2})["logs"]] == ["one"]
    assert result(peer, "engine::logs::list", {"severity_min": 13})["total"] == 2
    assert result(peer, "engine::logs::list", {"severity_text": "warn"})["logs"][0]["body"] == "two"
    assert result(peer, "engine::logs::list", {"trace_id": TRACE})["total"] == 3
    assert result(peer, "engine::logs::list", {"start_time": 2**62})["total"] == 0  # ms beyond 64-bit ns
    assert error(peer, "engine::log::info", {"data": 1})["code"] == "deserialization_error"
    assert result(peer, "engine::logs::clear") == {"success": True}
    assert result(peer, "engine::logs::list")["total"] == 0


def test_log_ring_is_bounded():
    router, peer, _ = engine({"logs_max_count": 3, "logs_console_output": False})
    for index in range(5):
        peer.result_of("engine::log::info", {"message": str(index)})
    assert [log["body"] for log in result(peer, "engine::logs::list")["logs"]] == ["4", "3", "2"]


def test_log_trigger_fires_for_its_level_in_default_with_metadata():
    router, peer, _ = engine({"logs_console_output": False})
    listener = connected(router, "watcher", "watch::errors", "watch::all")
    for binding_id, function_id, level in (("b1", "watch::errors", "error"), ("b2", "watch::all", "all"), ("b3", "watch::errors", "ERROR")):
        listener.send(type="registertrigger", id=binding_id, trigger_type="log", function_id=function_id,
                      config={"level": level}, metadata={"from": binding_id})
    listener.take()
    peer.result_of("engine::log::info", {"message": "fine"})
    peer.result_of("engine::log::error", {"message": "payment failed", "data": {"order": "o-1"}, "service_name": "billing"})
    calls = [f for f in listener.take() if f["type"] == "invokefunction"]
    assert [(c["function_id"], c["data"]["body"]) for c in calls] == [
        ("watch::all", "fine"), ("watch::errors", "payment failed"), ("watch::all", "payment failed")]
    event = calls[1]["data"]
    assert event["attributes"] == {"order": "o-1"} and event["service_name"] == "billing"
    assert event["instrumentation_scope_name"] == "iii" and calls[1]["metadata"] == {"from": "b1"}


def test_trace_trigger_flushes_trace_ids_every_300ms_without_feedback():
    clock = FakeClock(1000.0)
    router, peer, _ = engine(clock=clock)
    listener = connected(router, "tracer", "watch::traces", "watch::errors")
    listener.send(type="registertrigger", id="t1", trigger_type="trace", function_id="watch::traces", config={})
    listener.send(type="registertrigger", id="t2", trigger_type="trace", function_id="watch::errors", config={"status": "ERROR"})
    listener.take()
    other = "1" * 32
    send_spans(router, span("00000000000000a1", "execute a", trace=other, status=2), span("00000000000000a2", "execute b"))
    send_spans(router, span("00000000000000a3", "loop", attributes={"function_id": "watch::traces"}, trace="2" * 32))
    send_spans(router, span("00000000000000a4", "internal", attributes={"function_id": "engine::state::get"}, trace="3" * 32))
    assert listener.take() == []
    clock.advance(0.31)
    calls = {f["function_id"]: f["data"] for f in listener.take() if f["type"] == "invokefunction"}
    assert calls == {"watch::traces": {"trace_ids": sorted([other, TRACE])}, "watch::errors": {"trace_ids": [other]}}
    clock.advance(1)
    assert listener.take() == []  # nothing new, nothing sent


# --------------------------------------------------------------------------- traces


def test_traces_list_roots_filters_sort_and_pages():
    router, peer, _ = engine()
    send_spans(
        router,
        span("00000000000000a1", "GET /orders", start=0, end=50_000_000),
        span("00000000000000a2", "execute orders::list", parent="00000000000000a1", start=1, end=40_000_000),
        span("00000000000000b1", "execute from-outside", parent="00000000000000ff", start=5, end=2_000_000,
             trace="5" * 32, service="shipping", attributes={"iii.tag.customer": "c-9"}),
        span("00000000000000c1", "call engine::x", start=9, end=3_000_000, trace="6" * 32,
             attributes={"iii.function.kind": "internal"}),
        span("00000000000000d1", "failing", start=12, end=10_000_000, trace="7" * 32, status=2),
    )
    listed = result(peer, "engine::traces::list")
    assert [s["name"] for s in listed["spans"]] == ["GET /orders", "execute from-outside", "failing"]
    assert (listed["total"], listed["offset"], listed["limit"]) == (3, 0, 100)
    assert listed["spans"][1]["trace_tags"] == {"iii.tag.customer": "c-9"} and "trace_tags" not in listed["spans"][0]
    assert listed["spans"][2]["status_description"] == "bad"
    assert "_size" not in listed["spans"][0]
    names = lambda data: [s["name"] for s in result(peer, "engine::traces::list", data)["spans"]]  # noqa: E731
    assert names({"include_internal": True})[2] == "call engine::x"
    assert names({"sort_by": "duration", "sort_order": "desc"}) == ["GET /orders", "failing", "execute from-outside"]
    assert names({"status": "ERR"}) == ["failing"]
    assert names({"service_name": "SHIP"}) == ["execute from-outside"]
    assert names({"min_duration_ms": 5, "max_duration_ms": 20}) == ["failing"]
    assert names({"offset": 1, "limit": 1}) == ["execute from-outside"]
    assert names({"search_all_spans": True, "name": "orders::list"}) == ["GET /orders", "execute orders::list"]
    assert names({"name": "orders::list"}) == []
    assert names({"trace_id": TRACE}) == ["GET /orders"]
    assert names({"exclude_attributes": [["iii.tag.customer", "c-9"]]}) == ["GET /orders", "failing"]
    assert names({"attributes": [["iii.tag.customer", "c-9"]]}) == ["execute from-outside"]


def test_traces_tree_nests_children_and_collapses_configured_spans():
    router, peer, _ = engine({"enabled": True, "exporter": "memory", "collapse_spans": [{"name": "wrap *"}]})
    send_spans(
        router,
        span("00000000000000a1", "root", start=0),
        span("00000000000000a2", "wrap it", parent="00000000000000a1", start=1),
        span("00000000000000a3", "leaf", parent="00000000000000a2", start=2),
        span("00000000000000a4", "state_triggers", parent="00000000000000a1", start=3),
    )
    tree = result(peer, "engine::traces::tree", {"trace_id": TRACE})
    (root,) = tree["roots"]
    assert root["name"] == "root" and [c["name"] for c in root["children"]] == ["leaf"]
    assert root["children"][0]["parent_span_id"] == "00000000000000a1" and root["children"][0]["children"] == []
    assert result(peer, "engine::traces::tree", {"trace_id": "9" * 32})["roots"] == []
    assert error(peer, "engine::traces::tree", {})["code"] == "deserialization_error"


def test_group_by_and_clear():
    router, peer, _ = engine()
    send_spans(router, span("00000000000000a1", "a", attributes={"session": "s1", "title": "first"}),
               span("00000000000000a2", "b", trace="8" * 32, start=5, end=9_000_000, status=2,
                    attributes={"session": "s1", "title": "second"}),
               span("00000000000000a3", "c", trace="9" * 32, attributes={"other": "x"}))
    (group,) = result(peer, "engine::traces::group_by", {"attribute": "session", "label_attribute": "title"})["groups"]
    assert group["value"] == "s1" and group["trace_ids"] == sorted([TRACE, "8" * 32])
    assert (group["span_count"], group["error_count"], group["label"], group["duration_ms"]) == (2, 1, "second", 9)
    assert result(peer, "engine::traces::clear") == {"success": True}
    assert result(peer, "engine::traces::list")["total"] == 0


def test_span_store_is_bounded_and_pending_snapshots_are_replaced():
    router, peer, module = engine({"enabled": True, "exporter": "memory", "memory_max_spans": 2})
    send_spans(router, span("00000000000000a1", "first"), span("00000000000000a2", "second", end=0))
    assert result(peer, "engine::traces::list")["spans"][1]["pending"] is True
    send_spans(router, span("00000000000000a2", "second"))
    rows = result(peer, "engine::traces::list")["spans"]
    assert [("pending" in s, s["end_time_unix_nano"] > 0) for s in rows] == [(False, True), (False, True)]
    send_spans(router, span("00000000000000a3", "third"))
    assert [s["name"] for s in result(peer, "engine::traces::list")["spans"]] == ["second", "third"]
    assert module.spans.evicted == 1


def test_the_engine_spans_a_builtin_called_with_a_traceparent():
    router, peer, _ = engine()
    parent = "00f067aa0ba902b7"
    peer.call("engine::functions::list", {}, invocation_id="c1", traceparent=f"00-{TRACE}-{parent}-01", baggage="k=v")
    peer.call("engine::functions::list", {}, invocation_id="c2")  # no traceparent: no span
    peer.call("engine::logs::list", {}, invocation_id="c3", traceparent=f"00-{TRACE}-{parent}-01")  # observability: none
    assert len([f for f in peer.take() if f["type"] == "invocationresult"]) == 3
    (own,) = result(peer, "engine::traces::list", {"search_all_spans": True, "include_internal": True})["spans"]
    assert own["name"] == "call engine::functions::list" and own["parent_span_id"] == parent
    assert own["trace_id"] == TRACE and own["status"] == "ok" and own["flags"] == 1
    assert ["iii.function.kind", "internal"] in own["attributes"] and ["baggage", "k=v"] in own["attributes"]
    assert result(peer, "engine::traces::list")["total"] == 0  # internal: hidden by default


# --------------------------------------------------------------------------- metrics, health


def test_metrics_list_counts_calls_and_keeps_worker_gauges():
    router, peer, _ = engine()
    owner = connected(router, "adder", "math::add")
    for index in range(3):
        peer.call("math::add", {"a": 1}, invocation_id=f"m{index}")
    for call in [f for f in owner.take() if f["type"] == "invokefunction"]:
        owner.send(type="invocationresult", invocation_id=call["invocation_id"], function_id="math::add", result={"c": 2})
    peer.result_of("engine::log::debug", {"message": "x"})
    error(peer, "engine::traces::tree", {})
    router.telemetry_frame(frame("MTRC", {"resourceMetrics": [{"scopeMetrics": [{"scope": {"name": "iii"}, "metrics": [
        {"name": "iii.worker.memory.rss", "unit": "By", "gauge": {"dataPoints": [
            {"asInt": "52428800", "timeUnixNano": str(T0), "attributes": [{"key": "worker.id", "value": {"stringValue": owner.id}}]}]}},
        {"name": "iii.worker.cpu.percent", "gauge": {"dataPoints": [
            {"asDouble": 12.5, "timeUnixNano": str(T0), "attributes": [{"key": "worker.id", "value": {"stringValue": owner.id}}]}]}},
        {"name": "requests", "sum": {"isMonotonic": True, "dataPoints": [{"asInt": 3}]}},
        {"name": "latency", "histogram": {"dataPoints": [{"count": "2", "sum": 3.0, "bucketCounts": ["1", "1"], "explicitBounds": [1.0]}]}},
        {"name": "nothing"},
    ]}]}]}))
    listed = result(peer, "engine::metrics::list")
    invocations = listed["engine_metrics"]["invocations"]
    assert invocations["deferred"] == 3 and invocations["by_function"]["math::add"] == 3
    assert invocations["error"] == 1 and invocations["success"] >= 2  # the log, the list itself…
    assert listed["engine_metrics"]["workers"] == {"spawns": 2, "deaths": 0, "active": 2}
    assert set(listed["engine_metrics"]["performance"]) >= {"avg_duration_ms", "p99_duration_ms"}
    kinds = {m["name"]: m["metric_type"] for m in listed["sdk_metrics"]}
    assert kinds == {"iii.worker.memory.rss": "gauge", "iii.worker.cpu.percent": "gauge", "requests": "counter", "latency": "histogram"}
    histogram = next(m for m in listed["sdk_metrics"] if m["name"] == "latency")["data_points"][0]
    assert histogram["count"] == 2 and histogram["bucket_counts"] == [1, 1] and "value" not in histogram
    assert "query" not in listed
    # The gauges are too old (T0 is in the past) to be latest_metrics; fresh ones are.
    rows = result(peer, "engine::workers::list")["workers"]
    assert all("latest_metrics" not in w for w in rows)
    fresh = router.telemetry
    fresh._worker_gauge({"name": "iii.worker.memory.rss", "timestamp_unix_nano": 0, "data_points": [
        {"value": 1024.0, "attributes": [["worker.id", owner.id]], "timestamp_unix_nano": observability._now_ns()}]})
    (row,) = [w for w in result(peer, "engine::workers::list")["workers"] if w["id"] == owner.id]
    assert row["latest_metrics"]["memory_rss"] == 1024 and row["latest_metrics"]["runtime"] == "node"
    assert error(peer, "engine::metrics::list", {"start_time": 2**62, "end_time": 2**62})["code"] == "time_value_overflow"


def test_health_check_shapes():
    router, peer, _ = engine()
    peer.result_of("engine::log::info", {"message": "x"})
    health = result(peer, "engine::health::check")
    assert health["status"] == "healthy" and health["version"]
    assert health["components"]["otel"]["details"] == {"enabled": True, "service_name": "iii", "exporter": "Some(Memory)"}
    assert health["components"]["logs"]["details"] == {"stored_logs": 1}
    assert health["components"]["spans"]["details"]["stored_spans"] == 0


def test_disabled_module_answers_empty_shapes_and_leaves_log_bindings_parked():
    router, peer, module = engine({"enabled": False})
    send_spans(router, span("00000000000000a1", "dropped"))
    answer = peer.result_of("engine::log::info", {"message": "x"})
    assert "error" not in answer and answer.get("result") is None
    assert result(peer, "engine::logs::list") == {"logs": [], "total": 0, "timestamp": result(peer, "engine::logs::list")["timestamp"]}
    assert result(peer, "engine::logs::clear") == {"success": True, "message": "No log storage initialized"}
    assert error(peer, "engine::traces::list") == {
        "code": "memory_exporter_not_enabled",
        "message": "In-memory span storage is not available. Set exporter: memory or both in config."}
    components = result(peer, "engine::health::check")["components"]
    assert all(c == {"status": "disabled", "details": None} for c in components.values())
    assert ("default", "log") not in router.trigger_types


def test_a_block_that_omits_enabled_has_logs_but_no_span_store(monkeypatch):
    monkeypatch.delenv("OTEL_ENABLED", raising=False)
    router, peer, _ = engine({"service_name": "iii-test"})
    peer.result_of("engine::log::info", {"message": "kept"})
    assert result(peer, "engine::logs::list")["total"] == 1
    assert error(peer, "engine::traces::list")["code"] == "memory_exporter_not_enabled"


# --------------------------------------------------------------------------- config


SDK_FIXTURE_BLOCK = """\
workers:
  - name: iii-observability
    config:
      enabled: ${OTEL_ENABLED:true}
      service_name: ${OTEL_SERVICE_NAME:iii-test}
      exporter: ${OTEL_EXPORTER_TYPE:memory}
      sampling_ratio: 1.0
      memory_max_spans: ${OTEL_MEMORY_MAX_SPANS:10000}
      metrics_enabled: true
      metrics_exporter: memory
      metrics_retention_seconds: 3600
      metrics_max_count: 10000
      logs_enabled: true
      logs_exporter: memory
      logs_max_count: 1000
      logs_retention_seconds: 3600
      logs_sampling_ratio: 1.0
      logs_console_output: false
"""


def test_the_sdk_fixture_block_is_accepted(tmp_path, monkeypatch):
    for name in ("OTEL_ENABLED", "OTEL_SERVICE_NAME", "OTEL_EXPORTER_TYPE", "OTEL_MEMORY_MAX_SPANS"):
        monkeypatch.delenv(name, raising=False)
    config = parse_config(SDK_FIXTURE_BLOCK, tmp_path / "config.yaml")
    settings = observability.resolve(config.modules["iii-observability"])
    assert (settings.enabled, settings.traces_enabled, settings.exporter) == (True, True, "memory")
    assert (settings.service_name, settings.memory_max_spans, settings.logs_console_output) == ("iii-test", 10000, False)


@pytest.mark.parametrize("block, refusal", [
    ("{exporter: zipkin}", "exporter must be memory, otlp or both"),
    ("{alerts: [{name: a}]}", "alerts: not implemented"),
    ("{logs_exporter: otlp}", "only `memory` is implemented"),
    ("{trace_storage: {enabled: true}}", "trace_storage"),
    ("{logs_sampling_ratio: 2}", "logs_sampling_ratio"),
    ("{level: debug}", "level: not implemented"),
])
def test_what_is_not_implemented_is_refused(tmp_path, block, refusal):
    with pytest.raises(ConfigError, match=refusal):
        parse_config(f"workers:\n  - name: iii-observability\n    config: {block}\n", tmp_path / "config.yaml")


def test_calls_the_engine_makes_for_a_traced_call_continue_its_trace():
    """A traced ``publish``: the subscriber's call carries the engine's span as its parent (and the
    caller's baggage), so the trace goes on in the worker."""
    from iii.modules import pubsub

    router = make_router()
    pubsub.install(router)
    running = observability.install(router, None, scheduler=FakeClock(1000.0))
    subscriber = connected(router, "sub", "on::order")
    subscriber.send(type="registertrigger", id="s1", trigger_type="subscribe", function_id="on::order", config={"topic": "orders"})
    publisher = Peer(router)
    caller_span = "00f067aa0ba902b7"
    publisher.call("publish", {"topic": "orders", "data": {"id": 1}}, invocation_id="p1",
                   traceparent=f"00-{TRACE}-{caller_span}-01", baggage="tenant=acme")
    router.flush_events()  # the fan-out runs after the publish
    (delivered,) = [f for f in subscriber.take() if f["type"] == "invokefunction"]
    (engine_span,) = running.observability.spans.spans.values()
    assert engine_span["name"] == "call publish" and engine_span["parent_span_id"] == caller_span
    assert delivered["traceparent"] == f"00-{TRACE}-{engine_span['span_id']}-01"
    assert delivered["baggage"] == "tenant=acme"
    publisher.call("publish", {"topic": "orders", "data": {"id": 2}}, invocation_id="p2")  # untraced: nothing
    router.flush_events()
    (untraced,) = [f for f in subscriber.take() if f["type"] == "invokefunction"]
    assert "traceparent" not in untraced and router.trace_context is None


def test_span_store_bytes_are_capped_down_to_the_low_watermark():
    router, peer, module = engine({"enabled": True, "exporter": "memory", "memory_max_bytes": 20_000})
    for index in range(40):
        send_spans(router, span(f"{index + 1:016x}", "x" * 500, trace=f"{index + 1:032x}"))
    store = module.spans
    assert store.bytes <= 20_000 and store.evicted > 0
    assert len(store.spans) < 40 and sum(len(t) for t in store.by_trace.values()) == len(store.spans)
    names = result(peer, "engine::traces::list", {"limit": 1000})["spans"]
    assert names[-1]["trace_id"] == f"{40:032x}"  # the newest kept, the oldest gone
