"""The queue and cron ``redis`` adapters across engines: a real redis-server (AOF, fsync always),
two engine processes on it, official-SDK workers (Python 0.25.0, Node 0.22.1) on each."""

from __future__ import annotations

import asyncio
import json
import signal
from pathlib import Path
from typing import Any, Callable

import pytest

from helpers import LOCAL_MODULES, EngineProc, Proc, Procs, RawClient, Workers, call_results

pytestmark = pytest.mark.interop

#: How long a job taken by an engine that stopped answering stays with it (short: quick tests).
VISIBILITY_MS = 1500
QUEUES = (
    "      queue_configs:\n"
    "        jobs: {max_retries: 3, backoff_ms: 200}\n"
    "        ordered: {type: fifo, message_group_field: group, max_retries: 3, backoff_ms: 100}\n"
)


def cluster_config(redis_url: str, visibility_ms: int = VISIBILITY_MS) -> str:
    return (
        "workers:\n  - name: iii-worker-manager\n    config: {host: 127.0.0.1, port: 0}\n" + LOCAL_MODULES
        + "  - name: iii-queue\n    config:\n"
        f"      adapter: {{name: redis, config: {{redis_url: '{redis_url}', visibility_timeout_ms: {visibility_ms}}}}}\n"
        + QUEUES
        + f"  - name: iii-cron\n    config:\n      adapter: {{name: redis, config: {{redis_url: '{redis_url}'}}}}\n"
    )


async def two_engines(procs: Procs, tmp: Path, redis_url: str, **options: Any) -> tuple[EngineProc, EngineProc]:
    engines = []
    for name in ("a", "b"):
        engines.append(await procs.engine(cluster_config(redis_url, **options), tmp / name))
    return engines[0], engines[1]


def received(proc: Proc, function_id: str) -> list[Any]:
    """The data of every call ``proc``'s record handler for ``function_id`` printed, in order."""
    return [line["data"] for line in proc.lines if isinstance(line, dict) and line.get("received") == function_id]


