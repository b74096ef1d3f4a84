"""HTTP-invoked functions (``iii-http-functions``): functions the engine answers by calling a URL.

A worker registers one with ``registerfunction`` carrying ``invocation {url, method, timeout_ms,
headers, auth}``; the function stays the worker's (unregister and disconnect remove it), but every
call of it — direct, trigger fire, queue delivery — is one HTTP request made by the engine with a
pooled aiohttp client: the call's ``data`` as the JSON body, ``x-iii-*`` headers, the auth the
registration names (its secret read from the engine's environment at registration), no redirects,
no retries, and a deadline (``timeout_ms``, 30 s by default) on the whole request.

The URL policy (``security``) is checked at registration and before every request; its defaults
are the safe ones (https only, no private or loopback addresses). A host name is checked through
the resolver the client connects with, so the checked address is the one connected to.
"""

from __future__ import annotations

import asyncio
import base64
import fnmatch
import hashlib
import hmac
import ipaddress
import logging
import os
import re
import socket
import time
import uuid
from typing import Any, Literal, Optional, Union

import aiohttp
import msgspec
from aiohttp.abc import AbstractResolver
from multidict import CIMultiDict
from yarl import URL

from iii import codec
from iii.engine.host import (
    DEFAULT_INVOCATION_TIMEOUT_MS,
    BuiltinModule,
    Connection,
    EngineError,
    Host,
    Running,
    TimeoutMs,
)
from iii.protocol import MAX_MESSAGE_SIZE

__all__ = ["MODULE", "HttpFunctionsConfig", "SecurityConfig", "UrlPolicy", "install"]

NAME = "iii-http-functions"
log = logging.getLogger(__name__)

#: Connections the client keeps open at once (per engine; further requests wait for one).
POOL_SIZE = 100


class SecurityConfig(msgspec.Struct, forbid_unknown_fields=True):
    """Which URLs HTTP-invoked functions may call."""

    #: Shell-style globs matched against the URL's host; empty means every host.
    url_allowlist: list[str] = msgspec.field(default_factory=lambda: ["*"])
    #: Refuse loopback, private, link-local and other non-public addresses.
    block_private_ips: bool = True
    require_https: bool = True


class HttpFunctionsConfig(msgspec.Struct, forbid_unknown_fields=True):
    """The ``iii-http-functions`` entry's ``config``."""

    security: SecurityConfig = msgspec.field(default_factory=SecurityConfig)


class BearerAuth(msgspec.Struct, tag="bearer", forbid_unknown_fields=True):
    token_key: str


class HmacAuth(msgspec.Struct, tag="hmac", forbid_unknown_fields=True):
    secret_key: str


class ApiKeyAuth(msgspec.Struct, tag="api_key", forbid_unknown_fields=True):
    header: str
    value_key: str


class Invocation(msgspec.Struct, forbid_unknown_fields=True):
    """A registration's ``invocation`` (``HttpInvocationRef``)."""

    url: str
    method: Literal["GET", "POST", "PUT", "PATCH", "DELETE"] = "POST"
    timeout_ms: Union[TimeoutMs, None] = None
    headers: dict[str, str] = {}
    auth: Union[BearerAuth, HmacAuth, ApiKeyAuth, None] = None


_BLOCKED_V4 = [
    ipaddress.ip_network(n)
    for n in (
        "127.0.0.0/8", "10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "169.254.0.0/16",
        "255.255.255.255/32", "192.0.2.0/24", "198.51.100.0/24", "203.0.113.0/24", "0.0.0.0/32",
    )
]
_BLOCKED_V6 = [ipaddress.ip_network(n) for n in ("::1/128", "fc00::/7", "fe80::/10", "::/128", "ff00::/8")]


#: NAT64's well-known prefix (RFC 6052): a gateway forwards 64:ff9b::a.b.c.d to a.b.c.d.
_NAT64 = ipaddress.ip_network("64:ff9b::/96")


def is_private(address: Union[ipaddress.IPv4Address, ipaddress.IPv6Address]) -> bool:
    """The original's rule: what an HTTP-invoked function may not reach with ``block_private_ips``.

    An IPv6 address that carries an IPv4 one is judged as that address: IPv4-mapped (as the
    original does), and also NAT64 and 6to4 ones, which reach it through a gateway or relay.
    """
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        elif address in _NAT64:
            address = ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
        elif address.sixtofour is not None:
            address = address.sixtofour
    blocked = _BLOCKED_V4 if isinstance(address, ipaddress.IPv4Address) else _BLOCKED_V6
    return any(address in network for network in blocked)


