"""Our SDK's channels (``iii.channels``, ``iii.helpers``): URLs, refs in payloads, the ends over
real sockets on an in-process engine."""

from __future__ import annotations

import asyncio
import time

import pytest

from helpers import LOCAL_MODULES, in_process_engine
from iii import InitOptions, register_worker_async
from iii.channels import (
    ChannelReader,
    ChannelWriter,
    StreamChannelRef,
    build_channel_url,
    extract_channel_refs,
    is_channel_ref,
    resolve_channels,
)
from iii.helpers import create_channel_async
from iii.sdk._protocol import InvokeHandler

REF = {"channel_id": "c1", "access_key": "k/1 +", "direction": "read"}


def test_channel_urls_keep_the_engine_query_and_quote_the_key():
    assert build_channel_url("ws://h:1/", "c1", "k/1 +", "read") == "ws://h:1/ws/channels/c1?key=k/1%20%2B&dir=read"
    assert build_channel_url("ws://h:1?token=t", "c1", "k", "write") == "ws://h:1/ws/channels/c1?token=t&key=k&dir=write"


def test_refs_are_found_and_made_live_wherever_they_are():
    data = {"label": "x", "items": [{"reader": REF}, {"writer": {**REF, "direction": "write", "extra": 1}}],
            "not_a_ref": {**REF, "direction": "sideways"}, "pair": (REF,)}
    assert is_channel_ref(REF) and not is_channel_ref(data["not_a_ref"]) and not is_channel_ref({**REF, "access_key": 1})
    assert [path for path, _ in extract_channel_refs(data)] == ["items[0].reader", "items[1].writer"]
    assert extract_channel_refs([REF])[0] == ("[0]", StreamChannelRef(channel_id="c1", access_key="k/1 +", direction="read"))
    live = resolve_channels(data, "ws://h:1")
    assert isinstance(live["items"][0]["reader"], ChannelReader)
    assert isinstance(live["items"][1]["writer"], ChannelWriter)
    assert live["not_a_ref"] == data["not_a_ref"] and live["label"] == "x"
    assert isinstance(live["pair"][0], ChannelReader)
    assert StreamChannelRef(**REF).model_dump() == REF


def test_one_ref_class_and_one_of_each_streaming_type_wherever_the_official_package_has_them():
    import iii
    import iii.channel
    import iii.channels
    import iii.helpers
    import iii.iii_types
    import iii.internal
    import iii.types
    import iii.utils

    ref_classes = {m.StreamChannelRef for m in (iii.iii_types, iii.types, iii.channel, iii.channels)}
    assert ref_classes == {iii.iii_types.StreamChannelRef}
    assert iii.iii_types.StreamChannelRef.model_validate({**REF, "extra": 1}).model_dump() == REF
    with pytest.raises(Exception):
        iii.iii_types.StreamChannelRef.model_validate({**REF, "direction": "sideways"})
    assert {iii.StreamRequest, iii.types.StreamRequest} == {iii.channels.StreamRequest}
    assert {iii.StreamResponse, iii.types.StreamResponse} == {iii.channels.StreamResponse}
    assert {iii.internal.InternalHttpRequest, iii.types.InternalHttpRequest} == {iii.channels.InternalHttpRequest}
    assert {iii.channel.Channel, iii.types.Channel} == {iii.channels.Channel}
    assert {iii.utils.is_channel_ref, iii.types.is_channel_ref, iii.helpers.is_channel_ref} == {iii.channels.is_channel_ref}
    assert {iii.types.extract_channel_refs, iii.helpers.extract_channel_refs} == {iii.channels.extract_channel_refs}


def test_a_call_whose_data_holds_a_ref_is_flagged_for_resolution():
    from iii.sdk._protocol import WorkerProtocol
    from iii.sdk._protocol import worker_metadata

    protocol = WorkerProtocol(worker_metadata(InitOptions(), "default"), "default", 30000)
    protocol.register_function("f", lambda data: data)
    with_ref = b'{"type":"invokefunction","invocation_id":"i1","function_id":"f","data":{"r":%s}}' % (
        b'{"channel_id":"c","access_key":"k","direction":"read"}')
    plain = b'{"type":"invokefunction","invocation_id":"i2","function_id":"f","data":{"access":"key"}}'
    flagged = [e.channel_refs for e in protocol.receive(with_ref) + protocol.receive(plain) if isinstance(e, InvokeHandler)]
    assert flagged == [1, 0]


