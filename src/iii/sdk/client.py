"""The worker client: ``register_worker`` and the :class:`III` object it returns.

A drop-in for the official ``iii-sdk`` client. By default it runs its own event loop (uvloop)
on a background thread, as the official does, so ``register_worker`` works from plain scripts;
``await register_worker_async(...)`` instead runs it on the caller's loop, with no thread.

This module is the pump: the socket (picows), the loop or thread, reconnect timing, running
handlers and call timers. What to send and what an engine frame means is decided by the
sans-I/O :class:`~iii.sdk._protocol.WorkerProtocol`. All socket and protocol work happens on the
client's loop: calls made from other threads are handed over with ``call_soon_threadsafe``. The
one exception is the synchronous :meth:`III.trigger`: when the order of this connection's frames
allows it, the calling thread makes the round trip itself on the direct call channel
(:mod:`iii.sdk._direct`, a second socket the engine takes for this worker's), without waking the
loop. ``III_DIRECT_TRIGGER=0`` turns it off.
"""

from __future__ import annotations

import _thread
import asyncio
import dataclasses
import logging
import os
import random
import threading
import time
from typing import Any, Callable, Optional, Union

import uvloop
from picows import WSCloseCode, WSFrame, WSListener, WSMsgType, WSTransport, ws_connect

from iii import codec
from iii.channels import resolve_channels
from iii.iii_constants import (
    DEFAULT_ENGINE_URL,
    DEFAULT_RECONNECTION_CONFIG,
    ConnectionStateCallback,
    FunctionRef,
    IIIConnectionState,
    InitOptions,
)
from iii.errors import InvocationError
from iii.protocol import MAX_MESSAGE_SIZE
from iii.sdk._direct import LOST, TIMED_OUT, DirectChannel
from iii.sdk._protocol import (
    Answer,
    BindTrigger,
    CallFailed,
    CallResolved,
    Event,
    InvokeHandler,
    OutboundCall,
    UnbindTrigger,
    Welcomed,
    WorkerProtocol,
    WorkerRejected,
    resolve_worker_namespace,
    shutdown_error,
    timeout_error,
    worker_metadata,
)
from iii.sdk.actions import EnqueueResult, TriggerAction, TriggerActionEnqueue, TriggerActionVoid
from iii.triggers import RegisterTriggerTypeInput, Trigger, TriggerHandler, TriggerTypeRef

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
#: How often the loop reads what waits on an idle direct call channel (the engine's pings).
_DIRECT_KEEPALIVE_S = 5
#: Attempts to open the direct call channel per connection of the worker (one per keepalive tick).
_DIRECT_ATTEMPTS = 3
#: Set to ``0`` to keep synchronous calls off the direct call channel (then they go through the
#: loop, as every other frame, on the worker's own connection).
DIRECT_TRIGGER_ENV = "III_DIRECT_TRIGGER"

#: Error codes this SDK makes itself: a call that failed with one was not answered by the engine.
_NOT_FROM_THE_ENGINE = frozenset(("TIMEOUT", "SHUTDOWN"))

_Resolve = Callable[[Any, Optional[BaseException]], None]


class _Waiter:
    """The pump's side of a call in flight: how to hand back its outcome, and its timer."""

    __slots__ = ("resolve", "timer")

    def __init__(self, resolve: _Resolve) -> None:
        self.resolve = resolve
        self.timer: Optional[asyncio.TimerHandle] = None

    def settle(self, result: Any, error: Optional[BaseException]) -> None:
        if self.timer is not None:
            self.timer.cancel()
        self.resolve(result, error)


