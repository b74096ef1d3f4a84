"""RBAC listeners with the official SDKs (Python iii-sdk 0.25.0, Node iii-sdk 0.22.1): the checks of
the official SDK suites (rbac.md §12) and the allowing side of each rule and hook.

One engine per test with two listeners, a trusted one hosting the auth function, the middleware
and the hooks (tests/interop/workers/rbac_host.py) and an RBAC one the scripted clients
(rbac_client.py / node/rbac_client.mjs) connect to.
"""

from __future__ import annotations

import asyncio
import json
import re

import pytest

from helpers import LOCAL_MODULES, ROOT, RawClient

pytestmark = pytest.mark.interop

_URL = re.compile(r"iii engine \S+ listening on (ws://\S+)")
CONFIG = """\
workers:
  - name: iii-worker-manager
    config: {host: 127.0.0.1, port: 0}
  - name: iii-worker-manager
    config:
      host: 127.0.0.1
      port: 0
      middleware_function_id: test::rbac-worker::middleware
      rbac:
        auth_function_id: test::rbac-worker::auth
        on_function_registration_function_id: test::rbac-worker::on-function-reg
        on_trigger_registration_function_id: test::rbac-worker::on-trigger-reg
        on_trigger_type_registration_function_id: test::rbac-worker::on-trigger-type-reg
        expose_functions:
          - match("test::ew::public::*")
          - match("engine::functions::list")
          - metadata:
              ew_public: true
""" + LOCAL_MODULES


class Rbac:
    """The engine, its trusted host and a way to start RBAC clients."""

    def __init__(self, procs, trusted: str, restricted: str, host, python: str, node: str) -> None:
        self.procs = procs
        self.trusted = trusted
        self.restricted = restricted
        self.host = host
        self._python = python
        self._node = node
        self._clients = 0

    async def client(self, runtime: str, name: str, token: str, *steps: dict):
        if runtime == "python":
            cmd = [self._python, str(ROOT / "tests/interop/workers/rbac_client.py")]
        else:
            cmd = [self._node, str(ROOT / "tests/interop/node/rbac_client.mjs")]
        return await self.procs.start(
            *cmd, name, token, json.dumps(list(steps)), env={"III_URL": self.restricted}, label=f"{runtime}:{name}"
        )

    async def steps(self, runtime: str, token: str, *steps: dict) -> list[dict]:
        """Run a client through ``steps``; the outcome line of each. Each client has a name of its
        own: the clients of earlier steps stay connected, and a second worker of the same name
        in a namespace is refused (``WORKER_NAMESPACE_CONFLICT``)."""
        self._clients += 1
        client = await self.client(runtime, f"rbac-{runtime}-{self._clients}", token, *steps)
        return [await client.key("step", index, timeout=40) for index in range(len(steps))]

    def seen(self, key: str) -> list[dict]:
        """What the host printed under ``key`` so far (auth inputs, hook inputs)."""
        return [line[key] for line in self.host.lines if isinstance(line, dict) and key in line]


@pytest.fixture
async def rbac(procs, tmp_path, official_python, node):
    engine = await procs.engine(config=CONFIG, tmp=tmp_path)
    line = await engine.proc.expect(lambda item: isinstance(item, str) and bool(_URL.search(item)) and engine.url not in item)
    restricted = _URL.search(line).group(1)
    host = await procs.start(
        official_python, str(ROOT / "tests/interop/workers/rbac_host.py"), env={"III_URL": engine.url}, label="rbac-host"
    )
    await host.key("ready", timeout=30)
    return Rbac(procs, engine.url, restricted, host, official_python, node)


RUNTIMES = pytest.mark.parametrize("runtime", ["python", "node"])


@RUNTIMES
async def test_valid_token_round_trip_through_the_middleware(rbac, runtime):
    (outcome,) = await rbac.steps(runtime, "valid-token", {"call": "test::ew::valid-token-echo", "payload": {"msg": "hello"}})
    result = outcome["result"]
    assert result["valid_token"] is True
    assert result["echoed"]["msg"] == "hello" and result["echoed"]["_caller"] == "user-1"
    assert result["echoed"]["_intercepted"] is True
    (auth,) = rbac.seen("auth")  # OTel is off: one socket, one auth call
    assert auth["headers"]["x-test-token"] == "valid-token" and auth["ip_address"] == "127.0.0.1"


