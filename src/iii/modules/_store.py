"""The ``kv`` adapter's ``file_based`` store: a module's data kept in a JSON file.

Loaded when the module starts; written at most every ``save_interval_ms`` after a change, and at
stop, through a temporary file and a rename (a crash never leaves half a file).
"""

from __future__ import annotations

import asyncio
import logging
import os
from pathlib import Path
from typing import Any, Callable, Optional

__all__ = ["STORES", "Snapshots", "store_settings"]

log = logging.getLogger("iii.modules")

#: The ``store_method`` values of the ``kv`` adapter.
STORES = ("in_memory", "file_based")


def store_settings(adapter: Optional[dict[str, Any]], default_path: str, save_interval_ms: Optional[int]) -> tuple[Optional[Path], float]:
    """``(file, seconds between saves)`` from a ``kv`` adapter; no file for the in-memory store."""
    settings = (adapter or {}).get("config") or {}
    interval_ms = settings.get("save_interval_ms", save_interval_ms or 5000)
    if settings.get("store_method", "in_memory") != "file_based":
        return None, interval_ms / 1000
    return Path(settings.get("file_path") or default_path), interval_ms / 1000


class Snapshots:
    """Keeps what ``dump()`` returns in ``path``; ``load(data)`` restores it at start."""

    def __init__(self, path: Optional[Path], interval_s: float, dump: Callable[[], bytes], load: Callable[[bytes], None]) -> None:
        self.path = path
        self._interval_s = interval_s
        self._dump = dump
        self._load = load
        self._timer: Optional[asyncio.TimerHandle] = None

    def start(self) -> None:
        if self.path is not None and self.path.exists():
            self._load(self.path.read_bytes())
            log.info("loaded %s", self.path)

    def changed(self) -> None:
        """Something changed: save soon (one save for every change made until then)."""
        if self.path is not None and self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(self._interval_s, self.save)

    def save(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self.path is None:
            return
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            temporary = self.path.with_name(self.path.name + ".tmp")
            temporary.write_bytes(self._dump())
            os.replace(temporary, self.path)
        except OSError as exc:  # the data stays in memory; the next change tries again
            log.error("cannot save %s: %s", self.path, exc)

    def stop(self) -> None:
        """Write what is not saved yet."""
        if self._timer is not None:
            self.save()
