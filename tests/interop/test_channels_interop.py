"""Data channels between workers of the official SDKs (Python iii-sdk 0.25.0, Node iii-sdk
0.22.1) and ours, through our engine: the scenarios of the original's own SDK suites."""

from __future__ import annotations

import pytest

from test_http_streaming_interop import start_channel_worker

pytestmark = pytest.mark.interop

PAIRS = [("python", "node"), ("node", "python"), ("ours", "node"), ("node", "ours"), ("python", "ours"), ("ours", "python")]


@pytest.mark.parametrize("sender, processor", PAIRS)
async def test_a_reader_ref_passed_to_another_runtime_reads_what_was_written(procs, engine, official_python, node, sender, processor):
    server = await start_channel_worker(procs, engine, official_python, node, processor, f"proc{processor}", "serve")
    await server.key("ready", timeout=30)
    client = await start_channel_worker(procs, engine, official_python, node, sender, "sender", "send", f"proc{processor}::process")
    outcome = await client.key("result", timeout=30)
    assert outcome["result"] == {"label": "metrics-batch", "messages": 5, "count": 5, "sum": 2567, "average": 513.4,
                                 "min": 12, "max": 2048}


@pytest.mark.parametrize("coordinator, worker", PAIRS)
async def test_bidirectional_channels_carry_progress_text_and_a_binary_result(procs, engine, official_python, node, coordinator, worker):
    server = await start_channel_worker(procs, engine, official_python, node, worker, f"words{worker}", "serve")
    await server.key("ready", timeout=30)
    client = await start_channel_worker(procs, engine, official_python, node, coordinator, "coord", "coordinate", f"words{worker}::words")
    outcome = (await client.key("result", timeout=30))["result"]
    assert outcome["result"] == {"status": "done"}
    progress = [m for m in outcome["messages"] if m["type"] == "progress"]
    assert progress and progress[0] == {"type": "progress", "chunks_received": 1}
    assert outcome["messages"][-1] == {"type": "complete", "word_count": 15, "byte_count": 77}
    assert outcome["binary"] == {"words": ["The", "quick", "brown", "fox", "jumps"], "total": 15}
