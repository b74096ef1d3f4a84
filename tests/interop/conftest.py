"""Starting official-SDK workers (Python in its own venv, Node from npm) against our engine."""

from __future__ import annotations

import json
from typing import Any

import pytest

from helpers import ROOT, EngineProc, Proc, Procs

PY_WORKER = ROOT / "tests/interop/workers/py_worker.py"
NODE_WORKER = ROOT / "tests/interop/node/worker.mjs"


class Workers:
    """Starts scripted official-SDK workers: ``await workers.python("name", "--fn", "a::b=add")``."""

    def __init__(self, procs: Procs, engine: EngineProc, python: str, node: str) -> None:
        self.procs = procs
        self.engine = engine
        self._python = python
        self._node = node

    async def start(self, runtime: str, name: str, *args: str, calls: Any = None) -> Proc:
        argv = [name, *args]
        if calls is not None:
            argv += ["--calls", json.dumps(calls)]
        if runtime == "python":
            cmd = [self._python, str(PY_WORKER), *argv]
        else:
            cmd = [self._node, str(NODE_WORKER), *argv]
        return await self.procs.start(
            *cmd, env={"III_URL": self.engine.url}, label=f"{runtime}:{name}"
        )

    async def python(self, name: str, *args: str, calls: Any = None) -> Proc:
        return await self.start("python", name, *args, calls=calls)

    async def node(self, name: str, *args: str, calls: Any = None) -> Proc:
        return await self.start("node", name, *args, calls=calls)


@pytest.fixture
def workers(procs, engine, official_python, node) -> Workers:
    return Workers(procs, engine, official_python, node)


async def call_results(proc: Proc, count: int) -> list[dict]:
    """The outcome lines of the first ``count`` scripted calls, in order."""
    return [await proc.key("call", index, timeout=30) for index in range(count)]
