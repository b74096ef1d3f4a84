"""The engine process over real sockets: bad clients, big and fragmented messages, other paths."""

from __future__ import annotations

import asyncio
import json
import os

import pytest
from picows import WSMsgType

from helpers import LOCAL_MODULES, RawClient

MiB = 1024 * 1024
#: For engines run inside the test process (their listener is set by the test).
IN_PROCESS_CONFIG = "workers:\n" + LOCAL_MODULES


@pytest.fixture(params=["c-uvloop", "py-uvloop", "c-asyncio"])
def build_env(request) -> dict[str, str]:
    """Every test here runs on both builds (compiled frame path and codec, and pure Python) and
    on both loops (uvloop, and the stdlib loop as the reference)."""
    build, loop = request.param.split("-")
    if build == "c":
        try:
            from iii.engine import _frames  # noqa: F401
        except ImportError:
            if os.environ.get("CI"):
                pytest.fail("the compiled iii.engine._frames extension is required in CI")
            pytest.skip("the compiled iii.engine._frames extension is not installed")
    env = {"III_NO_EXTENSIONS": "1"} if build == "py" else {}
    return env | ({"III_LOOP": "asyncio"} if loop == "asyncio" else {})


@pytest.fixture
async def engine(build_env, procs, tmp_path):
    return await procs.engine(tmp=tmp_path, extra_env=build_env)


async def worker(url: str, name: str, *functions: str) -> RawClient:
    client = await RawClient.connect(url)
    await client.register(name)
    for function_id in functions:
        client.send(type="registerfunction", id=function_id)
    listed = await client.call("engine::functions::list", {})  # frames are handled in order
    assert set(functions) <= {f["function_id"] for f in listed["result"]["functions"]}
    return client


async def test_bad_frames_neither_close_the_socket_nor_disturb_others(engine):
    owner = await worker(engine.url, "owner", "echo::x")
    bad = await RawClient.connect(engine.url)
    await bad.register("bad")  # listed by engine::workers::list (with its metrics) once announced
    for raw in [
        b"\x00\x01garbage",
        b"\xff\xfe invalid utf-8",
        b"[]",
        b"{}",
        b"",
        b'{"type":"nosuchtype","x":1}',
        b'{"type":"registerfunction","id":{"nested":true}}',
        b'{"type":"invocationresult","invocation_id":null}',
        b'{"type":"invokefunction","function_id":"echo::x","action":"void"}',
        b'{"type":"registertrigger","id":1,"trigger_type":[],"function_id":null}',
        b'{"type":"reattach","previous_worker_id":"not-a-uuid","reattach_token":"x"}',
        json.dumps({"type": "invokefunction", "function_id": "echo::x", "data": [[[[[[[[[[1]]]]]]]]]]}).encode(),
    ]:
        bad.send_bytes(raw)
    bad.send_bytes(b'{"type":"pong"}', WSMsgType.BINARY)
    # The bad client is still served, and so is everybody else.
    caller = await worker(engine.url, "caller")
    caller.send(type="invokefunction", invocation_id="c1", function_id="echo::x", data={"v": 1})
    invoke = await owner.recv_until(lambda f: f.get("invocation_id") == "c1")
    owner.send(type="invocationresult", invocation_id="c1", function_id="echo::x", result=invoke["data"]["v"])
    assert (await caller.recv_until(lambda f: f.get("invocation_id") == "c1"))["result"] == 1
    rows = (await bad.call("engine::workers::list", {"worker_id": bad.worker_id}))["result"]["workers"]
    assert rows[0]["metrics"]["frames_dropped"] >= 8
    assert not bad.listener.closed.is_set() and engine.alive


async def test_a_wrongly_typed_call_gets_an_error_instead_of_a_timeout(engine):
    client = await RawClient.connect(engine.url)
    client.send(type="invokefunction", invocation_id="x", function_id=["not", "a", "string"])
    frame = await client.recv()
    assert frame["invocation_id"] == "x" and frame["error"]["code"] == "deserialization_error"


