"""The queue's ``redis`` adapter: named queues and durable topics in Redis Streams, consumed by
every engine pointed at the same Redis.

A job goes into the stream of its ``(queue, namespace, function_id)``; every engine that can call
that function here reads the stream in one consumer group (``iii``, one consumer per engine), so
each job goes to one engine, and an engine without the function leaves its jobs to the others
(they wait, as a durable subscriber's jobs wait for it, instead of failing). A job stays pending
in the group until its engine answers it: acknowledged (``XACK`` + ``XDEL``), retried, or moved to
the dead letters, each in one Lua script. An engine touches the jobs it holds every third of the
visibility timeout; a job not touched for ``visibility_timeout_ms`` (its engine died or lost
Redis) is taken over by another engine (``XAUTOCLAIM``). Delivery is at least once.

Key layout (``{q}`` a queue name: a ``queue_configs`` name, or ``{topic}::{function_id}`` for a
durable subscriber; ``{ns}``/``{fn}`` the job's namespace and function id):

- ``iii:queue:{q}:jobs:{ns}:{fn}``: stream of jobs (field ``job``: the job's JSON), group ``iii``;
- ``iii:queue:{q}:jobs:{ns}:{fn}:delayed``: sorted set of jobs waiting for a retry, scored by the
  Redis time (ms) they are due; whichever engine polls first moves them back (Lua);
- ``iii:queue:{q}:jobs:{ns}:{fn}:retry``: hash, stream entry id -> the job with its failed
  attempts (FIFO queues retry a job in place, so that nothing overtakes it);
- ``iii:queue:{q}:jobs:{ns}:{fn}:lock``: FIFO lease (``SET NX PX``, the holding engine's id):
  one engine at a time delivers a FIFO stream, one job at a time, in order;
- ``iii:queue:{q}:functions``: set of ``[ns, fn]`` (JSON) that have a stream in the queue;
- ``iii:queue:{q}:dead`` (hash, job id -> dead job) and ``iii:queue:{q}:dead:order`` (sorted set,
  job id by the Redis time it died): the dead letters;
- ``iii:queue:{q}:stats``: hash of counters ``delivered`` and ``failed`` (every engine's);
- ``iii:queue:topic:{topic}:subscribers``: sorted set of ``[ns, fn]`` subscribing to a durable
  topic, scored by when the subscription lapses unless an engine holding a binding renews it;
- ``iii:queue:topics``, ``iii:queue:queues``: sets of the topic and queue names in use.

A named queue's concurrency and a FIFO queue's one-at-a-time hold per function stream and engine
(``concurrency`` jobs of one function at once on each engine). Redis unavailable: an enqueue or
publish fails with ``queue_unavailable`` (nothing is accepted that Redis did not take); consumers
retry with backoff and go on where they were once Redis is back.
"""

from __future__ import annotations

import asyncio
import collections
import datetime
import logging
import time
from typing import Any, Optional

import msgspec
import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import NoScriptError, RedisError, ResponseError

from iii import codec
from iii.engine.host import (
    Binding,
    Connection,
    EngineError,
    ErrorBody,
    Host,
    MetricFamily,
    Provider,
    check_condition,
    parse_input,
)
from iii.modules._adapters import RedisQueueAdapter
from iii.modules._redis import COMMAND_TIMEOUT_S, CONNECT_TIMEOUT_S, connect
from iii.modules.queue import (
    DEFAULT_QUEUE,
    PUBLISH,
    SUBSCRIBER,
    DlqInput,
    EnqueueInput,
    Job,
    MessageInput,
    PublishInput,
    QueueConfig,
    QueueInput,
    QueueSettings,
    SubscriberConfig,
    SubscriberQueueConfig,
    _decode_job,
    _encode_job,
    require_group,
)
from iii.protocol import WireId

__all__ = ["PREFIX", "RedisQueues", "stream_key"]

log = logging.getLogger("iii.modules")

PREFIX = "iii:queue"
GROUP = "iii"
#: How long one blocking read waits for a job (then the consumer looks after its other work).
BLOCK_MS = 1_000
#: How often an engine looks for new function streams of its named queues.
DISCOVERY_S = 0.5
#: A durable subscription lapses this long after the last engine holding a binding renewed it.
SUBSCRIPTION_TTL_MS = 30_000
#: Reconnect backoff of a consumer: from 50 ms, doubling, at most 2 s.
_BACKOFF_FIRST_S = 0.05
_BACKOFF_MAX_S = 2.0
#: Connections for blocking reads (one per stream consumed here; redis-py's default is 100).
_MAX_BLOCKING_READS = 10_000
#: How long a stopping engine waits for the answers of its jobs to reach Redis (the jobs it
#: cannot answer in time are delivered again after the visibility timeout).
_STOP_GRACE_S = 2.0
#: Jobs moved back from a delayed set in one step.
_PROMOTE_BATCH = 100

