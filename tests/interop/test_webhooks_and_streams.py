"""HTTP-invoked functions and custom stream backends registered by the official SDKs (Python
0.25.0, Node 0.22.1) and by ours, against our engine: a webhook served by a local aiohttp app is
called directly and through a trigger, and no more after unregister; a stream served from a
worker's memory is used through stream::set/get/delete."""

from __future__ import annotations

import asyncio
import json

import pytest
from aiohttp import web

from helpers import LOCAL_MODULES, Workers, call_results

pytestmark = pytest.mark.interop

RUNTIMES = ["python", "node", "ours"]
CONFIG = (
    "workers:\n  - name: iii-worker-manager\n    config:\n      host: 127.0.0.1\n      port: 0\n"
    + LOCAL_MODULES
    + "  - name: iii-http-functions\n    config:\n"
    "      security: {url_allowlist: [127.0.0.1], block_private_ips: false, require_https: false}\n"
)


@pytest.fixture
async def webhook():
    """A local aiohttp app recording requests and answering ``{"ok": true}``."""
    requests: asyncio.Queue = asyncio.Queue()

    async def handle(request: web.Request) -> web.Response:
        await requests.put((request.method, request.path, json.loads(await request.read() or b"null")))
        return web.json_response({"ok": True})

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handle)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    try:
        yield f"http://127.0.0.1:{runner.addresses[0][1]}", requests
    finally:
        await runner.cleanup()


@pytest.fixture
async def surface_workers(procs, tmp_path, official_python, node) -> Workers:
    engine = await procs.engine(config=CONFIG, tmp=tmp_path)
    return Workers(procs, engine, official_python, node)


@pytest.mark.parametrize("runtime", RUNTIMES)
async def test_webhook_function_called_directly_and_by_a_trigger_until_unregistered(surface_workers, webhook, runtime):
    base, requests = webhook
    calls = [
        {"function_id": "hooks::hit", "payload": {"hello": "world", "count": 1}},
        {"function_id": "publish", "payload": {"topic": "news", "data": {"n": 1}}},
        {"unregister": "hooks::hit"},
        {"function_id": "hooks::hit", "payload": {"again": True}},
        {"function_id": "publish", "payload": {"topic": "news", "data": {"n": 2}}},
    ]
    owner = await surface_workers.start(
        runtime, f"hooks-{runtime}", "--webhook", f"hooks::hit={base}/webhook",
        "--bind", 'hooks::hit=subscribe={"topic": "news"}', calls=calls,
    )
    direct, published, unregistered, after, published_after = await call_results(owner, len(calls))
    assert direct["result"] == {"ok": True}
    method, path, body = await asyncio.wait_for(requests.get(), 10)
    assert (method, path) == ("POST", "/webhook")
    assert {"hello": "world", "count": 1}.items() <= body.items()
    assert published == {"call": 1, "result": None}
    assert await asyncio.wait_for(requests.get(), 10) == ("POST", "/webhook", {"n": 1})
    assert after["error"]["code"] == "function_not_found"
    assert published_after == {"call": 4, "result": None}
    await owner.key("stopped")
    assert requests.empty()  # nothing reached the webhook after unregister


@pytest.mark.parametrize("runtime", RUNTIMES)
async def test_custom_stream_served_by_a_worker(surface_workers, runtime):
    item = {"stream_name": f"custom-{runtime}", "group_id": "g", "item_id": "i"}
    calls = [
        {"function_id": "stream::set", "payload": {**item, "data": {"name": "Test", "value": 100}}},
        {"function_id": "stream::get", "payload": item},
        {"function_id": "stream::list_groups", "payload": {"stream_name": item["stream_name"]}},
        {"function_id": "stream::delete", "payload": item},
        {"function_id": "stream::get", "payload": item},
        {"function_id": "stream::get", "payload": {**item, "stream_name": "not-custom"}},
    ]
    owner = await surface_workers.start(runtime, f"streams-{runtime}", "--stream", item["stream_name"], calls=calls)
    stored, got, groups, deleted, gone, other = await call_results(owner, len(calls))
    assert stored["result"] == {"old_value": None, "new_value": {"name": "Test", "value": 100}}
    assert got["result"] == {"name": "Test", "value": 100}
    assert groups["result"] == ["g"]
    assert deleted["result"] == {"old_value": {"name": "Test", "value": 100}}
    assert gone["result"] is None and other["result"] is None
