"""The engine's own functions (``engine::*``) and its discovery trigger types.

Discovery answers as the user-facing page (seed) shows: ``engine::workers::list`` →
``{workers}``, ``engine::functions::list`` → ``{functions}``, ``engine::triggers::list`` →
``{triggers}`` (every registered trigger), ``engine::trigger-types::list`` → ``{trigger_types}``
(every trigger type with its schemas). The newer original's names keep their meaning where the
seed is silent (``engine::registered-triggers::*``, ``engine::triggers::info``).

Several engines as one (the ``iii-cluster`` module): the lists then show the whole cluster and
each row has an ``engine`` field (``{"id", "name"}``). The extension point is ``router.cluster``,
set by the module through ``Host.set_cluster_view``: an object with ``engine`` (this engine's
``{"id", "name"}``), ``engine_of(engine_id)`` (another's), ``workers()``, ``triggers()`` and
``trigger_types()`` (the other engines' rows, ``engine`` included). The other engines' functions are the router's own
(``Router.remote_functions``). :meth:`Discovery.snapshot` is what this engine publishes of itself.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any, Optional, Union

import msgspec

from iii import codec
from iii.engine.channels import create_channel
from iii.engine.host import DEFAULT_INVOCATION_TIMEOUT_MS, parse_input
from iii.engine.registry import Binding, Connection, EngineError, FunctionEntry, Module, TriggerType
from iii.protocol import DEFAULT_NAMESPACE, ErrorCode, WireId, is_blank

if TYPE_CHECKING:
    from iii.engine.router import Router

__all__ = ["install_engine_functions", "Discovery", "MODULE"]

MODULE = "iii-engine-functions"
_MAX_INFO_BATCH = 32
_SUMMARY_WIDTH = 80
_UNSAFE_CHARS = re.compile("[\x00-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069\u2028\u2029]")

Str = Union[str, None]


def sanitize(text: Optional[str]) -> Optional[str]:
    """Drop control and bidi-override characters, cut to 280, trim; empty → ``None``."""
    if text is None:
        return None
    cleaned = _UNSAFE_CHARS.sub("", text)[:280].strip()
    return cleaned or None


# --------------------------------------------------------------------------- inputs


class RegisterInput(msgspec.Struct):
    runtime: Str = None
    version: Str = None
    name: Str = None
    description: Str = None
    os: Str = None
    pid: Union[int, None] = None
    isolation: Str = None
    namespace: Str = None
    telemetry: Union[dict[str, Any], None] = None


class WorkersListInput(msgspec.Struct):
    worker_id: Str = None
    search: Str = None
    runtime: Str = None
    status: Str = None


class WorkersInfoInput(msgspec.Struct):
    name: str
    namespace: Str = None


class FunctionsListInput(msgspec.Struct):
    search: Str = None
    prefix: Str = None
    worker: Str = None
    workers: Union[list[str], None] = None
    include_internal: bool = False


class FunctionsInfoInput(msgspec.Struct):
    function_id: Str = None
    function_ids: Union[list[str], None] = None
    namespace: Str = None


class BindingsListInput(msgspec.Struct):
    search: Str = None
    trigger_type: Str = None
    function_id: Str = None
    worker: Str = None
    include_internal: bool = False


class TriggerTypesListInput(msgspec.Struct):
    search: Str = None
    prefix: Str = None
    worker: Str = None
    include_internal: bool = False


class TriggerTypeInfoInput(msgspec.Struct):
    id: str
    namespace: Str = None


class BindingInfoInput(msgspec.Struct):
    id: str


class RegisterTriggerInput(msgspec.Struct):
    trigger_type: str
    function_id: str
    config: Any = None
    metadata: Any = None
    trigger_namespace: Str = None


class UnregisterTriggerInput(msgspec.Struct):
    id: str
    trigger_type: Str = None


# --------------------------------------------------------------------------- rows


def worker_row(conn: Connection) -> dict[str, Any]:
    return {
        "name": conn.name,
        "description": conn.description,
        "version": conn.version,
        "id": conn.id,
        "namespace": conn.namespace,
        "runtime": conn.runtime,
        "os": conn.os,
        "pid": conn.pid,
        "status": conn.status,
        "function_count": len(conn.functions),
        "connected_at_ms": conn.connected_at_ms,
        "active_invocations": len(conn.invocations) + sum(len(c.invocations) for c in conn.call_channels),
        "isolation": conn.isolation,
        "ip_address": conn.ip,
        "metrics": {
            "invocations_in_flight": conn.inbound_active,
            "invocations_handled": conn.invocations_handled,
            "invocations_failed": conn.invocations_failed,
            "invocations_made": conn.invocations_made + sum(c.invocations_made for c in conn.call_channels),
            "frames_dropped": conn.frames_dropped + sum(c.frames_dropped for c in conn.call_channels),
        },
    }


def _with_latest_metrics(router: Router, conn: Connection, row: dict[str, Any]) -> dict[str, Any]:
    """``latest_metrics``: the worker's own gauges of the last 2 minutes (omitted when none)."""
    latest = router.worker_metrics(conn.id)
    if latest is not None:
        row["latest_metrics"] = latest
    return row


