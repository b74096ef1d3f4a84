"""Queue (``iii-queue``): named queues behind ``TriggerAction.Enqueue`` and durable topics, on
the ``builtin`` adapter: in memory (the default), or also in a SQLite file with
``store_method: file_based`` (:mod:`iii.modules._store`); or, with ``adapter: {name: redis}``,
in Redis Streams shared by every engine pointed at that Redis (:mod:`iii.modules._queue_redis`,
which documents its key layout). Both serve :class:`QueueBackend`; this docstring describes the
semantics they share, and the builtin one.

``engine::queue::enqueue`` takes a job (the router calls it for an ``enqueue`` action); the queue
then calls the job's function with its data (in the enqueue's namespace, no metadata). An
answer acks; an error retries after ``backoff_ms × 2^(attempt-1)``, and after ``max_retries``
attempts in all (a durable subscriber's ``maxRetries`` counts retries: ``maxRetries + 1``
attempts) the job goes to the queue's dead-letter list, from which it can be redriven. Standard
queues run up to ``concurrency`` jobs at once; FIFO queues one at a time, in order (which keeps
every message group in order). Delivery is at least once. ``default`` always exists.

Durable topics: ``iii::durable::publish`` puts the message in the queue of every
``(namespace, function_id)`` bound to the topic with a ``durable:subscriber`` trigger (bindings of
one function share its queue), which delivers it the same way while a binding names it. The names
the original used before its 0.11 release, ``enqueue`` and the ``queue`` trigger type
(:data:`LEGACY_PUBLISH`, :data:`LEGACY_SUBSCRIBER`), are served too: workers on older SDKs and
frameworks still use them, and they are the same topics, queues and dead letters.

With the file, what is answered is in it first: a job is queued once committed (the receipt,
or the publish's answer, follows), and so are redrives and discards; a job is done (acked) or
dead only once the file says so, and if that commit fails it is delivered again. After a restart
the kept jobs of named queues start after ``RESTORED_JOBS_DELAY_S`` (time for their workers to
reconnect); a subscriber's wait for its binding.
"""

from __future__ import annotations

import collections
import datetime
import logging
from functools import partial
from typing import Annotated, Any, Callable, Literal, Optional, Protocol, Union

import msgspec

from iii import codec
from iii.engine.host import (
    DEFAULT_INVOCATION_TIMEOUT_MS,
    Binding,
    BuiltinModule,
    Connection,
    EngineError,
    ErrorBody,
    Host,
    LoopScheduler,
    MetricFamily,
    Provider,
    Scheduler,
    TimeoutMs,
    check_condition,
    json_schema,
    parse_input,
)
from iii.modules._adapters import BridgeAdapter, QueueAdapter, RedisQueueAdapter, database_path
from iii.modules._store import Jobs, Journal
from iii.protocol import WireId

__all__ = ["MODULE", "QueueBackend", "QueueConfig", "QueueSettings", "install", "require_group"]

NAME = "iii-queue"
DEFAULT_QUEUE = "default"
#: The database of the ``file_based`` store when ``file_path`` is not given.
DEFAULT_FILE = "./data/queue_store.db"
#: After an engine restart, stored jobs wait this long for their workers to reconnect.
RESTORED_JOBS_DELAY_S = 5.0
#: Delivery attempts of a durable subscriber without ``maxRetries``.
DEFAULT_ATTEMPTS = 3
PUBLISH = "iii::durable::publish"
SUBSCRIBER = "durable:subscriber"
#: The names the original gave these two before its 0.11 release ("rename enqueue to
#: durable::publish and queue to durable:subscriber"), which older SDKs and frameworks still use.
LEGACY_PUBLISH = "enqueue"
LEGACY_SUBSCRIBER = "queue"
log = logging.getLogger("iii.modules")


class QueueSettings(msgspec.Struct, forbid_unknown_fields=True):
    """One entry of ``queue_configs`` (the ranges hold for config files; durable subscribers
    build theirs in code, where ``concurrency: 0`` pauses delivery)."""

    #: Delivery attempts in all before the dead letters (the original's name): 0 and 1 both
    #: mean one attempt, no retry.
    max_retries: Annotated[int, msgspec.Meta(ge=0)] = 3
    concurrency: Annotated[int, msgspec.Meta(ge=1)] = 10
    type: Literal["standard", "fifo"] = "standard"
    message_group_field: Union[str, None] = None
    backoff_ms: Annotated[int, msgspec.Meta(ge=0)] = 1000
    #: Accepted for compatibility: delivery here is pushed, not polled.
    poll_interval_ms: Annotated[int, msgspec.Meta(ge=0)] = 100
    max_priority: Union[int, None] = None  # RabbitMQ only
    priority_field: Union[str, None] = None  # RabbitMQ only


