"""Listener RBAC: who a connection is (authentication), what it may call and see, what it may
register, and the middleware its calls go through (spec rbac.md).

A listener (``iii-worker-manager`` entry) with an ``rbac`` block or a ``middleware_function_id``
gets a :class:`Policy`; each connection accepted on it gets a :class:`Session` (from the auth
function's :class:`AuthResult`, or permissive without one). Connections on a listener with
neither have no session and take the router's fast path untouched.

The router calls :func:`screen_call` for every call a session makes and the ``register_*``
functions here for its registrations; the auth function, the hooks and the middleware are
engine-internal calls (``Router.invoke``), each with a deadline.
"""

from __future__ import annotations

import logging
import uuid
from typing import Annotated, Any, Callable, Optional

import msgspec
from msgspec import UNSET, Meta

from iii import codec
from iii.engine.host import DEFAULT_INVOCATION_TIMEOUT_MS
from iii.protocol import (
    DEFAULT_NAMESPACE,
    ErrorBody,
    ErrorCode,
    InvokeFunction,
    RegisterFunction,
    RegisterTrigger,
    RegisterTriggerType,
    TriggerRegistrationResult,
)

__all__ = [
    "INFRASTRUCTURE_IDS",
    "AuthResult",
    "ExposeRule",
    "Policy",
    "RbacConfig",
    "Session",
    "auth_input",
    "glob_match",
    "parse_expose_rule",
    "screen_call",
]

log = logging.getLogger("iii.engine")

#: Always callable by a session unless it forbids them explicitly (the public contract: additive).
INFRASTRUCTURE_IDS = frozenset({
    "engine::channels::create",
    "engine::workers::register",
    "engine::log::info",
    "engine::log::warn",
    "engine::log::error",
    "engine::log::debug",
    "engine::log::trace",
    "engine::baggage::get",
    "engine::baggage::set",
    "engine::baggage::get_all",
})

_WORKERS_REGISTER = "engine::workers::register"

#: Messages a session may queue behind a registration hook before it is dropped (and their bytes).
MAX_GATED_MESSAGES = 4096
MAX_GATED_BYTES = 16 * 1024 * 1024


# --------------------------------------------------------------------------- matching


def glob_match(pattern: str, text: str) -> bool:
    """Anchored glob where only ``*`` is special (any run of characters, ``:`` included)."""
    if "*" not in pattern:
        return pattern == text
    pieces = pattern.split("*")
    first, last = pieces[0], pieces[-1]
    if len(text) < len(first) + len(last) or not text.startswith(first) or not text.endswith(last):
        return False
    position, end = len(first), len(text) - len(last)
    for piece in pieces[1:-1]:
        found = text.find(piece, position, end)
        if found < 0:
            return False
        position = found + len(piece)
    return True


def _unwrap_match(value: str) -> Optional[str]:
    """The glob inside ``match("…")`` / ``match('…')`` (whitespace around it trimmed), else ``None``."""
    value = value.strip()
    for quote in ('"', "'"):
        opening = f"match({quote}"
        closing = f"{quote})"
        if value.startswith(opening) and value.endswith(closing) and len(value) >= len(opening) + len(closing):
            return value[len(opening):-len(closing)]
    return None


class ExposeRule:
    """One ``expose_functions`` entry, parsed: a glob on the id or a metadata filter, scoped to a
    namespace (``default`` when the rule names none)."""

    __slots__ = ("pattern", "metadata", "namespace")

    def __init__(self, pattern: Optional[str], metadata: Optional[dict[str, Any]], namespace: str) -> None:
        self.pattern = pattern
        #: key -> a glob (``str`` from ``match("…")``) or ``(value,)`` compared for JSON equality.
        self.metadata = metadata
        self.namespace = namespace

    def matches(self, function_id: str, ns: str, fn: Any) -> bool:
        if ns != self.namespace:
            return False
        if self.pattern is not None:
            return glob_match(self.pattern, function_id)
        found = fn.metadata if fn is not None else None
        if not isinstance(found, dict):
            return False
        for key, expected in self.metadata.items():  # type: ignore[union-attr]
            if key not in found:
                return False
            value = found[key]
            if isinstance(expected, str):
                if not isinstance(value, str) or not glob_match(expected, value):
                    return False
            elif expected[0] != value or isinstance(expected[0], bool) != isinstance(value, bool):
                return False
        return True


