"""Stream (``iii-stream``): items in ``(stream_name, group_id, item_id)``, their change events to
``stream`` bindings and to WebSocket clients (port 3112), and the ``stream:join`` /
``stream:leave`` trigger types.

Clients send ``{"type": "join"|"leave", "data": {subscriptionId, streamName, groupId, id?}}``.
A join runs every ``stream:join`` binding (any answering ``{"unauthorized": true}``, failing or
not answering in time refuses it),
then subscribes and sends a ``sync`` event with the item or the group's items. Items live in
memory, and also in a SQLite file with the ``kv`` adapter's ``file_based`` store
(:mod:`iii.modules._store`), where a write answers, and its events go out, once committed.

With the ``redis`` adapter the items live in Redis (:mod:`iii.modules._redis_stores`, the
original's layout) and every change event goes out on ``stream::events`` (the original's channel
and JSON), from the write's own atomic script; each engine hands every event it receives, its own
writes' included, to its WebSocket clients and its ``stream`` bindings, so each gets each change
once whichever engine did the write (a Rust engine's writes too).

Custom stream backends: when a function ``stream::<op>(<stream_name>)`` exists in ``default``
(a worker's ``create_stream``), ``stream::<op>`` on that stream calls it instead of touching the
store (``get``, ``set``, ``delete``, ``list``, ``list_groups``, ``update``); the events of its
writes go out as for the store's.

A client that does not read what it is sent is dropped once more than ``max_client_buffer_bytes``
would wait for it, or once it has stayed behind for ``client_stall_timeout_ms``; a client whose
joins pile up is not read until they are handled; bad client messages are logged once per client
and kind, then counted.
"""

from __future__ import annotations

import asyncio
import logging
import time
from functools import partial
from typing import Annotated, Any, Callable, Optional, Union

import msgspec
from msgspec import Meta
from picows import WSFrame, WSListener, WSMsgType, WSTransport, WSUpgradeRequest, ws_create_server

from iii import codec
from iii.engine.host import (
    DEFAULT_INVOCATION_TIMEOUT_MS,
    BuiltinModule,
    Connection,
    EngineError,
    ErrorBody,
    Host,
    KindCounts,
    Provider,
    TimeoutMs,
    call,
    json_schema,
    parse_input,
)
from iii.modules._adapters import BridgeAdapter, RedisAdapter, StreamAdapter, database_path
from iii.modules._redis import RedisUnavailable, Subscriber
from iii.modules._redis_stores import (
    STREAM_EVENTS,
    RedisHashes,
    StoreUnavailable,
    UpdateOutcome,
    all_update_errors,
    failing_as,
    glob_escape,
    json_or_none,
    then,
)
from iii.modules._store import Journal, Values
from iii.modules.update_ops import apply_ops, prepare_ops
from iii.protocol import DEFAULT_NAMESPACE

__all__ = ["MODULE", "StreamConfig", "install"]

NAME = "iii-stream"
#: The database of the ``file_based`` store when ``file_path`` is not given.
DEFAULT_FILE = "./data/stream_store.db"
_TABLE, _KEY_COLUMNS = "stream_items", ("stream", "group_id", "item")
log = logging.getLogger("iii.modules")
_NULL = msgspec.Raw(b"null")


class StreamConfig(msgspec.Struct, forbid_unknown_fields=True):
    """The ``iii-stream`` entry's ``config``."""

    port: Annotated[int, Meta(ge=0, le=65535)] = 3112
    host: str = "0.0.0.0"
    #: Called once per client with ``{headers, path, query_params, addr}``; returns ``{context}``.
    auth_function: Union[str, None] = None
    #: ``{name: kv, config: {store_method: in_memory | file_based, file_path?}}`` or
    #: ``{name: redis, config: {redis_url}}``
    adapter: StreamAdapter = None
    #: The deadline of each call it makes (bound functions, join/leave handlers, auth_function);
    #: a join handler that does not answer in time refuses the join.
    invocation_timeout_ms: TimeoutMs = DEFAULT_INVOCATION_TIMEOUT_MS
    #: A client that does not read what it is sent is dropped once this much waits for it...
    max_client_buffer_bytes: Annotated[int, Meta(ge=1)] = 64 * 1024 * 1024
    #: ... or once it has kept the engine waiting (its buffer over the high-water mark) this long.
    client_stall_timeout_ms: Annotated[int, Meta(ge=1)] = 30_000


class ItemInput(msgspec.Struct):
    stream_name: str
    group_id: str
    item_id: str


class SetInput(ItemInput):
    data: Any = None


class UpdateInput(ItemInput):
    ops: list[Any] = []


