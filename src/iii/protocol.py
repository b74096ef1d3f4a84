"""The iii wire protocol: message schema, error codes and constants, in one place.

Every protocol message is one JSON object in a WebSocket text frame, tagged by a lowercase
``"type"``. The Structs below decode what workers send; payload-like fields (``data``,
``result``, ``config``, ``metadata``, schemas) are kept as :class:`msgspec.Raw` so the engine
never decodes what it only forwards. An empty ``Raw`` means the key was absent.

Optional string fields read JSON ``null`` as absent, except ``namespace`` on messages, where an
explicit ``null`` is refused (``UNSET`` = absent, ``None`` = explicit null).
"""

from __future__ import annotations

from typing import Any, Union

from msgspec import UNSET, Raw, Struct, UnsetType

#: What the official SDK's ``iii.protocol`` exports: its SDK-side models, kept in
#: :mod:`iii.iii_types` and loaded on first use (the engine never needs them).
_OFFICIAL_NAMES = (
    "FEATURE_LARGE_MESSAGES_V1",
    "FEATURE_LOCAL_DISPATCH_V1",
    "FEATURE_OBSERVE_V1",
    "SDK_FEATURES",
    "MessageType",
    "RegisterFunctionFormat",
    "RegisterFunctionInput",
    "RegisterFunctionMessage",
    "RegisterTriggerInput",
    "RegisterTriggerMessage",
    "RegisterTriggerTypeInput",
    "RegisterTriggerTypeMessage",
    "TriggerRequest",
)

__all__ = [
    "DEFAULT_HOST",
    "DEFAULT_PORT",
    "DEFAULT_NAMESPACE",
    "DEFAULT_GRACE_MS",
    "MAX_MESSAGE_SIZE",
    "CALL_CHANNEL_HEADER",
    "ABSENT",
    "ErrorCode",
    "WireId",
    "LEGACY_FUNCTION_IDS",
    "ErrorBody",
    "ActionVoid",
    "ActionEnqueue",
    "Message",
    "WorkerRegistered",
    "Reattach",
    "RegisterFunction",
    "UnregisterFunction",
    "RegisterTriggerType",
    "UnregisterTriggerType",
    "RegisterTrigger",
    "UnregisterTrigger",
    "TriggerRegistrationResult",
    "InvokeFunction",
    "InvocationResult",
    "RegisterService",
    "RegistrationRejected",
    "Ping",
    "Pong",
    "ErrorMessage",
    "INBOUND_TYPES",
    "OUTBOUND_TYPES",
    "HELD_TYPES",
    "TypeProbe",
    "is_blank",
    # The official SDK's ``iii.protocol`` names (SDK-side models, from :mod:`iii.iii_types`).
    *_OFFICIAL_NAMES,
]

DEFAULT_HOST = "0.0.0.0"
DEFAULT_PORT = 49134
DEFAULT_NAMESPACE = "default"
DEFAULT_GRACE_MS = 5000
#: Largest message (after reassembling fragments) the engine accepts, as the Python SDK sends.
MAX_MESSAGE_SIZE = 64 * 1024 * 1024

#: Handshake header of a worker's call channel (our extension, see ``Router.connect_call_channel``):
#: ``"<worker_id> <reattach_token>"`` of the worker it makes calls for.
CALL_CHANNEL_HEADER = "x-iii-call-channel"

#: A ``Raw`` field that was not present in the frame.
ABSENT = Raw()


class ErrorCode:
    """Error codes carried in ``ErrorBody.code`` and ``registrationrejected.code``."""

    FUNCTION_NOT_FOUND = "function_not_found"
    INVOCATION_STOPPED = "invocation_stopped"
    INVOCATION_FAILED = "invocation_failed"
    ENQUEUE_ERROR = "enqueue_error"
    INVALID_NAMESPACE = "INVALID_NAMESPACE"
    DESERIALIZATION_ERROR = "deserialization_error"
    DUPLICATE_INVOCATION = "duplicate_invocation_id"
    TRIGGER_REGISTRATION_FAILED = "trigger_registration_failed"
    #: ``registrationrejected``: a worker tried to provide one of the engine's trigger types.
    TRIGGER_TYPE_RESERVED = "TRIGGER_TYPE_RESERVED"
    #: An engine-originated call got no answer before its deadline.
    TIMEOUT = "TIMEOUT"
    #: A caller may not call this function (``worker::*`` from a remote address).
    FORBIDDEN = "FORBIDDEN"
    #: A listener's auth function refused a connection (sent in an ``error`` frame, then Close).
    AUTH_ERROR = "AUTH_ERROR"
    NOT_FOUND = "NOT_FOUND"
    INVALID_ARGUMENTS = "INVALID_ARGUMENTS"
    WORKER_NAMESPACE_CONFLICT = "WORKER_NAMESPACE_CONFLICT"
    FUNCTION_NAMESPACE_CONFLICT = "FUNCTION_NAMESPACE_CONFLICT"


class WireId:
    """Function, trigger type and module ids that more than one part of this package names."""

    #: The listener entry of ``config.yaml`` and its row in ``engine::workers::list``.
    LISTENER = "iii-worker-manager"
    #: The queue module's function that takes ``TriggerAction.Enqueue`` jobs.
    QUEUE_ENQUEUE = "engine::queue::enqueue"
    WORKERS_AVAILABLE = "engine::workers-available"
    FUNCTIONS_AVAILABLE = "engine::functions-available"


