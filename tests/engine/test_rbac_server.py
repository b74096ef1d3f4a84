"""RBAC listeners over real sockets: authentication before ``workerregistered``, refusals, the auth
call's deadline and the bound on pending handshakes, frames sent before admission (rbac.md §4)."""

from __future__ import annotations

import asyncio
import json
import os
import re

import pytest
from picows import WSError, WSMsgType, ws_connect

from helpers import LOCAL_MODULES, RawClient, _Collector

pytestmark = pytest.mark.both_loops

_URL = re.compile(r"iii engine \S+ listening on (ws://\S+)")


def rbac_config(**rbac: object) -> str:
    rbac_lines = "".join(f"        {key}: {json.dumps(value)}\n" for key, value in rbac.items())
    return (
        "workers:\n"
        "  - name: iii-worker-manager\n    config: {host: 127.0.0.1, port: 0}\n"
        "  - name: iii-worker-manager\n    config:\n      host: 127.0.0.1\n      port: 0\n"
        "      rbac:\n        auth_function_id: t::auth\n"
        "        expose_functions: ['match(\"pub::*\")']\n" + rbac_lines + LOCAL_MODULES
    )


@pytest.fixture(params=["c", "py"])
def build_env(request) -> dict[str, str]:
    if request.param == "c":
        try:
            from iii.engine import _frames  # noqa: F401
        except ImportError:
            if os.environ.get("CI"):
                pytest.fail("the compiled iii.engine._frames extension is required in CI")
            pytest.skip("the compiled iii.engine._frames extension is not installed")
        return {}
    return {"III_NO_EXTENSIONS": "1"}


async def start(procs, tmp_path, build_env, **rbac):
    """The engine (trusted listener URL, RBAC listener URL)."""
    engine = await procs.engine(config=rbac_config(**rbac), tmp=tmp_path, extra_env=build_env)
    line = await engine.proc.expect(lambda item: isinstance(item, str) and bool(_URL.search(item)) and engine.url not in item)
    return engine.url, _URL.search(line).group(1)


class AuthHost:
    """The auth function on the trusted listener: answers by the ``token`` query parameter."""

    def __init__(self, client: RawClient) -> None:
        self.client = client
        self.inputs: list = []
        self.task = asyncio.get_running_loop().create_task(self._serve())

    @classmethod
    async def start(cls, url: str) -> "AuthHost":
        client = await RawClient.connect(url)
        client.send(type="registerfunction", id="t::auth")
        client.send(type="registerfunction", id="pub::echo")
        await client.register("auth-host")
        await client.wait_for_function("t::auth")
        return cls(client)

    async def _serve(self) -> None:
        while True:
            frame = await self.client.recv(3600)
            if frame.get("type") != "invokefunction":
                continue
            answer = {"type": "invocationresult", "invocation_id": frame["invocation_id"], "function_id": frame["function_id"]}
            if frame["function_id"] == "pub::echo":
                answer["result"] = frame["data"]
            elif frame["function_id"] == "t::auth":
                self.inputs.append(frame["data"])
                token = (frame["data"]["query_params"].get("token") or [""])[0]
                if token == "silent":
                    continue
                outcome = {
                    "good": {"result": {"context": {"user": "u1"}}},
                    "null": {"result": None},
                    "shape": {"result": {"allowed_functions": "pub::echo"}},
                    "bad": {"error": {"code": "invocation_failed", "message": "invalid token"}},
                }[token]
                answer.update(outcome)
            else:  # the function-list watcher of wait_for_function
                continue
            self.client.send(**answer)

    async def stop(self) -> None:
        self.task.cancel()
        await self.client.close()


async def open_socket(url: str, query: str, **headers: str):
    transport, listener = await ws_connect(_Collector, f"{url}/?{query}", extra_headers=headers or None)
    return transport, listener


async def test_a_valid_token_is_admitted_and_what_it_sent_early_is_replayed(procs, tmp_path, build_env):
    trusted, restricted = await start(procs, tmp_path, build_env)
    host = await AuthHost.start(trusted)
    try:
        transport, listener = await open_socket(restricted, "token=good&a=1&a=2", **{"X-Test-Token": "valid"})
        # sent before the engine answered anything: held during the auth call, then applied
        calls = [
            {"type": "invokefunction", "invocation_id": "i1", "function_id": "pub::echo", "data": {"x": 1}},
            {"type": "invokefunction", "invocation_id": "i2", "function_id": "t::auth", "data": {}},
        ]
        for call in calls:
            transport.send(WSMsgType.TEXT, json.dumps(call).encode())
        frames = [await asyncio.wait_for(listener.queue.get(), 10) for _ in range(3)]
        assert frames[0]["type"] == "workerregistered"
        by_id = {f["invocation_id"]: f for f in frames[1:]}
        assert by_id["i1"]["result"]["x"] == 1
        assert by_id["i2"]["error"]["code"] == "FORBIDDEN"
        (seen,) = host.inputs
        assert seen["headers"]["x-test-token"] == "valid" and seen["headers"]["upgrade"] == "websocket"
        assert seen["query_params"] == {"token": ["good"], "a": ["1", "2"]}
        assert seen["ip_address"] == "127.0.0.1"
        transport.disconnect()
    finally:
        await host.stop()


