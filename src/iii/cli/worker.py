"""``iii worker …``: scaffold, add, remove, start, stop, restart, inspect and tail workers.

Workers are run by the engine (see :mod:`iii.manager.supervisor`); these commands edit
``config.yaml`` (the engine reloads it) or ask the running engine through its ``worker::*``
functions. "Ready" means the worker's name is connected in ``engine::workers::list``.
"""

from __future__ import annotations

import argparse
import asyncio
import configparser
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path
from typing import Any, Optional

from iii.cli.output import fail, info, interactive, success
from iii.cli.templates import ALIASES, ENTRY_POINTS, LANGUAGES, render
from iii.cli.trigger import connect, engine_url
from iii.config import ConfigError, load_config
from iii.errors import InvocationError
from iii.manager.configfile import add_worker_entry, remove_worker_entry, worker_entries
from iii.manager.manifest import MANIFEST, ManifestError, load_manifest
from iii.manager.supervisor import install_marker, logs_root

__all__ = ["add_parser"]

READY_TIMEOUT_S = 120.0
_POLL_S = 0.2


def add_parser(subparsers: Any) -> None:
    worker = subparsers.add_parser("worker", help="manage workers", description="Scaffold, install and run workers.")
    commands = worker.add_subparsers(dest="worker_command", metavar="COMMAND", required=True)

    init = commands.add_parser("init", help="scaffold a new worker", description="Scaffold a new worker project.")
    init.add_argument("name", nargs="?", metavar="NAME", help="target directory (its base name is the worker name)")
    init.add_argument("-d", "--directory", help="target directory (overrides NAME)")
    init.add_argument("-l", "--language", type=_language, metavar="LANG", help="typescript|ts, javascript|js, python|py, rust|rs")
    init.add_argument("--allow-non-empty", action="store_true", help="scaffold into a directory that has files")
    init.set_defaults(run=run_init)

    add = commands.add_parser("add", help="install workers into config.yaml", description="Install workers (a directory with iii.worker.yaml, or a registry name) and add them to config.yaml.")
    add.add_argument("workers", nargs="+", metavar="WORKER", help="path to a worker directory, or a registry name[@version]")
    add.add_argument("-f", "--force", action="store_true", help="replace an entry of the same name")
    add.add_argument("--no-wait", action="store_true", help="do not wait for the worker to connect")
    _engine_flags(add)
    add.set_defaults(run=run_add)

    remove = commands.add_parser("remove", help="remove workers from config.yaml")
    remove.add_argument("workers", nargs="+", metavar="WORKER")
    remove.add_argument("-y", "--yes", action="store_true", help="(accepted for compatibility)")
    remove.set_defaults(run=run_remove)

    for verb, text in (("start", "start a stopped worker"), ("stop", "stop a running worker"), ("restart", "stop, then start a worker")):
        command = commands.add_parser(verb, help=text)
        command.add_argument("worker", metavar="WORKER")
        if verb != "stop":
            command.add_argument("--no-wait", action="store_true", help="do not wait for the worker to connect")
        else:
            command.add_argument("-y", "--yes", action="store_true", help="(accepted for compatibility)")
        _engine_flags(command)
        command.set_defaults(run=run_control, verb=verb)

    status = commands.add_parser("status", help="show a worker's process, connection and recent logs")
    status.add_argument("worker", metavar="WORKER")
    status.add_argument("--no-watch", action="store_true", help="(accepted: status prints once)")
    _engine_flags(status)
    status.set_defaults(run=run_status)

    listing = commands.add_parser("list", help="list the workers of config.yaml")
    _engine_flags(listing)
    listing.set_defaults(run=run_list)

    logs = commands.add_parser("logs", help="print a worker's logs")
    logs.add_argument("worker", metavar="WORKER")
    logs.add_argument("-f", "--follow", action="store_true", help="keep printing new lines")
    logs.set_defaults(run=run_logs)


def _language(value: str) -> str:
    language = ALIASES.get(value.lower())
    if language is None:
        raise argparse.ArgumentTypeError(f"unknown language {value!r} (choose typescript|ts, javascript|js, python|py, rust|rs)")
    return language


def _engine_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--port", type=int, help="engine port (default: the listener in config.yaml)")


def _config_path(args: argparse.Namespace) -> Path:
    return Path(args.config or os.environ.get("III_CONFIG_PATH") or "config.yaml")


def _engine_url(args: argparse.Namespace) -> str:
    """The engine of this project: ``--port``, else the first listener of its config."""
    port = getattr(args, "port", None)
    if port is None:
        try:
            port = load_config(_config_path(args)).listeners[0].port
        except ConfigError:
            port = None
    return engine_url(None, port)


