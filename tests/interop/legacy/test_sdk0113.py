"""Workers on the official Python iii-sdk 0.11.3, the version older framework releases still pin,
against our engine, together with 0.25.0 and Node 0.22.1 workers."""

from __future__ import annotations

import asyncio
import json
import re
import signal
import urllib.request

import pytest

from legacy_workers import start_sdk0113
from helpers import RawClient, call_results

pytestmark = pytest.mark.interop


def is_event(kind: str, attempt=None):
    return lambda item: (
        isinstance(item, dict) and item.get("type") == kind and (attempt is None or item.get("attempt") == attempt)
    )


async def worker_row(engine, name: str) -> dict:
    client = await RawClient.connect(engine.url)
    try:
        rows = (await client.call("engine::workers::list", {}))["result"]["workers"]
    finally:
        await client.close()
    (row,) = [w for w in rows if w["name"] == name]
    return row


async def test_a_0113_worker_connects_registers_and_leaves_cleanly(legacy, engine):
    owner = await legacy.start(
        "sdk0113", "old-owner", "--fn", "old::echo=echo", "--watch", "engine::workers-available", "--stay"
    )
    ready = await owner.key("ready")  # its list_functions() and list_workers() worked
    row = await worker_row(engine, "old-owner")
    assert (row["id"], row["runtime"], row["version"]) == (ready["worker_id"], "python", "0.11.3")
    assert row["functions"] == ["old-owner::on-0", "old::echo"] and row["function_count"] == 2
    client = await RawClient.connect(engine.url)
    bindings = (await client.call("engine::triggers::list", {}))["result"]["triggers"]
    assert [b["trigger_type"] for b in bindings if b["function_id"] == "old-owner::on-0"] == [
        "engine::workers-available"
    ]
    await legacy.start("python", "newcomer", "--stay")
    joined = await owner.expect(lambda item: isinstance(item, dict) and item.get("event", {}).get("event") == "worker_connected")
    assert joined["event"]["worker_id"]
    assert (await worker_row(engine, "old-owner"))["metrics"]["frames_dropped"] == 0  # it all parsed
    owner.close_stdin()
    await owner.key("stopped")
    assert await owner.wait() == 0
    functions = (await client.call("engine::functions::list", {}))["result"]["functions"]
    assert "old::echo" not in [f["function_id"] for f in functions]
    await client.close()


@pytest.mark.parametrize(
    "server, client",
    [("sdk0113", "python"), ("sdk0113", "node"), ("python", "sdk0113"), ("node", "sdk0113")],
)
async def test_calls_both_ways_with_current_sdks(legacy, server, client):
    owner = await legacy.start(server, f"math-{server}", "--fn", "math::add=add", "--fn", "err::fail=fail", "--stay")
    await owner.key("ready")
    caller = await legacy.start(
        client,
        f"caller-{client}",
        calls=[
            {"function_id": "math::add", "payload": {"a": 2, "b": 3}},
            {"function_id": "err::fail", "payload": {}},
            {"function_id": "nope::missing", "payload": {}},
        ],
    )
    added, failed, missing = await call_results(caller, 3)
    assert added["result"] == {"c": 5}
    assert failed["error"]["code"] == "invocation_failed" and "boom from err::fail" in failed["error"]["message"]
    assert missing["error"]["code"] == "function_not_found"


async def test_cron_calls_a_0113_worker_every_second(legacy):
    watcher = await legacy.start("sdk0113", "old-cron", "--watch", 'cron={"expression": "* * * * * *"}', "--stay")
    await watcher.key("ready")
    first = await watcher.expect(is_event("cron"), timeout=10)
    assert first["event"]["trigger"] == "cron" and first["event"]["job_id"]
    await watcher.expect(
        lambda item: is_event("cron")(item) and item["event"]["scheduled_time"] > first["event"]["scheduled_time"],
        timeout=10,
    )


