"""The worker side of the iii protocol, without I/O: registrations, replay, calls in flight.

:class:`WorkerProtocol` is fed what happens to the connection (``connection_opened``,
``receive(frame)``, ``connection_lost``) and what the user asks for (register a function, make a
call, a handler finished …). It answers with :data:`Event` objects for the caller to act on
(run a handler, settle a call …) and with frames, taken with :meth:`WorkerProtocol.data_to_send`.
It owns no socket, loop, thread or timer (python-websockets' ``Protocol`` is the model), so the
client in :mod:`iii.sdk.client` is only a pump, and tests drive this class with bytes.

Registrations may be added from any thread (so ``register_function`` can raise at once); every
other method runs on the pump's loop.
"""

from __future__ import annotations

import inspect
import itertools
import logging
import os
import platform
import re
import socket
import traceback
import uuid
from collections import deque
from dataclasses import asdict, dataclass, is_dataclass
from typing import Any, Callable, Optional, Union

import msgspec

from iii import codec
from iii._version import __version__
from iii.errors import InvocationError, RegistrationRejectedError, error_from_wire
from iii.format_utils import extract_request_format, extract_response_format, python_type_to_format
from iii.iii_constants import MAX_QUEUE_SIZE, EngineFunctions, InitOptions, TelemetryOptions
from iii.protocol import (
    ABSENT,
    MAX_MESSAGE_SIZE,
    ActionEnqueue,
    ActionVoid,
    ErrorBody,
    ErrorCode,
    InvocationResult,
    InvokeFunction,
    Reattach,
    RegisterFunction,
    RegisterTrigger,
    RegisterTriggerType,
    RegistrationRejected,
    TriggerRegistrationResult,
    UnregisterFunction,
    UnregisterTrigger,
    UnregisterTriggerType,
    WorkerRegistered,
)
from iii.sdk.actions import TriggerActionEnqueue, TriggerActionVoid
from iii.triggers import RegisterTriggerTypeInput, TriggerConfig, TriggerHandler

#: Functions whose plain-call frame parts are kept (the cache is emptied when full).
_MAX_CACHED_CALL_ENDS = 1024

#: Seen in a call's raw data: it may hold channel refs (counted in the buffer, no copy).
_CHANNEL_REF_KEY = re.compile(rb'"access_key"')

__all__ = [
    "WorkerProtocol",
    "LocalFunction",
    "OutboundCall",
    "Event",
    "InvokeHandler",
    "CallResolved",
    "CallFailed",
    "BindTrigger",
    "UnbindTrigger",
    "Welcomed",
    "WorkerRejected",
    "ReplyError",
    "resolve_worker_namespace",
    "worker_metadata",
    "Answer",
    "timeout_error",
    "shutdown_error",
]

log = logging.getLogger("iii")
#: Where handler failures are logged (the official SDK's module logger).
handler_log = logging.getLogger("iii.iii")

# ---------------------------------------------------------------------- events


@dataclass(slots=True)  # not frozen: one is made per call, and a frozen one costs 3× as much
class InvokeHandler:
    """The engine calls one of this worker's functions: run ``handler(*args)``.

    Report the outcome with :meth:`WorkerProtocol.handler_returned` or ``handler_raised``.
    """

    handler: Callable[..., Any]
    #: Await it on the loop; a sync handler runs on a thread instead.
    is_async: bool
    function_id: str
    #: ``None`` for a fire-and-forget call: nobody waits for the outcome.
    invocation_id: Optional[str]
    #: ``(data,)``, or ``(data, metadata)`` for a handler that declares ``metadata``.
    args: tuple[Any, ...]
    #: How often ``"access_key"`` occurs in the raw data: the most channel refs it may hold (the
    #: client makes them live channel ends); 0: none.
    channel_refs: int = 0


@dataclass(slots=True)  # not frozen: one is made per call, and a frozen one costs 3× as much
class CallResolved:
    """A call this worker made returned ``result``."""

    waiter: Any
    result: Any


