"""The engine's records: connections, functions, trigger types, bindings.

Plain slotted classes with no behaviour beyond describing themselves; the router owns the rules
that change them (and ``invocations`` the calls in flight).
"""

from __future__ import annotations

from collections import deque
from typing import Any, Callable, Optional

from iii.protocol import DEFAULT_NAMESPACE

__all__ = [
    "PENDING",
    "RESOLVED",
    "ABORTED",
    "Connection",
    "FunctionEntry",
    "TriggerType",
    "Binding",
    "EngineError",
    "Module",
]

# Namespace state of a connection (protocol.md §7).
PENDING = 0  # namespace not known yet: registrations are held
RESOLVED = 1  # namespace fixed: registrations apply at once
ABORTED = 2  # tearing down: everything it sends is dropped


class Connection:
    """One worker WebSocket connection, as the router sees it.

    ``send`` and ``close`` are supplied by the I/O layer (or by a test): the router only calls
    them, it never touches a socket.
    """

    __slots__ = (
        "id",
        "token",
        "send",
        "close",
        "caller_field",
        "ip",
        "connected_at_ms",
        "state",
        "namespace",
        "held",
        "name",
        "description",
        "runtime",
        "version",
        "os",
        "pid",
        "isolation",
        "functions",
        "invocations",
        "inbound_active",
        "invocations_handled",
        "invocations_failed",
        "invocations_made",
        "frames_dropped",
        "dropped_kinds",
        "session",
        "gate",
        "gate_bytes",
        "buffered",
        "engine",
        "owner",
        "call_channels",
    )

    def __init__(
        self,
        worker_id: str,
        token: str,
        send: Callable[[bytes], None],
        close: Callable[[], None],
        caller_field: bytes,
        ip: Optional[str],
        connected_at_ms: int,
    ) -> None:
        self.id = worker_id
        self.token = token
        self.send = send
        self.close = close
        #: ``"_caller_worker_id":"<id>"``, pre-encoded for splicing into payloads.
        self.caller_field = caller_field
        self.ip = ip
        self.connected_at_ms = connected_at_ms
        self.state = PENDING
        self.namespace = DEFAULT_NAMESPACE
        #: Registration messages waiting for the namespace.
        self.held: list[Any] = []
        self.name: Optional[str] = None
        self.description: Optional[str] = None
        self.runtime: Optional[str] = None
        self.version: Optional[str] = None
        self.os: Optional[str] = None
        self.pid: Optional[int] = None
        self.isolation: Optional[str] = None
        #: ``(namespace, function_id)`` of the functions it owns.
        self.functions: set[tuple[str, str]] = set()
        #: Ids of pending invocations to it and made by it.
        self.invocations: set[str] = set()
        #: Invocations routed to it and not answered yet (busy while > 0).
        self.inbound_active = 0
        self.invocations_handled = 0
        self.invocations_failed = 0
        self.invocations_made = 0
        self.frames_dropped = 0
        #: Its bad frames by ``type`` (a ``host.KindCounts``; ``None`` until the first).
        self.dropped_kinds: Any = None
        #: Its listener's RBAC session (``rbac.Session``); ``None`` on a trusted listener.
        self.session: Any = None
        #: Messages held while a registration hook of this session runs, in arrival order.
        self.gate: Optional[deque[tuple[Any, bytes]]] = None
        self.gate_bytes = 0
        #: ``buffered()``: bytes written to it and not sent yet (set by the listener).
        self.buffered: Optional[Callable[[], int]] = None
        #: Cluster (``iii-cluster``): the id of the other engine this stands for, ``None`` for a
        #: worker. A link from a peer engine, or one engine's replica of a remote function (never
        #: in ``Router.connections``: not a worker, not listed, fires no worker events).
        self.engine: Optional[str] = None
        #: A call channel (see ``Router.connect_call_channel``): the worker connection it makes
        #: calls for, ``None`` for a worker. Never in ``Router.connections``: it shares its id.
        self.owner: Optional[Connection] = None
        #: A worker's open call channels (closed with it).
        self.call_channels: list[Connection] = []

    @property
    def closed(self) -> bool:
        return self.state == ABORTED

    @property
    def status(self) -> str:
        """Lifecycle state shown by ``engine::workers::list``."""
        if self.state == ABORTED:
            return "disconnected"
        if self.inbound_active:
            return "busy"
        if self.state == RESOLVED:
            return "available"
        return "connected"


