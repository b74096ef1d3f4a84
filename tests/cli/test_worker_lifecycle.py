"""Managed workers end to end: init → add → auto-start → trigger → stop/start → logs; restarts,
hot reload, registry installs, and nothing outliving the engine."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from pathlib import Path

import pytest

from helpers import LOCAL_MODULES, RawClient

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


@pytest.mark.parametrize("language", ["python", "javascript"])
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
    assert out.split("\n")[1].split()[-1] == "stopped"

    status, _, err = await run_cli("-c", "config.yaml", "worker", "start", "greeter", "--port", port, cwd=root, env=env)
    assert status == 0, err
    await client.wait_for_function("greeter::hello")
    status, out, _ = await run_cli("-c", "config.yaml", "worker", "list", "--port", port, cwd=root, env=env)
    assert "running" in out

    status, out, _ = await run_cli("worker", "logs", "greeter", cwd=root, env=env)
    assert status == 0 and "greeter is ready" in out
    status, out, _ = await run_cli("-c", "config.yaml", "worker", "status", "greeter", "--port", port, cwd=root, env=env)
    assert status == 0 and "state:     running (connected)" in out


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
