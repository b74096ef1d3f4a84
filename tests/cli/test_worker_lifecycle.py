"""Managed workers end to end: init → add → auto-start → trigger → stop/start → logs; restarts,
hot reload, registry installs, and nothing outliving the engine."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import sys
import urllib.request
from pathlib import Path

import pytest

from helpers import LOCAL_MODULES, RawClient
from iii.cli.templates import ENTRY_POINTS

LISTENER = "workers:\n  - name: iii-worker-manager\n    config:\n      host: 127.0.0.1\n      port: 0\n" + LOCAL_MODULES

PID_WORKER = '''
import os, signal, threading
from iii import InitOptions, register_worker
worker = register_worker(options=InitOptions(worker_name="ignored-by-III_WORKER_NAME"))
worker.register_function(os.environ["III_WORKER_NAME"] + "::pid", lambda data: os.getpid())
print("pid worker up", os.getpid(), flush=True)
stopped = threading.Event()
signal.signal(signal.SIGTERM, lambda *_: stopped.set())
stopped.wait()
worker.shutdown()
'''


async def run_cli(*args: str, cwd: Path, env: dict[str, str]) -> tuple[int, str, str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "iii", *args, cwd=cwd, env={**os.environ, **env},
        stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), 180)
    return process.returncode, out.decode(), err.decode()


def make_worker(directory: Path, name: str, source: str = PID_WORKER, start: str = "python main.py") -> Path:
    directory.mkdir(parents=True)
    (directory / "iii.worker.yaml").write_text(f"name: {name}\nscripts:\n  install: ''\n  start: {start}\n")
    (directory / "main.py").write_text(source)
    return directory


async def wait_gone(pid: int, timeout: float = 15) -> None:
    """Await the exit of a process that is not our child (pidfd readiness)."""
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return
    gone = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_reader(fd, gone.set)
    try:
        await asyncio.wait_for(gone.wait(), timeout)
    finally:
        loop.remove_reader(fd)
        os.close(fd)


def alive(pid: int) -> bool:
    """Running (a zombie waiting for a reaper counts as gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


@pytest.fixture
def project(tmp_path):
    logs = tmp_path / "logs"
    return tmp_path, {"III_LOGS_DIR": str(logs), "III_URL": ""}


async def function_ids(client: RawClient) -> list[str]:
    listed = await client.call("engine::functions::list", {})
    return [f["function_id"] for f in listed["result"]["functions"]]


@pytest.mark.parametrize("language", ["python", "javascript", "typescript"])
async def test_init_add_trigger_stop_start_logs(procs, project, language, node):
    root, env = project
    engine = await procs.engine(LISTENER, tmp=root, extra_env=env)
    port = engine.url.rsplit(":", 1)[1]
    assert (await run_cli("worker", "init", "greeter", "-l", language, cwd=root, env=env))[0] == 0

    status, _, err = await run_cli("-c", "config.yaml", "worker", "add", "./greeter", "--port", port, cwd=root, env=env)
    assert status == 0, err
    assert "greeter is connected" in err
    assert "worker_path" in (root / "config.yaml").read_text()

    status, out, err = await run_cli("trigger", "greeter::hello", "name=iii", "--port", port, cwd=root, env=env)
    assert (status, json.loads(out)) == (0, {"greeting": "hello, iii"}), err

    client = await RawClient.connect(engine.url)
    status, _, err = await run_cli("-c", "config.yaml", "worker", "stop", "greeter", "--port", port, cwd=root, env=env)
    assert status == 0, err
    assert "greeter::hello" not in await function_ids(client)
    status, out, _ = await run_cli("-c", "config.yaml", "worker", "list", "--port", port, cwd=root, env=env)
    assert out.split("\n")[0].split() == ["NAME", "VERSION", "PID", "STATUS"]
    assert out.split("\n")[1].split() == ["greeter", "0.1.0", "-", "stopped"]

    status, _, err = await run_cli("-c", "config.yaml", "worker", "start", "greeter", "--port", port, cwd=root, env=env)
    assert status == 0, err
    await client.wait_for_function("greeter::hello")
    status, out, _ = await run_cli("-c", "config.yaml", "worker", "list", "--port", port, cwd=root, env=env)
    assert "running" in out

    status, out, _ = await run_cli("worker", "logs", "greeter", cwd=root, env=env)
    assert status == 0 and re.search(r"^\d{4}-\d\d-\d\dT[\d:.]+Z greeter is ready$", out, re.MULTILINE), out
    status, out, _ = await run_cli("-c", "config.yaml", "worker", "status", "greeter", "--port", port, cwd=root, env=env)
    assert status == 0 and "state:     running (connected)" in out

    # `iii trigger FN --help` describes FN from the engine.
    status, out, err = await run_cli("trigger", "greeter::hello", "--help", "--port", port, cwd=root, env=env)
    assert status == 0 and "usage: iii trigger" in out and "Greets {name}" in out, err
    if language == "python":  # the Python template declares its request schema
        assert '"name": {' in out and "request schema" in out

    # The example logs nothing per call, nor when CLI clients come and go.
    before = (root / "logs" / "greeter" / "stdout.log").read_text()
    for _ in range(3):
        assert (await run_cli("trigger", "greeter::hello", "--port", port, cwd=root, env=env))[0] == 0
    assert (root / "logs" / "greeter" / "stdout.log").read_text() == before

    if language != "javascript":  # `start` watches the sources (watchfiles, tsx watch): an edit reloads
        entry = root / "greeter" / ENTRY_POINTS[language]
        entry.write_text(entry.read_text().replace("hello, ", "hi, "))
        for _ in range(240):  # bounded: the old process stops, the new one connects
            answer = await client.call("greeter::hello", {"name": "iii"})
            if answer.get("result") == {"greeting": "hi, iii"}:
                break
            await asyncio.sleep(0.25)
        assert answer.get("result") == {"greeting": "hi, iii"}, answer


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM, signal.SIGINT])
async def test_workers_never_outlive_the_engine(procs, project, sig):
    root, env = project
    make_worker(root / "pidw", "pidw")
    config = LISTENER + f"  - name: pidw\n    worker_path: {root / 'pidw'}\n"
    engine = await procs.engine(config, tmp=root, extra_env=env)
    client = await RawClient.connect(engine.url)
    await client.wait_for_function("pidw::pid")
    worker_pid = (await client.call("pidw::pid", {}))["result"]
    assert alive(worker_pid)
    engine.proc.kill(sig)
    await engine.proc.wait()
    await wait_gone(worker_pid)
    assert not alive(worker_pid)


