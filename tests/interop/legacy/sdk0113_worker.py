"""A scripted worker on the official iii-sdk 0.11.3 (the version older framework releases pin),
using only that version's public API, as ``tests/interop/workers/py_worker.py`` does for 0.25.0.

Prints one JSON object per line on stdout: {"ready": ...} once its registrations are visible in
the engine, {"event": ..., "type": ..., "attempt": n} for every trigger delivery, {"started": id}
when a function runs, {"call": i, "result"|"error"} for each scripted call, {"stopped": true} at
the end. Stays connected (with --stay) until its stdin closes, then calls shutdown().
"""

import argparse
import collections
import json
import os
import sys
import threading
import time

from iii import InitOptions, TriggerAction, http, register_worker

_lock = threading.Lock()
_attempts: collections.Counter = collections.Counter()


def emit(**fields):
    with _lock:
        sys.stdout.write(json.dumps(fields) + "\n")
        sys.stdout.flush()


def count_attempt(function_id):
    with _lock:
        _attempts[function_id] += 1
        return _attempts[function_id]


def handler_for(behavior, function_id):
    if behavior == "add":
        return lambda data: {"c": data["a"] + data["b"]}
    if behavior == "echo":
        return lambda data: data
    if behavior == "fail":

        def fail(data):
            raise ValueError("boom from " + function_id)

        return fail
    if behavior == "reply":  # an HTTP handler answering through its return value

        def reply(data):  # (with streaming HTTP, data also holds channel ends: not JSON)
            emit(event={k: v for k, v in data.items() if k not in ("request_body", "response")}, type="http")
            return {"status_code": 201, "headers": {"x-sdk": "0.11.3"},
                    "body": {"hello": data["path_params"]["name"]}}

        return reply
    if behavior == "stream":  # an HTTP handler answering through its ``response`` channel

        async def stream(request, response):
            body = await request.request_body.read_all()
            emit(event={"path_params": request.path_params, "body": body.decode()}, type="http")
            await response.status(202)
            await response.headers({"content-type": "text/plain", "x-sdk": "0.11.3"})
            response.stream.write(b"hello " + request.path_params["name"].encode() + b": ")
            response.stream.end(body)
            return None

        return http(stream)
    raise SystemExit(f"unknown behavior {behavior}")


def watcher(trigger_type, function_id, fail_first):
    """Reports each delivery; with ``fail_first`` the first one raises (the engine retries it)."""

    def on_event(data):
        attempt = count_attempt(function_id)
        emit(event=data, type=trigger_type, attempt=attempt)
        if fail_first and attempt == 1:
            raise RuntimeError("first delivery fails on purpose")

    return on_event


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("name")
    parser.add_argument("--fn", action="append", default=[], help="ID=BEHAVIOR")
    parser.add_argument("--watch", action="append", default=[], help="TRIGGER_TYPE[=JSON_CONFIG]")
    parser.add_argument("--watch-flaky", action="append", default=[], help="as --watch; the first delivery fails")
    parser.add_argument("--http", action="append", default=[], help="JSON http config answered by 'reply'")
    parser.add_argument("--http-stream", action="append", default=[], help="JSON http config answered by 'stream'")
    parser.add_argument("--calls", default="[]", help="JSON list of trigger() requests")
    parser.add_argument("--stay", action="store_true")
    args = parser.parse_args()

    worker = register_worker(os.environ["III_URL"], InitOptions(worker_name=args.name))
    ids = []
    for spec in args.fn:
        function_id, behavior = spec.split("=", 1)
        worker.register_function(function_id, handler_for(behavior, function_id))
        ids.append(function_id)
    watches = [(spec, False) for spec in args.watch] + [(spec, True) for spec in args.watch_flaky]
    for index, (spec, fail_first) in enumerate(watches):
        trigger_type, _, config = spec.partition("=")
        function_id = f"{args.name}::on-{index}"
        worker.register_function(function_id, watcher(trigger_type, function_id, fail_first))
        worker.register_trigger({"type": trigger_type, "function_id": function_id, "config": json.loads(config or "{}")})
        ids.append(function_id)
    routes = [("reply", config) for config in args.http] + [("stream", config) for config in args.http_stream]
    for index, (behavior, config) in enumerate(routes):
        function_id = f"{args.name}::http-{index}"
        worker.register_function(function_id, handler_for(behavior, function_id))
        worker.register_trigger({"type": "http", "function_id": function_id, "config": json.loads(config)})
        ids.append(function_id)
    # Ready = the engine lists this worker by name and every function it registered.
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        listed = {f.function_id for f in worker.list_functions()}
        if set(ids) <= listed and args.name in {w.name for w in worker.list_workers()}:
            break
        time.sleep(0.05)
    emit(ready=args.name, worker_id=worker.worker_id)

    for index, request in enumerate(json.loads(args.calls)):
        action = request.pop("action", None)
        if action == "void":
            request["action"] = TriggerAction.Void()
        elif action is not None:
            request["action"] = TriggerAction.Enqueue(queue=action)
        try:
            result = worker.trigger(request)
            emit(call=index, result=result.model_dump() if hasattr(result, "model_dump") else result)
        except Exception as exc:
            emit(call=index, error={"code": getattr(exc, "code", None), "message": str(exc),
                                    "type": type(exc).__name__})
    if args.stay:
        sys.stdin.read()
    worker.shutdown()
    emit(stopped=True)


if __name__ == "__main__":
    main()
