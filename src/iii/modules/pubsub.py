"""Pub/sub (``iii-pubsub``): function ``publish {topic, data}``, trigger type ``subscribe``.

Fire-and-forget: every subscriber of the topic is called with ``data`` itself as its payload,
without metadata; nothing is kept, nothing retried. In process with the ``local`` adapter; with
``redis``, ``publish`` is ``PUBLISH <topic> <data JSON>`` (the original's channel and payload)
and each engine subscribes, on one connection, to the topics its bindings name: a publish on any
engine (or by any Redis client) reaches every binding of the topic on every engine, each once,
its condition function checked first.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Optional, Union

import msgspec

from iii import codec
from iii.engine.host import (
    DEFAULT_INVOCATION_TIMEOUT_MS,
    Binding,
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
from iii.modules._adapters import PubSubAdapter, RedisAdapter
from iii.modules._redis import RedisUnavailable, Subscriber
from iii.modules._redis_stores import RedisHashes, json_or_none, then

__all__ = ["MODULE", "PubSubConfig", "install"]

NAME = "iii-pubsub"
log = logging.getLogger("iii.modules")


class PubSubConfig(msgspec.Struct, forbid_unknown_fields=True):
    """The ``iii-pubsub`` entry's ``config``."""

    #: ``{name: local}`` (in process, the default) or ``{name: redis, config: {redis_url}}``
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


class RedisTopics(Provider[SubscribeConfig]):
    """The ``subscribe`` bindings on Redis: one subscriber connection for every topic; a topic is
    subscribed while a binding names it, each of its messages fires every such binding."""

    def __init__(self, host: Host, timeout_ms: int, url: str) -> None:
        super().__init__(host, SubscribeConfig, timeout_ms, _check)
        self.commands = RedisHashes(url)
        self.subscriber = Subscriber(url)
        #: topic -> its message handler (while a binding names it)
        self._handlers: dict[str, Any] = {}
        self._pending: set[asyncio.Task] = set()

    async def start(self) -> None:
        try:
            await self.commands.open()
            await self.subscriber.start()
        except (RedisUnavailable, TimeoutError) as error:
            await self.stop()
            raise RedisUnavailable(f"failed to create worker '{NAME}': {error or 'Redis did not answer'}") from None

    async def stop(self) -> None:
        for task in list(self._pending):
            task.cancel()
        await self.subscriber.close()
        await self.commands.close()

    def register(self, binding: Binding) -> Optional[str]:
        previous = self.bindings.get(binding.id)
        refusal = super().register(binding)
        if refusal is None:
            topic = self.bindings[binding.id][1].topic
            if topic not in self._handlers:
                handler = self._handlers[topic] = lambda message, topic=topic: self._deliver(topic, message)
                self._in_background(self.subscriber.subscribe(topic, handler), f"subscribe to {topic!r}")
            if previous is not None:  # the same binding id again, maybe for another topic
                self._release(previous[1].topic)
        return refusal

    def unregister(self, binding: Binding) -> None:
        entry = self.bindings.get(binding.id)
        super().unregister(binding)
        if entry is not None:
            self._release(entry[1].topic)

    def _release(self, topic: Optional[str]) -> None:
        """Leave ``topic`` if no binding names it any more."""
        if topic in self._handlers and not any(config.topic == topic for _, config in self.bindings.values()):
            handler = self._handlers.pop(topic)
            self._in_background(self.subscriber.unsubscribe(topic, handler), f"unsubscribe from {topic!r}")

    def _in_background(self, work: Any, doing: str) -> None:
        async def run() -> None:
            try:
                await work
            except Exception as error:  # the subscriber resubscribes on its next reconnection
                log.warning("iii-pubsub: could not %s yet: %s", doing, error)

        task = asyncio.ensure_future(run())
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    def _deliver(self, topic: str, message: bytes) -> None:
        if json_or_none(message) is None:
            log.warning("iii-pubsub: a message on topic %r is not JSON; skipped", topic)
            return
        for binding, subscription in list(self.bindings.values()):
            if subscription.topic == topic:
                self.fire(binding, message, subscription.condition_function_id, with_metadata=False)

    def publish(self, topic: str, payload: bytes) -> asyncio.Future:
        """``PUBLISH``: a future of ``None``, or of a ``publish_error``."""
        published = self.commands.publish(topic, payload)
        return then(published, lambda _: None, "publish_error", f"Failed to publish to topic {topic!r}")


def install(host: Host, config: Optional[PubSubConfig] = None) -> Union[Running, RedisTopics]:
    """Register ``publish`` and the ``subscribe`` trigger type."""
    config = config or PubSubConfig()
    adapter = config.adapter
    remote = (
        RedisTopics(host, config.invocation_timeout_ms, adapter.config.redis_url)
        if isinstance(adapter, RedisAdapter) else None
    )
    subscribers = remote or Provider(host, SubscribeConfig, config.invocation_timeout_ms, _check)

    def publish(host: Host, caller: Optional[Connection], data: Any) -> Any:
        request = parse_input("publish", data, PublishInput)
        if not request.topic:
            raise EngineError("topic_not_set", "Topic is not set")
        payload = codec.encode_json(request.data)
        if remote is not None:  # every engine's bindings fire when Redis relays it, this one's too
            return remote.publish(request.topic, payload)
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
    return remote or Running()


MODULE = BuiltinModule(NAME, "Topic publish/subscribe, fire-and-forget (in process or over Redis)", PubSubConfig, install)
