"""The HTTP/1.1 server under ``iii-http``: llhttp (httptools) on an asyncio protocol.

aiohttp's server spent about 130 µs of CPU on each request around the engine's own work (its
request and response objects, header multidicts, a task and a payload stream per request); this
one parses with the same C parser Node uses and writes each buffered answer in one
``transport.write``. It serves what ``iii-http`` needs and nothing more: requests one at a time
per connection (pipelined ones wait their turn, at most :data:`MAX_PIPELINED`), bodies read whole
or in chunks at the reader's pace, buffered answers with a ``Content-Length`` and streamed ones
chunked, keep-alive and ``Connection: close``, ``Expect: 100-continue``, ``HEAD``.

Limits: a request head larger than :data:`MAX_HEAD_BYTES` or with more than
:data:`MAX_HEADERS` headers is answered 431 and its connection closed; a request that does not
parse, 400 (also closed). A connection with no request in progress for
:data:`KEEPALIVE_S` is closed. A client that stops reading a streamed answer holds its writer at
:meth:`Stream.write` (the transport's buffer is bounded), and one that leaves makes the next
write raise :class:`ConnectionResetError`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from email.utils import formatdate
from http import HTTPStatus
from typing import AsyncIterator, Awaitable, Callable, Optional, cast
from urllib.parse import parse_qsl, unquote

import httptools

from iii.engine.host import KindCounts

__all__ = ["BodyTooLarge", "Request", "Response", "Stream", "serve"]

log = logging.getLogger("iii.modules")

MAX_HEAD_BYTES = 64 * 1024
MAX_HEADERS = 128
#: Requests parsed ahead of the one being answered before the connection stops reading.
MAX_PIPELINED = 8
#: Unread body bytes buffered for a request before the connection stops reading.
BODY_HIGH_WATER = 256 * 1024
KEEPALIVE_S = 75.0

_REASONS = {status.value: status.phrase.encode() for status in HTTPStatus}
#: Headers the server writes itself: whoever builds an answer leaves them out (iii-http's
#: ``_valid_header`` does, for every header a function sets).
FRAMING_HEADERS = frozenset({"content-length", "transfer-encoding", "connection", "keep-alive", "upgrade"})
_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
_NO_BODY_STATUSES = frozenset({204, 304})


class BodyTooLarge(Exception):
    """The body grew past the limit :meth:`Request.read` was given."""


class Response:
    """A buffered answer."""

    __slots__ = ("status", "headers", "body", "close")

    def __init__(self, status: int = 200, body: bytes = b"", headers: Optional[dict[str, str]] = None) -> None:
        self.status = status
        self.body = body
        self.headers: dict[str, str] = {} if headers is None else headers
        #: Close the connection after it (the rest of the request is not read).
        self.close = False


Handler = Callable[["Request"], Awaitable[Optional[Response]]]
#: Takes a whole request without a task, or declines it (``False``, having done nothing): see
#: :func:`serve`.
FastHandler = Callable[["Request"], bool]
ErrorAnswer = Callable[[int, str, str], Response]


class Request:
    """One request: its head, and its body as it comes."""

    __slots__ = (
        "method", "raw_path", "query_string", "headers", "keep_alive", "http11", "head", "connection", "route",
        "_chunks", "_buffered", "_complete", "_failure", "_waiter", "_continue",
    )

    def __init__(
        self, connection: _Connection, method: str, url: bytes, headers: dict[str, str], keep_alive: bool, http11: bool,
    ) -> None:
        self.connection = connection
        self.method = method
        if not url.startswith(b"/") and b"://" in url:  # absolute form (as sent to a proxy)
            parsed = httptools.parse_url(url)
            url = (parsed.path or b"/") + (b"?" + parsed.query if parsed.query else b"")
        path, _, query = url.partition(b"?")
        self.raw_path = path.partition(b"#")[0].decode("utf-8", "replace")
        self.query_string = query.partition(b"#")[0].decode("utf-8", "replace")
        #: Lower-case names; the last of repeated headers.
        self.headers = headers
        self.keep_alive = keep_alive
        #: HTTP/1.1 (a streamed answer can be chunked).
        self.http11 = http11
        #: A HEAD request: its answer has no body.
        self.head = method == "HEAD"
        #: The route it matched, for the request counts.
        self.route = ""
        self._chunks: deque[bytes] = deque()
        self._buffered = 0
        self._complete = False
        self._failure: Optional[BaseException] = None
        self._waiter: Optional[asyncio.Future[None]] = None
        self._continue = headers.get("expect", "").lower() == "100-continue"

    @property
    def path(self) -> str:
        """The path, percent-decoded (an encoded ``/`` stays ``%2F``: it is not a separator)."""
        raw = self.raw_path
        if "%" not in raw:
            return raw
        return "%2F".join(unquote(part) for part in raw.replace("%2f", "%2F").split("%2F"))

    @property
    def query(self) -> dict[str, str]:
        """The query parameters (``+`` is a space; the last of repeated names)."""
        text = self.query_string
        if not text:
            return {}
        if "%" in text or "+" in text:
            return dict(parse_qsl(text, keep_blank_values=True))
        return {name: value for name, _, value in (pair.partition("=") for pair in text.split("&") if pair)}

    @property
    def remote(self) -> str:
        return self.connection.remote

    @property
    def content_length(self) -> Optional[int]:
        value = self.headers.get("content-length")
        return int(value) if value is not None and value.isdigit() else None

    @property
    def body_complete(self) -> bool:
        """The whole body is in (or there is none)."""
        return self._complete

    def take_body(self) -> bytes:
        """The body received so far (all of it when :attr:`body_complete`)."""
        data = b"".join(self._chunks)
        self._chunks.clear()
        self._consumed(self._buffered)
        return data

    async def read(self, limit: int) -> bytes:
        """The whole body.

        Raises:
            BodyTooLarge: it grew past ``limit`` bytes.
            ConnectionResetError: the client left, or sent a body that does not parse.
        """
        parts: list[bytes] = []
        size = 0
        async for chunk in self._stream():
            size += len(chunk)
            if size > limit:
                raise BodyTooLarge
            parts.append(chunk)
        return b"".join(parts)

    async def chunks(self, size: int) -> AsyncIterator[bytes]:
        """The body in pieces of at most ``size`` bytes, as it comes."""
        async for chunk in self._stream():
            for start in range(0, len(chunk), size):
                yield chunk[start:start + size]

    async def _stream(self) -> AsyncIterator[bytes]:
        if self._continue and not self._complete:
            self._continue = False
            self.connection.write(_CONTINUE)
        while True:
            if self._chunks:
                chunk = self._chunks.popleft()
                self._consumed(len(chunk))
                yield chunk
            elif self._failure is not None:
                raise ConnectionResetError(str(self._failure))
            elif self._complete:
                return
            else:
                self._waiter = waiter = asyncio.get_running_loop().create_future()
                try:
                    await waiter
                finally:
                    self._waiter = None

    def _consumed(self, size: int) -> None:
        before = self._buffered
        self._buffered -= size
        if before >= BODY_HIGH_WATER > self._buffered:
            self.connection.body_drained()

    # -------------------------------------------------------------- fed by the connection

    def _feed(self, data: bytes) -> bool:
        """Buffer a piece of the body; ``False`` when the connection should stop reading."""
        self._chunks.append(data)
        self._buffered += len(data)
        self._wake()
        return self._buffered < BODY_HIGH_WATER

    def _finish(self) -> None:
        self._complete = True
        self._wake()

    def _fail(self, failure: BaseException) -> None:
        if not self._complete:
            self._failure = failure
            self._wake()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)


class Stream:
    """A streamed answer: the head is sent, then the body as it is written (chunked on HTTP/1.1;
    on HTTP/1.0 the end of the body is the end of the connection)."""

    __slots__ = ("_connection", "_chunked", "_bodyless", "_done")

    def __init__(self, connection: _Connection, chunked: bool, bodyless: bool) -> None:
        self._connection = connection
        self._chunked = chunked
        self._bodyless = bodyless
        self._done = False

    async def write(self, data: bytes) -> None:
        """Send a piece of the body; waits while the client is slow to read it.

        Raises:
            ConnectionResetError: the client left.
        """
        connection = self._connection
        if connection.closed:
            raise ConnectionResetError("the client left")
        if not data or self._bodyless:
            return
        connection.write(b"%x\r\n%s\r\n" % (len(data), data) if self._chunked else data)
        await connection.drain()

    def finish(self) -> None:
        """End the body (once)."""
        if self._done:
            return
        self._done = True
        if self._chunked and not self._bodyless and not self._connection.closed:
            self._connection.write(b"0\r\n\r\n")


class _Date:
    """The ``Date`` header's value, formatted once a second."""

    __slots__ = ("_second", "_value")

    def __init__(self) -> None:
        self._second = 0
        self._value = b""

    def now(self) -> bytes:
        second = int(time.time())
        if second != self._second:
            self._second = second
            self._value = formatdate(second, usegmt=True).encode()
        return self._value


