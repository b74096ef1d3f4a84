"""Opens N idle worker connections to an engine and keeps them until stdin closes.

    python bench/idle.py URL N

Each connection registers like a worker (``engine::workers::register``) and then stays silent.
Prints ``connected N`` once every one of them is up.
"""

from __future__ import annotations

import asyncio
import json
import sys

import uvloop
from picows import WSFrame, WSListener, WSMsgType, WSTransport, ws_connect

from harness import raise_fd_limit


class Idle(WSListener):
    def on_ws_connected(self, transport: WSTransport) -> None:
        transport.send(WSMsgType.TEXT, json.dumps({
            "type": "invokefunction", "function_id": "engine::workers::register", "action": {"type": "void"},
            "data": {"runtime": "bench", "name": None, "pid": 0},
        }, separators=(",", ":")).encode())

    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        if frame.msg_type is WSMsgType.CLOSE:
            transport.disconnect()


async def main(url: str, count: int) -> None:
    raise_fd_limit()
    transports = []
    for start in range(0, count, 200):  # in batches: the listen backlog is finite
        batch = await asyncio.gather(*(ws_connect(Idle, url) for _ in range(start, min(count, start + 200))))
        transports += [transport for transport, _ in batch]
    print(f"connected {len(transports)}", flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
    for transport in transports:
        transport.disconnect()


if __name__ == "__main__":
    uvloop.run(main(sys.argv[1], int(sys.argv[2])))
