"""Runs one worker command and makes sure it never outlives the engine.

``python -m iii.manager.lifeline FD COMMAND`` starts ``/bin/sh -c COMMAND`` in a new process
group and waits. ``FD`` is the read end of a pipe whose write end only the engine holds: when the
engine exits for any reason (SIGKILL included) the pipe reaches EOF and the whole group is
killed. SIGTERM/SIGINT to this process stop the group the same way. Exits with the command's
status (128 + signal when killed by one).
"""

from __future__ import annotations

import os
import selectors
import signal
import subprocess
import sys
import time

__all__ = ["main", "stop_group"]

_GRACE_S = 5.0


def stop_group(pgid: int, grace_s: float = _GRACE_S) -> None:
    """SIGTERM the process group, then SIGKILL whatever is left after ``grace_s``."""
    try:
        os.killpg(pgid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.05)
    try:
        os.killpg(pgid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def main(argv: list[str]) -> int:
    lifeline_fd, command = int(argv[0]), argv[1]
    # close_fds (the default) keeps the lifeline out of the worker: only this process watches it.
    child = subprocess.Popen(["/bin/sh", "-c", command], start_new_session=True)

    def on_signal(signum: int, frame: object) -> None:
        stop_group(child.pid)
        child.wait()
        sys.exit(128 + signum)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    child_exit = os.pidfd_open(child.pid)
    selector = selectors.DefaultSelector()
    selector.register(lifeline_fd, selectors.EVENT_READ)
    selector.register(child_exit, selectors.EVENT_READ)
    while True:
        for key, _ in selector.select():
            if key.fd == child_exit:
                status = child.wait()
                stop_group(child.pid, grace_s=1.0)  # anything it left behind in its group
                return status if status >= 0 else 128 - status
            if not os.read(lifeline_fd, 1024):  # EOF: the engine is gone
                stop_group(child.pid)
                child.wait()
                return 128 + signal.SIGTERM


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
