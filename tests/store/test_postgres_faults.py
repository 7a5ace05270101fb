"""PostgreSQL outages: a PRIVATE server is started for this module (Debian PostgreSQL
binaries; as the ``postgres`` user when we are root) and restarted, stopped and has its
connections killed under load.

What must hold:
* an append that returned success is in history exactly once, at the seq it returned,
  and seqs stay 1..n without gaps;
* every other append raised ``StoreUnavailable`` (``CommitUnknown`` only when the
  outcome could not be settled) and a retry with the same client_msg_id never doubles it;
* while the server is down, calls fail fast (bounded time);
* the same store object recovers once the server is back.
"""

from __future__ import annotations

import asyncio
import time
import uuid

import asyncpg
import pytest

from pg_private import PrivatePostgres, unavailable_reason

from chathub.store import (
    CommitUnknown,
    NewMessage,
    PostgresMessageStore,
    StoreUnavailable,
)

_reason = unavailable_reason()
pytestmark = pytest.mark.skipif(_reason is not None, reason=f"private PostgreSQL unavailable: {_reason}")


@pytest.fixture(scope="module")
def pg():
    server = PrivatePostgres()
    try:
        server.init()
        server.start()
        yield server
    finally:
        server.destroy()


@pytest.fixture
def fresh(pg, run):
    """Make stores on a fresh schema of the private server; all closed afterwards."""
    schema = f"f_{uuid.uuid4().hex[:12]}"
    made: list[PostgresMessageStore] = []

    async def make(**kw) -> PostgresMessageStore:
        kw.setdefault("connect_timeout", 2.0)
        kw.setdefault("command_timeout", 5.0)
        kw.setdefault("resolve_timeout", 20.0)
        kw.setdefault("max_backoff", 0.5)
        s = PostgresMessageStore(pg.dsn, schema=schema, **kw)
        made.append(s)
        await s.open()
        return s

    yield make
    if not pg.is_running():
        pg.start()

    async def cleanup():
        for s in made:
            await s.close()
        conn = await asyncpg.connect(pg.dsn, timeout=10)
        try:
            await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE', timeout=60)
        finally:
            await conn.close()

    run(cleanup())


async def in_thread(fn, *args):
    return await asyncio.get_running_loop().run_in_executor(None, fn, *args)


async def history_all(store, tenant: int, room: str) -> list:
    out, after = [], 0
    while True:
        page = await store.history(tenant, room, after_seq=after, limit=500)
        out += page.messages
        if not page.has_more:
            return out
        after = page.messages[-1].seq


async def wait_recovered(store, probe_room: str = "probe", timeout: float = 30.0) -> float:
    """Append to a probe room until it works; return how long it took."""
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    n = 0
    while True:
        n += 1
        try:
            await store.append(NewMessage(99, probe_room, 0, "probe", 0, f"probe-{uuid.uuid4()}", None))
            return loop.time() - t0
        except StoreUnavailable:
            if loop.time() - t0 > timeout:
                raise AssertionError(f"store did not recover within {timeout}s")
            await asyncio.sleep(0.05)


def check_history(hist, ok: dict) -> None:
    """Gapless seqs, no client_msg_id twice, every success present at its seq."""
    assert [m.seq for m in hist] == list(range(1, len(hist) + 1)), "gap or duplicate seq"
    cids = [m.client_msg_id for m in hist]
    assert len(cids) == len(set(cids)), "a client_msg_id is stored twice"
    by_cid = {m.client_msg_id: m for m in hist}
    for cid, sm in ok.items():
        assert by_cid.get(cid) == sm, f"acknowledged {cid} missing or changed"


