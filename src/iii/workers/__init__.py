"""The engine's in-process modules (built-in workers): http, state, stream, pubsub, cron, queue.

Each runs with its defaults unless ``config.yaml`` has an entry for it (under its ``iii-`` name
or the short one), whose ``config`` then applies.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Union

import msgspec

from iii.engine.registry import Module
from iii.workers import cron, http, pubsub, queue, state, stream

if TYPE_CHECKING:
    from iii.engine.router import Router

__all__ = ["MODULES", "ALIASES", "PubSubConfig", "install_modules"]


class PubSubConfig(msgspec.Struct, forbid_unknown_fields=True):
    """The ``iii-pubsub`` entry's ``config``: only the in-process ``local`` adapter exists here."""

    adapter: Union[dict[str, Any], None] = None

    def __post_init__(self) -> None:
        if self.adapter is not None and self.adapter.get("name") != "local":
            raise ValueError(f"adapter {self.adapter!r} is not available here (only {{name: local}})")


#: Module name -> (the type its ``config`` decodes into, its installer).
MODULES: dict[str, tuple[type, Any]] = {
    state.MODULE: (state.StateConfig, state.install),
    pubsub.MODULE: (PubSubConfig, pubsub.install),
    cron.MODULE: (cron.CronConfig, cron.install),
    queue.MODULE: (queue.QueueConfig, queue.install),
    http.MODULE: (http.HttpConfig, http.install),
    stream.MODULE: (stream.StreamConfig, stream.install),
}
DESCRIPTIONS = {
    state.MODULE: "Key-value state in scopes, with the state trigger (in memory)",
    pubsub.MODULE: "Topic publish/subscribe, fire-and-forget",
    cron.MODULE: "Scheduled calls (cron expressions, UTC)",
    queue.MODULE: "Named job queues with retries and dead letters (in memory)",
    http.MODULE: "HTTP server calling functions (the http trigger)",
    stream.MODULE: "Live items pushed to WebSocket clients, with the stream triggers (in memory)",
}
#: ``config.yaml`` entry names that mean a module.
ALIASES = {name: name for name in MODULES} | {name.removeprefix("iii-"): name for name in MODULES}


def install_modules(router: Router, configs: dict[str, Any], now_ms: int) -> list[Any]:
    """Install every module on ``router``, with its parsed config from ``configs`` if given.

    Returns the modules; the engine awaits ``start()`` / ``stop()`` of those that serve a port.
    """
    modules = []
    for name, (_, install) in MODULES.items():
        modules.append(install(router, configs.get(name)))
        router.modules.append(Module(name, DESCRIPTIONS[name], now_ms))
    return modules
