"""``iii worker init``, manifests and config edits: files only, no engine."""

from __future__ import annotations

import configparser
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from iii.config import STARTER_CONFIG
from iii.manager.configfile import add_worker_entry, remove_worker_entry, worker_entries
from iii.manager.manifest import ManifestError, parse_manifest

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
    assert "my-worker::hello" in entry and "engine::workers-available" in entry
    if language == "python":
        assert "from iii import" in entry
        assert 'dependencies = ["iii-engine"]' in files["pyproject.toml"].decode()  # ours, not iii-sdk
    if language in ("typescript", "javascript"):
        assert '"iii-sdk": "0.22.1"' in files["package.json"].decode()
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
