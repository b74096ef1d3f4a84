"""The router's side of several engines as one (sans-I/O): functions of other engines, their
answers, replicas, a peer engine's calls, an engine that leaves."""

from __future__ import annotations

import json

from helpers import Peer, connected, make_router


class Link:
    """What one engine's link carries, as the router writes it."""

    def __init__(self) -> None:
        self.sent: list[bytes] = []

    def take(self) -> list[dict]:
        frames = [json.loads(raw) for raw in self.sent]
        self.sent.clear()
        return frames


def remote(router, engine_id: str, *function_ids: str, worker: str = "w") -> Link:
    link = Link()
    router.set_remote_functions(
        engine_id, link.sent.append, [{"function_id": f, "namespace": "default", "worker_name": worker} for f in function_ids]
    )
    router.flush_events()
    return link


def answer(call: dict, result: object = None, error: object = None) -> bytes:
    frame = {"type": "invocationresult", "invocation_id": call["invocation_id"], "function_id": call["function_id"]}
    if error is not None:
        frame["error"] = error
    else:
        frame["result"] = result
    return json.dumps(frame).encode()


def test_a_call_to_another_engine_goes_on_its_link_and_the_answer_comes_back():
    router = make_router()
    link = remote(router, "B", "math::add")
    caller = connected(router, "caller")
    caller.call("math::add", {"a": 1}, invocation_id="c1")
    (call,) = link.take()
    assert call["invocation_id"] == "c1"
    assert call["data"] == {"a": 1, "_caller_worker_id": caller.id}  # annotated once, on this engine
    router.remote_answer("B", answer(call, {"c": 3}))
    assert [f["result"] for f in caller.take() if f.get("invocation_id") == "c1"] == [{"c": 3}]
    caller.call("math::add", {"a": 1}, invocation_id="c2")
    (call,) = link.take()
    router.remote_answer("B", answer(call, error={"code": "boom", "message": "no"}))
    (result,) = [f for f in caller.take() if f.get("invocation_id") == "c2"]
    assert result["error"] == {"code": "boom", "message": "no"}


def test_an_answer_from_the_wrong_engine_is_ignored():
    router = make_router()
    link = remote(router, "B", "math::add")
    remote(router, "C", "other::fn")
    caller = connected(router, "caller")
    caller.call("math::add", {}, invocation_id="c1")
    (call,) = link.take()
    router.remote_answer("C", answer(call, 1))
    assert not [f for f in caller.take() if f.get("invocation_id") == "c1"]
    assert "c1" in router.pending


def test_a_void_call_and_an_engine_call_reach_the_other_engine():
    router = make_router()
    link = remote(router, "B", "job::run")
    caller = connected(router, "caller")
    caller.send(type="invokefunction", function_id="job::run", data={"x": 1}, action={"type": "void"})
    (call,) = link.take()
    assert call["function_id"] == "job::run" and call["invocation_id"]  # the engine's own id
    router.remote_answer("B", answer(call, None))
    assert call["invocation_id"] not in router.pending
    results = []
    router.invoke("default", "job::run", b'{"y":2}', on_result=lambda r, e: results.append((r, e)), timeout_ms=1000)
    (call,) = link.take()
    router.remote_answer("B", answer(call, {"ok": True}))
    assert [(json.loads(r), e) for r, e in results] == [({"ok": True}, None)]


def test_a_local_owner_is_preferred_and_replicas_elsewhere_share_the_calls():
    router = make_router()
    link_b = remote(router, "B", "rep::fn")
    link_c = remote(router, "C", "rep::fn")
    caller = connected(router, "caller")
    for index in range(4):
        caller.call("rep::fn", {}, invocation_id=f"r{index}")
    assert len(link_b.take()) == 2 and len(link_c.take()) == 2
    local = connected(router, "rep", "rep::fn")  # the same worker, on this engine: no conflict
    assert not [f for f in local.take() if f.get("type") == "registrationrejected"]
    caller.call("rep::fn", {}, invocation_id="l1")
    assert [f["invocation_id"] for f in local.take() if f.get("type") == "invokefunction"] == ["l1"]
    assert not link_b.take() and not link_c.take()
    router.disconnect(local.conn)  # the local owner leaves: the other engines serve again
    caller.call("rep::fn", {}, invocation_id="after")
    assert len(link_b.take()) + len(link_c.take()) == 1


def test_an_engine_that_leaves_stops_its_calls_and_takes_its_functions_only():
    router = make_router()
    link_b = remote(router, "B", "rep::fn", "only::b")
    link_c = remote(router, "C", "rep::fn")
    caller = connected(router, "caller")
    caller.call("only::b", {}, invocation_id="b1")
    caller.call("rep::fn", {}, invocation_id="x1")
    caller.call("rep::fn", {}, invocation_id="x2")
    assert len(link_b.take()) == 2 and len(link_c.take()) == 1
    router.drop_engine("B")
    router.flush_events()
    stopped = {f["invocation_id"]: f["error"]["code"] for f in caller.take() if f.get("type") == "invocationresult"}
    in_flight_to_b = {"b1"} | ({"x1"} if "x1" not in router.pending else {"x2"})
    assert stopped == {key: "invocation_stopped" for key in in_flight_to_b}
    assert router.find_function("default", "only::b") is None
    caller.call("rep::fn", {}, invocation_id="x3")  # the replica left is the one served
    assert [c["invocation_id"] for c in link_c.take()] == ["x3"]
    assert not link_b.take()


