"""``iii.sdk._direct.DirectChannel`` against a scripted WebSocket server on a plain socket: the
handshake, what the engine may send besides the answer (pings, fragments, late answers, close),
and the bounds."""

from __future__ import annotations

import base64
import hashlib
import socket
import threading
from typing import Callable, Iterator, Optional

import pytest

from iii.protocol import MAX_MESSAGE_SIZE
from iii.sdk._protocol import Answer
from iii.sdk._direct import LOST, NOT_SENT, TIMED_OUT, DirectChannel

_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
_WELCOME = b'{"type":"workerregistered","worker_id":"w-1","reattach_token":"t-1"}'


def frame(opcode: int, payload: bytes, fin: bool = True) -> bytes:
    """A server frame (unmasked)."""
    first = (0x80 if fin else 0) | opcode
    size = len(payload)
    if size < 126:
        return bytes((first, size)) + payload
    if size < 65536:
        return bytes((first, 126)) + size.to_bytes(2, "big") + payload
    return bytes((first, 127)) + size.to_bytes(8, "big") + payload


def result(invocation_id: str, value: bytes = b'"ok"') -> bytes:
    return b'{"type":"invocationresult","invocation_id":"%s","result":%s}' % (invocation_id.encode(), value)


class ScriptedEngine:
    """Accepts one connection, answers the handshake (recording its headers), then runs ``script``."""

    def __init__(self, script: Callable[["ScriptedEngine"], None]) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"ws://127.0.0.1:{self.listener.getsockname()[1]}/"
        self.headers: dict[str, str] = {}
        self.conn: Optional[socket.socket] = None
        self._buffer = b""
        self._script = script
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        self.listener.settimeout(10)
        conn, _ = self.listener.accept()
        conn.settimeout(10)
        self.conn = conn
        request = b""
        while b"\r\n\r\n" not in request:
            request += conn.recv(4096)
        head, _, self._buffer = request.partition(b"\r\n\r\n")
        for line in head.decode().split("\r\n")[1:]:
            name, _, value = line.partition(":")
            self.headers[name.strip().lower()] = value.strip()
        accept = base64.b64encode(hashlib.sha1(self.headers["sec-websocket-key"].encode() + _GUID).digest())
        conn.sendall(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                     b"Sec-WebSocket-Accept: " + accept + b"\r\n\r\n")
        try:
            self._script(self)
        except OSError:
            pass

    def send(self, data: bytes) -> None:
        assert self.conn is not None
        self.conn.sendall(data)

    def receive(self) -> tuple[int, bytes]:
        """The next client frame, unmasked: ``(opcode, payload)``."""
        assert self.conn is not None
        while True:
            buffer = self._buffer
            if len(buffer) >= 6:
                size, head = buffer[1] & 0x7F, 2
                if size == 126:
                    size, head = int.from_bytes(buffer[2:4], "big"), 4
                elif size == 127:
                    size, head = int.from_bytes(buffer[2:10], "big"), 10
                if len(buffer) >= head + 4 + size:
                    key = buffer[head:head + 4]
                    payload = bytes(b ^ key[i % 4] for i, b in enumerate(buffer[head + 4:head + 4 + size]))
                    self._buffer = buffer[head + 4 + size:]
                    return buffer[0] & 0x0F, payload
            chunk = self.conn.recv(65536)
            if not chunk:
                raise OSError("closed")
            self._buffer += chunk

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
        self.listener.close()
        self.thread.join(10)


@pytest.fixture
def scripted() -> Iterator[Callable[[Callable[[ScriptedEngine], None]], ScriptedEngine]]:
    engines: list[ScriptedEngine] = []

    def start(script: Callable[[ScriptedEngine], None]) -> ScriptedEngine:
        engines.append(ScriptedEngine(script))
        return engines[-1]

    yield start
    for engine in engines:
        engine.close()


def open_channel(engine: ScriptedEngine, headers: Optional[dict[str, str]] = None) -> DirectChannel:
    channel = DirectChannel(engine.url, lambda: headers or {})
    assert channel.connect(5, "w-1", "t-1") and channel.opened.is_set()
    return channel


