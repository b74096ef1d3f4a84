"""A worker on the official Python iii-sdk for the console's browser tests: a function with
schemas (``shop::order``, which logs through the SDK's Logger) behind an http route, a cron job,
a queue consumer and a durable topic subscriber that fail until ``shop::heal`` is called (so
their jobs land in the dead letters), and some state and stream data.

Prints JSON lines: ``{"ready": true}`` once the engine lists its functions, ``{"mailed": data}``
for each job ``shop::mail`` completes. Runs until its stdin closes.
"""

import json
import os
import sys
import threading
import time

from iii import InitOptions, TriggerAction, register_worker
from iii_helpers.observability import Logger

healed = threading.Event()


def emit(**fields):
    sys.stdout.write(json.dumps(fields) + "\n")
    sys.stdout.flush()


logger = Logger(service_name="shop")


def order(data):
    logger.info("order placed", {"item": data["item"]})
    return {"item": data["item"], "qty": data["qty"], "total": data["qty"] * 2}


def mail(data):
    if not healed.is_set():
        raise RuntimeError("mail server down")
    if data.get("to") == "nobody":
        raise RuntimeError("no such mailbox")
    emit(mailed=data)
    return {"sent": True}


def heal_or_fail():
    if not healed.is_set():
        raise RuntimeError("archive offline")
    return None


def heal(data):
    healed.set()
    return {"healed": True}


ORDER_SCHEMA = {
    "type": "object",
    "properties": {
        "item": {"type": "string", "description": "what to buy"},
        "qty": {"type": "integer"},
        "gift": {"type": "boolean"},
    },
    "required": ["item", "qty"],
}
TOTAL_SCHEMA = {"type": "object", "properties": {"total": {"type": "integer"}}}

worker = register_worker(os.environ["III_URL"], InitOptions(worker_name="shop", worker_description="Takes orders"))
worker.register_function("shop::order", order, description="Place an order", request_format=ORDER_SCHEMA, response_format=TOTAL_SCHEMA)
worker.register_function("shop::mail", mail, description="Mail the receipt (fails until shop::heal)")
worker.register_function("shop::heal", heal, description="Bring the mail server back")
worker.register_function("shop::tick", lambda data: None, description="Hourly housekeeping")
worker.register_function("shop::archive", lambda data: heal_or_fail(), description="Archive a receipt (fails until shop::heal)")
worker.register_trigger({
    "type": "durable:subscriber", "function_id": "shop::archive",
    "config": {"topic": "receipts", "queue_config": {"maxRetries": 0, "backoffDelayMs": 10}},
})
worker.register_trigger({"type": "http", "function_id": "shop::order", "config": {"api_path": "orders", "http_method": "POST"}})
worker.register_trigger({"type": "cron", "function_id": "shop::tick", "config": {"expression": "0 0 * * * *"}})

deadline = time.monotonic() + 20
while time.monotonic() < deadline:
    listed = worker.trigger({"function_id": "engine::functions::list", "payload": {}})
    if {"shop::order", "shop::mail", "shop::heal", "shop::archive"} <= {f["function_id"] for f in listed["functions"]}:
        break
    time.sleep(0.05)
worker.trigger({"function_id": "state::set", "payload": {"scope": "carts", "key": "alice", "value": {"items": 2}}})
worker.trigger({"function_id": "stream::set", "payload": {"stream_name": "orders", "group_id": "today", "item_id": "o-1", "data": {"item": "tea"}}})
worker.trigger({"function_id": "shop::mail", "payload": {"to": "bob"}, "action": TriggerAction.Enqueue(queue="mail")})
worker.trigger({"function_id": "iii::durable::publish", "payload": {"topic": "receipts", "data": {"receipt": 7}}})
emit(ready=True)
sys.stdin.read()
worker.shutdown()