class FunctionEntry:
    """A function at ``(namespace, id)``: worker-owned (``owner``) or built in (``handler``)."""

    __slots__ = (
        "id",
        "namespace",
        "owner",
        "handler",
        "module",
        "description",
        "request_format",
        "response_format",
        "metadata",
        "local_id",
        "stats",
        "replicas",
    )

    def __init__(
        self,
        function_id: str,
        namespace: str,
        owner: Optional[Connection] = None,
        handler: Optional[Callable[..., Any]] = None,
        module: Optional[str] = None,
        description: Optional[str] = None,
        request_format: Any = None,
        response_format: Any = None,
        metadata: Any = None,
        stats: Any = None,
    ) -> None:
        self.id = function_id
        self.namespace = namespace
        self.owner = owner
        self.handler = handler
        self.module = module
        self.description = description
        #: Schemas and metadata are decoded JSON (``None`` when absent).
        self.request_format = request_format
        self.response_format = response_format
        self.metadata = metadata
        #: The id its owner registered it as, when a session prefix changed it (``None``: ``id``).
        self.local_id: Optional[str] = None
        #: Its calls (an ``iii.engine.stats.FunctionStats``, shared by its re-registrations).
        self.stats = stats
        #: A function owned on other engines (``iii-cluster``): its owners there, one
        #: :class:`Connection` per engine, ``owner`` being the one the next call goes to.
        #: ``None`` for a function of this engine.
        self.replicas: Optional[list[Connection]] = None

    @property
    def worker_name(self) -> str:
        if self.owner is not None and self.owner.name:
            return self.owner.name
        if self.module:
            return self.module
        return self.id.split("::", 1)[0]

    @property
    def internal(self) -> bool:
        """Hidden from default listings: ``engine::*`` (but not ``engine::queue::*``) and
        functions whose ``metadata.internal`` is true."""
        if self.id.startswith("engine::") and not self.id.startswith("engine::queue::"):
            return True
        return isinstance(self.metadata, dict) and self.metadata.get("internal") is True


class TriggerType:
    """A trigger type at ``(namespace, id)``, provided in-process or by a worker."""

    __slots__ = (
        "id",
        "namespace",
        "owner",
        "provider",
        "description",
        "trigger_request_format",
        "call_request_format",
        "module",
    )

    def __init__(
        self,
        type_id: str,
        namespace: str,
        description: str,
        owner: Optional[Connection] = None,
        provider: Any = None,
        trigger_request_format: Any = None,
        call_request_format: Any = None,
        module: Optional[str] = None,
    ) -> None:
        self.id = type_id
        self.namespace = namespace
        self.description = description
        self.owner = owner
        #: In-process provider with ``register(binding) -> error | None`` and
        #: ``unregister(binding)``; ``None`` for worker-provided types.
        self.provider = provider
        self.trigger_request_format = trigger_request_format
        self.call_request_format = call_request_format
        self.module = module

    @property
    def key(self) -> tuple[str, str]:
        return (self.namespace, self.id)

    @property
    def worker_name(self) -> str:
        if self.owner is not None and self.owner.name:
            return self.owner.name
        if self.module:
            return self.module
        return self.id.split("::", 1)[0]


class Binding:
    """A trigger: "when the provider's event happens, call ``function_id``"."""

    __slots__ = (
        "id",
        "trigger_type",
        "function_id",
        "config",
        "metadata",
        "owner",
        "namespace",
        "trigger_namespace",
        "home_namespace",
        "provider_key",
    )

    def __init__(
        self,
        binding_id: str,
        trigger_type: str,
        function_id: str,
        config: bytes,
        metadata: bytes,
        owner: Optional[Connection],
        namespace: str,
        trigger_namespace: Optional[str],
        home_namespace: str,
    ) -> None:
        self.id = binding_id
        self.trigger_type = trigger_type
        self.function_id = function_id
        #: Raw JSON (``b"null"`` when the binder gave none).
        self.config = config
        #: Raw JSON, ``b""`` when absent.
        self.metadata = metadata
        #: The connection that created it; ``None`` for durable bindings.
        self.owner = owner
        self.namespace = namespace
        self.trigger_namespace = trigger_namespace
        self.home_namespace = home_namespace
        #: Where its provider was found while live.
        self.provider_key: Optional[tuple[str, str]] = None


class EngineError(Exception):
    """Raised by a built-in function: becomes the ``error`` of the caller's result."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


class Module:
    """An in-process module, listed by ``engine::workers::list`` beside the workers."""

    __slots__ = ("name", "description", "started_at_ms")

    def __init__(self, name: str, description: str, started_at_ms: int) -> None:
        self.name = name
        self.description = description
        self.started_at_ms = started_at_ms
