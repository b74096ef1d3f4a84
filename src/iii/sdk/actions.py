"""The ``action`` of a ``trigger`` request: :class:`TriggerAction` and the values it makes."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

__all__ = ["TriggerAction", "TriggerActionVoid", "TriggerActionEnqueue", "EnqueueResult"]


@dataclass(frozen=True)
class TriggerActionVoid:
    """Fire and forget: ``trigger`` returns ``None`` at once."""

    type: str = "void"

    def model_dump(self) -> dict[str, Any]:
        return {"type": self.type}


@dataclass(frozen=True)
class TriggerActionEnqueue:
    """Hand the call to a named queue: ``trigger`` returns ``{"messageReceiptId": …}``."""

    queue: str
    type: str = "enqueue"

    def model_dump(self) -> dict[str, Any]:
        return {"type": self.type, "queue": self.queue}


@dataclass(frozen=True)
class EnqueueResult:
    """What an enqueue returns (``trigger`` itself returns the plain dict)."""

    messageReceiptId: str


class TriggerAction:
    """Factories for the ``action`` of a ``trigger`` request."""

    @staticmethod
    def Void() -> TriggerActionVoid:  # noqa: N802 (official name)
        return TriggerActionVoid()

    @staticmethod
    def Enqueue(*, queue: str) -> TriggerActionEnqueue:  # noqa: N802 (official name)
        return TriggerActionEnqueue(queue=queue)