_ACK = """
if redis.call('XACK', KEYS[1], ARGV[1], ARGV[2]) == 1 then
  redis.call('XDEL', KEYS[1], ARGV[2])
  redis.call('HDEL', KEYS[2], ARGV[2])
  redis.call('HINCRBY', KEYS[3], 'delivered', 1)
  return 1
end
return 0
"""
_RETRY_LATER = """
if redis.call('XACK', KEYS[1], ARGV[1], ARGV[2]) == 1 then
  redis.call('XDEL', KEYS[1], ARGV[2])
  local now = redis.call('TIME')
  redis.call('ZADD', KEYS[2], now[1] * 1000 + math.floor(now[2] / 1000) + tonumber(ARGV[4]), ARGV[3])
  redis.call('HINCRBY', KEYS[3], 'failed', 1)
  return 1
end
return 0
"""
_KILL = """
if redis.call('XACK', KEYS[1], ARGV[1], ARGV[2]) == 1 then
  redis.call('XDEL', KEYS[1], ARGV[2])
  redis.call('HDEL', KEYS[2], ARGV[2])
  local now = redis.call('TIME')
  redis.call('HSET', KEYS[3], ARGV[3], ARGV[4])
  redis.call('ZADD', KEYS[4], now[1] * 1000 + math.floor(now[2] / 1000), ARGV[3])
  redis.call('HINCRBY', KEYS[5], 'failed', 1)
  return 1
end
return 0
"""
_PROMOTE = """
local now = redis.call('TIME')
now = now[1] * 1000 + math.floor(now[2] / 1000)
local due = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now, 'LIMIT', 0, tonumber(ARGV[1]))
for _, job in ipairs(due) do
  redis.call('XADD', KEYS[1], '*', 'job', job)
  redis.call('ZREM', KEYS[2], job)
end
local next_due = redis.call('ZRANGE', KEYS[2], 0, 0, 'WITHSCORES')
if next_due[2] then return tonumber(next_due[2]) - now end
return -1
"""
_REVIVE = """
if redis.call('HDEL', KEYS[1], ARGV[1]) == 1 then
  redis.call('ZREM', KEYS[2], ARGV[1])
  redis.call('XADD', KEYS[3], '*', 'job', ARGV[2])
  redis.call('SADD', KEYS[4], ARGV[3])
  return 1
end
return 0
"""
_PRUNE = """
local pruned = 0
for _, row in ipairs(redis.call('XINFO', 'CONSUMERS', KEYS[1], ARGV[1])) do
  local fields = {}
  for i = 1, #row, 2 do fields[row[i]] = row[i + 1] end
  if fields['pending'] == 0 and fields['idle'] > tonumber(ARGV[2]) and fields['name'] ~= ARGV[3] then
    redis.call('XGROUP', 'DELCONSUMER', KEYS[1], ARGV[1], fields['name'])
    pruned = pruned + 1
  end
end
return pruned
"""
_LEAVE = """
if #redis.call('XPENDING', KEYS[1], ARGV[1], '-', '+', 1, ARGV[2]) == 0 then
  return redis.call('XGROUP', 'DELCONSUMER', KEYS[1], ARGV[1], ARGV[2])
end
return -1
"""
_LEASE = """
local holder = redis.call('GET', KEYS[1])
if holder == false then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 2
elseif holder == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
return 0
"""
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


def queue_key(queue: str) -> str:
    return f"{PREFIX}:{queue}"


def stream_key(queue: str, namespace: str, function_id: str) -> str:
    """The stream of a queue's jobs for one function."""
    return f"{PREFIX}:{queue}:jobs:{namespace}:{function_id}"


def _topic_key(topic: str) -> str:
    return f"{PREFIX}:topic:{topic}:subscribers"


def _member(namespace: str, function_id: str) -> bytes:
    return codec.encode_json([namespace, function_id])


def _function_of(member: bytes) -> tuple[str, str]:
    """The ``(namespace, function_id)`` of a function-set or subscriber-set member."""
    namespace, function_id = msgspec.json.decode(member, type=tuple[str, str])
    return namespace, function_id


def _now_iso() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat()


def _unavailable(action: str, error: BaseException) -> EngineError:
    return EngineError("queue_unavailable", f"Redis did not take the {action} ({type(error).__name__}: {error})")


class _Scripts:
    """The Lua scripts (each runs atomically in Redis)."""

    def __init__(self, client: Any) -> None:
        self.ack = client.register_script(_ACK)
        self.retry_later = client.register_script(_RETRY_LATER)
        self.kill = client.register_script(_KILL)
        self.promote = client.register_script(_PROMOTE)
        self.revive = client.register_script(_REVIVE)
        self.lease = client.register_script(_LEASE)
        self.release = client.register_script(_RELEASE)
        self.prune = client.register_script(_PRUNE)
        self.leave = client.register_script(_LEAVE)
        self._all = (
            self.ack, self.retry_later, self.kill, self.promote, self.revive, self.lease, self.release, self.prune,
            self.leave,
        )

    async def load(self) -> None:
        """Load every script (Redis forgets them when it restarts)."""
        for script in self._all:
            await script.registered_client.script_load(script.script)


class _Batch:
    """Enqueues and job answers go to Redis in pipelines, one at a time: the commands asked for
    while one is on its way go together in the next (one round trip, and with ``appendfsync
    always`` one fsync, for all of them: the busier, the bigger the batches)."""

    def __init__(self, client: Any, scripts: _Scripts, spawn: Any) -> None:
        self._client = client
        self._scripts = scripts
        self._spawn = spawn
        self._pending: list[tuple[tuple[Any, ...], asyncio.Future[Any]]] = []
        self._flushing = False

    def run(self, *command: Any) -> asyncio.Future[Any]:
        """Send ``command`` with the next batch; the future resolves to its reply."""
        future = asyncio.get_running_loop().create_future()
        if not self._pending and not self._flushing:
            self._flushing = True
            asyncio.get_running_loop().call_soon(self._flush)
        self._pending.append((command, future))
        return future

    def script(self, script: Any, keys: list[Any], args: list[Any]) -> asyncio.Future[Any]:
        return self.run("EVALSHA", script.sha, len(keys), *keys, *args)

    def _flush(self) -> None:
        pending, self._pending = self._pending, []
        self._spawn(self._send_then_next(pending))

    async def _send_then_next(self, pending: list[tuple[tuple[Any, ...], asyncio.Future[Any]]]) -> None:
        try:
            await self._send(pending)
        finally:
            if self._pending:
                self._flush()
            else:
                self._flushing = False

    async def _send(self, pending: list[tuple[tuple[Any, ...], asyncio.Future[Any]]], again: bool = True) -> None:
        try:
            async with self._client.pipeline(transaction=False) as pipe:
                for command, _ in pending:
                    pipe.execute_command(*command)
                replies = await pipe.execute(raise_on_error=False)
        except (RedisError, OSError) as error:
            for _, future in pending:
                if not future.done():
                    future.set_exception(error)
            return
        unknown = []
        for (command, future), reply in zip(pending, replies):
            if isinstance(reply, NoScriptError) and again:
                unknown.append((command, future))
            elif future.done():
                continue
            elif isinstance(reply, Exception):
                future.set_exception(reply)
            else:
                future.set_result(reply)
        if unknown:  # Redis restarted: load the scripts, then once more
            try:
                await self._scripts.load()
            except (RedisError, OSError) as error:
                for _, future in unknown:
                    if not future.done():
                        future.set_exception(error)
                return
            await self._send(unknown, again=False)


