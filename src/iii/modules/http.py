"""HTTP (``iii-http``): the ``http`` trigger type, an HTTP server (aiohttp) calling functions.

A route is ``METHOD + api_path`` (``:name`` segments are path parameters). A request runs the
global middlewares, the route's condition, its middlewares, then the function, which gets
``{query_params, path_params, headers, path, method, body, trigger}`` and answers
``{status_code?, headers?, body?}`` (a buffered response). Engine errors answer
``{"error": {"code", "message"}}``: 404 no route, 422 condition not met, 500 failed call, 504
timeout. Streaming through channels (``request_body`` / ``response``) is not provided.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from typing import Any, Optional, Union

import msgspec
from aiohttp import web

from iii import codec
from iii.engine.host import Binding, BuiltinModule, ErrorBody, Host, Provider, call
from iii.protocol import ErrorCode

__all__ = ["MODULE", "HttpConfig", "install"]

NAME = "iii-http"
log = logging.getLogger("iii.modules")

_METHODS = frozenset({"GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS"})


class CorsConfig(msgspec.Struct, forbid_unknown_fields=True):
    allowed_origins: list[str] = []
    allowed_methods: list[str] = []


class GlobalMiddleware(msgspec.Struct, forbid_unknown_fields=True):
    function_id: str
    phase: str = "preHandler"
    priority: int = 0


class HttpConfig(msgspec.Struct, forbid_unknown_fields=True):
    """The ``iii-http`` entry's ``config``."""

    port: int = 3111
    host: str = "0.0.0.0"
    #: Whole-request timeout, ms, and the deadline of every call a request makes.
    default_timeout: int = 30000
    concurrency_request_limit: int = 1024
    #: Absent: any origin, method and header.
    cors: Union[CorsConfig, None] = None
    middleware: list[GlobalMiddleware] = []

    def __post_init__(self) -> None:
        if not 0 <= self.port <= 65535 or self.default_timeout < 1:
            raise ValueError("port must be 0-65535 and default_timeout at least 1 ms")


class HttpTriggerConfig(msgspec.Struct):
    api_path: Union[str, None] = None
    http_method: str = "GET"
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
        segments = path.lstrip("/").split("/")
        found = [
            (route, params) for route in self.routes.values()
            if route.method == method and (params := route.match(segments)) is not None
        ]
        if not found:
            return None
        return min(found, key=lambda pair: tuple(s is None for s in pair[0].shape))


def _error(status: int, code: str, message: str, **extra: Any) -> web.Response:
    error: dict[str, Any] = {"code": code, "message": message}
    if status >= 500:
        error["error_id"] = secrets.token_hex(4)
    return web.Response(status=status, body=codec.encode_json({"error": error, **extra}), content_type="application/json")


def _failure(error: ErrorBody) -> web.Response:
    """A failed call: 504 when it got no answer before its deadline, else 500."""
    return _error(504 if error.code == ErrorCode.TIMEOUT else 500, error.code, error.message)


def _headers_of(value: Any) -> dict[str, str]:
    if isinstance(value, dict):
        return {str(k): str(v) for k, v in value.items() if isinstance(v, (str, int, float))}
    headers = {}
    if isinstance(value, list):
        for entry in value:
            if isinstance(entry, str) and ":" in entry:
                name, _, text = entry.partition(":")
                headers[name.strip()] = text.strip()
    return headers


def buffered_response(value: Any) -> web.Response:
    """The HTTP response for what a function (or a responding middleware) returned."""
    if not isinstance(value, dict):
        value = {}
    status = value.get("status_code", 200)
    if isinstance(status, bool) or not isinstance(status, int) or not 100 <= status <= 599:
        status = 200
    headers = _headers_of(value.get("headers"))
    body = value.get("body", {})
    content_type = next((v for k, v in headers.items() if k.lower() == "content-type"), None)
    if content_type is not None:
        if isinstance(body, str):
            data = body.encode()
        elif body is None:
            data = b""
        else:
            data = codec.encode_json(body)
    else:
        data = codec.encode_json(body)
        headers["Content-Type"] = "application/json"
    return web.Response(status=status, body=data, headers=headers)


