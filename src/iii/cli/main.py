"""``iii``: runs the engine from ``config.yaml``.

Exit codes: 0 ok, 1 failure, 2 usage, 130 interrupted.
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

from iii import __version__
from iii.engine.config import ConfigError, load_config, write_starter

__all__ = ["main", "build_parser"]

log = logging.getLogger("iii")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="iii",
        description="Run the iii engine from config.yaml.",
    )
    parser.add_argument(
        "-c",
        "--config",
        default="config.yaml",
        metavar="PATH",
        help="engine configuration file (default: ./config.yaml; created when missing)",
    )
    parser.add_argument(
        "--log-level",
        default=os.environ.get("III_LOG_LEVEL", "info"),
        choices=["debug", "info", "warning", "error"],
        help="log verbosity (default: info, or $III_LOG_LEVEL)",
    )
    parser.add_argument("-v", "--version", action="version", version=f"iii {__version__}")
    return parser


def _error(message: str, fix: Optional[str] = None) -> int:
    print(f"error: {message}", file=sys.stderr)
    if fix:
        print(f"fix: {fix}", file=sys.stderr)
    return 1


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


async def _run_engine(config_path: Path) -> int:
    from iii.engine.server import Engine

    config = load_config(config_path)
    for entry in config.workers:
        log.warning(
            "%s: worker %r is not started: this engine does not run config workers yet",
            config_path,
            entry.name,
        )
    engine = Engine(config)
    await engine.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    log.info("shutting down")
    await engine.stop()
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    if args.log_level != "debug":
        logging.getLogger("picows").setLevel(logging.WARNING)  # it logs every connection at INFO
    config_path = Path(args.config)
    if not _ensure_config(config_path):
        return 1
    try:
        import uvloop

        return uvloop.run(_run_engine(config_path))
    except ConfigError as exc:
        return _error(str(exc), "correct the file and start the engine again")
    except OSError as exc:
        return _error(f"cannot start the engine: {exc}")
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
