"""The engine's routing core: a sans-I/O state machine (frames in, frames out).

The I/O layer calls :meth:`Router.connect`, :meth:`Router.receive` (one complete text message),
:meth:`Router.disconnect`, :meth:`Router.expire_grace` and :meth:`Router.expire_calls`; the router
answers by calling the ``send`` / ``close`` callables it was given for each connection. Time comes
from the ``clock`` it is given; deferred work (fan-out after a write, the coalesced
``engine::functions-available`` event) is handed to the ``defer`` callable, and the earliest
deadline of the engine's own calls to ``wake``, so tests drive everything without sockets or a
loop. The router is the modules' :class:`~iii.engine.host.Host`.

Invocation payloads are never decoded on the routing path: ``data`` travels as raw JSON bytes
with ``_caller_worker_id`` spliced in, results are forwarded as the bytes the owner sent.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from functools import partial
from time import perf_counter_ns
from typing import Any, Callable, Optional

import msgspec
from msgspec import UNSET

from iii import codec
from iii.codec import ROUTE_INVOKE
from iii.engine import rbac
from iii.engine.channels import ChannelRegistry, RandomIds
from iii.engine.host import DEFAULT_INVOCATION_TIMEOUT_MS, KindCounts, MetricFamily
from iii.engine.invocations import Invocations, Pending, TimedPending
from iii.engine.registry import (
    ABORTED,
    PENDING,
    RESOLVED,
    Binding,
    Connection,
    EngineError,
    FunctionEntry,
    Module,
    TriggerType,
)
from iii.engine.stats import EngineStats
from iii.protocol import (
    DEFAULT_GRACE_MS,
    ABSENT,
    DEFAULT_NAMESPACE,
    HELD_TYPES,
    LEGACY_FUNCTION_IDS,
    ActionEnqueue,
    ErrorBody,
    ErrorCode,
    InvocationResult,
    InvokeFunction,
    Ping,
    Pong,
    Reattach,
    RegisterFunction,
    RegisterService,
    RegisterTrigger,
    RegisterTriggerType,
    RegistrationRejected,
    TriggerRegistrationResult,
    UnregisterFunction,
    UnregisterTrigger,
    UnregisterTriggerType,
    WireId,
    WorkerRegistered,
    is_blank,
)

__all__ = ["Router"]

log = logging.getLogger("iii.engine")

_PONG = codec.encode_message(Pong())
_WORKERS_REGISTER = "engine::workers::register"


#: UUID v4 strings, 256 per ``getrandom`` (``uuid.uuid4()`` costs a system call each).
_new_id = RandomIds()


def _namespace_error(field: str) -> ErrorBody:
    return ErrorBody(
        ErrorCode.INVALID_NAMESPACE,
        f"`{field}` is empty: it was named and left blank. Give it a name, or omit it to use "
        "`default`.",
    )


def _decode_raw(raw: Any) -> Any:
    """Decoded JSON of an optional raw field (``None`` when absent)."""
    return codec.decode_json(raw) if raw else None


def _who(conn: Connection) -> str:
    """A connection as debug logs name it: its worker name (once known) and id."""
    return f"{conn.name} ({conn.id})" if conn.name else conn.id


#: What a call to another engine's function in a namespace other than ``default`` carries.
_NAMESPACE_FIELD = b'"namespace":%s,'
_INVOKE_TYPE = b'{"type":"invokefunction",'


_PEER_CALL = b'{"type":"invokefunction","invocation_id":"'
_PEER_FUNCTION = b'","function_id":"'
_PEER_DATA = b'","data":'


def _peer_call(frame: bytes) -> Optional[tuple[str, str]]:
    """``(invocation_id, function_id)`` of a call in the exact shape ``codec.encode_invoke`` gives
    it (what a peer engine's router sends), read without decoding; ``None`` for anything else
    (escaped or non-ASCII ids included), which the full decoder then reads."""
    if not frame.startswith(_PEER_CALL):
        return None
    start = len(_PEER_CALL)
    end = frame.find(b'"', start)
    if end < 0 or not frame.startswith(_PEER_FUNCTION, end):
        return None
    function_start = end + len(_PEER_FUNCTION)
    function_end = frame.find(b'"', function_start)
    if function_end < 0 or not frame.startswith(_PEER_DATA, function_end):
        return None
    invocation_id = frame[start:end]
    function_id = frame[function_start:function_end]
    if b"\\" in invocation_id or b"\\" in function_id or not (invocation_id + function_id).isascii():
        return None
    return invocation_id.decode(), function_id.decode()


def _in_namespace(field: bytes, write: Callable[[bytes], None], frame: bytes) -> None:
    """Write a call (as ``codec.encode_invoke`` made it) with its namespace: the engine that
    owns the function looks it up there."""
    write(_INVOKE_TYPE + field + frame[len(_INVOKE_TYPE):])


class _NoEvents:
    """Where discovery events go until ``engine::*`` is installed (a router in a test)."""

    def workers_changed(self, event: str, worker_id: str) -> None:
        pass

    def functions_changed(self) -> None:
        pass

    def snapshot(self) -> dict[str, Any]:
        return {"workers": [], "functions": [], "triggers": [], "trigger_types": []}


class Router:
    """Registry and router of one engine.

    Args:
        grace_ms: how long registrations of a connection are held waiting for its namespace.
        clock: the time in milliseconds (the server passes the loop's clock, tests a fake one).
        defer: schedules a callable to run soon (the server passes ``loop.call_soon``); with
            ``None`` the owner calls :meth:`flush_events` itself.
        wake: ``wake(deadline_ms)`` asks the owner to call :meth:`expire_calls` at that time on
            ``clock`` (a call with an earlier deadline than any before was made); ``None``: the
            owner calls it when it likes.
        batch: asks the owner to hold what is sent until the current loop turn ends and then
            write it once per worker; called before the engine's own sends that come in
            bursts (calls it makes, answers of built-ins that waited, e.g. for a commit).
        join_batch: ``join_batch(flushable)``: ``True`` if such a hold is under way, and
            ``flushable.flush()`` will run when it ends (a cluster link's writes join it).
        new_id: id generator (tests pass a deterministic one).
    """

    def __init__(
        self,
        *,
        grace_ms: int = DEFAULT_GRACE_MS,
        clock: Callable[[], int] = lambda: 0,
        defer: Optional[Callable[[Callable[[], None]], None]] = None,
        wake: Optional[Callable[[int], None]] = None,
        batch: Optional[Callable[[], None]] = None,
        new_id: Callable[[], str] = _new_id,
        version: str = "0.0.0",
        join_batch: Optional[Callable[[Any], bool]] = None,
    ) -> None:
        self.grace_ms = grace_ms
        self.version = version
        self.now_ms = clock
        self.new_id = new_id
        self._defer = defer
        self._wake = wake
        self._batch = batch
        self._join_batch = join_batch
        # The registry: who is connected, what they offer, who waits for what.
        self.connections: dict[str, Connection] = {}
        #: namespace -> function id -> entry (two lookups, no tuple per call).
        self.functions: dict[str, dict[str, FunctionEntry]] = {}
        #: ``(namespace, type id)`` -> provider.
        self.trigger_types: dict[tuple[str, str], TriggerType] = {}
        #: Bindings handed to their provider, by id.
        self.bindings: dict[str, Binding] = {}
        #: Bindings waiting for a provider of their type, by id.
        self.parked: dict[str, Binding] = {}
        self.invocations = Invocations()
        #: Data channels (``engine::channels::create``, the HTTP module's request/response pairs).
        self.channels = ChannelRegistry(clock)
        #: The same dict as ``invocations.pending``, bound for the hot path.
        self.pending: dict[str, Pending] = self.invocations.pending
        #: ``(namespace, worker name)`` -> the connection leasing it.
        self.names: dict[tuple[str, str], Connection] = {}
        #: In-process modules, listed by ``engine::workers::list``.
        self.modules: list[Module] = []
        #: Receives discovery events (``install_engine_functions`` sets it).
        self.events: Any = _NoEvents()
        #: Calls by function, workers seen (read by the metrics page and ``engine::metrics::list``).
        self.stats = EngineStats()
        #: Where telemetry goes (the observability module's ``TelemetrySink``), if anywhere.
        self.telemetry: Any = None
        #: ``(traceparent, baggage)`` of the traced call being handled: the calls the engine makes
        #: meanwhile (and in what it defers with :meth:`later`) carry it, so their trace goes on.
        self.trace_context: Optional[tuple[str, Optional[str]]] = None
        self._metric_sources: list[Callable[[], list[MetricFamily]]] = []
        self._functions_dirty = False
        #: Another engine's functions changed (the event fires even if the set of ids did not).
        self._remote_changed = False
        self._later: list[Callable[[], None]] = []
        #: ``iii-http-functions``' maker of HTTP-invoked functions (``None``: not running).
        self._http_functions: Optional[Callable[[str, Any], Callable[..., Any]]] = None
        self._route_frame = codec.route_frame
        #: Cluster (``iii-cluster``): functions owned on other engines. ``(namespace, id)`` -> the
        #: entry calls are routed through (its ``replicas`` the owners, one per engine), installed
        #: in ``functions`` while no worker of this engine owns the function.
        self.remote: dict[tuple[str, str], FunctionEntry] = {}
        #: engine id -> ``(namespace, id)`` -> that engine's own entry (what the lists show).
        self.remote_owners: dict[str, dict[tuple[str, str], FunctionEntry]] = {}
        #: The token a peer engine's link presents (``None``: no peers accepted).
        self.peer_token: Optional[str] = None
        #: The cluster's view of the other engines' workers and triggers, for the lists
        #: (``engine::*``); ``None`` on an engine alone.
        self.cluster: Any = None
        #: The worker listeners' URLs once bound, and who waits for them.
        self.urls: list[str] = []
        self._on_listening: list[Callable[[list[str]], None]] = []
        self._registry_watchers: list[Callable[[], None]] = []
        self._handlers: dict[type, Callable[[Connection, Any, bytes], None]] = {
            InvokeFunction: self._on_invoke,
            InvocationResult: self._on_result,
            RegisterFunction: self._on_register_function,
            UnregisterFunction: self._on_unregister_function,
            RegisterTriggerType: self._on_register_trigger_type,
            UnregisterTriggerType: self._on_unregister_trigger_type,
            RegisterTrigger: self._on_register_trigger,
            UnregisterTrigger: self._on_unregister_trigger,
            TriggerRegistrationResult: self._on_trigger_registration_result,
            Reattach: self._on_reattach,
            RegisterService: self._on_register_service,
            Ping: self._on_ping,
            Pong: self._on_pong,
        }
        self._functions_fingerprint = self._fingerprint()
        #: Debug logging (registrations, each call with its outcome and latency), decided once:
        #: with it off nothing is spent on it; with it on every frame takes the full path, where
        #: calls are logged (``forward`` declines them all).
        self._debug = log.isEnabledFor(logging.DEBUG)
        #: Calls in flight, while debugging: key -> (perf_counter at start, caller, function id).
        self._debug_calls: dict[str, tuple[float, str, str]] = {}
        if self._debug:
            self.forward = lambda conn, routed, frame: False  # type: ignore[method-assign]

    # ------------------------------------------------------------------ connections

    def connect(
        self,
        send: Callable[[bytes], None],
        close: Callable[[], None],
        ip: Optional[str],
        now_ms: int,
        session: Optional[rbac.Session] = None,
    ) -> Connection:
        """Admit a new worker connection: sends ``workerregistered``, fires ``worker_connected``.

        A connection with a ``session`` (an RBAC or middleware listener's) has its calls and
        registrations checked; its calls never take :meth:`forward`'s fast path.
        """
        worker_id = self.new_id()
        conn = Connection(
            worker_id, self.new_id(), send, close, codec.caller_field(worker_id), ip, now_ms
        )
        conn.session = session
        self.connections[worker_id] = conn
        self.stats.spawns += 1
        send(codec.encode_message(WorkerRegistered(worker_id=worker_id, reattach_token=conn.token)))
        self.fire_workers_available("worker_connected", worker_id)
        return conn

    def connect_call_channel(
        self,
        owner_id: str,
        owner_token: str,
        send: Callable[[bytes], None],
        close: Callable[[], None],
        ip: Optional[str],
        now_ms: int,
    ) -> Optional[Connection]:
        """Admit a worker's call channel: a second connection on which its process makes calls
        from another thread (our SDK's synchronous ``trigger()``), proven by the worker's
        ``reattach_token`` (known only to it). Its calls are the worker's: same
        ``_caller_worker_id``, same RBAC session. It is not a worker: not listed, no
        ``workers-available`` event, it may register nothing, and it closes with its worker.
        Sends ``workerregistered`` with the worker's own id (how the SDK knows it was taken for
        one). Returns ``None`` (nothing sent) when ``owner_id`` names no live connection with that
        token."""
        owner = self.connections.get(owner_id)
        if owner is None or owner.state == ABORTED or not owner_token or owner_token != owner.token:
            return None
        conn = Connection(owner.id, self.new_id(), send, close, owner.caller_field, ip, now_ms)
        conn.owner = owner
        conn.session = owner.session
        conn.state = RESOLVED
        owner.call_channels.append(conn)
        send(codec.encode_message(WorkerRegistered(worker_id=owner.id, reattach_token=conn.token)))
        return conn

    def handle_call_channel(self, conn: Connection, frame: bytes) -> None:
        """:meth:`handle` for a call channel: calls and pings only; anything else is dropped
        as a bad frame (the channel owns nothing), and ``engine::workers::register`` is refused
        (its worker is registered on its own connection)."""
        msg = self._decode(conn, frame)
        if msg is None:
            return
        msg_type = type(msg)
        if msg_type is not InvokeFunction and msg_type is not Ping and msg_type is not Pong:
            self._on_bad_frame(conn, frame, ValueError("a call channel only makes calls"))
            return
        if msg_type is InvokeFunction and LEGACY_FUNCTION_IDS.get(msg.function_id, msg.function_id) == _WORKERS_REGISTER:
            message = "a call channel cannot register a worker: its worker registers on its own connection"
            self._reply_error(conn, msg.invocation_id, msg.function_id, ErrorBody(ErrorCode.FORBIDDEN, message))
            return
        self._handlers[msg_type](conn, msg, frame)

    def receive(self, conn: Connection, frame: bytes) -> None:
        """Process one complete message from ``conn``; bad frames are logged and dropped.

        The same as :meth:`forward` where ``route_frame`` routes the frame, :meth:`handle` where
        it does not (or :meth:`forward` declines). The listeners call those two themselves for
        whole frames; this serves reassembled fragments and tests.
        """
        routed = self._route_frame(frame, conn.caller_field)
        forward = self.forward if conn.session is None else self.forward_answer
        if routed is None or not forward(conn, routed, frame):
            self.handle(conn, frame)

    def forward(self, conn: Connection, routed: tuple, frame: Optional[bytes]) -> bool:
        """The hot path: route a plain call to a worker, or an answer to a worker's call.

        ``routed`` is what ``codec.route_frame`` made of the frame; ``frame`` itself is needed only
        for an answer (forwarded as received). This does what :meth:`_on_invoke` and
        :meth:`_on_result` do for these, written out flat because it runs for every call. Returns
        ``False``, having changed nothing, when the frame needs the full path (:meth:`handle`): a
        call to a built-in or unknown function or with an id in flight, an answer the engine
        itself awaits.
        """
        if conn.state == ABORTED:
            return True
        kind, invocation_id, function_id, forward = routed
        pending = self.pending.get(invocation_id)
        if kind == ROUTE_INVOKE:
            by_id = self.functions.get(DEFAULT_NAMESPACE)
            fn = by_id.get(function_id) if by_id is not None else None
            if pending is not None or fn is None or fn.handler is not None or fn.local_id is not None:
                return False
            target = fn.owner
            conn.invocations_made += 1
            stats = fn.stats
            stats.calls += 1
            # Invocations.open, inline.
            if stats.calls & stats.mask:
                self.pending[invocation_id] = Pending(conn, target, function_id)
            else:  # a sample is timed
                self.pending[invocation_id] = TimedPending(
                    conn, target, function_id, stats=stats, started_ns=perf_counter_ns()
                )
            target.invocations.add(invocation_id)
            target.inbound_active += 1
            conn.invocations.add(invocation_id)
            target.send(forward)
            return True
        if pending is None or pending.target is not conn:
            return True  # a late answer (caller gone, void call, replayed after a reconnect)
        caller = pending.caller
        if caller is None:  # a void or engine-originated call: the full path settles it
            return False
        # Invocations.settle, inline.
        del self.pending[invocation_id]
        if pending.timed:
            pending.stats.observe_ns(perf_counter_ns() - pending.started_ns)
        conn.invocations.discard(invocation_id)
        conn.inbound_active -= 1
        caller.invocations.discard(invocation_id)
        conn.invocations_handled += 1
        if caller.state != ABORTED:
            caller.send(frame)
        return True

    def forward_answer(self, conn: Connection, routed: tuple, frame: Optional[bytes]) -> bool:
        """:meth:`forward` for a connection with a session: its answers take the fast path, its
        calls the full one (where the session's rules apply)."""
        if routed[0] == ROUTE_INVOKE:
            return False
        return self.forward(conn, routed, frame)

    def handle(self, conn: Connection, frame: bytes) -> None:
        """The full path: decode the frame (payloads stay raw) and act on the message."""
        msg = self._decode(conn, frame)
        if msg is None:
            return
        if conn.gate is not None:
            self._hold_behind_hook(conn, msg, frame)
            return
        msg_type = type(msg)
        if conn.state == PENDING and msg_type in HELD_TYPES:
            conn.held.append(msg)
            return
        self._handlers[msg_type](conn, msg, frame)

    def _decode(self, conn: Connection, frame: bytes) -> Any:
        """The message in ``frame`` (payloads stay raw); ``None`` when ``conn`` is gone or the
        frame is bad (logged and dropped)."""
        if conn.state == ABORTED:
            return None
        try:
            return codec.decode_frame(frame)
        except codec.DecodeError as exc:
            self._on_bad_frame(conn, frame, exc)
            return None

    def disconnect(self, conn: Connection) -> None:
        """Clean up after a connection (idempotent; protocol.md §5.3)."""
        if conn.owner is not None:
            self._disconnect_call_channel(conn)
            return
        if conn.state == ABORTED and conn.id not in self.connections:
            return
        conn.state = ABORTED
        for channel in list(conn.call_channels):
            self._disconnect_call_channel(channel)
            channel.close()
        conn.held.clear()
        conn.gate = None
        for ns, function_id in list(conn.functions):
            self._remove_function(conn, ns, function_id)
        self._halt_invocations(conn)
        self._drop_bindings_of(conn)
        for tt in [t for t in self.trigger_types.values() if t.owner is conn]:
            self._remove_trigger_type(tt)
        if conn.name is not None and self.names.get((conn.namespace, conn.name)) is conn:
            del self.names[(conn.namespace, conn.name)]
        if self.connections.pop(conn.id, None) is not None:  # a peer engine's link is not listed
            self.stats.deaths += 1
            self.stats.frames_dropped_gone += conn.frames_dropped
            self.fire_workers_available("worker_disconnected", conn.id)

    def _disconnect_call_channel(self, channel: Connection) -> None:
        """Forget a call channel (idempotent); its counts go to its worker's."""
        if channel.state == ABORTED:
            return
        channel.state = ABORTED
        self._halt_invocations(channel)
        owner = channel.owner
        owner.call_channels.remove(channel)  # type: ignore[union-attr]
        owner.invocations_made += channel.invocations_made  # type: ignore[union-attr]
        owner.frames_dropped += channel.frames_dropped  # type: ignore[union-attr]

    def expire_grace(self, conn: Connection) -> None:
        """The grace period ended: a connection still without namespace gets ``default``."""
        if conn.state == PENDING:
            self._resolve_namespace(conn, DEFAULT_NAMESPACE)

    def _resolve_namespace(self, conn: Connection, namespace: str) -> None:
        conn.namespace = namespace
        conn.state = RESOLVED
        held, conn.held = conn.held, []
        for msg in held:
            if conn.gate is not None:  # a registration hook started: the rest waits for it
                self._hold_behind_hook(conn, msg, b"")
                continue
            try:
                self._handlers[type(msg)](conn, msg, b"")
            except Exception:  # one bad held message must not stop the drain
                log.exception("worker %s: applying a held %s failed", conn.id, type(msg).__name__)

    def gate(self, conn: Connection) -> None:
        """Hold what ``conn`` sends next until :meth:`ungate` (a registration hook is running:
        the session's messages keep their order around it)."""
        if conn.gate is None:
            conn.gate = deque()
            conn.gate_bytes = 0

    def ungate(self, conn: Connection) -> None:
        """The hook answered: act on the held messages, up to the next one that starts a hook."""
        gate, conn.gate = conn.gate, None
        while gate and conn.state != ABORTED:
            msg, frame = gate.popleft()
            conn.gate_bytes -= len(frame)
            if conn.state == PENDING and type(msg) in HELD_TYPES:
                conn.held.append(msg)
                continue
            try:
                self._handlers[type(msg)](conn, msg, frame)
            except Exception:
                log.exception("worker %s: a held %s failed", conn.id, type(msg).__name__)
            if conn.gate is not None:  # another hook started: the rest waits for that one
                conn.gate = gate
                return

    def _hold_behind_hook(self, conn: Connection, msg: Any, frame: bytes) -> None:
        gate = conn.gate
        gate.append((msg, frame))  # type: ignore[union-attr]
        conn.gate_bytes += len(frame)
        if len(gate) > rbac.MAX_GATED_MESSAGES or conn.gate_bytes > rbac.MAX_GATED_BYTES:  # type: ignore[arg-type]
            log.warning(
                "worker %s sent more than %d messages (%d bytes) while a registration hook ran: disconnecting it",
                conn.id, rbac.MAX_GATED_MESSAGES, rbac.MAX_GATED_BYTES,
            )
            self.disconnect(conn)
            conn.close()

    def _on_bad_frame(self, conn: Connection, frame: bytes, exc: Exception) -> None:
        conn.frames_dropped += 1
        probe = codec.probe_frame(frame)
        # Logged once per connection and kind of frame; the rest are only counted.
        if conn.dropped_kinds is None:
            conn.dropped_kinds = KindCounts()
        if conn.dropped_kinds.first(probe.type):
            log.warning(
                "worker %s: dropped a frame (type %r): %s (further bad %r frames of this worker "
                "are counted in frames_dropped, not logged)",
                conn.id,
                probe.type,
                exc,
                probe.type,
            )
        # A call that names its invocation id gets an error instead of waiting for its timeout.
        if probe.type == "invokefunction" and probe.invocation_id:
            conn.send(
                codec.encode_error_result(
                    probe.invocation_id,
                    "",
                    ErrorBody(ErrorCode.DESERIALIZATION_ERROR, f"Invalid invokefunction: {exc}"),
                )
            )
        # So does the caller of an answer that cannot be relayed (invalid UTF-8, say).
        elif probe.type == "invocationresult" and probe.invocation_id:
            pending = self.pending.get(probe.invocation_id)
            if pending is not None and pending.target is conn:
                self.invocations.settle(probe.invocation_id)
                conn.invocations_failed += 1
                self._fail_call(probe.invocation_id, pending, ErrorBody(
                    ErrorCode.DESERIALIZATION_ERROR,
                    f"The answer of {pending.function_id} could not be relayed: {exc}",
                ))

    def _on_reattach(self, conn: Connection, msg: Reattach, frame: bytes) -> None:
        old = self.connections.get(msg.previous_worker_id)
        if old is None or old is conn or not msg.reattach_token or msg.reattach_token != old.token:
            return
        self.disconnect(old)
        old.close()

    def _on_ping(self, conn: Connection, msg: Ping, frame: bytes) -> None:
        conn.send(_PONG)

    def _on_pong(self, conn: Connection, msg: Pong, frame: bytes) -> None:
        pass

    def _on_register_service(self, conn: Connection, msg: RegisterService, frame: bytes) -> None:
        # Services are cosmetic (console grouping) and no current SDK sends them.
        log.debug("worker %s: registerservice %s ignored", conn.id, msg.id)

    # ------------------------------------------------------------------ functions

    def find_function(self, namespace: str, function_id: str) -> Optional[FunctionEntry]:
        by_id = self.functions.get(namespace)
        return by_id.get(function_id) if by_id is not None else None

    def namespaces_of(self, function_id: str) -> list[str]:
        return sorted(ns for ns, by_id in self.functions.items() if function_id in by_id)

    def all_functions(self) -> list[FunctionEntry]:
        return [fn for by_id in self.functions.values() for fn in by_id.values()]

    def add_function(
        self,
        function_id: str,
        handler: Callable[[Router, Optional[Connection], Any], Any],
        *,
        module: str,
        description: Optional[str] = None,
        request_format: Any = None,
        response_format: Any = None,
        metadata: Any = None,
    ) -> None:
        """Register an in-process function in ``default``.

        ``handler(router, caller, data)`` gets the decoded payload and the calling connection
        (``None`` for engine-originated calls); it returns the result, raises
        :class:`EngineError`, or returns an :class:`asyncio.Future` of the result.
        """
        self.functions.setdefault(DEFAULT_NAMESPACE, {})[function_id] = FunctionEntry(
            function_id,
            DEFAULT_NAMESPACE,
            handler=handler,
            module=module,
            description=description,
            request_format=request_format,
            response_format=response_format,
            metadata=metadata,
            stats=self.stats.of(DEFAULT_NAMESPACE, function_id, True),
        )
        self._functions_changed()

    def _on_register_function(self, conn: Connection, msg: RegisterFunction, frame: bytes) -> None:
        if conn.session is None:
            self._register_function(conn, msg)
        else:
            rbac.register_function(self, conn, msg, self._register_function)

    def _register_function(self, conn: Connection, msg: RegisterFunction) -> None:
        ns = conn.namespace
        function_id = msg.id
        if msg.invocation and self._http_functions is None:
            log.warning(
                "worker %s: %s is an HTTP-invoked function and was not registered: the "
                "iii-http-functions module is opt-in (add `- name: iii-http-functions` to config.yaml)",
                conn.id,
                function_id,
            )
            return
        existing = self.find_function(ns, function_id)
        owner_id: Optional[str] = None
        if function_id.startswith("engine::") and (ns != DEFAULT_NAMESPACE or existing is None):
            owner_id = ""  # engine:: ids are reserved: only the engine's own live in `default`
        elif existing is not None and existing.owner is None:
            owner_id = ""  # built-ins cannot be replaced by a worker
        elif (
            existing is not None and existing.owner is not conn and not existing.owner.closed
            and existing.replicas is None  # a function of other engines: a local owner is preferred
        ):
            owner_id = existing.owner.id
        if owner_id is not None:
            log.warning(
                "worker %s: function %s in namespace %s refused (owned by %r)",
                conn.id,
                function_id,
                ns,
                owner_id or "the engine",
            )
            conn.send(
                codec.encode_message(
                    RegistrationRejected(ErrorCode.FUNCTION_NAMESPACE_CONFLICT, ns, owner_id, function_id=function_id)
                )
            )
            return
        handler = None
        if msg.invocation:
            try:
                handler = self._http_functions(function_id, _decode_raw(msg.invocation))  # type: ignore[misc]
            except EngineError as exc:
                log.warning("worker %s: HTTP-invoked function %s refused: %s", conn.id, function_id, exc.message)
                return
        if existing is not None and existing.owner is not conn and existing.replicas is None:
            existing.owner.functions.discard((ns, function_id))
        self.functions.setdefault(ns, {})[function_id] = entry = FunctionEntry(
            function_id,
            ns,
            owner=conn,
            handler=handler,
            description=msg.description,
            request_format=_decode_raw(msg.request_format),
            response_format=_decode_raw(msg.response_format),
            metadata=_decode_raw(msg.metadata),
            stats=self.stats.of(ns, function_id, handler is not None),  # HTTP-invoked: run in-process
        )
        if conn.session is not None and conn.session.prefix is not None:
            entry.local_id = function_id[len(conn.session.prefix) + 2:]
        conn.functions.add((ns, function_id))
        self._functions_changed()
        if self._debug:
            log.debug("worker %s registered function %s (namespace %s)", _who(conn), function_id, ns)

    def serve_http_functions(self, make_handler: Callable[[str, Any], Callable[..., Any]]) -> None:
        """Serve ``registerfunction`` frames with an ``invocation``: ``make_handler(id,
        invocation)`` returns the in-process handler that calls the URL (or raises
        :class:`EngineError` to refuse it); the function stays owned by the registering worker."""
        self._http_functions = make_handler

    def _on_unregister_function(
        self, conn: Connection, msg: UnregisterFunction, frame: bytes
    ) -> None:
        function_id = msg.id if conn.session is None else conn.session.registered_id(msg.id)
        self._remove_function(conn, conn.namespace, function_id)

    def _remove_function(self, conn: Connection, ns: str, function_id: str) -> None:
        """Compare-and-delete: only the owner removes its function."""
        conn.functions.discard((ns, function_id))
        by_id = self.functions.get(ns)
        if by_id is None:
            return
        fn = by_id.get(function_id)
        if fn is not None and fn.owner is conn:
            remote = self.remote.get((ns, function_id))
            if remote is not None:  # other engines own it too: calls go there now
                by_id[function_id] = remote
            else:
                del by_id[function_id]
                if not by_id:
                    del self.functions[ns]
            self._functions_changed()

    def _functions_changed(self) -> None:
        if not self._functions_dirty:
            self._functions_dirty = True
            if self._defer is not None:
                self._defer(self.flush_events)

    def later(self, callback: Callable[[], None]) -> None:
        """Run ``callback`` once the message being handled is done (trigger fan-out after the
        write that caused it): through ``defer`` in the server, else at :meth:`flush_events`."""
        if self.trace_context is not None:
            callback = partial(self._in_trace_context, self.trace_context, callback)
        self._later.append(callback)
        if len(self._later) == 1 and self._defer is not None:
            self._defer(self._run_later)

    def _in_trace_context(self, context: tuple[str, Optional[str]], callback: Callable[[], None]) -> None:
        saved, self.trace_context = self.trace_context, context
        try:
            callback()
        finally:
            self.trace_context = saved

    def _run_later(self) -> None:
        callbacks, self._later = self._later, []
        for callback in callbacks:
            try:
                callback()
            except Exception:  # one module's bug must not cost the others their callbacks
                log.exception("deferred engine work failed")

    def _fingerprint(self) -> frozenset[tuple[str, str]]:
        return frozenset((ns, fid) for ns, by_id in self.functions.items() for fid in by_id)

    def flush_events(self) -> None:
        """Fire ``engine::functions-available`` if the set of functions changed since last time.

        Changes made within one batch (one loop tick in the server) give one event; an add
        undone in the same batch gives none. Without a ``defer``, it also runs what
        :meth:`later` queued.
        """
        if self._later and self._defer is None:
            self._run_later()
        if not self._functions_dirty:
            return
        self._functions_dirty = False
        self._registry_changed()
        fingerprint = self._fingerprint()
        if fingerprint == self._functions_fingerprint and not self._remote_changed:
            return
        self._functions_fingerprint = fingerprint
        self._remote_changed = False
        self.events.functions_changed()

    # ------------------------------------------------------------------ invocations

    def _on_invoke(self, conn: Connection, msg: InvokeFunction, frame: bytes) -> None:
        invocation_id = msg.invocation_id
        action = msg.action
        # Only a plain call with an id gets an answer; void (or id-less) calls get none.
        answer_to = conn if invocation_id is not None and action is None else None
        ns = msg.namespace
        if ns is UNSET:
            ns = DEFAULT_NAMESPACE
        elif ns is None or is_blank(ns):
            self._reply_error(answer_to, invocation_id, msg.function_id, _namespace_error("namespace"))
            return
        if conn.session is not None and rbac.screen_call(self, conn, conn.session, msg, ns):
            return
        if type(action) is ActionEnqueue:
            self._enqueue(conn, msg, ns)
            return
        function_id = msg.function_id
        by_id = self.functions.get(ns)
        fn = by_id.get(function_id) if by_id is not None else None
        if fn is None and function_id in LEGACY_FUNCTION_IDS:  # an older SDK's name for it
            fn = self.find_function(DEFAULT_NAMESPACE, LEGACY_FUNCTION_IDS[function_id])
        if fn is None:
            error = self._not_found(function_id, ns)
            if answer_to is None:
                log.info("worker %s: void call failed: %s", conn.id, error.message)
            self._reply_error(answer_to, invocation_id, function_id, error)
            return
        conn.invocations_made += 1
        data = bytes(msg.data) if msg.data else b"null"
        if fn.handler is not None:
            on_result = self._answer_to(answer_to, invocation_id, fn.id)
            if self._debug:
                on_result = self._debug_builtin(on_result, _who(conn), fn.id)
            if msg.traceparent is None:
                self._run_builtin(fn, conn, data, on_result)
                return
            traceparent = msg.traceparent
            if self.telemetry is not None:  # the engine's span of the call, parent of what it calls
                on_result, traceparent = self.telemetry.trace_call(function_id, traceparent, msg.baggage, on_result)
            self.trace_context = (traceparent, msg.baggage)
            try:
                self._run_builtin(fn, conn, data, on_result)
            finally:
                self.trace_context = None
            return
        if answer_to is not None:
            if invocation_id in self.pending:
                self._reply_error(
                    answer_to,
                    invocation_id,
                    function_id,
                    ErrorBody(
                        ErrorCode.DUPLICATE_INVOCATION,
                        f"Invocation id {invocation_id} is already in flight",
                    ),
                )
                return
            self.invocations.open(self._pending(fn, answer_to), invocation_id)
            key = invocation_id
        else:
            # Nobody waits for a void call, but the callee is busy with it until it answers, or
            # until the deadline (a callee that never answers must not grow the table for ever).
            key = self.new_id()
            self._open_with_deadline(self._pending(fn, None), key, DEFAULT_INVOCATION_TIMEOUT_MS)
        if self._debug:
            self._debug_calls[key] = (time.perf_counter(), _who(conn), function_id)
        fn.owner.send(
            codec.encode_invoke(
                key,
                fn.local_id or function_id,
                codec.with_caller(data, conn.caller_field),
                bytes(msg.metadata) if msg.metadata else b"",
                msg.traceparent,
                msg.baggage,
            )
        )

    def _on_result(self, conn: Connection, msg: InvocationResult, frame: bytes) -> None:
        invocation_id = msg.invocation_id
        pending = self.pending.get(invocation_id)
        if pending is None or pending.target is not conn:
            # Late answer (caller gone, void call, timed out, replayed after a reconnect).
            return
        self.invocations.settle(invocation_id)
        conn.invocations_handled += 1
        if pending.timed:
            pending.stats.observe_ns(perf_counter_ns() - pending.started_ns)
        error = self._error_of(msg) if msg.error else None
        if error is not None:
            conn.invocations_failed += 1
            stats = self.stats.get(conn.namespace, pending.function_id)
            if stats is not None:
                stats.errors += 1
        if self._debug:
            self._debug_settled(invocation_id, error)
        caller = pending.caller
        if caller is not None:
            if caller.state == ABORTED:
                return
            if error is None:
                caller.send(frame)  # forwarded as sent: the result is never decoded
            else:
                caller.send(codec.encode_error_result(invocation_id, msg.function_id, error))
        elif pending.on_result is not None:
            pending.on_result(bytes(msg.result) if msg.result else b"null", error)

    @staticmethod
    def _error_of(msg: InvocationResult) -> ErrorBody:
        """The error body, normalised so SDKs read it (string code and message)."""
        try:
            return msgspec.json.decode(msg.error, type=ErrorBody)
        except msgspec.DecodeError:
            raw = bytes(msg.error).decode("utf-8", "replace")
            return ErrorBody("UNKNOWN", raw)

    def _reply_error(
        self,
        caller: Optional[Connection],
        invocation_id: Optional[str],
        function_id: str,
        error: ErrorBody,
    ) -> None:
        if caller is not None and invocation_id is not None:
            caller.send(codec.encode_error_result(invocation_id, function_id, error))

    def _not_found(self, function_id: str, ns: str) -> ErrorBody:
        message = f"Function {function_id} not found in namespace {ns}."
        elsewhere = self.namespaces_of(function_id)
        if elsewhere:
            message += f" It is registered in namespace(s): {', '.join(elsewhere)}."
        return ErrorBody(ErrorCode.FUNCTION_NOT_FOUND, message)

    @staticmethod
    def _answer_to(
        caller: Optional[Connection], invocation_id: Optional[str], function_id: str
    ) -> Optional[Callable[[bytes, Optional[ErrorBody]], None]]:
        """How a built-in's outcome reaches a worker that called it (``None``: nobody waits)."""
        if caller is None or invocation_id is None:
            return None

        def answer(result: bytes, error: Optional[ErrorBody]) -> None:
            if caller.state == ABORTED:
                return
            if error is None:
                caller.send(codec.encode_result(invocation_id, function_id, result))
            else:
                caller.send(codec.encode_error_result(invocation_id, function_id, error))

        return answer

    def _run_builtin(
        self,
        fn: FunctionEntry,
        caller: Optional[Connection],
        data: bytes,
        on_result: Optional[Callable[[bytes, Optional[ErrorBody]], None]],
    ) -> None:
        """Run an in-process function; ``on_result`` gets its outcome, now or when its future is
        done. Its failures are logged unless they are :class:`EngineError` (an answer)."""

        stats = fn.stats
        stats.calls += 1
        started_ns = perf_counter_ns()

        def settle(outcome: Callable[[], Any]) -> None:
            try:
                result = outcome()
            except EngineError as exc:
                error: Optional[ErrorBody] = ErrorBody(exc.code, exc.message)
            except Exception as exc:  # a bug in a built-in must not take the engine down
                log.exception("built-in %s failed", fn.id)
                error = ErrorBody(ErrorCode.INVOCATION_FAILED, str(exc))
            else:
                if isinstance(result, asyncio.Future):  # answered once the future is done
                    result.add_done_callback(answer_when_done)
                    return
                error = None
            stats.observe_ns(perf_counter_ns() - started_ns)
            if error is not None:
                stats.errors += 1
            if on_result is not None:
                on_result(b"null" if error is not None else codec.encode_json(result), error)

        def answer_when_done(done: asyncio.Future) -> None:
            if self._batch is not None:  # the futures of one commit complete together
                self._batch()
            settle(done.result)

        settle(lambda: fn.handler(self, caller, codec.decode_json(data)))  # type: ignore[misc]

    def _enqueue(self, conn: Connection, msg: InvokeFunction, ns: str) -> None:
        """``TriggerAction.Enqueue``: hand the job to ``engine::queue::enqueue`` and answer the
        caller with its receipt (protocol.md §10.3); the caller never sees the function's result."""
        invocation_id, function_id = msg.invocation_id, msg.function_id
        queue = msg.action.queue  # type: ignore[union-attr]
        if self.find_function(DEFAULT_NAMESPACE, WireId.QUEUE_ENQUEUE) is None:
            self._reply_error(conn, invocation_id, function_id, ErrorBody(
                ErrorCode.ENQUEUE_ERROR,
                f"Cannot enqueue {function_id} on queue '{queue}': no queue provider is "
                f"installed ({WireId.QUEUE_ENQUEUE} is not registered). Add it with `iii worker add queue`.",
            ))
            return
        receipt = self.new_id()
        job: dict[str, Any] = {
            "queue": queue,
            "function_id": function_id,
            "data": msgspec.Raw(bytes(msg.data) if msg.data else b"null"),
            "messageReceiptId": receipt,
        }
        if msg.traceparent is not None:
            job["traceparent"] = msg.traceparent
        if msg.baggage is not None:
            job["baggage"] = msg.baggage
        if ns != DEFAULT_NAMESPACE:
            job["namespace"] = ns

        def accepted(result: bytes, error: Optional[ErrorBody]) -> None:
            if invocation_id is None or conn.state == ABORTED:
                if error is not None:
                    log.info("worker %s: enqueue on '%s' failed: %s", conn.id, queue, error.message)
            elif error is None:
                answer = codec.encode_json({"messageReceiptId": receipt})
                conn.send(codec.encode_result(invocation_id, function_id, answer))
            else:
                failure = ErrorBody(ErrorCode.ENQUEUE_ERROR, f"{error.code}: {error.message}")
                conn.send(codec.encode_error_result(invocation_id, function_id, failure))

        self.invoke(
            DEFAULT_NAMESPACE, WireId.QUEUE_ENQUEUE, codec.encode_json(job),
            on_result=accepted, timeout_ms=DEFAULT_INVOCATION_TIMEOUT_MS,
        )

    def invoke(
        self,
        namespace: str,
        function_id: str,
        data: bytes,
        metadata: bytes = b"",
        on_result: Optional[Callable[[bytes, Optional[ErrorBody]], None]] = None,
        *,
        timeout_ms: int,
        batched: bool = True,
    ) -> None:
        """Engine-originated call (a trigger firing): fresh id, no ``_caller_worker_id``.

        ``on_result(result_raw, error)`` is called when the answer arrives, if given; a worker
        that has not answered within ``timeout_ms`` gets its call forgotten (its answer is then
        dropped, it is no longer busy with it) and ``on_result`` a ``TIMEOUT`` error.
        ``batched=False``: written now unless a batch is under way (the caller expects no other
        call in this loop turn to share the write with).
        """
        fn = self.find_function(namespace, function_id)
        if fn is None:
            error = self._not_found(function_id, namespace)
            log.info("engine call failed: %s", error.message)
            if on_result is not None:
                on_result(b"null", error)
            return
        if fn.handler is not None:
            self._run_builtin(fn, None, data, self._debug_builtin(on_result, "the engine", fn.id) if self._debug else on_result)
            return
        key = self.new_id()
        self._open_with_deadline(self._pending(fn, None, on_result), key, timeout_ms)
        if self._debug:
            self._debug_calls[key] = (time.perf_counter(), "the engine", function_id)
        if batched and self._batch is not None:  # fan-outs and queue deliveries: one write per worker
            self._batch()
        context = self.trace_context
        traceparent, baggage = context if context is not None else (None, None)
        fn.owner.send(codec.encode_invoke(key, fn.local_id or function_id, data, metadata, traceparent, baggage))

    @staticmethod
    def _pending(
        fn: FunctionEntry, caller: Optional[Connection], on_result: Optional[Callable[[bytes, Optional[ErrorBody]], None]] = None
    ) -> Pending:
        """The record of a call to a worker's function, counted (and timed when sampled) as
        ``forward`` does for the calls it routes."""
        stats = fn.stats
        stats.calls += 1
        if stats.calls & stats.mask:
            return Pending(caller, fn.owner, fn.id, on_result)
        return TimedPending(caller, fn.owner, fn.id, on_result, stats=stats, started_ns=perf_counter_ns())

    def _open_with_deadline(self, pending: Pending, key: str, timeout_ms: int) -> None:
        pending.deadline_ms = deadline_ms = self.now_ms() + timeout_ms
        earliest = self.invocations.next_deadline()
        self.invocations.open(pending, key)
        if self._wake is not None and (earliest is None or deadline_ms < earliest):
            self._wake(deadline_ms)

    def expire_calls(self) -> Optional[int]:
        """Time out the engine's calls whose deadline has passed; returns the next deadline."""
        #: (function id, worker id) -> [first call id, calls timed out, anyone waited]: one log
        #: line per function and worker, however many of its calls came due together.
        expired: dict[tuple[str, str], list[Any]] = {}
        for key, pending in self.invocations.expire(self.now_ms()):
            entry = expired.setdefault((pending.function_id, pending.target.id), [key, 0, False])
            entry[1] += 1
            entry[2] = entry[2] or pending.on_result is not None
            stats = self.stats.get(pending.target.namespace, pending.function_id)
            if stats is not None:
                stats.timeouts += 1
            timed_out = ErrorBody(ErrorCode.TIMEOUT, f"Invocation of {pending.function_id} timed out")
            if self._debug:
                self._debug_settled(key, timed_out)
            self._fail_call(key, pending, timed_out)
        for (function_id, worker_id), (key, count, waited) in expired.items():
            # A void call that got no answer is no news (nobody waited for it).
            log.log(
                logging.WARNING if waited else logging.DEBUG,
                "call %s to %s timed out (worker %s did not answer in time)%s",
                key, function_id, worker_id, f", and {count - 1} more with it" if count > 1 else "",
            )
        return self.invocations.next_deadline()

    def _halt_invocations(self, conn: Connection) -> None:
        """Fail calls to ``conn`` with ``invocation_stopped``; forget calls it made."""
        stopped = ErrorBody(ErrorCode.INVOCATION_STOPPED, "Invocation stopped")
        for key, pending in self.invocations.halt(conn):
            if self._debug:
                self._debug_settled(key, stopped)
            if pending.target is conn:
                stats = self.stats.get(conn.namespace, pending.function_id)
                if stats is not None:
                    stats.stopped += 1
            self._fail_call(key, pending, stopped)

    def _debug_settled(self, key: str, error: Optional[ErrorBody]) -> None:
        started = self._debug_calls.pop(key, None)
        if started is not None:
            began, caller, function_id = started
            log.debug(
                "call %s from %s: %s in %.2f ms", function_id, caller,
                "ok" if error is None else f"{error.code} ({error.message})", (time.perf_counter() - began) * 1000,
            )

    def _debug_builtin(
        self, on_result: Optional[Callable[[bytes, Optional[ErrorBody]], None]], caller: str, function_id: str
    ) -> Callable[[bytes, Optional[ErrorBody]], None]:
        """``on_result`` of a built-in call, logging the call's outcome and latency first."""
        key = self.new_id()
        self._debug_calls[key] = (time.perf_counter(), caller, function_id)

        def logged(result: bytes, error: Optional[ErrorBody]) -> None:
            self._debug_settled(key, error)
            if on_result is not None:
                on_result(result, error)

        return logged

    @staticmethod
    def _fail_call(key: str, pending: Pending, error: ErrorBody) -> None:
        """Tell whoever waits for a call (settled already) that it failed with ``error``; a
        module's failing continuation is logged, so the others are still told."""
        caller = pending.caller
        if caller is not None:
            if caller.state != ABORTED:
                caller.send(codec.encode_error_result(key, pending.function_id, error))
        elif pending.on_result is not None:
            try:
                pending.on_result(b"null", error)
            except Exception:
                log.exception("telling the caller of %s that it failed (%s) failed", pending.function_id, error.code)

    # ------------------------------------------------------------------ trigger types

    def add_trigger_type(
        self,
        type_id: str,
        provider: Any,
        *,
        module: str,
        description: str,
        trigger_request_format: Any = None,
        call_request_format: Any = None,
    ) -> None:
        """Register an in-process trigger type in ``default``."""
        self._install_trigger_type(
            TriggerType(
                type_id,
                DEFAULT_NAMESPACE,
                description,
                provider=provider,
                trigger_request_format=trigger_request_format,
                call_request_format=call_request_format,
                module=module,
            )
        )

    def _on_register_trigger_type(
        self, conn: Connection, msg: RegisterTriggerType, frame: bytes
    ) -> None:
        ns = conn.namespace if msg.namespace is UNSET else msg.namespace
        if ns is None or is_blank(ns):
            log.error("worker %s: registertriggertype %s: blank namespace ignored", conn.id, msg.id)
            return
        if conn.session is None:
            self._register_trigger_type(conn, msg)
        else:
            rbac.register_trigger_type(self, conn, msg, self._register_trigger_type)

    def _register_trigger_type(self, conn: Connection, msg: RegisterTriggerType) -> None:
        ns = conn.namespace if msg.namespace is UNSET else msg.namespace
        if self._is_engine_trigger_type(msg.id):
            # A worker taking over `http` would receive every request, and take the type with it
            # when it leaves.
            log.warning("worker %s: trigger type %s refused: it is the engine's own", conn.id, msg.id)
            conn.send(codec.encode_message(RegistrationRejected(ErrorCode.TRIGGER_TYPE_RESERVED, ns, "")))
            return
        self._install_trigger_type(
            TriggerType(
                msg.id,
                ns,
                msg.description or "",
                owner=conn,
                trigger_request_format=_decode_raw(msg.trigger_request_format),
                call_request_format=_decode_raw(msg.call_request_format),
            )
        )
        if self._debug:
            log.debug("worker %s registered trigger type %s (namespace %s)", _who(conn), msg.id, ns)

    def _is_engine_trigger_type(self, type_id: str) -> bool:
        """``engine::*`` ids and the types of the engine's modules are not a worker's to provide."""
        if type_id.startswith("engine::"):
            return True
        builtin = self.trigger_types.get((DEFAULT_NAMESPACE, type_id))
        return builtin is not None and builtin.provider is not None

    def _install_trigger_type(self, tt: TriggerType) -> None:
        """Store (or replace) a provider and hand it every binding it now serves (§11.4)."""
        key = tt.key
        old = self.trigger_types.get(key)
        self.trigger_types[key] = tt
        for binding in [b for b in self.bindings.values() if b.provider_key == key]:
            if old is not None and old.provider is not None:
                old.provider.unregister(binding)
            self._deliver_or_park(binding, tt)
        for binding in [b for b in self.parked.values() if b.trigger_type == tt.id]:
            if self._resolve_provider(binding) is tt:
                del self.parked[binding.id]
                self._deliver_or_park(binding, tt)
        if tt.namespace != DEFAULT_NAMESPACE:  # re-home bindings that fell back to `default`
            fallback_key = (DEFAULT_NAMESPACE, tt.id)
            for binding in list(self.bindings.values()):
                if (
                    binding.provider_key == fallback_key
                    and binding.trigger_namespace is None
                    and binding.home_namespace == tt.namespace
                ):
                    self._withdraw(binding)
                    self._deliver_or_park(binding, tt)

    def _on_unregister_trigger_type(
        self, conn: Connection, msg: UnregisterTriggerType, frame: bytes
    ) -> None:
        ns = conn.namespace if msg.namespace is UNSET or msg.namespace is None else msg.namespace
        tt = self.trigger_types.get((ns, msg.id))
        if tt is not None and tt.owner is conn:
            self._remove_trigger_type(tt)

    def _remove_trigger_type(self, tt: TriggerType) -> None:
        """The provider left: its bindings move to a fallback provider or are parked (§11.5)."""
        key = tt.key
        if self.trigger_types.get(key) is not tt:
            return
        del self.trigger_types[key]
        for binding in [b for b in self.bindings.values() if b.provider_key == key]:
            del self.bindings[binding.id]
            binding.provider_key = None
            fallback = self._resolve_provider(binding)
            if fallback is None:
                self.parked[binding.id] = binding
            else:
                self._deliver_or_park(binding, fallback)

    # ------------------------------------------------------------------ bindings

    def _resolve_provider(self, binding: Binding) -> Optional[TriggerType]:
        if binding.trigger_namespace is not None:
            return self.trigger_types.get((binding.trigger_namespace, binding.trigger_type))
        return self.trigger_types.get(
            (binding.home_namespace, binding.trigger_type)
        ) or self.trigger_types.get((DEFAULT_NAMESPACE, binding.trigger_type))

    def _deliver_or_park(self, binding: Binding, tt: TriggerType) -> Optional[ErrorBody]:
        """Hand ``binding`` to ``tt``; live on success, parked if the provider cannot take it.

        Returns the in-process provider's refusal, if any (the binding is then dropped).
        """
        if tt.provider is not None:
            refusal = tt.provider.register(binding)
            if refusal is not None:
                return ErrorBody(ErrorCode.TRIGGER_REGISTRATION_FAILED, refusal)
        elif tt.owner is None or tt.owner.state == ABORTED:
            self.parked[binding.id] = binding
            return None
        else:
            tt.owner.send(
                codec.encode_message(
                    RegisterTrigger(
                        id=binding.id,
                        trigger_type=binding.trigger_type,
                        function_id=binding.function_id,
                        config=msgspec.Raw(binding.config),
                        metadata=msgspec.Raw(binding.metadata) if binding.metadata else ABSENT,
                        namespace=(
                            UNSET if binding.namespace == DEFAULT_NAMESPACE else binding.namespace
                        ),
                        trigger_namespace=(
                            UNSET if tt.namespace == DEFAULT_NAMESPACE else tt.namespace
                        ),
                    )
                )
            )
        binding.provider_key = tt.key
        self.bindings[binding.id] = binding
        return None

    def _withdraw(self, binding: Binding) -> None:
        """Tell a live binding's provider to drop it and forget it."""
        self.bindings.pop(binding.id, None)
        tt = self.trigger_types.get(binding.provider_key) if binding.provider_key else None
        binding.provider_key = None
        if tt is None:
            return
        if tt.provider is not None:
            tt.provider.unregister(binding)
        elif tt.owner is not None and tt.owner.state != ABORTED:
            tt.owner.send(
                codec.encode_message(UnregisterTrigger(id=binding.id, trigger_type=binding.trigger_type))
            )

    def add_binding(self, binding: Binding) -> Optional[ErrorBody]:
        """Create (or replace) a binding: delivered to its provider, or parked (§11.3)."""
        self.remove_binding(binding.id)
        tt = self._resolve_provider(binding)
        if tt is None:
            log.warning(
                "trigger %s: no provider of type %r yet; it waits until one registers "
                "(add the worker that provides it, e.g. `iii worker add ...`)",
                binding.id,
                binding.trigger_type,
            )
            self.parked[binding.id] = binding
            return None
        return self._deliver_or_park(binding, tt)

    def remove_binding(self, binding_id: str) -> bool:
        """Remove a live or parked binding by id; ``True`` if there was one."""
        binding = self.bindings.get(binding_id)
        if binding is not None:
            self._withdraw(binding)
            return True
        return self.parked.pop(binding_id, None) is not None

    def _on_register_trigger(self, conn: Connection, msg: RegisterTrigger, frame: bytes) -> None:
        for field in ("namespace", "trigger_namespace"):
            value = getattr(msg, field)
            if value is None or (value is not UNSET and is_blank(value)):
                self._refuse_binding(conn, msg.id, msg.trigger_type, msg.function_id, _namespace_error(field))
                return
        if conn.session is None:
            self._register_trigger(conn, msg)
        else:
            rbac.register_trigger(self, conn, msg, self._register_trigger)

    def _register_trigger(self, conn: Connection, msg: RegisterTrigger) -> None:
        binding = Binding(
            msg.id,
            msg.trigger_type,
            msg.function_id,
            bytes(msg.config) if msg.config else b"null",
            bytes(msg.metadata) if msg.metadata else b"",
            conn,
            DEFAULT_NAMESPACE if msg.namespace is UNSET else msg.namespace,
            None if msg.trigger_namespace is UNSET else msg.trigger_namespace,
            conn.namespace,
        )
        error = self.add_binding(binding)
        if error is not None:
            self._refuse_binding(conn, msg.id, msg.trigger_type, msg.function_id, error)
        elif self._debug:
            log.debug("worker %s registered trigger %s: %s -> %s", _who(conn), msg.id, msg.trigger_type, msg.function_id)

    @staticmethod
    def _refuse_binding(
        conn: Connection, binding_id: str, trigger_type: str, function_id: str, error: ErrorBody
    ) -> None:
        conn.send(
            codec.encode_message(
                TriggerRegistrationResult(
                    id=binding_id, trigger_type=trigger_type, function_id=function_id, error=error
                )
            )
        )

    def _on_unregister_trigger(
        self, conn: Connection, msg: UnregisterTrigger, frame: bytes
    ) -> None:
        self.remove_binding(msg.id)

    def _on_trigger_registration_result(
        self, conn: Connection, msg: TriggerRegistrationResult, frame: bytes
    ) -> None:
        binding = self.bindings.get(msg.id)
        if binding is None or binding.provider_key is None:
            return
        tt = self.trigger_types.get(binding.provider_key)
        if tt is None or tt.owner is not conn or msg.error is None:
            return
        # The provider refused: park it (re-delivered when the type registers again) and tell
        # whoever created it.
        del self.bindings[binding.id]
        binding.provider_key = None
        self.parked[binding.id] = binding
        log.warning("trigger %s refused by its provider: %s", binding.id, msg.error.message)
        owner = binding.owner
        if owner is not None and owner.state != ABORTED:
            self._refuse_binding(owner, binding.id, binding.trigger_type, binding.function_id, msg.error)

    def _drop_bindings_of(self, conn: Connection) -> None:
        for binding in [b for b in self.bindings.values() if b.owner is conn]:
            self._withdraw(binding)
        for binding_id in [i for i, b in self.parked.items() if b.owner is conn]:
            del self.parked[binding_id]

    # ------------------------------------------------------------------ worker metadata

    def effective_namespace(self, conn: Connection, declared: str) -> str:
        """The namespace a registering connection ends up in: a namespace already fixed (the
        grace period ran out first) wins over a late declaration."""
        if conn.state == RESOLVED and declared != conn.namespace:
            log.warning(
                "worker %s declared namespace %r after it was fixed to %r; keeping %r",
                conn.id,
                declared,
                conn.namespace,
                conn.namespace,
            )
            return conn.namespace
        return declared

    def claim_name(self, conn: Connection, namespace: str, name: str) -> bool:
        """Lease ``(namespace, name)`` to ``conn``.

        Returns ``False`` when another live connection holds it: ``conn`` is then sent
        ``registrationrejected``, cleaned up and closed, and nothing it declared is applied.
        """
        holder = self.names.get((namespace, name))
        if holder is not None and holder is not conn and holder.state != ABORTED:
            conn.send(
                codec.encode_message(
                    RegistrationRejected(ErrorCode.WORKER_NAMESPACE_CONFLICT, namespace, holder.id, worker_name=name)
                )
            )
            log.warning(
                "worker %s rejected: the name %r is taken in namespace %r by %s",
                conn.id,
                name,
                namespace,
                holder.id,
            )
            self.disconnect(conn)
            conn.close()
            return False
        if conn.name is not None and self.names.get((conn.namespace, conn.name)) is conn:
            del self.names[(conn.namespace, conn.name)]
        self.names[(namespace, name)] = conn
        return True

    def resolve_namespace(self, conn: Connection, namespace: str) -> None:
        """Fix the namespace of a connection still waiting for it and apply what it held."""
        if conn.state == PENDING:
            self._resolve_namespace(conn, namespace)

    # ------------------------------------------------------------------ telemetry

    def set_telemetry(self, sink: Any) -> None:
        """Receive the telemetry frames the listeners get and the engine's spans."""
        self.telemetry = sink

    def telemetry_frame(self, frame: bytes) -> None:
        """A binary ``OTLP`` / ``LOGS`` / ``MTRC`` frame from a client (dropped without a sink)."""
        sink = self.telemetry
        if sink is not None:
            try:
                sink.ingest(frame)
            except Exception:  # a sink's bug costs the frame, never the connection
                log.exception("telemetry frame handling failed")

    def worker_metrics(self, worker_id: str) -> Optional[dict[str, Any]]:
        """A worker's ``latest_metrics``, when the sink has them."""
        return self.telemetry.worker_metrics(worker_id) if self.telemetry is not None else None

    def add_metric_source(self, read: Callable[[], list[MetricFamily]]) -> None:
        self._metric_sources.append(read)

    def metric_families(self) -> list[MetricFamily]:
        families = self.stats.families(self.connections.values(), self.pending.values())
        for read in self._metric_sources:
            try:
                families.extend(read())
            except Exception:
                log.exception("a metric source failed")
        return families

    def engine_stats(self) -> dict[str, Any]:
        return self.stats.snapshot()

    # ------------------------------------------------------------------ cluster (iii-cluster)
    #
    # Functions of other engines are routed like a worker's: each is owned, per engine, by a
    # :class:`Connection` whose ``send`` writes on the link to that engine (the module's I/O), so
    # :meth:`forward` takes a call to one on its hot path unchanged. Their answers come back
    # through :meth:`remote_answer`; calls from a peer engine arrive through :meth:`handle_peer`.

    def listening(self, urls: list[str]) -> None:
        """The worker listeners are bound (the server calls this): tell who waits for the URLs."""
        self.urls = list(urls)
        for callback in self._on_listening:
            callback(self.urls)

    def on_listening(self, callback: Callable[[list[str]], None]) -> None:
        """``callback(urls)`` once the worker listeners are bound (now, if they are)."""
        if self.urls:
            callback(self.urls)
        else:
            self._on_listening.append(callback)

    def watch_registry(self, callback: Callable[[], None]) -> None:
        """``callback()`` after workers or functions of this engine changed (coalesced per turn
        for functions; bindings are not watched: read them when the callback runs or later)."""
        self._registry_watchers.append(callback)

    def _registry_changed(self) -> None:
        for callback in self._registry_watchers:
            try:
                callback()
            except Exception:
                log.exception("a registry watcher failed")

    def accept_peers(self, token: Optional[str]) -> None:
        """Accept links from other engines presenting ``token`` (``None``: none)."""
        self.peer_token = token

    def registry_snapshot(self) -> dict[str, Any]:
        """This engine's workers, worker-owned functions and triggers, as rows (what a cluster
        publishes of it; see ``Discovery.snapshot``)."""
        return self.events.snapshot()

    def set_cluster_view(self, view: Any) -> None:
        """The other engines' workers and triggers, for the ``engine::*`` lists (see
        :mod:`iii.engine.functions`: ``engine``, ``engine_of(id)``, ``workers()``, ``triggers()``)."""
        self.cluster = view

    def connect_peer(self, engine_id: str, send: Callable[[bytes], None], close: Callable[[], None], ip: Optional[str]) -> Connection:
        """Admit a link from engine ``engine_id``: its calls reach this engine's functions
        (:meth:`handle_peer`), it is no worker (not listed, no events, no namespace grace)."""
        link_id = self.new_id()
        conn = Connection(link_id, "", send, close, codec.caller_field(link_id), ip, self.now_ms())
        conn.state = RESOLVED
        conn.engine = engine_id
        return conn

    def handle_peer(self, conn: Connection, frame: bytes) -> None:
        """A frame on a link from a peer engine: a call to one of this engine's workers is sent on
        as received (its data already names the caller on that engine); a call to a function
        this engine does not own is refused, never passed to a third engine (no loops)."""
        head = _peer_call(frame)
        if head is not None:  # a plain call as the peer's router encodes it: read no further
            invocation_id, function_id = head
            by_id = self.functions.get(DEFAULT_NAMESPACE)
            fn = by_id.get(function_id) if by_id is not None else None
            if (
                fn is not None and fn.replicas is None and fn.handler is None and fn.local_id is None
                and invocation_id not in self.pending
            ):
                conn.invocations_made += 1
                self.invocations.open(self._pending(fn, conn), invocation_id)
                fn.owner.send(frame)  # type: ignore[union-attr]
                return
        try:
            msg = codec.decode_frame(frame)
        except codec.DecodeError as exc:
            self._on_bad_frame(conn, frame, exc)
            return
        if type(msg) is not InvokeFunction:
            if type(msg) is Ping:
                conn.send(_PONG)
            return
        invocation_id = msg.invocation_id
        ns = DEFAULT_NAMESPACE if msg.namespace is UNSET or msg.namespace is None else msg.namespace
        fn = self.find_function(ns, msg.function_id)
        if fn is None or fn.replicas is not None:
            self._reply_error(conn, invocation_id, msg.function_id, ErrorBody(
                ErrorCode.FUNCTION_NOT_FOUND,
                f"Function {msg.function_id} is not on this engine (any more).",
            ))
            return
        if fn.handler is not None or fn.local_id is not None or invocation_id is None or msg.action is not None or invocation_id in self.pending:
            self.handle(conn, frame)
            return
        if ns != DEFAULT_NAMESPACE:  # the namespace was for this engine: a worker is not told it
            frame = codec.encode_invoke(
                invocation_id, msg.function_id, bytes(msg.data) if msg.data else b"null",
                bytes(msg.metadata) if msg.metadata else b"", msg.traceparent, msg.baggage,
            )
        conn.invocations_made += 1
        self.invocations.open(self._pending(fn, conn), invocation_id)
        fn.owner.send(frame)

    def join_batch(self, flushable: Any) -> bool:
        """Writes queued now can wait for the end of the read being handled: ``True`` if so
        (``flushable.flush()`` is then called once it ends), ``False``: write now."""
        return self._join_batch is not None and self._join_batch(flushable)

    def hold_writes(self) -> None:
        """More frames of one read are coming (a link's): what they cause is written once per
        connection when the loop turn ends, as for a worker's read."""
        if self._batch is not None:
            self._batch()

    def remote_answer(self, engine_id: str, frame: bytes) -> None:
        """A frame on this engine's link to engine ``engine_id``: the answer to a call routed
        there goes to its caller (:meth:`forward`'s hot path where it can). Anything else a peer
        sends on it (its ``workerregistered``, pongs) is ignored."""
        routed = self._route_frame(frame, b"")
        if routed is not None:
            invocation_id = routed[1]
        else:
            try:
                msg = codec.decode_frame(frame)
            except codec.DecodeError:
                return
            if type(msg) is not InvocationResult:
                return
            invocation_id = msg.invocation_id
        pending = self.pending.get(invocation_id)
        if pending is None or pending.target.engine != engine_id:
            return  # a late answer
        owner = pending.target
        if routed is None or not self.forward(owner, routed, frame):
            self._handlers[InvocationResult](owner, msg if routed is None else codec.decode_frame(frame), frame)

    def set_remote_functions(self, engine_id: str, write: Callable[[bytes], None], functions: list[dict[str, Any]]) -> None:
        """Engine ``engine_id`` owns ``functions`` (rows as ``engine::functions::list`` shows them,
        with ``request_schema`` / ``response_schema``), reached by ``write`` (its link). Replaces
        what it owned before; calls in flight to a function it dropped still get their answer."""
        before = self.remote_owners.get(engine_id, {})
        now: dict[tuple[str, str], FunctionEntry] = {}
        link = write
        for row in functions:
            key = (row.get("namespace") or DEFAULT_NAMESPACE, row["function_id"])
            write = link if key[0] == DEFAULT_NAMESPACE else partial(_in_namespace, _NAMESPACE_FIELD % codec.encode_json(key[0]), link)
            entry = before.get(key)
            if entry is None:
                owner = Connection(engine_id, "", write, lambda: None, b"", None, self.now_ms())
                owner.state = RESOLVED
                owner.namespace = key[0]
                owner.engine = engine_id
                owner.name = row.get("worker_name")
                entry = FunctionEntry(
                    key[1], key[0], owner=owner, description=row.get("description"),
                    request_format=row.get("request_schema"), response_format=row.get("response_schema"),
                    metadata=row.get("metadata"), stats=self.stats.of(key[0], key[1], False),
                )
                owner.functions.add(key)
                self._add_replica(key, entry)
            else:
                entry.owner.send = partial(self._send_rotating, key, write)
            now[key] = entry
        for key, entry in before.items():
            if key not in now:
                self._remove_replica(key, entry.owner)
        if now:
            self.remote_owners[engine_id] = now
        else:
            self.remote_owners.pop(engine_id, None)
        self._remote_changed = True
        self._functions_changed()

    def drop_engine(self, engine_id: str) -> None:
        """Engine ``engine_id`` is gone (its link closed, its heartbeat expired): its functions
        leave, calls in flight to it fail with ``invocation_stopped``."""
        owned = self.remote_owners.pop(engine_id, None)
        if not owned:
            return
        for key, entry in owned.items():
            self._remove_replica(key, entry.owner)
            entry.owner.state = ABORTED
            self._halt_invocations(entry.owner)
        self._remote_changed = True
        self._functions_changed()

    def remote_functions(self) -> list[FunctionEntry]:
        """Every other engine's functions, one entry per engine (``owner.engine`` says which)."""
        return [entry for owned in self.remote_owners.values() for entry in owned.values()]

    def _add_replica(self, key: tuple[str, str], entry: FunctionEntry) -> None:
        shared = self.remote.get(key)
        if shared is None:
            shared = FunctionEntry(
                key[1], key[0], owner=entry.owner, description=entry.description,
                request_format=entry.request_format, response_format=entry.response_format,
                metadata=entry.metadata, stats=entry.stats,
            )
            shared.replicas = []
            self.remote[key] = shared
            by_id = self.functions.setdefault(key[0], {})
            if key[1] not in by_id:
                by_id[key[1]] = shared
        shared.replicas.append(entry.owner)  # type: ignore[union-attr]
        write = entry.owner.send
        entry.owner.send = partial(self._send_rotating, key, write)

    def _remove_replica(self, key: tuple[str, str], owner: Connection) -> None:
        shared = self.remote.get(key)
        if shared is None or owner not in shared.replicas:  # type: ignore[operator]
            return
        shared.replicas.remove(owner)  # type: ignore[union-attr]
        if shared.replicas:
            if shared.owner is owner:
                shared.owner = shared.replicas[0]
            return
        del self.remote[key]
        by_id = self.functions.get(key[0])
        if by_id is not None and by_id.get(key[1]) is shared:
            del by_id[key[1]]
            if not by_id:
                del self.functions[key[0]]

    def _send_rotating(self, key: tuple[str, str], write: Callable[[bytes], None], frame: bytes) -> None:
        """Send a call on an engine's link; the function's next call goes to its next replica
        (calls to a function of several engines are spread round-robin)."""
        write(frame)
        shared = self.remote.get(key)
        if shared is not None:
            replicas = shared.replicas
            if len(replicas) > 1:  # type: ignore[arg-type]
                shared.owner = replicas[(replicas.index(shared.owner) + 1) % len(replicas)]  # type: ignore[union-attr]

    # ------------------------------------------------------------------ events

    def fire_workers_available(self, event: str, worker_id: str) -> None:
        self.events.workers_changed(event, worker_id)
        self._registry_changed()
