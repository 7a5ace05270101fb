"""Conformance suite: every guarantee of chathub.store.base, for every implementation.

Run: ``python -m pytest tests/store -q`` (set CHATHUB_TEST_POSTGRES_DSN for the
PostgreSQL half).
"""

from __future__ import annotations

import asyncio
import os
import random

import pytest

from chathub.store import (
    AppendResult,
    AuditEntry,
    Conflict,
    InvalidMessage,
    MessageStore,
    NewMessage,
    NotFound,
    PostgresMessageStore,
    RoomRecord,
    RoomStore,
    Sanction,
    SqliteMessageStore,
    StoreAdmin,
    StoreUnavailable,
    migrate,
    open_store,
)
from chathub.store._common import MAX_PAGE

T = 1  # default tenant
_counter = iter(range(1, 10**9))


def nm(room: str = "r", sender: int = 1, text: str | None = None, *, tenant: int = T, cid: str | None = None,
       ts: int | None = None, reply_to: int | None = None, msg_id: str | None = None) -> NewMessage:
    n = next(_counter)
    return NewMessage(
        tenant_id=tenant, room=room, sender=sender, text=text if text is not None else f"message {n}",
        ts=ts if ts is not None else 1_700_000_000_000 + n, msg_id=msg_id or f"m{n}-{random.random()}",
        client_msg_id=cid, reply_to=reply_to,
    )


async def all_history(store, room: str, tenant: int = T) -> list:
    """Every message of a room, paging forward with after_seq."""
    out, after = [], 0
    while True:
        page = await store.history(tenant, room, after_seq=after, limit=97)
        out += page.messages
        if not page.has_more:
            return out
        after = page.messages[-1].seq


def seqs(msgs) -> list[int]:
    return [m.seq for m in msgs]


# ------------------------------------------------------------------------------- basics
def test_implements_protocols(store):
    assert isinstance(store, MessageStore)
    assert isinstance(store, RoomStore)
    assert isinstance(store, StoreAdmin)


def test_migrations_idempotent_and_concurrent(store_factory, run):
    async def body():
        # Two instances start at once on an empty database/schema.
        a, b = await asyncio.gather(store_factory(), store_factory())
        assert await a.migrate() == []
        assert await migrate(b) == []
        r = await a.append(nm("x"))
        assert r.message.seq == 1
        assert (await b.append(nm("x"))).message.seq == 2

    run(body())

def test_upgrade_to_0002_keeps_stored_client_msg_ids_idempotent(store_factory, run, monkeypatch):
    """A database written under 0001 (idempotency index keyed sender first) is upgraded
    in place by 0002 (keyed client_msg_id first): what was stored before still answers a
    repeat as a duplicate, and the same client id stays free for another sender/room."""
    import chathub.store.migrations as migrations_mod

    full = migrations_mod.load

    async def body():
        monkeypatch.setattr(migrations_mod, "load", lambda dialect: full(dialect)[:1])
        old = await store_factory()
        first = await old.append(nm("x", sender=7, cid="c-1"))
        await old.append(nm("x", sender=8, cid="c-2"))
        monkeypatch.setattr(migrations_mod, "load", full)
        new = await store_factory()  # applies 0002 on open
        assert await new.migrate() == []
        again = await new.append(nm("x", sender=7, cid="c-1"))
        assert again.duplicate and again.message.seq == first.message.seq
        assert again.message.msg_id == first.message.msg_id
        other = await new.append(nm("x", sender=8, cid="c-1"))  # same id, another sender
        assert not other.duplicate and other.message.seq == 3
        elsewhere = await new.append(nm("y", sender=7, cid="c-1"))  # same id, another room
        assert not elsewhere.duplicate and elsewhere.message.seq == 1
        assert seqs(await all_history(new, "x")) == [1, 2, 3]
        assert await _client_msg_id_index_columns(store_factory) == ["tenant_id", "room", "client_msg_id", "sender"]

    run(body())


async def _client_msg_id_index_columns(factory) -> list[str]:
    if factory.kind.startswith("sqlite"):
        import sqlite3

        db = sqlite3.connect(factory.path)
        try:
            return [r[2] for r in db.execute("PRAGMA index_info(messages_client_msg_id)")]
        finally:
            db.close()
    import asyncpg

    conn = await asyncpg.connect(factory.dsn)
    try:
        rows = await conn.fetch(
            "SELECT a.attname FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid "
            "JOIN pg_namespace n ON n.oid = c.relnamespace "
            "CROSS JOIN LATERAL unnest(i.indkey) WITH ORDINALITY AS k(attnum, ord) "
            "JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum "
            "WHERE c.relname = 'messages_client_msg_id' AND n.nspname = $1 ORDER BY k.ord",
            factory.schema,
        )
        return [r[0] for r in rows]
    finally:
        await conn.close()



