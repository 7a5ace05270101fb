"""PostgreSQL message store (asyncpg).

Group commit
    Appends are spread over ``writers`` lanes (default 1) by hash of (tenant, room); one
    room always uses the same lane. A lane starts a group (at most ``max_batch``
    appends) whenever appends are queued and fewer than ``pipeline`` (default 2) of its
    groups are in flight, each on its own connection. A group is ``BEGIN``, ONE
    statement that does all of its work, and ``COMMIT`` (the explicit transaction lets
    the store read the transaction id before COMMIT, see "Outages and lost replies",
    and lets the next group send its statement while this one commits)::

        WITH c AS (INSERT INTO rooms … ORDER BY tenant_id, room
                   ON CONFLICT DO UPDATE SET last_seq = rooms.last_seq + n RETURNING …),
             ins AS (INSERT INTO messages SELECT … c.last_seq - k … FROM unnest(…) JOIN c)
        SELECT c.*, (SELECT count(*) FROM ins)

    The ack comes after COMMIT's reply (synchronous_commit as configured on the server).
    The upsert creates a missing counter row (rooms are auto-created on first use) and
    otherwise takes its row lock, so every group of every process writing to the
    database allocates seq ranges of a room one after the other: no gaps, no
    duplicates. Counter rows are locked in (tenant_id, room) order, so groups cannot
    deadlock.

Order of the answers
    Two groups of a lane in flight may share a room; whichever took the room's counter
    row first holds the lower seqs, and their replies may be read in either order. A
    finished group's stored results are therefore held until every group that was in
    flight when it finished and shares a room with it has finished too (one started
    later cannot get lower seqs), then answered in seq order per room. Callers of one
    room thus always see their results in seq order.

Idempotence
    Unique indexes on (tenant, room, sender, client_msg_id) and (tenant, msg_id). The
    first attempt is optimistic: a group that repeats a stored message fails with a
    unique violation (nothing of it is written, so no seq is burnt) and is retried with
    pre-checks that find the earlier copies and answer those appends as duplicates.
    Two processes racing on the same client_msg_id resolve the same way.

Outages and lost replies
    * Every network operation has a timeout (connect, acquire, each statement).
    * An error reported by the server for the statement means nothing was written.
    * A connection-level error (or a client timeout) while the statement is in flight
      leaves the outcome unknown. The store settles it before answering: it reconnects
      (waiting for the pool to come back, at most ``resolve_timeout`` seconds), makes
      sure the backend that ran the statement is gone (``pg_terminate_backend`` on its
      pid and start time, asked again until it has left ``pg_stat_activity``: until
      then it might still commit), then looks the group's msg_ids up. All found -> the
      appends succeed with the stored seqs; none -> ``StoreUnavailable`` (nothing
      stored). If this cannot be settled in time, the appends raise ``CommitUnknown``
      (a ``StoreUnavailable``): retrying with the same client_msg_id/msg_id is then
      safe, it returns the stored copy with ``duplicate=True``. Hence: a success is
      always in history; a failure is never doubled by a retry with the same
      client_msg_id.
    * On a connection-level error the store probes the server with a fresh connection.
      If that fails too it marks itself down: operations fail immediately with
      ``StoreUnavailable`` (no waiting on a dead server) while a background task
      recreates the pool with exponential backoff (capped at ``max_backoff``); the store
      is up again as soon as a pool could be created. No restart of the hub is needed.
"""

from __future__ import annotations

import asyncio
import logging
import random
from contextlib import asynccontextmanager
from typing import Any, AsyncIterator, Awaitable, Callable

import asyncpg
import asyncpg.exceptions as pgx

from . import migrations as _migrations
from ._common import (
    plan_group,
    MSG_COLS,
    SANCTION_KINDS,
    check_int,
    check_scope,
    check_str,
    clamp_limit,
    group_reactions,
    new_result,
    now_ms,
    row_to_message,
    validate_new,
)
from .base import (
    AppendResult,
    AuditEntry,
    CommitUnknown,
    Conflict,
    HistoryPage,
    InvalidMessage,
    NewMessage,
    NotFound,
    Replay,
    RoomRecord,
    Sanction,
    StoredMessage,
    StoreError,
    StoreUnavailable,
)

log = logging.getLogger("chathub.store.postgres")

_UNAVAILABLE = (
    OSError,  # includes ConnectionError and (3.11+) asyncio.TimeoutError
    pgx.PostgresConnectionError,  # class 08
    pgx.InterfaceError,  # "connection is closed", …
    pgx.InternalClientError,
    pgx.OperatorInterventionError,  # 57: admin/crash shutdown, cannot connect now, query canceled
    pgx.InsufficientResourcesError,  # 53: disk full, too many connections
    pgx.ReadOnlySQLTransactionError,  # a standby after failover
    pgx.LockNotAvailableError,  # lock_timeout
    pgx.IdleInTransactionSessionTimeoutError,
    pgx.InvalidCatalogNameError,  # database does not exist (yet)
    pgx.InvalidAuthorizationSpecificationError,
)

_RETRYABLE = (pgx.UniqueViolationError, pgx.TransactionRollbackError)  # + deadlock/serialization


def _is_unavailable(e: BaseException) -> bool:
    return isinstance(e, _UNAVAILABLE)


class _Retry(Exception):
    pass


class _Isolate(Exception):
    pass


# Pre-checks are per-key LATERAL probes with LIMIT 1 (which keeps the planner from
# flattening them into a join): asyncpg's prepared statements switch to a cached
# generic plan, and one made while ``messages`` was small would otherwise be a hash
# join over a seq scan of the whole table, kept until the next autoanalyze.
_PRECHECK_KEYS = (
    f"SELECT {MSG_COLS} FROM unnest($1::bigint[], $2::text[], $3::bigint[], $4::text[]) AS k(t, r, s, c) "
    f"CROSS JOIN LATERAL (SELECT {MSG_COLS} FROM messages WHERE tenant_id = k.t AND room = k.r "
    "AND sender = k.s AND client_msg_id = k.c LIMIT 1) AS m"
)

_PRECHECK_IDS = (
    f"SELECT {MSG_COLS} FROM unnest($1::bigint[], $2::text[]) AS k(t, id) "
    f"CROSS JOIN LATERAL (SELECT {MSG_COLS} FROM messages WHERE tenant_id = k.t AND msg_id = k.id LIMIT 1) AS m"
)