class HttpServer:
    """The module: the routes and the server that serves them."""

    def __init__(self, host: Host, config: HttpConfig) -> None:
        self._host = host
        self.config = config
        self.routes = Routes(host, config.default_timeout)
        self._limit = asyncio.Semaphore(max(1, config.concurrency_request_limit))
        self._runner: Optional[web.ServerRunner] = None
        self.url: Optional[str] = None

    async def start(self) -> None:
        server = web.Server(self._handle, access_log=None)  # a line per request costs more than it tells
        self._runner = web.ServerRunner(server, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.config.host, self.config.port, reuse_address=True)
        try:
            await site.start()
        except OSError as exc:  # the engine serves its workers even when this port is taken
            log.error("iii-http: cannot listen on %s:%s (%s): http triggers are not served",
                      self.config.host, self.config.port, exc.strerror)
            return
        host, port = self._runner.addresses[0][:2]
        self.url = f"http://{host}:{port}"
        log.info("iii-http listening on %s", self.url)

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    def _call(self, namespace: str, function_id: str, payload: Any, metadata: bytes = b"") -> asyncio.Future:
        return call(
            self._host, namespace, function_id, codec.encode_json(payload), metadata,
            timeout_ms=self.config.default_timeout,
        )

    async def _handle(self, request: web.BaseRequest) -> web.StreamResponse:
        async with self._limit:
            response = await self._respond(request)
        self._cors(request, response)
        return response

    async def _respond(self, request: web.BaseRequest) -> web.StreamResponse:
        method = request.method.upper()
        found = self.routes.find(method, request.path)
        if found is None:
            if method == "OPTIONS" and "Access-Control-Request-Method" in request.headers:
                return web.Response(status=204)  # a CORS preflight (headers added by _cors)
            return _error(404, "NOT_FOUND", "Not Found")
        route, path_params = found
        timeout = self.config.default_timeout / 1000
        try:
            return await asyncio.wait_for(self._run(request, route, path_params), timeout)
        except asyncio.TimeoutError:
            return _error(504, "TIMEOUT", f"The request took longer than {self.config.default_timeout} ms")

    async def _run(self, request: web.BaseRequest, route: Route, path_params: dict[str, str]) -> web.StreamResponse:
        binding = route.binding
        namespace = binding.namespace
        headers = {name.lower(): value for name, value in request.headers.items()}
        query = {name: value for name, value in request.query.items()}
        summary = {"path_params": path_params, "query_params": query, "headers": headers, "method": route.method}
        for middleware in sorted(self.config.middleware, key=lambda m: m.priority):
            answer = await self._middleware(namespace, middleware.function_id, summary)
            if answer is not None:
                return answer
        body = None
        raw = await request.read()
        if "application/json" in request.headers.get("Content-Type", "") and raw:
            try:
                body = codec.decode_json(raw)
            except codec.DecodeError:
                body = None
        payload = {
            "query_params": query,
            "path_params": path_params,
            "headers": headers,
            "path": route.config.api_path,
            "method": route.method,
            "body": body,
            "trigger": {"type": "http", "path": route.config.api_path, "method": route.method},
        }
        condition = route.config.condition_function_id
        if condition:
            passed, error = await self._call(namespace, condition, payload)
            if error is not None:
                return _failure(error)
            if passed is False:
                return _error(422, "CONDITION_NOT_MET", "Request condition not met", skipped=True)
        for function_id in route.config.middleware_function_ids:
            answer = await self._middleware(namespace, function_id, summary)
            if answer is not None:
                return answer
        result, error = await self._call(namespace, binding.function_id, payload, binding.metadata or b"")
        return _failure(error) if error is not None else buffered_response(result)

    async def _middleware(self, namespace: str, function_id: str, request: dict[str, Any]) -> Optional[web.Response]:
        """Run one middleware; a response when it answers the request itself, else ``None``."""
        call = self._call(namespace, function_id, {"phase": "preHandler", "request": request, "context": {}})
        try:
            result, error = await asyncio.wait_for(call, self.config.default_timeout / 1000)
        except asyncio.TimeoutError:
            return _error(504, "MIDDLEWARE_TIMEOUT", "Middleware timeout")
        if error is not None:
            return _failure(error)
        if isinstance(result, dict) and result.get("action") == "respond":
            return buffered_response(result.get("response"))
        return None

    def _cors(self, request: web.BaseRequest, response: web.StreamResponse) -> None:
        origin = request.headers.get("Origin")
        if origin is None:
            return
        cors = self.config.cors
        origins = cors.allowed_origins if cors is not None else []
        if origins and "*" not in origins and origin not in origins:
            return
        response.headers["Access-Control-Allow-Origin"] = origin
        response.headers["Vary"] = "Origin"
        if request.method.upper() == "OPTIONS":
            methods = (cors.allowed_methods if cors is not None else []) or sorted(_METHODS)
            response.headers["Access-Control-Allow-Methods"] = ", ".join(methods)
            requested = request.headers.get("Access-Control-Request-Headers")
            if requested:
                response.headers["Access-Control-Allow-Headers"] = requested


_TRIGGER_FORMAT = {
    "type": "object",
    "properties": {
        "api_path": {"type": "string"},
        "http_method": {"type": "string", "enum": sorted(_METHODS)},
        "condition_function_id": {"type": "string"},
        "middleware_function_ids": {"type": "array", "items": {"type": "string"}},
    },
    "required": ["api_path"],
}
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
    host.add_trigger_type(
        "http",
        server.routes,
        module=NAME,
        description="Calls the function for HTTP requests to a path",
        trigger_request_format=_TRIGGER_FORMAT,
        call_request_format=_REQUEST_FORMAT,
    )
    return server


MODULE = BuiltinModule(NAME, "HTTP server calling functions (the http trigger)", HttpConfig, install)
