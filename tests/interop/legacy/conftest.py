"""Workers on the older official iii-sdk 0.11.3 (its own venv, ``.venv-sdk0113``) beside the
interop suite's 0.25.0, Node 0.22.1 and our own."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from helpers import ROOT, Proc, Workers

SDK0113_WORKER = Path(__file__).with_name("sdk0113_worker.py")


@pytest.fixture(scope="session")
def sdk0113_python() -> str:
    """The interpreter of the venv holding the official ``iii-sdk==0.11.3``."""
    path = os.environ.get("III_SDK0113_PYTHON") or str(ROOT / ".venv-sdk0113" / "bin" / "python")
    if not Path(path).exists():
        if os.environ.get("CI"):
            pytest.fail(f"the iii-sdk 0.11.3 venv ({path}) is required in CI")
        pytest.skip(f"the iii-sdk 0.11.3 venv ({path}) is not installed")
    return path


class LegacyWorkers:
    """Starts scripted workers as ``workers.start`` does, with one more runtime: ``sdk0113``."""

    def __init__(self, workers: Workers, python: str) -> None:
        self.workers = workers
        self._python = python

    async def start(self, runtime: str, name: str, *args: str, calls: Any = None) -> Proc:
        if runtime != "sdk0113":
            return await self.workers.start(runtime, name, *args, calls=calls)
        argv = [name, *args]
        if calls is not None:
            argv += ["--calls", json.dumps(calls)]
        return await self.workers.procs.start(
            self._python, str(SDK0113_WORKER), *argv,
            env={"III_URL": self.workers.engine.url}, label=f"sdk0113:{name}",
        )


@pytest.fixture
def legacy(workers, sdk0113_python) -> LegacyWorkers:
    return LegacyWorkers(workers, sdk0113_python)
