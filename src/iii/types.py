"""SDK types of the official ``iii.types``: the client protocol, handler types, registration
records, and the names re-exported from :mod:`iii.iii_types`, :mod:`iii.triggers` and
:mod:`iii.channels` (``Channel``, the streaming HTTP types, the channel-ref helpers).
"""

from __future__ import annotations

import asyncio
from typing import Any, Awaitable, Callable, Generic, Optional, Protocol, TypeVar

from iii._models import Model
from iii.channels import (
    Channel,
    InternalHttpRequest,
    StreamChannelRefDict,
    StreamRequest,
    StreamResponse,
    extract_channel_refs,
    is_channel_ref,
)
from iii.iii_constants import ConnectionStateCallback
from iii.iii_types import (
    HttpInvocationConfig,
    RegisterFunctionMessage,
    RegisterTriggerInput,
    RegisterTriggerTypeInput,
    RegisterTriggerTypeMessage,
    StreamChannelRef,
    TriggerRequest,
)
from iii.triggers import Trigger, TriggerHandler

__all__ = [
    "Channel",
    "HttpInvocationConfig",
    "IIIClient",
    "InternalHttpRequest",
    "Invocation",
    "RegisterFunctionMessage",
    "RegisterTriggerInput",
    "RegisterTriggerTypeInput",
    "RegisterTriggerTypeMessage",
    "RemoteFunctionData",
    "RemoteFunctionHandler",
    "RemoteServiceFunctionData",
    "RemoteTriggerTypeData",
    "StreamChannelRef",
    "StreamChannelRefDict",
    "StreamRequest",
    "StreamResponse",
    "TConfig",
    "TInput",
    "TOutput",
    "Trigger",
    "TriggerHandler",
    "TriggerRequest",
    "extract_channel_refs",
    "is_channel_ref",
]

TInput = TypeVar("TInput")
TOutput = TypeVar("TOutput")
TConfig = TypeVar("TConfig")

#: What a registered function is called as: payload in, awaitable result out.
RemoteFunctionHandler = Callable[[Any], Awaitable[Any]]


class RemoteFunctionData(Model):
    """A function a client registered: its message and, for a local handler, the handler."""

    message: RegisterFunctionMessage
    handler: Optional[Any] = None
    #: 0.25 observe state (unused here).
    observe: Any = None
    #: A sync handler's direct entry point, when it has one.
    call_sync: Optional[Any] = None


class RemoteServiceFunctionData(Model):
    message: RegisterFunctionMessage
    handler: Any


class RemoteTriggerTypeData(Model):
    """A trigger type a client provides: its message and its handler."""

    message: RegisterTriggerTypeMessage
    handler: Any


class Invocation(Generic[TOutput]):
    """A call awaiting its result."""

    def __init__(self, future: asyncio.Future[TOutput]) -> None:
        self.future = future

    def resolve(self, value: TOutput) -> None:
        if not self.future.done():
            self.future.set_result(value)

    def reject(self, error: Exception) -> None:
        if not self.future.done():
            self.future.set_exception(error)


class IIIClient(Protocol):
    """What a worker client offers (:class:`iii.III` is one)."""

    def register_trigger(self, trigger: RegisterTriggerInput | dict[str, Any]) -> Trigger: ...

    def register_function(self, function_id: str, handler_or_invocation: Any, **options: Any) -> Any: ...

    def trigger(self, request: dict[str, Any] | TriggerRequest) -> Any: ...

    def register_trigger_type(
        self, trigger_type: RegisterTriggerTypeInput | dict[str, Any], handler: TriggerHandler[Any]
    ) -> Any: ...

    def unregister_trigger_type(self, trigger_type: RegisterTriggerTypeInput | dict[str, Any]) -> None: ...

    def add_connection_state_listener(self, handler: ConnectionStateCallback) -> Callable[[], None]: ...

    def shutdown(self) -> None: ...
