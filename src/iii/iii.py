"""Compatibility path of the official package (``from iii.iii import III``)."""

from iii.sdk.client import III, TriggerAction, register_worker, resolve_engine_url

__all__ = ["III", "TriggerAction", "register_worker", "resolve_engine_url"]
