"""The ``bridge`` adapters of ``iii-state``, ``iii-stream`` and ``iii-queue``: the module's
operations run on another engine, through a :class:`~iii.modules._bridge.BridgeClient`.

- **state** (worker ``iii-state-bridge``): ``state::*`` become the remote's ``state::*`` with the
  same input; the answers are the remote's. ``max_value_bytes`` is checked here and this
  engine's ``state`` bindings fire here (the remote's fire there).
- **stream** (worker ``iii-stream-bridge``): ``stream::set|get|delete|update|list|list_groups``
  and ``list_all`` become the remote's (``list_all`` is forwarded, where the original answers no
  streams). Change events fire this engine's ``stream`` bindings here and are published to the
  remote's ``stream.events`` topic; a ``subscribe`` binding on it (to
  ``stream::bridge::on_pub::<uuid>``, registered there) brings every bridged engine's events
  back to this engine's WebSocket clients. The remote needs a pub/sub module for that.
- **queue** (worker ``iii-queue-bridge``): durable publishes go to the remote's
  ``iii::durable::publish``; a ``durable:subscriber`` binding here becomes a function
  ``queue::bridge::on_message::<uuid>`` and a ``durable:subscriber`` binding of it on the remote,
  whose queue delivers, retries and dead-letters (an error of the local function is that
  delivery's error); an enqueue on a named queue is enqueued on the remote and runs there. Local
  queues stay idle, ``list_topics`` is empty and the dead-letter functions fail.

A remote failure is the module's usual error code with the reason: ``Failed to set value:
Failed to set value via bridge: remote error (<code>): <message>``.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from typing import Any, Optional

import msgspec

from iii import codec
from iii.engine.host import (
    Binding,
    Connection,
    EngineError,
    Host,
    Provider,
    Scheduler,
    call,
    condition_passes,
    parse_input,
)
from iii.modules._bridge import BridgeClient, BridgeError, ReplyError
from iii.modules.queue import (
    PUBLISH,
    SUBSCRIBER,
    EnqueueInput,
    PublishInput,
    QueueConfig,
    QueueInput,
    Queues,
    SubscriberConfig,
)
from iii.modules.state import KeyInput, ListInput, ScopeInput, SetInput, State, StateConfig, UpdateInput
from iii.modules.stream import (
    GroupInput,
    ItemInput,
    StreamConfig,
    StreamInput,
    Streams,
    Subscription,
)
from iii.modules.stream import ListInput as StreamListInput
from iii.modules.stream import SetInput as StreamSetInput
from iii.modules.stream import UpdateInput as StreamUpdateInput
from iii.protocol import WireId

__all__ = ["BridgedQueues", "BridgedState", "BridgedStreams", "STREAM_EVENTS_TOPIC"]

log = logging.getLogger("iii.modules")

#: The remote pub/sub topic stream events travel on (a dot, unlike Redis's ``stream::events``).
STREAM_EVENTS_TOPIC = "stream.events"
DLQ_UNSUPPORTED = "Bridge queue adapter does not support DLQ operations"


async def _remote(client: BridgeClient, function_id: str, payload: Any, code: str, what: str) -> Any:
    """Call ``function_id`` on the remote; a failure is ``code`` with the original's wording."""
    try:
        return await client.call(function_id, payload)
    except BridgeError as exc:
        raise EngineError(code, f"Failed to {what}: Failed to {what} via bridge: {exc}") from None


def _json(value: Any) -> Optional[bytes]:
    """A value of a remote answer as the JSON the local event carries (``None`` for null)."""
    return None if value is None else codec.encode_json(value)


def _ensure(coro: Any) -> Any:
    """A built-in's answer that waits: the engine answers when the future is done."""
    return asyncio.ensure_future(coro)


def _changed(result: Any, code: str, what: str) -> dict[str, Any]:
    if not isinstance(result, dict) or "new_value" not in result:
        raise EngineError(code, f"Failed to {what}: Failed to deserialize {what.split()[0]} result: {result!r}"[:500])
    return result