def module_row(router: Router, name: str, description: str, started_at_ms: int) -> dict[str, Any]:
    return {
        "name": name,
        "description": description,
        "version": router.version,
        "id": name,
        "namespace": DEFAULT_NAMESPACE,
        "runtime": "engine",
        "os": None,
        "pid": None,
        "status": "available",
        "function_count": sum(1 for fn in router.all_functions() if fn.module == name),
        "connected_at_ms": started_at_ms,
        "active_invocations": 0,
        "isolation": "in-process",
        "ip_address": None,
        "metrics": None,
    }


def function_row(fn: FunctionEntry, cluster: Any = None) -> dict[str, Any]:
    row: dict[str, Any] = {
        "function_id": fn.id,
        "namespace": fn.namespace,
        "worker_name": fn.worker_name,
    }
    if fn.description is not None:
        row["description"] = fn.description
    if fn.metadata is not None:
        row["metadata"] = fn.metadata
    if cluster is not None:
        engine = fn.owner.engine if fn.owner is not None else None
        row["engine"] = cluster.engine if engine is None else cluster.engine_of(engine)
    return row


def function_detail(router: Router, fn: FunctionEntry) -> dict[str, Any]:
    row = function_row(fn)
    if fn.request_format is not None:
        row["request_schema"] = fn.request_format
    if fn.response_format is not None:
        row["response_schema"] = fn.response_format
    row["registered_triggers"] = [
        {"id": b.id, "trigger_type": b.trigger_type, "config": codec.decode_json(b.config)}
        for b in sorted(router.bindings.values(), key=lambda b: b.id)
        if b.namespace == fn.namespace and b.function_id == fn.id
    ]
    return row


def binding_worker_name(router: Router, binding: Binding) -> str:
    fn = router.find_function(binding.namespace, binding.function_id)
    return fn.worker_name if fn is not None else binding.function_id.split("::", 1)[0]


def binding_row(router: Router, binding: Binding) -> dict[str, Any]:
    summary = binding.config.decode("utf-8", "replace")
    if len(summary) > _SUMMARY_WIDTH:
        summary = summary[:_SUMMARY_WIDTH] + "…"
    row: dict[str, Any] = {
        "id": binding.id,
        "trigger_type": binding.trigger_type,
        "function_id": binding.function_id,
        "namespace": binding.namespace,
        "worker_name": binding_worker_name(router, binding),
        "config": codec.decode_json(binding.config),
        "config_summary": summary,
    }
    if binding.metadata:
        row["metadata"] = codec.decode_json(binding.metadata)
    return row


def trigger_type_detail(router: Router, tt: TriggerType) -> dict[str, Any]:
    row: dict[str, Any] = {
        "id": tt.id,
        "namespace": tt.namespace,
        "worker_name": tt.worker_name,
        "description": tt.description,
    }
    if tt.trigger_request_format is not None:
        row["configuration_schema"] = tt.trigger_request_format
    if tt.call_request_format is not None:
        row["request_schema"] = tt.call_request_format
    row["instance_count"] = sum(1 for b in router.bindings.values() if b.trigger_type == tt.id)
    return row


