"""``iii.worker.yaml``: reading and validating a worker's manifest.

Errors are :class:`ManifestError` naming the file and what is wrong with it.
"""

from __future__ import annotations

import json
import os
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import yaml

from iii.config import UniqueKeyLoader

__all__ = ["MANIFEST", "ManifestError", "Manifest", "load_manifest", "parse_manifest", "worker_version"]

MANIFEST = "iii.worker.yaml"
MAX_MANIFEST_BYTES = 64 * 1024
_NAME = re.compile(r"^[A-Za-z0-9._-]+$")
_ENV_KEY = re.compile(r"^[A-Za-z0-9_]+$")
_RESERVED_ENV = {"III_URL", "III_ENGINE_URL", "III_WORKER_NAME"}
_TOP = {
    "name", "description", "runtime", "scripts", "env", "dependencies", "resources",
    "iii", "deploy", "manifest", "tags", "language", "entry", "config",
}
_RUNTIME = {"base_image", "kind", "package_manager", "entry", "language"}
_SCRIPTS = {"setup", "install", "start"}
_RESOURCES = {"cpus", "memory"}
_SUPPORTED = (
    "name, description, runtime.base_image, scripts.(setup|install|start), env, dependencies, "
    "resources.(cpus|memory), plus the registry publish metadata keys (iii, deploy, manifest, "
    "tags) which the engine accepts and ignores"
)


class ManifestError(Exception):
    """A manifest that cannot be used; the message names the file and the problem."""


@dataclass
class Manifest:
    name: str
    directory: Path
    description: Optional[str] = None
    setup: Optional[str] = None
    #: ``None``: not given (install skipped with a warning); ``""``: explicitly none.
    install: Optional[str] = None
    start: str = ""
    env: dict[str, str] = field(default_factory=dict)
    config: Any = None
    warnings: list[str] = field(default_factory=list)


def _infer_scripts(runtime: dict[str, Any], entry: Optional[str]) -> tuple[Optional[str], Optional[str]]:
    """Legacy ``runtime.kind`` manifests: the install and start commands the original infers."""
    kind = runtime.get("kind") or runtime.get("language")
    manager = runtime.get("package_manager")
    entry = runtime.get("entry") or entry
    if kind == "python" and entry:
        module = entry[:-3].replace("/", ".") if entry.endswith(".py") else entry
        return "python3 -m venv .venv && .venv/bin/pip install -e .", f".venv/bin/python -m {module}"
    if kind in ("typescript", "javascript") and manager in ("npm", "pnpm", "yarn") and entry:
        runner = {"npm": "npx tsx", "pnpm": "pnpm exec tsx", "yarn": "yarn exec tsx"}[manager]
        return f"{manager} install", f"{runner} {entry}"
    if kind == "bun" and entry:
        return "bun install", f"bun run {entry}"
    if kind == "rust":
        return "cargo build --release", "cargo run --release"
    return None, None