# ---------------------------------------------------------------------- state


class BridgedState(State):
    """``iii-state`` with its data on another engine."""

    def __init__(self, host: Host, config: StateConfig, bridge_url: str) -> None:
        super().__init__(host, msgspec.structs.replace(config, adapter=None))
        self.client = BridgeClient(bridge_url, "iii-state-bridge")

    async def start(self) -> None:
        self.client.start()

    async def stop(self) -> None:
        await self.client.stop()

    def set(self, host: Host, caller: Optional[Connection], data: Any) -> Any:
        request = parse_input("state::set", data, SetInput)
        value = request.value if request.value is not msgspec.UNSET else request.data
        if value is msgspec.UNSET:
            raise EngineError("deserialization_error", "Failed to deserialize input for state::set: `value` is required")
        raw = self._encoded(value)  # max_value_bytes holds here too
        payload = {"scope": request.scope, "key": request.key, "value": msgspec.Raw(raw)}

        async def run() -> Any:
            result = _changed(await _remote(self.client, "state::set", payload, "SET_ERROR", "set value"),
                              "SET_ERROR", "set value")
            self._notify(request.scope, request.key, _json(result.get("old_value")), _json(result["new_value"]))
            return result

        return _ensure(run())

    def get(self, host: Host, caller: Optional[Connection], data: Any) -> Any:
        request = parse_input("state::get", data, KeyInput)
        return _ensure(_remote(self.client, "state::get", {"scope": request.scope, "key": request.key},
                               "GET_ERROR", "get value"))

    def delete(self, host: Host, caller: Optional[Connection], data: Any) -> Any:
        request = parse_input("state::delete", data, KeyInput)

        async def run() -> Any:
            # The remote's delete answers the old value: one round trip, and the value the event
            # carries is the one deleted (the original reads it first, then deletes).
            old = await _remote(self.client, "state::delete", {"scope": request.scope, "key": request.key},
                                "DELETE_ERROR", "delete value")
            self._notify(request.scope, request.key, _json(old), None)
            return old

        return _ensure(run())

    def update(self, host: Host, caller: Optional[Connection], data: Any) -> Any:
        request = parse_input("state::update", data, UpdateInput)
        payload = {"scope": request.scope, "key": request.key, "ops": request.ops}

        async def run() -> Any:
            result = _changed(await _remote(self.client, "state::update", payload, "UPDATE_ERROR", "update value"),
                              "UPDATE_ERROR", "update value")
            self._notify(request.scope, request.key, _json(result.get("old_value")), _json(result["new_value"]))
            return result

        return _ensure(run())

    def list(self, host: Host, caller: Optional[Connection], data: Any) -> Any:
        request = parse_input("state::list", data, ListInput)
        payload: dict[str, Any] = {"scope": request.scope}
        if request.with_keys:
            payload["with_keys"] = True

        async def run() -> Any:
            values = await _remote(self.client, "state::list", payload, "LIST_ERROR", "list values")
            if not isinstance(values, list):
                raise EngineError("LIST_ERROR", f"Failed to list values: invalid state::list response: {values!r}"[:500])
            return values

        return _ensure(run())

    def list_groups(self, host: Host, caller: Optional[Connection], data: Any) -> Any:
        async def run() -> Any:
            result = await _remote(self.client, "state::list_groups", {}, "LIST_GROUPS_ERROR", "list groups")
            groups = result.get("groups") if isinstance(result, dict) else None
            if not isinstance(groups, list) or not all(isinstance(group, str) for group in groups):
                raise EngineError("LIST_GROUPS_ERROR",
                                  f"Failed to list groups: invalid state::list_groups response: {result!r}"[:500])
            return {"groups": groups}

        return _ensure(run())


# ---------------------------------------------------------------------- stream


class _StreamEvent(msgspec.Struct):
    """The part of a stream event that says who gets it."""

    streamName: str  # noqa: N815 (the wire names)
    groupId: str  # noqa: N815
    id: Optional[str] = None


