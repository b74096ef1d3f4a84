"""``iii worker init``, manifests and config edits: files only, no engine."""

from __future__ import annotations

import asyncio
import configparser
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from iii.config import STARTER_CONFIG, ConfigError, load_config
from iii.manager.configfile import add_worker_entry, remove_worker_entry, worker_entries
from iii.manager.manifest import ManifestError, parse_manifest, worker_version

EXPECTED_FILES = {
    "python": {"iii.worker.yaml", "pyproject.toml", "src/main.py"},
    "typescript": {"iii.worker.yaml", "package.json", "tsconfig.json", "src/index.ts"},
    "javascript": {"iii.worker.yaml", "package.json", "src/index.js"},
    "rust": {"iii.worker.yaml", "Cargo.toml", "src/main.rs"},
}
SHORT = {"python": "py", "typescript": "ts", "javascript": "js", "rust": "rust"}


def iii(*args: str, cwd: Path, stdin: int = subprocess.DEVNULL) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "iii", *args], cwd=cwd, capture_output=True, text=True, timeout=60, stdin=stdin)


def tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("language, flag", [("python", "py"), ("typescript", "ts"), ("javascript", "javascript"), ("rust", "RS")])
def test_init_writes_the_project_and_is_idempotent(tmp_path, language, flag):
    result = iii("worker", "init", "my-worker", "--language", flag, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    target = tmp_path / "my-worker"
    assert f"iii worker 'my-worker' ({language}) scaffolded at {target}" in result.stderr
    files = tree(target)
    assert set(files) == EXPECTED_FILES[language] | {".iii/worker.ini"}
    manifest = yaml.safe_load(files["iii.worker.yaml"])
    assert manifest["name"] == "my-worker" and manifest["scripts"]["start"]
    parse_manifest(files["iii.worker.yaml"].decode(), target / "iii.worker.yaml")  # valid for `add`
    ini = configparser.ConfigParser()
    ini.read_string(files[".iii/worker.ini"].decode())
    assert dict(ini["worker"]) == {"worker_id": ini["worker"]["worker_id"], "name": "my-worker", "source": "init", "language": SHORT[language]}
    entry = next(v for k, v in files.items() if k.startswith("src/")).decode()
    # The example registers a function and no engine::workers-available trigger (it logged a
    # line for every connection, `iii` commands included).
    assert "my-worker::hello" in entry and "workers-available" not in entry
    if language == "python":
        assert "from iii import" in entry
        assert 'dependencies = ["iii-engine", "watchfiles"]' in files["pyproject.toml"].decode()  # ours, not iii-sdk
        assert manifest["scripts"]["start"].startswith("watchfiles ")  # reloads on edit
    if language in ("typescript", "javascript"):
        assert '"iii-sdk": "0.22.1"' in files["package.json"].decode()
    if language == "typescript":
        assert '"start": "tsx watch src/index.ts"' in files["package.json"].decode()  # reloads on edit
    if language == "rust":
        assert "iii-sdk" in files["Cargo.toml"].decode()

    (target / "src" / "extra.txt").write_text("mine")
    again = iii("worker", "init", "my-worker", "-l", flag, cwd=tmp_path)
    assert again.returncode == 0 and "nothing was changed" in again.stderr
    assert tree(target) == {**files, "src/extra.txt": b"mine"}


def test_init_refuses_a_non_empty_directory_unless_allowed(tmp_path):
    target = tmp_path / "busy"
    target.mkdir()
    for name in ("a", "b", "c", "d", "e", "f", "g"):
        (target / name).write_text("x")
    (target / ".hidden").write_text("x")
    refused = iii("worker", "init", "-d", str(target), "-l", "py", cwd=tmp_path)
    assert refused.returncode == 1
    assert "error: target directory is not empty" in refused.stderr
    assert "contains a, b, c, d, e, and 2 more" in refused.stderr
    assert "fix: pass --allow-non-empty" in refused.stderr
    assert iii("worker", "init", "-d", str(target), "-l", "py", "--allow-non-empty", cwd=tmp_path).returncode == 0
    assert (target / "a").read_text() == "x" and (target / "src" / "main.py").exists()
    hidden_only = tmp_path / "hidden-only"
    hidden_only.mkdir()
    (hidden_only / ".git").mkdir()
    assert iii("worker", "init", "hidden-only", "-l", "js", cwd=tmp_path).returncode == 0


def test_init_language_errors(tmp_path):
    bad = iii("worker", "init", "w", "--language", "cobol", cwd=tmp_path)
    assert bad.returncode == 2 and "unknown language 'cobol'" in bad.stderr
    none = iii("worker", "init", "w", cwd=tmp_path)
    assert none.returncode == 1 and "no language selected" in none.stderr and "--language" in none.stderr
    assert not (tmp_path / "w" / "iii.worker.yaml").exists()


@pytest.mark.parametrize(
    "text, message",
    [
        ("name: w\nscripts:\n  start: x\nbogus: 1\nruntime:\n  color: red\n", "unknown key(s) in"),
        ("scripts:\n  start: x\n", "`name` is required"),
        ("name: w\nscripts:\n  install: y\n", "no run command could be determined"),
        ("name: w\nname: v\nscripts:\n  start: x\n", "duplicate key 'name'"),
        ("name: 'a/b'\nscripts:\n  start: x\n", "one path segment"),
        ("name: w\nscripts:\n  start: [x]\n", "scripts.start must be a string"),
        ("- just\n- a list\n", "expected a mapping"),
        ("name: w\nscripts:\n  start: x\nenv:\n  bad-key: 1\n", "env key 'bad-key'"),
    ],
)
def test_bad_manifests_are_explained(tmp_path, text, message):
    with pytest.raises(ManifestError, match=".*") as info:
        parse_manifest(text, tmp_path / "iii.worker.yaml")
    assert message in str(info.value) and str(tmp_path / "iii.worker.yaml") in str(info.value)


def test_manifest_fields_and_legacy_inference(tmp_path):
    manifest = parse_manifest(
        "name: w\ndescription: d\nscripts:\n  install: ''\n  start: python main.py\nenv:\n  LOG: debug\n  III_URL: ignored\n",
        tmp_path / "iii.worker.yaml",
    )
    assert (manifest.install, manifest.start, manifest.env) == ("", "python main.py", {"LOG": "debug"})
    assert manifest.warnings == []
    legacy = parse_manifest("name: w\nruntime:\n  kind: python\n  entry: math_worker.py\n", tmp_path / "iii.worker.yaml")
    assert legacy.start == ".venv/bin/python -m math_worker" and legacy.warnings


def test_config_edits_keep_comments(tmp_path):
    config = tmp_path / "config.yaml"
    config.write_text("# mine\nworkers:\n  # the listener\n  - name: iii-worker-manager\n    config:\n      port: 1\n\nregistration_namespace_grace_ms: 10  # short\n")
    add_worker_entry(config, "a", "/w/a")
    assert worker_entries(config) == {"a": "/w/a"}
    assert "# mine" in config.read_text() and "# the listener" in config.read_text() and "# short" in config.read_text()
    assert remove_worker_entry(config, "a") and worker_entries(config) == {}
    assert not remove_worker_entry(config, "a")
    fresh = tmp_path / "fresh.yaml"
    fresh.write_text(STARTER_CONFIG)
    add_worker_entry(fresh, "b", "/w/b")
    remove_worker_entry(fresh, "b")
    assert fresh.read_text() == STARTER_CONFIG


@pytest.mark.parametrize(
    "text, expected",
    [
        # Flow style stays flow style (a text edit appended a second `workers:` key here).
        (
            "workers: [{name: iii-worker-manager, config: {port: 49299}}]\n",
            "workers: [{name: iii-worker-manager, config: {port: 49299}}, {name: a, worker_path: /w/a}]\n",
        ),
        # Block style, with a comment and a blank line after the list: the entry goes in the list,
        # the comment stays after it, ${VAR} stays unexpanded.
        (
            "workers:\n  - name: iii-http  # web\n    config:\n      port: ${PORT:3111}\n\n# next\nregistration_namespace_grace_ms: 10\n",
            "workers:\n  - name: iii-http  # web\n    config:\n      port: ${PORT:3111}\n  - name: a\n    worker_path: /w/a\n\n"
            "# next\nregistration_namespace_grace_ms: 10\n",
        ),
        # Its own indentation is kept.
        ("workers:\n- name: iii-http\n", "workers:\n- name: iii-http\n- name: a\n  worker_path: /w/a\n"),
        # No list yet.
        ("registration_namespace_grace_ms: 10\n", "registration_namespace_grace_ms: 10\nworkers:\n  - name: a\n    worker_path: /w/a\n"),
    ],
)
def test_config_edits_keep_style(tmp_path, text, expected):
    config = tmp_path / "config.yaml"
    config.write_text(text)
    add_worker_entry(config, "a", "/w/a")
    assert config.read_text() == expected
    assert worker_entries(config) == {"a": "/w/a"}
    assert remove_worker_entry(config, "a")
    assert worker_entries(config) == {}


def test_flow_style_add_keeps_the_listener_port(tmp_path):
    config = tmp_path / "config.yaml"
    config.write_text("workers: [{name: iii-worker-manager, config: {port: 49299}}]\n")
    add_worker_entry(config, "a", "/w/a")
    assert [listener.port for listener in load_config(config).listeners] == [49299]


def test_duplicate_keys_are_refused_by_the_loader_and_the_editor(tmp_path):
    config = tmp_path / "config.yaml"
    config.write_text("workers: []\nworkers:\n  - name: iii-worker-manager\n    config: {port: 49299}\n")
    with pytest.raises(ConfigError, match="duplicate key 'workers' \\(line 2\\)"):
        load_config(config)
    with pytest.raises(ConfigError, match="duplicate key"):
        add_worker_entry(config, "a", "/w/a")
    assert config.read_text().count("workers:") == 2  # untouched
    nested = tmp_path / "nested.yaml"
    nested.write_text("workers:\n  - name: iii-http\n    config:\n      port: 1\n      port: 2\n")
    with pytest.raises(ConfigError, match="duplicate key 'port'"):
        load_config(nested)


def test_worker_version_comes_from_the_registry_or_the_project_file(tmp_path):
    assert worker_version(tmp_path) is None
    (tmp_path / "pyproject.toml").write_text('[project]\nname = "w"\nversion = "1.2.3"\n')
    assert worker_version(tmp_path) == "1.2.3"
    (tmp_path / "package.json").write_text('{"version": "0.4.0"}')
    assert worker_version(tmp_path) == "0.4.0"
    (tmp_path / ".iii").mkdir()
    (tmp_path / ".iii" / "version").write_text("2.0.0\n")
    assert worker_version(tmp_path) == "2.0.0"


async def test_logs_merge_by_time_and_follow_across_rotation(tmp_path):
    logs = tmp_path / "w"
    logs.mkdir()
    (logs / "stdout.log").write_text("2026-01-01T00:00:01.000Z out one\n2026-01-01T00:00:03.000Z out two\n")
    (logs / "stderr.log").write_text("2026-01-01T00:00:02.000Z err one\n")
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "iii", "worker", "logs", "w", "-f", env={**os.environ, "III_LOGS_DIR": str(tmp_path)},
        stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
    )
    try:
        async def line() -> str:
            return (await asyncio.wait_for(process.stdout.readline(), 30)).decode()

        assert [await line() for _ in range(3)] == [
            "2026-01-01T00:00:01.000Z out one\n", "2026-01-01T00:00:02.000Z err one\n", "2026-01-01T00:00:03.000Z out two\n",
        ]
        with (logs / "stderr.log").open("a") as err:
            err.write("2026-01-01T00:00:04.000Z err two\n")
        assert await line() == "2026-01-01T00:00:04.000Z err two\n"
        (logs / "stdout.log").rename(logs / "stdout.log.1")  # what the shim's rotation does
        (logs / "stdout.log").write_text("2026-01-01T00:00:05.000Z after rotation\n")
        assert await line() == "2026-01-01T00:00:05.000Z after rotation\n"
    finally:
        process.send_signal(signal.SIGINT)
        assert await asyncio.wait_for(process.wait(), 30) == 130


def test_worker_commands_find_the_engine_port_in_the_config(tmp_path):
    from iii.cli.worker import _listener_port

    config = tmp_path / "config.yaml"
    assert _listener_port(config) is None  # no config: $III_URL, else the default
    config.write_text("workers: []\n")
    assert _listener_port(config) == 49134
    config.write_text("workers: [{name: iii-http}, {name: iii-worker-manager, config: {port: ${P:49299}}}]\n")
    assert _listener_port(config) == 49299
    config.write_text("workers:\n  - name: iii-worker-manager\n    config:\n      host: 127.0.0.1\n")
    assert _listener_port(config) == 49134
