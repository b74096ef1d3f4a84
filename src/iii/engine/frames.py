"""Chooses the worker listener: the compiled ``iii.engine._frames`` (``_frames_py.py`` built by
Cython as a ``cdef`` picows ``WSListener``, see ``_frames.pxd``) when the compiled codec is in use
(they go together), else ``_frames_py`` run as Python.

``III_NO_EXTENSIONS=1`` forces the pure twins (through :mod:`iii.codec`).
"""

from __future__ import annotations

from iii.codec import IMPLEMENTATION

if IMPLEMENTATION == "c":
    try:
        from iii.engine._frames import TelemetryListener, WorkerListener
    except ImportError:
        from iii.engine._frames_py import TelemetryListener, WorkerListener
else:
    from iii.engine._frames_py import TelemetryListener, WorkerListener

__all__ = ["TelemetryListener", "WorkerListener"]
