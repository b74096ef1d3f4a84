"""Several engines as one (``iii-cluster``): membership and registry in Redis, calls over direct
engine-to-engine WebSocket links.

Each engine has an id (and an optional ``name``). It publishes itself in Redis under
``iii:cluster:engine:{id}`` (its worker listener's URL, its workers, the functions they own and
its triggers), a key that lives ``2 × heartbeat_ms`` and is renewed every ``heartbeat_ms``, and
says ``{"id", "event"}`` on the channel ``iii:cluster:events`` when that changes or it leaves.
Every heartbeat it also reads the other engines' keys: an engine whose link closed (killed)
is out at once; one whose key expired leaves its view within 3 heartbeats (one more while its
link is still up: Redis may have lost the key, and it publishes it again).

To each other engine it opens ONE WebSocket link to that engine's worker listener, presenting
the cluster token (``token``, else one shared through Redis at ``iii:cluster:token``): there it
is no worker but a peer (:mod:`iii.engine.peers`). On this engine each function of the other is
owned by a connection-like record whose ``send`` writes on the link, so a worker's call to it is
forwarded raw on the router's hot path, and the answer comes back on the link
(``Host.remote_answer``) to the caller. A link that closes takes that engine's functions out at
once and fails its calls in flight with ``invocation_stopped``.

Redis down: calls on one engine and calls over the links already open keep working (the links
do not need Redis; a dead engine is still seen by its link closing); what Redis is needed for
(learning of new engines and registry changes) waits: the connection retries with backoff and
the registry is published again once Redis is back.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
import uuid
from typing import Annotated, Any, Optional

import msgspec
from msgspec import Meta
from picows import WSFrame, WSListener, WSMsgType, WSTransport, ws_connect
from redis.exceptions import RedisError

from iii import codec
from iii.engine.host import BuiltinModule, Host, Running, RunningModule
from iii.modules._redis import Subscriber, connect

__all__ = ["ClusterConfig", "MODULE", "install"]

log = logging.getLogger("iii.cluster")

NAME = "iii-cluster"
KEY_PREFIX = "iii:cluster:engine:"
EVENTS_CHANNEL = "iii:cluster:events"
TOKEN_KEY = "iii:cluster:token"
#: The headers a link presents (:mod:`iii.engine.peers` reads them).
_TOKEN_HEADER = "x-iii-cluster-token"
_ENGINE_HEADER = "x-iii-cluster-engine"
_LINK_BACKOFF_FIRST_S = 0.05
_LINK_BACKOFF_MAX_S = 2.0
#: Worker row fields that change with every call: not published (the rows of other engines'
#: workers say ``available``).
_VOLATILE = ("status", "metrics", "active_invocations")
_TEXT = WSMsgType.TEXT
#: Bytes waiting on a link before the engine at its end is taken for stuck and the link dropped
#: (its calls then fail with ``invocation_stopped``).
_MAX_LINK_BUFFER = 256 * 1024 * 1024
_ZERO_MASK = b"\x00\x00\x00\x00"
#: Every how many heartbeats the other engines' records are read whole.
_FULL_READ_EVERY = 10
#: The shortest time between two publishes of this engine's registry on changes.
_PUBLISH_EVERY_S = 0.05


class ClusterConfig(msgspec.Struct, forbid_unknown_fields=True):
    """The ``iii-cluster`` entry's ``config``."""

    #: The Redis every engine of the cluster uses.
    redis_url: str = "redis://localhost:6379"
    #: A name shown beside the engine's id in the lists (``engine`` field).
    name: Optional[str] = None
    #: How often the engine renews its key and reads the others'; an engine that stops is out
    #: of every view within 3 of them.
    heartbeat_ms: Annotated[int, Meta(ge=100, le=60_000)] = 1000
    #: The URL other engines reach this one's worker listener at (default: the bound listener's,
    #: a wildcard address read as 127.0.0.1).
    advertise_url: Optional[str] = None
    #: The secret a link presents; default: one made by the first engine and kept in Redis.
    token: Optional[str] = None


