"""HTTP (``iii-http``): the ``http`` trigger type, an HTTP server (``_http_server``) calling functions.

A route is ``METHOD + api_path`` (``:name`` segments are path parameters). A JSON request's body
(``Content-Type`` containing ``application/json``), and any body already received whole, is read
first (within ``body_read_timeout_ms``, at most ``max_body_bytes``); only then does the request
take one of the ``concurrency_request_limit`` slots, so clients trickling their bodies hold no
slot. It then runs the global middlewares, the route's condition, its middlewares, then the
function, which gets ``{query_params, path_params, headers, path, method, body, trigger,
request_body, response}``. Every call a request makes carries the request's deadline
(``default_timeout`` after its body is in), so when it expires the engine has already forgotten
the call.

Two data channels per request carry bytes (as the original does; each is made only when the
function opens it, which most never do): ``request_body`` (a read ref)
has the raw body for any content type, in frames of at most 64 KiB; ``body`` is the parsed JSON
for JSON requests and ``null`` otherwise (forms, multipart, files: the handler reads
``request_body``). Other bodies are not read up front: they are pumped into the channel once the
function opens it, as fast as it reads it (never whole in memory, no size cap). ``response`` (a
write ref) lets the function stream its answer: text frames ``{"type": "set_status",
"status_code"}`` / ``{"type": "set_headers", "headers"}`` first, then binary frames (the body,
sent on as they come, chunked: SSE, downloads), then close. A function that returns a non-null
value instead answers ``{status_code?, headers?, body?}`` (a buffered response). The deadline
holds until the response starts; a streamed body may then run as long as its writer writes.

Engine errors answer ``{"error": {"code", "message"}}``: 400 a malformed request or a JSON body
that does not parse, 404 no route, 408 a body not received in time, 413 a body too large, 422
condition not met, 500 failed call, 504 timeout. Bad client input is logged once per connection
and kind (then only counted).
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections import deque
from typing import Annotated, Any, Callable, Optional, Union

import msgspec
from msgspec import Meta

from iii import codec
from iii.engine.host import (
    Binding,
    Channel,
    ChannelReaderEnd,
    ChannelRegistry,
    ChannelWriterEnd,
    Text,
    BuiltinModule,
    ErrorBody,
    Host,
    MetricFamily,
    Provider,
    TimeoutMs,
    call,
    condition_passes,
    json_schema,
)
from iii.modules._http_server import FRAMING_HEADERS, BodyTooLarge, Request, Response, serve
from iii.protocol import ErrorCode

__all__ = ["MODULE", "HttpConfig", "install"]

NAME = "iii-http"
log = logging.getLogger("iii.modules")

_METHODS = frozenset({"GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS"})
#: Request body frames put into a ``request_body`` channel are at most this large.
_BODY_FRAME = 64 * 1024
_TOKEN_CHARS = frozenset(b"!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")


class CorsConfig(msgspec.Struct, forbid_unknown_fields=True):
    allowed_origins: list[str] = []
    allowed_methods: list[str] = []


class GlobalMiddleware(msgspec.Struct, forbid_unknown_fields=True):
    function_id: str
    phase: str = "preHandler"
    priority: int = 0


class HttpConfig(msgspec.Struct, forbid_unknown_fields=True):
    """The ``iii-http`` entry's ``config``."""

    port: Annotated[int, Meta(ge=0, le=65535)] = 3111
    host: str = "0.0.0.0"
    #: Whole-request timeout, ms, counted once the body is in (waiting for a slot included): the
    #: deadline of every call a request makes.
    default_timeout: TimeoutMs = 30000
    concurrency_request_limit: Annotated[int, Meta(ge=1)] = 1024
    #: Absent: any origin, method and header.
    cors: Union[CorsConfig, None] = None
    middleware: list[GlobalMiddleware] = []
    #: Time allowed to receive a body read whole (JSON), ms (then 408).
    body_read_timeout_ms: Annotated[int, Meta(ge=1)] = 10_000
    #: The largest body read whole (JSON), bytes (a larger one: 413). Other bodies stream
    #: through ``request_body`` at the handler's pace and are not capped.
    max_body_bytes: Annotated[int, Meta(ge=0)] = 16 * 1024 * 1024