# One statement does all of a group's work (between BEGIN and COMMIT): allocate the
# group's seq ranges and insert its rows. The upsert creates a missing counter row and
# otherwise takes its row lock (in (tenant_id, room) order, so concurrent groups cannot
# deadlock) and moves last_seq on by the room's count.
_WRITE = """
WITH c AS (
    INSERT INTO rooms AS r (tenant_id, room, last_seq)
    SELECT u.t, u.r, u.n FROM unnest($1::bigint[], $2::text[], $3::bigint[]) AS u(t, r, n)
    ORDER BY u.t, u.r
    ON CONFLICT (tenant_id, room) DO UPDATE SET last_seq = r.last_seq + EXCLUDED.last_seq
    RETURNING r.tenant_id, r.room, r.last_seq
), ins AS (
    INSERT INTO messages (tenant_id, room, seq, msg_id, sender, text, created_at, client_msg_id, reply_to)
    SELECT m.t, m.r, c.last_seq - m.back, m.id, m.s, m.x, m.ts, m.cid, m.rt
    FROM unnest($4::bigint[], $5::text[], $6::bigint[], $7::text[], $8::bigint[], $9::text[],
                $10::bigint[], $11::text[], $12::bigint[]) AS m(t, r, back, id, s, x, ts, cid, rt)
    JOIN c ON c.tenant_id = m.t AND c.room = m.r
    RETURNING 1
)
SELECT c.tenant_id, c.room, c.last_seq, txid_current() AS xid, (SELECT count(*) FROM ins) AS inserted FROM c
"""


class _Group:
    __slots__ = ("items", "prev", "written", "settled")

    def __init__(self, items: list[tuple[NewMessage, asyncio.Future]], prev: _Group | None,
                 loop: asyncio.AbstractEventLoop) -> None:
        self.items = items
        self.prev = prev  # the lane's group before this one, until this one is answered
        self.written = loop.create_future()  # holds its counter rows (or is done)
        self.settled = loop.create_future()  # its appends are answered


class _Lane:
    __slots__ = ("pending", "wake", "task", "inflight", "tasks", "conns", "last")

    def __init__(self) -> None:
        self.pending: list[tuple[NewMessage, asyncio.Future]] = []
        self.wake = asyncio.Event()
        self.task: asyncio.Task | None = None
        self.inflight: set[_Group] = set()  # started, not finished (at most ``pipeline``)
        self.tasks: set[asyncio.Task] = set()
        self.conns: list[tuple[asyncpg.Pool, asyncpg.Connection]] = []  # kept between writes
        self.last: _Group | None = None


def _quote_ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


