#!/usr/bin/env python3
"""Message store benchmark: acknowledged-and-committed appends per second.

For each store (SQLite always; PostgreSQL with ``--postgres DSN`` or
``--private-postgres``):

1. raw rate, measured in the same run on the same table and settings:
   SQLite: one ``executemany`` INSERT of ``--raw-rows`` rows in one transaction
   (WAL, synchronous=FULL); PostgreSQL: one asyncpg ``COPY`` of ``--raw-rows`` rows
   into the same ``messages`` table; rows shaped like the store's (same tenant, rooms,
   senders, text), deleted again afterwards;
2. store rate: ``--senders`` concurrent senders, each awaiting ``append`` (with a
   client_msg_id) in a loop for ``--seconds``; every counted message was acknowledged,
   i.e. committed durably; ratio = store rate / raw rate;
2b. the raw rate again, right after the throughput phase, on the same table as the
   store left it (a few 100k rows: the indexes no longer fit in the page cache, which
   costs SQLite much more than on the empty table); ratio_same_size = store rate / that;
3. ack latency at half of the measured store rate: open loop (appends are issued on a
   fixed schedule whether or not earlier ones finished; latency is counted from the
   scheduled time, so queueing is not hidden), p50/p99/p99.9/max.

Usage::

    python benchmarks/bench_store.py [--postgres DSN | --private-postgres] [--json out.json] [--md out.md]

Writes JSON (``--json``) and a Markdown table (printed; also ``--md``, default: the JSON
path with .md).
"""

from __future__ import annotations

import argparse
import asyncio
import inspect
from array import array
import json
import os
import platform
import random
import shutil
import sqlite3
import statistics
import sys
import tempfile
import time
import uuid

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "tests", "store"))

from chathub.server.app import freeze_startup_heap  # noqa: E402
from chathub.store import NewMessage, SqliteMessageStore  # noqa: E402
from chathub.store.base import StoreUnavailable  # noqa: E402

TEXT = "benchmark message: the quick brown fox jumps over the lazy dog 0123456789"


# client_msg_ids: "counter" = c-<tag>-<n>, increasing with time (as counters, ULIDs,
# UUIDv7 or timestamps are); "uuid4" = random (the idempotency index then takes a group's
# inserts at one leaf page per message). Set from --client-ids.
CLIENT_IDS = "counter"


def _cid(i: int, tag: str) -> str:
    return str(uuid.uuid4()) if CLIENT_IDS == "uuid4" else f"c-{tag}-{i}"


def _msg(i: int, rooms: int, tag: str) -> NewMessage:
    return NewMessage(
        tenant_id=1, room=f"room{i % rooms}", sender=i % 1000, text=TEXT,
        ts=time.time_ns() // 1_000_000, msg_id=f"{tag}-{i}", client_msg_id=_cid(i, tag),
    )


# ------------------------------------------------------------------------------ raw rates
# Raw rows look like the store's (tenant 1, the same rooms, senders and text), with seqs
# far above the store's (no collision with its primary key) and their own ids; they are
# deleted again after the measurement.
RAW_SEQ0 = 10**12


def _raw_rows(rows: int, rooms: int, tag: str) -> list[tuple]:
    now = time.time_ns() // 1_000_000
    return [(1, f"room{i % rooms}", RAW_SEQ0 + i, f"raw{tag}-{i}", i % 1000, TEXT, now, _cid(i, f"raw{tag}"), None)
            for i in range(rows)]


def raw_sqlite(path: str, rows: int, rooms: int, tag: str, cache_kib: int) -> dict:
    db = sqlite3.connect(path, isolation_level=None, timeout=30)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=FULL")
    db.execute(f"PRAGMA cache_size=-{cache_kib}")  # the store's page cache
    data = _raw_rows(rows, rooms, tag)
    size = db.execute("SELECT count(*) FROM messages").fetchone()[0]
    t0 = time.perf_counter()
    db.execute("BEGIN IMMEDIATE")
    db.executemany(
        "INSERT INTO messages (tenant_id, room, seq, msg_id, sender, text, created_at, client_msg_id, reply_to) "
        "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", data)
    db.execute("COMMIT")
    dt = time.perf_counter() - t0
    db.execute("DELETE FROM messages WHERE tenant_id = 1 AND seq >= ?", (RAW_SEQ0,))
    db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    db.close()
    return {"rows": rows, "seconds": dt, "rows_per_s": rows / dt, "table_rows_before": size,
            "method": "executemany, one transaction"}