class HttpTriggerConfig(msgspec.Struct):
    """The ``http`` trigger's config: a route."""

    api_path: Union[str, None] = None
    http_method: Annotated[str, Meta(description="GET, POST, PUT, DELETE, PATCH, HEAD or OPTIONS")] = "GET"
    condition_function_id: Union[str, None] = None
    middleware_function_ids: list[str] = []


class Route:
    def __init__(self, binding: Binding, config: HttpTriggerConfig) -> None:
        self.binding = binding
        self.config = config
        self.method = config.http_method.upper()
        self.path = (config.api_path or "").lstrip("/")
        self.segments = self.path.split("/")
        #: The route's shape: literal segments kept, parameters as ``None``.
        self.shape = tuple(None if s.startswith(":") else s for s in self.segments)
        #: The ``trigger`` member of every request it gets.
        self.trigger = {"type": "http", "path": config.api_path, "method": self.method}

    def match(self, segments: list[str]) -> Optional[dict[str, str]]:
        if len(segments) != len(self.segments):
            return None
        params = {}
        for pattern, value in zip(self.segments, segments, strict=True):
            if pattern.startswith(":"):
                params[pattern[1:]] = value
            elif pattern != value:
                return None
        return params


class Routes(Provider[HttpTriggerConfig]):
    """The ``http`` trigger type: bindings become routes."""

    def __init__(self, host: Host, timeout_ms: int) -> None:
        super().__init__(host, HttpTriggerConfig, timeout_ms, self._check)
        #: (method, path) -> route
        self.routes: dict[tuple[str, str], Route] = {}

    @staticmethod
    def _check(config: HttpTriggerConfig) -> Optional[str]:
        if not config.api_path or not config.api_path.strip():
            return "api_path is required for http triggers"
        return None

    def register(self, binding: Binding) -> Optional[str]:
        refusal = super().register(binding)
        if refusal is not None:
            return refusal
        route = Route(binding, self.bindings[binding.id][1])
        if route.method not in _METHODS:
            log.warning("http trigger %s: method %s is not served", binding.id, route.method)
            return None
        for (method, path), other in self.routes.items():
            if method == route.method and other.shape == route.shape and path != route.path:
                super().unregister(binding)
                return (
                    f"Route '{route.method} {route.path}' conflicts with already-registered route "
                    f"'{method} {path}': routes with identical structure but different path-parameter "
                    "names are not supported"
                )
        self.routes[(route.method, route.path)] = route  # the same identity: last writer wins
        return None

    def unregister(self, binding: Binding) -> None:
        entry = self.bindings.get(binding.id)
        super().unregister(binding)
        if entry is None:
            return
        key = (entry[1].http_method.upper(), (entry[1].api_path or "").lstrip("/"))
        route = self.routes.get(key)
        if route is not None and route.binding.id == binding.id:
            del self.routes[key]

    def find(self, method: str, path: str) -> Optional[tuple[Route, dict[str, str]]]:
        """The most specific route for a request (literal segments beat parameters)."""
        path = path.lstrip("/")
        exact = self.routes.get((method, path))
        if exact is not None and None not in exact.shape:  # all literal: none is more specific
            return exact, {}
        segments = path.split("/")
        found = [
            (route, params) for route in self.routes.values()
            if route.method == method and (params := route.match(segments)) is not None
        ]
        if not found:
            return None
        return min(found, key=lambda pair: tuple(s is None for s in pair[0].shape))


def _error(status: int, code: str, message: str, **extra: Any) -> Response:
    error: dict[str, Any] = {"code": code, "message": message}
    if status >= 500:
        error["error_id"] = secrets.token_hex(4)
    return Response(status, codec.encode_json({"error": error, **extra}), {"Content-Type": "application/json"})


def _failure(error: ErrorBody) -> Response:
    """A failed call: 504 when it got no answer before its deadline, else 500."""
    return _error(504 if error.code == ErrorCode.TIMEOUT else 500, error.code, error.message)


def _headers_of(value: Any) -> dict[str, str]:
    """A function's response headers (a dict, or ``"name: value"`` strings); any a handler may
    not set (framing, line breaks, a name that is not a token) is left out."""
    headers = {}
    if isinstance(value, dict):
        for name, text in value.items():
            if isinstance(text, (str, int, float)):
                headers[str(name)] = str(text)
    elif isinstance(value, list):
        for entry in value:
            if isinstance(entry, str) and ":" in entry:
                name, _, text = entry.partition(":")
                headers[name.strip()] = text.strip()
    return {name: text for name, text in headers.items() if _valid_header(name, text)}


