"""The engine's built-in modules: http, http_functions, state, stream, pubsub, cron, queue,
observability, and the opt-in bridge (``iii-bridge``) and cluster (``iii-cluster``).

Each module is one file that imports the engine only through :mod:`iii.engine.host` and ends with
its row of the module table, a :class:`~iii.engine.host.BuiltinModule`: its ``config.yaml``
name, description, config type and installer. :data:`MODULES` is the table; the engine process
(:mod:`iii.app`) installs every module in it, with the ``config`` of its entry when the file has
one. Adding a module: one file, one row here, and its tests.
"""

from __future__ import annotations

from iii.engine.host import BuiltinModule
from iii.modules import bridge, cluster, cron, http, http_functions, observability, pubsub, queue, state, stream

__all__ = ["MODULES", "by_entry_name"]

#: The module table, in installation order.
MODULES: tuple[BuiltinModule, ...] = (
    observability.MODULE,
    state.MODULE,
    pubsub.MODULE,
    cron.MODULE,
    queue.MODULE,
    http.MODULE,
    http_functions.MODULE,
    stream.MODULE,
    bridge.MODULE,
    cluster.MODULE,
)


def by_entry_name() -> dict[str, BuiltinModule]:
    """``config.yaml`` entry name (``iii-state`` or ``state``) -> module."""
    return {alias: module for module in MODULES for alias in module.aliases}
