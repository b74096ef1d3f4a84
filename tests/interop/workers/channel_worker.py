"""A scripted channel worker using only the official iii-sdk public API (also runs on our SDK).

Roles (first argument after the name):
  serve          registers NAME::process (reads a JSON array from `reader`, returns stats) and
                 NAME::words (bidirectional: progress text per chunk read from `reader`, a
                 `complete` text, one binary JSON result on `writer`), then stays.
  http           registers streaming HTTP handlers under --prefix (raw echo, SSE, download,
                 upload, a handler that answers with a buffered value), then stays.
  send TARGET    creates a channel, writes 5 records and closes it, then calls TARGET with
                 {label, reader}; prints {"result": ...}.
  coordinate T   the bidirectional coordinator: input and output channels, a sentence written in
                 10-byte frames, T called with {reader, writer}, then the output read.
Prints JSON lines: {"ready": true}, {"result": ...} / {"error": ...}, {"stopped": true}.
"""

import argparse
import asyncio
import hashlib
import json
import os
import sys
import threading
import time
import warnings
from urllib.parse import parse_qs

from iii import InitOptions, register_worker
from iii.helpers import create_channel, create_channel_async

warnings.filterwarnings("ignore", category=DeprecationWarning)  # register_trigger: still what the suites use
_lock = threading.Lock()
RECORDS = [{"name": "cpu", "value": 12}, {"name": "mem", "value": 2048}, {"name": "disk", "value": 300},
           {"name": "net", "value": 107}, {"name": "gpu", "value": 100}]
SENTENCE = b"The quick brown fox jumps over the lazy dog and keeps running through the far"


def emit(**fields):
    with _lock:
        sys.stdout.write(json.dumps(fields) + "\n")
        sys.stdout.flush()


def serve(worker, name):
    async def process(data):
        raw = await data["reader"].read_all()
        records = json.loads(raw)
        values = [r["value"] for r in records]
        return {"label": data["label"], "messages": len(records), "count": len(values), "sum": sum(values),
                "average": sum(values) / len(values), "min": min(values), "max": max(values)}

    async def words(data):
        reader, writer = data["reader"], data["writer"]
        chunks = []
        async for chunk in reader:
            chunks.append(chunk)
            await writer.send_message_async(json.dumps({"type": "progress", "chunks_received": len(chunks)}))
        text = b"".join(chunks).decode()
        all_words = text.split()
        await writer.send_message_async(json.dumps({"type": "complete", "word_count": len(all_words), "byte_count": len(text)}))
        await writer.write(json.dumps({"words": all_words[:5], "total": len(all_words)}).encode())
        await writer.close_async()
        return {"status": "done"}

    worker.register_function(f"{name}::process", process)
    worker.register_function(f"{name}::words", words)
    return [f"{name}::process", f"{name}::words"]


