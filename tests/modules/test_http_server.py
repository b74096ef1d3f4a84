"""The HTTP/1.1 server under iii-http, on its own: raw TCP clients against handlers written here;
every test runs on both twins (compiled and pure)."""

from __future__ import annotations

import asyncio
import importlib
import json
import logging
import random
from types import ModuleType
from typing import Optional

import pytest

from iii.modules._http_server import Request, Response
from iii.modules.http import buffered_response

#: Every test runs on the stdlib loop and on uvloop.
pytestmark = pytest.mark.both_loops


def error_body(status: int, code: str, message: str) -> Response:
    return Response(status, json.dumps({"error": {"code": code, "message": message}}).encode(),
                    {"Content-Type": "application/json"})


async def echo(request: Request) -> Optional[Response]:
    """Answers what it got: method, path, query, headers, body."""
    body = await request.read(1 << 20)
    seen = {"method": request.method, "path": request.path, "query": request.query, "body": body.decode(),
            "headers": request.headers}
    return Response(200, json.dumps(seen).encode(), {"Content-Type": "application/json"})


@pytest.fixture(params=["compiled", "pure"])
def twin(request) -> ModuleType:
    """The server's module: the Cython-compiled twin or the pure one."""
    if request.param == "pure":
        return importlib.import_module("iii.modules._http_server_py")
    try:
        return importlib.import_module("iii.modules._http_server_c")
    except ImportError:
        pytest.skip("the compiled twin is not built")


@pytest.fixture
async def server(twin):
    """Start a server for a handler; yields ``start(handler) -> (host, port)``; stops them all."""
    stops = []

    async def start(handler=echo, fast=None) -> tuple[str, int]:
        listening, stop = await twin.serve(handler, error_body, "127.0.0.1", 0, fast)
        stops.append(stop)
        return listening.sockets[0].getsockname()[:2]

    yield start
    for stop in stops:
        await stop()


async def connect(address: tuple[str, int]) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection(*address)


async def read_response(reader: asyncio.StreamReader, head_only: bool = False) -> tuple[int, dict[str, str], bytes]:
    """Status, headers (lower-case names) and body of the next response (by Content-Length,
    chunked, or up to the end of the connection)."""
    head = (await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)).decode()
    status_line, *lines = head.strip().split("\r\n")
    headers = {name.lower(): value.strip() for name, _, value in (line.partition(":") for line in lines)}
    status = int(status_line.split()[1])
    if head_only or status in (100, 204, 304):
        return status, headers, b""
    if "content-length" in headers:
        return status, headers, await asyncio.wait_for(reader.readexactly(int(headers["content-length"])), 5)
    if headers.get("transfer-encoding") == "chunked":
        body = b""
        while True:
            size = int((await asyncio.wait_for(reader.readuntil(b"\r\n"), 5)).strip(), 16)
            chunk = await asyncio.wait_for(reader.readexactly(size + 2), 5)
            if size == 0:
                return status, headers, body
            body += chunk[:-2]
    return status, headers, await asyncio.wait_for(reader.read(), 5)


async def closed(reader: asyncio.StreamReader) -> bool:
    return await asyncio.wait_for(reader.read(), 5) == b""


async def test_requests_on_one_connection_are_answered_in_order_also_when_pipelined(server):
    address = await server()
    reader, writer = await connect(address)
    writer.write(b"GET /a HTTP/1.1\r\nHost: t\r\n\r\n")
    status, headers, body = await read_response(reader)
    assert (status, json.loads(body)["path"]) == (200, "/a")
    assert "date" in headers and "connection" not in headers
    writer.write(b"".join(b"POST /p%d HTTP/1.1\r\nHost: t\r\nContent-Length: 1\r\n\r\n%d" % (n, n) for n in range(5)))
    for n in range(5):
        status, _, body = await read_response(reader)
        assert (status, json.loads(body)["path"], json.loads(body)["body"]) == (200, f"/p{n}", str(n))
    writer.close()


