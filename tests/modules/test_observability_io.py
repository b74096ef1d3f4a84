"""``iii-observability`` over real sockets: the ``/otel`` socket and the worker socket's binary
telemetry frames, the Prometheus page scraped and parsed by ``prometheus-client``, and OTLP/HTTP
export to a local collector (an aiohttp app decoding the protobuf requests)."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from picows import WSMsgType
from prometheus_client.parser import text_string_to_metric_families

from helpers import LOCAL_MODULES, RawClient, in_process_engine

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
#: http and stream on free ports (their defaults may be taken on a shared machine).
CONFIG = "workers:\n" + LOCAL_MODULES


def otlp_spans(*names: str, service: str = "billing") -> bytes:
    spans = [
        {"traceId": TRACE, "spanId": f"{index + 1:016x}", "parentSpanId": f"{index:016x}" if index else "",
         "name": name, "startTimeUnixNano": "1767225600000000000", "endTimeUnixNano": "1767225600003500000",
         "status": {"code": 1}, "attributes": [{"key": "function_id", "value": {"stringValue": "math::add"}}]}
        for index, name in enumerate(names)
    ]
    document = {"resourceSpans": [{"resource": {"attributes": [{"key": "service.name", "value": {"stringValue": service}}]},
                                   "scopeSpans": [{"scope": {"name": "iii-python-sdk"}, "spans": spans}]}]}
    return b"OTLP" + json.dumps(document).encode()


async def until(fetch: Any, ready: Any, timeout: float = 10) -> Any:
    """Poll ``fetch()`` until ``ready`` (frames of two sockets are not ordered with each other)."""
    deadline = time.monotonic() + timeout
    while True:
        value = await fetch()
        if ready(value):
            return value
        assert time.monotonic() < deadline, f"not ready after {timeout}s: {value}"
        await asyncio.sleep(0.02)


@pytest.mark.both_loops
async def test_otel_socket_and_worker_socket_frames_reach_the_stores(tmp_path):
    async with in_process_engine(CONFIG, tmp_path) as app:
        url = app.urls[0]
        otel = await RawClient.connect(url, "/otel")
        otel.send_bytes(b"text frames are ignored")
        otel.send_bytes(b"OTLP{broken", WSMsgType.BINARY)  # dropped; the socket stays
        otel.send_bytes(b"ZZZZ{}", WSMsgType.BINARY)
        whole = otlp_spans("execute math::add")
        otel.transport.send(WSMsgType.BINARY, whole[:10], fin=False)  # a fragmented message
        otel.transport.send(WSMsgType.CONTINUATION, whole[10:], fin=True)
        client = await RawClient.connect(url)

        async def roots() -> Any:
            return (await client.call("engine::traces::list", {}))["result"]["spans"]

        (row,) = await until(roots, lambda spans: len(spans) == 1)
        assert row["name"] == "execute math::add" and row["service_name"] == "billing"
        assert row["end_time_unix_nano"] - row["start_time_unix_nano"] == 3_500_000
        # The same frames on the worker socket are telemetry too (ordered with its calls).
        log = {"resourceLogs": [{"scopeLogs": [{"logRecords": [{"severityNumber": 13, "severityText": "WARN",
                                                                "body": {"stringValue": "from the worker socket"}}]}]}]}
        client.send_bytes(b"LOGS" + json.dumps(log).encode(), WSMsgType.BINARY)
        listed = (await client.call("engine::logs::list", {"severity_min": 13}))["result"]
        assert "from the worker socket" in [entry["body"] for entry in listed["logs"]]
        workers = (await client.call("engine::workers::list", {}))["result"]["workers"]
        assert all(w["runtime"] == "engine" for w in workers if w["id"] != client.worker_id)  # /otel: no worker
        assert not otel.listener.closed.is_set()
        await otel.close()
        await client.close()


async def serve_worker(worker: RawClient, count: list) -> None:
    """Answer every call to the worker: http requests with 200, the rest echoed."""
    while True:
        frame = await worker.recv(timeout=60)
        if frame.get("type") != "invokefunction":
            continue
        data = frame.get("data") or {}
        result = {"status_code": 200, "body": {"ok": True}} if "method" in data else data
        count.append(frame["function_id"])
        worker.send(type="invocationresult", invocation_id=frame["invocation_id"], function_id=frame["function_id"], result=result)


async def test_prometheus_page_is_scraped_and_parsed(tmp_path):
    config = (
        "workers:\n"
        "  - name: iii-observability\n    config: {prometheus_port: 0}\n"
        "  - name: iii-http\n    config: {host: 127.0.0.1, port: 0}\n"
        "  - name: iii-queue\n"
    )
    async with in_process_engine(config, tmp_path) as app:
        page = app.modules["iii-observability"].extras[0]
        worker = await RawClient.connect(app.urls[0])
        await worker.register("prom-worker")
        worker.send(type="registerfunction", id="t::echo")
        worker.send(type="registertrigger", id="h1", trigger_type="http", function_id="t::echo",
                    config={"api_path": "echo", "http_method": "POST"})
        caller = await RawClient.connect(app.urls[0])
        await caller.wait_for_function("t::echo")
        served: list = []
        server = asyncio.ensure_future(serve_worker(worker, served))
        try:
            for _ in range(32):
                answer = await caller.call("t::echo", {"n": 1})
                assert answer["result"]["n"] == 1
            caller.send_bytes(b'{"type":"invokefunction","invocation_id":7}')  # a bad frame
            async with aiohttp.ClientSession() as session:
                async with session.post(f"{app.modules['iii-http'].url}/echo", json={"x": 1}) as response:
                    assert response.status == 200
                async with session.get(f"{app.modules['iii-http'].url}/nowhere") as response:
                    assert response.status == 404
                await caller.call("engine::functions::list", {})  # the bad frame was handled before this
                async with session.get(f"http://127.0.0.1:{page.port}/metrics") as response:
                    assert response.status == 200
                    assert response.headers["Content-Type"].startswith("text/plain")
                    text = await response.text()
        finally:
            server.cancel()
        samples: dict[tuple, float] = {}
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
        assert samples[("iii_workers_connected", ())] == 2
        echo = (("function", "t::echo"), ("namespace", "default"))
        assert samples[("iii_invocations_total", tuple(sorted(echo + (("outcome", "ok"),))))] == 33  # 32 + the http one
        assert samples[("iii_invocation_duration_seconds_count", echo)] == 33  # the first 64 calls are all timed
        assert samples[("iii_invocation_duration_seconds_bucket", tuple(sorted(echo + (("le", "+Inf"),))))] == 33
        assert samples[("iii_http_requests_total", (("method", "POST"), ("route", "echo"), ("status", "200")))] == 1
        assert samples[("iii_http_requests_total", (("method", "GET"), ("route", ""), ("status", "404")))] == 1
        assert samples[("iii_frames_dropped_total", ())] == 1
        assert samples[("iii_queue_waiting", (("queue", "default"),))] == 0
        assert samples[("iii_queue_dead_letters", (("queue", "default"),))] == 0
        assert ("iii_write_buffer_bytes_total", ()) in samples
        assert samples[("process_resident_memory_bytes", ())] > 0
        await worker.close()
        await caller.close()


async def test_spans_are_exported_to_an_otlp_collector(tmp_path):
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

    received: asyncio.Queue = asyncio.Queue()

    async def traces(request: web.Request) -> web.Response:
        assert request.content_type == "application/x-protobuf"
        export = ExportTraceServiceRequest()
        export.ParseFromString(await request.read())
        for resource_spans in export.resource_spans:
            service = {a.key: a.value.string_value for a in resource_spans.resource.attributes}["service.name"]
            for scope_spans in resource_spans.scope_spans:
                for span in scope_spans.spans:
                    received.put_nowait((service, span))
        return web.Response(body=b"", content_type="application/x-protobuf")

    collector = web.Application()
    collector.router.add_post("/v1/traces", traces)
    runner = web.AppRunner(collector)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    config = CONFIG + f"  - name: iii-observability\n    config: {{enabled: true, exporter: both, endpoint: 'http://127.0.0.1:{port}'}}\n"
    try:
        async with in_process_engine(config, tmp_path) as app:
            otel = await RawClient.connect(app.urls[0], "/otel")
            otel.send_bytes(otlp_spans("GET /orders", "execute orders::list"), WSMsgType.BINARY)
            exported = [await asyncio.wait_for(received.get(), 15) for _ in range(2)]
            by_name = {span.name: (service, span) for service, span in exported}
            service, child = by_name["execute orders::list"]
            assert service == "billing" and child.trace_id.hex() == TRACE
            assert child.parent_span_id.hex() == by_name["GET /orders"][1].span_id.hex() == f"{1:016x}"
            assert child.end_time_unix_nano - child.start_time_unix_nano == 3_500_000
            assert {a.key: a.value.string_value for a in child.attributes} == {"function_id": "math::add"}
            client = await RawClient.connect(app.urls[0])  # `both`: the console's store has them too
            assert (await client.call("engine::traces::list", {}))["result"]["total"] == 1
            await otel.close()
            await client.close()
    finally:
        await runner.cleanup()


async def test_nothing_is_exported_or_served_by_default(tmp_path):
    async with in_process_engine(CONFIG, tmp_path) as app:
        running = app.modules["iii-observability"]
        assert running.observability.exporter is None and running.extras == []


async def test_the_engines_own_log_lines_are_stored_and_fire_log_bindings(tmp_path):
    async with in_process_engine(CONFIG, tmp_path) as app:
        watcher = await RawClient.connect(app.urls[0])
        watcher.send(type="registerfunction", id="watch::warnings")
        watcher.send(type="registertrigger", id="w1", trigger_type="log", function_id="watch::warnings", config={"level": "warn"})
        await watcher.wait_for_function("watch::warnings")
        watcher.send(type="registerfunction", id="engine::mine")  # refused, with a warning line
        fired = await watcher.recv_until(lambda f: f.get("type") == "invokefunction" and f["function_id"] == "watch::warnings")
        assert "engine::mine" in fired["data"]["body"] and fired["data"]["severity_text"] == "WARN"
        assert fired["data"]["attributes"]["target"] == "iii.engine" and fired["data"]["service_name"] == "iii"
        listed = (await watcher.call("engine::logs::list", {"severity_text": "WARN"}))["result"]["logs"]
        assert any("engine::mine" in entry["body"] for entry in listed)
        await watcher.close()