def http(worker, prefix):
    async def raw(req):
        body = await req["request_body"].read_all()
        content_type = req["headers"].get("content-type", "")
        answer = {"raw_body": body.decode("latin-1"), "body_size": len(body), "body": req["body"],
                  "content_type": content_type, "method": req["method"]}
        if "application/x-www-form-urlencoded" in content_type:
            answer["form"] = {k: v[0] for k, v in parse_qs(body.decode()).items()}
        if "application/json" in content_type:
            answer["parsed_body"] = json.loads(body)
        return {"status_code": 200, "body": answer}

    async def sse(req):
        res = req["response"]
        await res.send_message_async(json.dumps({"type": "set_status", "status_code": 200}))
        await res.send_message_async(json.dumps({"type": "set_headers", "headers": {
            "content-type": "text/event-stream", "cache-control": "no-cache", "connection": "keep-alive"}}))
        for index in range(4):
            data = "line one\nline two" if index == 2 else f"event {index}"
            block = f"id: {index}\nevent: tick\n" + "".join(f"data: {line}\n" for line in data.split("\n")) + "\n"
            await res.write(block.encode())
            await asyncio.sleep(0.05)
        await res.close_async()
        return None

    async def download(req):
        size = int(req["path_params"]["size"])
        res = req["response"]
        await res.send_message_async(json.dumps({"type": "set_status", "status_code": 200}))
        await res.send_message_async(json.dumps({"type": "set_headers", "headers": {"content-type": "application/octet-stream"}}))
        block = bytes(range(256)) * 1024  # 256 KiB
        sent = 0
        while sent < size:
            piece = block[: min(len(block), size - sent)]
            await res.write(piece)
            sent += len(piece)
        await res.close_async()
        return None

    async def upload(req):
        res = req["response"]
        await res.send_message_async(json.dumps({"type": "set_status", "status_code": 201}))  # before reading
        await res.send_message_async(json.dumps({"type": "set_headers", "headers": {"content-type": "application/json"}}))
        digest = hashlib.sha256()
        size = 0
        async for chunk in req["request_body"]:
            digest.update(chunk)
            size += len(chunk)
        await res.write(json.dumps({"received_size": size, "sha256": digest.hexdigest()}).encode())
        await res.close_async()
        return None

    routes = [("raw", "POST", "raw", raw), ("sse", "GET", "sse", sse), ("download", "GET", "download/:size", download),
              ("upload", "POST", "upload", upload)]
    ids = []
    for name, method, path, handler in routes:
        function_id = f"{prefix}::{name}"
        worker.register_function(function_id, handler)
        worker.register_trigger({"type": "http", "function_id": function_id,
                                 "config": {"api_path": f"{prefix}/{path}", "http_method": method}})
        ids.append(function_id)
    return ids


def send(worker, target):
    channel = create_channel(worker)
    payload = json.dumps(RECORDS).encode()

    async def write():
        await channel.writer.write(payload)
        await channel.writer.close_async()

    asyncio.run(write())
    return worker.trigger({"function_id": target, "payload": {"label": "metrics-batch", "reader": channel.reader_ref.model_dump()}})


def coordinate(worker, target):
    async def run():
        source = await create_channel_async(worker)
        results = await create_channel_async(worker)
        messages = []
        results.reader.on_message(lambda text: messages.append(json.loads(text)))
        for start in range(0, len(SENTENCE), 10):
            await source.writer.write(SENTENCE[start:start + 10])
        await source.writer.close_async()
        outcome = await worker.trigger_async({"function_id": target, "payload": {
            "reader": source.reader_ref.model_dump(), "writer": results.writer_ref.model_dump()}})
        binary = await results.reader.read_all()  # only after the worker returned: it waited in the engine
        return {"result": outcome, "messages": messages, "binary": json.loads(binary)}

    return asyncio.run(run())


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("name")
    parser.add_argument("role", choices=["serve", "http", "send", "coordinate"])
    parser.add_argument("target", nargs="?")
    args = parser.parse_args()
    worker = register_worker(os.environ["III_URL"], InitOptions(worker_name=args.name))
    try:
        if args.role in ("send", "coordinate"):
            run = send if args.role == "send" else coordinate
            try:
                emit(result=run(worker, args.target))
            except Exception as exc:
                emit(error=f"{type(exc).__name__}: {exc}")
            return
        ids = serve(worker, args.name) if args.role == "serve" else http(worker, args.name)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            listed = worker.trigger({"function_id": "engine::functions::list", "payload": {}})
            if set(ids) <= {f["function_id"] for f in listed["functions"]}:
                break
            time.sleep(0.05)
        if args.role == "http":  # triggers: the engine's list of them names ours
            while time.monotonic() < deadline:
                triggers = worker.trigger({"function_id": "engine::triggers::list", "payload": {}})["triggers"]
                if set(ids) <= {t.get("function_id") for t in triggers}:
                    break
                time.sleep(0.05)
        emit(ready=True)
        sys.stdin.read()
    finally:
        worker.shutdown()
        emit(stopped=True)


if __name__ == "__main__":
    main()