def parse_expose_rule(raw: Any) -> ExposeRule:
    """An ``expose_functions`` entry as written in the config.

    Raises:
        ValueError: the entry is none of the accepted forms (the message says why).
    """
    if isinstance(raw, str):
        pattern = _unwrap_match(raw)
        if pattern is None:
            raise ValueError(f"{raw!r} is not a rule: write a glob as match(\"{raw.strip()}\")")
        return ExposeRule(pattern, None, DEFAULT_NAMESPACE)
    if not isinstance(raw, dict):
        raise ValueError(f"{raw!r} is not a rule: expected match(\"glob\") or a mapping")
    for key in raw:
        if key not in ("match", "metadata", "namespace"):
            raise ValueError(
                f"unknown key '{key}' in expose_functions filter; expected 'match', 'metadata', or 'namespace'"
            )
    if "match" in raw and "metadata" in raw:
        raise ValueError("a filter has either a 'match' or a 'metadata' key, not both")
    namespace = raw.get("namespace", DEFAULT_NAMESPACE)
    if not isinstance(namespace, str) or not namespace:
        raise ValueError(f"expose_functions filter: 'namespace' must be a non-empty string, got {namespace!r}")
    if isinstance(raw.get("match"), str):
        return ExposeRule(raw["match"], None, namespace)  # raw glob: no match("…") wrapper here
    metadata = raw.get("metadata")
    if isinstance(metadata, dict) and metadata:
        conditions: dict[str, Any] = {}
        for key, value in metadata.items():
            glob = _unwrap_match(value) if isinstance(value, str) else None
            conditions[str(key)] = glob if glob is not None else (value,)
        return ExposeRule(None, conditions, namespace)
    raise ValueError("expected a 'match' or 'metadata' key with filter conditions")


# --------------------------------------------------------------------------- config


_FunctionId = Annotated[str, Meta(min_length=1)]


class RbacConfig(msgspec.Struct, forbid_unknown_fields=True):
    """The ``rbac`` block of a listener.

    Stricter than the original (which ignores unknown keys inside ``rbac``): a key this engine
    does not apply is refused, so a misspelt hook never leaves a listener open.
    """

    auth_function_id: Optional[_FunctionId] = None
    expose_functions: list[Any] = []
    on_function_registration_function_id: Optional[_FunctionId] = None
    on_trigger_registration_function_id: Optional[_FunctionId] = None
    on_trigger_type_registration_function_id: Optional[_FunctionId] = None
    #: Deadline of one auth call: a connection not authenticated by then is refused.
    auth_timeout_ms: Annotated[int, Meta(ge=1, le=600_000)] = 10_000
    #: Deadline of one registration hook call: past it, the registration is refused.
    hook_timeout_ms: Annotated[int, Meta(ge=1, le=600_000)] = 10_000
    #: Connections of this listener waiting for their auth call at once; more are refused.
    max_pending_auth: Annotated[int, Meta(ge=1, le=100_000)] = 256

    def __post_init__(self) -> None:
        for index, rule in enumerate(self.expose_functions):
            try:
                parse_expose_rule(rule)
            except ValueError as exc:
                raise ValueError(f"expose_functions[{index}]: {exc}") from None


class AuthResult(msgspec.Struct):
    """What the auth function returns (unknown fields ignored; an explicit ``null`` counts as
    omitted)."""

    namespaces: Optional[dict[str, list[str]]] = None
    allowed_functions: Optional[list[str]] = None
    forbidden_functions: Optional[list[str]] = None
    allowed_trigger_types: Optional[list[str]] = None
    allow_trigger_type_registration: Optional[bool] = None
    allow_function_registration: Optional[bool] = None
    context: Any = None
    function_registration_prefix: Optional[str] = None


