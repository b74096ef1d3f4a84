"""Public runtime types (the official ``iii.runtime``)."""

from iii.iii_constants import FunctionRef, IIIConnectionState
from iii.triggers import TriggerTypeRef

__all__ = ["FunctionRef", "IIIConnectionState", "TriggerTypeRef"]
