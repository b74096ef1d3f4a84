"""iii-http against clients that misbehave: bodies that trickle in or stall, bodies too large,
requests that do not parse. Raw TCP clients and aiohttp against an in-process engine."""

from __future__ import annotations

import asyncio
import json
import logging
from urllib.parse import urlsplit

import aiohttp
import pytest

from helpers import RawClient, in_process_engine

#: In-process engines: every test runs on the stdlib loop and on uvloop.
pytestmark = pytest.mark.both_loops

CONFIG = """workers:
  - name: iii-http
    config:
      host: 127.0.0.1
      port: 0
      concurrency_request_limit: 2
      body_read_timeout_ms: 500
      max_body_bytes: 4096
  - name: iii-stream
    config: {host: 127.0.0.1, port: 0}
"""


@pytest.fixture
async def engine(tmp_path):
    async with in_process_engine(CONFIG, tmp_path) as engine:
        yield engine


@pytest.fixture
async def base(engine):
    """The server's URL, with ``POST /echo`` answered by a worker with the request's body."""
    worker = await RawClient.connect(engine.urls[0])
    await worker.register("echo")
    worker.send(type="registerfunction", id="echo::post")
    worker.send(type="registertrigger", id="echo", trigger_type="http", function_id="echo::post",
                config={"api_path": "echo", "http_method": "POST"})
    await worker.call("engine::workers::list", {})  # frames are handled in order

    async def serve() -> None:
        while True:
            call = await worker.recv_until(lambda f: f.get("type") == "invokefunction", timeout=3600)
            worker.send(type="invocationresult", invocation_id=call["invocation_id"], function_id="echo::post",
                        result={"body": call["data"]["body"]})

    serving = asyncio.ensure_future(serve())
    yield engine.modules["iii-http"].url
    serving.cancel()
    await worker.close()


async def raw_request(base: str, head: bytes, body: bytes = b"") -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A TCP client that sent ``head`` (the request line and headers) and ``body``."""
    url = urlsplit(base)
    reader, writer = await asyncio.open_connection(url.hostname, url.port)
    writer.write(head + b"\r\n\r\n" + body)
    return reader, writer


async def response_of(reader: asyncio.StreamReader) -> tuple[int, dict, dict]:
    """Status, headers (lower-case names) and JSON body of the response ``reader`` gets."""
    head = (await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)).decode()
    status_line, *lines = head.strip().split("\r\n")
    headers = {name.lower(): value.strip() for name, _, value in (line.partition(":") for line in lines)}
    body = await asyncio.wait_for(reader.readexactly(int(headers["content-length"])), 5)
    return int(status_line.split()[1]), headers, json.loads(body)


def warnings(caplog, text: str) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.levelno == logging.WARNING and text in r.getMessage()]


POST_ECHO = b"POST /echo HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\nContent-Length: 100"


async def test_bodies_that_trickle_in_hold_no_request_slot_and_get_408(base):
    stalled = [await raw_request(base, POST_ECHO, b'{"a": ') for _ in range(6)]
    trickling = await raw_request(base, POST_ECHO)

    async def trickle() -> None:
        while True:
            trickling[1].write(b" ")
            await asyncio.sleep(0.05)

    trickler = asyncio.ensure_future(trickle())
    await asyncio.sleep(0.1)  # their bodies are being waited for (2 slots, 7 requests)
    loop = asyncio.get_running_loop()
    started = loop.time()
    async with aiohttp.ClientSession() as session:
        async with session.post(base + "/echo", json={"n": 1}, timeout=aiohttp.ClientTimeout(total=3)) as response:
            assert (response.status, await response.json()) == (200, {"n": 1})
    assert loop.time() - started < 0.35  # answered before any stalled body timed out
    for reader, writer in [*stalled, trickling]:
        status, headers, body = await response_of(reader)
        assert (status, body["error"]["code"], headers["connection"]) == (408, "BODY_TIMEOUT", "close")
        assert "500 ms" in body["error"]["message"]
        writer.close()
    assert loop.time() - started < 1.5
    trickler.cancel()


async def test_a_body_larger_than_max_body_bytes_is_413(base):
    declared = await raw_request(base, POST_ECHO.replace(b"100", b"5000"))
    status, headers, body = await response_of(declared[0])  # refused before it is sent
    assert (status, body["error"]["code"], headers["connection"]) == (413, "BODY_TOO_LARGE", "close")
    assert body["error"]["message"] == "The body is larger than 4096 bytes"
    declared[1].close()
    chunked_head = b"POST /echo HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked"
    chunk = b"1000\r\n" + b" " * 4096 + b"\r\n"
    reader, writer = await raw_request(base, chunked_head, chunk + chunk)
    status, _, body = await response_of(reader)  # refused once it grew too large
    assert (status, body["error"]["code"]) == (413, "BODY_TOO_LARGE")
    writer.close()
    async with aiohttp.ClientSession() as session:  # at the limit is fine
        async with session.post(base + "/echo", json="x" * 4000) as response:
            assert (response.status, await response.json()) == (200, "x" * 4000)


async def test_bad_requests_are_logged_once_per_connection_and_kind(base, caplog):
    caplog.set_level(logging.INFO)
    json_type = {"Content-Type": "application/json"}
    for _ in range(2):  # two connections, three bad bodies on each
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=1)) as session:
            for _ in range(3):
                async with session.post(base + "/echo", data=b"{nope", headers=json_type) as response:
                    assert response.status == 400
            async with session.post(base + "/echo", json={"still": "served"}) as response:
                assert await response.json() == {"still": "served"}
    assert len(warnings(caplog, "INVALID_JSON from")) == 2
    for _ in range(2):  # not HTTP at all: answered, one line each (the connection ends)
        reader, writer = await raw_request(base, b"GARBAGE")
        status, _, body = await response_of(reader)
        assert (status, body["error"]["code"]) == (400, "BAD_REQUEST")
        assert await asyncio.wait_for(reader.read(), 5) == b""
        writer.close()
    await asyncio.sleep(0.05)
    assert len(warnings(caplog, "BAD_REQUEST from")) == 2
    assert len(warnings(caplog, "2 more bad requests on a connection were not logged")) == 2
    assert not [r for r in caplog.records if r.exc_info or r.levelno >= logging.ERROR]