class PostgresMessageStore:
    """``MessageStore`` + ``RoomStore`` + ``StoreAdmin`` on PostgreSQL."""

    dialect = "postgres"

    def __init__(
        self,
        dsn: str,
        *,
        min_size: int = 1,
        max_size: int = 10,
        retention_max_age_s: int | None = None,
        retention_max_per_room: int | None = None,
        migrate: bool = True,
        schema: str | None = None,
        writers: int | None = None,
        pipeline: int = 2,
        max_batch: int = 500,
        connect_timeout: float = 3.0,
        command_timeout: float = 5.0,
        resolve_timeout: float = 15.0,
        max_backoff: float = 1.0,
    ) -> None:
        self.dsn = dsn
        self.min_size = max(0, min_size)
        self.max_size = max(1, max_size)
        self.retention_max_age_s = retention_max_age_s
        self.retention_max_per_room = retention_max_per_room
        self.schema = schema
        self._migrate_on_open = migrate
        # One lane by default: every append of this process then shares one queue, and
        # up to ``pipeline`` groups of it are in flight on their own connections (the
        # server works on one while this process prepares the next and answers the
        # last). Groups of at most ``max_batch``: with more waiting senders than that,
        # the queue splits into several groups that keep the pipeline full.
        # benchmarks/bench_store.py, 1000 senders on 2 cores: pipeline 1 ~49k/s,
        # 2 ~79-84k/s, 3 ~73k/s. More lanes partition rooms (one room always uses the
        # same lane).
        self._writers = max(1, min(writers if writers is not None else 1, self.max_size))
        self._pipeline = max(1, min(pipeline, self.max_size))
        self._max_batch = max(1, max_batch)
        self.connect_timeout = connect_timeout
        self.command_timeout = command_timeout
        self.resolve_timeout = resolve_timeout
        self.max_backoff = max_backoff
        self._pool: asyncpg.Pool | None = None
        self._up: asyncio.Event | None = None
        self._down_reason = "store is not open"
        self._recover_task: asyncio.Task | None = None
        self._lanes: list[_Lane] = []
        self._closing = False  # close() began: no new calls (queued appends still flush)
        self._stopping = False  # writers are done: the pool goes away
        self._opened = False
        self._bg: set[asyncio.Task] = set()
        #: counters for metrics/tests: transactions (groups), messages inserted, duplicate
        #: appends answered, lost COMMIT replies settled as committed/aborted/unknown,
        #: outages (store marked down) and recoveries.
        self.stats: dict[str, int] = dict.fromkeys(
            ("groups", "inserted", "duplicates", "retries", "commit_lost_committed", "commit_lost_aborted",
             "commit_unknown", "outages", "recoveries"), 0)
        #: test hook: ``await hook(phase, conn)``; phase "commit" runs instead of nothing
        #: right before COMMIT is sent, with the write path in its "COMMIT in flight" state.
        self._fault_hook: Callable[[str, Any], Awaitable[None]] | None = None

    # ------------------------------------------------------------------ lifecycle
    def _server_settings(self) -> dict[str, str]:
        s = {
            "application_name": "chathub",
            # server-side bounds, in case a client-side timeout leaves work running
            "statement_timeout": "60000",
            "lock_timeout": "10000",
            "idle_in_transaction_session_timeout": "60000",
        }
        if self.schema:
            s["search_path"] = _quote_ident(self.schema)
        return s

    async def _create_pool(self) -> asyncpg.Pool:
        return await asyncio.wait_for(
            asyncpg.create_pool(
                self.dsn,
                min_size=min(self.min_size, self.max_size),
                max_size=self.max_size,
                timeout=self.connect_timeout,
                command_timeout=self.command_timeout,
                server_settings=self._server_settings(),
                max_inactive_connection_lifetime=120,
            ),
            timeout=self.connect_timeout * 2 + 1,
        )

    async def open(self) -> None:
        if self._opened:
            raise StoreError("store already opened")
        self._opened = True
        self._up = asyncio.Event()
        try:
            if self.schema:
                await self._ensure_schema()
            self._pool = await self._create_pool()
        except Exception as e:
            raise StoreUnavailable(f"cannot connect to PostgreSQL: {e!r}") from e
        self._up.set()
        try:
            if self._migrate_on_open:
                await self.migrate()
        except BaseException:
            await self.close()
            raise
        self._lanes = [_Lane() for _ in range(self._writers)]
        for lane in self._lanes:
            lane.task = asyncio.create_task(self._lane_loop(lane), name="chathub-pg-writer")

    async def _ensure_schema(self) -> None:
        conn = await asyncpg.connect(self.dsn, timeout=self.connect_timeout)
        try:
            try:
                assert self.schema is not None  # only called with a schema
                await conn.execute(f"CREATE SCHEMA IF NOT EXISTS {_quote_ident(self.schema)}", timeout=30)
            except (pgx.UniqueViolationError, pgx.DuplicateSchemaError):
                pass  # created concurrently by another process
        finally:
            await _close_conn(conn)

    async def close(self) -> None:
        """Flush queued appends, stop the writers and close the pool."""
        if self._closing:
            return
        self._closing = True
        for lane in self._lanes:
            lane.wake.set()
        tasks = [lane.task for lane in self._lanes if lane.task is not None]
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=self.resolve_timeout + 3 * self.command_timeout + 5)
            for t in pending:
                t.cancel()
            if pending:
                await asyncio.wait(pending, timeout=5)
        self._stopping = True
        for lane in self._lanes:
            for _, fut in lane.pending:
                if not fut.done():
                    fut.set_exception(StoreUnavailable("store is closed"))
            lane.pending.clear()
        for bg in [self._recover_task, *self._bg]:
            if bg is not None and not bg.done():
                bg.cancel()
        pool, self._pool = self._pool, None
        if self._up is not None:
            self._up.clear()
        self._down_reason = "store is closed"
        if pool is not None:
            await _close_pool(pool)

    @property
    def available(self) -> bool:
        return self._up is not None and self._up.is_set() and not self._closing

    # ------------------------------------------------------------------ health
    def _check_up(self, writer: bool = False) -> asyncpg.Pool:
        if self._stopping or (self._closing and not writer):
            raise StoreUnavailable("store is closed")
        pool = self._pool
        if self._up is None or not self._up.is_set() or pool is None:
            raise StoreUnavailable(self._down_reason)
        return pool

    def _suspect(self, pool: asyncpg.Pool | None, exc: BaseException) -> None:
        """A connection-level error was seen on ``pool``: check the server, recover."""
        if self._stopping or pool is None or pool is not self._pool:
            return
        if self._recover_task is None or self._recover_task.done():
            self._recover_task = asyncio.create_task(self._recover(pool, exc), name="chathub-pg-recover")

    async def _recover(self, pool: asyncpg.Pool, exc: BaseException) -> None:
        try:
            conn = await asyncpg.connect(
                self.dsn, timeout=self.connect_timeout, server_settings=self._server_settings()
            )
            try:
                await conn.fetchval("SELECT 1", timeout=self.command_timeout)
            finally:
                await _close_conn(conn)
            # The server answers: only some connections died. Replace the stale ones.
            await pool.expire_connections()
            return
        except asyncio.CancelledError:
            raise
        except Exception as probe_exc:  # noqa: BLE001
            reason = probe_exc
        # Down: fail fast from now on and rebuild the pool in the background.
        assert self._up is not None
        self._up.clear()
        self.stats["outages"] += 1
        self._down_reason = f"PostgreSQL unavailable: {reason!r} (after {exc!r})"
        log.warning("%s; reconnecting", self._down_reason)
        if self._pool is pool:
            self._pool = None
        self._spawn(_close_pool(pool))
        backoff = 0.05
        while not self._stopping:
            try:
                new = await self._create_pool()
            except asyncio.CancelledError:
                raise
            except Exception as e:  # noqa: BLE001
                self._down_reason = f"PostgreSQL unavailable: {e!r}"
                await asyncio.sleep(backoff * (0.5 + random.random() / 2))
                backoff = min(backoff * 2, self.max_backoff)
                continue
            if self._stopping:
                await _close_pool(new)
                return
            self._pool = new
            self._up.set()
            self.stats["recoveries"] += 1
            log.warning("PostgreSQL reachable again; store recovered")
            return

    def _spawn(self, coro) -> None:
        t = asyncio.create_task(coro)
        self._bg.add(t)
        t.add_done_callback(self._bg.discard)

    async def _acquire(self, pool: asyncpg.Pool):
        try:
            return await pool.acquire(timeout=self.connect_timeout + 1)
        except asyncio.CancelledError:
            raise
        except Exception as e:  # noqa: BLE001
            if _is_unavailable(e) or isinstance(e, asyncpg.PostgresError):
                self._suspect(pool, e)
                raise StoreUnavailable(f"PostgreSQL unavailable: {e!r}") from e
            raise

    @asynccontextmanager
    async def _conn(self) -> AsyncIterator[asyncpg.Connection]:
        pool = self._check_up()
        conn = await self._acquire(pool)
        try:
            yield conn
        except StoreError:
            raise
        except asyncio.CancelledError:
            _kill(conn)
            raise
        except Exception as e:  # noqa: BLE001
            if _is_unavailable(e):
                _kill(conn)
                self._suspect(pool, e)
                raise StoreUnavailable(f"PostgreSQL unavailable: {e!r}") from e
            if isinstance(e, asyncpg.PostgresError):
                raise StoreError(f"postgres: {e!r}") from e
            raise
        finally:
            await _release(pool, conn)

    async def ping(self) -> None:
        async with self._conn() as conn:
            await conn.fetchval("SELECT 1", timeout=self.command_timeout)

    # ------------------------------------------------------------------ migrations
    async def migrate(self) -> list[str]:
        applied: list[str] = []
        async with self._conn() as conn:
            async with conn.transaction():
                # The session limits are for traffic; a migration may take long, and so
                # may waiting for another process that is running one.
                await conn.execute("SET LOCAL statement_timeout = 0; SET LOCAL lock_timeout = '10min'")
                # Serialises concurrent starters; released at COMMIT/ROLLBACK.
                await conn.execute("SELECT pg_advisory_xact_lock($1)", _migrations.ADVISORY_LOCK_KEY, timeout=660)
                await conn.execute(
                    "CREATE TABLE IF NOT EXISTS schema_migrations ("
                    "version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at BIGINT NOT NULL)",
                    timeout=60,
                )
                done = {r[0] for r in await conn.fetch("SELECT version FROM schema_migrations", timeout=60)}
                for m in _migrations.load("postgres"):
                    if m.version in done:
                        continue
                    await conn.execute(m.sql, timeout=600)
                    await conn.execute(
                        "INSERT INTO schema_migrations (version, name, applied_at) VALUES ($1, $2, $3)",
                        m.version, m.name, now_ms(), timeout=60,
                    )
                    applied.append(m.name)
        return applied

    # ------------------------------------------------------------------ append
    async def append(self, msg: NewMessage) -> AppendResult:
        return await self.submit(msg)

    def submit(self, msg: NewMessage) -> asyncio.Future[AppendResult]:
        validate_new(msg)
        self._check_up()
        if not self._lanes:
            raise StoreUnavailable("store is not open")
        lanes = self._lanes
        lane = lanes[0] if len(lanes) == 1 else lanes[hash((msg.tenant_id, msg.room)) % len(lanes)]
        fut = asyncio.get_running_loop().create_future()
        lane.pending.append((msg, fut))
        if not lane.wake.is_set():
            lane.wake.set()
        return fut

    async def _lane_loop(self, lane: _Lane) -> None:
        """Start a group whenever appends are queued and fewer than ``pipeline`` groups
        of this lane are in flight."""
        loop = asyncio.get_running_loop()
        try:
            while True:
                if not lane.pending or len(lane.inflight) >= self._pipeline:
                    if self._closing and not lane.pending:
                        break
                    lane.wake.clear()
                    await lane.wake.wait()
                    continue
                batch = lane.pending[: self._max_batch]
                del lane.pending[: self._max_batch]
                g = _Group(batch, lane.last, loop)
                lane.last = g
                lane.inflight.add(g)
                t = asyncio.create_task(self._run_group(lane, g))
                lane.tasks.add(t)
                t.add_done_callback(lane.tasks.discard)
            while lane.tasks:
                await asyncio.wait(set(lane.tasks))
        except asyncio.CancelledError:
            for t in list(lane.tasks):
                t.cancel()
            raise
        finally:
            conns, lane.conns = lane.conns, []
            for pool, conn in conns:
                await _release(pool, conn)

    async def _run_group(self, lane: _Lane, g: _Group) -> None:
        """Write one group, then answer its appends once the previous group is answered."""
        items = [(m, f) for m, f in g.items if not f.done()]  # callers that gave up: skip
        results: list[Any] | None = None
        try:
            if items:
                results = await self._commit_batch(lane, g, items)
        except asyncio.CancelledError:
            _fail(items, CommitUnknown, "store closed while committing")
            raise
        except BaseException as e:  # noqa: BLE001 - never let a lane die
            log.exception("writer lane error")
            _fail(items, StoreUnavailable, f"internal error: {e!r}", e)
        finally:
            if not g.written.done():
                g.written.set_result(None)
            lane.inflight.discard(g)
            lane.wake.set()  # a pipeline slot is free
            prev, g.prev = g.prev, None
            if prev is not None and not prev.settled.done():
                # Answer in group order: a later group can only hold later seqs of a room.
                await asyncio.wait((prev.settled,))
            if results is not None:
                _settle_many(items, results)
            g.settled.set_result(None)

    async def _commit_batch(self, lane: _Lane, g: _Group, items: list[tuple[NewMessage, asyncio.Future]]) -> list[Any]:
        """Store ``items``; returns an AppendResult or exception per item."""
        msgs = [m for m, _ in items]
        check_ids = False
        for _attempt in range(4):
            try:
                return await self._write_batch(lane, g, msgs, check_ids, True)
            except _Retry:
                self.stats["retries"] += 1
                check_ids = True
                continue
            except _Isolate:
                break
            except StoreError as e:
                cause = e.__cause__ or e
                out: list[Any] = []
                for _ in items:
                    err = type(e)(str(e))
                    err.__cause__ = cause
                    out.append(err)
                return out
        # A batch kept failing for a reason tied to its content: one message at a time,
        # so that only the offending message fails. (The next group stays behind these
        # transactions: ``written`` is set only when the group is done.)
        out = []
        for m in msgs:
            res: Any = None
            for _attempt in range(3):
                try:
                    res = (await self._write_batch(lane, g, [m], True, False))[0]
                    break
                except _Retry:
                    continue
                except _Isolate as e:
                    res = StoreError(f"cannot store message: {e.__cause__!r}")
                    break
                except StoreError as e:
                    res = e
                    break
            else:
                res = StoreError("message kept conflicting")
            out.append(res)
        return out

    async def _writer_conn(self, lane: _Lane, pool: asyncpg.Pool) -> asyncpg.Connection:
        """A connection for one write: one the lane kept from an earlier write (which
        skips the pool's reset round trip), or a new one from the pool."""
        while lane.conns:
            p, conn = lane.conns.pop()
            if p is pool and not conn.is_closed():
                return conn
            await _release(p, conn)
        return await self._acquire(pool)

    async def _write_batch(
        self, lane: _Lane, g: _Group, msgs: list[NewMessage], check_ids: bool, batch: bool
    ) -> list[Any]:
        """One attempt; returns AppendResult or exception per message, or raises
        StoreUnavailable/CommitUnknown for all, _Retry or _Isolate."""
        pool = self._check_up(writer=True)
        conn = await self._writer_conn(lane, pool)
        keep = False
        ct = self.command_timeout
        state = "pre"
        xid = None
        pid = conn.get_server_pid()
        out: list[Any] = [None] * len(msgs)
        per_room: dict[tuple[int, str], list[int]] = {}
        last: dict[tuple[int, str], int] | None = None  # per room: last_seq after the group
        try:
            existing_key: dict[tuple, StoredMessage] = {}
            existing_id: dict[tuple, StoredMessage] = {}
            if check_ids:
                # Only after a unique violation (first attempts are optimistic): find
                # what is stored already, to answer those appends as duplicates.
                keyed = [m for m in msgs if m.client_msg_id is not None]
                if keyed:
                    for row in await conn.fetch(
                        _PRECHECK_KEYS,
                        [m.tenant_id for m in keyed], [m.room for m in keyed],
                        [m.sender for m in keyed], [m.client_msg_id for m in keyed],
                        timeout=ct,
                    ):
                        sm = row_to_message(row)
                        existing_key[(sm.tenant_id, sm.room, sm.sender, sm.client_msg_id)] = sm
                for row in await conn.fetch(
                    _PRECHECK_IDS, [m.tenant_id for m in msgs], [m.msg_id for m in msgs], timeout=ct
                ):
                    sm = row_to_message(row)
                    existing_id[(sm.tenant_id, sm.msg_id)] = sm

            # Plan: drop duplicates, group the rest by room (batch order kept).
            per_room = plan_group(msgs, existing_key, existing_id, out)

            if per_room:
                rt, rr, rn = [], [], []
                mb: list[Any]
                mt, mr, mb, mid, ms, mx, mts, mcid, mrt = [], [], [], [], [], [], [], [], []
                total = 0
                for (t, r), idxs in per_room.items():
                    n = len(idxs)
                    total += n
                    rt.append(t)
                    rr.append(r)
                    rn.append(n)
                    mt += [t] * n
                    mr += [r] * n
                    mb += range(n - 1, -1, -1)
                    for i in idxs:
                        m = msgs[i]
                        mid.append(m.msg_id)
                        ms.append(m.sender)
                        mx.append(m.text)
                        mts.append(m.ts)
                        mcid.append(m.client_msg_id)
                        mrt.append(m.reply_to)
                await conn.execute("BEGIN", timeout=ct)
                state = "txn"
                prev = g.prev
                if prev is not None and not prev.written.done():
                    # Counter rows are taken in group order: the previous group of this
                    # lane must hold its rows (or be done) before this one asks for them.
                    await asyncio.wait((prev.written,), timeout=ct)
                    if not prev.written.done():
                        raise StoreUnavailable("the previous group of this writer lane is stuck")
                rows = await conn.fetch(
                    _WRITE, rt, rr, rn, mt, mr, mb, mid, ms, mx, mts, mcid, mrt, timeout=ct
                )
                xid = rows[0][3]
                if rows[0][4] != total or len(rows) != len(per_room):
                    raise StoreError(f"internal: inserted {rows[0][4]} of {total}")
                # the results are built after COMMIT: until it returns this group holds
                # its rooms' counter rows, and the next group of the lane waits for them
                last = {(row[0], row[1]): row[2] for row in rows}
                state = "commit"
                if batch and not g.written.done():
                    g.written.set_result(None)  # the next group may take the counter rows now
                if self._fault_hook is not None:
                    await self._fault_hook("commit", conn)
                await conn.execute("COMMIT", timeout=ct)
                state = "done"
                self.stats["groups"] += 1
                self.stats["inserted"] += total
            keep = True
        except BaseException as e:  # noqa: BLE001
            if state == "commit":
                _kill(conn)
                if isinstance(e, asyncio.CancelledError):
                    raise
                if _is_unavailable(e):
                    self._suspect(pool, e)
                ok = await self._resolve(xid, pid)
                self.stats[{True: "commit_lost_committed", False: "commit_lost_aborted", None: "commit_unknown"}[ok]] += 1
                if ok:
                    self.stats["groups"] += 1
                    self.stats["inserted"] += sum(len(v) for v in per_room.values())
                if ok is None:
                    raise CommitUnknown(
                        f"connection lost during COMMIT and the outcome could not be checked: {e!r}"
                    ) from e
                if not ok:
                    raise StoreUnavailable(f"not committed (connection lost during COMMIT): {e!r}") from e
                log.info("COMMIT outcome settled after %r: committed", e)
            else:
                if isinstance(e, asyncio.CancelledError):
                    _kill(conn)
                    raise
                if isinstance(e, _RETRYABLE):
                    keep = await self._rollback_or_drop(conn, state)
                    raise _Retry() from e
                if _is_unavailable(e):
                    _kill(conn)
                    self._suspect(pool, e)
                    raise StoreUnavailable(f"PostgreSQL unavailable: {e!r}") from e
                keep = await self._rollback_or_drop(conn, state)
                if isinstance(e, StoreError):
                    raise
                raise _Isolate() from e
        finally:
            if keep and not self._closing and pool is self._pool and not conn.is_closed():
                lane.conns.append((pool, conn))
            else:
                await _release(pool, conn)
        if last is not None:  # committed (or settled as committed after a lost reply)
            for (t, r), idxs in per_room.items():
                seq = last[(t, r)] - len(idxs)
                for i in idxs:
                    seq += 1
                    out[i] = new_result(t, r, seq, msgs[i])
        if sum(map(len, per_room.values())) != len(msgs):  # some were not stored anew
            for i, v in enumerate(out):
                if type(v) is int:
                    out[i] = v = AppendResult(out[v].message, duplicate=True)
                if type(v) is AppendResult and v.duplicate:
                    self.stats["duplicates"] += 1
        return out

    async def _rollback_or_drop(self, conn: asyncpg.Connection, state: str) -> bool:
        """End a failed transaction; True if the connection is fit for reuse."""
        if state == "pre":
            return True
        try:
            await conn.execute("ROLLBACK", timeout=self.command_timeout)
            return True
        except Exception:  # noqa: BLE001
            _kill(conn)
            return False

    async def _resolve(self, xid: int | None, old_pid: int) -> bool | None:
        """Outcome of transaction ``xid`` whose COMMIT reply was lost: True committed,
        False aborted, None unknown (could not reach the server in time)."""
        if xid is None:
            return False  # COMMIT was never sent with a known transaction (cannot happen)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.resolve_timeout
        while True:
            remaining = deadline - loop.time()
            if remaining <= 0 or self._stopping:
                return None
            assert self._up is not None
            if not self._up.is_set() or self._pool is None:
                try:
                    await asyncio.wait_for(self._up.wait(), remaining)
                except asyncio.TimeoutError:
                    return None
                continue
            pool = self._pool
            try:
                conn = await asyncio.wait_for(pool.acquire(), min(remaining, self.connect_timeout + 1))
            except asyncio.CancelledError:
                raise
            except Exception as e:  # noqa: BLE001
                self._suspect(pool, e)
                await asyncio.sleep(0.05)
                continue
            try:
                st = await conn.fetchval("SELECT txid_status($1)", xid, timeout=min(remaining, self.command_timeout))
                if st == "committed":
                    return True
                if st == "aborted":
                    return False
                if st == "in progress":
                    # Our old backend still holds the transaction open (it has not seen
                    # the disconnect yet): end it, then ask again.
                    await conn.fetchval("SELECT pg_terminate_backend($1)", old_pid, timeout=self.command_timeout)
                    await asyncio.sleep(0.02)
                    continue
                return None  # NULL: too old to tell
            except asyncio.CancelledError:
                _kill(conn)
                raise
            except Exception as e:  # noqa: BLE001
                if _is_unavailable(e):
                    _kill(conn)
                    self._suspect(pool, e)
                    await asyncio.sleep(0.05)
                    continue
                log.warning("cannot check COMMIT outcome: %r", e)
                return None
            finally:
                await _release(pool, conn)

    # ------------------------------------------------------------------ reads
    async def history(
        self,
        tenant_id: int,
        room: str,
        *,
        before_seq: int | None = None,
        after_seq: int | None = None,
        limit: int = 50,
    ) -> HistoryPage:
        check_scope(tenant_id, room)
        check_int("before_seq", before_seq, optional=True)
        check_int("after_seq", after_seq, optional=True)
        limit = clamp_limit(limit)
        base = f"SELECT {MSG_COLS} FROM messages WHERE tenant_id = $1 AND room = $2"
        ct = self.command_timeout
        async with self._conn() as conn:
            if after_seq is not None:
                if before_seq is not None:
                    rows = await conn.fetch(
                        base + " AND seq > $3 AND seq < $4 ORDER BY seq LIMIT $5",
                        tenant_id, room, after_seq, before_seq, limit + 1, timeout=ct,
                    )
                else:
                    rows = await conn.fetch(
                        base + " AND seq > $3 ORDER BY seq LIMIT $4", tenant_id, room, after_seq, limit + 1,
                        timeout=ct,
                    )
                return HistoryPage([row_to_message(x) for x in rows[:limit]], len(rows) > limit)
            if before_seq is not None:
                rows = await conn.fetch(
                    base + " AND seq < $3 ORDER BY seq DESC LIMIT $4", tenant_id, room, before_seq, limit + 1,
                    timeout=ct,
                )
            else:
                rows = await conn.fetch(
                    base + " ORDER BY seq DESC LIMIT $3", tenant_id, room, limit + 1, timeout=ct
                )
        return HistoryPage([row_to_message(x) for x in reversed(rows[:limit])], len(rows) > limit)

    async def replay(self, tenant_id: int, room: str, since_seq: int, limit: int) -> Replay:
        check_scope(tenant_id, room)
        check_int("since_seq", since_seq)
        limit = clamp_limit(limit)
        cols = ", ".join("m." + c.strip() for c in MSG_COLS.split(","))
        # One statement = one snapshot for the counter row and the messages.
        sql = (
            f"SELECT r.last_seq, r.trimmed_seq, {cols} FROM (SELECT 1) AS one "
            "LEFT JOIN rooms r ON r.tenant_id = $1 AND r.room = $2 "
            "LEFT JOIN LATERAL (SELECT * FROM messages WHERE tenant_id = $1 AND room = $2 AND seq > $3 "
            "ORDER BY seq LIMIT $4) m ON TRUE ORDER BY m.seq"
        )
        async with self._conn() as conn:
            rows = await conn.fetch(sql, tenant_id, room, since_seq, limit, timeout=self.command_timeout)
        last = rows[0][0] or 0
        trimmed = rows[0][1] or 0
        msgs = [row_to_message(tuple(x)[2:]) for x in rows if x[4] is not None]
        return Replay(msgs, complete=since_seq >= trimmed, last_seq=last)

    async def last_seq(self, tenant_id: int, room: str) -> int:
        check_scope(tenant_id, room)
        async with self._conn() as conn:
            v = await conn.fetchval(
                "SELECT last_seq FROM rooms WHERE tenant_id = $1 AND room = $2", tenant_id, room,
                timeout=self.command_timeout,
            )
        return v or 0

    # ------------------------------------------------------------------ edit / delete
    async def edit(self, tenant_id: int, room: str, seq: int, text: str, ts: int) -> StoredMessage:
        check_scope(tenant_id, room)
        check_int("seq", seq)
        check_str("text", text)
        check_int("ts", ts)
        async with self._conn() as conn:
            row = await conn.fetchrow(
                f"UPDATE messages SET text = $4, edited_at = $5 WHERE tenant_id = $1 AND room = $2 AND seq = $3 "
                f"AND NOT deleted RETURNING {MSG_COLS}",
                tenant_id, room, seq, text, ts, timeout=self.command_timeout,
            )
        if row is None:
            raise NotFound(f"message {tenant_id}/{room}#{seq} not found")
        return row_to_message(row)

    async def delete(self, tenant_id: int, room: str, seq: int, ts: int) -> StoredMessage:
        check_scope(tenant_id, room)
        check_int("seq", seq)
        check_int("ts", ts)
        async with self._conn() as conn:
            row = await conn.fetchrow(
                "WITH gone AS (DELETE FROM reactions WHERE tenant_id = $1 AND room = $2 AND seq = $3) "
                "UPDATE messages SET text = '', deleted = TRUE, deleted_at = COALESCE(deleted_at, $4) "
                f"WHERE tenant_id = $1 AND room = $2 AND seq = $3 RETURNING {MSG_COLS}",
                tenant_id, room, seq, ts, timeout=self.command_timeout,
            )
        if row is None:
            raise NotFound(f"message {tenant_id}/{room}#{seq} not found")
        return row_to_message(row)

    # ------------------------------------------------------------------ read positions
    async def set_read(self, tenant_id: int, room: str, user_id: int, seq: int) -> int:
        check_scope(tenant_id, room)
        check_int("user_id", user_id)
        check_int("seq", seq)
        async with self._conn() as conn:
            return await conn.fetchval(
                "INSERT INTO read_positions AS p (tenant_id, room, user_id, seq) VALUES ($1, $2, $3, "
                "GREATEST(0, LEAST($4, COALESCE((SELECT last_seq FROM rooms WHERE tenant_id = $1 AND room = $2), 0)))) "
                "ON CONFLICT (tenant_id, room, user_id) DO UPDATE SET seq = GREATEST(p.seq, EXCLUDED.seq) "
                "RETURNING seq",
                tenant_id, room, user_id, seq, timeout=self.command_timeout,
            )

    async def unread_count(self, tenant_id: int, room: str, user_id: int) -> int:
        check_scope(tenant_id, room)
        check_int("user_id", user_id)
        async with self._conn() as conn:
            return await conn.fetchval(
                "SELECT count(*) FROM messages WHERE tenant_id = $1 AND room = $2 AND NOT deleted AND seq > "
                "COALESCE((SELECT seq FROM read_positions WHERE tenant_id = $1 AND room = $2 AND user_id = $3), 0)",
                tenant_id, room, user_id, timeout=self.command_timeout,
            )

    # ------------------------------------------------------------------ retention
    async def apply_retention(self, now_ms: int) -> int:
        check_int("now_ms", now_ms)
        cutoff = None if self.retention_max_age_s is None else now_ms - int(self.retention_max_age_s) * 1000
        keep = self.retention_max_per_room
        total = 0
        if cutoff is not None or keep is not None:
            found: set[tuple[int, str]] = set()
            async with self._conn() as conn:
                if keep is not None:
                    found.update(
                        (r[0], r[1]) for r in await conn.fetch(
                            "SELECT tenant_id, room FROM rooms WHERE last_seq - trimmed_seq > $1", keep, timeout=60
                        )
                    )
                if cutoff is not None:
                    found.update(
                        (r[0], r[1]) for r in await conn.fetch(
                            "SELECT r.tenant_id, r.room FROM rooms r JOIN messages m ON m.tenant_id = r.tenant_id "
                            "AND m.room = r.room AND m.seq = r.trimmed_seq + 1 WHERE m.created_at < $1",
                            cutoff, timeout=60,
                        )
                    )
            for t, r in sorted(found):
                total += await self._retain_room(t, r, cutoff, keep)
        async with self._conn() as conn:
            await conn.execute(
                "DELETE FROM sanctions WHERE until IS NOT NULL AND until <= $1", now_ms, timeout=60
            )
        return total

    async def _retain_room(self, t: int, r: str, cutoff: int | None, keep: int | None) -> int:
        async with self._conn() as conn:
            async with conn.transaction():
                await conn.execute("SET LOCAL statement_timeout = '5min'")
                row = await conn.fetchrow(
                    "SELECT last_seq, trimmed_seq FROM rooms WHERE tenant_id = $1 AND room = $2", t, r, timeout=60
                )
                if row is None:
                    return 0
                last, trimmed = row
                bound = trimmed
                if keep is not None:
                    bound = max(bound, last - keep)
                if cutoff is not None:
                    y = await conn.fetchval(
                        "SELECT seq FROM messages WHERE tenant_id = $1 AND room = $2 AND seq > $3 "
                        "AND created_at >= $4 ORDER BY seq LIMIT 1",
                        t, r, trimmed, cutoff, timeout=60,
                    )
                    bound = max(bound, (y - 1) if y is not None else last)
                if bound <= trimmed:
                    return 0
                # Delete first, lock the counter row last (appends wait on it only for
                # the end of this transaction). New appends get seq > last >= bound.
                res = await conn.execute(
                    "DELETE FROM messages WHERE tenant_id = $1 AND room = $2 AND seq <= $3", t, r, bound, timeout=300
                )
                await conn.execute(
                    "DELETE FROM reactions WHERE tenant_id = $1 AND room = $2 AND seq <= $3", t, r, bound, timeout=300
                )
                await conn.execute(
                    "UPDATE rooms SET trimmed_seq = GREATEST(trimmed_seq, $3) WHERE tenant_id = $1 AND room = $2",
                    t, r, bound, timeout=60,
                )
        return int(res.split()[-1])

    # ------------------------------------------------------------------ rooms
    async def get_room(self, tenant_id: int, room: str) -> RoomRecord | None:
        check_scope(tenant_id, room)
        async with self._conn() as conn:
            row = await conn.fetchrow(
                "SELECT name, private, created_by, created_at FROM rooms "
                "WHERE tenant_id = $1 AND room = $2 AND registered",
                tenant_id, room, timeout=self.command_timeout,
            )
        if row is None:
            return None
        return RoomRecord(tenant_id, room, row[0], row[1], row[2], row[3])

    async def create_room(self, rec: RoomRecord) -> RoomRecord:
        check_scope(rec.tenant_id, rec.room)
        check_str("name", rec.name, optional=True)
        check_int("created_by", rec.created_by)
        check_int("created_at", rec.created_at)
        async with self._conn() as conn:
            ok = await conn.fetchval(
                "INSERT INTO rooms AS r (tenant_id, room, name, private, created_by, created_at, updated_at, registered) "
                "VALUES ($1, $2, $3, $4, $5, $6, $6, TRUE) ON CONFLICT (tenant_id, room) DO UPDATE SET "
                "name = EXCLUDED.name, private = EXCLUDED.private, created_by = EXCLUDED.created_by, "
                "created_at = EXCLUDED.created_at, updated_at = EXCLUDED.updated_at, registered = TRUE "
                "WHERE NOT r.registered RETURNING TRUE",
                rec.tenant_id, rec.room, rec.name, bool(rec.private), rec.created_by, rec.created_at,
                timeout=self.command_timeout,
            )
        if not ok:
            raise Conflict(f"room {rec.tenant_id}/{rec.room} exists")
        return rec

    async def delete_room(self, tenant_id: int, room: str) -> None:
        check_scope(tenant_id, room)
        async with self._conn() as conn:
            async with conn.transaction():
                await conn.execute("SET LOCAL statement_timeout = '5min'")
                # Lock the counter row first: appends of this room wait, and the DELETE
                # below (a later statement) sees everything committed before. The row
                # stays (unregistered, trimmed to last_seq): seqs are never reused.
                await conn.execute(
                    "UPDATE rooms SET registered = FALSE, name = NULL, private = FALSE, created_by = NULL, "
                    "created_at = NULL, updated_at = $3, trimmed_seq = last_seq WHERE tenant_id = $1 AND room = $2",
                    tenant_id, room, now_ms(), timeout=60,
                )
                for table in ("messages", "memberships", "sanctions", "read_positions", "reactions"):
                    await conn.execute(
                        f"DELETE FROM {table} WHERE tenant_id = $1 AND room = $2", tenant_id, room, timeout=300
                    )

    async def get_members(self, tenant_id: int, room: str) -> dict[int, str]:
        check_scope(tenant_id, room)
        async with self._conn() as conn:
            rows = await conn.fetch(
                "SELECT user_id, role FROM memberships WHERE tenant_id = $1 AND room = $2 ORDER BY user_id",
                tenant_id, room, timeout=self.command_timeout,
            )
        return {r[0]: r[1] for r in rows}

    async def set_member(self, tenant_id: int, room: str, user_id: int, role: str | None) -> None:
        check_scope(tenant_id, room)
        check_int("user_id", user_id)
        check_str("role", role, optional=True)
        async with self._conn() as conn:
            if role is None:
                await conn.execute(
                    "DELETE FROM memberships WHERE tenant_id = $1 AND room = $2 AND user_id = $3",
                    tenant_id, room, user_id, timeout=self.command_timeout,
                )
            else:
                await conn.execute(
                    "INSERT INTO memberships (tenant_id, room, user_id, role, created_at, updated_at) "
                    "VALUES ($1, $2, $3, $4, $5, $5) ON CONFLICT (tenant_id, room, user_id) DO UPDATE SET "
                    "role = EXCLUDED.role, updated_at = EXCLUDED.updated_at",
                    tenant_id, room, user_id, role, now_ms(), timeout=self.command_timeout,
                )

    # ------------------------------------------------------------------ sanctions
    async def get_sanctions(self, tenant_id: int, room: str, now_ms: int) -> list[Sanction]:
        check_scope(tenant_id, room)
        check_int("now_ms", now_ms)
        async with self._conn() as conn:
            rows = await conn.fetch(
                "SELECT kind, user_id, until, reason FROM sanctions WHERE tenant_id = $1 AND room = $2 "
                "AND (until IS NULL OR until > $3) ORDER BY kind, user_id",
                tenant_id, room, now_ms, timeout=self.command_timeout,
            )
        return [Sanction(r[0], r[1], r[2], r[3]) for r in rows]

    async def set_sanction(self, tenant_id: int, room: str, s: Sanction) -> None:
        check_scope(tenant_id, room)
        if s.kind not in SANCTION_KINDS:
            raise InvalidMessage(f"unknown sanction kind {s.kind!r}")
        check_int("user_id", s.user_id)
        check_int("until", s.until, optional=True)
        check_str("reason", s.reason, optional=True)
        async with self._conn() as conn:
            await conn.execute(
                "INSERT INTO sanctions (tenant_id, room, kind, user_id, until, reason, created_at) "
                "VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (tenant_id, room, kind, user_id) DO UPDATE SET "
                "until = EXCLUDED.until, reason = EXCLUDED.reason, created_at = EXCLUDED.created_at",
                tenant_id, room, s.kind, s.user_id, s.until, s.reason, now_ms(), timeout=self.command_timeout,
            )

    async def remove_sanction(self, tenant_id: int, room: str, kind: str, user_id: int) -> None:
        check_scope(tenant_id, room)
        check_int("user_id", user_id)
        check_str("kind", kind)
        async with self._conn() as conn:
            await conn.execute(
                "DELETE FROM sanctions WHERE tenant_id = $1 AND room = $2 AND kind = $3 AND user_id = $4",
                tenant_id, room, kind, user_id, timeout=self.command_timeout,
            )

    # ------------------------------------------------------------------ reactions
    async def react(
        self, tenant_id: int, room: str, seq: int, user_id: int, emoji: str, remove: bool
    ) -> dict[str, list[int]]:
        check_scope(tenant_id, room)
        check_int("seq", seq)
        check_int("user_id", user_id)
        check_str("emoji", emoji)
        ct = self.command_timeout
        async with self._conn() as conn:
            async with conn.transaction():
                deleted = await conn.fetchval(
                    "SELECT deleted FROM messages WHERE tenant_id = $1 AND room = $2 AND seq = $3 FOR SHARE",
                    tenant_id, room, seq, timeout=ct,
                )
                if deleted is None or deleted:
                    raise NotFound(f"message {tenant_id}/{room}#{seq} not found")
                if remove:
                    await conn.execute(
                        "DELETE FROM reactions WHERE tenant_id = $1 AND room = $2 AND seq = $3 AND emoji = $4 "
                        "AND user_id = $5",
                        tenant_id, room, seq, emoji, user_id, timeout=ct,
                    )
                else:
                    await conn.execute(
                        "INSERT INTO reactions (tenant_id, room, seq, emoji, user_id, created_at) "
                        "VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT DO NOTHING",
                        tenant_id, room, seq, emoji, user_id, now_ms(), timeout=ct,
                    )
                rows = await conn.fetch(
                    "SELECT seq, emoji, user_id FROM reactions WHERE tenant_id = $1 AND room = $2 AND seq = $3 "
                    "ORDER BY emoji, user_id",
                    tenant_id, room, seq, timeout=ct,
                )
        return group_reactions(rows).get(seq, {})

    async def get_reactions(
        self, tenant_id: int, room: str, seqs: list[int]
    ) -> dict[int, dict[str, list[int]]]:
        check_scope(tenant_id, room)
        seqs = sorted({int(s) for s in seqs})
        for s in seqs:
            check_int("seq", s)
        if not seqs:
            return {}
        async with self._conn() as conn:
            rows = await conn.fetch(
                "SELECT seq, emoji, user_id FROM reactions WHERE tenant_id = $1 AND room = $2 "
                "AND seq = ANY($3::bigint[]) ORDER BY seq, emoji, user_id",
                tenant_id, room, seqs, timeout=self.command_timeout,
            )
        return group_reactions(rows)

    # ------------------------------------------------------------------ audit
    async def audit(
        self, tenant_id: int, room: str, actor: int, action: str, target: int | None,
        reason: str | None, ts: int,
    ) -> None:
        check_scope(tenant_id, room)
        check_int("actor", actor)
        check_str("action", action)
        check_int("target", target, optional=True)
        check_str("reason", reason, optional=True)
        check_int("ts", ts)
        async with self._conn() as conn:
            await conn.execute(
                "INSERT INTO audit_log (tenant_id, room, actor, action, target, reason, ts) "
                "VALUES ($1, $2, $3, $4, $5, $6, $7)",
                tenant_id, room, actor, action, target, reason, ts, timeout=self.command_timeout,
            )

    async def get_audit(self, tenant_id: int, room: str, limit: int = 100) -> list[AuditEntry]:
        check_scope(tenant_id, room)
        async with self._conn() as conn:
            rows = await conn.fetch(
                "SELECT actor, action, target, reason, ts FROM audit_log WHERE tenant_id = $1 AND room = $2 "
                "ORDER BY id DESC LIMIT $3",
                tenant_id, room, clamp_limit(limit), timeout=self.command_timeout,
            )
        return [AuditEntry(tenant_id, room, *r) for r in reversed(rows)]


