from iii.engine._frames_py import TelemetryListener as TelemetryListener
from iii.engine._frames_py import WorkerListener as WorkerListener

__all__ = ["TelemetryListener", "WorkerListener"]
