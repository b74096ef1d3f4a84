"""``iii trigger FUNCTION [k=v …]`` (alias ``iii t``): call one function and print its result."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from typing import Any, Optional

from iii.cli.output import fail
from iii.errors import InvocationError
from iii.iii_constants import InitOptions, ReconnectionConfig
from iii.sdk.client import III, register_worker_async

__all__ = ["add_parser", "run", "engine_url", "connect", "remote_error"]

CLI_WORKER_NAME = "iii-cli:trigger"


def add_parser(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "trigger",
        aliases=["t"],
        help="call a function and print its result",
        description="Call FUNCTION on the engine and print its JSON result (errors go to stderr, exit 1). "
        "With FUNCTION, --help also shows its description and request schema, asked of the engine.",
        add_help=False,  # `iii trigger FN --help` asks the engine about FN: see run()
    )
    parser.add_argument("-h", "--help", action="store_true", help="show this help (and FUNCTION's, from the engine) and exit")
    # Optional here so that `--help` works without it; run() says when it is missing.
    parser.add_argument("function_id", nargs="?", metavar="FUNCTION", help="function id, e.g. math::add")
    parser.add_argument("pairs", nargs="*", default=[], metavar="KEY=VALUE", help="payload fields, optional (values parsed as JSON when they are JSON)")
    parser.add_argument("--json", dest="json_payload", metavar="JSON", help="payload as a JSON object (KEY=VALUE pairs override its keys)")
    add_engine_options(parser)
    parser.add_argument("--timeout-ms", type=int, default=30000, metavar="MS", help="give up after MS milliseconds (default 30000)")
    parser.add_argument("-n", "--namespace", help="namespace to resolve FUNCTION in (default: default)")
    parser.set_defaults(run=run, parser=parser)


def add_engine_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--address", help="engine host (default: from $III_URL, else 127.0.0.1)")
    parser.add_argument("--port", type=int, help="engine port (default: from $III_URL, else 49134)")


def engine_url(address: Optional[str], port: Optional[int]) -> str:
    """``ws://address:port``; unset parts come from ``III_URL``, then the defaults."""
    base = os.environ.get("III_URL", "ws://127.0.0.1:49134")
    host_port = base.split("://", 1)[-1].split("/", 1)[0]
    default_host, _, default_port = host_port.rpartition(":")
    return f"ws://{address or default_host or '127.0.0.1'}:{port or int(default_port or 49134)}"


def payload_of(json_payload: Optional[str], pairs: list[str]) -> dict[str, Any]:
    """The call's payload: ``--json`` first, then every ``KEY=VALUE`` on top.

    Raises:
        ValueError: not a JSON object, or a pair without ``=``.
    """
    payload: dict[str, Any] = {}
    if json_payload is not None:
        try:
            payload = json.loads(json_payload)
        except ValueError as exc:
            raise ValueError(f"--json is not valid JSON: {exc}") from None
        if not isinstance(payload, dict):
            raise ValueError("--json must be a JSON object")
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ValueError(f"{pair!r} is not KEY=VALUE")
        try:
            payload[key] = json.loads(value)
        except ValueError:
            payload[key] = value
    return payload


async def connect(url: str, name: str) -> III:
    """A short-lived CLI worker; raises ``ConnectionError`` when the engine is not there."""
    options = InitOptions(worker_name=name, reconnection_config=ReconnectionConfig(max_retries=0))
    client = await register_worker_async(url, options)
    if client.get_connection_state() != "connected":
        await client.shutdown_async()
        raise ConnectionError(url)
    return client


async def _call(url: str, request: dict[str, Any]) -> Any:
    client = await connect(url, CLI_WORKER_NAME)
    try:
        return await client.trigger_async(request)
    finally:
        await client.shutdown_async()


def remote_error(exc: InvocationError) -> int:
    """``error: <message> (<code>)`` and the remote stack trace, if any, on stderr."""
    return fail(f"{exc.message} ({exc.code})", cause=f"remote stack trace:\n{exc.stacktrace}" if exc.stacktrace else None)


def _describe(function_id: str, info: dict[str, Any]) -> str:
    """What ``--help`` adds about one function: its description, worker and schemas."""
    lines = [f"\n{function_id}" + (f" (worker {info['worker_name']})" if info.get("worker_name") else "")]
    lines.append(f"  {info.get('description') or '(no description)'}")
    for key, title in (("request_schema", "request schema"), ("response_schema", "response schema")):
        if info.get(key) is not None:
            schema = json.dumps(info[key], indent=2).replace("\n", "\n    ")
            lines.append(f"  {title}:\n    {schema}")
    if "request_schema" not in info:
        lines.append("  (no request schema registered)")
    return "\n".join(lines)


def _help(args: argparse.Namespace) -> int:
    args.parser.print_help()
    if args.function_id is None:
        return 0
    url = engine_url(args.address, args.port)
    request: dict[str, Any] = {"function_id": args.function_id}
    if args.namespace is not None:
        request["namespace"] = args.namespace
    try:
        info = asyncio.run(_call(url, {"function_id": "engine::functions::info", "payload": request, "timeout_ms": 10000}))
    except ConnectionError:
        return fail(f"cannot reach the engine at {url} to describe {args.function_id}", fix="start it with `iii`, or pass --address/--port")
    except InvocationError as exc:
        return remote_error(exc)
    print(_describe(args.function_id, info))
    return 0


def run(args: argparse.Namespace) -> int:
    if args.help:
        return _help(args)
    if args.function_id is None:
        args.parser.print_usage(sys.stderr)
        return fail("the following argument is required: FUNCTION", fix="e.g. `iii trigger math::add a=1 b=2`", code=2)
    try:
        payload = payload_of(args.json_payload, args.pairs)
    except ValueError as exc:
        return fail(str(exc), fix="pass --json '{\"key\": 1}' or key=value pairs", code=2)
    url = engine_url(args.address, args.port)
    request: dict[str, Any] = {"function_id": args.function_id, "payload": payload, "timeout_ms": args.timeout_ms}
    if args.namespace is not None:
        request["namespace"] = args.namespace
    try:
        result = asyncio.run(_call(url, request))
    except ConnectionError:
        return fail(f"cannot reach the engine at {url}", fix="start it with `iii`, or pass --address/--port")
    except InvocationError as exc:
        return remote_error(exc)
    if result is not None:
        print(json.dumps(result, indent=2))
    return 0
