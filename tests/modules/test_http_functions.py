"""iii-http-functions: a function registered with an ``invocation`` is answered by an HTTP request
to its URL (body, x-iii headers, auth, response mapping, deadline), bound to triggers like any
other, gone after unregister; the URL policy is checked at registration and before each request.
Real sockets: an in-process engine and a local aiohttp app as the webhook."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import ipaddress
import json

import pytest
from aiohttp import web

from helpers import RawClient, connected as connected_peer, in_process_engine, make_router
from iii.engine.host import EngineError
from iii.modules.http_functions import HttpFunctionsConfig, SecurityConfig, UrlPolicy, is_private

pytestmark = pytest.mark.both_loops

LOOPBACK_ALLOWED = (
    "workers:\n"
    "  - name: iii-http-functions\n"
    "    config:\n"
    "      security: {url_allowlist: [127.0.0.1], block_private_ips: false, require_https: false}\n"
)


class Webhook:
    """A local aiohttp app: records every request, answers what ``reply`` says."""

    def __init__(self) -> None:
        self.requests: asyncio.Queue = asyncio.Queue()
        self.reply = lambda request, body: web.json_response({"ok": True, "echo": json.loads(body or b"null")})
        self.release = asyncio.Event()
        self.release.set()

    async def handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        await self.requests.put((request.method, request.path, request.headers.copy(), body))
        await self.release.wait()
        return self.reply(request, body)

    async def __aenter__(self) -> "Webhook":
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self.handle)
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        self.base = f"http://127.0.0.1:{self.runner.addresses[0][1]}"
        return self

    async def __aexit__(self, *exc) -> None:
        self.release.set()
        await self.runner.cleanup()


async def connected(engine) -> RawClient:
    """A worker past registration (its registrations are not held for a namespace)."""
    worker = await RawClient.connect(engine.urls[0])
    await worker.register("hooks")
    return worker


async def registered(worker: RawClient, function_id: str, **invocation) -> None:
    worker.send(type="registerfunction", id=function_id, invocation=invocation)
    await worker.wait_for_function(function_id)


async def test_a_call_reaches_the_webhook_and_its_answer_is_the_result(tmp_path, monkeypatch):
    monkeypatch.setenv("HOOK_TOKEN", "s3cret")
    async with Webhook() as hook, in_process_engine(LOOPBACK_ALLOWED, tmp_path) as engine:
        worker = await connected(engine)
        await registered(
            worker, "hooks::put", url=hook.base + "/webhook", method="PUT",
            headers={"X-Custom-Header": "test-value"}, auth={"type": "bearer", "token_key": "HOOK_TOKEN"},
        )
        answer = await worker.call("hooks::put", {"hello": "world", "count": 1})
        method, path, headers, body = hook.requests.get_nowait()
        assert (method, path) == ("PUT", "/webhook")
        sent = json.loads(body)
        assert sent["hello"] == "world" and sent["count"] == 1 and sent["_caller_worker_id"] == worker.worker_id
        assert headers["x-iii-function-path"] == "hooks::put"
        assert headers["Content-Type"] == "application/json"
        assert headers["X-Custom-Header"] == "test-value"
        assert headers["Authorization"] == "Bearer s3cret"
        assert answer["result"] == {"ok": True, "echo": sent}
        listed = await worker.call("engine::functions::list", {"prefix": "hooks::"})
        assert [f["function_id"] for f in listed["result"]["functions"]] == ["hooks::put"]


async def test_hmac_signs_the_exact_body(tmp_path, monkeypatch):
    monkeypatch.setenv("HOOK_SECRET", "k")
    async with Webhook() as hook, in_process_engine(LOOPBACK_ALLOWED, tmp_path) as engine:
        worker = await connected(engine)
        await registered(worker, "hooks::signed", url=hook.base + "/s", auth={"type": "hmac", "secret_key": "HOOK_SECRET"})
        await worker.call("hooks::signed", {"a": 1})
        _, _, headers, body = hook.requests.get_nowait()
        message = f"{headers['x-iii-timestamp']}:{base64.b64encode(body).decode()}".encode()
        assert headers["x-iii-signature"] == "sha256=" + hmac.new(b"k", message, hashlib.sha256).hexdigest()


async def test_trigger_fires_reach_the_webhook_and_unregister_stops_them(tmp_path):
    async with Webhook() as hook, in_process_engine(LOOPBACK_ALLOWED, tmp_path) as engine:
        worker = await connected(engine)
        await registered(worker, "hooks::sub", url=hook.base + "/sub")
        worker.send(type="registertrigger", id="t1", trigger_type="subscribe", function_id="hooks::sub", config={"topic": "news"})
        await worker.call("publish", {"topic": "news", "data": {"n": 1}})
        method, path, _, body = await asyncio.wait_for(hook.requests.get(), 10)
        assert (method, path, json.loads(body)) == ("POST", "/sub", {"n": 1})
        worker.send(type="unregisterfunction", id="hooks::sub")
        answer = await worker.call("hooks::sub", {})
        assert answer["error"]["code"] == "function_not_found"
        await worker.call("publish", {"topic": "news", "data": {"n": 2}})
        assert hook.requests.empty()


async def test_http_errors_are_mapped(tmp_path):
    async with Webhook() as hook, in_process_engine(LOOPBACK_ALLOWED, tmp_path) as engine:
        worker = await connected(engine)
        await registered(worker, "hooks::err", url=hook.base + "/e")
        hook.reply = lambda request, body: web.json_response({"error": {"code": "nope", "message": "bad"}}, status=422)
        assert (await worker.call("hooks::err", {}))["error"] == {"code": "nope", "message": "bad"}
        hook.reply = lambda request, body: web.Response(status=502)
        assert (await worker.call("hooks::err", {}))["error"] == {"code": "http_error", "message": "HTTP 502 Bad Gateway"}
        hook.reply = lambda request, body: web.Response(text="not json")
        assert (await worker.call("hooks::err", {}))["error"]["code"] == "invalid_response"
        big = {"items": ["x" * 1000] * 2000}  # 2 MB: read whole, not just what is buffered
        hook.reply = lambda request, body: web.json_response(big)
        assert (await worker.call("hooks::err", {}))["result"] == big
        hook.reply = lambda request, body: web.Response(status=204)
        answer = await worker.call("hooks::err", {})
        assert "error" not in answer and answer.get("result") is None


async def test_every_request_has_a_deadline(tmp_path):
    async with Webhook() as hook, in_process_engine(LOOPBACK_ALLOWED, tmp_path) as engine:
        worker = await connected(engine)
        await registered(worker, "hooks::slow", url=hook.base + "/slow", timeout_ms=200)
        hook.release.clear()  # the webhook never answers
        answer = await worker.call("hooks::slow", {})
        assert answer["error"]["code"] == "http_request_failed"
        assert "timed out" in answer["error"]["message"]


async def test_without_an_entry_the_module_is_off(tmp_path, caplog):
    async with Webhook() as hook, in_process_engine("workers: []\n", tmp_path) as engine:
        worker = await connected(engine)
        worker.send(type="registerfunction", id="hooks::off", invocation={"url": hook.base + "/x"})
        answer = await worker.call("hooks::off", {})
        assert answer["error"]["code"] == "function_not_found"
        assert "iii-http-functions module is opt-in" in caplog.text
        assert hook.requests.empty()


async def test_defaults_refuse_plain_http_and_loopback(tmp_path, caplog):
    config = "workers:\n  - name: iii-http-functions\n"
    async with Webhook() as hook, in_process_engine(config, tmp_path) as engine:
        worker = await connected(engine)
        worker.send(type="registerfunction", id="hooks::insecure", invocation={"url": hook.base + "/x"})
        answer = await worker.call("hooks::insecure", {})
        assert answer["error"]["code"] == "function_not_found"
        assert "HTTPS is required" in caplog.text
        assert hook.requests.empty()


def test_url_policy_order_and_private_addresses():
    strict = UrlPolicy(SecurityConfig())
    for url, reason in [
        ("not a url", "Invalid URL"),
        ("http://example.com/", "HTTPS is required"),
        ("https://127.0.0.1/", "Private IP blocked"),
        ("https://[::ffff:10.0.0.1]/", "Private IP blocked"),
        # Read as the client reads it: IDNA maps these digits to 127.0.0.1, which aiohttp
        # connects to without asking the resolver.
        ("https://①②⑦.0.0.1/", "Private IP blocked"),
        ("https://example.com:99999/", "Invalid URL"),
    ]:
        with pytest.raises(EngineError) as refused:
            strict.check(url)
        assert refused.value.message == reason, url
    assert strict.check("https://example.com/hook") == "example.com"
    listed = UrlPolicy(SecurityConfig(url_allowlist=["*.example.com"]))
    assert listed.check("https://api.example.com/") == "api.example.com"
    with pytest.raises(EngineError, match="allowlist"):
        listed.check("https://example.org/")
    assert not is_private(ipaddress.ip_address("100.64.0.1"))
    assert is_private(ipaddress.ip_address("fe80::1"))
    # IPv6 addresses that carry a private IPv4 one: NAT64 and 6to4 reach it through a gateway.
    assert is_private(ipaddress.ip_address("64:ff9b::a9fe:a9fe"))  # 169.254.169.254
    assert is_private(ipaddress.ip_address("2002:7f00:1::1"))  # 127.0.0.1
    assert not is_private(ipaddress.ip_address("64:ff9b::808:808"))  # 8.8.8.8
    assert not is_private(ipaddress.ip_address("2606:4700::1111"))


async def test_a_name_that_resolves_to_a_private_address_is_refused_at_connect(tmp_path):
    config = (
        "workers:\n  - name: iii-http-functions\n"
        "    config: {security: {url_allowlist: [localhost], require_https: false}}\n"
    )
    async with Webhook() as hook, in_process_engine(config, tmp_path) as engine:
        worker = await connected(engine)
        await registered(worker, "hooks::local", url=hook.base.replace("127.0.0.1", "localhost") + "/x")
        answer = await worker.call("hooks::local", {})
        assert answer["error"] == {"code": "url_validation_failed", "message": "Private IP blocked"}
        assert hook.requests.empty()


async def test_an_address_spelled_as_a_name_is_refused(tmp_path, caplog):
    """The URL is read as the client reads it: ``①②⑦.0.0.1`` is 127.0.0.1 to yarl (IDNA), which
    aiohttp connects to without asking the checking resolver."""
    config = "workers:\n  - name: iii-http-functions\n    config: {security: {require_https: false}}\n"
    async with Webhook() as hook, in_process_engine(config, tmp_path) as engine:
        worker = await connected(engine)
        url = hook.base.replace("127.0.0.1", "①②⑦.0.0.1") + "/x"
        worker.send(type="registerfunction", id="hooks::spelled", invocation={"url": url})
        answer = await worker.call("hooks::spelled", {})
        assert answer["error"]["code"] == "function_not_found"
        assert "Private IP blocked" in caplog.text
        assert hook.requests.empty()


# ---------------------------------------------------------------------- registration (sans-I/O)

LOOPBACK = HttpFunctionsConfig(SecurityConfig(url_allowlist=["127.0.0.1"], block_private_ips=False, require_https=False))


def _listed(peer) -> list[str]:
    return [f["function_id"] for f in peer.result_of("engine::functions::list", {"prefix": "hooks::"})["result"]["functions"]]


def test_registration_is_claimed_like_a_function_and_removed_with_its_worker():
    """Conflicts are rejected as for any function; refused URLs, undecodable invocations and
    missing secrets are dropped; the worker's HTTP functions go with it."""

    router = make_router({"iii-http-functions": LOOPBACK})
    owner = connected_peer(router, "owner", "hooks::taken")
    other = connected_peer(router, "other")
    other.function("hooks::taken", invocation={"url": "http://127.0.0.1:1/x"})
    assert [f["code"] for f in other.take() if f["type"] == "registrationrejected"] == ["FUNCTION_NAMESPACE_CONFLICT"]
    other.function("hooks::web", invocation={"url": "http://127.0.0.1:1/x", "method": "PUT"})
    other.function("hooks::refused", invocation={"url": "http://example.org/x"})  # not in the allowlist
    other.function("hooks::bad", invocation={"url": "http://127.0.0.1:1/x", "method": "TRACE"})
    other.function("hooks::split", invocation={"url": "http://127.0.0.1:1/x", "headers": {"X-A": "a\r\nX-B: b"}})
    other.function("hooks::spaced", invocation={"url": "http://127.0.0.1:1/x", "headers": {"X A": "a"}})
    other.function("hooks::secret", invocation={"url": "http://127.0.0.1:1/x", "auth": {"type": "bearer", "token_key": "III_TEST_UNSET_TOKEN"}})
    router.flush_events()
    assert _listed(owner) == ["hooks::taken", "hooks::web"]
    row = owner.result_of("engine::functions::info", {"function_id": "hooks::web"})["result"]
    assert row["worker_name"] == "other"
    router.disconnect(other.conn)
    router.flush_events()
    assert _listed(owner) == ["hooks::taken"]