class QueueConfig(msgspec.Struct, forbid_unknown_fields=True):
    """The ``iii-queue`` entry's ``config``."""

    queue_configs: dict[str, QueueSettings] = {}
    #: ``{name: builtin, config: {store_method: in_memory | file_based, file_path?}}``
    adapter: QueueAdapter = None
    #: The deadline of each delivery (condition and function): one not answered in time is
    #: retried with backoff, like a failed one.
    invocation_timeout_ms: TimeoutMs = DEFAULT_INVOCATION_TIMEOUT_MS

    def __post_init__(self) -> None:
        for name, queue in self.queue_configs.items():
            if queue.type == "fifo" and not queue.message_group_field:
                raise ValueError(f"queue {name!r}: a fifo queue needs message_group_field")


class EnqueueInput(msgspec.Struct):
    queue: str
    function_id: str
    data: Any = None
    messageReceiptId: Union[str, None] = None  # noqa: N815 (the wire name)
    namespace: Union[str, None] = None
    traceparent: Union[str, None] = None
    baggage: Union[str, None] = None


class QueueInput(msgspec.Struct):
    queue: Union[str, None] = None
    topic: Union[str, None] = None  # an alias of queue


class MessageInput(msgspec.Struct):
    queue: Union[str, None] = None
    message_id: Union[str, None] = None


class DlqInput(msgspec.Struct):
    topic: Union[str, None] = None
    queue: Union[str, None] = None
    offset: int = 0
    limit: int = 50


def _now_iso() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat()


class Job(msgspec.Struct):
    """A job, as queues hold it and the ``file_based`` store keeps it (encoded)."""

    id: str
    function_id: str
    namespace: str
    #: The JSON the function is called with.
    data: msgspec.Raw
    #: A condition function asked first (durable subscribers): ``false`` acks without a call.
    condition: Union[str, None] = None
    attempts: int = 0
    error: Union[str, None] = None
    failed_at: Union[str, None] = None
    #: The durable topic it was published to (``None``: a named queue's job).
    topic: Union[str, None] = None
    #: Its row in the ``file_based`` store (set from the row when loaded; 0 in memory).
    row: int = 0


_encode_job = msgspec.json.Encoder().encode
_decode_job = msgspec.json.Decoder(Job).decode


def require_group(name: str, settings: QueueSettings, data: Any) -> None:
    """A FIFO queue's job must carry its message group field.

    Raises:
        EngineError: ``message_group_missing``.
    """
    group_field = settings.message_group_field
    if settings.type == "fifo" and (not isinstance(data, dict) or data.get(group_field) is None):  # type: ignore[arg-type]
        raise EngineError(
            "message_group_missing",
            f"FIFO queue '{name}' requires field '{group_field}' in data, but it was not found",
        )


def _answer(store: Optional[Jobs], result: Any, then: Optional[Callable[[], None]] = None) -> Any:
    """The answer to a change, ``then`` done first: at once in memory; with the file, a future
    resolved once the change is committed."""
    if store is None:
        if then is not None:
            then()
        return result
    return store.journal.acknowledge(result, then)