class Session:
    """What one connection may do; fixed for the life of its socket."""

    __slots__ = (
        "policy",
        "namespaces",
        "allowed_functions",
        "forbidden_functions",
        "allowed_trigger_types",
        "allow_trigger_type_registration",
        "allow_function_registration",
        "context",
        "prefix",
    )

    def __init__(self, policy: Policy, result: Optional[AuthResult] = None) -> None:
        self.policy = policy
        if result is None:  # no auth function: the permissive defaults
            result = AuthResult(allow_trigger_type_registration=True, allow_function_registration=True)
        self.namespaces: dict[str, list[str]] = {
            ns: [_unwrap_match(g) or g for g in grants] for ns, grants in (result.namespaces or {}).items()
        }
        self.allowed_functions = frozenset(result.allowed_functions or ())
        self.forbidden_functions = frozenset(result.forbidden_functions or ())
        self.allowed_trigger_types = (
            None if result.allowed_trigger_types is None else frozenset(result.allowed_trigger_types)
        )
        self.allow_trigger_type_registration = bool(result.allow_trigger_type_registration)
        self.allow_function_registration = result.allow_function_registration is not False
        self.context = {} if result.context is None else result.context
        self.prefix = result.function_registration_prefix or None

    def allows(self, function_id: str, ns: str, fn: Any) -> bool:
        """The access predicate (rbac.md §5.2) for ``function_id`` in ``ns`` (``fn``: the function
        registered there, if any)."""
        if function_id in self.forbidden_functions:
            return False
        grants = self.namespaces.get(ns)
        if grants:
            for grant in grants:
                if grant == function_id or ("*" in grant and glob_match(grant, function_id)):
                    return True
        if ns == DEFAULT_NAMESPACE and function_id in self.allowed_functions:
            return True
        if function_id in INFRASTRUCTURE_IDS:
            return True
        policy = self.policy
        if not policy.rbac:
            return True
        for rule in policy.rules:
            if rule.matches(function_id, ns, fn):
                return True
        return False

    def denial(self, function_id: str) -> ErrorBody:
        if function_id in self.forbidden_functions:
            return ErrorBody(
                ErrorCode.FORBIDDEN, f"function '{function_id}' not allowed (remove from rbac.forbidden_functions)"
            )
        return ErrorBody(ErrorCode.FORBIDDEN, f"function '{function_id}' not allowed (add to rbac.expose_functions)")

    def registered_id(self, function_id: str) -> str:
        """The id a function the session registers as ``function_id`` is stored under."""
        return function_id if self.prefix is None else f"{self.prefix}::{function_id}"