@dataclass(slots=True)  # not frozen: one is made per call, and a frozen one costs 3× as much
class CallFailed:
    """A call this worker made failed (engine error, timeout, shutdown, rejection)."""

    waiter: Any
    error: BaseException


@dataclass(frozen=True)
class BindTrigger:
    """A binding of a trigger type this worker provides: ``await provider.register_trigger(config)``.

    Report the outcome with :meth:`WorkerProtocol.trigger_bound`.
    """

    provider: TriggerHandler[Any]
    config: TriggerConfig[Any]
    trigger_type: str


@dataclass(frozen=True)
class UnbindTrigger:
    """A binding was removed: ``await provider.unregister_trigger(config)`` (nothing to report)."""

    provider: TriggerHandler[Any]
    config: TriggerConfig[Any]


@dataclass(frozen=True)
class Welcomed:
    """The engine named this connection (``workerregistered``); kept for the next ``reattach``."""

    worker_id: str
    reattach_token: Optional[str]


@dataclass(frozen=True)
class WorkerRejected:
    """The engine refused this worker: fatal, do not reconnect (calls in flight fail too)."""

    error: RegistrationRejectedError


Event = Union[InvokeHandler, CallResolved, CallFailed, BindTrigger, UnbindTrigger, Welcomed, WorkerRejected]


class ReplyError(Exception):
    """Raised by a handler to answer with exactly this error instead of ``invocation_failed``
    (the engine's bridges relay a local function's error to the remote caller so)."""

    def __init__(self, code: str, message: str, stacktrace: Optional[str] = None) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.stacktrace = stacktrace


# ---------------------------------------------------------------------- records


class LocalFunction:
    """A function this worker registered: its handler (``None`` for HTTP-invoked) and frame."""

    __slots__ = ("function_id", "handler", "is_async", "wants_metadata", "frame")

    def __init__(self, function_id: str, handler: Optional[Callable[..., Any]], frame: bytes) -> None:
        self.function_id = function_id
        self.handler = handler
        self.is_async = handler is not None and _is_async(handler)
        self.wants_metadata = handler is not None and _wants_metadata(handler)
        self.frame = frame


class OutboundCall(msgspec.Struct, gc=False):  # one per call: made in C, not tracked by the GC
    """A call encoded and checked, ready for :meth:`WorkerProtocol.start_call`."""

    frame: bytes
    #: ``None`` for a void call: no result will come.
    invocation_id: Optional[str]
    function_id: str
    timeout_ms: int


class _PendingCall:
    __slots__ = ("waiter", "function_id", "timeout_ms", "frame")

    def __init__(self, waiter: Any, function_id: str, timeout_ms: int, frame: bytes) -> None:
        self.waiter = waiter
        self.function_id = function_id
        self.timeout_ms = timeout_ms
        #: Its frame, while it may still wait in the offline queue.
        self.frame = frame


class _ProvidedType:
    __slots__ = ("frame", "provider")

    def __init__(self, frame: bytes, provider: TriggerHandler[Any]) -> None:
        self.frame = frame
        self.provider = provider


# ---------------------------------------------------------------------- the protocol