def _matches(needle: Optional[str], *haystacks: Optional[str]) -> bool:
    if not needle:
        return True
    needle = needle.lower()
    return any(h is not None and needle in h.lower() for h in haystacks)


# --------------------------------------------------------------------------- handlers


def workers_register(router: Router, caller: Optional[Connection], data: Any) -> Any:
    if caller is None:
        return {"success": True}
    args = parse_input("engine::workers::register", data, RegisterInput)
    name = sanitize(args.name)
    if args.namespace is not None and is_blank(args.namespace):
        raise EngineError(
            ErrorCode.INVALID_NAMESPACE,
            f"namespace is empty: worker '{name or '<unnamed>'}' declared \"{args.namespace}\". "
            "Give it a name, or omit the field to register in 'default'.",
        )
    namespace = router.effective_namespace(caller, args.namespace or DEFAULT_NAMESPACE)
    if name is not None and not router.claim_name(caller, namespace, name):
        return {"success": False}
    caller.runtime = args.runtime or "unknown"
    caller.version = args.version
    if name is not None:
        caller.name = name
    description = sanitize(args.description)
    if description is not None:
        caller.description = description
    if args.os is not None:
        caller.os = args.os
    if args.pid is not None:
        caller.pid = args.pid
    if args.isolation is not None:
        caller.isolation = args.isolation
    router.resolve_namespace(caller, namespace)
    router.fire_workers_available("worker_metadata_updated", caller.id)
    return {"success": True}


def workers_list(router: Router, caller: Optional[Connection], data: Any) -> Any:
    args = parse_input("engine::workers::list", data, WorkersListInput)
    # Each row also lists its function ids, as the original did up to 0.12: iii-sdk 0.11.3's
    # list_workers() requires them.
    rows = [
        _with_latest_metrics(router, c, {**worker_row(c), "functions": sorted(function_id for _, function_id in c.functions)})
        # A connection that never called engine::workers::register (an SDK's direct call
        # channel, a raw client) is no worker to list, as in the original (which also hides
        # registered ones without a pid; SDK 0.1.0 sends none, and lists itself).
        for c in router.connections.values() if not c.closed and c.runtime is not None
    ]
    rows += [
        {**module_row(router, m.name, m.description, m.started_at_ms),
         "functions": sorted(f.id for f in router.all_functions() if f.module == m.name)}
        for m in router.modules
    ]
    cluster = router.cluster
    if cluster is not None:
        for row in rows:
            row["engine"] = cluster.engine
        rows += cluster.workers()
    rows = [
        r
        for r in rows
        if (args.worker_id is None or r["id"] == args.worker_id)
        and (args.runtime is None or r["runtime"] == args.runtime)
        and (args.status is None or r["status"] == args.status)
        and _matches(args.search, r["name"])
    ]
    rows.sort(key=lambda r: (r["name"] or r["id"], r["id"], r.get("engine", {}).get("id", "")))
    return {"workers": rows}