async def test_state_and_stream_triggers_reach_a_0113_worker(legacy):
    watcher = await legacy.start(
        "sdk0113", "old-watch",
        "--watch", 'state={"scope": "orders", "metadata": {"step": "audit"}}',
        "--watch", 'stream={"stream_name": "chat", "metadata": {"step": "feed"}}',
        "--stay",
    )
    await watcher.key("ready")
    writer = await legacy.start(
        "python",
        "writer",
        calls=[
            {"function_id": "state::set", "payload": {"scope": "orders", "key": "o-1", "value": {"total": 10}}},
            {"function_id": "stream::set",
             "payload": {"stream_name": "chat", "group_id": "room", "item_id": "m-1", "data": {"text": "hi"}}},
        ],
    )
    await call_results(writer, 2)
    state = await watcher.expect(is_event("state"))
    assert state["event"] == {"type": "state", "event_type": "state:created", "scope": "orders", "key": "o-1",
                              "old_value": None, "new_value": {"total": 10}}
    stream = (await watcher.expect(is_event("stream")))["event"]
    assert (stream["streamName"], stream["groupId"], stream["id"]) == ("chat", "room", "m-1")
    assert stream["event"]["data"] == {"text": "hi"}


async def test_enqueue_reaches_queue_and_durable_subscribers_with_a_retry(legacy):
    """The pre-0.11 names as frameworks on 0.11.3 use them: ``enqueue {topic, data}`` and a
    ``queue {topic, queue_config}`` binding whose first delivery fails and is retried. The same
    topic under the current names reaches the same subscribers."""
    config = {"topic": "orders", "metadata": {"step": "ProcessOrder"},
              "queue_config": {"type": "standard", "maxRetries": 2, "backoffDelayMs": 100}}
    old = await legacy.start("sdk0113", "old-sub", "--watch-flaky", "queue=" + json.dumps(config), "--stay")
    new = await legacy.start("python", "new-sub", "--watch", 'durable:subscriber={"topic": "orders"}', "--stay")
    await old.key("ready")
    await new.key("ready")
    publisher = await legacy.start(
        "sdk0113", "old-pub", calls=[{"function_id": "enqueue", "payload": {"topic": "orders", "data": {"id": 1}}}]
    )
    (published,) = await call_results(publisher, 1)
    assert "error" not in published
    first = await old.expect(is_event("queue", attempt=1))
    retried = await old.expect(is_event("queue", attempt=2))
    assert first["event"] == retried["event"] == {"id": 1}
    assert (await new.expect(is_event("durable:subscriber")))["event"] == {"id": 1}

    node = await legacy.start(
        "node", "new-pub", calls=[{"function_id": "iii::durable::publish", "payload": {"topic": "orders", "data": {"id": 2}}}]
    )
    await call_results(node, 1)
    assert (await old.expect(is_event("queue", attempt=3)))["event"] == {"id": 2}
    await new.expect(lambda item: is_event("durable:subscriber")(item) and item["event"] == {"id": 2})
    assert [line["event"] for line in old.lines if is_event("queue")(line)] == [{"id": 1}, {"id": 1}, {"id": 2}]


async def test_enqueue_action_from_0113_runs_on_a_current_worker(legacy):
    owner = await legacy.start("node", "jobs-node", "--fn", "jobs::run=slow", "--stay")
    await owner.key("ready")
    caller = await legacy.start(
        "sdk0113", "old-enqueuer", calls=[{"function_id": "jobs::run", "payload": {"seconds": 0}, "action": "default"}]
    )
    (accepted,) = await call_results(caller, 1)
    assert list(accepted["result"]) == ["messageReceiptId"]
    await owner.key("started", "jobs::run")