async def test_crashed_worker_is_restarted_with_backoff(procs, project):
    root, env = project
    make_worker(root / "crashy", "crashy", "import sys\nprint('crashing', flush=True)\nsys.exit(3)\n")
    engine = await procs.engine(LISTENER + f"  - name: crashy\n    worker_path: {root / 'crashy'}\n", tmp=root, extra_env=env)
    client = await RawClient.connect(engine.url)
    await engine.proc.expect(lambda line: isinstance(line, str) and "crashy exited with status 3; restarting in 2 s" in line, 30)
    state = (await client.call("worker::status", {"name": "crashy"}))["result"]
    assert state["restarts"] >= 2 and state["last_exit"] == 3
    assert (root / "logs" / "crashy" / "stdout.log").read_text().count("crashing") >= 2


async def test_hot_reload_starts_stops_and_keeps_on_bad_edits(procs, project):
    root, env = project
    make_worker(root / "one", "one")
    make_worker(root / "two", "two")
    engine = await procs.engine(LISTENER + f"  - name: one\n    worker_path: {root / 'one'}\n", tmp=root, extra_env=env)
    config = root / "config.yaml"
    client = await RawClient.connect(engine.url)
    await client.wait_for_function("one::pid")
    one_pid = (await client.call("one::pid", {}))["result"]

    config.write_text(config.read_text() + "  - name: two\n    worker_path: " + str(root / "two") + "\n")
    await client.wait_for_function("two::pid")

    config.write_text(config.read_text() + "bogus_key: 1\n")
    await engine.proc.expect(lambda line: isinstance(line, str) and "config change rejected" in line and "bogus_key" in line)
    assert alive(one_pid)

    config.write_text(LISTENER + f"  - name: two\n    worker_path: {root / 'two'}\n")
    await wait_gone(one_pid)
    assert "one::pid" not in await function_ids(client) and "two::pid" in await function_ids(client)

    config.write_text(config.read_text() + "  - name: state\n    config:\n      max_value_bytes: 5\n")
    await engine.proc.expect(lambda line: isinstance(line, str) and "config of iii-state changed" in line and "on restart" in line)


async def test_add_from_a_registry_folder_and_clear_registry_errors(procs, project, monkeypatch):
    root, env = project
    registry = root / "registry"
    make_worker(registry / "packages" / "regw", "regw")
    (registry / "index.json").write_text(json.dumps({"workers": {"regw": {"version": "1.0.0", "path": "packages/regw"}}}))
    env = {**env, "HOME": str(root / "home"), "III_REGISTRY": str(registry)}
    engine = await procs.engine(LISTENER, tmp=root, extra_env=env)
    port = engine.url.rsplit(":", 1)[1]
    status, _, err = await run_cli("-c", "config.yaml", "worker", "add", "regw@1.0.0", "--port", port, cwd=root, env=env)
    assert status == 0, err
    assert str(root / "home" / ".iii" / "managed" / "regw") in (root / "config.yaml").read_text()
    missing = await run_cli("-c", "config.yaml", "worker", "add", "nope", "--no-wait", cwd=root, env=env)
    assert missing[0] == 1 and "'nope' is not in the registry" in missing[2]
    unreachable = await run_cli("-c", "config.yaml", "worker", "add", "regw", "--no-wait", cwd=root,
                                env={**env, "III_REGISTRY": "http://127.0.0.1:9/none"})
    assert unreachable[0] == 1 and "unreachable" in unreachable[2] and "fix:" in unreachable[2]


