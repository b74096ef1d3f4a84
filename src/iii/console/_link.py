"""The console's worker: its connection to the engine (our SDK), the calls it makes for the page,
and the change notices it relays to the browsers.

The console learns about changes the way any worker can: it binds ``engine::workers-available``,
``engine::functions-available`` and ``state`` (every scope) to functions of its own. Each event
becomes a notice on :class:`LiveHub`, which the server sends to every open page; the page then
fetches what changed. Bursts are coalesced (one notice per topic per ``COALESCE_S``).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Optional

import msgspec

from iii.errors import InvocationError
from iii.iii_constants import InitOptions, ReconnectionConfig
from iii.sdk.client import III

__all__ = ["CONSOLE_WORKER_NAME", "EngineLink", "LiveHub", "LiveClient"]

log = logging.getLogger("iii.console")

#: The worker name, as the original's: one console per engine.
CONSOLE_WORKER_NAME = "iii-console"
_DESCRIPTION = "Web console UI and observability dashboard for the iii engine."
#: The console's own functions; ``metadata.internal`` hides them from listings unless asked for
#: (this engine keeps ``engine::`` ids for its own functions).
_PREFIX = CONSOLE_WORKER_NAME + "::"
#: Reconnect every ≤ 2 s (the original retries every 2 s), forever.
_RECONNECT = ReconnectionConfig(initial_delay_ms=250, max_delay_ms=2000, backoff_multiplier=2.0, max_retries=-1)


class LiveClient:
    """One open page: a bounded queue of notices; a page that stops reading is dropped."""

    MAX_QUEUED = 256

    def __init__(self) -> None:
        self.queue: asyncio.Queue[Optional[bytes]] = asyncio.Queue(self.MAX_QUEUED + 1)
        self.dropped = False

    def offer(self, notice: bytes) -> None:
        if self.dropped:
            return
        if self.queue.qsize() >= self.MAX_QUEUED:
            self.dropped = True
            self.queue.put_nowait(None)  # the reader closes the socket
            return
        self.queue.put_nowait(notice)


class LiveHub:
    """Fans change notices (``{"topic": …, "detail": …}``) out to every open page."""

    COALESCE_S = 0.05

    def __init__(self) -> None:
        self.clients: set[LiveClient] = set()
        self._pending: dict[str, Any] = {}
        self._flush_handle: Optional[asyncio.Handle] = None

    def subscribe(self) -> LiveClient:
        client = LiveClient()
        self.clients.add(client)
        return client

    def unsubscribe(self, client: LiveClient) -> None:
        self.clients.discard(client)

    def publish(self, topic: str, detail: Any = None) -> None:
        """Queue a notice; notices of one topic within ``COALESCE_S`` become one (the last)."""
        self._pending[topic] = detail
        if self._flush_handle is None:
            self._flush_handle = asyncio.get_running_loop().call_later(self.COALESCE_S, self._flush)

    def _flush(self) -> None:
        self._flush_handle = None
        pending, self._pending = self._pending, {}
        for topic, detail in pending.items():
            notice = msgspec.json.encode({"topic": topic, "detail": detail})
            for client in list(self.clients):
                client.offer(notice)
                if client.dropped:
                    self.clients.discard(client)
                    log.warning("console: a page stopped reading its live notices; dropped it")


class EngineLink:
    """The console's worker connection: calls for the page, change notices to the hub.

    Args:
        url: the engine's worker WebSocket, ``ws://host:port``.
        hub: where change notices go.
    """

    def __init__(self, url: str, hub: LiveHub) -> None:
        self.url = url
        self.hub = hub
        self.client: Optional[III] = None
        #: Set when the engine refused this worker for good (another console holds the name).
        self.refused = asyncio.Event()

    def start(self) -> None:
        """Start connecting (retried forever in the background) and register the console's
        functions and bindings; the SDK replays them on every reconnect."""
        options = InitOptions(
            worker_name=CONSOLE_WORKER_NAME, worker_description=_DESCRIPTION, reconnection_config=_RECONNECT
        )
        client = III(self.url, options, loop=asyncio.get_running_loop())
        self.client = client
        client.add_connection_state_listener(self._on_state)
        for name, topics, trigger_type, config in (
            ("workers_changed", ("workers", "triggers"), "engine::workers-available", {}),
            ("functions_changed", ("functions", "triggers", "workers"), "engine::functions-available", {}),
            ("state_changed", ("state",), "state", {}),
        ):
            function_id = _PREFIX + name
            client.register_function(
                function_id, self._relay(topics), description=f"Console: relays {trigger_type} to open pages",
                metadata={"internal": True},
            )
            client.register_trigger({"type": trigger_type, "function_id": function_id, "config": config})

    def _relay(self, topics: tuple[str, ...]) -> Any:
        async def relay(event: Any) -> None:
            detail = _event_detail(event)
            for topic in topics:
                self.hub.publish(topic, detail)

        return relay

    def _on_state(self, state: str) -> None:
        if state == "failed":
            self.refused.set()
        try:
            self.hub.publish("connection", {"state": state})
            if state == "connected":  # what changed while we were away
                for topic in ("workers", "functions", "triggers", "state", "queues"):
                    self.hub.publish(topic)
        except RuntimeError:  # the first, synchronous call happens before the loop runs us
            pass

    @property
    def state(self) -> str:
        return "disconnected" if self.client is None else self.client.get_connection_state()

    async def call(self, function_id: str, payload: Any = None, timeout_ms: int = 5000) -> Any:
        """Call a function through the engine.

        Raises:
            InvocationError: the call failed (``code`` ``function_not_found``, ``TIMEOUT`` …, or
                ``not_connected`` while the console's worker is not connected).
        """
        if self.client is None or self.state != "connected":  # fail at once, not after the timeout
            raise InvocationError(
                "not_connected", f"The console is not connected to the engine at {self.url} ({self.state})", function_id
            )
        request = {"function_id": function_id, "payload": {} if payload is None else payload, "timeout_ms": timeout_ms}
        return await self.client.trigger_async(request)

    async def stop(self) -> None:
        if self.client is not None:
            await self.client.shutdown_async()


def _event_detail(event: Any) -> Any:
    """What a page needs from a trigger event: the kind of change and which item, not values."""
    if not isinstance(event, dict):
        return None
    keep = ("event", "worker_id", "event_type", "scope", "key")
    return {name: event[name] for name in keep if name in event} or None