@RUNTIMES
async def test_refusals_are_typed_forbidden_errors(rbac, runtime):
    private, = await rbac.steps(runtime, "valid-token", {"call": "test::ew::private"})
    error = private["error"]
    assert (error["type"], error["code"], error["function_id"]) == ("InvocationError", "FORBIDDEN", "test::ew::private")
    assert "FORBIDDEN" in error["message"] and "rbac.expose_functions" in error["message"]
    forbidden, = await rbac.steps(runtime, "restricted-token", {"call": "test::ew::echo"})
    assert forbidden["error"]["code"] == "FORBIDDEN"  # not registered at all, still FORBIDDEN
    assert "remove from rbac.forbidden_functions" in forbidden["error"]["message"]
    anonymous, = await rbac.steps(runtime, "", {"call": "test::ew::valid-token-echo", "payload": {}})
    assert anonymous["error"]["code"] == "FORBIDDEN"  # allowed_functions is per session


@RUNTIMES
async def test_discovery_lists_only_what_the_session_may_call(rbac, runtime):
    listing = {"call": "engine::functions::list", "payload": {}}
    valid, = await rbac.steps(runtime, "valid-token", listing)
    restricted, = await rbac.steps(runtime, "restricted-token", listing)
    valid_ids = {f["function_id"] for f in valid["result"]["functions"]}
    restricted_ids = {f["function_id"] for f in restricted["result"]["functions"]}
    assert {"test::ew::valid-token-echo", "test::ew::public::echo", "test::ew::meta-public"} <= valid_ids
    assert {"test::ew::public::echo", "test::ew::meta-public"} <= restricted_ids
    assert "test::ew::valid-token-echo" not in restricted_ids
    for ids in (valid_ids, restricted_ids):
        assert "test::ew::private" not in ids and "test::rbac-worker::auth" not in ids
    info, = await rbac.steps(runtime, "valid-token", {"call": "engine::functions::info", "payload": {"function_id": "test::ew::private"}})
    assert info["error"]["code"] == "FORBIDDEN"  # not exposed: not even callable


@RUNTIMES
async def test_registration_hooks_refuse_and_allow(rbac, runtime):
    outcomes = await rbac.steps(
        runtime, "valid-token",
        {"trigger_type": "denied-tt::test", "description": "Should be denied"},
        {"trigger_type": f"ok-tt::{runtime}", "description": "Allowed"},
        {"trigger": "test-rbac-trigger", "function_id": "denied-trig::my-fn", "config": {"key": "value"}},
        {"trigger": "test-rbac-trigger", "function_id": "test::ew::public::echo", "config": {"ok": runtime}},
        {"function": "denied::blocked-fn"},
        {"function": f"ok::{runtime}-fn"},
        {"sleep": 1},
        {"call": "denied::blocked-fn"},
    )
    assert "error" in outcomes[-1]
    await rbac.host.expect(lambda line: isinstance(line, dict) and "function_hook" in line and line["function_hook"]["function_id"].startswith("ok::"))
    trigger_types = rbac.seen("trigger_type_hook")
    assert [(h["trigger_type_id"], h["description"], h["context"]["user_id"]) for h in trigger_types] == [
        ("denied-tt::test", "Should be denied", "user-1"), (f"ok-tt::{runtime}", "Allowed", "user-1"),
    ]
    triggers = rbac.seen("trigger_hook")
    assert [(h["trigger_type"], h["function_id"], h["context"]["user_id"]) for h in triggers] == [
        ("test-rbac-trigger", "denied-trig::my-fn", "user-1"), ("test-rbac-trigger", "test::ew::public::echo", "user-1"),
    ]
    assert triggers[0]["config"] == {"key": "value"}
    functions = [h["function_id"] for h in rbac.seen("function_hook")]
    assert functions == ["denied::blocked-fn", f"ok::{runtime}-fn"]
    trusted = await RawClient.connect(rbac.trusted)
    types = (await trusted.call("engine::trigger-types::list", {}))["result"]["trigger_types"]
    assert f"ok-tt::{runtime}" in {t["id"] for t in types} and "denied-tt::test" not in {t["id"] for t in types}
    bindings = (await trusted.call("engine::triggers::list", {}))["result"]["triggers"]
    assert [b["function_id"] for b in bindings if b["trigger_type"] == "test-rbac-trigger"] == ["test::ew::public::echo"]
    assert (await trusted.call(f"ok::{runtime}-fn", {"x": 1}))["result"] == {"echoed": {"x": 1, "_caller_worker_id": trusted.worker_id}}


@RUNTIMES
async def test_sessions_without_the_right_flags_register_nothing(rbac, runtime):
    await rbac.steps(
        runtime, "restricted-token",
        {"trigger_type": f"never-tt::{runtime}", "description": "flag is off"},
        {"sleep": 1},
    )
    assert rbac.seen("trigger_type_hook") == []  # dropped before the hook
    trusted = await RawClient.connect(rbac.trusted)
    types = (await trusted.call("engine::trigger-types::list", {}))["result"]["trigger_types"]
    assert f"never-tt::{runtime}" not in {t["id"] for t in types}


