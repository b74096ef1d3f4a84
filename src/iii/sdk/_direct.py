"""The direct call channel: a second WebSocket to the engine on which a thread calling the
synchronous ``trigger()`` makes the whole round trip itself.

The worker's own connection lives on the client's event loop, so a call from another thread costs
two thread hand-offs (caller → loop to send, loop → caller with the answer) and loop iterations on
both sides. On this channel the calling thread writes its frame and reads the answer with plain
blocking socket calls (the GIL is released while it waits): no other thread wakes up.

The channel is the worker's *call channel* (``Router.connect_call_channel``): its handshake
carries the worker connection's id and ``reattach_token`` (``x-iii-call-channel``), and the
engine treats its calls as that worker's (``_caller_worker_id``, RBAC session) without listing it
or announcing it to ``workers-available`` watchers. An engine that does not know call channels
names it a worker of its own (its watchers see one worker come and go): then it is closed and
never opened again.

One thread owns it at a time (:attr:`DirectChannel.lock`); the client decides which calls may use
it (see :meth:`iii.sdk.client.III.trigger`). Whatever the engine sends between calls (pings) is
read by :meth:`DirectChannel.drain`, which the client's loop runs every few seconds when no call
holds the channel.
"""

from __future__ import annotations

import _thread
import base64
import hashlib
import logging
import os
import socket
import struct
import threading
import time
from typing import Callable, Optional, Union
from urllib.parse import urlsplit

import msgspec

from iii import codec
from iii.protocol import CALL_CHANNEL_HEADER, MAX_MESSAGE_SIZE, WorkerRegistered
from iii.sdk._protocol import Answer

__all__ = ["DirectChannel", "NOT_SENT", "LOST", "TIMED_OUT"]

log = logging.getLogger("iii")

_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
_MAX_HANDSHAKE_BYTES = 64 * 1024
_READ_CHUNK = 64 * 1024  # below malloc's mmap threshold: no mmap/munmap per read
_TEXT, _BINARY, _CONTINUATION, _CLOSE, _PING, _PONG = 0x1, 0x2, 0x0, 0x8, 0x9, 0xA
#: Reads an ``invocationresult`` in one pass, result and error included.
_answer_decoder = msgspec.json.Decoder(Answer)


class _Outcome:
    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return self.name


#: The frame was not (completely) written: the engine never saw the call; send it another way.
NOT_SENT = _Outcome("NOT_SENT")
#: The frame was written, then the channel failed: the engine may run the call, no answer comes.
LOST = _Outcome("LOST")
#: No answer within the call's timeout (a late one is skipped by the next call).
TIMED_OUT = _Outcome("TIMED_OUT")


class _Closed(Exception):
    """The channel can no longer be used (peer closed, socket error, protocol violation)."""


def _control_frame(opcode: int, payload: bytes) -> bytes:
    """A masked control frame (payload ≤ 125 bytes, as RFC 6455 requires of control frames)."""
    key = os.urandom(4)
    masked = bytes(b ^ key[i & 3] for i, b in enumerate(payload))
    return bytes((0x80 | opcode, 0x80 | len(payload))) + key + masked


