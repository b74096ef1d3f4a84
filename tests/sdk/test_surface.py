"""Our ``iii`` against the official ``iii-sdk`` 0.25.0 surface: same names, same signatures."""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import json
import pkgutil
import subprocess

import pytest

import iii

#: Official public names we do not provide, and why (kept in the README too).
NOT_PROVIDED = {
    # the observe protocol (0.25): needs an engine that advertises observe.v1; ours does not
    "Caller", "Capture", "Filter", "Observed", "ObserveHooks", "Observer", "ObserverHandle",
    "ObserverOptions", "ObserverState", "ObserveSource", "Target", "ObserveRejection",
    "InvocationContext", "current_invocation",
    # custom streams: need stream backends in the stream worker
    "IStream",
    # RBAC middleware input model (RBAC is not implemented)
    "MiddlewareFunctionInput",
}

_OFFICIAL_PROBE = r"""
import dataclasses, inspect, json, iii
from iii.iii import III
def params(f):
    return [(p.name, p.kind.name, repr(p.default) if p.default is not inspect.Parameter.empty else None)
            for p in inspect.signature(f).parameters.values()]
print(json.dumps({
    "all": sorted(iii.__all__),
    "register_worker": params(iii.register_worker),
    "init_options": [(f.name, repr(f.default)) for f in dataclasses.fields(iii.InitOptions)],
    "methods": {m: params(getattr(III, m)) for m in ("register_function", "register_trigger", "trigger",
        "trigger_async", "register_trigger_type", "unregister_trigger_type", "shutdown", "shutdown_async",
        "add_connection_state_listener", "get_connection_state", "get_address")},
    "errors": {n: params(getattr(iii, n).__init__) for n in ("InvocationError", "RegistrationRejectedError")},
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


def test_codec_stub_matches_the_module():
    """mypy checks code using the codec against the ``.pyi`` stub of the compiled twin."""
    from mypy import api

    snippet = (
        "from iii import _codec as codec\n"
        "spliced: bytes = codec.with_caller(b'{}', codec.caller_field('w'))\n"
        "wrong: int = codec.encode_json(1)\n"
    )
    out, _, status = api.run(["--no-error-summary", "--cache-dir", "/dev/null", "-c", snippet])
    assert status == 1
    assert [line.split(":")[1] for line in out.splitlines() if ": error:" in line] == ["3"], out
