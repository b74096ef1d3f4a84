"""What the engine answers for the older official SDKs (iii-sdk 0.11.3 and 0.1.0) beside the
current ones."""

from __future__ import annotations

from helpers import Peer, connected, make_router


def test_workers_list_rows_carry_their_function_ids(codec):
    """iii-sdk 0.11.3's ``list_workers()`` requires ``functions`` in every row, as the original
    sent it up to 0.12; current SDKs ignore it."""
    router = make_router({})
    owner = connected(router, "owner", "b::two", "a::one")
    rows = {r["name"]: r for r in owner.result_of("engine::workers::list", {})["result"]["workers"]}
    assert rows["owner"]["functions"] == ["a::one", "b::two"]
    assert "iii::durable::publish" in rows["iii-queue"]["functions"]
    assert all(len(row["functions"]) == row["function_count"] for row in rows.values())


def test_dotted_engine_ids_of_sdk_010_reach_the_engine_functions(codec):
    """iii-sdk 0.1.0 announces itself with ``engine.workers.register`` (a call with neither id
    nor action: void) and lists with ``engine.functions.list``: its registrations are applied at
    once, not after the grace period, and its row has its name."""
    router = make_router()
    old = Peer(router)
    old.send(type="registerfunction", id="v010::echo")  # held until the worker announces itself
    old.send(type="invokefunction", function_id="engine.workers.register",
             data={"runtime": "python", "version": "0.1.0", "name": "old010", "os": "Linux"})
    router.flush_events()
    listed = old.result_of("engine.functions.list", {})
    assert "v010::echo" in [f["function_id"] for f in listed["result"]["functions"]]
    (row,) = [w for w in old.result_of("engine.workers.list", {})["result"]["workers"] if w["id"] == old.id]
    assert (row["name"], row["version"], row["functions"]) == ("old010", "0.1.0", ["v010::echo"])
    missing = old.result_of("engine.nope.list", {})["error"]
    assert missing["code"] == "function_not_found" and "engine.nope.list" in missing["message"]
