"""Replaying what the official SDKs sent (captured frames) through the router."""

from __future__ import annotations

import json
from collections import defaultdict

import pytest

from helpers import VECTORS, Peer, make_router
CAPTURES = sorted(p for p in VECTORS.glob("*.jsonl") if not p.name.endswith(".observed.jsonl"))


@pytest.mark.parametrize("capture", CAPTURES, ids=lambda p: p.stem)
def test_captured_sessions_replay_cleanly(codec, capture):
    sessions = defaultdict(list)
    for line in capture.read_text().splitlines():
        record = json.loads(line)
        if record.get("dir") == "worker->engine" and "frame" in record and record.get("path") == "/":
            sessions[record["conn"]].append(record["frame"])
    assert sessions, f"{capture.name} holds no worker frames"
    router = make_router(numbered_ids=False)
    for frames in sessions.values():
        peer = Peer(router)
        asked = []
        for frame in frames:
            peer.send_raw(json.dumps(frame).encode())
            if frame["type"] == "invokefunction" and frame.get("invocation_id") and frame["function_id"].startswith("engine::"):
                asked.append(frame["invocation_id"])
        answered = {f.get("invocation_id") for f in peer.take() if f["type"] == "invocationresult"}
        assert peer.conn.frames_dropped == 0
        assert set(asked) <= answered
        if any(f["function_id"] == "engine::workers::register" for f in frames if f["type"] == "invokefunction"):
            assert peer.conn.runtime in ("python", "node")
        router.disconnect(peer.conn)
    assert router.connections == {} and router.pending == {}
    assert all(fn.owner is None for fn in router.all_functions())
