"""Data channels in workers: :class:`ChannelWriter` / :class:`ChannelReader` on the engine's
``/ws/channels/{id}`` sockets, the refs that travel in payloads, and the streaming HTTP types.

The same names and behaviour as the official ``iii-sdk`` (``iii.channels``): a writer connects on
its first write or message and splits binary writes into frames of at most
:data:`MAX_FRAME_SIZE`; ``close_async`` waits 10 ms (what is sent before goes first), closes
normally and waits for the engine's Close. A reader connects when first iterated: ``async for``
yields binary chunks and hands text frames to the ``on_message`` callbacks. Sockets are picows
(the SDK's own), with back-pressure both ways: a writer waits while the engine is not reading, a
reader that is not iterated stops reading its socket (the engine then stops its writer).

:class:`Channel` (``iii.helpers.create_channel``), the streaming HTTP types
(:class:`StreamRequest`, :class:`StreamResponse`, :class:`InternalHttpRequest`),
:func:`is_channel_ref` and :func:`extract_channel_refs` are defined here; ``iii.types``,
``iii.channel``, ``iii.internal``, ``iii.utils`` and ``iii.helpers`` re-export them where the
official package has them. The refs themselves are :class:`iii.iii_types.StreamChannelRef`.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections import deque
from dataclasses import dataclass
from enum import Enum
from typing import Any, AsyncIterator, Callable, Literal, Mapping, Optional, TypedDict, TypeGuard, Union
from urllib.parse import quote

import msgspec
from picows import WSCloseCode, WSFrame, WSListener, WSMsgType, WSTransport, ws_connect

from iii.iii_types import StreamChannelRef

__all__ = [
    "MAX_FRAME_SIZE",
    "Channel",
    "ChannelDirection",
    "ChannelItem",
    "ChannelReader",
    "ChannelWriter",
    "InternalHttpRequest",
    "ReadableStream",
    "StreamChannelRef",
    "StreamChannelRefDict",
    "StreamRequest",
    "StreamResponse",
    "WritableStream",
    "build_channel_url",
    "extract_channel_refs",
    "is_channel_ref",
    "resolve_channels",
    "resolve_headers",
]

log = logging.getLogger("iii.channels")

#: Binary writes are sent in frames of at most this many bytes.
MAX_FRAME_SIZE = 64 * 1024
#: The largest frame a channel socket accepts from the engine.
_MAX_INBOUND_FRAME = 16 * 1024 * 1024
#: Frames a reader holds before it stops reading its socket (the engine then holds the rest).
_READER_HIGH_WATER = 64
#: Bytes a writer lets its transport buffer before ``write`` waits for the engine.
_WRITER_HIGH_WATER = 1024 * 1024
_CLOSE_DELAY_S = 0.01
_CLOSE_WAIT_S = 10.0
_HANDSHAKE_TIMEOUT_S = 10.0

_TEXT = WSMsgType.TEXT
_BINARY = WSMsgType.BINARY
_CLOSE = WSMsgType.CLOSE
_CONTINUATION = WSMsgType.CONTINUATION


class ChannelDirection(str, Enum):
    """Direction of a channel ref, from its holder's side (the wire's ``"read"`` / ``"write"``)."""

    READ = "read"
    WRITE = "write"


@dataclass
class ChannelItem:
    """One frame of a channel: exactly one of ``text`` or ``binary``."""

    text: Optional[str] = None
    binary: Optional[bytes] = None

    def __post_init__(self) -> None:
        if (self.text is None) == (self.binary is None):
            raise ValueError("ChannelItem requires exactly one of `text` or `binary`")

    @classmethod
    def text_item(cls, value: str) -> ChannelItem:
        return cls(text=value, binary=None)

    @classmethod
    def binary_item(cls, value: bytes) -> ChannelItem:
        return cls(text=None, binary=value)

    @property
    def is_text(self) -> bool:
        return self.text is not None

    @property
    def is_binary(self) -> bool:
        return self.binary is not None


def resolve_headers(explicit: Optional[dict[str, str]] = None) -> Optional[dict[str, str]]:
    """Handshake headers for an engine socket: ``explicit`` plus ``Authorization: Bearer
    $III_TOKEN`` when that is set (an explicit ``Authorization`` wins)."""
    token = os.environ.get("III_TOKEN", "").strip()
    if not token or any(name.lower() == "authorization" for name in explicit or {}):
        return explicit
    return {**(explicit or {}), "Authorization": f"Bearer {token}"}


def build_channel_url(engine_ws_base: str, channel_id: str, access_key: str, direction: str) -> str:
    """``<engine url>/ws/channels/<id>?[<its query>&]key=<key>&dir=<direction>``."""
    base, _, query = engine_ws_base.partition("?")
    query = "&".join(part for part in (query, f"key={quote(access_key)}", f"dir={direction}") if part)
    return f"{base.rstrip('/')}/ws/channels/{channel_id}?{query}"


class _Socket(WSListener):
    """A channel socket (picows client): frames in a bounded queue, write flow control."""

    def __init__(self) -> None:
        self.transport: Any = None
        self.frames: deque[Union[bytes, str]] = deque()
        self.closed = False
        self._arrived: Optional[asyncio.Future[None]] = None
        self._drained: Optional[asyncio.Future[None]] = None
        self._reading_paused = False
        self._parts: list[bytes] = []
        self._parts_text = False

    def on_ws_connected(self, transport: WSTransport) -> None:
        self.transport = transport
        transport.underlying_transport.set_write_buffer_limits(high=_WRITER_HIGH_WATER)

    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        msg_type = frame.msg_type
        if msg_type == _BINARY or msg_type == _TEXT:
            if not frame.fin:
                self._parts = [frame.get_payload_as_bytes()]
                self._parts_text = msg_type == _TEXT
                return
            self._add(frame.get_payload_as_utf8_text() if msg_type == _TEXT else frame.get_payload_as_bytes())
        elif msg_type == _CONTINUATION and self._parts:
            self._parts.append(frame.get_payload_as_bytes())
            if frame.fin:
                payload = b"".join(self._parts)
                self._parts = []
                self._add(payload.decode() if self._parts_text else payload)
        elif msg_type == _CLOSE:
            if not transport.is_close_frame_sent:
                transport.send_close(frame.get_close_code())
            transport.disconnect()

    def _add(self, message: Union[bytes, str]) -> None:
        self.frames.append(message)
        if len(self.frames) >= _READER_HIGH_WATER and not self._reading_paused:
            self._reading_paused = True
            self.transport.underlying_transport.pause_reading()
        self._wake()

    def _wake(self) -> None:
        arrived, self._arrived = self._arrived, None
        if arrived is not None and not arrived.done():
            arrived.set_result(None)

    def on_ws_disconnected(self, transport: WSTransport) -> None:
        self.closed = True
        self._wake()
        self.resume_writing()

    def pause_writing(self) -> None:
        if self._drained is None:
            self._drained = asyncio.get_running_loop().create_future()

    def resume_writing(self) -> None:
        drained, self._drained = self._drained, None
        if drained is not None and not drained.done():
            drained.set_result(None)

    async def drain(self) -> None:
        while self._drained is not None:
            await self._drained

    async def next(self) -> Optional[Union[bytes, str]]:
        """The next frame, or ``None`` once the socket is closed and everything was read."""
        while not self.frames:
            if self.closed:
                return None
            self._arrived = asyncio.get_running_loop().create_future()
            await self._arrived
        message = self.frames.popleft()
        if self._reading_paused and len(self.frames) < _READER_HIGH_WATER // 2:
            self._reading_paused = False
            if not self.closed:
                self.transport.underlying_transport.resume_reading()
        return message


class _ChannelEnd:
    """What a writer and a reader share: the lazily opened socket (its URL and headers are made
    when it opens: every HTTP request's payload carries two ends, most never used)."""

    def __init__(self, engine_ws_base: str, ref: StreamChannelRef, headers: Optional[dict[str, str]], direction: str) -> None:
        self._base = engine_ws_base
        self._ref = ref
        self._explicit_headers = headers
        self._direction = direction
        self._socket: Optional[_Socket] = None
        self._connecting: Optional[asyncio.Future[_Socket]] = None
        self._connected = False
        self._stream: Any = None

    @property
    def _url(self) -> str:
        ref = self._ref
        return build_channel_url(self._base, ref.channel_id, ref.access_key, self._direction)

    async def _ensure_connected(self) -> _Socket:
        if self._socket is not None and self._connected:
            return self._socket
        if self._connecting is not None:
            return await asyncio.shield(self._connecting)
        self._connecting = future = asyncio.get_running_loop().create_future()
        try:
            _, socket = await ws_connect(
                _Socket,
                self._url,
                websocket_handshake_timeout=_HANDSHAKE_TIMEOUT_S,
                max_frame_size=_MAX_INBOUND_FRAME,
                extra_headers=resolve_headers(self._explicit_headers),
            )
        except BaseException as exc:
            self._connecting = None
            future.set_exception(exc)
            future.exception()  # retrieved: whoever awaits gets it, nobody else is warned
            raise
        assert isinstance(socket, _Socket)
        self._socket = socket
        self._connected = True
        self._connecting = None
        future.set_result(socket)
        return socket


class WritableStream:
    """A Node-style writable over a :class:`ChannelWriter` (``write`` / ``end``, fire and forget)."""

    def __init__(self, writer: ChannelWriter) -> None:
        self._writer = writer

    def write(self, data: bytes) -> None:
        _run_soon(self._writer.write(data))

    def end(self, data: Optional[bytes] = None) -> None:
        async def write_and_close() -> None:
            if data is not None:
                await self._writer.write(data)
            await self._writer.close_async()

        _run_soon(write_and_close())


class ReadableStream:
    """A Node-style readable over a :class:`ChannelReader` (``async for chunk in stream``)."""

    def __init__(self, reader: ChannelReader) -> None:
        self._reader = reader

    async def __aiter__(self) -> AsyncIterator[bytes]:
        async for chunk in self._reader:
            yield chunk


def _run_soon(coro: Any) -> None:
    """Run ``coro`` on the running loop as a task, or to completion when there is none."""
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        asyncio.run(coro)
    else:
        loop.create_task(coro)


class ChannelWriter(_ChannelEnd):
    """The write end of a channel: binary chunks and text messages, then :meth:`close`.

    Args:
        engine_ws_base: the engine's WebSocket URL (the worker's).
        ref: the write ref.
        headers: handshake headers (``Authorization`` from ``III_TOKEN`` is added).
    """

    def __init__(self, engine_ws_base: str, ref: StreamChannelRef, headers: Optional[dict[str, str]] = None) -> None:
        super().__init__(engine_ws_base, ref, headers, "write")

    @property
    def stream(self) -> WritableStream:
        """A Node-style writable over this writer."""
        if self._stream is None:
            self._stream = WritableStream(self)
        return self._stream

    async def write(self, data: bytes) -> None:
        """Send ``data`` as binary frames of at most :data:`MAX_FRAME_SIZE` bytes; waits while
        the engine is not taking them (its buffer for this channel is full).

        Raises:
            ConnectionError: the channel socket is closed (its reader left).
        """
        socket = await self._ensure_connected()
        view = memoryview(data)
        for start in range(0, max(len(view), 1), MAX_FRAME_SIZE):
            self._send(socket, _BINARY, view[start:start + MAX_FRAME_SIZE])
            await socket.drain()

    def _send(self, socket: _Socket, msg_type: WSMsgType, data: Any) -> None:
        transport = socket.transport
        # is_closing: the engine dropped the socket (its reader left) and the loop has not yet
        # run the disconnect callback; writes would vanish without it.
        if socket.closed or transport.is_close_frame_sent or transport.underlying_transport.is_closing():
            raise ConnectionError("the channel is closed")
        transport.send(msg_type, data)

    def send_message(self, msg: str) -> None:
        """Send a text message (fire and forget)."""
        _run_soon(self.send_message_async(msg))

    async def send_message_async(self, msg: str) -> None:
        """Send a text message."""
        socket = await self._ensure_connected()
        self._send(socket, _TEXT, msg.encode())
        await socket.drain()

    def close(self) -> None:
        """Close (fire and forget)."""
        _run_soon(self.close_async())

    async def close_async(self) -> None:
        """Close after 10 ms (what was sent goes first) and wait for the engine's Close."""
        socket = self._socket
        if socket is None or not self._connected:
            return
        await asyncio.sleep(_CLOSE_DELAY_S)
        self._connected = False
        transport = socket.transport
        if not socket.closed and not transport.is_close_frame_sent:
            transport.send_close(WSCloseCode.OK)
        try:
            async with asyncio.timeout(_CLOSE_WAIT_S):
                await transport.wait_disconnected()
        except TimeoutError:
            transport.disconnect(graceful=False)


class ChannelReader(_ChannelEnd):
    """The read end of a channel: ``async for chunk in reader`` yields its binary frames; its
    text frames go to the :meth:`on_message` callbacks meanwhile.

    Args:
        engine_ws_base: the engine's WebSocket URL (the worker's).
        ref: the read ref.
        headers: handshake headers (``Authorization`` from ``III_TOKEN`` is added).
    """

    def __init__(self, engine_ws_base: str, ref: StreamChannelRef, headers: Optional[dict[str, str]] = None) -> None:
        super().__init__(engine_ws_base, ref, headers, "read")
        self._message_callbacks: list[Callable[[str], Any]] = []

    @property
    def stream(self) -> ReadableStream:
        """A Node-style readable over this reader."""
        if self._stream is None:
            self._stream = ReadableStream(self)
        return self._stream

    def on_message(self, callback: Callable[[str], Any]) -> None:
        """Call ``callback(text)`` for each text frame read while iterating."""
        self._message_callbacks.append(callback)

    async def __aiter__(self) -> AsyncIterator[bytes]:
        socket = await self._ensure_connected()
        while True:
            message = await socket.next()
            if message is None:
                return
            if isinstance(message, bytes):
                yield message
                continue
            for callback in self._message_callbacks:
                try:
                    callback(message)
                except Exception:
                    log.exception("Error in channel message callback")

    async def read_all(self) -> bytes:
        """Everything the writer sent (binary frames, joined)."""
        chunks = [chunk async for chunk in self]
        return b"".join(chunks)

    async def close_async(self) -> None:
        """Leave the channel (its writer is cut off)."""
        socket = self._socket
        if socket is None or not self._connected:
            return
        self._connected = False
        transport = socket.transport
        if not socket.closed and not transport.is_close_frame_sent:
            transport.send_close(WSCloseCode.OK)
        transport.disconnect()


@dataclass
class Channel:
    """A channel made by ``iii.helpers.create_channel``: both ends and their refs."""

    writer: ChannelWriter
    reader: ChannelReader
    writer_ref: StreamChannelRef
    reader_ref: StreamChannelRef


class StreamResponse:
    """A streaming HTTP response over the request's ``response`` channel: :meth:`status` and
    :meth:`headers` first, then the body (:attr:`writer` / :attr:`stream`), then :meth:`close`."""

    def __init__(self, writer: ChannelWriter) -> None:
        self._writer = writer

    async def status(self, status_code: int) -> None:
        await self._writer.send_message_async(
            msgspec.json.encode({"type": "set_status", "status_code": status_code}).decode()
        )

    async def headers(self, headers: dict[str, str]) -> None:
        await self._writer.send_message_async(msgspec.json.encode({"type": "set_headers", "headers": headers}).decode())

    @property
    def stream(self) -> WritableStream:
        return self._writer.stream

    @property
    def writer(self) -> ChannelWriter:
        return self._writer

    def close(self) -> None:
        self._writer.close()


@dataclass
class StreamRequest:
    """A streaming HTTP request: the raw body is read from :attr:`request_body`."""

    path_params: dict[str, str]
    query_params: dict[str, Union[str, list[str]]]
    body: Any
    headers: dict[str, Union[str, list[str]]]
    method: str
    request_body: ChannelReader


@dataclass
class InternalHttpRequest:
    """An HTTP request as the engine sends it to a handler, with both channel ends live:
    the body to read (:attr:`request_body`) and the response to write (:attr:`response`)."""

    path_params: dict[str, str]
    query_params: dict[str, Union[str, list[str]]]
    body: Any
    headers: dict[str, Union[str, list[str]]]
    method: str
    response: ChannelWriter
    request_body: ChannelReader


class StreamChannelRefDict(TypedDict):
    """A channel ref as it travels in a payload (what :func:`is_channel_ref` narrows to)."""

    channel_id: str
    access_key: str
    direction: Literal["read", "write"]


def is_channel_ref(value: Any) -> TypeGuard[StreamChannelRefDict]:
    """Whether ``value`` is a channel ref (``channel_id`` / ``access_key`` strings, a direction)."""
    return (
        isinstance(value, dict)
        and isinstance(value.get("channel_id"), str)
        and isinstance(value.get("access_key"), str)
        and value.get("direction") in ("read", "write")
    )


def extract_channel_refs(data: Any) -> list[tuple[str, StreamChannelRef]]:
    """Every channel ref in ``data`` with its path (``items[0].writer``)."""
    refs: list[tuple[str, StreamChannelRef]] = []
    _extract(data, "", refs)
    return refs


def _extract(data: Any, prefix: str, refs: list[tuple[str, StreamChannelRef]]) -> None:
    if is_channel_ref(data):
        refs.append((prefix, _ref(data)))
    elif isinstance(data, dict):
        for key, value in data.items():
            _extract(value, key if not prefix else f"{prefix}.{key}", refs)
    elif isinstance(data, list):
        for index, item in enumerate(data):
            _extract(item, f"{prefix}[{index}]", refs)


def _ref(value: Mapping[str, Any]) -> StreamChannelRef:
    return StreamChannelRef(channel_id=value["channel_id"], access_key=value["access_key"], direction=value["direction"])


def _is_ref_dict(value: dict[str, Any]) -> bool:
    return (
        type(value.get("channel_id")) is str and type(value.get("access_key")) is str
        and value.get("direction") in ("read", "write")
    )


def resolve_channels(data: Any, engine_ws_base: str, headers: Optional[dict[str, str]] = None) -> Any:
    """``data`` with every channel ref replaced by a live :class:`ChannelReader` (``read``) or
    :class:`ChannelWriter` (``write``), what a handler gets."""
    if isinstance(data, dict):
        if "access_key" in data and _is_ref_dict(data):
            ref = _ref(data)
            if ref.direction == "read":
                return ChannelReader(engine_ws_base, ref, headers)
            return ChannelWriter(engine_ws_base, ref, headers)
        return {key: resolve_channels(value, engine_ws_base, headers) for key, value in data.items()}
    if isinstance(data, list):
        return [resolve_channels(value, engine_ws_base, headers) for value in data]
    if isinstance(data, tuple):
        return tuple(resolve_channels(value, engine_ws_base, headers) for value in data)
    return data