def buffered_response(value: Any) -> Response:
    """The HTTP response for what a function (or a responding middleware) returned."""
    if not isinstance(value, dict):
        value = {}
    status = value.get("status_code", 200)
    if isinstance(status, bool) or not isinstance(status, int) or not 100 <= status <= 599:
        status = 200
    given = value.get("headers")
    headers = _headers_of(given) if given else {}
    body = value.get("body", {})
    if headers and any(k.lower() == "content-type" for k in headers):
        if isinstance(body, str):
            data = body.encode()
        elif body is None:
            data = b""
        else:
            data = codec.encode_json(body)
    else:
        data = codec.encode_json(body)
        headers["Content-Type"] = "application/json"
    return Response(status, data, headers)


class _ResponseStart:
    """A streamed response's status and headers, from the function's control messages."""

    __slots__ = ("status", "headers")

    def __init__(self) -> None:
        self.status = 200
        self.headers: dict[str, str] = {}

    def control(self, text: bytes) -> None:
        """Apply one control message (anything else, or an invalid value, is ignored)."""
        try:
            message = codec.decode_json(text)
        except (codec.DecodeError, RecursionError):
            return
        if not isinstance(message, dict):
            return
        kind = message.get("type")
        if kind == "set_status":
            status = message.get("status_code")
            if isinstance(status, int) and not isinstance(status, bool) and 100 <= status <= 599:
                self.status = status
        elif kind == "set_headers" and isinstance(message.get("headers"), dict):
            for name, value in message["headers"].items():
                if isinstance(value, str) and _valid_header(name, value):
                    self.headers[name] = value


def _valid_header(name: str, value: str) -> bool:
    """A header a handler may set: a token name, a value without line breaks, not framing."""
    return (
        bool(name) and name.isascii() and all(c in _TOKEN_CHARS for c in name.encode())
        and name.lower() not in FRAMING_HEADERS and "\r" not in value and "\n" not in value and "\0" not in value
    )


class _Exchange:
    """One call of a request's function: its answer, and its two channels, made only if the
    function opens them (most never do). One future is woken by whichever comes first: the
    answer, or an item on the response channel (a buffered answer costs one future, as a plain
    call does); or, on the fast path, :attr:`notify` is called instead, once."""

    __slots__ = (
        "done", "result", "error", "reader", "notify", "deadline", "_request", "_raw", "_loop", "_wake", "_pump",
        "_request_channel", "_response_channel",
    )

    def __init__(
        self, request: Request, raw: Optional[bytes], loop: asyncio.AbstractEventLoop, deadline: float
    ) -> None:
        self.done = False
        #: The request's deadline, on the loop's clock.
        self.deadline = deadline
        self.result = b"null"
        self.error: Optional[ErrorBody] = None
        #: The engine's end of the response channel, once the function opened it.
        self.reader: Optional[ChannelReaderEnd] = None
        #: Called (once, then cleared) at the answer or the response channel's opening, in
        #: place of waking a future: the fast path has no task waiting.
        self.notify: Optional[Callable[[], None]] = None
        self._request = request
        #: The body when it was read whole (else it is pumped in as the function reads it).
        self._raw = raw
        self._loop = loop
        self._wake: Optional[asyncio.Future[None]] = None
        self._pump: Optional[asyncio.Task[None]] = None
        self._request_channel: Optional[Channel] = None
        self._response_channel: Optional[Channel] = None

    def answered(self, result: bytes, error: Optional[ErrorBody]) -> None:
        if self.done:
            return
        self.done = True
        self.result = result
        self.error = error
        if self._notified():
            return
        wake = self._wake
        if wake is not None and not wake.done():
            wake.set_result(None)

    def request_opened(self, channel: Channel) -> None:
        """The function reads its ``request_body``: the body goes in."""
        self._request_channel = channel
        raw = self._raw
        if raw is None:  # it comes in as the function reads it
            self._pump = self._loop.create_task(_pump_body(self._request, ChannelWriterEnd(channel)))
            return
        for start in range(0, len(raw), _BODY_FRAME):
            channel.push(raw[start:start + _BODY_FRAME])
        channel.release_writer()

    def response_opened(self, channel: Channel) -> None:
        """The function opened its ``response``: the engine reads it from now on."""
        self._response_channel = channel
        self.reader = reader = ChannelReaderEnd(channel)
        if self._notified():
            return
        wake = self._wake
        if wake is not None and not wake.done():
            reader.wake(wake)

    def _notified(self) -> bool:
        """Call :attr:`notify` (once) if set; whether it was (then no future is woken)."""
        notify = self.notify
        if notify is None:
            return False
        self.notify = None
        notify()
        return True

    def next_event(self) -> asyncio.Future[None]:
        """A future done at the answer, the response channel's opening or its next item (or end)."""
        self._wake = wake = self._loop.create_future()
        if self.reader is not None:
            self.reader.wake(wake)
        return wake

    def close(self, channels: ChannelRegistry) -> None:
        """The request is answered: whatever the function opened goes."""
        if self._pump is not None:
            self._pump.cancel()
        if self._request_channel is not None:
            self._request_channel.release_writer()
            channels.remove(self._request_channel)
        if self.reader is not None:
            self.reader.close()
        if self._response_channel is not None:
            channels.remove(self._response_channel)