class _BlockingWaiter:
    """A synchronous ``trigger()``'s call in flight: the calling thread blocks on a lock that the
    loop releases with the outcome (cheaper than a ``concurrent.futures.Future`` and a timer)."""

    __slots__ = ("lock", "result", "error")

    def __init__(self) -> None:
        self.lock = _thread.allocate_lock()
        self.lock.acquire()
        self.result: Any = None
        self.error: Optional[BaseException] = None

    def settle(self, result: Any, error: Optional[BaseException]) -> None:
        self.result = result
        self.error = error
        self.lock.release()


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
        namespace = resolve_worker_namespace(self._options)
        self._protocol = WorkerProtocol(
            worker_metadata(self._options, namespace), namespace, self._options.invocation_timeout_ms
        )
        self._state: IIIConnectionState = "disconnected"
        self._state_listeners: list[ConnectionStateCallback] = []
        self._transport: Optional[WSTransport] = None
        self._connected = threading.Event()
        self._flush_scheduled = False
        #: Handlers started and not finished (their answers are batched while others run).
        self._handlers_running = 0
        # Ordering of the direct channel against this connection: every batch of frames handed
        # to the loop takes a number (``_main_sent``); ``_main_settled`` is the highest number
        # that the engine is known to have processed (a later synchronous call on this
        # connection was answered). A call takes the direct channel only when both are equal,
        # so a registration made before it is in effect when it arrives.
        self._order_lock = _thread.allocate_lock()
        self._main_sent = 0
        self._main_settled = 0
        self._direct: Optional[DirectChannel] = None
        #: Set by the first call that could take the direct channel: a worker that makes none
        #: never opens it (nor shows its connection to the engine's ``workers-available`` watchers).
        self._direct_wanted = False
        self._direct_opening = False
        self._direct_attempts = 0
        self._direct_keepalive: Optional[asyncio.TimerHandle] = None
        #: ``(worker_id, reattach_token)`` of the open connection: the direct channel's proof.
        self._identity: Optional[tuple[str, str]] = None
        self._loop: asyncio.AbstractEventLoop
        if loop is None:
            # Only with the client's own thread: on the caller's loop there is no thread to spare
            # for opening it, and synchronous calls are not the way to call from there.
            if os.environ.get(DIRECT_TRIGGER_ENV) != "0":
                self._direct = DirectChannel(address, self._headers)
            self._loop = uvloop.new_event_loop()
            self._thread: Optional[threading.Thread] = threading.Thread(
                target=self._loop.run_forever, name="iii-sdk", daemon=True
            )
            self._thread.start()
        else:
            self._loop = loop
            self._thread = None
        #: The client's thread's id (``None``: on the caller's loop): ``Thread.ident`` is a
        #: property, and each synchronous call asks.
        self._thread_ident = self._thread.ident if self._thread is not None else None
        self._in_loop(self._start)

    # ------------------------------------------------------------------ loop plumbing

    def _on_loop_thread(self) -> bool:
        if self._thread_ident is not None:
            return _thread.get_ident() == self._thread_ident
        try:
            return asyncio.get_running_loop() is self._loop
        except RuntimeError:
            return False

    def _in_loop(self, callback: Callable[..., Any], *args: Any) -> int:
        """Run ``callback`` on the client's loop: now if already there, else soon. Returns its
        number in the order of what was handed to the loop (see ``_main_sent``)."""
        with self._order_lock:
            self._main_sent += 1
            number = self._main_sent
            if not self._on_loop_thread():
                self._loop.call_soon_threadsafe(callback, *args)
                return number
        callback(*args)
        return number

    def _settled(self, number: int) -> None:
        """The engine answered a call handed to the loop as ``number``: it has processed
        everything handed over before it."""
        with self._order_lock:
            if number > self._main_settled:
                self._main_settled = number

    def _start(self) -> None:
        self._task = self._loop.create_task(self._run())
        if self._direct is not None:
            self._direct_keepalive = self._loop.call_later(_DIRECT_KEEPALIVE_S, self._keep_direct_alive)

    def _open_direct(self) -> None:
        """Open the direct call channel in the background (a few attempts per connection)."""
        direct = self._direct
        if (
            direct is None
            or not self._direct_wanted
            or direct.closed
            or direct.sock is not None
            or self._direct_opening
            or self._direct_attempts >= _DIRECT_ATTEMPTS
            or self._identity is None
        ):
            return
        self._direct_attempts += 1
        self._direct_opening = True
        opened = self._loop.run_in_executor(None, direct.connect, _HANDSHAKE_TIMEOUT_S, *self._identity)
        opened.add_done_callback(self._direct_opened)

    def _direct_opened(self, opened: "asyncio.Future[bool]") -> None:
        self._direct_opening = False
        if opened.cancelled() or opened.exception() is not None or not opened.result():
            return
        direct = self._direct
        if self._identity is None or direct.worker_id != self._identity[0]:  # type: ignore[union-attr]
            # The worker's connection changed while it opened: it was opened for the old one.
            direct.close(final=False)  # type: ignore[union-attr]
            self._open_direct()
            return
        log.debug("[iii] direct call channel open")

    def _close_direct(self) -> None:
        """Close the direct call channel for good (the worker stops: shutdown, rejection, no
        more reconnects)."""
        if self._direct is not None:
            self._direct.close()
        if self._direct_keepalive is not None:
            self._direct_keepalive.cancel()

    def _keep_direct_alive(self) -> None:
        """Answer what the engine sent to the idle direct channel (pings), notice it closed."""
        direct = self._direct
        if direct is None or direct.closed:
            return
        if direct.sock is not None and direct.lock.acquire(False):
            try:
                direct.drain()
            finally:
                direct.lock.release()
        if direct.sock is None:  # failed or lost while the worker's connection stayed up
            self._open_direct()
        self._direct_keepalive = self._loop.call_later(_DIRECT_KEEPALIVE_S, self._keep_direct_alive)

    def _flush(self) -> None:
        """Write what the protocol has to send (it only has frames while connected): one frame
        through picows, several in one write."""
        frames = self._protocol.data_to_send()
        transport = self._transport
        if transport is None or not frames:
            return
        if len(frames) == 1 or transport.is_close_frame_sent or transport.is_disconnected:
            for frame in frames:
                transport.send(_TEXT, frame)
        else:
            transport.underlying_transport.write(codec.client_text_frames(frames))

    def _answered(self) -> None:
        """A handler finished and its answer is queued: written now if no other handler runs
        (one call in flight: no wait), else with the answers of those that finish in this loop
        iteration (a burst of calls: one write)."""
        self._handlers_running -= 1
        if self._handlers_running:
            self._flush_soon()
        else:
            self._flush()

    def _flush_soon(self) -> None:
        """:meth:`_flush` at the end of this loop iteration."""
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self._loop.call_soon(self._scheduled_flush)

    def _scheduled_flush(self) -> None:
        self._flush_scheduled = False
        self._flush()

    def _announce(self, frame: bytes) -> None:
        self._protocol.announce(frame)
        self._flush()

    # ------------------------------------------------------------------ connection

    def _headers(self) -> dict[str, str]:
        headers = dict(self._options.headers or {})
        token = os.environ.get("III_TOKEN")
        if token and not any(k.lower() == "authorization" for k in headers):
            headers["Authorization"] = f"Bearer {token}"
        return headers

    def _stopped(self) -> bool:
        return self._protocol.shutting_down or self._protocol.rejection is not None

    async def _run(self) -> None:
        """Connect, serve, and reconnect with backoff until shut down or rejected."""
        config = self._options.reconnection_config or DEFAULT_RECONNECTION_CONFIG
        attempt = 0
        first = True
        while not self._stopped():
            self._set_state("connecting" if first else "reconnecting")
            first = False
            try:
                # The handshake timeout does not cover the TCP connect (an unanswered SYN
                # would wait minutes): the whole attempt is bounded.
                transport, _ = await asyncio.wait_for(
                    ws_connect(
                        lambda: _Listener(self),
                        self._address,
                        websocket_handshake_timeout=_HANDSHAKE_TIMEOUT_S,
                        max_frame_size=MAX_MESSAGE_SIZE,
                        extra_headers=self._headers(),
                        enable_auto_ping=True,
                        auto_ping_idle_timeout=_PING_INTERVAL_S,
                        auto_ping_reply_timeout=_PING_INTERVAL_S,
                    ),
                    _HANDSHAKE_TIMEOUT_S,
                )
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if self._protocol.shutting_down:
                    break
                log.debug("[iii] connect to %s failed: %s", self._address, exc)
            else:
                self._transport = transport
                attempt = 0
                self._set_state("connected")
                self._connected.set()
                self._in_loop(self._protocol.connection_opened)  # the replay: ordered like the rest
                self._flush()
                await transport.wait_disconnected()
                self._protocol.connection_lost()
                self._transport = None
                self._identity = None
                if self._direct is not None:  # it shares the engine's fate: reopened with this one
                    self._direct.close(final=False)
                if self._stopped():
                    break
                self._set_state("disconnected")
            if config.max_retries >= 0 and attempt >= config.max_retries:
                self._close_direct()
                self._set_state("failed")
                self._connected.set()
                return
            delay = min(config.initial_delay_ms * config.backoff_multiplier**attempt, config.max_delay_ms)
            delay *= 1 + config.jitter_factor * (2 * random.random() - 1)
            attempt += 1
            log.debug("[iii] reconnecting in %d ms", delay)
            await asyncio.sleep(delay / 1000)

    def _set_state(self, state: IIIConnectionState) -> None:
        if state == self._state:
            return
        self._state = state
        for listener in list(self._state_listeners):
            try:
                listener(state)
            except Exception:
                log.exception("[iii] connection state listener failed")

    # ------------------------------------------------------------------ what the protocol asks for

    def _on_frame(self, raw: bytes) -> None:
        for event in self._protocol.receive(raw):
            self._handle(event)
        self._flush()

    def _handle(self, event: Event) -> None:
        match event:
            case InvokeHandler():
                self._run_handler(event)
            case CallResolved():
                event.waiter.settle(event.result, None)
            case CallFailed():
                event.waiter.settle(None, event.error)
            case BindTrigger():
                self._loop.create_task(self._bind(event))
            case UnbindTrigger():
                self._loop.create_task(self._unbind(event))
            case Welcomed():
                log.debug("[iii] the engine calls this worker %s", event.worker_id)
                if event.reattach_token:  # the direct channel opens for this connection
                    self._identity = (event.worker_id, event.reattach_token)
                    self._direct_attempts = 0
                    self._open_direct()
            case WorkerRejected():
                self._close_direct()
                self._set_state("failed")
                self._connected.set()

    def _run_handler(self, invocation: InvokeHandler) -> None:
        """Async handlers run on the loop, sync ones on the default executor's threads; channel
        refs in the data become live channel ends first (as the official SDK does)."""
        if invocation.channel_refs:
            args = invocation.args
            data = _attach_channels(args[0], self._address, self._options.headers, invocation.channel_refs)
            if data is not args[0]:  # the data is a ref itself
                invocation = dataclasses.replace(invocation, args=(data, *args[1:]))
        self._handlers_running += 1
        if invocation.is_async:
            self._loop.create_task(self._run_async(invocation))
        else:
            future = self._loop.run_in_executor(None, invocation.handler, *invocation.args)
            future.add_done_callback(lambda done: self._finish(invocation, done))

    async def _run_async(self, invocation: InvokeHandler) -> None:
        try:
            result = await invocation.handler(*invocation.args)
        except BaseException as exc:  # the official SDK reports BaseException too
            if isinstance(exc, asyncio.CancelledError) and self._protocol.shutting_down:
                self._handlers_running -= 1
                raise
            self._protocol.handler_raised(invocation, exc)
        else:
            self._protocol.handler_returned(invocation, result)
        self._answered()

    def _finish(self, invocation: InvokeHandler, done: "asyncio.Future[Any]") -> None:
        exc = done.exception()
        if exc is not None:
            self._protocol.handler_raised(invocation, exc)
        else:
            self._protocol.handler_returned(invocation, done.result())
        self._answered()

    async def _bind(self, binding: BindTrigger) -> None:
        error = None
        try:
            await binding.provider.register_trigger(binding.config)
        except Exception as exc:
            error = exc
        self._protocol.trigger_bound(binding, error)
        self._flush()

    async def _unbind(self, unbinding: UnbindTrigger) -> None:
        try:
            await unbinding.provider.unregister_trigger(unbinding.config)
        except Exception:
            log.exception("[iii] unregister_trigger of %s failed", unbinding.config.id)

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
        function = self._protocol.register_function(
            function_id,
            handler_or_invocation,
            description=description,
            metadata=metadata,
            request_format=request_format,
            response_format=response_format,
        )
        self._in_loop(self._announce, function.frame)

        def unregister() -> None:
            frame = self._protocol.unregister_function(function)
            if frame is not None:
                self._in_loop(self._announce, frame)

        return FunctionRef(id=function_id, unregister=unregister)

    def register_trigger(self, trigger: Any) -> Trigger:
        """Bind a function to a trigger type: ``{type, function_id, config, metadata?, namespace?}``."""
        request = trigger if isinstance(trigger, dict) else trigger.model_dump()
        trigger_id, frame = self._protocol.register_trigger(request)
        self._in_loop(self._announce, frame)

        def unregister() -> None:
            frame = self._protocol.unregister_trigger(trigger_id, request["type"])
            if frame is not None:
                self._in_loop(self._announce, frame)

        return Trigger(unregister)

    def register_trigger_type(self, trigger_type: Union[RegisterTriggerTypeInput, dict[str, Any]], handler: TriggerHandler[Any]) -> TriggerTypeRef[Any, Any]:
        """Provide a trigger type: ``handler`` is told about every binding of it."""
        if isinstance(trigger_type, dict):
            trigger_type = RegisterTriggerTypeInput(**trigger_type)
        self._in_loop(self._announce, self._protocol.register_trigger_type(trigger_type, handler))
        return TriggerTypeRef(
            self,
            trigger_type.id,
            trigger_type.trigger_request_format if isinstance(trigger_type.trigger_request_format, type) else None,
            trigger_type.call_request_format if isinstance(trigger_type.call_request_format, type) else None,
        )

    def unregister_trigger_type(self, trigger_type: Union[RegisterTriggerTypeInput, dict[str, Any]]) -> None:
        """Stop providing a trigger type."""
        if isinstance(trigger_type, dict):
            frame = self._protocol.unregister_trigger_type(trigger_type["id"], trigger_type.get("namespace"))
        else:
            frame = self._protocol.unregister_trigger_type(trigger_type.id)
        self._in_loop(self._announce, frame)

    # ------------------------------------------------------------------ calls

    def _start_call(self, call: OutboundCall, resolve: _Resolve) -> None:
        """On the loop: send the call, and arm its timeout unless it is settled already."""
        waiter = _Waiter(resolve)
        settled = self._protocol.start_call(call, waiter)
        self._flush()
        if settled is not None:
            self._handle(settled)
        else:  # only a call with an invocation id waits for its result
            assert call.invocation_id is not None
            waiter.timer = self._loop.call_later(call.timeout_ms / 1000, self._time_out, call.invocation_id)

    def _start_blocking_call(self, call: OutboundCall, waiter: _BlockingWaiter) -> None:
        """On the loop: send a synchronous call; its thread times it out (no timer here)."""
        settled = self._protocol.start_call(call, waiter)
        self._flush()
        if settled is not None:
            self._handle(settled)

    def _time_out(self, invocation_id: str) -> None:
        expired = self._protocol.time_out(invocation_id)
        if expired is not None:
            self._handle(expired)

    def _adopt_call(self, call: OutboundCall, waiter: _BlockingWaiter) -> None:
        """On the loop: a call whose direct channel failed after sending waits here instead."""
        settled = self._protocol.adopt_call(call, waiter)
        if settled is not None:
            self._handle(settled)

    def trigger(self, request: Any) -> Any:
        """Call a function and wait for its result (``None`` for void calls).

        A call that waits for a result goes through the direct call channel when it can (the
        calling thread sends it and reads the answer itself); otherwise through the loop.

        Raises:
            InvocationError: the call failed (``err.code``: ``function_not_found``, ``TIMEOUT`` …).
            RegistrationRejectedError: the engine rejected this worker.
            RuntimeError: called from the client's own event loop (use ``trigger_async``).
        """
        if self._on_loop_thread():
            raise RuntimeError("Cannot call sync SDK methods from the event loop thread. Use async handler methods instead.")
        call = self._protocol.prepare_call(request)
        direct = self._direct
        timeout_s = call.timeout_ms / 1000
        if (
            direct is not None
            and call.invocation_id is not None  # a void call stays in order with this connection's frames
            and not call.function_id.startswith("engine::")  # they act on the caller's connection
        ):
            if not self._direct_wanted:  # the first call that could take it: open it for the next ones
                self._direct_wanted = True
                self._loop.call_soon_threadsafe(self._open_direct)
        else:
            direct = None
        if (
            direct is not None
            and direct.sock is not None
            and self._main_settled == self._main_sent
            and self._protocol.connected  # else queued for the next connection, as the official SDK does
            and direct.lock.acquire(False)  # another thread's call has it: go through the loop
        ):
            started = time.monotonic()
            try:
                outcome = direct.call(call.frame, call.invocation_id, timeout_s)
            finally:
                direct.lock.release()
            if type(outcome) is Answer:
                if outcome.error is None:  # (Answer.outcome, inline: this is the hot path)
                    return outcome.result
                return outcome.outcome(call.function_id)
            if outcome is TIMED_OUT:
                raise timeout_error(call.function_id, call.timeout_ms, call.invocation_id)
            if outcome is LOST:  # it may run: no resend, it settles by its timeout (or shutdown)
                if self._protocol.shutting_down:  # (shutdown closes the channel)
                    raise shutdown_error(call.function_id)
                waiter = _BlockingWaiter()
                self._loop.call_soon_threadsafe(self._adopt_call, call, waiter)
                return self._wait(call, waiter, max(0.0, started + timeout_s - time.monotonic()))
            # NOT_SENT: the engine never saw it; send it through the loop.
        waiter = _BlockingWaiter()
        number = self._in_loop(self._start_blocking_call, call, waiter)
        try:
            result = self._wait(call, waiter, timeout_s)
        except InvocationError as error:
            if call.invocation_id is not None and error.code not in _NOT_FROM_THE_ENGINE:
                self._settled(number)
            raise
        if call.invocation_id is not None:
            self._settled(number)
        return result

    def _wait(self, call: OutboundCall, waiter: _BlockingWaiter, timeout_s: float) -> Any:
        """Block until the loop settles ``waiter`` (a timeout is settled on the loop)."""
        if call.invocation_id is None:  # a void call is settled as soon as it is sent
            waiter.lock.acquire()
        elif not waiter.lock.acquire(timeout=timeout_s):
            # Time it out on the loop; the waiter is settled either way (timeout or a result
            # that came in meanwhile).
            self._loop.call_soon_threadsafe(self._time_out, call.invocation_id)
            waiter.lock.acquire()
        if waiter.error is not None:
            raise waiter.error
        return waiter.result

    async def trigger_async(self, request: Any) -> Any:
        """Like :meth:`trigger`, awaitable from any event loop."""
        call = self._protocol.prepare_call(request)
        loop = asyncio.get_running_loop()
        done = loop.create_future()
        if loop is self._loop:
            self._in_loop(self._start_call, call, lambda result, error: _settle(done, result, error))
        else:

            def resolve(result: Any, error: Optional[BaseException]) -> None:
                loop.call_soon_threadsafe(_settle, done, result, error)

            self._in_loop(self._start_call, call, resolve)
        return await done

    # ------------------------------------------------------------------ state and lifecycle

    @property
    def worker_id(self) -> Optional[str]:
        """The id the engine gave this connection (``None`` until it said)."""
        return self._protocol.worker_id

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
        self._raise_if_rejected()
        connected = self._connected.wait(timeout)
        self._raise_if_rejected()
        if self._state == "failed":
            raise ConnectionError(f"Connection to {self._address} failed")
        if not connected:
            log.warning("Timed out after %ss waiting for connection to %s; continuing to retry in background", timeout, self._address)

    async def connect_async(self) -> None:
        """Wait (≤ 30 s) until the socket is open."""
        deadline = self._loop.time() + _CONNECT_WAIT_S
        while self._state not in ("connected", "failed") and self._loop.time() < deadline:
            await asyncio.sleep(0.01)
        self._raise_if_rejected()

    def _raise_if_rejected(self) -> None:
        if self._protocol.rejection is not None:
            raise self._protocol.rejection

    async def _close(self) -> None:
        for event in self._protocol.shut_down():
            self._handle(event)
        self._close_direct()
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


