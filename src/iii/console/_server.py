"""The console's HTTP server (aiohttp): the page, the calls it makes, its live notices.

Routes:

- ``GET /`` and ``GET /static/*``: the page (files shipped in ``iii/console/static``).
- ``GET /api/config``: the endpoints this console was given and its connection state.
- ``POST /api/call`` ``{function_id, payload?, timeout_ms?}``: one call through the console's
  worker; always 200 with ``{ok, result | error: {code, message}, latency_ms}``.
- ``POST /api/cron`` ``{expressions: [...]}``: each expression's next run (UTC, ISO 8601) as the
  engine's cron module computes it, or ``null`` when it does not parse.
- ``GET /api/worker-output?name=NAME``: the last lines of a worker's stdout and stderr as the
  engine's worker manager keeps them (``iii worker logs``), when the engine runs on this machine.
- ``GET /api/live``: WebSocket of change notices ``{topic, detail}`` (see :mod:`._link`).
- ``GET /ws/streams``: a pipe to the engine's stream WebSocket (``--ws-port``), so the page can
  join a stream group and see its changes.

The console can call any function, so it answers only its own pages: when bound to a loopback
address the ``Host`` header must name it (no DNS rebinding), and a request carrying an
``Origin`` must come from the console's own origin (no cross-site calls or sockets); calls must be
``application/json`` (which a cross-site form cannot send without a preflight, never answered).
"""

from __future__ import annotations

import asyncio
import datetime
import logging
import re
import signal
import time
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Awaitable, Callable, Optional

import aiohttp
import msgspec
from aiohttp import web
from croniter import croniter

from iii._version import __version__
from iii.console._link import EngineLink, LiveHub
from iii.errors import IIIError, InvocationError
from iii.manager.supervisor import logs_root
from iii.modules.cron import parse_expression  # the engine's reading of an expression

__all__ = ["ConsoleOptions", "make_app", "serve"]

log = logging.getLogger("iii.console")

STATIC = Path(__file__).parent / "static"
#: The largest request body (a function's input) and stream message the console passes on.
MAX_BODY_BYTES = 10 * 1024 * 1024
#: The longest a call made for the page may wait.
MAX_CALL_TIMEOUT_MS = 60_000
_LOOPBACK = ("127.0.0.1", "localhost", "::1", "[::1]")
#: A worker name that is one path component (it names its log directory).
_LOG_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
_TAIL_LINES = 20
_TAIL_BYTES = 64 * 1024


@dataclass(frozen=True)
class ConsoleOptions:
    """Where the console listens and where the engine is (the original's flags and defaults)."""

    host: str = "127.0.0.1"
    port: int = 3113
    engine_host: str = "127.0.0.1"
    #: The engine's HTTP module (shown in the route table).
    engine_port: int = 3111
    #: The engine's stream WebSocket (``/ws/streams`` pipes to it).
    ws_port: int = 3112
    #: The engine's worker WebSocket (the console's worker connects to it).
    bridge_port: int = 49134

    @property
    def engine_url(self) -> str:
        return f"ws://{self.engine_host}:{self.bridge_port}"


class CallRequest(msgspec.Struct, forbid_unknown_fields=True):
    function_id: str
    payload: Any = None
    timeout_ms: int = 5000


class CronRequest(msgspec.Struct, forbid_unknown_fields=True):
    expressions: list[str]


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
OPTIONS = web.AppKey("options", ConsoleOptions)
LINK = web.AppKey("link", EngineLink)
HUB = web.AppKey("hub", LiveHub)
#: The pages' open sockets: closed at shutdown, so stopping never waits for a browser to leave.
SOCKETS: web.AppKey["weakref.WeakSet[web.WebSocketResponse]"] = web.AppKey("sockets")


def make_app(options: ConsoleOptions, link: EngineLink, hub: LiveHub) -> web.Application:
    """The console's aiohttp application (the engine link is started by :func:`serve`)."""
    app = web.Application(client_max_size=MAX_BODY_BYTES, middlewares=[_same_origin_only(options)])
    app[OPTIONS] = options
    app[LINK] = link
    app[HUB] = hub
    app[SOCKETS] = weakref.WeakSet()
    app.on_shutdown.append(_close_sockets)
    app.on_response_prepare.append(_security_headers)
    app.router.add_get("/", _index)
    app.router.add_static("/static/", STATIC, follow_symlinks=False, append_version=False)
    app.router.add_get("/api/config", _config)
    app.router.add_post("/api/call", _call)
    app.router.add_post("/api/cron", _cron)
    app.router.add_get("/api/worker-output", _worker_output)
    app.router.add_get("/api/live", _live)
    app.router.add_get("/ws/streams", _streams_pipe)
    return app


