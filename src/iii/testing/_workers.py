"""Workers for a test: one on this package's SDK whose functions the test registers inline, and
any worker script (official Python or Node SDK) started from its path."""

from __future__ import annotations

import functools
import inspect
import os
import shutil
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Optional, Sequence, Union

from iii.iii_constants import InitOptions
from iii.sdk.client import III, register_worker
from iii.testing._engine import LoggedProcess, kill, spawn

__all__ = ["TestWorker", "WorkerProcess", "connect_worker", "start_worker_process", "wait_for_functions"]

_WAIT_S = 15.0
_POLL_S = 0.02


def wait_for_functions(client: III, function_ids: Iterable[str], timeout: float = _WAIT_S) -> None:
    """Return once the engine lists every one of ``function_ids`` (in any namespace).

    Raises:
        TimeoutError: some were still missing after ``timeout`` seconds.
    """
    wanted = set(function_ids)
    deadline = time.monotonic() + timeout
    while True:
        listed = client.trigger({"function_id": "engine::functions::list", "payload": {}})
        missing = wanted - {f["function_id"] for f in listed["functions"]}
        if not missing:
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"the engine did not list {sorted(missing)} within {timeout} s")
        time.sleep(_POLL_S)


class TestWorker:
    """A worker on this package's SDK (an :class:`iii.III`) whose registrations return once the
    engine has applied them, so a test can call what it just registered.

    Everything else is the ``III`` object's (``trigger``, ``trigger_async``, ``worker_id`` …).
    It counts the invocations of each function registered through it (:meth:`calls`).
    """

    __test__ = False  # not a test class, whatever pytest's naming rules say

    def __init__(self, client: III) -> None:
        self.client = client
        self._counts: Counter[str] = Counter()
        self._changed = threading.Condition()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.client, name)

    def register_function(self, function_id: str, handler: Any, **options: Any) -> Any:
        """``III.register_function``, waiting (≤ 15 s) until the engine lists the function."""
        counted = self._counting(function_id, handler) if callable(handler) else handler
        ref = self.client.register_function(function_id, counted, **options)
        wait_for_functions(self.client, [function_id])
        return ref

    def function(self, function_id: str, **options: Any) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        """Decorator form of :meth:`register_function`: ``@iii_worker.function("a::b")``."""
        def register(handler: Callable[..., Any]) -> Callable[..., Any]:
            self.register_function(function_id, handler, **options)
            return handler
        return register

    def register_trigger(self, trigger: Any, timeout: float = _WAIT_S) -> Any:
        """``III.register_trigger``, waiting (≤ 15 s) until the engine lists the binding.

        Raises:
            TimeoutError: the engine did not list it (a refused binding is logged by the SDK).
        """
        request = trigger if isinstance(trigger, dict) else trigger.model_dump()
        query = {"function_id": request["function_id"], "trigger_type": request["type"]}
        before = self._bindings(query)
        ref = self.client.register_trigger(trigger)
        deadline = time.monotonic() + timeout
        while self._bindings(query) - before == set():
            if time.monotonic() > deadline:
                raise TimeoutError(f"the engine did not bind {request['type']} -> {request['function_id']} within {timeout} s")
            time.sleep(_POLL_S)
        return ref

    def _bindings(self, query: dict[str, Any]) -> set[str]:
        listed = self.client.trigger({"function_id": "engine::triggers::list", "payload": query})
        return {binding["id"] for binding in listed["triggers"]}

    def calls(self, function_id: str) -> int:
        """How many times the engine has invoked ``function_id`` on this worker (handler done)."""
        return self._counts[function_id]

    def wait_for_calls(self, function_id: str, count: int, timeout: float = _WAIT_S) -> None:
        """Block until ``function_id`` has been invoked ``count`` times in all.

        Raises:
            TimeoutError: it had not after ``timeout`` seconds.
        """
        with self._changed:
            if not self._changed.wait_for(lambda: self._counts[function_id] >= count, timeout):
                raise TimeoutError(f"{function_id} was invoked {self._counts[function_id]} times, not {count}, within {timeout} s")

    def _count(self, function_id: str) -> None:
        with self._changed:
            self._counts[function_id] += 1
            self._changed.notify_all()

    def _counting(self, function_id: str, handler: Callable[..., Any]) -> Callable[..., Any]:
        # functools.wraps keeps the signature the SDK reads (a ``metadata`` parameter).
        if inspect.iscoroutinefunction(handler) or inspect.iscoroutinefunction(getattr(handler, "__call__", None)):
            @functools.wraps(handler)
            async def counted_async(*args: Any, **kwargs: Any) -> Any:
                try:
                    return await handler(*args, **kwargs)
                finally:
                    self._count(function_id)
            return counted_async

        @functools.wraps(handler)
        def counted(*args: Any, **kwargs: Any) -> Any:
            try:
                return handler(*args, **kwargs)
            finally:
                self._count(function_id)
        return counted

    def shutdown(self) -> None:
        self.client.shutdown()