async def test_fragmented_and_large_messages_are_forwarded_whole(engine):
    owner = await worker(engine.url, "owner", "big::echo")
    caller = await worker(engine.url, "caller")
    payload = "x" * (20 * MiB)
    frame = json.dumps({"type": "invokefunction", "invocation_id": "big", "function_id": "big::echo", "data": {"blob": payload}}).encode()
    step = 1 * MiB
    caller.transport.send(WSMsgType.TEXT, frame[:step], fin=False)
    for offset in range(step, len(frame), step):
        caller.transport.send(WSMsgType.CONTINUATION, frame[offset : offset + step], fin=offset + step >= len(frame))
    invoke = await owner.recv_until(lambda f: f.get("invocation_id") == "big", timeout=30)
    assert invoke["data"]["blob"] == payload and invoke["data"]["_caller_worker_id"] == caller.worker_id
    owner.send(type="invocationresult", invocation_id="big", function_id="big::echo", result={"size": len(payload)})
    assert (await caller.recv_until(lambda f: f.get("invocation_id") == "big"))["result"] == {"size": 20 * MiB}


async def test_oversized_fragmented_message_is_dropped_and_the_socket_kept(engine):
    client = await worker(engine.url, "client")
    chunk = b"x" * (8 * MiB)
    client.transport.send(WSMsgType.TEXT, b'{"type":"invokefunction","data":"' + chunk, fin=False)
    for _ in range(8):  # 72 MiB in all, past the 64 MiB limit
        client.transport.send(WSMsgType.CONTINUATION, chunk, fin=False)
    client.transport.send(WSMsgType.CONTINUATION, b'"}', fin=True)
    answer = await client.call("engine::workers::list", {"worker_id": client.worker_id}, )
    assert answer["result"]["workers"][0]["metrics"]["frames_dropped"] == 1
    assert engine.alive


async def test_oversized_single_frame_closes_only_that_socket(engine):
    bystander = await worker(engine.url, "bystander")
    client = await RawClient.connect(engine.url)
    client.transport.send(WSMsgType.TEXT, b"x" * (64 * MiB + 1))
    await asyncio.wait_for(client.listener.closed.wait(), 30)
    # The engine answers 1009 and closes; while the client is still writing its 64 MiB, the
    # close can reach it as a TCP reset instead (which discards the close frame).
    assert client.listener.close_code is None or client.listener.close_code.value == 1009
    assert (await bystander.call("engine::workers::list", {}))["result"]["workers"]
    assert engine.alive


async def test_websocket_ping_is_answered(engine):
    client = await RawClient.connect(engine.url)
    client.transport.send_ping(b"are-you-there")
    assert await client.recv() == {"_pong": "are-you-there"}


async def test_otel_socket_is_drained_and_never_a_worker(engine):
    otel = await RawClient.connect(engine.url, "/otel")
    otel.send_bytes(b"OTLP" + b'{"resourceSpans":[]}', WSMsgType.BINARY)
    otel.send_bytes(b'{"type":"registerfunction","id":"sneaky::fn"}')
    client = await RawClient.connect(engine.url)
    rows = (await client.call("engine::workers::list", {}))["result"]["workers"]
    assert [r["id"] for r in rows if r["runtime"] != "engine"] == []  # neither: never announced
    await client.register("lister")
    rows = (await client.call("engine::workers::list", {}))["result"]["workers"]
    assert [r["id"] for r in rows if r["runtime"] != "engine"] == [client.worker_id]
    functions = (await client.call("engine::functions::list", {}))["result"]["functions"]
    assert "sneaky::fn" not in [f["function_id"] for f in functions]


async def test_other_paths_are_not_found(engine):
    with pytest.raises(Exception) as info:
        await RawClient.connect(engine.url, "/nope")
    assert "404" in str(info.value)


def client_frames(*messages: dict) -> bytes:
    """Masked client text frames (mask key zero: the payload as is), to write many at once."""
    out = []
    for message in messages:
        payload = json.dumps(message).encode()
        size = len(payload)
        header = bytes((0x81, 0x80 | size)) if size < 126 else b"\x81\xfe" + size.to_bytes(2, "big")
        out.append(header + b"\x00\x00\x00\x00" + payload)
    return b"".join(out)


