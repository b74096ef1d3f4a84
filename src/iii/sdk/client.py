"""The worker client: ``register_worker`` and the :class:`III` object it returns.

A drop-in for the official ``iii-sdk`` client. By default it runs its own event loop (uvloop)
on a background thread, as the official does, so ``register_worker`` works from plain scripts;
``await register_worker_async(...)`` instead runs it on the caller's loop, with no thread.

All socket work happens on the client's loop: calls made from other threads are handed over
with ``call_soon_threadsafe``. Frames are decoded with the project's codec (payloads stay raw
until a handler or a caller needs them).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import inspect
import logging
import os
import platform
import random
import socket
import threading
import traceback
import uuid
from collections import deque
from dataclasses import asdict, dataclass, is_dataclass
from typing import Any, Callable, Optional, Union

import msgspec
import uvloop
from picows import WSCloseCode, WSFrame, WSListener, WSMsgType, WSTransport, ws_connect

from iii import __version__, codec
from iii.errors import InvocationError, RegistrationRejectedError, error_from_wire
from iii.iii_constants import (
    DEFAULT_ENGINE_URL,
    DEFAULT_RECONNECTION_CONFIG,
    MAX_QUEUE_SIZE,
    ConnectionStateCallback,
    FunctionRef,
    IIIConnectionState,
    InitOptions,
    TelemetryOptions,
)
from iii.protocol import (
    ABSENT,
    MAX_MESSAGE_SIZE,
    ActionEnqueue,
    ActionVoid,
    ErrorCode,
    InvocationResult,
    InvokeFunction,
    Reattach,
    RegisterTrigger,
    RegistrationRejected,
    TriggerRegistrationResult,
    UnregisterTrigger,
    WorkerRegistered,
)
from iii.triggers import RegisterTriggerTypeInput, Trigger, TriggerConfig, TriggerHandler, TriggerTypeRef

__all__ = [
    "III",
    "TriggerAction",
    "TriggerActionVoid",
    "TriggerActionEnqueue",
    "EnqueueResult",
    "register_worker",
    "register_worker_async",
    "resolve_engine_url",
]

log = logging.getLogger("iii")

_TEXT = WSMsgType.TEXT
_CLOSE = WSMsgType.CLOSE
_CONNECT_WAIT_S = 30
_HANDSHAKE_TIMEOUT_S = 10
_PING_INTERVAL_S = 20


@dataclass(frozen=True)
class TriggerActionVoid:
    """Fire and forget: ``trigger`` returns ``None`` at once."""

    type: str = "void"

    def model_dump(self) -> dict[str, Any]:
        return {"type": self.type}


@dataclass(frozen=True)
class TriggerActionEnqueue:
    """Hand the call to a named queue: ``trigger`` returns ``{"messageReceiptId": …}``."""

    queue: str
    type: str = "enqueue"

    def model_dump(self) -> dict[str, Any]:
        return {"type": self.type, "queue": self.queue}


@dataclass(frozen=True)
class EnqueueResult:
    """What an enqueue returns (``trigger`` itself returns the plain dict)."""

    messageReceiptId: str


class TriggerAction:
    """Factories for the ``action`` of a ``trigger`` request."""

    @staticmethod
    def Void() -> TriggerActionVoid:  # noqa: N802 (official name)
        return TriggerActionVoid()

    @staticmethod
    def Enqueue(*, queue: str) -> TriggerActionEnqueue:  # noqa: N802 (official name)
        return TriggerActionEnqueue(queue=queue)


def _to_jsonable(value: Any) -> Any:
    """``enc_hook`` for user values msgspec does not know (pydantic models and the like)."""
    if hasattr(value, "model_dump"):
        return value.model_dump(mode="json")
    if is_dataclass(value):
        return asdict(value)  # type: ignore[arg-type]
    raise TypeError(f"Object of type {type(value).__name__} is not JSON serializable")


_encoder = msgspec.json.Encoder(enc_hook=_to_jsonable)
_decode = msgspec.json.Decoder().decode


def _raw(value: Any) -> msgspec.Raw:
    return msgspec.Raw(_encoder.encode(value))


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
    return inspect.iscoroutinefunction(handler) or inspect.iscoroutinefunction(
        getattr(handler, "__call__", None)
    )


def _schema(value: Any) -> Any:
    """A request/response format: a JSON Schema dict, or a pydantic model class."""
    if isinstance(value, type) and hasattr(value, "model_json_schema"):
        return value.model_json_schema()
    return value


def _error_result(invocation_id: str, function_id: str, code: str, message: str, stacktrace: Optional[str] = None) -> bytes:
    error = {"code": code, "message": message}
    if stacktrace is not None:
        error["stacktrace"] = stacktrace
    return _encoder.encode(
        InvocationResult(invocation_id=invocation_id, function_id=function_id, error=_raw(error))
    )


class _Function:
    __slots__ = ("handler", "is_async", "wants_metadata", "frame")

    def __init__(self, handler: Optional[Callable[..., Any]], frame: bytes) -> None:
        self.handler = handler
        self.is_async = handler is not None and _is_async(handler)
        self.wants_metadata = handler is not None and _wants_metadata(handler)
        self.frame = frame


class _Pending:
    """A call waiting for its ``invocationresult``; ``resolve(result, error)`` completes it."""

    __slots__ = ("resolve", "function_id", "timer")

    def __init__(self, resolve: Callable[[Any, Optional[BaseException]], None], function_id: str) -> None:
        self.resolve = resolve
        self.function_id = function_id
        self.timer: Optional[asyncio.TimerHandle] = None


class _Listener(WSListener):
    def __init__(self, client: "III") -> None:
        self._client = client

    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        msg_type = frame.msg_type
        if msg_type is _TEXT:
            self._client._on_frame(frame.get_payload_as_bytes())
        elif msg_type is _CLOSE:
            transport.send_close(frame.get_close_code())
            transport.disconnect()


class III:
    """A worker connected to an iii engine.

    Use :func:`register_worker` to make one. Constructing it starts connecting at once.
    """

    def __init__(
        self,
        address: str,
        options: Optional[InitOptions] = None,
        *,
        loop: Optional[asyncio.AbstractEventLoop] = None,
    ) -> None:
        self._address = address
        self._options = options or InitOptions()
        self._namespace = self._resolve_worker_namespace()
        self._functions: dict[str, _Function] = {}
        self._trigger_types: dict[str, tuple[bytes, TriggerHandler[Any]]] = {}
        self._triggers: dict[str, bytes] = {}
        self._queue: deque[bytes] = deque(maxlen=MAX_QUEUE_SIZE)
        self._pending: dict[str, _Pending] = {}
        self._state: IIIConnectionState = "disconnected"
        self._state_listeners: list[ConnectionStateCallback] = []
        self._worker_id: Optional[str] = None
        self._reattach_token: Optional[str] = None
        self._transport: Optional[WSTransport] = None
        self._closing = False
        self._fatal: Optional[RegistrationRejectedError] = None
        self._connected = threading.Event()
        self._timeout_ms = self._options.invocation_timeout_ms
        if loop is None:
            self._loop = uvloop.new_event_loop()
            self._thread: Optional[threading.Thread] = threading.Thread(
                target=self._loop.run_forever, name="iii-sdk", daemon=True
            )
            self._thread.start()
        else:
            self._loop = loop
            self._thread = None
        self._runner: Optional[concurrent.futures.Future[None]] = None
        self._in_loop(self._start)

    # ------------------------------------------------------------------ loop plumbing

    def _on_loop_thread(self) -> bool:
        if self._thread is not None:
            return threading.current_thread() is self._thread
        try:
            return asyncio.get_running_loop() is self._loop
        except RuntimeError:
            return False

    def _in_loop(self, callback: Callable[..., Any], *args: Any) -> None:
        """Run ``callback`` on the client's loop: now if already there, else soon."""
        if self._on_loop_thread():
            callback(*args)
        else:
            self._loop.call_soon_threadsafe(callback, *args)

    def _start(self) -> None:
        self._task = self._loop.create_task(self._run())

    # ------------------------------------------------------------------ connection

    def _resolve_worker_namespace(self) -> Optional[str]:
        declared = self._options.namespace
        if declared is not None:
            if not declared.strip():
                raise ValueError(
                    f"namespace is empty: InitOptions.namespace was set to {declared!r}. "
                    "Give it a name, or leave it unset to register in `default`."
                )
            return declared
        managed = os.environ.get("III_NAMESPACE")
        return managed if managed and managed.strip() else None

    def _headers(self) -> dict[str, str]:
        headers = dict(self._options.headers or {})
        token = os.environ.get("III_TOKEN")
        if token and not any(k.lower() == "authorization" for k in headers):
            headers["Authorization"] = f"Bearer {token}"
        return headers

    async def _run(self) -> None:
        """Connect, serve, and reconnect with backoff until shut down or rejected."""
        config = self._options.reconnection_config or DEFAULT_RECONNECTION_CONFIG
        attempt = 0
        first = True
        while not self._closing and self._fatal is None:
            self._set_state("connecting" if first else "reconnecting")
            first = False
            try:
                transport, _ = await ws_connect(
                    lambda: _Listener(self),
                    self._address,
                    websocket_handshake_timeout=_HANDSHAKE_TIMEOUT_S,
                    max_frame_size=MAX_MESSAGE_SIZE,
                    extra_headers=self._headers(),
                    enable_auto_ping=True,
                    auto_ping_idle_timeout=_PING_INTERVAL_S,
                    auto_ping_reply_timeout=_PING_INTERVAL_S,
                )
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if self._closing:
                    break
                log.debug("[iii] connect to %s failed: %s", self._address, exc)
            else:
                self._transport = transport
                attempt = 0
                self._set_state("connected")
                self._connected.set()
                self._on_open()
                await transport.wait_disconnected()
                self._transport = None
                if self._closing or self._fatal is not None:
                    break
                self._set_state("disconnected")
            if config.max_retries >= 0 and attempt >= config.max_retries:
                self._set_state("failed")
                self._connected.set()
                return
            delay = min(config.initial_delay_ms * config.backoff_multiplier**attempt, config.max_delay_ms)
            delay *= 1 + config.jitter_factor * (2 * random.random() - 1)
            attempt += 1
            log.debug("[iii] reconnecting in %d ms", delay)
            await asyncio.sleep(delay / 1000)

    def _on_open(self) -> None:
        """Replay everything the engine must know, in the official order."""
        frames: list[bytes] = []
        if self._worker_id is not None and self._reattach_token is not None:
            frames.append(
                codec.encode_message(
                    Reattach(previous_worker_id=self._worker_id, reattach_token=self._reattach_token)
                )
            )
        frames += [frame for frame, _ in list(self._trigger_types.values())]
        frames += [fn.frame for fn in list(self._functions.values())]
        frames += list(self._triggers.values())
        frames += self._queue
        self._queue.clear()
        frames.append(self._register_frame())
        transport = self._transport
        for frame in frames:
            transport.send(_TEXT, frame)  # type: ignore[union-attr]

    def _register_frame(self) -> bytes:
        options = self._options
        telemetry = options.telemetry or TelemetryOptions()
        metadata: dict[str, Any] = {
            "runtime": "python",
            "version": __version__,
            "name": self._worker_name(),
            "os": f"{platform.system()} {platform.release()} ({platform.machine()})",
            "pid": os.getpid(),
            "isolation": os.environ.get("III_ISOLATION") or None,
            "namespace": self._namespace,
            "telemetry": {
                "language": telemetry.language or (os.environ.get("LANG") or "").split(".")[0] or None,
                "project_name": telemetry.project_name or os.path.basename(os.getcwd()),
                "framework": telemetry.framework or "iii-py",
            },
        }
        if options.worker_description:
            metadata["description"] = options.worker_description
        return _encoder.encode(
            InvokeFunction(
                function_id="engine::workers::register", data=_raw(metadata), action=ActionVoid()
            )
        )

    def _worker_name(self) -> str:
        managed = os.environ.get("III_WORKER_NAME", "").strip()
        return managed or self._options.worker_name or f"{socket.gethostname()}:{os.getpid()}"

    def _set_state(self, state: IIIConnectionState) -> None:
        if state == self._state:
            return
        self._state = state
        for listener in list(self._state_listeners):
            try:
                listener(state)
            except Exception:
                log.exception("[iii] connection state listener failed")

    def _send(self, frame: bytes) -> None:
        """Send now, or keep for the next connection (oldest dropped past the limit)."""
        transport = self._transport
        if transport is not None and self._state == "connected":
            transport.send(_TEXT, frame)
        else:
            self._queue.append(frame)

    def _send_if_connected(self, frame: bytes) -> None:
        """Registrations: remembered separately and replayed, so never queued."""
        transport = self._transport
        if transport is not None and self._state == "connected":
            transport.send(_TEXT, frame)

    # ------------------------------------------------------------------ inbound frames

    def _on_frame(self, raw: bytes) -> None:
        try:
            msg = codec.decode_engine_frame(raw)
        except codec.DecodeError as exc:
            log.debug("[iii] ignored a frame: %s", exc)
            return
        msg_type = type(msg)
        if msg_type is InvocationResult:
            self._on_result(msg)  # type: ignore[arg-type]
        elif msg_type is InvokeFunction:
            self._on_invoke(msg)  # type: ignore[arg-type]
        elif msg_type is WorkerRegistered:
            self._worker_id = msg.worker_id  # type: ignore[attr-defined]
            self._reattach_token = msg.reattach_token  # type: ignore[attr-defined]
        elif msg_type is RegisterTrigger:
            self._on_register_trigger(msg)  # type: ignore[arg-type]
        elif msg_type is UnregisterTrigger:
            self._on_unregister_trigger(msg)  # type: ignore[arg-type]
        elif msg_type is TriggerRegistrationResult:
            if msg.error is not None:  # type: ignore[attr-defined]
                log.error(
                    "[iii] Trigger registration failed for '%s' (%s): %s",
                    msg.id,  # type: ignore[attr-defined]
                    msg.trigger_type,  # type: ignore[attr-defined]
                    msg.error.message,  # type: ignore[attr-defined]
                )
        elif msg_type is RegistrationRejected:
            self._on_rejected(msg)  # type: ignore[arg-type]

    def _on_result(self, msg: InvocationResult) -> None:
        pending = self._pending.pop(msg.invocation_id, None)
        if pending is None:
            return  # timed out already, or not ours
        if pending.timer is not None:
            pending.timer.cancel()
        if msg.error:
            pending.resolve(None, error_from_wire(_decode(msg.error), pending.function_id, msg.invocation_id))
        else:
            pending.resolve(_decode(msg.result) if msg.result else None, None)

    def _on_invoke(self, msg: InvokeFunction) -> None:
        invocation_id = msg.invocation_id
        function_id = msg.function_id
        fn = self._functions.get(function_id)
        if fn is None or fn.handler is None:
            if invocation_id is not None:
                if fn is None:
                    self._send(_error_result(invocation_id, function_id, ErrorCode.FUNCTION_NOT_FOUND, f"Function '{function_id}' not found"))
                else:
                    self._send(_error_result(invocation_id, function_id, "function_not_invokable", f"Function '{function_id}' is invoked over HTTP"))
            return
        data = _decode(msg.data) if msg.data else None
        args: tuple[Any, ...] = (data, _decode(msg.metadata) if msg.metadata else None) if fn.wants_metadata else (data,)
        if fn.is_async:
            self._loop.create_task(self._run_async(fn, invocation_id, function_id, args))
        else:
            future = self._loop.run_in_executor(None, _call_sync, fn.handler, args)
            future.add_done_callback(lambda done: self._finish(invocation_id, function_id, done))

    async def _run_async(self, fn: _Function, invocation_id: Optional[str], function_id: str, args: tuple[Any, ...]) -> None:
        try:
            result = await fn.handler(*args)  # type: ignore[misc]
        except BaseException as exc:  # the official SDK reports BaseException too
            if isinstance(exc, asyncio.CancelledError) and self._closing:
                raise
            self._reply_error(invocation_id, function_id, exc)
            return
        self._reply(invocation_id, function_id, result)

    def _finish(self, invocation_id: Optional[str], function_id: str, done: "asyncio.Future[Any]") -> None:
        exc = done.exception()
        if exc is not None:
            self._reply_error(invocation_id, function_id, exc)
        else:
            self._reply(invocation_id, function_id, done.result())

    def _reply(self, invocation_id: Optional[str], function_id: str, result: Any) -> None:
        if invocation_id is None:
            return
        try:
            frame = _encoder.encode(InvocationResult(invocation_id=invocation_id, function_id=function_id, result=_raw(result)))
        except (TypeError, msgspec.EncodeError) as exc:
            self._reply_error(invocation_id, function_id, exc)
            return
        self._send(frame)

    def _reply_error(self, invocation_id: Optional[str], function_id: str, exc: BaseException) -> None:
        if invocation_id is None:
            log.error("[iii] %s failed: %s", function_id, exc, exc_info=exc)
            return
        stack = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
        self._send(_error_result(invocation_id, function_id, ErrorCode.INVOCATION_FAILED, str(exc), stack))

    def _on_register_trigger(self, msg: RegisterTrigger) -> None:
        entry = self._trigger_types.get(msg.trigger_type)
        if entry is None:
            return  # the official Python SDK ignores unknown types
        config = TriggerConfig(
            id=msg.id,
            function_id=msg.function_id,
            config=_decode(msg.config) if msg.config else None,
            metadata=_decode(msg.metadata) if msg.metadata else None,
            namespace=None if msg.namespace is msgspec.UNSET else msg.namespace,
        )

        async def deliver() -> None:
            error = None
            try:
                await entry[1].register_trigger(config)
            except Exception as exc:
                error = _raw({"code": ErrorCode.TRIGGER_REGISTRATION_FAILED, "message": str(exc)})
            result: dict[str, Any] = {
                "type": "triggerregistrationresult",
                "id": msg.id,
                "trigger_type": msg.trigger_type,
                "function_id": msg.function_id,
            }
            if error is not None:
                result["error"] = error
            self._send(_encoder.encode(result))

        self._loop.create_task(deliver())

    def _on_unregister_trigger(self, msg: UnregisterTrigger) -> None:
        entry = self._trigger_types.get(msg.trigger_type or "")
        if entry is None:
            return
        config = TriggerConfig(id=msg.id, function_id="", config=None)

        async def withdraw() -> None:
            try:
                await entry[1].unregister_trigger(config)
            except Exception:
                log.exception("[iii] unregister_trigger of %s failed", msg.id)

        self._loop.create_task(withdraw())

    def _on_rejected(self, msg: RegistrationRejected) -> None:
        if msg.code == ErrorCode.FUNCTION_NAMESPACE_CONFLICT:
            log.warning(
                "[iii] Function '%s' rejected in namespace '%s' (owned by '%s')",
                msg.function_id,
                msg.namespace,
                msg.owner_worker_id,
            )
            return
        self._fatal = RegistrationRejectedError(msg.code, msg.namespace, msg.worker_name or "", msg.owner_worker_id)
        log.error("Worker registration rejected (%s): %s. Fatal; not reconnecting.", msg.code, self._fatal)
        self._set_state("failed")
        self._connected.set()
        self._fail_pending(self._fatal)

    def _fail_pending(self, error: BaseException) -> None:
        pending, self._pending = self._pending, {}
        for entry in pending.values():
            if entry.timer is not None:
                entry.timer.cancel()
            entry.resolve(None, error)

    # ------------------------------------------------------------------ registration

    def register_function(
        self,
        function_id: str,
        handler_or_invocation: Any,
        *,
        description: Optional[str] = None,
        metadata: Optional[dict[str, Any]] = None,
        request_format: Any = None,
        response_format: Any = None,
        **_observe_options: Any,
    ) -> FunctionRef:
        """Expose a function (a sync or async handler, or an HTTP invocation config).

        Raises:
            ValueError: empty id, or an id this worker already registered.
            TypeError: neither callable nor an HTTP invocation config.
        """
        if not function_id:
            raise ValueError("function_id is required")
        if function_id in self._functions:
            raise ValueError(f"function id already registered: {function_id}")
        message: dict[str, Any] = {"type": "registerfunction", "id": function_id}
        if description is not None:
            message["description"] = description
        if request_format is not None:
            message["request_format"] = _schema(request_format)
        if response_format is not None:
            message["response_format"] = _schema(response_format)
        if metadata is not None:
            message["metadata"] = metadata
        handler: Optional[Callable[..., Any]] = None
        if callable(handler_or_invocation):
            handler = handler_or_invocation
        elif isinstance(handler_or_invocation, dict) and "url" in handler_or_invocation or hasattr(handler_or_invocation, "url"):
            invocation = handler_or_invocation
            message["invocation"] = invocation.model_dump(exclude_none=True) if hasattr(invocation, "model_dump") else invocation
        else:
            raise TypeError("handler must be callable or an HTTP invocation config")
        entry = _Function(handler, _encoder.encode(message))
        self._functions[function_id] = entry
        self._in_loop(self._send_if_connected, entry.frame)

        def unregister() -> None:
            if self._functions.get(function_id) is entry:
                del self._functions[function_id]
                self._in_loop(self._send_if_connected, _encoder.encode({"type": "unregisterfunction", "id": function_id}))

        return FunctionRef(id=function_id, unregister=unregister)

    def register_trigger(self, trigger: Any) -> Trigger:
        """Bind a function to a trigger type: ``{type, function_id, config, metadata?, namespace?}``."""
        request = trigger if isinstance(trigger, dict) else trigger.model_dump()
        trigger_id = str(uuid.uuid4())
        trigger_type = request["type"]
        message: dict[str, Any] = {
            "type": "registertrigger",
            "id": trigger_id,
            "trigger_type": trigger_type,
            "function_id": request["function_id"],
            "config": request.get("config"),
        }
        if request.get("metadata") is not None:
            message["metadata"] = request["metadata"]
        namespace = self._call_namespace(request.get("namespace"), "RegisterTriggerInput.namespace")
        if namespace is not None:
            message["namespace"] = namespace
        if request.get("trigger_namespace") is not None:
            message["trigger_namespace"] = request["trigger_namespace"]
        frame = _encoder.encode(message)
        self._triggers[trigger_id] = frame
        self._in_loop(self._send_if_connected, frame)

        def unregister() -> None:
            if self._triggers.pop(trigger_id, None) is not None:
                self._in_loop(
                    self._send_if_connected,
                    _encoder.encode({"type": "unregistertrigger", "id": trigger_id, "trigger_type": trigger_type}),
                )

        return Trigger(unregister)

    def register_trigger_type(self, trigger_type: Union[RegisterTriggerTypeInput, dict[str, Any]], handler: TriggerHandler[Any]) -> TriggerTypeRef[Any, Any]:
        """Provide a trigger type: ``handler`` is told about every binding of it."""
        if isinstance(trigger_type, dict):
            trigger_type = RegisterTriggerTypeInput(**trigger_type)
        message: dict[str, Any] = {
            "type": "registertriggertype",
            "id": trigger_type.id,
            "description": trigger_type.description,
        }
        for key in ("trigger_request_format", "call_request_format"):
            value = _schema(getattr(trigger_type, key))
            if value is not None:
                message[key] = value
        frame = _encoder.encode(message)
        self._trigger_types[trigger_type.id] = (frame, handler)
        self._in_loop(self._send_if_connected, frame)
        return TriggerTypeRef(
            self,
            trigger_type.id,
            trigger_type.trigger_request_format if isinstance(trigger_type.trigger_request_format, type) else None,
            trigger_type.call_request_format if isinstance(trigger_type.call_request_format, type) else None,
        )

    def unregister_trigger_type(self, trigger_type: Union[RegisterTriggerTypeInput, dict[str, Any]]) -> None:
        """Stop providing a trigger type."""
        type_id = trigger_type["id"] if isinstance(trigger_type, dict) else trigger_type.id
        self._trigger_types.pop(type_id, None)
        message: dict[str, Any] = {"type": "unregistertriggertype", "id": type_id}
        if isinstance(trigger_type, dict) and trigger_type.get("namespace") is not None:
            message["namespace"] = trigger_type["namespace"]
        self._in_loop(self._send_if_connected, _encoder.encode(message))

    # ------------------------------------------------------------------ calls

    def _call_namespace(self, explicit: Optional[str], source: str) -> Optional[str]:
        if explicit is not None and not explicit.strip():
            raise ValueError(
                f"namespace is empty: {source} was set to {explicit!r}. Give it a name, or "
                "leave it unset to stay in this worker's namespace."
            )
        return explicit if explicit is not None else self._namespace

    def _prepare(self, request: Any) -> tuple[bytes, Optional[str], str, int, bool]:
        """Encode a call: (frame, invocation id or None for void, function id, timeout, enqueue)."""
        if self._fatal is not None:
            raise self._fatal
        if self._closing:
            raise InvocationError("SHUTDOWN", "iii is shutting down", request.get("function_id") if isinstance(request, dict) else None)
        if not isinstance(request, dict):
            request = request.model_dump()
        function_id = request["function_id"]
        action = request.get("action")
        if isinstance(action, dict):
            action = TriggerActionEnqueue(queue=action["queue"]) if action.get("type") == "enqueue" else TriggerActionVoid()
        explicit = request.get("namespace")
        namespace = self._call_namespace(explicit, "TriggerRequest.namespace")
        if explicit is None and function_id.startswith(("engine::", "configuration::")):
            namespace = "default"
        payload = request.get("payload")
        metadata = request.get("metadata")
        is_void = isinstance(action, TriggerActionVoid)
        invocation_id = None if is_void else str(uuid.uuid4())
        frame = _encoder.encode(
            InvokeFunction(
                function_id=function_id,
                invocation_id=invocation_id,
                data=_raw(payload) if payload is not None else ABSENT,
                metadata=_raw(metadata) if metadata is not None else ABSENT,
                action=(
                    ActionVoid() if is_void else ActionEnqueue(queue=action.queue) if isinstance(action, TriggerActionEnqueue) else None
                ),
                namespace=namespace if namespace is not None else msgspec.UNSET,
            )
        )
        if len(frame) > MAX_MESSAGE_SIZE:
            raise InvocationError("payload_too_large", f"message of {len(frame)} bytes exceeds {MAX_MESSAGE_SIZE}", function_id)
        timeout_ms = request.get("timeout_ms") or self._timeout_ms
        return frame, invocation_id, function_id, timeout_ms, isinstance(action, TriggerActionEnqueue)

    def _start_call(self, frame: bytes, invocation_id: Optional[str], function_id: str, timeout_ms: int, resolve: Callable[[Any, Optional[BaseException]], None]) -> None:
        """On the loop: track the call, arm its timeout, send it."""
        if self._fatal is not None:
            resolve(None, self._fatal)
            return
        if self._closing:
            resolve(None, InvocationError("SHUTDOWN", "iii is shutting down", function_id))
            return
        if invocation_id is not None:
            pending = _Pending(resolve, function_id)
            pending.timer = self._loop.call_later(timeout_ms / 1000, self._time_out, invocation_id, timeout_ms)
            self._pending[invocation_id] = pending
        self._send(frame)
        if invocation_id is None:
            resolve(None, None)

    def _time_out(self, invocation_id: str, timeout_ms: int) -> None:
        pending = self._pending.pop(invocation_id, None)
        if pending is not None:
            pending.resolve(None, InvocationError("TIMEOUT", f"invocation timed out after {timeout_ms}ms", pending.function_id, None, invocation_id))

    def trigger(self, request: Any) -> Any:
        """Call a function and wait for its result (``None`` for void calls).

        Raises:
            InvocationError: the call failed (``err.code``: ``function_not_found``, ``TIMEOUT`` …).
            RegistrationRejectedError: the engine rejected this worker.
            RuntimeError: called from the client's own event loop (use ``trigger_async``).
        """
        if self._on_loop_thread():
            raise RuntimeError("Cannot call sync SDK methods from the event loop thread. Use async handler methods instead.")
        frame, invocation_id, function_id, timeout_ms, _ = self._prepare(request)
        done: concurrent.futures.Future[Any] = concurrent.futures.Future()

        def resolve(result: Any, error: Optional[BaseException]) -> None:
            if error is not None:
                done.set_exception(error)
            else:
                done.set_result(result)

        self._loop.call_soon_threadsafe(self._start_call, frame, invocation_id, function_id, timeout_ms, resolve)
        return done.result()

    async def trigger_async(self, request: Any) -> Any:
        """Like :meth:`trigger`, awaitable from any event loop."""
        frame, invocation_id, function_id, timeout_ms, _ = self._prepare(request)
        loop = asyncio.get_running_loop()
        done = loop.create_future()
        if loop is self._loop:

            def resolve(result: Any, error: Optional[BaseException]) -> None:
                if not done.done():
                    if error is not None:
                        done.set_exception(error)
                    else:
                        done.set_result(result)

            self._start_call(frame, invocation_id, function_id, timeout_ms, resolve)
        else:

            def resolve(result: Any, error: Optional[BaseException]) -> None:
                loop.call_soon_threadsafe(_settle, done, result, error)

            self._loop.call_soon_threadsafe(self._start_call, frame, invocation_id, function_id, timeout_ms, resolve)
        return await done

    # ------------------------------------------------------------------ state and lifecycle

    @property
    def worker_id(self) -> Optional[str]:
        """The id the engine gave this connection (``None`` until it said)."""
        return self._worker_id

    def get_address(self) -> str:
        return self._address

    def get_connection_state(self) -> IIIConnectionState:
        return self._state

    def add_connection_state_listener(self, handler: ConnectionStateCallback) -> Callable[[], None]:
        """Call ``handler(state)`` on every change (and once now); returns an unsubscribe."""
        self._state_listeners.append(handler)
        handler(self._state)

        def unsubscribe() -> None:
            if handler in self._state_listeners:
                self._state_listeners.remove(handler)

        return unsubscribe

    def _wait_until_connected(self, timeout: float = _CONNECT_WAIT_S) -> None:
        if self._fatal is not None:
            raise self._fatal
        connected = self._connected.wait(timeout)
        if self._fatal is not None:
            raise self._fatal
        if self._state == "failed":
            raise ConnectionError(f"Connection to {self._address} failed")
        if not connected:
            log.warning("Timed out after %ss waiting for connection to %s; continuing to retry in background", timeout, self._address)

    async def connect_async(self) -> None:
        """Wait (≤ 30 s) until the socket is open."""
        deadline = self._loop.time() + _CONNECT_WAIT_S
        while self._state != "connected" and self._fatal is None and self._state != "failed" and self._loop.time() < deadline:
            await asyncio.sleep(0.01)
        if self._fatal is not None:
            raise self._fatal

    async def _close(self) -> None:
        self._closing = True
        self._fail_pending(InvocationError("SHUTDOWN", "iii is shutting down"))
        task = getattr(self, "_task", None)
        transport = self._transport
        if transport is not None and not transport.is_disconnected:
            transport.send_close(WSCloseCode.OK)
            transport.disconnect()
            try:
                await asyncio.wait_for(transport.wait_disconnected(), 2)
            except asyncio.TimeoutError:
                pass
        if task is not None and not task.done():
            task.cancel()
            try:
                await task
            except (asyncio.CancelledError, Exception):
                pass
        self._set_state("disconnected")

    async def shutdown_async(self) -> None:
        """Close the connection cleanly; pending calls fail with ``SHUTDOWN``."""
        if self._thread is None or self._on_loop_thread():
            await self._close()
        else:
            await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(self._close(), self._loop))
            self._stop_thread()

    def shutdown(self) -> None:
        """Close the connection cleanly and stop the client's thread. Not reusable afterwards."""
        if self._thread is not None and not self._on_loop_thread():
            asyncio.run_coroutine_threadsafe(self._close(), self._loop).result(10)
            self._stop_thread()
        else:  # on the caller's loop (or from it): close in the background, without blocking it
            self._in_loop(lambda: self._loop.create_task(self._close()))

    def _stop_thread(self) -> None:
        thread = self._thread
        if thread is None or not thread.is_alive():
            return
        self._loop.call_soon_threadsafe(self._loop.stop)
        thread.join(5)
        if not thread.is_alive():
            self._loop.close()


def _call_sync(handler: Callable[..., Any], args: tuple[Any, ...]) -> Any:
    return handler(*args)


def _settle(future: "asyncio.Future[Any]", result: Any, error: Optional[BaseException]) -> None:
    if not future.done():
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(result)


def resolve_engine_url(address: Optional[str] = None) -> str:
    """Explicit address, else ``III_URL``, else :data:`DEFAULT_ENGINE_URL`."""
    return address or os.environ.get("III_URL") or DEFAULT_ENGINE_URL


def register_worker(address: Optional[str] = None, options: Optional[InitOptions] = None) -> III:
    """Connect a worker; blocks (≤ 30 s) until the socket is open.

    Raises:
        RegistrationRejectedError: the engine rejected the worker.
        ConnectionError: reconnect attempts ran out.
    """
    client = III(resolve_engine_url(address), options)
    client._wait_until_connected()
    return client


async def register_worker_async(address: Optional[str] = None, options: Optional[InitOptions] = None) -> III:
    """Connect a worker on the running event loop (no thread); waits (≤ 30 s) for the socket."""
    client = III(resolve_engine_url(address), options, loop=asyncio.get_running_loop())
    await client.connect_async()
    return client

