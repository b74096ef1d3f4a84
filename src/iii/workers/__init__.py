"""The engine's in-process modules (built-in workers): http, state, stream, pubsub, cron, queue.

Each runs with its defaults unless ``config.yaml`` has an entry for it (under its ``iii-`` name
or the short one), whose ``config`` then applies.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from iii.engine.registry import Module
from iii.workers import cron, http, pubsub, queue, state, stream

if TYPE_CHECKING:
    from iii.engine.router import Router

__all__ = ["MODULES", "ALIASES", "install_modules"]


#: Module name -> (the type its ``config`` decodes into, its installer, its description).
MODULES: dict[str, tuple[type, Any, str]] = {
    state.MODULE: (state.StateConfig, state.install, "Key-value state in scopes, with the state trigger (in memory)"),
    pubsub.MODULE: (pubsub.PubSubConfig, pubsub.install, "Topic publish/subscribe, fire-and-forget"),
    cron.MODULE: (cron.CronConfig, cron.install, "Scheduled calls (cron expressions, UTC)"),
    queue.MODULE: (queue.QueueConfig, queue.install, "Named job queues with retries and dead letters (in memory)"),
    http.MODULE: (http.HttpConfig, http.install, "HTTP server calling functions (the http trigger)"),
    stream.MODULE: (
        stream.StreamConfig, stream.install, "Live items pushed to WebSocket clients, with the stream triggers (in memory)"
    ),
}
#: ``config.yaml`` entry names that mean a module.
ALIASES = {name: name for name in MODULES} | {name.removeprefix("iii-"): name for name in MODULES}


def install_modules(router: Router, configs: dict[str, Any], now_ms: int) -> list[Any]:
    """Install every module on ``router``, with its parsed config from ``configs`` if given.

    Returns the modules; the engine awaits ``start()`` / ``stop()`` of those that serve a port.
    """
    modules = []
    for name, (_, install, description) in MODULES.items():
        modules.append(install(router, configs.get(name)))
        router.modules.append(Module(name, description, now_ms))
    return modules
