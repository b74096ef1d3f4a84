"""Streaming HTTP through channels with the official SDKs' handlers (Python iii-sdk 0.25.0, Node
iii-sdk 0.22.1) and ours: raw bodies of any content type on ``request_body``, forms and multipart,
SSE read by a real HTTP client, 50 MB up and down with the engine's memory watched."""

from __future__ import annotations

import asyncio
import hashlib
import os
import re
import sys

import aiohttp
import psutil
import pytest

from helpers import ROOT

pytestmark = pytest.mark.interop

RUNTIMES = ["python", "node", "ours"]
CHANNEL_WORKER = {"python": ROOT / "tests/interop/workers/channel_worker.py", "ours": ROOT / "tests/interop/workers/channel_worker.py",
                  "node": ROOT / "tests/interop/node/channel_worker.mjs"}
_HTTP_URL = re.compile(r"iii-http listening on (http://\S+)")
BIG = 50 * 1024 * 1024
PATTERN = bytes(range(256)) * 1024  # what the workers' download handler repeats


async def start_channel_worker(procs, engine, official_python, node, runtime: str, name: str, *args: str):
    interpreter = {"python": official_python, "ours": sys.executable, "node": node}[runtime]
    return await procs.start(interpreter, str(CHANNEL_WORKER[runtime]), name, *args,
                             env={"III_URL": engine.url}, label=f"{runtime}:{name}")


@pytest.fixture
async def http_base(engine):
    line = await engine.proc.expect(lambda item: isinstance(item, str) and bool(_HTTP_URL.search(item)))
    return _HTTP_URL.search(line).group(1)  # type: ignore[union-attr]


@pytest.fixture(params=RUNTIMES)
async def web(request, procs, engine, official_python, node, http_base):
    """An http-role channel worker of each runtime; its routes' base URL."""
    name = f"web{request.param}"
    worker = await start_channel_worker(procs, engine, official_python, node, request.param, name, "http")
    await worker.key("ready", timeout=30)
    return f"{http_base}/{name}"


async def test_raw_json_body_is_both_parsed_and_streamed_verbatim(web):
    async with aiohttp.ClientSession() as session:
        async with session.post(f"{web}/raw", data=b'{"z":2, "a":1}', headers={"content-type": "application/json"}) as response:
            answer = await response.json()
    assert answer["raw_body"] == '{"z":2, "a":1}'  # spacing and key order as sent
    assert answer["parsed_body"] == answer["body"] == {"z": 2, "a": 1}


async def test_urlencoded_form_reaches_the_handler_raw(web):
    async with aiohttp.ClientSession() as session:
        form = {"name": "John Doe", "email": "john@example.com", "age": "30"}
        async with session.post(f"{web}/raw", data=form) as response:
            answer = await response.json()
    assert answer["content_type"] == "application/x-www-form-urlencoded"
    assert answer["body"] is None  # the engine does not parse forms: the handler reads request_body
    assert answer["form"] == form


async def test_multipart_with_a_file_reaches_the_handler_raw(web):
    document = b"%PDF-1.4\n" + os.urandom(300 * 1024)
    data = aiohttp.FormData()
    data.add_field("title", "Test Document")
    data.add_field("description", "A test upload")
    data.add_field("file", document, filename="handbook.pdf", content_type="application/pdf")
    async with aiohttp.ClientSession() as session:
        async with session.post(f"{web}/raw", data=data) as response:
            answer = await response.json()
    raw = answer["raw_body"].encode("latin-1")
    assert answer["content_type"].startswith("multipart/form-data; boundary=")
    assert len(answer["content_type"].split("boundary=", 1)[1]) > 0
    assert b"Test Document" in raw and b"A test upload" in raw and b'filename="handbook.pdf"' in raw
    assert document in raw  # the file's bytes, whole and unchanged
    assert answer["body_size"] == len(raw) > len(document)


async def test_sse_events_reach_a_real_client_as_they_are_written(web):
    loop = asyncio.get_running_loop()
    events, arrived = [], []
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{web}/sse") as response:
            assert response.status == 200
            assert response.headers["content-type"] == "text/event-stream"
            assert response.headers.get("transfer-encoding") == "chunked"
            event: dict = {}
            async for line in response.content:
                text = line.decode().rstrip("\n")
                if text:
                    field, _, value = text.partition(": ")
                    event[field] = f"{event[field]}\n{value}" if field in event else value
                else:
                    events.append(event)
                    arrived.append(loop.time())
                    event = {}
    assert events == [
        {"id": "0", "event": "tick", "data": "event 0"},
        {"id": "1", "event": "tick", "data": "event 1"},
        {"id": "2", "event": "tick", "data": "line one\nline two"},
        {"id": "3", "event": "tick", "data": "event 3"},
    ]
    # Written 50 ms apart: a client that got them only at the end would see them together.
    assert arrived[-1] - arrived[0] >= 0.1


class PeakRss:
    """Samples a process's resident memory until stopped; the peak above the first sample."""

    def __init__(self, pid: int) -> None:
        self._process = psutil.Process(pid)
        self.baseline = self._process.memory_info().rss
        self.peak = self.baseline
        self._task = asyncio.ensure_future(self._sample())

    async def _sample(self) -> None:
        while True:
            self.peak = max(self.peak, self._process.memory_info().rss)
            await asyncio.sleep(0.02)

    def stop(self) -> int:
        self._task.cancel()
        self.peak = max(self.peak, self._process.memory_info().rss)
        return self.peak - self.baseline


async def test_50_mb_upload_and_download_stream_through_a_flat_engine(web, engine, record_property):
    rss = PeakRss(engine.proc.pid)
    body = os.urandom(BIG)

    async def chunks():
        for start in range(0, BIG, 1024 * 1024):
            yield body[start:start + 1024 * 1024]

    timeout = aiohttp.ClientTimeout(total=120)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        async with session.post(f"{web}/upload", data=chunks(), headers={"content-type": "application/octet-stream"}) as response:
            assert response.status == 201
            answer = await response.json(content_type=None)
        assert answer == {"received_size": BIG, "sha256": hashlib.sha256(body).hexdigest()}
        digest, size = hashlib.sha256(), 0
        async with session.get(f"{web}/download/{BIG}") as response:
            assert response.status == 200
            assert response.headers["content-type"] == "application/octet-stream"
            async for chunk in response.content.iter_any():
                digest.update(chunk)
                size += len(chunk)
    grown = rss.stop()
    expected = hashlib.sha256(PATTERN * (BIG // len(PATTERN))).hexdigest()
    assert (size, digest.hexdigest()) == (BIG, expected)
    record_property("engine_rss_growth_bytes", grown)
    print(f"\n{web.rsplit('/', 1)[1]}: engine RSS baseline {rss.baseline / 2**20:.1f} MiB, peak +{grown / 2**20:.1f} MiB over 50 MB up + 50 MB down")
    assert grown < BIG // 2  # the bodies went through, they never sat in the engine whole
