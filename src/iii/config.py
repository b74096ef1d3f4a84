"""``config.yaml``: loading, ``${VAR}`` expansion and validation.

Each ``workers:`` (or legacy ``modules:``) entry is one of: a listener (``iii-worker-manager``),
a built-in module of the module table (its ``config`` checked by the module's config Struct), a
module of the original engine that this one does not have (skipped, with a warning at start), or
a worker process for the supervisor. Errors are :class:`ConfigError` with a message that names the
file and the offending key.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import msgspec
import yaml

from iii._version import __version__
from iii.engine.functions import MODULE as ENGINE_FUNCTIONS
from iii.engine.server import ListenerConfig
from iii.protocol import DEFAULT_GRACE_MS, WireId

__all__ = [
    "ConfigError",
    "WorkerEntry",
    "EngineConfig",
    "STARTER_CONFIG",
    "UniqueKeyLoader",
    "load_config",
    "parse_config",
    "write_starter",
]

#: What ``iii`` writes when it finds no config: the stores keep what they acknowledge.
STARTER_CONFIG = """\
# iii engine configuration.
# Add workers with `iii worker add <name>`; a running engine reloads on save.
# State, stream items and queued jobs are kept in SQLite files under ./data: a write is
# answered once it is in its file, so what was acknowledged survives a crash or a restart.
# (store_method: in_memory keeps them in memory only: faster, lost when the engine stops.)
workers:
  - name: iii-state
    config:
      adapter: {name: kv, config: {store_method: file_based, file_path: ./data/state_store.db}}
  - name: iii-stream
    config:
      adapter: {name: kv, config: {store_method: file_based, file_path: ./data/stream_store.db}}
  - name: iii-queue
    config:
      adapter: {name: builtin, config: {store_method: file_based, file_path: ./data/queue_store.db}}