async def until(condition: Callable[[], Any], timeout: float = 20, what: str = "condition") -> Any:
    """Wait (bounded) for a condition read from a worker's output or the engine."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        outcome = condition()
        if asyncio.iscoroutine(outcome):
            outcome = await outcome
        if outcome:
            return outcome
        if loop.time() > deadline:
            raise AssertionError(f"{what}: not reached in {timeout}s")
        await asyncio.sleep(0.05)


async def result(client: RawClient, function_id: str, data: Any) -> Any:
    answer = await client.call(function_id, data)
    assert "error" not in answer, answer
    return answer["result"]


@pytest.fixture
def on(procs, official_python, node):
    """``on(engine)``: the scripted official-SDK workers of one engine."""
    return lambda engine: Workers(procs, engine, official_python, node)


@pytest.mark.parametrize("runtime", ["python", "node"])
async def test_a_job_accepted_by_one_engine_runs_on_a_worker_of_another(procs, tmp_path, redis_server, on, runtime):
    a, b = await two_engines(procs, tmp_path, redis_server.url)
    consumer = await on(b).start(runtime, "consumer", "--fn", "jobs::record=record", "--stay")
    await consumer.key("ready")
    calls = [{"function_id": "jobs::record", "payload": {"n": n}, "action": "jobs"} for n in range(5)]
    caller = await on(a).python("caller", calls=calls)
    receipts = [outcome["result"]["messageReceiptId"] for outcome in await call_results(caller, 5)]
    assert len(set(receipts)) == 5
    await until(lambda: len(received(consumer, "jobs::record")) >= 5, what="5 deliveries on engine b")
    assert sorted(data["n"] for data in received(consumer, "jobs::record")) == [0, 1, 2, 3, 4]

    client = await RawClient.connect(a.url)
    stats = await until(lambda: _stats_when(client, "jobs", lambda s: s["delivered"] == 5), what="stats")
    assert stats | {"config": None} == {
        "depth": 0, "in_flight": 0, "consumer_count": 1, "dlq_depth": 0, "config": None, "delivered": 5, "failed": 0,
    }
    await client.close()


async def test_with_iii_cluster_only_the_engine_serving_a_function_consumes_its_jobs(procs, tmp_path, redis_server, on):
    """Engine a lists b's function through iii-cluster, yet leaves its jobs to b's consumer
    (delivering them itself would add a hop over the link for every job)."""
    cluster = f"  - name: iii-cluster\n    config: {{redis_url: '{redis_server.url}', heartbeat_ms: 200}}\n"
    a = await procs.engine(cluster_config(redis_server.url) + cluster, tmp_path / "a")
    b = await procs.engine(cluster_config(redis_server.url) + cluster, tmp_path / "b")
    consumer = await on(b).start("python", "consumer", "--fn", "jobs::record=record", "--stay")
    await consumer.key("ready")
    client = await RawClient.connect(a.url)
    await client.wait_for_function("jobs::record")
    calls = [{"function_id": "jobs::record", "payload": {"n": n}, "action": "jobs"} for n in range(5)]
    await call_results(await on(a).python("caller", calls=calls), 5)
    await until(lambda: len(received(consumer, "jobs::record")) >= 5, what="5 deliveries on engine b")
    stats = await until(lambda: _stats_when(client, "jobs", lambda s: s["delivered"] == 5), what="stats")
    assert stats["consumer_count"] == 1
    # Engine b's consumer delivered them to its worker; a routed none of them over its link.
    assert await _calls_routed(client, "jobs::record") == 0
    probe_b = await RawClient.connect(b.url)
    assert await _calls_routed(probe_b, "jobs::record") == 5
    await probe_b.close()
    await client.close()


async def _calls_routed(client: RawClient, function_id: str) -> int:
    """How many calls to ``function_id`` the engine of ``client`` has routed."""
    metrics = await result(client, "engine::metrics::list", {})
    return metrics["engine_metrics"]["invocations"]["by_function"].get(function_id, 0)


async def _stats_when(client: RawClient, queue: str, predicate: Callable[[dict], bool]) -> Any:
    stats = await result(client, "engine::queue::topic_stats", {"queue": queue})
    return stats if predicate(stats) else None


async def test_retries_back_off_then_the_dead_letter_is_redriven_to_another_engine(procs, tmp_path, redis_server, on):
    a, b = await two_engines(procs, tmp_path, redis_server.url)
    failing = await on(a).python("failing", "--fn", "jobs::flaky=recordfail", "--stay")
    await failing.key("ready")
    caller = await on(b).node("caller", calls=[{"function_id": "jobs::flaky", "payload": {"order": 7}, "action": "jobs"}])
    (outcome,) = await call_results(caller, 1)
    receipt = outcome["result"]["messageReceiptId"]

    loop = asyncio.get_running_loop()
    arrivals = []
    for attempt in range(3):
        await failing.expect(
            lambda line, count=attempt + 1: len(received(failing, "jobs::flaky")) >= count, timeout=20
        )
        arrivals.append(loop.time())
    # backoff_ms × 2^(attempt-1): 200 ms, then 400 ms (measured here, so a little less is fine)
    assert arrivals[1] - arrivals[0] >= 0.15 and arrivals[2] - arrivals[1] >= 0.35

    client = await RawClient.connect(b.url)
    dead = await until(lambda: result(client, "engine::queue::dlq_messages", {"queue": "jobs"}), what="a dead letter")
    assert [(row["id"], row["payload"], row["retries"]) for row in dead] == [(receipt, {"order": 7}, 3)]
    assert "boom from jobs::flaky" in dead[0]["error"]
    assert await result(client, "engine::queue::dlq_topics", {}) == [
        {"topic": "jobs", "broker_type": "function_queue", "message_count": 1}
    ]
    assert len(received(failing, "jobs::flaky")) == 3  # nothing more once dead

    failing.close_stdin()  # the function now lives on engine b, and succeeds
    await failing.key("stopped")
    fixed = await on(b).python("fixed", "--fn", "jobs::flaky=record", "--stay")
    await fixed.key("ready")
    other = await RawClient.connect(a.url)
    assert await result(other, "iii::queue::redrive_message", {"queue": "jobs", "message_id": receipt}) == {
        "queue": "jobs", "message_id": receipt, "redriven": 1,
    }
    await until(lambda: received(fixed, "jobs::flaky") == [{"order": 7}], what="the redriven job on engine b")
    stats = await until(lambda: _stats_when(other, "jobs", lambda s: s["delivered"] == 1), what="stats")
    assert (stats["dlq_depth"], stats["failed"], stats["depth"]) == (0, 3, 0)
    await client.close()
    await other.close()


async def test_redrive_all_and_discard(procs, tmp_path, redis_server):
    a, b = await two_engines(procs, tmp_path, redis_server.url)
    worker = await RawClient.connect(a.url)
    await worker.register("refuser")
    worker.send(type="registerfunction", id="jobs::refused")
    client = await RawClient.connect(b.url)
    await worker.wait_for_function("jobs::refused")
    receipts = []
    for n in range(3):
        answer = await client.call("jobs::refused", {"n": n}, action={"type": "enqueue", "queue": "jobs"})
        receipts.append(answer["result"]["messageReceiptId"])
    failed = 0
    while failed < 9:  # three attempts each
        call = await worker.recv_until(lambda f: f.get("function_id") == "jobs::refused", timeout=20)
        worker.send(type="invocationresult", invocation_id=call["invocation_id"], function_id=call["function_id"],
                    error={"code": "nope", "message": "refused"})
        failed += 1
    dead = await until(lambda: _dead_count(client, 3), what="three dead letters")
    assert sorted(row["id"] for row in dead) == sorted(receipts)
    assert await result(client, "iii::queue::discard_message", {"queue": "jobs", "message_id": receipts[0]}) == {
        "queue": "jobs", "message_id": receipts[0], "redriven": 1,
    }
    assert (await result(client, "iii::queue::redrive", {"queue": "jobs"}))["redriven"] == 2
    redelivered = set()
    while len(redelivered) < 2:
        call = await worker.recv_until(lambda f: f.get("function_id") == "jobs::refused", timeout=20)
        worker.send(type="invocationresult", invocation_id=call["invocation_id"], function_id=call["function_id"],
                    result={})
        redelivered.add(call["data"]["n"])
    assert redelivered == {1, 2}
    missing = await client.call("iii::queue::redrive", {"queue": "nope"})
    assert missing["error"]["code"] == "queue_not_found"
    await worker.close()
    await client.close()


async def _dead_count(client: RawClient, count: int) -> Any:
    rows = await result(client, "engine::queue::dlq_messages", {"queue": "jobs"})
    return rows if len(rows) == count else None


async def test_a_fifo_queue_delivers_in_order_across_engines(procs, tmp_path, redis_server, on):
    a, b = await two_engines(procs, tmp_path, redis_server.url)
    first = await on(a).python("fifo-a", "--fn", "fifo::step=record", "--stay")
    second = await on(b).node("fifo-b", "--fn", "fifo::step=record", "--stay")
    await first.key("ready")
    await second.key("ready")
    count = 20
    calls = [{"function_id": "fifo::step", "payload": {"group": "g1", "n": n}, "action": "ordered"} for n in range(count)]
    calls.append({"function_id": "fifo::step", "payload": {"n": 99}, "action": "ordered"})
    caller = await on(a).python("caller", calls=calls)
    outcomes = await call_results(caller, count + 1)
    assert all("result" in outcome for outcome in outcomes[:count])
    assert outcomes[count]["error"]["message"].endswith(
        "message_group_missing: FIFO queue 'ordered' requires field 'group' in data, but it was not found"
    )

    def steps() -> list[int]:
        return [data["n"] for proc in (first, second) for data in received(proc, "fifo::step")]

    await until(lambda: len(steps()) >= count, what="every FIFO job")
    for proc in (first, second):  # one engine at a time holds the stream's lease: in order
        mine = [data["n"] for data in received(proc, "fifo::step")]
        assert mine == sorted(mine)
    assert sorted(steps()) == list(range(count))


async def test_durable_topics_fan_out_across_engines_and_replicas_compete(procs, tmp_path, redis_server, on):
    a, b = await two_engines(procs, tmp_path, redis_server.url)

    def subscriber(function_id: str) -> str:
        return f"{function_id}=durable:subscriber=" + json.dumps({"topic": "orders"})

    audit = await on(a).python("audit", "--fn", "orders::audit=record", "--bind", subscriber("orders::audit"),
                               "--fn", "orders::ship=record", "--bind", subscriber("orders::ship"), "--stay")
    bill = await on(b).node("bill", "--fn", "orders::bill=record", "--bind", subscriber("orders::bill"),
                            "--fn", "orders::ship=record", "--bind", subscriber("orders::ship"), "--stay")
    await audit.key("ready")
    await bill.key("ready")
    client = await RawClient.connect(b.url)

    async def three_subscribers() -> bool:
        topics = await result(client, "engine::queue::list_topics", {})
        return {"name": "orders", "broker_type": "redis", "subscriber_count": 3} in topics

    await until(three_subscribers, what="three subscribing functions")
    count = 12
    calls = [{"function_id": "iii::durable::publish", "payload": {"topic": "orders", "data": {"n": n}}} for n in range(count)]
    publisher = await on(a).python("publisher", calls=calls)
    assert all(outcome.get("result", "missing") is None for outcome in await call_results(publisher, count))

    def shipped() -> list[int]:
        return [data["n"] for proc in (audit, bill) for data in received(proc, "orders::ship")]

    await until(lambda: len(received(audit, "orders::audit")) >= count and len(received(bill, "orders::bill")) >= count
                and len(shipped()) >= count, what="every message at every subscriber")
    assert sorted(data["n"] for data in received(audit, "orders::audit")) == list(range(count))
    assert sorted(data["n"] for data in received(bill, "orders::bill")) == list(range(count))
    assert sorted(shipped()) == list(range(count))  # the two replicas share orders::ship: once each
    stats = await until(lambda: _stats_when(client, "orders::orders::ship", lambda s: s["delivered"] == count),
                        what="the replicas' queue stats")
    assert stats["consumer_count"] == 2
    await client.close()


async def test_kill_9_of_an_engine_under_queue_load_loses_no_accepted_job(procs, tmp_path, redis_server, on):
    a, b = await two_engines(procs, tmp_path, redis_server.url)
    holder = await RawClient.connect(a.url)  # takes its engine's share of the jobs, never answers
    await holder.register("holder")
    holder.send(type="registerfunction", id="load::job")
    survivor = await on(b).python("survivor", "--fn", "load::job=record", "--stay")
    await survivor.key("ready")
    await holder.wait_for_function("load::job")

    client = await RawClient.connect(a.url)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 60
    accepted: set[int] = set()
    pending: dict[str, int] = {}
    held = 0
    sent = 0

    def send_next() -> None:
        nonlocal sent
        invocation_id = f"e-{sent}"
        pending[invocation_id] = sent
        client.send(type="invokefunction", invocation_id=invocation_id, function_id="load::job",
                    data={"n": sent}, action={"type": "enqueue", "queue": "default"})
        sent += 1

    for _ in range(32):
        send_next()
    # Kill engine a once it holds jobs it took (10: its concurrency) and has accepted 300, with
    # more enqueues in flight to it.
    while len(accepted) < 300 or held < 10:
        while not holder.listener.queue.empty():
            frame = holder.listener.queue.get_nowait()
            held += frame.get("type") == "invokefunction" and frame.get("function_id") == "load::job"
        try:
            frame = await client.recv(0.05)
        except asyncio.TimeoutError:
            assert loop.time() < deadline, f"accepted {len(accepted)}, held {held}"
            continue
        index = pending.pop(frame.get("invocation_id"), None)
        if index is not None:
            assert "error" not in frame, frame
            accepted.add(index)
            send_next()
    a.proc.kill(signal.SIGKILL)
    assert await a.proc.wait(10) == -signal.SIGKILL
    assert pending, "enqueues were in flight at the kill"

    def delivered() -> set[int]:
        return {data["n"] for data in received(survivor, "load::job")}

    await until(lambda: accepted <= delivered(), timeout=60,
                what=f"all {len(accepted)} accepted jobs on engine b (missing: {sorted(accepted - delivered())[:10]})")
    # The dead engine's consumer leaves the numbers once idle with nothing pending.
    watcher = await RawClient.connect(b.url)
    await until(lambda: _stats_when(watcher, "default", lambda s: (s["consumer_count"], s["in_flight"]) == (1, 0)),
                timeout=30, what="one consumer left, nothing in flight")
    await watcher.close()


async def test_redis_restarted_mid_run_loses_no_accepted_job(procs, tmp_path, redis_server, on):
    a, b = await two_engines(procs, tmp_path, redis_server.url, visibility_ms=5000)
    worker = await on(b).python("worker", "--fn", "steady::job=record", "--stay")
    await worker.key("ready")
    client = await RawClient.connect(a.url)
    accepted: set[int] = set()
    refused = 0
    restarted = False
    for n in range(400):
        answer = await client.call("steady::job", {"n": n}, action={"type": "enqueue", "queue": "default"})
        if "error" in answer:
            assert answer["error"]["code"] == "enqueue_error"
            assert answer["error"]["message"].startswith("queue_unavailable: Redis did not take the job")
            refused += 1
        else:
            accepted.add(n)
        if n == 100:
            redis_server.restart()
            restarted = True
        if restarted and len(accepted) >= 200:
            break
    assert len(accepted) >= 200

    def delivered() -> set[int]:
        return {data["n"] for data in received(worker, "steady::job")}

    await until(lambda: accepted <= delivered(), timeout=60,
                what=f"all {len(accepted)} accepted jobs (missing: {sorted(accepted - delivered())[:10]})")


async def test_cron_replicas_on_two_engines_run_each_tick_once_and_survive_a_kill(procs, tmp_path, redis_server, on):
    a, b = await two_engines(procs, tmp_path, redis_server.url)
    every_second = "cron::tick=cron=" + json.dumps({"expression": "* * * * * *"})
    first = await on(a).python("ticker", "--fn", "cron::tick=record", "--bind", every_second, "--stay")
    second = await on(b).node("ticker", "--fn", "cron::tick=record", "--bind", every_second, "--stay")
    await first.key("ready")
    await second.key("ready")

    def ticks(*procs_: Proc) -> list[str]:
        return [data["scheduled_time"] for proc in procs_ for data in received(proc, "cron::tick")]

    await until(lambda: len(ticks(first, second)) >= 4, what="4 ticks")
    seen = ticks(first, second)
    assert len(seen) == len(set(seen)), f"a tick ran twice: {sorted(seen)}"

    a.proc.kill(signal.SIGKILL)
    await a.proc.wait(10)
    before = len(ticks(second))
    await until(lambda: len(ticks(second)) >= before + 3, what="ticks after engine a died")
    after = ticks(first, second)
    assert len(after) == len(set(after)), f"a tick ran twice: {sorted(after)}"


# ----------------------------------------------------------------------------- one engine, in process


def single_config(redis_url: str) -> str:
    return cluster_config(redis_url).replace(
        f"visibility_timeout_ms: {VISIBILITY_MS}", "visibility_timeout_ms: 3000"
    )


async def serve(url: str, function_id: str) -> RawClient:
    worker = await RawClient.connect(url)
    await worker.register(f"serves-{function_id}")
    worker.send(type="registerfunction", id=function_id)
    await worker.wait_for_function(function_id)
    return worker


async def next_job(worker: RawClient, function_id: str) -> dict:
    return await worker.recv_until(lambda f: f.get("type") == "invokefunction" and f.get("function_id") == function_id, 20)


def answer(worker: RawClient, job: dict, error: bool = False) -> None:
    outcome = {"error": {"code": "nope", "message": "refused"}} if error else {"result": {}}
    worker.send(type="invocationresult", invocation_id=job["invocation_id"], function_id=job["function_id"], **outcome)


async def test_a_fifo_job_being_retried_is_not_overtaken(tmp_path, redis_server):
    from helpers import in_process_engine

    async with in_process_engine(single_config(redis_server.url), tmp_path) as app:
        url = app.engine.urls[0]
        worker = await serve(url, "fifo::job")
        caller = await RawClient.connect(url)  # (a worker's own calls would skip its deliveries)
        for n in range(3):
            sent = await caller.call("fifo::job", {"group": "g", "n": n}, action={"type": "enqueue", "queue": "ordered"})
            assert "result" in sent, sent
        order = []
        first = True
        while len(order) < 4:
            job = await next_job(worker, "fifo::job")
            order.append(job["data"]["n"])
            answer(worker, job, error=first)  # job 0 fails once: it comes again before job 1
            first = False
        assert order == [0, 0, 1, 2]
        await worker.close()
        await caller.close()


async def test_an_entry_that_is_not_a_job_is_removed_and_the_queue_goes_on(tmp_path, redis_server):
    from helpers import in_process_engine
    from iii.modules._queue_redis import stream_key
    from iii.modules._redis import connect

    async with in_process_engine(single_config(redis_server.url), tmp_path) as app:
        url = app.engine.urls[0]
        worker = await serve(url, "jobs::sturdy")
        caller = await RawClient.connect(url)
        redis = await connect(redis_server.url)
        key = stream_key("jobs", "default", "jobs::sturdy")
        await redis.xadd(key, {"job": b"not json"})
        await redis.xadd(key, {"other": b"field"})
        sent = await caller.call("jobs::sturdy", {"n": 1}, action={"type": "enqueue", "queue": "jobs"})
        assert "result" in sent, sent
        job = await next_job(worker, "jobs::sturdy")
        assert job["data"] == {"n": 1}
        answer(worker, job)
        await until(lambda: _length_is(redis, key, 0), what="the stream emptied")
        await redis.aclose()
        await worker.close()
        await caller.close()


async def _length_is(redis: Any, key: str, length: int) -> bool:
    return await redis.xlen(key) == length


async def test_without_redis_an_enqueue_fails_clearly_and_consumers_resume(tmp_path, redis_server):
    from helpers import in_process_engine

    async with in_process_engine(single_config(redis_server.url), tmp_path) as app:
        url = app.engine.urls[0]
        worker = await serve(url, "jobs::later")
        caller = await RawClient.connect(url)
        redis_server.kill()
        refused = await caller.call("jobs::later", {"n": 1}, action={"type": "enqueue", "queue": "jobs"})
        assert refused["error"]["code"] == "enqueue_error"
        assert refused["error"]["message"].startswith("queue_unavailable: Redis did not take the job for queue 'jobs'")
        stats = await caller.call("engine::queue::topic_stats", {"queue": "jobs"})
        assert stats["error"]["code"] == "queue_unavailable"
        redis_server.start()
        accepted = await caller.call("jobs::later", {"n": 2}, action={"type": "enqueue", "queue": "jobs"})
        assert "result" in accepted, accepted
        job = await next_job(worker, "jobs::later")
        assert job["data"] == {"n": 2}
        answer(worker, job)
        await worker.close()
        await caller.close()


async def test_an_engine_does_not_start_without_its_redis(tmp_path):
    import socket

    from helpers import in_process_engine
    from iii.modules._redis import RedisUnavailable

    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        url = f"redis://127.0.0.1:{probe.getsockname()[1]}/0"
    with pytest.raises(RedisUnavailable, match=f"Failed to connect to Redis at {url}"):
        async with in_process_engine(single_config(url), tmp_path):
            pass


@pytest.mark.parametrize("entry, message", [
    ("iii-queue\n    config: {adapter: {name: redis, config: {redis_url: 'redis://x', lock_ttl_ms: 5}}}",
     "Object contains unknown field `lock_ttl_ms`"),
    ("iii-queue\n    config: {adapter: {name: redis, config: {visibility_timeout_ms: 10}}}",
     "Expected `int` >= 100"),
    ("iii-cron\n    config: {adapter: {name: redis, config: {lock_ttl_ms: 5}}}",
     "Object contains unknown field `lock_ttl_ms`"),
])
def test_redis_adapter_configs_are_checked(tmp_path, entry, message):
    from iii.config import ConfigError, parse_config

    with pytest.raises(ConfigError, match=message):
        parse_config(f"workers:\n  - name: {entry}\n", tmp_path / "config.yaml")