def workers_info(router: Router, caller: Optional[Connection], data: Any) -> Any:
    args = parse_input("engine::workers::info", data, WorkersInfoInput)
    by_namespace: dict[str, Any] = {}
    for conn in router.connections.values():
        if conn.name == args.name and not conn.closed:
            by_namespace.setdefault(conn.namespace, conn)
    for module in router.modules:
        if module.name == args.name:
            by_namespace.setdefault(DEFAULT_NAMESPACE, module)
    found = sorted(by_namespace)
    if not found:
        raise EngineError(ErrorCode.NOT_FOUND, f"Worker '{args.name}' is not connected.")
    if args.namespace is not None:
        if args.namespace not in by_namespace:
            raise EngineError(
                ErrorCode.NOT_FOUND,
                f"Worker '{args.name}' is not connected in the requested namespace; it is "
                f"connected in namespace(s): {', '.join(found)}.",
            )
        namespace = args.namespace
    elif DEFAULT_NAMESPACE in by_namespace or len(found) == 1:
        namespace = DEFAULT_NAMESPACE if DEFAULT_NAMESPACE in by_namespace else found[0]
    else:
        raise EngineError(
            ErrorCode.NOT_FOUND,
            f"Worker '{args.name}' is ambiguous: it is connected in namespace(s): "
            f"{', '.join(found)}. Pass `namespace` to disambiguate.",
        )
    worker = by_namespace[namespace]
    if isinstance(worker, Connection):
        envelope = _with_latest_metrics(router, worker, worker_row(worker))
        envelope["internal"] = False
        if worker.pid is None:
            del envelope["pid"]
        functions = [f for f in router.all_functions() if f.owner is worker]
        types = [t for t in router.trigger_types.values() if t.owner is worker]
    else:
        envelope = module_row(router, worker.name, worker.description, worker.started_at_ms)
        envelope["internal"] = True
        del envelope["pid"]
        functions = [f for f in router.all_functions() if f.module == worker.name]
        types = [t for t in router.trigger_types.values() if t.module == worker.name]
    own = {(f.namespace, f.id) for f in functions}
    return {
        "worker": envelope,
        "functions": [function_row(f) for f in sorted(functions, key=lambda f: f.id)],
        "trigger_types": [
            {k: v for k, v in trigger_type_detail(router, t).items() if k != "instance_count"}
            for t in sorted(types, key=lambda t: t.id)
        ],
        "registered_triggers": [
            binding_row(router, b)
            for b in sorted(router.bindings.values(), key=lambda b: b.id)
            if (b.namespace, b.function_id) in own
        ],
    }


def functions_list(router: Router, caller: Optional[Connection], data: Any) -> Any:
    args = parse_input("engine::functions::list", data, FunctionsListInput)
    wanted_workers = set(args.workers or ())
    if args.worker:
        wanted_workers.add(args.worker)
    session = caller.session if caller is not None else None
    rows = []
    for fn in _listed_functions(router):
        if not args.include_internal and fn.internal:
            continue
        if session is not None and not session.allows(fn.id, fn.namespace, fn):
            continue
        if args.prefix and not fn.id.startswith(args.prefix):
            continue
        if wanted_workers and fn.worker_name not in wanted_workers:
            continue
        if not _matches(args.search, fn.id, fn.description):
            continue
        rows.append(fn)
    if args.search:
        needle = args.search.lower()

        def rank(fn: FunctionEntry) -> tuple[int, str]:
            fid = fn.id.lower()
            if fid.startswith(needle) or needle in fid.split("::"):
                return (0, fn.id)
            return (1 if needle in fid else 2, fn.id)

        rows.sort(key=rank)
    else:
        rows.sort(key=lambda fn: (fn.id, fn.namespace))
    return {"functions": [function_row(fn, router.cluster) for fn in rows]}


def _listed_functions(router: Router) -> list[FunctionEntry]:
    """This engine's functions, and with a cluster each other engine's (one entry per engine;
    the entry that routes calls to them is not listed)."""
    local = [fn for fn in router.all_functions() if fn.replicas is None]
    return local + router.remote_functions() if router.cluster is not None else local


def _resolve_function(router: Router, function_id: str, namespace: Optional[str]) -> Any:
    """The entry for an id: strict in an explicit namespace, else `default`, else the only one."""
    if namespace is not None:
        return router.find_function(namespace, function_id)
    fn = router.find_function(DEFAULT_NAMESPACE, function_id)
    if fn is not None:
        return fn
    namespaces = router.namespaces_of(function_id)
    if len(namespaces) == 1:
        return router.find_function(namespaces[0], function_id)
    return namespaces  # ambiguous (several) or absent (none)