def _same_origin_only(options: ConsoleOptions) -> Any:
    loopback_only = options.host in _LOOPBACK

    @web.middleware
    async def guard(request: web.Request, handler: Handler) -> web.StreamResponse:
        host = request.host
        if loopback_only and host.rsplit(":", 1)[0] not in _LOOPBACK:
            return web.json_response({"error": "this console answers loopback host names only"}, status=403)
        origin = request.headers.get("Origin")
        if origin is not None and origin != f"{request.scheme}://{host}":
            return web.json_response({"error": "cross-origin requests are refused"}, status=403)
        return await handler(request)

    return guard


#: The page loads and connects to nothing but this server, and no other site may frame it (a
#: framed console could be clicked into discarding dead letters).
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)


async def _security_headers(request: web.Request, response: web.StreamResponse) -> None:
    response.headers["Content-Security-Policy"] = CONTENT_SECURITY_POLICY
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Referrer-Policy"] = "no-referrer"


async def _index(request: web.Request) -> web.StreamResponse:
    response = web.FileResponse(STATIC / "index.html")
    response.headers["Cache-Control"] = "no-cache"
    return response


async def _config(request: web.Request) -> web.StreamResponse:
    options: ConsoleOptions = request.app[OPTIONS]
    link: EngineLink = request.app[LINK]
    return web.json_response({
        "version": __version__,
        "engineHost": options.engine_host,
        "enginePort": options.engine_port,
        "wsPort": options.ws_port,
        "bridgePort": options.bridge_port,
        "engineUrl": options.engine_url,
        "connection": link.state,
    })


async def _read_json(request: web.Request, struct: type) -> Any:
    if request.content_type != "application/json":
        raise web.HTTPUnsupportedMediaType(text="send application/json")
    try:
        return msgspec.json.decode(await request.read(), type=struct)
    except msgspec.ValidationError as exc:
        raise web.HTTPBadRequest(text=f"bad request: {exc}") from None
    except msgspec.DecodeError as exc:
        raise web.HTTPBadRequest(text=f"bad JSON: {exc}") from None


async def _call(request: web.Request) -> web.StreamResponse:
    call: CallRequest = await _read_json(request, CallRequest)
    link: EngineLink = request.app[LINK]
    timeout_ms = min(max(call.timeout_ms, 1), MAX_CALL_TIMEOUT_MS)
    started = time.perf_counter()
    try:
        result = await link.call(call.function_id, call.payload, timeout_ms)
    except InvocationError as exc:
        body: dict[str, Any] = {"ok": False, "error": {"code": exc.code, "message": exc.message}}
    except (IIIError, ValueError) as exc:
        body = {"ok": False, "error": {"code": type(exc).__name__, "message": str(exc)}}
    else:
        body = {"ok": True, "result": result}
    body["latency_ms"] = round((time.perf_counter() - started) * 1000, 2)
    if call.function_id.startswith(("iii::queue::", "iii::durable::")):
        request.app[HUB].publish("queues")  # no trigger tells of queue changes
    return web.Response(body=msgspec.json.encode(body), content_type="application/json")


async def _cron(request: web.Request) -> web.StreamResponse:
    cron: CronRequest = await _read_json(request, CronRequest)
    now = datetime.datetime.now(datetime.timezone.utc)
    runs: list[Optional[str]] = []
    for expression in cron.expressions[:1000]:
        try:
            upcoming = croniter(parse_expression(expression), now, second_at_beginning=True).get_next(datetime.datetime)
        except (ValueError, KeyError):
            runs.append(None)
        else:
            runs.append(upcoming.isoformat())
    return web.json_response({"next": runs})


async def _close_sockets(app: web.Application) -> None:
    sockets = app[SOCKETS]
    await asyncio.gather(
        *(ws.close(code=aiohttp.WSCloseCode.GOING_AWAY, message=b"console stopping") for ws in list(sockets)),
        return_exceptions=True,
    )


def _tail(path: Path) -> list[str]:
    """The last lines of a file, reading at most its last ``_TAIL_BYTES``."""
    try:
        with path.open("rb") as handle:
            size = handle.seek(0, 2)
            handle.seek(max(0, size - _TAIL_BYTES))
            lines = handle.read().decode(errors="replace").splitlines()
    except OSError:
        return []
    return lines[-_TAIL_LINES:] if size <= _TAIL_BYTES else lines[1:][-_TAIL_LINES:]


