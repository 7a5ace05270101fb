"""The node without sockets: in-memory connection handles, the embedded SQLite store and
the in-process broker."""

from __future__ import annotations

import asyncio
import uuid

import orjson

from chathub.broker.memory import MemoryBroker
from chathub.config import HubConfig
from chathub.core.hub import MESSAGE, Conn
from chathub.server.node import Node
from chathub.store.sqlite import SqliteMessageStore

SECRET = "node-test-secret-0123456789abcdefghijkl"


class FakeHandle:
    """Records what the node writes; stands in for the picows listener."""

    def __init__(self) -> None:
        self.last_rx = 0.0
        self.frames: list[tuple[str, bytes, int]] = []
        self.closed: tuple[int, str] | None = None

    def send_text(self, payload: bytes, kind: int) -> None:
        self.frames.append(("text", payload, kind))

    def send_binary(self, payload: bytes, kind: int) -> None:
        self.frames.append(("binary", payload, kind))

    def close(self, code: int, reason: str) -> None:
        self.closed = (code, reason)

    def ping(self) -> None:
        pass

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def events(self, ev: str | None = None) -> list[dict]:
        out = [orjson.loads(p) for t, p, _ in self.frames if t == "text"]
        return [e for e in out if ev is None or e.get("ev") == ev]


async def make_node(tmp_path, broker=None, **cfg) -> Node:
    node = Node(HubConfig(jwt_secret=SECRET, **cfg), SqliteMessageStore(str(tmp_path / "db.sqlite3")),
                broker if broker is not None else MemoryBroker())
    await node.store.open()
    return node


async def settle() -> None:
    for _ in range(20):
        await asyncio.sleep(0.01)


async def two_in_room(node: Node) -> tuple[FakeHandle, FakeHandle, Conn, Conn]:
    """Users 1 and 2 connected and joined to room "r": their handles and connections."""
    a, b = FakeHandle(), FakeHandle()
    ca = node.open(a, token=node.token_for(1))
    cb = node.open(b, token=node.token_for(2))
    node.on_text(ca, b'{"op":"join","room":"r","id":"j"}')
    node.on_text(cb, b'{"op":"join","room":"r","id":"j"}')
    await settle()
    return a, b, ca, cb


def test_multicast_reaches_every_connection_of_listed_users(tmp_path):
    async def go():
        node = await make_node(tmp_path)
        handles = {}
        for uid, n in ((1, 2), (2, 1), (3, 1)):
            for i in range(n):
                h = FakeHandle()
                node.open(h, token=node.token_for(uid))
                handles[(uid, i)] = h
        other_tenant = FakeHandle()
        node.open(other_tenant, token=node.token_for(1, 5))
        await node.multicast(0, [1, 2, 1], {"ev": "announcement", "text": "maintenance at 5"})
        for key in ((1, 0), (1, 1), (2, 0)):
            assert handles[key].events("announcement") == [{"ev": "announcement", "text": "maintenance at 5"}]
        assert handles[(3, 0)].events("announcement") == []
        assert other_tenant.events("announcement") == []
        await node.store.close()

    asyncio.run(go())


def test_send_is_acked_after_commit_and_fanned_out_once(tmp_path):
    async def go():
        node = await make_node(tmp_path)
        a, b, ca, _ = await two_in_room(node)
        node.on_text(ca, b'{"op":"send","room":"r","text":"hi","id":2}')
        await settle()
        reply = [e for e in a.events() if e.get("id") == 2][0]
        assert reply["ok"] and reply["seq"] == 1
        msgs = b.events("message")
        assert len(msgs) == 1 and msgs[0]["text"] == "hi" and msgs[0]["seq"] == 1
        assert a.events("message") == []
        page = await node.store.history(0, "r")
        assert [m.text for m in page.messages] == ["hi"]
        assert all(kind == MESSAGE for _, _, kind in b.frames if b"message" in _)
        await node.store.close()

    asyncio.run(go())


def test_store_down_answers_unavailable_never_acks(tmp_path):
    async def go():
        node = await make_node(tmp_path)
        a = FakeHandle()
        ca = node.open(a, token=node.token_for(1))
        node.on_text(ca, b'{"op":"join","room":"r","id":1}')
        await settle()
        await node.store.close()  # the store is gone
        node.on_text(ca, b'{"op":"send","room":"r","text":"lost?","id":2}')
        await settle()
        reply = [e for e in a.events() if e.get("id") == 2][0]
        assert reply["ok"] is False and reply["error"]["code"] == "unavailable"
        # typing needs no storage and still works
        node.on_text(ca, b'{"op":"typing","room":"r","state":"start","id":3}')
        assert [e for e in a.events() if e.get("id") == 3][0]["ok"] is True

    asyncio.run(go())


