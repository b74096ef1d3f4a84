"""What every Redis-backed module shares: the connection (redis-py's asyncio client on hiredis)
and one pub/sub subscriber connection that keeps its channels across a Redis restart.

redis-py with hiredis: the client the Redis project maintains, with a C reply parser, a connection
pool and pub/sub; writing our own RESP client would only repeat it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Awaitable, Callable, Optional

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff, NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

__all__ = ["CONNECT_TIMEOUT_S", "COMMAND_TIMEOUT_S", "RedisUnavailable", "Subscriber", "connect"]

log = logging.getLogger("iii.redis")

#: The original aborts start-up when Redis does not answer within 5 s; so do we.
CONNECT_TIMEOUT_S = 5.0
#: Every command has a deadline: a Redis that stops answering fails the call, not the engine.
COMMAND_TIMEOUT_S = 5.0
#: Reconnect backoff of the subscriber: from 50 ms, doubling, at most 2 s between attempts.
_BACKOFF_FIRST_S = 0.05
_BACKOFF_MAX_S = 2.0
#: The longest the subscriber's read waits before it looks at its connection again.
_WAKE_S = 1.0

MessageHandler = Callable[[bytes], None]


class RedisUnavailable(ConnectionError):
    """Redis did not answer at start-up (the message names the URL, as the original's does).

    An ``OSError``: the ``iii`` command reports it as it reports a listener that cannot bind."""


async def connect(url: str, *, timeout_s: float = CONNECT_TIMEOUT_S) -> aioredis.Redis:
    """A client for ``url`` that has answered a ``PING``.

    Commands on it time out after :data:`COMMAND_TIMEOUT_S`; a command that meets a dropped
    connection (Redis restarted) is retried on a new one, three times with backoff, then fails.

    Raises:
        RedisUnavailable: no answer within ``timeout_s``, or the connection was refused.
    """
    client = aioredis.Redis.from_url(
        url,
        socket_connect_timeout=timeout_s,
        socket_timeout=COMMAND_TIMEOUT_S,
        health_check_interval=30,
        retry=Retry(ExponentialBackoff(cap=1.0, base=0.05), 3),
        retry_on_error=[RedisConnectionError, RedisTimeoutError],
    )
    try:
        async with asyncio.timeout(timeout_s):
            await client.ping()
    except TimeoutError:
        await client.aclose()
        raise RedisUnavailable(
            f"Redis connection timed out after {timeout_s:g}s. Please ensure Redis is running at: {url}"
        ) from None
    except (RedisError, OSError) as error:
        await client.aclose()
        raise RedisUnavailable(f"Failed to connect to Redis at {url}: {error}") from None
    return client


class Subscriber:
    """One pub/sub connection for any number of channels, each with any number of handlers.

    When the connection drops it reconnects with backoff and subscribes to every channel again,
    then runs the ``on_reconnect`` callbacks (messages published meanwhile are gone: that is
    Redis pub/sub). Handlers run on the loop, in the order messages arrive; a handler that raises
    is logged and the others still run.
    """

    def __init__(self, url: str) -> None:
        # Its own client, without redis-py's silent retries: a lost connection must come back
        # through :meth:`_run`, which knows to resubscribe and to run the reconnect callbacks.
        self._client = aioredis.Redis.from_url(
            url, socket_connect_timeout=CONNECT_TIMEOUT_S, health_check_interval=30, retry=Retry(NoBackoff(), 0)
        )
        self._handlers: dict[bytes, list[MessageHandler]] = {}
        self._confirmations: dict[bytes, asyncio.Future[None]] = {}
        self._reconnect_callbacks: list[Callable[[], Awaitable[None]]] = []
        self._pubsub: Optional[aioredis.client.PubSub] = None
        self._task: Optional[asyncio.Task[None]] = None
        self._connected = asyncio.Event()

    async def start(self) -> None:
        """Open the connection; returns once it is up (bounded by the connect timeout)."""
        self._task = asyncio.get_running_loop().create_task(self._run(), name="iii-redis-subscriber")
        async with asyncio.timeout(CONNECT_TIMEOUT_S):
            await self._connected.wait()

    def on_reconnect(self, callback: Callable[[], Awaitable[None]]) -> None:
        """Run ``callback`` after each reconnection (e.g. to republish what Redis lost)."""
        self._reconnect_callbacks.append(callback)

    async def subscribe(self, channel: str, handler: MessageHandler) -> None:
        """Deliver ``channel``'s messages to ``handler``; returns once Redis confirmed the channel.

        Raises:
            TimeoutError: Redis did not confirm within the command timeout.
        """
        name = channel.encode()
        handlers = self._handlers.setdefault(name, [])
        handlers.append(handler)
        if len(handlers) > 1 or self._pubsub is None:
            return  # already subscribed, or the (re)connection subscribes it
        confirmed = self._confirmations.setdefault(name, asyncio.get_running_loop().create_future())
        await self._pubsub.subscribe(name)
        async with asyncio.timeout(COMMAND_TIMEOUT_S):
            await asyncio.shield(confirmed)

    async def unsubscribe(self, channel: str, handler: MessageHandler) -> None:
        """Stop delivering to ``handler``; the channel is left when its last handler goes."""
        name = channel.encode()
        handlers = self._handlers.get(name)
        if not handlers or handler not in handlers:
            return
        handlers.remove(handler)
        if not handlers:
            del self._handlers[name]
            if self._pubsub is not None:
                try:
                    await self._pubsub.unsubscribe(name)
                except (RedisError, OSError) as error:  # the reconnection will not resubscribe it
                    log.debug("redis unsubscribe %s: %s", channel, error)

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        if self._pubsub is not None:
            await self._pubsub.aclose()
        await self._client.aclose()

    async def _run(self) -> None:
        backoff = _BACKOFF_FIRST_S
        reconnecting = False
        while True:
            pubsub = self._client.pubsub()
            try:
                if self._handlers:
                    await pubsub.subscribe(*self._handlers)
                else:  # a pub/sub connection opens with its first command
                    await pubsub.connect()
                self._pubsub = pubsub
                self._connected.set()
                if reconnecting:
                    log.info("redis subscriber reconnected (%d channels)", len(self._handlers))
                    for callback in self._reconnect_callbacks:
                        try:
                            await callback()
                        except Exception:  # one failing callback must not stop the subscriber
                            log.exception("redis reconnect callback failed")
                backoff = _BACKOFF_FIRST_S
                while True:
                    # Woken at least every second, so that redis-py's health check (a PING after
                    # 30 s of silence) runs: a connection that died without a word is found.
                    message = await pubsub.get_message(timeout=_WAKE_S)
                    if message is not None:
                        self._dispatch(message)
            except asyncio.CancelledError:
                raise
            except Exception as error:  # whatever a dying connection raises: this task must go on
                log.warning("redis subscriber lost its connection (%r); retrying in %.2fs", error, backoff)
            self._pubsub = None
            with contextlib.suppress(Exception):  # it is being given up anyway
                await pubsub.aclose()
            reconnecting = True
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, _BACKOFF_MAX_S)

    def _dispatch(self, message: dict) -> None:
        kind, channel = message["type"], message["channel"]
        if kind == "subscribe":
            confirmed = self._confirmations.pop(channel, None)
            if confirmed is not None and not confirmed.done():
                confirmed.set_result(None)
            return
        if kind != "message":
            return
        for handler in list(self._handlers.get(channel, ())):
            try:
                handler(message["data"])
            except Exception:  # one bad handler must not silence the channel
                log.exception("redis message handler for %s failed", channel.decode(errors="replace"))
