"""Our ``iii`` against the official ``iii-sdk`` 0.25.0 surface: same names, same signatures."""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import json
import pkgutil
import subprocess
import sys

import msgspec

import pytest

import iii

#: Official public names we do not provide, and why (kept in the README too).
NOT_PROVIDED = {
    # the observe protocol (0.25): needs an engine that advertises observe.v1; ours does not
    "Caller", "Capture", "Filter", "Observed", "ObserveHooks", "Observer", "ObserverHandle",
    "ObserverOptions", "ObserverState", "ObserveSource", "Target", "ObserveRejection",
    "InvocationContext", "current_invocation",
}

#: The official package's modules that are its implementation, not its API (observe protocol and
#: its filters, telemetry, process markers); user code does not import them.
PRIVATE_MODULES = {
    "iii._wire_json", "iii.filter", "iii.invocation_context", "iii.observable", "iii.observe_types",
    "iii.observe_wire", "iii.observer_handle", "iii.otel_worker_gauges", "iii.process_marker",
    "iii.reporter", "iii.worker_metrics",
}
_OBSERVE_WIRE = {
    "ActivationWire", "CallerParent", "CallerWire", "DEFAULT_CAPTURE", "DroppedReportCount",
    "FunctionRegisteredMessage", "FunctionTargetWire", "InvocationsObservedMessage",
    "LegacyTriggerWire", "LocalInvocationCount", "LocalInvocationStatsMessage", "ObserveDescriptor",
    "ObserveMessage", "ObserveResultMessage", "ObserveSourceWire", "ObservedInvocationWire",
    "ObserverAckMessage", "ObserverAddedMessage", "ObserverInfoWire", "ObserverRemovedMessage",
    "ObserverStateChangedMessage", "UnobserveMessage",
}
#: Per public module: official names we do not provide (observe protocol, OpenTelemetry).
MODULE_NOT_PROVIDED = {
    "iii.iii_types": _OBSERVE_WIRE | {"OtelLogEvent"},
    "iii.errors": {"ObserveRejection"},
}

#: Module-level functions and methods whose signatures must match the official ones.
FUNCTIONS = [
    ("iii.helpers", "create_stream"),
    ("iii.format_utils", "extract_request_format"),
    ("iii.format_utils", "extract_response_format"),
    ("iii.format_utils", "python_type_to_format"),
    ("iii.utils", "safe_stringify"),
    ("iii.iii", "resolve_engine_url"),
] + [("iii.stream", f"IStream.{m}") for m in ("get", "set", "delete", "list", "list_groups", "update")] + [
    ("iii.state", f"IState.{m}") for m in ("get", "set", "delete", "list", "update")
]

_OFFICIAL_PROBE = "FUNCTIONS = " + repr(FUNCTIONS) + r"""
import dataclasses, importlib, inspect, json, pkgutil, types, iii
from iii.iii import III
def params(f):
    return [(p.name, p.kind.name, repr(p.default) if p.default is not inspect.Parameter.empty else None)
            for p in inspect.signature(f).parameters.values()]
def attribute(module_name, path):
    value = importlib.import_module(module_name)
    for part in path.split("."):
        value = getattr(value, part)
    return value
def public_names(module):
    if hasattr(module, "__all__"):
        return sorted(module.__all__)
    names = []
    for name, value in vars(module).items():
        if name.startswith("_") or name == "TYPE_CHECKING" or isinstance(value, types.ModuleType):
            continue
        owner = getattr(value, "__module__", None)
        if module.__name__ == "iii.iii":  # its own names; the rest are its imports
            if owner == "iii.iii":
                names.append(name)
        elif (isinstance(owner, str) and owner.startswith("iii")) or isinstance(value, (str, int, tuple, frozenset)):
            names.append(name)
    return sorted(names)
def fields(value):
    if hasattr(value, "model_fields"):
        return sorted(value.model_fields)
    if dataclasses.is_dataclass(value):
        return sorted(f.name for f in dataclasses.fields(value) if not f.name.startswith("_"))
    return None
modules = {}
for info in pkgutil.iter_modules(iii.__path__, "iii."):
    module = importlib.import_module(info.name)
    names = public_names(module)
    modules[info.name] = {
        "names": names,
        "fields": {n: fields(getattr(module, n)) for n in names if isinstance(getattr(module, n, None), type) and fields(getattr(module, n))},
    }
print(json.dumps({
    "all": sorted(iii.__all__),
    "modules": modules,
    "register_worker": params(iii.register_worker),
    "init_options": [(f.name, repr(f.default)) for f in dataclasses.fields(iii.InitOptions)],
    "methods": {m: params(getattr(III, m)) for m in ("register_function", "register_trigger", "trigger",
        "trigger_async", "register_trigger_type", "unregister_trigger_type", "shutdown", "shutdown_async",
        "add_connection_state_listener", "get_connection_state", "get_address")},
    "errors": {n: params(getattr(iii, n).__init__) for n in ("InvocationError", "RegistrationRejectedError")},
    "functions": {f"{m}:{n}": params(attribute(m, n)) for m, n in FUNCTIONS},
}))
"""


