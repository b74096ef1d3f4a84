"""OTLP/JSON reading: the SDKs' ``OTLP`` / ``LOGS`` / ``MTRC`` documents as the stores keep them.

Lenient, as the SDKs write it (telemetry.md §1.3): camelCase keys, every list optional, 64-bit
numbers as JSON numbers or decimal strings, ``null`` strings read as ``""``. A record missing
what it cannot do without (a span's ids or name) is skipped, never the whole document.
"""

from __future__ import annotations

import re
from typing import Any, Iterator, Optional

import msgspec

__all__ = [
    "any_value_json",
    "any_value_text",
    "attributes_json",
    "attributes_text",
    "logs_of",
    "metrics_of",
    "spans_of",
    "strip_ansi",
    "uint",
]

_ANSI = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]")
_ZERO_IDS = {"", "0" * 16, "0" * 32}
_STATUS = {1: "ok", 2: "error"}


def strip_ansi(text: str) -> str:
    return _ANSI.sub("", text) if "\x1b" in text else text


def uint(value: Any) -> int:
    """A 64-bit count or time: a JSON number or a decimal string; anything else is 0."""
    if isinstance(value, bool):
        return 0
    if isinstance(value, (int, float)):
        return max(0, int(value))
    if isinstance(value, str):
        try:
            return max(0, int(value))
        except ValueError:
            return 0
    return 0


def _text(value: Any) -> str:
    return value if isinstance(value, str) else ""


def _list(value: Any) -> list:
    return value if isinstance(value, list) else []


def _dict(value: Any) -> dict:
    return value if isinstance(value, dict) else {}


def _id(value: Any) -> Optional[str]:
    text = _text(value).lower()
    return None if text in _ZERO_IDS else text


def any_value_json(value: Any) -> Any:
    """An OTLP ``AnyValue`` as a JSON value (lists and maps as arrays and objects)."""
    value = _dict(value)
    if "stringValue" in value:
        return _text(value["stringValue"])
    if "boolValue" in value:
        return bool(value["boolValue"])
    if "intValue" in value:
        raw = value["intValue"]
        try:
            return int(raw)
        except (TypeError, ValueError):
            return None
    if "doubleValue" in value:
        raw = value["doubleValue"]
        return float(raw) if isinstance(raw, (int, float, str)) and raw != "" else None
    if "arrayValue" in value:
        return [any_value_json(v) for v in _list(_dict(value["arrayValue"]).get("values"))]
    if "kvlistValue" in value:
        return attributes_json(_dict(value["kvlistValue"]).get("values"))
    if "bytesValue" in value:
        return _text(value["bytesValue"])
    return None


def any_value_text(value: Any) -> str:
    """An ``AnyValue`` rendered as text: primitives as text, lists and maps as compact JSON."""
    decoded = any_value_json(value)
    if isinstance(decoded, str):
        return decoded
    if isinstance(decoded, bool):
        return "true" if decoded else "false"
    if decoded is None:
        return ""
    if isinstance(decoded, (int, float)):
        return repr(decoded) if isinstance(decoded, float) else str(decoded)
    return msgspec.json.encode(decoded).decode()


def attributes_json(items: Any) -> dict[str, Any]:
    return {_text(a.get("key")): any_value_json(a.get("value")) for a in _list(items) if isinstance(a, dict)}


def attributes_text(items: Any) -> list[list[str]]:
    return [[_text(a.get("key")), any_value_text(a.get("value"))] for a in _list(items) if isinstance(a, dict)]


def _resource(resource_entry: dict) -> tuple[dict[str, str], str]:
    """A resource's attributes as text, and its ``service.name`` (else ``unknown``)."""
    resource = dict(attributes_text(_dict(resource_entry.get("resource")).get("attributes")))
    return resource, resource.get("service.name") or "unknown"


def _scope(scope_entry: dict, record: dict) -> None:
    scope = _dict(scope_entry.get("scope"))
    if _text(scope.get("name")):
        record["instrumentation_scope_name"] = scope["name"]
    if _text(scope.get("version")):
        record["instrumentation_scope_version"] = scope["version"]


def spans_of(document: Any) -> Iterator[dict[str, Any]]:
    """The spans of an ``ExportTraceServiceRequest``, as stored spans (telemetry.md §2.1)."""
    for resource_spans in _list(_dict(document).get("resourceSpans")):
        resource_spans = _dict(resource_spans)
        _, service_name = _resource(resource_spans)
        for scope_spans in _list(resource_spans.get("scopeSpans")):
            scope_spans = _dict(scope_spans)
            for span in _list(scope_spans.get("spans")):
                span = _dict(span)
                trace_id, span_id, name = _id(span.get("traceId")), _id(span.get("spanId")), _text(span.get("name"))
                if not trace_id or not span_id or not name:
                    continue
                status = _dict(span.get("status"))
                code = status.get("code")
                record: dict[str, Any] = {
                    "trace_id": trace_id,
                    "span_id": span_id,
                    "parent_span_id": _id(span.get("parentSpanId")),
                    "name": name,
                    "start_time_unix_nano": uint(span.get("startTimeUnixNano")),
                    "end_time_unix_nano": uint(span.get("endTimeUnixNano")),
                    "status": _STATUS.get(code if isinstance(code, int) else uint(code), "unset"),
                    "attributes": attributes_text(span.get("attributes")),
                    "service_name": service_name,
                    "events": [
                        {
                            "name": _text(event.get("name")),
                            "timestamp_unix_nano": uint(event.get("timeUnixNano")),
                            "attributes": attributes_text(event.get("attributes")),
                        }
                        for event in map(_dict, _list(span.get("events")))
                    ],
                    "links": [
                        {
                            "trace_id": _text(link.get("traceId")),
                            "span_id": _text(link.get("spanId")),
                            "trace_state": _text(link.get("traceState")) or None,
                            "attributes": attributes_text(link.get("attributes")),
                        }
                        for link in map(_dict, _list(span.get("links")))
                    ],
                }
                if _text(status.get("message")):
                    record["status_description"] = status["message"]
                _scope(scope_spans, record)
                if "flags" in span:
                    record["flags"] = uint(span["flags"])
                if _text(span.get("traceState")):
                    record["trace_state"] = span["traceState"]
                yield record