#: How a failure of each read says what failed (writes say "set value" and the like).
_STREAM_WHAT = {"list": "get group", "list_groups": "list groups", "list_all": "list streams"}


class BridgedStreams(Streams):
    """``iii-stream`` with its items on another engine; its WebSocket server stays here."""

    def __init__(self, host: Host, config: StreamConfig, bridge_url: str) -> None:
        super().__init__(host, msgspec.structs.replace(config, adapter=None))
        self.client = BridgeClient(bridge_url, "iii-stream-bridge")
        self.events_function_id = f"stream::bridge::on_pub::{uuid.uuid4()}"

    async def start(self) -> None:
        self.client.start()
        self.client.register_function(self.events_function_id, self._on_remote_event,
                                      description="Stream events of the bridged engines")
        self.client.register_trigger("subscribe", self.events_function_id, {"topic": STREAM_EVENTS_TOPIC})
        await super().start()

    async def stop(self) -> None:
        await super().stop()
        await self.client.stop()

    async def _on_remote_event(self, data: Any) -> None:
        try:
            event = msgspec.convert(data, _StreamEvent)
        except msgspec.ValidationError as exc:
            log.warning("iii-stream bridge: ignored an event on %s: %s", STREAM_EVENTS_TOPIC, exc)
            return
        self.deliver(event.streamName, event.groupId, event.id, codec.encode_json(data))

    def _broadcast(self, stream: str, group: str, item: Optional[str], message: bytes) -> None:
        """Publish to the remote: every bridged engine's clients (this one's too) get it back."""

        async def publish() -> None:
            try:
                await self.client.send("publish", {"topic": STREAM_EVENTS_TOPIC, "data": msgspec.Raw(message)})
            except BridgeError as exc:
                log.warning("iii-stream bridge: an event of %s/%s was not published: %s", stream, group, exc)

        _ensure(publish())

    def _call(self, op: str, payload: Any, code: str) -> Any:
        return _remote(self.client, f"stream::{op}", payload, code, _STREAM_WHAT.get(op, f"{op} value"))

    def _remote_write(self, op: str, request: ItemInput, payload: dict[str, Any]) -> Any:
        delegated = self._delegate_write(op, request)  # a worker's custom backend, as without a bridge
        if delegated is not None:
            return delegated
        code = f"STREAM_{op.upper()}_ERROR"
        stream, group, item = request.stream_name, request.group_id, request.item_id

        async def run() -> Any:
            result = await self._call(op, {"stream_name": stream, "group_id": group, "item_id": item, **payload}, code)
            if op == "delete":
                old = result.get("old_value") if isinstance(result, dict) else None
                if old is not None:
                    self._emit(stream, group, item, {"type": "delete", "data": old})
                return result
            result = _changed(result, code, f"{op} value")
            event_type = "create" if result.get("old_value") is None else "update"
            self._emit(stream, group, item, {"type": event_type, "data": result["new_value"]})
            return result

        return _ensure(run())

    def set(self, host: Host, caller: Optional[Connection], data: Any) -> Any:
        request = parse_input("stream::set", data, StreamSetInput)
        return self._remote_write("set", request, {"data": request.data})

    def update(self, host: Host, caller: Optional[Connection], data: Any) -> Any:
        request = parse_input("stream::update", data, StreamUpdateInput)
        return self._remote_write("update", request, {"ops": request.ops})

    def delete(self, host: Host, caller: Optional[Connection], data: Any) -> Any:
        request = parse_input("stream::delete", data, ItemInput)
        return self._remote_write("delete", request, {})

    def get(self, host: Host, caller: Optional[Connection], data: Any) -> Any:
        request = parse_input("stream::get", data, ItemInput)
        delegated = self._delegate("get", request, lambda result: result)
        if delegated is not None:
            return delegated
        return _ensure(self._call("get", msgspec.to_builtins(request), "STREAM_GET_ERROR"))

    def list(self, host: Host, caller: Optional[Connection], data: Any) -> Any:
        request = parse_input("stream::list", data, StreamListInput)
        delegated = self._delegate("list", GroupInput(request.stream_name, request.group_id), lambda result: result)
        if delegated is not None:
            return delegated
        payload = msgspec.to_builtins(request)
        if not request.with_ids:
            del payload["with_ids"]
        return _ensure(self._call("list", payload, "STREAM_GET_GROUP_ERROR"))

    def list_groups(self, host: Host, caller: Optional[Connection], data: Any) -> Any:
        request = parse_input("stream::list_groups", data, StreamInput)
        delegated = self._delegate("list_groups", request, lambda result: result)
        if delegated is not None:
            return delegated
        return _ensure(self._call("list_groups", msgspec.to_builtins(request), "STREAM_LIST_GROUPS_ERROR"))

    def list_all(self, host: Host, caller: Optional[Connection], data: Any) -> Any:
        # Forwarded: the original answers no streams here, which helps nobody.
        return _ensure(self._call("list_all", {}, "STREAM_LIST_ALL_ERROR"))

    async def snapshot(self, subscription: Subscription) -> bytes:
        """The ``sync`` message, read from the remote (an empty one if it cannot be read)."""
        stream, group, item = subscription.stream_name, subscription.group_id, subscription.item_id
        try:
            if item is not None:
                data = await self.client.call("stream::get", {"stream_name": stream, "group_id": group, "item_id": item})
            else:
                data = await self.client.call("stream::list", {"stream_name": stream, "group_id": group})
        except BridgeError as exc:
            log.warning("iii-stream bridge: the sync of %s/%s could not be read: %s", stream, group, exc)
            data = None if item is not None else []
        message = {"type": "stream", "timestamp": int(time.time() * 1000), "streamName": stream, "groupId": group, "id": item,
                   "event": {"type": "sync", "data": data}}
        return codec.encode_json(message)