def test_a_call_skips_late_answers_and_answers_pings_on_the_way(scripted):
    got_all = threading.Event()
    seen: list[tuple[int, bytes]] = []

    def script(engine: ScriptedEngine) -> None:
        engine.send(frame(0x1, _WELCOME))
        seen.append(engine.receive())
        engine.send(frame(0x1, result("old-call")) + frame(0x9, b"are you there"))
        seen.append(engine.receive())  # the pong
        big = result("id-1", b'"' + b"x" * 70_000 + b'"')
        engine.send(frame(0x1, big[:100], fin=False) + frame(0x9, b"") + frame(0x0, big[100:]))
        seen.append(engine.receive())
        got_all.set()

    engine = scripted(script)
    channel = open_channel(engine, {"Authorization": "Bearer secret"})
    with channel.lock:
        answer = channel.call(b'{"type":"invokefunction","invocation_id":"id-1"}', "id-1", 5)
    assert got_all.wait(10)
    assert isinstance(answer, Answer) and answer.invocation_id == "id-1" and answer.result == "x" * 70_000
    assert seen == [(0x1, b'{"type":"invokefunction","invocation_id":"id-1"}'), (0xA, b"are you there"), (0xA, b"")]
    assert engine.headers["authorization"] == "Bearer secret"


def test_pings_between_calls_are_answered_by_drain(scripted):
    pong = threading.Event()
    received: list[tuple[int, bytes]] = []

    def script(engine: ScriptedEngine) -> None:
        engine.send(frame(0x1, _WELCOME) + frame(0x9, b"idle?"))
        received.append(engine.receive())
        pong.set()

    channel = open_channel(scripted(script))
    deadline = 50
    while not pong.is_set() and deadline:  # drain does not block: the ping may not be there yet
        with channel.lock:
            assert channel.drain()
        pong.wait(0.1)
        deadline -= 1
    assert received == [(0xA, b"idle?")]


def test_a_call_times_out_and_the_channel_stays_usable(scripted):
    go_on = threading.Event()

    def script(engine: ScriptedEngine) -> None:
        engine.send(frame(0x1, _WELCOME))
        engine.receive()
        go_on.wait(10)
        engine.receive()
        engine.send(frame(0x1, result("slow")) + frame(0x1, result("next")))

    channel = open_channel(scripted(script))
    with channel.lock:
        assert channel.call(b"{}", "slow", 0.2) is TIMED_OUT
        go_on.set()
        answer = channel.call(b"{}", "next", 5)
    assert isinstance(answer, Answer) and answer.invocation_id == "next"


@pytest.mark.parametrize(
    "ending",
    [frame(0x8, b"\x03\xe8"), bytes((0x81, 127)) + (MAX_MESSAGE_SIZE + 1).to_bytes(8, "big"), b""],
    ids=["close-frame", "frame-too-large", "eof"],
)
def test_a_channel_that_fails_after_the_send_reports_the_call_lost(scripted, ending):
    def script(engine: ScriptedEngine) -> None:
        engine.send(frame(0x1, _WELCOME))
        engine.receive()
        engine.send(ending)
        assert engine.conn is not None
        engine.conn.shutdown(socket.SHUT_WR)

    channel = open_channel(scripted(script))
    with channel.lock:
        assert channel.call(b"{}", "id", 5) is LOST
        assert channel.sock is None and not channel.opened.is_set()
        assert channel.call(b"{}", "id", 5) is NOT_SENT  # until it is opened again


def test_a_refused_connection_is_not_opened(scripted):
    def script(engine: ScriptedEngine) -> None:
        engine.send(frame(0x1, b'{"type":"error","error":{"code":"AUTH_ERROR","message":"invalid token"}}') + frame(0x8, b"\x03\xe8"))

    channel = DirectChannel(scripted(script).url, dict)
    assert not channel.connect(5, "w-1", "t-1") and channel.sock is None
    assert not DirectChannel("wss://127.0.0.1:1/", dict).connect(5, "w-1", "t-1")  # TLS: not supported, not tried


def test_an_engine_that_takes_it_for_a_worker_of_its_own_closes_it_for_good(scripted):
    """An engine without call channels names the connection itself: the channel is not used,
    and never opened again (its watchers would see a worker come and go each time)."""
    def script(engine: ScriptedEngine) -> None:
        engine.send(frame(0x1, b'{"type":"workerregistered","worker_id":"someone-else","reattach_token":"x"}'))

    engine = scripted(script)
    channel = DirectChannel(engine.url, dict)
    assert not channel.connect(5, "w-1", "t-1")
    assert channel.closed and channel.sock is None
    assert engine.headers["x-iii-call-channel"] == "w-1 t-1"  # the worker's proof was offered
