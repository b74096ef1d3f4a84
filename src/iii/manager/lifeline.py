"""Runs one worker command, writes its output to timestamped rotating logs, and makes sure it
never outlives the engine.

``python lifeline.py [--grace S] FD LOG_DIR COMMAND`` (run as a script: it imports nothing of
``iii``, so it starts in a few milliseconds) starts ``/bin/sh -c COMMAND``
in a new process group and waits. ``FD`` is the read end of a pipe whose write end only the
engine holds: when the engine exits for any reason (SIGKILL included) the pipe reaches EOF and the
worker's processes are stopped. SIGTERM/SIGINT to this process stop them the same way: SIGTERM to
the group and the process tree, SIGKILL to what is left after the grace. Exits with the command's
status (128 + signal when it was stopped, or killed by a signal).

The command's stdout and stderr go, a line at a time with a UTC timestamp in front, to
``LOG_DIR/stdout.log`` and ``LOG_DIR/stderr.log``, each rotated at ``$III_LOG_MAX_BYTES``
(default 10 MiB) with three old files kept (``stdout.log.1`` …).
"""

from __future__ import annotations

import argparse
import logging
import logging.handlers
import os
import selectors
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Optional

import psutil

__all__ = ["main", "stop_processes", "group_members", "wait_exited", "LineLog"]

DEFAULT_GRACE_S = 5.0
#: Old files kept per stream (``stdout.log.1`` … ``.3``).
LOG_BACKUPS = 3
DEFAULT_LOG_MAX_BYTES = 10 * 1024 * 1024
#: Bytes; a longer line is written in pieces this long (the buffer of an unfinished line is bounded).
MAX_LINE = 64 * 1024
#: After the command exits: how long its leftovers get to go, and to close its output.
_LEFTOVER_GRACE_S = 1.0


def group_members(pgid: int) -> list[psutil.Process]:
    """The running processes of process group ``pgid`` (zombies have exited: not counted)."""
    members = []
    for process in psutil.process_iter():
        try:
            if os.getpgid(process.pid) == pgid and process.status() != psutil.STATUS_ZOMBIE:
                members.append(process)
        except (ProcessLookupError, PermissionError, psutil.NoSuchProcess):
            continue
    return members


def wait_exited(processes: list[psutil.Process], timeout_s: float) -> list[psutil.Process]:
    """Wait up to ``timeout_s`` for ``processes`` to exit; returns those still running.

    Exit is read from each one's pidfd, which fires when it terminates, child of ours or not
    (a zombie waiting for a parent that never reaps it has exited; waiting for it to vanish, as
    polling ``kill(pid, 0)`` or ``psutil.wait_procs`` on a non-child does, took the full grace).
    """
    selector = selectors.DefaultSelector()
    for process in processes:
        try:
            selector.register(os.pidfd_open(process.pid), selectors.EVENT_READ, process)
        except ProcessLookupError:
            continue
    deadline = time.monotonic() + timeout_s
    try:
        while selector.get_map():
            events = selector.select(max(0.0, deadline - time.monotonic()))
            if not events:
                break
            for key, _ in events:
                selector.unregister(key.fd)
                os.close(key.fd)
        return [key.data for key in selector.get_map().values()]
    finally:
        for key in list(selector.get_map().values()):
            os.close(key.fd)
        selector.close()


def stop_processes(processes: list[psutil.Process], grace_s: float) -> None:
    """SIGTERM each process, wait up to ``grace_s`` for them all, SIGKILL the rest."""
    for process in processes:
        try:
            process.terminate()
        except psutil.NoSuchProcess:
            pass
    _kill(wait_exited(processes, grace_s))


class LineLog:
    """One output stream of the worker: bytes in, timestamped lines out to a rotating file."""

    def __init__(self, path: Path, max_bytes: int) -> None:
        self._handler = logging.handlers.RotatingFileHandler(
            path, maxBytes=max_bytes, backupCount=LOG_BACKUPS, encoding="utf-8"
        )
        self._handler.setFormatter(_UtcFormatter())
        self._partial = b""

    def feed(self, data: bytes) -> None:
        """Write every complete line of ``data`` (an empty ``data``: end of stream)."""
        if not data:
            self.close()
            return
        lines = (self._partial + data).split(b"\n")
        partial = lines.pop()
        while len(partial) > MAX_LINE:
            lines.append(partial[:MAX_LINE])
            partial = partial[MAX_LINE:]
        self._partial = partial
        for line in lines:
            self._write(line)

    def _write(self, line: bytes) -> None:
        text = line.rstrip(b"\r").decode("utf-8", "replace")
        self._handler.handle(logging.makeLogRecord({"msg": text, "levelno": logging.INFO}))

    def close(self) -> None:
        if self._partial:
            self._write(self._partial)
            self._partial = b""
        self._handler.close()