# ---------------------------------------------------------------------- queue


class _RemoteSubscription:
    __slots__ = ("function_id", "unregister_function", "unregister_trigger")

    def __init__(self, function_id: str, unregister_function: Any, unregister_trigger: Any) -> None:
        self.function_id = function_id
        self.unregister_function = unregister_function
        self.unregister_trigger = unregister_trigger


class BridgedTopics(Provider[SubscriberConfig]):
    """Durable topics on the remote: publishes go there, each binding here subscribes there."""

    def __init__(self, host: Host, client: BridgeClient, timeout_ms: int) -> None:
        super().__init__(host, SubscriberConfig, timeout_ms, self._check)
        self.client = client
        #: binding id -> its function and binding on the remote
        self.remote: dict[str, _RemoteSubscription] = {}

    @staticmethod
    def _check(config: SubscriberConfig) -> Optional[str]:
        return None if config.name else f"Topic is not set: a {SUBSCRIBER} trigger needs {{\"topic\": \"<name>\"}}"

    def register(self, binding: Binding) -> Optional[str]:
        self.unregister(binding)  # a re-registered id may have changed topic or function
        refusal = super().register(binding)
        if refusal is not None:
            return refusal
        config = self.bindings[binding.id][1]
        remote_config: dict[str, Any] = {"topic": config.name}
        raw = codec.decode_json(binding.config) if binding.config not in (b"", b"null") else None
        if isinstance(raw, dict) and isinstance(raw.get("queue_config"), dict):
            # Its retries and backoff are the remote queue's to apply (the original drops them).
            remote_config["queue_config"] = raw["queue_config"]
        function_id = f"queue::bridge::on_message::{uuid.uuid4()}"
        unregister_function = self.client.register_function(
            function_id, self._deliverer(binding, config.condition_function_id),
            description=f"Deliveries of {config.name} to {binding.function_id} on a bridged engine",
        )
        unregister_trigger = self.client.register_trigger(SUBSCRIBER, function_id, remote_config)
        self.remote[binding.id] = _RemoteSubscription(function_id, unregister_function, unregister_trigger)
        return None

    def unregister(self, binding: Binding) -> None:
        super().unregister(binding)
        subscription = self.remote.pop(binding.id, None)
        if subscription is not None:  # the remote binding and its function (the original keeps the function)
            subscription.unregister_trigger()
            subscription.unregister_function()

    def _deliverer(self, binding: Binding, condition: Optional[str]) -> Any:
        """What the remote queue calls with each message: the condition, then the function,
        here; their error fails the delivery there (which retries it, then dead-letters it)."""
        host = self.host

        async def deliver(data: Any) -> Any:
            payload = codec.encode_json(data)
            if condition:
                passed, error = await condition_passes(host, binding.namespace, condition, payload,
                                                       timeout_ms=self.timeout_ms)
                if error is not None:
                    raise ReplyError(error.code, error.message, error.stacktrace)
                if not passed:
                    return None
            result, error = await call(host, binding.namespace, binding.function_id, payload,
                                       timeout_ms=self.timeout_ms)
            if error is not None:
                raise ReplyError(error.code, error.message, error.stacktrace)
            return result

        return deliver

    def publish(self, host: Host, caller: Optional[Connection], data: Any, function_id: str = PUBLISH) -> Any:
        request = parse_input(function_id, data, PublishInput)
        if not request.topic:
            raise EngineError("topic_not_set", "Topic is not set")

        async def send() -> None:
            try:
                await self.client.send(PUBLISH, {"topic": request.topic, "data": request.data})
            except BridgeError as exc:
                raise EngineError("bridge_error", f"Failed to publish via bridge: {exc}") from None

        return _ensure(send())


