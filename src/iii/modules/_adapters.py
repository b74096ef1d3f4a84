"""The ``adapter`` entries of the modules' configs, typed: ``{name: <adapter>, config: {…}}``.

Each module's ``adapter`` is a union of msgspec Structs tagged on ``name``, so a bad value is a
config error that names its key (``$.adapter.config.save_interval_ms``). The in-process
adapters are ``kv`` (state, stream, cron), ``builtin`` (queue) and ``local`` (pubsub); ``redis``
shares a module's data between engines, ``bridge`` runs its operations on another engine. An
adapter of the original that a module does not have here (``rabbitmq``) decodes too, only to be
refused with a message that says so; any other name is an invalid value.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal, Optional, Union

import msgspec

__all__ = [
    "BridgeAdapter",
    "BridgeConfig",
    "BuiltinAdapter",
    "CronAdapter",
    "CronKvAdapter",
    "CronKvConfig",
    "KvAdapter",
    "LocalAdapter",
    "PubSubAdapter",
    "QueueAdapter",
    "RabbitmqAdapter",
    "RedisAdapter",
    "RedisConfig",
    "RedisQueueAdapter",
    "RedisQueueConfig",
    "StateAdapter",
    "StoreConfig",
    "StreamAdapter",
    "StreamKvAdapter",
    "StreamKvConfig",
    "database_path",
]


class StoreConfig(msgspec.Struct, forbid_unknown_fields=True):
    """``config`` of the ``kv`` and ``builtin`` adapters: where a module keeps its data."""

    #: ``in_memory``: lost when the engine stops; ``file_based``: every write is in the file
    #: (a SQLite database) before it is acknowledged.
    store_method: Literal["in_memory", "file_based"] = "in_memory"
    #: The SQLite database file, relative to the engine's working directory; absent: the
    #: module's own, ``./data/state_store.db``, ``./data/stream_store.db`` or
    #: ``./data/queue_store.db``.
    file_path: Optional[str] = None
    #: Accepted for the original's configs and unused: the original saves a snapshot this often;
    #: here every write is committed before its answer.
    save_interval_ms: Optional[Annotated[int, msgspec.Meta(ge=0)]] = None


class StreamKvConfig(StoreConfig, forbid_unknown_fields=True):
    """The stream module's ``kv`` config."""

    #: Accepted and unused (the original's event channel capacity).
    channel_size: Optional[Annotated[int, msgspec.Meta(ge=1)]] = None


class CronKvConfig(StoreConfig, forbid_unknown_fields=True):
    """The cron module's ``kv`` config: its lock is process-local and kept in memory, so the
    store keys are accepted without effect."""

    lock_ttl_ms: Optional[Annotated[int, msgspec.Meta(ge=1)]] = None
    lock_index: Optional[str] = None


class KvAdapter(msgspec.Struct, tag="kv", tag_field="name", forbid_unknown_fields=True):
    """``{name: kv, config: {store_method, file_path?, save_interval_ms?}}`` (state)."""

    config: Optional[StoreConfig] = None


class StreamKvAdapter(msgspec.Struct, tag="kv", tag_field="name", forbid_unknown_fields=True):
    config: Optional[StreamKvConfig] = None


class CronKvAdapter(msgspec.Struct, tag="kv", tag_field="name", forbid_unknown_fields=True):
    config: Optional[CronKvConfig] = None


class BuiltinAdapter(msgspec.Struct, tag="builtin", tag_field="name", forbid_unknown_fields=True):
    """``{name: builtin, config: {store_method, file_path?}}`` (queue)."""

    config: Optional[StoreConfig] = None


class _NoConfig(msgspec.Struct, forbid_unknown_fields=True):
    pass


class LocalAdapter(msgspec.Struct, tag="local", tag_field="name", forbid_unknown_fields=True):
    """``{name: local}`` (pubsub): in-process, nothing to configure."""

    config: Optional[_NoConfig] = None


class RedisConfig(msgspec.Struct, forbid_unknown_fields=True):
    """``config`` of the ``redis`` adapters (the original's one key)."""

    #: ``redis://[user:password@]host:port[/db]``; ``rediss://`` for TLS.
    redis_url: str = "redis://localhost:6379"


class RedisAdapter(msgspec.Struct, tag="redis", tag_field="name", forbid_unknown_fields=True):
    """``{name: redis, config: {redis_url?}}``: the module's data and events live in Redis, shared
    by every engine pointed at it."""

    config: RedisConfig = msgspec.field(default_factory=RedisConfig)


class RedisQueueConfig(RedisConfig, forbid_unknown_fields=True):
    """``config`` of the queue's ``redis`` adapter: the original's key, and how long a job taken
    by an engine that stopped answering stays with it before another engine takes it over."""

    visibility_timeout_ms: Annotated[int, msgspec.Meta(ge=100, le=86_400_000)] = 30_000


class RedisQueueAdapter(msgspec.Struct, tag="redis", tag_field="name", forbid_unknown_fields=True):
    """``{name: redis, config: {redis_url?, visibility_timeout_ms?}}`` (queue): jobs in Redis
    Streams, consumed by every engine pointed at it."""

    config: RedisQueueConfig = msgspec.field(default_factory=RedisQueueConfig)


class BridgeConfig(msgspec.Struct, forbid_unknown_fields=True):
    """``config`` of the ``bridge`` adapters (the original's one key)."""

    #: The remote engine's worker listener.
    bridge_url: str = "ws://localhost:49134"


class BridgeAdapter(msgspec.Struct, tag="bridge", tag_field="name", forbid_unknown_fields=True):
    """``{name: bridge, config: {bridge_url?}}``: the module's operations run on another engine."""

    config: BridgeConfig = msgspec.field(default_factory=BridgeConfig)


class _Unavailable(msgspec.Struct, tag_field="name"):
    """An adapter this engine does not have (for that module): refused when decoded."""

    config: Any = None

    def __post_init__(self) -> None:
        raise ValueError(
            f"adapter {self.__struct_config__.tag!r} is not available here for this module; "
            "remove `adapter` or name one it has"
        )


class _RedisUnavailable(_Unavailable, tag="redis"):
    pass


class RabbitmqAdapter(_Unavailable, tag="rabbitmq"):
    pass


StateAdapter = Union[KvAdapter, RedisAdapter, BridgeAdapter, None]
StreamAdapter = Union[StreamKvAdapter, RedisAdapter, BridgeAdapter, None]
QueueAdapter = Union[BuiltinAdapter, RedisQueueAdapter, RabbitmqAdapter, BridgeAdapter, None]
PubSubAdapter = Union[LocalAdapter, RedisAdapter, None]
CronAdapter = Union[CronKvAdapter, RedisAdapter, None]


def database_path(adapter: Any, default: str) -> Optional[Path]:
    """The database file of a ``file_based`` store, or ``None`` for the in-memory one."""
    config = getattr(adapter, "config", None)
    if getattr(config, "store_method", None) != "file_based":  # also: adapters without a store
        return None
    return Path(config.file_path or default)