async def test_add_refuses_bad_manifests_and_commands_explain_a_missing_engine(project):
    root, env = project
    bad = root / "bad"
    bad.mkdir()
    (bad / "iii.worker.yaml").write_text("name: bad\nscripts:\n  start: x\nextra: 1\n")
    status, _, err = await run_cli("worker", "add", "./bad", "--no-wait", cwd=root, env=env)
    assert status == 1 and "unknown key(s)" in err and "extra" in err
    assert not (root / "config.yaml").exists()
    status, _, err = await run_cli("worker", "stop", "x", "--port", "9", cwd=root, env=env)
    assert status == 1 and "cannot reach the engine" in err and "fix:" in err
    status, _, err = await run_cli("trigger", "a::b", "--port", "9", cwd=root, env=env)
    assert status == 1 and "cannot reach the engine" in err


async def test_add_of_a_crashing_worker_says_so_at_once(procs, project):
    root, env = project
    make_worker(root / "crashy", "crashy", "import sys\nprint('about to fail', flush=True)\nsys.exit('bad config: no API key')\n")
    engine = await procs.engine(LISTENER, tmp=root, extra_env=env)
    port = engine.url.rsplit(":", 1)[1]
    status, _, err = await run_cli("-c", "config.yaml", "worker", "add", "./crashy", "--port", port, cwd=root, env=env)
    assert status == 1
    assert "error: crashy crashed before it connected (exit status 1)" in err
    assert "bad config: no API key" in err and "about to fail" in err  # its last log lines
    client = await RawClient.connect(engine.url)
    state = (await client.call("worker::status", {"name": "crashy"}))["result"]
    # It returned at the first crash, not after the engine's restarts (1 s, 2 s, 4 s … apart).
    assert state["restarts"] <= 2, state


async def test_stop_and_restart_wait_for_the_old_processes(procs, project):
    root, env = project
    make_worker(root / "pidw", "pidw")
    engine = await procs.engine(LISTENER + f"  - name: pidw\n    worker_path: {root / 'pidw'}\n", tmp=root, extra_env=env)
    port = engine.url.rsplit(":", 1)[1]
    client = await RawClient.connect(engine.url)
    await client.wait_for_function("pidw::pid")
    worker_pid = (await client.call("pidw::pid", {}))["result"]
    shim_pid = (await client.call("worker::status", {"name": "pidw"}))["result"]["pid"]

    status, _, err = await run_cli("-c", "config.yaml", "worker", "restart", "pidw", "--port", port, cwd=root, env=env)
    assert status == 0, err
    assert not alive(worker_pid) and not alive(shim_pid)  # gone before the new one counted as connected
    new_state = (await client.call("worker::status", {"name": "pidw"}))["result"]
    assert new_state["pid"] != shim_pid and alive(new_state["pid"])
    await client.wait_for_function("pidw::pid")
    worker_pid = (await client.call("pidw::pid", {}))["result"]

    status, _, err = await run_cli("-c", "config.yaml", "worker", "stop", "pidw", "--port", port, cwd=root, env=env)
    assert status == 0 and "pidw stopped" in err, err
    assert not alive(worker_pid) and not alive(new_state["pid"])


async def test_json_output_and_error_messages(procs, project):
    root, env = project
    make_worker(root / "pidw", "pidw")
    (root / "pidw" / "pyproject.toml").write_text('[project]\nname = "pidw"\nversion = "3.1.4"\n')
    engine = await procs.engine(LISTENER + f"  - name: pidw\n    worker_path: {root / 'pidw'}\n", tmp=root, extra_env=env)
    port = engine.url.rsplit(":", 1)[1]
    client = await RawClient.connect(engine.url)
    await client.wait_for_function("pidw::pid")
    status, out, _ = await run_cli("-c", "config.yaml", "worker", "list", "--json", "--port", port, cwd=root, env=env)
    rows = json.loads(out)["workers"]
    assert status == 0 and [(r["name"], r["version"], r["status"]) for r in rows] == [("pidw", "3.1.4", "running")]
    status, out, _ = await run_cli("-c", "config.yaml", "worker", "status", "pidw", "--json", "--port", port, cwd=root, env=env)
    state = json.loads(out)
    assert status == 0 and state["state"] == "running" and state["connected"] is True
    assert any("pid worker up" in line for line in state["recent_logs"]["stdout"])

    # A remote error: `error: message (code)`; with --json, the error as JSON on stdout.
    status, out, err = await run_cli("-c", "config.yaml", "worker", "status", "nope", "--port", port, cwd=root, env=env)
    assert status == 1 and err.startswith("error: Worker 'nope' is not in") and "(NOT_FOUND)" in err and not out
    status, out, err = await run_cli("-c", "config.yaml", "worker", "status", "nope", "--json", "--port", port, cwd=root, env=env)
    assert status == 1 and json.loads(out)["error"]["code"] == "NOT_FOUND"
    status, out, err = await run_cli("trigger", "nope::x", "--port", port, cwd=root, env=env)
    assert status == 1 and not out
    assert err.splitlines()[0] == "error: Function nope::x not found in namespace default. (function_not_found)"


