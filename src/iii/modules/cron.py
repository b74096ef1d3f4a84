"""Cron (``iii-cron``): the ``cron`` trigger type, schedules in UTC on the engine's loop.

Expressions have 6 or 7 fields, seconds first: ``sec min hour day-of-month month day-of-week
[year]``, with day-of-week ``1``–``7`` = Sunday–Saturday (or names), plus ``@yearly``,
``@monthly``, ``@weekly``, ``@daily``, ``@hourly``. Parsing and next-instant arithmetic are
croniter's (with ``second_at_beginning``); the day-of-week numbers are shifted to its 0–6.

Each binding is a job: wait for the next instant, check the condition, call the function and wait
for its answer, then look for the next instant after now, so runs of one job never overlap and
ticks missed meanwhile are skipped. Errors are only logged.

With ``adapter: {name: redis, config: {redis_url}}`` each tick runs once across every engine
pointed at that Redis: before a run the engine takes the tick's lock, ``SET
cron_lock:{job}:{tick_ms} <engine id> NX PX 60000``, where ``{job}`` is a hash of the binding's
namespace, function id and expression (so replicas of a worker bound on several engines share
it; the original keys its lock by the binding's random id, which lets every replica run) and
``{tick_ms}`` the tick's instant. The engine that gets it runs the tick; the others skip it. The
lock is never released (it names one tick) and lapses after a minute; an engine that dies only
stops taking ticks, the others take them. Redis unavailable: the tick is skipped and logged.
"""

from __future__ import annotations

import asyncio
import datetime
import hashlib
import logging
import re
from typing import Annotated, Any, Optional, Union

import msgspec
from msgspec import Meta
from croniter import CroniterError, croniter

from iii import codec
from iii.engine.host import (
    DEFAULT_INVOCATION_TIMEOUT_MS,
    Binding,
    BuiltinModule,
    ErrorBody,
    Host,
    LoopScheduler,
    Provider,
    Running,
    Scheduler,
    TimeoutMs,
    json_schema,
)
from iii.modules._adapters import CronAdapter, RedisAdapter

__all__ = ["MODULE", "CronConfig", "parse_expression", "install"]

NAME = "iii-cron"
#: How long a tick's Redis lock lives: longer than engines' clocks may differ by.
LOCK_TTL_MS = 60_000
log = logging.getLogger("iii.modules")

_SHORTHANDS = {"@yearly", "@annually", "@monthly", "@weekly", "@daily", "@hourly"}
#: A day-of-week number (not a step after "/", nor the n of "#n").
_WEEKDAY_NUMBER = re.compile(r"(?<![/#\d])\d+")


class CronConfig(msgspec.Struct, forbid_unknown_fields=True):
    """The ``iii-cron`` entry's ``config``."""

    #: ``{name: kv, config: {lock_ttl_ms?, lock_index?, …}}``: the lock is process-local (every
    #: engine runs its jobs); ``{name: redis, config: {redis_url}}``: each tick runs once across
    #: the engines sharing that Redis.
    adapter: CronAdapter = None
    #: The deadline of each run (condition and function): a run that does not answer in time is
    #: given up and the job waits for its next tick.
    invocation_timeout_ms: TimeoutMs = DEFAULT_INVOCATION_TIMEOUT_MS


class CronTriggerConfig(msgspec.Struct):
    """The ``cron`` trigger's config."""

    expression: Annotated[
        Union[str, None],
        Meta(description="6 or 7 fields, seconds first, UTC: sec min hour day month weekday(1=Sun) [year]"),
    ] = None
    condition_function_id: Union[str, None] = None


def parse_expression(expression: Optional[str]) -> str:
    """The croniter form of an iii cron expression.

    Raises:
        ValueError: empty, not 6 or 7 fields, or a field croniter rejects (the message says which).
    """
    text = (expression or "").strip()
    if not text:
        raise ValueError("Cron expression is required")
    if text.startswith("@"):
        if text.lower() not in _SHORTHANDS:
            raise ValueError(f"Invalid cron expression '{expression}': unknown shorthand {text}")
        return text.lower()
    fields = text.split()
    if len(fields) not in (6, 7):
        raise ValueError(
            f"Invalid cron expression '{expression}': expected 6 or 7 fields "
            f"(second minute hour day-of-month month day-of-week [year]), got {len(fields)}"
        )
    weekdays = [int(number) for number in _WEEKDAY_NUMBER.findall(fields[5])]
    if any(not 1 <= day <= 7 for day in weekdays):
        raise ValueError(
            f"Invalid cron expression '{expression}': day-of-week runs from 1 (Sunday) to 7 (Saturday)"
        )
    fields[5] = _WEEKDAY_NUMBER.sub(lambda match: str(int(match.group()) - 1), fields[5])
    converted = " ".join(fields)
    try:
        croniter(converted, second_at_beginning=True)
    except (CroniterError, ValueError) as exc:
        raise ValueError(f"Invalid cron expression '{expression}': {exc}") from None
    return converted


def _timestamp(seconds: float) -> str:
    """RFC 3339 in UTC with a ``+00:00`` offset (fractional seconds only when there are some)."""
    return datetime.datetime.fromtimestamp(seconds, datetime.timezone.utc).isoformat()