def _client_text_header(size: int) -> bytes:
    """Header of a final text frame from a client, masked with the all-zero key (the payload
    then goes as it is: the link writes many frames in one call, without copying them to mask;
    a masking key protects browsers' proxies, and a link is engine to engine)."""
    if size < 126:
        return bytes((0x81, 0x80 | size)) + _ZERO_MASK
    if size < 65536:
        return b"\x81\xfe" + size.to_bytes(2, "big") + _ZERO_MASK
    return b"\x81\xff" + size.to_bytes(8, "big") + _ZERO_MASK


class _LinkListener(WSListener):
    """This engine's end of its link to another engine: what comes is answers to calls."""

    def __init__(self, link: "_Link") -> None:
        self._link = link

    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        if frame.msg_type == _TEXT and frame.fin:
            if not frame.last_in_buffer:  # answers to several callers: one write each
                self._link.cluster.host.hold_writes()
            try:
                self._link.cluster.host.remote_answer(self._link.engine_id, frame.get_payload_as_bytes())
            except Exception:
                log.exception("cluster: an answer from engine %s failed", self._link.engine_id)
        elif frame.msg_type == WSMsgType.CLOSE:
            transport.send_close(frame.get_close_code())
            transport.disconnect()

    def on_ws_disconnected(self, transport: WSTransport) -> None:
        self._link.closed()


class _Link:
    """The link to one other engine: opened (and reopened with backoff) while that engine is in
    Redis; its functions are this engine's to call only while it is up."""

    def __init__(self, cluster: "Cluster", engine_id: str) -> None:
        self.cluster = cluster
        self.engine_id = engine_id
        self.transport: Optional[WSTransport] = None
        self.url: Optional[str] = None
        self._task: Optional[asyncio.Task[None]] = None
        self._closed = asyncio.Event()
        self._stopping = False
        self._out: list[bytes] = []

    @property
    def up(self) -> bool:
        return self.transport is not None

    def send(self, frame: bytes) -> None:
        """Send a call on the link; the calls one read of the engine brings leave in one write."""
        if self.transport is None:
            return
        out = self._out
        out.append(frame)
        if len(out) == 1 and not self.cluster.host.join_batch(self):
            self.flush()

    def flush(self) -> None:
        """Write the queued calls: one write for all of them."""
        out, self._out = self._out, []
        transport = self.transport
        if transport is None or not out:
            return
        if len(out) == 1:
            transport.send(_TEXT, out[0])
            return
        parts = []
        for frame in out:
            parts.append(_client_text_header(len(frame)))
            parts.append(frame)
        underlying = transport.underlying_transport
        underlying.writelines(parts)
        if underlying.get_write_buffer_size() > _MAX_LINK_BUFFER:
            log.warning("cluster: engine %s is not reading its link (over %d bytes wait): closing it",
                        self.engine_id, _MAX_LINK_BUFFER)
            transport.disconnect(graceful=False)

    def open(self, url: str) -> None:
        if self.url != url and self.transport is not None:  # the engine moved: link again
            self.transport.disconnect()
        self.url = url
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name=f"iii-cluster-link-{self.engine_id}")

    async def _run(self) -> None:
        backoff = _LINK_BACKOFF_FIRST_S
        cluster = self.cluster
        hb_s = cluster.config.heartbeat_ms / 1000
        while not self._stopping:
            url = self.url
            try:
                transport, _ = await ws_connect(
                    lambda: _LinkListener(self), url,  # type: ignore[arg-type]
                    extra_headers={_TOKEN_HEADER: cluster.token, _ENGINE_HEADER: cluster.id},
                    websocket_handshake_timeout=max(hb_s, 1.0),
                    enable_auto_ping=True, auto_ping_idle_timeout=hb_s, auto_ping_reply_timeout=hb_s,
                    max_frame_size=64 * 1024 * 1024,
                )
            except asyncio.CancelledError:
                raise
            except Exception as error:  # said once per outage, then retried quietly
                log.log(logging.WARNING if backoff == _LINK_BACKOFF_FIRST_S else logging.DEBUG,
                        "cluster: cannot link to engine %s at %s (%s); retrying", self.engine_id, url, error)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, _LINK_BACKOFF_MAX_S)
                continue
            backoff = _LINK_BACKOFF_FIRST_S
            self._closed.clear()
            self.transport = transport
            log.info("cluster: linked to engine %s at %s", self.engine_id, url)
            cluster.link_up(self)
            await self._closed.wait()
            # Linked again only once a dead engine's key has surely expired (2 heartbeats after
            # its last renewal) and been read: a killed engine is forgotten, not relinked to.
            await asyncio.sleep(3 * hb_s)

    def closed(self) -> None:
        """The link went down: the engine's functions leave this engine's view at once."""
        if self.transport is None:
            return
        self.transport = None
        self._out = []  # the calls queued for it are stopped with the engine's others
        self._closed.set()
        log.info("cluster: link to engine %s closed", self.engine_id)
        self.cluster.link_down(self)

    async def close(self) -> None:
        self._stopping = True
        if self.transport is not None:
            self.transport.disconnect()
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        self.closed()


