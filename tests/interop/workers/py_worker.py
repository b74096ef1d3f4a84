"""A scripted worker using only the official iii-sdk public API (also runs on our SDK).

Prints one JSON object per line on stdout: {"ready": ...} once its registrations are visible in
the engine, {"event": ...} for every discovery event it receives, {"call": i, "result"|"error"}
for each scripted call, {"state": ...} on connection state changes, {"stopped": true} at the end.
Stays connected (with --stay) until its stdin closes, then calls shutdown().

Also: --webhook ID=URL registers an HTTP-invoked function, --bind ID=TYPE=JSON_CONFIG binds a
trigger to a function id, --stream NAME serves a stream from memory (create_stream), and a
scripted call {"unregister": ID} unregisters one of this worker's functions.
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


def handler_for(behavior, function_id, worker=None):
    if behavior == "log":  # an OpenTelemetry log (a LOGS frame), inside the handler's span
        from iii_helpers.observability import Logger

        def log_it(data):
            Logger().info("log from " + function_id, {"input": data})
            return data

        return log_it
    if behavior == "relay":  # call data["target"] from inside this handler (its span is the parent)

        async def relay(data):
            return await worker.trigger_async({"function_id": data["target"], "payload": data.get("payload")})

        return relay
    if behavior in ("record", "recordfail"):  # print each call (queue deliveries), then answer or fail

        def record(data):
            emit(received=function_id, data=data, worker=worker.worker_id if worker else None)
            if behavior == "recordfail":
                raise ValueError("boom from " + function_id)
            return data

        return record
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


def memory_stream():
    """An in-memory IStream keyed ``group::item`` (defined on use: subclassing IStream warns)."""
    from iii.stream import IStream, StreamDeleteResult, StreamSetResult

    class MemoryStream(IStream):
        def __init__(self):
            self.items = {}

        async def get(self, input):
            return self.items.get(f"{input.group_id}::{input.item_id}")

        async def set(self, input):
            key = f"{input.group_id}::{input.item_id}"
            old, self.items[key] = self.items.get(key), input.data
            return StreamSetResult(old_value=old, new_value=input.data)

        async def delete(self, input):
            return StreamDeleteResult(old_value=self.items.pop(f"{input.group_id}::{input.item_id}", None))

        async def list(self, input):
            return [v for k, v in self.items.items() if k.startswith(input.group_id + "::")]

        async def list_groups(self, input):
            return sorted({k.split("::", 1)[0] for k in self.items})

        async def update(self, input):
            return None

    return MemoryStream()


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("name")
    parser.add_argument("--fn", action="append", default=[], help="ID=BEHAVIOR")
    parser.add_argument("--watch", action="append", default=[], help="TRIGGER_TYPE[=JSON_CONFIG]")
    parser.add_argument("--calls", default="[]", help="JSON list of trigger() requests")
    parser.add_argument("--webhook", action="append", default=[], help="ID=URL")
    parser.add_argument("--bind", action="append", default=[], help="FUNCTION_ID=TRIGGER_TYPE=JSON_CONFIG")
    parser.add_argument("--stream", action="append", default=[], help="NAME")
    parser.add_argument("--stay", action="store_true")
    parser.add_argument("--metrics-ms", type=int, help="export the worker gauges this often")
    args = parser.parse_args()

    options = InitOptions(worker_name=args.name)
    if args.metrics_ms:
        options.otel = {"metrics_export_interval_ms": args.metrics_ms}
    worker = register_worker(os.environ["III_URL"], options)
    worker.add_connection_state_listener(lambda state: emit(state=state))
    ids = []
    for spec in args.fn:
        function_id, behavior = spec.split("=", 1)
        worker.register_function(function_id, handler_for(behavior, function_id, worker))
        ids.append(function_id)
    refs = {}
    for spec in args.webhook:
        from iii.iii_types import HttpInvocationConfig

        function_id, url = spec.split("=", 1)
        refs[function_id] = worker.register_function(function_id, HttpInvocationConfig(url=url))
        ids.append(function_id)
    for spec in args.bind:
        function_id, trigger_type, config = spec.split("=", 2)
        worker.register_trigger({"type": trigger_type, "function_id": function_id, "config": json.loads(config)})
    for stream_name in args.stream:
        from iii.helpers import create_stream

        create_stream(worker, stream_name, memory_stream())
        ids.append(f"stream::list_groups({stream_name})")
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
        if "unregister" in request:
            refs[request["unregister"]].unregister()
            emit(call=index, result=None)
            continue
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