def test_gzip_clients_get_one_shared_compressed_frame(tmp_path):
    import gzip

    async def go():
        node = await make_node(tmp_path)
        sender = FakeHandle()
        cs = node.open(sender, token=node.token_for(1))
        zs = [FakeHandle() for _ in range(3)]
        plain = FakeHandle()
        for i, h in enumerate(zs):
            node.open(h, token=node.token_for(10 + i), gzip=True)
        node.open(plain, token=node.token_for(20))
        for c in list(node.hub.conns.values()):
            node.on_text(c, b'{"op":"join","room":"z"}')
        await settle()
        big = "x" * 3000
        node.on_text(cs, orjson.dumps({"op": "send", "room": "z", "text": big}))
        await settle()
        blobs = [p for h in zs for t, p, _ in h.frames if t == "binary"]
        assert len(blobs) == 3 and blobs[0] is blobs[1] is blobs[2]  # compressed once
        assert orjson.loads(gzip.decompress(blobs[0]))["text"] == big
        assert plain.events("message")[0]["text"] == big
        await node.store.close()

    asyncio.run(go())


def test_a_burst_of_sends_is_one_store_group_and_a_read_after_it_sees_them(tmp_path):
    """Sends of one connection are handed to the store as they are read, so a burst
    pipelined by a client commits as one group; a history right behind them waits for
    their commit and sees all of them."""

    async def go():
        node = await make_node(tmp_path)
        a, b, ca, _ = await two_in_room(node)
        groups0 = node.store.stats["groups"]
        for i in range(16):
            node.on_text(ca, b'{"op":"send","room":"r","text":"m%d","id":%d}' % (i, i))
        node.on_text(ca, b'{"op":"history","room":"r","limit":50,"id":"h"}')
        await settle()
        assert node.store.stats["groups"] - groups0 == 1
        replies = {e["id"]: e for e in a.events() if "id" in e}
        assert [replies[i]["seq"] for i in range(16)] == list(range(1, 17))
        # message ids are UUIDv7, time-ordered: increasing with seq (index locality)
        ids = [replies[i]["msg_id"] for i in range(16)]
        assert all(len(x) == 32 and uuid.UUID(hex=x).version == 7 for x in ids)
        assert ids == sorted(ids) and len(set(ids)) == 16
        assert [m["text"] for m in replies["h"]["messages"]] == [f"m{i}" for i in range(16)]
        assert [m["seq"] for m in b.events("message")] == list(range(1, 17))
        await node.store.close()

    asyncio.run(go())


class AwaitedBroker:
    """An in-process broker whose publish must be awaited (no ``publish_nowait``), as a
    network broker's: the node publishes and acks from a task then. ``fail`` makes every
    publish raise BrokerUnavailable."""

    def __init__(self, fail: bool = False) -> None:
        self.inner = MemoryBroker()
        self.fail = fail
        self.published: list[str] = []

    def set_handler(self, handler) -> None:
        self.inner.set_handler(handler)

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        await self.inner.close()

    async def publish(self, channel: str, payload: bytes) -> None:
        from chathub.broker.base import BrokerUnavailable

        await asyncio.sleep(0.001)  # a round trip
        if self.fail:
            raise BrokerUnavailable("down")
        self.published.append(channel)
        self.inner.publish_nowait(channel, payload)

    def subscribe(self, channel: str) -> None:
        self.inner.subscribe(channel)

    def unsubscribe(self, channel: str) -> None:
        self.inner.unsubscribe(channel)


def test_with_a_broker_that_must_be_awaited_the_ack_follows_the_publish(tmp_path):
    async def go():
        broker = AwaitedBroker()
        node = await make_node(tmp_path, broker)
        a, b, ca, _ = await two_in_room(node)
        for i in range(3):
            node.on_text(ca, b'{"op":"send","room":"r","text":"m%d","id":%d}' % (i, 10 + i))
        await settle()
        acks = [e for e in a.events() if e.get("id") in (10, 11, 12)]
        assert [(e["ok"], e["seq"]) for e in acks] == [(True, 1), (True, 2), (True, 3)]
        assert [m["text"] for m in b.events("message")] == ["m0", "m1", "m2"]
        assert broker.published.count("0/r") == 3
        assert node._inflight.get(ca.id, 0) == 0 and not node._append_futs and not node._tasks
        await node.stop()

    asyncio.run(go())