class Cluster(Running):
    """One engine's membership: publishes it, follows the others, keeps a link to each."""

    def __init__(self, host: Host, config: ClusterConfig) -> None:
        self.host = host
        self.config = config
        self.id = str(uuid.uuid4())
        #: This engine as the lists' ``engine`` field shows it.
        self.engine = {"id": self.id, "name": config.name}
        self.token = config.token or ""
        self.url: Optional[str] = config.advertise_url
        #: Other engines' records as last read from Redis, by id.
        self.records: dict[str, dict[str, Any]] = {}
        self.links: dict[str, _Link] = {}
        self._redis: Any = None
        self._subscriber: Optional[Subscriber] = None
        self._published: Optional[bytes] = None
        self._publish_due = False
        self._published_at = 0.0
        self._publish_lock = asyncio.Lock()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._heartbeat: Optional[asyncio.Task[None]] = None
        self._redis_ok = True
        #: Engines whose key was missing at the last read while their link was up.
        self._missing: set[str] = set()
        self._started_at_ms = int(time.time() * 1000)

    # ------------------------------------------------------------------ the lists' view

    def engine_of(self, engine_id: str) -> dict[str, Any]:
        record = self.records.get(engine_id)
        return {"id": engine_id, "name": record.get("name") if record is not None else None}

    def _live_records(self) -> list[dict[str, Any]]:
        return [r for engine_id, r in self.records.items() if (link := self.links.get(engine_id)) is not None and link.up]

    def workers(self) -> list[dict[str, Any]]:
        rows = []
        for record in self._live_records():
            engine = {"id": record["id"], "name": record.get("name")}
            for row in record.get("workers", ()):
                rows.append({**row, "status": "available", "metrics": None, "active_invocations": 0, "engine": engine})
        return rows

    def triggers(self) -> list[dict[str, Any]]:
        return self._rows("triggers")

    def trigger_types(self) -> list[dict[str, Any]]:
        return self._rows("trigger_types")

    def _rows(self, kind: str) -> list[dict[str, Any]]:
        rows = []
        for record in self._live_records():
            engine = {"id": record["id"], "name": record.get("name")}
            rows.extend({**row, "engine": engine} for row in record.get(kind, ()))
        return rows

    # ------------------------------------------------------------------ start / stop

    async def start(self) -> None:
        config = self.config
        self._redis = await connect(config.redis_url)
        if not self.token:
            await self._redis.set(TOKEN_KEY, secrets.token_urlsafe(32), nx=True)
            self.token = (await self._redis.get(TOKEN_KEY)).decode()
        host = self.host
        host.accept_peers(self.token)
        host.set_cluster_view(self)
        self._subscriber = Subscriber(config.redis_url)
        await self._subscriber.start()
        await self._subscriber.subscribe(EVENTS_CHANNEL, self._on_event)
        self._subscriber.on_reconnect(self._on_redis_back)
        host.watch_registry(self._local_changed)
        host.on_listening(self._listening)

    async def stop(self) -> None:
        if self._heartbeat is not None:
            self._heartbeat.cancel()
            await asyncio.gather(self._heartbeat, return_exceptions=True)
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for link in list(self.links.values()):
            await link.close()
        self.links.clear()
        try:  # leave at once rather than when the key expires
            await self._redis.delete(KEY_PREFIX + self.id)
            await self._redis.publish(EVENTS_CHANNEL, codec.encode_json({"id": self.id, "event": "left"}))
        except (RedisError, OSError) as error:
            log.info("cluster: could not say this engine leaves (%s): its key expires", error)
        if self._subscriber is not None:
            await self._subscriber.close()
        await self._redis.aclose()

    def _listening(self, urls: list[str]) -> None:
        if self.url is None:
            self.url = urls[0].replace("ws://0.0.0.0:", "ws://127.0.0.1:").replace("ws://[::]:", "ws://127.0.0.1:")
        self._heartbeat = asyncio.get_running_loop().create_task(self._beat(), name="iii-cluster-heartbeat")

    def _spawn(self, coroutine: Any) -> None:
        task = asyncio.get_running_loop().create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # ------------------------------------------------------------------ publishing this engine

    def _record(self) -> bytes:
        snapshot = self.host.registry_snapshot()
        workers = [{k: v for k, v in row.items() if k not in _VOLATILE} for row in snapshot["workers"]]
        return codec.encode_json({
            "id": self.id, "name": self.config.name, "url": self.url, "started_at_ms": self._started_at_ms,
            "workers": workers, "functions": snapshot["functions"], "triggers": snapshot["triggers"],
            "trigger_types": snapshot["trigger_types"],
        })

    def _local_changed(self) -> None:
        """A worker or function of this engine changed: publish once the turn is over, and at
        most every :data:`_PUBLISH_EVERY_S` (a thousand workers connecting make a few
        publishes, not a thousand)."""
        if self.url is not None and not self._publish_due:
            self._publish_due = True
            loop = asyncio.get_running_loop()
            delay = max(0.0, self._published_at + _PUBLISH_EVERY_S - loop.time())
            loop.call_later(delay, lambda: self._spawn(self._publish_soon()))

    async def _publish_soon(self) -> None:
        try:
            await self._publish()
        except (RedisError, OSError) as error:  # the heartbeat publishes it once Redis is back
            log.debug("cluster: publishing this engine's registry failed: %s", error)

    async def _publish(self, *, force: bool = False) -> None:
        self._publish_due = False
        self._published_at = asyncio.get_running_loop().time()
        async with self._publish_lock:
            record = self._record()
            key = KEY_PREFIX + self.id
            ttl_ms = 2 * self.config.heartbeat_ms
            if record == self._published and not force:
                if await self._redis.pexpire(key, ttl_ms):
                    return  # unchanged and still there (else Redis lost it: set it again)
            await self._redis.set(key, record, px=ttl_ms)
            await self._redis.publish(EVENTS_CHANNEL, codec.encode_json({"id": self.id, "event": "changed"}))
            self._published = record

    async def _on_redis_back(self) -> None:
        await self._redis.set(TOKEN_KEY, self.token, nx=True)  # a Redis that lost it gets ours back
        await self._publish(force=True)
        await self._read_all()

    async def _beat(self) -> None:
        """Every heartbeat: renew this engine's key, see which others have theirs (and read
        them all every :data:`_FULL_READ_EVERY` heartbeats, in case an event was missed)."""
        beats = 0
        while True:
            try:
                await self._publish()
                await self._read_all(full=beats % _FULL_READ_EVERY == 0)
                beats += 1
                if not self._redis_ok:
                    log.info("cluster: Redis is back; registry published again")
                self._redis_ok = True
            except asyncio.CancelledError:
                raise
            except (RedisError, OSError) as error:
                if self._redis_ok:
                    log.warning(
                        "cluster: Redis unavailable (%s): calls over the links already open go on; "
                        "new engines and registry changes wait for it", error,
                    )
                self._redis_ok = False
            await asyncio.sleep(self.config.heartbeat_ms / 1000)

    # ------------------------------------------------------------------ following the others

    async def _read_all(self, *, full: bool = True) -> None:
        """Which engines have a key, and (``full``, or for engines not seen yet) their records;
        between full reads the changes of known engines come from the events channel."""
        keys = [key async for key in self._redis.scan_iter(match=KEY_PREFIX + "*", count=1000)]
        ids = [key.decode()[len(KEY_PREFIX):] for key in keys]
        wanted = [key for key, engine_id in zip(keys, ids) if full or engine_id not in self.records]
        values = await self._redis.mget(wanted) if wanted else []
        seen: dict[str, Any] = {engine_id: None for engine_id in ids if engine_id != self.id}
        for value in values:
            if value is None:
                continue
            try:
                record = msgspec.json.decode(value)
            except msgspec.DecodeError:
                continue
            if isinstance(record, dict) and isinstance(record.get("id"), str) and record["id"] in seen:
                seen[record["id"]] = record
        for engine_id in [e for e in self.records if e not in seen]:
            link = self.links.get(engine_id)
            if link is not None and link.up and engine_id not in self._missing:
                # Its link is up: it is alive, and Redis may just have lost its key (a restart
                # without persistence); it has one more heartbeat to publish it again.
                self._missing.add(engine_id)
                continue
            log.info("cluster: engine %s's key expired: it leaves", engine_id)
            self._forget(engine_id)
        self._missing &= self.records.keys() - seen.keys()
        for record in seen.values():
            if record is not None:
                self._update(record)

    def _on_event(self, message: bytes) -> None:
        try:
            event = msgspec.json.decode(message)
            engine_id, kind = event["id"], event["event"]
        except (msgspec.DecodeError, KeyError, TypeError):
            return
        if engine_id == self.id:
            return
        if kind == "left":
            self._forget(engine_id)
        else:
            self._spawn(self._read_one(engine_id))

    async def _read_one(self, engine_id: str) -> None:
        try:
            value = await self._redis.get(KEY_PREFIX + engine_id)
        except (RedisError, OSError):
            return  # the next heartbeat reads it
        if value is None:
            self._forget(engine_id)
            return
        self._update(msgspec.json.decode(value))

    def _update(self, record: dict[str, Any]) -> None:
        engine_id = record["id"]
        before = self.records.get(engine_id)
        if before == record:
            return
        self.records[engine_id] = record
        link = self.links.get(engine_id)
        if link is None:
            link = self.links[engine_id] = _Link(self, engine_id)
        if record.get("url"):
            link.open(record["url"])
        if not link.up:
            return  # link_up applies the record
        if before is None or before.get("functions") != record.get("functions"):
            self.host.set_remote_functions(engine_id, link.send, record.get("functions", []))
        self._fire_worker_changes(before, record)

    def _forget(self, engine_id: str) -> None:
        record = self.records.pop(engine_id, None)
        link = self.links.pop(engine_id, None)
        if link is not None:
            up = link.up
            self._spawn(link.close())
            if not up and record is not None:
                return  # its functions were never (or are no longer) in the view
        if record is not None:
            self.host.drop_engine(engine_id)
            self._fire_worker_changes(record, None)

    def link_up(self, link: _Link) -> None:
        record = self.records.get(link.engine_id)
        if record is None:
            return
        self.host.set_remote_functions(link.engine_id, link.send, record.get("functions", []))
        self._fire_worker_changes(None, record)

    def link_down(self, link: _Link) -> None:
        self.host.drop_engine(link.engine_id)
        record = self.records.get(link.engine_id)
        if record is not None and self.links.get(link.engine_id) is link:
            self._fire_worker_changes(record, None)

    def _fire_worker_changes(self, before: Optional[dict[str, Any]], after: Optional[dict[str, Any]]) -> None:
        old = {w["id"]: w for w in (before or {}).get("workers", ())}
        new = {w["id"]: w for w in (after or {}).get("workers", ())}
        for worker_id in old.keys() - new.keys():
            self.host.fire_workers_available("worker_disconnected", worker_id)
        for worker_id, row in new.items():
            if worker_id not in old:
                self.host.fire_workers_available("worker_connected", worker_id)
            elif old[worker_id] != row:
                self.host.fire_workers_available("worker_metadata_updated", worker_id)


def install(host: Host, config: Optional[ClusterConfig]) -> RunningModule:
    """Join the cluster (installed only for an ``iii-cluster`` entry: an engine is alone
    without one)."""
    return Cluster(host, config or ClusterConfig())


MODULE = BuiltinModule(
    name=NAME,
    description="Several engines as one: registry in Redis, calls over engine-to-engine links",
    config_type=ClusterConfig,
    install=install,
    opt_in=True,
)
