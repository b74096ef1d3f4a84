"""The ``file_based`` stores against ``kill -9``: a real engine process is killed right after it
acknowledged writes (more in flight), a new one starts on the same files, and everything that
was acknowledged is there: state values and stream items, and every enqueued job (delivered at
least once)."""

from __future__ import annotations

import asyncio
import json
import signal
from pathlib import Path
from typing import Any, Callable

from helpers import EngineProc, Procs, RawClient

WRITES = 2_000
#: Calls kept in flight; the ones still in flight when the engine is killed may or may not be kept.
IN_FLIGHT = 64
DEADLINE_S = 60.0
JOB_FUNCTION = "durable::job"


def durable_config(directory: Path) -> str:
    def file_based(adapter: str, name: str) -> str:
        return f"{{name: {adapter}, config: {{store_method: file_based, file_path: '{directory / name}'}}}}"

    return (
        "workers:\n"
        "  - name: iii-worker-manager\n    config: {host: 127.0.0.1, port: 0}\n"
        "  - name: iii-http\n    config: {host: 127.0.0.1, port: 0}\n"
        f"  - name: iii-stream\n    config: {{host: 127.0.0.1, port: 0, adapter: {file_based('kv', 'stream.db')}}}\n"
        f"  - name: iii-state\n    config: {{adapter: {file_based('kv', 'state.db')}}}\n"
        f"  - name: iii-queue\n    config: {{adapter: {file_based('builtin', 'queue.db')}}}\n"
    )


async def start_engine(procs: Procs, directory: Path) -> EngineProc:
    return await procs.engine(durable_config(directory), directory)


async def kill(engine: EngineProc) -> None:
    engine.proc.kill(signal.SIGKILL)
    assert await engine.proc.wait(10) == -signal.SIGKILL


async def write_then_kill(engine: EngineProc, client: RawClient, calls: list[dict[str, Any]]) -> set[int]:
    """Send ``calls`` (``invokefunction`` frames, ``IN_FLIGHT`` at a time) and more after them,
    ``kill -9`` the engine the moment the last of ``calls`` is acknowledged; returns the indexes of
    the calls acknowledged (every one of ``calls``, by then)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + DEADLINE_S
    pending: dict[str, int] = {}
    acknowledged: set[int] = set()
    sent = 0

    def send_next() -> None:
        nonlocal sent
        frame = dict(calls[sent % len(calls)], invocation_id=f"w-{sent}")
        if sent >= len(calls):  # the extra calls rewrite earlier ones: still in flight at the kill
            frame["data"] = dict(frame["data"], extra=True)
        pending[frame["invocation_id"]] = sent
        client.send(**frame)
        sent += 1

    for _ in range(IN_FLIGHT):
        send_next()
    while len(acknowledged) < len(calls):
        frame = await client.recv(max(0.01, deadline - loop.time()))
        index = pending.pop(frame.get("invocation_id"), None)
        if index is None or frame.get("type") != "invocationresult":
            continue
        assert "error" not in frame, frame
        if index < len(calls):
            acknowledged.add(index)
        if len(acknowledged) == len(calls):
            break
        send_next()
    await kill(engine)
    assert pending, "calls were still in flight at the kill"
    return acknowledged


async def test_acknowledged_state_and_stream_writes_survive_kill_9(procs, tmp_path):
    engine = await start_engine(procs, tmp_path)
    client = await RawClient.connect(engine.url)
    calls = []
    for index in range(WRITES):
        if index % 4 == 3:
            data = {"stream_name": "s", "group_id": "g", "item_id": f"i{index}", "data": {"index": index}}
            calls.append({"type": "invokefunction", "function_id": "stream::set", "data": data})
        else:
            data = {"scope": "durable", "key": f"k{index}", "value": {"index": index, "pad": "x" * 100}}
            calls.append({"type": "invokefunction", "function_id": "state::set", "data": data})
    acknowledged = await write_then_kill(engine, client, calls)
    assert len(acknowledged) == WRITES

    engine = await start_engine(procs, tmp_path)
    reader = await RawClient.connect(engine.url)
    values = (await reader.call("state::list", {"scope": "durable"}))["result"]
    items = (await reader.call("stream::list", {"stream_name": "s", "group_id": "g"}))["result"]
    kept = {value["index"] for value in values + items}
    missing = sorted(index for index in acknowledged if index not in kept)
    assert missing == [], f"{len(missing)} acknowledged writes lost, e.g. {missing[:10]}"
    assert (await reader.call("state::get", {"scope": "durable", "key": "k0"}))["result"]["pad"] == "x" * 100
    await reader.close()


async def test_every_acknowledged_enqueue_is_delivered_after_kill_9(procs, tmp_path):
    engine = await start_engine(procs, tmp_path)
    holder = await RawClient.connect(engine.url)  # takes deliveries and never answers them
    await holder.register("holder")
    holder.send(type="registerfunction", id=JOB_FUNCTION)
    client = await RawClient.connect(engine.url)
    await client.wait_for_function(JOB_FUNCTION)
    calls = [
        {"type": "invokefunction", "function_id": JOB_FUNCTION, "data": {"job": index},
         "action": {"type": "enqueue", "queue": "default"}}
        for index in range(WRITES)
    ]
    acknowledged = await write_then_kill(engine, client, calls)
    assert len(acknowledged) == WRITES

    engine = await start_engine(procs, tmp_path)
    worker = await RawClient.connect(engine.url)
    await worker.register("worker")
    worker.send(type="registerfunction", id=JOB_FUNCTION)
    deliveries = await collect(worker, lambda seen: acknowledged <= seen.keys(), timeout=DEADLINE_S)
    missing = sorted(acknowledged - deliveries.keys())
    assert missing == [], f"{len(missing)} acknowledged jobs never delivered, e.g. {missing[:10]}"
    duplicates = sum(count - 1 for count in deliveries.values())
    print(f"{len(acknowledged)} acknowledged jobs delivered, {duplicates} more than once")
    await worker.close()


async def collect(worker: RawClient, enough: Callable[[dict[int, int]], bool], timeout: float) -> dict[int, int]:
    """Answer every job delivered to ``worker`` until ``enough(job -> deliveries)`` or the
    deadline; returns job -> deliveries."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    seen: dict[int, int] = {}
    while not enough(seen) and loop.time() < deadline:
        try:
            frame = await worker.recv(max(0.01, deadline - loop.time()))
        except asyncio.TimeoutError:
            break
        if frame.get("type") != "invokefunction" or frame.get("function_id") != JOB_FUNCTION:
            continue
        index = frame["data"]["job"]
        seen[index] = seen.get(index, 0) + 1
        worker.send_bytes(json.dumps({
            "type": "invocationresult", "invocation_id": frame["invocation_id"],
            "function_id": JOB_FUNCTION, "result": None,
        }).encode())
    return seen
