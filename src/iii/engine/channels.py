"""Data channels: bounded FIFOs of frames between one writer and one reader, and their sockets.

A channel (``engine::channels::create``, or the HTTP module's per-request pair) is identified by
``channel_id`` and guarded by ``access_key``; each end is attached once, by a socket on
``/ws/channels/{id}?key=…&dir=write|read`` (:class:`ChannelListener`) or by the engine itself
(:class:`ChannelWriterEnd` / :class:`ChannelReaderEnd`, what built-in modules use). The writer's
frames reach the reader unchanged and in order (text stays text, binary stays binary); once the
write end is released and the buffer drained the reader is closed.

Back-pressure, never memory: when ``buffer_size`` items (or :data:`MAX_BUFFERED_BYTES`) wait, the
engine stops reading the writer's socket until the reader takes some; a reader socket that is not
reading its socket stops being fed (its transport's write buffer is full). A reader that leaves
cuts its writer off; a channel with an end that never attached is swept after
:data:`STALE_AFTER_MS`; one whose both ends were released is removed at once.

Everything here is callbacks on the loop (picows' shape): no task per channel or per frame.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import os
from collections import deque
from typing import Any, Callable, Optional, Protocol, Union
from urllib.parse import parse_qs

from picows import (
    WSCloseCode,
    WSFrame,
    WSListener,
    WSMsgType,
    WSTransport,
    WSUpgradeRequest,
    WSUpgradeResponse,
    WSUpgradeResponseWithListener,
)

from iii.engine.registry import EngineError
from iii.protocol import ErrorCode

__all__ = [
    "Channel",
    "ChannelListener",
    "ChannelReaderEnd",
    "ChannelRegistry",
    "ChannelWriterEnd",
    "DEFAULT_BUFFER_SIZE",
    "MAX_BUFFER_SIZE",
    "MAX_BUFFERED_BYTES",
    "MAX_READER_FRAME",
    "RandomIds",
    "STALE_AFTER_MS",
    "SWEEP_EVERY_MS",
    "Text",
    "channel_listener",
    "create_channel",
]

log = logging.getLogger("iii.engine")

DEFAULT_BUFFER_SIZE = 64
MAX_BUFFER_SIZE = 1024
#: A channel also stops reading its writer once this many bytes wait (whatever ``buffer_size``).
MAX_BUFFERED_BYTES = 8 * 1024 * 1024
#: The largest frame sent to a reader (the Python SDK's sockets refuse more than 1 MiB): larger
#: binary items are split; text items are messages and go whole.
MAX_READER_FRAME = 1024 * 1024
#: A channel with an end never attached is removed this long after its creation…
STALE_AFTER_MS = 5 * 60 * 1000
#: … checked this often.
SWEEP_EVERY_MS = 60 * 1000
#: A writer's fragmented message is reassembled up to this size (then the writer is dropped).
MAX_WRITER_MESSAGE = 16 * 1024 * 1024
#: Bytes waiting in a reader socket's transport before the channel stops feeding it.
_READER_HIGH_WATER = 256 * 1024

_TEXT = WSMsgType.TEXT
_BINARY = WSMsgType.BINARY
_CONTINUATION = WSMsgType.CONTINUATION
_CLOSE = WSMsgType.CLOSE


class RandomIds:
    """UUID v4 strings from the OS's random source, read in batches (one ``getrandom`` per 256
    ids: at four ids per HTTP request, a call each was most of what channels cost it; the
    router's invocation ids come from one too)."""

    __slots__ = ("_hex", "_at")

    _BATCH = 16 * 256
    #: The variant nibble (RFC 4122: 10xx) for each random hex digit.
    _VARIANT = {d: "89ab"[int(d, 16) & 3] for d in "0123456789abcdef"}

    def __init__(self) -> None:
        self._hex = ""
        self._at = 0

    def __call__(self) -> str:
        at = self._at
        if at >= len(self._hex):
            self._hex = os.urandom(self._BATCH).hex()
            at = 0
        self._at = at + 32
        h = self._hex[at:at + 32]
        return f"{h[:8]}-{h[8:12]}-4{h[13:16]}-{self._VARIANT[h[16]]}{h[17:20]}-{h[20:]}"


class Text(bytes):
    """A text item (UTF-8 bytes); a plain ``bytes`` item is binary."""

    __slots__ = ()


Item = Union[bytes, Text]


class Source(Protocol):
    """A write end: the channel asks it to stop and resume producing, or cuts it off."""

    def pause(self) -> None: ...

    def resume(self) -> None: ...

    def cut(self) -> None: ...


