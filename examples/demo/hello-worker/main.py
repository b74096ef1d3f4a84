"""The quick start's demo worker: two functions, on the iii SDK (``import iii``)."""

import os
import signal
import threading

from iii import InitOptions, register_worker

worker = register_worker(
    os.environ.get("III_URL", "ws://127.0.0.1:49134"),
    InitOptions(worker_name="hello-worker", worker_description="Says hello and adds numbers"),
)


def hello(data):
    return {"greeting": f"hello, {(data or {}).get('name', 'world')}"}


async def add(data):
    return {"c": data["a"] + data["b"]}


worker.register_function("hello-worker::hello", hello, description="Greets {name}")
worker.register_function("math::add", add, description="Adds {a} and {b}")
print("hello-worker is up: try `iii trigger hello-worker::hello name=you`", flush=True)

stopped = threading.Event()
signal.signal(signal.SIGTERM, lambda *_: stopped.set())
signal.signal(signal.SIGINT, lambda *_: stopped.set())
stopped.wait()
worker.shutdown()
