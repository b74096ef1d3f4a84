"""Compatibility path of the official package (``from iii.iii import III``)."""

from typing import TypeVar

from iii.sdk.client import III, TriggerAction, register_worker, resolve_engine_url

__all__ = ["III", "TResult", "TriggerAction", "register_worker", "resolve_engine_url"]

TResult = TypeVar("TResult")
