"""A scripted worker using only the official iii-sdk public API (also runs on our SDK).

Prints one JSON object per line on stdout: {"ready": ...} once its registrations are visible in
the engine, {"event": ...} for every discovery event it receives, {"call": i, "result"|"error"}
for each scripted call, {"state": ...} on connection state changes, {"stopped": true} at the end.
Stays connected (with --stay) until its stdin closes, then calls shutdown().
"""

import argparse
import json
import os
import sys
import threading
import time

from iii import InitOptions, TriggerAction, register_worker

_lock = threading.Lock()


def emit(**fields):
    with _lock:
        # Channel ends (an http request's request_body / response) are shown by their class.
        sys.stdout.write(json.dumps(fields, default=lambda value: f"<{type(value).__name__}>") + "\n")
        sys.stdout.flush()


def watched(trigger_type, data):
    """Print an event; an http request is answered ``{}`` (a handler returning nothing would
    stream its response on the ``response`` channel, and the client would wait for it)."""
    emit(event=data, type=trigger_type)
    return {"status_code": 200, "body": {}} if trigger_type == "http" else None


def handler_for(behavior, function_id):
    if behavior == "add":
        return lambda data: {"c": data["a"] + data["b"]}
    if behavior == "echo":
        return lambda data: data
    if behavior == "fail":

        def fail(data):
            raise ValueError("boom from " + function_id)

        return fail
    if behavior == "slow":

        def slow(data):
            emit(started=function_id)
            time.sleep(float((data or {}).get("seconds", 30)))
            return {"slept": True}

        return slow
    if behavior == "meta":

        def meta(data, metadata):
            return {"data": data, "metadata": metadata}

        return meta
    raise SystemExit(f"unknown behavior {behavior}")


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("name")
    parser.add_argument("--fn", action="append", default=[], help="ID=BEHAVIOR")
    parser.add_argument("--watch", action="append", default=[], help="TRIGGER_TYPE[=JSON_CONFIG]")
    parser.add_argument("--calls", default="[]", help="JSON list of trigger() requests")
    parser.add_argument("--stay", action="store_true")
    args = parser.parse_args()

    worker = register_worker(os.environ["III_URL"], InitOptions(worker_name=args.name))
    worker.add_connection_state_listener(lambda state: emit(state=state))
    ids = []
    for spec in args.fn:
        function_id, behavior = spec.split("=", 1)
        worker.register_function(function_id, handler_for(behavior, function_id))
        ids.append(function_id)
    for index, spec in enumerate(args.watch):
        trigger_type, _, config = spec.partition("=")  # TYPE or TYPE=JSON_CONFIG
        function_id = f"{args.name}::on-{index}"
        worker.register_function(function_id, lambda data, t=trigger_type: watched(t, data))
        worker.register_trigger({"type": trigger_type, "function_id": function_id, "config": json.loads(config or "{}")})
        ids.append(function_id)
    # Ready = the engine lists this worker by name and every function it registered.
    deadline = time.monotonic() + 20
    try:
        while time.monotonic() < deadline:
            listed = worker.trigger(
                {"function_id": "engine::functions::list", "payload": {"include_internal": True}}
            )
            names = worker.trigger({"function_id": "engine::workers::list", "payload": {}})
            if set(ids) <= {f["function_id"] for f in listed["functions"]} and args.name in {
                w["name"] for w in names["workers"]
            }:
                break
            time.sleep(0.05)
        emit(ready=args.name, worker_id=worker.worker_id)
    except Exception as exc:  # e.g. rejected by the engine: the scripted calls still run
        emit(not_ready=type(exc).__name__)

    for index, request in enumerate(json.loads(args.calls)):
        action = request.pop("action", None)
        if action == "void":
            request["action"] = TriggerAction.Void()
        elif action is not None:
            request["action"] = TriggerAction.Enqueue(queue=action)
        try:
            emit(call=index, result=worker.trigger(request))
        except Exception as exc:
            emit(call=index, error={"code": getattr(exc, "code", None), "message": str(exc),
                                    "type": type(exc).__name__})
    if args.stay:
        sys.stdin.read()
    worker.shutdown()
    emit(stopped=True)


if __name__ == "__main__":
    main()
