"""Constants and option types of the SDK (same names and defaults as the official one)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Final, Literal, Optional

__all__ = [
    "IIIConnectionState",
    "ConnectionStateCallback",
    "DEFAULT_ENGINE_URL",
    "DEFAULT_INVOCATION_TIMEOUT_MS",
    "MAX_QUEUE_SIZE",
    "ReconnectionConfig",
    "DEFAULT_RECONNECTION_CONFIG",
    "FunctionRef",
    "TelemetryOptions",
    "OtelConfig",
    "InitOptions",
    "EngineFunctions",
    "EngineTriggers",
]

IIIConnectionState = Literal["disconnected", "connecting", "connected", "reconnecting", "failed"]
ConnectionStateCallback = Callable[["IIIConnectionState"], None]

DEFAULT_INVOCATION_TIMEOUT_MS = 30000
#: Frames kept while disconnected; the oldest is dropped beyond this.
MAX_QUEUE_SIZE = 1000
#: Used when neither an explicit address nor ``III_URL`` is set (IPv4 loopback on purpose).
DEFAULT_ENGINE_URL = "ws://127.0.0.1:49134"


@dataclass
class ReconnectionConfig:
    """Backoff between reconnect attempts: ``initial × multiplier^attempt``, capped, ± jitter."""

    initial_delay_ms: int = 1000
    max_delay_ms: int = 30000
    backoff_multiplier: float = 2.0
    jitter_factor: float = 0.3
    #: ``-1``: retry forever.
    max_retries: int = -1


DEFAULT_RECONNECTION_CONFIG = ReconnectionConfig()


@dataclass
class FunctionRef:
    """A registered function; ``unregister()`` removes it from the engine."""

    id: str
    unregister: Callable[[], None]


@dataclass
class TelemetryOptions:
    """Worker metadata reported to the engine (language, framework, project)."""

    language: Optional[str] = None
    project_name: Optional[str] = None
    framework: Optional[str] = None


@dataclass
class OtelConfig:
    """OpenTelemetry settings of the official SDK; accepted for compatibility (this SDK sends no
    telemetry)."""

    enabled: Optional[bool] = None
    service_name: Optional[str] = None
    service_version: Optional[str] = None
    service_namespace: Optional[str] = None
    service_instance_id: Optional[str] = None
    engine_ws_url: Optional[str] = None
    fetch_instrumentation_enabled: bool = True
    spans_flush_interval_ms: Optional[int] = None
    logs_enabled: Optional[bool] = None
    logs_flush_interval_ms: Optional[int] = None
    logs_batch_size: Optional[int] = None
    metrics_enabled: bool = True
    metrics_export_interval_ms: int = 60000
    engine_ws_headers: Optional[dict[str, str]] = None


@dataclass
class InitOptions:
    """Options of ``register_worker``.

    Attributes:
        worker_name: display name; a non-empty ``III_WORKER_NAME`` overrides it. Defaults to
            ``hostname:pid``.
        worker_description: one-line summary shown by ``engine::workers::list``.
        namespace: this worker's namespace (falls back to ``III_NAMESPACE``); its functions
            register there and its calls and triggers resolve there unless they name another.
        enable_metrics_reporting: accepted for compatibility (metrics need OpenTelemetry).
        invocation_timeout_ms: default ``trigger()`` timeout.
        reconnection_config: reconnect backoff.
        otel: accepted for compatibility; telemetry is off in this SDK.
        headers: extra WebSocket handshake headers. ``Authorization: Bearer $III_TOKEN`` is
            added when ``III_TOKEN`` is set and no ``Authorization`` is given.
        telemetry: metadata reported to the engine.
    """

    worker_name: Optional[str] = None
    worker_description: Optional[str] = None
    namespace: Optional[str] = None
    enable_metrics_reporting: bool = True
    invocation_timeout_ms: int = DEFAULT_INVOCATION_TIMEOUT_MS
    reconnection_config: Optional[ReconnectionConfig] = None
    otel: Any = None
    headers: Optional[dict[str, str]] = None
    telemetry: Optional[TelemetryOptions] = field(default=None)


class EngineFunctions:
    """Ids of the engine's own functions."""

    LIST_FUNCTIONS: Final[str] = "engine::functions::list"
    INFO_FUNCTIONS: Final[str] = "engine::functions::info"
    LIST_WORKERS: Final[str] = "engine::workers::list"
    INFO_WORKERS: Final[str] = "engine::workers::info"
    LIST_TRIGGERS: Final[str] = "engine::triggers::list"
    INFO_TRIGGERS: Final[str] = "engine::triggers::info"
    LIST_REGISTERED_TRIGGERS: Final[str] = "engine::registered-triggers::list"
    INFO_REGISTERED_TRIGGERS: Final[str] = "engine::registered-triggers::info"
    REGISTER_WORKER: Final[str] = "engine::workers::register"


class EngineTriggers:
    """Ids of the engine's own trigger types."""

    FUNCTIONS_AVAILABLE: Final[str] = "engine::functions-available"
    WORKERS_AVAILABLE: Final[str] = "engine::workers-available"
    LOG: Final[str] = "log"
