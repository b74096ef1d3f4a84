"""The official SDK's wire and input models (``iii.iii_types``), as :class:`~iii._models.Model`
Structs: same names, fields and wire names, the pydantic methods user code calls.

The engine's own message schema is :mod:`iii.protocol`; these are what SDK users build and read.
The 0.25 observe models are not here (this SDK does not speak the observe protocol).
"""

from __future__ import annotations

from enum import Enum
from typing import Any, Literal, Optional, Union

import msgspec

from iii._models import Model
from iii.sdk.actions import TriggerActionEnqueue, TriggerActionVoid

__all__ = [
    "FEATURE_LARGE_MESSAGES_V1",
    "FEATURE_LOCAL_DISPATCH_V1",
    "FEATURE_OBSERVE_V1",
    "SDK_FEATURES",
    "ErrorBody",
    "HttpAuthApiKey",
    "HttpAuthBearer",
    "HttpAuthHmac",
    "HttpInvocationConfig",
    "InvocationResultMessage",
    "InvokeFunctionMessage",
    "MessageType",
    "MiddlewareFunctionInput",
    "RegisterFunctionFormat",
    "RegisterFunctionInput",
    "RegisterFunctionMessage",
    "RegisterTriggerInput",
    "RegisterTriggerMessage",
    "RegisterTriggerTypeInput",
    "RegisterTriggerTypeMessage",
    "StreamChannelRef",
    "TriggerActionEnqueue",
    "TriggerActionVoid",
    "TriggerRegistrationResultMessage",
    "TriggerRequest",
    "UnregisterFunctionMessage",
    "UnregisterTriggerMessage",
    "UnregisterTriggerTypeMessage",
    "WorkerRegisteredMessage",
]

#: Feature names an SDK may announce in ``engine::workers::register`` (``features``).
FEATURE_OBSERVE_V1 = "observe.v1"
FEATURE_LOCAL_DISPATCH_V1 = "local-dispatch.v1"
FEATURE_LARGE_MESSAGES_V1 = "large-messages.v1"
#: What this SDK announces: none of them (it speaks the classic protocol).
SDK_FEATURES: tuple[str, ...] = ()


class MessageType(str, Enum):
    """The ``type`` of every protocol message."""

    REGISTER_FUNCTION = "registerfunction"
    UNREGISTER_FUNCTION = "unregisterfunction"
    REGISTER_SERVICE = "registerservice"
    INVOKE_FUNCTION = "invokefunction"
    INVOCATION_RESULT = "invocationresult"
    REGISTER_TRIGGER_TYPE = "registertriggertype"
    REGISTER_TRIGGER = "registertrigger"
    UNREGISTER_TRIGGER = "unregistertrigger"
    UNREGISTER_TRIGGER_TYPE = "unregistertriggertype"
    TRIGGER_REGISTRATION_RESULT = "triggerregistrationresult"
    WORKER_REGISTERED = "workerregistered"
    REGISTRATION_REJECTED = "registrationrejected"
    REATTACH = "reattach"
    OBSERVE = "observe"
    UNOBSERVE = "unobserve"
    OBSERVE_RESULT = "observeresult"
    OBSERVER_STATE_CHANGED = "observerstatechanged"
    FUNCTION_REGISTERED = "functionregistered"
    OBSERVER_ADDED = "observeradded"
    OBSERVER_REMOVED = "observerremoved"
    OBSERVER_ACK = "observerack"
    INVOCATIONS_OBSERVED = "invocationsobserved"
    LOCAL_INVOCATION_STATS = "localinvocationstats"


class HttpAuthBearer(Model, tag="bearer", tag_field="type"):
    """``Authorization: Bearer <the value of the engine's env var token_key>``."""

    token_key: str


class HttpAuthHmac(Model, tag="hmac", tag_field="type"):
    """``x-iii-Signature``: HMAC-SHA256 keyed by the engine's env var ``secret_key``."""

    secret_key: str


class HttpAuthApiKey(Model, tag="api_key", tag_field="type"):
    """``<header>: <the value of the engine's env var value_key>``."""

    header: str
    value_key: str


class HttpInvocationConfig(Model):
    """An HTTP-invoked function: the engine answers its calls by requesting ``url``."""

    url: str
    method: Literal["GET", "POST", "PUT", "PATCH", "DELETE"] = "POST"
    timeout_ms: Optional[int] = None
    headers: Optional[dict[str, str]] = None
    auth: Union[HttpAuthBearer, HttpAuthHmac, HttpAuthApiKey, None] = None


class StreamChannelRef(Model):
    """A reference to one end of a channel as it travels in payloads; :mod:`iii.channels` opens
    it as a :class:`~iii.channels.ChannelWriter` or :class:`~iii.channels.ChannelReader`.

    Attributes:
        channel_id: the channel's id.
        access_key: the secret that lets this end attach.
        direction: which end it is (``read`` or ``write``).
    """

    channel_id: str
    access_key: str
    direction: Literal["read", "write"]


