"""What a user's benchmark looks like: the ``iii.testing`` plugin's ``iii_bench`` fixture on one
round trip each (``pytest bench/test_plugin_bench.py --benchmark-only``); the engine's build is
in each result's ``extra_info``."""

from __future__ import annotations

import pytest


def echo(data):
    return data


def hello(request):
    return {"status_code": 200, "body": {"hello": request["query_params"].get("name", "world")}}


def test_call_round_trip(iii_bench, iii_worker):
    iii_worker.register_function("bench::echo", echo)
    assert iii_bench.call("bench::echo", {"n": 1})["n"] == 1  # the engine adds _caller_worker_id


def test_http_trigger(iii_bench, iii_worker):
    iii_worker.register_function("bench::hello", hello)
    iii_worker.register_trigger({"type": "http", "function_id": "bench::hello",
                                 "config": {"api_path": "hello", "http_method": "GET"}})
    assert iii_bench.http("hello?name=bench") == (200, {"hello": "bench"})


@pytest.mark.parametrize("store", ["in_memory", pytest.param("durable", marks=pytest.mark.iii_engine(durable=True))])
def test_state_write(iii_bench, store):
    iii_bench.state_set("bench", "key", {"n": 1})
    assert (iii_bench.engine.directory / "state.db").exists() == (store == "durable")


def test_enqueue_to_delivery(iii_bench, iii_worker):
    iii_worker.register_function("bench::job", echo)
    assert "messageReceiptId" in iii_bench.enqueue("bench::job", {"n": 1})