async def _pump_body(request: Request, writer: ChannelWriterEnd) -> None:
    """Feed a request's body into its ``request_body`` channel as it arrives, at the pace the
    function reads it; end the channel at the end of the body (or when the client fails)."""
    try:
        async for chunk in request.chunks(_BODY_FRAME):
            if not await writer.write(chunk):
                return  # the function's reader left
    except Exception as exc:  # the client failed or left mid-body: the reader sees the end
        log.debug("iii-http: a request body ended early: %s", exc)
    finally:
        writer.close()


def _refuse(request: Request, status: int, code: str, message: str) -> Response:
    return request.connection.refuse(status, code, message)


def _too_large(request: Request, limit: int) -> Response:
    return _refuse(request, 413, "BODY_TOO_LARGE", f"The body is larger than {limit} bytes")


def _returned_answer(exchange: _Exchange) -> Optional[Response]:
    """The answer of a call that returned: its error's, or its value buffered; ``None`` when it
    returned null (its response comes on the ``response`` channel)."""
    if exchange.error is not None:
        return _failure(exchange.error)
    result = codec.decode_json(exchange.result)
    return buffered_response(result) if result is not None else None


class _Slots:
    """The request slots: a count, and the requests waiting for one (first come, first served)."""

    __slots__ = ("_size", "_free", "_waiting")

    def __init__(self, size: int) -> None:
        self._size = size
        self._free = size
        self._waiting: deque[asyncio.Future[None]] = deque()

    @property
    def idle(self) -> bool:
        """No slot is taken: no request is in flight."""
        return self._free == self._size

    @property
    def alone(self) -> bool:
        """One slot is taken (the asker's own): no other request is in flight."""
        return self._free == self._size - 1

    def take_now(self) -> bool:
        """Take a slot if one is free and nobody waits for it."""
        if self._free and not self._waiting:
            self._free -= 1
            return True
        return False

    async def take(self) -> None:
        """Wait for a slot (a waiter that gives up leaves its place; one handed a slot as it
        gave up passes the slot on)."""
        waiter = asyncio.get_running_loop().create_future()
        self._waiting.append(waiter)
        try:
            await waiter
        except BaseException:
            if waiter.done() and not waiter.cancelled():
                self.give()
            raise

    def give(self) -> None:
        """Return a slot: to the first request still waiting, else to the count."""
        while self._waiting:
            waiter = self._waiting.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return
        self._free += 1


