"""What the engine answers for the older official SDKs (iii-sdk 0.11.3) beside the current ones."""

from __future__ import annotations

from helpers import connected, make_router


def test_workers_list_rows_carry_their_function_ids(codec):
    """iii-sdk 0.11.3's ``list_workers()`` requires ``functions`` in every row, as the original
    sent it up to 0.12; current SDKs ignore it."""
    router = make_router({})
    owner = connected(router, "owner", "b::two", "a::one")
    rows = {r["name"]: r for r in owner.result_of("engine::workers::list", {})["result"]["workers"]}
    assert rows["owner"]["functions"] == ["a::one", "b::two"]
    assert "iii::durable::publish" in rows["iii-queue"]["functions"]
    assert all(len(row["functions"]) == row["function_count"] for row in rows.values())