class WorkerProtocol:
    """One worker's protocol state across all its connections.

    Args:
        metadata: the payload of ``engine::workers::register`` (see :func:`worker_metadata`).
        namespace: the worker's namespace (``None``: the engine's default).
        invocation_timeout_ms: the timeout of calls that do not set ``timeout_ms``.
    """

    def __init__(self, metadata: dict[str, Any], namespace: Optional[str], invocation_timeout_ms: int) -> None:
        self.namespace = namespace
        self.invocation_timeout_ms = invocation_timeout_ms
        #: The engine's name for this worker (from ``workerregistered``), ``None`` until then.
        self.worker_id: Optional[str] = None
        self.connected = False
        self.shutting_down = False
        #: Set once the engine refused the worker; every later call raises it.
        self.rejection: Optional[RegistrationRejectedError] = None
        self._reattach_token: Optional[str] = None
        self._register_frame = codec.encode_message(
            InvokeFunction(function_id=EngineFunctions.REGISTER_WORKER, data=_raw(metadata), action=ActionVoid())
        )
        self._functions: dict[str, LocalFunction] = {}
        self._trigger_types: dict[str, _ProvidedType] = {}
        self._triggers: dict[str, bytes] = {}
        self._pending: dict[str, _PendingCall] = {}
        #: Calls and results made while disconnected, sent after the next replay (oldest dropped).
        self._offline: deque[bytes] = deque(maxlen=MAX_QUEUE_SIZE)
        self._outbox: list[bytes] = []
        # Invocation ids: a random UUIDv4 prefix per worker and a counter in the last group, so a
        # call costs no ``os.urandom`` (``uuid4`` alone cost more than the rest of a call's encoding).
        self._id_prefix = str(uuid.uuid4())[:24]
        self._id_counter = itertools.count(1)
        #: ``(function_id, namespace)`` → the constant parts of a plain call's frame.
        self._plain_call_ends: dict[tuple[str, Optional[str]], tuple[bytes, bytes, bytes, bytes]] = {}

    # ------------------------------------------------------------------ connection

    def connection_opened(self) -> None:
        """Queue the replay, in the official order: reattach, trigger types, functions,
        triggers, what was queued while offline, then ``engine::workers::register``."""
        self.connected = True
        frames = self._outbox
        if self.worker_id is not None and self._reattach_token is not None:
            frames.append(
                codec.encode_message(Reattach(previous_worker_id=self.worker_id, reattach_token=self._reattach_token))
            )
        # Snapshots: registrations may be added from other threads meanwhile.
        frames += [provided.frame for provided in list(self._trigger_types.values())]
        frames += [function.frame for function in list(self._functions.values())]
        frames += list(self._triggers.values())
        frames += self._offline
        self._offline.clear()
        frames.append(self._register_frame)

    def connection_lost(self) -> None:
        """The socket closed. Calls in flight keep waiting for their timeout, as the official
        SDK's do: the engine never answers them, but a reconnect must not fail them early."""
        self.connected = False

    def data_to_send(self) -> list[bytes]:
        """The frames to write now, in order (the outbox is emptied)."""
        frames, self._outbox = self._outbox, []
        return frames

    def announce(self, frame: bytes) -> None:
        """Send a registration change if connected; offline it is not queued, since the
        registrations themselves are replayed on the next connection."""
        if self.connected:
            self._outbox.append(frame)

    def _send(self, frame: bytes) -> None:
        """Send now, or keep for the next connection."""
        if self.connected:
            self._outbox.append(frame)
        else:
            self._offline.append(frame)

    # ------------------------------------------------------------------ inbound frames

    def receive(self, raw: bytes) -> list[Event]:
        """Handle one text frame from the engine; replies go to the outbox."""
        try:
            msg = codec.decode_engine_frame(raw)
        except codec.DecodeError as exc:
            log.debug("[iii] ignored a frame: %s", exc)
            return []
        match msg:
            case InvocationResult():
                return self._on_result(msg)
            case InvokeFunction():
                return self._on_invoke(msg)
            case WorkerRegistered():
                self.worker_id = msg.worker_id
                self._reattach_token = msg.reattach_token
                return [Welcomed(msg.worker_id, msg.reattach_token)]
            case RegisterTrigger():
                return self._on_bind(msg)
            case UnregisterTrigger():
                return self._on_unbind(msg)
            case TriggerRegistrationResult(error=ErrorBody() as error):
                # A binding this worker asked for was refused: as the official SDK, only log it.
                log.error("[iii] Trigger registration failed for '%s' (%s): %s", msg.id, msg.trigger_type, error.message)
            case RegistrationRejected():
                return self._on_rejected(msg)
        return []  # acks, ping, pong, error: the official SDK ignores them too

    def _on_result(self, msg: InvocationResult) -> list[Event]:
        pending = self._pending.pop(msg.invocation_id, None)
        if pending is None:
            return []  # timed out already, or not ours
        if msg.error:
            error = error_from_wire(_decode(msg.error), pending.function_id, msg.invocation_id)
            return [CallFailed(pending.waiter, error)]
        return [CallResolved(pending.waiter, _decode(msg.result) if msg.result else None)]

    def _on_invoke(self, msg: InvokeFunction) -> list[Event]:
        invocation_id = msg.invocation_id
        function_id = msg.function_id
        function = self._functions.get(function_id)
        if function is None or function.handler is None:
            if invocation_id is not None:
                if function is None:
                    error = ErrorBody(ErrorCode.FUNCTION_NOT_FOUND, f"Function '{function_id}' not found")
                else:
                    error = ErrorBody("function_not_invokable", f"Function '{function_id}' is invoked over HTTP")
                self._send(codec.encode_error_result(invocation_id, function_id, error))
            return []
        data = _decode(msg.data) if msg.data else None
        if function.wants_metadata:
            args: tuple[Any, ...] = (data, _decode(msg.metadata) if msg.metadata else None)
        else:
            args = (data,)
        refs = len(_CHANNEL_REF_KEY.findall(msg.data)) if data is not None else 0
        return [InvokeHandler(function.handler, function.is_async, function_id, invocation_id, args, refs)]

    def _on_bind(self, msg: RegisterTrigger) -> list[Event]:
        provided = self._trigger_types.get(msg.trigger_type)
        if provided is None:
            return []  # the official Python SDK ignores unknown types
        config: TriggerConfig[Any] = TriggerConfig(
            id=msg.id,
            function_id=msg.function_id,
            config=_decode(msg.config) if msg.config else None,
            metadata=_decode(msg.metadata) if msg.metadata else None,
            namespace=None if msg.namespace is msgspec.UNSET else msg.namespace,
        )
        return [BindTrigger(provided.provider, config, msg.trigger_type)]

    def _on_unbind(self, msg: UnregisterTrigger) -> list[Event]:
        provided = self._trigger_types.get(msg.trigger_type or "")
        if provided is None:
            return []
        return [UnbindTrigger(provided.provider, TriggerConfig(id=msg.id, function_id="", config=None))]

    def _on_rejected(self, msg: RegistrationRejected) -> list[Event]:
        if msg.code == ErrorCode.FUNCTION_NAMESPACE_CONFLICT:
            log.warning(
                "[iii] Function '%s' rejected in namespace '%s' (owned by '%s')",
                msg.function_id,
                msg.namespace,
                msg.owner_worker_id,
            )
            return []
        error = RegistrationRejectedError(msg.code, msg.namespace, msg.worker_name or "", msg.owner_worker_id)
        self.rejection = error
        log.error("Worker registration rejected (%s): %s. Fatal; not reconnecting.", msg.code, error)
        return [WorkerRejected(error), *self._fail_pending(error)]

    # ------------------------------------------------------------------ handlers' outcomes

    def handler_returned(self, invocation: InvokeHandler, result: Any) -> None:
        """Answer the engine with what a handler returned."""
        if invocation.invocation_id is None:
            return
        try:
            raw_result = _raw(result)
        except (TypeError, msgspec.EncodeError) as exc:
            self.handler_raised(invocation, exc)
            return
        self._send(
            codec.encode_message(
                InvocationResult(
                    invocation_id=invocation.invocation_id, function_id=invocation.function_id, result=raw_result
                )
            )
        )

    def handler_raised(self, invocation: InvokeHandler, exc: BaseException) -> None:
        """Log the failure with its traceback (as the official SDK does, on its ``iii.iii``
        logger) and answer ``invocation_failed`` with the traceback (a void call gets no answer);
        a :class:`ReplyError` answers its own code, message and stacktrace."""
        if isinstance(exc, ReplyError):  # an answer, not a crash: no traceback of this side
            handler_log.debug("handler %s answered %s", invocation.function_id, exc)
            error = ErrorBody(exc.code, exc.message, exc.stacktrace)
        else:
            handler_log.error("Error in handler %s", invocation.function_id, exc_info=exc)
            stack = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
            error = ErrorBody(ErrorCode.INVOCATION_FAILED, str(exc), stack)
        if invocation.invocation_id is None:
            return
        self._send(codec.encode_error_result(invocation.invocation_id, invocation.function_id, error))

    def trigger_bound(self, binding: BindTrigger, error: Optional[Exception]) -> None:
        """Tell the engine whether the provider accepted a binding."""
        self._send(
            codec.encode_message(
                TriggerRegistrationResult(
                    id=binding.config.id,
                    trigger_type=binding.trigger_type,
                    function_id=binding.config.function_id,
                    error=None if error is None else ErrorBody(ErrorCode.TRIGGER_REGISTRATION_FAILED, str(error)),
                )
            )
        )

    # ------------------------------------------------------------------ registrations (any thread)

    def register_function(
        self,
        function_id: str,
        handler_or_invocation: Any,
        *,
        description: Optional[str] = None,
        metadata: Optional[dict[str, Any]] = None,
        request_format: Any = None,
        response_format: Any = None,
    ) -> LocalFunction:
        """Remember a function; :meth:`announce` its ``frame``.

        Raises:
            ValueError: empty id, or an id this worker already registered.
            TypeError: neither callable nor an HTTP invocation config.
        """
        if not function_id:
            raise ValueError("function_id is required")
        if function_id in self._functions:
            raise ValueError(f"function id already registered: {function_id}")
        handler: Optional[Callable[..., Any]] = None
        invocation = ABSENT
        if callable(handler_or_invocation):
            handler = handler_or_invocation
            # Formats not given are read from the handler's type hints, as the official SDK does.
            if request_format is None:
                request_format = extract_request_format(handler)
            if response_format is None:
                response_format = extract_response_format(handler)
        elif isinstance(handler_or_invocation, dict) and "url" in handler_or_invocation or hasattr(handler_or_invocation, "url"):
            config = handler_or_invocation
            invocation = _raw(config.model_dump(exclude_none=True) if hasattr(config, "model_dump") else config)
        else:
            raise TypeError("handler must be callable or an HTTP invocation config")
        frame = codec.encode_message(
            RegisterFunction(
                id=function_id,
                description=description,
                request_format=_raw_or_absent(_schema(request_format)),
                response_format=_raw_or_absent(_schema(response_format)),
                metadata=_raw_or_absent(metadata),
                invocation=invocation,
            )
        )
        function = LocalFunction(function_id, handler, frame)
        self._functions[function_id] = function
        return function

    def unregister_function(self, function: LocalFunction) -> Optional[bytes]:
        """Forget a function; the frame to :meth:`announce`, or ``None`` if already gone."""
        if self._functions.get(function.function_id) is not function:
            return None
        del self._functions[function.function_id]
        return codec.encode_message(UnregisterFunction(id=function.function_id))

    def register_trigger(self, request: dict[str, Any]) -> tuple[str, bytes]:
        """Remember a binding ``{type, function_id, config, metadata?, namespace?, trigger_namespace?}``;
        returns its new id and the frame to :meth:`announce`.

        Raises:
            ValueError: a blank ``namespace``.
        """
        namespace = self._call_namespace(request.get("namespace"), "RegisterTriggerInput.namespace")
        trigger_namespace = request.get("trigger_namespace")
        trigger_id = str(uuid.uuid4())
        frame = codec.encode_message(
            RegisterTrigger(
                id=trigger_id,
                trigger_type=request["type"],
                function_id=request["function_id"],
                config=_raw(request.get("config")),
                metadata=_raw_or_absent(request.get("metadata")),
                namespace=namespace if namespace is not None else msgspec.UNSET,
                trigger_namespace=trigger_namespace if trigger_namespace is not None else msgspec.UNSET,
            )
        )
        self._triggers[trigger_id] = frame
        return trigger_id, frame

    def unregister_trigger(self, trigger_id: str, trigger_type: str) -> Optional[bytes]:
        """Forget a binding; the frame to :meth:`announce`, or ``None`` if already gone."""
        if self._triggers.pop(trigger_id, None) is None:
            return None
        return codec.encode_message(UnregisterTrigger(id=trigger_id, trigger_type=trigger_type))

    def register_trigger_type(self, trigger_type: RegisterTriggerTypeInput, provider: TriggerHandler[Any]) -> bytes:
        """Remember a trigger type this worker provides; returns the frame to :meth:`announce`."""
        frame = codec.encode_message(
            RegisterTriggerType(
                id=trigger_type.id,
                description=trigger_type.description,
                trigger_request_format=_raw_or_absent(_schema(trigger_type.trigger_request_format)),
                call_request_format=_raw_or_absent(_schema(trigger_type.call_request_format)),
            )
        )
        self._trigger_types[trigger_type.id] = _ProvidedType(frame, provider)
        return frame

    def unregister_trigger_type(self, type_id: str, namespace: Optional[str] = None) -> bytes:
        """Forget a trigger type; returns the frame to :meth:`announce`."""
        self._trigger_types.pop(type_id, None)
        return codec.encode_message(
            UnregisterTriggerType(id=type_id, namespace=namespace if namespace is not None else msgspec.UNSET)
        )

    # ------------------------------------------------------------------ calls

    def _call_namespace(self, explicit: Optional[str], source: str) -> Optional[str]:
        if explicit is not None and not explicit.strip():
            raise ValueError(
                f"namespace is empty: {source} was set to {explicit!r}. Give it a name, or "
                "leave it unset to stay in this worker's namespace."
            )
        return explicit if explicit is not None else self.namespace

    def prepare_call(self, request: Any) -> OutboundCall:
        """Check and encode a ``trigger`` request (any thread).

        Raises:
            RegistrationRejectedError: the engine refused this worker.
            InvocationError: ``SHUTDOWN``, or ``payload_too_large``.
            ValueError: a blank ``namespace``.
        """
        if self.rejection is not None:
            raise self.rejection
        if self.shutting_down:
            raise shutdown_error(request.get("function_id") if isinstance(request, dict) else None)
        if not isinstance(request, dict):
            request = request.model_dump()
        function_id = request["function_id"]
        action = request.get("action")
        if isinstance(action, dict):
            action = TriggerActionEnqueue(queue=action["queue"]) if action.get("type") == "enqueue" else TriggerActionVoid()
        explicit = request.get("namespace")
        namespace = self.namespace if explicit is None else self._call_namespace(explicit, "TriggerRequest.namespace")
        if explicit is None and function_id.startswith(("engine::", "configuration::")):
            namespace = "default"
        payload = request.get("payload")
        is_void = isinstance(action, TriggerActionVoid)
        invocation_id = None if is_void else f"{self._id_prefix}{next(self._id_counter) & 0xFFFFFFFFFFFF:012x}"
        metadata = request.get("metadata")
        if action is None and metadata is None and type(function_id) is str:
            frame = self._plain_call_frame(function_id, invocation_id, payload, namespace)  # type: ignore[arg-type]
        else:
            frame = self._call_frame(function_id, invocation_id, payload, metadata, action, is_void, namespace)
        if len(frame) > MAX_MESSAGE_SIZE:
            raise InvocationError("payload_too_large", f"message of {len(frame)} bytes exceeds {MAX_MESSAGE_SIZE}", function_id)
        return OutboundCall(frame, invocation_id, function_id, request.get("timeout_ms") or self.invocation_timeout_ms)

    def _plain_call_frame(self, function_id: str, invocation_id: str, payload: Any, namespace: Optional[str]) -> bytes:
        """The frame of a call without action or metadata (most calls): what :meth:`_call_frame`
        makes, from a cached head and tail per function (the same bytes, a third of the work)."""
        ends = self._plain_call_ends.get((function_id, namespace))
        if ends is None:
            if len(self._plain_call_ends) >= _MAX_CACHED_CALL_ENDS:
                self._plain_call_ends.clear()
            head = b'{"type":"invokefunction","function_id":%s,"invocation_id":"' % _user_value_encoder.encode(function_id)
            tail = b"}" if namespace is None else b',"namespace":%s}' % _user_value_encoder.encode(namespace)
            ends = self._plain_call_ends[(function_id, namespace)] = (head, b'"' + tail, b'","data":', tail)
        head, bare_tail, data_key, tail = ends
        if payload is None:
            return b"".join((head, invocation_id.encode(), bare_tail))
        return b"".join((head, invocation_id.encode(), data_key, _user_value_encoder.encode(payload), tail))

    def _call_frame(
        self,
        function_id: str,
        invocation_id: Optional[str],
        payload: Any,
        metadata: Any,
        action: Any,
        is_void: bool,
        namespace: Optional[str],
    ) -> bytes:
        return codec.encode_message(
            InvokeFunction(
                function_id=function_id,
                invocation_id=invocation_id,
                data=_raw_or_absent(payload),
                metadata=_raw_or_absent(metadata),
                action=(
                    ActionVoid() if is_void else ActionEnqueue(queue=action.queue) if isinstance(action, TriggerActionEnqueue) else None
                ),
                namespace=namespace if namespace is not None else msgspec.UNSET,
            )
        )

    def start_call(self, call: OutboundCall, waiter: Any) -> Optional[Event]:
        """Send a call; ``waiter`` is the caller's key for it, handed back in its event.

        Returns the event that settles the call now (a void call, a refused one), or ``None``
        when it waits for its result: arm a timer that calls :meth:`time_out`.
        """
        if self.rejection is not None:
            return CallFailed(waiter, self.rejection)
        if self.shutting_down:
            return CallFailed(waiter, shutdown_error(call.function_id))
        self._send(call.frame)
        if call.invocation_id is None:
            return CallResolved(waiter, None)
        self._pending[call.invocation_id] = _PendingCall(waiter, call.function_id, call.timeout_ms, call.frame)
        return None

    def adopt_call(self, call: OutboundCall, waiter: Any) -> Optional[Event]:
        """Wait for a call sent by other means whose answer will not come that way (its channel
        failed after sending): it settles like a call of this connection, by its timeout or
        shutdown. Returns the event that settles it now, or ``None``: arm its timer."""
        if self.rejection is not None:
            return CallFailed(waiter, self.rejection)
        if self.shutting_down:
            return CallFailed(waiter, shutdown_error(call.function_id))
        assert call.invocation_id is not None
        self._pending[call.invocation_id] = _PendingCall(waiter, call.function_id, call.timeout_ms, b"")
        return None

    def time_out(self, invocation_id: str) -> Optional[CallFailed]:
        """A call's timer fired: fail it with ``TIMEOUT`` (``None`` if it was settled already)."""
        pending = self._pending.pop(invocation_id, None)
        if pending is None:
            return None
        if not self.connected:  # never sent: a call its caller gave up on must not run later
            try:
                self._offline.remove(pending.frame)
            except ValueError:
                pass  # sent before the connection was lost
        return CallFailed(pending.waiter, timeout_error(pending.function_id, pending.timeout_ms, invocation_id))

    def shut_down(self) -> list[Event]:
        """Refuse new calls and fail those in flight with ``SHUTDOWN``."""
        self.shutting_down = True
        return self._fail_pending(shutdown_error(None))

    def _fail_pending(self, error: BaseException) -> list[Event]:
        pending, self._pending = self._pending, {}
        return [CallFailed(entry.waiter, error) for entry in pending.values()]