class Policy:
    """One listener's rules, compiled from its config; also counts its pending handshakes."""

    def __init__(self, rbac: Optional[RbacConfig], middleware_function_id: Optional[str]) -> None:
        self.rbac = rbac is not None
        config = rbac or RbacConfig()
        self.rules = [parse_expose_rule(rule) for rule in config.expose_functions]
        self.auth_function_id = config.auth_function_id
        self.on_function_registration = config.on_function_registration_function_id
        self.on_trigger_registration = config.on_trigger_registration_function_id
        self.on_trigger_type_registration = config.on_trigger_type_registration_function_id
        self.auth_timeout_ms = config.auth_timeout_ms
        self.hook_timeout_ms = config.hook_timeout_ms
        self.max_pending_auth = config.max_pending_auth
        self.middleware_function_id = middleware_function_id
        #: The functions this listener calls to apply its rules: never a session's to register.
        self.own_functions = frozenset(filter(None, (
            self.auth_function_id, self.on_function_registration, self.on_trigger_registration,
            self.on_trigger_type_registration, middleware_function_id,
        )))
        #: Connections waiting for their auth call now.
        self.pending_auth = 0
        #: Refusals not logged yet (at most one line per second: a flood must not flood the log).
        self._refusals_unlogged = 0
        self._refusal_logged_at = float("-inf")

    def log_refusal(self, ip: Optional[str], reason: str, now: float) -> None:
        """Log a refused connection, or count it when one was logged less than a second ago."""
        if now - self._refusal_logged_at < 1.0:
            self._refusals_unlogged += 1
            return
        more = self._refusals_unlogged
        self._refusals_unlogged = 0
        self._refusal_logged_at = now
        log.info("connection from %s refused: %s%s", ip, reason, f" ({more} more refused since the last such line)" if more else "")

    def auth_full(self) -> bool:
        """Are ``max_pending_auth`` connections waiting for the auth function already?"""
        return self.auth_function_id is not None and self.pending_auth >= self.max_pending_auth

    def auth_full_message(self) -> str:
        return f"too many connections waiting for authentication (max {self.max_pending_auth})"

    def authenticate(
        self, router: Any, request: Any, ip: Optional[str], done: Callable[[Optional[Session], Optional[str]], None]
    ) -> None:
        """Start authenticating a connection; ``done(session, None)`` or ``done(None, reason)``
        follows, at the latest after ``auth_timeout_ms`` (``done`` may run before this returns).

        ``request`` is the picows upgrade request (``headers``, ``path``).
        """
        if self.auth_function_id is None:
            done(Session(self), None)
            return
        if self.auth_full():
            done(None, self.auth_full_message())
            return
        self.pending_auth += 1

        def answered(result: bytes, error: Optional[ErrorBody]) -> None:
            self.pending_auth -= 1
            if error is not None:
                done(None, error.message)
                return
            try:
                decoded = msgspec.json.decode(result, type=Optional[AuthResult])
            except msgspec.DecodeError as exc:
                done(None, str(exc))
                return
            if decoded is None:
                done(None, "auth function returned no result")
                return
            done(Session(self, decoded), None)

        if router.find_function(DEFAULT_NAMESPACE, self.auth_function_id) is None:
            answered(b"null", ErrorBody(
                ErrorCode.FUNCTION_NOT_FOUND, f"Function {self.auth_function_id} not found in namespace default"
            ))
            return
        data = codec.encode_json(auth_input(request.headers, request.path, ip))
        try:
            router.invoke(DEFAULT_NAMESPACE, self.auth_function_id, data, on_result=answered, timeout_ms=self.auth_timeout_ms)
        except Exception as exc:  # never allow on a failure of our own
            log.exception("auth call to %s failed", self.auth_function_id)
            answered(b"null", ErrorBody(ErrorCode.INVOCATION_FAILED, str(exc)))


def auth_input(headers: Any, path: bytes, ip: Optional[str]) -> dict[str, Any]:
    """The auth function's input: headers (names lower-cased, non-visible-ASCII values dropped, the
    last of repeated names), the raw query split into lists, the peer IP."""
    header_map: dict[str, str] = {}
    for name, value in headers.items():
        if value.isascii() and value.isprintable():  # visible ASCII and spaces
            header_map[name.lower()] = value
    query_params: dict[str, list[str]] = {}
    _, _, query = path.partition(b"?")
    if query:
        for pair in query.decode("utf-8", "replace").split("&"):
            key, _, value = pair.partition("=")
            if key:
                query_params.setdefault(key, []).append(value)
    return {"headers": header_map, "query_params": query_params, "ip_address": ip or ""}


def auth_error_frame(message: str) -> bytes:
    return codec.encode_json({"type": "error", "error": {"code": ErrorCode.AUTH_ERROR, "message": message}})


# --------------------------------------------------------------------------- calls


def screen_call(router: Any, conn: Any, session: Session, msg: InvokeFunction, ns: str) -> bool:
    """Apply a session's rules to a call it makes (after the namespace check). Returns ``True``
    when the call was answered here (refused, or handed to the middleware)."""
    function_id = msg.function_id
    fn = router.find_function(ns, function_id)
    error: Optional[ErrorBody] = None
    if not session.allows(function_id, ns, fn):
        error = session.denial(function_id)
    elif function_id == _WORKERS_REGISTER and session.namespaces:
        declared = _declared_namespace(msg)
        if declared not in session.namespaces:
            error = ErrorBody(
                ErrorCode.FORBIDDEN,
                f"namespace '{declared}' not allowed for this session "
                f"(permitted: {', '.join(sorted(session.namespaces))})",
            )
    if error is not None:
        # Answered even without an id (a void call): the SDK drops what it does not know.
        conn.send(codec.encode_error_result(msg.invocation_id or str(uuid.uuid4()), function_id, error))
        return True
    middleware = session.policy.middleware_function_id
    if middleware is None or (function_id.startswith("engine::") and (fn is None or fn.owner is None)):
        return False
    _through_middleware(router, conn, session, msg, ns, middleware)
    return True