def test_empty_room(store, run):
    async def body():
        assert await store.last_seq(T, "none") == 0
        page = await store.history(T, "none")
        assert page.messages == [] and page.has_more is False
        rp = await store.replay(T, "none", 0, 10)
        assert rp.messages == [] and rp.complete and rp.last_seq == 0
        assert await store.unread_count(T, "none", 1) == 0

    run(body())


def test_append_returns_stored_message(store, run):
    async def body():
        m = nm("r", 7, "hello", cid="c1", reply_to=None)
        r = await store.append(m)
        assert isinstance(r, AppendResult) and not r.duplicate
        s = r.message
        assert (s.tenant_id, s.room, s.seq, s.msg_id, s.sender, s.text, s.ts, s.client_msg_id) == (
            T, "r", 1, m.msg_id, 7, "hello", m.ts, "c1")
        assert s.edited_at is None and s.deleted is False
        r2 = await store.append(nm("r", 8, "reply", reply_to=1))
        assert r2.message.seq == 2 and r2.message.reply_to == 1
        assert await all_history(store, "r") == [s, r2.message]
        assert await store.last_seq(T, "r") == 2

    run(body())


def test_unicode_and_large_text(store, run):
    async def body():
        texts = ["héllo wörld ✓ 😀 中文", "x" * 100_000, "", "quote ' \" ; -- DROP TABLE messages"]
        for t in texts:
            await store.append(nm("u", text=t))
        assert [m.text for m in await all_history(store, "u")] == texts

    run(body())


# ------------------------------------------------------------------- seq under concurrency
def test_seq_gapless_under_200_concurrent_appends(store, run):
    async def body():
        rooms = [("a", 1), ("b", 1), ("c", 1), ("a", 2), ("d", 3)]
        msgs = [nm(rooms[i % len(rooms)][0], tenant=rooms[i % len(rooms)][1], sender=i % 13) for i in range(200)]
        results = await asyncio.gather(*(store.append(m) for m in msgs))
        for room, tenant in rooms:
            mine = [r.message for r, m in zip(results, msgs) if (m.room, m.tenant_id) == (room, tenant)]
            assert sorted(seqs(mine)) == list(range(1, len(mine) + 1))
            hist = await all_history(store, room, tenant)
            assert seqs(hist) == list(range(1, len(mine) + 1))
            assert {m.msg_id for m in hist} == {m.msg_id for m in mine}
            assert await store.last_seq(tenant, room) == len(mine)
        # returned messages equal what history says
        by_id = {}
        for room, tenant in rooms:
            by_id.update({m.msg_id: m for m in await all_history(store, room, tenant)})
        for r in results:
            assert by_id[r.message.msg_id] == r.message

    run(body())


def test_completion_in_seq_order(store, run):
    async def body():
        done: dict[str, list[int]] = {}
        submitted: dict[str, list[str]] = {}

        async def one(m):
            r = await store.append(m)
            done.setdefault(m.room, []).append(r.message.seq)
            return r

        tasks = []
        for i in range(300):
            m = nm(f"o{i % 3}")
            submitted.setdefault(m.room, []).append(m.msg_id)
            tasks.append(asyncio.ensure_future(one(m)))
            if i % 37 == 0:
                await asyncio.sleep(0)  # let some groups start while others queue
        results = await asyncio.gather(*tasks)
        for room, order in done.items():
            assert order == sorted(order), f"{room}: completions out of seq order"
            assert order == list(range(1, 101))
        # within one store instance, seq also follows call order per room
        for room, ids in submitted.items():
            got = {r.message.msg_id: r.message.seq for r in results if r.message.room == room}
            assert [got[i] for i in ids] == list(range(1, 101))

    run(body())