class Queue:
    """One queue: waiting jobs, jobs in delivery, the dead-letter list, and the file they are
    also kept in (``store``, ``None`` in memory)."""

    def __init__(
        self, name: str, settings: QueueSettings, host: Host, scheduler: Scheduler, timeout_ms: int,
        store: Optional[Jobs] = None,
    ) -> None:
        self.name = name
        self.settings = settings
        self._host = host
        self._scheduler = scheduler
        self._timeout_ms = timeout_ms
        self._store = store
        self.waiting: collections.deque[Job] = collections.deque()
        self.active = 0
        self.dead: list[Job] = []
        self.delivered = 0
        self.failed = 0
        #: No delivery starts while set (a durable subscriber's queue without bindings).
        self.paused = False
        self._pumping = False

    @property
    def limit(self) -> int:
        return 1 if self.settings.type == "fifo" else self.settings.concurrency

    def add(self, job: Job) -> Callable[[], None]:
        """A new job: written to the file (if any); returns what queues it, to run once that is
        committed."""
        if self._store is not None:
            job.row = self._store.add(self.name, _encode_job(job))
        return partial(self.push, job)

    def push(self, job: Job, *, first: bool = False) -> None:
        if first:
            self.waiting.appendleft(job)
        else:
            self.waiting.append(job)
        self.pump()

    def pump(self) -> None:
        """Start jobs while there is room (a loop, not recursion: in-process calls answer at once)."""
        if self._pumping:
            return
        self._pumping = True
        try:
            while self.waiting and self.active < self.limit and not self.paused:
                self._deliver(self.waiting.popleft())
        finally:
            self._pumping = False

    def _deliver(self, job: Job) -> None:
        self.active += 1
        job.attempts += 1
        if job.condition is None:
            self._call(job)
            return

        def checked(passed: bool, error: Optional[ErrorBody]) -> None:
            if passed:
                self._call(job)
            else:  # false acks the job without a call; a failed condition is a failed attempt
                self._answered(job, error)

        check_condition(
            self._host, job.namespace, job.condition, bytes(job.data), checked, timeout_ms=self._timeout_ms
        )

    def _call(self, job: Job) -> None:
        self._host.invoke(
            job.namespace, job.function_id, bytes(job.data), b"",
            on_result=lambda result, error: self._answered(job, error), timeout_ms=self._timeout_ms,
        )

    def _answered(self, job: Job, error: Optional[ErrorBody]) -> None:
        store = self._store
        if error is None:
            self.delivered += 1
            self.active -= 1
            if store is not None:  # done once the file says so; if it cannot, the job runs again
                store.remove(job.row, undo=partial(self.push, job))
            self.pump()
            return
        job.error = f"{error.code}: {error.message}"
        if job.attempts >= self.settings.max_retries:
            self.failed += 1
            job.failed_at = _now_iso()
            self.dead.append(job)
            if store is not None:
                row = job.row
                job.row = store.move(row, _encode_job(job), dead=True, undo=partial(self._undo_death, job, row))
            log.warning("queue %s: job %s to %s failed %d times, moved to the DLQ: %s",
                        self.name, job.id, job.function_id, job.attempts, job.error)
            self.active -= 1
            self.pump()
            return
        if store is not None:  # the attempt count survives a restart
            store.update(job.row, _encode_job(job))
        delay = self.settings.backoff_ms * 2 ** (job.attempts - 1) / 1000
        if self.settings.type == "fifo":  # keep the slot: nothing overtakes the job being retried
            self._scheduler.call_later(delay, partial(self._retry_in_place, job))
        else:
            self.active -= 1
            self._scheduler.call_later(delay, partial(self.push, job, first=True))
            self.pump()

    def _undo_death(self, job: Job, row: int) -> None:
        """The move to the dead letters was not stored: the file still has the job waiting."""
        job.row = row
        self.dead.remove(job)
        self.push(job)

    def _undo_revival(self, job: Job, row: int) -> None:
        """A redrive was not stored: the file still has the job dead."""
        job.row = row
        self.dead.append(job)

    def _retry_in_place(self, job: Job) -> None:
        self.active -= 1
        if self.paused:  # nobody to deliver to (or the engine is stopping): it waits, first
            self.waiting.appendleft(job)
        else:
            self._deliver(job)

    def _take_dead(self, message_id: Optional[str]) -> list[Job]:
        """Remove dead jobs (all, or the one with ``message_id``) from the dead letters."""
        taken = [job for job in self.dead if message_id is None or job.id == message_id]
        if taken:
            self.dead = [job for job in self.dead if message_id is not None and job.id != message_id]
        return taken

    def redrive(self, message_id: Optional[str] = None) -> tuple[int, Callable[[], None]]:
        """Take dead jobs (all, or one) for the queue again, with fresh attempts; returns their
        count and what queues them, to run once that is committed."""
        moving = self._take_dead(message_id)
        if self._store is not None:
            for job in moving:
                fresh = msgspec.structs.replace(job, attempts=0, error=None, failed_at=None)
                row = job.row
                job.row = self._store.move(row, _encode_job(fresh), dead=False, undo=partial(self._undo_revival, job, row))

        def requeue() -> None:
            for job in moving:
                job.attempts, job.error, job.failed_at = 0, None, None
                self.push(job)

        return len(moving), requeue

    def discard(self, message_id: str) -> int:
        gone = self._take_dead(message_id)
        if self._store is not None:
            for job in gone:
                self._store.remove(job.row, undo=partial(self.dead.append, job))
        return len(gone)