class _Consumer:
    """This engine's consumer of one jobs stream: reads it in the group while there is room,
    delivers, and answers each job back to Redis (ack, retry, dead letter)."""

    def __init__(
        self, backend: RedisQueues, queue: str, settings: Any, namespace: str, function_id: str,
        condition: Optional[str] = None,
    ) -> None:
        self.backend = backend
        self.queue = queue
        self.settings = settings
        self.namespace = namespace
        self.function_id = function_id
        self.condition = condition
        self.key = stream_key(queue, namespace, function_id)
        self._stats_key = f"{queue_key(queue)}:stats"
        self.active = 0
        self.delivered = 0
        self.failed = 0
        #: stream entry id -> its job, for every job this consumer holds (delivering or retrying)
        self.held: dict[bytes, Any] = {}
        #: jobs taken over from another engine, waiting for a slot (in stream order)
        self._claimed: collections.deque[tuple[bytes, Any]] = collections.deque()
        self._room = asyncio.Event()
        self._room.set()
        self._task: Optional[asyncio.Task[None]] = None
        self._stopped = False
        self._leased = False
        self._next_touch = 0.0
        self._next_reclaim = 0.0
        self._next_promote = 0.0

    @property
    def fifo(self) -> bool:
        return self.settings.type == "fifo"

    @property
    def limit(self) -> int:
        return 1 if self.fifo else self.settings.concurrency

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name=f"iii-queue {self.key}")

    async def stop(self) -> None:
        """No more reads; jobs being delivered still answer back to Redis."""
        self._stopped = True
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        scripts, consumer = self.backend.scripts, self.backend.consumer
        try:
            if self._leased:
                await scripts.release(keys=[self.key + ":lock"], args=[consumer])
            if not self.held:  # leave the group (its consumer count) unless it holds jobs
                await scripts.leave(keys=[self.key], args=[GROUP, consumer])
        except (RedisError, OSError):
            pass  # the lease lapses, and an idle consumer is pruned by another engine

    # -- the read loop ---------------------------------------------------------------------------

    async def _run(self) -> None:
        backend = self.backend
        backoff = _BACKOFF_FIRST_S
        ready = False
        failing = False
        while not self._stopped:
            try:
                if not ready:
                    await self._create_group()
                    ready = True
                next_due_ms = await self._look_after()
                if self.fifo and not self._leased:
                    await asyncio.sleep(backend.visibility_s / 4)
                    continue
                while self._claimed and self.active < self.limit:
                    self._deliver(*self._claimed.popleft())
                if self.active >= self.limit:
                    self._room.clear()
                    try:
                        async with asyncio.timeout(backend.visibility_s / 4):
                            await self._room.wait()
                    except TimeoutError:
                        pass
                    continue
                block = min(BLOCK_MS, int(backend.visibility_s * 250))
                if next_due_ms >= 0:
                    block = max(1, min(block, next_due_ms))
                reply = await backend.blocking.xreadgroup(
                    GROUP, backend.consumer, {self.key: ">"}, count=self.limit - self.active, block=block
                )
                if failing:
                    log.info("queue %s: Redis is back, consuming %s again", self.queue, self.key)
                failing, backoff = False, _BACKOFF_FIRST_S
                for _, entries in reply or ():
                    for entry_id, fields in entries:
                        if self._stopped:  # taken but not delivered: another engine reclaims it
                            break
                        job = self._job_of(entry_id, fields)
                        if job is not None:
                            self._deliver(entry_id, job)
            except asyncio.CancelledError:
                raise
            except (RedisError, OSError) as error:
                if isinstance(error, ResponseError) and "NOGROUP" in str(error):
                    ready = False  # the stream was deleted (or Redis lost it): make it again
                    continue
                if not failing:
                    log.warning("queue %s: Redis unavailable (%s); consumer backs off", self.queue, error)
                failing = True
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, _BACKOFF_MAX_S)
            except Exception:  # a bug must not stop the queue for good
                log.exception("queue %s: consumer of %s failed; it goes on", self.queue, self.key)
                await asyncio.sleep(_BACKOFF_MAX_S)

    def _job_of(self, entry_id: bytes, fields: dict[bytes, bytes], kept: Optional[bytes] = None) -> Optional[Job]:
        """The job of a stream entry; an entry that holds none (written by something else) is
        logged and removed."""
        try:
            return _decode_job(kept or fields[b"job"])
        except (KeyError, msgspec.DecodeError, msgspec.ValidationError) as error:
            log.error("queue %s: entry %s of %s is not a job (%s); removed", self.queue,
                      entry_id.decode(errors="replace"), self.key, error)
            self.backend.spawn(self._drop(entry_id))
            return None

    async def _drop(self, entry_id: bytes) -> None:
        try:
            await self.backend.batch.run("XACK", self.key, GROUP, entry_id)
            await self.backend.batch.run("XDEL", self.key, entry_id)
        except (RedisError, OSError) as error:  # it comes back after the visibility timeout
            log.warning("queue %s: could not remove entry %s: %s", self.queue, entry_id.decode(errors="replace"), error)

    async def _create_group(self) -> None:
        try:
            await self.backend.redis.xgroup_create(self.key, GROUP, id="0", mkstream=True)
        except ResponseError as error:
            if "BUSYGROUP" not in str(error):
                raise

    async def _look_after(self) -> int:
        """Renew the FIFO lease and touch the held jobs (every third of the visibility timeout),
        take over jobs stale elsewhere, move due retries back; returns how long a read may block
        (ms; -1: as long as it likes)."""
        backend = self.backend
        now = time.monotonic()
        if now >= self._next_touch:
            self._next_touch = now + backend.visibility_s / 3
            if self.fifo:
                leased = await backend.scripts.lease(
                    keys=[self.key + ":lock"], args=[backend.consumer, backend.visibility_ms]
                )
                if leased == 2:  # newly ours: the previous holder's jobs come first, in order
                    await self._take_over(min_idle_ms=0)
                self._leased = bool(leased)
            if self.held:
                await backend.redis.xclaim(
                    self.key, GROUP, backend.consumer, 0, list(self.held), justid=True
                )
        if self.fifo:
            return -1
        if now >= self._next_reclaim:
            self._next_reclaim = now + backend.visibility_s / 2
            await self._take_over(min_idle_ms=backend.visibility_ms)
            # Consumers of engines gone (nothing pending, no read for a while) leave the group.
            await backend.scripts.prune(keys=[self.key], args=[GROUP, 3 * max(backend.visibility_ms, BLOCK_MS), backend.consumer])
        if now >= self._next_promote:  # this engine's retries when due; the others' at least each BLOCK_MS
            next_due = int(await backend.scripts.promote(keys=[self.key, self.key + ":delayed"], args=[_PROMOTE_BATCH]))
            self._next_promote = now + (BLOCK_MS if next_due < 0 else min(next_due, BLOCK_MS)) / 1000
        return max(1, int((self._next_promote - now) * 1000))

    async def _take_over(self, min_idle_ms: int) -> None:
        """Claim jobs left pending (by an engine that died) for at least ``min_idle_ms``."""
        backend = self.backend
        start = "0-0"
        for _ in range(100):  # bounded: 100 pages of at most 100 jobs each look
            reply = await backend.redis.xautoclaim(
                self.key, GROUP, backend.consumer, min_idle_ms, start_id=start, count=100
            )
            start, entries = reply[0], reply[1]
            entries = [(entry_id, fields) for entry_id, fields in entries if fields and entry_id not in self.held]
            if entries:
                retried = await backend.redis.hmget(self.key + ":retry", [entry_id for entry_id, _ in entries])
                for (entry_id, fields), kept in zip(entries, retried):
                    log.info("queue %s: took over job %s (%s) from an engine that stopped answering",
                             self.queue, entry_id.decode(), self.key)
                    job = self._job_of(entry_id, fields, kept)
                    if job is not None:
                        self._claimed.append((entry_id, job))
            if start in (b"0-0", "0-0"):
                return

    # -- delivery --------------------------------------------------------------------------------

    def _deliver(self, entry_id: bytes, job: Any) -> None:
        self.active += 1
        self.held[entry_id] = job
        self._attempt(entry_id, job)

    def _attempt(self, entry_id: bytes, job: Any) -> None:
        host = self.backend.host
        timeout_ms = self.backend.timeout_ms
        job.attempts += 1

        def answered(result: bytes, error: Optional[ErrorBody]) -> None:
            if error is None:
                self._acknowledge(entry_id)
            else:
                self.backend.spawn(self._answered(entry_id, job, error))

        def call() -> None:
            host.invoke(job.namespace, job.function_id, bytes(job.data), b"", on_result=answered, timeout_ms=timeout_ms)

        if self.condition is None:
            call()
            return

        def checked(passed: bool, error: Optional[ErrorBody]) -> None:
            if passed:
                call()
            else:  # false acks the job without a call; a failed condition is a failed attempt
                answered(b"null", error)

        check_condition(host, job.namespace, self.condition, bytes(job.data), checked, timeout_ms=timeout_ms)

    def _acknowledge(self, entry_id: bytes) -> None:
        """The function answered: ``XACK`` + ``XDEL`` in this turn's batch (a callback, no task,
        unless Redis fails it: then retried as :meth:`_persist` does)."""
        self.delivered += 1
        if not self.fifo:  # its slot takes the next job while Redis stores the ack
            self._free_slot()
        key = self.key

        def ack() -> asyncio.Future[Any]:
            return self.backend.batch.script(self.backend.scripts.ack, [key, key + ":retry", self._stats_key], [GROUP, entry_id])

        def done() -> None:
            self.held.pop(entry_id, None)
            if self.fifo:  # the next job only once this one is done
                self._free_slot()

        async def again() -> None:
            await self._persist("ack", ack)
            done()

        def acked(future: asyncio.Future[Any]) -> None:
            if future.exception() is None:
                done()
            else:
                self.backend.spawn(again())

        ack().add_done_callback(acked)

    async def _answered(self, entry_id: bytes, job: Any, error: ErrorBody) -> None:
        """The function failed: retry later, retry in place (FIFO) or move to the dead letters."""
        scripts = self.backend.scripts
        batch = self.backend.batch
        key = self.key
        self.failed += 1
        job.error = f"{error.code}: {error.message}"
        if job.attempts >= self.settings.max_retries:
            job.failed_at = _now_iso()
            dead = _encode_job(job)
            base = queue_key(self.queue)
            await self._persist("dead letter", lambda: batch.script(
                scripts.kill, [key, key + ":retry", base + ":dead", base + ":dead:order", self._stats_key],
                [GROUP, entry_id, job.id, dead],
            ))
            log.warning("queue %s: job %s to %s failed %d times, moved to the DLQ: %s",
                        self.queue, job.id, job.function_id, job.attempts, job.error)
            return self._release(entry_id)
        delay_ms = self.settings.backoff_ms * 2 ** (job.attempts - 1)
        if not self.fifo:
            await self._persist("retry", lambda: batch.script(
                scripts.retry_later, [key, key + ":delayed", self._stats_key], [GROUP, entry_id, _encode_job(job), delay_ms]
            ))
            self._next_promote = min(self._next_promote, time.monotonic() + delay_ms / 1000)
            return self._release(entry_id)
        # FIFO: the job keeps its place (and its slot); its attempts are kept for a takeover.
        redis = self.backend.redis

        async def keep() -> Any:
            async with redis.pipeline(transaction=True) as pipe:
                pipe.hset(key + ":retry", entry_id, _encode_job(job))
                pipe.hincrby(self._stats_key, "failed", 1)
                return await pipe.execute()

        await self._persist("retry", keep)
        await asyncio.sleep(delay_ms / 1000)
        if self._stopped or entry_id not in self.held:
            self._release(entry_id)
        else:
            self._attempt(entry_id, job)

    async def _persist(self, what: str, command: Any) -> bool:
        """Run a Redis write about a held job until Redis takes it (for at most the visibility
        timeout: after that another engine may have taken the job over)."""
        deadline = time.monotonic() + self.backend.visibility_s
        backoff = _BACKOFF_FIRST_S
        while True:
            try:
                return bool(await command())
            except (RedisError, OSError) as error:
                if time.monotonic() + backoff > deadline:
                    log.warning("queue %s: could not store the %s of a job (%s): it will be delivered again",
                                self.queue, what, error)
                    return False
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, _BACKOFF_MAX_S)

    def _release(self, entry_id: bytes) -> None:
        self.held.pop(entry_id, None)
        self._free_slot()

    def _free_slot(self) -> None:
        self.active -= 1
        self._room.set()


