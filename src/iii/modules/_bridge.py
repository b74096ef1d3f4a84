"""The client every bridge uses: a worker connection from this engine to another engine.

A :class:`BridgeClient` is our own SDK client (:class:`iii.sdk.client.III`) run on the engine's
loop, set as the original's bridges set theirs: a fixed worker name per bridge kind
(``iii-bridge-client``, ``iii-state-bridge`` …), the namespace of ``III_NAMESPACE``, each
connect attempt bounded by 10 s, a reconnect every 2 s forever, registrations replayed on each
reconnect, calls made while disconnected queued and each bounded by its timeout (30 s unless
given). It connects in the background, so an unreachable remote never holds up the engine's
start. A ``WORKER_NAMESPACE_CONFLICT`` (another engine bridges the same kind to the same remote
namespace) is fatal for the client: it stops, and every call fails.

Failures of remote calls are :class:`BridgeError`, whose text is the SDK's as the original
words it: ``remote error (<code>): <message>``, ``invocation timed out after <n>ms``,
``iii is not connected …``.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Awaitable, Callable, Optional

from iii.errors import InvocationError, RegistrationRejectedError
from iii.iii_constants import InitOptions, ReconnectionConfig
from iii.sdk._protocol import ReplyError
from iii.sdk.actions import TriggerActionEnqueue, TriggerActionVoid
from iii.sdk.client import III

__all__ = [
    "BRIDGE_CALL_TIMEOUT_MS",
    "BridgeClient",
    "BridgeError",
    "ReplyError",
]

log = logging.getLogger("iii.modules")

#: The timeout of a remote call that does not give one.
BRIDGE_CALL_TIMEOUT_MS = 30_000
#: Every reconnect waits this long, without backoff or jitter, forever (the original's bridges).
RECONNECT_DELAY_MS = 2_000

#: A handler the remote calls: ``await handler(data)`` returns the answer or raises
#: :class:`ReplyError` to answer with that error.
RemoteHandler = Callable[[Any], Awaitable[Any]]


class BridgeError(Exception):
    """A remote call failed; ``str()`` is the reason, in the SDK's words."""


def _bridge_error(exc: BaseException) -> BridgeError:
    if isinstance(exc, InvocationError):
        if exc.code == "TIMEOUT":
            return BridgeError(exc.message)
        if exc.code == "SHUTDOWN":
            return BridgeError("iii is not connected (the bridge is shutting down)")
        return BridgeError(f"remote error ({exc.code}): {exc.message}")
    if isinstance(exc, RegistrationRejectedError):
        return BridgeError(f"iii is not connected: the remote engine rejected the bridge ({exc})")
    return BridgeError(str(exc) or type(exc).__name__)


class BridgeClient:
    """One worker connection to a remote engine.

    Args:
        url: the remote engine's worker listener (``ws://host:port``).
        worker_name: the fixed name this kind of bridge registers under.
    """

    def __init__(self, url: str, worker_name: str) -> None:
        self.url = url
        self.worker_name = worker_name
        self._client: Optional[III] = None

    def start(self) -> None:
        """Start connecting in the background (on the running loop; returns at once)."""
        options = InitOptions(
            worker_name=self.worker_name,
            invocation_timeout_ms=BRIDGE_CALL_TIMEOUT_MS,
            reconnection_config=ReconnectionConfig(
                initial_delay_ms=RECONNECT_DELAY_MS,
                max_delay_ms=RECONNECT_DELAY_MS,
                backoff_multiplier=1.0,
                jitter_factor=0.0,
                max_retries=-1,
            ),
        )
        self._client = III(self.url, options, loop=asyncio.get_running_loop())
        log.info("bridge %s: connecting to %s in the background", self.worker_name, self.url)

    @property
    def client(self) -> III:
        if self._client is None:
            raise RuntimeError(f"bridge {self.worker_name} is not started")
        return self._client

    @property
    def connected(self) -> bool:
        return self._client is not None and self._client.get_connection_state() == "connected"

    async def call(
        self,
        function_id: str,
        data: Any,
        *,
        timeout_ms: int = BRIDGE_CALL_TIMEOUT_MS,
        queue: Optional[str] = None,
        namespace: Optional[str] = None,
    ) -> Any:
        """Call ``function_id`` on the remote and return its answer (``queue``: enqueue it
        there instead, the answer is then the remote's receipt).

        Raises:
            BridgeError: the call failed, timed out, or the bridge is stopped or rejected.
        """
        request: dict[str, Any] = {"function_id": function_id, "payload": data, "timeout_ms": timeout_ms}
        if queue is not None:
            request["action"] = TriggerActionEnqueue(queue=queue)
        if namespace is not None:
            request["namespace"] = namespace
        try:
            return await self.client.trigger_async(request)
        except (InvocationError, RegistrationRejectedError) as exc:
            raise _bridge_error(exc) from None

    async def send(self, function_id: str, data: Any) -> None:
        """Call ``function_id`` on the remote without waiting for its outcome (queued while
        disconnected).

        Raises:
            BridgeError: the bridge is stopped or rejected.
        """
        request = {"function_id": function_id, "payload": data, "action": TriggerActionVoid()}
        try:
            await self.client.trigger_async(request)
        except (InvocationError, RegistrationRejectedError) as exc:
            raise _bridge_error(exc) from None

    def register_function(self, function_id: str, handler: RemoteHandler, description: Optional[str] = None) -> Callable[[], None]:
        """Register ``function_id`` on the remote, served by ``handler`` here; kept across
        reconnects. Returns what unregisters it."""
        return self.client.register_function(function_id, handler, description=description).unregister

    def register_trigger(self, trigger_type: str, function_id: str, config: Any) -> Callable[[], None]:
        """Bind one of this bridge's remote functions to a remote trigger type; kept across
        reconnects. Returns what unregisters it."""
        trigger = self.client.register_trigger({"type": trigger_type, "function_id": function_id, "config": config})
        return trigger.unregister

    async def stop(self) -> None:
        """Close the connection; calls still waiting fail."""
        client, self._client = self._client, None
        if client is not None:
            await client.shutdown_async()