def _attach_channels(
    data: Any, engine_ws_base: str, headers: Optional[dict[str, str]], most: Optional[int] = None
) -> Any:
    """:func:`~iii.channels.resolve_channels` for a call's freshly decoded data, cheaper: refs are
    replaced in place and only containers are visited (an HTTP request's data holds two refs
    among a dozen plain values). ``most``: how often ``"access_key"`` occurs in the raw data;
    once that many refs are found among the top-level values (an HTTP request's two), there
    can be no other and the rest is not visited."""
    if most is not None and type(data) is dict and "access_key" not in data:
        found = 0
        for key, value in data.items():
            if type(value) is dict and "access_key" in value:
                data[key] = end = resolve_channels(value, engine_ws_base, headers)
                if type(end) is not dict:
                    found += 1
        if found == most:
            return data
        # more to find: the walk below visits all (what was resolved stays as it is)
    if type(data) is dict:
        if "access_key" in data:  # a ref, or a dict holding that key: resolve_channels decides
            return resolve_channels(data, engine_ws_base, headers)
        for key, value in data.items():
            kind = type(value)
            if kind is dict or kind is list:
                data[key] = _attach_channels(value, engine_ws_base, headers)
    elif type(data) is list:
        for index, value in enumerate(data):
            kind = type(value)
            if kind is dict or kind is list:
                data[index] = _attach_channels(value, engine_ws_base, headers)
    return data


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