class Sink(Protocol):
    """A read end: the channel hands it items while it says it can take more."""

    def deliver(self, item: Item) -> bool:
        """Take one item; ``False`` when it cannot take another now (it calls
        :meth:`Channel.reader_ready` when it can)."""

    def end(self) -> None:
        """No more items: the write end is finished and everything was delivered."""


class Channel:
    """One channel: its buffer and the state of its two ends."""

    __slots__ = (
        "id", "key", "capacity", "created_ms", "_registry", "_items", "_bytes", "_source", "_sink",
        "_writer_taken", "_reader_taken", "_writer_done", "_reader_gone", "_reader_ready", "_paused",
        "_ended",
    )

    def __init__(self, registry: ChannelRegistry, channel_id: str, key: str, capacity: int, now_ms: int) -> None:
        self.id = channel_id
        self.key = key
        self.capacity = capacity
        self.created_ms = now_ms
        self._registry = registry
        self._items: deque[Item] = deque()
        self._bytes = 0
        self._source: Optional[Source] = None
        self._sink: Optional[Sink] = None
        self._writer_taken = False
        self._reader_taken = False
        self._writer_done = False
        self._reader_gone = False
        self._reader_ready = False
        self._paused = False
        self._ended = False

    def refs(self) -> dict[str, dict[str, str]]:
        """``{"writer": ref, "reader": ref}`` as ``engine::channels::create`` answers."""
        return {"writer": self.ref("write"), "reader": self.ref("read")}

    def ref(self, direction: str) -> dict[str, str]:
        return {"channel_id": self.id, "access_key": self.key, "direction": direction}

    @property
    def ended(self) -> bool:
        """The reader was told end-of-stream."""
        return self._ended

    @property
    def buffered(self) -> int:
        """Items waiting for the reader."""
        return len(self._items)

    # ------------------------------------------------------------------ attaching

    def attach_writer(self, source: Source) -> bool:
        """Take the write end (once); ``False`` when it was taken before."""
        if self._writer_taken or self._writer_done:
            return False
        self._writer_taken = True
        self._source = source
        if self._reader_gone:
            source.cut()
        return True

    def attach_reader(self, sink: Sink) -> bool:
        """Take the read end (once); ``False`` when it was taken before."""
        if self._reader_taken:
            return False
        self._reader_taken = True
        self._sink = sink
        self._reader_ready = True
        self._pump()
        return True

    # ------------------------------------------------------------------ the write end

    def push(self, item: Item) -> bool:
        """Append one item; ``False`` when the reader is gone (the writer should stop)."""
        if self._reader_gone:
            return False
        self._items.append(item)
        self._bytes += len(item)
        if self._reader_ready:
            self._pump()
        if not self._paused and (len(self._items) >= self.capacity or self._bytes >= MAX_BUFFERED_BYTES):
            self._paused = True
            if self._source is not None:
                self._source.pause()
        return True

    def release_writer(self) -> None:
        """The write end is finished (closed, failed or dropped): end-of-stream once drained."""
        if self._writer_done:
            return
        self._writer_done = True
        self._writer_taken = True  # single use: nobody attaches after a release
        self._source = None
        self._pump()
        self._forget_if_done()

    # ------------------------------------------------------------------ the read end

    def reader_ready(self) -> None:
        """The reader can take items again."""
        if self._sink is not None and not self._reader_ready:
            self._reader_ready = True
            self._pump()

    def release_reader(self) -> None:
        """The reader is gone: drop what waits and cut the writer off."""
        if self._reader_gone:
            return
        self._reader_gone = True
        self._reader_taken = True
        self._reader_ready = False
        self._sink = None
        self._items.clear()
        self._bytes = 0
        source, self._source = self._source, None
        if source is not None:  # cut off: its end is released with it
            self._writer_done = True
            source.cut()
        self._forget_if_done()

    def _pump(self) -> None:
        items = self._items
        sink = self._sink
        while self._reader_ready and items:
            item = items.popleft()
            self._bytes -= len(item)
            self._reader_ready = sink.deliver(item)  # type: ignore[union-attr]
        if self._paused and len(items) < self.capacity and self._bytes < MAX_BUFFERED_BYTES:
            self._paused = False
            if self._source is not None:
                self._source.resume()
        if self._writer_done and not items and sink is not None and not self._ended:
            self._ended = True
            sink.end()
            self._registry.discard(self)  # both ends are done

    def _forget_if_done(self) -> None:
        if self._writer_done and (self._ended or self._reader_gone):
            self._registry.discard(self)

    # ------------------------------------------------------------------ removal

    def remove(self) -> None:
        """Taken out of the registry: an end that never attached counts as released (a reader
        waiting on a never-written channel is closed, a writer with no reader is cut off)."""
        if not self._writer_taken:
            self._writer_done = True
            self._pump()
        if not self._reader_taken:
            self.release_reader()


