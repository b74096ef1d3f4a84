from iii.engine._frames_py import FrameListener as FrameListener

__all__ = ["FrameListener"]
