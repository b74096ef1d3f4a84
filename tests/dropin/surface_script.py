"""A worker script using the official SDK's public modules (runs on the official SDK and on ours).

Prints JSON lines: {"imports": [...]} (what ``from iii.<module> import <name>`` gave),
{"models": {...}} (model dumps), {"formats": {...}} (the formats the engine lists for its typed
handlers), {"call": ...} (a failing handler's call); its handler failure is logged on stderr.
"""

import importlib
import json
import logging
import os
import sys
import time
from typing import Optional

import pydantic

from iii import InitOptions, register_worker

#: Public modules and names of the official package that both SDKs provide.
NAMES = {
    "iii.types": ["HttpInvocationConfig", "IIIClient", "RegisterTriggerInput", "StreamChannelRef", "TriggerRequest"],
    "iii.iii_types": ["MessageType", "RegisterFunctionFormat", "HttpInvocationConfig", "StreamChannelRef", "TriggerActionVoid"],
    "iii.protocol": ["MessageType", "RegisterFunctionMessage", "SDK_FEATURES", "TriggerRequest"],
    "iii.engine": ["EngineFunctions", "EngineTriggers", "RemoteFunctionHandler"],
    "iii.state": ["IState", "StateSetInput", "StateSetResult", "StateEventType"],
    "iii.stream": ["IStream", "StreamGetInput", "StreamSetInput", "StreamSetResult", "StreamDeleteResult"],
    "iii.trigger": ["Trigger", "TriggerActionVoid", "TriggerConfig", "TriggerHandler"],
    "iii.triggers": ["TriggerTypeRef"],
    "iii.runtime": ["FunctionRef", "IIIConnectionState", "TriggerTypeRef"],
    "iii.helpers": ["create_stream"],
    "iii.utils": ["safe_stringify", "python_type_to_format"],
    "iii.iii_constants": ["OtelConfig", "DEFAULT_INVOCATION_TIMEOUT_MS"],
    "iii.iii": ["III", "register_worker", "resolve_engine_url"],
}


class GreetInput(pydantic.BaseModel):
    name: str
    times: int = 1


class GreetOutput(pydantic.BaseModel):
    message: str


def greet(data: GreetInput) -> GreetOutput:
    return {"message": "hi " + data["name"]}


def totals(data: dict[str, int]) -> Optional[list[float]]:
    return None


def boom(data):
    raise ValueError("boom from dropin::boom")


def emit(**fields):
    sys.stdout.write(json.dumps(fields, sort_keys=True) + "\n")
    sys.stdout.flush()


def main():
    logging.basicConfig(level=logging.WARNING, format="%(name)s %(levelname)s %(message)s")
    imported = []
    for module_name, names in NAMES.items():
        module = importlib.import_module(module_name)
        imported += [f"{module_name}.{name}" for name in names if hasattr(module, name)]
    emit(imports=imported)

    from iii.iii_types import HttpInvocationConfig, MessageType, StreamChannelRef
    from iii.stream import StreamSetResult
    from iii.utils import safe_stringify

    emit(models={
        "invocation": HttpInvocationConfig(url="https://example.com/hook", method="PUT").model_dump(exclude_none=True),
        "ref": StreamChannelRef(channel_id="c", access_key="k", direction="read").model_dump(),
        "set_result": StreamSetResult(old_value=None, new_value={"a": 1}).model_dump(),
        "message_type": MessageType.INVOKE_FUNCTION.value,
        "stringify": safe_stringify({"a": [1, None]}),
    })

    worker = register_worker(os.environ["III_URL"], InitOptions(worker_name="dropin-surface"))
    ids = ["dropin::greet", "dropin::totals", "dropin::boom"]
    for function_id, handler in zip(ids, (greet, totals, boom)):
        worker.register_function(function_id, handler)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        listed = worker.trigger({"function_id": "engine::functions::list", "payload": {"prefix": "dropin::"}})
        functions = {f["function_id"]: f for f in listed["functions"]}
        if set(ids) <= set(functions):
            break
        time.sleep(0.05)
    details = {fid: worker.trigger({"function_id": "engine::functions::info", "payload": {"function_id": fid}}) for fid in ids}
    emit(formats={fid: [row.get("request_schema"), row.get("response_schema")] for fid, row in details.items()})
    try:
        worker.trigger({"function_id": "dropin::boom", "payload": {}})
    except Exception as exc:
        emit(call={"code": exc.code, "message": exc.message})
    worker.shutdown()
    emit(stopped=True)


if __name__ == "__main__":
    main()
