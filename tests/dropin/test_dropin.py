"""Drop-in proof: the same worker script (official public API only) on the official Python
SDK and on ours, against our engine, must be observed doing the same things."""

from __future__ import annotations

import importlib.util
import re
import sys
from pathlib import Path
from typing import Any

import pytest

from helpers import RawClient, call_results

pytestmark = pytest.mark.interop

SDKS = ["python", "ours"]  # official iii-sdk 0.25.0 / this package
_ID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def normalised(value: Any) -> Any:
    """Drop what differs on every run (ids, tracebacks, timings) and keep the rest."""
    if isinstance(value, dict):
        return {k: normalised(v) for k, v in value.items() if k not in ("stacktrace", "worker_id")}
    if isinstance(value, list):
        return [normalised(v) for v in value]
    if isinstance(value, str):
        return _ID.sub("<id>", value)
    return value


CALLS = [
    {"function_id": "dropin::add", "payload": {"a": 2, "b": 40}},
    {"function_id": "dropin::fail", "payload": {}},
    {"function_id": "dropin::meta", "payload": {"k": [1, "two", None]}, "metadata": {"tenant": "acme"}},
    {"function_id": "dropin::echo"},
    {"function_id": "dropin::echo", "payload": {"x": 1}, "action": "void"},
    {"function_id": "dropin::echo", "payload": {"x": 1}, "action": "jobs"},
    {"function_id": "dropin::missing", "payload": {}},
    {"function_id": "dropin::slow", "payload": {"seconds": 5}, "timeout_ms": 300},
    {"function_id": "engine::functions::list", "payload": {"prefix": "dropin::"}},
    {"function_id": "engine::workers::info", "payload": {"name": "dropin-server"}},
    {"function_id": "dropin::echo", "payload": {"x": 2}, "action": "default"},
]


async def run_calls(workers, sdk: str) -> list[Any]:
    server = await workers.start(
        sdk, "dropin-server", "--fn", "dropin::add=add", "--fn", "dropin::fail=fail",
        "--fn", "dropin::meta=meta", "--fn", "dropin::echo=echo", "--fn", "dropin::slow=slow", "--stay",
    )
    await server.key("ready")
    caller = await workers.start(sdk, "dropin-caller", calls=CALLS)
    outcomes = await call_results(caller, len(CALLS))
    await caller.key("stopped")
    server.close_stdin()
    await server.key("stopped")
    for outcome in outcomes:  # per-run values: versions, pids, timestamps, the caller id
        if "result" in outcome and isinstance(outcome["result"], dict) and "worker" in outcome["result"]:
            outcome["result"]["worker"] = {k: outcome["result"]["worker"][k] for k in ("name", "namespace", "runtime", "function_count")}
        if "result" in outcome and isinstance(outcome["result"], dict) and "data" in outcome["result"]:
            outcome["result"]["data"].pop("_caller_worker_id", None)
    return normalised(outcomes)


async def test_same_results_errors_and_discovery(workers):
    official, ours = [await run_calls(workers, sdk) for sdk in SDKS]
    assert ours == official
    # And they are the right ones, not just equal.
    assert ours[0]["result"] == {"c": 42}
    assert ours[1]["error"]["code"] == "invocation_failed" and "boom from dropin::fail" in ours[1]["error"]["message"]
    assert ours[2]["result"] == {"data": {"k": [1, "two", None]}, "metadata": {"tenant": "acme"}}
    assert ours[4] == {"call": 4, "result": None}
    assert ours[5]["error"]["code"] == "enqueue_error"
    assert ours[6]["error"]["code"] == "function_not_found"
    assert ours[7]["error"] == {"code": "TIMEOUT", "message": "TIMEOUT: invocation timed out after 300ms", "type": "InvocationError"}
    assert ours[10]["result"] == {"messageReceiptId": "<id>"}
    assert [f["function_id"] for f in ours[8]["result"]["functions"]] == sorted(
        ["dropin::add", "dropin::echo", "dropin::fail", "dropin::meta", "dropin::slow"]
    )