async def test_frames_written_at_once_are_all_routed_in_order(engine):
    """Many frames in one read: each is routed, and what they produce leaves in order."""
    owner = await worker(engine.url, "owner", "echo::x")
    caller = await worker(engine.url, "caller")
    calls = [
        {"type": "invokefunction", "invocation_id": f"b{i}", "function_id": "echo::x", "data": {"i": i}}
        for i in range(60)
    ]
    caller.transport.underlying_transport.write(client_frames(*calls))
    received = [await owner.recv() for _ in calls]
    assert [f["invocation_id"] for f in received] == [c["invocation_id"] for c in calls]
    assert {f["data"]["_caller_worker_id"] for f in received} == {caller.worker_id}
    answers = [
        {"type": "invocationresult", "invocation_id": f["invocation_id"], "function_id": "echo::x", "result": f["data"]["i"]}
        for f in received
    ]
    owner.transport.underlying_transport.write(client_frames(*answers))
    results = [await caller.recv() for _ in answers]
    assert [(r["invocation_id"], r["result"]) for r in results] == [(f"b{i}", i) for i in range(60)]
    assert (await caller.call("engine::functions::list", {}))["result"]["functions"]  # and on it goes


async def test_disconnect_of_a_raw_owner_stops_its_calls(engine):
    owner = await worker(engine.url, "owner", "hang::x")
    caller = await worker(engine.url, "caller")
    caller.send(type="invokefunction", invocation_id="h1", function_id="hang::x", data={})
    await owner.recv_until(lambda f: f.get("invocation_id") == "h1")
    owner.transport.disconnect(graceful=False)
    stopped = await caller.recv_until(lambda f: f.get("invocation_id") == "h1")
    assert stopped["error"] == {"code": "invocation_stopped", "message": "Invocation stopped"}


@pytest.mark.both_loops
async def test_a_worker_that_stops_reading_is_dropped_before_memory_runs_out(tmp_path):
    """In-process engine with a small limit: the stuck worker goes, the caller stays."""
    from iii.app import App
    from iii.config import parse_config
    from iii.engine.server import ListenerConfig

    config = parse_config(IN_PROCESS_CONFIG, tmp_path / "config.yaml")
    config.listeners = [ListenerConfig(host="127.0.0.1", port=0, max_write_buffer_bytes=2 * MiB)]
    engine = App(config)
    (url,) = await engine.start()
    try:
        stuck = await worker(url, "stuck", "stuck::fn")
        stuck.transport.underlying_transport.pause_reading()
        caller = await worker(url, "flooder", "flooder::on-worker")
        caller.send(type="registertrigger", id="w", trigger_type="engine::workers-available", function_id="flooder::on-worker", config={})
        blob = "x" * (256 * 1024)
        for _ in range(200):  # 50 MiB, far past the limit
            caller.send(type="invokefunction", function_id="stuck::fn", data={"blob": blob}, action={"type": "void"})
            await asyncio.sleep(0)
        await caller.recv_until(
            lambda f: f.get("function_id") == "flooder::on-worker"
            and f["data"] == {"event": "worker_disconnected", "worker_id": stuck.worker_id},
            timeout=30,
        )
        stuck.transport.underlying_transport.resume_reading()  # so it sees it was dropped
        await asyncio.wait_for(stuck.listener.closed.wait(), 30)
        answer = await caller.call("stuck::fn", {})
        assert answer["error"]["code"] == "function_not_found"
        assert all(p.target.id != stuck.worker_id for p in engine.router.pending.values())
    finally:
        await engine.stop()


@pytest.mark.both_loops
async def test_a_frame_the_router_fails_on_costs_that_frame_only(tmp_path, caplog):
    """A bug in the router must not take the connection (in-process, so the bug can be planted)."""
    from iii.app import App
    from iii.config import parse_config
    from iii.engine.server import ListenerConfig

    config = parse_config(IN_PROCESS_CONFIG, tmp_path / "config.yaml")
    config.listeners = [ListenerConfig(host="127.0.0.1", port=0)]
    engine = App(config)
    (url,) = await engine.start()
    handle = engine.router.handle

    def buggy_handle(conn, frame):
        if b"boom" in frame:
            raise RuntimeError("planted bug")
        handle(conn, frame)

    engine.router.handle = buggy_handle  # listeners bind it when they are made
    try:
        client = await worker(url, "victim")
        client.send(type="invokefunction", invocation_id="x", function_id="boom::x", data={})
        assert (await client.call("engine::workers::list", {}))["result"]["workers"]
        assert "frame handling failed" in caplog.text and "planted bug" in caplog.text
    finally:
        await engine.stop()