class DirectChannel:
    """A blocking WebSocket client of the worker protocol, used one call at a time.

    Args:
        address: the engine's ``ws://`` URL (``wss://`` is not supported: :meth:`connect` refuses it).
        headers: gives the handshake headers the worker's own connection uses.
    """

    def __init__(self, address: str, headers: Callable[[], dict[str, str]]) -> None:
        self._address = address
        self._headers = headers
        #: Held by the thread using the channel; others send their calls the ordinary way.
        self.lock = _thread.allocate_lock()
        #: The open socket, ``None`` while not connected (read without the lock as a hint only).
        self.sock: Optional[socket.socket] = None
        #: Set by :meth:`close`: never connect again.
        self.closed = False
        #: Set while the channel is open (for whoever needs to wait for it).
        self.opened = threading.Event()
        self._buffer = bytearray()
        #: What each call's answer is read into first (a view of it: it is never resized).
        self._scratch = memoryview(bytearray(_READ_CHUNK))
        #: The open socket's descriptor.
        self._fd = -1
        #: The worker connection it was opened for.
        self.worker_id: Optional[str] = None
        #: The receive/send timeout set on the socket (changed only when a call needs another).
        self._timeout_s: Optional[float] = None

    # ------------------------------------------------------------------ connection

    def connect(self, timeout_s: float, worker_id: str, reattach_token: str) -> bool:
        """Open the channel for the worker connection ``worker_id`` (blocking, ≤ ``timeout_s``
        per step): handshake with its proof, then wait for ``workerregistered``. Returns whether
        it is open. An engine that names the channel anything but ``worker_id`` took it for a
        worker of its own (it does not know call channels): the channel is closed for good."""
        url = urlsplit(self._address)
        if url.scheme != "ws" or not url.hostname:
            return False
        sock: Optional[socket.socket] = None
        try:
            sock = socket.create_connection((url.hostname, url.port or 80), timeout_s)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            headers = {**self._headers(), CALL_CHANNEL_HEADER: f"{worker_id} {reattach_token}"}
            leftover = self._handshake(sock, url.netloc, url.path or "/", headers)
            sock.settimeout(None)  # blocking: one system call per read or write, no poll() first
            self._buffer = bytearray(leftover)
            self._set_timeout(sock, timeout_s)
            opcode, payload = self._read_message(sock)
            welcome = codec.decode_engine_frame(payload) if opcode == _TEXT else None
            if not isinstance(welcome, WorkerRegistered):
                raise _Closed(f"the engine's first frame was not workerregistered: {payload[:200]!r}")
            if welcome.worker_id != worker_id:
                log.debug("[iii] the engine at %s has no call channels: synchronous calls go through the loop", self._address)
                self.closed = True
                raise _Closed("taken for a worker of its own")
        except (OSError, _Closed, codec.DecodeError, ValueError) as exc:
            log.debug("[iii] direct call channel to %s not opened: %s", self._address, exc)
            if sock is not None:
                sock.close()
            return False
        with self.lock:
            if self.closed:
                sock.close()
                return False
            self.sock = sock
            self._fd = sock.fileno()
            self.worker_id = worker_id
            self.opened.set()
        return True

    def _handshake(self, sock: socket.socket, host: str, path: str, headers: dict[str, str]) -> bytes:
        key = base64.b64encode(os.urandom(16))
        lines = [
            f"GET {path} HTTP/1.1",
            f"Host: {host}",
            "Upgrade: websocket",
            "Connection: Upgrade",
            f"Sec-WebSocket-Key: {key.decode()}",
            "Sec-WebSocket-Version: 13",
        ]
        lines += [f"{name}: {value}" for name, value in headers.items()]
        sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
        response = b""
        while b"\r\n\r\n" not in response:
            if len(response) > _MAX_HANDSHAKE_BYTES:
                raise _Closed("handshake response too large")
            chunk = sock.recv(4096)
            if not chunk:
                raise _Closed("closed during the handshake")
            response += chunk
        head, _, leftover = response.partition(b"\r\n\r\n")
        status, *header_lines = head.decode("latin-1").split("\r\n")
        if status.split(" ", 2)[1:2] != ["101"]:
            raise _Closed(f"handshake refused: {status}")
        accept = base64.b64encode(hashlib.sha1(key + _GUID).digest()).decode()
        fields = {name.strip().lower(): value.strip() for name, _, value in (line.partition(":") for line in header_lines)}
        if fields.get("sec-websocket-accept") != accept:
            raise _Closed("handshake: wrong Sec-WebSocket-Accept")
        return leftover

    def close(self, *, final: bool = True) -> None:
        """Close the socket (any thread); ``final``: never :meth:`connect` again. A call in
        progress sees the channel fail (``LOST``)."""
        if final:
            self.closed = True
        sock = self.sock
        if sock is None:
            return
        try:
            sock.shutdown(socket.SHUT_RDWR)  # wakes a thread blocked in recv(); it closes the fd
        except OSError:
            pass
        if self.lock.acquire(False):
            try:
                self._drop()
            finally:
                self.lock.release()

    def _drop(self) -> None:
        """Forget the socket (with the lock held)."""
        sock, self.sock = self.sock, None
        self._fd = -1
        self.opened.clear()
        self._buffer = bytearray()
        if sock is not None:
            sock.close()

    # ------------------------------------------------------------------ calls (lock held)

    def call(self, frame: bytes, invocation_id: str, timeout_s: float) -> Union[Answer, _Outcome]:
        """Send one call's frame and wait for its ``invocationresult``; the caller holds :attr:`lock`.

        Returns its :class:`~iii.sdk._protocol.Answer`, or :data:`NOT_SENT`, :data:`LOST` or
        :data:`TIMED_OUT`.
        """
        sock = self.sock
        if sock is None:
            return NOT_SENT
        deadline = time.monotonic() + timeout_s
        try:
            if self._timeout_s != timeout_s:
                self._set_timeout(sock, timeout_s)
            codec.send_text_frame(self._fd, frame)
        except OSError as exc:  # incomplete: the engine drops a connection with a partial frame
            log.debug("[iii] direct call channel failed while sending: %s", exc)
            self._drop()
            return NOT_SENT
        try:
            while True:
                payload = self._whole_text_frame() if not self._buffer else None
                if payload is None:
                    opcode, payload = self._read_message(sock)
                    if opcode != _TEXT:
                        continue
                try:
                    answer = _answer_decoder.decode(payload)
                except msgspec.DecodeError:  # not an answer
                    pass
                else:
                    if answer.invocation_id == invocation_id:
                        return answer
                # A late answer to a call that timed out, or a frame for no call: skip it.
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return TIMED_OUT
                self._set_timeout(sock, remaining)
        except BlockingIOError:  # SO_RCVTIMEO expired
            return TIMED_OUT
        except (OSError, _Closed) as exc:
            log.debug("[iii] direct call channel lost during a call: %s", exc)
            self._drop()
            return LOST

    def drain(self) -> bool:
        """Read what waits without blocking (answering pings); the caller holds :attr:`lock`.
        Returns whether the channel is still open."""
        sock = self.sock
        if sock is None:
            return False
        try:
            while True:
                while self._take_frame(sock) is not None:
                    pass  # pings are answered inside; nothing else between calls matters
                try:
                    chunk = sock.recv(_READ_CHUNK, socket.MSG_DONTWAIT)
                except BlockingIOError:
                    break
                if not chunk:
                    raise _Closed("closed by the engine")
                self._buffer += chunk  # at most one incomplete frame stays in it
        except (OSError, _Closed) as exc:
            log.debug("[iii] direct call channel closed: %s", exc)
            self._drop()
            return False
        return True

    # ------------------------------------------------------------------ framing

    def _set_timeout(self, sock: socket.socket, timeout_s: float) -> None:
        """Bound each blocking read and write by the socket (blocking mode keeps one system
        call per read; Python's own timeouts poll() first)."""
        timeout_s = max(timeout_s, 0.001)
        seconds = int(timeout_s)
        timeval = struct.pack("ll", seconds, int((timeout_s - seconds) * 1e6))
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, timeval)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, timeval)
        self._timeout_s = timeout_s

    def _whole_text_frame(self) -> Optional[memoryview]:
        """Read once (the buffer is empty); the payload if that brought exactly one text frame
        (the usual answer; valid until the next read), else ``None`` with what was read left in
        the buffer."""
        scratch = self._scratch
        size = codec.receive_into(self._fd, scratch)
        if size > 3 and scratch[0] == 0x81:
            second = scratch[1]
            if second < 126 and size == second + 2:
                return scratch[2:size]
            if second == 126 and size == ((scratch[2] << 8) | scratch[3]) + 4:
                return scratch[4:size]
        if not size:
            raise _Closed("closed by the engine")
        self._buffer += scratch[:size]
        return None

    def _read_message(self, sock: socket.socket) -> tuple[int, bytes]:
        """The next data message (fragments joined), reading as needed; control frames are
        handled on the way."""
        fragments: list[bytes] = []
        size = 0
        first_opcode = 0
        while True:
            frame = self._take_frame(sock)
            if frame is None:
                chunk = sock.recv(_READ_CHUNK)
                if not chunk:
                    raise _Closed("closed by the engine")
                self._buffer += chunk
                continue
            fin, opcode, payload = frame
            if opcode == _CONTINUATION:
                if not fragments:
                    raise _Closed("continuation without a first fragment")
            elif fragments:
                raise _Closed("new message inside a fragmented one")
            else:
                first_opcode = opcode
            if fin and not fragments:
                return opcode, payload
            fragments.append(payload)
            size += len(payload)
            if size > MAX_MESSAGE_SIZE:
                raise _Closed("message too large")
            if fin:
                return first_opcode, b"".join(fragments)

    def _take_frame(self, sock: socket.socket) -> Optional[tuple[int, int, bytes]]:
        """One complete data frame ``(fin, opcode, payload)`` from the buffer, or ``None`` if
        more must be read. Control frames are consumed here (ping → pong, close → raise)."""
        buffer = self._buffer
        while True:
            available = len(buffer)
            if available < 2:
                return None
            second = buffer[1]
            if second & 0x80:
                raise _Closed("masked frame from the engine")
            length = second & 0x7F
            head = 2
            if length == 126:
                if available < 4:
                    return None
                length = int.from_bytes(buffer[2:4], "big")
                head = 4
            elif length == 127:
                if available < 10:
                    return None
                length = int.from_bytes(buffer[2:10], "big")
                head = 10
            if length > MAX_MESSAGE_SIZE:
                raise _Closed("frame too large")
            end = head + length
            if available < end:
                return None
            first = buffer[0]
            opcode = first & 0x0F
            payload = bytes(buffer[head:end])
            del buffer[:end]
            if opcode == _PING:
                sock.send(_control_frame(_PONG, payload), socket.MSG_DONTWAIT)
            elif opcode == _CLOSE:
                try:
                    sock.send(_control_frame(_CLOSE, payload[:2]), socket.MSG_DONTWAIT)
                except OSError:
                    pass
                raise _Closed("close frame from the engine")
            elif opcode != _PONG:
                return bool(first & 0x80), opcode, payload
