"""Official SDK workers (Python iii-sdk 0.25.0, Node iii-sdk 0.22.1) against our engine, and
our SDK against the official Node one."""

from __future__ import annotations

import asyncio
import json
import re
import urllib.request

import pytest

from helpers import RawClient, call_results

pytestmark = pytest.mark.interop

OTHER = {"python": "node", "node": "python"}


@pytest.mark.parametrize(
    "server, client", [("python", "node"), ("node", "python"), ("ours", "node"), ("node", "ours")]
)
async def test_math_add_across_runtimes(workers, server, client):
    await (await workers.start(server, f"math-{server}", "--fn", "math::add=add", "--stay")).key("ready")
    caller = await workers.start(
        client,
        "caller",
        calls=[
            {"function_id": "math::add", "payload": {"a": 2, "b": 3}},
            {"function_id": "math::add", "payload": {"a": -1.5, "b": 0.5}},
        ],
    )
    first, second = await call_results(caller, 2)
    assert first["result"] == {"c": 5}
    assert second["result"] == {"c": -1.0}


@pytest.mark.parametrize("runtime", ["python", "node"])
async def test_unknown_function_is_function_not_found(workers, runtime):
    caller = await workers.start(runtime, "caller", calls=[{"function_id": "nope::missing", "payload": {}}])
    (outcome,) = await call_results(caller, 1)
    assert outcome["error"]["code"] == "function_not_found"
    assert "nope::missing" in outcome["error"]["message"]


@pytest.mark.parametrize("server", ["python", "node"])
async def test_raising_handler_fails_the_call_and_the_engine_keeps_serving(workers, server):
    owner = await workers.start(server, "owner", "--fn", "err::fail=fail", "--fn", "ok::add=add", "--stay")
    await owner.key("ready")
    caller = await workers.start(
        OTHER[server],
        "caller",
        calls=[
            {"function_id": "err::fail", "payload": {}},
            {"function_id": "ok::add", "payload": {"a": 1, "b": 1}},
        ],
    )
    failed, ok = await call_results(caller, 2)
    assert failed["error"]["code"] == "invocation_failed"
    assert "boom from err::fail" in failed["error"]["message"]
    assert ok["result"] == {"c": 2}


@pytest.mark.parametrize("owner_runtime", ["python", "node"])
async def test_killed_owner_stops_in_flight_calls(workers, engine, owner_runtime):
    owner = await workers.start(owner_runtime, "sleeper", "--fn", "slow::sleep=slow", "--stay")
    await owner.key("ready")
    caller = await workers.start(
        OTHER[owner_runtime],
        "caller",
        calls=[{"function_id": "slow::sleep", "payload": {"seconds": 60}, "timeout_ms": 60000}],
    )
    await owner.key("started")
    owner.kill()
    (outcome,) = await call_results(caller, 1)
    assert outcome["error"]["code"] == "invocation_stopped"
    client = await RawClient.connect(engine.url)
    listed = await client.call("engine::functions::list", {})
    assert "slow::sleep" not in [f["function_id"] for f in listed["result"]["functions"]]


@pytest.mark.parametrize("runtime", ["python", "node"])
async def test_shutdown_removes_the_workers_functions(workers, engine, runtime):
    owner = await workers.start(runtime, "short-lived", "--fn", "tmp::echo=echo", "--stay")
    await owner.key("ready")
    client = await RawClient.connect(engine.url)
    before = await client.call("engine::workers::list", {})
    assert "short-lived" in [w["name"] for w in before["result"]["workers"]]
    owner.close_stdin()
    await owner.key("stopped")
    assert await owner.wait() == 0
    functions = (await client.call("engine::functions::list", {}))["result"]["functions"]
    assert "tmp::echo" not in [f["function_id"] for f in functions]
    after = (await client.call("engine::workers::list", {}))["result"]["workers"]
    assert "short-lived" not in [w["name"] for w in after]


