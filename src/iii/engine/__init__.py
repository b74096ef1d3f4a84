"""The iii engine: the routing core (:mod:`.router`) and the WebSocket server around it.

For the official SDK's ``iii.engine`` (constants and the handler type), this package also
exports ``EngineFunctions``, ``EngineTriggers`` and ``RemoteFunctionHandler``, loaded on first
use so the engine does not import the SDK.
"""

from typing import Any

__all__ = ["EngineFunctions", "EngineTriggers", "RemoteFunctionHandler"]


def __getattr__(name: str) -> Any:
    if name in ("EngineFunctions", "EngineTriggers"):
        from iii import iii_constants

        return getattr(iii_constants, name)
    if name == "RemoteFunctionHandler":
        from iii.types import RemoteFunctionHandler

        return RemoteFunctionHandler
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