# ---------------------------------------------------------------------- the worker's identity


def resolve_worker_namespace(options: InitOptions) -> Optional[str]:
    """``InitOptions.namespace``, else a non-blank ``III_NAMESPACE``, else ``None``.

    Raises:
        ValueError: ``InitOptions.namespace`` is blank.
    """
    declared = options.namespace
    if declared is not None:
        if not declared.strip():
            raise ValueError(
                f"namespace is empty: InitOptions.namespace was set to {declared!r}. "
                "Give it a name, or leave it unset to register in `default`."
            )
        return declared
    managed = os.environ.get("III_NAMESPACE")
    return managed if managed and managed.strip() else None


def worker_metadata(options: InitOptions, namespace: Optional[str]) -> dict[str, Any]:
    """The payload of ``engine::workers::register``, keys in the official SDK's order."""
    telemetry = options.telemetry or TelemetryOptions()
    managed_name = os.environ.get("III_WORKER_NAME", "").strip()
    metadata: dict[str, Any] = {
        "runtime": "python",
        "version": __version__,
        "name": managed_name or options.worker_name or f"{socket.gethostname()}:{os.getpid()}",
        "os": f"{platform.system()} {platform.release()} ({platform.machine()})",
        "pid": os.getpid(),
        "isolation": os.environ.get("III_ISOLATION") or None,
        "namespace": namespace,
        "telemetry": {
            "language": telemetry.language or (os.environ.get("LANG") or "").split(".")[0] or None,
            "project_name": telemetry.project_name or os.path.basename(os.getcwd()),
            "framework": telemetry.framework or "iii-py",
        },
    }
    if options.worker_description:
        metadata["description"] = options.worker_description
    return metadata