async def test_second_worker_with_the_same_name_is_rejected(workers, engine):
    first = await workers.python("dup", "--fn", "dup::one=echo", "--stay")
    first_ready = await first.key("ready")
    second = await workers.python("dup", calls=[{"function_id": "dup::one", "payload": {"x": 1}}])
    await second.key("state", "failed")
    (outcome,) = await call_results(second, 1)
    assert outcome["error"]["type"] == "RegistrationRejectedError"
    client = await RawClient.connect(engine.url)
    rows = (await client.call("engine::workers::list", {}))["result"]["workers"]
    assert [w["id"] for w in rows if w["name"] == "dup"] == [first_ready["worker_id"]]


@pytest.mark.parametrize("runtime", ["python", "node"])
async def test_every_discovery_function(workers, runtime):
    server = await workers.start(
        OTHER[runtime], "disc-server", "--fn", "disc::add=add", "--watch", "engine::workers-available", "--stay"
    )
    await server.key("ready")
    caller = await workers.start(
        runtime,
        "disc-caller",
        calls=[
            {"function_id": "engine::workers::list", "payload": {}},
            {"function_id": "engine::functions::list", "payload": {"include_internal": False}},
            {"function_id": "engine::functions::list", "payload": {"include_internal": True}},
            {"function_id": "engine::triggers::list", "payload": {"include_internal": False}},
            {"function_id": "engine::trigger-types::list", "payload": {"include_internal": True}},
            {"function_id": "engine::workers::info", "payload": {"name": "disc-server"}},
            {"function_id": "engine::functions::info", "payload": {"function_id": "disc::add"}},
        ],
    )
    workers_, functions, functions_all, triggers, trigger_types, info, fn_info = [
        outcome["result"] for outcome in await call_results(caller, 7)
    ]

    rows = {w["name"]: w for w in workers_["workers"]}
    assert {"disc-server", "disc-caller", "iii-engine-functions"} <= set(rows)
    served = rows["disc-server"]
    assert served["runtime"] == OTHER[runtime]
    assert served["status"] in ("available", "busy")
    assert served["function_count"] == 2
    assert isinstance(served["pid"], int) and isinstance(served["connected_at_ms"], int)
    assert set(served["metrics"]) >= {"invocations_handled", "invocations_in_flight"}
    # Telemetry sockets (/otel) are never workers: one row per SDK worker.
    assert sum(1 for w in workers_["workers"] if w["runtime"] in ("python", "node")) == 2

    ids = [f["function_id"] for f in functions["functions"]]
    assert "disc::add" in ids and "engine::queue::enqueue" in ids  # listed, as the spec says
    assert not any(i.startswith("engine::") and not i.startswith("engine::queue::") for i in ids)
    all_ids = [f["function_id"] for f in functions_all["functions"]]
    assert "engine::workers::list" in all_ids and "disc::add" in all_ids
    assert next(f for f in functions["functions"] if f["function_id"] == "disc::add")["worker_name"] == "disc-server"

    bindings = [t for t in triggers["triggers"] if t["function_id"] == "disc-server::on-0"]
    assert [b["trigger_type"] for b in bindings] == ["engine::workers-available"]
    assert bindings[0]["config"] == {}

    types = {t["id"]: t for t in trigger_types["trigger_types"]}
    assert {"engine::workers-available", "engine::functions-available"} <= set(types)
    assert types["engine::workers-available"]["instance_count"] == 1
    assert "request_schema" in types["engine::workers-available"]

    assert info["worker"]["name"] == "disc-server"
    assert [f["function_id"] for f in info["functions"]] == ["disc-server::on-0", "disc::add"]
    assert fn_info["function_id"] == "disc::add" and fn_info["worker_name"] == "disc-server"


async def test_workers_list_selects_one_worker_by_id(workers):
    server = await workers.python("one", "--fn", "one::echo=echo", "--stay")
    ready = await server.key("ready")
    caller = await workers.node(
        "lister", calls=[{"function_id": "engine::workers::list", "payload": {"worker_id": ready["worker_id"]}}]
    )
    (outcome,) = await call_results(caller, 1)
    assert [w["name"] for w in outcome["result"]["workers"]] == ["one"]


