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


async def make_node(tmp_path, **cfg) -> Node:
    node = Node(HubConfig(jwt_secret=SECRET, **cfg), SqliteMessageStore(str(tmp_path / "db.sqlite3")), MemoryBroker())
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