class GroupInput(msgspec.Struct):
    stream_name: str
    group_id: str


class ListInput(GroupInput):
    #: An extension of the original: ``[{id, data}]`` sorted by id instead of bare items.
    with_ids: bool = False


class StreamInput(msgspec.Struct):
    stream_name: str


class SendInput(msgspec.Struct):
    stream_name: str
    group_id: str
    type: str
    data: Any = None
    id: Union[str, None] = None


class StreamTriggerConfig(msgspec.Struct):
    """The ``stream`` trigger's config: which changes call the function."""

    stream_name: Union[str, None] = None
    group_id: Union[str, None] = None
    item_id: Union[str, None] = None
    condition_function_id: Union[str, None] = None


class AnyConfig(msgspec.Struct):
    """``stream:join`` / ``stream:leave`` take no config."""


class Subscription(msgspec.Struct):
    id: str
    stream_name: str
    group_id: str
    item_id: Union[str, None]


class EventHead(msgspec.Struct):
    """What an engine reads of a change event from Redis to route it (the rest goes on as is)."""

    streamName: str  # noqa: N815 (the wire names)
    groupId: str  # noqa: N815
    id: Union[str, None] = None


_event_decoder = msgspec.json.Decoder(EventHead)


class Streams:
    """The store, the functions over it and the fan-out of its events."""

    def __init__(self, host: Host, config: StreamConfig) -> None:
        self._host = host
        self.config = config
        #: stream -> group -> item -> the item's JSON
        self.items: dict[str, dict[str, dict[str, bytes]]] = {}
        timeout_ms = config.invocation_timeout_ms
        self.watchers = Provider(host, StreamTriggerConfig, timeout_ms)
        self.joins = Provider(host, AnyConfig, timeout_ms)
        self.leaves = Provider(host, AnyConfig, timeout_ms)
        self.clients: set[StreamClient] = set()
        self._server: Optional[asyncio.AbstractServer] = None
        self.url: Optional[str] = None
        path = database_path(config.adapter, DEFAULT_FILE)
        #: The file the items are also kept in (``None``: in memory only).
        self.store = None if path is None else Values(
            Journal(path, Values.schema(_TABLE, _KEY_COLUMNS)), _TABLE, _KEY_COLUMNS,
            restore=self._restore,
        )
        adapter = config.adapter
        #: The items in Redis (``None``: here).
        self.remote = RedisHashes(adapter.config.redis_url) if isinstance(adapter, RedisAdapter) else None
        self._events: Optional[Subscriber] = None

    async def _connect(self) -> None:
        """Connect to Redis and listen to ``stream::events``.

        Raises:
            RedisUnavailable: Redis did not answer (the engine does not start, as the original).
        """
        assert self.remote is not None
        try:
            await self.remote.open()
            self._events = Subscriber(self.remote.url)
            await self._events.start()
            await self._events.subscribe(STREAM_EVENTS, self._on_event)
        except (RedisUnavailable, TimeoutError) as error:
            await self._disconnect()
            raise RedisUnavailable(f"failed to create worker '{NAME}': {error or 'Redis did not answer'}") from None

    async def _disconnect(self) -> None:
        if self._events is not None:
            await self._events.close()
            self._events = None
        if self.remote is not None:
            await self.remote.close()

    def _load(self) -> None:
        """Open the file and load what it keeps."""
        if self.store is not None:
            self.store.journal.open()
            for stream, group, item, value in self.store.load():
                self.items.setdefault(stream, {}).setdefault(group, {})[item] = value

    # ------------------------------------------------------------------ functions

    def _group(self, stream: str, group: str) -> dict[str, bytes]:
        return self.items.get(stream, {}).get(group, {})

    def _write(self, stream: str, group: str, item: str, raw: Optional[bytes]) -> Optional[bytes]:
        """Store (or, with ``None``, delete) an item, in memory and in the file if there is one;
        returns the previous one."""
        old = self._put(stream, group, item, raw)
        if self.store is not None:
            if raw is None:
                self.store.delete((stream, group, item))
            else:
                self.store.put((stream, group, item, raw))
        return old

    def _answer(self, result: Any, stream: str, group: str, item: str, event: Optional[dict[str, Any]]) -> Any:
        """The answer to a write, and its event if it has one: now in memory, after the commit
        with a file (a future then)."""
        if self.store is None:
            if event is not None:
                self._emit(stream, group, item, event)
            return result
        return self.store.journal.acknowledge(result, None if event is None else partial(self._emit, stream, group, item, event))

    def _restore(self, key: tuple[str, ...], raw: Optional[bytes]) -> None:
        """Put a value back as the file has it (after a failed commit)."""
        stream, group, item = key
        self._put(stream, group, item, raw)

    def _put(self, stream: str, group: str, item: str, raw: Optional[bytes]) -> Optional[bytes]:
        groups = self.items.setdefault(stream, {})
        items = groups.setdefault(group, {})
        old = items.pop(item, None) if raw is None else items.get(item)
        if raw is not None:
            items[item] = raw
        if not items:
            del groups[group]
            if not groups:
                del self.items[stream]
        return old

    def _delegate(
        self, op: str, request: msgspec.Struct, finish: Callable[[Any], Any], error_code: Optional[str] = None
    ) -> Optional[asyncio.Future]:
        """Call the stream's own ``stream::<op>(<name>)`` if a worker serves one: a future of
        ``finish(result)``, else ``None`` (the store serves it). Its errors are passed on as they
        are, or as ``error_code`` with the message embedded."""
        function_id = f"stream::{op}({request.stream_name})"
        if self._host.find_function(DEFAULT_NAMESPACE, function_id) is None:
            return None
        future = asyncio.get_running_loop().create_future()

        def answered(result: bytes, error: Optional[ErrorBody]) -> None:
            if future.done():
                return
            if error is not None:
                future.set_exception(
                    EngineError(error.code, error.message) if error_code is None
                    else EngineError(error_code, f"Failed to {op} value: {error.message}")
                )
                return
            try:
                future.set_result(finish(codec.decode_json(result)))
            except EngineError as exc:
                future.set_exception(exc)

        self._host.invoke(
            DEFAULT_NAMESPACE, function_id, msgspec.json.encode(request), on_result=answered,
            timeout_ms=self.config.invocation_timeout_ms,
        )
        return future

    def _delegate_write(self, op: str, request: ItemInput) -> Optional[asyncio.Future]:
        """A write served by the stream's backend: its answer checked as the original does, and
        the write's event sent out as for the store's."""
        code = f"STREAM_{op.upper()}_ERROR"

        def finish(result: Any) -> Any:
            if result is None:
                raise EngineError(code, f"Failed to {op} value: Function returned no result")
            if not isinstance(result, dict) or (op != "delete" and "new_value" not in result):
                raise EngineError("JSON_ERROR", f"Failed to convert result to value: {result!r}"[:500])
            old = result.get("old_value")
            stream, group, item = request.stream_name, request.group_id, request.item_id
            if op == "delete":
                if old is not None:
                    self._emit(stream, group, item, {"type": "delete", "data": old})
                return {"old_value": old}
            answer = {"old_value": old, "new_value": result["new_value"]}
            if op == "update" and "errors" in result:
                answer["errors"] = result["errors"]
            self._emit(stream, group, item, {"type": "create" if old is None else "update", "data": result["new_value"]})
            return answer

        return self._delegate(op, request, finish, code)

    def set(self, host: Host, caller: Optional[Connection], data: Any) -> Any:
        request = parse_input("stream::set", data, SetInput)
        delegated = self._delegate_write("set", request)
        if delegated is not None:
            return delegated
        raw = codec.encode_json(request.data)
        if self.remote is not None:
            return self._set_remote(request, raw)
        old = self._write(request.stream_name, request.group_id, request.item_id, raw)
        return self._answer(
            {"old_value": _raw(old), "new_value": msgspec.Raw(raw)},
            request.stream_name, request.group_id, request.item_id,
            {"type": "create" if old is None else "update", "data": msgspec.Raw(raw)},
        )

    def get(self, host: Host, caller: Optional[Connection], data: Any) -> Any:
        request = parse_input("stream::get", data, ItemInput)
        delegated = self._delegate("get", request, lambda result: result)
        if delegated is not None:
            return delegated
        if self.remote is not None:
            return self._get_remote(request)
        return _raw(self._group(request.stream_name, request.group_id).get(request.item_id))

    def delete(self, host: Host, caller: Optional[Connection], data: Any) -> Any:
        request = parse_input("stream::delete", data, ItemInput)
        delegated = self._delegate_write("delete", request)
        if delegated is not None:
            return delegated
        if self.remote is not None:
            return self._delete_remote(request)
        old = self._write(request.stream_name, request.group_id, request.item_id, None)
        return self._answer(
            {"old_value": _raw(old)}, request.stream_name, request.group_id, request.item_id,
            None if old is None else {"type": "delete", "data": msgspec.Raw(old)},
        )

    def update(self, host: Host, caller: Optional[Connection], data: Any) -> Any:
        request = parse_input("stream::update", data, UpdateInput)
        delegated = self._delegate_write("update", request)
        if delegated is not None:
            return delegated
        if self.remote is not None:
            return self._update_remote(request)
        old = self._group(request.stream_name, request.group_id).get(request.item_id)
        value, errors = apply_ops(None if old is None else codec.decode_json(old), request.ops)
        raw = codec.encode_json(value)
        self._write(request.stream_name, request.group_id, request.item_id, raw)
        result: dict[str, Any] = {"old_value": _raw(old), "new_value": msgspec.Raw(raw)}
        if errors:
            result["errors"] = errors
        return self._answer(
            result, request.stream_name, request.group_id, request.item_id,
            {"type": "create" if old is None else "update", "data": msgspec.Raw(raw)},
        )

    def list(self, host: Host, caller: Optional[Connection], data: Any) -> Any:
        request = parse_input("stream::list", data, ListInput)
        # A worker's backend gets the original's input; with_ids is this store's extension.
        delegated = self._delegate("list", GroupInput(request.stream_name, request.group_id), lambda result: result)
        if delegated is not None:
            return delegated
        if self.remote is not None:
            return asyncio.ensure_future(self._list_remote(request))
        items = self._group(request.stream_name, request.group_id)
        if request.with_ids:
            return [{"id": item_id, "data": msgspec.Raw(items[item_id])} for item_id in sorted(items)]
        return [msgspec.Raw(raw) for raw in items.values()]

    def list_groups(self, host: Host, caller: Optional[Connection], data: Any) -> Any:
        request = parse_input("stream::list_groups", data, StreamInput)
        delegated = self._delegate("list_groups", request, lambda result: result)
        if delegated is not None:
            return delegated
        if self.remote is not None:
            return asyncio.ensure_future(self._list_groups_remote(request.stream_name))
        return sorted(self.items.get(request.stream_name, {}))

    def list_all(self, host: Host, caller: Optional[Connection], data: Any) -> Any:
        if self.remote is not None:
            return asyncio.ensure_future(self._list_all_remote())
        streams = [{"id": name, "groups": sorted(groups)} for name, groups in sorted(self.items.items())]
        return {"stream": streams, "count": len(streams)}

    def send(self, host: Host, caller: Optional[Connection], data: Any) -> Any:
        request = parse_input("stream::send", data, SendInput)
        if self.remote is not None:
            message = codec.encode_json(_message(
                request.stream_name, request.group_id, request.id,
                {"type": "event", "event": {"type": request.type, "data": request.data}},
            ))
            return self._publish_remote(message)
        self._emit(request.stream_name, request.group_id, request.id,
                   {"type": "event", "event": {"type": request.type, "data": request.data}})
        return None

    # ------------------------------------------------------------------ on Redis

    @staticmethod
    def _hash(stream: str, group: str) -> str:
        return f"stream:{stream}:{group}"

    @staticmethod
    def _event_head(request: ItemInput) -> bytes:
        return b'{"type":"stream","timestamp":%d,"streamName":%s,"groupId":%s,"id":%s,"event":{"type":"' % (
            int(time.time() * 1000), codec.encode_json(request.stream_name), codec.encode_json(request.group_id),
            codec.encode_json(request.item_id),
        )

    def _set_remote(self, request: SetInput, raw: bytes) -> asyncio.Future:
        assert self.remote is not None
        written = self.remote.set(
            self._hash(request.stream_name, request.group_id), request.item_id, raw, STREAM_EVENTS, "stream",
            self._event_head(request),
        )
        return then(
            written, lambda old: {"old_value": _raw(json_or_none(old)), "new_value": msgspec.Raw(raw)},
            "STREAM_SET_ERROR", "Failed to set value",
        )

    def _get_remote(self, request: ItemInput) -> asyncio.Future:
        assert self.remote is not None

        def finish(raw: Optional[bytes]) -> Any:
            if raw is not None and json_or_none(raw) is None:
                raise EngineError("STREAM_GET_ERROR", f"Failed to get value: the item in Redis is not JSON: {raw[:80]!r}")
            return _raw(raw)

        item = self.remote.get(self._hash(request.stream_name, request.group_id), request.item_id)
        return then(item, finish, "STREAM_GET_ERROR", "Failed to get value")

    def _delete_remote(self, request: ItemInput) -> asyncio.Future:
        assert self.remote is not None
        deleted = self.remote.delete(
            self._hash(request.stream_name, request.group_id), request.item_id, STREAM_EVENTS, "stream",
            self._event_head(request),
        )
        return then(deleted, lambda old: {"old_value": _raw(json_or_none(old))}, "STREAM_DELETE_ERROR", "Failed to delete value")

    def _update_remote(self, request: UpdateInput) -> asyncio.Future:
        assert self.remote is not None
        prepared, errors = prepare_ops(request.ops)
        updated = self.remote.update(
            self._hash(request.stream_name, request.group_id), request.item_id, prepared, None, STREAM_EVENTS,
            "stream", self._event_head(request),
        )

        def finish(outcome: UpdateOutcome) -> Any:
            result: dict[str, Any] = {"old_value": _raw(json_or_none(outcome.old)), "new_value": msgspec.Raw(outcome.new)}
            found = all_update_errors(errors, outcome)
            if found:
                result["errors"] = found
            return result

        return then(updated, finish, "STREAM_UPDATE_ERROR", "Failed to update value")

    async def _items_remote(self, stream: str, group: str) -> dict[str, bytes]:
        """A group's items by id (raises ``StoreUnavailable``; an item that is not JSON is left out)."""
        assert self.remote is not None
        items = await self.remote.items(self._hash(stream, group))
        return {item.decode(errors="replace"): raw for item, raw in items.items() if json_or_none(raw) is not None}

    async def _list_remote(self, request: ListInput) -> Any:
        with failing_as("STREAM_GET_GROUP_ERROR", "Failed to get group"):
            items = await self._items_remote(request.stream_name, request.group_id)
        if request.with_ids:
            return [{"id": item_id, "data": msgspec.Raw(items[item_id])} for item_id in sorted(items)]
        return [msgspec.Raw(raw) for raw in items.values()]

    async def _list_groups_remote(self, stream: str) -> Any:
        assert self.remote is not None
        prefix = f"stream:{stream}:"
        with failing_as("STREAM_LIST_GROUPS_ERROR", "Failed to list groups"):
            keys = await self.remote.scan(glob_escape(prefix) + "*")
        return sorted({key[len(prefix):] for key in keys})

    async def _list_all_remote(self) -> Any:
        assert self.remote is not None
        with failing_as("STREAM_LIST_ALL_ERROR", "Failed to list streams"):
            keys = await self.remote.scan("stream:*")
        groups: dict[str, set[str]] = {}
        for key in keys:
            stream, separator, group = key.removeprefix("stream:").partition(":")
            if separator:
                groups.setdefault(stream, set()).add(group)
        streams = [{"id": name, "groups": sorted(groups[name])} for name in sorted(groups)]
        return {"stream": streams, "count": len(streams)}

    def _publish_remote(self, message: bytes) -> asyncio.Future:
        assert self.remote is not None
        return then(self.remote.publish(STREAM_EVENTS, message), lambda _: None, "STREAM_SEND_ERROR", "Failed to send event")

    def _on_event(self, message: bytes) -> None:
        """A change event from Redis (any engine's, this one's too): to the clients and bindings."""
        try:
            head = _event_decoder.decode(message)
        except msgspec.DecodeError as error:
            log.warning("iii-stream: a message on %s is not a stream event (%s); skipped", STREAM_EVENTS, error)
            return
        self.deliver(head.streamName, head.groupId, head.id, message)
        self._fire(head.streamName, head.groupId, head.id, message)

    # ------------------------------------------------------------------ events

    def _emit(self, stream: str, group: str, item: Optional[str], event: dict[str, Any]) -> None:
        message = codec.encode_json(_message(stream, group, item, event))
        if self.remote is not None:  # every engine, this one too, hands it on when Redis relays it
            asyncio.ensure_future(self._publish_logged(message))
            return
        self._broadcast(stream, group, item, message)
        self._fire(stream, group, item, message)

    async def _publish_logged(self, message: bytes) -> None:
        try:
            await self._publish_remote(message)
        except EngineError as error:
            log.warning("iii-stream: an event was not published: %s", error.message)

    def _fire(self, stream: str, group: str, item: Optional[str], message: bytes) -> None:
        """Call the ``stream`` bindings an event matches (once the message being handled is done)."""
        matching = [
            (binding, watch.condition_function_id)
            for binding, watch in self.watchers.bindings.values()
            if watch.stream_name == stream
            and (watch.group_id is None or watch.group_id == group)
            and (watch.item_id is None or watch.item_id == item)
        ]
        if matching:
            def fan_out() -> None:
                for binding, condition_function_id in matching:
                    self.watchers.fire(binding, message, condition_function_id)

            self._host.later(fan_out)

    def _broadcast(self, stream: str, group: str, item: Optional[str], message: bytes) -> None:
        """Send an event on to the WebSocket clients (a bridged backend sends it round the
        remote engine, which hands it to every engine bridged to it)."""
        self.deliver(stream, group, item, message)

    def deliver(self, stream: str, group: str, item: Optional[str], message: bytes) -> None:
        """Hand an event to this engine's WebSocket clients subscribed to it."""
        for client in list(self.clients):
            client.deliver(stream, group, item, message)

    async def snapshot(self, subscription: Subscription) -> Optional[bytes]:
        """The ``sync`` message a new subscription starts with (``None``: Redis cannot tell)."""
        stream, group, item = subscription.stream_name, subscription.group_id, subscription.item_id
        data: Any
        if self.remote is not None:
            try:
                if item is not None:
                    data = _raw(json_or_none(await self.remote.get(self._hash(stream, group), item)))
                else:
                    data = [msgspec.Raw(raw) for raw in (await self._items_remote(stream, group)).values()]
            except StoreUnavailable as error:
                log.warning("iii-stream: no sync for subscription %s: %s", subscription.id, error)
                return None
        else:
            items = self._group(stream, group)
            data = _raw(items.get(item)) if item is not None else [msgspec.Raw(raw) for raw in items.values()]
        return codec.encode_json(_message(stream, group, item, {"type": "sync", "data": data}))

    async def joined(self, subscription: Subscription, context: Any) -> bool:
        """Run every ``stream:join`` binding; ``False`` when one refuses the subscription, fails or
        does not answer in time (a gate that cannot say yes is a no)."""
        payload = codec.encode_json(_membership(subscription, context))
        answers = await asyncio.gather(*(
            call(
                self._host, binding.namespace, binding.function_id, payload, binding.metadata or b"",
                timeout_ms=self.joins.timeout_ms,
            )
            for binding, _ in list(self.joins.bindings.values())
        ))
        return not any(
            error is not None or (isinstance(result, dict) and result.get("unauthorized") is True)
            for result, error in answers
        )

    def left(self, subscription: Subscription, context: Any) -> None:
        payload = codec.encode_json(_membership(subscription, context))
        for binding, _ in list(self.leaves.bindings.values()):
            self.leaves.fire(binding, payload)

    async def authenticate(self, request: WSUpgradeRequest, addr: Optional[str]) -> tuple[bool, Any]:
        """``(allowed, context)`` for a new client, from the ``auth_function`` if there is one."""
        if not self.config.auth_function:
            return True, None
        path, _, query = request.path.decode("latin-1").partition("?")
        query_params: dict[str, list[str]] = {}
        for pair in filter(None, query.split("&")):
            name, _, value = pair.partition("=")
            query_params.setdefault(name, []).append(value)
        headers = {name.lower(): value for name, value in request.headers.items()}
        payload = codec.encode_json({"headers": headers, "path": path, "query_params": query_params, "addr": addr})
        result, error = await call(
            self._host, DEFAULT_NAMESPACE, self.config.auth_function, payload,
            timeout_ms=self.config.invocation_timeout_ms,
        )
        if error is not None:
            log.warning("iii-stream: auth function %s failed: %s", self.config.auth_function, error.message)
            return False, None
        return True, result.get("context") if isinstance(result, dict) else None

    # ------------------------------------------------------------------ server

    async def start(self) -> None:
        self._load()
        if self.remote is not None:
            await self._connect()
        try:
            self._server = await ws_create_server(
                lambda request: StreamClient(self, request), self.config.host, self.config.port,
                reuse_address=True, enable_auto_pong=True,
            )
        except OSError as exc:  # the engine serves its workers even when this port is taken
            log.error("iii-stream: cannot listen on %s:%s (%s): stream clients are not served",
                      self.config.host, self.config.port, exc.strerror)
            return
        host, port = self._server.sockets[0].getsockname()[:2]
        self.url = f"ws://{host}:{port}"
        log.info("iii-stream listening on %s", self.url)

    async def stop(self) -> None:
        if self.store is not None:
            self.store.journal.close()
        await self._disconnect()
        if self._server is not None:
            self._server.close()
            for client in list(self.clients):
                client.close()
            await self._server.wait_closed()


