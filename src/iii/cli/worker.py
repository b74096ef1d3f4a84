"""``iii worker …``: scaffold, add, remove, start, stop, restart, inspect and tail workers.

Workers are run by the engine (see :mod:`iii.manager.supervisor`); these commands edit
``config.yaml`` (the engine reloads it) or ask the running engine through its ``worker::*``
functions. "Ready" means the worker's name is connected in ``engine::workers::list``.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import configparser
import heapq
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
from typing import Any, Awaitable, Callable, Optional

import watchfiles
import yaml

from iii.cli.output import fail, info, interactive, success
from iii.cli.templates import ALIASES, ENTRY_POINTS, LANGUAGES, render
from iii.cli.trigger import connect, engine_url, remote_error
from iii.config import ConfigError, UniqueKeyLoader, expand_env
from iii.errors import InvocationError
from iii.manager.configfile import add_worker_entry, remove_worker_entry, worker_entries
from iii.manager.manifest import MANIFEST, ManifestError, load_manifest, worker_version
from iii.manager.supervisor import install_marker, logs_root
from iii.protocol import DEFAULT_PORT, ErrorCode, WireId

__all__ = ["add_parser"]

READY_TIMEOUT_S = 120.0
STOP_TIMEOUT_S = 30.0
#: Lines of each log shown when a worker crashes while `add`/`start` waits for it.
CRASH_LOG_LINES = 20
_POLL_S = 0.05
#: `logs -f`: changes this close together are printed together.
_FOLLOW_DEBOUNCE_MS = 200
_FOLLOW_RESCAN_MS = 2000


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
    status.add_argument("--json", action="store_true", help="print it as JSON (errors too)")
    _engine_flags(status)
    status.set_defaults(run=run_status)

    listing = commands.add_parser("list", help="list the workers of config.yaml")
    listing.add_argument("--json", action="store_true", help="print it as JSON (errors too)")
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
    return engine_url(None, port if port is not None else _listener_port(_config_path(args)))


def _listener_port(path: Path) -> Optional[int]:
    """The port of the config's first ``iii-worker-manager`` listener (49134 when it has none);
    ``None`` without a readable config.

    Read without validating the whole file, which imports every built-in module (aiohttp,
    croniter: most of a second of start-up for `iii worker stop`); the engine validates it.
    """
    try:
        document = yaml.load(expand_env(path.read_text(), path), Loader=UniqueKeyLoader)  # noqa: S506 (safe)
    except (OSError, yaml.YAMLError, ConfigError):
        return None
    if not isinstance(document, dict):
        return None
    for section in ("workers", "modules"):
        entries = document.get(section)
        for entry in entries if isinstance(entries, list) else []:
            if isinstance(entry, dict) and entry.get("name") == WireId.LISTENER:
                config = entry.get("config")
                port = config.get("port", DEFAULT_PORT) if isinstance(config, dict) else DEFAULT_PORT
                return port if isinstance(port, int) else None
    return DEFAULT_PORT


# ------------------------------------------------------------------------------ engine calls


class Session:
    """One connection to the engine for the whole command (``async with Session(url) as s``).

    Raises:
        ConnectionError: on entry, when the engine is not running at ``url``.
    """

    def __init__(self, url: str) -> None:
        self.url = url
        self._client: Any = None

    async def __aenter__(self) -> "Session":
        self._client = await connect(self.url, "iii-cli:worker")
        return self

    async def __aexit__(self, *exc_info: Any) -> None:
        await self._client.shutdown_async()

    async def call(self, function_id: str, payload: Any = None) -> Any:
        return await self._client.trigger_async({"function_id": function_id, "payload": payload or {}, "timeout_ms": 10000})

    async def connected_names(self) -> set[str]:
        rows = (await self.call("engine::workers::list"))["workers"]
        return {row["name"] for row in rows if row["runtime"] != "engine"}

    async def status(self, name: str) -> Optional[dict[str, Any]]:
        """``worker::status`` of ``name``; ``None`` while the engine does not know it (yet)."""
        try:
            return await self.call("worker::status", {"name": name})
        except InvocationError as exc:
            if exc.code == ErrorCode.NOT_FOUND:
                return None
            raise


async def wait_until(predicate: Callable[[], Awaitable[bool]], what: str, timeout: float = READY_TIMEOUT_S) -> bool:
    """Poll until ``predicate()``; shows a countdown on a terminal."""
    deadline = time.monotonic() + timeout
    shown = False
    try:
        while time.monotonic() < deadline:
            if await predicate():
                return True
            if interactive():
                sys.stderr.write(f"\rwaiting for {what} … {int(deadline - time.monotonic())}s ")
                sys.stderr.flush()
                shown = True
            await asyncio.sleep(_POLL_S)
        return False
    finally:
        if shown:
            sys.stderr.write("\n")


class Crashed(Exception):
    """The worker exited (or could not start) while the CLI waited for it to connect."""

    def __init__(self, state: dict[str, Any]) -> None:
        super().__init__(state["name"])
        self.state = state


async def wait_connected(session: Session, name: str, restarts_before: int = 0) -> int:
    """Wait for ``name`` to connect; stop at once, saying why, if it crashes or fails meanwhile.

    ``restarts_before``: its restart count when it was (re)started; a higher one means a crash.
    """

    async def connected() -> bool:
        if name in await session.connected_names():
            return True
        state = await session.status(name)
        if state is not None and (state["state"] == "failed" or state["restarts"] > restarts_before):
            raise Crashed(state)
        return False

    try:
        if await wait_until(connected, f"{name} to connect"):
            success(f"{name} is connected")
            return 0
    except Crashed as crash:
        return _report_crash(crash.state)
    return fail(f"{name} did not connect within {int(READY_TIMEOUT_S)}s", fix=f"check `iii worker logs {name}`")


def _report_crash(state: dict[str, Any]) -> int:
    name = state["name"]
    if state["state"] == "failed":
        problem = f"{name} could not be started: {state.get('error') or 'see its logs'}"
    else:
        problem = f"{name} crashed before it connected (exit status {state.get('last_exit')})"
    for stream in ("stderr", "stdout"):
        path = Path(state["logs"]) / f"{stream}.log"
        lines = _tail(path, CRASH_LOG_LINES)
        if lines:
            info(f"--- last {len(lines)} lines of {path}")
            sys.stderr.writelines(lines)
    return fail(
        problem,
        fix=f"fix it, then `iii worker restart {name}`; until then the engine retries it with backoff "
        f"(`iii worker stop {name}` holds it down)",
    )


async def _control(url: str, name: str, verb: str, no_wait: bool) -> int:
    async with Session(url) as session:
        if verb == "stop":
            await session.call("worker::stop", {"name": name})

            async def stopped() -> bool:
                state = await session.status(name)
                if state is not None and state["state"] not in ("stopped", "failed"):
                    return False
                return name not in await session.connected_names()

            if not await wait_until(stopped, f"{name} to stop", STOP_TIMEOUT_S):
                return fail(f"{name} did not stop within {int(STOP_TIMEOUT_S)}s", fix=f"check `iii worker logs {name}`")
            success(f"{name} stopped")
            return 0
        old_pid = (await session.call("worker::status", {"name": name}))["pid"]
        state = await session.call(f"worker::{verb}", {"name": name})
        if no_wait:
            success(f"{name}: {verb} requested")
            return 0
        if verb == "restart" and old_pid is not None:
            # The old process goes first: "connected" must then mean the new one.
            async def replaced() -> bool:
                current = await session.status(name)
                return current is not None and (
                    current["pid"] not in (None, old_pid) or current["restarts"] > 0 or current["state"] == "failed"
                )

            await wait_until(replaced, f"{name} to restart", STOP_TIMEOUT_S)
        return await wait_connected(session, name, state["restarts"])


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
        return _record_version(destination, entry.get("version"))
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
    return _record_version(destination, entry.get("version"))


def _record_version(directory: Path, version: Optional[str]) -> Path:
    """Keep the registry version with the copy (``iii worker list`` shows it)."""
    if version:
        (directory / ".iii").mkdir(exist_ok=True)
        (directory / ".iii" / "version").write_text(f"{version}\n")
    return directory


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
    try:
        return asyncio.run(_wait_added(url, added))
    except ConnectionError:
        info(f"the engine is not running at {url}: `iii -c {config}` will start {', '.join(added)}")
        return 0


async def _wait_added(url: str, names: list[str]) -> int:
    async with Session(url) as session:
        for name in names:
            state = await session.status(name)
            status = await wait_connected(session, name, state["restarts"] if state else 0)
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
    try:
        return asyncio.run(_control(url, args.worker, args.verb, getattr(args, "no_wait", False)))
    except ConnectionError:
        return fail(f"cannot reach the engine at {url}", fix=f"start it with `iii`; it runs the workers of {_config_path(args)}")
    except InvocationError as exc:
        return remote_error(exc)


def _engine_failure(args: argparse.Namespace, url: str, exc: Exception) -> int:
    """A failed engine call: ``error: …`` on stderr, or ``{"error": {code, message}}`` with ``--json``."""
    if isinstance(exc, ConnectionError):
        code, message, fix = "engine_unreachable", f"cannot reach the engine at {url}", "start it with `iii`"
    else:
        assert isinstance(exc, InvocationError)
        code, message, fix = exc.code, exc.message, "see `iii worker list`"
    if args.json:
        print(json.dumps({"error": {"code": code, "message": message}}, indent=2))
        return 1
    return fail(f"{message} ({code})", fix=fix)


async def _status(url: str, name: str) -> dict[str, Any]:
    async with Session(url) as session:
        state = await session.call("worker::status", {"name": name})
        state["connected"] = name in await session.connected_names()
        return state


def run_status(args: argparse.Namespace) -> int:
    url = _engine_url(args)
    try:
        state = asyncio.run(_status(url, args.worker))
    except (ConnectionError, InvocationError) as exc:
        return _engine_failure(args, url, exc)
    logs = Path(state["logs"])
    if args.json:
        state["recent_logs"] = {stream: _tail(logs / f"{stream}.log", 10) for stream in ("stdout", "stderr")}
        print(json.dumps(state, indent=2))
        return 0
    print(f"name:      {state['name']}")
    print(f"state:     {state['state']}{' (connected)' if state['connected'] else ''}")
    print(f"pid:       {state['pid'] or '-'}")
    print(f"restarts:  {state['restarts']}")
    print(f"directory: {state['directory'] or '-'}")
    if state.get("error"):
        print(f"error:     {state['error']}")
    print(f"logs:      {logs}")
    for stream in ("stdout", "stderr"):
        lines = _tail(logs / f"{stream}.log", 10)
        if lines:
            print(f"--- last {stream} lines")
            sys.stdout.writelines(lines)
    return 0


async def _engine_view(url: str) -> tuple[dict[str, dict[str, Any]], set[str]]:
    async with Session(url) as session:
        rows = (await session.call("worker::list"))["workers"]
        return {row["name"]: row for row in rows}, await session.connected_names()


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
        states, connected = asyncio.run(_engine_view(url))
    except ConnectionError:
        pass  # engine down: everything is stopped
    except InvocationError as exc:
        return _engine_failure(args, url, exc)
    rows = []
    for name in [n for n in entries if n in states or entries[n] is not None]:
        state = states.get(name)
        if state is None or state["state"] in ("stopped", "failed"):
            status = state["state"] if state else "stopped"
        elif name in connected:
            status = "running"
        else:
            status = "starting"
        directory = entries[name] or (state or {}).get("directory")
        rows.append({
            "name": name,
            "version": worker_version(Path(directory)) if directory else None,
            "pid": state["pid"] if state else None,
            "status": status,
            "restarts": state["restarts"] if state else 0,
            "directory": directory,
        })
    if args.json:
        print(json.dumps({"workers": rows}, indent=2))
        return 0
    if not rows:
        info("No workers. Use `iii worker add` to get started.")
        return 0
    print(f"{'NAME':<24} {'VERSION':<10} {'PID':>8}  STATUS")
    for row in rows:
        print(f"{row['name']:<24} {row['version'] or '-':<10} {row['pid'] or '-':>8}  {row['status']}")
    return 0


# ------------------------------------------------------------------------------ logs


def _tail(path: Path, count: int) -> list[str]:
    try:
        with path.open(errors="replace") as handle:
            return list(collections.deque(handle, maxlen=count))
    except OSError:
        return []


class _Follower:
    """One log file read as it grows, and reopened when the worker's shim rotates it."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.handle = path.open(errors="replace") if path.exists() else None

    def read(self) -> str:
        try:
            rotated = self.handle is None or os.stat(self.path).st_ino != os.fstat(self.handle.fileno()).st_ino
        except FileNotFoundError:
            rotated = False
        chunk = self.handle.read() if self.handle is not None else ""
        if rotated:  # the rest of the old file was just read: go on with the new one
            if self.handle is not None:
                self.handle.close()
            self.handle = self.path.open(errors="replace")
            chunk += self.handle.read()
        return chunk


def run_logs(args: argparse.Namespace) -> int:
    directory = logs_root() / args.worker
    files = [directory / "stdout.log", directory / "stderr.log"]
    if not any(f.exists() for f in files):
        return fail(f"no logs for {args.worker} in {directory}", fix="has it been started? see `iii worker list`")
    followers = [_Follower(path) for path in files]
    # Each line starts with its UTC timestamp: the two files merge into one story.
    sys.stdout.writelines(heapq.merge(*(f.read().splitlines(keepends=True) for f in followers)))
    sys.stdout.flush()
    if not args.follow:
        return 0
    # Until Ctrl-C (exit 130): woken by each change in the log directory (a write, a rotation),
    # and every few seconds regardless (what was written while the watch was being set up).
    for _ in watchfiles.watch(directory, recursive=False, debounce=_FOLLOW_DEBOUNCE_MS, raise_interrupt=True,
                              rust_timeout=_FOLLOW_RESCAN_MS, yield_on_timeout=True):
        chunks = [f.read() for f in followers]
        if any(chunks):
            sys.stdout.writelines(heapq.merge(*(chunk.splitlines(keepends=True) for chunk in chunks)))
            sys.stdout.flush()
    return 0