# ---------------------------------------------------------------------- helpers


def _to_jsonable(value: Any) -> Any:
    """``enc_hook`` for user values msgspec does not know (pydantic models and the like)."""
    if hasattr(value, "model_dump"):
        return value.model_dump(mode="json")
    if is_dataclass(value):
        return asdict(value)  # type: ignore[arg-type]
    raise TypeError(f"Object of type {type(value).__name__} is not JSON serializable")


_user_value_encoder = msgspec.json.Encoder(enc_hook=_to_jsonable)
_decode = msgspec.json.Decoder().decode


def _raw(value: Any) -> msgspec.Raw:
    """A user value encoded once, spliced into a frame as is."""
    return msgspec.Raw(_user_value_encoder.encode(value))


def _raw_or_absent(value: Any) -> msgspec.Raw:
    """Optional fields: ``None`` leaves the key out of the frame, as the official SDK does."""
    return ABSENT if value is None else _raw(value)


def _schema(value: Any) -> Any:
    """A request/response format: a JSON Schema dict, a ``RegisterFunctionFormat``, or a model
    class (pydantic, msgspec Struct, dataclass, TypedDict)."""
    if isinstance(value, type):
        return python_type_to_format(value)
    if hasattr(value, "model_dump"):
        return value.model_dump(exclude_none=True)
    return value


