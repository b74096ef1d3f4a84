"""Shared fixtures: codec twins, subprocess bookkeeping, the official SDK runtimes."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from helpers import ROOT, Procs, Workers

IN_CI = bool(os.environ.get("CI"))


def _missing(what: str) -> None:
    """Absent optional runtime: skip on a developer machine, fail in CI (it must be there)."""
    if IN_CI:
        pytest.fail(f"{what} is required in CI")
    pytest.skip(f"{what} is not installed")


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