class SubscriberQueueConfig(msgspec.Struct):
    """``queue_config`` of a ``durable:subscriber`` (or ``queue``) binding."""

    #: ``fifo``; any other mode is concurrent, as in the original (older frameworks send
    #: ``standard``).
    type: str = "concurrent"
    concurrency: int = 10  # 0 pauses delivery
    #: Retries after the first attempt (absent: ``DEFAULT_ATTEMPTS`` attempts in all).
    maxRetries: Union[int, None] = None  # noqa: N815 (the wire names)
    backoffDelayMs: int = 1000  # noqa: N815
    backoffType: Union[str, None] = None  # noqa: N815 (exponential is the only kind here)
    visibilityTimeout: Union[int, None] = None  # noqa: N815
    delaySeconds: Union[int, None] = None  # noqa: N815
    maxPriority: Union[int, None] = None  # noqa: N815

    def settings(self) -> QueueSettings:
        return QueueSettings(
            max_retries=DEFAULT_ATTEMPTS if self.maxRetries is None else max(0, self.maxRetries) + 1,
            concurrency=max(0, self.concurrency),
            type="fifo" if self.type == "fifo" else "standard",
            backoff_ms=max(0, self.backoffDelayMs),
        )


class SubscriberConfig(msgspec.Struct):
    topic: Union[str, None] = None
    queue: Union[str, None] = None  # an alias of topic
    condition_function_id: Union[str, None] = None
    queue_config: SubscriberQueueConfig = msgspec.field(default_factory=SubscriberQueueConfig)

    @property
    def name(self) -> Optional[str]:
        return self.topic or self.queue


class PublishInput(msgspec.Struct):
    topic: Union[str, None] = None
    data: Any = None


class Subscription:
    """One ``(namespace, function_id)`` subscribed to a topic: its queue, shared by every binding
    naming it (replicas compete on it)."""

    def __init__(self, queue: Queue, condition: Optional[str]) -> None:
        self.queue = queue
        self.condition = condition
        self.bindings: set[str] = set()


class Topics(Provider[SubscriberConfig]):
    """Durable topics: the ``durable:subscriber`` trigger type and ``iii::durable::publish``."""

    def __init__(self, host: Host, scheduler: Scheduler, timeout_ms: int, store: Optional[Jobs]) -> None:
        super().__init__(host, SubscriberConfig, timeout_ms, self._check)
        self._scheduler = scheduler
        self._store = store
        #: topic -> (namespace, function_id) -> subscription: who a publish goes to
        self.topics: dict[str, dict[tuple[str, str], Subscription]] = {}
        #: (topic, namespace, function_id) -> its queue, kept paused while no binding names it
        #: (its jobs wait for the subscriber to come back)
        self.queues: dict[tuple[str, str, str], Queue] = {}

    @staticmethod
    def _check(config: SubscriberConfig) -> Optional[str]:
        return None if config.name else f"Topic is not set: a {SUBSCRIBER} trigger needs {{\"topic\": \"<name>\"}}"

    def queue_of(self, topic: str, namespace: str, function_id: str) -> Queue:
        """The queue of one subscribing function (made paused, with default settings, if new)."""
        key = (topic, namespace, function_id)
        queue = self.queues.get(key)
        if queue is None:
            queue = self.queues[key] = Queue(
                f"{topic}::{function_id}", SubscriberQueueConfig().settings(),
                self.host, self._scheduler, self.timeout_ms, self._store,
            )
            queue.paused = True
        return queue

    def register(self, binding: Binding) -> Optional[str]:
        self.unregister(binding)  # a re-registered id may have changed topic or function
        refusal = super().register(binding)
        if refusal is None:
            config = self.bindings[binding.id][1]
            topic: str = config.name  # type: ignore[assignment]
            subscribers = self.topics.setdefault(topic, {})
            key = (binding.namespace, binding.function_id)
            subscription = subscribers.get(key)
            if subscription is None:
                queue = self.queue_of(topic, binding.namespace, binding.function_id)
                queue.settings = config.queue_config.settings()
                subscription = subscribers[key] = Subscription(queue, config.condition_function_id)
                queue.paused = False
                queue.pump()  # what it kept meanwhile
            subscription.bindings.add(binding.id)
        return refusal

    def unregister(self, binding: Binding) -> None:
        entry = self.bindings.get(binding.id)
        super().unregister(binding)
        if entry is None:
            return
        topic: str = entry[1].name  # type: ignore[assignment]
        subscribers = self.topics.get(topic, {})
        key = (entry[0].namespace, entry[0].function_id)
        subscription = subscribers.get(key)
        if subscription is not None:
            subscription.bindings.discard(binding.id)
            if not subscription.bindings:
                subscription.queue.paused = True
                del subscribers[key]
                if not subscribers:
                    del self.topics[topic]

    def publish(self, host: Host, caller: Optional[Connection], data: Any, function_id: str = PUBLISH) -> Any:
        request = parse_input(function_id, data, PublishInput)
        if not request.topic:
            raise EngineError("topic_not_set", "Topic is not set")
        payload = msgspec.Raw(codec.encode_json(request.data))
        queued = [
            subscription.queue.add(
                Job(self.host.new_id(), function_id, namespace, payload, subscription.condition, topic=request.topic)
            )
            for (namespace, function_id), subscription in self.topics.get(request.topic, {}).items()
        ]

        def deliver() -> None:
            for push in queued:
                push()

        return _answer(self._store, None, deliver)


