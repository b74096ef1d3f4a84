"""Drop-in proof for channels and streaming HTTP: the same channel worker script (official public
API only) on the official Python SDK and on ours, against our engine, gives the same outcomes."""

from __future__ import annotations

import hashlib
import re
import sys

import aiohttp
import pytest

from helpers import ROOT

pytestmark = pytest.mark.interop

SCRIPT = ROOT / "tests/interop/workers/channel_worker.py"
_HTTP_URL = re.compile(r"iii-http listening on (http://\S+)")
MULTIPART = (  # a fixed boundary: both runs send the same bytes
    b'--XyZ\r\nContent-Disposition: form-data; name="title"\r\n\r\nTest Document\r\n'
    b'--XyZ\r\nContent-Disposition: form-data; name="file"; filename="handbook.pdf"\r\n'
    b"Content-Type: application/pdf\r\n\r\n%PDF-1.4 small\r\n--XyZ--\r\n"
)


async def outcomes_of(procs, engine, python: str, sdk: str) -> dict:
    """Channels between two workers of ``sdk``, and HTTP handlers of ``sdk`` fed by a client."""
    env = {"III_URL": engine.url}
    server = await procs.start(python, str(SCRIPT), f"ch{sdk}", "serve", env=env, label=f"{sdk}:serve")
    web = await procs.start(python, str(SCRIPT), f"web{sdk}", "http", env=env, label=f"{sdk}:http")
    await server.key("ready", timeout=30)
    await web.key("ready", timeout=30)
    found = {}
    for role, target in (("send", f"ch{sdk}::process"), ("coordinate", f"ch{sdk}::words")):
        client = await procs.start(python, str(SCRIPT), "client", role, target, env=env, label=f"{sdk}:{role}")
        found[role] = (await client.key("result", timeout=30))["result"]
    line = await engine.proc.expect(lambda item: isinstance(item, str) and bool(_HTTP_URL.search(item)))
    base = f"{_HTTP_URL.search(line).group(1)}/web{sdk}"  # type: ignore[union-attr]
    async with aiohttp.ClientSession() as session:
        async with session.post(f"{base}/raw", data=b'{"z":2, "a":1}', headers={"content-type": "application/json"}) as r:
            found["json"] = (r.status, await r.json())
        async with session.post(f"{base}/raw", data={"name": "John Doe", "age": "30"}) as r:
            found["form"] = (r.status, await r.json())
        async with session.post(f"{base}/raw", data=MULTIPART, headers={"content-type": "multipart/form-data; boundary=XyZ"}) as r:
            found["multipart"] = (r.status, await r.json())
        async with session.get(f"{base}/sse") as r:
            found["sse"] = (r.status, r.headers["content-type"], (await r.read()).decode())
        async with session.get(f"{base}/download/1000000") as r:
            found["download"] = (r.status, r.headers["content-type"], hashlib.sha256(await r.read()).hexdigest())
        async with session.post(f"{base}/upload", data=b"u" * 300_000, headers={"content-type": "application/octet-stream"}) as r:
            found["upload"] = (r.status, await r.json(content_type=None))
    return found


async def test_channels_and_streaming_http_behave_the_same_on_both_sdks(procs, engine, official_python):
    official = await outcomes_of(procs, engine, official_python, "python")
    ours = await outcomes_of(procs, engine, sys.executable, "ours")
    assert ours == official
    # And they are the right ones, not just equal.
    assert ours["send"]["sum"] == 2567
    assert ours["coordinate"]["binary"] == {"words": ["The", "quick", "brown", "fox", "jumps"], "total": 15}
    assert ours["json"][1]["raw_body"] == '{"z":2, "a":1}'
    assert ours["form"][1]["form"] == {"name": "John Doe", "age": "30"}
    assert 'filename="handbook.pdf"' in ours["multipart"][1]["raw_body"]
    assert ours["sse"][:2] == (200, "text/event-stream") and ours["sse"][2].count("\n\n") == 4
    assert ours["upload"] == (201, {"received_size": 300_000, "sha256": hashlib.sha256(b"u" * 300_000).hexdigest()})