# --------------------------------------------------------------------------------------
@pytest.mark.parametrize("mode", ["fast", "immediate"])
def test_restart_during_burst(pg, fresh, run, mode):
    """50 senders x 40 messages over 5 rooms; the server restarts mid-burst: ``fast``
    (clean shutdown) or ``immediate`` (like a crash: no shutdown checkpoint, crash
    recovery on start; acknowledged commits must survive it)."""
    SENDERS, PER, ROOMS = 50, 40, 5

    async def body():
        store = await fresh(max_size=10)
        loop = asyncio.get_running_loop()
        ok: dict[str, object] = {}
        failed: dict[str, BaseException] = {}
        acked_after_restart = 0
        acks = 0
        go_restart = asyncio.Event()
        restart_done = asyncio.Event()

        def msg(k: int, j: int) -> NewMessage:
            return NewMessage(1, f"room{k % ROOMS}", k, f"text {k}/{j}", int(time.time() * 1000),
                              f"mid-{k}-{j}-{uuid.uuid4().hex[:6]}", f"c-{k}-{j}")

        async def sender(k: int) -> None:
            nonlocal acks, acked_after_restart
            for j in range(PER):
                if j == PER - 1:
                    # The last message of every sender goes after the restart, once the
                    # store has reconnected by itself: the burst outlives the outage.
                    await asyncio.wait_for(restart_done.wait(), 90)
                    while not store.available:
                        assert loop.time() < deadline, "store did not recover"
                        await asyncio.sleep(0.02)
                m = msg(k, j)
                try:
                    r = await store.append(m)
                except StoreUnavailable as e:  # anything else fails the test
                    failed[m.client_msg_id] = e
                    await asyncio.sleep(0.1)  # pacing while down, so the burst outlives the outage
                    continue
                assert not r.duplicate
                ok[m.client_msg_id] = r.message
                acks += 1
                if restart_done.is_set():
                    acked_after_restart += 1
                if acks == 200:
                    go_restart.set()
                await asyncio.sleep(0.02)  # pacing: keeps the burst going while the server restarts

        async def restarter() -> None:
            await go_restart.wait()
            await in_thread(pg.restart, mode)
            restart_done.set()

        deadline = loop.time() + 120
        rt = asyncio.ensure_future(restarter())
        await asyncio.gather(*(sender(k) for k in range(SENDERS)))
        await asyncio.wait_for(rt, 60)

        took = await wait_recovered(store)  # same store object, no re-open
        assert took < 30
        assert failed or store.stats["outages"], "the restart went unnoticed (fault not exercised)"
        assert acked_after_restart >= SENDERS  # the store recovered within the burst
        assert len(ok) + len(failed) == SENDERS * PER

        unknown = {c for c, e in failed.items() if isinstance(e, CommitUnknown)}
        rooms_hist = {}
        for r in range(ROOMS):
            hist = await history_all(store, 1, f"room{r}")
            check_history(hist, {c: m for c, m in ok.items() if m.room == f"room{r}"})
            rooms_hist[r] = hist
        stored = {m.client_msg_id for h in rooms_hist.values() for m in h}
        assert set(ok) <= stored
        # A plain StoreUnavailable means "not stored"; only CommitUnknown may be stored.
        assert not ((set(failed) - unknown) & stored), "an append that raised was stored"

        # Retrying every failure with the same client_msg_id never doubles a message.
        for cid in failed:
            k, j = map(int, cid.split("-")[1:])
            r = await store.append(msg(k, j))
            assert r.duplicate == (cid in stored)
        total = 0
        for r in range(ROOMS):
            hist = await history_all(store, 1, f"room{r}")
            check_history(hist, {c: m for c, m in ok.items() if m.room == f"room{r}"})
            total += len(hist)
        assert total == SENDERS * PER
        print(f"\nrestart -m {mode} burst: {len(ok)} acked ({acked_after_restart} after the restart), "
              f"{len(failed)} StoreUnavailable ({len(unknown)} CommitUnknown), recovered in {took:.2f}s; "
              f"stats {store.stats}")

    run(body(), timeout=240)


def test_fail_fast_while_down_and_recover(pg, fresh, run):
    async def body():
        store = await fresh()
        loop = asyncio.get_running_loop()
        r1 = await store.append(NewMessage(1, "ff", 1, "before", 1, "ff-1", "c1"))
        assert r1.message.seq == 1
        await in_thread(pg.stop, "fast")
        try:
            t0 = loop.time()
            with pytest.raises(StoreUnavailable):
                await store.append(NewMessage(1, "ff", 1, "down", 2, "ff-2", "c2"))
            first = loop.time() - t0
            assert first < 5, f"first append while down took {first:.2f}s"
            t0 = loop.time()
            for i in range(50):
                with pytest.raises(StoreUnavailable):
                    await store.append(NewMessage(1, "ff", 1, "down", 2, f"ff-x{i}", f"cx{i}"))
            with pytest.raises(StoreUnavailable):
                await store.history(1, "ff")
            with pytest.raises(StoreUnavailable):
                await store.ping()
            assert loop.time() - t0 < 5, "appends while down are not failing fast"
            assert not store.available
            # A new store cannot even open: promptly unavailable, not hanging.
            t0 = loop.time()
            other = PostgresMessageStore(pg.dsn, connect_timeout=1.0)
            with pytest.raises(StoreUnavailable):
                await other.open()
            await other.close()
            assert loop.time() - t0 < 5
        finally:
            await in_thread(pg.start)
        await wait_recovered(store)
        assert store.available
        r = await store.append(NewMessage(1, "ff", 1, "after", 3, "ff-3", "c3"))
        assert r.message.seq == 2  # nothing committed while down, no gap
        hist = await history_all(store, 1, "ff")
        assert [(m.seq, m.client_msg_id) for m in hist] == [(1, "c1"), (2, "c3")]

    run(body(), timeout=120)