_DATE = _Date()


class _HeadTooLarge(Exception):
    pass


class _Connection(asyncio.Protocol):
    """One client connection: parses requests and answers them one at a time, in order."""

    def __init__(
        self, handler: Handler, error_body: ErrorAnswer, registry: set[_Connection], fast: Optional[FastHandler] = None,
    ) -> None:
        self._handler = handler
        self._fast = fast
        self._registry = registry
        self._error_body = error_body
        self._loop = asyncio.get_running_loop()
        self._transport: Optional[asyncio.Transport] = None
        self._parser = httptools.HttpRequestParser(self)
        self.remote = ""
        self.closed = False
        #: Its bad requests by code (``None`` until one).
        self.bad_input: Optional[KindCounts] = None
        # the request being parsed
        self._url = b""
        self._headers: dict[str, str] = {}
        self._head_bytes = 0
        self._receiving: Optional[Request] = None
        #: The first request in line, held back from its handler until its body is in (then
        #: the fast handler may take it) or this read ends (then a task answers it).
        self._unstarted: Optional[Request] = None
        # requests parsed and not answered yet: the first is being answered
        self._pending: deque[Request] = deque()
        self._task: Optional[asyncio.Task[None]] = None
        self._reading = True
        self._parse_failed = False
        #: The answer to a request that did not parse, sent after those before it.
        self._refusal: Optional[Response] = None
        self._drain_waiter: Optional[asyncio.Future[None]] = None
        self._writable = True
        self._idle_since = self._loop.time()
        self._idle_timer: Optional[asyncio.TimerHandle] = None

    # -------------------------------------------------------------- transport events

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)
        peer = transport.get_extra_info("peername")
        self.remote = str(peer[0]) if isinstance(peer, tuple) else ""
        self._registry.add(self)
        self._idle_timer = self._loop.call_at(self._idle_since + KEEPALIVE_S, self._check_idle)

    def connection_lost(self, exc: Optional[BaseException]) -> None:
        self.closed = True
        self._registry.discard(self)
        if self._idle_timer is not None:
            self._idle_timer.cancel()
        failure = exc or ConnectionResetError("the client left")
        for request in self._pending:
            request._fail(failure)
        if self._receiving is not None:
            self._receiving._fail(failure)
        self._wake_drain()
        bad = self.bad_input
        if bad is not None and bad.unlogged:
            log.warning("iii-http: %d more bad requests on a connection were not logged (%s)", bad.unlogged, bad)

    def data_received(self, data: bytes) -> None:
        if self._parse_failed:
            return
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._parse_failed = True  # not served: the connection ends after this request
        except _HeadTooLarge:
            self._bad_input(431, "The request head is too large")
        except httptools.HttpParserCallbackError as exc:
            if isinstance(exc.__context__, _HeadTooLarge):
                self._bad_input(431, "The request head is too large")
            else:
                raise
        except httptools.HttpParserError as exc:
            self._bad_input(400, " ".join(str(exc).split()) or "The request does not parse")
        unstarted = self._unstarted
        if unstarted is not None:  # its body is still coming: a task answers it as it comes
            self._unstarted = None
            self._start(unstarted)

    def pause_writing(self) -> None:
        self._writable = False

    def resume_writing(self) -> None:
        self._writable = True
        self._wake_drain()

    # -------------------------------------------------------------- parser callbacks

    def on_message_begin(self) -> None:
        self._url = b""
        self._headers = {}
        self._head_bytes = 0

    def on_url(self, url: bytes) -> None:
        self._url += url
        self._head_bytes += len(url)
        if self._head_bytes > MAX_HEAD_BYTES:
            raise _HeadTooLarge

    def on_header(self, name: bytes, value: bytes) -> None:
        headers = self._headers
        self._head_bytes += len(name) + len(value)
        if self._head_bytes > MAX_HEAD_BYTES or len(headers) >= MAX_HEADERS:
            raise _HeadTooLarge
        headers[name.decode("latin-1").lower()] = value.decode("utf-8", "replace")

    def on_headers_complete(self) -> None:
        parser = self._parser
        request = Request(self, parser.get_method().decode("ascii", "replace"), self._url, self._headers,
                          parser.should_keep_alive(), parser.get_http_version() == "1.1")
        self._receiving = request
        self._pending.append(request)
        if len(self._pending) == 1:
            if self._fast is not None:
                self._unstarted = request
            else:
                self._start(request)
        elif len(self._pending) > MAX_PIPELINED:
            self._pause_reading()

    def on_body(self, body: bytes) -> None:
        request = self._receiving
        if request is not None and not request._feed(body):
            self._pause_reading()

    def on_message_complete(self) -> None:
        request = self._receiving
        if request is not None:
            self._receiving = None
            request._finish()
            if request is self._unstarted:
                self._unstarted = None
                self._start(request)

    # -------------------------------------------------------------- answering

    def _start(self, request: Request) -> None:
        fast = self._fast
        if fast is not None and request._complete and fast(request):
            return  # taken: it calls finish() (or goes on in a task) itself
        self._task = self._loop.create_task(self._answer(request, self._handler))

    def go_on(self, request: Request, handler: Handler) -> None:
        """A request the fast handler took needs a task after all (a streamed answer):
        ``handler(request)`` answers it there."""
        self._task = self._loop.create_task(self._answer(request, handler))

    async def _answer(self, request: Request, handler: Handler) -> None:
        try:
            response = await handler(request)
        except asyncio.CancelledError:
            return  # the server stops
        except Exception:
            self.failed(request)
            return
        if response is not None:
            self.respond(request, response)
        if not self._writable:  # the client reads slowly: its next request waits for it
            try:
                await self.drain()
            except ConnectionError:
                return
        self._answered(request)

    def finish(self, request: Request, response: Response) -> None:
        """Send the answer of a request the fast handler took; the next request goes on."""
        self.respond(request, response)
        if self._writable:
            self._answered(request)
        else:  # the client reads slowly: its next request waits for it (in a task)
            self._task = self._loop.create_task(self._drained(request))

    async def _drained(self, request: Request) -> None:
        try:
            await self.drain()
        except ConnectionError:
            return
        self._answered(request)

    def failed(self, request: Request) -> None:
        """Answering ``request`` raised (call from the ``except`` block): 500, logged with the
        exception, unless the client left or its body broke off (then the connection ends)."""
        if self.closed or request._failure is not None:
            self.close()
            return
        log.exception("iii-http: answering %s %s failed", request.method, request.raw_path)
        self.finish(request, self._error_body(500, "INTERNAL_SERVER_ERROR", "The engine failed to answer"))

    def _answered(self, request: Request) -> None:
        pending = self._pending
        pending.popleft()
        if self.closed:
            return
        if self._parse_failed and not pending:
            self._refuse_and_close()
            return
        if not request.keep_alive or not request._complete:
            self.close()  # what is left of this request (or the stream) is not read
            return
        if not self._reading and len(pending) <= MAX_PIPELINED:
            self._resume_reading()
        if pending:
            self._start(pending[0])
        else:
            self._idle_since = self._loop.time()

    def respond(self, request: Request, response: Response) -> None:
        """Send a buffered answer."""
        if response.close or not request._complete:  # the rest of its body will not be read
            request.keep_alive = False
        self._send(response, request.keep_alive, with_body=not request.head)

    def _send(self, response: Response, keep_alive: bool, with_body: bool = True) -> None:
        status = response.status
        head = self._head(status, response.headers, keep_alive)
        body = b""
        if status not in _NO_BODY_STATUSES:
            head.append(b"Content-Length: %d" % len(response.body))
            if with_body:
                body = response.body
        head.append(b"\r\n")
        self.write(b"\r\n".join(head) + body)

    def stream(self, request: Request, status: int, headers: dict[str, str]) -> Stream:
        """Start a streamed answer: its head is sent now."""
        chunked = request.http11  # on HTTP/1.0 the end of the connection ends the body
        if not chunked or not request._complete:
            request.keep_alive = False
        bodyless = request.head or status in _NO_BODY_STATUSES
        head = self._head(status, headers, request.keep_alive)
        if chunked and not bodyless:
            head.append(b"Transfer-Encoding: chunked")
        head.append(b"\r\n")
        self.write(b"\r\n".join(head))
        return Stream(self, chunked, bodyless)

    @staticmethod
    def _head(status: int, headers: dict[str, str], keep_alive: bool) -> list[bytes]:
        """The status line and header lines of an answer (``headers`` are valid and hold none of
        :data:`FRAMING_HEADERS`: the caller checked them)."""
        head = [b"HTTP/1.1 %d %s" % (status, _REASONS.get(status, b"Unknown")), b"Date: " + _DATE.now()]
        for name, value in headers.items():
            head.append(f"{name}: {value}".encode())
        if not keep_alive:
            head.append(b"Connection: close")
        return head

    def refuse(self, status: int, code: str, message: str) -> Response:
        """Answer bad client input; a warning the first time this connection sends this kind."""
        if self.bad_input is None:
            self.bad_input = KindCounts()
        if self.bad_input.first(code):
            log.warning("iii-http: %s from %s: %s (%d); more of the kind on this connection are counted, "
                        "not logged", code, self.remote, message, status)
        return self._error_body(status, code, message)

    def _bad_input(self, status: int, message: str) -> None:
        """Input that does not parse: answered after the requests before it, and then the
        connection ends (what follows cannot be framed)."""
        self._parse_failed = True
        response = self.refuse(status, HTTPStatus(status).name, message)
        receiving = self._receiving
        if receiving is not None:  # its body broke off: its handler sees the client leave
            receiving._fail(ConnectionResetError(message))
            return
        self._refusal = response
        if not self._pending:
            self._refuse_and_close()

    def _refuse_and_close(self) -> None:
        if self._refusal is not None:
            self._send(self._refusal, keep_alive=False)
        self.close()

    # -------------------------------------------------------------- I/O

    def write(self, data: bytes) -> None:
        if not self.closed:
            self._transport.write(data)  # type: ignore[union-attr]

    async def drain(self) -> None:
        if self._writable or self.closed:
            return
        self._drain_waiter = waiter = self._loop.create_future()
        try:
            await waiter
        finally:
            self._drain_waiter = None
        if self.closed:
            raise ConnectionResetError("the client left")

    def _wake_drain(self) -> None:
        waiter = self._drain_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def body_drained(self) -> None:
        if not self._reading and len(self._pending) <= MAX_PIPELINED:
            self._resume_reading()

    def _pause_reading(self) -> None:
        if self._reading and not self.closed:
            self._reading = False
            self._transport.pause_reading()  # type: ignore[union-attr]

    def _resume_reading(self) -> None:
        if not self._reading and not self.closed:
            self._reading = True
            self._transport.resume_reading()  # type: ignore[union-attr]

    def _check_idle(self) -> None:
        """Close the connection once it had no request in progress for :data:`KEEPALIVE_S`."""
        if self.closed:
            return
        now = self._loop.time()
        if self._pending:
            due = now + KEEPALIVE_S
        elif now - self._idle_since >= KEEPALIVE_S:
            self.close()
            return
        else:
            due = self._idle_since + KEEPALIVE_S
        self._idle_timer = self._loop.call_at(due, self._check_idle)

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self._transport.close()  # type: ignore[union-attr]

    def cancel(self) -> None:
        """Stop: the answer in progress is cancelled and the connection closed."""
        if self._task is not None:
            self._task.cancel()
        self.close()


async def serve(
    handler: Handler, error_body: ErrorAnswer, host: str, port: int, fast: Optional[FastHandler] = None,
) -> tuple[asyncio.Server, Callable[[], Awaitable[None]]]:
    """Listen on ``host:port``; returns the server and a coroutine function that stops it (the
    listening socket, then every connection, answers in progress cancelled).

    Each request is answered by ``handler`` in a task of its own, unless ``fast`` takes it
    first: ``fast(request)`` is offered each request whose body is all in when its turn comes
    and returns ``True`` if it answers it without a task, calling ``request.connection.finish``
    with the answer (now or later; ``failed`` when making it raised, ``go_on`` to finish in a
    task after all), or ``False``, having done nothing, to leave it to ``handler``. Answers in
    progress without a task are not cancelled at stop (their connections are closed).

    Raises:
        OSError: the address cannot be bound.
    """
    connections: set[_Connection] = set()

    server = await asyncio.get_running_loop().create_server(
        lambda: _Connection(handler, error_body, connections, fast), host, port, reuse_address=True
    )

    async def stop() -> None:
        server.close()
        for made in list(connections):
            made.cancel()
        await server.wait_closed()

    return server, stop