class ChannelRegistry:
    """The engine's channels by id (the router holds one: ``router.channels``).

    Args:
        clock: the engine's monotonic clock in ms (for the sweep).
    """

    def __init__(self, clock: Any) -> None:
        self._clock = clock
        self._new_id = RandomIds()
        self.channels: dict[str, Channel] = {}
        #: Promised channels by id: (access key, what to call when one is opened).
        self._promised: dict[str, tuple[str, Callable[[Channel], None]]] = {}

    def __len__(self) -> int:
        return len(self.channels)

    @property
    def promised(self) -> int:
        """Promised channels not opened (nor withdrawn) yet."""
        return len(self._promised)

    def create(self, buffer_size: int = DEFAULT_BUFFER_SIZE) -> Channel:
        """A new channel of ``buffer_size`` items (clamped to 1..:data:`MAX_BUFFER_SIZE`)."""
        capacity = min(max(buffer_size, 1), MAX_BUFFER_SIZE)
        channel = Channel(self, self._new_id(), self._new_id(), capacity, self._clock())
        self.channels[channel.id] = channel
        return channel

    def promise(self, opened: Callable[[Channel], None]) -> tuple[str, str]:
        """The id and access key of a channel made only if a socket opens it (an HTTP request's
        two channels mostly never are): it is then made, and ``opened(channel)`` called, before
        that socket's end attaches. Until :meth:`withdraw`."""
        channel_id, key = self._new_id(), self._new_id()
        self._promised[channel_id] = (key, opened)
        return channel_id, key

    def withdraw(self, channel_id: str) -> None:
        """A promised channel nobody opened is not made any more."""
        self._promised.pop(channel_id, None)

    def find(self, channel_id: str, key: str) -> Optional[Channel]:
        """The channel with this id when ``key`` is its access key (a promised one is made)."""
        channel = self.channels.get(channel_id)
        if channel is None:
            promised = self._promised.get(channel_id)
            if promised is None or not hmac.compare_digest(promised[0].encode(), key.encode()):
                return None
            del self._promised[channel_id]
            channel = Channel(self, channel_id, key, DEFAULT_BUFFER_SIZE, self._clock())
            self.channels[channel_id] = channel
            promised[1](channel)
            return channel
        if not hmac.compare_digest(channel.key.encode(), key.encode()):
            return None
        return channel

    def remove(self, channel: Channel) -> None:
        """Remove ``channel`` now (what is buffered is dropped, its unattached ends released)."""
        if self.channels.pop(channel.id, None) is not None:
            channel.remove()

    def discard(self, channel: Channel) -> None:
        """Forget a finished channel (both ends done)."""
        self.channels.pop(channel.id, None)

    def sweep(self) -> int:
        """Remove channels older than :data:`STALE_AFTER_MS` with an end never attached."""
        cutoff = self._clock() - STALE_AFTER_MS
        stale = [
            c for c in self.channels.values()
            if c.created_ms <= cutoff and not (c._writer_taken and c._reader_taken)
        ]
        for channel in stale:
            self.remove(channel)
        if stale:
            log.debug("channels: swept %d stale channel(s)", len(stale))
        return len(stale)

    def close(self) -> None:
        """The engine stops: every channel goes."""
        self._promised.clear()
        for channel in list(self.channels.values()):
            self.remove(channel)


def create_channel(registry: ChannelRegistry, data: Any) -> dict[str, Any]:
    """``engine::channels::create {buffer_size?}`` → ``{writer, reader}`` refs (``null`` or no
    size: 64; over 1024: 1024; 0: 1). Raises :class:`EngineError` for a negative or non-integer
    size."""
    size = data.get("buffer_size") if isinstance(data, dict) else None
    if size is None:
        size = DEFAULT_BUFFER_SIZE
    elif isinstance(size, bool) or not isinstance(size, int) or size < 0:
        raise EngineError(
            ErrorCode.DESERIALIZATION_ERROR,
            f"Failed to deserialize input: invalid buffer_size {size!r}, expected a non-negative integer",
        )
    return registry.create(size).refs()


# ---------------------------------------------------------------------- ends the engine holds


