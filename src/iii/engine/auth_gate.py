"""Authentication of an RBAC listener's ``/otel`` socket (rbac.md §11).

The SDKs open ``/otel`` with the same handshake headers as their worker socket; on a listener
with ``rbac.auth_function_id`` it is authenticated the same way (``AUTH_ERROR`` frame and a close
on failure). :class:`AuthGate` stands in front of the telemetry listener until the auth function
has answered, then hands the socket over to it. The session is discarded (telemetry carries no
permissions); what the socket sends before it is admitted is dropped, not buffered.
"""

from __future__ import annotations

import asyncio
from typing import Any, Optional

from picows import WSCloseCode, WSFrame, WSListener, WSMsgType, WSTransport

from iii.engine.rbac import Policy, Session, auth_error_frame

__all__ = ["AuthGate"]


class AuthGate(WSListener):  # type: ignore[misc]
    """Authenticates a socket, then passes every callback on to ``inner``.

    Args:
        engine: the :class:`~iii.engine.server.Engine` (its router and listener set).
        config: the listener's config.
        policy: the listener's policy (it has an auth function).
        inner: the listener that serves the socket once it is admitted.
    """

    def __init__(self, engine: Any, config: Any, policy: Policy, inner: Any) -> None:
        self._engine = engine
        self._config = config
        self._policy = policy
        self._inner = inner
        self._transport: Optional[WSTransport] = None
        self._admitted = False

    def on_ws_connected(self, transport: WSTransport) -> None:
        self._transport = transport
        self._engine.listeners.add(self)  # pinged, and closed at shutdown, while it waits
        peer = transport.underlying_transport.get_extra_info("peername")
        ip = peer[0] if peer else None
        self._policy.authenticate(
            self._engine.router, transport.request, ip, lambda session, reason: self._authenticated(session, reason, ip)
        )

    def _authenticated(self, session: Optional[Session], reason: Optional[str], ip: Optional[str]) -> None:
        transport = self._transport
        if transport is None or transport.is_disconnected:
            return
        if session is None:
            self._policy.log_refusal(ip, f"(telemetry socket) {reason}", asyncio.get_running_loop().time())
            transport.send(WSMsgType.TEXT, auth_error_frame(reason or "authentication failed"))
            transport.send_close(WSCloseCode.OK)
            transport.disconnect()
            return
        self._engine.listeners.discard(self)
        self._admitted = True
        self._inner.on_ws_connected(transport)

    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        if self._admitted:
            self._inner.on_ws_frame(transport, frame)
        elif frame.msg_type == WSMsgType.CLOSE:
            transport.send_close(frame.get_close_code())
            transport.disconnect()

    def on_ws_disconnected(self, transport: WSTransport) -> None:
        if self._admitted:
            self._inner.on_ws_disconnected(transport)
        else:
            self._engine.listeners.discard(self)

    def pause_writing(self) -> None:
        if self._admitted:
            self._inner.pause_writing()

    def resume_writing(self) -> None:
        if self._admitted:
            self._inner.resume_writing()

    def heartbeat(self, now: float) -> None:
        """Keep it alive while it waits (the auth call's deadline bounds the wait)."""
        transport = self._transport
        if transport is not None and not transport.is_disconnected:
            transport.send_ping()

    def shutdown(self) -> None:
        transport = self._transport
        if transport is not None and not transport.is_disconnected:
            transport.send_close(WSCloseCode.GOING_AWAY)
            transport.disconnect()