def test_two_instances_share_one_sequence(store_factory, run):
    async def body():
        a = await store_factory()
        b = await store_factory()
        msgs = [(a if i % 2 else b, nm("shared", sender=i)) for i in range(300)]
        res = await asyncio.gather(*(s.append(m) for s, m in msgs))
        assert sorted(r.message.seq for r in res) == list(range(1, 301))
        hist = await all_history(a, "shared")
        assert seqs(hist) == list(range(1, 301))
        assert seqs(await all_history(b, "shared")) == seqs(hist)

    run(body())


# ----------------------------------------------------------------------------- idempotence
def test_idempotent_client_msg_id_sequential(store, run):
    async def body():
        first = await store.append(nm("i", 5, "one", cid="abc"))
        again = await store.append(nm("i", 5, "changed text", cid="abc"))
        assert again.duplicate and again.message == first.message
        # same client_msg_id, other sender / other room / other tenant: distinct messages
        other_sender = await store.append(nm("i", 6, cid="abc"))
        other_room = await store.append(nm("j", 5, cid="abc"))
        other_tenant = await store.append(nm("i", 5, cid="abc", tenant=2))
        assert not other_sender.duplicate and other_sender.message.seq == 2
        assert not other_room.duplicate and other_room.message.seq == 1
        assert not other_tenant.duplicate and other_tenant.message.seq == 1
        assert seqs(await all_history(store, "i")) == [1, 2]

    run(body())


def test_idempotent_client_msg_id_concurrent(store, run):
    async def body():
        res = await asyncio.gather(*(store.append(nm("k", 9, f"try {i}", cid="same")) for i in range(60)))
        originals = [r for r in res if not r.duplicate]
        assert len(originals) == 1
        assert all(r.message == originals[0].message for r in res)
        # mixed with other traffic in the same groups
        res2 = await asyncio.gather(*(
            store.append(nm("k", i % 3, cid=f"c{i % 10}")) for i in range(90)
        ))
        assert sum(not r.duplicate for r in res2) == 30  # 3 senders x 10 ids
        hist = await all_history(store, "k")
        assert seqs(hist) == list(range(1, 32))
        assert len({(m.sender, m.client_msg_id) for m in hist}) == 31

    run(body())


def test_idempotent_across_two_instances(store_factory, run):
    async def body():
        a = await store_factory()
        b = await store_factory()
        jobs = []
        for i in range(100):
            cid = f"dup{i % 25}"
            jobs.append((a if i % 2 else b).append(nm("x2", 4, cid=cid)))
        res = await asyncio.gather(*jobs)
        assert sum(not r.duplicate for r in res) == 25
        hist = await all_history(a, "x2")
        assert seqs(hist) == list(range(1, 26))
        canon = {m.client_msg_id: m for m in hist}
        for r in res:
            assert r.message == canon[r.message.client_msg_id]

    run(body())


def test_retry_with_same_msg_id_is_idempotent(store, run):
    async def body():
        m = nm("mid")
        r1 = await store.append(m)
        r2 = await store.append(m)
        assert not r1.duplicate and r2.duplicate and r2.message == r1.message
        with pytest.raises(InvalidMessage):  # the same msg_id in another room is a caller bug
            await store.append(NewMessage(T, "elsewhere", 1, "x", 1, m.msg_id))
        assert seqs(await all_history(store, "mid")) == [1]
        assert await store.last_seq(T, "elsewhere") == 0

    run(body())


def test_invalid_message_does_not_poison_its_group(store, run):
    async def body():
        good = [nm("p") for _ in range(20)]
        bad = [nm("p", text="nul \x00 inside"), nm("p", text="\ud800"), nm("p", sender=1 << 70)]
        res = await asyncio.gather(*(store.append(m) for m in good[:10] + bad + good[10:]), return_exceptions=True)
        assert all(isinstance(r, InvalidMessage) for r in res[10:13])
        ok = [r for r in res if isinstance(r, AppendResult)]
        assert len(ok) == 20
        assert seqs(await all_history(store, "p")) == list(range(1, 21))

    run(body())


