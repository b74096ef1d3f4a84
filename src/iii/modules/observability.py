"""Observability (``iii-observability``): the SDKs' logs, spans and metrics, kept and served.

The engine hands every ``OTLP`` / ``LOGS`` / ``MTRC`` frame it receives (on ``/otel`` or ``/``)
to the sink this module installs through :meth:`Host.set_telemetry`; the module decodes it and
keeps it in bounded in-memory stores (sizes from the config), read back by ``engine::logs::*``,
``engine::traces::*``, ``engine::metrics::list`` and ``engine::health::check``
(telemetry.md §4). ``engine::log::*`` writes a log; trigger type ``log`` fires for every stored
log of a level, ``trace`` every 300 ms with the trace ids of new spans. Workers' ``iii.worker.*``
gauges become their ``latest_metrics``. The engine records its own ``call <function>`` span for a
built-in whose caller sent a ``traceparent`` (:meth:`TelemetrySink.trace_call`); calls it routes
to workers carry the caller's context unchanged and cost nothing here.

Optional: a Prometheus page (``prometheus_port``) and OTLP/HTTP export of the spans to a
collector (``exporter: otlp|both``, ``endpoint``), both off by default.
"""

from __future__ import annotations

import fnmatch
import logging
import os
import random
import threading
import time
from collections import OrderedDict, deque
from typing import Any, Callable, Optional, Union

import msgspec
from msgspec import UNSET, Meta, UnsetType
from typing_extensions import Annotated

from iii import codec
from iii._version import __version__
from iii.engine.host import (
    BuiltinModule,
    Connection,
    EngineError,
    ErrorBody,
    Host,
    LoopScheduler,
    Provider,
    Scheduler,
    parse_input,
)
from iii.modules import _otlp

__all__ = ["MODULE", "ObservabilityConfig", "Observability", "install"]

NAME = "iii-observability"
DEFAULT_NAMESPACE = "default"
log = logging.getLogger("iii.modules.observability")

_SEVERITIES = {"trace": (1, "TRACE"), "debug": (5, "DEBUG"), "info": (9, "INFO"), "warn": (13, "WARN"), "error": (17, "ERROR")}
_SEVERITY_OF_LEVEL = {logging.INFO: (9, "INFO"), logging.WARNING: (13, "WARN"), logging.ERROR: (17, "ERROR")}
_PY_LEVEL = {"trace": logging.DEBUG, "debug": logging.DEBUG, "info": logging.INFO, "warn": logging.WARNING, "error": logging.ERROR}
#: Functions that never get an engine span and never feed the ``trace`` trigger.
_OBSERVABILITY_PREFIXES = tuple(
    f"engine::{group}::" for group in ("traces", "logs", "log", "metrics", "baggage", "sampling", "health", "alerts", "rollups")
) + ("iii-observability::",)
_TRACE_FLUSH_S = 0.3
_SWEEP_S = 60.0
_WORKER_METRICS_AGE_NS = 120 * 10**9
_DEFAULT_MAX_BYTES = 256 * 1024 * 1024
_U64 = 2**64 - 1
#: ``iii.worker.*`` gauge -> its ``latest_metrics`` field, and whether it is an integer.
_WORKER_GAUGES = {
    "iii.worker.cpu.percent": ("cpu_percent", False),
    "iii.worker.cpu.user_micros": ("cpu_user_micros", True),
    "iii.worker.cpu.system_micros": ("cpu_system_micros", True),
    "iii.worker.memory.rss": ("memory_rss", True),
    "iii.worker.memory.heap_used": ("memory_heap_used", True),
    "iii.worker.memory.heap_total": ("memory_heap_total", True),
    "iii.worker.memory.external": ("memory_external", True),
    "iii.worker.event_loop.lag_ms": ("event_loop_lag_ms", False),
    "iii.worker.uptime_seconds": ("uptime_seconds", True),
}
_NO_ARCHIVE = {"archive": "disabled", "completeness": "complete", "known_dropped_spans": 0,
               "physical_bytes": 0, "max_disk_bytes": 0, "last_error": None}
_NO_SPAN_STORE = ("memory_exporter_not_enabled",
                  "In-memory span storage is not available. Set exporter: memory or both in config.")

Ratio = Annotated[float, Meta(ge=0.0, le=1.0)]
Count = Annotated[int, Meta(ge=0)]


class ObservabilityConfig(msgspec.Struct, forbid_unknown_fields=True):
    """The ``iii-observability`` entry's ``config`` (telemetry.md §7). A key the block omits falls
    back to its environment variable, then to the per-key default (:meth:`resolved`)."""

    enabled: Union[bool, UnsetType] = UNSET
    service_name: Union[str, UnsetType] = UNSET
    service_version: Union[str, UnsetType] = UNSET
    service_namespace: Union[str, UnsetType] = UNSET
    #: Where spans go: ``memory`` (the store the console reads), ``otlp`` (a collector), ``both``.
    exporter: Union[str, UnsetType] = UNSET
    #: The OTLP/HTTP collector (``http://host:4318``); spans go to ``<endpoint>/v1/traces``.
    endpoint: Union[str, UnsetType] = UNSET
    sampling_ratio: Union[Ratio, UnsetType] = UNSET
    sampling: Union[dict, UnsetType] = UNSET
    memory_max_spans: Union[Count, UnsetType] = UNSET
    #: Bytes the span store may hold (≈; oldest spans are evicted to 75 % beyond it).
    memory_max_bytes: Union[Annotated[int, Meta(ge=1024)], UnsetType] = UNSET
    live_spans: Union[bool, UnsetType] = UNSET
    metrics_enabled: Union[bool, UnsetType] = UNSET
    metrics_exporter: Union[str, UnsetType] = UNSET
    metrics_retention_seconds: Union[Count, UnsetType] = UNSET
    metrics_max_count: Union[Count, UnsetType] = UNSET
    logs_enabled: Union[bool, UnsetType] = UNSET
    logs_exporter: Union[str, UnsetType] = UNSET
    logs_max_count: Union[Count, UnsetType] = UNSET
    logs_retention_seconds: Union[Count, UnsetType] = UNSET
    logs_batch_size: Union[Count, UnsetType] = UNSET
    logs_flush_interval_ms: Union[Count, UnsetType] = UNSET
    logs_sampling_ratio: Union[Ratio, UnsetType] = UNSET
    logs_console_output: Union[bool, UnsetType] = UNSET
    alerts: Union[list, UnsetType] = UNSET
    level: Union[str, UnsetType] = UNSET
    format: Union[str, UnsetType] = UNSET
    collapse_spans: Union[list[dict[str, str]], UnsetType] = UNSET
    #: The Prometheus page (``GET /metrics``) on this port; off unless set (the original: 9464).
    prometheus_port: Union[Annotated[int, Meta(ge=0, le=65535)], UnsetType] = UNSET
    prometheus_host: Union[str, UnsetType] = UNSET

    def __post_init__(self) -> None:
        if self.exporter not in (UNSET, "memory", "otlp", "both"):
            raise ValueError(f"exporter must be memory, otlp or both, got {self.exporter!r}")
        for key in ("metrics_exporter", "logs_exporter"):
            value = getattr(self, key)
            if value is not UNSET and value != "memory":
                raise ValueError(f"{key}: only `memory` is implemented by this engine, got {value!r}")
        for key in ("sampling", "alerts"):  # refused rather than ignored
            if getattr(self, key) not in (UNSET, [], {}):
                raise ValueError(f"{key}: not implemented by this engine; remove it")
        for key, why in (("logs_batch_size", "logs are not exported"), ("logs_flush_interval_ms", "logs are not exported"),
                         ("level", "the engine's log level is the iii command's"),
                         ("format", "the engine's log format is the iii command's")):
            if getattr(self, key) is not UNSET:
                raise ValueError(f"{key}: not implemented by this engine ({why}); remove it")


