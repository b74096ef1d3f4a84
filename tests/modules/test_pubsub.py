"""The iii-pubsub module without sockets (both codecs)."""

from __future__ import annotations

import pytest

from helpers import Peer, connected, make_router
from iii.engine.router import Router


@pytest.fixture
def router(codec) -> Router:
    return make_router({})


def subscribe(router: Router, peer: Peer, binding_id: str, **config) -> list:
    function_id = f"{peer.conn.name}::{binding_id}"
    peer.function(function_id)
    peer.send(type="registertrigger", id=binding_id, trigger_type="subscribe", function_id=function_id,
              config=config, metadata={"never": "sent"})
    router.flush_events()
    return peer.take()


def test_every_subscriber_of_the_topic_gets_the_data_itself(router):
    alice, bob = connected(router, "alice"), connected(router, "bob")
    subscribe(router, alice, "news")
    subscribe(router, bob, "news", topic="news")
    subscribe(router, bob, "sports", topic="sports")
    assert subscribe(router, alice, "news2", topic="news") == []
    publisher = connected(router, "publisher")
    answer = publisher.result_of("publish", {"topic": "news", "data": {"headline": "hi"}})
    assert "error" not in answer and answer.get("result") is None
    router.flush_events()  # delivery follows the publish
    delivered = [(f["function_id"], f["data"], f.get("metadata")) for f in alice.take() + bob.take()]
    assert sorted(delivered) == [("alice::news2", {"headline": "hi"}, None), ("bob::news", {"headline": "hi"}, None)]


def test_a_subscription_needs_a_topic(router):
    peer = connected(router, "peer")
    (refusal,) = subscribe(router, peer, "nothing")
    assert refusal["type"] == "triggerregistrationresult"
    assert refusal["error"]["code"] == "trigger_registration_failed"
    assert "Topic is not set" in refusal["error"]["message"]


def test_publish_needs_a_topic(router):
    peer = connected(router, "peer")
    assert peer.result_of("publish", {"data": 1})["error"] == {"code": "topic_not_set", "message": "Topic is not set"}


def test_a_condition_false_skips_the_subscriber(router):
    peer = connected(router, "peer", "peer::gate")
    subscribe(router, peer, "gated", topic="t", condition_function_id="peer::gate")
    peer.result_of("publish", {"topic": "t", "data": [1]})
    router.flush_events()
    (gate,) = peer.take()
    assert (gate["function_id"], gate["data"]) == ("peer::gate", [1])
    peer.send(type="invocationresult", invocation_id=gate["invocation_id"], function_id="peer::gate", result=False)
    assert peer.take() == []
