"""Chooses the per-frame path of worker connections: the compiled ``iii.engine._frames`` when the
compiled codec is in use (they go together), else the pure twin ``_frames_py``.

``III_NO_EXTENSIONS=1`` forces the pure twins (through :mod:`iii.codec`).
"""

from __future__ import annotations

from iii.codec import IMPLEMENTATION

if IMPLEMENTATION == "c":
    try:
        from iii.engine._frames import FrameListener
    except ImportError:
        from iii.engine._frames_py import FrameListener  # type: ignore[assignment]
else:
    from iii.engine._frames_py import FrameListener  # type: ignore[assignment]

__all__ = ["FrameListener"]