async def test_discovery_triggers_fire_on_the_change(workers):
    watchers = [
        await workers.start(
            runtime, f"watch-{runtime}", "--watch", "engine::workers-available",
            "--watch", "engine::functions-available", "--stay",
        )
        for runtime in ("python", "node")
    ]
    for watcher in watchers:
        await watcher.key("ready")
    transient = await workers.python("transient", "--fn", "tmp::fn=echo", "--stay")
    worker_id = (await transient.key("ready"))["worker_id"]

    def worker_event(kind):
        return lambda item: isinstance(item, dict) and item.get("event", {}) == {"event": kind, "worker_id": worker_id}

    def functions_event(present):
        def check(item):
            if not (isinstance(item, dict) and isinstance(item.get("event"), dict)):
                return False
            functions = item["event"].get("functions")
            return functions is not None and ("tmp::fn" in [f["function_id"] for f in functions]) == present

        return check

    for watcher in watchers:
        await watcher.expect(worker_event("worker_connected"))
        await watcher.expect(functions_event(True))
    transient.close_stdin()
    await transient.key("stopped")
    for watcher in watchers:
        await watcher.expect(worker_event("worker_disconnected"))
        added = await watcher.expect(functions_event(True))
        added_at = next(i for i, line in enumerate(watcher.lines) if line is added)
        removed = await watcher.expect(
            lambda item: functions_event(False)(item)
            and next(i for i, line in enumerate(watcher.lines) if line is item) > added_at
        )
        assert removed["event"]["event"] == "functions_changed"


@pytest.mark.parametrize("runtime", ["python", "node"])
async def test_state_and_pubsub_triggers_reach_official_workers(workers, runtime):
    """The built-in modules as the official SDKs use them: state::* and publish through
    trigger(), the state and subscribe trigger types through registerTrigger."""
    watcher = await workers.start(
        runtime, f"watch-{runtime}",
        "--watch", 'state={"scope": "orders"}', "--watch", 'subscribe={"topic": "news"}', "--stay",
    )
    await watcher.key("ready")
    writer = await workers.start(
        OTHER[runtime],
        "writer",
        calls=[
            {"function_id": "state::set", "payload": {"scope": "orders", "key": "o-1", "value": {"total": 10}}},
            {"function_id": "state::set", "payload": {"scope": "elsewhere", "key": "x", "value": 1}},
            {"function_id": "state::update", "payload": {"scope": "orders", "key": "o-1", "ops": [{"type": "increment", "path": "total", "by": 5}]}},
            {"function_id": "publish", "payload": {"topic": "news", "data": {"headline": "hi"}}},
            {"function_id": "state::get", "payload": {"scope": "orders", "key": "o-1"}},
        ],
    )
    created, elsewhere, updated, published, got = await call_results(writer, 5)
    assert created["result"] == {"old_value": None, "new_value": {"total": 10}}
    assert updated["result"] == {"old_value": {"total": 10}, "new_value": {"total": 15}}
    assert "error" not in elsewhere and "error" not in published
    assert got["result"] == {"total": 15}
    await watcher.expect(lambda item: isinstance(item, dict) and item.get("type") == "subscribe")
    await watcher.expect(lambda item: isinstance(item, dict) and item.get("event", {}).get("event_type") == "state:updated")
    events = [(item["type"], item["event"]) for item in watcher.lines if isinstance(item, dict) and "event" in item]
    # Each delivery is its own call: the SDK may run them concurrently, so order is not asserted.
    assert sorted(events, key=repr) == sorted([
        ("state", {"type": "state", "event_type": "state:created", "scope": "orders", "key": "o-1",
                   "old_value": None, "new_value": {"total": 10}}),
        ("state", {"type": "state", "event_type": "state:updated", "scope": "orders", "key": "o-1",
                   "old_value": {"total": 10}, "new_value": {"total": 15}}),
        ("subscribe", {"headline": "hi"}),
    ], key=repr)