class Job:
    """One cron binding's schedule."""

    def __init__(self, provider: CronProvider, binding: Binding, config: CronTriggerConfig, expression: str) -> None:
        self._provider = provider
        self._scheduler = provider.scheduler
        self.binding = binding
        self._condition = config.condition_function_id
        self._expression = expression
        self._timer: Any = None
        self._stopped = False
        #: The instant the job waits for (or last ran for).
        self._last = 0.0

    def schedule(self) -> None:
        """Wait for the first instant after now (and after the last run's instant)."""
        if self._stopped:
            return
        start = max(self._scheduler.time(), self._last)
        self._last = croniter(self._expression, start, second_at_beginning=True).get_next(float)
        self._arm()

    def _arm(self) -> None:
        self._timer = self._scheduler.call_later(max(0.0, self._last - self._scheduler.time()), self._run)

    def _run(self) -> None:
        self._timer = None
        if self._stopped:
            return
        if self._scheduler.time() < self._last:  # loop timers may fire a little early
            self._arm()
            return
        scheduled = self._last
        payload = codec.encode_json({
            "trigger": "cron",
            "job_id": self.binding.id,
            "scheduled_time": _timestamp(scheduled),
            "actual_time": _timestamp(self._scheduler.time()),
        })
        locks = self._provider.locks
        if locks is None:
            self._provider.fire(self.binding, payload, self._condition, on_done=self._ran)
            return
        key = locks.key(self.binding, self._expression, scheduled)

        async def run_if_locked() -> None:
            if await locks.take(key) and not self._stopped:
                self._provider.fire(self.binding, payload, self._condition, on_done=self._ran)
            else:
                self.schedule()

        locks.spawn(run_if_locked())

    def _ran(self, result: bytes, error: Optional[ErrorBody]) -> None:
        self.schedule()

    def stop(self) -> None:
        self._stopped = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None


class RedisLocks:
    """One lock per job and tick in Redis, shared by the engines pointed at it."""

    def __init__(self, url: str, engine_id: str) -> None:
        self.url = url
        self.engine_id = engine_id
        self.redis: Any = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        from iii.modules._redis import connect  # redis-py only when configured

        self.redis = await connect(self.url)

    async def stop(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self.redis is not None:
            await self.redis.aclose()

    @staticmethod
    def key(binding: Binding, expression: str, tick: float) -> str:
        job = hashlib.sha1(f"{binding.namespace}\0{binding.function_id}\0{expression}".encode()).hexdigest()[:16]
        return f"cron_lock:{job}:{round(tick * 1000)}"

    async def take(self, key: str) -> bool:
        """Whether this engine runs the tick (``False`` too when Redis does not answer)."""
        from redis.exceptions import RedisError

        try:
            return bool(await self.redis.set(key, self.engine_id, nx=True, px=LOCK_TTL_MS))
        except (RedisError, OSError) as error:
            log.warning("cron: tick %s skipped, Redis unavailable: %s", key, error)
            return False

    def spawn(self, work: Any) -> None:
        task = asyncio.ensure_future(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


class CronProvider(Provider[CronTriggerConfig], Running):
    """The ``cron`` trigger type: a :class:`Job` per binding (a re-registered id replaces it)."""

    def __init__(self, host: Host, scheduler: Scheduler, timeout_ms: int) -> None:
        super().__init__(host, CronTriggerConfig, timeout_ms, self._check)
        self.scheduler = scheduler
        self.jobs: dict[str, Job] = {}
        #: The cluster-wide tick locks (``None``: every engine runs the jobs it holds).
        self.locks: Optional[RedisLocks] = None

    async def start(self) -> None:
        if self.locks is not None:
            await self.locks.start()

    @staticmethod
    def _check(config: CronTriggerConfig) -> Optional[str]:
        try:
            parse_expression(config.expression)
        except ValueError as exc:
            return str(exc)
        return None

    def register(self, binding: Binding) -> Optional[str]:
        refusal = super().register(binding)
        if refusal is None:
            self._stop(binding.id)
            config = self.bindings[binding.id][1]
            job = self.jobs[binding.id] = Job(self, binding, config, parse_expression(config.expression))
            job.schedule()
        return refusal

    def unregister(self, binding: Binding) -> None:
        super().unregister(binding)
        self._stop(binding.id)

    async def stop(self) -> None:
        """The engine stops: no job runs again (durable bindings have no owner to remove them)."""
        for binding_id in list(self.jobs):
            self._stop(binding_id)
        if self.locks is not None:
            await self.locks.stop()

    def _stop(self, binding_id: str) -> None:
        job = self.jobs.pop(binding_id, None)
        if job is not None:
            job.stop()


def install(host: Host, config: Optional[CronConfig] = None, scheduler: Optional[Scheduler] = None) -> CronProvider:
    """Register the ``cron`` trigger type."""
    config = config or CronConfig()
    provider = CronProvider(host, scheduler or LoopScheduler(), config.invocation_timeout_ms)
    if isinstance(config.adapter, RedisAdapter):
        provider.locks = RedisLocks(config.adapter.config.redis_url, host.new_id())
    host.add_trigger_type(
        "cron",
        provider,
        module=NAME,
        description="Calls the function on a schedule (cron expression, seconds first, UTC)",
        trigger_request_format=json_schema(CronTriggerConfig, required=("expression",)),
    )
    return provider


MODULE = BuiltinModule(NAME, "Scheduled calls (cron expressions, UTC)", CronConfig, install)