class Settings(msgspec.Struct, kw_only=True):
    """The effective settings (every key resolved)."""

    enabled: bool
    #: ``enabled`` was set explicitly (the trace pipeline and ``health`` go by that).
    traces_enabled: bool
    service_name: str
    service_version: str
    service_namespace: Optional[str]
    exporter: str
    endpoint: str
    sampling_ratio: float
    memory_max_spans: int
    memory_max_bytes: int
    live_spans: bool
    metrics_retention_seconds: int
    metrics_max_count: int
    logs_enabled: bool
    logs_max_count: int
    logs_retention_seconds: int
    logs_sampling_ratio: float
    logs_console_output: bool
    collapse_spans: list[dict[str, str]]
    prometheus_port: Optional[int]
    prometheus_host: str


def _env_bool(name: str) -> Optional[bool]:
    value = os.environ.get(name)
    return None if value is None else value.strip().lower() in ("true", "1", "yes", "on")


def _env_int(name: str) -> Optional[int]:
    try:
        return int(os.environ[name])
    except (KeyError, ValueError):
        return None


def resolve(config: Optional[ObservabilityConfig]) -> Settings:
    """The effective settings: with no entry the built-in block (enabled, memory, 1 000 000
    spans); with one, each omitted key from its environment variable, then its default."""
    builtin = config is None
    c = config or ObservabilityConfig()

    def pick(value: Any, env: Any, builtin_default: Any, block_default: Any) -> Any:
        if value is not UNSET:
            return value
        if env is not None:
            return env
        return builtin_default if builtin else block_default

    enabled_env = _env_bool("OTEL_ENABLED")
    traces_enabled = pick(c.enabled, enabled_env, True, False)
    exporter_env = os.environ.get("OTEL_EXPORTER_TYPE")
    if exporter_env is not None:
        exporter_env = exporter_env if exporter_env in ("memory", "both") else "otlp"
    exporter = pick(c.exporter, exporter_env, "memory", "otlp")
    ratio_env = os.environ.get("OTEL_TRACES_SAMPLER_ARG")
    try:
        ratio_from_env = float(ratio_env) if ratio_env is not None else None
    except ValueError:
        ratio_from_env = None
    live_env = _env_bool("OTEL_LIVE_SPANS")
    prometheus_port = c.prometheus_port if c.prometheus_port is not UNSET else _env_int("III_PROMETHEUS_PORT")
    return Settings(
        enabled=c.enabled is not False,
        traces_enabled=bool(traces_enabled),
        service_name=pick(c.service_name, os.environ.get("OTEL_SERVICE_NAME"), "iii", "iii"),
        service_version=pick(c.service_version, os.environ.get("SERVICE_VERSION"), __version__, "unknown"),
        service_namespace=pick(c.service_namespace, os.environ.get("SERVICE_NAMESPACE"), None, None),
        exporter=exporter,
        endpoint=pick(c.endpoint, os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT"), "http://localhost:4318", "http://localhost:4318"),
        sampling_ratio=min(1.0, max(0.0, pick(c.sampling_ratio, ratio_from_env, 1.0, 1.0))),
        memory_max_spans=pick(c.memory_max_spans, _env_int("OTEL_MEMORY_MAX_SPANS"), 1_000_000, 1000) or 1000,
        memory_max_bytes=c.memory_max_bytes if c.memory_max_bytes is not UNSET else _DEFAULT_MAX_BYTES,
        live_spans=pick(c.live_spans, live_env, exporter == "memory", exporter == "memory"),
        metrics_retention_seconds=pick(c.metrics_retention_seconds, _env_int("OTEL_METRICS_RETENTION_SECONDS"), 3600, 3600),
        metrics_max_count=pick(c.metrics_max_count, _env_int("OTEL_METRICS_MAX_COUNT"), 10_000, 10_000) or 10_000,
        logs_enabled=pick(c.logs_enabled, None, True, True),
        logs_max_count=max(1, pick(c.logs_max_count, None, 1000, 1000)),
        logs_retention_seconds=pick(c.logs_retention_seconds, None, 3600, 0),
        logs_sampling_ratio=pick(c.logs_sampling_ratio, None, 1.0, 1.0),
        logs_console_output=pick(c.logs_console_output, None, True, True),
        collapse_spans=pick(c.collapse_spans, None, [], []),
        prometheus_port=prometheus_port,
        prometheus_host=c.prometheus_host if c.prometheus_host is not UNSET else "127.0.0.1",
    )


# --------------------------------------------------------------------------- inputs


class LogInput(msgspec.Struct):
    message: str
    data: Any = None
    trace_id: Union[str, None] = None
    span_id: Union[str, None] = None
    service_name: Union[str, None] = None


class LogsListInput(msgspec.Struct):
    start_time: Union[int, None] = None
    end_time: Union[int, None] = None
    trace_id: Union[str, None] = None
    span_id: Union[str, None] = None
    severity_min: Union[int, None] = None
    severity_text: Union[str, None] = None
    offset: Union[Annotated[int, Meta(ge=0)], None] = None
    limit: Union[Annotated[int, Meta(ge=0)], None] = None


class TracesListInput(msgspec.Struct):
    trace_id: Union[str, None] = None
    trace_ids: Union[list[str], None] = None
    offset: Union[Annotated[int, Meta(ge=0)], None] = None
    limit: Union[Annotated[int, Meta(ge=0)], None] = None
    service_name: Union[str, None] = None
    name: Union[str, None] = None
    status: Union[str, None] = None
    min_duration_ms: Union[float, None] = None
    max_duration_ms: Union[float, None] = None
    start_time: Union[int, None] = None
    end_time: Union[int, None] = None
    sort_by: Union[str, None] = None
    sort_order: Union[str, None] = None
    attributes: Union[list[list[str]], None] = None
    exclude_attributes: Union[list[list[str]], None] = None
    include_internal: Union[bool, None] = None
    search_all_spans: Union[bool, None] = None


class TreeInput(msgspec.Struct):
    trace_id: str


class GroupByInput(msgspec.Struct):
    attribute: str
    since_ms: Union[int, None] = None
    limit: Union[Annotated[int, Meta(ge=0)], None] = None
    include_internal: Union[bool, None] = None
    label_attribute: Union[str, None] = None


class MetricsListInput(msgspec.Struct):
    start_time: Union[int, None] = None
    end_time: Union[int, None] = None
    metric_name: Union[str, None] = None
    aggregate_interval: Union[Annotated[int, Meta(ge=1)], None] = None


class BaggageGetInput(msgspec.Struct):
    key: str = ""


class LogTriggerConfig(msgspec.Struct):
    level: str = "all"


class TraceTriggerConfig(msgspec.Struct):
    service_name: Union[str, None] = None
    status: Union[str, None] = None


# --------------------------------------------------------------------------- helpers


def _now_ns() -> int:
    return time.time_ns()


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


def _ms_to_ns(ms: Optional[int]) -> Optional[int]:
    """Milliseconds to nanoseconds; raises :class:`OverflowError` beyond 64 bits."""
    if ms is None:
        return None
    ns = ms * 1_000_000
    if ns > _U64 or ns < 0:
        raise OverflowError
    return ns


def _attribute(span: dict, key: str) -> Optional[str]:
    for k, v in span["attributes"]:
        if k == key:
            return v
    return None


def is_internal(span: dict) -> bool:
    """An engine-internal span (telemetry.md §2.1)."""
    for k, v in span["attributes"]:
        if (k == "iii.function.kind" and v == "internal") or (k == "function_id" and v.startswith("engine::")):
            return True
    return False


def _is_observability(function_id: Optional[str]) -> bool:
    return bool(function_id) and function_id.startswith(_OBSERVABILITY_PREFIXES)  # type: ignore[union-attr]


def _span_size(span: dict) -> int:
    """About what a stored span costs in memory (for the byte cap)."""
    size = 1200 + len(span["name"])  # the dict, its ids and numbers
    for k, v in span["attributes"]:
        size += 150 + len(k) + len(v)
    for event in span["events"]:
        size += 400 + sum(150 + len(k) + len(v) for k, v in event["attributes"])
    return size


def _traceparent_ids(traceparent: str) -> Optional[tuple[str, str, str]]:
    """``(trace_id, parent_span_id, flags)`` of a W3C ``traceparent``, or ``None`` if invalid."""
    parts = traceparent.strip().split("-")
    if len(parts) < 4 or len(parts[1]) != 32 or len(parts[2]) != 16:
        return None
    trace_id, span_id = parts[1].lower(), parts[2].lower()
    if trace_id == "0" * 32 or span_id == "0" * 16:
        return None
    try:
        int(trace_id, 16), int(span_id, 16)
    except ValueError:
        return None
    return trace_id, span_id, parts[3]


# --------------------------------------------------------------------------- stores


class LogStore:
    """A bounded ring of stored logs (oldest dropped)."""

    def __init__(self, max_count: int) -> None:
        self.records: deque[dict[str, Any]] = deque(maxlen=max_count)

    def add(self, record: dict[str, Any]) -> None:
        self.records.append(record)

    def sweep(self, older_than_ns: int) -> None:
        self.records = deque(
            (r for r in self.records if (r["timestamp_unix_nano"] or r["observed_timestamp_unix_nano"]) >= older_than_ns),
            maxlen=self.records.maxlen,
        )


class SpanStore:
    """Spans by ``(trace_id, span_id)`` in arrival order, capped by count and by bytes (oldest
    evicted, down to 75 % of the byte cap under pressure); pending snapshots are replaced in place
    when their span ends."""

    def __init__(self, max_spans: int, max_bytes: int) -> None:
        self.max_spans = max_spans
        self.max_bytes = max_bytes
        self.spans: OrderedDict[tuple[str, str], dict[str, Any]] = OrderedDict()
        self.by_trace: dict[str, dict[str, dict[str, Any]]] = {}
        self.bytes = 0
        self.evicted = 0

    def add(self, span: dict[str, Any]) -> None:
        key = (span["trace_id"], span["span_id"])
        old = self.spans.get(key)
        if old is not None:
            if span.get("pending") and not old.get("pending"):
                return  # a late start snapshot never replaces the finished span
            self.bytes -= old["_size"]
            self.spans[key] = span  # in place: keeps its arrival position
        else:
            self.spans[key] = span
        span["_size"] = size = _span_size(span)
        self.bytes += size
        self.by_trace.setdefault(key[0], {})[key[1]] = span
        if len(self.spans) > self.max_spans:
            self._evict_to(self.max_spans, self.max_bytes)
        elif self.bytes > self.max_bytes:
            self._evict_to(self.max_spans, int(self.max_bytes * 0.75))

    def _evict_to(self, count: int, size: int) -> None:
        while self.spans and (len(self.spans) > count or self.bytes > size):
            (trace_id, span_id), span = self.spans.popitem(last=False)
            self.bytes -= span["_size"]
            self.evicted += 1
            trace = self.by_trace.get(trace_id)
            if trace is not None:
                trace.pop(span_id, None)
                if not trace:
                    del self.by_trace[trace_id]

    def clear(self) -> None:
        self.spans.clear()
        self.by_trace.clear()
        self.bytes = 0


def _public(span: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in span.items() if k != "_size"}


class EngineLogs(logging.Handler):
    """The engine's own log lines (logger ``iii``, INFO and up) as stored logs, as the original
    keeps them: only those written on the engine's thread, never this module's own (it echoes
    ``engine::log::*`` there), and none written while a ``log`` binding is being called."""

    def __init__(self, observability: "Observability") -> None:
        super().__init__(logging.INFO)
        self.observability = observability
        self.thread = threading.get_ident()
        self.busy = False

    def emit(self, record: logging.LogRecord) -> None:
        if self.busy or threading.get_ident() != self.thread or record.name == log.name:
            return
        self.busy = True
        try:
            severity_number, severity_text = _SEVERITY_OF_LEVEL.get(record.levelno, (17, "ERROR"))
            stamp = int(record.created * 1e9)
            observability = self.observability
            observability.add_log({
                "timestamp_unix_nano": stamp, "observed_timestamp_unix_nano": stamp,
                "severity_number": severity_number, "severity_text": severity_text,
                "body": _otlp.strip_ansi(record.getMessage()),
                "attributes": {"target": record.name, "module_path": record.module},
                "trace_id": None, "span_id": None, "resource": dict(observability.resource),
                "service_name": observability.settings.service_name,
                "instrumentation_scope_name": "iii", "instrumentation_scope_version": __version__,
            })
        except Exception:  # a log line must never fail whoever wrote it
            pass
        finally:
            self.busy = False



class LogTrigger(Provider[LogTriggerConfig]):
    """Trigger type ``log``: every stored log of the binding's level (or ``all``)."""


class TraceTrigger(Provider[TraceTriggerConfig]):
    """Trigger type ``trace``: every 300 ms, the trace ids of the spans that came in."""


# --------------------------------------------------------------------------- the module


class Observability:
    """The stores, the engine's telemetry sink and the ``engine::*`` observability functions."""

    def __init__(self, host: Host, settings: Settings, scheduler: Scheduler) -> None:
        self.host = host
        self.settings = settings
        self.scheduler = scheduler
        enabled = settings.enabled
        self.logs: Optional[LogStore] = LogStore(settings.logs_max_count) if enabled and settings.logs_enabled else None
        self.metrics: Optional[deque[dict[str, Any]]] = deque(maxlen=settings.metrics_max_count) if enabled else None
        self.spans: Optional[SpanStore] = (
            SpanStore(settings.memory_max_spans, settings.memory_max_bytes)
            if enabled and settings.traces_enabled and settings.exporter in ("memory", "both") else None
        )
        #: worker id -> ``latest_metrics`` (newest values of its ``iii.worker.*`` gauges).
        self.worker_gauges: dict[str, dict[str, Any]] = {}
        self.log_trigger = LogTrigger(host, LogTriggerConfig, 30_000)
        self.trace_trigger = TraceTrigger(host, TraceTriggerConfig, 30_000)
        #: Spans of the current ``trace`` window.
        self._window: list[dict[str, Any]] = []
        self._window_timer: Any = None
        self._sweep_timer: Any = None
        self._stopped = False
        self._engine_logs: Optional[EngineLogs] = None
        self.frames_rejected = 0
        #: Spans waiting for the OTLP exporter (set by :mod:`iii.modules._export`), or ``None``.
        self.exporter: Any = None
        resource = {"service.name": settings.service_name, "service.version": settings.service_version}
        if settings.service_namespace:
            resource["service.namespace"] = settings.service_namespace
        if os.environ.get("DEPLOYMENT_ENVIRONMENT"):
            resource["deployment.environment"] = os.environ["DEPLOYMENT_ENVIRONMENT"]
        self.resource = resource

    # ---------------------------------------------------------------- the engine's sink

    def ingest(self, frame: bytes) -> None:
        """One telemetry frame (4-byte prefix + OTLP/JSON); a bad one is logged and dropped."""
        if not self.settings.enabled:
            return
        kind = frame[:4]
        try:
            document = msgspec.json.decode(frame[4:])
        except msgspec.DecodeError as exc:
            self.frames_rejected += 1
            log.warning("dropped a %s telemetry frame: %s", kind.decode("ascii", "replace"), exc)
            return
        if kind == b"OTLP":
            for span in _otlp.spans_of(document):
                self.add_span(span)
        elif kind == b"LOGS":
            if self.logs is not None:
                for record in _otlp.logs_of(document):
                    record["body"] = _otlp.strip_ansi(record["body"])
                    self.add_log(record)
        elif kind == b"MTRC":
            if self.metrics is not None:
                for metric in _otlp.metrics_of(document, _now_ns()):
                    self.metrics.append(metric)
                    if metric["name"] in _WORKER_GAUGES:
                        self._worker_gauge(metric)
        else:
            self.frames_rejected += 1
            log.warning("dropped a telemetry frame with unknown prefix %r", kind)

    def worker_metrics(self, worker_id: str) -> Optional[dict[str, Any]]:
        """The ``latest_metrics`` of a worker: its gauges of the last 2 minutes, or ``None``."""
        latest = self.worker_gauges.get(worker_id)
        if latest is None:
            return None
        if _now_ns() - latest["timestamp_ms"] * 1_000_000 > _WORKER_METRICS_AGE_NS:
            del self.worker_gauges[worker_id]
            return None
        return latest

    def trace_call(
        self, function_id: str, traceparent: str, baggage: Optional[str], on_result: Any
    ) -> tuple[Any, str]:
        """The engine's span of a built-in called with a ``traceparent``: a ``call <function>``
        span, child of the caller's, recorded when the answer is given. Returns the ``on_result``
        to use instead and the ``traceparent`` of the calls the engine makes for it (the span's;
        the caller's own when no span is kept)."""
        if self.spans is None and self.exporter is None or _is_observability(function_id):
            return on_result, traceparent
        ratio = self.settings.sampling_ratio
        if ratio < 1.0 and random.random() >= ratio:
            return on_result, traceparent
        ids = _traceparent_ids(traceparent)
        if ids is None:
            return on_result, traceparent
        trace_id, parent_id, flags = ids
        span_id = f"{random.getrandbits(64):016x}"
        started = _now_ns()
        attributes = [["function_id", function_id], ["iii.function.kind", "internal"]]
        if baggage:
            attributes.append(["baggage", baggage])

        def answered(result: bytes, error: Optional[ErrorBody]) -> None:
            span: dict[str, Any] = {
                "trace_id": trace_id, "span_id": span_id, "parent_span_id": parent_id,
                "name": f"call {function_id}", "start_time_unix_nano": started,
                "end_time_unix_nano": _now_ns(), "status": "error" if error is not None else "ok",
                "attributes": attributes, "service_name": self.settings.service_name, "events": [],
                "links": [], "instrumentation_scope_name": "iii", "instrumentation_scope_version": __version__,
            }
            try:
                span["flags"] = int(flags, 16)
            except ValueError:
                pass
            if error is not None:
                span["status_description"] = error.message
            self.add_span(span)
            if on_result is not None:
                on_result(result, error)

        return answered, f"00-{trace_id}-{span_id}-{flags}"

    # ---------------------------------------------------------------- writes

    def add_span(self, span: dict[str, Any]) -> None:
        if span["end_time_unix_nano"] == 0:
            if not self.settings.live_spans:
                return
            span["pending"] = True
        if self.exporter is not None and not span.get("pending"):
            self.exporter.add(span)
        if self.spans is None:
            return
        self.spans.add(span)
        if self.trace_trigger.bindings:
            self._window.append(span)
            if self._window_timer is None and not self._stopped:
                self._window_timer = self.scheduler.call_later(_TRACE_FLUSH_S, self._flush_window)

    def add_log(self, record: dict[str, Any]) -> None:
        """Store a log and fire the ``log`` bindings of its level."""
        assert self.logs is not None
        self.logs.add(record)
        if not self.log_trigger.bindings:
            return
        level = record["severity_text"].lower()
        payload = None
        for binding, config in list(self.log_trigger.bindings.values()):
            if config.level == "all" or config.level == level:
                if payload is None:
                    event = dict(record)
                    event.setdefault("instrumentation_scope_name", None)
                    event.setdefault("instrumentation_scope_version", None)
                    payload = codec.encode_json(event)
                self._deliver(binding, payload)

    def _deliver(self, binding: Any, payload: bytes) -> None:
        """Fire-and-forget, in ``default`` (the binding's namespace is not used), with metadata."""

        def answered(result: bytes, error: Optional[ErrorBody]) -> None:
            if error is not None:
                log.debug("trigger %s: %s failed: %s", binding.id, binding.function_id, error.message)

        self.host.invoke(
            DEFAULT_NAMESPACE, binding.function_id, payload, binding.metadata or b"",
            on_result=answered, timeout_ms=30_000,
        )

    def _worker_gauge(self, metric: dict[str, Any]) -> None:
        field, integer = _WORKER_GAUGES[metric["name"]]
        for point in metric["data_points"]:
            if "value" not in point:
                continue
            worker_id = dict(point["attributes"]).get("worker.id")
            if not worker_id:
                continue
            latest = self.worker_gauges.setdefault(worker_id, {"timestamp_ms": 0, "runtime": "node"})
            latest[field] = int(point["value"]) if integer else point["value"]
            stamp = (point["timestamp_unix_nano"] or metric["timestamp_unix_nano"]) // 1_000_000
            latest["timestamp_ms"] = max(latest["timestamp_ms"], stamp)

    def _flush_window(self) -> None:
        self._window_timer = None
        window, self._window = self._window, []
        if not window or not self.trace_trigger.bindings:
            return
        targets = {b.function_id for b, _ in self.trace_trigger.bindings.values()}
        kept = []
        for span in window:
            function_id = _attribute(span, "function_id")
            if span["parent_span_id"] is None and is_internal(span):
                continue
            if _is_observability(function_id) or function_id in targets:
                continue
            kept.append(span)
        if not kept:
            return
        for binding, config in list(self.trace_trigger.bindings.values()):
            ids = sorted({
                s["trace_id"] for s in kept
                if (config.service_name is None or s["service_name"].lower() == config.service_name.lower())
                and (config.status is None or s["status"] == config.status.lower())
            })
            if ids:
                self._deliver(binding, codec.encode_json({"trace_ids": ids}))

    def _sweep(self) -> None:
        self._sweep_timer = None
        now = _now_ns()
        if self.logs is not None and self.settings.logs_retention_seconds:
            self.logs.sweep(now - self.settings.logs_retention_seconds * 10**9)
        if self.metrics is not None and self.settings.metrics_retention_seconds:
            cutoff = now - self.settings.metrics_retention_seconds * 10**9
            while self.metrics and self.metrics[0]["timestamp_unix_nano"] < cutoff:
                self.metrics.popleft()
        for worker_id in list(self.worker_gauges):
            self.worker_metrics(worker_id)
        if not self._stopped:
            self._sweep_timer = self.scheduler.call_later(_SWEEP_S, self._sweep)

    async def start(self) -> None:
        self._sweep_timer = self.scheduler.call_later(_SWEEP_S, self._sweep)
        if self.logs is not None:
            self._engine_logs = EngineLogs(self)
            logging.getLogger("iii").addHandler(self._engine_logs)

    async def stop(self) -> None:
        self._stopped = True
        if self._engine_logs is not None:
            logging.getLogger("iii").removeHandler(self._engine_logs)
            self._engine_logs = None
        for timer in (self._sweep_timer, self._window_timer):
            if timer is not None:
                timer.cancel()

    # ---------------------------------------------------------------- functions

    def log_function(self, level: str) -> Callable[[Host, Optional[Connection], Any], None]:
        severity_number, severity_text = _SEVERITIES[level]
        function_id = f"engine::log::{level}"
        py_level = _PY_LEVEL[level]

        def write(host: Host, caller: Optional[Connection], data: Any) -> None:
            args = parse_input(function_id, data, LogInput)
            settings = self.settings
            if self.logs is None:
                return None
            if settings.logs_sampling_ratio < 1.0 and random.random() >= settings.logs_sampling_ratio:
                return None
            now = _now_ns()
            attributes = {}
            if isinstance(args.data, dict):
                attributes = {k: (_otlp.strip_ansi(v) if isinstance(v, str) else v) for k, v in args.data.items()}
            record = {
                "timestamp_unix_nano": now,
                "observed_timestamp_unix_nano": now,
                "severity_number": severity_number,
                "severity_text": severity_text,
                "body": _otlp.strip_ansi(args.message),
                "attributes": attributes,
                "trace_id": args.trace_id,
                "span_id": args.span_id,
                "resource": dict(self.resource),
                "service_name": args.service_name or "unknown",
                "instrumentation_scope_name": "iii",
                "instrumentation_scope_version": __version__,
            }
            if settings.logs_console_output:
                log.log(py_level, "[%s] %s", record["service_name"], record["body"])
            self.add_log(record)
            return None

        return write

    def logs_list(self, host: Host, caller: Optional[Connection], data: Any) -> Any:
        args = parse_input("engine::logs::list", data, LogsListInput)
        if self.logs is None:
            return {"logs": [], "total": 0, "timestamp": _now_ms()}
        query = {
            "trace_id": args.trace_id, "span_id": args.span_id, "severity_min": args.severity_min,
            "severity_text": args.severity_text, "start_time": args.start_time, "end_time": args.end_time,
            "offset": args.offset or 0, "limit": args.limit,
        }
        try:
            start, end = _ms_to_ns(args.start_time), _ms_to_ns(args.end_time)
        except OverflowError:
            return {"logs": [], "total": 0, "query": query, "timestamp": _now_ms()}
        text = args.severity_text.lower() if args.severity_text is not None else None
        rows = [
            r for r in self.logs.records
            if (args.trace_id is None or r["trace_id"] == args.trace_id)
            and (args.span_id is None or r["span_id"] == args.span_id)
            and (args.severity_min is None or r["severity_number"] >= args.severity_min)
            and (text is None or r["severity_text"].lower() == text)
            and (start is None or r["timestamp_unix_nano"] >= start)
            and (end is None or r["timestamp_unix_nano"] <= end)
        ]
        rows.sort(key=lambda r: r["timestamp_unix_nano"], reverse=True)
        offset = args.offset or 0
        page = rows[offset:] if args.limit is None else rows[offset:offset + args.limit]
        return {"logs": page, "total": len(rows), "query": query, "timestamp": _now_ms()}

    def logs_clear(self, host: Host, caller: Optional[Connection], data: Any) -> Any:
        if self.logs is None:
            return {"success": True, "message": "No log storage initialized"}
        self.logs.records.clear()
        return {"success": True}

    def _span_store(self) -> SpanStore:
        if self.spans is None:
            raise EngineError(*_NO_SPAN_STORE)
        return self.spans

    def traces_list(self, host: Host, caller: Optional[Connection], data: Any) -> Any:
        store = self._span_store()
        args = parse_input("engine::traces::list", data, TracesListInput)
        now = _now_ns()
        if args.trace_id is not None:
            candidates = list(store.by_trace.get(args.trace_id.lower(), {}).values())
        elif args.trace_ids is not None:
            candidates = [s for t in args.trace_ids for s in store.by_trace.get(t.lower(), {}).values()]
        else:
            candidates = list(store.spans.values())
        search_all = bool(args.search_all_spans)
        if search_all:
            rows = candidates
            # ``name`` and ``attributes`` select roots whose trace holds a matching span.
            if args.name is not None or args.attributes:
                rows = [s for s in rows if self._trace_matches(store, s["trace_id"], args)]
        else:
            present = {(s["trace_id"], s["span_id"]) for s in candidates}
            rows = [s for s in candidates if s["parent_span_id"] is None or (s["trace_id"], s["parent_span_id"]) not in present]
            if args.name is not None:
                rows = [s for s in rows if args.name.lower() in s["name"].lower()]
            if args.attributes:
                rows = [s for s in rows if all([k, v] in s["attributes"] for k, v in args.attributes)]
        if not args.include_internal:
            rows = [s for s in rows if not is_internal(s)]
        if args.exclude_attributes:
            rows = [s for s in rows if not any([k, v] in s["attributes"] for k, v in args.exclude_attributes)]

        def end_of(span: dict) -> int:
            return now if span.get("pending") else span["end_time_unix_nano"]

        def duration_ms(span: dict) -> float:
            return (end_of(span) - span["start_time_unix_nano"]) / 1e6

        if args.service_name is not None:
            rows = [s for s in rows if args.service_name.lower() in s["service_name"].lower()]
        if args.status is not None:
            rows = [s for s in rows if args.status.lower() in s["status"].lower()]
        if args.min_duration_ms is not None:
            rows = [s for s in rows if duration_ms(s) >= args.min_duration_ms]
        if args.max_duration_ms is not None:
            rows = [s for s in rows if duration_ms(s) <= args.max_duration_ms]
        try:
            start, end = _ms_to_ns(args.start_time), _ms_to_ns(args.end_time)
        except OverflowError:
            raise EngineError("time_value_overflow", "start_time or end_time is too large") from None
        if start is not None:
            rows = [s for s in rows if end_of(s) >= start]
        if end is not None:
            rows = [s for s in rows if s["start_time_unix_nano"] <= end]
        sort_key: Callable[[dict], Any] = {
            "duration": duration_ms, "duration_ms": duration_ms,
            "service_name": lambda s: s["service_name"], "name": lambda s: s["name"],
        }.get(args.sort_by or "", lambda s: s["start_time_unix_nano"])
        rows.sort(key=sort_key, reverse=args.sort_order == "desc")
        offset = args.offset or 0
        limit = 100 if args.limit is None else args.limit
        page = []
        for span in rows[offset:offset + limit]:
            row = _public(span)
            tags = self._trace_tags(store, span["trace_id"])
            if tags:
                row["trace_tags"] = tags
            page.append(row)
        return {"spans": page, "total": len(rows), "offset": offset, "limit": limit, "storage": dict(_NO_ARCHIVE)}

    @staticmethod
    def _trace_matches(store: SpanStore, trace_id: str, args: TracesListInput) -> bool:
        for span in store.by_trace.get(trace_id, {}).values():
            if args.name is not None and args.name.lower() not in span["name"].lower():
                continue
            if args.attributes and not all([k, v] in span["attributes"] for k, v in args.attributes):
                continue
            return True
        return False

    @staticmethod
    def _trace_tags(store: SpanStore, trace_id: str) -> dict[str, str]:
        tags: dict[str, str] = {}
        for span in store.by_trace.get(trace_id, {}).values():
            for k, v in span["attributes"]:
                if k.startswith("iii.tag.") or k in ("iii.session.id", "iii.session.name", "iii.message.id"):
                    tags[k] = v
        return tags

    def traces_tree(self, host: Host, caller: Optional[Connection], data: Any) -> Any:
        store = self._span_store()
        args = parse_input("engine::traces::tree", data, TreeInput)
        spans = {s["span_id"]: _public(s) for s in store.by_trace.get(args.trace_id.lower(), {}).values()}
        # Childless state/stream trigger wrappers go (repeatedly: removing one can leave another).
        while True:
            parents = {s["parent_span_id"] for s in spans.values()}
            wrappers = [i for i, s in spans.items() if i not in parents and s["name"] in ("state_triggers", "stream_triggers")]
            if not wrappers:
                break
            for span_id in wrappers:
                del spans[span_id]
        for rule in self.settings.collapse_spans:
            collapsed = {
                i for i, s in spans.items()
                if fnmatch.fnmatchcase(s["name"], rule.get("name", ""))
                and ("service" not in rule or fnmatch.fnmatchcase(s["service_name"], rule["service"]))
            }
            for span in spans.values():
                parent = span["parent_span_id"]
                while parent in collapsed:
                    parent = spans[parent]["parent_span_id"]
                span["parent_span_id"] = parent
            for span_id in collapsed:
                del spans[span_id]
        nodes = {i: dict(s, children=[]) for i, s in spans.items()}
        roots = []
        for node in sorted(nodes.values(), key=lambda n: n["start_time_unix_nano"]):
            parent = nodes.get(node["parent_span_id"]) if node["parent_span_id"] else None
            (parent["children"] if parent is not None else roots).append(node)
        return {"roots": roots, "storage": dict(_NO_ARCHIVE)}

    def traces_group_by(self, host: Host, caller: Optional[Connection], data: Any) -> Any:
        store = self._span_store()
        args = parse_input("engine::traces::group_by", data, GroupByInput)
        since = (args.since_ms or 0) * 1_000_000
        groups: dict[str, dict[str, Any]] = {}
        for span in store.spans.values():
            value = _attribute(span, args.attribute)
            if value is None or (not args.include_internal and is_internal(span)):
                continue
            end = span["end_time_unix_nano"] or _now_ns()
            if end < since:
                continue
            group = groups.setdefault(value, {"value": value, "label": None, "trace_ids": set(), "span_count": 0,
                                              "first": span["start_time_unix_nano"], "last": end, "error_count": 0,
                                              "label_at": -1})
            group["trace_ids"].add(span["trace_id"])
            group["span_count"] += 1
            group["first"] = min(group["first"], span["start_time_unix_nano"])
            group["last"] = max(group["last"], end)
            group["error_count"] += span["status"] == "error"
            if args.label_attribute:
                label = _attribute(span, args.label_attribute)
                if label is not None and span["start_time_unix_nano"] >= group["label_at"]:
                    group["label"], group["label_at"] = label, span["start_time_unix_nano"]
        rows = [
            {"value": g["value"], "label": g["label"], "trace_ids": sorted(g["trace_ids"]), "span_count": g["span_count"],
             "first_seen_ms": g["first"] // 1_000_000, "last_seen_ms": g["last"] // 1_000_000,
             "duration_ms": (g["last"] - g["first"]) // 1_000_000, "error_count": g["error_count"]}
            for g in groups.values()
        ]
        rows.sort(key=lambda g: g["first_seen_ms"], reverse=True)
        return {"groups": rows[: 100 if args.limit is None else args.limit], "storage": dict(_NO_ARCHIVE)}

    def traces_clear(self, host: Host, caller: Optional[Connection], data: Any) -> Any:
        self._span_store().clear()
        return {"success": True}

    def metrics_list(self, host: Host, caller: Optional[Connection], data: Any) -> Any:
        args = parse_input("engine::metrics::list", data, MetricsListInput)
        try:
            start, end = _ms_to_ns(args.start_time), _ms_to_ns(args.end_time)
        except OverflowError:
            raise EngineError("time_value_overflow", "start_time or end_time is too large") from None
        stored = list(self.metrics or ())
        if start is not None and end is not None:
            stored = [m for m in stored if start <= m["timestamp_unix_nano"] <= end
                      and (args.metric_name is None or m["name"] == args.metric_name)]
        elif args.metric_name is not None:
            stored = [m for m in stored if m["name"] == args.metric_name]
        result: dict[str, Any] = {
            "engine_metrics": dict(host.engine_stats(), performance=self._performance()),
            "sdk_metrics": stored,
            "timestamp": _now_ms(),
        }
        if args.aggregate_interval and start is not None and end is not None:
            aggregated = _aggregate(stored, args.aggregate_interval * 10**9)
            if aggregated:
                result["aggregated_metrics"] = aggregated
        if args.start_time is not None or args.end_time is not None or args.aggregate_interval is not None:
            result["query"] = {"start_time": args.start_time, "end_time": args.end_time,
                               "aggregate_interval": args.aggregate_interval, "metric_name": args.metric_name}
        return result

    def _performance(self) -> dict[str, float]:
        durations = sorted(
            (s["end_time_unix_nano"] - s["start_time_unix_nano"]) / 1e6
            for s in (self.spans.spans.values() if self.spans is not None else ())
            if not s.get("pending")
        )
        if not durations:
            return {k: 0.0 for k in ("avg_duration_ms", "p50_duration_ms", "p95_duration_ms", "p99_duration_ms",
                                     "min_duration_ms", "max_duration_ms")}
        n = len(durations)

        def at(p: float) -> float:
            return durations[min(n - 1, int(n * p))]

        return {"avg_duration_ms": sum(durations) / n, "p50_duration_ms": at(0.5), "p95_duration_ms": at(0.95),
                "p99_duration_ms": at(0.99), "min_duration_ms": durations[0], "max_duration_ms": durations[-1]}

    def health_check(self, host: Host, caller: Optional[Connection], data: Any) -> Any:
        disabled = {"status": "disabled", "details": None}
        settings = self.settings
        exporter = {"memory": "Some(Memory)", "otlp": "Some(Otlp)", "both": "Some(Both)"}[settings.exporter]
        components = {
            "otel": {"status": "healthy", "details": {"enabled": True, "service_name": settings.service_name,
                                                      "exporter": exporter}} if settings.traces_enabled and settings.enabled else disabled,
            "metrics": {"status": "healthy", "details": {"stored_metrics": len(self.metrics)}} if self.metrics is not None else disabled,
            "logs": {"status": "healthy", "details": {"stored_logs": len(self.logs.records)}} if self.logs is not None else disabled,
            "spans": {"status": "healthy", "details": {"stored_spans": len(self.spans.spans), "hot_bytes": self.spans.bytes,
                                                       "archive": dict(_NO_ARCHIVE)}} if self.spans is not None else disabled,
        }
        return {"status": "healthy", "components": components, "timestamp": _now_ms(), "version": __version__}

    def sampling_rules(self, host: Host, caller: Optional[Connection], data: Any) -> Any:
        return {"traces": {"default_ratio": self.settings.sampling_ratio, "rules": [], "parent_based": True},
                "logs": {"sampling_ratio": self.settings.logs_sampling_ratio}, "timestamp": _now_ms()}

    def rollups_list(self, host: Host, caller: Optional[Connection], data: Any) -> Any:
        return {"rollups": [], "histogram_rollups": [], "level": 0, "message": "Metric rollups are not kept by this engine",
                "timestamp": _now_ms()}


def _aggregate(metrics: list[dict[str, Any]], interval_ns: int) -> list[dict[str, Any]]:
    buckets: dict[tuple[str, int], list[float]] = {}
    for metric in metrics:
        for point in metric["data_points"]:
            value = point.get("value", point.get("sum"))
            if value is None:
                continue
            start = metric["timestamp_unix_nano"] // interval_ns * interval_ns
            buckets.setdefault((metric["name"], start), []).append(float(value))
    return [
        {"name": name, "bucket_start_ns": start, "bucket_end_ns": start + interval_ns, "count": len(values),
         "sum": sum(values), "min": min(values), "max": max(values), "avg": sum(values) / len(values)}
        for (name, start), values in sorted(buckets.items(), key=lambda item: (item[0][1], item[0][0]))
    ]


class _Running:
    def __init__(self, observability: Observability, extras: list[Any]) -> None:
        self.observability = observability
        self.extras = extras

    async def start(self) -> None:
        await self.observability.start()
        for extra in self.extras:
            await extra.start()

    async def stop(self) -> None:
        for extra in self.extras:
            try:
                await extra.stop()
            except Exception:
                log.exception("stopping %s failed", type(extra).__name__)
        await self.observability.stop()


def install(host: Host, config: Optional[ObservabilityConfig] = None, scheduler: Optional[Scheduler] = None) -> _Running:
    """Register the observability functions and trigger types and become the engine's telemetry
    sink. With ``enabled: false`` the functions answer their empty shapes and the trigger types
    are not registered (their bindings wait)."""
    settings = resolve(config)
    observability = Observability(host, settings, scheduler or LoopScheduler())
    host.set_telemetry(observability)
    internal = {"internal": True}
    for level in _SEVERITIES:
        host.add_function(f"engine::log::{level}", observability.log_function(level), module=NAME,
                          description=f"Store a {level} log", metadata=internal)
    functions = {
        "engine::logs::list": (observability.logs_list, "List stored logs"),
        "engine::logs::clear": (observability.logs_clear, "Clear stored logs"),
        "engine::traces::list": (observability.traces_list, "List root spans of stored traces"),
        "engine::traces::tree": (observability.traces_tree, "One trace as a span tree"),
        "engine::traces::group_by": (observability.traces_group_by, "Group spans by an attribute"),
        "engine::traces::clear": (observability.traces_clear, "Clear stored spans"),
        "engine::metrics::list": (observability.metrics_list, "Engine and SDK metrics"),
        "engine::health::check": (observability.health_check, "Health of the observability stores"),
        "engine::sampling::rules": (observability.sampling_rules, "Trace and log sampling rules"),
        "engine::rollups::list": (observability.rollups_list, "Metric rollups"),
        "engine::alerts::list": (lambda h, c, d: {"alerts": [], "firing_count": 0, "message": "Alert manager not initialized",
                                                  "timestamp": _now_ms()}, "Alerts"),
        "engine::alerts::evaluate": (lambda h, c, d: {"evaluated": False, "message": "Alert manager not initialized",
                                                      "timestamp": _now_ms()}, "Evaluate alerts"),
        "engine::baggage::get": (lambda h, c, d: {"value": None}, "Ambient baggage entry"),
        "engine::baggage::get_all": (lambda h, c, d: {"baggage": {}}, "Ambient baggage"),
        "engine::baggage::set": (lambda h, c, d: {"success": True, "note": "Baggage set in new context. For propagation, "
                                                  "use SDK-level baggage headers."}, "Set ambient baggage"),
    }
    for function_id, (handler, description) in functions.items():
        host.add_function(function_id, handler, module=NAME, description=description, metadata=internal)
    if settings.enabled:
        host.add_trigger_type("log", observability.log_trigger, module=NAME,
                              description="Fires for every stored log of a level",
                              trigger_request_format=msgspec.json.schema(LogTriggerConfig))
        host.add_trigger_type("trace", observability.trace_trigger, module=NAME,
                              description="Fires every 300 ms with the ids of traces that got spans",
                              trigger_request_format=msgspec.json.schema(TraceTriggerConfig))
    extras: list[Any] = []
    if settings.prometheus_port is not None:
        from iii.modules._prometheus import PrometheusPage

        extras.append(PrometheusPage(host, settings.prometheus_host, settings.prometheus_port))
    if settings.enabled and settings.traces_enabled and settings.exporter in ("otlp", "both"):
        from iii.modules._export import SpanExport

        observability.exporter = export = SpanExport(settings)
        extras.append(export)
    return _Running(observability, extras)


MODULE = BuiltinModule(
    name=NAME,
    description="Logs, traces and metrics of the engine and its workers (OpenTelemetry)",
    config_type=ObservabilityConfig,
    install=install,
)