class RegisterFunctionFormat(Model):
    """A field-list description of a function's input or output (the older format shape)."""

    name: str
    type: str
    description: Optional[str] = None
    body: Optional[list[RegisterFunctionFormat]] = None
    items: Optional[RegisterFunctionFormat] = None
    required: bool = False


class RegisterFunctionInput(Model):
    id: str
    description: Optional[str] = None
    request_format: Any = None  # a JSON Schema dict or a RegisterFunctionFormat
    response_format: Any = None  # a JSON Schema dict or a RegisterFunctionFormat
    metadata: Any = None
    invocation: Optional[HttpInvocationConfig] = None


class RegisterTriggerTypeInput(Model):
    """What ``register_trigger_type`` announces; formats are JSON Schemas or model classes."""

    id: str
    description: str = ""
    trigger_request_format: Any = None
    call_request_format: Any = None


class RegisterTriggerInput(Model):
    """What ``register_trigger`` takes."""

    type: str
    function_id: str
    config: Any = None
    metadata: Any = None
    namespace: Optional[str] = None
    trigger_namespace: Optional[str] = None


class TriggerRequest(Model):
    """What ``trigger`` takes."""

    function_id: str
    payload: Any = None
    action: Any = None  # TriggerAction.Void() / TriggerAction.Enqueue(queue=...) or its dict
    timeout_ms: Optional[int] = None
    metadata: Any = None
    namespace: Optional[str] = None
    dispatch: Optional[Literal["auto", "remote"]] = None


class MiddlewareFunctionInput(Model):
    """What an RBAC invocation middleware function receives."""

    function_id: str
    payload: dict[str, Any]
    action: Any = None  # TriggerAction.Void() / TriggerAction.Enqueue(queue=...) or its dict
    context: dict[str, Any] = {}
    namespace: Optional[str] = None


class ErrorBody(Model):
    code: str = ""
    message: str = ""
    stacktrace: Optional[str] = None


def _type(message: MessageType) -> Any:
    """The ``message_type`` field: ``type`` on the wire."""
    return msgspec.field(default=message, name="type")


class RegisterFunctionMessage(Model):
    id: str
    description: Optional[str] = None
    request_format: Any = None  # a JSON Schema dict or a RegisterFunctionFormat
    response_format: Any = None  # a JSON Schema dict or a RegisterFunctionFormat
    metadata: Any = None
    invocation: Optional[HttpInvocationConfig] = None
    #: 0.25 observe descriptor (never sent by this SDK).
    observe: Any = None
    message_type: MessageType = _type(MessageType.REGISTER_FUNCTION)


class UnregisterFunctionMessage(Model):
    id: str
    message_type: MessageType = _type(MessageType.UNREGISTER_FUNCTION)


class RegisterTriggerTypeMessage(Model):
    id: str
    description: str
    trigger_request_format: Any = None
    call_request_format: Any = None
    namespace: Optional[str] = None
    message_type: MessageType = _type(MessageType.REGISTER_TRIGGER_TYPE)


class UnregisterTriggerTypeMessage(Model):
    id: str
    namespace: Optional[str] = None
    message_type: MessageType = _type(MessageType.UNREGISTER_TRIGGER_TYPE)


class RegisterTriggerMessage(Model):
    id: str
    trigger_type: str
    function_id: str
    config: Any = None
    metadata: Any = None
    namespace: Optional[str] = None
    trigger_namespace: Optional[str] = None
    message_type: MessageType = _type(MessageType.REGISTER_TRIGGER)


class UnregisterTriggerMessage(Model):
    id: str
    trigger_type: Optional[str] = None
    message_type: MessageType = _type(MessageType.UNREGISTER_TRIGGER)


class TriggerRegistrationResultMessage(Model):
    id: str
    trigger_type: str
    function_id: str
    result: Any = None
    error: Any = None
    message_type: MessageType = _type(MessageType.TRIGGER_REGISTRATION_RESULT)


class InvokeFunctionMessage(Model):
    function_id: str
    data: Any = None
    metadata: Any = None
    invocation_id: Optional[str] = None
    traceparent: Optional[str] = None
    baggage: Optional[str] = None
    action: Any = None  # TriggerAction.Void() / TriggerAction.Enqueue(queue=...) or its dict
    namespace: Optional[str] = None
    #: 0.25 observe fields (an engine without observe.v1 never sends them).
    caller: Any = None
    observe_depth: Optional[int] = None
    activation: Any = None
    message_type: MessageType = _type(MessageType.INVOKE_FUNCTION)


class InvocationResultMessage(Model):
    invocation_id: str
    function_id: str
    result: Any = None
    error: Any = None
    traceparent: Optional[str] = None
    baggage: Optional[str] = None
    message_type: MessageType = _type(MessageType.INVOCATION_RESULT)


class WorkerRegisteredMessage(Model):
    worker_id: str
    reattach_token: Optional[str] = None
    features: list[str] = []
    message_type: MessageType = _type(MessageType.WORKER_REGISTERED)
