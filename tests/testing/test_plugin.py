"""The pytest plugin, tested by using it: pytester runs users' test files in a fresh pytest
process, where the plugin is loaded by its ``pytest11`` entry point (as after ``pip install``)."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from helpers import ROOT

pytest_plugins = ["pytester"]

#: Options every inner run gets: no plugins of this checkout's own suite, short benchmarks.
_QUICK = ("-p", "no:randomly", "-p", "no:cacheprovider", "--benchmark-max-time=0.05", "--benchmark-min-rounds=3")


def readme_example() -> str:
    """The plugin example of the README (the python block after its ``pytest plugin`` heading)."""
    text = (ROOT / "README.md").read_text()
    section = text[text.index("## Testing and benchmarking your workers"):]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)  # type: ignore[union-attr]


def benchmarks(path: Path) -> dict[str, dict]:
    """pytest-benchmark's JSON: test name -> its entry."""
    return {entry["name"]: entry for entry in json.loads(path.read_text())["benchmarks"]}


def test_the_readme_example_runs_and_its_benchmark_records_the_engine_build(pytester):
    assert len(readme_example().strip().splitlines()) <= 12
    pytester.makepyfile(test_user=readme_example())
    result = pytester.runpytest_subprocess(*_QUICK, "--benchmark-json=bench.json")
    result.assert_outcomes(passed=2)
    entry = benchmarks(pytester.path / "bench.json")["test_add_speed"]
    from iii.testing._engine import _compiled_available

    assert entry["extra_info"]["iii_engine_build"] == ("compiled" if _compiled_available() else "pure")
    assert entry["extra_info"]["iii_measure"] == "call math::add"
    assert entry["stats"]["rounds"] >= 3


def test_each_benchmark_kind_measures_through_the_engine(pytester):
    pytester.makepyfile(test_kinds="""
        import pytest

        def hello(request):
            return {"status_code": 200, "body": {"hi": request["query_params"].get("name")}}

        def test_http(iii_bench, iii_worker):
            iii_worker.register_function("web::hello", hello)
            iii_worker.register_trigger({"type": "http", "function_id": "web::hello",
                                         "config": {"api_path": "hello", "http_method": "GET"}})
            assert iii_bench.http("hello?name=ann") == (200, {"hi": "ann"})

        @pytest.mark.iii_engine(durable=True)
        def test_state_set_durable(iii_bench, iii_client, iii_engine):
            iii_bench.state_set("s", "k", {"v": 1})
            assert iii_client.trigger({"function_id": "state::get", "payload": {"scope": "s", "key": "k"}}) == {"v": 1}
            assert (iii_engine.directory / "state.db").exists()

        def test_enqueue(iii_bench, iii_worker):
            seen = []
            iii_worker.register_function("jobs::take", lambda data: seen.append(data))
            receipt = iii_bench.enqueue("jobs::take", {"n": 1})
            assert "messageReceiptId" in receipt
            assert seen and all(job == {"n": 1} for job in seen)
            assert iii_worker.calls("jobs::take") == len(seen)

        @pytest.mark.iii_engine(build="pure")
        def test_pure_build(iii_bench, iii_worker):
            iii_worker.register_function("e::echo", lambda data: data)
            assert iii_bench.call("e::echo", [1]) == [1]
    """)
    result = pytester.runpytest_subprocess(*_QUICK, "--benchmark-json=bench.json")
    result.assert_outcomes(passed=4)
    entries = benchmarks(pytester.path / "bench.json")
    assert entries["test_pure_build"]["extra_info"]["iii_engine_build"] == "pure"
    assert entries["test_http"]["extra_info"]["iii_measure"] == "http GET /hello?name=ann"
    assert entries["test_enqueue"]["extra_info"]["iii_measure"].startswith("enqueue -> delivery jobs::take")
    assert all("iii_engine_build" in entry["extra_info"] for entry in entries.values())


def test_engine_modules_from_a_fixture_override_and_a_marker(pytester):
    pytester.makeconftest("""
        import pytest

        @pytest.fixture
        def iii_engine_modules():
            return {"iii-state": {"max_value_bytes": 10}}
    """)
    pytester.makepyfile(test_modules="""
        import pytest
        from iii import InvocationError

        def set_value(client, value):
            return client.trigger({"function_id": "state::set", "payload": {"scope": "s", "key": "k", "value": value}})

        def test_override(iii_client):
            with pytest.raises(InvocationError):
                set_value(iii_client, "x" * 100)

        @pytest.mark.iii_engine(modules={"iii-state": None})
        def test_marker_wins(iii_client):
            set_value(iii_client, "x" * 100)

        async def test_async_tests_use_the_same_fixtures(iii_worker, iii_client):
            async def double(data):
                return data * 2
            iii_worker.register_function("m::double", double)
            assert await iii_client.trigger_async({"function_id": "m::double", "payload": 21}) == 42
    """)
    result = pytester.runpytest_subprocess(*_QUICK, "-o", "asyncio_mode=auto")
    result.assert_outcomes(passed=3)