@pytest.mark.parametrize("sdk", SDKS)
async def test_discovery_triggers_fire_for_both(workers, sdk):
    watcher = await workers.start(sdk, f"watch-{sdk}", "--watch", "engine::workers-available", "--watch", "engine::functions-available", "--stay")
    await watcher.key("ready")
    other = await workers.start("node", "joiner", "--fn", "joiner::fn=echo", "--stay")
    await other.key("ready")
    await watcher.expect(lambda item: isinstance(item, dict) and item.get("type") == "engine::functions-available"
                         and "joiner::fn" in [f["function_id"] for f in item["event"]["functions"]])
    other.close_stdin()
    await other.key("stopped")
    await watcher.expect(lambda item: isinstance(item, dict) and item.get("event", {}).get("event") == "worker_disconnected")


@pytest.mark.parametrize("sdk", SDKS)
async def test_reconnects_after_the_engine_restarts(procs, workers, tmp_path, sdk):
    server = await workers.start(sdk, "survivor", "--fn", "survivor::add=add", "--stay")
    await server.key("ready")
    port = int(workers.engine.url.rsplit(":", 1)[1])
    await workers.engine.proc.stop()
    await server.key("state", "reconnecting")
    restarted = await procs.engine(tmp=tmp_path / "again", port=port)
    client = await RawClient.connect(restarted.url)
    await client.wait_for_function("survivor::add")  # replayed after the reconnect
    answer = await client.call("survivor::add", {"a": 1, "b": 2})
    assert answer["result"] == {"c": 3}
    rows = (await client.call("engine::workers::list", {}))["result"]["workers"]
    assert "survivor" in [w["name"] for w in rows]


@pytest.mark.parametrize("sdk", SDKS)
async def test_shutdown_leaves_the_engine_clean(workers, engine, sdk):
    server = await workers.start(sdk, "leaver", "--fn", "leaver::echo=echo", "--watch", "engine::workers-available", "--stay")
    await server.key("ready")
    client = await RawClient.connect(engine.url)
    server.close_stdin()
    await server.key("stopped")
    assert await server.wait() == 0
    assert server.lines[-2:] == [{"state": "disconnected"}, {"stopped": True}]
    functions = (await client.call("engine::functions::list", {}))["result"]["functions"]
    assert not [f for f in functions if f["function_id"].startswith("leaver")]
    triggers = (await client.call("engine::triggers::list", {}))["result"]["triggers"]
    assert triggers == []


SURFACE_SCRIPT = Path(__file__).resolve().parent / "surface_script.py"
_spec = importlib.util.spec_from_file_location("surface_script", SURFACE_SCRIPT)
_surface = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_surface)
SURFACE_NAMES = _surface.NAMES


async def run_surface_script(procs, engine, python: str) -> tuple[list, list[str]]:
    """The script's JSON lines and its log lines (stderr merged into stdout)."""
    proc = await procs.start(python, str(SURFACE_SCRIPT), env={"III_URL": engine.url}, label=python, merge_stderr=True)
    await proc.key("stopped", timeout=60)
    assert await proc.wait() == 0
    return [line for line in proc.lines if isinstance(line, dict)], [line for line in proc.lines if isinstance(line, str)]


async def test_public_modules_models_formats_and_handler_logs_match(procs, engine, official_python):
    """The same script on the official SDK and on ours: the official modules import with the
    same names, models dump the same, typed handlers register the same formats, and a failing
    handler is logged as ``Error in handler <id>`` with its traceback."""
    (official, official_log), (ours, our_log) = [
        await run_surface_script(procs, engine, python) for python in (official_python, sys.executable)
    ]
    assert ours == official
    imports, models, formats, call = (next(line[key] for line in ours if key in line) for key in ("imports", "models", "formats", "call"))
    assert len(imports) == sum(len(names) for names in SURFACE_NAMES.values())
    assert models["invocation"] == {"url": "https://example.com/hook", "method": "PUT"}
    assert formats["dropin::greet"][0]["properties"]["name"] == {"title": "Name", "type": "string"}
    assert formats["dropin::totals"] == [
        {"type": "object", "additionalProperties": {"type": "integer"}, "$schema": "https://json-schema.org/draft/2020-12/schema"},
        {"type": ["array", "null"], "items": {"type": "number"}, "$schema": "https://json-schema.org/draft/2020-12/schema"},
    ]
    assert formats["dropin::boom"] == [None, None]
    assert call == {"code": "invocation_failed", "message": "boom from dropin::boom"}
    for log in (official_log, our_log):
        assert "iii.iii ERROR Error in handler dropin::boom" in log
        assert "ValueError: boom from dropin::boom" in log
