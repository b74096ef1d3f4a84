"""Data channels: the registry and its ends (no sockets), then ``/ws/channels/{id}`` over real
sockets on an in-process engine."""

from __future__ import annotations

import asyncio
from typing import Any, Optional

import pytest
from picows import WSFrame, WSListener, WSMsgType, WSTransport, ws_connect
from picows import WSHandshakeError

from helpers import LOCAL_MODULES, RawClient, in_process_engine
from iii.engine.channels import (
    MAX_BUFFERED_BYTES,
    MAX_READER_FRAME,
    STALE_AFTER_MS,
    ChannelRegistry,
    Text,
    create_channel,
)
from iii.engine.registry import EngineError


class Clock:
    def __init__(self) -> None:
        self.ms = 1_000

    def __call__(self) -> int:
        return self.ms


class FakeSource:
    def __init__(self) -> None:
        self.paused = False
        self.cut_off = False

    def pause(self) -> None:
        self.paused = True

    def resume(self) -> None:
        self.paused = False

    def cut(self) -> None:
        self.cut_off = True


class FakeSink:
    def __init__(self, takes: int = 1_000_000) -> None:
        self.items: list[Any] = []
        self.ended = False
        self.takes = takes  # items it accepts before saying it is full

    def deliver(self, item: Any) -> bool:
        self.items.append(item)
        return len(self.items) < self.takes

    def end(self) -> None:
        self.ended = True


# --------------------------------------------------------------------------- registry


def test_create_defaults_clamps_and_refuses_bad_sizes():
    registry = ChannelRegistry(Clock())
    refs = create_channel(registry, {"buffer_size": None})
    assert refs["writer"]["direction"] == "write" and refs["reader"]["direction"] == "read"
    assert refs["writer"]["channel_id"] == refs["reader"]["channel_id"]
    assert refs["writer"]["access_key"] == refs["reader"]["access_key"]
    sizes = {create_channel(registry, data)["writer"]["channel_id"]: expected
             for data, expected in [({}, 64), ({"buffer_size": 0}, 1), ({"buffer_size": 5000}, 1024), ({"buffer_size": 7}, 7)]}
    assert {cid: registry.channels[cid].capacity for cid in sizes} == sizes
    for bad in (-1, 1.5, "8", True):
        with pytest.raises(EngineError) as raised:
            create_channel(registry, {"buffer_size": bad})
        assert raised.value.code == "deserialization_error"


def test_items_keep_their_kind_and_order_and_the_reader_ends_after_the_buffer():
    registry = ChannelRegistry(Clock())
    channel = registry.create(8)
    source, sink = FakeSource(), FakeSink()
    assert channel.attach_writer(source)
    for item in (b"a", Text(b'{"p":1}'), b"b"):
        assert channel.push(item)
    channel.release_writer()  # written and closed before any reader
    assert channel.attach_reader(sink)
    assert sink.items == [b"a", b'{"p":1}', b"b"]
    assert [type(item) is Text for item in sink.items] == [False, True, False]
    assert sink.ended
    assert channel.id not in registry.channels  # both ends done: gone at once


def test_each_end_attaches_once():
    channel = ChannelRegistry(Clock()).create()
    assert channel.attach_writer(FakeSource()) and not channel.attach_writer(FakeSource())
    assert channel.attach_reader(FakeSink()) and not channel.attach_reader(FakeSink())


def test_a_full_buffer_pauses_the_writer_until_the_reader_takes_items():
    channel = ChannelRegistry(Clock()).create(4)
    source, sink = FakeSource(), FakeSink(takes=0)
    channel.attach_writer(source)
    for index in range(4):
        channel.push(b"%d" % index)
    assert source.paused and channel.buffered == 4
    channel.attach_reader(sink)  # takes one, then says it is full
    assert sink.items == [b"0"] and not source.paused
    sink.takes = 10
    channel.reader_ready()
    assert sink.items == [b"0", b"1", b"2", b"3"]


