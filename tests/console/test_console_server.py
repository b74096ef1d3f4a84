"""The console's server and live hub without a browser or an engine (a stand-in link)."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestClient, TestServer

from iii.console import ConsoleOptions, LiveHub, make_app
from iii.console._server import HUB
from iii.console._link import LiveClient, _event_detail
from iii.errors import InvocationError


class FakeLink:
    """Answers calls from a table; an absent function is ``function_not_found``."""

    state = "connected"

    def __init__(self, answers: dict[str, Any]) -> None:
        self.answers = answers
        self.calls: list[tuple[str, Any, int]] = []

    async def call(self, function_id: str, payload: Any = None, timeout_ms: int = 5000) -> Any:
        self.calls.append((function_id, payload, timeout_ms))
        if function_id not in self.answers:
            raise InvocationError("function_not_found", f"Function {function_id} not found", function_id)
        return self.answers[function_id]


async def client_for(link: FakeLink, **options: Any) -> TestClient:
    app = make_app(ConsoleOptions(**options), link, LiveHub())  # type: ignore[arg-type]
    client = TestClient(TestServer(app, host="127.0.0.1"))
    await client.start_server()
    return client


async def test_hub_coalesces_a_burst_per_topic_and_keeps_the_last_detail():
    hub = LiveHub()
    page = hub.subscribe()
    hub.publish("workers", {"event": "worker_connected"})
    hub.publish("workers", {"event": "worker_disconnected"})
    hub.publish("state", {"scope": "carts"})
    notices = [json.loads(await asyncio.wait_for(page.queue.get(), 1)) for _ in range(2)]
    assert notices == [
        {"topic": "workers", "detail": {"event": "worker_disconnected"}},
        {"topic": "state", "detail": {"scope": "carts"}},
    ]
    assert page.queue.empty()


async def test_hub_drops_a_page_that_stops_reading():
    hub = LiveHub()
    stuck = hub.subscribe()
    for index in range(LiveClient.MAX_QUEUED + 1):
        hub.publish(f"topic-{index}")
    await asyncio.sleep(LiveHub.COALESCE_S * 2)  # one flush
    assert stuck.dropped and stuck not in hub.clients
    assert stuck.queue.qsize() == LiveClient.MAX_QUEUED + 1  # the notices, then the close marker


def test_event_detail_keeps_what_changed_not_values():
    assert _event_detail({"type": "state", "event_type": "state:updated", "scope": "s", "key": "k", "new_value": [1] * 9}) == {
        "event_type": "state:updated", "scope": "s", "key": "k",
    }
    assert _event_detail({"event": "functions_changed", "functions": []}) == {"event": "functions_changed"}
    assert _event_detail(None) is None


async def test_call_answers_results_and_errors_with_the_latency():
    link = FakeLink({"math::add": {"c": 5}})
    client = await client_for(link)
    try:
        ok = await (await client.post("/api/call", json={"function_id": "math::add", "payload": {"a": 2}})).json()
        assert ok["ok"] is True and ok["result"] == {"c": 5} and ok["latency_ms"] >= 0
        missing = await (await client.post("/api/call", json={"function_id": "nope::x"})).json()
        assert missing["ok"] is False and missing["error"]["code"] == "function_not_found"
        slow = await client.post("/api/call", json={"function_id": "math::add", "timeout_ms": 10**9})
        assert slow.status == 200 and link.calls[-1][2] == 60_000  # capped
        assert (await client.post("/api/call", data="{", headers={"Content-Type": "application/json"})).status == 400
    finally:
        await client.close()


async def test_cron_gives_each_expression_its_next_run():
    client = await client_for(FakeLink({}))
    try:
        answer = await (await client.post("/api/cron", json={"expressions": ["0 0 12 * * *", "not cron", "* * * * *"]})).json()
        first, bad, five_fields = answer["next"]
        assert first.endswith("T12:00:00+00:00")
        assert bad is None and five_fields is None  # the engine's cron takes 6 or 7 fields
    finally:
        await client.close()


async def test_worker_output_is_the_tail_of_the_managers_files(tmp_path, monkeypatch):
    monkeypatch.setenv("III_LOGS_DIR", str(tmp_path))
    (tmp_path / "hello").mkdir()
    (tmp_path / "hello" / "stdout.log").write_text("".join(f"line {n}\n" for n in range(100)))
    client = await client_for(FakeLink({}))
    try:
        answer = await (await client.get("/api/worker-output", params={"name": "hello"})).json()
        assert answer["available"] and answer["stdout"] == [f"line {n}" for n in range(80, 100)] and answer["stderr"] == []
        for name in ("../hello", "hello/..", "", "ghost"):
            assert (await (await client.get("/api/worker-output", params={"name": name})).json()) == {"available": False}
    finally:
        await client.close()
    remote = await client_for(FakeLink({}), engine_host="10.0.0.5")
    try:  # an engine elsewhere: its workers' files are not on this machine
        assert (await (await remote.get("/api/worker-output", params={"name": "hello"})).json()) == {"available": False}
    finally:
        await remote.close()


async def test_the_page_and_its_files_are_served_from_the_package():
    client = await client_for(FakeLink({}))
    try:
        index = await client.get("/")
        assert index.status == 200 and "/static/console.js" in await index.text()
        policy = index.headers["Content-Security-Policy"]
        assert "connect-src 'self'" in policy and "frame-ancestors 'none'" in policy
        script = await client.get("/static/console.js")
        assert script.status == 200 and "javascript" in script.content_type
        assert (await client.get("/static/../_server.py")).status in (403, 404)
        config = await (await client.get("/api/config")).json()
        assert config["connection"] == "connected" and config["bridgePort"] == 49134
    finally:
        await client.close()


async def test_stopping_closes_the_pages_live_sockets():
    client = await client_for(FakeLink({}))
    try:
        page = await client.ws_connect("/api/live")
        await asyncio.wait_for(client.app.shutdown(), 5)
        message = await asyncio.wait_for(page.receive(), 5)
        assert message.type == aiohttp.WSMsgType.CLOSE and message.data == aiohttp.WSCloseCode.GOING_AWAY
    finally:
        await client.close()


async def test_live_notices_reach_an_open_page_and_cross_site_sockets_are_refused():
    client = await client_for(FakeLink({}))
    try:
        page = await client.ws_connect("/api/live")
        client.app[HUB].publish("workers", {"event": "worker_connected", "worker_id": "w1"})
        notice = json.loads((await asyncio.wait_for(page.receive(), 5)).data)
        assert notice == {"topic": "workers", "detail": {"event": "worker_connected", "worker_id": "w1"}}
        with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
            await client.ws_connect("/api/live", headers={"Origin": "http://evil.example"})
        assert refused.value.status == 403
    finally:
        await client.close()


async def test_calls_fail_at_once_while_the_engine_is_away():
    from iii.console import EngineLink

    link = EngineLink("ws://127.0.0.1:9", LiveHub())  # nothing listens on the discard port
    link.start()
    try:
        with pytest.raises(InvocationError) as failed:
            await asyncio.wait_for(link.call("engine::workers::list"), 1)
        assert failed.value.code == "not_connected" and "ws://127.0.0.1:9" in failed.value.message
    finally:
        await link.stop()
