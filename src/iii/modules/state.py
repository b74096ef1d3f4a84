"""State (``iii-state``): ``state::set|get|delete|update|list|list_groups`` on ``(scope, key)``
and the ``state`` trigger type, on the embedded ``kv`` adapter: in memory (the default), or also
in a SQLite file with ``store_method: file_based`` (:mod:`iii.modules._store`).

Values are kept as the JSON bytes they arrived as, so reads answer without decoding; only
``state::update`` decodes the value it edits. Reads answer from memory. In memory a write answers
at once; with the file, once it is committed (with the other writes of its event-loop turn). Every
successful set, update and delete (also of a missing key) fires the matching ``state`` bindings,
in registration order, after the write (with the file: after its commit).

With the ``redis`` adapter the values live in Redis (:mod:`iii.modules._redis_stores`, the
original's layout) and every write publishes its event on ``state::events`` in the same atomic
script; each engine fires its own ``state`` bindings from the events it receives, its own writes'
included, so a binding fires once whichever engine did the write.
"""

from __future__ import annotations

import asyncio
import logging
from functools import partial
from typing import Annotated, Any, Optional, Union

import msgspec

from iii import codec
from iii.engine.host import (
    DEFAULT_INVOCATION_TIMEOUT_MS,
    BuiltinModule,
    Connection,
    EngineError,
    Host,
    Provider,
    TimeoutMs,
    json_schema,
    parse_input,
)
from iii.modules._adapters import BridgeAdapter, RedisAdapter, StateAdapter, database_path
from iii.modules._redis import RedisUnavailable, Subscriber
from iii.modules._redis_stores import (
    STATE_EVENTS,
    RedisHashes,
    UpdateOutcome,
    all_update_errors,
    failing_as,
    json_or_none,
    then,
)
from iii.modules._store import Journal, Values
from iii.modules.update_ops import apply_ops, prepare_ops

__all__ = ["MODULE", "StateConfig", "install"]

NAME = "iii-state"
#: The database of the ``file_based`` store when ``file_path`` is not given.
DEFAULT_FILE = "./data/state_store.db"
_TABLE, _KEY_COLUMNS = "kv", ("scope", "key")
_NULL = msgspec.Raw(b"null")
log = logging.getLogger("iii.modules")


class StateConfig(msgspec.Struct, forbid_unknown_fields=True):
    """The ``iii-state`` entry's ``config`` in ``config.yaml``."""

    triggers_enabled: bool = True
    #: Largest JSON-encoded value accepted, in bytes (``None``: no limit).
    max_value_bytes: Union[int, None] = None
    #: ``{name: kv, config: {store_method: in_memory | file_based, file_path?}}`` or
    #: ``{name: redis, config: {redis_url}}``
    adapter: StateAdapter = None
    #: Accepted for the original's configs and unused (every write is committed before its answer).
    save_interval_ms: Optional[Annotated[int, msgspec.Meta(ge=0)]] = None
    #: The deadline of each call to a bound function (and its condition function).
    invocation_timeout_ms: TimeoutMs = DEFAULT_INVOCATION_TIMEOUT_MS


class KeyInput(msgspec.Struct):
    scope: str
    key: str


class SetInput(msgspec.Struct):
    scope: str
    key: str
    value: Any = msgspec.UNSET
    data: Any = msgspec.UNSET  # an alias of value


class UpdateInput(msgspec.Struct):
    scope: str
    key: str
    ops: list[Any]


class ScopeInput(msgspec.Struct):
    scope: str


class ListInput(ScopeInput):
    #: An extension of the original: ``[{key, value}]`` sorted by key instead of bare values.
    with_keys: bool = False


class StateTriggerConfig(msgspec.Struct):
    scope: Union[str, None] = None
    key: Union[str, None] = None
    condition_function_id: Union[str, None] = None


class StateEvent(msgspec.Struct):
    """What an engine reads of a change event from Redis to route it (the rest goes on as is)."""

    scope: str
    key: str


_event_decoder = msgspec.json.Decoder(StateEvent)


def _raw(value: Optional[bytes]) -> msgspec.Raw:
    return _NULL if value is None else msgspec.Raw(value)


def _stored(raw: Optional[bytes]) -> msgspec.Raw:
    """A value read from Redis; one that is not JSON (written by someone else) is an error."""
    if raw is not None and json_or_none(raw) is None:
        raise EngineError("GET_ERROR", f"Failed to get value: Failed to deserialize value from Redis: {raw[:80]!r}")
    return _raw(raw)