def test_a_failed_publish_is_answered_unavailable_not_acked(tmp_path):
    async def go():
        broker = AwaitedBroker()
        node = await make_node(tmp_path, broker)
        a, b, ca, _ = await two_in_room(node)
        broker.fail = True
        node.on_text(ca, b'{"op":"send","room":"r","text":"lost?","id":7}')
        await settle()
        reply = [e for e in a.events() if e.get("id") == 7][0]
        assert reply["ok"] is False and reply["error"]["code"] == "unavailable"
        assert b.events("message") == []
        assert node._inflight.get(ca.id, 0) == 0
        await node.stop()

    asyncio.run(go())


def test_an_answered_append_leaves_nothing_in_flight(tmp_path):
    """The in-process broker path (no task per message): after the acks, the
    connection's in-flight count and the pending appends are back to nothing."""

    async def go():
        node = await make_node(tmp_path, rate_limits=False)
        a, b, ca, _ = await two_in_room(node)
        for i in range(40):  # past MAX_INFLIGHT_PER_CONN: reading pauses, then resumes
            node.on_text(ca, b'{"op":"send","room":"r","text":"x","id":%d}' % (100 + i))
        await settle()
        assert len([e for e in a.events() if isinstance(e.get("id"), int) and e["id"] >= 100 and e.get("ok")]) == 40
        assert len(b.events("message")) == 40
        assert node._inflight.get(ca.id, 0) == 0 and not node._append_futs and not node._tasks
        assert node._pauses.get(ca.id, 0) == 0
        await node.stop()

    asyncio.run(go())


def test_heartbeat_plan_spreads_a_round_in_bounded_slices():
    from chathub.server.node import HEARTBEAT_SLICE, heartbeat_plan

    assert heartbeat_plan(0, 30.0) == (1, 0)
    assert heartbeat_plan(10, 30.0) == (1, 10)
    assert heartbeat_plan(10_000, 30.0) == (40, 250)
    for n in (1, 255, 256, 257, 5_000, 100_000):
        steps, size = heartbeat_plan(n, 30.0)
        assert size <= HEARTBEAT_SLICE and steps * size >= n > (steps - 1) * size
    # a short interval caps the steps (10 ms apart at least): the slices grow instead
    assert heartbeat_plan(100_000, 0.1) == (10, 10_000)


class PingHandle(FakeHandle):
    def __init__(self, pings: list) -> None:
        super().__init__()
        self.pings = pings

    def ping(self) -> None:
        self.pings.append((asyncio.get_running_loop().time(), self))

    def close(self, code: int, reason: str) -> None:
        if self.closed is None:  # the first close counts (stop() closes everyone again)
            self.closed = (code, reason)


def test_heartbeat_pings_everyone_in_slices_and_closes_the_silent(tmp_path):
    """600 connections, a 0.1 s interval: every connection is pinged each round, a step
    pings at most HEARTBEAT_SLICE of them, and one silent past connection_timeout is
    closed with 1001 instead of pinged."""
    from chathub.server.node import HEARTBEAT_SLICE

    async def go():
        now = [1000.0]
        node = Node(HubConfig(jwt_secret=SECRET, heartbeat_interval=0.1, connection_timeout=5.0),
                    SqliteMessageStore(str(tmp_path / "db.sqlite3")), MemoryBroker(), clock=lambda: now[0])
        await node.start()
        pings: list = []
        handles = [PingHandle(pings) for _ in range(600)]
        for i, h in enumerate(handles):
            h.last_rx = now[0]
            node.open(h, token=node.token_for(i + 1))
        silent = handles[7]
        silent.last_rx = now[0] - 6.0
        await asyncio.sleep(0.25)  # two rounds at least
        await node.stop()
        return handles, silent, pings

    handles, silent, pings = asyncio.run(go())
    assert silent.closed == (1001, "idle timeout")
    pinged = {id(h) for _, h in pings}
    assert all(id(h) in pinged for h in handles if h is not silent)
    assert id(silent) not in pinged
    per_iteration: dict[float, int] = {}
    for t, _ in pings:
        per_iteration[t] = per_iteration.get(t, 0) + 1
    assert max(per_iteration.values()) <= HEARTBEAT_SLICE
    assert len(per_iteration) >= 3  # 600 connections: three steps a round
