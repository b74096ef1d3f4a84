"""The lifeline shim on its own: how it stops a worker, propagates its status, and writes its logs."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import sys
from pathlib import Path

import psutil
import pytest

from iii.manager import lifeline

STAMP = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z ")
#: Far longer than any test waits: a stop that took it would fail the test's own deadline.
LONG_GRACE_S = "60"
DEADLINE_S = 20


class Shim:
    """A running shim with the write end of its lifeline held by the test."""

    def __init__(self, process: asyncio.subprocess.Process, lifeline_write: int) -> None:
        self.process = process
        self.lifeline_write = lifeline_write

    @classmethod
    async def start(cls, command: str, logs: Path, grace: str = LONG_GRACE_S, env: dict[str, str] | None = None) -> "Shim":
        read, write = os.pipe()
        process = await asyncio.create_subprocess_exec(
            sys.executable, lifeline.__file__, "--grace", grace, str(read), str(logs), command,
            pass_fds=(read,), env={**os.environ, **(env or {})}, start_new_session=True,
        )
        os.close(read)
        return cls(process, write)

    def descendants(self) -> list[psutil.Process]:
        return psutil.Process(self.process.pid).children(recursive=True)

    async def wait(self) -> int:
        return await asyncio.wait_for(self.process.wait(), DEADLINE_S)

    def close(self) -> None:
        if self.process.returncode is None:
            self.process.kill()
        try:
            os.close(self.lifeline_write)
        except OSError:
            pass


@pytest.fixture
async def shims():
    started: list[Shim] = []

    async def start(*args, **kwargs) -> Shim:
        shim = await Shim.start(*args, **kwargs)
        started.append(shim)
        return shim

    yield start
    for shim in started:
        shim.close()
        await shim.process.wait()


async def until(predicate, what: str) -> None:
    """Wait (bounded) for a condition only polling can see: a process appearing in /proc."""
    for _ in range(DEADLINE_S * 20):
        if predicate():
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def running(process: psutil.Process) -> bool:
    try:
        return process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


@pytest.mark.parametrize("command", [
    "sleep 300",                            # sh waits on its child: two processes
    "exec sleep 300",                       # one process
    "sleep 300 & sleep 300; wait",          # a background child in the group
    "setsid sleep 300 & sleep 300; wait",   # a child that left the group: found by the tree
])
async def test_sigterm_stops_every_process_without_waiting_for_the_grace(shims, tmp_path, command):
    shim = await shims(command, tmp_path)
    await until(lambda: len([p for p in shim.descendants() if p.name() == "sleep"]) == command.count("sleep"), "the sleeps")
    workers = shim.descendants()
    shim.process.send_signal(signal.SIGTERM)
    # The grace is 60 s and the deadline 20 s: returning means nobody waited for the grace.
    assert await shim.wait() == 128 + signal.SIGTERM
    await until(lambda: not any(map(running, workers)), "the worker's processes to exit")


async def test_a_worker_ignoring_sigterm_is_killed_after_the_grace(shims, tmp_path):
    shim = await shims("trap '' TERM; sleep 300", tmp_path, grace="0.2")
    await until(lambda: any(p.name() == "sleep" for p in shim.descendants()), "the sleep")
    workers = shim.descendants()
    shim.process.send_signal(signal.SIGTERM)
    assert await shim.wait() == 128 + signal.SIGTERM
    await until(lambda: not any(map(running, workers)), "the worker's processes to be killed")


async def test_the_worker_is_stopped_when_the_engine_is_gone(shims, tmp_path):
    shim = await shims("exec sleep 300", tmp_path)
    await until(lambda: bool(shim.descendants()), "the sleep")
    workers = shim.descendants()
    os.close(shim.lifeline_write)  # what the engine's exit does, SIGKILL included
    assert await shim.wait() == 128 + signal.SIGTERM
    assert not any(map(running, workers))


async def test_exit_status_and_timestamped_logs(shims, tmp_path):
    shim = await shims("echo out one; echo err one >&2; printf 'no newline'; exit 3", tmp_path)
    assert await shim.wait() == 3
    stdout = (tmp_path / "stdout.log").read_text().splitlines()
    stderr = (tmp_path / "stderr.log").read_text().splitlines()
    assert [STAMP.sub("", line) for line in stdout] == ["out one", "no newline"]
    assert [STAMP.sub("", line) for line in stderr] == ["err one"]
    assert all(STAMP.match(line) for line in stdout + stderr)
    again = await shims("echo second run", tmp_path)
    assert await again.wait() == 0
    assert [STAMP.sub("", line) for line in (tmp_path / "stdout.log").read_text().splitlines()] == ["out one", "no newline", "second run"]


async def test_logs_rotate_at_the_size_bound(shims, tmp_path):
    shim = await shims("for i in $(seq 1 400); do echo line $i; done", tmp_path, env={"III_LOG_MAX_BYTES": "2000"})
    assert await shim.wait() == 0
    files = sorted(tmp_path.glob("stdout.log*"))
    assert [f.name for f in files] == ["stdout.log", "stdout.log.1", "stdout.log.2", "stdout.log.3"]
    assert all(f.stat().st_size <= 2000 for f in files)
    assert (tmp_path / "stdout.log").read_text().splitlines()[-1].endswith(" line 400")


def test_long_lines_are_cut_into_bounded_pieces(tmp_path):
    log = lifeline.LineLog(tmp_path / "stdout.log", 1 << 30)
    log.feed(b"x" * (2 * lifeline.MAX_LINE + 10))
    log.feed(b"\nend\n")
    log.feed(b"")
    lines = [STAMP.sub("", line) for line in (tmp_path / "stdout.log").read_text().splitlines()]
    assert lines == ["x" * lifeline.MAX_LINE, "x" * lifeline.MAX_LINE, "x" * 10, "end"]
