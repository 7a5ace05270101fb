"""SQLite store: a second group in flight under a backlog, and the GIL switch interval
it shortens meanwhile (``chathub/store/sqlite.py``, "Two groups in flight").

The conformance suite already runs every store test with two small groups in flight
(the ``sqlite-pipelined`` kind); these tests check when the second group is (and is not)
handed over, and that the process-wide switch interval is always put back.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
from typing import AsyncIterator

from pytest import approx

from chathub.store import SqliteMessageStore
from chathub.store.base import NewMessage
from test_conformance import all_history, nm, seqs  # (conftest puts this folder on sys.path)


@contextlib.asynccontextmanager
async def _opened(tmp_path, **kw) -> AsyncIterator[SqliteMessageStore]:
    """A store on a fresh file, open for the ``async with`` block, closed after it."""
    store = SqliteMessageStore(str(tmp_path / "p.sqlite3"), **kw)
    await store.open()
    try:
        yield store
    finally:
        await store.close()


async def _submit_and_watch(store: SqliteMessageStore, msgs: list[NewMessage]) -> tuple[list, float]:
    """Submit ``msgs`` without awaiting; return the results and the shortest switch
    interval seen while they were in flight (sampled at every loop iteration). CPython
    keeps the interval in whole microseconds: compare with ``approx``."""
    futs = [store.submit(m) for m in msgs]
    shortest = sys.getswitchinterval()
    while not all(f.done() for f in futs):
        shortest = min(shortest, sys.getswitchinterval())
        await asyncio.sleep(0)
    return [f.result() for f in futs], shortest


def test_backlog_puts_a_second_group_in_flight_and_restores_the_interval(tmp_path, run):
    async def body():
        before = sys.getswitchinterval()
        async with _opened(tmp_path, max_batch=8, pipeline_min=4, gil_switch_interval=1e-4) as store:
            msgs = [nm(f"r{i % 3}", sender=i % 5, cid=f"c{i}") for i in range(64)]
            res, shortest = await _submit_and_watch(store, msgs)
            assert store.stats["groups"] == 8 and store.stats["inserted"] == 64
            assert store.stats["pipelined"] >= 1
            assert shortest == approx(1e-4)  # held while two groups were in flight
            assert sys.getswitchinterval() == before  # and put back once idle
            # seqs follow call order per room, across the overlapping groups
            for room in ("r0", "r1", "r2"):
                mine = [r.message.seq for r, m in zip(res, msgs) if m.room == room]
                assert mine == list(range(1, len(mine) + 1))
                assert seqs(await all_history(store, room)) == mine
        assert sys.getswitchinterval() == before

    run(body())


def test_repeat_in_the_group_behind_meets_its_stored_copy(tmp_path, run):
    async def body():
        async with _opened(tmp_path, max_batch=4, pipeline_min=1) as store:
            first = [nm("d", sender=1, cid=f"x{i}") for i in range(4)]  # group 1
            again = [nm("d", sender=1, text="again", cid=f"x{i}") for i in range(4)]  # group 2
            res, _ = await _submit_and_watch(store, first + again)
            assert store.stats["pipelined"] >= 1
            assert [r.duplicate for r in res] == [False] * 4 + [True] * 4
            assert [r.message for r in res[4:]] == [r.message for r in res[:4]]
            assert seqs(await all_history(store, "d")) == [1, 2, 3, 4]

    run(body())


def test_no_backlog_no_second_group_and_interval_untouched(tmp_path, run):
    async def body():
        before = sys.getswitchinterval()
        async with _opened(tmp_path) as store:  # defaults: a second group only with >= 128 waiting
            for _ in range(5):  # bursts that fit in one group each
                res, shortest = await _submit_and_watch(store, [nm("q", sender=i) for i in range(100)])
                assert shortest == before
            assert store.stats["pipelined"] == 0
            assert seqs(await all_history(store, "q")) == list(range(1, 501))

    run(body())


def test_interval_left_alone_when_switched_off(tmp_path, run):
    async def body():
        before = sys.getswitchinterval()
        async with _opened(tmp_path, max_batch=8, pipeline_min=2, gil_switch_interval=None) as store:
            res, shortest = await _submit_and_watch(store, [nm("n", sender=i) for i in range(40)])
            assert store.stats["pipelined"] >= 1 and shortest == before
            assert sorted(r.message.seq for r in res) == list(range(1, 41))

    run(body())


def test_two_stores_share_the_short_interval_and_the_last_restores_it(tmp_path, run):
    async def body():
        before = sys.getswitchinterval()
        a = SqliteMessageStore(str(tmp_path / "a.sqlite3"), max_batch=8, pipeline_min=2, gil_switch_interval=2e-4)
        b = SqliteMessageStore(str(tmp_path / "b.sqlite3"), max_batch=8, pipeline_min=2, gil_switch_interval=2e-4)
        await a.open()
        await b.open()
        try:
            (ra, sa), (rb, sb) = await asyncio.gather(
                _submit_and_watch(a, [nm("s", sender=i) for i in range(48)]),
                _submit_and_watch(b, [nm("s", sender=i) for i in range(48)]),
            )
            assert min(sa, sb) == approx(2e-4)
            assert a.stats["pipelined"] >= 1 and b.stats["pipelined"] >= 1
            assert sys.getswitchinterval() == before
        finally:
            await a.close()
            await b.close()
        assert sys.getswitchinterval() == before

    run(body())


# ---------------------------------------------------------------- commit interval


async def _timed(store: SqliteMessageStore, msg: NewMessage) -> tuple[object, float]:
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    res = await store.submit(msg)
    return res, loop.time() - t0


def test_appends_closer_than_the_commit_interval_share_one_commit(tmp_path, run):
    """Appends one loop iteration apart (as from separate clients), faster than the
    interval: the first goes at once, the others wait for the rest of the interval and
    share one commit; every one is acked only after it, in call order."""
    async def body():
        async with _opened(tmp_path, commit_interval=0.3) as store:
            futs = []
            for i in range(6):
                futs.append(store.submit(nm("ci", sender=i, cid=f"c{i}")))
                await asyncio.sleep(0.01)
            res = await asyncio.gather(*futs)
            assert store.stats["groups"] == 2 and store.stats["inserted"] == 6
            assert [r.message.seq for r in res] == [1, 2, 3, 4, 5, 6]
            assert seqs(await all_history(store, "ci")) == [1, 2, 3, 4, 5, 6]

    run(body())


def test_appends_further_apart_than_the_interval_are_not_held_back(tmp_path, run):
    """The interval only holds back an append that comes less than the interval after
    the last group went: one after a pause goes at once. (1 s interval, 0.5 s bounds:
    far from this machine's commit times.)"""
    async def body():
        async with _opened(tmp_path, commit_interval=1.0) as store:
            _, first = await _timed(store, nm("far", sender=1))
            _, held = await _timed(store, nm("far", sender=2))  # right after: waits
            await asyncio.sleep(1.05)
            _, later = await _timed(store, nm("far", sender=3))
            assert first < 0.5 and later < 0.5
            assert held >= 0.5
            assert store.stats["groups"] == 3

    run(body())


def test_interval_zero_is_a_commit_per_group_and_close_does_not_wait(tmp_path, run):
    async def body():
        async with _opened(tmp_path, commit_interval=0) as store:
            for i in range(4):
                await store.submit(nm("z", sender=i))
            assert store.stats["groups"] == 4
        store = SqliteMessageStore(str(tmp_path / "held.sqlite3"), commit_interval=30.0)
        await store.open()
        await store.submit(nm("h", sender=1))
        held = [store.submit(nm("h", sender=i)) for i in range(2, 5)]  # waits for 30 s...
        await asyncio.sleep(0.05)
        assert not any(f.done() for f in held)
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        await store.close()  # ...unless the store closes: they go in now
        assert loop.time() - t0 < 10
        assert [f.result().message.seq for f in held] == [2, 3, 4]
        again = SqliteMessageStore(str(tmp_path / "held.sqlite3"))
        await again.open()
        try:
            assert seqs(await all_history(again, "h")) == [1, 2, 3, 4]
        finally:
            await again.close()

    run(body())


def test_a_full_group_is_not_held_back_by_the_interval(tmp_path, run):
    """Appends held back by the interval go as soon as they fill a group (``max_batch``):
    with a 30 s interval, the second group goes once its fourth append comes."""
    async def body():
        async with _opened(tmp_path, commit_interval=30.0, max_batch=4) as store:
            await store.submit(nm("full", sender=0))
            held = []
            for i in range(1, 5):
                held.append(store.submit(nm("full", sender=i)))
                await asyncio.sleep(0.01)
            res = await asyncio.wait_for(asyncio.gather(*held), timeout=10)
            assert [r.message.seq for r in res] == [2, 3, 4, 5]
            assert store.stats["groups"] == 2

    run(body())


def test_worker_thread_runs_as_sched_batch_on_linux(tmp_path, run):
    """The worker waives wake-up preemption of the loop's thread (module docstring,
    "Scheduling"); the loop's own thread keeps its policy."""
    import os
    import threading

    if not hasattr(os, "SCHED_BATCH"):
        import pytest

        pytest.skip("no SCHED_BATCH here")

    async def body():
        async with _opened(tmp_path) as store:
            assert store._thread is not None
            tid = store._thread.native_id
            assert tid is not None
            assert os.sched_getscheduler(tid) == os.SCHED_BATCH
            assert os.sched_getscheduler(threading.get_native_id()) != os.SCHED_BATCH
            assert (await store.append(nm("sb", sender=1))).message.seq == 1

    run(body())
