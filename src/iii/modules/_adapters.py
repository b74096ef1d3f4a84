"""What the modules' configs share: the check of an ``adapter`` entry."""

from __future__ import annotations

from typing import Any, Optional

__all__ = ["check_adapter"]


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
