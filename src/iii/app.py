"""The engine process: the engine, its functions and built-in modules, the supervised workers of
``config.yaml``, hot reload.

This is where the engine is assembled: :class:`App` opens the engine's router, installs the
``engine::*`` functions and every module of the module table (:data:`iii.modules.MODULES`), then
binds the listeners. The engine itself (``iii.engine``) never imports a module.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import resource
import signal
import time
from pathlib import Path
from typing import Any, Callable, Optional

import msgspec

from iii.config import ConfigError, EngineConfig, load_config
from iii.engine.functions import install_engine_functions
from iii.engine.registry import Connection, EngineError, Module
from iii.engine.router import Router
from iii.engine.server import Engine
from iii.manager.configfile import file_changes
from iii.manager.supervisor import Supervisor
from iii.modules import MODULES
from iii.protocol import ErrorCode, WireId

__all__ = ["App", "serve", "watch_config", "install_modules", "install_worker_functions"]

log = logging.getLogger("iii.engine")


class _NameInput(msgspec.Struct):
    name: str


def _is_local(caller: Optional[Connection]) -> bool:
    """A worker connected from this machine (a loopback address). A call the engine makes (a
    trigger, a queue job) is not: anyone could have bound or enqueued it."""
    if caller is None:
        return False
    try:
        address = ipaddress.ip_address(caller.ip or "")
    except ValueError:
        return False
    mapped = getattr(address, "ipv4_mapped", None)
    return (mapped or address).is_loopback


def install_worker_functions(router: Router, supervisor: Supervisor) -> None:
    """``worker::list|status|start|stop|restart``: how ``iii worker …`` drives the supervisor.

    Starting and stopping processes is for this machine only: from any other address those are
    refused with ``FORBIDDEN`` (a listener bound to 0.0.0.0 is reachable from the network).
    """

    def by_name(verb: str, action: Callable[[str], Any], local_only: bool) -> Callable[[Router, Optional[Connection], Any], Any]:
        def handler(router: Router, caller: Optional[Connection], data: Any) -> Any:
            if local_only and not _is_local(caller):
                raise EngineError(
                    ErrorCode.FORBIDDEN,
                    f"worker::{verb} is only served to direct calls from clients on this machine "
                    f"({'a trigger or queue job' if caller is None else f'connected from {caller.ip}'})",
                )
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
    router.add_function("worker::list", lambda r, c, d: {"workers": supervisor.list()}, module=WireId.LISTENER,
                        description="Managed workers and their processes", metadata=internal)
    for verb, action, local_only in (
        ("status", supervisor.status, False),
        ("start", supervisor.start, True),
        ("stop", supervisor.stop, True),
        ("restart", supervisor.restart, True),
    ):
        router.add_function(f"worker::{verb}", by_name(verb, action, local_only), module=WireId.LISTENER,
                            description=f"{verb.capitalize()} a managed worker", metadata=internal)


def install_modules(router: Router, configs: dict[str, Any], started_at_ms: int = 0) -> dict[str, Any]:
    """Install every module of the table on ``router``, with its config from ``configs`` if given
    (else its defaults; an opt-in module only if given); returns module name -> the running
    module (to start and stop)."""
    running = {}
    for module in MODULES:
        if module.opt_in and module.name not in configs:
            continue
        running[module.name] = module.install(router, configs.get(module.name))
        router.modules.append(Module(module.name, module.description, started_at_ms))
    return running


class App:
    """An engine with its ``engine::*`` functions and built-in modules, from a config."""

    def __init__(self, config: EngineConfig) -> None:
        self.config = config
        self.engine = Engine(config.listeners, config.grace_ms)
        #: Module name -> the running module (what its ``install`` returned).
        self.modules: dict[str, Any] = {}

    @property
    def router(self) -> Router:
        return self.engine.router

    @property
    def urls(self) -> list[str]:
        return self.engine.urls

    async def start(self) -> list[str]:
        """Assemble and start everything; returns the listeners' ``ws://`` URLs."""
        for unsupported in self.config.unsupported:
            log.warning("config: %s is not provided by this engine; its entry is skipped", unsupported)
        router = self.engine.open()
        started_at_ms = int(time.time() * 1000)
        install_engine_functions(router, started_at_ms)
        self.modules = install_modules(router, self.config.modules, started_at_ms)
        try:
            for running in self.modules.values():
                await running.start()
            return await self.engine.listen()
        except BaseException:  # a port taken, a store that will not open: undo what started
            await self.stop()
            raise

    async def stop(self) -> None:
        """Close every connection, then stop every module (one failing does not stop the others)."""
        await self.engine.stop()
        for name, running in self.modules.items():
            try:
                await running.stop()
            except Exception:
                log.exception("module %s did not stop cleanly", name)


async def watch_config(path: Path, supervisor: Supervisor, modules: dict[str, Any]) -> None:
    """Hot reload: apply every valid edit of the config file; keep running on a bad one.

    Workers follow the file; the built-in modules keep the config they started with (``modules``)
    until the engine restarts, which is said when their entries change.
    """
    async for _ in file_changes(path):
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
    app = App(config)
    urls = await app.start()
    supervisor = Supervisor(_local_url(urls[0]), config_path)
    install_worker_functions(app.router, supervisor)
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
    await app.stop()
    return 0
