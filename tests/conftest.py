"""Shared fixtures: codec twins, event loops, subprocess bookkeeping, the official SDK runtimes."""

from __future__ import annotations

import asyncio
import os
import shutil
from pathlib import Path

import pytest
import uvloop

from helpers import ROOT, Procs, RedisServer, Workers

IN_CI = bool(os.environ.get("CI"))


def _missing(what: str) -> None:
    """Absent optional runtime: skip on a developer machine, fail in CI (it must be there)."""
    if IN_CI:
        pytest.fail(f"{what} is required in CI")
    pytest.skip(f"{what} is not installed")


#: The loops an async test marked ``both_loops`` runs on (ids visible in pytest's output).
BOTH_LOOPS = {"asyncio": asyncio.new_event_loop, "uvloop": uvloop.new_event_loop}


def pytest_configure(config):
    config.addinivalue_line(
        "markers",
        "both_loops: run each async test on asyncio's stdlib loop (the reference) and on uvloop",
    )


def pytest_asyncio_loop_factories(config, item):
    """pytest-asyncio's way (1.x) to parametrize the loop: both loops where a test module opts in
    with ``pytestmark = pytest.mark.both_loops``, the stdlib loop elsewhere (so the suite does
    not double)."""
    if item.get_closest_marker("both_loops"):
        return BOTH_LOOPS
    return {"asyncio": asyncio.new_event_loop}


@pytest.fixture(params=["py", "c"])
def codec(request, monkeypatch):
    """Runs a test against both codec twins (the router and engine functions use it)."""
    if request.param == "py":
        from iii import _codec_py as twin
    else:
        try:
            from iii import _codec as twin  # type: ignore[no-redef]
        except ImportError:
            _missing("the compiled iii._codec extension")
    import iii.engine.functions
    import iii.engine.router

    monkeypatch.setattr(iii.engine.router, "codec", twin)
    monkeypatch.setattr(iii.engine.functions, "codec", twin)
    return twin


@pytest.fixture
async def procs():
    tracker = Procs()
    yield tracker
    await tracker.close()


@pytest.fixture
async def engine(procs, tmp_path):
    return await procs.engine(tmp=tmp_path)


@pytest.fixture(scope="session")
def official_python() -> str:
    """The interpreter of the venv holding the official ``iii-sdk==0.25.0``."""
    path = os.environ.get("III_OFFICIAL_PYTHON") or str(ROOT / ".venv-official" / "bin" / "python")
    if not Path(path).exists():
        _missing(f"the official Python iii-sdk venv ({path})")
    return path


@pytest.fixture(scope="session")
def node() -> str:
    """``node``, with the official ``iii-sdk`` installed under tests/interop/node."""
    node_path = shutil.which("node")
    if node_path is None or not (ROOT / "tests/interop/node/node_modules/iii-sdk").exists():
        _missing("node with the official iii-sdk (npm ci in tests/interop/node)")
    return node_path  # type: ignore[return-value]


@pytest.fixture
def workers(procs, engine, official_python, node) -> Workers:
    return Workers(procs, engine, official_python, node)


@pytest.fixture
def redis_server(tmp_path):
    """A real redis-server for this test (see :class:`helpers.RedisServer`), stopped at teardown."""
    if shutil.which("redis-server") is None:
        _missing("redis-server (apt-get install redis-server)")
    server = RedisServer(tmp_path / "redis")
    server.start()
    yield server
    server.stop()