class UrlPolicy:
    """The ``security`` settings, checked in the original's order (channels.md §7.4)."""

    def __init__(self, security: SecurityConfig) -> None:
        self.security = security
        patterns = security.url_allowlist or ["*"]
        # Case-sensitive globs, compiled once (fnmatch.translate refuses nothing, so a bad
        # pattern cannot fail later either).
        self._allow = [re.compile(fnmatch.translate(pattern)) for pattern in patterns]

    def check(self, url: str) -> str:
        """Check everything but host-name resolution; returns the URL's host.

        Raises:
            EngineError: ``url_validation_failed`` with the reason.
        """
        return self.parse(url).raw_host  # type: ignore[return-value]

    def parse(self, url: str) -> URL:
        """:meth:`check` ``url`` and return it parsed, to be requested as it is.

        The URL is read by yarl, the parser the client connects with, so the host checked is the
        host connected to (``urlsplit`` reads ``https://①②⑦.0.0.1/`` as a name, yarl as
        ``127.0.0.1``, an address the resolver never sees).

        Raises:
            EngineError: ``url_validation_failed`` with the reason.
        """
        try:
            parsed = URL(url)
            host = parsed.raw_host
        except (TypeError, ValueError):  # also a bad port
            host = None
        if not host or parsed.scheme not in ("http", "https"):
            raise EngineError("url_validation_failed", "Invalid URL")
        if self.security.require_https and parsed.scheme != "https":
            raise EngineError("url_validation_failed", "HTTPS is required")
        if not any(pattern.match(host) for pattern in self._allow):
            raise EngineError("url_validation_failed", "URL not in allowlist")
        if self.security.block_private_ips:
            try:
                literal = ipaddress.ip_address(host)
            except ValueError:
                return parsed  # a name: its addresses are checked by the resolver, at connect
            if is_private(literal):
                raise EngineError("url_validation_failed", "Private IP blocked")
        return parsed


class PublicOnlyResolver(AbstractResolver):
    """Resolves like aiohttp's default resolver and refuses a name with any private address, so
    the address checked is the address connected to (no rebinding between check and connect)."""

    def __init__(self) -> None:
        self._resolver = aiohttp.DefaultResolver()

    async def resolve(self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET) -> list[Any]:
        try:
            addresses = await self._resolver.resolve(host, port, family)
        except OSError as exc:
            raise _PolicyRefusal("DNS lookup failed") from exc
        if any(is_private(ipaddress.ip_address(entry["host"])) for entry in addresses):
            raise _PolicyRefusal("Private IP blocked")
        return addresses

    async def close(self) -> None:
        await self._resolver.close()


class _PolicyRefusal(OSError):
    """Raised inside the connector: the connection was refused by the URL policy."""


#: An HTTP header name (an RFC 9110 token) and what a header value may not hold: refused at
#: registration, not by the client at every call.
_HEADER_NAME = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_HEADER_VALUE_FORBIDDEN = re.compile(r"[\r\n\x00]")


def _secret(env_name: str, code: str) -> str:
    value = os.environ.get(env_name)
    if value is None:
        raise EngineError(code, f"environment variable {env_name} is not set")
    return value