def test_bytes_bound_the_buffer_too():
    channel = ChannelRegistry(Clock()).create(1024)
    source = FakeSource()
    channel.attach_writer(source)
    channel.push(b"x" * (MAX_BUFFERED_BYTES // 2))
    assert not source.paused
    channel.push(b"x" * (MAX_BUFFERED_BYTES // 2))
    assert source.paused  # 2 items of 1024, but 8 MiB waiting


def test_a_reader_that_leaves_cuts_the_writer_off():
    registry = ChannelRegistry(Clock())
    channel = registry.create()
    source = FakeSource()
    channel.attach_writer(source)
    channel.attach_reader(FakeSink(takes=0))
    channel.push(b"waiting")
    channel.release_reader()
    assert source.cut_off and channel.buffered == 0
    assert not channel.push(b"more")
    channel.release_writer()
    assert channel.id not in registry.channels


def test_the_sweep_removes_stale_channels_with_an_end_never_attached():
    clock = Clock()
    registry = ChannelRegistry(clock)
    never_written, never_read, untouched, busy = (registry.create() for _ in range(4))
    sink, source = FakeSink(), FakeSource()
    never_written.attach_reader(sink)
    never_read.attach_writer(source)
    busy.attach_writer(FakeSource())
    busy.attach_reader(FakeSink())
    clock.ms += STALE_AFTER_MS - 1
    assert registry.sweep() == 0
    clock.ms += 1
    assert registry.sweep() == 3
    assert sink.ended  # a reader waiting on a channel nobody wrote is closed
    assert source.cut_off  # a writer nobody reads is dropped
    assert set(registry.channels) == {busy.id}  # both ends attached: never swept
    assert untouched.id not in registry.channels


def test_a_promised_channel_is_made_when_opened_with_its_key_and_not_after_it_is_withdrawn():
    registry = ChannelRegistry(Clock())
    opened: list[Any] = []
    channel_id, key = registry.promise(opened.append)
    assert (len(registry), registry.promised) == (0, 1)
    assert registry.find(channel_id, "not-the-key") is None and not opened
    channel = registry.find(channel_id, key)
    assert channel is not None and opened == [channel] and (channel.id, channel.key) == (channel_id, key)
    assert registry.find(channel_id, key) is channel and opened == [channel]  # made once
    assert (len(registry), registry.promised) == (1, 0)
    withdrawn_id, withdrawn_key = registry.promise(opened.append)
    registry.withdraw(withdrawn_id)
    assert registry.find(withdrawn_id, withdrawn_key) is None and registry.promised == 0


# --------------------------------------------------------------------------- sockets


class Frames(WSListener):
    """A raw channel socket: every data frame as ``(kind, payload)``, then ``None`` at the end."""

    def __init__(self) -> None:
        self.queue: asyncio.Queue = asyncio.Queue()
        self.close_code: Any = None

    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        if frame.msg_type in (WSMsgType.TEXT, WSMsgType.BINARY):
            self.queue.put_nowait((frame.msg_type.name.lower(), frame.get_payload_as_bytes()))
        elif frame.msg_type == WSMsgType.CLOSE:
            self.close_code = frame.get_close_code()
            transport.send_close(frame.get_close_code())
            transport.disconnect()

    def on_ws_disconnected(self, transport: WSTransport) -> None:
        self.queue.put_nowait(None)

    async def all(self, timeout: float = 10) -> list[tuple[str, bytes]]:
        frames = []
        while (frame := await asyncio.wait_for(self.queue.get(), timeout)) is not None:
            frames.append(frame)
        return frames


CONFIG = "workers:\n  - name: iii-worker-manager\n" + LOCAL_MODULES


async def attach(url: str, ref: dict[str, str], query: Optional[str] = None) -> tuple[WSTransport, Frames]:
    query = query or f"key={ref['access_key']}&dir={ref['direction']}"
    return await ws_connect(Frames, f"{url}/ws/channels/{ref['channel_id']}?{query}", max_frame_size=64 * 1024 * 1024)


async def new_channel(url: str, **data: Any) -> dict[str, Any]:
    client = await RawClient.connect(url)
    answer = await client.call("engine::channels::create", data)
    await client.close()
    return answer["result"]


async def test_unknown_channel_or_key_is_404_and_a_bad_query_400(tmp_path):
    async with in_process_engine(CONFIG, tmp_path) as app:
        url = app.urls[0]
        refs = await new_channel(url)
        for ref, query, status in [
            ({**refs["reader"], "channel_id": "nope"}, None, 404),
            (refs["reader"], "key=wrong&dir=read", 404),
            (refs["reader"], f"key={refs['reader']['access_key']}&dir=sideways", 400),
            (refs["reader"], "dir=read", 400),
        ]:
            with pytest.raises(WSHandshakeError) as raised:
                await attach(url, ref, query)
            assert str(raised.value).endswith(f"received {status}")


async def test_written_and_closed_before_the_reader_came_then_everything_in_order(tmp_path):
    async with in_process_engine(CONFIG, tmp_path) as app:
        url = app.urls[0]
        refs = await new_channel(url, buffer_size=16)
        writer, _ = await attach(url, refs["writer"])
        writer.send(WSMsgType.BINARY, b"one")
        writer.send(WSMsgType.TEXT, b'{"type":"progress"}')
        writer.send(WSMsgType.BINARY, b"two")
        writer.send_close()
        await writer.wait_disconnected()
        reader, frames = await attach(url, refs["reader"])
        assert await frames.all() == [("binary", b"one"), ("text", b'{"type":"progress"}'), ("binary", b"two")]
        assert frames.close_code is not None and frames.close_code.value == 1000
        assert len(app.router.channels) == 0  # both ends done: removed


async def test_a_second_attach_of_an_end_is_closed_at_once(tmp_path):
    async with in_process_engine(CONFIG, tmp_path) as app:
        url = app.urls[0]
        refs = await new_channel(url)
        first, _ = await attach(url, refs["reader"])
        _, second = await attach(url, refs["reader"])
        assert await second.all() == [] and second.close_code.value == 1000
        assert not first.is_disconnected
        first.disconnect()


async def test_a_reader_that_leaves_drops_its_writer(tmp_path):
    async with in_process_engine(CONFIG, tmp_path) as app:
        url = app.urls[0]
        refs = await new_channel(url)
        writer, _ = await attach(url, refs["writer"])
        reader, frames = await attach(url, refs["reader"])
        writer.send(WSMsgType.BINARY, b"seen")
        assert await frames.queue.get() == ("binary", b"seen")
        reader.send_close()
        await reader.wait_disconnected()
        writer.send(WSMsgType.BINARY, b"nobody reads this")
        await asyncio.wait_for(writer.wait_disconnected(), 10)
        assert len(app.router.channels) == 0


async def test_a_reader_that_does_not_read_slows_the_writer_not_the_engines_memory(tmp_path):
    async with in_process_engine(CONFIG, tmp_path) as app:
        url = app.urls[0]
        refs = await new_channel(url, buffer_size=4)
        channel = app.router.channels.channels[refs["writer"]["channel_id"]]
        writer, _ = await attach(url, refs["writer"])
        chunk = bytes(range(256)) * 256  # 64 KiB
        count = 400  # 25.6 MB: more than every buffer on the way
        for index in range(count):
            writer.send(WSMsgType.BINARY, chunk[:-1] + bytes([index % 256]))
        written = writer.underlying_transport
        for _ in range(500):  # until the writer's own socket backs up: the engine stopped reading it
            if written.get_write_buffer_size() > 0 and channel.buffered >= 4:
                break
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.1)  # a reading engine would now have taken more
        assert channel.buffered <= 4 + 64  # the capacity, plus the frames of the read in hand
        assert written.get_write_buffer_size() > 0
        writer.send_close()
        reader, frames = await attach(url, refs["reader"])
        received = await frames.all(timeout=60)
        assert len(received) == count
        assert [payload[-1] for _, payload in received] == [index % 256 for index in range(count)]


async def test_a_binary_frame_over_1_mib_reaches_the_reader_split(tmp_path):
    async with in_process_engine(CONFIG, tmp_path) as app:
        url = app.urls[0]
        refs = await new_channel(url)
        writer, _ = await attach(url, refs["writer"])
        big = bytes(range(256)) * (12 * 1024)  # 3 MiB in one frame
        writer.send(WSMsgType.BINARY, big)
        writer.send_close()
        _, frames = await attach(url, refs["reader"])
        received = await frames.all()
        assert all(kind == "binary" and len(payload) <= MAX_READER_FRAME for kind, payload in received)
        assert b"".join(payload for _, payload in received) == big


async def test_a_writer_that_drops_without_a_close_ends_the_stream_like_a_close(tmp_path):
    async with in_process_engine(CONFIG, tmp_path) as app:
        url = app.urls[0]
        refs = await new_channel(url)
        reader, frames = await attach(url, refs["reader"])
        writer, _ = await attach(url, refs["writer"])
        writer.send(WSMsgType.BINARY, b"before the crash")
        assert await frames.queue.get() == ("binary", b"before the crash")
        writer.disconnect(graceful=False)
        assert await frames.all() == []
        assert frames.close_code.value == 1000
        assert len(app.router.channels) == 0


async def test_a_reader_socket_that_stops_reading_stops_its_writer(tmp_path):
    async with in_process_engine(CONFIG, tmp_path) as app:
        url = app.urls[0]
        refs = await new_channel(url, buffer_size=4)
        channel = app.router.channels.channels[refs["writer"]["channel_id"]]
        reader, frames = await attach(url, refs["reader"])
        reader.underlying_transport.pause_reading()  # attached, but reads nothing
        writer, _ = await attach(url, refs["writer"])
        chunk = b"y" * 65536
        count = 400  # 25.6 MB
        for _ in range(count):
            writer.send(WSMsgType.BINARY, chunk)
        written = writer.underlying_transport
        for _ in range(500):  # until the writer's socket backs up: the engine stopped reading it
            if written.get_write_buffer_size() > 0 and channel.buffered >= 4:
                break
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.1)
        assert channel.buffered <= 4 + 64 and written.get_write_buffer_size() > 0
        writer.send_close()
        reader.underlying_transport.resume_reading()
        received = await frames.all(timeout=60)
        assert len(received) == count and all(payload == chunk for _, payload in received)