def functions_info(router: Router, caller: Optional[Connection], data: Any) -> Any:
    args = parse_input("engine::functions::info", data, FunctionsInfoInput)
    if args.function_id is not None and args.function_ids is not None:
        raise EngineError(
            ErrorCode.INVALID_ARGUMENTS, "pass either `function_id` or `function_ids`, not both"
        )
    session = caller.session if caller is not None else None
    if args.function_id is not None:
        found = _resolve_function(router, args.function_id, args.namespace)
        if isinstance(found, FunctionEntry):
            if session is not None and not session.allows(found.id, found.namespace, found):
                raise EngineError(
                    ErrorCode.FORBIDDEN, f"Function '{args.function_id}' is not visible to this session."
                )
            return function_detail(router, found)
        if found:
            raise EngineError(
                ErrorCode.NOT_FOUND,
                f"Function '{args.function_id}' is ambiguous: it is registered in namespace(s): "
                f"{', '.join(found)}. Pass `namespace` to select one.",
            )
        raise EngineError(ErrorCode.NOT_FOUND, f"Function '{args.function_id}' is not registered.")
    if args.function_ids is None:
        raise EngineError(
            ErrorCode.INVALID_ARGUMENTS,
            "missing field `function_id` (or `function_ids` for a batch)",
        )
    ids = list(dict.fromkeys(args.function_ids))
    if not ids:
        raise EngineError(
            ErrorCode.INVALID_ARGUMENTS, "`function_ids` must be a non-empty array of function ids"
        )
    if len(ids) > _MAX_INFO_BATCH:
        raise EngineError(ErrorCode.INVALID_ARGUMENTS, f"too many function_ids (max {_MAX_INFO_BATCH})")
    rows = []
    for function_id in ids:
        found = _resolve_function(router, function_id, args.namespace)
        if isinstance(found, FunctionEntry):
            if session is not None and not session.allows(found.id, found.namespace, found):
                rows.append({"function_id": function_id, "error": "forbidden"})
            else:
                rows.append(function_detail(router, found))
        else:
            rows.append({"function_id": function_id, "error": "not_found"})
    return {"functions": rows}


def _bindings(router: Router, function_id: str, data: Any) -> list[dict[str, Any]]:
    args = parse_input(function_id, data, BindingsListInput)
    rows = [binding_row(router, binding) for binding in sorted(router.bindings.values(), key=lambda b: b.id)]
    cluster = router.cluster
    if cluster is not None:
        for row in rows:
            row["engine"] = cluster.engine
        rows += cluster.triggers()
    return [
        row for row in rows
        if (args.include_internal or not row["function_id"].startswith("engine::"))
        and (args.trigger_type is None or row["trigger_type"] == args.trigger_type)
        and (args.function_id is None or row["function_id"] == args.function_id)
        and (args.worker is None or row["worker_name"] == args.worker)
        and _matches(args.search, row["id"], row["trigger_type"], row["function_id"])
    ]


def triggers_list(router: Router, caller: Optional[Connection], data: Any) -> Any:
    return {"triggers": _bindings(router, "engine::triggers::list", data)}


def registered_triggers_list(router: Router, caller: Optional[Connection], data: Any) -> Any:
    return {"registered_triggers": _bindings(router, "engine::registered-triggers::list", data)}


def registered_triggers_info(router: Router, caller: Optional[Connection], data: Any) -> Any:
    args = parse_input("engine::registered-triggers::info", data, BindingInfoInput)
    binding = router.bindings.get(args.id)
    if binding is None:
        raise EngineError(ErrorCode.NOT_FOUND, f"Registered trigger '{args.id}' was not found.")
    row = binding_row(router, binding)
    del row["config_summary"]
    tt = router.trigger_types.get(binding.provider_key) if binding.provider_key else None
    fn = router.find_function(binding.namespace, binding.function_id)
    row["trigger"] = trigger_type_detail(router, tt) if tt is not None else None
    row["function"] = function_detail(router, fn) if fn is not None else None
    return row


def trigger_types_list(router: Router, caller: Optional[Connection], data: Any) -> Any:
    args = parse_input("engine::trigger-types::list", data, TriggerTypesListInput)
    rows = [trigger_type_detail(router, tt) for tt in sorted(router.trigger_types.values(), key=lambda t: (t.id, t.namespace))]
    cluster = router.cluster
    if cluster is not None:
        for row in rows:
            row["engine"] = cluster.engine
        rows += cluster.trigger_types()
    return {"trigger_types": [
        row for row in rows
        if (args.include_internal or not row["id"].startswith("engine::"))
        and (not args.prefix or row["id"].startswith(args.prefix))
        and (args.worker is None or row["worker_name"] == args.worker)
        and _matches(args.search, row["id"], row.get("description"))
    ]}


