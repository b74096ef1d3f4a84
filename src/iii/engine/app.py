"""An engine process: the server, the supervised workers of ``config.yaml``, hot reload."""

from __future__ import annotations

import asyncio
import logging
import resource
import signal
from pathlib import Path
from typing import Any, Callable, Optional

import msgspec

from iii.engine.config import ConfigError, load_config
from iii.engine.registry import Connection, EngineError
from iii.engine.router import Router
from iii.engine.server import Engine
from iii.manager.supervisor import Supervisor
from iii.protocol import ErrorCode

__all__ = ["serve", "watch_config", "install_worker_functions"]

log = logging.getLogger("iii.engine")
_WATCH_INTERVAL_S = 0.5
_MODULE = "iii-worker-manager"


class _NameInput(msgspec.Struct):
    name: str


def install_worker_functions(router: Router, supervisor: Supervisor) -> None:
    """``worker::list|status|start|stop|restart``: how ``iii worker …`` drives the supervisor."""

    def by_name(action: Callable[[str], Any]) -> Callable[[Router, Optional[Connection], Any], Any]:
        def handler(router: Router, caller: Optional[Connection], data: Any) -> Any:
            try:
                name = msgspec.convert(data or {}, _NameInput).name
            except msgspec.ValidationError as exc:
                raise EngineError(ErrorCode.DESERIALIZATION_ERROR, f"Failed to deserialize input: {exc}") from None
            try:
                return action(name)
            except KeyError:
                raise EngineError(
                    ErrorCode.NOT_FOUND, f"Worker '{name}' is not in {supervisor.config_path}."
                ) from None

        return handler

    internal = {"internal": True}
    router.add_builtin("worker::list", lambda r, c, d: {"workers": supervisor.list()}, module=_MODULE,
                       description="Managed workers and their processes", metadata=internal)
    for verb, action in (("status", supervisor.status), ("start", supervisor.start),
                         ("stop", supervisor.stop), ("restart", supervisor.restart)):
        router.add_builtin(f"worker::{verb}", by_name(action), module=_MODULE,
                           description=f"{verb.capitalize()} a managed worker", metadata=internal)


async def watch_config(path: Path, supervisor: Supervisor, modules: dict[str, Any]) -> None:
    """Hot reload: apply every valid edit of the config file; keep running on a bad one.

    Workers follow the file; the built-in modules keep the config they started with (``modules``)
    until the engine restarts, which is said when their entries change.
    """
    def stamp() -> Optional[tuple[float, int]]:
        try:
            info = path.stat()
        except OSError:
            return None
        return (info.st_mtime, info.st_size)

    seen = stamp()
    while True:
        await asyncio.sleep(_WATCH_INTERVAL_S)
        current = stamp()
        if current == seen or current is None:
            continue
        seen = current
        try:
            config = load_config(path)
        except ConfigError as exc:
            log.error("config change rejected, the running workers are kept: %s", exc)
            continue
        log.info("%s changed: applying it", path)
        supervisor.apply(config.workers)
        if config.modules != modules:
            changed = sorted(name for name in set(config.modules) | set(modules) if config.modules.get(name) != modules.get(name))
            log.warning("the config of %s changed: built-in modules take it on restart", ", ".join(changed))
            modules = config.modules


def _local_url(url: str) -> str:
    """How a child process on this machine reaches a listener bound to a wildcard address."""
    return url.replace("ws://0.0.0.0:", "ws://127.0.0.1:").replace("ws://[::]:", "ws://127.0.0.1:")


async def serve(config_path: Path) -> int:
    """Run the engine from ``config_path`` until SIGINT/SIGTERM; returns the exit status.

    Raises:
        ConfigError: the configuration is not usable.
        OSError: a listener could not bind.
    """
    config = load_config(config_path)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:  # one descriptor per worker connection: take every one we are allowed
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    engine = Engine(config)
    urls = await engine.start()
    supervisor = Supervisor(_local_url(urls[0]), config_path)
    install_worker_functions(engine.router, supervisor)
    supervisor.apply(config.workers)
    watcher = asyncio.get_running_loop().create_task(watch_config(config_path, supervisor, config.modules))
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    log.info("shutting down")
    watcher.cancel()
    await supervisor.close()
    await engine.stop()
    return 0