class Queues:
    """The module: its named queues, its durable topics, its functions and its file."""

    def __init__(self, host: Host, config: QueueConfig, scheduler: Scheduler) -> None:
        self._host = host
        path = database_path(config.adapter, DEFAULT_FILE)
        #: The file the jobs are also kept in (``None``: in memory only).
        self.store = None if path is None else Jobs(Journal(path, Jobs.SCHEMA))
        settings = {DEFAULT_QUEUE: QueueSettings(), **config.queue_configs}
        timeout_ms = config.invocation_timeout_ms
        self.queues = {
            name: Queue(name, queue_settings, host, scheduler, timeout_ms, self.store)
            for name, queue_settings in settings.items()
        }
        self.topics = Topics(host, scheduler, timeout_ms, self.store)
        self._scheduler = scheduler

    async def start(self) -> None:
        """Load the stored jobs; named queues start them once their workers have had time to
        reconnect, durable subscribers once they are bound again."""
        if self.store is None:
            return
        self.store.journal.open()
        unconfigured: dict[str, int] = {}
        for row, name, dead, encoded in self.store.load():
            job = _decode_job(encoded)
            job.row = row
            if job.topic is not None:
                queue = self.topics.queue_of(job.topic, job.namespace, job.function_id)
            elif name in self.queues:
                queue = self.queues[name]
            else:
                unconfigured[name] = unconfigured.get(name, 0) + 1
                continue
            (queue.dead if dead else queue.waiting).append(job)
        for name, count in unconfigured.items():
            log.warning("queue %s is not configured: its %d stored jobs stay in %s until it is",
                        name, count, self.store.journal.path)
        for queue in self.queues.values():
            if queue.waiting:
                self._scheduler.call_later(RESTORED_JOBS_DELAY_S, queue.pump)

    async def stop(self) -> None:
        for queue in self._all_queues():  # retries and restores that fall due now start nothing
            queue.paused = True
        if self.store is not None:
            self.store.journal.close()

    def _all_queues(self) -> list[Queue]:
        """Named queues, then every durable subscriber's queue."""
        return list(self.queues.values()) + list(self.topics.queues.values())

    def _queue(self, name: Optional[str], code: str = "queue_not_set", *, named_only: bool = False) -> Queue:
        if not name:
            raise EngineError(code, "Queue is not set")
        queues = self.queues.values() if named_only else self._all_queues()
        for queue in queues:
            if queue.name == name:
                return queue
        raise EngineError("queue_not_found", f"Queue '{name}' not found")

    def enqueue(self, host: Host, caller: Optional[Connection], data: Any) -> Any:
        request = parse_input(WireId.QUEUE_ENQUEUE, data, EnqueueInput)
        queue = self._queue(request.queue, named_only=True)
        require_group(queue.name, queue.settings, request.data)
        job_id = request.messageReceiptId or self._host.new_id()
        data = msgspec.Raw(codec.encode_json(request.data))
        queued = queue.add(Job(job_id, request.function_id, request.namespace or "default", data))
        return _answer(self.store, {"messageReceiptId": job_id}, queued)

    def list_topics(self, host: Host, caller: Optional[Connection], data: Any) -> Any:
        topics = [
            {"name": topic, "broker_type": "builtin", "subscriber_count": len(subscribers)}
            for topic, subscribers in self.topics.topics.items()
        ]
        return topics + [
            {"name": q.name, "broker_type": "function_queue", "subscriber_count": q.limit}
            for q in self.queues.values()
        ]

    def topic_stats(self, host: Host, caller: Optional[Connection], data: Any) -> Any:
        request = parse_input("engine::queue::topic_stats", data, QueueInput)
        queue = self._queue(request.queue or request.topic, "topic_required")
        return {
            "depth": len(queue.waiting) + queue.active,
            "in_flight": queue.active,
            "consumer_count": queue.limit,
            "dlq_depth": len(queue.dead),
            "config": msgspec.to_builtins(queue.settings),
            "delivered": queue.delivered,
            "failed": queue.failed,
        }

    def metric_families(self) -> list[MetricFamily]:
        """Queue depths, jobs in delivery, dead letters and outcomes, for the metrics page."""
        families = {
            "waiting": MetricFamily("iii_queue_waiting", "gauge", "Jobs waiting in a queue", ("queue",)),
            "active": MetricFamily("iii_queue_active", "gauge", "Jobs of a queue being delivered", ("queue",)),
            "dead": MetricFamily("iii_queue_dead_letters", "gauge", "Dead letters of a queue", ("queue",)),
            "delivered": MetricFamily("iii_queue_delivered", "counter", "Jobs delivered", ("queue",)),
            "failed": MetricFamily("iii_queue_failed", "counter", "Failed delivery attempts", ("queue",)),
        }
        for queue in self._all_queues():
            labels = (queue.name,)
            for key, value in (("waiting", len(queue.waiting)), ("active", queue.active), ("dead", len(queue.dead)),
                               ("delivered", queue.delivered), ("failed", queue.failed)):
                families[key].samples.append((labels, value))
        return list(families.values())

    def dlq_topics(self, host: Host, caller: Optional[Connection], data: Any) -> Any:
        return [
            {"topic": q.name, "broker_type": "function_queue", "message_count": len(q.dead)}
            for q in self._all_queues() if q.dead
        ]

    def dlq_messages(self, host: Host, caller: Optional[Connection], data: Any) -> Any:
        request = parse_input("engine::queue::dlq_messages", data, DlqInput)
        queue = self._queue(request.topic or request.queue, "topic_required")
        window = queue.dead[max(0, request.offset): max(0, request.offset) + max(0, request.limit)]
        return [
            {"id": job.id, "payload": job.data, "error": job.error, "failed_at": job.failed_at,
             "retries": job.attempts, "size_bytes": len(job.data)}
            for job in window
        ]

    def redrive(self, host: Host, caller: Optional[Connection], data: Any) -> Any:
        request = parse_input("iii::queue::redrive", data, QueueInput)
        queue = self._queue(request.queue or request.topic)
        count, requeue = queue.redrive()
        return _answer(self.store, {"queue": queue.name, "redriven": count}, requeue)

    def _dead_letter(self, function_id: str, data: Any) -> tuple[Queue, str]:
        request = parse_input(function_id, data, MessageInput)
        queue = self._queue(request.queue)
        if not request.message_id:
            raise EngineError("message_id_not_set", "Message id is not set")
        return queue, request.message_id

    def redrive_message(self, host: Host, caller: Optional[Connection], data: Any) -> Any:
        queue, message_id = self._dead_letter("iii::queue::redrive_message", data)
        count, requeue = queue.redrive(message_id)
        return _answer(self.store, {"queue": queue.name, "message_id": message_id, "redriven": count}, requeue)

    def discard_message(self, host: Host, caller: Optional[Connection], data: Any) -> Any:
        queue, message_id = self._dead_letter("iii::queue::discard_message", data)
        result = {"queue": queue.name, "message_id": message_id, "redriven": queue.discard(message_id)}
        return _answer(self.store, result)