async def _worker_output(request: web.Request) -> web.StreamResponse:
    options: ConsoleOptions = request.app[OPTIONS]
    name = request.query.get("name", "")
    if options.engine_host not in _LOOPBACK or not _LOG_NAME.fullmatch(name) or ".." in name:
        return web.json_response({"available": False})
    directory = logs_root() / name
    if not directory.is_dir():
        return web.json_response({"available": False})
    return web.json_response({
        "available": True,
        "directory": str(directory),
        "stdout": _tail(directory / "stdout.log"),
        "stderr": _tail(directory / "stderr.log"),
    })


async def _live(request: web.Request) -> web.StreamResponse:
    hub: LiveHub = request.app[HUB]
    ws = web.WebSocketResponse(heartbeat=20, max_msg_size=4096)
    await ws.prepare(request)
    request.app[SOCKETS].add(ws)
    client = hub.subscribe()

    async def drain_incoming() -> None:  # the page sends nothing; this notices it leaving
        async for _ in ws:
            pass

    reader = asyncio.ensure_future(drain_incoming())
    try:
        while not ws.closed:
            getter = asyncio.ensure_future(client.queue.get())
            done, _ = await asyncio.wait({getter, reader}, return_when=asyncio.FIRST_COMPLETED)
            if getter not in done:
                getter.cancel()
                break
            notice = getter.result()
            if notice is None:
                break
            await asyncio.wait_for(ws.send_str(notice.decode()), 10)
    except (asyncio.TimeoutError, ConnectionError):
        pass
    finally:
        hub.unsubscribe(client)
        reader.cancel()
        await ws.close()
    return ws


async def _streams_pipe(request: web.Request) -> web.StreamResponse:
    options: ConsoleOptions = request.app[OPTIONS]
    page = web.WebSocketResponse(heartbeat=20, max_msg_size=MAX_BODY_BYTES)
    await page.prepare(request)
    request.app[SOCKETS].add(page)
    timeout = aiohttp.ClientTimeout(total=None, connect=5)
    try:
        async with aiohttp.ClientSession(timeout=timeout, trust_env=False) as session:
            async with session.ws_connect(
                f"ws://{options.engine_host}:{options.ws_port}/", heartbeat=20, max_msg_size=MAX_BODY_BYTES
            ) as engine:
                await _pipe(page, engine)
    except (aiohttp.ClientError, OSError, asyncio.TimeoutError) as exc:
        log.info("console: stream socket to the engine failed: %s", exc)
    await page.close()
    return page


async def _pipe(page: web.WebSocketResponse, engine: aiohttp.ClientWebSocketResponse) -> None:
    """Copy text and binary messages both ways until either side closes."""

    async def copy(source: Any, target: Any) -> None:
        async for message in source:
            if message.type == aiohttp.WSMsgType.TEXT:
                await target.send_str(message.data)
            elif message.type == aiohttp.WSMsgType.BINARY:
                await target.send_bytes(message.data)
            else:
                break

    tasks = [asyncio.ensure_future(copy(page, engine)), asyncio.ensure_future(copy(engine, page))]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def serve(options: ConsoleOptions, ready: Optional[Callable[[str], None]] = None) -> int:
    """Run the console until SIGINT/SIGTERM: bind the page server, then connect the worker
    (retried in the background: the page says when the engine is away).

    Args:
        options: where to listen and where the engine is.
        ready: called with the page's URL once the server listens (default: print it).

    Returns:
        The exit code: 0, or 1 when the engine refuses the console's worker (another console).
    """
    hub = LiveHub()
    link = EngineLink(options.engine_url, hub)
    runner = web.AppRunner(make_app(options, link, hub), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, options.host, options.port)
    await site.start()
    port = runner.addresses[0][1]
    shown_host = f"[{options.host}]" if ":" in options.host else options.host
    url = f"http://{shown_host}:{port}"
    link.start()
    log.info("iii console: worker %s connecting to %s", "iii-console", options.engine_url)
    (ready or (lambda shown: print(f"Console available at {shown}", flush=True)))(url)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    waits = [asyncio.ensure_future(stop.wait()), asyncio.ensure_future(link.refused.wait())]
    try:
        await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        if link.refused.is_set():
            log.error(
                "the engine at %s refused this console's worker: another iii console is connected to it "
                "(one per engine); use that one, or stop it first", options.engine_url,
            )
            return 1
    finally:
        for wait in waits:
            wait.cancel()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(signum)
        await link.stop()
        await runner.cleanup()
    return 0