"""

_TOP_LEVEL_KEYS = {"workers", "modules", "registration_namespace_grace_ms"}
#: Modules of the original engine that this one does not have: their entries are skipped.
_UNSUPPORTED_MODULES = {
    "configuration": "the configuration store (configuration::*)",
    "iii-telemetry": "telemetry",
    "iii-exec": "the exec module",
    "iii-worker-ops": "the worker-ops daemon (worker::* is served by the engine itself)",
}
#: Modules of the original that always run here: their entries are accepted and have no config.
_ALWAYS_ON_MODULES = {ENGINE_FUNCTIONS}
_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::([^}]*))?\}")


class ConfigError(Exception):
    """The configuration cannot be used; the message says which file and key, and why."""


class UniqueKeyLoader(yaml.SafeLoader):
    """A safe loader that refuses a key given twice in one mapping (PyYAML keeps the last)."""

    def construct_mapping(self, node: Any, deep: bool = False) -> Any:
        seen = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue  # `<<: *defaults` may be overridden by keys of its own
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r} (line {key_node.start_mark.line + 1})", key_node.start_mark
                )
            seen.add(key)
        return super().construct_mapping(node, deep)


@dataclass
class WorkerEntry:
    """A ``workers:`` entry run as a process by the supervisor."""

    name: str
    config: Any = None
    worker_path: Optional[str] = None
    image: Optional[str] = None


@dataclass
class EngineConfig:
    path: Path
    listeners: list[ListenerConfig] = field(default_factory=list)
    workers: list[WorkerEntry] = field(default_factory=list)
    grace_ms: int = DEFAULT_GRACE_MS
    #: Module name -> its parsed ``config``, for the modules that have an entry (the others run
    #: on their defaults).
    modules: dict[str, Any] = field(default_factory=dict)
    #: What the entries asked for that this engine does not have (warned about at start).
    unsupported: list[str] = field(default_factory=list)


def expand_env(text: str, path: Path) -> str:
    """Replace ``${NAME}`` / ``${NAME:default}`` before parsing (unset without default: error)."""

    def substitute(match: re.Match[str]) -> str:
        name, default = match.group(1), match.group(2)
        value = os.environ.get(name)
        if value is not None:
            return value
        if default is None:
            raise ConfigError(
                f"{path}: environment variable {name} is not set and ${{{name}}} has no default "
                f"(write ${{{name}:value}} to give one)"
            )
        return __version__ if default == "__III_ENGINE_VERSION__" else default

    return _ENV_REF.sub(substitute, text)


def _integer(value: Any, where: str, path: Path, minimum: int, maximum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not minimum <= value <= maximum:
        raise ConfigError(
            f"{path}: {where} must be an integer from {minimum} to {maximum}, got {value!r}"
        )
    return value


def _convert(value: Any, config_type: type, where: str, path: Path, what: str = "") -> Any:
    """``value`` (the entry's ``config`` at ``where``) as ``config_type``; an error names the key
    in full (msgspec says ``… - at `$.adapter.config.x```: that becomes ``where.adapter.config.x``)."""
    try:
        return msgspec.convert({} if value is None else value, config_type)
    except msgspec.ValidationError as exc:
        reason, _, at = str(exc).partition(" - at `$")
        key = where + at.rstrip("`")
        raise ConfigError(f"{path}: {key}{f' ({what})' if what else ''}: {reason}") from None


def _listener(entry_config: Any, where: str, path: Path) -> ListenerConfig:
    return _convert(entry_config, ListenerConfig, f"{where}.config", path)


def parse_config(text: str, path: Path) -> EngineConfig:
    """Validate the text of a config file; ``path`` is only used in messages."""
    try:
        document = yaml.load(expand_env(text, path), Loader=UniqueKeyLoader)  # noqa: S506 (a SafeLoader)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: invalid YAML: {exc}") from None
    if document is None:
        document = {}
    if not isinstance(document, dict):
        raise ConfigError(f"{path}: the top level must be a mapping (workers: [...])")
    unknown = sorted(map(str, set(document) - _TOP_LEVEL_KEYS))
    if unknown:
        raise ConfigError(
            f"{path}: unknown top-level key(s): {', '.join(unknown)} "
            f"(supported: {', '.join(sorted(_TOP_LEVEL_KEYS))})"
        )
    config = EngineConfig(path=path)
    if "registration_namespace_grace_ms" in document:
        config.grace_ms = _integer(
            document["registration_namespace_grace_ms"],
            "registration_namespace_grace_ms",
            path,
            0,
            3_600_000,
        )
    env_grace = os.environ.get("III_NAMESPACE_GRACE_MS")
    if env_grace:
        try:
            config.grace_ms = int(env_grace)
        except ValueError:
            raise ConfigError(f"III_NAMESPACE_GRACE_MS must be an integer, got {env_grace!r}") from None
    # Imported here, not at the top: the modules pull in aiohttp and croniter, which commands
    # that never read a config (`iii trigger`) should not pay for at start-up.
    from iii.modules import by_entry_name

    modules = by_entry_name()
    #: module name -> the entry that configured it (two entries for one module are an error)
    configured_by: dict[str, str] = {}
    for section in ("workers", "modules"):
        if section not in document:
            continue
        entries = document[section]
        if not isinstance(entries, list):
            raise ConfigError(f"{path}: `{section}` must be a list (write `{section}: []` for none)")
        for index, entry in enumerate(entries):
            where = f"{section}[{index}]"
            if not isinstance(entry, dict):
                raise ConfigError(f"{path}: {where} must be a mapping with a `name`")
            name = entry.get("name")
            if not isinstance(name, str) or not name.strip():
                raise ConfigError(f"{path}: {where}.name is required and must be a string")
            if name == WireId.LISTENER:
                config.listeners.append(_listener(entry.get("config"), where, path))
                continue
            if name in _ALWAYS_ON_MODULES:
                continue
            if name in _UNSUPPORTED_MODULES:
                config.unsupported.append(f"{name} ({_UNSUPPORTED_MODULES[name]})")
                continue
            module = modules.get(name)
            if module is not None:
                earlier = configured_by.get(module.name)
                if earlier is not None:
                    raise ConfigError(
                        f"{path}: {where}: a second entry for the {module.name} module "
                        f"(`{earlier}` and `{name}` name the same module): keep one"
                    )
                configured_by[module.name] = name
                config.modules[module.name] = _convert(
                    entry.get("config"), module.config_type, f"{where}.config", path, module.name
                )
                continue
            worker_path = entry.get("worker_path")
            image = entry.get("image")
            for key, value in (("worker_path", worker_path), ("image", image)):
                if value is not None and not isinstance(value, str):
                    raise ConfigError(f"{path}: {where}.{key} must be a string")
            config.workers.append(WorkerEntry(name, entry.get("config"), worker_path, image))
    if not config.listeners:
        config.listeners.append(ListenerConfig())
    return config


def write_starter(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(STARTER_CONFIG)


def load_config(path: Path) -> EngineConfig:
    """Read and validate ``path``.

    Raises:
        ConfigError: unreadable file, invalid YAML, unknown keys or bad values.
    """
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from None
    return parse_config(text, path)