# ----------------------------------------------------------------------------- history
def test_history_paging(store, run):
    async def body():
        for _ in range(25):
            await store.append(nm("h"))
        latest = await store.history(T, "h", limit=10)
        assert seqs(latest.messages) == list(range(16, 26)) and latest.has_more
        p = await store.history(T, "h", before_seq=16, limit=10)
        assert seqs(p.messages) == list(range(6, 16)) and p.has_more
        p = await store.history(T, "h", before_seq=6, limit=10)
        assert seqs(p.messages) == [1, 2, 3, 4, 5] and not p.has_more
        p = await store.history(T, "h", before_seq=11, limit=10)
        assert seqs(p.messages) == list(range(1, 11)) and not p.has_more
        p = await store.history(T, "h", after_seq=0, limit=10)
        assert seqs(p.messages) == list(range(1, 11)) and p.has_more
        p = await store.history(T, "h", after_seq=15, limit=10)
        assert seqs(p.messages) == list(range(16, 26)) and not p.has_more
        p = await store.history(T, "h", after_seq=20, limit=10)
        assert seqs(p.messages) == list(range(21, 26)) and not p.has_more
        p = await store.history(T, "h", after_seq=25)
        assert p.messages == [] and not p.has_more
        p = await store.history(T, "h", after_seq=5, before_seq=9)
        assert seqs(p.messages) == [6, 7, 8] and not p.has_more
        p = await store.history(T, "h", after_seq=5, before_seq=20, limit=3)
        assert seqs(p.messages) == [6, 7, 8] and p.has_more
        p = await store.history(T, "h", limit=0)
        assert p.messages == [] and p.has_more
        p = await store.history(T, "h", limit=1000)
        assert seqs(p.messages) == list(range(1, 26)) and not p.has_more
        # full walk backwards == full walk forwards
        back, before = [], None
        while True:
            p = await store.history(T, "h", before_seq=before, limit=4)
            back = p.messages + back
            assert len(p.messages) <= 4
            if not p.has_more:
                break
            before = p.messages[0].seq
        assert back == await all_history(store, "h")

    run(body())


def test_history_is_bounded(store, run):
    async def body():
        await asyncio.gather(*(store.append(nm("big")) for _ in range(MAX_PAGE + 20)))
        p = await store.history(T, "big", limit=10**9)
        assert len(p.messages) == MAX_PAGE and p.has_more
        assert seqs(p.messages) == list(range(21, MAX_PAGE + 21))
        rp = await store.replay(T, "big", 0, 10**9)
        assert len(rp.messages) == MAX_PAGE and rp.complete and rp.last_seq == MAX_PAGE + 20

    run(body())


def test_replay(store, run):
    async def body():
        for _ in range(12):
            await store.append(nm("rp"))
        rp = await store.replay(T, "rp", 0, 100)
        assert seqs(rp.messages) == list(range(1, 13)) and rp.complete and rp.last_seq == 12
        rp = await store.replay(T, "rp", 7, 3)
        assert seqs(rp.messages) == [8, 9, 10] and rp.complete and rp.last_seq == 12
        rp = await store.replay(T, "rp", 12, 10)
        assert rp.messages == [] and rp.complete and rp.last_seq == 12
        rp = await store.replay(T, "rp", 50, 10)
        assert rp.messages == [] and rp.last_seq == 12

    run(body())


# ----------------------------------------------------------------------------- retention
def test_retention_is_off_by_default(store, run):
    async def body():
        for i in range(5):
            await store.append(nm("keep", ts=1000 + i))
        assert await store.apply_retention(10**13) == 0
        assert seqs(await all_history(store, "keep")) == [1, 2, 3, 4, 5]

    run(body())


def test_retention_by_count(store_factory, run):
    async def body():
        store = await store_factory(retention_max_per_room=5)
        for _ in range(12):
            await store.append(nm("c1"))
        for _ in range(3):
            await store.append(nm("c2"))
        for _ in range(8):
            await store.append(nm("c1", tenant=2))
        removed = await store.apply_retention(1)
        assert removed == 7 + 3
        assert seqs(await all_history(store, "c1")) == [8, 9, 10, 11, 12]
        assert seqs(await all_history(store, "c2")) == [1, 2, 3]
        assert seqs(await all_history(store, "c1", 2)) == [4, 5, 6, 7, 8]
        rp = await store.replay(T, "c1", 0, 100)
        assert not rp.complete and seqs(rp.messages) == [8, 9, 10, 11, 12] and rp.last_seq == 12
        assert not (await store.replay(T, "c1", 6, 100)).complete
        rp = await store.replay(T, "c1", 7, 100)
        assert rp.complete and seqs(rp.messages) == [8, 9, 10, 11, 12]
        assert (await store.replay(T, "c2", 0, 100)).complete
        p = await store.history(T, "c1", before_seq=9, limit=10)
        assert seqs(p.messages) == [8] and not p.has_more
        assert await store.apply_retention(2) == 0
        assert (await store.append(nm("c1"))).message.seq == 13  # seq goes on
        assert await store.apply_retention(3) == 1

    run(body())


