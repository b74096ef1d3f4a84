"""The worker listener's twins: one source (``_frames_py.py``), run as Python or built by Cython.

What they do over real sockets is ``test_server.py``'s (every test there runs on both builds).
"""

from __future__ import annotations

import inspect
import os
import subprocess
import sys

import pytest
from picows import WSListener

from iii.engine import _frames_py

IN_CI = bool(os.environ.get("CI"))


@pytest.fixture
def compiled():
    try:
        from iii.engine import _frames
    except ImportError:
        if IN_CI:
            pytest.fail("the compiled iii.engine._frames extension is required in CI")
        pytest.skip("the compiled iii.engine._frames extension is not installed")
    return _frames


def _methods(cls: type) -> set[str]:
    return {name for name, value in vars(cls).items() if callable(value) and not name.startswith("__")}


@pytest.mark.parametrize("name", ["WorkerListener", "TelemetryListener"])
def test_both_twins_have_the_same_listeners(compiled, name):
    pure, built = getattr(_frames_py, name), getattr(compiled, name)
    assert issubclass(pure, WSListener) and issubclass(built, WSListener)
    assert _methods(pure) <= set(dir(built))
    assert compiled.__all__ == _frames_py.__all__


def test_the_compiled_worker_listener_is_a_cdef_class(compiled):
    """picows calls its callbacks through the C vtable: they are C methods, its state C fields."""
    listener = compiled.WorkerListener
    assert listener.__bases__ == (WSListener,)
    for callback in ("on_ws_connected", "on_ws_frame", "on_ws_disconnected", "pause_writing", "resume_writing"):
        assert inspect.isfunction(getattr(_frames_py.WorkerListener, callback))
        assert not inspect.isfunction(getattr(listener, callback)), callback
    for attribute in _frames_py.WorkerListener.__slots__:
        assert inspect.isdatadescriptor(getattr(listener, attribute)), attribute


def _selected(env: dict[str, str], block_cython: bool = False) -> str:
    code = (
        ("import sys; sys.modules['cython'] = None\n" if block_cython else "")
        + "from iii.engine import frames\n"
        "print(frames.WorkerListener.__module__, frames.TelemetryListener.__module__)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], env=os.environ | env, capture_output=True, text=True, check=True)
    return out.stdout.strip()


def test_frames_picks_the_compiled_twin_unless_told_not_to(compiled):
    assert _selected({}) == "iii.engine._frames iii.engine._frames"
    assert _selected({"III_NO_EXTENSIONS": "1"}) == "iii.engine._frames_py iii.engine._frames_py"


def test_the_pure_twin_needs_no_cython():
    """Cython only builds the compiled twin; the installed package does not depend on it."""
    assert _selected({"III_NO_EXTENSIONS": "1"}, block_cython=True) == "iii.engine._frames_py iii.engine._frames_py"