def connect_worker(url: str, name: str, options: Optional[InitOptions] = None) -> TestWorker:
    """A :class:`TestWorker` named ``name`` connected to the engine at ``url`` (its SDK loop runs
    on its own thread, so sync and async tests can both use it)."""
    options = options or InitOptions(worker_name=name, otel={"enabled": False})
    return TestWorker(register_worker(url, options))


#: Interpreters by script suffix (Node for JavaScript; Python for the rest).
_NODE_SUFFIXES = (".js", ".mjs", ".cjs")


class WorkerProcess(LoggedProcess):
    """A worker script running as a process (see :func:`start_worker_process`).

    Attributes:
        path: the script.
        log_path: its stdout and stderr.
    """

    def __init__(self, process: Any, path: Path, log_path: Path) -> None:
        self.process = process
        self.path = path
        self.log_path = log_path

    def stop(self) -> Optional[int]:
        """SIGTERM its process group, SIGKILL after 5 s; returns its exit status. Idempotent."""
        return kill(self.process)


def start_worker_process(
    path: Union[str, Path],
    url: str,
    *,
    args: Sequence[str] = (),
    interpreter: Optional[str] = None,
    env: Optional[Mapping[str, str]] = None,
    cwd: Optional[Union[str, Path]] = None,
    log_dir: Optional[Path] = None,
) -> WorkerProcess:
    """Start the worker script at ``path`` with ``III_URL`` set to ``url``.

    Args:
        path: a Python file (run by ``interpreter``, default this one; give the official SDK's
            venv's python to run on ``iii-sdk``) or a ``.js``/``.mjs``/``.cjs`` file (run by
            ``node``).
        url: the engine's worker URL.
        args: arguments after the script.
        interpreter: the program that runs the script.
        env: extra environment variables.
        cwd: its working directory (default: the script's directory).
        log_dir: where its output is written (default: a new temporary directory).

    Raises:
        FileNotFoundError: no such script, or no ``node`` for a JavaScript one.
    """
    script = Path(path).resolve()
    if not script.is_file():
        raise FileNotFoundError(f"no worker script at {script}")
    if interpreter is None:
        if script.suffix in _NODE_SUFFIXES:
            interpreter = shutil.which("node")
            if interpreter is None:
                raise FileNotFoundError(f"{script.name} needs node, which is not on PATH")
        else:
            interpreter = sys.executable
    log_dir = Path(log_dir) if log_dir is not None else Path(tempfile.mkdtemp(prefix="iii-worker-"))
    log_path = log_dir / f"{script.stem}.{os.getpid()}.{time.monotonic_ns()}.log"
    process = spawn(
        [interpreter, str(script), *args],
        env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {}), "III_URL": url},
        cwd=str(cwd if cwd is not None else script.parent),
        log_path=log_path,
    )
    return WorkerProcess(process, script, log_path)