def test_retention_by_age(store_factory, run):
    async def body():
        store = await store_factory(retention_max_age_s=10)
        now = 1_000_000_000
        # old, old, old, young, OLD (out of order), young
        ts = [now - 60_000, now - 30_000, now - 11_000, now - 9_000, now - 50_000, now - 1_000]
        for t in ts:
            await store.append(nm("age", ts=t))
        for t in (now - 20_000, now - 15_000):
            await store.append(nm("age2", ts=t))
        await store.append(nm("fresh", ts=now))
        removed = await store.apply_retention(now)
        # only a prefix is removed: the old message after a young one stays for now
        assert removed == 3 + 2
        assert seqs(await all_history(store, "age")) == [4, 5, 6]
        assert await all_history(store, "age2") == []
        assert seqs(await all_history(store, "fresh")) == [1]
        rp = await store.replay(T, "age2", 0, 10)
        assert rp.messages == [] and not rp.complete and rp.last_seq == 2
        assert (await store.replay(T, "age2", 2, 10)).complete
        assert not (await store.replay(T, "age", 2, 10)).complete
        assert (await store.replay(T, "age", 3, 10)).complete
        # later: everything older than 10 s at now+100 s goes
        assert await store.apply_retention(now + 100_000) == 3 + 1
        assert await store.last_seq(T, "age") == 6
        assert (await store.append(nm("age", ts=now + 100_000))).message.seq == 7

    run(body())


def test_retention_age_and_count_combined(store_factory, run):
    async def body():
        store = await store_factory(retention_max_age_s=100, retention_max_per_room=4)
        now = 10_000_000
        for i in range(10):
            await store.append(nm("both", ts=now - (200_000 if i < 2 else 0)))
        assert await store.apply_retention(now) == 6
        assert seqs(await all_history(store, "both")) == [7, 8, 9, 10]

    run(body())


# ----------------------------------------------------------------------------- edit/delete
def test_edit_and_delete(store, run):
    async def body():
        for i in range(3):
            await store.append(nm("e", sender=1, text=f"t{i}"))
        ed = await store.edit(T, "e", 2, "edited", 5555)
        assert ed.text == "edited" and ed.edited_at == 5555 and ed.seq == 2 and not ed.deleted
        de = await store.delete(T, "e", 3, 6666)
        assert de.deleted and de.text == "" and de.seq == 3
        hist = await all_history(store, "e")
        assert seqs(hist) == [1, 2, 3]
        assert [(m.text, m.edited_at, m.deleted) for m in hist] == [
            ("t0", None, False), ("edited", 5555, False), ("", None, True)]
        with pytest.raises(NotFound):
            await store.edit(T, "e", 3, "resurrect", 7777)  # deleted messages stay deleted
        with pytest.raises(NotFound):
            await store.edit(T, "e", 99, "x", 1)
        with pytest.raises(NotFound):
            await store.delete(T, "e", 99, 1)
        with pytest.raises(NotFound):
            await store.edit(2, "e", 1, "x", 1)  # other tenant
        again = await store.delete(T, "e", 3, 9999)  # idempotent
        assert again.deleted and again.text == ""
        rp = await store.replay(T, "e", 0, 10)
        assert [m.deleted for m in rp.messages] == [False, False, True]
        assert (await store.append(nm("e"))).message.seq == 4

    run(body())


# ----------------------------------------------------------------------------- read positions
def test_read_positions_forward_only_and_unread(store, run):
    async def body():
        for _ in range(10):
            await store.append(nm("rd"))
        assert await store.unread_count(T, "rd", 42) == 10
        assert await store.set_read(T, "rd", 42, 4) == 4
        assert await store.unread_count(T, "rd", 42) == 6
        assert await store.set_read(T, "rd", 42, 2) == 4  # never backwards
        assert await store.set_read(T, "rd", 42, 7) == 7
        assert await store.unread_count(T, "rd", 42) == 3
        assert await store.set_read(T, "rd", 42, 10_000) == 10  # clamped to last_seq
        assert await store.unread_count(T, "rd", 42) == 0
        await store.append(nm("rd"))
        assert await store.unread_count(T, "rd", 42) == 1
        assert await store.unread_count(T, "rd", 43) == 11  # per user
        await store.delete(T, "rd", 11, 1)
        await store.delete(T, "rd", 1, 1)
        assert await store.unread_count(T, "rd", 42) == 0  # deleted messages do not count
        assert await store.unread_count(T, "rd", 43) == 9
        assert await store.set_read(T, "rd", 44, -5) == 0
        assert await store.set_read(T, "empty", 44, 5) == 0

    run(body())