def triggers_info(router: Router, caller: Optional[Connection], data: Any) -> Any:
    args = parse_input("engine::triggers::info", data, TriggerTypeInfoInput)
    namespace = args.namespace or DEFAULT_NAMESPACE
    tt = router.trigger_types.get((namespace, args.id))
    if tt is None:
        raise EngineError(
            ErrorCode.NOT_FOUND,
            f"Trigger type '{args.id}' is not registered in namespace '{namespace}'.",
        )
    return trigger_type_detail(router, tt)


def register_trigger(router: Router, caller: Optional[Connection], data: Any) -> Any:
    args = parse_input("engine::register_trigger", data, RegisterTriggerInput)
    function_id = args.function_id
    session = caller.session if caller is not None else None
    if session is not None:  # the type list and prefix apply; the trigger hook does not (rbac.md §7.4)
        allowed_types = session.allowed_trigger_types
        if allowed_types is not None and args.trigger_type not in allowed_types:
            raise EngineError(
                ErrorCode.FORBIDDEN, f"Trigger type '{args.trigger_type}' is not allowed for this session."
            )
        function_id = session.registered_id(function_id)
    binding = Binding(
        router.new_id(),
        args.trigger_type,
        function_id,
        codec.encode_json(args.config),
        b"" if args.metadata is None else codec.encode_json(args.metadata),
        None,
        DEFAULT_NAMESPACE,
        args.trigger_namespace,
        DEFAULT_NAMESPACE,
    )
    error = router.add_binding(binding)
    if error is not None:
        raise EngineError(ErrorCode.TRIGGER_REGISTRATION_FAILED, error.message)
    return {"id": binding.id}


def unregister_trigger(router: Router, caller: Optional[Connection], data: Any) -> Any:
    args = parse_input("engine::unregister_trigger", data, UnregisterTriggerInput)
    return {"removed": router.remove_binding(args.id)}


# --------------------------------------------------------------------------- discovery


class DiscoveryTrigger:
    """In-process provider of a discovery trigger type: keeps its bindings, fires them all."""

    def __init__(self, router: Router) -> None:
        self._router = router
        self.bindings: dict[str, Binding] = {}

    def register(self, binding: Binding) -> Optional[str]:
        self.bindings[binding.id] = binding
        return None

    def unregister(self, binding: Binding) -> None:
        self.bindings.pop(binding.id, None)

    def fire(self, payload: bytes) -> None:
        for binding in list(self.bindings.values()):
            self._router.invoke(
                binding.namespace, binding.function_id, payload, binding.metadata,
                timeout_ms=DEFAULT_INVOCATION_TIMEOUT_MS,
            )


class Discovery:
    """Fires ``engine::workers-available`` and ``engine::functions-available``."""

    def __init__(self, router: Router) -> None:
        self._router = router
        self.workers = DiscoveryTrigger(router)
        self.functions = DiscoveryTrigger(router)

    def workers_changed(self, event: str, worker_id: str) -> None:
        if self.workers.bindings:
            self.workers.fire(codec.encode_json({"event": event, "worker_id": worker_id}))

    def functions_changed(self) -> None:
        if self.functions.bindings:
            router = self._router
            rows = [function_row(fn, router.cluster) for fn in _listed_functions(router)]
            self.functions.fire(codec.encode_json({"event": "functions_changed", "functions": rows}))

    def snapshot(self) -> dict[str, Any]:
        """What this engine publishes to the others of a cluster: its workers, the functions
        its workers own (with their schemas), its triggers and the trigger types its workers
        provide, as the lists show them."""
        router = self._router
        workers = [
            {**worker_row(c), "functions": sorted(function_id for _, function_id in c.functions)}
            for c in router.connections.values() if not c.closed
        ]
        functions = []
        for fn in router.all_functions():
            if fn.owner is None or fn.owner.engine is not None or fn.replicas is not None:
                continue  # the engine's own (every engine has them) or another engine's
            row = function_row(fn)
            if fn.request_format is not None:
                row["request_schema"] = fn.request_format
            if fn.response_format is not None:
                row["response_schema"] = fn.response_format
            functions.append(row)
        triggers = [binding_row(router, b) for b in sorted(router.bindings.values(), key=lambda b: b.id)]
        trigger_types = [  # the ones workers provide (every engine has its modules')
            trigger_type_detail(router, tt)
            for tt in sorted(router.trigger_types.values(), key=lambda t: (t.id, t.namespace))
            if tt.owner is not None
        ]
        return {"workers": workers, "functions": functions, "triggers": triggers, "trigger_types": trigger_types}


