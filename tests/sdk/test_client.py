"""Our SDK on its own: the in-loop mode (no thread), calls from handlers, shutdown; on the stdlib
loop and on uvloop."""

from __future__ import annotations

import asyncio
import logging
import threading

import pytest
import uvloop

import iii
from helpers import RawClient
from iii import InitOptions, InvocationError, register_worker_async

pytestmark = pytest.mark.both_loops


async def test_runs_on_the_callers_loop_without_a_thread(engine, request):
    on_uvloop = isinstance(asyncio.get_running_loop(), uvloop.Loop)
    assert on_uvloop == request.node.name.endswith("[uvloop]")  # [asyncio] is the stdlib loop
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


class Recorder(iii.TriggerHandler):
    """A trigger-type provider that records what the engine hands it."""

    def __init__(self) -> None:
        self.events: list[tuple[str, str, object]] = []
        self.changed: "asyncio.Queue[None]" = asyncio.Queue()

    async def register_trigger(self, config):
        if config.config == {"refuse": True}:
            raise ValueError("refused by the provider")
        self.events.append(("register", config.function_id, config.config))
        self.changed.put_nowait(None)

    async def unregister_trigger(self, config):
        self.events.append(("unregister", config.id, None))
        self.changed.put_nowait(None)


async def test_trigger_type_provider_gets_bindings_and_refusals_reach_the_binder(engine):
    provider = await register_worker_async(engine.url, InitOptions(worker_name="provider"))
    binder = await register_worker_async(engine.url, InitOptions(worker_name="binder"))
    recorder = Recorder()
    provider.register_trigger_type({"id": "hook", "description": "test hooks"}, recorder)
    binder.register_function("binder::on-hook", lambda data: data)
    trigger = binder.register_trigger({"type": "hook", "function_id": "binder::on-hook", "config": {"path": "/x"}})
    await asyncio.wait_for(recorder.changed.get(), 10)
    assert recorder.events == [("register", "binder::on-hook", {"path": "/x"})]

    probe = await RawClient.connect(engine.url)
    listed = await probe.call("engine::triggers::list", {})
    (row,) = listed["result"]["triggers"]
    assert (row["trigger_type"], row["config"]) == ("hook", {"path": "/x"})

    trigger.unregister()
    await asyncio.wait_for(recorder.changed.get(), 10)
    assert recorder.events[-1] == ("unregister", row["id"], None)

    refusals: "asyncio.Queue[str]" = asyncio.Queue()

    class Catch(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            refusals.put_nowait(record.getMessage())

    catcher = Catch(logging.ERROR)
    logging.getLogger("iii").addHandler(catcher)
    try:  # the refusal travels provider → engine → binder, which logs it
        binder.register_trigger({"type": "hook", "function_id": "binder::on-hook", "config": {"refuse": True}})
        message = await asyncio.wait_for(refusals.get(), 10)
    finally:
        logging.getLogger("iii").removeHandler(catcher)
    assert "Trigger registration failed" in message and "refused by the provider" in message
    await binder.shutdown_async()
    await provider.shutdown_async()
