"""Listener RBAC without sockets: rules, the access predicate, sessions' calls, hooks, prefixes,
middleware and discovery (rbac.md), on the router with fake peers."""

from __future__ import annotations

import re
from pathlib import Path
from types import SimpleNamespace

import msgspec
import pytest

from helpers import FakeClock, Peer, clocked_router, connected, make_router
from iii.config import ConfigError, parse_config
from iii.engine.rbac import (
    INFRASTRUCTURE_IDS,
    AuthResult,
    Policy,
    RbacConfig,
    Session,
    auth_input,
    glob_match,
    parse_expose_rule,
)

RULES = ['match("test::ew::public::*")', 'match("engine::functions::list")', {"metadata": {"ew_public": True}}]


def policy(rules=RULES, middleware=None, **hooks):
    return Policy(msgspec.convert({"expose_functions": rules, **hooks}, RbacConfig), middleware)


def session_peer(router, result=None, rbac=None, name="rbac-client"):
    """A peer whose connection has a session of ``rbac`` (a policy) from ``result``."""
    peer = Peer(router)
    peer.conn.session = Session(rbac or policy(), None if result is None else AuthResult(**result))
    peer.register(name)
    router.flush_events()
    peer.take()
    return peer


@pytest.fixture
def router(codec):
    return make_router()


# --------------------------------------------------------------------------- rules


@pytest.mark.parametrize(
    "pattern, text, expected",
    [
        ("*", "", True),
        ("*", "a::b", True),
        ("engine::*", "engine::a::b", True),
        ("*::public", "x::y::public", True),
        ("api::*::read", "api::users::read", True),
        ("api::*::read", "api::users::write", False),
        ("*public*", "public_api", True),
        ("a*a", "a", False),
        ("a*b*c", "abc", True),
        ("a*b*c", "acb", False),
        ("exact", "exact", True),
        ("exact", "exactly", False),
        ("f?o", "foo", False),  # only * is special
        ("[ab]", "a", False),
    ],
)
def test_glob(pattern, text, expected):
    assert glob_match(pattern, text) is expected