class _Subscription:
    """A function subscribed to a topic on this engine: its consumer and the bindings naming it."""

    def __init__(self, consumer: _Consumer) -> None:
        self.consumer = consumer
        self.bindings: set[str] = set()


class RedisTopics(Provider[Any]):
    """Durable topics on Redis: the ``durable:subscriber`` trigger type and the publish function.

    A subscription (a ``(namespace, function_id)`` bound to a topic on any engine) is in the
    topic's subscriber set while an engine holding a binding renews it; a publish puts the message
    in the jobs stream of every subscription, and the engines holding bindings of one function
    compete for its jobs (replicas share the work).
    """

    def __init__(self, backend: RedisQueues) -> None:
        super().__init__(backend.host, SubscriberConfig, backend.timeout_ms, self._check)
        self.backend = backend
        #: (topic, namespace, function_id) -> this engine's subscription
        self.local: dict[tuple[str, str, str], _Subscription] = {}

    @staticmethod
    def _check(config: Any) -> Optional[str]:
        return None if config.name else f"Topic is not set: a {SUBSCRIBER} trigger needs {{\"topic\": \"<name>\"}}"

    def register(self, binding: Binding) -> Optional[str]:
        self.unregister(binding)  # a re-registered id may have changed topic or function
        refusal = super().register(binding)
        if refusal is None:
            config = self.bindings[binding.id][1]
            key = (config.name, binding.namespace, binding.function_id)
            subscription = self.local.get(key)
            if subscription is None:
                consumer = _Consumer(
                    self.backend, f"{config.name}::{binding.function_id}", config.queue_config.settings(),
                    binding.namespace, binding.function_id, config.condition_function_id,
                )
                subscription = self.local[key] = _Subscription(consumer)
                if self.backend.started:  # (else start() advertises and starts it)
                    self.backend.spawn(self._advertise([key]))
                    consumer.start()
            subscription.bindings.add(binding.id)
        return refusal

    def unregister(self, binding: Binding) -> None:
        entry = self.bindings.get(binding.id)
        super().unregister(binding)
        if entry is None:
            return
        key = (entry[1].name, entry[0].namespace, entry[0].function_id)
        subscription = self.local.get(key)
        if subscription is not None:
            subscription.bindings.discard(binding.id)
            if not subscription.bindings:  # its subscription lapses unless another engine renews it
                del self.local[key]
                self.backend.spawn(subscription.consumer.stop())

    async def _advertise(self, keys: list[tuple[str, str, str]]) -> None:
        """Put subscriptions in their topics' subscriber sets (or renew them)."""
        if not keys:
            return
        redis = self.backend.redis
        lapse = int(time.time() * 1000) + SUBSCRIPTION_TTL_MS
        try:
            async with redis.pipeline(transaction=False) as pipe:
                for topic, namespace, function_id in keys:
                    member = _member(namespace, function_id)
                    queue = f"{topic}::{function_id}"
                    pipe.zadd(_topic_key(topic), {member: lapse})
                    pipe.sadd(f"{PREFIX}:topics", topic)
                    pipe.sadd(f"{PREFIX}:queues", queue)
                    pipe.sadd(f"{queue_key(queue)}:functions", member)
                await pipe.execute()
        except (RedisError, OSError) as error:
            log.warning("queue: durable subscriptions not advertised in Redis (%s); retrying", error)

    async def renew(self) -> None:
        await self._advertise(list(self.local))

    async def subscribers(self, topic: str) -> set[tuple[str, str]]:
        now = int(time.time() * 1000)
        members = await self.backend.redis.zrangebyscore(_topic_key(topic), now, "+inf")
        found = {_function_of(member) for member in members}
        found.update((namespace, function_id) for t, namespace, function_id in self.local if t == topic)
        return found

    def publish(self, host: Host, caller: Optional[Connection], data: Any, function_id: str = PUBLISH) -> Any:
        request = parse_input(function_id, data, PublishInput)
        if not request.topic:
            raise EngineError("topic_not_set", "Topic is not set")
        payload = msgspec.Raw(codec.encode_json(request.data))
        topic = request.topic
        backend = self.backend

        async def publish() -> None:
            try:
                subscribers = await self.subscribers(topic)
                if not subscribers:
                    return None
                async with backend.redis.pipeline(transaction=True) as pipe:
                    for namespace, subscriber in sorted(subscribers):
                        job = Job(backend.host.new_id(), subscriber, namespace, payload, topic=topic)
                        pipe.xadd(stream_key(f"{topic}::{subscriber}", namespace, subscriber), {"job": _encode_job(job)})
                    await pipe.execute()
            except (RedisError, OSError) as error:
                raise _unavailable(f"message for topic {topic!r}", error) from None
            return None

        return asyncio.ensure_future(publish())