class State:
    """The store and the functions over it."""

    def __init__(self, host: Host, config: StateConfig) -> None:
        self._host = host
        self._config = config
        #: scope -> key -> the value's JSON
        self.scopes: dict[str, dict[str, bytes]] = {}
        self.watchers = Provider(host, StateTriggerConfig, config.invocation_timeout_ms)
        path = database_path(config.adapter, DEFAULT_FILE)
        #: The file the values are also kept in (``None``: in memory only).
        self.store = None if path is None else Values(
            Journal(path, Values.schema(_TABLE, _KEY_COLUMNS)), _TABLE, _KEY_COLUMNS,
            restore=self._restore,
        )
        adapter = config.adapter
        #: The values in Redis (``None``: here).
        self.remote = RedisHashes(adapter.config.redis_url) if isinstance(adapter, RedisAdapter) else None
        self._events: Optional[Subscriber] = None

    async def start(self) -> None:
        """Open the file and load what it keeps, or connect to Redis and listen to its events.

        Raises:
            RedisUnavailable: Redis did not answer (the engine does not start, as the original).
        """
        if self.remote is not None:
            try:
                await self.remote.open()
                if self._config.triggers_enabled:  # else no event is of use here
                    self._events = Subscriber(self.remote.url)
                    await self._events.start()
                    await self._events.subscribe(STATE_EVENTS, self._on_event)
            except (RedisUnavailable, TimeoutError) as error:
                await self.stop()
                raise RedisUnavailable(f"failed to create worker '{NAME}': {error or 'Redis did not answer'}") from None
        if self.store is not None:
            self.store.journal.open()
            for scope, key, value in self.store.load():
                self.scopes.setdefault(scope, {})[key] = value

    async def stop(self) -> None:
        if self.store is not None:
            self.store.journal.close()
        if self._events is not None:
            await self._events.close()
            self._events = None
        if self.remote is not None:
            await self.remote.close()

    def _encoded(self, value: Any) -> bytes:
        raw = codec.encode_json(value)
        limit = self._config.max_value_bytes
        if limit is not None and len(raw) > limit:
            raise EngineError(
                "VALUE_TOO_LARGE",
                f"value of {len(raw)} bytes exceeds the configured max_value_bytes limit of {limit}",
            )
        return raw

    def set(self, host: Host, caller: Optional[Connection], data: Any) -> Any:
        request = parse_input("state::set", data, SetInput)
        value = request.value if request.value is not msgspec.UNSET else request.data
        if value is msgspec.UNSET:
            raise EngineError("deserialization_error", "Failed to deserialize input for state::set: `value` is required")
        raw = self._encoded(value)
        if self.remote is not None:
            return self._set_remote(request.scope, request.key, raw)
        old = self._write(request.scope, request.key, raw)
        return self._answer(self._changed(old, raw), request.scope, request.key, old, raw)

    def get(self, host: Host, caller: Optional[Connection], data: Any) -> Any:
        request = parse_input("state::get", data, KeyInput)
        if self.remote is not None:
            return self._get_remote(request.scope, request.key)
        raw = self.scopes.get(request.scope, {}).get(request.key)
        return _NULL if raw is None else msgspec.Raw(raw)

    def delete(self, host: Host, caller: Optional[Connection], data: Any) -> Any:
        request = parse_input("state::delete", data, KeyInput)
        if self.remote is not None:
            return self._delete_remote(request.scope, request.key)
        old = self._write(request.scope, request.key, None)
        return self._answer(_NULL if old is None else msgspec.Raw(old), request.scope, request.key, old, None)

    def update(self, host: Host, caller: Optional[Connection], data: Any) -> Any:
        request = parse_input("state::update", data, UpdateInput)
        if self.remote is not None:
            return self._update_remote(request.scope, request.key, request.ops)
        old = self.scopes.get(request.scope, {}).get(request.key)
        value, errors = apply_ops(None if old is None else codec.decode_json(old), request.ops)
        raw = self._encoded(value)
        self._write(request.scope, request.key, raw)
        result = self._changed(old, raw)
        if errors:
            result["errors"] = errors
        return self._answer(result, request.scope, request.key, old, raw)

    def list(self, host: Host, caller: Optional[Connection], data: Any) -> Any:
        request = parse_input("state::list", data, ListInput)
        if self.remote is not None:
            return self._list_remote(request.scope, request.with_keys)
        values = self.scopes.get(request.scope, {})
        if request.with_keys:
            return [{"key": key, "value": msgspec.Raw(values[key])} for key in sorted(values)]
        return [msgspec.Raw(raw) for raw in values.values()]

    def list_groups(self, host: Host, caller: Optional[Connection], data: Any) -> Any:
        if self.remote is not None:
            return asyncio.ensure_future(self._list_groups_remote())
        return {"groups": sorted(scope for scope, keys in self.scopes.items() if keys)}

    # ------------------------------------------------------------------ on Redis

    @staticmethod
    def _hash(scope: str) -> str:
        return f"state:{scope}"

    @staticmethod
    def _event_head(scope: str, key: str) -> bytes:
        return b'{"type":"state","scope":%s,"key":%s,' % (codec.encode_json(scope), codec.encode_json(key))

    def _set_remote(self, scope: str, key: str, raw: bytes) -> asyncio.Future:
        assert self.remote is not None
        written = self.remote.set(self._hash(scope), key, raw, STATE_EVENTS, "state", self._event_head(scope, key))
        return then(written, lambda old: self._changed(json_or_none(old), raw), "SET_ERROR", "Failed to set value")

    def _get_remote(self, scope: str, key: str) -> asyncio.Future:
        assert self.remote is not None
        return then(self.remote.get(self._hash(scope), key), _stored, "GET_ERROR", "Failed to get value")

    def _delete_remote(self, scope: str, key: str) -> asyncio.Future:
        assert self.remote is not None
        deleted = self.remote.delete(self._hash(scope), key, STATE_EVENTS, "state", self._event_head(scope, key))
        return then(deleted, lambda old: _raw(json_or_none(old)), "DELETE_ERROR", "Failed to delete value")

    def _update_remote(self, scope: str, key: str, ops: list[Any]) -> asyncio.Future:
        assert self.remote is not None
        prepared, errors = prepare_ops(ops)
        limit = self._config.max_value_bytes
        updated = self.remote.update(
            self._hash(scope), key, prepared, limit, STATE_EVENTS, "state", self._event_head(scope, key)
        )

        def finish(outcome: UpdateOutcome) -> Any:
            if outcome.too_large is not None:
                raise EngineError(
                    "VALUE_TOO_LARGE",
                    f"value of {outcome.too_large} bytes exceeds the configured max_value_bytes limit of {limit}",
                )
            result = self._changed(json_or_none(outcome.old), outcome.new)
            found = all_update_errors(errors, outcome)
            if found:
                result["errors"] = found
            return result

        return then(updated, finish, "UPDATE_ERROR", "Failed to update value")

    def _list_remote(self, scope: str, with_keys: bool) -> asyncio.Future:
        assert self.remote is not None

        def finish(values: dict[bytes, bytes]) -> Any:
            for raw in values.values():
                if json_or_none(raw) is None:
                    raise EngineError("LIST_ERROR", f"Failed to list values: a value in Redis is not JSON: {raw[:80]!r}")
            if with_keys:
                by_key = {key.decode(errors="replace"): raw for key, raw in values.items()}
                return [{"key": key, "value": msgspec.Raw(by_key[key])} for key in sorted(by_key)]
            return [msgspec.Raw(raw) for raw in values.values()]

        return then(self.remote.items(self._hash(scope)), finish, "LIST_ERROR", "Failed to list values")

    async def _list_groups_remote(self) -> Any:
        assert self.remote is not None
        with failing_as("LIST_GROUPS_ERROR", "Failed to list groups"):
            keys = await self.remote.scan("state:*")
        return {"groups": sorted({key.removeprefix("state:") for key in keys})}

    def _on_event(self, payload: bytes) -> None:
        """A change event from Redis (any engine's write, this one's too): fire the bindings."""
        if not self._config.triggers_enabled or not self.watchers.bindings:
            return
        try:
            event = _event_decoder.decode(payload)
        except msgspec.DecodeError as error:
            log.warning("iii-state: a change event on %s is not one (%s); skipped", STATE_EVENTS, error)
            return
        for binding, watch in list(self.watchers.bindings.values()):
            if (watch.scope is None or watch.scope == event.scope) and (watch.key is None or watch.key == event.key):
                self.watchers.fire(binding, payload, watch.condition_function_id)

    # ------------------------------------------------------------------ embedded

    def _write(self, scope: str, key: str, raw: Optional[bytes]) -> Optional[bytes]:
        """Store (or, with ``None``, delete) a value, in memory and in the file if there is one;
        returns the previous one."""
        old = self._put(scope, key, raw)
        if self.store is not None:
            if raw is None:
                self.store.delete((scope, key))
            else:
                self.store.put((scope, key, raw))
        return old

    def _restore(self, scope_and_key: tuple[str, ...], raw: Optional[bytes]) -> None:
        """Put a value back as the file has it (after a failed commit)."""
        scope, key = scope_and_key
        self._put(scope, key, raw)

    def _put(self, scope: str, key: str, raw: Optional[bytes]) -> Optional[bytes]:
        """Store (or delete) a value in memory; returns the previous one."""
        keys = self.scopes.get(scope)
        if raw is None:
            if keys is None:
                return None
            old = keys.pop(key, None)
            if not keys:
                del self.scopes[scope]
            return old
        if keys is None:
            keys = self.scopes[scope] = {}
        old = keys.get(key)
        keys[key] = raw
        return old

    @staticmethod
    def _changed(old: Optional[bytes], new: bytes) -> dict[str, Any]:
        return {"old_value": _NULL if old is None else msgspec.Raw(old), "new_value": msgspec.Raw(new)}

    def _answer(self, result: Any, scope: str, key: str, old: Optional[bytes], new: Optional[bytes]) -> Any:
        """The answer to a write, and its ``state`` event: now in memory, after the commit with a
        file (a future then)."""
        if self.store is None:
            self._notify(scope, key, old, new)
            return result
        if not self._config.triggers_enabled or not self.watchers.bindings:
            return self.store.journal.acknowledge(result)
        return self.store.journal.acknowledge(result, partial(self._notify, scope, key, old, new))

    def _notify(self, scope: str, key: str, old: Optional[bytes], new: Optional[bytes]) -> None:
        if not self._config.triggers_enabled or not self.watchers.bindings:
            return
        event_type = "state:deleted" if new is None else "state:created" if old is None else "state:updated"
        payload = codec.encode_json({
            "type": "state",
            "event_type": event_type,
            "scope": scope,
            "key": key,
            "old_value": _NULL if old is None else msgspec.Raw(old),
            "new_value": _NULL if new is None else msgspec.Raw(new),
        })
        matching = [
            (binding, watch.condition_function_id)
            for binding, watch in self.watchers.bindings.values()
            if (watch.scope is None or watch.scope == scope) and (watch.key is None or watch.key == key)
        ]
        if not matching:
            return

        def fan_out() -> None:
            for binding, condition_function_id in matching:
                self.watchers.fire(binding, payload, condition_function_id)

        self._host.later(fan_out)