@pytest.mark.parametrize("runtime", ["python", "node"])
async def test_cron_trigger_calls_an_official_worker_every_second(workers, runtime):
    watcher = await workers.start(runtime, f"cron-{runtime}", "--watch", 'cron={"expression": "* * * * * *"}', "--stay")
    await watcher.key("ready")
    first = await watcher.expect(lambda item: isinstance(item, dict) and item.get("type") == "cron", timeout=10)
    event = first["event"]
    assert event["trigger"] == "cron" and event["job_id"]
    assert event["scheduled_time"].endswith("+00:00") and event["actual_time"] >= event["scheduled_time"]
    await watcher.expect(
        lambda item: isinstance(item, dict) and item.get("type") == "cron"
        and item["event"]["scheduled_time"] > event["scheduled_time"],
        timeout=10,
    )


@pytest.mark.parametrize("server, client", [("python", "node"), ("node", "python")])
async def test_enqueued_jobs_reach_official_workers(workers, server, client):
    """TriggerAction.Enqueue from one official SDK; the job runs on a worker of the other."""
    owner = await workers.start(server, f"jobs-{server}", "--fn", "jobs::run=slow", "--stay")
    await owner.key("ready")
    caller = await workers.start(
        client,
        "enqueuer",
        calls=[
            {"function_id": "jobs::run", "payload": {"seconds": 0}, "action": "default"},
            {"function_id": "jobs::run", "payload": {"seconds": 0}, "action": "nope"},
        ],
    )
    accepted, refused = await call_results(caller, 2)
    assert list(accepted["result"]) == ["messageReceiptId"]
    assert refused["error"]["code"] == "enqueue_error"
    assert "Queue 'nope' not found" in refused["error"]["message"]
    await owner.key("started", "jobs::run")


@pytest.mark.parametrize("runtime", ["python", "node"])
async def test_durable_topic_messages_reach_official_subscribers(workers, runtime):
    watcher = await workers.start(
        runtime, f"durable-{runtime}", "--watch", 'durable:subscriber={"topic": "orders"}', "--stay"
    )
    await watcher.key("ready")
    publisher = await workers.start(
        OTHER[runtime], "publisher", calls=[{"function_id": "iii::durable::publish", "payload": {"topic": "orders", "data": {"id": 7}}}]
    )
    (published,) = await call_results(publisher, 1)
    assert "error" not in published
    delivered = await watcher.expect(lambda item: isinstance(item, dict) and item.get("type") == "durable:subscriber")
    assert delivered["event"] == {"id": 7}


@pytest.mark.parametrize("runtime", ["python", "node"])
async def test_http_requests_reach_official_workers(workers, engine, runtime):
    watcher = await workers.start(
        runtime, f"web-{runtime}", "--watch", 'http={"api_path": "hello/:name", "http_method": "POST"}', "--stay"
    )
    await watcher.key("ready")
    (base,) = {m.group(1) for line in engine.proc.lines if (m := re.search(r"iii-http listening on (http://\S+)", str(line)))}
    request = urllib.request.Request(
        f"{base}/hello/ada?lang=en", data=b'{"greeting": "hi"}', method="POST", headers={"Content-Type": "application/json"}
    )
    with await asyncio.to_thread(urllib.request.urlopen, request, timeout=10) as response:
        assert response.status == 200 and json.loads(response.read()) == {}  # what the handler answered
    delivered = await watcher.expect(lambda item: isinstance(item, dict) and item.get("type") == "http")
    event = delivered["event"]
    assert (event["path_params"], event["query_params"], event["body"]) == ({"name": "ada"}, {"lang": "en"}, {"greeting": "hi"})
    assert (event["method"], event["path"]) == ("POST", "hello/:name")
    # The request's channels reached the handler as live channel ends.
    assert (event["request_body"], event["response"]) == ("<ChannelReader>", "<ChannelWriter>")