# ------------------------------------------------------------------------------ engine calls


async def _ask(url: str, function_id: str, payload: Any) -> Any:
    client = await connect(url, "iii-cli:worker")
    try:
        return await client.trigger_async({"function_id": function_id, "payload": payload, "timeout_ms": 10000})
    finally:
        await client.shutdown_async()


def ask(url: str, function_id: str, payload: Any = None) -> Any:
    """Call the engine; ``ConnectionError`` when it is not running."""
    return asyncio.run(_ask(url, function_id, payload or {}))


def _connected_names(url: str) -> set[str]:
    rows = ask(url, "engine::workers::list", {})["workers"]
    return {row["name"] for row in rows if row["runtime"] != "engine"}


def wait_until(url: str, predicate: Any, what: str, timeout: float = READY_TIMEOUT_S) -> bool:
    """Poll the engine until ``predicate(url)``; shows progress on a terminal."""
    deadline = time.monotonic() + timeout
    shown = False
    while time.monotonic() < deadline:
        if predicate(url):
            if shown:
                sys.stderr.write("\n")
            return True
        if interactive():
            sys.stderr.write(f"\rwaiting for {what} … {int(deadline - time.monotonic())}s ")
            sys.stderr.flush()
            shown = True
        time.sleep(_POLL_S)
    if shown:
        sys.stderr.write("\n")
    return False


def _wait_connected(url: str, name: str) -> int:
    if wait_until(url, lambda u: name in _connected_names(u), f"{name} to connect"):
        success(f"{name} is connected")
        return 0
    return fail(f"{name} did not connect within {int(READY_TIMEOUT_S)}s", fix=f"check `iii worker logs {name}`")


# ------------------------------------------------------------------------------ init


def run_init(args: argparse.Namespace) -> int:
    target = Path(args.directory or args.name or ".").resolve()
    name = target.name
    marker = target / ".iii" / "worker.ini"
    if marker.exists():
        info(f"{target} already holds an iii worker ({marker}); nothing was changed")
        return 0
    if target.exists():
        visible = sorted(p.name for p in target.iterdir() if not p.name.startswith("."))
        if visible and not args.allow_non_empty:
            shown = ", ".join(visible[:5]) + (f", and {len(visible) - 5} more" if len(visible) > 5 else "")
            return fail(
                "target directory is not empty",
                cause=f"{target} contains {shown}",
                fix="pass --allow-non-empty to scaffold into an existing directory, or pick a different one",
            )
    language = args.language or _ask_language()
    if language is None:
        return fail("no language selected", fix="pass --language <ts|js|py|rust>")
    files = render(language, name)
    for relative, text in files.items():
        path = target / relative
        if path.exists():
            continue  # never overwrite the user's files
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    worker_id = str(uuid.uuid4())
    ini = configparser.ConfigParser()
    ini["worker"] = {"worker_id": worker_id, "name": name, "source": "init", "language": LANGUAGES[language]}
    marker.parent.mkdir(parents=True, exist_ok=True)
    with marker.open("w") as handle:
        ini.write(handle)
    success(f"iii worker '{name}' ({language}) scaffolded at {target}")
    info(f"  worker id: {worker_id}")
    info("next steps:")
    info(f"  cd {target}")
    if language == "rust":
        info("  cargo build")
    info(f"  edit ./{ENTRY_POINTS[language]}")
    info(f"  iii worker add {target}")
    return 0


def _ask_language() -> Optional[str]:
    if not sys.stdin.isatty():
        return None
    choices = list(LANGUAGES)
    for index, language in enumerate(choices, 1):
        info(f"  {index}) {language}")
    sys.stderr.write("language [1-4]: ")
    sys.stderr.flush()
    answer = sys.stdin.readline().strip().lower()
    if answer.isdigit() and 1 <= int(answer) <= len(choices):
        return choices[int(answer) - 1]
    return ALIASES.get(answer)


# ------------------------------------------------------------------------------ add / remove


