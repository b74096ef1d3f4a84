"""One-call pytest-benchmark measurements of an engine between a test's worker and its client."""

from __future__ import annotations

import http.client
import json
from typing import Any, Optional
from urllib.parse import urlsplit

from iii.sdk.actions import TriggerActionEnqueue
from iii.testing._engine import EngineProcess
from iii.testing._workers import TestWorker

__all__ = ["EngineBench", "engine_info"]


def engine_info(engine: EngineProcess) -> dict[str, Any]:
    """What a benchmark result records of the engine it measured (``extra_info``)."""
    return {"iii_engine_build": engine.build, "iii_engine_version": engine.version}


class EngineBench:
    """Each method runs pytest-benchmark's ``benchmark`` on one round trip through the engine and
    returns the last round's outcome; ``benchmark.extra_info`` gets the engine's build and
    version and what was measured (``iii_measure``).

    Args:
        benchmark: pytest-benchmark's fixture.
        engine: the engine measured.
        worker: the test's worker (it serves the functions called).
        client: the test's client (it makes the calls).
    """

    def __init__(self, benchmark: Any, engine: EngineProcess, worker: TestWorker, client: Any) -> None:
        self.benchmark = benchmark
        self.engine = engine
        self.worker = worker
        self.client = client
        self._http: Optional[http.client.HTTPConnection] = None

    def _measure(self, what: str, function: Any, *args: Any) -> Any:
        self.benchmark.extra_info.update(engine_info(self.engine), iii_measure=what)
        return self.benchmark(function, *args)

    def call(self, function_id: str, payload: Any = None, **request: Any) -> Any:
        """A synchronous ``trigger`` of ``function_id``: client → engine → worker → back."""
        call = {"function_id": function_id, "payload": payload, **request}
        return self._measure(f"call {function_id}", self.client.trigger, call)

    def http(self, path: str, method: str = "GET", body: Any = None, headers: Optional[dict[str, str]] = None) -> tuple[int, Any]:
        """An HTTP request to the engine's ``iii-http`` server (one kept-alive connection):
        client → engine → the function bound to the route → back. Returns ``(status, body)``,
        the body decoded when it is JSON.

        Raises:
            RuntimeError: the engine serves no HTTP.
        """
        if self.engine.http_url is None:
            raise RuntimeError("this engine serves no HTTP (is iii-http configured?)")
        address = urlsplit(self.engine.http_url)
        self.close()
        self._http = http.client.HTTPConnection(address.hostname or "127.0.0.1", address.port, timeout=30)
        sent_headers = dict(headers or {})
        data: Optional[bytes] = None
        if body is not None:
            data = body if isinstance(body, bytes) else json.dumps(body).encode()
            if not isinstance(body, bytes):
                sent_headers.setdefault("Content-Type", "application/json")
        target = "/" + path.lstrip("/")
        connection = self._http

        def request() -> tuple[int, bytes, str]:
            connection.request(method, target, body=data, headers=sent_headers)
            response = connection.getresponse()
            return response.status, response.read(), response.getheader("Content-Type") or ""

        status, raw, content_type = self._measure(f"http {method} {target}", request)
        return status, json.loads(raw) if raw and "json" in content_type else raw

    def state_set(self, scope: str, key: str, value: Any) -> Any:
        """A ``state::set`` call: client → engine (the state module) → back."""
        call = {"function_id": "state::set", "payload": {"scope": scope, "key": key, "value": value}}
        return self._measure("state::set", self.client.trigger, call)

    def enqueue(self, function_id: str, payload: Any = None, queue: str = "default") -> Any:
        """Enqueue a job for ``function_id`` (a function of the test's worker) and wait until
        the worker has handled it: client → engine (queue) → worker. Returns the receipt."""
        worker, client = self.worker, self.client
        call = {"function_id": function_id, "payload": payload, "action": TriggerActionEnqueue(queue=queue)}

        def enqueue_and_deliver() -> Any:
            handled = worker.calls(function_id)
            receipt = client.trigger(call)
            worker.wait_for_calls(function_id, handled + 1)
            return receipt

        return self._measure(f"enqueue -> delivery {function_id} ({queue})", enqueue_and_deliver)

    def close(self) -> None:
        if self._http is not None:
            self._http.close()
            self._http = None