def _declared_namespace(msg: InvokeFunction) -> str:
    try:
        data = codec.decode_json(bytes(msg.data)) if msg.data else None
    except Exception:
        return DEFAULT_NAMESPACE
    declared = data.get("namespace") if isinstance(data, dict) else None
    return declared if isinstance(declared, str) else DEFAULT_NAMESPACE


def _through_middleware(router: Any, conn: Any, session: Session, msg: InvokeFunction, ns: str, middleware: str) -> None:
    """Call the middleware instead of the target; its outcome is the caller's answer."""
    invocation_id = msg.invocation_id or str(uuid.uuid4())
    function_id = msg.function_id
    data = codec.encode_json({
        "function_id": function_id,
        "payload": msgspec.Raw(bytes(msg.data) if msg.data else b"null"),
        "action": msg.action,
        "context": session.context,
        "namespace": ns,
    })

    def answered(result: bytes, error: Optional[ErrorBody]) -> None:
        if conn.closed:
            return
        if error is None:
            conn.send(codec.encode_result(invocation_id, function_id, result))
        else:
            conn.send(codec.encode_error_result(invocation_id, function_id, error))

    router.invoke(
        ns, middleware, data, bytes(msg.metadata) if msg.metadata else b"",
        on_result=answered, timeout_ms=DEFAULT_INVOCATION_TIMEOUT_MS,
    )


# --------------------------------------------------------------------------- registrations


def _hook(
    router: Any, conn: Any, hook_id: str, hook_input: dict[str, Any], timeout_ms: int,
    allowed: Callable[[dict[str, Any]], None], what: str,
) -> None:
    """Call a registration hook with the connection's later messages held until it answers;
    ``allowed(remap)`` runs only when it answers with a JSON object."""
    router.gate(conn)

    def answered(result: bytes, error: Optional[ErrorBody]) -> None:
        try:
            if conn.closed:
                return
            verdict: Any = None
            if error is None:
                try:
                    verdict = codec.decode_json(result)
                except Exception:
                    verdict = None
            if isinstance(verdict, dict):
                allowed(verdict)
            else:
                reason = error.message if error is not None else f"it answered {result[:80]!r}, not an object"
                log.warning("worker %s: %s refused by %s: %s", conn.id, what, hook_id, reason)
        finally:
            router.ungate(conn)

    router.invoke(DEFAULT_NAMESPACE, hook_id, codec.encode_json(hook_input), on_result=answered, timeout_ms=timeout_ms)


def _text(remap: dict[str, Any], key: str, original: Any) -> Any:
    value = remap.get(key)
    return value if isinstance(value, str) else original


def register_function(router: Any, conn: Any, msg: RegisterFunction, apply: Callable[[Any, RegisterFunction], None]) -> None:
    """A session's ``registerfunction``: flag, hook, prefix, then ``apply``; refusals are silent."""
    session: Session = conn.session
    if not session.allow_function_registration:
        log.warning("worker %s: registerfunction %s refused: this session may not register functions", conn.id, msg.id)
        return

    def admit(registration: RegisterFunction) -> None:
        function_id = session.registered_id(registration.id)
        if function_id in session.policy.own_functions:
            # A session serving its own listener's auth, hooks or middleware would decide for
            # everyone (the original lets it when the trusted worker is not connected).
            log.warning("worker %s: function %s refused: this listener calls it for its rules", conn.id, function_id)
            return
        apply(conn, msgspec.structs.replace(registration, id=function_id))

    hook_id = session.policy.on_function_registration
    if hook_id is None:
        admit(msg)
        return

    def allowed(remap: dict[str, Any]) -> None:
        changed = msgspec.structs.replace(
            msg, id=_text(remap, "function_id", msg.id), description=_text(remap, "description", msg.description)
        )
        if "metadata" in remap:
            changed = msgspec.structs.replace(changed, metadata=msgspec.Raw(codec.encode_json(remap["metadata"])))
        admit(changed)

    hook_input = {
        "function_id": msg.id,
        "description": msg.description,
        "metadata": msgspec.Raw(bytes(msg.metadata)) if msg.metadata else None,
        "namespace": conn.namespace,
        "context": session.context,
    }
    _hook(router, conn, hook_id, hook_input, session.policy.hook_timeout_ms, allowed, f"function {msg.id}")


