"""Free functions over a worker (the official ``iii.helpers``): :func:`create_channel` and the
channel-ref helpers."""

from __future__ import annotations

from typing import Any, Optional

from iii.channels import (
    Channel,
    ChannelDirection,
    ChannelItem,
    ChannelReader,
    ChannelWriter,
    StreamChannelRef,
    extract_channel_refs,
    is_channel_ref,
)

__all__ = [
    "ChannelDirection",
    "ChannelItem",
    "create_channel",
    "create_channel_async",
    "extract_channel_refs",
    "is_channel_ref",
]

_CREATE = "engine::channels::create"


def _channel(iii: Any, refs: Any) -> Channel:
    writer_ref = StreamChannelRef(**refs["writer"])
    reader_ref = StreamChannelRef(**refs["reader"])
    address, headers = iii.get_address(), iii._options.headers
    return Channel(
        writer=ChannelWriter(address, writer_ref, headers),
        reader=ChannelReader(address, reader_ref, headers),
        writer_ref=writer_ref,
        reader_ref=reader_ref,
    )


def create_channel(iii: Any, buffer_size: Optional[int] = None) -> Channel:
    """A new channel (``engine::channels::create``): its two ends and their refs. Blocks; not on
    the worker's own loop (use :func:`create_channel_async` there).

    Args:
        iii: the worker.
        buffer_size: frames the engine buffers between the ends (engine default 64, at most 1024).
    """
    return _channel(iii, iii.trigger({"function_id": _CREATE, "payload": {"buffer_size": buffer_size}}))


async def create_channel_async(iii: Any, buffer_size: Optional[int] = None) -> Channel:
    """:func:`create_channel`, awaitable from any loop."""
    return _channel(iii, await iii.trigger_async({"function_id": _CREATE, "payload": {"buffer_size": buffer_size}}))
