"""Trigger bindings and custom trigger types (the official SDK's classic API)."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Generic, Optional, TypeVar

from iii.iii_types import RegisterTriggerTypeInput

if TYPE_CHECKING:
    from iii.sdk.client import III

__all__ = ["C", "R", "TConfig", "TriggerConfig", "TriggerHandler", "Trigger", "TriggerTypeRef", "RegisterTriggerTypeInput"]

TConfig = TypeVar("TConfig")
C = TypeVar("C")
R = TypeVar("R")


@dataclass
class TriggerConfig(Generic[TConfig]):
    """A binding delivered to a trigger-type provider."""

    id: str
    function_id: str
    config: Any
    metadata: Optional[dict[str, Any]] = None
    namespace: Optional[str] = None


class TriggerHandler(ABC, Generic[TConfig]):
    """Provider side of a trigger type: told when bindings of the type come and go."""

    @abstractmethod
    async def register_trigger(self, config: TriggerConfig[TConfig]) -> None:
        """A binding of this type was created (raise to refuse it)."""

    @abstractmethod
    async def unregister_trigger(self, config: TriggerConfig[TConfig]) -> None:
        """A binding of this type was removed."""


class Trigger:
    """A binding this worker created; ``unregister()`` removes it."""

    def __init__(self, unregister_fn: Callable[[], None]) -> None:
        self._unregister_fn = unregister_fn

    def unregister(self) -> None:
        self._unregister_fn()


class TriggerTypeRef(Generic[C, R]):
    """Handle returned by ``register_trigger_type``."""

    def __init__(
        self,
        iii: "III",
        trigger_type_id: str,
        config_cls: Optional[type] = None,
        request_cls: Optional[type] = None,
    ) -> None:
        # config_cls is in the official signature; configs are sent as given, so it is not kept.
        self._iii = iii
        self._trigger_type_id = trigger_type_id
        self._request_cls = request_cls

    @property
    def id(self) -> str:
        return self._trigger_type_id

    def register_trigger(self, function_id: str, config: C, metadata: Optional[dict[str, Any]] = None) -> Trigger:
        """Bind ``function_id`` to this type in the worker's namespace."""
        value = config.model_dump() if hasattr(config, "model_dump") else config
        return self._iii.register_trigger(
            {"type": self._trigger_type_id, "function_id": function_id, "config": value, "metadata": metadata}
        )

    def register_function(self, function_id: str, handler: Callable[..., Any], *, description: Optional[str] = None) -> Any:
        return self._iii.register_function(function_id, handler, description=description)

    def unregister(self) -> None:
        self._iii.unregister_trigger_type({"id": self._trigger_type_id})
