"""Test helpers: an engine subprocess, scripted worker subprocesses, and a raw WebSocket client."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal
import sys
import threading
import uuid
from pathlib import Path
from typing import Any, Callable, Optional

from picows import WSFrame, WSListener, WSMsgType, WSTransport, ws_connect

ROOT = Path(__file__).resolve().parent.parent
#: Frames captured from the official SDKs (a copy of the project's shared vectors, with their README).
VECTORS = ROOT / "tests" / "data" / "vectors"
#: ``config.yaml`` entries putting the modules that serve a port on 127.0.0.1 and a free port.
LOCAL_MODULES = (
    "  - name: iii-http\n    config:\n      host: 127.0.0.1\n      port: 0\n"
    "  - name: iii-stream\n    config:\n      host: 127.0.0.1\n      port: 0\n"
)
_URL_LINE = re.compile(r"iii engine \S+ listening on (ws://\S+)")  # not a module's socket


class Proc:
    """A subprocess whose stdout is JSON lines (or log lines), always killed at teardown."""

    def __init__(self, process: asyncio.subprocess.Process, label: str) -> None:
        self.process = process
        self.label = label
        self.lines: list[Any] = []
        self._waiters: list[tuple[Callable[[Any], bool], asyncio.Future]] = []
        self._reader = asyncio.ensure_future(self._read())

    @property
    def pid(self) -> int:
        return self.process.pid

    async def _read(self) -> None:
        assert self.process.stdout is not None
        async for raw in self.process.stdout:
            text = raw.decode(errors="replace").strip()
            try:
                item: Any = json.loads(text)
            except ValueError:
                item = text
            self.lines.append(item)
            for predicate, future in list(self._waiters):
                if not future.done() and predicate(item):
                    future.set_result(item)

    async def expect(self, predicate: Callable[[Any], bool], timeout: float = 20) -> Any:
        """The first line (seen before or later) for which ``predicate`` holds."""
        for item in self.lines:
            if predicate(item):
                return item
        future: asyncio.Future = asyncio.get_running_loop().create_future()
        entry = (predicate, future)
        self._waiters.append(entry)
        try:
            return await asyncio.wait_for(future, timeout)
        except asyncio.TimeoutError:
            raise AssertionError(f"{self.label}: no matching line in {timeout}s; got {self.lines}") from None
        finally:
            self._waiters.remove(entry)

    async def key(self, name: str, value: Any = None, timeout: float = 20) -> Any:
        return await self.expect(
            lambda item: isinstance(item, dict)
            and name in item
            and (value is None or item[name] == value),
            timeout,
        )

    def close_stdin(self) -> None:
        if self.process.stdin is not None and not self.process.stdin.is_closing():
            self.process.stdin.close()

    async def wait(self, timeout: float = 20) -> int:
        return await asyncio.wait_for(self.process.wait(), timeout)

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.process.returncode is None:
            try:
                os.kill(self.process.pid, sig)
            except ProcessLookupError:
                pass

    async def stop(self) -> None:
        self.kill()
        try:
            await asyncio.wait_for(self.process.wait(), 10)
        except asyncio.TimeoutError:
            pass
        self._reader.cancel()


class Procs:
    """Starts subprocesses and kills every one of them (by pid) at teardown."""

    def __init__(self) -> None:
        self.started: list[Proc] = []

    async def start(self, *cmd: str, env: Optional[dict[str, str]] = None, label: str = "", merge_stderr: bool = False, cwd: Optional[str] = None) -> Proc:
        process = await asyncio.create_subprocess_exec(
            *cmd,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT if merge_stderr else None,
            env={**os.environ, **(env or {})},
            cwd=cwd,
        )
        proc = Proc(process, label or cmd[-1])
        self.started.append(proc)
        return proc

    async def engine(self, config: Optional[str] = None, tmp: Optional[Path] = None, extra_env: Optional[dict[str, str]] = None, port: int = 0) -> "EngineProc":
        """Our engine on 127.0.0.1 and a free port (or ``port``); returns once it logged its URL."""
        directory = tmp or Path(os.environ.get("TMPDIR", "/tmp")) / f"iii-test-{uuid.uuid4().hex[:8]}"
        directory.mkdir(parents=True, exist_ok=True)
        config_path = directory / "config.yaml"
        config_path.write_text(
            config
            or f"workers:\n  - name: iii-worker-manager\n    config:\n      host: 127.0.0.1\n      port: {port}\n"
            + LOCAL_MODULES
        )
        proc = await self.start(
            sys.executable, "-m", "iii", "-c", str(config_path),
            env={"PYTHONUNBUFFERED": "1", **(extra_env or {})}, label="engine", merge_stderr=True,
        )
        line = await proc.expect(lambda item: isinstance(item, str) and bool(_URL_LINE.search(item)), 15)
        return EngineProc(proc, _URL_LINE.search(line).group(1))  # type: ignore[union-attr]

    async def close(self) -> None:
        for proc in self.started:
            await proc.stop()


class EngineProc:
    def __init__(self, proc: Proc, url: str) -> None:
        self.proc = proc
        self.url = url

    @property
    def alive(self) -> bool:
        return self.proc.process.returncode is None


class _Collector(WSListener):
    def __init__(self) -> None:
        self.queue: asyncio.Queue = asyncio.Queue()
        self.closed = asyncio.Event()
        self.close_code: Any = None

    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        if frame.msg_type in (WSMsgType.TEXT, WSMsgType.BINARY):
            self.queue.put_nowait(json.loads(frame.get_payload_as_bytes()))
        elif frame.msg_type == WSMsgType.PONG:
            self.queue.put_nowait({"_pong": frame.get_payload_as_bytes().decode()})
        elif frame.msg_type == WSMsgType.CLOSE:
            transport.send_close(frame.get_close_code())
            transport.disconnect()

    def on_ws_disconnected(self, transport: WSTransport) -> None:
        self.close_code = transport.close_handshake.recv.code if transport.close_handshake and transport.close_handshake.recv else None
        self.closed.set()


class RawClient:
    """A bare protocol client for tests: sends any bytes, reads decoded frames."""

    def __init__(self, transport: WSTransport, listener: _Collector) -> None:
        self.transport = transport
        self.listener = listener
        self.worker_id: Optional[str] = None
        self.reattach_token: Optional[str] = None

    @classmethod
    async def connect(cls, url: str, path: str = "/", headers: Optional[dict[str, str]] = None, welcome: bool = True) -> "RawClient":
        """Connect (with extra handshake ``headers``); on ``/``, wait for ``workerregistered``
        unless ``welcome`` is false."""
        transport, listener = await ws_connect(
            _Collector, url.rstrip("/") + path, max_frame_size=128 * 1024 * 1024, extra_headers=headers
        )
        client = cls(transport, listener)
        if path == "/" and welcome:
            frame = await client.recv()
            assert frame["type"] == "workerregistered"
            client.worker_id = frame["worker_id"]
            client.reattach_token = frame["reattach_token"]
        return client

    def send_bytes(self, data: bytes, msg_type: WSMsgType = WSMsgType.TEXT) -> None:
        self.transport.send(msg_type, data)

    def send(self, **message: Any) -> None:
        self.send_bytes(json.dumps(message).encode())

    async def recv(self, timeout: float = 10) -> Any:
        return await asyncio.wait_for(self.listener.queue.get(), timeout)

    async def recv_until(self, predicate: Callable[[Any], bool], timeout: float = 10) -> Any:
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            frame = await self.recv(max(0.01, deadline - asyncio.get_running_loop().time()))
            if predicate(frame):
                return frame

    async def call(self, function_id: str, data: Any = None, **extra: Any) -> Any:
        """Sync-style call: returns the ``invocationresult`` frame for it."""
        invocation_id = str(uuid.uuid4())
        self.send(type="invokefunction", invocation_id=invocation_id, function_id=function_id, data=data, **extra)
        return await self.recv_until(
            lambda f: f.get("type") == "invocationresult" and f.get("invocation_id") == invocation_id
        )

    async def wait_for_function(self, function_id: str, timeout: float = 30) -> None:
        """Return once ``function_id`` is registered (watches ``engine::functions-available``)."""
        watcher = f"probe::{uuid.uuid4().hex[:8]}"
        self.send(type="registerfunction", id=watcher)
        self.send(type="registertrigger", id=watcher, trigger_type="engine::functions-available", function_id=watcher, config={})
        listed = await self.call("engine::functions::list", {})
        if function_id in [f["function_id"] for f in listed["result"]["functions"]]:
            return
        await self.recv_until(
            lambda f: f.get("type") == "invokefunction" and f.get("function_id") == watcher
            and function_id in [fn["function_id"] for fn in f["data"]["functions"]],
            timeout,
        )

    async def register(self, name: str, **extra: Any) -> None:
        self.send(
            type="invokefunction",
            function_id="engine::workers::register",
            action={"type": "void"},
            data={"runtime": "test", "version": "0", "name": name, "pid": os.getpid(), **extra},
        )

    async def close(self) -> None:
        self.transport.send_close()
        self.transport.disconnect()
        await self.transport.wait_disconnected()


PY_WORKER = ROOT / "tests/interop/workers/py_worker.py"
NODE_WORKER = ROOT / "tests/interop/node/worker.mjs"


class Workers:
    """Starts scripted workers: ``await workers.start("python", "name", "--fn", "a::b=add")``.

    Runtimes: ``python`` (official Python SDK), ``node`` (official Node SDK), ``ours`` (the same
    Python script on this package's SDK).
    """

    def __init__(self, procs: Procs, engine: EngineProc, python: str, node: str) -> None:
        self.procs = procs
        self.engine = engine
        self._python = python
        self._node = node

    async def start(self, runtime: str, name: str, *args: str, calls: Any = None, env: Any = None) -> Proc:
        argv = [name, *args]
        if calls is not None:
            argv += ["--calls", json.dumps(calls)]
        if runtime == "python":  # the official Python SDK, in its own venv
            cmd = [self._python, str(PY_WORKER), *argv]
        elif runtime == "ours":  # the same script on our SDK (this venv)
            cmd = [sys.executable, str(PY_WORKER), *argv]
        else:
            cmd = [self._node, str(NODE_WORKER), *argv]
        return await self.procs.start(
            *cmd, env={"III_URL": self.engine.url, **(env or {})}, label=f"{runtime}:{name}"
        )

    async def python(self, name: str, *args: str, calls: Any = None) -> Proc:
        return await self.start("python", name, *args, calls=calls)

    async def node(self, name: str, *args: str, calls: Any = None) -> Proc:
        return await self.start("node", name, *args, calls=calls)


async def call_results(proc: Proc, count: int) -> list[dict]:
    """The outcome lines of the first ``count`` scripted calls, in order."""
    return [await proc.key("call", index, timeout=30) for index in range(count)]


@contextlib.asynccontextmanager
async def in_process_engine(config_text: str, tmp: Path, **listener: Any) -> Any:
    """An engine on the test's own loop, from ``config_text``, its worker listener on 127.0.0.1
    and a free port (``listener`` sets its other keys, or another port); stopped when the block
    ends."""
    from iii.app import App
    from iii.config import parse_config
    from iii.engine.server import ListenerConfig

    config = parse_config(config_text, tmp / "config.yaml")
    config.listeners = [ListenerConfig(**{"host": "127.0.0.1", "port": 0, **listener})]
    app = App(config)
    await app.start()
    try:
        yield app
    finally:
        await app.stop()


# --------------------------------------------------------------------------- sans-I/O router peers


def make_router(modules: Optional[dict[str, Any]] = None, *, numbered_ids: bool = True, **options: Any) -> Any:
    """A sans-I/O router as the engine process assembles it: the ``engine::*`` functions and,
    given ``modules`` (module name -> config, ``{}`` for all defaults), every built-in module."""
    from iii.app import install_modules
    from iii.engine.functions import install_engine_functions
    from iii.engine.router import Router

    if numbered_ids:
        counter = iter(range(1, 1 << 62))
        options.setdefault("new_id", lambda: f"id-{next(counter)}")
    router = Router(grace_ms=5000, **options)
    install_engine_functions(router)
    if modules is not None:
        install_modules(router, modules)
    return router


class Peer:
    """A fake connection to a :class:`~iii.engine.router.Router`: records what it is sent."""

    def __init__(self, router: Any, now_ms: int = 1_000, ip: str = "127.0.0.1") -> None:
        self.router = router
        self.outbox: list[bytes] = []
        self.closed = False
        self.conn = router.connect(self.outbox.append, self._close, ip, now_ms)
        welcome = self.take()
        assert welcome == [
            {"type": "workerregistered", "worker_id": self.conn.id, "reattach_token": self.conn.token}
        ]

    def _close(self) -> None:
        self.closed = True

    @property
    def id(self) -> str:
        return self.conn.id

    def take(self) -> list[Any]:
        frames = [json.loads(raw) for raw in self.outbox]
        self.outbox.clear()
        return frames

    def send(self, **message: Any) -> None:
        self.router.receive(self.conn, json.dumps(message).encode())

    def send_raw(self, raw: bytes) -> None:
        self.router.receive(self.conn, raw)

    def register(self, name: str, namespace: Any = None, **extra: Any) -> None:
        data = {"runtime": "python", "version": "0.25.0", "name": name, "pid": 42, "namespace": namespace, **extra}
        self.send(
            type="invokefunction",
            function_id="engine::workers::register",
            action={"type": "void"},
            data=data,
        )

    def function(self, function_id: str, **extra: Any) -> None:
        self.send(type="registerfunction", id=function_id, **extra)

    def call(self, function_id: str, data: Any = None, invocation_id: str = "inv-1", **extra: Any) -> None:
        self.send(type="invokefunction", invocation_id=invocation_id, function_id=function_id, data=data, **extra)

    def result_of(self, function_id: str, data: Any = None, **extra: Any) -> Any:
        """Call a built-in and return its ``invocationresult``."""
        self.call(function_id, data, invocation_id="q", **extra)
        (frame,) = [f for f in self.take() if f.get("invocation_id") == "q"]
        return frame


def connected(router: Any, name: str, *functions: str) -> Peer:
    peer = Peer(router)
    peer.register(name)
    for function_id in functions:
        peer.function(function_id)
    router.flush_events()
    return peer


def clocked_router(clock: "FakeClock", modules: Optional[dict[str, Any]] = None) -> Any:
    """:func:`make_router` on a :class:`FakeClock`: the deadlines of the engine's calls fall due as
    the test moves the clock."""
    router: Any = None

    def wake(deadline_ms: int) -> None:
        clock.call_later(max(0.0, deadline_ms / 1000 - clock.now), router.expire_calls)

    router = make_router(modules, clock=lambda: int(clock.now * 1000), wake=wake)
    return router


class FakeClock:
    """A scheduler (``iii.modules.cron.Scheduler``) whose time only moves when the test says so."""

    def __init__(self, now: float) -> None:
        self.now = now
        self.timers: list[list] = []  # [due, callback, cancelled]

    def time(self) -> float:
        return self.now

    def call_later(self, delay: float, callback: Callable[[], None]):
        timer = [self.now + delay, callback, False]
        self.timers.append(timer)

        class Handle:
            def cancel(self) -> None:
                timer[2] = True

        return Handle()

    def advance(self, seconds: float) -> None:
        """Move time on, running every timer that falls due on the way, in order."""
        until = self.now + seconds
        while True:
            due = sorted((t for t in self.timers if not t[2] and t[0] <= until), key=lambda t: t[0])
            if not due:
                break
            timer = due[0]
            timer[2] = True
            self.now = max(self.now, timer[0])
            timer[1]()
        self.now = until

    @property
    def pending(self) -> int:
        return sum(1 for t in self.timers if not t[2])


class RedisServer:
    """A real ``redis-server`` on a free loopback port, its files in ``directory``.

    Append-only with ``fsync`` on every write, so a restart (:meth:`restart`) keeps what Redis
    acknowledged, as a production Redis with AOF does. Killed by pid at :meth:`stop`.
    """

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.port = 0
        self.process: Optional[Any] = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 15.0) -> None:
        """Start it (on the port it had before, after a :meth:`kill`) and wait for ``PONG``."""
        import socket
        import subprocess
        import time

        if not self.port:
            with socket.socket() as probe:
                probe.bind(("127.0.0.1", 0))
                self.port = probe.getsockname()[1]
        self.directory.mkdir(parents=True, exist_ok=True)
        log = open(self.directory / "redis.log", "ab")
        self.process = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.directory),
             "--save", "", "--appendonly", "yes", "--appendfsync", "always", "--protected-mode", "no"],
            stdout=log, stderr=subprocess.STDOUT,
        )
        log.close()
        deadline = time.monotonic() + timeout
        while True:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1) as sock:
                    sock.sendall(b"PING\r\n")
                    if sock.recv(16).startswith(b"+PONG"):
                        return
            except OSError:
                pass
            if self.process.poll() is not None or time.monotonic() > deadline:
                output = (self.directory / "redis.log").read_text(errors="replace")
                self.stop()
                raise RuntimeError(f"redis-server did not start on port {self.port}:\n{output}")
            time.sleep(0.02)

    def kill(self) -> None:
        """``kill -9`` it (its port and files stay, for :meth:`start` or :meth:`restart`)."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    def restart(self) -> None:
        self.kill()
        self.start()

    stop = kill


def calls_from_threads(client: Any, function_id: str, threads: int, calls: int) -> dict[int, list]:
    """Each of ``threads`` threads makes ``calls`` synchronous ``trigger()`` calls of
    ``function_id`` with payload ``[thread, n]``; their answers by thread."""
    answers: dict[int, list] = {}

    def caller(thread: int) -> None:
        answers[thread] = [client.trigger({"function_id": function_id, "payload": [thread, n]}) for n in range(calls)]

    started = [threading.Thread(target=caller, args=(t,)) for t in range(threads)]
    for thread in started:
        thread.start()
    for thread in started:
        thread.join(30)
    return answers