class ChannelWriterEnd:
    """The write end held by the engine (the HTTP module feeding a request body)."""

    __slots__ = ("channel", "_resumed", "cut_off")

    def __init__(self, channel: Channel) -> None:
        self.channel = channel
        self._resumed: Optional[asyncio.Future[None]] = None
        self.cut_off = False
        channel.attach_writer(self)

    def pause(self) -> None:
        if self._resumed is None:
            self._resumed = asyncio.get_running_loop().create_future()

    def resume(self) -> None:
        resumed, self._resumed = self._resumed, None
        if resumed is not None and not resumed.done():
            resumed.set_result(None)

    def cut(self) -> None:
        self.cut_off = True
        self.resume()

    def put(self, data: bytes) -> bool:
        """Append ``data`` without waiting (a body already in memory); ``False`` when cut off."""
        return not self.cut_off and self.channel.push(data)

    async def write(self, data: bytes) -> bool:
        """Append ``data``, then wait while the buffer is full; ``False`` when cut off."""
        if self.cut_off or not self.channel.push(data):
            return False
        while self._resumed is not None:
            await self._resumed
        return not self.cut_off

    def close(self) -> None:
        self.channel.release_writer()


class ChannelReaderEnd:
    """The read end held by the engine (the HTTP module reading a handler's response)."""

    __slots__ = ("channel", "_items", "_ended", "_waiter")

    def __init__(self, channel: Channel) -> None:
        self.channel = channel
        self._items: deque[Item] = deque()
        self._ended = False
        self._waiter: Optional[asyncio.Future[None]] = None
        channel.attach_reader(self)

    def deliver(self, item: Item) -> bool:
        self._items.append(item)
        self._wake()
        return False  # one at a time: the channel's buffer is the bound

    def end(self) -> None:
        self._ended = True
        self._wake()

    def _wake(self) -> None:
        waiter, self._waiter = self._waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    @property
    def ready(self) -> bool:
        """An item or the end is there (:meth:`take` will not wait)."""
        return bool(self._items) or self._ended

    def wait(self) -> asyncio.Future[None]:
        """A future done when :attr:`ready` (now, if it already is)."""
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.wake(future)
        return future

    def wake(self, future: asyncio.Future[None]) -> None:
        """Set ``future``'s result when :attr:`ready` (now, if it already is); it may be
        shared with another event (whoever comes first sets it)."""
        if self.ready:
            if not future.done():
                future.set_result(None)
        else:
            self._waiter = future

    def take(self) -> Optional[Item]:
        """The next item, or ``None`` at the end; only when :attr:`ready`."""
        if self._items:
            item = self._items.popleft()
            self.channel.reader_ready()
            return item
        return None

    async def next(self) -> Optional[Item]:
        """The next item, waiting for it; ``None`` at the end."""
        if not self.ready:
            await self.wait()
        return self.take()

    def close(self) -> None:
        self.channel.release_reader()


# ---------------------------------------------------------------------- the sockets


def channel_listener(engine: Any, config: Any, request: WSUpgradeRequest) -> Any:
    """What answers a ``/ws/channels/{id}`` upgrade: a :class:`ChannelListener`, or 400/404."""
    target = request.path.decode("latin-1", "replace")
    path, _, query = target.partition("?")
    channel_id = path.rstrip("/").rsplit("/", 1)[-1]
    params = parse_qs(query)
    key = params.get("key", [None])[-1]
    direction = params.get("dir", [None])[-1]
    if key is None or direction not in ("read", "write"):
        return _refusal(400, b"Missing or invalid query: key and dir=read|write are required")
    channel = engine.router.channels.find(channel_id, key)
    if channel is None:
        return _refusal(404, b"Channel not found")
    return ChannelListener(engine, config, channel, direction == "write")


def _refusal(status: int, body: bytes) -> WSUpgradeResponseWithListener:
    response = WSUpgradeResponse.create_error_response(status, body)
    response.headers["Content-Type"] = "text/plain"
    return WSUpgradeResponseWithListener(response, None)