async def test_a_writer_that_never_connected_closes_at_once():
    writer = ChannelWriter("ws://127.0.0.1:1", StreamChannelRef(**{**REF, "direction": "write"}))
    started = time.monotonic()
    await writer.close_async()
    assert time.monotonic() - started < 0.5


async def test_create_channel_async_and_both_ends_on_one_loop(tmp_path):
    async with in_process_engine("workers:\n  - name: iii-worker-manager\n" + LOCAL_MODULES, tmp_path) as app:
        worker = await register_worker_async(app.urls[0], InitOptions(worker_name="chan"))
        try:
            channel = await create_channel_async(worker, buffer_size=2)
            assert channel.writer_ref.direction == "write" and channel.reader_ref.direction == "read"
            texts: list[str] = []
            channel.reader.on_message(texts.append)
            payload = bytes(range(256)) * 1024  # 256 KiB: four frames, over a buffer of 2

            async def write() -> None:
                await channel.writer.send_message_async('{"type":"start"}')
                await channel.writer.write(payload)
                await channel.writer.close_async()

            writing = asyncio.ensure_future(write())
            assert await asyncio.wait_for(channel.reader.read_all(), 10) == payload
            await writing
            assert texts == ['{"type":"start"}']
        finally:
            await worker.shutdown_async()


@pytest.mark.parametrize("size", [None, 0])
async def test_create_channel_sends_the_size_it_is_given(tmp_path, size):
    async with in_process_engine("workers:\n  - name: iii-worker-manager\n" + LOCAL_MODULES, tmp_path) as app:
        worker = await register_worker_async(app.urls[0], InitOptions(worker_name="chan"))
        try:
            channel = await create_channel_async(worker, size)
            created = app.router.channels.channels[channel.writer_ref.channel_id]
            assert created.capacity == (64 if size is None else 1)
        finally:
            await worker.shutdown_async()


def test_the_clients_in_place_attach_makes_what_resolve_channels_makes():
    from iii.channels import ChannelReader, ChannelWriter, resolve_channels
    from iii.sdk.client import _attach_channels

    def ref(n: int, direction: str) -> dict:
        return {"channel_id": f"c{n}", "access_key": f"k{n}", "direction": direction}

    def data() -> dict:
        return {
            "headers": {"a": "b"}, "n": 1, "body": None, "request_body": ref(1, "read"), "response": ref(2, "write"),
            "nested": [{"deep": ref(3, "read")}, [ref(4, "write")], "x"],
            "not_a_ref": {"access_key": "k", "other": ref(5, "read")},
        }

    def shape(value):
        if isinstance(value, (ChannelReader, ChannelWriter)):
            return (type(value).__name__, value._ref.channel_id, value._ref.access_key)
        if isinstance(value, dict):
            return {key: shape(item) for key, item in value.items()}
        if isinstance(value, list):
            return [shape(item) for item in value]
        return value

    expected = shape(resolve_channels(data(), "ws://engine", None))
    assert shape(_attach_channels(data(), "ws://engine", None)) == expected
    # told how often "access_key" occurs in the raw data (6 here): the same, found in a walk
    # that stops early only when the top level held them all
    assert shape(_attach_channels(data(), "ws://engine", None, 6)) == expected
    top_level_only = {"headers": {"a": "b"}, "request_body": ref(1, "read"), "response": ref(2, "write")}
    assert shape(_attach_channels(dict(top_level_only), "ws://engine", None, 2)) == shape(
        resolve_channels(top_level_only, "ws://engine", None))
    assert expected["nested"][0]["deep"] == ("ChannelReader", "c3", "k3")
    assert shape(_attach_channels(ref(6, "write"), "ws://engine", None)) == ("ChannelWriter", "c6", "k6")