class BridgedQueues(Queues):
    """``iii-queue`` whose topics and named queues are the remote engine's."""

    def __init__(self, host: Host, config: QueueConfig, scheduler: Scheduler, bridge_url: str) -> None:
        super().__init__(host, msgspec.structs.replace(config, adapter=None), scheduler)
        self.client = BridgeClient(bridge_url, "iii-queue-bridge")
        self.topics = BridgedTopics(host, self.client, config.invocation_timeout_ms)  # type: ignore[assignment]
        self._configured = config.queue_configs

    async def start(self) -> None:
        self.client.start()

    async def stop(self) -> None:
        await super().stop()
        await self.client.stop()

    def _all_queues(self) -> list[Any]:
        return list(self.queues.values())  # idle: nothing is queued here

    def enqueue(self, host: Host, caller: Optional[Connection], data: Any) -> Any:
        request = parse_input(WireId.QUEUE_ENQUEUE, data, EnqueueInput)

        async def run() -> Any:
            try:
                return await self.client.call(
                    request.function_id, request.data, queue=request.queue, namespace=request.namespace
                )
            except BridgeError as exc:
                raise EngineError("bridge_error", f"Failed to enqueue via bridge: {exc}") from None

        return _ensure(run())

    def list_topics(self, host: Host, caller: Optional[Connection], data: Any) -> Any:
        return []

    def topic_stats(self, host: Host, caller: Optional[Connection], data: Any) -> Any:
        request = parse_input("engine::queue::topic_stats", data, QueueInput)
        name = request.queue or request.topic
        if not name:
            raise EngineError("topic_required", "topic is required")
        settings = self._configured.get(name)
        return {"depth": 0, "consumer_count": settings.concurrency if settings is not None else 0,
                "dlq_depth": 0, "config": None}

    def dlq_topics(self, host: Host, caller: Optional[Connection], data: Any) -> Any:
        return []

    def dlq_messages(self, host: Host, caller: Optional[Connection], data: Any) -> Any:
        return []

    def redrive(self, host: Host, caller: Optional[Connection], data: Any) -> Any:
        raise EngineError("redrive_failed", DLQ_UNSUPPORTED)

    def redrive_message(self, host: Host, caller: Optional[Connection], data: Any) -> Any:
        raise EngineError("redrive_message_failed", DLQ_UNSUPPORTED)

    def discard_message(self, host: Host, caller: Optional[Connection], data: Any) -> Any:
        raise EngineError("discard_message_failed", DLQ_UNSUPPORTED)
