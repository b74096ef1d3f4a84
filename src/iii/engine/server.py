"""The engine's WebSocket server: one router, a picows server per listener, the heartbeat and the
timer that expires the engine's own calls at their deadlines.

Path ``/`` carries the worker protocol (a ``WorkerListener``; a ``PeerListener`` for another
engine of the cluster presenting its token, :mod:`iii.engine.peers`), ``/otel`` is the SDKs' telemetry
socket (a ``TelemetryListener``: its frames go to the router's telemetry sink; never a worker),
``/ws/channels/{id}`` one end of a data channel (:mod:`iii.engine.channels`, swept every minute);
anything else is answered 404. The listeners, and what they do with every frame, are :mod:`iii.engine.frames`'s.

Every connection is pinged every ``ping_interval_ms``; one that has sent nothing (not even a
pong) for ``idle_timeout_ms`` is dropped, so a worker whose process stopped without closing its
socket does not keep calls waiting. A worker that stops reading is dropped once
``max_write_buffer_bytes`` wait for it or after ``stall_timeout_ms``.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Annotated, Any, Optional

import msgspec
from msgspec import Meta
from picows import WSUpgradeRequest, WSUpgradeResponse, WSUpgradeResponseWithListener, ws_create_server

from iii._version import __version__
from iii.engine import ticker
from iii.engine.auth_gate import AuthGate
from iii.engine.channels import SWEEP_EVERY_MS, channel_listener
from iii.engine.frames import TelemetryListener, WorkerListener
from iii.engine.peers import PeerListener, peer_of
from iii.engine.rbac import Policy, RbacConfig
from iii.engine.router import Router
from iii.protocol import DEFAULT_GRACE_MS, DEFAULT_HOST, DEFAULT_PORT, MAX_MESSAGE_SIZE

__all__ = ["Engine", "ListenerConfig"]

log = logging.getLogger("iii.engine")

class ListenerConfig(msgspec.Struct, forbid_unknown_fields=True):
    """One worker WebSocket listener (the ``config`` of an ``iii-worker-manager`` entry)."""

    host: Annotated[str, Meta(min_length=1)] = DEFAULT_HOST
    port: Annotated[int, Meta(ge=0, le=65535)] = DEFAULT_PORT
    handshake_timeout_ms: Annotated[int, Meta(ge=1, le=3_600_000)] = 10000
    #: How often each connection is pinged.
    ping_interval_ms: Annotated[int, Meta(ge=100, le=3_600_000)] = 20_000
    #: A connection that sent nothing for this long is dropped (its callers get
    #: ``invocation_stopped``).
    idle_timeout_ms: Annotated[int, Meta(ge=100, le=3_600_000)] = 60_000
    #: A worker that does not read what it is sent is dropped once this much waits for it…
    max_write_buffer_bytes: Annotated[int, Meta(ge=1024 * 1024)] = 256 * 1024 * 1024
    #: … or once it has been behind (its buffer over 4 MiB) this long.
    stall_timeout_ms: Annotated[int, Meta(ge=100, le=3_600_000)] = 30_000
    #: Every call made from this listener's connections goes through this function instead
    #: (rbac.md §6).
    middleware_function_id: Optional[Annotated[str, Meta(min_length=1)]] = None
    #: Authentication, exposure rules and registration hooks of this listener (rbac.md).
    rbac: Optional[RbacConfig] = None


class Engine:
    """One router and a picows server per listener: :meth:`open` makes the router (on the running
    loop), :meth:`listen` binds the listeners, :meth:`stop` ends it all.

    Args:
        listeners: the worker listeners to serve.
        grace_ms: how long a connection's registrations wait for its namespace.
    """

    def __init__(self, listeners: list[ListenerConfig], grace_ms: int = DEFAULT_GRACE_MS) -> None:
        self._listener_configs = listeners
        self._grace_ms = grace_ms
        self.router: Router = None  # type: ignore[assignment]  # made in open(), on the loop
        # Kept by open(): Python 3.11's asyncio.get_running_loop() is a getpid() system call,
        # too dear for every batch.
        self._loop: asyncio.AbstractEventLoop = None  # type: ignore[assignment]
        self.listeners: set[Any] = set()  # worker and telemetry listeners
        #: A read brought several frames: what they produce is queued per worker until it ends.
        self.batching = False
        #: Listeners with frames queued in this batch.
        self.dirty: list[WorkerListener] = []
        self._servers: list[asyncio.AbstractServer] = []
        #: Listener config -> its next heartbeat.
        self._heartbeats: dict[int, Any] = {}  # asyncio.TimerHandle or ticker.TickHandle
        #: The timer that expires the engine's own calls at their deadline.
        self._expiry: Optional[asyncio.TimerHandle] = None
        self._expiry_due_ms = 0
        self._channel_sweep: Any = None
        self._stopped = False
        #: Listener config -> its RBAC policy (listeners without ``rbac`` or middleware have none).
        self._policies: dict[int, Policy] = {
            id(config): Policy(config.rbac, config.middleware_function_id)
            for config in listeners
            if config.rbac is not None or config.middleware_function_id is not None
        }
        self.urls: list[str] = []

    def start_batch(self) -> None:
        if not self.batching:
            self.batching = True
            # picows may stop delivering a read's frames early (a protocol error in the next one):
            # the batch then ends on the next loop iteration instead of waiting for another read.
            self._loop.call_soon(self.end_batch)

    def join_batch(self, flushable: Any) -> bool:
        """Have ``flushable.flush()`` called when the batch ends, if one is under way (``False``:
        none is, write now). Called once per batch by whoever queues writes in it."""
        if not self.batching:
            return False
        self.dirty.append(flushable)
        return True

    def end_batch(self) -> None:
        """Write every worker's queued frames, one write per worker."""
        self.batching = False
        dirty, self.dirty = self.dirty, []
        for listener in dirty:
            listener.flush()

    def open(self) -> Router:
        """Make the router, on the running loop (whoever assembles the engine installs its
        functions and modules on it before :meth:`listen`)."""
        self._loop = loop = asyncio.get_running_loop()
        self.router = Router(
            grace_ms=self._grace_ms,
            clock=lambda: int(loop.time() * 1000),  # monotonic: deadlines ignore clock steps
            defer=loop.call_soon,
            wake=self._expire_at,
            batch=self.start_batch,
            join_batch=self.join_batch,
            version=__version__,
        )
        return self.router

    def _expire_at(self, deadline_ms: int) -> None:
        """Have the router's due calls expired at ``deadline_ms`` (or earlier, if already due)."""
        if self._stopped:
            return
        if self._expiry is not None:
            if self._expiry_due_ms <= deadline_ms:
                return
            self._expiry.cancel()
        self._expiry_due_ms = deadline_ms
        delay = max(0.0, (deadline_ms - self.router.now_ms()) / 1000)
        self._expiry = self._loop.call_later(delay, self._expire)

    def _expire(self) -> None:
        self._expiry = None
        try:
            self.router.expire_calls()
        finally:  # whatever happened, the calls still due keep their timer
            next_deadline = self.router.invocations.next_deadline()
            if next_deadline is not None:
                self._expire_at(next_deadline)

    def policy_of(self, config: ListenerConfig) -> Optional[Policy]:
        """The RBAC policy of a listener (``None``: a trusted listener)."""
        return self._policies.get(id(config))

    def _heartbeat(self, config: ListenerConfig) -> None:
        """Ping the connections of one listener (and drop the silent ones); come back later."""
        loop = asyncio.get_running_loop()
        now = loop.time()
        for listener in list(self.listeners):
            if listener._config is config:
                listener.heartbeat(now)
        self._heartbeats[id(config)] = ticker.call_later(config.ping_interval_ms / 1000, self._heartbeat, config)

    async def listen(self) -> list[str]:
        """Bind every listener; returns their ``ws://`` URLs (with the real port for port 0)."""
        self._channel_sweep = ticker.call_later(SWEEP_EVERY_MS / 1000, self._sweep_channels)
        for config in self._listener_configs:
            server = await self._serve(config)
            self._servers.append(server)
            self._heartbeats[id(config)] = ticker.call_later(config.ping_interval_ms / 1000, self._heartbeat, config)
            for sock in server.sockets:
                host, port = sock.getsockname()[:2]
                url = f"ws://{host}:{port}" if ":" not in host else f"ws://[{host}]:{port}"
                self.urls.append(url)
                log.info("iii engine %s listening on %s", __version__, url)
        self.router.listening(self.urls)
        return self.urls

    def _sweep_channels(self) -> None:
        try:
            self.router.channels.sweep()
        finally:
            self._channel_sweep = ticker.call_later(SWEEP_EVERY_MS / 1000, self._sweep_channels)

    async def _serve(self, config: ListenerConfig) -> asyncio.AbstractServer:
        policy = self.policy_of(config)

        def route(request: WSUpgradeRequest) -> Any:
            path = request.path.split(b"?", 1)[0].rstrip(b"/")
            if policy is not None and policy.auth_full() and path in (b"", b"/otel"):
                # Refused before the upgrade: a flood of handshakes costs as little as possible.
                return WSUpgradeResponseWithListener(
                    WSUpgradeResponse.create_error_response(503, policy.auth_full_message().encode()), None
                )
            if path == b"":
                peer = peer_of(request, self.router.peer_token)  # another engine of the cluster
                return WorkerListener(self, config) if peer is None else PeerListener(self, config, peer)
            if path == b"/otel":
                telemetry = TelemetryListener(self, config)
                if policy is not None and policy.auth_function_id is not None:
                    return AuthGate(self, config, policy, telemetry)  # authenticated like `/`
                return telemetry
            if path.startswith(b"/ws/channels/"):
                return channel_listener(self, config, request)
            return None  # picows answers 404

        return await ws_create_server(
            route,
            config.host,
            config.port,
            websocket_handshake_timeout=config.handshake_timeout_ms / 1000,
            max_frame_size=MAX_MESSAGE_SIZE,
            enable_auto_pong=True,
            disconnect_on_exception=False,
            reuse_address=True,
        )

    async def stop(self) -> None:
        """Stop accepting, close every worker socket (their cleanup runs), release the ports."""
        self._stopped = True
        for timer in self._heartbeats.values():
            timer.cancel()
        self._heartbeats.clear()
        if self._expiry is not None:
            self._expiry.cancel()
            self._expiry = None
        if self._channel_sweep is not None:
            self._channel_sweep.cancel()
            self._channel_sweep = None
        for server in self._servers:
            server.close()
        for listener in list(self.listeners):
            listener.shutdown()
        for server in self._servers:
            await server.wait_closed()
        self._servers.clear()
