"""One conformance suite for every Broker implementation (see chathub/broker/base.py).

The in-process broker runs here; the Redis broker joins the parametrisation when it lands.
"""

from __future__ import annotations

import asyncio

import pytest

from chathub.broker.base import Broker
from chathub.broker.memory import MemoryBroker

IMPLEMENTATIONS = {"memory": MemoryBroker}


@pytest.fixture(params=sorted(IMPLEMENTATIONS))
def make_broker(request):
    return IMPLEMENTATIONS[request.param]


def collect(broker: Broker) -> list[tuple[str, bytes]]:
    got: list[tuple[str, bytes]] = []
    broker.set_handler(lambda ch, data: got.append((ch, data)))
    return got


async def drain() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


def test_implements_the_protocol(make_broker):
    assert isinstance(make_broker(), Broker)


def test_per_channel_order_and_publisher_included(make_broker):
    async def go():
        b = make_broker()
        await b.start()
        got = collect(b)
        b.subscribe("room/a")
        for i in range(100):
            await b.publish("room/a", b"%d" % i)
        await drain()
        assert [d for _, d in got] == [b"%d" % i for i in range(100)]
        await b.close()

    asyncio.run(go())


def test_only_subscribed_channels_and_at_most_once(make_broker):
    async def go():
        b = make_broker()
        await b.start()
        got = collect(b)
        await b.publish("room/x", b"before")  # nobody subscribed: lost, not queued
        b.subscribe("room/x")
        b.subscribe("room/x")  # idempotent: still delivered once
        await b.publish("room/x", b"one")
        await b.publish("room/y", b"other")
        await drain()
        b.unsubscribe("room/x")
        await b.publish("room/x", b"after")
        await drain()
        assert got == [("room/x", b"one")]
        await b.close()

    asyncio.run(go())


def test_binary_payloads_pass_unchanged(make_broker):
    async def go():
        b = make_broker()
        await b.start()
        got = collect(b)
        b.subscribe("c")
        payload = bytes(range(256)) * 10
        await b.publish("c", payload)
        await drain()
        assert got == [("c", payload)]
        await b.close()

    asyncio.run(go())