# ----------------------------------------------------------------------------- tenants
def test_tenants_apart(store, run):
    async def body():
        for i in range(3):
            await store.append(nm("lobby", tenant=1, sender=1, cid=f"c{i}"))
        r = await store.append(nm("lobby", tenant=2, sender=1, cid="c0"))
        assert not r.duplicate and r.message.seq == 1
        assert seqs(await all_history(store, "lobby", 1)) == [1, 2, 3]
        assert [m.tenant_id for m in await all_history(store, "lobby", 2)] == [2]
        assert await store.last_seq(1, "lobby") == 3 and await store.last_seq(2, "lobby") == 1
        assert (await store.replay(2, "lobby", 0, 10)).last_seq == 1
        await store.create_room(RoomRecord(1, "lobby", "Lobby one", False, 1, 100))
        assert await store.get_room(2, "lobby") is None
        await store.create_room(RoomRecord(2, "lobby", "Lobby two", True, 9, 200))
        assert (await store.get_room(1, "lobby")).name == "Lobby one"
        await store.set_member(1, "lobby", 5, "owner")
        assert await store.get_members(2, "lobby") == {}
        await store.set_sanction(1, "lobby", Sanction("ban", 5, None, "spam"))
        assert await store.get_sanctions(2, "lobby", 0) == []
        await store.set_read(1, "lobby", 5, 3)
        assert await store.unread_count(2, "lobby", 5) == 1
        await store.react(1, "lobby", 1, 5, "👍", False)
        assert await store.get_reactions(2, "lobby", [1]) == {}
        await store.edit(1, "lobby", 1, "changed", 1)
        assert (await all_history(store, "lobby", 2))[0].text != "changed"
        await store.audit(1, "lobby", 5, "ban", 6, None, 1)
        assert await store.get_audit(2, "lobby") == []
        await store.delete_room(2, "lobby")
        assert seqs(await all_history(store, "lobby", 1)) == [1, 2, 3]
        assert await store.get_room(1, "lobby") is not None

    run(body())


# ----------------------------------------------------------------------------- rooms
def test_room_metadata(store, run):
    async def body():
        assert await store.get_room(T, "meta") is None
        rec = RoomRecord(T, "meta", "Meta room", True, 11, 123456)
        assert await store.create_room(rec) == rec
        assert await store.get_room(T, "meta") == rec
        with pytest.raises(Conflict):
            await store.create_room(RoomRecord(T, "meta", "again", False, 12, 2))
        assert await store.get_room(T, "meta") == rec
        nameless = RoomRecord(T, "nameless", None, False, 1, 5)
        await store.create_room(nameless)
        assert await store.get_room(T, "nameless") == nameless

    run(body())


def test_room_auto_created_by_first_message(store, run):
    async def body():
        await store.append(nm("auto"))
        await store.append(nm("auto"))
        assert await store.get_room(T, "auto") is None  # only a counter so far
        rec = RoomRecord(T, "auto", "Auto", False, 3, 77)
        await store.create_room(rec)
        assert await store.get_room(T, "auto") == rec
        assert (await store.append(nm("auto"))).message.seq == 3

    run(body())