def test_official_python_and_node_workers_start_from_a_path(pytester, official_python, node):
    (pytester.path / "node_modules").symlink_to(ROOT / "tests/interop/node/node_modules")
    pytester.makefile(".py", py_worker="""
        import threading
        from iii import InitOptions, register_worker

        worker = register_worker(options=InitOptions(worker_name="py-user"))  # III_URL from the fixture
        worker.register_function("py::add", lambda data: {"c": data["a"] + data["b"]})
        threading.Event().wait()
    """)
    pytester.makefile(".mjs", node_worker="""
        import { registerWorker } from "iii-sdk";
        const worker = registerWorker(process.env.III_URL, { workerName: "node-user" });
        worker.registerFunction("node::add", async (data) => ({ c: data.a + data.b }));
    """)
    pytester.makepyfile(test_paths=f"""
        import os
        from pathlib import Path

        def test_python(iii_worker_process, iii_client):
            worker = iii_worker_process("py_worker.py", wait_for="py::add", interpreter={official_python!r})
            assert iii_client.trigger({{"function_id": "py::add", "payload": {{"a": 1, "b": 2}}}}) == {{"c": 3}}
            Path("pids").write_text(str(worker.pid))

        def test_node(iii_worker_process, iii_client):
            worker = iii_worker_process("node_worker.mjs", wait_for=["node::add"])
            assert iii_client.trigger({{"function_id": "node::add", "payload": {{"a": 2, "b": 2}}}}) == {{"c": 4}}
            with open("pids", "a") as pids:
                pids.write(" " + str(worker.pid))
    """)
    result = pytester.runpytest_subprocess(*_QUICK)
    result.assert_outcomes(passed=2)
    for pid in (pytester.path / "pids").read_text().split():
        assert gone(int(pid))


def gone(pid: int) -> bool:
    """No such process, or only its zombie (its parent exited before reaping it)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return True
    return state in ("Z", "X")


def wait_gone(pids: list[int], timeout: float = 15) -> list[int]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        alive = [pid for pid in pids if not gone(pid)]
        if not alive:
            return []
        time.sleep(0.05)
    return alive


_STARTS_AND_WAITS = """
    import os, time
    from pathlib import Path

    def test_started(iii_engine, iii_worker, iii_worker_process):
        Path("worker.py").write_text("import threading; threading.Event().wait()")
        script = iii_worker_process("worker.py")
        Path("pids.tmp").write_text(f"{iii_engine.pid} {script.pid}")
        os.rename("pids.tmp", "pids")
        ENDING
"""


def test_what_a_failing_test_started_is_stopped(pytester):
    pytester.makepyfile(test_fails=_STARTS_AND_WAITS.replace("ENDING", "assert False, 'the user test fails'"))
    result = pytester.runpytest_subprocess(*_QUICK)
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*iii engine log*", "*iii engine * listening on ws://127.0.0.1:*"])
    assert wait_gone([int(pid) for pid in (pytester.path / "pids").read_text().split()], timeout=1) == []


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGKILL], ids=["interrupted", "killed"])
def test_what_an_interrupted_or_killed_run_started_is_stopped(pytester, sig):
    # The test waits (bounded) for a file that never comes: the run is stopped from outside.
    pytester.makepyfile(test_waits=_STARTS_AND_WAITS.replace(
        "ENDING", "deadline = time.monotonic() + 60\n        while time.monotonic() < deadline and not Path('never').exists(): time.sleep(0.05)"
    ))
    run = subprocess.Popen([sys.executable, "-m", "pytest", *_QUICK, "-q"], cwd=pytester.path,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        pids_file = pytester.path / "pids"
        deadline = time.monotonic() + 60
        while not pids_file.exists() and run.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        pids = [int(pid) for pid in pids_file.read_text().split()]
        os.kill(run.pid, sig)
        run.wait(30)
    finally:
        if run.poll() is None:
            run.kill()
            run.wait()
    assert wait_gone(pids) == []
