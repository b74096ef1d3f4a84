"""Public trigger types (the official ``iii.trigger``)."""

from iii.iii_types import TriggerActionVoid
from iii.triggers import Trigger, TriggerConfig, TriggerHandler

__all__ = ["Trigger", "TriggerActionVoid", "TriggerConfig", "TriggerHandler"]
