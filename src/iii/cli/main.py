"""``iii``: runs the engine from ``config.yaml``; ``iii trigger`` and ``iii worker`` subcommands.

Exit codes: 0 ok, 1 failure, 2 usage, 130 interrupted.

Environment: ``III_LOOP`` picks the engine's event loop, ``uvloop`` (the default) or ``asyncio``
(the stdlib loop: tests run engines on both, the stdlib one being the reference behaviour).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
from pathlib import Path
from typing import Optional, Sequence

from iii._version import __version__
from iii.cli import trigger, worker
from iii.cli.output import fail
from iii.console import cli as console
from iii.config import ConfigError, write_starter

__all__ = ["main", "build_parser"]

log = logging.getLogger("iii")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="iii",
        description="Run the iii engine from config.yaml, or manage workers and call functions.",
    )
    parser.add_argument(
        "-c",
        "--config",
        metavar="PATH",
        help="engine configuration file (default: $III_CONFIG_PATH, else ./config.yaml; created when missing)",
    )
    parser.add_argument(
        "--log-level",
        default=os.environ.get("III_LOG_LEVEL", "info"),
        choices=["debug", "info", "warning", "error"],
        help="log verbosity (default: info, or $III_LOG_LEVEL)",
    )
    parser.add_argument("-v", "--version", action="version", version=f"iii {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    trigger.add_parser(commands)
    worker.add_parser(commands)
    console.add_parser(commands)
    return parser


def _ensure_config(path: Path) -> bool:
    """Create a missing config (asking first on a terminal); ``False`` if the user declined."""
    if path.exists():
        return True
    if sys.stdin.isatty() and sys.stderr.isatty():
        sys.stderr.write(f"No {path} found in {Path.cwd()}. Create it and start the engine? [Y/n] ")
        sys.stderr.flush()
        answer = sys.stdin.readline().strip().lower()
        if answer not in ("", "y", "yes"):
            print(
                "Aborted. Run `iii` from your project directory, or pass --config <path> to an "
                "existing config file.",
                file=sys.stderr,
            )
            return False
    write_starter(path)
    log.info("created %s", path)
    return True


def _run_engine(config_path: Path) -> int:
    loop = os.environ.get("III_LOOP") or "uvloop"
    if loop not in ("uvloop", "asyncio"):
        return fail(f"III_LOOP={loop!r} names no event loop", fix="set III_LOOP to uvloop or asyncio", code=2)
    if not _ensure_config(config_path):
        return 1
    from iii.app import serve

    try:
        if loop == "asyncio":
            return asyncio.run(serve(config_path))
        import uvloop

        return uvloop.run(serve(config_path))
    except ConfigError as exc:
        return fail(str(exc), fix="correct the file and start the engine again")
    except OSError as exc:
        return fail(f"cannot start the engine: {exc}")


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    # `iii trigger f --json '{…}' k=v`: pairs may follow options, which argparse leaves over.
    pairs = [token for token in extra if "=" in token and not token.startswith("-")]
    if extra != pairs or (pairs and args.command not in ("trigger", "t")):
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    if pairs:
        args.pairs += pairs
    logging.basicConfig(
        level=args.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    if args.log_level != "debug":
        logging.getLogger("picows").setLevel(logging.WARNING)  # it logs every connection at INFO
    try:
        if args.command is None:
            return _run_engine(Path(args.config or os.environ.get("III_CONFIG_PATH") or "config.yaml"))
        return args.run(args)
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # `iii worker status | head`: the reader has gone, which is no error of ours. Stdout now
        # points at /dev/null so that the flush at exit does not raise again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 128 + signal.SIGPIPE


if __name__ == "__main__":
    sys.exit(main())