async def raw_postgres(dsn: str, schema: str, rows: int, rooms: int, tag: str) -> dict:
    import asyncpg

    conn = await asyncpg.connect(dsn, timeout=10)
    try:
        data = _raw_rows(rows, rooms, tag)
        size = await conn.fetchval(f'SELECT count(*) FROM "{schema}".messages')
        t0 = time.perf_counter()
        await conn.copy_records_to_table(
            "messages", records=data, schema_name=schema, timeout=600,
            columns=["tenant_id", "room", "seq", "msg_id", "sender", "text", "created_at", "client_msg_id",
                     "reply_to"],
        )
        dt = time.perf_counter() - t0
        await conn.execute(f'DELETE FROM "{schema}".messages WHERE tenant_id = 1 AND seq >= $1', RAW_SEQ0,
                           timeout=600)
        await conn.execute(f'VACUUM "{schema}".messages', timeout=600)
    finally:
        await conn.close()
    return {"rows": rows, "seconds": dt, "rows_per_s": rows / dt, "table_rows_before": size,
            "method": "asyncpg COPY, one transaction"}


# ------------------------------------------------------------------------------ store runs
async def closed_loop(store, senders: int, seconds: float, rooms: int, tag: str) -> dict:
    loop = asyncio.get_running_loop()
    counter = iter(range(10**12))
    acked = 0
    errors = 0
    lat = array("d")  # plain doubles: the benchmark must not grow the GC'd heap
    stop_at = loop.time() + seconds

    async def sender() -> None:
        nonlocal acked, errors
        while loop.time() < stop_at:
            i = next(counter)
            t0 = loop.time()
            try:
                await store.append(_msg(i, rooms, tag))
            except StoreUnavailable:
                errors += 1
                continue
            lat.append(loop.time() - t0)
            acked += 1

    g0 = dict(store.stats)
    t0 = loop.time()
    await asyncio.gather(*(sender() for _ in range(senders)))
    dt = loop.time() - t0
    groups = store.stats["groups"] - g0["groups"]
    lat = sorted(lat)
    return {
        "senders": senders, "seconds": dt, "acked": acked, "errors": errors, "acked_per_s": acked / dt,
        "groups": groups, "avg_group": (acked / groups) if groups else None,
        "closed_loop_p50_ms": 1000 * lat[len(lat) // 2] if lat else None,
        "closed_loop_p99_ms": 1000 * lat[int(len(lat) * 0.99)] if lat else None,
    }


async def open_loop(store, rate: float, seconds: float, rooms: int, tag: str) -> dict:
    """Issue ``rate`` appends/s on a fixed schedule; latency from the scheduled time."""
    loop = asyncio.get_running_loop()
    total = max(1, int(rate * seconds))
    interval = 1.0 / rate
    lat = array("d")
    errors = 0
    inflight: set[asyncio.Task] = set()  # finished tasks are dropped at once
    all_done = asyncio.Event()

    async def one(i: int, due: float) -> None:
        nonlocal errors
        try:
            await store.append(_msg(i, rooms, tag))
        except StoreUnavailable:
            errors += 1
            return
        lat.append(loop.time() - due)

    def finished(t: asyncio.Task) -> None:
        inflight.discard(t)
        if not inflight and issued_all:
            all_done.set()

    issued_all = False
    start = loop.time() + 0.05
    i = 0
    while i < total:
        now = loop.time()
        # issue everything that is due (timer resolution is ~1 ms; catch up in bursts)
        while i < total and start + i * interval <= now:
            t = asyncio.ensure_future(one(i, start + i * interval))
            inflight.add(t)
            t.add_done_callback(finished)
            i += 1
        if i < total:
            # >= 1 ms: shorter sleeps round to 0 in uvloop and would spin the loop thread
            await asyncio.sleep(max(0.001, start + i * interval - loop.time()))
    issued_all = True
    if inflight:
        await all_done.wait()
    dt = loop.time() - start
    lat = sorted(lat)
    q = lambda p: 1000 * lat[min(len(lat) - 1, int(len(lat) * p))]  # noqa: E731
    return {
        "target_per_s": rate, "issued": total, "acked": len(lat), "errors": errors,
        "achieved_per_s": len(lat) / dt, "p50_ms": q(0.50), "p90_ms": q(0.90), "p99_ms": q(0.99),
        "p999_ms": q(0.999), "max_ms": 1000 * lat[-1], "mean_ms": 1000 * statistics.fmean(lat),
    }


async def bench_sqlite(args, workdir: str) -> dict:
    path = os.path.join(workdir, "bench.sqlite3")
    s = SqliteMessageStore(path)
    await s.open()  # creates the schema
    await s.close()
    loop = asyncio.get_running_loop()
    cache = args.sqlite_cache_kib or inspect.signature(SqliteMessageStore).parameters["cache_kib"].default
    raw = await loop.run_in_executor(None, raw_sqlite, path, args.raw_rows, args.rooms, "a", cache)
    kw = {k: v for k, v in (("cache_kib", args.sqlite_cache_kib), ("max_batch", args.sqlite_max_batch))
          if v is not None}
    s = SqliteMessageStore(path, **kw)
    await s.open()
    freeze_startup_heap()  # as `chathub serve` does once started
    try:
        await closed_loop(s, args.senders, args.warmup, args.rooms, "warm")
        thr = await closed_loop(s, args.senders, args.seconds, args.rooms, "thr")
        raw_same = await loop.run_in_executor(None, raw_sqlite, path, args.raw_rows, args.rooms, "b", cache)
        lat = await open_loop(s, thr["acked_per_s"] / 2, args.seconds, args.rooms, "lat")
    finally:
        await s.close()
    settings = (f"WAL, synchronous=FULL, one worker thread, cache {cache} KiB, max_batch {s._max_batch}, "
                f"pipeline_min {s._pipeline_min}, gil_switch_interval {s._switch_interval}")
    return {"store": "sqlite", "settings": settings, "raw": raw,
            "raw_same_size": raw_same, "throughput": thr, "ratio": thr["acked_per_s"] / raw["rows_per_s"],
            "ratio_same_size": thr["acked_per_s"] / raw_same["rows_per_s"], "latency_half_load": lat}


async def bench_postgres(args, dsn: str) -> dict:
    import asyncpg

    from chathub.store.postgres import PostgresMessageStore

    schema = f"bench_{uuid.uuid4().hex[:10]}"
    kw = {k: v for k, v in (("writers", args.pg_writers), ("pipeline", args.pg_pipeline),
                            ("max_batch", args.pg_max_batch)) if v is not None}
    s = PostgresMessageStore(dsn, schema=schema, max_size=args.pg_pool, **kw)
    await s.open()
    freeze_startup_heap()  # as `chathub serve` does once started
    try:
        settings = {}
        async with s._conn() as c:
            for k in ("server_version", "fsync", "synchronous_commit", "wal_sync_method", "shared_buffers"):
                settings[k] = await c.fetchval(f"SHOW {k}")
        raw = await raw_postgres(dsn, schema, args.raw_rows, args.rooms, "a")
        await closed_loop(s, args.senders, args.warmup, args.rooms, "warm")
        thr = await closed_loop(s, args.senders, args.seconds, args.rooms, "thr")
        raw_same = await raw_postgres(dsn, schema, args.raw_rows, args.rooms, "b")
        lat = await open_loop(s, thr["acked_per_s"] / 2, args.seconds, args.rooms, "lat")
    finally:
        await s.close()
        conn = await asyncpg.connect(dsn, timeout=10)
        try:
            await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE', timeout=120)
        finally:
            await conn.close()
    return {"store": "postgres", "settings": settings | {"writers": s._writers, "pipeline": s._pipeline, "max_batch": s._max_batch,
                                        "pool_max": args.pg_pool},
            "raw": raw, "raw_same_size": raw_same, "throughput": thr, "ratio": thr["acked_per_s"] / raw["rows_per_s"],
            "ratio_same_size": thr["acked_per_s"] / raw_same["rows_per_s"], "latency_half_load": lat}


def markdown(results: list[dict], args) -> str:
    lines = [
        f"Store benchmark: {args.senders} concurrent senders, {args.rooms} rooms, {args.seconds:g}s per phase, "
        f"{os.cpu_count()} CPUs, Python {platform.python_version()}",
        "",
        "| store | acked+committed msg/s | raw rows/s, empty table | ratio | raw rows/s, same table after the run "
        "| ratio | avg group | closed-loop p99 ms | half load msg/s | p50 ms | p99 ms | p99.9 ms | max ms |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        t, l = r["throughput"], r["latency_half_load"]
        lines.append(
            f"| {r['store']} | {t['acked_per_s']:,.0f} | {r['raw']['rows_per_s']:,.0f} | {r['ratio']:.2f} "
            f"| {r['raw_same_size']['rows_per_s']:,.0f} ({r['raw_same_size']['table_rows_before']:,} rows) "
            f"| {r['ratio_same_size']:.2f} "
            f"| {t['avg_group'] or 0:.1f} | {t['closed_loop_p99_ms']:.1f} | {l['achieved_per_s']:,.0f} "
            f"| {l['p50_ms']:.2f} | {l['p99_ms']:.2f} | {l['p999_ms']:.2f} | {l['max_ms']:.2f} |"
        )
    lines += ["", "raw = " + "; ".join(f"{r['store']}: {r['raw']['method']} of {r['raw']['rows']:,} rows"
                                       for r in results)
              + ", measured on the empty table before the store's run and again on the same table right "
                "after the throughput phase (the store's rows still in it)"]
    return "\n".join(lines) + "\n"


async def main_async(args) -> list[dict]:
    results = []
    workdir = tempfile.mkdtemp(prefix="chathub-bench-", dir=args.dir)
    pg = None
    try:
        if not args.skip_sqlite:
            print("sqlite ...", file=sys.stderr)
            results.append(await bench_sqlite(args, workdir))
        dsn = args.postgres
        if args.private_postgres and not dsn:
            from pg_private import PrivatePostgres

            pg = PrivatePostgres(fsync=True)
            await asyncio.get_running_loop().run_in_executor(None, pg.init)
            await asyncio.get_running_loop().run_in_executor(None, pg.start)
            dsn = pg.dsn
        if dsn:
            print("postgres ...", file=sys.stderr)
            results.append(await bench_postgres(args, dsn))
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
        if pg is not None:
            pg.destroy()
    return results


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--postgres", metavar="DSN", help="benchmark PostgreSQL at DSN (a fresh schema is used)")
    ap.add_argument("--private-postgres", action="store_true",
                    help="start a private PostgreSQL (Debian binaries) for the run")
    ap.add_argument("--skip-sqlite", action="store_true")
    ap.add_argument("--sqlite-cache-kib", type=int, default=None, help="SQLite page cache (default: the store's)")
    ap.add_argument("--sqlite-max-batch", type=int, default=None, help="appends per group (default: the store's)")
    ap.add_argument("--senders", type=int, default=64)
    ap.add_argument("--rooms", type=int, default=16)
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--warmup", type=float, default=1.0)
    ap.add_argument("--raw-rows", type=int, default=100_000)
    ap.add_argument("--pg-pool", type=int, default=10)
    ap.add_argument("--pg-writers", type=int, default=None, help="writer lanes (default: the store's)")
    ap.add_argument("--pg-pipeline", type=int, default=None, help="groups in flight per lane (default: the store's)")
    ap.add_argument("--pg-max-batch", type=int, default=None, help="appends per group (default: the store's)")
    ap.add_argument("--client-ids", choices=("counter", "uuid4"), default="counter",
                    help="client_msg_id scheme: time-ordered counter (default) or random UUIDv4")
    ap.add_argument("--dir", default=None, help="directory for the SQLite file (default: temp dir)")
    ap.add_argument("--json", metavar="PATH")
    ap.add_argument("--md", metavar="PATH")
    args = ap.parse_args(argv)
    global CLIENT_IDS
    CLIENT_IDS = args.client_ids
    random.seed(1)
    try:
        import uvloop

        runner = uvloop.run
    except ImportError:  # pragma: no cover
        runner = asyncio.run
    results = runner(main_async(args))
    md = markdown(results, args)
    print(md)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": vars(args), "cpus": os.cpu_count(), "python": platform.python_version(),
                       "results": results}, f, indent=2)
        md_path = args.md or os.path.splitext(args.json)[0] + ".md"
    else:
        md_path = args.md
    if md_path:
        with open(md_path, "w") as f:
            f.write(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