@RUNTIMES
async def test_registration_prefix(rbac, runtime):
    client = await rbac.client(runtime, f"prefixed-{runtime}", "prefix-token", {"function": "prefixed-echo"})
    await client.key("step", 0)
    trusted = await RawClient.connect(rbac.trusted)
    await trusted.wait_for_function("test-prefix::prefixed-echo")
    answer = await trusted.call("test-prefix::prefixed-echo", {"msg": "prefix-test"})
    assert answer["result"]["echoed"]["msg"] == "prefix-test"
    assert rbac.seen("function_hook")[0]["function_id"] == "prefixed-echo"  # the hook sees the id as sent


@RUNTIMES
async def test_a_prefixed_unregister_removes_the_prefixed_function(rbac, runtime):
    client = await rbac.client(
        runtime, f"prefixed-{runtime}", "prefix-token",
        {"function": "prefixed-echo"}, {"sleep": 1}, {"unregister": "prefixed-echo"}, {"sleep": 1},
    )
    await client.key("step", 3, timeout=30)
    trusted = await RawClient.connect(rbac.trusted)
    answer = await trusted.call("test-prefix::prefixed-echo", {"msg": "gone"})
    assert answer["error"]["code"] == "function_not_found"


@RUNTIMES
async def test_infrastructure_ids_stay_callable(rbac, runtime):
    client = await rbac.client(
        runtime, f"carveout-{runtime}", "valid-token",
        {"function": "test::ew::carveout-logger-handler", "behavior": "logger"},
        {"call": "engine::log::info", "payload": {"message": "direct"}},
    )
    await client.key("step", 0)
    direct = await client.key("step", 1)
    trusted = await RawClient.connect(rbac.trusted)
    await trusted.wait_for_function("test::ew::carveout-logger-handler")
    via_handler = await trusted.call("test::ew::carveout-logger-handler", {"n": 1})
    listed = (await trusted.call("engine::functions::list", {"include_internal": True}))["result"]["functions"]
    if "engine::log::info" in {f["function_id"] for f in listed}:
        assert "error" not in direct and via_handler["result"]["logged"] is True
    else:  # engine::log::* not in this engine yet: past RBAC, the call finds no function
        assert direct["error"]["code"] == "function_not_found"
        assert "function_not_found" in via_handler["error"]["message"] or "not found" in via_handler["error"]["message"]


@RUNTIMES
async def test_an_invalid_token_never_connects_and_the_sdk_retries(rbac, runtime):
    await rbac.client(runtime, f"bogus-{runtime}", "bogus-token", {"call": "test::ew::public::echo"})
    attempts = 0

    def second_attempt(line) -> bool:  # refused, reconnected, refused again
        nonlocal attempts
        if isinstance(line, dict) and line.get("auth", {}).get("headers", {}).get("x-test-token") == "bogus-token":
            attempts += 1
        return attempts >= 2

    await rbac.host.expect(second_attempt, 30)
    trusted = await RawClient.connect(rbac.trusted)
    workers = (await trusted.call("engine::workers::list", {}))["result"]["workers"]
    assert f"bogus-{runtime}" not in {w.get("name") for w in workers}




async def test_our_sdk_direct_calls_carry_the_workers_session(rbac):
    """Our synchronous trigger() sends most calls on its direct call channel (a second socket):
    the engine gives it the worker's own session (no auth call of its own), so the middleware, the
    session's context and its refusals apply to those calls as to the worker's own connection."""
    from iii import InitOptions, InvocationError, register_worker

    def run() -> tuple[list, InvocationError, int]:
        options = InitOptions(worker_name="rbac-ours", otel={"enabled": False}, headers={"x-test-token": "valid-token"})
        client = register_worker(rbac.restricted, options)
        try:
            client.trigger({"function_id": "test::ew::valid-token-echo", "payload": {"n": -1}})  # opens it
            assert client._direct.opened.wait(15)
            sent = []
            call = client._direct.call
            client._direct.call = lambda *args: sent.append(args) or call(*args)
            echoes = [client.trigger({"function_id": "test::ew::valid-token-echo", "payload": {"n": n}}) for n in range(5)]
            try:
                client.trigger({"function_id": "test::ew::private", "payload": {}})
            except InvocationError as exc:
                refused = exc
            return echoes, refused, len(sent)
        finally:
            client.shutdown()

    echoes, refused, direct_calls = await asyncio.to_thread(run)
    assert direct_calls >= 5  # all but possibly the first echo, and the refused call
    assert [echo["echoed"]["n"] for echo in echoes] == list(range(5))
    assert all(echo["echoed"]["_caller"] == "user-1" and echo["echoed"]["_intercepted"] for echo in echoes)
    assert (refused.code, refused.function_id) == ("FORBIDDEN", "test::ew::private")
    authenticated = [auth for auth in rbac.seen("auth") if auth["headers"].get("x-test-token") == "valid-token"]
    assert len(authenticated) == 1  # the worker's connection only