async def test_http_requests_reach_a_0113_worker_answered_by_its_return_value(legacy, engine):
    worker = await legacy.start("sdk0113", "old-web", "--http", '{"api_path": "hello/:name", "http_method": "POST"}', "--stay")
    await worker.key("ready")
    (base,) = {m.group(1) for line in engine.proc.lines if (m := re.search(r"iii-http listening on (http://\S+)", str(line)))}
    request = urllib.request.Request(
        f"{base}/hello/ada?lang=en", data=b'{"greeting": "hi"}', method="POST", headers={"Content-Type": "application/json"}
    )
    with await asyncio.to_thread(urllib.request.urlopen, request, timeout=10) as response:
        assert (response.status, response.headers["x-sdk"]) == (201, "0.11.3")
        assert json.loads(response.read()) == {"hello": "ada"}
    event = (await worker.expect(is_event("http")))["event"]
    assert (event["path_params"], event["query_params"], event["body"]) == ({"name": "ada"}, {"lang": "en"}, {"greeting": "hi"})


async def test_a_0113_worker_comes_back_after_an_engine_restart(procs, tmp_path, sdk0113_python):
    """0.11.3 reconnects only after an abnormal close (a 1000/1001 close ends it quietly): the
    engine closes its workers with 1012 when it stops, and the worker registers again."""
    first = await procs.engine(tmp=tmp_path / "first")
    port = int(first.url.rstrip("/").rsplit(":", 1)[1])
    worker = await start_sdk0113(procs, sdk0113_python, first.url, "old-survivor", "--fn", "old::echo=echo", "--stay")
    await worker.key("ready")
    first.proc.kill(signal.SIGTERM)
    assert await first.proc.wait() == 0
    second = await procs.engine(tmp=tmp_path / "second", port=port)
    client = await RawClient.connect(second.url)
    await client.wait_for_function("old::echo")
    answer = await client.call("old::echo", {"x": 1})
    assert answer["result"]["x"] == 1
    await client.close()


async def test_a_refused_0113_worker_retries_until_its_name_is_free(legacy, engine):
    """0.11.3 ignores ``registrationrejected``; the engine's close (1008, not 1000) makes it
    retry with backoff, so a worker whose name is held (e.g. by its own half-open old socket)
    gets in once the holder is gone, instead of sitting dead."""
    holder = await legacy.start("sdk0113", "same-name", "--fn", "first::fn=echo", "--stay")
    await holder.key("ready")
    refused = await legacy.start("sdk0113", "same-name", "--fn", "second::fn=echo", "--stay")
    await engine.proc.expect(lambda line: "rejected: the name 'same-name'" in str(line))
    holder.close_stdin()
    await holder.key("stopped")
    client = await RawClient.connect(engine.url)
    await client.wait_for_function("second::fn", timeout=40)
    assert (await client.call("second::fn", {"x": 1}))["result"]["x"] == 1
    await client.close()


async def test_http_requests_reach_a_0113_worker_answered_through_its_response_channel(legacy, engine):
    """0.11.3's ``http()`` handlers (and the frameworks built on it) read ``request_body`` and
    answer through the ``response`` channel: status and headers as messages, then the body."""
    client = await RawClient.connect(engine.url)
    listed = (await client.call("engine::functions::list", {"include_internal": True}))["result"]["functions"]
    await client.close()
    if "engine::channels::create" not in [f["function_id"] for f in listed]:
        pytest.skip("this engine has no channels yet, so no streaming HTTP")
    worker = await legacy.start(
        "sdk0113", "old-stream", "--http-stream", '{"api_path": "echo/:name", "http_method": "POST"}', "--stay"
    )
    await worker.key("ready")
    (base,) = {m.group(1) for line in engine.proc.lines if (m := re.search(r"iii-http listening on (http://\S+)", str(line)))}
    request = urllib.request.Request(f"{base}/echo/ada", data=b"some bytes", method="POST",
                                     headers={"Content-Type": "application/octet-stream"})
    with await asyncio.to_thread(urllib.request.urlopen, request, timeout=10) as response:
        assert (response.status, response.headers["x-sdk"]) == (202, "0.11.3")
        assert response.read() == b"hello ada: some bytes"
    event = (await worker.expect(is_event("http")))["event"]
    assert event == {"path_params": {"name": "ada"}, "body": "some bytes"}
