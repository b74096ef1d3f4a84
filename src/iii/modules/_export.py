"""OTLP export of ``iii-observability``'s spans to a collector (``exporter: otlp`` or ``both``).

The stored spans (the SDKs' and the engine's own) are handed to the standard OpenTelemetry SDK's
``BatchSpanProcessor`` with its OTLP/HTTP exporter (protobuf to ``<endpoint>/v1/traces``): its
thread batches and sends them, its queue is bounded (spans beyond it are dropped and counted by
it), and each export has a deadline. Nothing is exported unless the config asks for it.
"""

from __future__ import annotations

import logging
from typing import Any

__all__ = ["SpanExport"]

log = logging.getLogger("iii.modules.observability")

#: Export deadline (seconds) and batch settings: what the SDK's defaults would be, bounded.
_EXPORT_TIMEOUT_S = 10
_MAX_QUEUE = 8192
_SCHEDULE_DELAY_MS = 1000


class SpanExport:
    """Stored spans → OTLP/HTTP, through the OpenTelemetry SDK's batch processor.

    Args:
        settings: the module's effective settings (``endpoint``, ``service_name``).
    """

    def __init__(self, settings: Any) -> None:
        try:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
            from opentelemetry.sdk.trace.export import BatchSpanProcessor
        except ImportError:
            raise RuntimeError(
                "iii-observability exporter otlp/both needs the OpenTelemetry exporter: "
                "pip install 'iii-engine[otlp]'"
            ) from None
        endpoint = settings.endpoint.rstrip("/")
        self.url = endpoint if endpoint.endswith("/v1/traces") else endpoint + "/v1/traces"
        self._processor = BatchSpanProcessor(
            OTLPSpanExporter(endpoint=self.url, timeout=_EXPORT_TIMEOUT_S),
            max_queue_size=_MAX_QUEUE,
            schedule_delay_millis=_SCHEDULE_DELAY_MS,
        )
        self._resources: dict[str, Any] = {}

    def add(self, span: dict[str, Any]) -> None:
        """Queue one finished stored span for export."""
        try:
            self._processor.on_end(self._readable(span))
        except Exception:  # a span the SDK will not take costs that span only
            log.debug("span %s not exported", span.get("span_id"), exc_info=True)

    def _readable(self, span: dict[str, Any]) -> Any:
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import Event, ReadableSpan
        from opentelemetry.sdk.util.instrumentation import InstrumentationScope
        from opentelemetry.trace import Link, SpanContext, SpanKind, Status, StatusCode, TraceFlags

        flags = TraceFlags(span.get("flags", 1) & 0xFF)
        trace_id = int(span["trace_id"], 16)
        context = SpanContext(trace_id, int(span["span_id"], 16), is_remote=False, trace_flags=flags)
        parent = (
            SpanContext(trace_id, int(span["parent_span_id"], 16), is_remote=True, trace_flags=flags)
            if span["parent_span_id"] else None
        )
        service = span["service_name"]
        resource = self._resources.get(service)
        if resource is None:
            resource = self._resources[service] = Resource.create({"service.name": service})
        status = {"ok": StatusCode.OK, "error": StatusCode.ERROR}.get(span["status"], StatusCode.UNSET)
        return ReadableSpan(
            name=span["name"],
            context=context,
            parent=parent,
            resource=resource,
            attributes=dict(span["attributes"]),
            events=[Event(e["name"], dict(e["attributes"]), e["timestamp_unix_nano"]) for e in span["events"]],
            links=[
                Link(SpanContext(int(link["trace_id"], 16), int(link["span_id"], 16), is_remote=True), dict(link["attributes"]))
                for link in span["links"] if link["trace_id"] and link["span_id"]
            ],
            kind=SpanKind.INTERNAL,
            status=Status(status, span.get("status_description") if status is StatusCode.ERROR else None),
            start_time=span["start_time_unix_nano"],
            end_time=span["end_time_unix_nano"],
            instrumentation_scope=InstrumentationScope(
                span.get("instrumentation_scope_name", ""), span.get("instrumentation_scope_version")
            ),
        )

    async def start(self) -> None:
        log.info("exporting spans to %s (OTLP/HTTP)", self.url)

    async def stop(self) -> None:
        """Send what is queued (bounded by the export deadline), then stop the thread."""
        import asyncio

        await asyncio.get_running_loop().run_in_executor(None, self._processor.shutdown)
