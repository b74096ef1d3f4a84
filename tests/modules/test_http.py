"""The iii-http module over real sockets: an in-process engine, a raw worker, aiohttp requests."""

from __future__ import annotations

import asyncio
import json

import aiohttp
import pytest

from helpers import RawClient, in_process_engine

#: In-process engines: every test runs on the stdlib loop and on uvloop.
pytestmark = pytest.mark.both_loops

CONFIG = """workers:
  - name: iii-http
    config:
      host: 127.0.0.1
      port: 0
      default_timeout: 1500
      middleware:
        - function_id: web::guard
          priority: 1
  - name: iii-stream
    config: {host: 127.0.0.1, port: 0}
"""


@pytest.fixture
async def engine(tmp_path):
    async with in_process_engine(CONFIG, tmp_path) as engine:
        yield engine


class Web:
    """A raw worker serving the functions behind the routes, and an HTTP client."""

    def __init__(self, worker: RawClient, base: str, session: aiohttp.ClientSession) -> None:
        self.worker = worker
        self.base = base
        self.session = session
        self.handlers: dict = {}
        self.requests: list = []
        self.frames: asyncio.Queue = asyncio.Queue()  # what the worker gets besides calls
        self._answers: dict[str, asyncio.Future] = {}
        self._serving = asyncio.ensure_future(self._serve())

    async def _serve(self) -> None:
        """The worker's only reader: answers calls, hands results and the rest to their waiters."""
        while True:
            frame = await self.worker.recv(timeout=3600)
            waiter = self._answers.pop(frame.get("invocation_id"), None)
            if frame.get("type") == "invocationresult" and waiter is not None:
                waiter.set_result(frame)
                continue
            handler = self.handlers.get(frame.get("function_id"))
            if frame.get("type") != "invokefunction" or handler is None:
                self.frames.put_nowait(frame)
                continue
            self.requests.append(frame)
            answer = handler(frame["data"])
            if answer is not ...:  # Ellipsis: never answer
                self.worker.send(type="invocationresult", invocation_id=frame["invocation_id"],
                                 function_id=frame["function_id"], **answer)

    async def route(self, function_id: str, handler, **config) -> None:
        self.handlers[function_id] = handler
        self.worker.send(type="registerfunction", id=function_id)
        self.worker.send(type="registertrigger", id=function_id, trigger_type="http", function_id=function_id,
                         config=config, metadata={"team": "web"})
        await self.call("engine::workers::list", {})  # frames are handled in order

    async def call(self, function_id: str, data) -> dict:
        invocation_id = f"call-{len(self._answers)}-{function_id}"
        self._answers[invocation_id] = waiter = asyncio.get_running_loop().create_future()
        self.worker.send(type="invokefunction", invocation_id=invocation_id, function_id=function_id, data=data)
        return await asyncio.wait_for(waiter, 10)

    async def request(self, method: str, path: str, **kwargs) -> tuple[int, dict, bytes]:
        async with self.session.request(method, self.base + path, **kwargs) as response:
            return response.status, dict(response.headers), await response.read()


def guard(data: dict) -> dict:
    if data["request"]["headers"].get("x-block") is None:
        return {"result": {"action": "continue"}}
    return {"result": {"action": "respond", "response": {"status_code": 403, "body": {"blocked": True}}}}


@pytest.fixture
async def web(engine):
    http = engine.modules["iii-http"]
    worker = await RawClient.connect(engine.urls[0])
    await worker.register("web")
    async with aiohttp.ClientSession() as session:
        web = Web(worker, http.url, session)
        web.handlers["web::guard"] = guard  # the global middleware of CONFIG
        worker.send(type="registerfunction", id="web::guard")
        yield web
        web._serving.cancel()
    await worker.close()


async def test_a_request_reaches_the_function_and_its_answer_is_the_response(web):
    await web.route("items::update", lambda data: {"result": {"status_code": 201, "headers": {"X-Id": data["path_params"]["id"]}, "body": {"got": data["body"]}}},
                    api_path="/items/:id", http_method="post")
    status, headers, body = await web.request("POST", "/items/42?q=hello&q=again&limit=10", json={"name": "x"})
    assert (status, headers["X-Id"], json.loads(body)) == (201, "42", {"got": {"name": "x"}})
    assert headers["Content-Type"].startswith("application/json")
    request = web.requests[-1]
    data = request["data"]
    assert data["path_params"] == {"id": "42"} and data["query_params"] == {"q": "again", "limit": "10"}
    assert (data["path"], data["method"], data["trigger"]) == ("/items/:id", "POST", {"type": "http", "path": "/items/:id", "method": "POST"})
    assert data["headers"]["content-type"] == "application/json" and request["metadata"] == {"team": "web"}