async def test_a_fast_handler_answers_whole_requests_without_a_task_in_order_with_the_others(server, caplog):
    loop = asyncio.get_running_loop()
    taken = []

    def fast(request: Request) -> bool:
        """``/now``: answered at once; ``/later``: on the next loop turn; ``/task``: in a task
        after all; ``/raise``: fails; anything else is left to the handler."""
        kind = request.path.lstrip("/")
        if kind not in ("now", "later", "task", "raise"):
            return False
        taken.append(kind)
        connection = request.connection
        answer = Response(200, f"fast {kind} {request.take_body().decode()}".encode())
        if kind == "now":
            connection.finish(request, answer)
        elif kind == "later":
            loop.call_soon(connection.finish, request, answer)
        elif kind == "task":
            async def in_task(request: Request) -> Response:
                await asyncio.sleep(0)
                return answer
            connection.go_on(request, in_task)
        else:
            try:
                raise RuntimeError("boom")
            except RuntimeError:
                connection.failed(request)
        return True

    reader, writer = await connect(await server(fast=fast))
    paths = ["later", "echo", "now", "task", "raise", "now", "later"]
    writer.write(b"".join(b"POST /%s HTTP/1.1\r\nHost: t\r\nContent-Length: 1\r\n\r\n%d" % (p.encode(), n)
                          for n, p in enumerate(paths)))
    answers = [await read_response(reader) for _ in paths]
    for n, (path, (status, _, body)) in enumerate(zip(paths, answers)):
        if path == "echo":
            assert (status, json.loads(body)["body"]) == (200, str(n))
        elif path == "raise":
            assert status == 500 and "boom" in caplog.text
        else:
            assert (status, body) == (200, f"fast {path} {n}".encode())
    assert taken == [p for p in paths if p != "echo"]
    # a body still coming when its request's turn comes goes to the handler (which asks for it)
    writer.write(b"POST /now HTTP/1.1\r\nHost: t\r\nContent-Length: 4\r\nExpect: 100-continue\r\n\r\n")
    assert (await read_response(reader))[0] == 100
    writer.write(b"abcd")
    status, _, body = await read_response(reader)
    assert (status, json.loads(body)["body"], len(taken)) == (200, "abcd", len(paths) - 1)
    writer.close()


async def test_the_path_and_query_are_decoded_and_header_names_lower_cased(server):
    reader, writer = await connect(await server())
    writer.write(b"GET /a%20b/c%2Fd?x=1&x=2&y=a+b&z&e=%C3%A9 HTTP/1.1\r\nHost: t\r\nX-Thing: One\r\n\r\n")
    _, _, body = await read_response(reader)
    seen = json.loads(body)
    assert seen["path"] == "/a b/c%2Fd"
    assert seen["query"] == {"x": "2", "y": "a b", "z": "", "e": "é"}
    assert seen["headers"]["x-thing"] == "One"
    writer.write(b"GET http://example.com/abs/x?q=1 HTTP/1.1\r\nHost: example.com\r\n\r\n")  # absolute form
    _, _, body = await read_response(reader)
    assert (json.loads(body)["path"], json.loads(body)["query"]) == ("/abs/x", {"q": "1"})
    writer.close()


async def test_http_1_0_and_connection_close_end_the_connection_after_the_answer(server):
    address = await server()
    for request in (b"GET /x HTTP/1.0\r\n\r\n", b"GET /x HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"):
        reader, writer = await connect(address)
        writer.write(request)
        status, headers, _ = await read_response(reader)
        assert (status, headers["connection"]) == (200, "close")
        assert await closed(reader)
        writer.close()


async def test_a_head_request_gets_the_length_and_no_body(server):
    reader, writer = await connect(await server())
    writer.write(b"HEAD /h HTTP/1.1\r\nHost: t\r\n\r\nGET /g HTTP/1.1\r\nHost: t\r\n\r\n")
    status, headers, _ = await read_response(reader, head_only=True)
    assert status == 200 and int(headers["content-length"]) > 0
    _, _, body = await read_response(reader)  # the next answer starts right after the head
    assert json.loads(body)["method"] == "GET"
    writer.close()


async def test_expect_100_continue_is_answered_when_the_body_is_read(server):
    reader, writer = await connect(await server())
    writer.write(b"POST /e HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n")
    status, _, _ = await read_response(reader)
    assert status == 100
    writer.write(b"hello")
    _, _, body = await read_response(reader)
    assert json.loads(body)["body"] == "hello"
    writer.close()


async def test_a_chunked_body_comes_whole_or_in_pieces_of_at_most_the_size_asked(server):
    pieces: list[bytes] = []

    async def pieces_of_3(request: Request) -> Response:
        async for piece in request.chunks(3):
            pieces.append(piece)
        return Response(204)

    reader, writer = await connect(await server(pieces_of_3))
    writer.write(b"POST /c HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n7\r\nabcdefg\r\n")
    await asyncio.sleep(0.05)  # the rest comes later
    writer.write(b"2\r\nhi\r\n0\r\n\r\n")
    status, headers, _ = await read_response(reader)
    assert (status, "content-length" in headers) == (204, False)
    assert b"".join(pieces) == b"abcdefghi" and max(map(len, pieces)) == 3
    writer.close()