def test_delete_room(store, run):
    async def body():
        await store.create_room(RoomRecord(T, "gone", "Gone", False, 1, 1))
        for _ in range(4):
            await store.append(nm("gone"))
        await store.set_member(T, "gone", 1, "owner")
        await store.set_sanction(T, "gone", Sanction("mute", 2, None, None))
        await store.set_read(T, "gone", 1, 3)
        await store.react(T, "gone", 1, 1, "x", False)
        await store.audit(T, "gone", 1, "mute", 2, None, 5)
        # a neighbour that must survive
        await store.append(nm("stay"))
        await store.set_member(T, "stay", 1, "member")

        await store.delete_room(T, "gone")
        assert await store.get_room(T, "gone") is None
        assert await all_history(store, "gone") == []
        assert await store.get_members(T, "gone") == {}
        assert await store.get_sanctions(T, "gone", 0) == []
        assert await store.get_reactions(T, "gone", [1]) == {}
        assert await store.unread_count(T, "gone", 1) == 0
        assert len(await store.get_audit(T, "gone")) == 1  # the audit trail stays
        assert seqs(await all_history(store, "stay")) == [1]
        assert await store.get_members(T, "stay") == {1: "member"}
        await store.delete_room(T, "never-existed")  # no-op

        # recreated: seqs are not reused and old positions replay as incomplete
        await store.create_room(RoomRecord(T, "gone", "Again", False, 2, 9))
        r = await store.append(nm("gone"))
        assert r.message.seq == 5
        rp = await store.replay(T, "gone", 0, 10)
        assert not rp.complete and seqs(rp.messages) == [5]
        assert (await store.replay(T, "gone", 4, 10)).complete
        assert await store.set_read(T, "gone", 1, 5) == 5

    run(body())


def test_members_and_roles(store, run):
    async def body():
        assert await store.get_members(T, "mr") == {}
        await store.set_member(T, "mr", 1, "owner")
        await store.set_member(T, "mr", 2, "member")
        await store.set_member(T, "mr", 3, "moderator")
        await store.set_member(T, "mr", 2, "moderator")
        assert await store.get_members(T, "mr") == {1: "owner", 2: "moderator", 3: "moderator"}
        await store.set_member(T, "mr", 3, None)
        await store.set_member(T, "mr", 99, None)  # removing a non-member is a no-op
        assert await store.get_members(T, "mr") == {1: "owner", 2: "moderator"}

    run(body())


# ----------------------------------------------------------------------------- reactions
def test_reactions(store, run):
    async def body():
        for _ in range(3):
            await store.append(nm("re"))
        assert await store.react(T, "re", 1, 10, "👍", False) == {"👍": [10]}
        assert await store.react(T, "re", 1, 5, "👍", False) == {"👍": [5, 10]}
        assert await store.react(T, "re", 1, 5, "👍", False) == {"👍": [5, 10]}  # idempotent
        assert await store.react(T, "re", 1, 5, "🎉", False) == {"🎉": [5], "👍": [5, 10]}
        assert await store.react(T, "re", 2, 7, "a", False) == {"a": [7]}
        assert await store.react(T, "re", 1, 10, "👍", True) == {"🎉": [5], "👍": [5]}
        assert await store.react(T, "re", 1, 10, "👍", True) == {"🎉": [5], "👍": [5]}  # removing twice
        assert await store.get_reactions(T, "re", [1, 2, 3, 99]) == {1: {"🎉": [5], "👍": [5]}, 2: {"a": [7]}}
        assert await store.get_reactions(T, "re", []) == {}
        with pytest.raises(NotFound):
            await store.react(T, "re", 99, 1, "x", False)
        with pytest.raises(NotFound):
            await store.react(2, "re", 1, 1, "x", False)
        await store.delete(T, "re", 1, 1)
        assert await store.get_reactions(T, "re", [1]) == {}  # cleared with the message
        with pytest.raises(NotFound):
            await store.react(T, "re", 1, 1, "x", False)
        rs = await asyncio.gather(*(store.react(T, "re", 3, u, "z", False) for u in range(20)))
        # each answer includes the caller's own reaction (others' may still be in flight)
        assert all(u in r["z"] and set(r["z"]) <= set(range(20)) for u, r in enumerate(rs))
        assert (await store.get_reactions(T, "re", [3]))[3] == {"z": list(range(20))}

    run(body())


# ----------------------------------------------------------------------------- sanctions
def test_sanctions_with_expiry(store, run):
    async def body():
        now = 1_000_000
        await store.set_sanction(T, "s", Sanction("ban", 1, now + 1000, "flood"))
        await store.set_sanction(T, "s", Sanction("mute", 2, None, None))
        await store.set_sanction(T, "s", Sanction("mute", 1, now + 5000, "x"))
        assert await store.get_sanctions(T, "s", now) == [
            Sanction("ban", 1, now + 1000, "flood"), Sanction("mute", 1, now + 5000, "x"),
            Sanction("mute", 2, None, None)]
        assert await store.get_sanctions(T, "s", now + 1000) == [  # expiry is exclusive
            Sanction("mute", 1, now + 5000, "x"), Sanction("mute", 2, None, None)]
        await store.set_sanction(T, "s", Sanction("ban", 1, now + 9000, "again"))  # replace
        assert Sanction("ban", 1, now + 9000, "again") in await store.get_sanctions(T, "s", now + 2000)
        await store.remove_sanction(T, "s", "mute", 2)
        await store.remove_sanction(T, "s", "mute", 77)  # no-op
        assert await store.get_sanctions(T, "s", now) == [
            Sanction("ban", 1, now + 9000, "again"), Sanction("mute", 1, now + 5000, "x")]
        with pytest.raises(InvalidMessage):
            await store.set_sanction(T, "s", Sanction("kick", 1, None, None))
        # retention housekeeping drops expired sanctions for good
        await store.apply_retention(now + 6000)
        assert await store.get_sanctions(T, "s", 0) == [Sanction("ban", 1, now + 9000, "again")]

    run(body())