def parse_manifest(text: str, path: Path) -> Manifest:
    """Validate the text of ``path`` (an ``iii.worker.yaml``)."""
    if len(text.encode()) > MAX_MANIFEST_BYTES:
        raise ManifestError(f"{path}: larger than {MAX_MANIFEST_BYTES} bytes")
    try:
        document = yaml.load(text, Loader=UniqueKeyLoader)  # noqa: S506 (a SafeLoader subclass)
    except yaml.YAMLError as exc:
        raise ManifestError(f"{path}: invalid YAML: {exc}") from None
    if not isinstance(document, dict):
        raise ManifestError(f"{path}: expected a mapping with at least `name` and `scripts.start`")
    unknown = sorted(f"{k}" for k in document if k not in _TOP)
    for section, allowed in (("runtime", _RUNTIME), ("scripts", _SCRIPTS), ("resources", _RESOURCES)):
        value = document.get(section)
        if value is not None and not isinstance(value, dict):
            raise ManifestError(f"{path}: `{section}` must be a mapping")
        unknown += sorted(f"{section}.{k}" for k in (value or {}) if k not in allowed)
    if unknown:
        raise ManifestError(f"unknown key(s) in {path}: [{', '.join(unknown)}]. Supported fields are: {_SUPPORTED}.")
    name = document.get("name")
    if not isinstance(name, str) or not name.strip():
        raise ManifestError(f"{path}: `name` is required (the worker's name, e.g. `name: my-worker`)")
    if not _NAME.match(name):
        raise ManifestError(f"{path}: name {name!r} must be one path segment of letters, digits, '-', '_' or '.'")
    manifest = Manifest(name=name, directory=path.parent)
    description = document.get("description")
    if description is not None and not isinstance(description, str):
        raise ManifestError(f"{path}: `description` must be a string")
    manifest.description = description
    runtime = document.get("runtime") or {}
    scripts = document.get("scripts")
    deprecated = [k for k in ("kind", "package_manager", "entry", "language") if k in runtime]
    deprecated += [k for k in ("language", "entry", "config") if k in document]
    if deprecated and not os.environ.get("III_NO_DEPRECATION_WARN"):
        manifest.warnings.append(f"{path}: deprecated key(s) {', '.join(deprecated)}; use scripts.install/scripts.start")
    if scripts is None:
        manifest.install, start = _infer_scripts(runtime, document.get("entry"))
        scripts = {}
    else:
        for key, value in scripts.items():
            if value is not None and not isinstance(value, str):
                raise ManifestError(f"{path}: scripts.{key} must be a string (a shell command)")
        manifest.setup = scripts.get("setup")
        manifest.install = scripts.get("install")
        start = scripts.get("start")
    if not start or not start.strip():
        raise ManifestError(f"{path}: no run command could be determined: add `scripts.start` (e.g. `python main.py`)")
    manifest.start = start
    if manifest.install is None:
        manifest.warnings.append(f"{path}: no scripts.install: dependency install will be skipped")
    env = document.get("env") or {}
    if not isinstance(env, dict):
        raise ManifestError(f"{path}: `env` must be a mapping of NAME: value")
    for key, value in env.items():
        if not isinstance(key, str) or not _ENV_KEY.match(key):
            raise ManifestError(f"{path}: env key {key!r} must match [A-Za-z0-9_]+")
        if key not in _RESERVED_ENV:
            manifest.env[key] = "" if value is None else str(value)
    dependencies = document.get("dependencies") or {}
    if not isinstance(dependencies, dict) or name in dependencies:
        raise ManifestError(f"{path}: `dependencies` must map other worker names to version ranges")
    manifest.config = document.get("config")
    return manifest


def load_manifest(directory: Path) -> Manifest:
    """Read ``directory/iii.worker.yaml``.

    Raises:
        ManifestError: missing, unreadable or invalid.
    """
    path = directory / MANIFEST
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise ManifestError(f"{directory}: no {MANIFEST} here (is this a worker directory?)") from None
    except OSError as exc:
        raise ManifestError(f"{path}: cannot read: {exc.strerror}") from None
    return parse_manifest(text, path)


def worker_version(directory: Path) -> Optional[str]:
    """The version a worker declares: the registry's (``.iii/version``, written on install), else
    its ``package.json``, ``pyproject.toml`` or ``Cargo.toml``; ``None`` when none says."""
    try:
        return (directory / ".iii" / "version").read_text().strip() or None
    except OSError:
        pass
    try:
        version = json.loads((directory / "package.json").read_text()).get("version")
        if isinstance(version, str):
            return version
    except (OSError, ValueError, AttributeError):
        pass
    for file, table in (("pyproject.toml", "project"), ("Cargo.toml", "package")):
        try:
            version = tomllib.loads((directory / file).read_text()).get(table, {}).get("version")
        except (OSError, tomllib.TOMLDecodeError, AttributeError):
            continue
        if isinstance(version, str):
            return version
    return None
