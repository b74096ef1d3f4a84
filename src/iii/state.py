"""State models and the ``IState`` interface (``iii.state``), as the official SDK names them.

There are no client methods for state: it is used with ``trigger({"function_id": "state::set",
"payload": {...}})``; these models describe those payloads and results.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from enum import Enum
from typing import Any, Generic, Optional, TypeVar

from iii._models import Model

__all__ = [
    "IState",
    "StateDeleteInput",
    "StateDeleteResult",
    "StateEventData",
    "StateEventType",
    "StateGetInput",
    "StateListInput",
    "StateSetInput",
    "StateSetResult",
    "StateUpdateInput",
    "StateUpdateResult",
    "TData",
]

TData = TypeVar("TData")


class StateGetInput(Model):
    scope: str
    key: str


class StateSetInput(Model):
    scope: str
    key: str
    value: Any


class StateDeleteInput(Model):
    scope: str
    key: str


class StateListInput(Model):
    scope: str


class StateUpdateInput(Model):
    scope: str
    key: str
    #: Update ops: ``{"type": "set"|"increment"|"decrement"|"append"|"remove"|"merge", ...}``.
    ops: list[Any]


class StateSetResult(Model, Generic[TData]):
    old_value: Optional[TData] = None
    new_value: TData


class StateUpdateResult(Model, Generic[TData]):
    old_value: Optional[TData] = None
    new_value: TData


class StateDeleteResult(Model):
    old_value: Any = None


class StateEventType(str, Enum):
    CREATED = "state:created"
    UPDATED = "state:updated"
    DELETED = "state:deleted"


class StateEventData(Model, Generic[TData]):
    """What a ``state`` trigger's function receives."""

    type: str = "state"
    event_type: StateEventType
    scope: str
    key: str
    old_value: Optional[TData] = None
    new_value: Optional[TData] = None


class IState(ABC, Generic[TData]):
    """A state backend's operations."""

    @abstractmethod
    async def get(self, input: StateGetInput) -> Optional[TData]: ...

    @abstractmethod
    async def set(self, input: StateSetInput) -> Optional[StateSetResult[TData]]: ...

    @abstractmethod
    async def delete(self, input: StateDeleteInput) -> StateDeleteResult: ...

    @abstractmethod
    async def list(self, input: StateListInput) -> list[TData]: ...

    @abstractmethod
    async def update(self, input: StateUpdateInput) -> Optional[StateUpdateResult[TData]]: ...