@pytest.fixture(scope="module")
def official(official_python):
    result = subprocess.run([official_python, "-c", _OFFICIAL_PROBE], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def params(function):
    return [
        [p.name, p.kind.name, repr(p.default) if p.default is not inspect.Parameter.empty else None]
        for p in inspect.signature(function).parameters.values()
    ]


def test_every_official_name_is_provided_or_listed(official):
    missing = set(official["all"]) - set(iii.__all__)
    assert missing == NOT_PROVIDED


def _fields(value) -> list[str] | None:
    if isinstance(value, type) and issubclass(value, msgspec.Struct):
        return sorted(f.name for f in msgspec.structs.fields(value))
    if dataclasses.is_dataclass(value):
        return sorted(f.name for f in dataclasses.fields(value))
    return None


def test_every_public_official_module_imports_with_its_names(official):
    """``from iii.<module> import <name>`` works here for every public module and name of the
    official package, except the listed ones; its models have the same fields."""
    public = {name: m for name, m in official["modules"].items() if name not in PRIVATE_MODULES}
    assert "iii.protocol" in public and "iii.engine" in public and "iii.stream" in public
    for module_name, expected in public.items():
        ours = importlib.import_module(module_name)
        missing = {n for n in expected["names"] if not hasattr(ours, n)}
        assert missing == MODULE_NOT_PROVIDED.get(module_name, set()), module_name
        for name, official_fields in expected["fields"].items():
            if hasattr(ours, name) and _fields(getattr(ours, name)) is not None:
                assert _fields(getattr(ours, name)) == official_fields, f"{module_name}.{name}"


def test_our_engine_modules_keep_their_names():
    """``iii.protocol`` and ``iii.engine`` are the engine's too: the official names are added to
    them without replacing the engine's own."""
    import iii.protocol as protocol
    from iii.engine import EngineFunctions

    assert protocol.RegisterFunction.__module__ == "iii.protocol"  # the engine's message Struct
    assert protocol.MessageType.REGISTER_FUNCTION.value == "registerfunction"  # the official enum
    assert EngineFunctions.LIST_FUNCTIONS == "engine::functions::list"
    assert protocol.ErrorBody.__module__ == "iii.protocol"  # not replaced by the SDK's model


def test_signatures_match(official):
    assert params(iii.register_worker) == official["register_worker"]
    assert [[f.name, repr(f.default)] for f in dataclasses.fields(iii.InitOptions)] == official["init_options"]
    for name, expected in official["methods"].items():
        ours = params(getattr(iii.III, name))
        if name == "register_function":  # ours takes the 0.25 observe options as **kwargs
            expected = [p for p in expected if p[0] not in ("observe", "local_dispatch")]
            ours = [p for p in ours if p[1] != "VAR_KEYWORD"]
        assert ours == expected, name
    for name, expected in official["errors"].items():
        assert params(getattr(iii, name).__init__) == expected
    for module_name, path in FUNCTIONS:
        value = importlib.import_module(module_name)
        for part in path.split("."):
            value = getattr(value, part)
        assert params(value) == official["functions"][f"{module_name}:{path}"], path


def test_every_module_imports_alone_and_exports_what_it_lists():
    for module_info in pkgutil.walk_packages(iii.__path__, "iii."):
        if module_info.name.endswith("__main__"):
            continue
        module = importlib.import_module(module_info.name)
        for name in getattr(module, "__all__", []):
            assert hasattr(module, name), f"{module_info.name}.__all__ names missing {name}"


def test_constants():
    from iii.iii_constants import EngineFunctions

    assert iii.DEFAULT_ENGINE_URL == "ws://127.0.0.1:49134"
    assert EngineFunctions.LIST_WORKERS == "engine::workers::list"
    assert str(iii.InvocationError("TIMEOUT", "late", stacktrace="secret")) == "TIMEOUT: late"
    assert iii.TriggerAction.Enqueue(queue="q").model_dump() == {"type": "enqueue", "queue": "q"}
    assert isinstance(iii.InvocationError("a", "b"), iii.IIIError)


def test_codec_stub_matches_the_module(monkeypatch):
    """mypy checks code using the codec against the ``.pyi`` stub of the compiled twin."""
    from mypy import api

    snippet = (
        "from iii import _codec as codec\n"
        "spliced: bytes = codec.with_caller(b'{}', codec.caller_field('w'))\n"
        "wrong: int = codec.encode_json(1)\n"
    )
    # mypy raises the interpreter's recursion limit for good: tests after this one that count
    # on the default limit (deeply nested frames refused) would pass or fail by their order.
    monkeypatch.setattr(sys, "setrecursionlimit", lambda limit: None)
    out, _, status = api.run(["--no-error-summary", "--cache-dir", "/dev/null", "-c", snippet])
    assert status == 1
    assert [line.split(":")[1] for line in out.splitlines() if ": error:" in line] == ["3"], out


def test_exclude_none_leaves_out_fields_not_data():
    """As pydantic: a model's ``None`` fields go, a ``None`` inside a payload stays."""
    from iii.iii_types import TriggerRequest

    request = TriggerRequest(function_id="f", payload={"keep": None, "items": [None, {"also": None}]})
    assert request.model_dump(exclude_none=True) == {
        "function_id": "f", "payload": {"keep": None, "items": [None, {"also": None}]},
    }

