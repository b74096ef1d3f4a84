"""Helpers of the official SDK (``iii.helpers``): custom stream backends."""

from __future__ import annotations

import warnings
from typing import Any

from iii.stream import (
    IStream,
    StreamDeleteInput,
    StreamGetInput,
    StreamListGroupsInput,
    StreamListInput,
    StreamSetInput,
    TData,
)

__all__ = ["create_stream"]

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
