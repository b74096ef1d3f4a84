"""Fixtures for workers on the older official iii-sdk 0.11.3 (its own venv, ``.venv-sdk0113``)
beside the interop suite's 0.25.0, Node 0.22.1 and our own."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from legacy_workers import LegacyWorkers

from helpers import ROOT


@pytest.fixture(scope="session")
def sdk0113_python() -> str:
    """The interpreter of the venv holding the official ``iii-sdk==0.11.3``."""
    path = os.environ.get("III_SDK0113_PYTHON") or str(ROOT / ".venv-sdk0113" / "bin" / "python")
    if not Path(path).exists():
        if os.environ.get("CI"):
            pytest.fail(f"the iii-sdk 0.11.3 venv ({path}) is required in CI")
        pytest.skip(f"the iii-sdk 0.11.3 venv ({path}) is not installed")
    return path


@pytest.fixture
def legacy(workers, sdk0113_python) -> LegacyWorkers:
    return LegacyWorkers(workers, sdk0113_python)
