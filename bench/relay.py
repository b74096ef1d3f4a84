"""The baseline: a bare picows relay, the practical limit of a Python relay on this machine.

It knows no protocol beyond what routing needs: it remembers which connection registered which
function id, and forwards every frame as bytes — an ``invokefunction`` to the function's owner
(after noting who is waiting for that invocation id), an ``invocationresult`` back to whoever
waits. Keys are found with ``bytes.find``; nothing is decoded.

    python bench/relay.py PORT     (prints "listening on ws://127.0.0.1:PORT")
"""

from __future__ import annotations

import asyncio
import sys

import uvloop
from picows import WSFrame, WSListener, WSMsgType, WSTransport, ws_create_server

TEXT = WSMsgType.TEXT
_FUNCTION = b'"function_id":"'
_INVOCATION = b'"invocation_id":"'
_REGISTER = b'"type":"registerfunction"'
_ID = b'"id":"'

owners: dict[bytes, WSTransport] = {}
waiting: dict[bytes, WSTransport] = {}


def _value(frame: bytes, key: bytes) -> bytes:
    start = frame.find(key)
    if start < 0:
        return b""
    start += len(key)
    return frame[start : frame.index(b'"', start)]


class Relay(WSListener):
    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        if frame.msg_type is not TEXT:
            if frame.msg_type is WSMsgType.CLOSE:
                transport.send_close(frame.get_close_code())
                transport.disconnect()
            return
        payload = frame.get_payload_as_bytes()
        if payload.startswith(b'{"type":"invocationresult"'):
            caller = waiting.pop(_value(payload, _INVOCATION), None)
            if caller is not None:
                caller.send(TEXT, payload)
        elif payload.startswith(b'{"type":"invokefunction"'):
            owner = owners.get(_value(payload, _FUNCTION))
            invocation_id = _value(payload, _INVOCATION)
            if owner is not None and invocation_id:
                waiting[invocation_id] = transport
                owner.send(TEXT, payload)
        elif _REGISTER in payload:
            owners[_value(payload, _ID)] = transport


async def main(port: int) -> None:
    server = await ws_create_server(lambda request: Relay(), "127.0.0.1", port)
    print(f"listening on ws://127.0.0.1:{server.sockets[0].getsockname()[1]}", flush=True)
    await asyncio.Event().wait()


if __name__ == "__main__":
    uvloop.run(main(int(sys.argv[1]) if len(sys.argv) > 1 else 0))