def test_functions_of_other_engines_are_listed_with_their_engine():
    class View:
        engine = {"id": "A", "name": "a"}

        def engine_of(self, engine_id):
            return {"id": engine_id, "name": engine_id.lower()}

        def workers(self):
            return [{"name": "w", "id": "wb", "runtime": "node", "status": "available", "engine": self.engine_of("B")}]

        def triggers(self):
            return [{"id": "t", "trigger_type": "cron", "function_id": "rep::fn", "worker_name": "w", "engine": self.engine_of("B")}]

        def trigger_types(self):
            return [{"id": "b::hook", "namespace": "default", "worker_name": "w", "description": "", "engine": self.engine_of("B")}]

    router = make_router()
    router.set_cluster_view(View())
    remote(router, "B", "rep::fn")
    connected(router, "rep", "rep::fn")
    caller = connected(router, "caller")
    rows = caller.result_of("engine::functions::list", {})["result"]["functions"]
    assert sorted((r["function_id"], r["engine"]["id"]) for r in rows) == [("rep::fn", "A"), ("rep::fn", "B")]
    workers = caller.result_of("engine::workers::list", {})["result"]["workers"]
    assert ("wb", "B") in [(w["id"], w["engine"]["id"]) for w in workers]
    assert {w["engine"]["id"] for w in workers if w["id"] != "wb"} == {"A"}
    triggers = caller.result_of("engine::triggers::list", {})["result"]["triggers"]
    assert [(t["id"], t["engine"]["id"]) for t in triggers] == [("t", "B")]
    types = caller.result_of("engine::trigger-types::list", {"include_internal": True})["result"]["trigger_types"]
    assert ("b::hook", "B") in [(t["id"], t["engine"]["id"]) for t in types]
    assert {t["engine"]["id"] for t in types if t["id"] != "b::hook"} == {"A"}


def test_a_peer_engine_call_reaches_a_local_worker_as_sent_and_never_a_third_engine():
    router = make_router()
    owner = connected(router, "math", "math::add")
    remote(router, "C", "elsewhere::fn")
    sent: list[bytes] = []
    peer = router.connect_peer("A", sent.append, lambda: None, "127.0.0.1")
    assert peer.id not in router.connections
    frame = b'{"type":"invokefunction","invocation_id":"p1","function_id":"math::add","data":{"a":1,"_caller_worker_id":"wa"}}'
    router.handle_peer(peer, frame)
    (call,) = [f for f in owner.take() if f.get("type") == "invokefunction"]
    assert call["data"] == {"a": 1, "_caller_worker_id": "wa"}
    owner.send(type="invocationresult", invocation_id="p1", function_id="math::add", result=5)
    assert [json.loads(f)["result"] for f in sent] == [5]
    sent.clear()
    router.handle_peer(peer, b'{"type":"invokefunction","invocation_id":"p2","function_id":"elsewhere::fn","data":{}}')
    (refused,) = [json.loads(f) for f in sent]
    assert refused["error"]["code"] == "function_not_found"
    router.disconnect(peer)
    assert [e for e in owner.take() if e.get("function_id") == "engine::workers-available"] == []


def test_a_namespaced_function_of_another_engine_is_called_in_its_namespace():
    router = make_router()
    link = Link()
    router.set_remote_functions("B", link.sent.append, [{"function_id": "ns::fn", "namespace": "team", "worker_name": "w"}])
    caller = connected(router, "caller")
    caller.call("ns::fn", {"a": 1}, invocation_id="n1", namespace="team")
    (raw,) = link.sent
    (call,) = link.take()
    assert call["namespace"] == "team" and call["invocation_id"] == "n1"

    engine_b = make_router()
    owner = Peer(engine_b)
    owner.register("w", namespace="team")
    owner.function("ns::fn")
    owner.take()
    sent: list[bytes] = []
    peer = engine_b.connect_peer("A", sent.append, lambda: None, None)
    engine_b.handle_peer(peer, raw)
    (delivered,) = [f for f in owner.take() if f.get("type") == "invokefunction"]
    assert "namespace" not in delivered and delivered["data"]["a"] == 1


def test_a_peer_call_in_any_other_shape_takes_the_full_decoder():
    router = make_router()
    owner = connected(router, "math", "math::add")
    sent: list[bytes] = []
    peer = router.connect_peer("A", sent.append, lambda: None, None)
    spaced = b'{"type": "invokefunction", "invocation_id": "s1", "function_id": "math::add", "data": {"a": 1}}'
    escaped = b'{"type":"invokefunction","invocation_id":"e\\u0031","function_id":"math::add","data":{"a":2}}'
    router.handle_peer(peer, spaced)
    router.handle_peer(peer, escaped)
    calls = [f for f in owner.take() if f.get("type") == "invokefunction"]
    assert [(c["invocation_id"], c["data"]["a"]) for c in calls] == [("s1", 1), ("e1", 2)]
    router.handle_peer(peer, b'{"type":"invokefunction","invocation_id":"x"')  # broken: dropped
    assert peer.frames_dropped == 1