class _UtcFormatter(logging.Formatter):
    converter = time.gmtime

    def __init__(self) -> None:
        super().__init__("%(asctime)s.%(msecs)03dZ %(message)s", "%Y-%m-%dT%H:%M:%S")


def _parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="lifeline.py")
    parser.add_argument("--grace", type=float, default=DEFAULT_GRACE_S, help="seconds between SIGTERM and SIGKILL")
    parser.add_argument("lifeline_fd", type=int)
    parser.add_argument("log_dir", type=Path)
    parser.add_argument("command")
    return parser.parse_args(argv)


def main(argv: list[str]) -> int:
    args = _parse(argv)
    max_bytes = int(os.environ.get("III_LOG_MAX_BYTES") or DEFAULT_LOG_MAX_BYTES)
    args.log_dir.mkdir(parents=True, exist_ok=True)
    # Signals arrive as bytes on a socket the selector watches (handlers that only set a flag
    # would not wake a select() that Python restarts after EINTR).
    wake_read, wake_write = socket.socketpair()
    wake_write.setblocking(False)
    signal.set_wakeup_fd(wake_write.fileno(), warn_on_full_buffer=False)
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: None)
    # close_fds (the default) keeps the lifeline out of the worker: only this process watches it.
    child = subprocess.Popen(
        ["/bin/sh", "-c", args.command], start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    assert child.stdout is not None and child.stderr is not None
    logs = {
        child.stdout.fileno(): LineLog(args.log_dir / "stdout.log", max_bytes),
        child.stderr.fileno(): LineLog(args.log_dir / "stderr.log", max_bytes),
    }
    child_exit = os.pidfd_open(child.pid)
    selector = selectors.DefaultSelector()
    for fd in (args.lifeline_fd, child_exit, wake_read.fileno(), *logs):
        selector.register(fd, selectors.EVENT_READ)
    stopped_by: Optional[int] = None
    stopping: list[psutil.Process] = []
    kill_at = float("inf")
    while True:
        timeout = None if not stopping else max(0.0, kill_at - time.monotonic())
        events = selector.select(timeout)
        if stopping and time.monotonic() >= kill_at:  # the grace is over
            _kill(stopping)
            stopping, kill_at = [], float("inf")
        for key, _ in events:
            fd = key.fd
            if fd in logs:
                data = os.read(fd, 65536)
                logs[fd].feed(data)
                if not data:
                    selector.unregister(fd)
            elif fd == child_exit:
                return _finish(child, selector, logs, stopped_by)
            elif fd == wake_read.fileno():
                signums = wake_read.recv(64)
                if stopped_by is None:
                    stopped_by = signums[0]
                    stopping, kill_at = _terminate_worker(child.pid), time.monotonic() + args.grace
            elif not os.read(fd, 1024):  # EOF on the lifeline: the engine is gone
                selector.unregister(fd)
                if stopped_by is None:
                    stopped_by = signal.SIGTERM
                    stopping, kill_at = _terminate_worker(child.pid), time.monotonic() + args.grace


def _terminate_worker(pid: int) -> list[psutil.Process]:
    """SIGTERM the worker: its process tree and its process group; returns who was told."""
    try:
        root = psutil.Process(pid)
        processes = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []
    known = {process.pid for process in processes}
    processes += [process for process in group_members(pid) if process.pid not in known]
    for process in processes:
        try:
            process.terminate()
        except psutil.NoSuchProcess:
            pass
    return processes


def _kill(processes: list[psutil.Process]) -> None:
    for process in processes:
        try:
            process.kill()
        except psutil.NoSuchProcess:
            pass


def _finish(child: subprocess.Popen, selector: selectors.BaseSelector, logs: dict[int, LineLog], stopped_by: Optional[int]) -> int:
    """The command has exited: reap it, stop what it left behind, write the rest of its output."""
    status = child.wait()
    leftovers = group_members(child.pid)
    if leftovers:
        stop_processes(leftovers, _LEFTOVER_GRACE_S)
    deadline = time.monotonic() + _LEFTOVER_GRACE_S
    while any(fd in logs for fd in selector.get_map()) and time.monotonic() < deadline:
        for key, _ in selector.select(max(0.0, deadline - time.monotonic())):
            if key.fd in logs:
                data = os.read(key.fd, 65536)
                logs[key.fd].feed(data)
                if not data:
                    selector.unregister(key.fd)
    for log in logs.values():
        log.close()
    if stopped_by is not None:
        return 128 + stopped_by
    return status if status >= 0 else 128 - status


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