def _wants_metadata(handler: Callable[..., Any]) -> bool:
    """Official rule: pass metadata only to a handler with a parameter named ``metadata``."""
    try:
        params = inspect.signature(handler).parameters
    except (TypeError, ValueError):
        return False
    return "metadata" in params and params["metadata"].kind in (
        inspect.Parameter.POSITIONAL_OR_KEYWORD,
        inspect.Parameter.KEYWORD_ONLY,
    )


def _is_async(handler: Callable[..., Any]) -> bool:
    return inspect.iscoroutinefunction(handler) or inspect.iscoroutinefunction(getattr(handler, "__call__", None))


class Answer(msgspec.Struct, tag="invocationresult", tag_field="type", gc=False):
    """An ``invocationresult`` decoded in one pass, result and error included (a call that reads
    its own answer wants them at once; the connection's reader keeps them raw until it finds the
    call)."""

    invocation_id: str
    result: Any = None
    error: Any = None

    def outcome(self, function_id: str) -> Any:
        """The result.

        Raises:
            InvocationError: the call failed.
        """
        if self.error is not None:
            raise error_from_wire(self.error, function_id, self.invocation_id)
        return self.result


def timeout_error(function_id: str, timeout_ms: int, invocation_id: str) -> InvocationError:
    """The ``TIMEOUT`` error of a call nobody answered in time."""
    return InvocationError("TIMEOUT", f"invocation timed out after {timeout_ms}ms", function_id, None, invocation_id)


def shutdown_error(function_id: Optional[str]) -> InvocationError:
    """The ``SHUTDOWN`` error of a call the worker's shutdown ended."""
    return InvocationError("SHUTDOWN", "iii is shutting down", function_id)