class HttpServer:
    """The module: the routes and the server that serves them."""

    def __init__(self, host: Host, config: HttpConfig) -> None:
        self._host = host
        self.config = config
        self.routes = Routes(host, config.default_timeout)
        self._slots = _Slots(config.concurrency_request_limit)
        self._middleware = sorted(config.middleware, key=lambda m: m.priority)
        self._stop: Optional[Any] = None
        # Python 3.11's asyncio.get_running_loop() makes a getpid() system call: the loop is
        # kept at start instead of looked up several times per request.
        self._loop: asyncio.AbstractEventLoop
        self.url: Optional[str] = None
        #: ``(method, route, status)`` -> requests answered (route ``""``: none matched).
        self.answered: dict[tuple[str, str, int], int] = {}

    async def start(self) -> None:
        # Debug logging is decided once: with it off, requests pay nothing for it.
        self._loop = asyncio.get_running_loop()
        debug = log.isEnabledFor(logging.DEBUG)
        handler = self._handle_logged if debug else self._handle
        # The fast path serves requests that call their function and nothing before it.
        fast = None if debug or self._middleware else self._take
        try:
            server, self._stop = await serve(handler, _error, self.config.host, self.config.port, fast)
        except OSError as exc:  # the engine serves its workers even when this port is taken
            log.error("iii-http: cannot listen on %s:%s (%s): http triggers are not served",
                      self.config.host, self.config.port, exc.strerror)
            return
        host, port = server.sockets[0].getsockname()[:2]
        self.url = f"http://{host}:{port}"
        log.info("iii-http listening on %s", self.url)

    async def stop(self) -> None:
        if self._stop is not None:
            await self._stop()

    async def _handle(self, request: Request) -> Optional[Response]:
        """The answer to send (``None``: it was streamed)."""
        return self._done(request, await self._respond(request))

    def _done(self, request: Request, answer: Union[Response, int]) -> Optional[Response]:
        """Count a request's answer; the answer to send, with its CORS headers (``None``: it was
        streamed)."""
        if type(answer) is int:  # streamed: its headers went out with its start
            status, response = answer, None
        else:
            assert isinstance(answer, Response)
            self._cors(request, answer.headers)
            status, response = answer.status, answer
        key = (request.method, request.route, status)
        self.answered[key] = self.answered.get(key, 0) + 1
        return response

    async def _handle_logged(self, request: Request) -> Optional[Response]:
        """:meth:`_handle`, logging each request (served in its place at ``--log-level debug``)."""
        began = time.perf_counter()
        response = await self._handle(request)
        found = self.routes.find(request.method, request.path)
        log.debug(
            "iii-http: %s %s?%s from %s -> %s: %s in %.2f ms", request.method, request.raw_path, request.query_string,
            request.remote, found[0].binding.function_id if found is not None else "no route",
            response.status if response is not None else "streamed", (time.perf_counter() - began) * 1000,
        )
        return response

    def metric_families(self) -> list[MetricFamily]:
        """Requests by method, route and status, for the metrics page."""
        family = MetricFamily("iii_http_requests", "counter", "HTTP requests answered (route \"\": none matched)",
                              ("method", "route", "status"))
        family.samples = [((method, route, str(status)), count) for (method, route, status), count in self.answered.items()]
        return [family]

    async def _respond(self, request: Request) -> Union[Response, int]:
        """The answer to send, or the status of the one streamed already."""
        method = request.method  # upper case: the parser accepts only known methods
        found = self.routes.find(method, request.path)
        if found is None:
            if method == "OPTIONS" and "access-control-request-method" in request.headers:
                return Response(204)  # a CORS preflight (headers added by _cors)
            return _error(404, "NOT_FOUND", "Not Found")
        route, path_params = found
        request.route = route.path
        is_json = "application/json" in request.headers.get("content-type", "")
        raw: Optional[bytes] = None
        if is_json or request.body_complete:  # read whole: JSON, or a body already all in
            read = self._body_now(request) if request.body_complete else await self._body(request)
            if not isinstance(read, bytes):
                return read
            raw = read
        fields = self._fields(request, route, path_params, raw, is_json)
        if type(fields) is not dict:
            return fields
        deadline = self._loop.time() + self.config.default_timeout / 1000
        slots = self._slots
        if not slots.take_now():  # wait for a slot, not past the deadline (no timer when one is free)
            try:
                async with asyncio.timeout_at(deadline):
                    await slots.take()
            except TimeoutError:
                return _error(504, "TIMEOUT", f"No request slot was free within {self.config.default_timeout} ms")
        try:
            return await self._run(request, route, fields, raw, deadline)
        except RecursionError:  # a body at the decoder's depth limit, one level deeper here
            return _refuse(request, 400, "INVALID_JSON", "The body's JSON is nested too deeply")
        finally:
            slots.give()

    @staticmethod
    def _fields(
        request: Request, route: Route, path_params: dict[str, str], raw: Optional[bytes], is_json: bool,
    ) -> Union[dict[str, Any], Response]:
        """What the function gets (its channel refs added later), or the answer to a JSON body
        that does not parse."""
        body = None
        if raw and is_json:
            try:
                body = codec.decode_json(raw)
            except codec.DecodeError as exc:
                return _refuse(request, 400, "INVALID_JSON", f"The body is not valid JSON: {exc}")
            except RecursionError:
                return _refuse(request, 400, "INVALID_JSON", "The body's JSON is nested too deeply")
        return {
            "query_params": request.query,
            "path_params": path_params,
            "headers": request.headers,
            "path": route.config.api_path,
            "method": route.method,
            "body": body,
            "trigger": route.trigger,
        }

    def _body_now(self, request: Request) -> Union[bytes, Response]:
        """The body of a request whose body is all in (no body, a small one): no timer."""
        limit = self.config.max_body_bytes
        length = request.content_length
        if length is None or length <= limit:  # else said so up front: not worth reading
            whole = request.take_body()
            if len(whole) <= limit:
                return whole
        response = _too_large(request, limit)
        response.close = True  # the rest of the body is not read: this connection cannot go on
        return response

    async def _body(self, request: Request) -> Union[bytes, Response]:
        """The body of a request whose body is still coming, or the answer when it is too large
        or does not come in time."""
        limit = self.config.max_body_bytes
        length = request.content_length
        try:
            if length is not None and length > limit:  # said so up front: not worth reading
                response = _too_large(request, limit)
            else:
                async with asyncio.timeout(self.config.body_read_timeout_ms / 1000):
                    return await request.read(limit)
        except BodyTooLarge:  # a chunked body that grew too large
            response = _too_large(request, limit)
        except TimeoutError:
            response = _refuse(
                request, 408, "BODY_TIMEOUT", f"The body was not received within {self.config.body_read_timeout_ms} ms"
            )
        response.close = True  # the rest of the body is not read: this connection cannot go on
        return response

    def _remaining_ms(self, deadline: float) -> int:
        return max(1, int((deadline - self._loop.time()) * 1000))

    async def _run(
        self, request: Request, route: Route, fields: dict[str, Any], raw: Optional[bytes], deadline: float,
    ) -> Union[Response, int]:
        if self._loop.time() >= deadline:  # spent waiting for a slot: call nobody
            return _error(504, "TIMEOUT", f"No request slot was free within {self.config.default_timeout} ms")
        binding = route.binding
        namespace = binding.namespace
        middleware_payload = b""
        if self._middleware or route.config.middleware_function_ids:  # the same for each of them
            middleware_payload = codec.encode_json({
                "phase": "preHandler",
                "request": {
                    "path_params": fields["path_params"], "query_params": fields["query_params"],
                    "headers": fields["headers"], "method": route.method,
                },
                "context": {},
            })
        for middleware in self._middleware:
            answer = await self._middleware_answer(namespace, middleware.function_id, middleware_payload, deadline)
            if answer is not None:
                return answer
        condition = route.config.condition_function_id
        if condition:
            passed, error = await condition_passes(
                self._host, namespace, condition, codec.encode_json(fields), timeout_ms=self._remaining_ms(deadline)
            )
            if error is not None:
                return _failure(error)
            if not passed:
                return _error(422, "CONDITION_NOT_MET", "Request condition not met", skipped=True)
        for function_id in route.config.middleware_function_ids:
            answer = await self._middleware_answer(namespace, function_id, middleware_payload, deadline)
            if answer is not None:
                return answer
        exchange, request_id, response_id = self._call(request, route, fields, raw, deadline)
        try:
            return await self._answer(request, exchange, deadline)
        finally:
            self._close_exchange(exchange, request_id, response_id)

    def _call(
        self, request: Request, route: Route, fields: dict[str, Any], raw: Optional[bytes], deadline: float,
        notify: Optional[Callable[[_Exchange, str, str], None]] = None, timeout_ms: Optional[int] = None,
    ) -> tuple[_Exchange, str, str]:
        """Call the route's function with ``fields`` and the two channel refs; the exchange that
        gets its answer and the two channels' ids. ``notify(exchange, request_id, response_id)``,
        if given, stands for the exchange's future (see :attr:`_Exchange.notify`);
        ``timeout_ms``: the call's, when the caller knows it is all the time to the deadline."""
        channels = self._host.channels
        exchange = _Exchange(request, raw, self._loop, deadline)
        request_id, request_key = channels.promise(exchange.request_opened)
        response_id, response_key = channels.promise(exchange.response_opened)
        fields["request_body"] = {"channel_id": request_id, "access_key": request_key, "direction": "read"}
        fields["response"] = {"channel_id": response_id, "access_key": response_key, "direction": "write"}
        if notify is not None:
            exchange.notify = lambda: notify(exchange, request_id, response_id)
        binding = route.binding
        try:
            self._host.invoke(
                binding.namespace, binding.function_id, codec.encode_json(fields), binding.metadata or b"",
                exchange.answered, timeout_ms=self._remaining_ms(deadline) if timeout_ms is None else timeout_ms,
                # alone: written now, not at the end of the loop turn with others (none come)
                batched=not self._slots.alone,
            )
        except BaseException:
            exchange.notify = None
            self._close_exchange(exchange, request_id, response_id)
            raise
        return exchange, request_id, response_id

    def _close_exchange(self, exchange: _Exchange, request_id: str, response_id: str) -> None:
        """A call's answer is in: its channels go."""
        channels = self._host.channels
        channels.withdraw(request_id)
        channels.withdraw(response_id)
        exchange.close(channels)

    # -------------------------------------------------------------- the fast path

    def _take(self, request: Request) -> bool:
        """The fast path (``serve``'s ``fast``): a request whose body is in, for a route without
        a condition or middlewares, when no other request is in flight, is answered without a
        task: its call is written now and its buffered answer sent from the callback that gets
        it (a streamed answer goes on in a task). ``False`` leaves the request to
        :meth:`_handle`, untouched. Under load the tasks' later start is worth more: the calls
        of many requests leave in one write, and the worker takes them in bigger batches (64
        in flight: more requests/s than with this path)."""
        slots = self._slots
        if not slots.idle:
            return False
        found = self.routes.find(request.method, request.path)
        if found is None:
            return False
        route, path_params = found
        config = route.config
        if config.condition_function_id or config.middleware_function_ids or not slots.take_now():
            return False
        request.route = route.path
        connection = request.connection
        try:
            raw = self._body_now(request)
            if type(raw) is bytes:
                is_json = "application/json" in request.headers.get("content-type", "")
                fields = self._fields(request, route, path_params, raw, is_json)
                if type(fields) is dict:
                    timeout_ms = self.config.default_timeout
                    deadline = self._loop.time() + timeout_ms / 1000
                    self._call(request, route, fields, raw, deadline, self._settled, timeout_ms)
                    return True
                answer = fields
            else:
                answer = raw
        except RecursionError:  # a body at the decoder's depth limit, one level deeper here
            answer = _refuse(request, 400, "INVALID_JSON", "The body's JSON is nested too deeply")
        except Exception:
            slots.give()
            connection.failed(request)
            return True
        slots.give()
        connection.finish(request, self._done(request, answer))  # type: ignore[arg-type]
        return True

    def _settled(self, exchange: _Exchange, request_id: str, response_id: str) -> None:
        """A fast-path call answered, or opened its response channel first: a buffered answer is
        sent now, a streamed one (or one not known yet) goes on in a task."""
        request = exchange._request
        connection = request.connection
        answer: Optional[Response] = None
        try:
            if exchange.reader is None:  # answered, the response channel not opened
                answer = _returned_answer(exchange)
        except Exception:
            self._release(exchange, request_id, response_id)
            connection.failed(request)
            return
        if answer is None:  # streamed on the response channel
            connection.go_on(request, lambda request: self._stream_on(request, exchange, request_id, response_id))
            return
        self._release(exchange, request_id, response_id)
        connection.finish(request, self._done(request, answer))  # type: ignore[arg-type]

    async def _stream_on(
        self, request: Request, exchange: _Exchange, request_id: str, response_id: str
    ) -> Optional[Response]:
        """The rest of a fast-path request whose answer is streamed, in its task."""
        try:
            answer = await self._answer(request, exchange, exchange.deadline)
        finally:
            self._release(exchange, request_id, response_id)
        return self._done(request, answer)

    def _release(self, exchange: _Exchange, request_id: str, response_id: str) -> None:
        """A fast-path request is answered: its channels and its slot go."""
        self._close_exchange(exchange, request_id, response_id)
        self._slots.give()

    async def _answer(
        self, request: Request, exchange: _Exchange, deadline: float
    ) -> Union[Response, int]:
        """The function's answer: a buffered response when it returns a value, else the one it
        streams on its ``response`` channel (which also wins when it starts first)."""
        start = _ResponseStart()
        while True:  # until the function answers or the response starts
            reader = exchange.reader
            if reader is not None and reader.ready:
                item = reader.take()
                if item is None or type(item) is not Text:
                    return await self._stream(request, start, item, reader)
                start.control(item)
            elif exchange.done:
                answer = _returned_answer(exchange)
                if answer is not None:
                    return answer
                break
            else:
                await exchange.next_event()
        try:  # it returned null: its response comes on the channel, before the deadline
            async with asyncio.timeout_at(deadline):
                while (reader := exchange.reader) is None:
                    await exchange.next_event()
                while (item := await reader.next()) is not None and type(item) is Text:
                    start.control(item)
        except TimeoutError:
            return _error(504, "TIMEOUT", f"The response did not start within {self.config.default_timeout} ms")
        return await self._stream(request, start, item, reader)

    async def _stream(
        self, request: Request, start: _ResponseStart, first: Optional[bytes], reader: ChannelReaderEnd
    ) -> int:
        """Send the streamed response: status and headers, ``first``, then every binary frame
        as it comes (chunked) until the channel ends; its status."""
        self._cors(request, start.headers)
        stream = request.connection.stream(request, start.status, start.headers)
        try:
            if first is not None:
                await stream.write(first)
                while (item := await reader.next()) is not None:
                    if type(item) is not Text:  # control messages after the start mean nothing
                        await stream.write(item)
            stream.finish()
        except ConnectionError:  # the client left: the writer is cut off with the channel
            pass
        return start.status

    async def _middleware_answer(
        self, namespace: str, function_id: str, payload: bytes, deadline: float
    ) -> Optional[Response]:
        """Run one middleware; a response when it answers the request itself, else ``None``."""
        result, error = await call(self._host, namespace, function_id, payload, timeout_ms=self._remaining_ms(deadline))
        if error is not None:
            if error.code == ErrorCode.TIMEOUT:
                return _error(504, "MIDDLEWARE_TIMEOUT", "Middleware timeout")
            return _failure(error)
        if isinstance(result, dict) and result.get("action") == "respond":
            return buffered_response(result.get("response"))
        return None

    def _cors(self, request: Request, headers: dict[str, str]) -> None:
        """Add the CORS headers an answer to ``request`` gets."""
        origin = request.headers.get("origin")
        if origin is None:
            return
        cors = self.config.cors
        origins = cors.allowed_origins if cors is not None else []
        if origins and "*" not in origins and origin not in origins:
            return
        headers["Access-Control-Allow-Origin"] = origin
        headers["Vary"] = "Origin"
        if request.method == "OPTIONS":
            methods = (cors.allowed_methods if cors is not None else []) or sorted(_METHODS)
            headers["Access-Control-Allow-Methods"] = ", ".join(methods)
            requested = request.headers.get("access-control-request-headers")
            if requested:
                headers["Access-Control-Allow-Headers"] = requested


_REQUEST_FORMAT = {
    "type": "object",
    "properties": {
        "query_params": {"type": "object"}, "path_params": {"type": "object"}, "headers": {"type": "object"},
        "path": {"type": "string"}, "method": {"type": "string"}, "body": {},
    },
}


def install(host: Host, config: Optional[HttpConfig] = None) -> HttpServer:
    """Register the ``http`` trigger type; the engine then awaits ``start()``."""
    server = HttpServer(host, config or HttpConfig())
    host.add_metric_source(server.metric_families)
    host.add_trigger_type(
        "http",
        server.routes,
        module=NAME,
        description="Calls the function for HTTP requests to a path",
        trigger_request_format=json_schema(HttpTriggerConfig, required=("api_path",)),
        call_request_format=_REQUEST_FORMAT,
    )
    return server


MODULE = BuiltinModule(NAME, "HTTP server calling functions (the http trigger)", HttpConfig, install)
