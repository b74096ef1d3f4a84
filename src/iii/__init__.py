"""iii for Python: a drop-in for the official ``iii-sdk`` worker API, and a fast engine.

Worker code written for the official package works unchanged::

    from iii import register_worker, InitOptions
    worker = register_worker(options=InitOptions(worker_name="math"))
    worker.register_function("math::add", lambda data: {"c": data["a"] + data["b"]})

The engine lives in :mod:`iii.engine` and runs with the ``iii`` command.
"""

from iii._version import __version__
from iii.channels import StreamRequest, StreamResponse
from iii.errors import IIIError, InvocationError, RegistrationRejectedError
from iii.iii_constants import (
    DEFAULT_ENGINE_URL,
    ConnectionStateCallback,
    EngineFunctions,
    EngineTriggers,
    IIIConnectionState,
    InitOptions,
    ReconnectionConfig,
    TelemetryOptions,
)
from iii.logger import Logger
from iii.sdk.client import (
    III,
    EnqueueResult,
    TriggerAction,
    TriggerActionEnqueue,
    TriggerActionVoid,
    register_worker,
    register_worker_async,
)
from iii.iii_types import MiddlewareFunctionInput
from iii.stream import IStream
from iii.triggers import TriggerConfig, TriggerHandler
from iii.types import IIIClient

__all__ = [
    "__version__",
    "ConnectionStateCallback",
    "DEFAULT_ENGINE_URL",
    "EngineFunctions",
    "EngineTriggers",
    "EnqueueResult",
    "III",
    "IIIClient",
    "IIIConnectionState",
    "IIIError",
    "InitOptions",
    "InvocationError",
    "IStream",
    "Logger",
    "MiddlewareFunctionInput",
    "ReconnectionConfig",
    "RegistrationRejectedError",
    "StreamRequest",
    "StreamResponse",
    "TelemetryOptions",
    "TriggerAction",
    "TriggerActionEnqueue",
    "TriggerActionVoid",
    "TriggerConfig",
    "TriggerHandler",
    "register_worker",
    "register_worker_async",
]
