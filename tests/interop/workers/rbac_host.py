"""The trusted side of the RBAC interop tests, on the official Python iii-sdk: the auth function,
the middleware, the three registration hooks, a trigger type and the functions the RBAC clients
call (the shape of the official SDK suites' fixture, rbac.md §12).

Prints one JSON object per line: {"ready": true} once everything is registered, then
{"auth": input}, {"function_hook": input}, {"trigger_type_hook": input}, {"trigger_hook": input}
for every call of those. Runs until its stdin closes.
"""

import json
import os
import sys
import threading
import time

from iii import InitOptions, MiddlewareFunctionInput, register_worker
from iii.triggers import TriggerConfig, TriggerHandler
from iii_helpers.worker_connection_manager import (
    AuthInput,
    AuthResult,
    OnFunctionRegistrationInput,
    OnFunctionRegistrationResult,
    OnTriggerRegistrationInput,
    OnTriggerRegistrationResult,
    OnTriggerTypeRegistrationInput,
    OnTriggerTypeRegistrationResult,
)

_lock = threading.Lock()


def emit(**fields):
    with _lock:
        sys.stdout.write(json.dumps(fields) + "\n")
        sys.stdout.flush()


client = register_worker(os.environ["III_URL"], InitOptions(worker_name="rbac-host", otel={"enabled": False}))


def auth(data):
    emit(auth=data)
    token = AuthInput(**data).headers.get("x-test-token")
    if not token:
        return AuthResult(
            allowed_functions=[], allow_trigger_type_registration=False,
            context={"role": "anonymous", "user_id": "anonymous"},
        ).model_dump()
    if token == "valid-token":
        return AuthResult(
            allowed_functions=["test::ew::valid-token-echo"], allow_trigger_type_registration=True,
            context={"role": "admin", "user_id": "user-1"},
        ).model_dump()
    if token == "restricted-token":
        return AuthResult(
            forbidden_functions=["test::ew::echo"], allow_trigger_type_registration=False,
            context={"role": "restricted", "user_id": "user-2"},
        ).model_dump()
    if token == "prefix-token":
        return AuthResult(
            allow_trigger_type_registration=True, context={"role": "prefixed", "user_id": "user-prefix"},
            function_registration_prefix="test-prefix",
        ).model_dump()
    raise Exception("invalid token")


def middleware(data):
    call = MiddlewareFunctionInput(**data)
    enriched = {**call.payload, "_intercepted": True, "_caller": call.context.get("user_id")}
    return client.trigger({"function_id": call.function_id, "payload": enriched})


def on_function(data):
    emit(function_hook=data)
    hook = OnFunctionRegistrationInput(**data)
    if hook.function_id.startswith("denied::"):
        raise Exception("denied function registration")
    return OnFunctionRegistrationResult(function_id=hook.function_id).model_dump()


def on_trigger_type(data):
    emit(trigger_type_hook=data)
    hook = OnTriggerTypeRegistrationInput(**data)
    if hook.trigger_type_id.startswith("denied-tt::"):
        raise Exception("denied trigger type registration")
    return OnTriggerTypeRegistrationResult().model_dump()


def on_trigger(data):
    emit(trigger_hook=data)
    hook = OnTriggerRegistrationInput(**data)
    if hook.function_id.startswith("denied-trig::"):
        raise Exception("denied trigger registration")
    return OnTriggerRegistrationResult().model_dump()


class NoopTriggers(TriggerHandler):
    async def register_trigger(self, config: TriggerConfig) -> None:
        pass

    async def unregister_trigger(self, config: TriggerConfig) -> None:
        pass


client.register_function("test::rbac-worker::auth", auth)
client.register_function("test::rbac-worker::middleware", middleware)
client.register_function("test::rbac-worker::on-function-reg", on_function)
client.register_function("test::rbac-worker::on-trigger-type-reg", on_trigger_type)
client.register_function("test::rbac-worker::on-trigger-reg", on_trigger)
client.register_trigger_type({"id": "test-rbac-trigger", "description": "Trigger type for RBAC tests"}, NoopTriggers())
client.register_function("test::ew::public::echo", lambda data: {"echoed": data})
client.register_function("test::ew::valid-token-echo", lambda data: {"echoed": data, "valid_token": True})
client.register_function("test::ew::meta-public", lambda data: {"meta_echoed": data}, metadata={"ew_public": True})
client.register_function("test::ew::private", lambda data: {"private": True})

wanted = {"test::rbac-worker::auth", "test::rbac-worker::on-trigger-reg", "test::ew::private"}
deadline = time.monotonic() + 20
while time.monotonic() < deadline:
    listed = client.trigger({"function_id": "engine::functions::list", "payload": {}})
    if wanted <= {f["function_id"] for f in listed["functions"]}:
        break
    time.sleep(0.05)
emit(ready=True)
sys.stdin.read()
client.shutdown()
