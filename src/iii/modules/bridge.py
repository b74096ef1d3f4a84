"""Bridge (``iii-bridge``, opt-in): this engine as a worker of another engine.

One worker connection to the remote engine (``url``; worker name ``iii-bridge-client``, see
:mod:`iii.modules._bridge`), with

- ``expose``: functions registered **on the remote** that call a local function with the same
  payload and answer its result (its error passed on with code, message and stacktrace);
- ``forward``: functions registered **here** that call a remote function with the same payload
  and wait up to ``timeout_ms`` (30 s by default);
- ``bridge.invoke {function_id, data?, timeout_ms?}``: call any remote function and answer its
  result; ``bridge.invoke_async {function_id, data?}``: call it without waiting (``null`` once
  sent, or queued while the bridge is disconnected).

Bad input is ``deserialization_error``; a remote call that fails, times out or finds the bridge
stopped is ``bridge_error`` with the reason as message (a remote error's code is folded into it:
``remote error (<code>): <message>``). The bridge connects in the background and never holds up
the engine's start; until it is connected calls wait, each within its timeout.
"""

from __future__ import annotations

import asyncio
import os
from typing import Any, Optional, Union

import msgspec

from iii import codec
from iii.config import ConfigError
from iii.engine.host import (
    DEFAULT_INVOCATION_TIMEOUT_MS,
    BuiltinModule,
    Connection,
    EngineError,
    Host,
    TimeoutMs,
    call,
    json_schema,
)
from iii.modules._bridge import BRIDGE_CALL_TIMEOUT_MS, BridgeClient, BridgeError, ReplyError
from iii.protocol import DEFAULT_NAMESPACE, ErrorCode

__all__ = ["MODULE", "BridgeModuleConfig", "ExposeEntry", "ForwardEntry", "install"]

NAME = "iii-bridge"
WORKER_NAME = "iii-bridge-client"
#: The remote when neither ``url`` nor ``III_URL`` says.
DEFAULT_URL = "ws://0.0.0.0:49134"
BRIDGE_ERROR = "bridge_error"


class ExposeEntry(msgspec.Struct, forbid_unknown_fields=True):
    """A local function the remote may call."""

    local_function: str
    #: Its id on the remote (absent: the same as here).
    remote_function: Union[str, None] = None


class ForwardEntry(msgspec.Struct, forbid_unknown_fields=True):
    """A remote function callable here under another id."""

    local_function: str
    remote_function: str
    timeout_ms: Union[TimeoutMs, None] = None


class BridgeModuleConfig(msgspec.Struct, forbid_unknown_fields=True):
    """The ``iii-bridge`` entry's ``config`` (the original's three keys, nothing else)."""

    #: The remote engine's worker listener (absent: ``III_URL``, else ``ws://0.0.0.0:49134``).
    url: Union[str, None] = None
    expose: list[ExposeEntry] = []
    forward: list[ForwardEntry] = []


class InvokeInput(msgspec.Struct):
    """What ``bridge.invoke`` and ``bridge.invoke_async`` take."""

    function_id: str
    data: Any = None
    #: ``bridge.invoke`` only (``bridge.invoke_async`` waits for nothing).
    timeout_ms: Union[TimeoutMs, None] = None


def _parse_invoke(data: Any) -> InvokeInput:
    try:
        return msgspec.convert(data, InvokeInput)
    except msgspec.ValidationError as exc:
        raise EngineError(ErrorCode.DESERIALIZATION_ERROR, f"Failed to parse invoke input: {exc}") from None


class Bridge:
    """The module: its client and what it registers here and on the remote."""

    def __init__(self, host: Host, config: BridgeModuleConfig) -> None:
        self._host = host
        self.config = config
        self.client = BridgeClient(config.url or os.environ.get("III_URL") or DEFAULT_URL, WORKER_NAME)

    async def start(self) -> None:
        """Connect in the background and register the exposed functions on the remote."""
        self.client.start()
        for entry in self.config.expose:
            self.client.register_function(
                entry.remote_function or entry.local_function, self._local_caller(entry.local_function),
                description=f"Bridged to {entry.local_function}",
            )

    async def stop(self) -> None:
        await self.client.stop()

    def _local_caller(self, function_id: str) -> Any:
        """The handler of an exposed function: the local call's answer, or its error."""
        host = self._host

        async def call_local(data: Any) -> Any:
            result, error = await call(
                host, DEFAULT_NAMESPACE, function_id, codec.encode_json(data),
                timeout_ms=DEFAULT_INVOCATION_TIMEOUT_MS,
            )
            if error is not None:
                raise ReplyError(error.code, error.message, error.stacktrace)
            return result

        return call_local

    async def _remote(self, function_id: str, data: Any, timeout_ms: int) -> Any:
        try:
            return await self.client.call(function_id, data, timeout_ms=timeout_ms)
        except BridgeError as exc:
            raise EngineError(BRIDGE_ERROR, str(exc)) from None

    def invoke(self, host: Host, caller: Optional[Connection], data: Any) -> Any:
        request = _parse_invoke(data)
        return asyncio.ensure_future(
            self._remote(request.function_id, request.data, request.timeout_ms or BRIDGE_CALL_TIMEOUT_MS)
        )

    def invoke_async(self, host: Host, caller: Optional[Connection], data: Any) -> Any:
        request = _parse_invoke(data)

        async def send() -> None:
            try:
                await self.client.send(request.function_id, request.data)
            except BridgeError as exc:
                raise EngineError(BRIDGE_ERROR, str(exc)) from None

        return asyncio.ensure_future(send())

    def forwarder(self, entry: ForwardEntry) -> Any:
        """The handler of a forwarded function."""
        timeout_ms = entry.timeout_ms or BRIDGE_CALL_TIMEOUT_MS

        def forward(host: Host, caller: Optional[Connection], data: Any) -> Any:
            return asyncio.ensure_future(self._remote(entry.remote_function, data, timeout_ms))

        return forward


def install(host: Host, config: Optional[BridgeModuleConfig] = None) -> Bridge:
    """Register ``bridge.invoke``, ``bridge.invoke_async`` and the forwarded functions; the
    engine then awaits ``start()`` (which only starts connecting).

    Raises:
        ConfigError: a forward's ``local_function`` is taken (by a built-in or another forward).
    """
    bridge = Bridge(host, config or BridgeModuleConfig())
    invoke_format = json_schema(InvokeInput)
    host.add_function(
        "bridge.invoke", bridge.invoke, module=NAME, request_format=invoke_format,
        description="Invoke a function on the remote III instance",
    )
    host.add_function(
        "bridge.invoke_async", bridge.invoke_async, module=NAME, request_format=invoke_format,
        description="Fire-and-forget invoke on the remote III instance",
    )
    for entry in bridge.config.forward:
        if host.find_function(DEFAULT_NAMESPACE, entry.local_function) is not None:
            raise ConfigError(
                f"iii-bridge: forward.local_function {entry.local_function!r} is already a function "
                "of this engine; give the forward another id"
            )
        host.add_function(
            entry.local_function, bridge.forwarder(entry), module=NAME,
            description=f"Forward to remote function {entry.remote_function}",
        )
    return bridge


MODULE = BuiltinModule(
    NAME,
    "Connect to another iii engine: expose local functions there, forward calls to its functions",
    BridgeModuleConfig,
    install,
    opt_in=True,
)
