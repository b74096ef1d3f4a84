"""Testing and benchmarking iii workers: an engine, workers and clients for a test.

The pytest plugin (:mod:`iii.testing.plugin`, loaded by the ``iii`` entry point once this package
is installed) gives the fixtures ``iii_engine``, ``iii_worker``, ``iii_client``,
``iii_worker_process`` and ``iii_bench``; the classes below are what they return, usable without
pytest too::

    from iii.testing import start_engine, connect_worker

    with start_engine() as engine:
        worker = connect_worker(engine.url, "math")
        worker.register_function("math::add", lambda d: {"c": d["a"] + d["b"]})
        assert worker.trigger({"function_id": "math::add", "payload": {"a": 1, "b": 2}}) == {"c": 3}
        worker.shutdown()
"""

from iii.testing._bench import EngineBench, engine_info
from iii.testing._engine import (
    EngineProcess,
    default_modules,
    durable_modules,
    engine_config,
    start_engine,
)
from iii.testing._workers import (
    TestWorker,
    WorkerProcess,
    connect_worker,
    start_worker_process,
    wait_for_functions,
)

__all__ = [
    "EngineBench",
    "EngineProcess",
    "TestWorker",
    "WorkerProcess",
    "connect_worker",
    "default_modules",
    "durable_modules",
    "engine_config",
    "engine_info",
    "start_engine",
    "start_worker_process",
    "wait_for_functions",
]
