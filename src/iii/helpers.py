"""Free functions over a worker (the official ``iii.helpers``): :func:`create_channel`, the
channel-ref helpers and :func:`create_stream` (custom stream backends)."""

from __future__ import annotations

import warnings
from typing import Any, Optional

from iii.channels import (
    Channel,
    ChannelDirection,
    ChannelItem,
    ChannelReader,
    ChannelWriter,
    extract_channel_refs,
    is_channel_ref,
)
from iii.iii_types import StreamChannelRef
from iii.stream import (
    IStream,
    StreamDeleteInput,
    StreamGetInput,
    StreamListGroupsInput,
    StreamListInput,
    StreamSetInput,
    TData,
)

__all__ = [
    "ChannelDirection",
    "ChannelItem",
    "create_channel",
    "create_channel_async",
    "create_stream",
    "extract_channel_refs",
    "is_channel_ref",
]

_CREATE = "engine::channels::create"


def _channel(iii: Any, refs: Any) -> Channel:
    # validated as the official pydantic model is: a wrong type raises, extra keys are ignored
    writer_ref = StreamChannelRef.model_validate(refs["writer"])
    reader_ref = StreamChannelRef.model_validate(refs["reader"])
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


_CREATE_STREAM_DEPRECATION = (
    "create_stream is deprecated (iii-stream) and will be removed in an upcoming release. "
    "Behavior is unchanged for now. Migration guide: https://iii.dev/docs/upgrading/migrate-from-streams"
)


def _dumped(result: Any) -> Any:
    return result.model_dump() if result else None


def create_stream(iii: Any, stream_name: str, stream: IStream[TData]) -> None:
    """Serve ``stream_name``'s storage from ``stream``: registers ``stream::get(<name>)``,
    ``set``, ``delete``, ``list`` and ``list_groups`` (not ``update``: the engine applies
    updates to its own store), which the engine's ``stream::*`` call for that stream.

    Deprecated upstream (warns ``FutureWarning``), still supported.
    """
    warnings.warn(_CREATE_STREAM_DEPRECATION, FutureWarning, stacklevel=2)

    async def get(data: Any) -> Any:
        return await stream.get(StreamGetInput.model_validate(data))

    async def set_(data: Any) -> Any:
        return _dumped(await stream.set(StreamSetInput.model_validate(data)))

    async def delete(data: Any) -> Any:
        return _dumped(await stream.delete(StreamDeleteInput.model_validate(data)))

    async def list_(data: Any) -> Any:
        return await stream.list(StreamListInput.model_validate(data))

    async def list_groups(data: Any) -> Any:
        return await stream.list_groups(StreamListGroupsInput.model_validate(data))

    for op, handler in (("get", get), ("set", set_), ("delete", delete), ("list", list_), ("list_groups", list_groups)):
        iii.register_function(f"stream::{op}({stream_name})", handler)