async def test_trigger_usage_and_a_closed_pipe(project):
    root, env = project
    status, _, err = await run_cli("trigger", cwd=root, env=env)
    assert status == 2 and "required: FUNCTION" in err and "KEY=VALUE" not in err.splitlines()[-2]
    # `iii … | head`: the reader is gone before we write; no traceback, the shell's SIGPIPE status.
    read, write = os.pipe()
    os.close(read)
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "iii", "worker", "list", "--json", "--port", "9", cwd=root, env={**os.environ, **env},
        stdin=asyncio.subprocess.DEVNULL, stdout=write, stderr=asyncio.subprocess.PIPE,
    )
    os.close(write)
    _, err = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode == 128 + signal.SIGPIPE
    assert b"Traceback" not in err and b"BrokenPipeError" not in err


async def test_debug_logs_registrations_calls_and_http_requests(procs, project):
    root, env = project
    engine = await procs.engine(LISTENER, tmp=root, extra_env={**env, "III_LOG_LEVEL": "debug"})
    worker = await RawClient.connect(engine.url)
    await worker.register("debugged")
    worker.send(type="registerfunction", id="math::add", description="adds")
    worker.send(type="registertrigger", id="t1", trigger_type="http", function_id="math::add",
                config={"api_path": "/add", "http_method": "GET"})
    caller = await RawClient.connect(engine.url)
    await caller.wait_for_function("math::add")

    async def answer() -> None:
        invoke = await worker.recv_until(lambda m: m.get("type") == "invokefunction")
        worker.send(type="invocationresult", invocation_id=invoke["invocation_id"], function_id="math::add", result={"sum": 3})

    answering = asyncio.ensure_future(answer())
    assert (await caller.call("math::add", {"a": 1, "b": 2}))["result"] == {"sum": 3}
    await answering
    await engine.proc.expect(lambda line: isinstance(line, str) and "registered function math::add" in line and "debugged" in line)
    await engine.proc.expect(lambda line: isinstance(line, str) and re.search(r"call math::add from \S+: ok in [\d.]+ ms", line))
    await engine.proc.expect(lambda line: isinstance(line, str) and "registered trigger t1: http -> math::add" in line)
    missing = await caller.call("nope::x", {})
    assert missing["error"]["code"] == "function_not_found"
    await caller.call("engine::functions::list", {})
    await engine.proc.expect(lambda line: isinstance(line, str) and re.search(r"call engine::functions::list from \S+: ok in [\d.]+ ms", line))

    http_url = next(line for line in engine.proc.lines if isinstance(line, str) and "iii-http listening on" in line).rsplit(" ", 1)[1]
    answering = asyncio.ensure_future(answer())
    status = await asyncio.get_running_loop().run_in_executor(None, lambda: urllib.request.urlopen(http_url + "/add?a=1", timeout=20).status)
    await answering
    assert status == 200
    await engine.proc.expect(lambda line: isinstance(line, str) and re.search(r"iii-http: GET /add\?a=1 from 127.0.0.1 -> math::add: 200 in [\d.]+ ms", line))


async def test_start_of_a_worker_that_cannot_start_says_why(procs, project):
    root, env = project
    (root / "gone").mkdir()  # no iii.worker.yaml
    engine = await procs.engine(LISTENER + f"  - name: gone\n    worker_path: {root / 'gone'}\n", tmp=root, extra_env=env)
    port = engine.url.rsplit(":", 1)[1]
    status, out, _ = await run_cli("-c", "config.yaml", "worker", "list", "--port", port, cwd=root, env=env)
    assert out.split("\n")[1].split() == ["gone", "-", "-", "failed"]
    status, _, err = await run_cli("-c", "config.yaml", "worker", "start", "gone", "--port", port, cwd=root, env=env)
    assert status == 1 and "error: gone could not be started:" in err and "iii.worker.yaml" in err, err
