"""The engine process's assembly: worker-manager functions, config warnings (no sockets)."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from helpers import Peer, make_router
from iii.app import App, install_worker_functions
from iii.config import parse_config


class FakeSupervisor:
    config_path = Path("config.yaml")

    def __init__(self) -> None:
        self.actions: list[tuple[str, str]] = []

    def list(self) -> list:
        return []

    def status(self, name: str) -> dict:
        return {"name": name, "state": "running"}

    def start(self, name: str) -> dict:
        self.actions.append(("start", name))
        return {"ok": True}

    stop = restart = start


@pytest.mark.parametrize("ip", ["127.0.0.1", "127.8.9.10", "::1", "::ffff:127.0.0.1"])
def test_worker_processes_are_driven_from_this_machine(ip):
    router = make_router()
    supervisor = FakeSupervisor()
    install_worker_functions(router, supervisor)
    peer = Peer(router, ip=ip)
    assert peer.result_of("worker::stop", {"name": "w"})["result"] == {"ok": True}
    assert supervisor.actions == [("start", "w")]


@pytest.mark.parametrize("ip", ["203.0.113.7", "::ffff:198.51.100.1", "2001:db8::1", None])
def test_worker_processes_cannot_be_driven_from_elsewhere(ip):
    router = make_router()
    supervisor = FakeSupervisor()
    install_worker_functions(router, supervisor)
    peer = Peer(router, ip=ip)
    for verb in ("start", "stop", "restart"):
        error = peer.result_of(f"worker::{verb}", {"name": "w"})["error"]
        assert error["code"] == "FORBIDDEN" and f"worker::{verb}" in error["message"]
    assert peer.result_of("worker::status", {"name": "w"})["result"]["state"] == "running"
    assert supervisor.actions == []


@pytest.mark.both_loops
def test_worker_processes_cannot_be_driven_through_a_trigger_or_a_queue(codec):
    """A remote client could bind a trigger (or enqueue a job) whose function is worker::stop:
    the engine's own call is no local caller."""
    router = make_router({})
    supervisor = FakeSupervisor()
    install_worker_functions(router, supervisor)
    remote = Peer(router, ip="203.0.113.7")
    remote.send(type="registertrigger", id="t", trigger_type="subscribe", function_id="worker::stop", config={"topic": "x"})
    remote.result_of("publish", {"topic": "x", "data": {"name": "victim"}})
    remote.send(type="invokefunction", invocation_id="e", function_id="worker::restart", data={"name": "victim"},
                action={"type": "enqueue", "queue": "default"})
    router.flush_events()
    assert supervisor.actions == []


@pytest.mark.both_loops
async def test_unsupported_module_entries_are_named_at_start(tmp_path, caplog):
    config = parse_config(
        "workers:\n"
        "  - name: iii-worker-manager\n    config: {host: 127.0.0.1, port: 0}\n"
        "  - name: iii-observability\n    config: {exporter: memory}\n"
        "  - name: configuration\n"
        "  - name: iii-engine-functions\n"
        "  - name: iii-http\n    config: {host: 127.0.0.1, port: 0}\n"
        "  - name: iii-stream\n    config: {host: 127.0.0.1, port: 0}\n",
        tmp_path / "config.yaml",
    )
    assert config.workers == []  # none of them is a process to start
    app = App(config)
    with caplog.at_level(logging.WARNING, logger="iii.engine"):
        await app.start()
    try:
        warnings = [r.getMessage() for r in caplog.records if "not provided by this engine" in r.getMessage()]
        assert len(warnings) == 1  # iii-observability is a module now
        assert "configuration" in warnings[0]
    finally:
        await app.stop()