async def test_a_silent_worker_is_dropped_and_its_callers_told(build_env, procs, tmp_path):
    """A worker whose process stopped without closing its socket (it neither reads nor answers
    pings) is noticed: it is dropped after idle_timeout_ms and calls to it fail at once."""
    config = (
        "workers:\n  - name: iii-worker-manager\n    config:\n      host: 127.0.0.1\n      port: 0\n"
        "      ping_interval_ms: 100\n      idle_timeout_ms: 500\n" + LOCAL_MODULES
    )
    engine = await procs.engine(config=config, tmp=tmp_path, extra_env=build_env)
    frozen_otel = await RawClient.connect(engine.url, "/otel")
    frozen_otel.transport.underlying_transport.pause_reading()
    frozen = await worker(engine.url, "frozen", "frozen::fn")
    caller = await worker(engine.url, "caller")
    caller.send(type="invokefunction", invocation_id="stuck", function_id="frozen::fn", data={})
    await frozen.recv_until(lambda f: f.get("invocation_id") == "stuck")
    frozen.transport.underlying_transport.pause_reading()  # as good as a stopped process
    stopped = await caller.recv_until(lambda f: f.get("invocation_id") == "stuck", timeout=10)
    assert stopped["error"] == {"code": "invocation_stopped", "message": "Invocation stopped"}
    listed = await caller.call("engine::workers::list", {})
    names = {row.get("name") for row in listed["result"]["workers"]}
    assert "frozen" not in names and "caller" in names  # the caller answered every ping
    assert any("sent nothing for 500 ms" in str(line) for line in engine.proc.lines)
    frozen_otel.transport.underlying_transport.resume_reading()  # to see that it was dropped
    await asyncio.wait_for(frozen_otel.listener.closed.wait(), 10)


async def test_a_call_channel_calls_as_its_worker_and_closes_with_it(engine):
    """A second connection proven by a worker's ``reattach_token`` (our SDK's direct call
    channel) makes calls as that worker, is no worker itself, and goes when the worker goes."""
    owner = await worker(engine.url, "owner")
    callee = await worker(engine.url, "callee", "echo::who")
    for proof in (f"{owner.worker_id} wrong-token", f"no-such-worker {owner.reattach_token}", owner.worker_id):
        refused = await RawClient.connect(engine.url, headers={"x-iii-call-channel": proof}, welcome=False)
        await asyncio.wait_for(refused.listener.closed.wait(), 10)
        assert refused.listener.queue.empty()  # closed with no workerregistered
    channel = await RawClient.connect(engine.url, headers={"x-iii-call-channel": f"{owner.worker_id} {owner.reattach_token}"})
    assert channel.worker_id == owner.worker_id  # how the SDK knows it was taken for the worker's
    for invocation_id, namespace in (("fast", None), ("full", {"namespace": "default"})):  # both router paths
        channel.send(type="invokefunction", invocation_id=invocation_id, function_id="echo::who", data={"n": 1}, **(namespace or {}))
        invoke = await callee.recv_until(lambda f: f.get("type") == "invokefunction" and f.get("function_id") == "echo::who")
        assert invoke["data"] == {"n": 1, "_caller_worker_id": owner.worker_id}
        callee.send(type="invocationresult", invocation_id=invoke["invocation_id"], function_id="echo::who", result="back")
        answer = await channel.recv_until(lambda f: f.get("type") == "invocationresult")
        assert (answer["invocation_id"], answer["result"]) == (invocation_id, "back")
    channel.send(type="registerfunction", id="channel::own")  # refused: a channel owns nothing
    refused = await channel.call("engine::workers::register", {"runtime": "test", "name": "impostor"})
    assert refused["error"]["code"] == "FORBIDDEN"
    listed = (await channel.call("engine::functions::list", {}))["result"]["functions"]
    assert "channel::own" not in {f["function_id"] for f in listed}
    workers = (await channel.call("engine::workers::list", {}))["result"]["workers"]
    rows = [w for w in workers if w["runtime"] == "test"]
    assert sorted(w["name"] for w in rows) == ["callee", "owner"]  # no row of its own
    (owner_row,) = [w for w in rows if w["name"] == "owner"]
    assert owner_row["metrics"]["invocations_made"] == 2 + 4  # its register and list, and the channel's 4 calls made
    assert owner_row["metrics"]["frames_dropped"] == 1
    await owner.close()
    await asyncio.wait_for(channel.listener.closed.wait(), 10)
    assert channel.listener.close_code == 1008  # POLICY_VIOLATION: its worker is gone
