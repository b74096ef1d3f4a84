"""An engine for a test: ``python -m iii`` as a subprocess on free loopback ports.

The engine runs in its own process (not on the test's loop) so that it behaves as in
production, a crash in it cannot take the test runner down, synchronous tests and
pytest-benchmark can call it while it serves, and what a benchmark measures is the engine
between two other processes' sockets. Every process started here is killed by pid when its
owner stops it, at interpreter exit, and (on Linux) by the kernel when the test process dies.
"""

from __future__ import annotations

import atexit
import ctypes
import ctypes.util
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

import yaml

__all__ = ["Build", "EngineProcess", "default_modules", "durable_modules", "engine_config", "start_engine"]

#: ``"compiled"`` (the Cython extensions) or ``"pure"`` (the pure-Python twins).
Build = str

_WS_URL = re.compile(r"iii engine (\S+) listening on (ws://\S+)")
_HTTP_URL = re.compile(r"iii-http listening on (http://\S+)")
_STREAM_URL = re.compile(r"iii-stream listening on (ws://\S+)")
_START_TIMEOUT_S = 30.0
_STOP_GRACE_S = 5.0

#: Every process started by this module and not yet stopped (each leads its process group).
_alive: set[int] = set()
_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    """In the child, before exec: the kernel sends it SIGKILL when the test process dies
    (a SIGKILLed pytest runs no teardown)."""
    if _libc is not None:
        _libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


_libc: Any = None
if sys.platform.startswith("linux"):
    try:
        _libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    except OSError:
        _libc = None


def spawn(command: Sequence[str], *, env: Mapping[str, str], cwd: Optional[str], log_path: Path) -> subprocess.Popen[bytes]:
    """Start ``command`` in its own process group, stdout and stderr into ``log_path``; it is
    killed at interpreter exit unless :func:`kill` was called for it first."""
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            list(command),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=dict(env),
            cwd=cwd,
            start_new_session=True,
            # The child runs single-threaded code before exec: prctl only. Not on the main thread,
            # the death signal would follow the thread that forked rather than the process.
            preexec_fn=_die_with_parent if threading.current_thread() is threading.main_thread() else None,
        )
    _alive.add(process.pid)
    return process


def kill(process: "subprocess.Popen[Any]", grace_s: float = _STOP_GRACE_S) -> Optional[int]:
    """SIGTERM the process's group, SIGKILL it after ``grace_s``; returns the exit status."""
    _alive.discard(process.pid)
    if process.poll() is None:
        _signal_group(process.pid, signal.SIGTERM)
        try:
            process.wait(grace_s)
        except subprocess.TimeoutExpired:
            pass
    _signal_group(process.pid, signal.SIGKILL)  # anything the process itself started
    try:
        return process.wait(grace_s)
    except subprocess.TimeoutExpired:  # pragma: no cover - a process that ignores SIGKILL
        return None