class QueueBackend(Protocol):
    """What ``install`` registers, served by :class:`Queues` (``builtin``: in memory or SQLite) and
    by ``iii.modules._queue_redis.RedisQueues`` (``redis``): the module's functions (handlers that
    answer, or return a future answered once the job is kept), its durable topics' provider (with
    ``publish``), its metrics, and ``start``/``stop``."""

    topics: Any

    async def start(self) -> None: ...
    async def stop(self) -> None: ...
    def enqueue(self, host: Host, caller: Optional[Connection], data: Any) -> Any: ...
    def list_topics(self, host: Host, caller: Optional[Connection], data: Any) -> Any: ...
    def topic_stats(self, host: Host, caller: Optional[Connection], data: Any) -> Any: ...
    def dlq_topics(self, host: Host, caller: Optional[Connection], data: Any) -> Any: ...
    def dlq_messages(self, host: Host, caller: Optional[Connection], data: Any) -> Any: ...
    def redrive(self, host: Host, caller: Optional[Connection], data: Any) -> Any: ...
    def redrive_message(self, host: Host, caller: Optional[Connection], data: Any) -> Any: ...
    def discard_message(self, host: Host, caller: Optional[Connection], data: Any) -> Any: ...
    def metric_families(self) -> list[MetricFamily]: ...


