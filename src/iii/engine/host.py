"""The one door between the engine and its built-in modules.

A module imports this and nothing else of the engine. It gets:

- :class:`Host`, what the engine offers a module (the router satisfies it): register functions
  and trigger types, call functions (always with a deadline), run work after the current
  message, the clock and fresh ids, data channels (:class:`ChannelRegistry`, the ends a module
  holds: :class:`ChannelWriterEnd`, :class:`ChannelReaderEnd`, :class:`Text` items); become the
  engine's :class:`TelemetrySink` (the SDKs' telemetry frames, the engine's spans of traced
  calls), report :class:`MetricFamily` lists read at each scrape, read the engine's own counters;
- :class:`Provider`, the base of an in-process trigger type, with :meth:`Provider.fire` (call a
  binding's function, its condition function first) and :func:`call` (the same, awaited);
- :class:`Scheduler` / :class:`LoopScheduler` (wall-clock timers; tests pass a fake),
  :func:`parse_input` and :class:`EngineError` for built-in functions, :func:`json_schema` (the
  schemas shown to users, made from the Structs that validate), and :class:`BuiltinModule`, the
  row a module adds to the engine process's module table.

A built-in function is ``handler(host, caller, data)``: ``data`` is the decoded payload,
``caller`` the calling :class:`Connection` (``None`` for calls the engine makes). It returns the
result, raises :class:`EngineError`, or returns an :class:`asyncio.Future` whose result is the
answer (for answers that wait, e.g. for a durable write). Such a future must complete on its own
(in-process work, bounded): deadlines are what the engine puts on calls to workers.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from typing import Annotated, Any, Callable, Generic, Optional, Protocol, TypeVar

import msgspec
from msgspec import Meta

from iii import codec
from iii.engine import ticker
from iii.engine.channels import Channel, ChannelReaderEnd, ChannelRegistry, ChannelWriterEnd, Text
from iii.engine.registry import Binding, Connection, EngineError
from iii.protocol import ErrorBody, ErrorCode

__all__ = [
    "DEFAULT_INVOCATION_TIMEOUT_MS",
    "Binding",
    "BuiltinModule",
    "Channel",
    "ChannelReaderEnd",
    "ChannelRegistry",
    "ChannelWriterEnd",
    "Connection",
    "EngineError",
    "ErrorBody",
    "Host",
    "KindCounts",
    "LoopScheduler",
    "MetricFamily",
    "OnResult",
    "Provider",
    "RunningModule",
    "Scheduler",
    "TelemetrySink",
    "Text",
    "TimeoutMs",
    "call",
    "check_condition",
    "condition_passes",
    "json_schema",
    "parse_input",
]

log = logging.getLogger("iii.modules")

#: The deadline of a call a module makes when its config does not say (``invocation_timeout_ms``).
DEFAULT_INVOCATION_TIMEOUT_MS = 30_000
#: A deadline in a module's config: 1 ms to a day.
TimeoutMs = Annotated[int, Meta(ge=1, le=86_400_000)]

#: ``on_result(result_json, error)``: how an engine-originated call answers.
OnResult = Callable[[bytes, Optional[ErrorBody]], None]
Handler = Callable[["Host", Optional[Connection], Any], Any]
Config = TypeVar("Config")


@dataclass
class MetricFamily:
    """One metric the engine or a module reports, read when it is scraped (never counted on the
    hot path for the page's sake)."""

    name: str
    #: ``gauge``, ``counter`` or ``histogram``.
    kind: str
    help: str
    labels: tuple[str, ...] = ()
    #: ``(label values, value)``; a histogram's value is ``(bounds, cumulative counts, sum)``
    #: with one more count than bounds (the ``+Inf`` bucket).
    samples: list[tuple[tuple[str, ...], Any]] = field(default_factory=list)


class TelemetrySink(Protocol):
    """Where the engine hands telemetry (the observability module is one)."""

    def ingest(self, frame: bytes) -> None:
        """A binary ``OTLP`` / ``LOGS`` / ``MTRC`` frame, prefix included."""

    def worker_metrics(self, worker_id: str) -> Optional[dict[str, Any]]:
        """A worker's ``latest_metrics`` (its recent ``iii.worker.*`` gauges), or ``None``."""

    def trace_call(
        self, function_id: str, traceparent: str, baggage: Optional[str], on_result: Any
    ) -> tuple[Any, str]:
        """A built-in is called with a ``traceparent``: returns the ``on_result`` to answer
        through (it records the engine's span of the call) and the ``traceparent`` of the calls
        the engine makes for it (that span's; the caller's when no span is kept)."""


class Host(Protocol):
    """What the engine offers its modules (``iii.engine.router.Router`` is one)."""

    #: The engine's data channels: a module makes channels and holds ends of them
    #: (:class:`ChannelWriterEnd`, :class:`ChannelReaderEnd`) while workers attach the others.
    channels: ChannelRegistry

    def add_function(
        self,
        function_id: str,
        handler: Handler,
        *,
        module: str,
        description: Optional[str] = None,
        request_format: Any = None,
        response_format: Any = None,
        metadata: Any = None,
    ) -> None:
        """Register an in-process function in ``default``."""

    def add_trigger_type(
        self,
        type_id: str,
        provider: Provider[Any],
        *,
        module: str,
        description: str,
        trigger_request_format: Any = None,
        call_request_format: Any = None,
    ) -> None:
        """Register an in-process trigger type in ``default``."""

    def invoke(
        self,
        namespace: str,
        function_id: str,
        data: bytes,
        metadata: bytes = b"",
        on_result: Optional[OnResult] = None,
        *,
        timeout_ms: int,
        batched: bool = True,
    ) -> None:
        """Call a function; ``on_result`` gets its answer, or a ``TIMEOUT`` error once
        ``timeout_ms`` has passed (the call is then forgotten: a late answer is dropped).
        ``batched=False``: the call is written now, not with others at the end of the loop
        turn (the caller knows no other comes)."""

    def find_function(self, namespace: str, function_id: str) -> Any:
        """The function at ``(namespace, function_id)``, or ``None``."""

    def serve_http_functions(self, make_handler: Callable[[str, Any], Handler]) -> None:
        """Serve functions registered with an ``invocation`` (``iii-http-functions``):
        ``make_handler(function_id, invocation)`` returns their handler or raises
        :class:`EngineError` to refuse the registration."""

    def later(self, callback: Callable[[], None]) -> None:
        """Run ``callback`` once the message being handled is done (fan-out after a write)."""

    def now_ms(self) -> int:
        """The engine's monotonic clock, in milliseconds (what deadlines are measured on)."""

    def new_id(self) -> str:
        """A fresh unique id."""

    def set_telemetry(self, sink: TelemetrySink) -> None:
        """Receive the telemetry the engine gets and sees (one sink per engine)."""

    def add_metric_source(self, read: Callable[[], list[MetricFamily]]) -> None:
        """Report metrics: ``read`` is called at each scrape of the metrics page."""

    def metric_families(self) -> list[MetricFamily]:
        """The engine's own metrics and every source's, as of now."""

    def engine_stats(self) -> dict[str, Any]:
        """Process-lifetime counters: ``{"invocations": {...}, "workers": {...}}``
        (``engine::metrics::list``'s ``engine_metrics``)."""

    # Several engines as one (``iii-cluster``): what a cluster module needs of its engine. The
    # module does the I/O (Redis, the links it opens); the router routes, sans-I/O.

    def on_listening(self, callback: Callable[[list[str]], None]) -> None:
        """``callback(urls)`` once the worker listeners are bound (their ``ws://`` URLs)."""

    def watch_registry(self, callback: Callable[[], None]) -> None:
        """``callback()`` after this engine's workers or functions changed."""

    def registry_snapshot(self) -> dict[str, Any]:
        """This engine's ``workers``, worker-owned ``functions`` and ``triggers``, as rows."""

    def accept_peers(self, token: Optional[str]) -> None:
        """Accept links from other engines presenting ``token`` on the worker listener."""

    def set_cluster_view(self, view: Any) -> None:
        """The other engines' workers and triggers for the ``engine::*`` lists (see
        :mod:`iii.engine.functions`)."""

    def set_remote_functions(self, engine_id: str, write: Callable[[bytes], None], functions: list[dict[str, Any]]) -> None:
        """Engine ``engine_id`` owns ``functions`` (rows), its calls written with ``write``."""

    def drop_engine(self, engine_id: str) -> None:
        """Engine ``engine_id`` is gone: its functions leave, calls to it are stopped."""

    def remote_answer(self, engine_id: str, frame: bytes) -> None:
        """A frame that came on this engine's link to engine ``engine_id``."""

    def join_batch(self, flushable: Any) -> bool:
        """``True`` if the engine is handling a read of several frames: ``flushable.flush()``
        then runs once it is done (write then); ``False``: write now."""

    def hold_writes(self) -> None:
        """More frames of one read are coming: write what they cause once, at the turn's end."""

    def fire_workers_available(self, event: str, worker_id: str) -> None:
        """Fire ``engine::workers-available`` (a worker of another engine came or went)."""


class RunningModule(Protocol):
    """What a module's ``install`` returns: the engine awaits ``start`` before it listens and
    ``stop`` when it stops (a module with nothing to do there inherits :class:`Running`)."""

    async def start(self) -> None: ...

    async def stop(self) -> None: ...


class Running:
    """A :class:`RunningModule` with nothing to start or stop."""

    async def start(self) -> None:
        return None

    async def stop(self) -> None:
        return None


@dataclass(frozen=True)
class BuiltinModule:
    """A row of the module table: how ``config.yaml`` names a module and how it is installed."""

    #: The ``config.yaml`` entry name (``iii-state``); the name without ``iii-`` works too.
    name: str
    description: str
    #: The msgspec Struct its entry's ``config`` decodes into.
    config_type: type
    install: Callable[[Host, Any], RunningModule]
    #: Installed only when ``config.yaml`` has an entry for it (``iii-bridge``); the others
    #: always run, with their defaults when they have no entry.
    opt_in: bool = False

    @property
    def aliases(self) -> tuple[str, ...]:
        return (self.name, self.name.removeprefix("iii-"))


def parse_input(function_id: str, data: Any, input_type: type) -> Any:
    """Validate a built-in's input; ``null`` reads as ``{}`` and unknown keys are ignored."""
    try:
        return msgspec.convert({} if data is None else data, input_type)
    except msgspec.ValidationError as exc:
        raise EngineError(
            ErrorCode.DESERIALIZATION_ERROR,
            f"Failed to deserialize input for {function_id}: {exc}",
        ) from None


def json_schema(struct_type: type, *, required: tuple[str, ...] = ()) -> dict[str, Any]:
    """The JSON schema of what ``struct_type`` validates (a trigger config, a function's input),
    made by msgspec from the type itself, with the type's own definition at the top.

    ``required`` names fields the Struct lets be absent but a check after it refuses without
    (with a clearer message than the decoder's): the schema says they are required.
    """
    schema = msgspec.json.schema(struct_type)
    definitions = schema.pop("$defs", {})
    reference = schema.pop("$ref", None)
    if reference is not None:
        schema = dict(definitions.pop(reference.rsplit("/", 1)[-1]))
        if definitions:  # types it refers to stay where their "$ref"s point
            schema["$defs"] = definitions
    if required:
        schema["required"] = sorted(set(schema.get("required", ())) | set(required))
    return schema


class KindCounts(dict):
    """Bad input of one client: kind -> how many times it came, so that each kind is logged only
    the first time."""

    def first(self, kind: Any) -> bool:
        """Count one more of ``kind``; ``True`` the first time (log it then)."""
        seen = self.get(kind, 0)
        self[kind] = seen + 1
        return not seen

    @property
    def unlogged(self) -> int:
        """How many were only counted."""
        return sum(self.values()) - len(self)


class Scheduler(Protocol):
    """Wall-clock time and timers (the engine's loop; tests pass a fake)."""

    def time(self) -> float: ...

    def call_later(self, delay: float, callback: Callable[[], None]) -> Any: ...


class LoopScheduler:
    """:class:`Scheduler` on the running asyncio loop (delays of a second or more through the
    engine's ticker: they do not put a timeout on every wait of the loop)."""

    def time(self) -> float:
        return time.time()

    def call_later(self, delay: float, callback: Callable[[], None]) -> Any:
        return ticker.call_later(delay, callback)


class Provider(Generic[Config]):
    """An in-process trigger type: validates each binding's config and keeps the valid ones.

    Args:
        host: the engine.
        config_type: the msgspec Struct a binding's config decodes into.
        timeout_ms: the deadline of each call it makes.
        check: further validation; returns a refusal message or ``None``.
    """

    def __init__(
        self,
        host: Host,
        config_type: type[Config],
        timeout_ms: int,
        check: Optional[Callable[[Config], Optional[str]]] = None,
    ) -> None:
        self.host = host
        self.timeout_ms = timeout_ms
        self._decoder = msgspec.json.Decoder(config_type)
        self._check = check
        #: binding id -> (binding, its parsed config)
        self.bindings: dict[str, tuple[Binding, Config]] = {}

    def register(self, binding: Binding) -> Optional[str]:
        try:
            config = self._decoder.decode(binding.config if binding.config not in (b"", b"null") else b"{}")
        except msgspec.DecodeError as exc:
            return f"Invalid trigger config: {exc}"
        refusal = self._check(config) if self._check is not None else None
        if refusal is None:
            self.bindings[binding.id] = (binding, config)
        return refusal

    def unregister(self, binding: Binding) -> None:
        self.bindings.pop(binding.id, None)

    def fire(
        self,
        binding: Binding,
        payload: bytes,
        condition_function_id: Optional[str] = None,
        *,
        with_metadata: bool = True,
        on_done: Optional[OnResult] = None,
    ) -> None:
        """Call the bound function with ``payload``, each call with this provider's deadline.

        The one rule for conditions: with a condition function, that is called first (binding
        namespace, no metadata) with the same payload, and the bound function runs unless it
        answers exactly ``false``. ``on_done(result, error)``, if given, runs once it is all
        over: with the function's answer, or with ``(b"false", None)`` when the condition said
        no, or with the condition's error (the function was then not called). Errors are logged.
        """
        host = self.host
        metadata = binding.metadata if with_metadata and binding.metadata else b""

        def answered(result: bytes, error: Optional[ErrorBody]) -> None:
            if error is not None:
                log.warning("trigger %s: %s failed: %s", binding.id, binding.function_id, error.message)
            if on_done is not None:
                on_done(result, error)

        def call_function() -> None:
            host.invoke(
                binding.namespace, binding.function_id, payload, metadata,
                on_result=answered, timeout_ms=self.timeout_ms,
            )

        if not condition_function_id:
            call_function()
            return

        def after_condition(passed: bool, error: Optional[ErrorBody]) -> None:
            if passed:
                call_function()
                return
            if error is not None:
                log.warning(
                    "trigger %s: condition %s failed, %s not called: %s",
                    binding.id, condition_function_id, binding.function_id, error.message,
                )
            if on_done is not None:
                on_done(b"false" if error is None else b"null", error)

        check_condition(
            host, binding.namespace, condition_function_id, payload, after_condition, timeout_ms=self.timeout_ms
        )


def check_condition(
    host: Host,
    namespace: str,
    function_id: str,
    payload: bytes,
    then: Callable[[bool, Optional[ErrorBody]], None],
    *,
    timeout_ms: int,
) -> None:
    """The one rule for condition functions: called with the event's payload (no metadata), the
    event goes on unless the condition answers exactly ``false``; a failed condition (timeout
    included) is no pass. ``then(passed, error)`` gets the outcome."""

    def answered(result: bytes, error: Optional[ErrorBody]) -> None:
        then(error is None and result.strip() != b"false", error)

    host.invoke(namespace, function_id, payload, b"", on_result=answered, timeout_ms=timeout_ms)


def condition_passes(
    host: Host, namespace: str, function_id: str, payload: bytes, *, timeout_ms: int
) -> asyncio.Future:
    """:func:`check_condition` from a coroutine: the future resolves to ``(passed, error)``."""
    future = asyncio.get_running_loop().create_future()

    def then(passed: bool, error: Optional[ErrorBody]) -> None:
        if not future.done():  # the awaiting coroutine may be gone (its request was cancelled)
            future.set_result((passed, error))

    check_condition(host, namespace, function_id, payload, then, timeout_ms=timeout_ms)
    return future


def call(
    host: Host, namespace: str, function_id: str, payload: bytes, metadata: bytes = b"", *, timeout_ms: int
) -> asyncio.Future:
    """Call a function from a coroutine: the future resolves to ``(decoded result, error)``; at the
    deadline the error is ``TIMEOUT``."""
    future = asyncio.get_running_loop().create_future()

    def answered(result: bytes, error: Optional[ErrorBody]) -> None:
        if not future.done():  # the awaiting coroutine may be gone (its request was cancelled)
            future.set_result((None if error is not None else codec.decode_json(result), error))

    host.invoke(namespace, function_id, payload, metadata, on_result=answered, timeout_ms=timeout_ms)
    return future