def _registry_fetch(spec: str) -> Path:
    """Fetch a registry worker (``name[@version]``) into ``~/.iii/managed/<name>``.

    The registry (``$III_REGISTRY``: a folder or a URL) holds ``index.json``:
    ``{"workers": {"<name>": {"version": "…", "path": "<dir>"} | {"version": "…", "archive": "<.tar.gz>"}}}``
    with paths and archive URLs relative to the index.

    Raises:
        LookupError: no registry, unreachable, or the worker/version is not in it.
    """
    name, _, version = spec.partition("@")
    registry = os.environ.get("III_REGISTRY")
    if not registry:
        raise LookupError(f"{spec!r} is not a worker directory, and no registry is set (III_REGISTRY)")
    remote = registry.startswith(("http://", "https://"))
    index_url = registry.rstrip("/") + "/index.json"
    try:
        if remote:
            with urllib.request.urlopen(index_url, timeout=15) as response:  # noqa: S310 (user-set registry)
                index = json.load(response)
        else:
            index = json.loads((Path(registry) / "index.json").read_text())
    except (OSError, urllib.error.URLError, ValueError) as exc:
        raise LookupError(f"registry {registry} is unreachable or unreadable: {exc}") from None
    entry = (index.get("workers") or {}).get(name)
    if entry is None:
        raise LookupError(f"worker {name!r} is not in the registry {registry}")
    if version and entry.get("version") != version:
        raise LookupError(f"registry {registry} has {name} {entry.get('version')}, not {version}")
    destination = Path.home() / ".iii" / "managed" / name
    if destination.exists():
        shutil.rmtree(destination)
    destination.parent.mkdir(parents=True, exist_ok=True)
    if "path" in entry and not remote:
        shutil.copytree(Path(registry) / entry["path"], destination)
        return destination
    if "archive" not in entry:
        raise LookupError(f"registry entry {name!r} has neither `path` nor `archive`")
    archive_url = entry["archive"] if "://" in entry["archive"] else registry.rstrip("/") + "/" + entry["archive"]
    with tempfile.TemporaryDirectory() as scratch:
        archive = Path(scratch) / "worker.tar.gz"
        try:
            if remote:
                urllib.request.urlretrieve(archive_url, archive)  # noqa: S310
            else:
                shutil.copy(Path(registry) / entry["archive"], archive)
        except (OSError, urllib.error.URLError) as exc:
            raise LookupError(f"cannot download {archive_url}: {exc}") from None
        with tarfile.open(archive) as bundle:
            bundle.extractall(destination, filter="data")
    return destination


