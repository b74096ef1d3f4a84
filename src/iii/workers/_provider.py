"""What the in-process modules share: a trigger type provider that keeps parsed bindings, the
firing rule (condition function first, then the bound function), and awaitable calls."""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any, Callable, Generic, Optional, TypeVar

import msgspec

from iii import codec
from iii.engine.registry import Binding
from iii.protocol import ErrorBody

if TYPE_CHECKING:
    from iii.engine.router import Router

__all__ = ["Provider", "fire", "call", "check_adapter"]

log = logging.getLogger("iii.workers")

Config = TypeVar("Config")


class Provider(Generic[Config]):
    """An in-process trigger type: validates each binding's config and keeps the valid ones.

    Args:
        config_type: the msgspec Struct a binding's config decodes into.
        check: further validation; returns a refusal message or ``None``.
    """

    def __init__(self, config_type: type[Config], check: Optional[Callable[[Config], Optional[str]]] = None) -> None:
        self._decoder = msgspec.json.Decoder(config_type)
        self._check = check
        #: binding id -> (binding, its parsed config)
        self.bindings: dict[str, tuple[Binding, Config]] = {}

    def register(self, binding: Binding) -> Optional[str]:
        try:
            config = self._decoder.decode(binding.config if binding.config not in (b"", b"null") else b"{}")
        except msgspec.DecodeError as exc:
            return f"Invalid trigger config: {exc}"
        refusal = self._check(config) if self._check is not None else None
        if refusal is None:
            self.bindings[binding.id] = (binding, config)
        return refusal

    def unregister(self, binding: Binding) -> None:
        self.bindings.pop(binding.id, None)


def fire(
    router: Router,
    binding: Binding,
    payload: bytes,
    condition_function_id: Optional[str] = None,
    *,
    with_metadata: bool = True,
    on_done: Optional[Callable[[], None]] = None,
) -> None:
    """Call the bound function with ``payload`` (an engine-originated call).

    With a condition function, that is called first (binding namespace, no metadata) with the
    same payload, and the bound function runs unless it answers exactly ``false``; a condition
    that fails skips the call and is logged. ``on_done``, if given, runs once it is all over:
    the function answered (a failure is logged) or was skipped.
    """
    metadata = binding.metadata if with_metadata and binding.metadata else b""

    def answered(result: bytes, error: Optional[ErrorBody]) -> None:
        if error is not None:
            log.warning("trigger %s: %s failed: %s", binding.id, binding.function_id, error.message)
        on_done()  # type: ignore[misc]

    def call() -> None:
        router.invoke(
            binding.namespace, binding.function_id, payload, metadata,
            on_result=answered if on_done is not None else None,
        )

    if not condition_function_id:
        call()
        return

    def after_condition(result: bytes, error: Optional[ErrorBody]) -> None:
        if error is not None:
            log.warning(
                "trigger %s: condition %s failed, %s not called: %s",
                binding.id, condition_function_id, binding.function_id, error.message,
            )
        elif result.strip() != b"false":
            call()
            return
        if on_done is not None:
            on_done()

    router.invoke(binding.namespace, condition_function_id, payload, b"", on_result=after_condition)


def call(router: Router, namespace: str, function_id: str, payload: bytes, metadata: bytes = b"") -> asyncio.Future:
    """Call a function from a coroutine: the future resolves to ``(decoded result, error)``."""
    future = asyncio.get_running_loop().create_future()

    def answered(result: bytes, error: Optional[ErrorBody]) -> None:
        if not future.done():  # the caller may have given up (a timeout)
            future.set_result((None if error is not None else codec.decode_json(result), error))

    router.invoke(namespace, function_id, payload, metadata, on_result=answered)
    return future


def check_adapter(adapter: Optional[dict[str, Any]], name: str, *, stores: tuple[str, ...] = ()) -> None:
    """Refuse a module ``adapter`` this engine does not have: only ``name`` runs here, with one of
    ``stores`` as its ``store_method`` where the adapter has a store.

    Raises:
        ValueError: the message says what is available (msgspec reports it as a config error).
    """
    if adapter is None:
        return
    settings = adapter.get("config") or {}
    store = settings.get("store_method", "in_memory") if isinstance(settings, dict) else None
    if adapter.get("name") != name or (stores and store not in stores):
        wanted = f"{{name: {name}, config: {{store_method: {' | '.join(stores)}}}}}" if stores else f"{{name: {name}}}"
        raise ValueError(f"adapter {adapter!r} is not available here (only {wanted}: one engine)")