def _signal_group(pid: int, sig: int) -> None:
    try:
        os.killpg(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


@atexit.register
def _kill_leftovers() -> None:
    for pid in list(_alive):
        _signal_group(pid, signal.SIGKILL)
    _alive.clear()


def default_modules() -> dict[str, Any]:
    """The modules of a test engine: every built-in on its defaults (state, queues in memory),
    with the ones that serve a port on 127.0.0.1 and a free port."""
    return {
        "iii-http": {"host": "127.0.0.1", "port": 0},
        "iii-stream": {"host": "127.0.0.1", "port": 0},
    }


def durable_modules(directory: Path) -> dict[str, Any]:
    """Entries putting state and the queues in SQLite files under ``directory``."""
    def adapter(name: str, file: str) -> dict[str, Any]:
        return {"name": name, "config": {"store_method": "file_based", "file_path": str(directory / file)}}

    return {"iii-state": {"adapter": adapter("kv", "state.db")}, "iii-queue": {"adapter": adapter("builtin", "queue.db")}}


def engine_config(modules: Mapping[str, Any]) -> str:
    """The ``config.yaml`` text of a test engine: its worker listener on 127.0.0.1, a free port,
    and one entry per module (name -> its ``config``; ``None`` for its defaults)."""
    entries: list[dict[str, Any]] = [{"name": "iii-worker-manager", "config": {"host": "127.0.0.1", "port": 0}}]
    for name, config in modules.items():
        entries.append({"name": name} if config is None else {"name": name, "config": config})
    return yaml.safe_dump({"workers": entries}, sort_keys=False)


def _compiled_available() -> bool:
    try:
        import iii._codec  # noqa: F401
        import iii.engine._frames  # noqa: F401
    except ImportError:
        return False
    return True


class LoggedProcess:
    """A child process whose stdout and stderr go to ``log_path`` (an engine or a worker)."""

    process: "subprocess.Popen[bytes]"
    log_path: Path

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def alive(self) -> bool:
        return self.process.poll() is None

    def output(self) -> str:
        """What it has printed so far (stdout and stderr)."""
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""


class EngineProcess(LoggedProcess):
    """A running engine (see :func:`start_engine`).

    Attributes:
        url: the worker listener, ``ws://127.0.0.1:PORT``.
        http_url: the ``iii-http`` server's base URL (``None`` if it does not serve).
        stream_url: the ``iii-stream`` server's URL (``None`` if it does not serve).
        version: the engine's version.
        build: ``"compiled"`` or ``"pure"``.
        directory: where its ``config.yaml``, its log and its durable stores live.
    """

    def __init__(self, process: "subprocess.Popen[bytes]", directory: Path, build: Build) -> None:
        self.process = process
        self.directory = directory
        self.build = build
        self.url = ""
        self.http_url: Optional[str] = None
        self.stream_url: Optional[str] = None
        self.version = ""

    @property
    def log_path(self) -> Path:  # type: ignore[override]
        return self.directory / "engine.log"

    def _wait_until_listening(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            text = self.output()
            found = _WS_URL.search(text)
            if found:  # the modules start (and log their URLs) before the listener binds
                self.version, self.url = found.group(1), found.group(2)
                http, stream = _HTTP_URL.search(text), _STREAM_URL.search(text)
                self.http_url = http.group(1) if http else None
                self.stream_url = stream.group(1) if stream else None
                return
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"the iii engine did not start (exit status {self.process.returncode}):\n{text}")
            time.sleep(0.02)

    def stop(self) -> Optional[int]:
        """Stop it (SIGTERM, then SIGKILL after 5 s); returns its exit status. Idempotent."""
        return kill(self.process)

    def __enter__(self) -> "EngineProcess":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()


def start_engine(
    modules: Optional[Mapping[str, Any]] = None,
    *,
    build: Optional[Build] = None,
    durable: bool = False,
    directory: Optional[Path] = None,
    env: Optional[Mapping[str, str]] = None,
    log_level: str = "info",
    timeout: float = _START_TIMEOUT_S,
) -> EngineProcess:
    """Start an engine and return once it listens.

    Args:
        modules: module entry name -> its ``config`` (``None``: defaults), laid over
            :func:`default_modules`.
        build: ``"compiled"``, ``"pure"`` (``III_NO_EXTENSIONS=1``), or ``None`` for whichever
            this install has.
        durable: state and queues in SQLite files in ``directory`` (``file_based``) instead of
            in memory; entries in ``modules`` win.
        directory: where to write its config and log (default: a new temporary directory).
        env: extra environment variables of the engine process.
        log_level: the engine's ``--log-level``: ``debug`` or ``info`` (its URLs are logged at
            ``info``).
        timeout: seconds to wait for it to listen.

    Raises:
        RuntimeError: it exited or did not listen in time (the message has its log).
        ValueError: ``build="compiled"`` where the extensions are not built, or an unknown build.
    """
    if log_level not in ("debug", "info"):
        raise ValueError(f"log_level must be 'debug' or 'info' (the engine's URLs are read from its log), got {log_level!r}")
    if build not in (None, "compiled", "pure"):
        raise ValueError(f"build must be 'compiled', 'pure' or None, got {build!r}")
    child_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    pure_forced = bool(child_env.get("III_NO_EXTENSIONS"))
    if build == "pure":
        child_env["III_NO_EXTENSIONS"] = "1"
    elif build == "compiled":
        if pure_forced or not _compiled_available():
            raise ValueError("build='compiled' asked for, but the compiled extensions are not available "
                             "(built with III_BUILD_EXTENSION=required?) or III_NO_EXTENSIONS is set")
    actual: Build = "pure" if build == "pure" or pure_forced or not _compiled_available() else "compiled"
    directory = Path(directory) if directory is not None else Path(tempfile.mkdtemp(prefix="iii-engine-"))
    directory.mkdir(parents=True, exist_ok=True)
    config_path = directory / "config.yaml"
    stores = durable_modules(directory) if durable else {}
    config_path.write_text(engine_config({**default_modules(), **stores, **(modules or {})}))
    process = spawn(
        [sys.executable, "-m", "iii", "--log-level", log_level, "-c", str(config_path)],
        env=child_env, cwd=str(directory), log_path=directory / "engine.log",
    )
    engine = EngineProcess(process, directory, actual)
    engine._wait_until_listening(timeout)
    return engine
