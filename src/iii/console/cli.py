"""``iii console``: run the web console (flags and defaults as the original's ``iii-console``)."""

from __future__ import annotations

import argparse
from typing import Any

__all__ = ["add_parser", "run", "options_from"]


def add_parser(subparsers: Any) -> None:
    """Add ``console`` to the ``iii`` command's subcommands."""
    parser = subparsers.add_parser(
        "console",
        help="open the web console: see and drive the engine from a browser",
        description=(
            "Serve the web console on http://HOST:PORT. It is a worker: it connects to the engine's "
            "worker WebSocket (ENGINE_HOST:BRIDGE_PORT), retrying until the engine is there."
        ),
    )
    parser.add_argument("-p", "--port", type=int, default=3113, help="the console's port (default 3113; 0 = any free port)")
    parser.add_argument("--host", default="127.0.0.1", help="the console's bind address (default 127.0.0.1)")
    parser.add_argument("--engine-host", default="127.0.0.1", help="host of the engine's endpoints (default 127.0.0.1)")
    parser.add_argument("--engine-port", type=int, default=3111, help="the engine's HTTP port, shown in the route table (default 3111)")
    parser.add_argument("--ws-port", type=int, default=3112, help="the engine's stream WebSocket port (default 3112)")
    parser.add_argument("--bridge-port", type=int, default=49134, help="the engine's worker WebSocket port (default 49134)")
    parser.set_defaults(run=run)


def options_from(args: argparse.Namespace) -> Any:
    from iii.console._server import ConsoleOptions

    host = "127.0.0.1" if args.host == "localhost" else args.host
    return ConsoleOptions(
        host=host,
        port=args.port,
        engine_host=args.engine_host,
        engine_port=args.engine_port,
        ws_port=args.ws_port,
        bridge_port=args.bridge_port,
    )


def run(args: argparse.Namespace) -> int:
    import uvloop

    from iii.cli.output import fail
    from iii.console._server import serve

    options = options_from(args)
    try:
        return uvloop.run(serve(options))
    except OSError as exc:
        return fail(f"cannot serve the console on {options.host}:{options.port}: {exc}", fix="pick another --port or --host")