# ---------------------------------------------------------------------- helpers
def _settle_many(items: list[tuple[NewMessage, asyncio.Future]], results: list[Any]) -> None:
    for (_, fut), r in zip(items, results):
        if fut.done():
            continue
        if isinstance(r, BaseException):
            fut.set_exception(r)
        else:
            fut.set_result(r)


def _fail(items, cls: type[BaseException], text: str, cause: BaseException | None = None) -> None:
    for _, fut in items:
        if not fut.done():
            e = cls(text)
            e.__cause__ = cause
            fut.set_exception(e)


def _kill(conn: asyncpg.Connection) -> None:
    """Drop a connection. asyncpg detaches a pool proxy by itself when its connection
    dies, after which terminate() raises: that is fine, it is gone already."""
    try:
        conn.terminate()
    except Exception:  # noqa: BLE001
        pass


async def _release(pool: asyncpg.Pool, conn: asyncpg.Connection) -> None:
    try:
        await pool.release(conn, timeout=5)
    except Exception:  # noqa: BLE001 - a broken (or auto-released) connection is dropped
        _kill(conn)


async def _close_conn(conn: asyncpg.Connection) -> None:
    try:
        await conn.close(timeout=2)
    except Exception:  # noqa: BLE001
        conn.terminate()


async def _close_pool(pool: asyncpg.Pool) -> None:
    try:
        await asyncio.wait_for(pool.close(), timeout=5)
    except Exception:  # noqa: BLE001 - includes TimeoutError
        pool.terminate()