#: Engine function ids as older official SDKs call them -> the ids the engine serves them under
#: (iii-sdk 0.1.0 announces itself with ``engine.workers.register``). Consulted only when a called
#: id is not registered.
LEGACY_FUNCTION_IDS = {
    "engine.workers.register": "engine::workers::register",
    "engine.workers.list": "engine::workers::list",
    "engine.functions.list": "engine::functions::list",
    "engine.triggers.list": "engine::triggers::list",
}


class ErrorBody(Struct, omit_defaults=True):
    """``{code, message, stacktrace?}``: the error inside results and registration results."""

    code: str
    message: str
    stacktrace: Union[str, None] = None


class ActionVoid(Struct, tag="void", tag_field="type"):
    """Fire and forget: the caller gets no result."""


class ActionEnqueue(Struct, tag="enqueue", tag_field="type"):
    """Hand the call to a queue; the caller gets ``{"messageReceiptId": …}``."""

    queue: str


Action = Union[ActionVoid, ActionEnqueue, None]
Namespace = Union[str, None, UnsetType]


class Message(Struct, tag_field="type", omit_defaults=True):
    """Base of every protocol message."""


class WorkerRegistered(Message, tag="workerregistered"):
    worker_id: str
    reattach_token: str


class Reattach(Message, tag="reattach"):
    previous_worker_id: str
    reattach_token: Union[str, None] = None


class RegisterFunction(Message, tag="registerfunction"):
    id: str
    description: Union[str, None] = None
    request_format: Raw = ABSENT
    response_format: Raw = ABSENT
    metadata: Raw = ABSENT
    invocation: Raw = ABSENT


class UnregisterFunction(Message, tag="unregisterfunction"):
    id: str


class RegisterTriggerType(Message, tag="registertriggertype"):
    id: str
    description: Union[str, None] = None
    trigger_request_format: Raw = ABSENT
    call_request_format: Raw = ABSENT
    namespace: Namespace = UNSET


class UnregisterTriggerType(Message, tag="unregistertriggertype"):
    id: str
    namespace: Namespace = UNSET


class RegisterTrigger(Message, tag="registertrigger"):
    id: str
    trigger_type: str
    function_id: str
    config: Raw = ABSENT
    metadata: Raw = ABSENT
    namespace: Namespace = UNSET
    trigger_namespace: Namespace = UNSET


class UnregisterTrigger(Message, tag="unregistertrigger"):
    id: str
    trigger_type: Union[str, None] = None


class TriggerRegistrationResult(Message, tag="triggerregistrationresult"):
    id: str
    trigger_type: str = ""
    function_id: str = ""
    error: Union[ErrorBody, None] = None


class InvokeFunction(Message, tag="invokefunction"):
    function_id: str
    invocation_id: Union[str, None] = None
    data: Raw = ABSENT
    metadata: Raw = ABSENT
    action: Action = None
    namespace: Namespace = UNSET
    traceparent: Union[str, None] = None
    baggage: Union[str, None] = None


class InvocationResult(Message, tag="invocationresult"):
    invocation_id: str
    function_id: str = ""
    result: Raw = ABSENT
    error: Raw = ABSENT
    traceparent: Union[str, None] = None
    baggage: Union[str, None] = None


class RegisterService(Message, tag="registerservice"):
    id: str
    name: Union[str, None] = None
    description: Union[str, None] = None
    parent_service_id: Union[str, None] = None


class RegistrationRejected(Message, tag="registrationrejected"):
    code: str
    namespace: str
    owner_worker_id: str
    worker_name: Union[str, None] = None
    function_id: Union[str, None] = None


class Ping(Message, tag="ping"):
    pass


class Pong(Message, tag="pong"):
    pass


class ErrorMessage(Message, tag="error"):
    error: ErrorBody


#: Everything a worker may send to the engine.
INBOUND_TYPES = (
    Reattach,
    RegisterFunction,
    UnregisterFunction,
    RegisterTriggerType,
    UnregisterTriggerType,
    RegisterTrigger,
    UnregisterTrigger,
    TriggerRegistrationResult,
    InvokeFunction,
    InvocationResult,
    RegisterService,
    Ping,
    Pong,
)

#: Everything the engine may send to a worker.
OUTBOUND_TYPES = (
    WorkerRegistered,
    InvokeFunction,
    InvocationResult,
    RegisterTrigger,
    UnregisterTrigger,
    TriggerRegistrationResult,
    RegistrationRejected,
    Ping,
    Pong,
    ErrorMessage,
)

#: Registration messages held until the connection's namespace is known (protocol.md §7).
HELD_TYPES = (
    RegisterFunction,
    UnregisterFunction,
    RegisterTriggerType,
    UnregisterTriggerType,
    RegisterTrigger,
    UnregisterTrigger,
    RegisterService,
)


class TypeProbe(Struct):
    """Reads only ``type`` and ``invocation_id``: used to explain a frame that failed to decode."""

    type: Union[str, None] = None
    invocation_id: Union[str, None] = None


def is_blank(value: str) -> bool:
    """A namespace that was named but left empty (only whitespace)."""
    return not value.strip()


def __getattr__(name: str) -> Any:
    if name in _OFFICIAL_NAMES:
        from iii import iii_types

        return getattr(iii_types, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
