"""``config.yaml``: loading, ``${VAR}`` expansion and validation.

Errors are :class:`ConfigError` with a message that names the file and the offending key.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import msgspec
import yaml

from iii import __version__
from iii.protocol import DEFAULT_GRACE_MS, DEFAULT_HOST, DEFAULT_PORT
from iii.workers import ALIASES as MODULE_ALIASES
from iii.workers import MODULES

__all__ = [
    "ConfigError",
    "ListenerConfig",
    "WorkerEntry",
    "EngineConfig",
    "STARTER_CONFIG",
    "load_config",
    "parse_config",
    "write_starter",
]

STARTER_CONFIG = """\
# iii engine configuration.
# Add workers with `iii worker add <name>`; a running engine reloads on save.
# Configure workers at runtime through the configuration worker (configuration::set).
workers: []
"""

LISTENER = "iii-worker-manager"
_TOP_LEVEL_KEYS = {"workers", "modules", "registration_namespace_grace_ms"}
_LISTENER_KEYS = {"host", "port", "handshake_timeout_ms", "middleware_function_id", "rbac"}
_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::([^}]*))?\}")


class ConfigError(Exception):
    """The configuration cannot be used; the message says which file and key, and why."""


@dataclass
class ListenerConfig:
    """One worker WebSocket listener (an ``iii-worker-manager`` entry)."""

    host: str = DEFAULT_HOST
    port: int = DEFAULT_PORT
    handshake_timeout_ms: int = 10000


@dataclass
class WorkerEntry:
    """A ``workers:`` entry other than the listener."""

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
    #: Parsed ``config`` of the in-process modules that have an entry (the others run on defaults).
    modules: dict[str, Any] = field(default_factory=dict)


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


def _listener(entry_config: Any, where: str, path: Path) -> ListenerConfig:
    if entry_config is None:
        return ListenerConfig()
    if not isinstance(entry_config, dict):
        raise ConfigError(f"{path}: {where}.config must be a mapping, got {entry_config!r}")
    unknown = sorted(set(entry_config) - _LISTENER_KEYS)
    if unknown:
        raise ConfigError(
            f"{path}: unknown key(s) {', '.join(map(str, unknown))} in {where}.config "
            f"(supported: {', '.join(sorted(_LISTENER_KEYS))})"
        )
    listener = ListenerConfig()
    if "host" in entry_config:
        if not isinstance(entry_config["host"], str) or not entry_config["host"]:
            raise ConfigError(f"{path}: {where}.config.host must be a non-empty string")
        listener.host = entry_config["host"]
    if "port" in entry_config:
        listener.port = _integer(entry_config["port"], f"{where}.config.port", path, 0, 65535)
    if "handshake_timeout_ms" in entry_config:
        listener.handshake_timeout_ms = _integer(
            entry_config["handshake_timeout_ms"],
            f"{where}.config.handshake_timeout_ms",
            path,
            1,
            3_600_000,
        )
    return listener


def _module_config(module: str, entry_config: Any, where: str, path: Path) -> Any:
    try:
        return msgspec.convert(entry_config or {}, MODULES[module][0])
    except msgspec.ValidationError as exc:
        raise ConfigError(f"{path}: {where} ({module}): {exc}") from None


def parse_config(text: str, path: Path) -> EngineConfig:
    """Validate the text of a config file; ``path`` is only used in messages."""
    try:
        document = yaml.safe_load(expand_env(text, path))
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
            if name == LISTENER:
                config.listeners.append(_listener(entry.get("config"), where, path))
                continue
            module = MODULE_ALIASES.get(name)
            if module is not None:
                config.modules[module] = _module_config(module, entry.get("config"), where, path)
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
