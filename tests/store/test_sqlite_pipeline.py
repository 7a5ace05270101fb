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