def register_trigger_type(
    router: Any, conn: Any, msg: RegisterTriggerType, apply: Callable[[Any, RegisterTriggerType], None]
) -> None:
    """A session's ``registertriggertype``: flag, hook, then ``apply``; refusals are silent."""
    session: Session = conn.session
    if not session.allow_trigger_type_registration:
        log.warning("worker %s: trigger type %s refused: this session may not register trigger types", conn.id, msg.id)
        return
    hook_id = session.policy.on_trigger_type_registration
    if hook_id is None:
        apply(conn, msg)
        return

    def allowed(remap: dict[str, Any]) -> None:
        apply(conn, msgspec.structs.replace(
            msg, id=_text(remap, "trigger_type_id", msg.id), description=_text(remap, "description", msg.description)
        ))

    hook_input = {"trigger_type_id": msg.id, "description": msg.description, "context": session.context}
    _hook(router, conn, hook_id, hook_input, session.policy.hook_timeout_ms, allowed, f"trigger type {msg.id}")


def register_trigger(router: Any, conn: Any, msg: RegisterTrigger, apply: Callable[[Any, RegisterTrigger], None]) -> None:
    """A session's ``registertrigger`` (namespaces already checked): type list, hook, prefix,
    target check, then ``apply``."""
    session: Session = conn.session
    if session.allowed_trigger_types is not None and msg.trigger_type not in session.allowed_trigger_types:
        log.warning("worker %s: trigger %s refused: type %s is not allowed for this session", conn.id, msg.id, msg.trigger_type)
        return
    target_ns = DEFAULT_NAMESPACE if msg.namespace is UNSET else msg.namespace

    def admit(binding: RegisterTrigger) -> None:
        function_id = session.registered_id(binding.function_id)
        binding = msgspec.structs.replace(binding, function_id=function_id)
        if not session.allows(function_id, target_ns, router.find_function(target_ns, function_id)):
            conn.send(codec.encode_message(TriggerRegistrationResult(
                id=binding.id, trigger_type=binding.trigger_type, function_id=function_id,
                error=ErrorBody(ErrorCode.FORBIDDEN, f"function '{function_id}' not allowed in namespace '{target_ns}'"),
            )))
            return
        apply(conn, binding)

    hook_id = session.policy.on_trigger_registration
    if hook_id is None:
        admit(msg)
        return

    def allowed(remap: dict[str, Any]) -> None:
        changed = msgspec.structs.replace(
            msg,
            id=_text(remap, "trigger_id", msg.id),
            trigger_type=_text(remap, "trigger_type", msg.trigger_type),
            function_id=_text(remap, "function_id", msg.function_id),
        )
        if "config" in remap:
            changed = msgspec.structs.replace(changed, config=msgspec.Raw(codec.encode_json(remap["config"])))
        admit(changed)

    hook_input = {
        "trigger_id": msg.id,
        "trigger_type": msg.trigger_type,
        "function_id": msg.function_id,
        "config": msgspec.Raw(bytes(msg.config)) if msg.config else None,
        "metadata": msgspec.Raw(bytes(msg.metadata)) if msg.metadata else None,
        "namespace": target_ns,
        "context": session.context,
    }
    _hook(router, conn, hook_id, hook_input, session.policy.hook_timeout_ms, allowed, f"trigger {msg.id}")

