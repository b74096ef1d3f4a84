"""The engine's worker supervisor: runs the workers listed in ``config.yaml`` as child processes.

Each worker runs ``scripts.start`` from its ``iii.worker.yaml`` through the lifeline shim
(:mod:`iii.manager.lifeline`), in its own process group, with ``III_URL`` pointing back at the
engine and its output written, timestamped and rotated, to ``<logs>/<name>/stdout.log`` /
``stderr.log``. A worker that exits on its own is restarted with backoff; ``stop`` holds it down
until ``start``; a restart starts the new process once the old one is gone. Nothing outlives the
engine: every shim watches a pipe only the engine holds.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any, Optional

from iii.config import WorkerEntry
from iii.manager import lifeline
from iii.manager.manifest import Manifest, ManifestError, load_manifest

__all__ = ["Supervisor", "ManagedWorker", "logs_root", "install_marker"]

log = logging.getLogger("iii.manager")

_BACKOFF_START_S = 1.0
_BACKOFF_MAX_S = 30.0
#: A run this long counts as healthy: the next crash starts the backoff over.
_HEALTHY_RUN_S = 30.0
#: Between SIGTERM and SIGKILL of a worker's processes (the shim's job).
STOP_GRACE_S = 5.0
#: The shim, run as a script: ``-m iii.manager.lifeline`` would import the ``iii`` package (the
#: SDK: about a second of start-up) for a program that needs only the standard library and psutil.
_LIFELINE = lifeline.__file__
#: How long the engine waits for a shim to finish that (its grace, plus a margin).
_SHIM_EXIT_S = STOP_GRACE_S + 3.0


def logs_root() -> Path:
    """Where worker logs go: ``$III_LOGS_DIR`` or ``~/.iii/logs``."""
    return Path(os.environ.get("III_LOGS_DIR") or Path.home() / ".iii" / "logs")


def install_marker(directory: Path) -> Path:
    """Records the install command that last succeeded in a worker directory."""
    return directory / ".iii" / "installed"


class ManagedWorker:
    """One worker the engine runs, and what is known about its process."""

    def __init__(self, entry: WorkerEntry, directory: Optional[Path]) -> None:
        self.entry = entry
        self.directory = directory
        self.manifest: Optional[Manifest] = None
        #: starting | running | restarting | stopped | failed
        self.state = "stopped"
        self.wanted = True
        self.pid: Optional[int] = None
        self.restarts = 0
        self.last_exit: Optional[int] = None
        self.error: Optional[str] = None
        self.started_at: Optional[float] = None
        self.process: Optional[asyncio.subprocess.Process] = None
        self.task: Optional[asyncio.Task[None]] = None
        self.wake = asyncio.Event()

    @property
    def name(self) -> str:
        return self.entry.name

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "state": self.state,
            "pid": self.pid,
            "restarts": self.restarts,
            "last_exit": self.last_exit,
            "error": self.error,
            "directory": str(self.directory) if self.directory else None,
            "started_at_ms": int(self.started_at * 1000) if self.started_at else None,
            "logs": str(logs_root() / self.name),
        }


class Supervisor:
    """Starts, stops and restarts the engine's managed workers."""

    def __init__(self, engine_url: str, config_path: Path) -> None:
        self.engine_url = engine_url
        self.config_path = config_path.resolve()
        self.workers: dict[str, ManagedWorker] = {}
        #: Every worker's task, those still stopping a replaced or removed process included.
        self._tasks: set[asyncio.Task[None]] = set()
        # The lifeline: every shim holds the read end; only this process holds the write end.
        self._lifeline_read, self._lifeline_write = os.pipe()
        os.set_inheritable(self._lifeline_write, False)

    def _directory(self, entry: WorkerEntry) -> Optional[Path]:
        if entry.worker_path is None:
            return None
        path = Path(entry.worker_path).expanduser()
        return path if path.is_absolute() else (self.config_path.parent / path).resolve()

    def apply(self, entries: list[WorkerEntry]) -> None:
        """Make the running set match ``entries``: start added, stop removed, restart changed."""
        wanted = {e.name: e for e in entries}
        for name in list(self.workers):
            if name not in wanted:
                log.info("worker %s: removed from the config, stopping it", name)
                self._forget(name)
        for name, entry in wanted.items():
            current = self.workers.get(name)
            if current is not None and current.entry == entry:
                continue
            previous = None
            if current is not None:
                log.info("worker %s: its config entry changed, restarting it", name)
                previous = self._forget(name)
            self._launch(ManagedWorker(entry, self._directory(entry)), after=previous)

    def _launch(self, worker: ManagedWorker, after: Optional[asyncio.Task[None]] = None) -> None:
        """Run ``worker``; once ``after`` (the task of the process it replaces) is over."""
        self.workers[worker.name] = worker
        worker.task = asyncio.get_running_loop().create_task(self._keep_running(worker, after))
        self._tasks.add(worker.task)
        worker.task.add_done_callback(self._tasks.discard)

    def _forget(self, name: str) -> Optional[asyncio.Task[None]]:
        """Stop running ``name``; returns the task that ends once its process is gone."""
        worker = self.workers.pop(name)
        worker.wanted = False
        worker.wake.set()
        if worker.task is not None:
            worker.task.cancel()
        return worker.task

    def start(self, name: str) -> dict[str, Any]:
        worker = self._get(name)
        worker.wanted = True
        worker.wake.set()
        if worker.state in ("stopped", "failed"):  # said now: a caller polls for the outcome
            worker.state, worker.error = "starting", None
        return worker.describe()

    def stop(self, name: str) -> dict[str, Any]:
        worker = self._get(name)
        worker.wanted = False
        worker.wake.set()
        if worker.process is not None and worker.process.returncode is None:
            worker.process.terminate()
        return worker.describe()

    def restart(self, name: str) -> dict[str, Any]:
        worker = self._get(name)
        entry = worker.entry
        previous = self._forget(name)
        self._launch(ManagedWorker(entry, self._directory(entry)), after=previous)
        return self.workers[name].describe()

    def status(self, name: str) -> dict[str, Any]:
        return self._get(name).describe()

    def list(self) -> list[dict[str, Any]]:
        return [self.workers[name].describe() for name in sorted(self.workers)]

    def _get(self, name: str) -> ManagedWorker:
        worker = self.workers.get(name)
        if worker is None:
            raise KeyError(name)
        return worker

    async def close(self) -> None:
        """Stop every worker at once (SIGTERM, then SIGKILL after a grace) and wait for them."""
        for name in list(self.workers):
            self._forget(name)
        await asyncio.gather(*self._tasks, return_exceptions=True)
        os.close(self._lifeline_write)
        os.close(self._lifeline_read)

    # ------------------------------------------------------------------ one worker

    async def _keep_running(self, worker: ManagedWorker, after: Optional[asyncio.Task[None]]) -> None:
        backoff = _BACKOFF_START_S
        try:
            if after is not None:  # one process per worker name: the old one goes first
                worker.state = "starting"
                await asyncio.wait({after})  # (not gather: cancelling this must not cancel that)
            while True:
                if not worker.wanted:
                    if worker.state != "failed":  # a failure stays said until the next start
                        worker.state = "stopped"
                    worker.wake.clear()
                    await worker.wake.wait()
                    continue
                if not await self._prepare(worker):
                    worker.state = "failed"
                    worker.wanted = False
                    continue
                began = time.monotonic()
                status = await self._run_once(worker)
                worker.last_exit = status
                if not worker.wanted:
                    continue
                if time.monotonic() - began >= _HEALTHY_RUN_S:
                    backoff = _BACKOFF_START_S
                worker.restarts += 1
                worker.state = "restarting"
                log.warning("worker %s exited with status %s; restarting in %.0f s", worker.name, status, backoff)
                worker.wake.clear()
                try:
                    await asyncio.wait_for(worker.wake.wait(), backoff)
                except asyncio.TimeoutError:
                    pass
                backoff = min(backoff * 2, _BACKOFF_MAX_S)
        except asyncio.CancelledError:
            await self._terminate(worker)
            raise

    async def _prepare(self, worker: ManagedWorker) -> bool:
        """Read the manifest and run its setup/install once; ``False`` (logged) if impossible."""
        if worker.directory is None:
            worker.error = (
                f"no worker_path in {self.config_path} for {worker.name!r} "
                "(add it with `iii worker add ./path/to/worker`)"
            )
            if worker.entry.image:
                worker.error = f"OCI images are not supported by this engine ({worker.entry.image})"
            log.error("worker %s: %s", worker.name, worker.error)
            return False
        try:
            worker.manifest = load_manifest(worker.directory)
        except ManifestError as exc:
            worker.error = str(exc)
            log.error("worker %s: %s", worker.name, exc)
            return False
        for warning in worker.manifest.warnings:
            log.warning("worker %s: %s", worker.name, warning)
        install = " && ".join(c for c in (worker.manifest.setup, worker.manifest.install) if c)
        marker = install_marker(worker.directory)
        if install and (not marker.exists() or marker.read_text() != install):
            worker.state = "starting"
            log.info("worker %s: installing (%s)", worker.name, install)
            status = await self._spawn(worker, install, wait=True)
            if status != 0:
                worker.error = f"install failed with status {status}: see {logs_root() / worker.name}"
                log.error("worker %s: %s", worker.name, worker.error)
                return False
            marker.parent.mkdir(exist_ok=True)
            marker.write_text(install)
        worker.error = None
        return True

    def _environment(self, worker: ManagedWorker) -> dict[str, str]:
        env = dict(os.environ)
        env.update(worker.manifest.env if worker.manifest else {})
        env.update(
            III_URL=self.engine_url,
            III_ENGINE_URL=self.engine_url,
            III_WORKER_NAME=worker.name,
            III_CONFIG_PATH=str(self.config_path),
            III_ENGINE_PID=str(os.getpid()),
        )
        # `python` in a start command is this engine's interpreter (its venv holds the SDK).
        env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", "")
        return env

    async def _spawn(self, worker: ManagedWorker, command: str, wait: bool) -> Optional[int]:
        # The shim's own failures (not the worker's output, which it logs) reach the engine's stderr.
        spawning = asyncio.ensure_future(asyncio.create_subprocess_exec(
            sys.executable, _LIFELINE, "--grace", str(STOP_GRACE_S),
            str(self._lifeline_read), str(logs_root() / worker.name), command,
            cwd=str(worker.directory), env=self._environment(worker), stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL, pass_fds=(self._lifeline_read,), start_new_session=True,
        ))
        try:
            process = await asyncio.shield(spawning)
        except asyncio.CancelledError:  # stopped while starting: what started is stopped too
            process = await spawning
            process.terminate()
            await process.wait()
            raise
        if not wait:
            worker.process = process
            return None
        try:
            return await process.wait()
        except asyncio.CancelledError:
            process.terminate()
            await process.wait()
            raise

    async def _run_once(self, worker: ManagedWorker) -> int:
        assert worker.manifest is not None
        worker.state = "starting"
        await self._spawn(worker, worker.manifest.start, wait=False)
        process = worker.process
        assert process is not None
        worker.pid = process.pid
        worker.started_at = time.time()
        worker.state = "running"
        log.info("worker %s started (pid %d): %s", worker.name, process.pid, worker.manifest.start)
        status = await process.wait()
        worker.pid = None
        worker.process = None
        return status

    async def _terminate(self, worker: ManagedWorker) -> None:
        process = worker.process
        if process is not None and process.returncode is None:
            process.terminate()  # the shim stops the worker's processes
            try:
                await asyncio.wait_for(process.wait(), _SHIM_EXIT_S)
            except asyncio.TimeoutError:
                process.kill()
                await process.wait()
        worker.state = "stopped"
        worker.pid = None
