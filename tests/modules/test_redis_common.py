"""The shared Redis pieces, against a real redis-server: start-up errors and the subscriber."""

from __future__ import annotations

import asyncio
import socket

import pytest

from iii.modules._redis import RedisUnavailable, Subscriber, connect


async def test_connect_refused_names_the_url():
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        url = f"redis://127.0.0.1:{probe.getsockname()[1]}/0"
    with pytest.raises(RedisUnavailable, match=f"Failed to connect to Redis at {url}"):
        await connect(url)


async def test_subscriber_delivers_to_every_handler_and_survives_a_restart(redis_server):
    client = await connect(redis_server.url)
    subscriber = Subscriber(redis_server.url)
    await subscriber.start()
    first, second = asyncio.Queue(), asyncio.Queue()
    reconnected = asyncio.Event()

    async def mark_reconnected() -> None:
        reconnected.set()

    subscriber.on_reconnect(mark_reconnected)
    try:
        await subscriber.subscribe("topic", first.put_nowait)
        await subscriber.subscribe("topic", second.put_nowait)
        await client.publish("topic", b"one")
        assert await asyncio.wait_for(first.get(), 5) == b"one"
        assert await asyncio.wait_for(second.get(), 5) == b"one"

        await subscriber.unsubscribe("topic", second.put_nowait)
        redis_server.restart()
        await asyncio.wait_for(reconnected.wait(), 10)
        await client.publish("topic", b"two")
        assert await asyncio.wait_for(first.get(), 5) == b"two"
        assert second.empty()
    finally:
        await subscriber.close()
        await client.aclose()


async def watched_subscriber(url: str) -> tuple[Subscriber, asyncio.Queue, asyncio.Event]:
    """A started subscriber, a queue for what it receives, and an event set when it reconnects."""
    subscriber = Subscriber(url)
    await subscriber.start()
    reconnected = asyncio.Event()

    async def mark_reconnected() -> None:
        reconnected.set()

    subscriber.on_reconnect(mark_reconnected)
    return subscriber, asyncio.Queue(), reconnected


async def test_subscriber_stays_connected_through_silence(redis_server):
    """Nothing is published for longer than the command timeout: the blocking read must not time
    out into a reconnection that would drop messages."""
    from iii.modules import _redis

    client = await connect(redis_server.url)
    subscriber, received, reconnected = await watched_subscriber(redis_server.url)
    try:
        await subscriber.subscribe("quiet", received.put_nowait)
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(reconnected.wait(), _redis.COMMAND_TIMEOUT_S + 1)
        await client.publish("quiet", b"late")
        assert await asyncio.wait_for(received.get(), 5) == b"late"
    finally:
        await subscriber.close()
        await client.aclose()


async def test_subscriber_reconnects_after_any_failure_of_its_read(redis_server):
    """A dying connection may raise what is neither a RedisError nor an OSError (asyncio's
    IncompleteReadError is an EOFError): the subscriber must reconnect, not end."""
    subscriber, received, reconnected = await watched_subscriber(redis_server.url)
    client = await connect(redis_server.url)
    try:
        await subscriber.subscribe("topic", received.put_nowait)

        async def broken_read(**_: object) -> None:
            raise EOFError("the connection went away mid-reply")

        subscriber._pubsub.get_message = broken_read  # the read after the current one fails
        await asyncio.wait_for(reconnected.wait(), 10)
        await client.publish("topic", b"after")
        assert await asyncio.wait_for(received.get(), 5) == b"after"
    finally:
        await subscriber.close()
        await client.aclose()