@pytest.mark.parametrize(
    "token, message",
    [
        ("bad", "invalid token"),
        ("null", "auth function returned no result"),
        ("shape", "got `str` - at `$.allowed_functions`"),
    ],
)
async def test_a_failed_auth_is_one_error_frame_and_a_close(procs, tmp_path, build_env, token, message):
    trusted, restricted = await start(procs, tmp_path, build_env)
    host = await AuthHost.start(trusted)
    try:
        transport, listener = await open_socket(restricted, f"token={token}")
        frame = await asyncio.wait_for(listener.queue.get(), 10)
        assert frame["type"] == "error" and frame["error"]["code"] == "AUTH_ERROR"
        assert message in frame["error"]["message"]
        await asyncio.wait_for(listener.closed.wait(), 10)
        assert listener.queue.empty()  # no workerregistered, nothing else
    finally:
        await host.stop()


async def test_without_the_auth_function_every_connection_is_refused(procs, tmp_path, build_env):
    _, restricted = await start(procs, tmp_path, build_env)
    transport, listener = await open_socket(restricted, "token=good")
    frame = await asyncio.wait_for(listener.queue.get(), 10)
    assert frame["error"]["code"] == "AUTH_ERROR" and "t::auth not found" in frame["error"]["message"]
    await asyncio.wait_for(listener.closed.wait(), 10)


async def test_the_auth_call_has_a_deadline_and_pending_handshakes_a_bound(procs, tmp_path, build_env):
    trusted, restricted = await start(procs, tmp_path, build_env, auth_timeout_ms=1500, max_pending_auth=2)
    host = await AuthHost.start(trusted)
    try:
        waiting = [await open_socket(restricted, "token=silent") for _ in range(2)]
        while len(host.inputs) < 2:  # both auth calls are in flight
            await asyncio.sleep(0.01)
        with pytest.raises(WSError, match="503"):  # refused before the upgrade
            await open_socket(restricted, "token=good")
        assert len(host.inputs) == 2  # refused without calling the auth function
        # the trusted listener keeps serving while they wait
        caller = await RawClient.connect(trusted)
        assert (await caller.call("pub::echo", {"y": 2}))["result"]["y"] == 2
        for _, listener in waiting:  # the deadline refuses them
            frame = await asyncio.wait_for(listener.queue.get(), 10)
            assert frame["error"]["code"] == "AUTH_ERROR" and "timed out" in frame["error"]["message"]
            await asyncio.wait_for(listener.closed.wait(), 10)
        _, admitted = await open_socket(restricted, "token=good")  # the slots are free again
        assert (await asyncio.wait_for(admitted.queue.get(), 10))["type"] == "workerregistered"
    finally:
        await host.stop()


async def test_the_telemetry_socket_is_authenticated_too(procs, tmp_path, build_env):
    trusted, restricted = await start(procs, tmp_path, build_env)
    host = await AuthHost.start(trusted)
    try:
        transport, listener = await ws_connect(_Collector, f"{restricted}/otel?token=bad")
        frame = await asyncio.wait_for(listener.queue.get(), 10)
        assert frame["error"] == {"code": "AUTH_ERROR", "message": "invalid token"}
        await asyncio.wait_for(listener.closed.wait(), 10)
        transport, listener = await ws_connect(_Collector, f"{restricted}/otel?token=good")
        while len(host.inputs) < 2:  # the good socket's auth call
            await asyncio.sleep(0.01)
        transport.send_ping(b"after-auth")  # answered once the auth answer has been handled
        assert await asyncio.wait_for(listener.queue.get(), 10) == {"_pong": "after-auth"}
        assert not listener.closed.is_set()
        transport.disconnect()
    finally:
        await host.stop()


async def test_what_waits_for_the_auth_answer_is_bounded(procs, tmp_path, build_env):
    trusted, restricted = await start(procs, tmp_path, build_env)
    host = await AuthHost.start(trusted)
    try:
        transport, listener = await open_socket(restricted, "token=silent")
        for index in range(300):  # more than a connection may send before it is admitted
            transport.send(WSMsgType.TEXT, json.dumps({"type": "registerfunction", "id": f"early::{index}"}).encode())
        await asyncio.wait_for(listener.closed.wait(), 10)
        assert listener.queue.empty()  # dropped, never admitted
    finally:
        await host.stop()