def test_backends_killed_during_burst(pg, fresh, run):
    """The server stays up but every connection of the store is terminated."""

    async def body():
        store = await fresh(max_size=6)
        ok, failed = {}, {}
        half = asyncio.Event()

        async def sender(k):
            for j in range(30):
                cid = f"k{k}-{j}"
                m = NewMessage(1, f"kr{k % 3}", k, "x", 1, f"mid-{cid}", cid)
                try:
                    ok[cid] = (await store.append(m)).message
                except StoreUnavailable as e:
                    failed[cid] = e
                if len(ok) == 300:
                    half.set()

        async def killer():
            await half.wait()
            admin = await asyncpg.connect(pg.dsn, timeout=5)
            try:
                await admin.fetch(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                    "WHERE application_name = 'chathub' AND pid <> pg_backend_pid()", timeout=5)
            finally:
                await admin.close()

        kt = asyncio.ensure_future(killer())
        await asyncio.gather(*(sender(k) for k in range(30)))
        await asyncio.wait_for(kt, 30)
        await wait_recovered(store)
        unknown = {c for c, e in failed.items() if isinstance(e, CommitUnknown)}
        stored = set()
        for r in range(3):
            hist = await history_all(store, 1, f"kr{r}")
            check_history(hist, {c: m for c, m in ok.items() if m.room == f"kr{r}"})
            stored |= {m.client_msg_id for m in hist}
        assert set(ok) <= stored
        assert not ((set(failed) - unknown) & stored)

    run(body(), timeout=120)


# --------------------------------------------------------------------------------------
# The COMMIT reply is lost: deterministic, through the store's fault hook.
def _hook(action: str):
    async def hook(phase: str, conn) -> None:
        if phase != "commit":
            return
        if action == "commit":
            await conn.execute("COMMIT")  # committed, but we "never hear back"
        elif action == "rollback":
            await conn.execute("ROLLBACK")
        # "vanish": the transaction stays open on the server while we drop the socket
        raise ConnectionResetError(f"simulated loss of the COMMIT reply ({action})")

    return hook


def test_lost_commit_reply_but_committed_is_success(fresh, run):
    async def body():
        store = await fresh()
        await store.append(NewMessage(1, "lc", 1, "a", 1, "lc-1", "c1"))
        store._fault_hook = _hook("commit")
        rs = await asyncio.gather(*(store.append(NewMessage(1, "lc", 1, f"b{i}", 1, f"lc-b{i}", f"cb{i}"))
                                    for i in range(5)))
        store._fault_hook = None
        assert store.stats["commit_lost_committed"] >= 1
        assert [r.message.seq for r in rs] == [2, 3, 4, 5, 6] and not any(r.duplicate for r in rs)
        hist = await history_all(store, 1, "lc")
        assert [m.client_msg_id for m in hist] == ["c1", "cb0", "cb1", "cb2", "cb3", "cb4"]

    run(body())


@pytest.mark.parametrize("action", ["rollback", "vanish"])
def test_lost_commit_reply_not_committed_raises(fresh, run, action):
    async def body():
        store = await fresh()
        await store.append(NewMessage(1, "la", 1, "a", 1, "la-1", "c1"))
        store._fault_hook = _hook(action)
        with pytest.raises(StoreUnavailable) as ei:
            await store.append(NewMessage(1, "la", 1, "b", 1, "la-2", "c2"))
        store._fault_hook = None
        assert not isinstance(ei.value, CommitUnknown)  # settled: definitely not stored
        assert store.stats["commit_lost_aborted"] == 1
        assert [m.client_msg_id for m in await history_all(store, 1, "la")] == ["c1"]
        r = await store.append(NewMessage(1, "la", 1, "b", 1, "la-2", "c2"))  # the retry
        assert not r.duplicate and r.message.seq == 2

    run(body())


def test_commit_outcome_unknown_then_retry_is_idempotent(pg, fresh, run):
    """COMMIT reply lost AND the server goes away before the outcome can be checked."""

    async def body():
        store = await fresh(resolve_timeout=1.0)

        async def hook(phase, conn):
            if phase == "commit":
                await conn.execute("COMMIT")
                await in_thread(pg.stop, "fast")
                raise ConnectionResetError("simulated")

        store._fault_hook = hook
        try:
            with pytest.raises(CommitUnknown):
                await store.append(NewMessage(1, "cu", 1, "x", 1, "cu-1", "c1"))
        finally:
            store._fault_hook = None
            await in_thread(pg.start)
        await wait_recovered(store)
        r = await store.append(NewMessage(1, "cu", 1, "x", 1, "cu-1b", "c1"))  # retry, same client id
        assert r.duplicate and r.message.seq == 1 and r.message.msg_id == "cu-1"
        assert [m.seq for m in await history_all(store, 1, "cu")] == [1]

    run(body(), timeout=120)