# ----------------------------------------------------------------------------- audit
def test_audit_log(store, run):
    async def body():
        await store.audit(T, "au", 1, "ban", 2, "spam", 100)
        await store.audit(T, "au", 1, "mute", 3, None, 200)
        await store.audit(T, "au", 4, "set_role", None, None, 300)
        log = await store.get_audit(T, "au")
        assert log == [
            AuditEntry(T, "au", 1, "ban", 2, "spam", 100),
            AuditEntry(T, "au", 1, "mute", 3, None, 200),
            AuditEntry(T, "au", 4, "set_role", None, None, 300),
        ]
        assert [e.ts for e in await store.get_audit(T, "au", limit=2)] == [200, 300]

    run(body())


# ----------------------------------------------------------------------------- durability
def test_reopen_keeps_everything(store_factory, run):
    async def body():
        a = await store_factory()
        await asyncio.gather(*(a.append(nm("dur", cid=f"d{i}")) for i in range(50)))
        await a.create_room(RoomRecord(T, "dur", "Durable", False, 1, 1))
        await a.set_read(T, "dur", 1, 20)
        await a.close()
        with pytest.raises(StoreUnavailable):
            await a.append(nm("dur"))
        b = await store_factory()
        assert seqs(await all_history(b, "dur")) == list(range(1, 51))
        assert (await b.append(nm("dur", cid="d7"))).duplicate
        assert (await b.append(nm("dur"))).message.seq == 51
        assert (await b.get_room(T, "dur")).name == "Durable"
        assert await b.unread_count(T, "dur", 1) == 31

    run(body())


def test_close_flushes_queued_appends(store_factory, run):
    async def body():
        a = await store_factory()
        tasks = [asyncio.ensure_future(a.append(nm("fl"))) for _ in range(100)]
        await asyncio.sleep(0)
        await a.close()
        res = await asyncio.gather(*tasks, return_exceptions=True)
        ok = [r for r in res if isinstance(r, AppendResult)]
        assert all(isinstance(r, (AppendResult, StoreUnavailable)) for r in res)
        b = await store_factory()
        assert seqs(await all_history(b, "fl")) == sorted(r.message.seq for r in ok)
        assert len(ok) == 100  # queued before close: flushed, not dropped

    run(body())


# ----------------------------------------------------------------------------- factory
def test_open_store_factory(tmp_path, run):
    async def body():
        d = tmp_path / "nested" / "data"
        s = open_store(postgres_dsn=None, data_dir=str(d), retention_max_per_room=3)
        assert isinstance(s, SqliteMessageStore)
        assert s.path == str(d / "chathub.sqlite3") and d.is_dir()
        assert s.retention_max_per_room == 3 and s.retention_max_age_s is None
        await s.open()
        try:
            assert (await s.append(nm("f"))).message.seq == 1
        finally:
            await s.close()
        assert os.path.exists(s.path)
        p = open_store(postgres_dsn="postgresql://u@127.0.0.1:1/db", data_dir=str(d), retention_max_age_s=60)
        assert isinstance(p, PostgresMessageStore) and p.retention_max_age_s == 60

    run(body())


def test_unreachable_postgres_fails_fast(run):
    async def body():
        from pg_private import free_port

        s = PostgresMessageStore(f"postgresql://postgres@127.0.0.1:{free_port()}/postgres", connect_timeout=1)
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        with pytest.raises(StoreUnavailable):
            await s.open()
        assert loop.time() - t0 < 5
        with pytest.raises(StoreUnavailable):
            await s.append(nm("x"))
        await s.close()

    run(body())
