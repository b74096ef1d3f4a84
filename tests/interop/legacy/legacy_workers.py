"""Starting scripted workers on the official iii-sdk 0.11.3 (``sdk0113_worker.py``)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from helpers import Proc, Procs, Workers

__all__ = ["LegacyWorkers", "SDK0113_WORKER", "start_sdk0113"]

SDK0113_WORKER = Path(__file__).with_name("sdk0113_worker.py")


async def start_sdk0113(procs: Procs, python: str, url: str, name: str, *args: str, calls: Any = None) -> Proc:
    """Start ``sdk0113_worker.py`` (the command line of ``py_worker.py``) against ``url``."""
    argv = [name, *args]
    if calls is not None:
        argv += ["--calls", json.dumps(calls)]
    return await procs.start(python, str(SDK0113_WORKER), *argv, env={"III_URL": url}, label=f"sdk0113:{name}")


class LegacyWorkers:
    """Starts scripted workers as ``workers.start`` does, with one more runtime: ``sdk0113``."""

    def __init__(self, workers: Workers, python: str) -> None:
        self.workers = workers
        self._python = python

    async def start(self, runtime: str, name: str, *args: str, calls: Any = None) -> Proc:
        if runtime != "sdk0113":
            return await self.workers.start(runtime, name, *args, calls=calls)
        return await start_sdk0113(self.workers.procs, self._python, self.workers.engine.url, name, *args, calls=calls)
