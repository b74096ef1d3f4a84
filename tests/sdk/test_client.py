"""Our SDK on its own: the in-loop mode (no thread), calls from handlers, shutdown."""

from __future__ import annotations

import threading

import pytest

import iii
from helpers import RawClient
from iii import InitOptions, InvocationError, register_worker_async


async def test_runs_on_the_callers_loop_without_a_thread(engine):
    threads = threading.active_count()
    worker = await register_worker_async(engine.url, InitOptions(worker_name="in-loop"))
    assert threading.active_count() == threads and worker.get_connection_state() == "connected"

    async def double(data):
        return {"twice": data["n"] * 2}

    worker.register_function("loop::double", double)
    assert await worker.trigger_async({"function_id": "loop::double", "payload": {"n": 21}}) == {"twice": 42}
    with pytest.raises(RuntimeError, match="event loop thread"):
        worker.trigger({"function_id": "loop::double", "payload": {"n": 1}})
    listed = await worker.trigger_async({"function_id": iii.EngineFunctions.LIST_WORKERS, "payload": {}})
    assert "in-loop" in [w["name"] for w in listed["workers"]]
    await worker.shutdown_async()
    assert worker.get_connection_state() == "disconnected"
    with pytest.raises(InvocationError) as info:
        await worker.trigger_async({"function_id": "loop::double", "payload": {"n": 1}})
    assert info.value.code == "SHUTDOWN"


async def test_sync_handlers_may_call_other_functions(engine):
    worker = await register_worker_async(engine.url, InitOptions(worker_name="nested"))
    thread_worker = iii.III(engine.url, InitOptions(worker_name="threaded"))
    try:
        thread_worker.register_function("inner::add", lambda data: data["a"] + data["b"])
        # A sync handler runs on a pool thread, where the blocking trigger() is allowed.
        thread_worker.register_function(
            "outer::sum3", lambda data: thread_worker.trigger({"function_id": "inner::add", "payload": {"a": data["a"], "b": data["b"]}}) + data["c"]
        )
        probe = await RawClient.connect(engine.url)
        await probe.wait_for_function("outer::sum3")
        assert await worker.trigger_async({"function_id": "outer::sum3", "payload": {"a": 1, "b": 2, "c": 3}}) == 6
    finally:
        await thread_worker.shutdown_async()
        await worker.shutdown_async()
