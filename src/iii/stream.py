"""Stream models and the ``IStream`` interface of custom stream backends (``iii.stream``).

A worker serves a stream's storage itself with :func:`iii.helpers.create_stream`: the engine's
``stream::get|set|delete|list|list_groups`` on that stream then call the worker's ``IStream``.
"""

from __future__ import annotations

import warnings
from abc import ABC, abstractmethod
from typing import Any, Generic, List, Optional, TypeVar

from iii._models import Model

__all__ = [
    "IStream",
    "StreamDeleteInput",
    "StreamDeleteResult",
    "StreamGetInput",
    "StreamListGroupsInput",
    "StreamListInput",
    "StreamSetInput",
    "StreamSetResult",
    "StreamUpdateInput",
    "StreamUpdateResult",
    "TData",
    "UpdateOpError",
]

TData = TypeVar("TData")

#: The official SDK's deprecation notice, word for word.
ISTREAM_DEPRECATION = (
    "IStream is deprecated (iii-stream) and will be removed in an upcoming release. "
    "Behavior is unchanged for now. Migration guide: https://iii.dev/docs/upgrading/migrate-from-streams"
)


class StreamGetInput(Model):
    stream_name: str
    group_id: str
    item_id: str


class StreamSetInput(Model):
    stream_name: str
    group_id: str
    item_id: str
    data: Any


class StreamDeleteInput(Model):
    stream_name: str
    group_id: str
    item_id: str


class StreamListInput(Model):
    stream_name: str
    group_id: str


class StreamListGroupsInput(Model):
    stream_name: str


class StreamUpdateInput(Model):
    stream_name: str
    group_id: str
    item_id: str
    ops: list[Any]


class UpdateOpError(Model):
    op_index: int
    code: str
    message: str
    doc_url: Optional[str] = None


class StreamSetResult(Model, Generic[TData]):
    old_value: Optional[TData] = None
    new_value: TData


class StreamUpdateResult(Model, Generic[TData]):
    old_value: Optional[TData] = None
    new_value: TData
    errors: list[UpdateOpError] = []


class StreamDeleteResult(Model):
    old_value: Any = None


class IStream(ABC, Generic[TData]):
    """A stream's storage, served by a worker (deprecated upstream, still supported).

    Defining a subclass warns (``FutureWarning``), as the official SDK does.
    """

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        # stacklevel 3: __init_subclass__ <- ABCMeta.__new__ <- the class statement.
        warnings.warn(ISTREAM_DEPRECATION, FutureWarning, stacklevel=3)

    @abstractmethod
    async def get(self, input: StreamGetInput) -> Optional[TData]:
        """The item, or ``None``."""

    @abstractmethod
    async def set(self, input: StreamSetInput) -> Optional[StreamSetResult[TData]]:
        """Store the item; its old and new value."""

    @abstractmethod
    async def delete(self, input: StreamDeleteInput) -> StreamDeleteResult:
        """Delete the item; its old value."""

    @abstractmethod
    async def list(self, input: StreamListInput) -> list[TData]:
        """The items of a group."""

    @abstractmethod
    async def list_groups(self, input: StreamListGroupsInput) -> List[str]:
        """The groups of the stream."""

    @abstractmethod
    async def update(self, input: StreamUpdateInput) -> Optional[StreamUpdateResult[TData]]:
        """Apply update ops (not called by the engine: ``stream::update`` uses its own store)."""