def _raw(value: Optional[bytes]) -> msgspec.Raw:
    return _NULL if value is None else msgspec.Raw(value)


def _message(stream: str, group: str, item: Optional[str], event: dict[str, Any]) -> dict[str, Any]:
    return {"type": "stream", "timestamp": int(time.time() * 1000), "streamName": stream,
            "groupId": group, "id": item, "event": event}


def _membership(subscription: Subscription, context: Any) -> dict[str, Any]:
    return {"subscription_id": subscription.id, "stream_name": subscription.stream_name,
            "group_id": subscription.group_id, "id": subscription.item_id, "context": context}


class JoinData(msgspec.Struct):
    subscriptionId: str  # noqa: N815 (the wire names)
    streamName: str  # noqa: N815
    groupId: str  # noqa: N815
    id: Union[str, None] = None


class ClientMessage(msgspec.Struct):
    type: str
    data: JoinData


_client_decoder = msgspec.json.Decoder(ClientMessage)
#: Outbound bytes buffered for a client before the engine watches whether it still reads.
_HIGH_WATER = 1024 * 1024
#: Messages from a client waiting their turn (a join awaits its handlers) before its socket is no
#: longer read; reading resumes once they are handled.
_INBOX_LIMIT = 64


class StreamClient(WSListener):
    """One WebSocket client on port 3112: its subscriptions, joins and leaves in order.

    What waits to be sent to it is capped: a client that does not read is disconnected once more
    than ``max_client_buffer_bytes`` would wait for it, or once it has stayed over the high-water
    mark for ``client_stall_timeout_ms``. What it sends is capped too (``_INBOX_LIMIT``), and what
    it should not have sent is logged once per kind, then counted.
    """

    def __init__(self, streams: Streams, request: WSUpgradeRequest) -> None:
        self._streams = streams
        self._request = request
        #: ``None`` before it is connected and once it is gone (or dropped): nothing is sent then.
        self._transport: Optional[WSTransport] = None
        self.peer: Optional[str] = None
        self.subscriptions: dict[str, Subscription] = {}
        self._context: Any = None
        self._inbox: asyncio.Queue = asyncio.Queue()
        self._reading_paused = False
        self._worker: Optional[asyncio.Task] = None
        #: Drops it unless it catches up in time; set while writing to it is paused.
        self._stall: Optional[asyncio.TimerHandle] = None
        #: Its bad messages by kind (``None`` until one).
        self.bad_input: Optional[KindCounts] = None

    def on_ws_connected(self, transport: WSTransport) -> None:
        self._transport = transport
        # Under the cap, so that the cap is checked (on each send while paused) before it is reached.
        high = min(_HIGH_WATER, self._streams.config.max_client_buffer_bytes // 2)
        transport.underlying_transport.set_write_buffer_limits(high=high)
        self._streams.clients.add(self)
        peer = transport.underlying_transport.get_extra_info("peername")
        self.peer = peer[0] if peer else None
        self._worker = asyncio.ensure_future(self._work())

    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        msg_type = frame.msg_type
        if msg_type is WSMsgType.TEXT:
            try:
                message = _client_decoder.decode(frame.get_payload_as_bytes())
            except msgspec.ValidationError as exc:
                self._bad_input("an invalid message", exc)
            except msgspec.DecodeError as exc:
                self._bad_input("malformed JSON", exc)
            except RecursionError:
                self._bad_input("malformed JSON", "nested too deeply")
            else:
                if message.type != "join" and message.type != "leave":
                    self._bad_input("an unknown message type", message.type)
                    return
                self._inbox.put_nowait(message)
                if self._inbox.qsize() >= _INBOX_LIMIT and not self._reading_paused:
                    self._reading_paused = True
                    transport.underlying_transport.pause_reading()
        elif msg_type is WSMsgType.CLOSE:
            transport.send_close(frame.get_close_code())
            transport.disconnect()
        elif msg_type is WSMsgType.BINARY:
            self._bad_input("a binary frame", frame.payload_size)

    def _bad_input(self, kind: str, detail: Any) -> None:
        """A message it should not have sent: logged the first time per kind, then counted."""
        if self.bad_input is None:
            self.bad_input = KindCounts()
        if self.bad_input.first(kind):
            log.warning("iii-stream: client %s sent %s (%s); more of the kind are counted, not logged",
                        self.peer, kind, detail)

    async def _work(self) -> None:
        """Authenticate, then handle joins and leaves one at a time (a join awaits its handlers)."""
        allowed, self._context = await self._streams.authenticate(self._request, self.peer)
        if not allowed:
            self.close()
            return
        inbox = self._inbox
        while True:
            message = await inbox.get()
            try:
                await self._handle(message)
            except Exception:  # one bad message must not stop this client's others
                log.exception("iii-stream: a client message failed")
            if self._reading_paused and inbox.empty() and self._transport is not None:
                self._reading_paused = False
                self._transport.underlying_transport.resume_reading()

    async def _handle(self, message: ClientMessage) -> None:
        data = message.data
        subscription = Subscription(data.subscriptionId, data.streamName, data.groupId, data.id)
        if message.type == "join":
            if await self._streams.joined(subscription, self._context):
                self.subscriptions[subscription.id] = subscription
                snapshot = await self._streams.snapshot(subscription)
                if snapshot is not None:
                    self._send(snapshot)
            else:
                event = _message(subscription.stream_name, subscription.group_id, subscription.item_id, {"type": "unauthorized"})
                self._send(codec.encode_json(event))
        elif message.type == "leave" and self.subscriptions.pop(subscription.id, None) is not None:
            self._streams.left(subscription, self._context)

    def deliver(self, stream: str, group: str, item: Optional[str], message: bytes) -> None:
        for subscription in self.subscriptions.values():
            if (subscription.stream_name, subscription.group_id) == (stream, group) and (
                subscription.item_id is None or subscription.item_id == item
            ):
                self._send(message)
                return

    def _send(self, message: bytes) -> None:
        transport = self._transport
        if transport is None or transport.is_disconnected:
            return
        if self._stall is not None:  # it is behind: cap what waits for it
            waiting = transport.underlying_transport.get_write_buffer_size()
            if waiting + len(message) > self._streams.config.max_client_buffer_bytes:
                self._drop(f"{waiting} bytes wait for it")
                return
        transport.send(WSMsgType.TEXT, message)

    def pause_writing(self) -> None:
        """It is not reading as fast as it is sent to: it has the stall grace to catch up."""
        if self._stall is None:
            self._stall = asyncio.get_running_loop().call_later(
                self._streams.config.client_stall_timeout_ms / 1000, self._stalled
            )

    def resume_writing(self) -> None:
        self._cancel_stall()

    def _cancel_stall(self) -> None:
        if self._stall is not None:
            self._stall.cancel()
            self._stall = None

    def _stalled(self) -> None:
        self._stall = None
        if self._transport is not None:
            waiting = self._transport.underlying_transport.get_write_buffer_size()
            self._drop(f"{waiting} bytes still wait for it after {self._streams.config.client_stall_timeout_ms} ms")

    def _drop(self, reason: str) -> None:
        """Disconnect a client that does not read what it is sent, before that exhausts memory."""
        transport = self._transport
        self._transport = None  # nothing more is sent to it, and this is logged once
        self._streams.clients.discard(self)
        self._cancel_stall()
        log.warning("iii-stream: client %s is not reading (%s): disconnecting it", self.peer, reason)
        transport.disconnect(graceful=False)  # type: ignore[union-attr]

    def close(self) -> None:
        if self._transport is not None and not self._transport.is_disconnected:
            self._transport.send_close()
            self._transport.disconnect()

    def on_ws_disconnected(self, transport: WSTransport) -> None:
        self._transport = None
        self._streams.clients.discard(self)
        self._cancel_stall()
        if self._worker is not None:
            self._worker.cancel()
        for subscription in self.subscriptions.values():
            self._streams.left(subscription, self._context)
        self.subscriptions.clear()
        bad = self.bad_input
        if bad is not None and bad.unlogged:
            log.warning("iii-stream: client %s sent %d more bad messages that were not logged (%s)",
                        self.peer, bad.unlogged, bad)


def install(host: Host, config: Optional[StreamConfig] = None) -> Streams:
    """Register the ``stream::*`` functions and the stream trigger types; the engine then awaits
    ``start()`` (the client WebSocket server)."""
    config = config or StreamConfig()
    if isinstance(config.adapter, BridgeAdapter):  # the items on another engine
        from iii.modules._bridge_backends import BridgedStreams

        streams: Streams = BridgedStreams(host, config, config.adapter.config.bridge_url)
    else:
        streams = Streams(host, config)
    for name, description in (
        ("set", "Store an item; subscribers get create/update"),
        ("get", "An item, or null"),
        ("delete", "Delete an item; subscribers get delete"),
        ("update", "Apply update ops to an item"),
        ("list", "The items of a group"),
        ("list_groups", "The groups of a stream"),
        ("list_all", "Every stream with its groups"),
        ("send", "Send a custom event to a group's subscribers"),
    ):
        host.add_function(f"stream::{name}", getattr(streams, name), module=NAME, description=description)
    host.add_trigger_type("stream", streams.watchers, module=NAME,
                          description="Called with every change event of a stream",
                          trigger_request_format=json_schema(StreamTriggerConfig, required=("stream_name",)))
    host.add_trigger_type("stream:join", streams.joins, module=NAME,
                          description="Called when a client joins a stream (may refuse it)")
    host.add_trigger_type("stream:leave", streams.leaves, module=NAME,
                          description="Called when a client leaves a stream")
    return streams


MODULE = BuiltinModule(
    NAME,
    "Live items pushed to WebSocket clients, with the stream triggers (in memory, or also in a file)",
    StreamConfig,
    install,
)