async def test_a_large_body_read_slowly_arrives_whole(server):
    received = bytearray()

    async def slow_reader(request: Request) -> Response:
        async for piece in request.chunks(64 * 1024):
            received.extend(piece)
            await asyncio.sleep(0)
        return Response(200, b"%d" % len(received))

    reader, writer = await connect(await server(slow_reader))
    body = bytes(range(256)) * 8192  # 2 MiB: well past the buffer's high water mark
    writer.write(b"POST /big HTTP/1.1\r\nHost: t\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
    status, _, answer = await read_response(reader)
    assert (status, answer) == (200, b"%d" % len(body)) and bytes(received) == body
    writer.close()


async def test_a_streamed_answer_is_chunked_on_http_1_1_and_ends_the_connection_on_1_0(server):
    async def stream(request: Request) -> None:
        out = request.connection.stream(request, 201, {"X-Kind": "stream"})
        for part in (b"one ", b"two"):
            await out.write(part)
        out.finish()
        return None

    address = await server(stream)
    reader, writer = await connect(address)
    writer.write(b"GET /s HTTP/1.1\r\nHost: t\r\n\r\n")
    status, headers, body = await read_response(reader)
    assert (status, headers["x-kind"], headers["transfer-encoding"], body) == (201, "stream", "chunked", b"one two")
    writer.write(b"GET /s HTTP/1.1\r\nHost: t\r\n\r\n")  # the connection goes on
    assert (await read_response(reader))[2] == b"one two"
    writer.close()
    reader, writer = await connect(address)
    writer.write(b"GET /s HTTP/1.0\r\n\r\n")
    status, headers, body = await read_response(reader)
    assert ("transfer-encoding" in headers, headers["connection"], body) == (False, "close", b"one two")
    writer.close()


async def test_a_head_too_large_is_431_and_a_request_that_does_not_parse_is_400(server, twin, caplog):
    address = await server()
    for head in (b"GET /x HTTP/1.1\r\nX-Big: " + b"a" * (twin.MAX_HEAD_BYTES + 1) + b"\r\n\r\n",
                 b"GET /x HTTP/1.1\r\n" + b"".join(b"X-%d: 1\r\n" % n for n in range(twin.MAX_HEADERS + 1)) + b"\r\n"):
        reader, writer = await connect(address)
        writer.write(head)
        status, headers, body = await read_response(reader)
        assert (status, headers["connection"], json.loads(body)["error"]["code"]) == (
            431, "close", "REQUEST_HEADER_FIELDS_TOO_LARGE")
        assert await closed(reader)
        writer.close()
    reader, writer = await connect(address)
    writer.write(b"GET /ok HTTP/1.1\r\nHost: t\r\n\r\nNOT HTTP\r\n\r\n")  # the answer before it still goes out
    assert (await read_response(reader))[0] == 200
    status, _, body = await read_response(reader)
    assert (status, json.loads(body)["error"]["code"]) == (400, "BAD_REQUEST")
    assert await closed(reader)
    writer.close()


async def test_a_failing_handler_is_500_and_the_connection_goes_on(server, caplog):
    async def failing(request: Request) -> Response:
        if request.path == "/fail":
            raise ValueError("a bug")
        return Response(200, b"fine")

    reader, writer = await connect(await server(failing))
    writer.write(b"GET /fail HTTP/1.1\r\nHost: t\r\n\r\nGET /ok HTTP/1.1\r\nHost: t\r\n\r\n")
    status, _, body = await read_response(reader)
    assert (status, json.loads(body)["error"]["code"]) == (500, "INTERNAL_SERVER_ERROR")
    status, _, body = await read_response(reader)
    assert (status, body) == (200, b"fine")
    assert [r for r in caplog.records if r.levelno == logging.ERROR and r.exc_info]
    writer.close()


async def test_an_answer_sent_before_its_body_is_in_closes_the_connection(server):
    async def early(request: Request) -> Response:
        return Response(200, b"early")

    reader, writer = await connect(await server(early))
    writer.write(b"POST /e HTTP/1.1\r\nHost: t\r\nContent-Length: 100\r\n\r\npart")
    status, headers, body = await read_response(reader)
    assert (status, headers["connection"], body) == (200, "close", b"early")
    assert await closed(reader)
    writer.close()


async def test_an_idle_connection_is_closed_after_the_keep_alive_time(server, twin, monkeypatch):
    monkeypatch.setattr(twin, "KEEPALIVE_S", 0.2)
    reader, writer = await connect(await server())
    writer.write(b"GET /x HTTP/1.1\r\nHost: t\r\n\r\n")
    assert (await read_response(reader))[0] == 200
    assert await closed(reader)  # nothing more sent: closed after 0.2 s
    writer.close()


async def test_stopping_the_server_cancels_answers_in_progress_and_closes_connections(twin):
    started = asyncio.Event()
    cancelled = asyncio.Event()

    async def hang(request: Request) -> Response:
        started.set()
        try:
            await asyncio.Event().wait()
        finally:
            cancelled.set()
        raise AssertionError("not reached")

    listening, stop = await twin.serve(hang, error_body, "127.0.0.1", 0)
    reader, writer = await connect(listening.sockets[0].getsockname()[:2])
    writer.write(b"GET /x HTTP/1.1\r\nHost: t\r\n\r\n")
    await asyncio.wait_for(started.wait(), 5)
    await asyncio.wait_for(stop(), 5)
    await asyncio.wait_for(cancelled.wait(), 5)
    assert await closed(reader)
    writer.close()


def test_a_functions_response_headers_that_would_break_the_framing_are_left_out():
    response = buffered_response({"status_code": 201, "body": "x", "headers": {
        "X-Ok": "1", "X-Split": "a\r\nSet-Cookie: evil", "Content-Length": "999", "Bad Name": "v",
        "Content-Type": "text/plain"}})
    assert (response.status, response.body, response.headers) == (201, b"x", {"X-Ok": "1", "Content-Type": "text/plain"})


async def test_a_body_that_breaks_off_mid_way_ends_the_connection_without_an_error_of_ours(server, caplog):
    reader, writer = await connect(await server())
    writer.write(b"POST /b HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\nnot a chunk size\r\n")
    assert await closed(reader)  # the handler's read failed: nobody to answer
    writer.close()
    assert [r for r in caplog.records if r.levelno == logging.WARNING and "BAD_REQUEST" in r.getMessage()]
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


async def test_request_slots_go_first_come_first_served_and_a_waiter_that_gives_up_loses_none():
    from iii.modules.http import _Slots

    slots = _Slots(1)
    assert slots.take_now() and not slots.take_now()
    order: list[str] = []

    async def wait(name: str) -> None:
        await slots.take()
        order.append(name)

    first, quitter, second = (asyncio.ensure_future(wait(name)) for name in ("first", "quitter", "second"))
    await asyncio.sleep(0)  # all three wait
    quitter.cancel()
    slots.give()  # to "first"
    await first
    slots.give()  # "quitter" left: to "second"
    await second
    assert order == ["first", "second"]
    granted = asyncio.ensure_future(wait("granted, then cancelled"))
    await asyncio.sleep(0)
    slots.give()  # "second" is done: to "granted"
    granted.cancel()  # handed the slot as it gave up: passed on to the count
    with pytest.raises(asyncio.CancelledError):
        await granted
    assert slots.take_now() and not slots.take_now()  # the one slot is free again, once


async def test_mangled_requests_get_an_answer_or_a_closed_connection_and_break_nothing(server, caplog):
    """Requests with bytes flipped, cut short, or repeated: each connection ends (answered or
    closed, within the test's bound) and the server goes on serving without an error of its own."""
    address = await server()
    valid = (b"POST /m?x=1 HTTP/1.1\r\nHost: t\r\nContent-Type: text/plain\r\nTransfer-Encoding: chunked\r\n\r\n"
             b"5\r\nhello\r\n0\r\n\r\n")
    rng = random.Random(16)
    for _ in range(120):
        data = bytearray(valid)
        for _ in range(rng.randint(1, 4)):
            if not data:
                break
            at = rng.randrange(len(data))
            kind = rng.randrange(4)
            if kind == 0:
                data[at] = rng.randrange(256)
            elif kind == 1:
                del data[at:]
            elif kind == 2:
                data[at:at] = rng.choice([b"\r\n", b"\x00", b":", b" ", b"ffffffffffffffff", b"\r\n\r\n"])
            else:
                data[at:at] = data[at:at + rng.randint(1, 40)] * rng.randint(1, 50)
        reader, writer = await connect(address)
        writer.write(bytes(data))
        writer.write_eof()
        await asyncio.wait_for(reader.read(), 5)  # whatever it answers, the connection ends
        writer.close()
    reader, writer = await connect(address)
    writer.write(valid)
    status, _, body = await read_response(reader)
    assert (status, json.loads(body)["body"]) == (200, "hello")
    writer.close()
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
