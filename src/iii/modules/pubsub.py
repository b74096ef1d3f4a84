"""Pub/sub (``iii-pubsub``): function ``publish {topic, data}``, trigger type ``subscribe``.

Fire-and-forget and in-process (the ``local`` adapter): every subscriber of the topic is called
with ``data`` itself as its payload, without metadata; nothing is kept, nothing retried.
"""

from __future__ import annotations

from typing import Any, Optional, Union

import msgspec

from iii import codec
from iii.engine.host import (
    DEFAULT_INVOCATION_TIMEOUT_MS,
    BuiltinModule,
    Connection,
    EngineError,
    Host,
    Provider,
    Running,
    TimeoutMs,
    json_schema,
    parse_input,
)
from iii.modules._adapters import PubSubAdapter

__all__ = ["MODULE", "PubSubConfig", "install"]

NAME = "iii-pubsub"


class PubSubConfig(msgspec.Struct, forbid_unknown_fields=True):
    """The ``iii-pubsub`` entry's ``config``: only the in-process ``local`` adapter exists here."""

    adapter: PubSubAdapter = None
    #: The deadline of each call to a subscriber (and its condition function).
    invocation_timeout_ms: TimeoutMs = DEFAULT_INVOCATION_TIMEOUT_MS


class PublishInput(msgspec.Struct):
    """What ``publish`` takes: every subscriber of ``topic`` is called with ``data``."""

    topic: Union[str, None] = None
    data: Any = None


class SubscribeConfig(msgspec.Struct):
    """The ``subscribe`` trigger's config."""

    topic: Union[str, None] = None
    condition_function_id: Union[str, None] = None


def _check(config: SubscribeConfig) -> Optional[str]:
    if not config.topic or not config.topic.strip():
        return "Topic is not set: a subscribe trigger needs {\"topic\": \"<name>\"}"
    return None


def install(host: Host, config: Optional[PubSubConfig] = None) -> Running:
    """Register ``publish`` and the ``subscribe`` trigger type."""
    config = config or PubSubConfig()
    subscribers = Provider(host, SubscribeConfig, config.invocation_timeout_ms, _check)

    def publish(host: Host, caller: Optional[Connection], data: Any) -> None:
        request = parse_input("publish", data, PublishInput)
        if not request.topic:
            raise EngineError("topic_not_set", "Topic is not set")
        payload = codec.encode_json(request.data)
        matching = [
            (binding, subscription.condition_function_id)
            for binding, subscription in subscribers.bindings.values()
            if subscription.topic == request.topic
        ]

        def deliver() -> None:
            for binding, condition_function_id in matching:
                subscribers.fire(binding, payload, condition_function_id, with_metadata=False)

        if matching:
            host.later(deliver)
        return None

    host.add_function(
        "publish",
        publish,
        module=NAME,
        description="Publish data to every subscriber of a topic (fire-and-forget)",
        request_format=json_schema(PublishInput, required=("topic",)),
    )
    host.add_trigger_type(
        "subscribe",
        subscribers,
        module=NAME,
        description="Called with the data of every publish to the topic",
        trigger_request_format=json_schema(SubscribeConfig, required=("topic",)),
    )
    return Running()


MODULE = BuiltinModule(NAME, "Topic publish/subscribe, fire-and-forget", PubSubConfig, install)
