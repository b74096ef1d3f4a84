"""iii-http's channels: streamed responses (control messages, chunked bodies, deadlines until the
start), request bodies on ``request_body``, and the channels' cleanup — an in-process engine, our
SDK's handlers on the same loop, aiohttp requests."""

from __future__ import annotations

import asyncio
import json

import aiohttp
import pytest

from helpers import in_process_engine
from iii import InitOptions, register_worker_async
from iii.channels import MAX_FRAME_SIZE, ChannelReader, ChannelWriter

pytestmark = pytest.mark.both_loops

CONFIG = """workers:
  - name: iii-http
    config:
      host: 127.0.0.1
      port: 0
      default_timeout: 1500
  - name: iii-stream
    config: {host: 127.0.0.1, port: 0}
"""


@pytest.fixture
async def engine(tmp_path):
    async with in_process_engine(CONFIG, tmp_path) as engine:
        yield engine


class Site:
    def __init__(self, engine, worker, session) -> None:
        self.engine = engine
        self.worker = worker
        self.session = session
        self.base = engine.modules["iii-http"].url

    async def route(self, function_id: str, handler, path: str, method: str = "GET") -> None:
        self.worker.register_function(function_id, handler)
        self.worker.register_trigger({"type": "http", "function_id": function_id,
                                      "config": {"api_path": path, "http_method": method}})
        for _ in range(200):  # until the engine lists the route
            triggers = (await self.worker.trigger_async({"function_id": "engine::triggers::list", "payload": {}}))["triggers"]
            if function_id in [t.get("function_id") for t in triggers]:
                return
            await asyncio.sleep(0.01)
        raise AssertionError(f"{function_id} was never routed")

    def channels_left(self) -> int:
        """Channels made or promised and not gone yet."""
        channels = self.engine.router.channels
        return len(channels) + channels.promised


@pytest.fixture
async def site(engine):
    worker = await register_worker_async(engine.urls[0], InitOptions(worker_name="site"))
    async with aiohttp.ClientSession() as session:
        yield Site(engine, worker, session)
    await worker.shutdown_async()


async def control(writer: ChannelWriter, **message) -> None:
    await writer.send_message_async(json.dumps(message))


async def test_a_response_streamed_before_the_handler_returns_is_sent_as_it_comes(site):
    released = asyncio.Event()

    async def handler(req):
        res: ChannelWriter = req["response"]
        await control(res, type="set_status", status_code=99)  # out of range: ignored
        await control(res, type="set_status", status_code=202)
        await control(res, type="set_headers", headers={"x-one": "1", "content-length": "3", "connection": "keep-alive",
                                                          "bad name": "x", "x-num": 5})
        await control(res, type="set_headers", headers={"x-two": "2"})
        await res.write(b"first ")
        await released.wait()  # the client has the first chunk before the rest is written
        await res.write(b"second")
        await res.close_async()
        return None

    await site.route("stream::early", handler, "early")
    async with site.session.get(site.base + "/early") as response:
        assert response.status == 202
        assert (response.headers["x-one"], response.headers["x-two"]) == ("1", "2")
        assert "content-length" not in response.headers and "x-num" not in response.headers
        assert response.headers["transfer-encoding"] == "chunked"
        assert await response.content.readexactly(6) == b"first "
        released.set()
        assert await response.content.read() == b"second"
    assert site.channels_left() == 0


async def test_a_buffered_answer_still_works_and_leaves_no_channel(site):
    await site.route("stream::plain", lambda req: {"status_code": 200, "body": {"ok": True}}, "plain")
    async with site.session.get(site.base + "/plain") as response:
        assert (response.status, await response.json()) == (200, {"ok": True})
    assert site.channels_left() == 0


async def test_a_response_closed_without_a_body_is_empty_with_its_status(site):
    async def handler(req):
        await control(req["response"], type="set_status", status_code=204)
        await req["response"].close_async()
        return None

    await site.route("stream::empty", handler, "empty")
    async with site.session.get(site.base + "/empty") as response:
        assert (response.status, await response.read()) == (204, b"")


async def test_a_null_answer_that_never_starts_a_response_is_504_at_the_deadline(site):
    await site.route("stream::silent", lambda req: None, "silent")
    async with site.session.get(site.base + "/silent") as response:
        assert response.status == 504
        assert (await response.json())["error"]["code"] == "TIMEOUT"
    assert site.channels_left() == 0


async def test_a_request_body_comes_in_frames_of_at_most_64_kib(site):
    sizes = []

    async def handler(req):
        reader: ChannelReader = req["request_body"]
        async for chunk in reader:
            sizes.append(len(chunk))
        return {"status_code": 200, "body": {"body_is_null": req["body"] is None}}

    await site.route("stream::sizes", handler, "sizes", "POST")
    for content_type in ("application/json", "application/octet-stream"):
        sizes.clear()
        payload = json.dumps(["x" * 1000] * 500).encode()  # ~500 KB
        async with site.session.post(site.base + "/sizes", data=payload, headers={"content-type": content_type}) as response:
            answer = await response.json()
        assert answer == {"body_is_null": content_type != "application/json"}
        assert sum(sizes) == len(payload) and max(sizes) <= MAX_FRAME_SIZE


async def test_a_client_that_leaves_mid_download_cuts_the_handlers_writer_off(site):
    outcome: asyncio.Future = asyncio.get_running_loop().create_future()

    async def handler(req):
        res: ChannelWriter = req["response"]
        try:
            for _ in range(100_000):  # 6.5 GB: far more than any buffer on the way
                await res.write(b"x" * 65536)
        except ConnectionError as exc:
            outcome.set_result(exc)
        return None

    await site.route("stream::endless", handler, "endless")
    async with site.session.get(site.base + "/endless") as response:
        assert len(await response.content.readexactly(1024 * 1024)) == 1024 * 1024
        response.close()
    assert isinstance(await asyncio.wait_for(outcome, 20), ConnectionError)
    for _ in range(200):
        if site.channels_left() == 0:
            break
        await asyncio.sleep(0.01)
    assert site.channels_left() == 0