class RedisQueues:
    """The queue module on Redis: the same functions as the builtin ``Queues``."""

    def __init__(self, host: Host, config: QueueConfig, adapter: RedisQueueAdapter) -> None:
        self.host = host
        self.url = adapter.config.redis_url
        self.visibility_ms = adapter.config.visibility_timeout_ms
        self.visibility_s = self.visibility_ms / 1000
        self.timeout_ms = config.invocation_timeout_ms
        self.settings = {DEFAULT_QUEUE: QueueSettings(), **config.queue_configs}
        #: This engine's consumer name in every group.
        self.consumer = host.new_id()
        #: Commands (``connect``'s client) and blocking reads (their own connections); typed
        #: ``Any``: redis-py's annotations make every reply ``bytes | str``.
        self.redis: Any = None
        self.blocking: Any = None
        self.scripts: _Scripts = None  # type: ignore[assignment]
        self.batch: _Batch = None  # type: ignore[assignment]
        #: The ``[ns, fn]`` members this engine has put in its named queues' function sets.
        self._announced: set[tuple[str, bytes]] = set()
        self.started = False
        #: (queue, namespace, function_id) -> this engine's consumer of a named queue's stream
        self.consumers: dict[tuple[str, str, str], _Consumer] = {}
        self.topics = RedisTopics(self)
        self._tasks: set[asyncio.Task[Any]] = set()
        self._housekeeping: Optional[asyncio.Task[None]] = None

    # -- running ---------------------------------------------------------------------------------

    async def start(self) -> None:
        """Connect (start-up fails if Redis does not answer), then consume."""
        self.redis = await connect(self.url)
        # Blocking reads hold a connection each, with a deadline past their BLOCK; no silent
        # retries: a consumer's loop backs off itself.
        self.blocking = aioredis.Redis.from_url(
            self.url, socket_connect_timeout=CONNECT_TIMEOUT_S,
            socket_timeout=BLOCK_MS / 1000 + COMMAND_TIMEOUT_S, retry=Retry(NoBackoff(), 0),
            max_connections=_MAX_BLOCKING_READS,
        )
        self.scripts = _Scripts(self.redis)
        await self.scripts.load()
        self.batch = _Batch(self.redis, self.scripts, self.spawn)
        await self.redis.sadd(f"{PREFIX}:queues", *self.settings)
        self.started = True
        for subscription in self.topics.local.values():
            subscription.consumer.start()
        self._housekeeping = asyncio.get_running_loop().create_task(self._look_after(), name="iii-queue-redis")
        log.info("queue: on Redis at %s (consumer %s, visibility timeout %d ms)", self.url, self.consumer, self.visibility_ms)

    async def stop(self) -> None:
        self.started = False
        if self._housekeeping is not None:
            self._housekeeping.cancel()
        consumers = list(self.consumers.values()) + [s.consumer for s in self.topics.local.values()]
        await asyncio.gather(*(consumer.stop() for consumer in consumers), return_exceptions=True)
        if self._tasks:  # answers of jobs whose functions answered: stored if Redis takes them soon
            await asyncio.wait(list(self._tasks), timeout=_STOP_GRACE_S)
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._housekeeping is not None:
            await asyncio.gather(self._housekeeping, return_exceptions=True)
        for client in (self.blocking, self.redis):
            if client is not None:
                await client.aclose()

    def spawn(self, work: Any) -> None:
        """Run a coroutine in the background, kept until it is done."""
        task = asyncio.ensure_future(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _look_after(self) -> None:
        """Consume the named queues' streams of the functions this engine serves (and stop
        consuming those it no longer serves); renew this engine's durable subscriptions."""
        next_renewal = 0.0
        while True:
            try:
                names = list(self.settings)
                async with self.redis.pipeline(transaction=False) as pipe:
                    for name in names:
                        pipe.smembers(f"{queue_key(name)}:functions")
                    members = await pipe.execute()
                wanted: set[tuple[str, str, str]] = set()
                for name, found in zip(names, members):
                    for member in found:
                        namespace, function_id = _function_of(member)
                        if self._served_here(namespace, function_id):
                            wanted.add((name, namespace, function_id))
                for key in wanted:
                    self._consume(key)
                for key in set(self.consumers) - wanted:
                    self.spawn(self.consumers.pop(key).stop())
                if time.monotonic() >= next_renewal:
                    next_renewal = time.monotonic() + SUBSCRIPTION_TTL_MS / 3000
                    await self.topics.renew()
            except (RedisError, OSError) as error:
                log.debug("queue: housekeeping skipped (%s)", error)
            await asyncio.sleep(DISCOVERY_S)

    def _served_here(self, namespace: str, function_id: str) -> bool:
        """A worker of this engine owns the function: a function that ``iii-cluster`` routes to
        other engines (its entry has ``replicas``) is left to their consumers, which deliver it
        without a hop over a link."""
        found = self.host.find_function(namespace, function_id)
        return found is not None and getattr(found, "replicas", None) is None

    def _consume(self, key: tuple[str, str, str]) -> None:
        """Consume a named queue's stream of one function, if it is served here."""
        if key not in self.consumers and self.started and self._served_here(key[1], key[2]):
            consumer = self.consumers[key] = _Consumer(self, key[0], self.settings[key[0]], key[1], key[2])
            consumer.start()

    # -- functions (the builtin Queues' handlers, answered once Redis has answered) ---------------

    def enqueue(self, host: Host, caller: Optional[Connection], data: Any) -> Any:
        request = parse_input(WireId.QUEUE_ENQUEUE, data, EnqueueInput)
        if not request.queue:
            raise EngineError("queue_not_set", "Queue is not set")
        settings = self.settings.get(request.queue)
        if settings is None:
            raise EngineError("queue_not_found", f"Queue '{request.queue}' not found")
        require_group(request.queue, settings, request.data)
        name = request.queue
        job = Job(request.messageReceiptId or self.host.new_id(), request.function_id, request.namespace or "default",
                  msgspec.Raw(codec.encode_json(request.data)))
        member = _member(job.namespace, job.function_id)
        encoded = _encode_job(job)
        key = stream_key(name, job.namespace, job.function_id)
        if (name, member) not in self._announced:  # the other engines find the stream in this set
            self._announced.add((name, member))

            def announced(sadd: asyncio.Future[Any]) -> None:
                if sadd.exception() is not None:
                    self._announced.discard((name, member))

            self.batch.run("SADD", f"{queue_key(name)}:functions", member).add_done_callback(announced)
        answer = asyncio.get_running_loop().create_future()

        def added(xadd: asyncio.Future[Any]) -> None:  # (a callback, not a task per enqueue)
            error = xadd.exception()
            if answer.done():
                return
            if error is not None:
                self._announced.clear()  # a Redis that lost its data has lost the sets too
                answer.set_exception(_unavailable(f"job for queue {name!r}", error))
                return
            answer.set_result({"messageReceiptId": job.id})
            self._consume((name, job.namespace, job.function_id))  # at once, not at the next look

        self.batch.run("XADD", key, "*", "job", encoded).add_done_callback(added)
        return answer

    async def _known(self, name: Optional[str], code: str = "queue_not_set") -> str:
        if not name:
            raise EngineError(code, "Queue is not set")
        if name in self.settings or await self.redis.sismember(f"{PREFIX}:queues", name):
            return name
        raise EngineError("queue_not_found", f"Queue '{name}' not found")

    async def _streams(self, name: str) -> list[str]:
        members = await self.redis.smembers(f"{queue_key(name)}:functions")
        return sorted(stream_key(name, *_function_of(member)) for member in members)

    @staticmethod
    def _guarded(work: Any) -> asyncio.Future:
        """The answer of a function that reads or writes Redis (a Redis failure is its error)."""

        async def guarded() -> Any:
            try:
                return await work
            except (RedisError, OSError) as error:
                raise _unavailable("request", error) from None

        return asyncio.ensure_future(guarded())

    def list_topics(self, host: Host, caller: Optional[Connection], data: Any) -> Any:
        async def listed() -> list[dict[str, Any]]:
            topics = sorted(member.decode() for member in await self.redis.smembers(f"{PREFIX}:topics"))
            now = int(time.time() * 1000)
            async with self.redis.pipeline(transaction=False) as pipe:
                for topic in topics:
                    pipe.zcount(_topic_key(topic), now, "+inf")
                counts = await pipe.execute()
            rows = [
                {"name": topic, "broker_type": "redis", "subscriber_count": count}
                for topic, count in zip(topics, counts) if count
            ]
            return rows + [
                {"name": name, "broker_type": "function_queue",
                 "subscriber_count": 1 if settings.type == "fifo" else settings.concurrency}
                for name, settings in self.settings.items()
            ]

        return self._guarded(listed())

    def topic_stats(self, host: Host, caller: Optional[Connection], data: Any) -> Any:
        request = parse_input("engine::queue::topic_stats", data, QueueInput)

        async def stats() -> dict[str, Any]:
            queue = await self._known(request.queue or request.topic, "topic_required")
            streams = await self._streams(queue)
            async with self.redis.pipeline(transaction=False) as pipe:
                for key in streams:
                    pipe.xlen(key)
                    pipe.zcard(key + ":delayed")
                    pipe.xpending(key, GROUP)
                    pipe.xinfo_consumers(key, GROUP)
                pipe.hlen(f"{queue_key(queue)}:dead")
                pipe.hgetall(f"{queue_key(queue)}:stats")
                replies = await pipe.execute(raise_on_error=False)
            depth = in_flight = 0
            consumers: set[bytes] = set()
            for index in range(len(streams)):
                length, delayed, pending, group = replies[4 * index: 4 * index + 4]
                depth += length + delayed
                if isinstance(pending, dict):  # an error: the group is not made yet
                    in_flight += pending.get("pending", 0)
                if isinstance(group, list):
                    consumers.update(row["name"] for row in group)
            dead, counters = replies[-2], replies[-1]
            settings = self.settings.get(queue) or self._subscriber_settings(queue)
            return {
                "depth": depth,
                "in_flight": in_flight,
                "consumer_count": len(consumers),
                "dlq_depth": dead,
                "config": msgspec.to_builtins(settings),
                "delivered": int(counters.get(b"delivered", 0)),
                "failed": int(counters.get(b"failed", 0)),
            }

        return self._guarded(stats())

    def _subscriber_settings(self, queue: str) -> QueueSettings:
        """A durable subscriber's settings as a binding here gives them (defaults otherwise)."""
        for subscription in self.topics.local.values():
            if subscription.consumer.queue == queue:
                return subscription.consumer.settings
        return SubscriberQueueConfig().settings()

    def dlq_topics(self, host: Host, caller: Optional[Connection], data: Any) -> Any:
        async def listed() -> list[dict[str, Any]]:
            names = sorted(member.decode() for member in await self.redis.smembers(f"{PREFIX}:queues"))
            async with self.redis.pipeline(transaction=False) as pipe:
                for name in names:
                    pipe.hlen(f"{queue_key(name)}:dead")
                counts = await pipe.execute()
            return [
                {"topic": name, "broker_type": "function_queue", "message_count": count}
                for name, count in zip(names, counts) if count
            ]

        return self._guarded(listed())

    def dlq_messages(self, host: Host, caller: Optional[Connection], data: Any) -> Any:
        request = parse_input("engine::queue::dlq_messages", data, DlqInput)

        async def listed() -> list[dict[str, Any]]:
            queue = await self._known(request.topic or request.queue, "topic_required")
            base = queue_key(queue)
            start = max(0, request.offset)
            if request.limit <= 0:
                return []
            ids = await self.redis.zrange(f"{base}:dead:order", start, start + request.limit - 1)
            found = await self.redis.hmget(f"{base}:dead", ids) if ids else []
            rows = []
            for encoded in found:
                if encoded is not None:  # discarded meanwhile
                    job = _decode_job(encoded)
                    rows.append({"id": job.id, "payload": job.data, "error": job.error, "failed_at": job.failed_at,
                                 "retries": job.attempts, "size_bytes": len(job.data)})
            return rows

        return self._guarded(listed())

    async def _redrive(self, name: Optional[str], message_id: Optional[str] = None) -> tuple[str, int]:
        """Put dead letters (all, or ``message_id``) back at the end of their streams with fresh
        attempts; returns the queue and how many went back."""
        queue = await self._known(name)
        base = queue_key(queue)
        if message_id is None:
            dead = await self.redis.hgetall(f"{base}:dead")
        else:
            found = await self.redis.hget(f"{base}:dead", message_id)
            dead = {} if found is None else {message_id.encode(): found}
        if not dead:
            return queue, 0
        async with self.redis.pipeline(transaction=False) as pipe:
            for job_id, encoded in dead.items():
                job = _decode_job(encoded)
                fresh = msgspec.structs.replace(job, attempts=0, error=None, failed_at=None)
                await self.scripts.revive(  # queued in the pipeline
                    keys=[f"{base}:dead", f"{base}:dead:order", stream_key(queue, job.namespace, job.function_id),
                          f"{base}:functions"],
                    args=[job_id, _encode_job(fresh), _member(job.namespace, job.function_id)],
                    client=pipe,
                )
            revived = await pipe.execute()
        return queue, sum(revived)

    def redrive(self, host: Host, caller: Optional[Connection], data: Any) -> Any:
        request = parse_input("iii::queue::redrive", data, QueueInput)

        async def redriven() -> dict[str, Any]:
            queue, count = await self._redrive(request.queue or request.topic)
            return {"queue": queue, "redriven": count}

        return self._guarded(redriven())

    @staticmethod
    def _dead_letter(function_id: str, data: Any) -> MessageInput:
        request = parse_input(function_id, data, MessageInput)
        if not request.queue:
            raise EngineError("queue_not_set", "Queue is not set")
        if not request.message_id:
            raise EngineError("message_id_not_set", "Message id is not set")
        return request

    def redrive_message(self, host: Host, caller: Optional[Connection], data: Any) -> Any:
        request = self._dead_letter("iii::queue::redrive_message", data)

        async def redriven() -> dict[str, Any]:
            queue, count = await self._redrive(request.queue, request.message_id)
            return {"queue": queue, "message_id": request.message_id, "redriven": count}

        return self._guarded(redriven())

    def discard_message(self, host: Host, caller: Optional[Connection], data: Any) -> Any:
        request = self._dead_letter("iii::queue::discard_message", data)

        async def discarded() -> dict[str, Any]:
            queue = await self._known(request.queue)
            base = queue_key(queue)
            async with self.redis.pipeline(transaction=True) as pipe:
                pipe.hdel(f"{base}:dead", request.message_id)
                pipe.zrem(f"{base}:dead:order", request.message_id)
                removed, _ = await pipe.execute()
            return {"queue": queue, "message_id": request.message_id, "redriven": removed}

        return self._guarded(discarded())

    def metric_families(self) -> list[MetricFamily]:
        """This engine's consumers: jobs in delivery and the outcomes it saw."""
        families = {
            "active": MetricFamily("iii_queue_active", "gauge", "Jobs of a queue being delivered", ("queue",)),
            "delivered": MetricFamily("iii_queue_delivered", "counter", "Jobs delivered", ("queue",)),
            "failed": MetricFamily("iii_queue_failed", "counter", "Failed delivery attempts", ("queue",)),
        }
        totals: dict[str, list[int]] = {}
        for consumer in list(self.consumers.values()) + [s.consumer for s in self.topics.local.values()]:
            total = totals.setdefault(consumer.queue, [0, 0, 0])
            total[0] += consumer.active
            total[1] += consumer.delivered
            total[2] += consumer.failed
        for queue, (active, delivered, failed) in totals.items():
            families["active"].samples.append(((queue,), active))
            families["delivered"].samples.append(((queue,), delivered))
            families["failed"].samples.append(((queue,), failed))
        return list(families.values())
