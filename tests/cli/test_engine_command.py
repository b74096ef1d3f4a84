"""``iii`` (no subcommand): config handling, startup, clean shutdown on signals."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import RawClient
from iii import __version__
from iii.config import STARTER_CONFIG, ConfigError, parse_config
from iii.modules._adapters import LocalAdapter


def run_iii(*args: str, cwd: Path, timeout: float = 20) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "iii", *args], cwd=cwd, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL
    )


@pytest.mark.parametrize(
    "text, named",
    [
        ("workers: [\n  - name: x\n", "invalid YAML"),
        ("workers: []\nwokers: []\n", "wokers"),
        ("workers:\n  - name: iii-worker-manager\n    config:\n      prot: 1\n", "prot"),
        ("workers:\n  - name: iii-worker-manager\n    config:\n      port: http\n", "workers[0].config.port"),
        ("workers:\n", "`workers` must be a list"),
        ("workers:\n  - config: {}\n", "workers[0].name"),
        ("workers:\n  - name: iii-worker-manager\n    config:\n      port: ${III_TEST_UNSET_PORT}\n", "III_TEST_UNSET_PORT"),
        ("workers:\n  - name: state\n    config:\n      max_value_bytes: lots\n", "max_value_bytes"),
        ("workers:\n  - name: iii-state\n    config:\n      adapter: {name: redis, config: {url: x}}\n", "unknown field `url`"),
        ("workers:\n  - name: iii-pubsub\n    config:\n      adapter: {name: redis, config: {url: x}}\n", "unknown field `url`"),
        ("workers:\n  - name: cron\n    config:\n      adapter: {name: redis, config: {lock_ttl_ms: 5}}\n", "lock_ttl_ms"),
        ("workers:\n  - name: queue\n    config:\n      queue_configs: {pay: {type: fifo}}\n", "message_group_field"),
        # What this engine does not do is refused, never silently ignored.
        ("workers:\n  - name: iii-worker-manager\n    config:\n      rbac: {auth_function: a::b}\n",
         "workers[0].config.rbac: Object contains unknown field `auth_function`"),
        ("workers:\n  - name: iii-worker-manager\n    config:\n      rbac: {expose_functions: ['a::*']}\n",
         "workers[0].config.rbac: expose_functions[0]: 'a::*' is not a rule"),
        ("workers:\n  - name: http\n  - name: iii-http\n    config: {port: 1}\n", "a second entry for the iii-http module"),
        ("workers:\n  - name: cron\n  - name: cron\n", "a second entry for the iii-cron module"),
        ("workers:\n  - name: iii-worker-manager\n    config:\n      idle_timeout_ms: 5\n", "workers[0].config.idle_timeout_ms"),
    ],
)
def test_bad_config_exits_1_naming_the_file_and_key(tmp_path, text, named):
    (tmp_path / "bad.yaml").write_text(text)
    result = run_iii("-c", "bad.yaml", cwd=tmp_path)
    assert result.returncode == 1
    assert "error: bad.yaml" in result.stderr and named in result.stderr


def test_env_expansion_with_defaults(monkeypatch, tmp_path):
    monkeypatch.setenv("III_TEST_HOST", "127.0.0.2")
    monkeypatch.delenv("III_TEST_PORT", raising=False)
    config = parse_config(
        "registration_namespace_grace_ms: 250\nworkers:\n  - name: iii-worker-manager\n    config:\n"
        "      host: ${III_TEST_HOST}\n      port: ${III_TEST_PORT:4000}\n  - name: my-worker\n    worker_path: ./w\n",
        tmp_path / "c.yaml",
    )
    assert (config.listeners[0].host, config.listeners[0].port, config.grace_ms) == ("127.0.0.2", 4000, 250)
    assert [(w.name, w.worker_path) for w in config.workers] == [("my-worker", "./w")]
    default = parse_config(STARTER_CONFIG, tmp_path / "c.yaml")
    assert (default.listeners[0].host, default.listeners[0].port) == ("0.0.0.0", 49134)
    with pytest.raises(ConfigError, match="null list|must be a list"):
        parse_config("modules:\n", tmp_path / "c.yaml")


def test_module_entries_configure_the_built_in_modules(tmp_path):
    """Entries named after a built-in module (either spelling) configure it; they are not workers."""
    config = parse_config(
        "workers:\n  - name: state\n    config:\n      max_value_bytes: 100\n      triggers_enabled: false\n"
        "  - name: iii-pubsub\n    config:\n      adapter: {name: local}\n  - name: cron\n  - name: my-worker\n"
        "  - name: queue\n    config:\n      queue_configs: {emails: {concurrency: 2, backoff_ms: 50}}\n",
        tmp_path / "c.yaml",
    )
    assert [w.name for w in config.workers] == ["my-worker"]
    assert (config.modules["iii-state"].max_value_bytes, config.modules["iii-state"].triggers_enabled) == (100, False)
    assert config.modules["iii-pubsub"].adapter == LocalAdapter()
    assert config.modules["iii-cron"].adapter is None
    assert config.modules["iii-queue"].queue_configs["emails"].concurrency == 2


def test_version(tmp_path):
    for flag in ("-v", "--version"):
        result = run_iii(flag, cwd=tmp_path)
        assert result.returncode == 0 and result.stdout.strip() == f"iii {__version__}"


def test_bad_arguments_exit_2(tmp_path):
    result = run_iii("--no-such-flag", cwd=tmp_path)
    assert result.returncode == 2 and "usage: iii" in result.stderr


def test_missing_config_is_created_without_a_terminal(tmp_path, monkeypatch):
    from iii.cli.main import _ensure_config

    monkeypatch.setattr(sys, "stdin", open("/dev/null"))
    config = tmp_path / "sub" / "config.yaml"
    assert _ensure_config(config)
    assert config.read_text() == STARTER_CONFIG
    parse_config(config.read_text(), config)  # what it writes is a valid config


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
async def test_signals_stop_the_engine_cleanly(procs, tmp_path, sig):
    engine = await procs.engine(tmp=tmp_path)
    client = await RawClient.connect(engine.url)
    engine.proc.kill(sig)
    assert await engine.proc.wait() == 0
    await asyncio.wait_for(client.listener.closed.wait(), 10)
    assert any("shutting down" in str(item) for item in engine.proc.lines)
