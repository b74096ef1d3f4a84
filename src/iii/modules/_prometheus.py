"""The Prometheus page of ``iii-observability``: ``GET /metrics`` on its own port.

Everything on it is read when it is scraped, on the engine's loop (no thread reads engine state):
the engine's :class:`~iii.engine.host.MetricFamily` list (workers, calls by function and outcome,
sampled latency, frames dropped, bytes waiting for slow workers, and what modules report: queue
depths, dead letters, HTTP requests) plus the process's own CPU, memory and descriptors.
"""

from __future__ import annotations

import logging
from typing import Any, Iterator

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, ProcessCollector, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric

from iii.engine.host import Host

__all__ = ["EngineCollector", "PrometheusPage"]

log = logging.getLogger("iii.modules.observability")


class EngineCollector:
    """A prometheus-client collector over :meth:`Host.metric_families`."""

    def __init__(self, host: Host) -> None:
        self.host = host

    def collect(self) -> Iterator[Metric]:
        for family in self.host.metric_families():
            labels = list(family.labels)
            if family.kind == "counter":
                metric: Any = CounterMetricFamily(family.name, family.help, labels=labels)
                for values, value in family.samples:
                    metric.add_metric(list(values), value)
            elif family.kind == "histogram":
                metric = HistogramMetricFamily(family.name, family.help, labels=labels)
                for values, (bounds, cumulative, total) in family.samples:
                    buckets = [(_bound(b), c) for b, c in zip(bounds, cumulative)] + [("+Inf", cumulative[-1])]
                    metric.add_metric(list(values), buckets, total)
            else:
                metric = GaugeMetricFamily(family.name, family.help, labels=labels)
                for values, value in family.samples:
                    metric.add_metric(list(values), value)
            yield metric


def _bound(value: float) -> str:
    return repr(float(value))


class PrometheusPage:
    """Serves ``/metrics`` on ``host:port`` (port 0: any free port, see :attr:`port`)."""

    def __init__(self, host: Host, bind: str, port: int) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(EngineCollector(host))
        self.registry.register(ProcessCollector(registry=None))
        self.bind = bind
        self.port = port
        self._runner: Any = None

    async def _metrics(self, request: web.Request) -> web.Response:
        body = generate_latest(self.registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/metrics", self._metrics)
        self._runner = runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, self.bind, self.port, reuse_address=True)
        await site.start()
        server = site._server
        if server is not None and server.sockets:  # type: ignore[union-attr]
            self.port = server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        log.info("Prometheus metrics on http://%s:%d/metrics", self.bind, self.port)

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
