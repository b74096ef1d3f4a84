"""The pytest plugin (entry point ``iii``): fixtures that start an engine, workers and clients
for a test, and benchmark the engine between them with pytest-benchmark.

Fixtures (function scope; everything a test starts is stopped when it ends, also when it fails
or is interrupted):

- ``iii_engine``: an :class:`~iii.testing.EngineProcess` on free loopback ports (a subprocess:
  ``python -m iii``). Configure it with ``@pytest.mark.iii_engine(modules=..., durable=...,
  build=..., env=...)`` or by overriding the ``iii_engine_modules`` fixture.
- ``iii_worker``: a :class:`~iii.testing.TestWorker` on this package's SDK, connected to it.
- ``iii_client``: another one, for calls (``iii_client.trigger(...)``).
- ``iii_worker_process``: ``iii_worker_process(path, wait_for=[...])`` starts a worker script
  (official Python or Node SDK) against it.
- ``iii_bench``: an :class:`~iii.testing.EngineBench` (needs pytest-benchmark).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Iterator, Optional, Union

import pytest

from iii.testing._bench import EngineBench, engine_info
from iii.testing._engine import EngineProcess, start_engine
from iii.testing._workers import (
    TestWorker,
    WorkerProcess,
    connect_worker,
    start_worker_process,
    wait_for_functions,
)

__all__ = [
    "iii_bench",
    "iii_client",
    "iii_engine",
    "iii_engine_modules",
    "iii_worker",
    "iii_worker_process",
]

_MARKER = "iii_engine"
_LOG_TAIL = 6000


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("iii", "iii engine fixtures")
    group.addoption(
        "--iii-build",
        choices=("compiled", "pure"),
        default=None,
        help="run the iii_engine fixture's engines on this build (default: whichever is installed)",
    )


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        f"{_MARKER}(modules=None, durable=False, build=None, env=None): configure the iii_engine "
        "fixture's engine (module entry name -> config; state and queues in SQLite files; "
        "'compiled' or 'pure'; extra environment variables)",
    )


@pytest.fixture
def iii_engine_modules() -> dict[str, Any]:
    """Module entry name -> ``config`` for the ``iii_engine`` fixture, laid over its defaults
    (every built-in module, HTTP and streams on 127.0.0.1 and free ports). Override it in a
    ``conftest.py`` to configure every engine of a directory; a marker's ``modules`` win."""
    return {}


@pytest.fixture
def iii_engine(request: pytest.FixtureRequest, iii_engine_modules: dict[str, Any], tmp_path: Path) -> Iterator[EngineProcess]:
    """An engine subprocess on free loopback ports, stopped (by pid) when the test ends."""
    marker = request.node.get_closest_marker(_MARKER)
    options: dict[str, Any] = dict(marker.kwargs) if marker is not None else {}
    unknown = set(options) - {"modules", "durable", "build", "env"}
    if unknown:
        raise pytest.UsageError(f"@pytest.mark.{_MARKER}: unknown argument(s) {sorted(unknown)}")
    engine = start_engine(
        {**iii_engine_modules, **(options.get("modules") or {})},
        build=options.get("build") or request.config.getoption("--iii-build"),
        durable=bool(options.get("durable")),
        env=options.get("env"),
        directory=tmp_path / "iii-engine",
    )
    if "benchmark" in request.fixturenames:
        request.getfixturevalue("benchmark").extra_info.update(engine_info(engine))
    try:
        yield engine
    finally:
        engine.stop()


@pytest.fixture
def iii_worker(iii_engine: EngineProcess) -> Iterator[TestWorker]:
    """A worker on this SDK connected to ``iii_engine``: register its functions in the test
    (``iii_worker.register_function(id, handler)`` returns once the engine lists it)."""
    worker = connect_worker(iii_engine.url, "iii-test-worker")
    try:
        yield worker
    finally:
        worker.shutdown()


@pytest.fixture
def iii_client(iii_engine: EngineProcess) -> Iterator[TestWorker]:
    """A second connection to ``iii_engine``, for the test's calls
    (``iii_client.trigger({"function_id": ..., "payload": ...})`` or ``trigger_async``)."""
    client = connect_worker(iii_engine.url, "iii-test-client")
    try:
        yield client
    finally:
        client.shutdown()


@pytest.fixture
def iii_worker_process(iii_engine: EngineProcess, iii_client: TestWorker, tmp_path: Path) -> Iterator[Callable[..., WorkerProcess]]:
    """A factory: ``iii_worker_process(path, wait_for=["fn::id"], interpreter=None, args=(),
    env=None)`` starts a worker script against ``iii_engine`` (``III_URL`` set) and returns once
    the engine lists the ``wait_for`` functions. Every process it started is stopped at the end."""
    started: list[WorkerProcess] = []

    def start(
        path: Union[str, Path],
        *,
        wait_for: Any = (),
        interpreter: Optional[str] = None,
        args: Any = (),
        env: Optional[dict[str, str]] = None,
        timeout: float = 30.0,
    ) -> WorkerProcess:
        process = start_worker_process(path, iii_engine.url, args=args, interpreter=interpreter, env=env, log_dir=tmp_path)
        started.append(process)
        try:
            wait_for_functions(iii_client, [wait_for] if isinstance(wait_for, str) else wait_for, timeout)
        except TimeoutError as exc:
            raise TimeoutError(f"{exc}; worker {'running' if process.alive else 'exited'}, its output:\n{process.output()[-_LOG_TAIL:]}") from None
        return process

    try:
        yield start
    finally:
        for process in started:
            process.stop()


@pytest.fixture
def iii_bench(request: pytest.FixtureRequest, iii_engine: EngineProcess, iii_worker: TestWorker, iii_client: TestWorker) -> Iterator[EngineBench]:
    """pytest-benchmark on the engine: ``iii_bench.call(id, payload)``, ``.http(path)``,
    ``.state_set(scope, key, value)``, ``.enqueue(id, payload)`` — one benchmark per test."""
    bench = EngineBench(request.getfixturevalue("benchmark"), iii_engine, iii_worker, iii_client)
    try:
        yield bench
    finally:
        bench.close()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[Any]) -> Iterator[None]:
    """A failed test that used an engine shows the end of the engine's log."""
    outcome = yield
    report = outcome.get_result()
    engine = getattr(item, "funcargs", {}).get("iii_engine")
    if report.failed and isinstance(engine, EngineProcess):
        report.sections.append(("iii engine log", engine.output()[-_LOG_TAIL:]))