async def test_routes_match_exactly_and_unknown_ones_are_404(web):
    status, _, body = await web.request("GET", "/health")
    assert (status, json.loads(body)) == (404, {"error": {"code": "NOT_FOUND", "message": "Not Found"}})
    await web.route("health::get", lambda data: {"result": {"body": "ok", "headers": ["Content-Type: text/plain"]}}, api_path="health")
    await web.route("items::special", lambda data: {"result": {"body": "special"}}, api_path="items/special")
    await web.route("items::get", lambda data: {"result": {"body": data["path_params"]}}, api_path="items/:id")
    status, headers, body = await web.request("GET", "/health")
    assert (status, headers["Content-Type"], body) == (200, "text/plain", b"ok")
    assert (await web.request("GET", "/health/"))[0] == 404
    assert json.loads((await web.request("GET", "/items/special"))[2]) == "special"
    assert json.loads((await web.request("GET", "/items/7"))[2]) == {"id": "7"}
    assert (await web.request("POST", "/items/7"))[0] == 404


async def test_routes_with_the_same_shape_and_other_parameter_names_conflict(web):
    await web.route("a::one", lambda data: {"result": {}}, api_path="a/:x/:y")
    web.worker.send(type="registertrigger", id="two", trigger_type="http", function_id="a::one", config={"api_path": "a/:y/:x"})
    refusal = await asyncio.wait_for(web.frames.get(), 10)
    assert refusal["type"] == "triggerregistrationresult"
    assert "conflicts with already-registered route" in refusal["error"]["message"]


async def test_conditions_failures_timeouts_and_middleware(web):
    await web.route("gate::check", lambda data: {"result": data["query_params"].get("ok") == "yes"})
    await web.route("page::get", lambda data: {"result": {"body": {"page": 1}}}, api_path="page", condition_function_id="gate::check")
    status, _, body = await web.request("GET", "/page?ok=no")
    assert (status, json.loads(body)) == (422, {"error": {"code": "CONDITION_NOT_MET", "message": "Request condition not met"}, "skipped": True})
    assert (await web.request("GET", "/page?ok=yes"))[0] == 200
    await web.route("boom::get", lambda data: {"error": {"code": "bad_thing", "message": "it broke"}}, api_path="boom")
    status, _, body = await web.request("GET", "/boom")
    error = json.loads(body)["error"]
    assert status == 500 and (error["code"], error["message"]) == ("bad_thing", "it broke") and error["error_id"]
    await web.route("slow::get", lambda data: ..., api_path="slow")
    status, _, body = await web.request("GET", "/slow")
    assert (status, json.loads(body)["error"]["code"]) == (504, "TIMEOUT")
    status, _, body = await web.request("GET", "/page?ok=yes", headers={"X-Block": "1"})
    assert (status, json.loads(body)) == (403, {"blocked": True})


async def test_cors_is_permissive_by_default(web):
    status, headers, _ = await web.request("OPTIONS", "/anything", headers={
        "Origin": "https://app.example", "Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "x-token",
    })
    assert status == 204
    assert headers["Access-Control-Allow-Origin"] == "https://app.example"
    assert "POST" in headers["Access-Control-Allow-Methods"] and headers["Access-Control-Allow-Headers"] == "x-token"


async def test_a_json_body_that_does_not_parse_is_400_and_reaches_no_function(web):
    await web.route("items::create", lambda data: {"result": {"body": {"got": data["body"]}}}, api_path="items", http_method="POST")
    json_type = {"Content-Type": "application/json"}
    for raw, problem in ((b'{"a": ' + b"[" * 100_000, "nested too deeply"), (b'{"name": ', "truncated"), (b"\xff", "malformed")):
        status, headers, body = await web.request("POST", "/items", data=raw, headers=json_type)
        error = json.loads(body)["error"]
        assert (status, error["code"], headers["Content-Type"]) == (400, "INVALID_JSON", "application/json")
        assert problem in error["message"]
    assert web.requests == []
    status, _, body = await web.request("POST", "/items", data=b"[" * 100_000, headers={"Content-Type": "text/plain"})
    assert (status, json.loads(body)) == (200, {"got": None})  # not JSON: the function's business
    status, _, body = await web.request("POST", "/items", data=b"", headers=json_type)
    assert (status, json.loads(body)) == (200, {"got": None})  # no body at all


async def test_a_request_that_times_out_leaves_its_worker_available(web):
    await web.route("slow::get", lambda data: ..., api_path="slow")
    status, _, body = await web.request("GET", "/slow")
    assert (status, json.loads(body)["error"]["code"]) == (504, "TIMEOUT")
    listed = await web.call("engine::workers::list", {})
    (row,) = [w for w in listed["result"]["workers"] if w["id"] == web.worker.worker_id]
    assert row["status"] == "available"  # the engine forgot the call it gave up on


async def test_a_middleware_that_does_not_answer_in_time_is_504(web):
    web.handlers["web::stall"] = lambda data: ...
    web.worker.send(type="registerfunction", id="web::stall")
    await web.route("page::get", lambda data: {"result": {"body": {"page": 1}}}, api_path="page", middleware_function_ids=["web::stall"])
    status, _, body = await web.request("GET", "/page")
    error = json.loads(body)["error"]
    assert (status, error["code"], error["message"]) == (504, "MIDDLEWARE_TIMEOUT", "Middleware timeout")
    assert [r["function_id"] for r in web.requests] == ["web::guard", "web::stall"]  # not the function
