"""Invalid UTF-8 over real sockets: refused with an error, never relayed (an SDK drops its
connection on it), on both builds; valid non-ASCII text still routes."""

from __future__ import annotations

import json

import pytest
from picows import WSMsgType

from test_server import build_env, engine, worker  # noqa: F401  (the fixtures run both builds)

TEXT = "héllo ☃ 🎉"


def call(invocation_id: str, data: bytes) -> bytes:
    return b'{"type":"invokefunction","invocation_id":"%s","function_id":"utf8::echo","data":%s}' % (
        invocation_id.encode(),
        data,
    )


@pytest.mark.parametrize("fragmented", [False, True], ids=["whole", "fragmented"])
async def test_a_call_with_invalid_utf8_is_refused_and_valid_text_still_routes(engine, fragmented):
    callee = await worker(engine.url, "callee", "utf8::echo")
    caller = await worker(engine.url, "caller")
    bad = call("bad-1", b'{"text":"caf\xc3 and a surrogate \xed\xa0\x80"}')
    if fragmented:  # whole messages take route_frame, fragmented ones the full decoder
        caller.transport.send(WSMsgType.TEXT, bad[:70], fin=False)
        caller.transport.send(WSMsgType.CONTINUATION, bad[70:], fin=True)
    else:
        caller.send_bytes(bad)
    error = (await caller.recv_until(lambda f: f.get("invocation_id") == "bad-1"))["error"]
    first_bad_byte = bad.index(b"\xc3")
    assert error["code"] == "deserialization_error"
    assert f"invalid UTF-8 at byte {first_bad_byte}" in error["message"]

    good = json.dumps({"text": TEXT}, ensure_ascii=False).encode()  # raw UTF-8, not \u escapes
    caller.send_bytes(call("good-1", good))
    received = []
    while not received or received[-1].get("invocation_id") != "good-1":
        received.append(await callee.recv())
    assert [f.get("invocation_id") for f in received] == ["good-1"]  # nothing of the bad call
    assert received[-1]["data"]["text"] == TEXT
    callee.send_bytes(
        json.dumps(
            {"type": "invocationresult", "invocation_id": "good-1", "function_id": "utf8::echo", "result": TEXT},
            ensure_ascii=False,
        ).encode()
    )
    assert (await caller.recv_until(lambda f: f.get("invocation_id") == "good-1"))["result"] == TEXT
    assert engine.alive