# --------------------------------------------------------------------------------------
# Not faults, but PostgreSQL-only paths that the shared suite does not reach.
def test_several_writer_lanes_keep_order_and_no_gaps(fresh, run):
    async def body():
        a = await fresh(writers=3, max_size=6)
        b = await fresh(writers=2, max_size=4)
        done: dict[str, list[int]] = {}

        async def one(store, m):
            r = await store.append(m)
            if store is a:
                done.setdefault(m.room, []).append(r.message.seq)
            return r

        msgs = [(a if i % 3 else b, NewMessage(1, f"lane{i % 7}", i, "x", 1, f"ln-{i}", f"c{i % 50}"))
                for i in range(700)]
        res = await asyncio.gather(*(one(s, m) for s, m in msgs))
        for room in {m.room for _, m in msgs}:
            hist = await history_all(a, 1, room)
            assert [m.seq for m in hist] == list(range(1, len(hist) + 1))
            assert len({(m.sender, m.client_msg_id) for m in hist}) == len(hist)
        for room, order in done.items():  # per instance, per room: completion in seq order
            assert order == sorted(order)
        stored = 0
        for i in range(7):
            stored += len(await history_all(a, 1, f"lane{i}"))
        assert sum(not r.duplicate for r in res) == stored

    run(body())


def test_cross_process_duplicate_race_is_retried(fresh, run):
    """Two instances append the same client_msg_ids at the same moment: the loser hits
    the unique index, rolls back (no seq burnt) and answers duplicate=True."""

    async def body():
        a = await fresh()
        b = await fresh()
        for rnd in range(5):
            ms = [NewMessage(1, "race", 1, "x", 1, f"r{rnd}-{i}-{s}", f"k{rnd}-{i}") for i in range(40)
                  for s in ("a", "b")]
            res = await asyncio.gather(*((a if m.msg_id.endswith("a") else b).append(m) for m in ms))
            assert sum(not r.duplicate for r in res) == 40
        hist = await history_all(a, 1, "race")
        assert [m.seq for m in hist] == list(range(1, 201))
        print(f"\nunique-violation retries: a={a.stats['retries']} b={b.stats['retries']}")

    run(body())


def test_pipelined_groups_keep_call_order_through_retries(fresh, run):
    """Small groups, three in flight, some appends repeating an earlier client_msg_id
    (their group fails on the unique index and is retried with pre-checks while later
    groups wait): per room, seqs follow call order, answers come in seq order, no gaps."""

    async def body():
        store = await fresh(max_batch=7, pipeline=3, max_size=6)
        answered: dict[str, list[int]] = {}

        async def one(m):
            r = await store.append(m)
            if not r.duplicate:
                answered.setdefault(m.room, []).append(r.message.seq)
            return r

        msgs = []
        for i in range(600):
            room = f"pl{i % 5}"
            # every 23rd append repeats the client_msg_id of the append 5 before it (same room)
            cid = f"c{i - 5}" if i % 23 == 0 and i >= 5 else f"c{i}"
            msgs.append(NewMessage(1, room, 1, "x", 1, f"pl-{i}", cid))
        tasks = []
        for i, m in enumerate(msgs):
            tasks.append(asyncio.ensure_future(one(m)))
            if i % 11 == 0:
                await asyncio.sleep(0)  # groups start while others are queued
        res = await asyncio.gather(*tasks)
        assert store.stats["retries"] > 0 and store.stats["groups"] > 50
        first: dict[str, str] = {}
        for m, r in zip(msgs, res):
            if m.client_msg_id in first:
                assert r.duplicate and r.message.msg_id == first[m.client_msg_id]
            else:
                assert not r.duplicate
                first[m.client_msg_id] = m.msg_id
        for room in {m.room for m in msgs}:
            fresh_seqs = [r.message.seq for m, r in zip(msgs, res) if m.room == room and not r.duplicate]
            assert fresh_seqs == list(range(1, len(fresh_seqs) + 1)), f"{room}: seq does not follow call order"
            assert answered[room] == fresh_seqs, f"{room}: answers out of seq order"
            hist = await history_all(store, 1, room)
            assert [m.seq for m in hist] == fresh_seqs

    run(body())