def install(host: Host, config: Optional[QueueConfig] = None, scheduler: Optional[Scheduler] = None) -> QueueBackend:
    """Register ``engine::queue::enqueue``, the queue inspection functions and durable topics."""
    config = config or QueueConfig()
    queues: QueueBackend
    if isinstance(config.adapter, BridgeAdapter):  # topics and queues of another engine
        from iii.modules._bridge_backends import BridgedQueues

        queues = BridgedQueues(host, config, scheduler or LoopScheduler(), config.adapter.config.bridge_url)
    elif isinstance(config.adapter, RedisQueueAdapter):
        from iii.modules._queue_redis import RedisQueues  # imports redis-py only when configured

        queues = RedisQueues(host, config, config.adapter)
    else:
        queues = Queues(host, config, scheduler or LoopScheduler())
    for function_id, handler, description in (
        (WireId.QUEUE_ENQUEUE, queues.enqueue, "Accept a job for a named queue (TriggerAction.Enqueue)"),
        ("engine::queue::list_topics", queues.list_topics, "The queues"),
        ("engine::queue::topic_stats", queues.topic_stats, "Depth, consumers and dead letters of a queue"),
        ("engine::queue::dlq_topics", queues.dlq_topics, "Queues holding dead letters"),
        ("engine::queue::dlq_messages", queues.dlq_messages, "The dead letters of a queue"),
        ("iii::queue::redrive", queues.redrive, "Put every dead letter of a queue back in it"),
        ("iii::queue::redrive_message", queues.redrive_message, "Put one dead letter back in its queue"),
        ("iii::queue::discard_message", queues.discard_message, "Drop one dead letter"),
    ):
        host.add_function(function_id, handler, module=NAME, description=description)
    host.add_metric_source(queues.metric_families)
    host.add_function(
        PUBLISH, queues.topics.publish, module=NAME,
        description="Publish data to a durable topic: every subscribing function gets it, with retries",
    )
    subscriber_format = json_schema(SubscriberConfig, required=("topic",))
    host.add_trigger_type(
        SUBSCRIBER,
        queues.topics,
        module=NAME,
        description="Called with every message published to the topic (own queue per function)",
        trigger_request_format=subscriber_format,
    )
    # The same topics under their old names: one provider, so a message published under either
    # name reaches the subscribers bound under both.
    host.add_function(
        LEGACY_PUBLISH, partial(queues.topics.publish, function_id=LEGACY_PUBLISH), module=NAME,
        description=f"The name of {PUBLISH} before iii 0.11 (older SDKs and frameworks call it)",
    )
    host.add_trigger_type(
        LEGACY_SUBSCRIBER,
        queues.topics,
        module=NAME,
        description=f"The name of {SUBSCRIBER} before iii 0.11 (older SDKs and frameworks bind it)",
        trigger_request_format=subscriber_format,
    )
    return queues


MODULE = BuiltinModule(
    NAME, "Named job queues with retries and dead letters (in memory, or also in a file)", QueueConfig, install
)