def install(host: Host, config: Optional[StateConfig] = None) -> State:
    """Register the ``state::*`` functions and the ``state`` trigger type."""
    config = config or StateConfig()
    if isinstance(config.adapter, BridgeAdapter):  # the data on another engine
        from iii.modules._bridge_backends import BridgedState

        state: State = BridgedState(host, config, config.adapter.config.bridge_url)
    else:
        state = State(host, config)
    for name, handler, description, request_format in (
        ("set", state.set, "Store a value under (scope, key)", json_schema(SetInput)),
        ("get", state.get, "The value under (scope, key), or null", json_schema(KeyInput)),
        ("delete", state.delete, "Delete (scope, key); returns the deleted value", json_schema(KeyInput)),
        ("update", state.update, "Apply update ops to the value under (scope, key)", json_schema(UpdateInput)),
        ("list", state.list, "Every value in a scope (with_keys: [{key, value}])", json_schema(ListInput)),
        ("list_groups", state.list_groups, "The scopes holding values", None),
    ):
        host.add_function(
            f"state::{name}", handler, module=NAME, description=description, request_format=request_format
        )
    host.add_trigger_type(
        "state",
        state.watchers,
        module=NAME,
        description="Called after every set, update and delete matching the scope and key",
        trigger_request_format=json_schema(StateTriggerConfig),
    )
    return state


MODULE = BuiltinModule(
    NAME, "Key-value state in scopes, with the state trigger (in memory, in a file, or in Redis)", StateConfig, install
)