_EVENT_SCHEMA = {
    "type": "object",
    "properties": {
        "event": {
            "type": "string",
            "enum": ["worker_connected", "worker_metadata_updated", "worker_disconnected"],
        },
        "worker_id": {"type": "string"},
    },
    "required": ["event", "worker_id"],
}
_FUNCTIONS_EVENT_SCHEMA = {
    "type": "object",
    "properties": {
        "event": {"type": "string", "enum": ["functions_changed"]},
        "functions": {"type": "array", "items": {"type": "object"}},
    },
    "required": ["event", "functions"],
}
_NO_CONFIG_SCHEMA = {"type": "object", "description": "Ignored: pass {}."}

def channels_create(router: Router, caller: Optional[Connection], data: Any) -> Any:
    return create_channel(router.channels, data)


_HANDLERS = {
    "engine::channels::create": (channels_create, "Create a data channel: a writer and a reader ref"),
    "engine::workers::register": (workers_register, "Announce a worker's metadata and namespace"),
    "engine::workers::list": (workers_list, "List connected workers and engine modules"),
    "engine::workers::info": (workers_info, "One worker's functions, trigger types and triggers"),
    "engine::functions::list": (functions_list, "List registered functions"),
    "engine::functions::info": (functions_info, "One or several functions' contracts"),
    "engine::triggers::list": (triggers_list, "List registered triggers"),
    "engine::triggers::info": (triggers_info, "One trigger type"),
    "engine::trigger-types::list": (trigger_types_list, "List trigger types with their schemas"),
    "engine::registered-triggers::list": (registered_triggers_list, "List registered triggers"),
    "engine::registered-triggers::info": (registered_triggers_info, "One registered trigger"),
    "engine::register_trigger": (register_trigger, "Create a trigger that outlives connections"),
    "engine::unregister_trigger": (unregister_trigger, "Remove a trigger by id"),
}


def install_engine_functions(router: Router, started_at_ms: int = 0) -> Discovery:
    """Register the ``engine::*`` functions and discovery trigger types on ``router``; it then
    sends its discovery events to them. ``started_at_ms`` (epoch) is shown in the module rows."""
    router.modules.append(Module(WireId.LISTENER, "Worker WebSocket listener", started_at_ms))
    router.modules.append(Module(MODULE, "Engine discovery and registration functions", started_at_ms))
    for function_id, (handler, description) in _HANDLERS.items():
        router.add_function(function_id, handler, module=MODULE, description=description)
    discovery = Discovery(router)
    router.add_trigger_type(
        WireId.WORKERS_AVAILABLE,
        discovery.workers,
        module=MODULE,
        description="Fires when a worker connects, updates its metadata or disconnects",
        trigger_request_format=_NO_CONFIG_SCHEMA,
        call_request_format=_EVENT_SCHEMA,
    )
    router.add_trigger_type(
        WireId.FUNCTIONS_AVAILABLE,
        discovery.functions,
        module=MODULE,
        description="Fires with the full function list when functions are added or removed",
        trigger_request_format=_NO_CONFIG_SCHEMA,
        call_request_format=_FUNCTIONS_EVENT_SCHEMA,
    )
    router.events = discovery
    # Installing them changed the function set: that is no event yet.
    router.flush_events()
    return discovery
