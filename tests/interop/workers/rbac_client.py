"""An RBAC listener's client on the official Python iii-sdk, scripted by steps (same command line
and output as ../node/rbac_client.mjs).

    rbac_client.py NAME TOKEN STEPS_JSON

TOKEN goes in the ``x-test-token`` handshake header ("" sends none); OTel is off, so the client
authenticates exactly once. Steps, each answered by one line {"step": i, "result"|"error": …}:
{"call": id, "payload": …}, {"function": id} (registers an echo; "logger" registers one that calls
engine::log::info), {"unregister": id}, {"trigger_type": id, "description": …},
{"trigger": type, "function_id": …, "config": …}, {"sleep": seconds}. Then waits for stdin to
close and prints {"stopped": true}.
"""

import json
import os
import sys
import time

from iii import InitOptions, InvocationError, register_worker
from iii.triggers import TriggerConfig, TriggerHandler


def emit(**fields):
    sys.stdout.write(json.dumps(fields) + "\n")
    sys.stdout.flush()


class NoopTriggers(TriggerHandler):
    async def register_trigger(self, config: TriggerConfig) -> None:
        pass

    async def unregister_trigger(self, config: TriggerConfig) -> None:
        pass


def error_of(exc):
    fields = {"type": type(exc).__name__, "message": str(exc)}
    if isinstance(exc, InvocationError):
        fields.update(code=exc.code, function_id=exc.function_id)
    return fields


def main():
    name, token, steps = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
    headers = {"x-test-token": token} if token else {}
    client = register_worker(
        os.environ["III_URL"], InitOptions(worker_name=name, otel={"enabled": False}, headers=headers)
    )
    registered = {}
    for index, step in enumerate(steps):
        try:
            if "call" in step:
                result = client.trigger({"function_id": step["call"], "payload": step.get("payload", {})})
            elif "function" in step:
                function_id = step["function"]
                if step.get("behavior") == "logger":

                    def handler(data):
                        client.trigger({"function_id": "engine::log::info", "payload": {"message": "carve-out", "data": {"input": data}}})
                        return {"logged": True, "echoed": data}
                else:

                    def handler(data):
                        return {"echoed": data}

                registered[function_id] = client.register_function(function_id, handler)
                result = None
            elif "unregister" in step:
                registered.pop(step["unregister"]).unregister()
                result = None
            elif "trigger_type" in step:
                client.register_trigger_type({"id": step["trigger_type"], "description": step["description"]}, NoopTriggers())
                result = None
            elif "trigger" in step:
                client.register_trigger({"type": step["trigger"], "function_id": step["function_id"], "config": step["config"]})
                result = None
            else:
                time.sleep(step["sleep"])
                result = None
            emit(step=index, result=result)
        except Exception as exc:
            emit(step=index, error=error_of(exc))
    sys.stdin.read()
    client.shutdown()
    emit(stopped=True)


main()