@pytest.mark.parametrize(
    "raw, message",
    [
        ("api::*", 'match("api::*")'),
        ({"match": "a", "tags": 1}, "unknown key 'tags' in expose_functions filter"),
        ({"match": "a", "metadata": {"x": 1}}, "either a 'match' or a 'metadata' key, not both"),
        ({"metadata": {}}, "expected a 'match' or 'metadata' key with filter conditions"),
        ({"namespace": "x"}, "expected a 'match' or 'metadata' key with filter conditions"),
        (7, "expected match"),
    ],
)
def test_invalid_expose_rules_are_refused(raw, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        parse_expose_rule(raw)


def test_rule_forms_and_namespace_scope():
    fn = SimpleNamespace(metadata={"public": True, "tier": "pro-plus", "n": 1})
    wrapped = parse_expose_rule(" match('api::*') ")
    assert wrapped.matches("api::x", "default", None) and not wrapped.matches("api::x", "other", None)
    raw_map = parse_expose_rule({"match": "orders::*", "namespace": "orders"})
    assert raw_map.matches("orders::get", "orders", None) and not raw_map.matches("orders::get", "default", None)
    assert not parse_expose_rule({"match": 'match("x::*")'}).matches("x::y", "default", None)  # literal
    meta = parse_expose_rule({"metadata": {"public": True, "tier": 'match("pro*")'}})
    assert meta.matches("any::id", "default", fn)
    assert not meta.matches("any::id", "default", None)  # not registered: metadata rules never match
    assert not meta.matches("any::id", "default", SimpleNamespace(metadata={"public": True, "tier": 3}))
    assert not meta.matches("any::id", "default", SimpleNamespace(metadata=["public"]))
    assert not parse_expose_rule({"metadata": {"n": True}}).matches("f", "default", fn)  # true is not 1


def test_the_predicate_in_order():
    rbac = policy()
    grants = Session(rbac, AuthResult(
        namespaces={"svc": ['match("svc::*")', "exact::id"]},
        allowed_functions=["extra::fn"],
        forbidden_functions=["engine::log::info", "test::ew::public::secret"],
    ))
    assert not grants.allows("engine::log::info", "default", None)  # forbidden beats infrastructure
    assert not grants.allows("test::ew::public::secret", "default", None)  # … and expose rules
    assert grants.allows("svc::a::b", "svc", None) and grants.allows("exact::id", "svc", None)
    assert not grants.allows("svc::a", "default", None)
    assert grants.allows("extra::fn", "default", None) and not grants.allows("extra::fn", "svc", None)
    assert all(grants.allows(i, "default", None) for i in INFRASTRUCTURE_IDS - {"engine::log::info"})
    assert grants.allows("test::ew::public::echo", "default", None)
    assert not grants.allows("test::ew::public::echo", "svc", None)  # default-scoped rule
    assert not grants.allows("engine::functions::info", "default", None)
    assert grants.denial("engine::log::info").message.endswith("(remove from rbac.forbidden_functions)")
    assert grants.denial("x").message == "function 'x' not allowed (add to rbac.expose_functions)"
    middleware_only = Session(Policy(None, "mw::fn"))
    assert middleware_only.allows("anything::at::all", "any", None)
    assert middleware_only.allow_trigger_type_registration  # true without an auth function …
    assert not Session(rbac, AuthResult()).allow_trigger_type_registration  # … false when omitted


def test_auth_input_shape():
    headers = {"Host": "h:1", "X-Test-Token": "valid-token", "X-Bad": "caf\u00e9"}
    assert auth_input(headers, b"/?token=abc&a=1&a=2&c&=skip", "127.0.0.1") == {
        "headers": {"host": "h:1", "x-test-token": "valid-token"},
        "query_params": {"token": ["abc"], "a": ["1", "2"], "c": [""]},
        "ip_address": "127.0.0.1",
    }
    assert auth_input({}, b"/", "::1")["query_params"] == {}


# --------------------------------------------------------------------------- config


def test_listener_config_accepts_rbac_and_refuses_what_it_cannot_apply(tmp_path: Path):
    text = (
        "workers:\n  - name: iii-worker-manager\n    config:\n      port: 49199\n"
        "  - name: iii-worker-manager\n    config:\n      port: 49135\n"
        "      middleware_function_id: test::mw\n      rbac:\n        auth_function_id: test::auth\n"
        "        expose_functions:\n          - match(\"test::*\")\n          - metadata: {public: true}\n"
    )
    config = parse_config(text, tmp_path / "c.yaml")
    trusted, restricted = config.listeners
    assert trusted.rbac is None and trusted.middleware_function_id is None
    assert restricted.rbac.auth_function_id == "test::auth" and restricted.middleware_function_id == "test::mw"
    for bad, named in [
        ("rbac:\n        expose_functions: ['api::*']\n", "rbac: expose_functions[0]: 'api::*' is not a rule"),
        ("rbac:\n        auth_fn: x\n", "auth_fn"),
        ("rbac:\n        function_registration_prefix: p\n", "function_registration_prefix"),
        ("function_registration_prefix: p\n", "function_registration_prefix"),
        ("rbac:\n        auth_timeout_ms: 0\n", "auth_timeout_ms"),
    ]:
        with pytest.raises(ConfigError, match=re.escape(named)):
            parse_config("workers:\n  - name: iii-worker-manager\n    config:\n      " + bad, tmp_path / "c.yaml")


# --------------------------------------------------------------------------- calls


def test_denied_calls_answer_forbidden_even_when_void_or_unregistered(router):
    owner = connected(router, "owner", "test::ew::private", "test::ew::public::echo")
    client = session_peer(router, {"forbidden_functions": ["test::ew::echo"]})
    client.call("test::ew::private", {}, invocation_id="a")
    client.call("test::ew::echo", {}, invocation_id="b")
    client.send(type="invokefunction", function_id="test::ew::private", data={}, action={"type": "void"})
    denied = client.take()
    assert [(f["invocation_id"], f["error"]["code"]) for f in denied[:2]] == [("a", "FORBIDDEN"), ("b", "FORBIDDEN")]
    assert denied[0]["error"]["message"] == "function 'test::ew::private' not allowed (add to rbac.expose_functions)"
    assert denied[1]["error"]["message"].endswith("(remove from rbac.forbidden_functions)")
    assert denied[2]["error"]["code"] == "FORBIDDEN" and denied[2]["invocation_id"]  # fresh id for a void call
    assert owner.take() == []
    client.call("test::ew::public::echo", {"x": 1}, invocation_id="c")
    (invoke,) = owner.take()
    assert invoke["function_id"] == "test::ew::public::echo" and invoke["data"]["_caller_worker_id"] == client.id


def test_infrastructure_ids_stay_callable_and_discovery_must_be_exposed(router):
    client = session_peer(router, {}, policy(rules=[]))
    assert "error" not in client.result_of("engine::workers::register", {"name": "x"})
    assert client.result_of("engine::functions::list", {})["error"]["code"] == "FORBIDDEN"


def test_a_scoped_session_declares_only_its_namespaces(router):
    client = session_peer(router, {"namespaces": {"billing": [], "orders": []}})
    frame = client.result_of("engine::workers::register", {"name": "n", "namespace": "other"})
    assert frame["error"] == {
        "code": "FORBIDDEN",
        "message": "namespace 'other' not allowed for this session (permitted: billing, orders)",
    }
    assert "error" not in client.result_of("engine::workers::register", {"name": "n", "namespace": "billing"})


def test_middleware_replaces_allowed_calls_and_engine_builtins_bypass_it(router):
    owner = connected(router, "owner", "test::ew::public::echo", "mw::fn")
    client = session_peer(router, {"context": {"user_id": "u1"}}, policy(middleware="mw::fn"))
    client.call("test::ew::public::echo", {"msg": "hi"}, invocation_id="c1", metadata={"m": 1})
    (invoke,) = owner.take()
    assert invoke["function_id"] == "mw::fn"
    assert invoke["data"] == {
        "function_id": "test::ew::public::echo",
        "payload": {"msg": "hi"},
        "action": None,
        "context": {"user_id": "u1"},
        "namespace": "default",
    }
    assert invoke["metadata"] == {"m": 1}
    owner.send(type="invocationresult", invocation_id=invoke["invocation_id"], function_id="mw::fn", result={"via": "mw"})
    (answer,) = client.take()
    assert (answer["invocation_id"], answer["function_id"], answer["result"]) == ("c1", "test::ew::public::echo", {"via": "mw"})
    # engine-owned builtins are served directly under the caller's session
    assert "functions" in client.result_of("engine::functions::list", {})["result"]
    assert owner.take() == []
    # a missing middleware is the caller's error
    lonely = session_peer(router, {}, policy(middleware="mw::missing"), name="lonely")
    assert lonely.result_of("test::ew::public::echo", {})["error"]["code"] == "function_not_found"


# --------------------------------------------------------------------------- registrations


def _answer(peer, result=None, error=None):
    """Answer the one call ``peer`` was sent; returns its data."""
    (invoke,) = peer.take()
    fields = {"result": result} if error is None else {"error": error}
    peer.send(type="invocationresult", invocation_id=invoke["invocation_id"], function_id=invoke["function_id"], **fields)
    return invoke["data"]


HOOKS = {
    "on_function_registration_function_id": "hook::fn",
    "on_trigger_registration_function_id": "hook::trigger",
    "on_trigger_type_registration_function_id": "hook::tt",
}


@pytest.mark.parametrize(
    "verdict, registered",
    [
        ({"result": {}}, "plain"),
        ({"result": {"function_id": "renamed", "metadata": None}}, "renamed"),
        ({"result": None}, None),
        ({"result": [1]}, None),
        ({"result": "yes"}, None),
        ({"error": {"code": "x", "message": "no"}}, None),
    ],
)
def test_function_hook_allows_only_with_an_object(router, verdict, registered):
    hooks = connected(router, "hooks", "hook::fn")
    client = session_peer(router, {"context": {"user_id": "u"}}, policy(**HOOKS))
    client.function("plain", description="d", metadata={"a": 1})
    seen = _answer(hooks, **verdict)
    assert seen == {"function_id": "plain", "description": "d", "metadata": {"a": 1}, "namespace": "default", "context": {"user_id": "u"}}
    ids = {fn.id for fn in router.all_functions() if fn.owner is client.conn}
    assert ids == ({registered} if registered else set())
    if registered == "renamed":
        assert router.find_function("default", "renamed").metadata is None  # key present: replaced


def test_a_session_cannot_take_its_listeners_own_functions(router):
    client = session_peer(router, {}, policy(rules=['match("*")'], middleware="mw::fn", auth_function_id="auth::fn"))
    client.function("auth::fn")
    client.function("mw::fn")
    client.function("fine::fn")
    assert {fn.id for fn in router.all_functions() if fn.owner is client.conn} == {"fine::fn"}


def test_registration_flags_drop_silently(router):
    client = session_peer(router, {"allow_function_registration": False})
    client.function("f::x")
    client.send(type="registertriggertype", id="tt::x", description="")
    assert client.take() == []
    assert router.find_function("default", "f::x") is None and ("default", "tt::x") not in router.trigger_types


def test_a_hook_holds_the_sessions_later_messages_in_order(router):
    hooks = connected(router, "hooks", "hook::fn")
    client = session_peer(router, {}, policy(rules=['match("*")'], **HOOKS))
    client.function("first")
    client.send(type="unregisterfunction", id="first")  # must apply after the hook's answer
    client.call("engine::functions::list", {}, invocation_id="q")
    assert client.take() == []
    _answer(hooks, result={})
    listed = client.take()
    assert [f["invocation_id"] for f in listed] == ["q"]
    assert router.find_function("default", "first") is None


def test_an_unanswered_hook_denies_at_its_deadline():
    clock = FakeClock(1000.0)
    router = clocked_router(clock)
    hooks = connected(router, "hooks", "hook::fn")
    client = session_peer(router, {}, policy(**HOOKS, hook_timeout_ms=500))
    client.function("slow")
    hooks.take()
    clock.advance(0.6)
    assert router.find_function("default", "slow") is None
    client.function("after")  # the gate opened: the next registration goes to the hook again
    assert hooks.take()[0]["data"]["function_id"] == "after"


def test_trigger_type_and_trigger_hooks(router):
    hooks = connected(router, "hooks", "hook::tt", "hook::trigger")
    router.add_function("target::fn", lambda r, c, d: None, module="t")
    client = session_peer(router, {"allow_trigger_type_registration": True, "context": {"user_id": "u"}},
                          policy(rules=['match("target::*")'], **HOOKS))
    client.send(type="registertriggertype", id="denied-tt::x", description="Should be denied")
    assert _answer(hooks, error={"code": "e", "message": "no"}) == {
        "trigger_type_id": "denied-tt::x", "description": "Should be denied", "context": {"user_id": "u"},
    }
    client.send(type="registertriggertype", id="ok-tt", description="")
    _answer(hooks, result={"trigger_type_id": "ok-tt-renamed"})
    assert ("default", "denied-tt::x") not in router.trigger_types
    assert ("default", "ok-tt-renamed") in router.trigger_types
    client.send(type="registertrigger", id="b1", trigger_type="ok-tt-renamed", function_id="target::fn", config={"k": "v"})
    seen = _answer(hooks, result={"config": None})
    assert seen == {"trigger_id": "b1", "trigger_type": "ok-tt-renamed", "function_id": "target::fn",
                    "config": {"k": "v"}, "metadata": None, "namespace": "default", "context": {"user_id": "u"}}
    assert router.bindings["b1"].config == b"null"
    client.take()
    client.send(type="registertrigger", id="b2", trigger_type="ok-tt-renamed", function_id="secret::fn", config={})
    _answer(hooks, result={})
    (refusal,) = client.take()
    assert refusal["error"] == {"code": "FORBIDDEN", "message": "function 'secret::fn' not allowed in namespace 'default'"}
    assert "b2" not in router.bindings and "b2" not in router.parked


def test_allowed_trigger_types_limit_bindings_both_ways(router):
    router.add_function("target::fn", lambda r, c, d: None, module="t")
    client = session_peer(router, {"allowed_trigger_types": ["cron"]},
                          policy(rules=['match("target::*")', 'match("engine::register_trigger")']))
    client.send(type="registertrigger", id="b", trigger_type="http", function_id="target::fn", config={})
    assert client.take() == [] and "b" not in router.parked and "b" not in router.bindings
    frame = client.result_of("engine::register_trigger", {"trigger_type": "http", "function_id": "target::fn", "config": {}})
    assert frame["error"] == {"code": "FORBIDDEN", "message": "Trigger type 'http' is not allowed for this session."}


def test_prefix_scopes_registrations_and_is_stripped_on_delivery(router):
    client = session_peer(router, {"function_registration_prefix": "p"}, policy(rules=['match("*")']))
    trusted = connected(router, "trusted")
    client.function("echo")
    assert router.find_function("default", "p::echo").owner is client.conn
    trusted.call("p::echo", {"x": 1}, invocation_id="t1")
    (invoke,) = client.take()
    assert invoke["function_id"] == "echo" and invoke["invocation_id"] == "t1"
    client.send(type="invocationresult", invocation_id="t1", function_id="echo", result={"ok": True})
    assert trusted.take()[0]["result"] == {"ok": True}
    client.send(type="registertrigger", id="b", trigger_type="none-yet", function_id="echo", config={})
    assert router.parked["b"].function_id == "p::echo"
    client.send(type="unregisterfunction", id="echo")
    assert router.find_function("default", "p::echo") is None


# --------------------------------------------------------------------------- discovery


def test_discovery_shows_a_session_only_what_it_may_call(router):
    owner = connected(router, "owner", "test::ew::public::echo", "test::ew::private", "test::ew::valid-token-echo")
    owner.function("test::ew::meta-public", metadata={"ew_public": True})
    valid = session_peer(router, {"allowed_functions": ["test::ew::valid-token-echo"]}, name="valid")
    restricted = session_peer(router, {"forbidden_functions": ["test::ew::public::echo"]}, name="restricted")

    def listed(peer):
        return {f["function_id"] for f in peer.result_of("engine::functions::list", {})["result"]["functions"]}

    assert listed(valid) == {"test::ew::public::echo", "test::ew::meta-public", "test::ew::valid-token-echo"}
    assert listed(restricted) == {"test::ew::meta-public"}
    assert "test::ew::private" in {f["function_id"] for f in owner.result_of("engine::functions::list", {})["result"]["functions"]}
    wide = session_peer(router, {}, policy(rules=RULES + ['match("engine::functions::info")']), name="wide")
    hidden = wide.result_of("engine::functions::info", {"function_id": "test::ew::private"})
    assert hidden["error"] == {"code": "FORBIDDEN", "message": "Function 'test::ew::private' is not visible to this session."}
    batch = wide.result_of("engine::functions::info", {"function_ids": ["test::ew::private", "test::ew::meta-public"]})
    rows = batch["result"]["functions"]
    assert rows[0] == {"function_id": "test::ew::private", "error": "forbidden"} and rows[1]["function_id"] == "test::ew::meta-public"