def _install(directory: Path, setup: Optional[str], install: Optional[str]) -> int:
    """Run the manifest's setup and install once, showing their output."""
    command = " && ".join(c for c in (setup, install) if c)
    if not command:
        return 0
    info(f"installing: {command}")
    env = dict(os.environ, PATH=os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", ""))
    status = subprocess.run(["/bin/sh", "-c", command], cwd=directory, env=env, stdout=sys.stderr).returncode
    if status == 0:
        marker = install_marker(directory)
        marker.parent.mkdir(exist_ok=True)
        marker.write_text(command)
    return status


def run_add(args: argparse.Namespace) -> int:
    config = _config_path(args)
    try:
        existing = worker_entries(config) if config.exists() else {}
    except ConfigError as exc:
        return fail(str(exc), fix="correct the file, then run the command again")
    added = []
    for spec in args.workers:
        directory = Path(spec).expanduser()
        if not (directory / MANIFEST).exists():
            if "/" in spec or spec.startswith(".") or directory.exists():
                return fail(f"{spec}: no {MANIFEST} here", fix="pass the directory of a worker (see `iii worker init`)")
            try:
                directory = _registry_fetch(spec)
            except LookupError as exc:
                return fail(str(exc), fix="pass a worker directory, or set III_REGISTRY to a registry folder or URL")
        directory = directory.resolve()
        try:
            manifest = load_manifest(directory)
        except ManifestError as exc:
            return fail(str(exc), fix=f"correct {directory / MANIFEST}")
        for warning in manifest.warnings:
            info(f"warning: {warning}")
        if manifest.name in existing:
            if existing[manifest.name] == str(directory):
                info(f"{manifest.name} is already in {config}")
                added.append(manifest.name)
                continue
            if not args.force:
                return fail(
                    f"{config} already has a worker named {manifest.name!r}",
                    cause=f"it points at {existing[manifest.name]}",
                    fix="pass --force to replace it, or rename the worker",
                )
            remove_worker_entry(config, manifest.name)
        status = _install(directory, manifest.setup, manifest.install)
        if status != 0:
            return fail(f"install of {manifest.name} failed (exit status {status})", fix=f"fix it in {directory}, then add again")
        try:
            add_worker_entry(config, manifest.name, str(directory))
        except ConfigError as exc:
            return fail(str(exc))
        existing[manifest.name] = str(directory)
        success(f"added {manifest.name} to {config}")
        added.append(manifest.name)
    if args.no_wait:
        return 0
    url = _engine_url(args)
    for name in added:
        try:
            status = _wait_connected(url, name)
        except ConnectionError:
            info(f"the engine is not running at {url}: `iii -c {config}` will start {', '.join(added)}")
            return 0
        if status:
            return status
    return 0


def run_remove(args: argparse.Namespace) -> int:
    config = _config_path(args)
    try:
        for name in args.workers:
            if not remove_worker_entry(config, name):
                return fail(f"{config} has no worker named {name!r}", fix="see `iii worker list`")
            success(f"removed {name} from {config}")
    except (ConfigError, OSError) as exc:
        return fail(str(exc))
    return 0


# ------------------------------------------------------------------------------ control


def run_control(args: argparse.Namespace) -> int:
    url = _engine_url(args)
    name = args.worker
    try:
        ask(url, f"worker::{args.verb}", {"name": name})
        if args.verb == "stop":
            def stopped(u: str) -> bool:
                return ask(u, "worker::status", {"name": name})["state"] in ("stopped", "failed") and name not in _connected_names(u)

            if not wait_until(url, stopped, f"{name} to stop", 30):
                return fail(f"{name} did not stop within 30s")
            success(f"{name} stopped")
            return 0
        if args.no_wait:
            success(f"{name}: {args.verb} requested")
            return 0
        if args.verb == "restart":  # the old connection must go before "connected" means the new one
            time.sleep(_POLL_S)
        return _wait_connected(url, name)
    except ConnectionError:
        return fail(f"cannot reach the engine at {url}", fix=f"start it with `iii`; it runs the workers of {_config_path(args)}")
    except InvocationError as exc:
        return fail(exc.message, fix="see `iii worker list`")


def run_status(args: argparse.Namespace) -> int:
    url = _engine_url(args)
    try:
        state = ask(url, "worker::status", {"name": args.worker})
        connected = args.worker in _connected_names(url)
    except ConnectionError:
        return fail(f"cannot reach the engine at {url}", fix="start it with `iii`")
    except InvocationError as exc:
        return fail(exc.message, fix="see `iii worker list`")
    print(f"name:      {state['name']}")
    print(f"state:     {state['state']}{' (connected)' if connected else ''}")
    print(f"pid:       {state['pid'] or '-'}")
    print(f"restarts:  {state['restarts']}")
    print(f"directory: {state['directory'] or '-'}")
    if state.get("error"):
        print(f"error:     {state['error']}")
    print(f"logs:      {state['logs']}")
    for stream in ("stdout", "stderr"):
        lines = _tail(logs_root() / args.worker / f"{stream}.log", 10)
        if lines:
            print(f"--- last {stream} lines")
            sys.stdout.writelines(lines)
    return 0


def run_list(args: argparse.Namespace) -> int:
    config = _config_path(args)
    try:
        entries = worker_entries(config) if config.exists() else {}
    except ConfigError as exc:
        return fail(str(exc))
    url = _engine_url(args)
    states: dict[str, dict[str, Any]] = {}
    connected: set[str] = set()
    try:
        states = {row["name"]: row for row in ask(url, "worker::list")["workers"]}
        connected = _connected_names(url)
    except ConnectionError:
        pass  # engine down: everything is stopped
    names = [n for n in entries if n in states or entries[n] is not None]
    if not names:
        info("No workers. Use `iii worker add` to get started.")
        return 0
    print(f"{'NAME':<24} {'PID':>8}  STATUS")
    for name in names:
        row = states.get(name)
        if row is None or row["state"] in ("stopped", "failed"):
            status = row["state"] if row else "stopped"
        elif name in connected:
            status = "running"
        else:
            status = "starting"
        pid = row["pid"] if row and row["pid"] else "-"
        print(f"{name:<24} {pid:>8}  {status}")
    return 0


# ------------------------------------------------------------------------------ logs


def _tail(path: Path, count: int) -> list[str]:
    try:
        with path.open(errors="replace") as handle:
            return handle.readlines()[-count:]
    except OSError:
        return []


def run_logs(args: argparse.Namespace) -> int:
    directory = logs_root() / args.worker
    files = [directory / "stdout.log", directory / "stderr.log"]
    if not any(f.exists() for f in files):
        return fail(f"no logs for {args.worker} in {directory}", fix="has it been started? see `iii worker list`")
    handles = []
    for path in files:
        if path.exists():
            handle = path.open(errors="replace")
            sys.stdout.write(handle.read())
            handles.append(handle)
    sys.stdout.flush()
    if not args.follow:
        return 0
    while True:  # until Ctrl-C (exit 130)
        wrote = False
        for handle in handles:
            chunk = handle.read()
            if chunk:
                sys.stdout.write(chunk)
                wrote = True
        if wrote:
            sys.stdout.flush()
        time.sleep(_POLL_S)