class HttpFunctions:
    """The running module: one pooled client shared by every HTTP-invoked function."""

    def __init__(self, config: HttpFunctionsConfig) -> None:
        self.policy = UrlPolicy(config.security)
        self._session: Optional[aiohttp.ClientSession] = None
        self._resolver: Optional[PublicOnlyResolver] = None

    async def start(self) -> None:
        return None

    async def stop(self) -> None:
        if self._session is not None:
            resolver = self._resolver
            await self._session.close()
            self._session = self._resolver = None
            if resolver is not None:  # the connector closes only a resolver it made itself
                await resolver.close()

    def _client(self) -> aiohttp.ClientSession:
        # Made on first use: it belongs to the running loop, which install() may not see yet.
        if self._session is None:
            self._resolver = PublicOnlyResolver() if self.policy.security.block_private_ips else None
            connector = aiohttp.TCPConnector(limit=POOL_SIZE, resolver=self._resolver)
            self._session = aiohttp.ClientSession(connector=connector, auto_decompress=True)
        return self._session

    def make_handler(self, function_id: str, invocation: Any) -> Any:
        """Check a registration's ``invocation`` and return the function's handler.

        Raises:
            EngineError: an undecodable invocation, a URL the policy refuses, a header that
                cannot be sent, or an auth secret missing from the environment (the registration
                is then dropped).
        """
        try:
            spec = msgspec.convert(invocation, Invocation)
        except msgspec.ValidationError as exc:
            raise EngineError("invalid_invocation", f"invalid invocation: {exc}") from None
        self.policy.check(spec.url)
        auth_header: Optional[tuple[str, str]] = None
        hmac_secret: Optional[bytes] = None
        if isinstance(spec.auth, BearerAuth):
            auth_header = ("Authorization", "Bearer " + _secret(spec.auth.token_key, "token_not_found"))
        elif isinstance(spec.auth, ApiKeyAuth):
            auth_header = (spec.auth.header, _secret(spec.auth.value_key, "api_key_not_found"))
        elif isinstance(spec.auth, HmacAuth):
            hmac_secret = _secret(spec.auth.secret_key, "secret_not_found").encode()
        for name, value in [*spec.headers.items(), *([auth_header] if auth_header else [])]:
            if not _HEADER_NAME.fullmatch(name) or _HEADER_VALUE_FORBIDDEN.search(value):
                raise EngineError("invalid_invocation", f"invalid header {name!r}")
        timeout = aiohttp.ClientTimeout(total=(spec.timeout_ms or DEFAULT_INVOCATION_TIMEOUT_MS) / 1000)

        def handler(host: Host, caller: Optional[Connection], data: Any) -> asyncio.Future:
            if caller is not None and isinstance(data, dict):
                data["_caller_worker_id"] = caller.id  # as the engine adds it to calls it forwards
            try:
                body = codec.encode_json(data)
            except (TypeError, ValueError) as exc:
                raise EngineError("serialization_error", str(exc)) from None
            timestamp = str(int(time.time()))
            headers = {
                "Content-Type": "application/json",
                "x-iii-Function-Path": function_id,
                "x-iii-Invocation-ID": str(uuid.uuid4()),
                "x-iii-Timestamp": timestamp,
            }
            extra: list[tuple[str, str]] = list(spec.headers.items())
            if auth_header is not None:
                extra.append(auth_header)
            if hmac_secret is not None:
                message = f"{timestamp}:{base64.b64encode(body).decode()}".encode()
                extra.append(("x-iii-Signature", "sha256=" + hmac.new(hmac_secret, message, hashlib.sha256).hexdigest()))
            return asyncio.ensure_future(self._request(spec.method, spec.url, body, headers, extra, timeout))

        return handler

    async def _request(
        self,
        method: str,
        url: str,
        body: bytes,
        headers: dict[str, str],
        extra: list[tuple[str, str]],
        timeout: aiohttp.ClientTimeout,
    ) -> Any:
        target = self.policy.parse(url)  # before every request too, as the original does
        all_headers = CIMultiDict(headers)
        for name, value in extra:
            all_headers.add(name, value)  # a duplicate name is appended, as the original does
        try:
            async with self._client().request(
                method, target, data=body, headers=all_headers, allow_redirects=False, timeout=timeout
            ) as response:
                return _outcome(response, await _body(response))
        except _PolicyRefusal as exc:
            raise EngineError("url_validation_failed", str(exc)) from None
        except aiohttp.ClientConnectorError as exc:
            if isinstance(exc.os_error, _PolicyRefusal):
                raise EngineError("url_validation_failed", str(exc.os_error)) from None
            raise EngineError("http_request_failed", str(exc)) from None
        except asyncio.TimeoutError:
            raise EngineError("http_request_failed", f"request timed out after {timeout.total}s") from None
        except aiohttp.ClientError as exc:
            raise EngineError("http_request_failed", str(exc) or type(exc).__name__) from None


async def _body(response: aiohttp.ClientResponse) -> bytes:
    """The whole response body, refused beyond the largest message a result can be."""
    chunks: list[bytes] = []
    size = 0
    try:
        async for chunk in response.content.iter_any():
            size += len(chunk)
            if size > MAX_MESSAGE_SIZE:
                raise EngineError("http_response_failed", f"response body over {MAX_MESSAGE_SIZE} bytes")
            chunks.append(chunk)
    except aiohttp.ClientPayloadError as exc:
        raise EngineError("http_response_failed", str(exc) or type(exc).__name__) from None
    return b"".join(chunks)


def _outcome(response: aiohttp.ClientResponse, payload: bytes) -> Any:
    """The response mapped to a result or an :class:`EngineError` (channels.md §7.3)."""
    status = response.status
    if 200 <= status < 300:
        if not payload.strip():
            return None
        try:
            return codec.decode_json(payload)
        except (msgspec.DecodeError, ValueError) as exc:
            raise EngineError("invalid_response", str(exc)) from None
    if status >= 400:
        try:
            error = codec.decode_json(payload).get("error")
        except (msgspec.DecodeError, ValueError, AttributeError):
            error = None
        if isinstance(error, dict):
            raise EngineError(
                str(error.get("code") or "http_error"), str(error.get("message") or "HTTP request failed")
            )
        raise EngineError("http_error", f"HTTP {status} {response.reason or ''}".rstrip())
    try:
        return codec.decode_json(payload) if payload.strip() else None
    except (msgspec.DecodeError, ValueError):
        return None


def install(host: Host, config: Optional[HttpFunctionsConfig] = None) -> Running:
    """Serve HTTP-invoked functions through ``host`` when ``config.yaml`` has an entry for the
    module. Opt-in, as in the original: without one, no worker can make the engine send requests."""
    if config is None:
        return Running()
    module = HttpFunctions(config)
    host.serve_http_functions(module.make_handler)
    return module


MODULE = BuiltinModule(NAME, "Functions the engine answers by calling a URL (webhooks)", HttpFunctionsConfig, install)