def logs_of(document: Any) -> Iterator[dict[str, Any]]:
    """The records of an ``ExportLogsServiceRequest``, as stored logs (telemetry.md §2.2)."""
    for resource_logs in _list(_dict(document).get("resourceLogs")):
        resource_logs = _dict(resource_logs)
        resource, service_name = _resource(resource_logs)
        for scope_logs in _list(resource_logs.get("scopeLogs")):
            scope_logs = _dict(scope_logs)
            for entry in map(_dict, _list(scope_logs.get("logRecords"))):
                body = any_value_json(entry.get("body"))
                attributes = attributes_json(entry.get("attributes"))
                record: dict[str, Any] = {
                    "timestamp_unix_nano": uint(entry.get("timeUnixNano")),
                    "observed_timestamp_unix_nano": uint(entry.get("observedTimeUnixNano")),
                    "severity_number": uint(entry.get("severityNumber")),
                    "severity_text": _text(entry.get("severityText")),
                    "body": body if isinstance(body, str) else ("" if body is None else msgspec.json.encode(body).decode()),
                    "attributes": attributes,
                    "trace_id": _id(entry.get("traceId")),
                    "span_id": _id(entry.get("spanId")),
                    "resource": resource,
                    "service_name": service_name,
                }
                _scope(scope_logs, record)
                yield record


def _number_point(point: dict) -> dict[str, Any]:
    if "asDouble" in point:
        raw = point["asDouble"]
        value = float(raw) if isinstance(raw, (int, float, str)) and raw != "" else 0.0
    else:
        raw = point.get("asInt")
        try:
            value = float(int(raw))
        except (TypeError, ValueError):
            value = 0.0
    return {
        "value": value,
        "attributes": attributes_text(point.get("attributes")),
        "timestamp_unix_nano": uint(point.get("timeUnixNano")),
    }


def _histogram_point(point: dict) -> dict[str, Any]:
    def number(key: str) -> Optional[float]:
        raw = point.get(key)
        return float(raw) if isinstance(raw, (int, float)) and not isinstance(raw, bool) else None

    return {
        "count": uint(point.get("count")),
        "sum": number("sum") or 0.0,
        "bucket_counts": [uint(c) for c in _list(point.get("bucketCounts"))],
        "explicit_bounds": [float(b) for b in _list(point.get("explicitBounds")) if isinstance(b, (int, float))],
        "min": number("min"),
        "max": number("max"),
        "attributes": attributes_text(point.get("attributes")),
        "timestamp_unix_nano": uint(point.get("timeUnixNano")),
    }


def metrics_of(document: Any, now_ns: int) -> Iterator[dict[str, Any]]:
    """The metrics of an ``ExportMetricsServiceRequest``, as stored metrics (telemetry.md §2.3);
    ``now_ns`` is their ingestion time."""
    for resource_metrics in _list(_dict(document).get("resourceMetrics")):
        resource_metrics = _dict(resource_metrics)
        _, service_name = _resource(resource_metrics)
        for scope_metrics in _list(resource_metrics.get("scopeMetrics")):
            scope_metrics = _dict(scope_metrics)
            for metric in map(_dict, _list(scope_metrics.get("metrics"))):
                if isinstance(metric.get("gauge"), dict):
                    kind, points = "gauge", [_number_point(_dict(p)) for p in _list(metric["gauge"].get("dataPoints"))]
                elif isinstance(metric.get("sum"), dict):
                    kind = "counter" if metric["sum"].get("isMonotonic") else "updowncounter"
                    points = [_number_point(_dict(p)) for p in _list(metric["sum"].get("dataPoints"))]
                elif isinstance(metric.get("histogram"), dict):
                    kind = "histogram"
                    points = [_histogram_point(_dict(p)) for p in _list(metric["histogram"].get("dataPoints"))]
                else:
                    continue
                record: dict[str, Any] = {
                    "name": _text(metric.get("name")),
                    "description": _text(metric.get("description")),
                    "unit": _text(metric.get("unit")),
                    "metric_type": kind,
                    "data_points": points,
                    "service_name": service_name,
                    "timestamp_unix_nano": now_ns,
                }
                _scope(scope_metrics, record)
                yield record