class ChannelListener(WSListener):
    """One end of a channel on a WebSocket: a writer's frames go into the channel, the channel's
    items go out to a reader. It is pinged and dropped when silent like a worker's socket."""

    def __init__(self, engine: Any, config: Any, channel: Channel, writer: bool) -> None:
        self._engine = engine
        self._config = config
        self._channel = channel
        self._writer = writer
        self._attached = False
        self._transport: Any = None
        self._heard = True
        self._idle_since: Optional[float] = None
        self._reading_paused = False
        self._parts: list[bytes] = []
        self._parts_size = 0
        self._parts_text = False

    def on_ws_connected(self, transport: WSTransport) -> None:
        self._transport = transport
        self._engine.listeners.add(self)
        channel = self._channel
        if self._writer:
            self._attached = channel.attach_writer(self)
        else:
            transport.underlying_transport.set_write_buffer_limits(high=_READER_HIGH_WATER)
            self._attached = channel.attach_reader(self)
        if not self._attached:  # each end attaches once
            transport.send_close(WSCloseCode.OK)
            transport.disconnect()

    # ------------------------------------------------------------------ frames from the socket

    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        self._heard = True
        msg_type = frame.msg_type
        if msg_type == _CLOSE:
            transport.send_close(WSCloseCode.OK)
            transport.disconnect()
            self._release()  # the reader's close is its leave; the writer's its end
            return
        if not (self._writer and self._attached):
            return  # a reader's data frames mean nothing
        if msg_type == _BINARY or msg_type == _TEXT:
            if frame.fin:
                payload = frame.get_payload_as_bytes()
                self._push(Text(payload) if msg_type == _TEXT else payload)
            else:
                self._parts = [frame.get_payload_as_bytes()]
                self._parts_size = frame.payload_size
                self._parts_text = msg_type == _TEXT
        elif msg_type == _CONTINUATION and self._parts:
            self._parts_size += frame.payload_size
            if self._parts_size > MAX_WRITER_MESSAGE:
                log.warning("channel %s: a writer's message is larger than %d bytes: dropping it",
                            self._channel.id, MAX_WRITER_MESSAGE)
                transport.disconnect(graceful=False)
                return
            self._parts.append(frame.get_payload_as_bytes())
            if frame.fin:
                payload = b"".join(self._parts)
                self._parts = []
                self._push(Text(payload) if self._parts_text else payload)

    def _push(self, item: Item) -> None:
        if not self._channel.push(item):  # the reader left: so does the writer
            self._transport.disconnect(graceful=False)

    def on_ws_disconnected(self, transport: WSTransport) -> None:
        self._release()
        self._engine.listeners.discard(self)

    def _release(self) -> None:
        if not self._attached:
            return
        self._attached = False
        if self._writer:
            self._channel.release_writer()
        elif not self._channel.ended:  # a reader leaving before the end cuts the writer off
            self._channel.release_reader()

    # ------------------------------------------------------------------ Source (writer socket)

    def pause(self) -> None:
        self._reading_paused = True
        self._transport.underlying_transport.pause_reading()

    def resume(self) -> None:
        self._reading_paused = False
        transport = self._transport
        if not transport.is_disconnected:
            transport.underlying_transport.resume_reading()

    def cut(self) -> None:
        self._attached = False  # nothing to release: the channel cut it
        self._transport.disconnect(graceful=False)

    # ------------------------------------------------------------------ Sink (reader socket)

    def deliver(self, item: Item) -> bool:
        transport = self._transport
        if transport.is_disconnected:
            return False
        if type(item) is Text:
            transport.send(_TEXT, item)
        elif len(item) <= MAX_READER_FRAME:
            transport.send(_BINARY, item)
        else:
            view = memoryview(item)
            for start in range(0, len(item), MAX_READER_FRAME):
                transport.send(_BINARY, view[start:start + MAX_READER_FRAME])
        return not self._writing_paused()

    def _writing_paused(self) -> bool:
        transport = self._transport.underlying_transport
        return transport.get_write_buffer_size() >= _READER_HIGH_WATER

    def end(self) -> None:
        transport = self._transport
        if not transport.is_disconnected:
            transport.send_close(WSCloseCode.OK)
            transport.disconnect()

    def pause_writing(self) -> None:
        """The reader's transport is full: :meth:`deliver` already said so."""

    def resume_writing(self) -> None:
        if self._attached and not self._writer:
            self._channel.reader_ready()

    # ------------------------------------------------------------------ engine housekeeping

    def heartbeat(self, now: float) -> None:
        """Ping; drop the socket when silent for ``idle_timeout_ms`` (a writer the channel
        stopped reading counts as heard: its silence is ours)."""
        transport = self._transport
        if transport is None or transport.is_disconnected:
            return
        if self._heard or self._reading_paused:
            self._heard = False
            self._idle_since = now
        if self._idle_since is not None and now - self._idle_since >= self._config.idle_timeout_ms / 1000:
            log.warning("channel %s: a socket sent nothing for %d ms: disconnecting it",
                        self._channel.id, self._config.idle_timeout_ms)
            transport.disconnect(graceful=False)
        else:
            transport.send_ping()

    def shutdown(self) -> None:
        transport = self._transport
        if transport is not None and not transport.is_disconnected:
            transport.send_close(WSCloseCode.GOING_AWAY)
            transport.disconnect()
