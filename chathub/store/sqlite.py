"""SQLite message store: stdlib ``sqlite3`` on one dedicated worker thread.

Threading
    Every statement runs on a single worker thread that owns the connection; the event
    loop only queues jobs and receives results through ``call_soon_threadsafe``. Nothing
    blocks the loop.

Group commit
    ``append`` queues the message on the event loop. Groups are formed on the loop, at
    the end of a loop iteration (``call_soon``), whenever the worker has no group: every
    append queued by then (up to ``max_batch``) goes into one group, including those
    made by the callers the previous group just answered. Under a backlog (at least
    ``pipeline_min`` appends waiting) a second group is handed over while the first
    runs, so that the loop answers one group and plans the next while the worker writes
    the other (see "Two groups in flight"). The loop plans the group
    (repeats within it, rows by room, the statement parameters); the worker only runs
    ONE ``BEGIN IMMEDIATE … COMMIT`` transaction with a handful of statements: move the
    rooms' counters on (``RETURNING`` the new last_seq), write the seqs into the
    parameters (a slice assignment per room), multi-row INSERTs. The first attempt does
    not look for stored copies: a repeated client_msg_id or msg_id fails on its unique
    index, the transaction is rolled back and the group is redone with the pre-checks
    (which answer those appends as duplicates). After COMMIT the loop builds the results
    and resolves the group in order, which within a room is seq order. Other jobs
    (reads, edits…) go to the worker in call order; an append is queued on the loop
    until the end of the loop iteration, so a read issued right after an append without
    awaiting it may run first (await the append: its result means it is stored).

Durability
    WAL journal with ``synchronous=FULL``: every COMMIT fsyncs the WAL before it
    returns, so an acknowledged message survives a process crash *and* an OS crash or
    power loss. ``synchronous=NORMAL`` in WAL mode would only sync at checkpoints: still
    consistent, but the last acknowledged transactions could vanish on power loss, which
    breaks "the ack means durable". Group commit amortises the fsync over the group.

Two groups in flight
    The worker runs groups one after the other, in the order they were handed over, so
    seqs still follow call order and a repeat of a message in the previous group meets
    its stored copy. The overlap only pays if the worker gets the GIL back promptly: the
    sqlite3 module drops it around every step, and while the loop runs Python code a
    waiting thread gets it only after the interpreter's switch interval (5 ms by
    default). Measured with 1000 senders, two groups in flight at the default interval
    were slower than one (106k vs 112-118k acks/s); at 100 us, faster (126-131k). But a
    short interval for the whole process costs the hub ~3 % CPU in the fan-out
    benchmark's scenario b (small groups, no backlog). So the store shortens it
    (``gil_switch_interval``) only from the moment it hands over a second group until
    the worker has nothing left, and puts the process' own value back then.

Commit interval
    Every group costs one COMMIT, and its fsync, whatever its size. When appends come
    one at a time faster than a commit takes, each still gets a commit of its own (at
    1,000 messages/s in rooms of 100, 1.1 appends a group, and the worker thread took a
    fifth of the server's CPU). With ``commit_interval`` > 0 (seconds;
    ``sqlite_commit_interval_ms`` in the config) a group is handed over at most that
    often: an append that comes less than the interval after the last group was handed
    over waits for the rest of it, with whatever else comes meanwhile. Appends further
    apart than the interval (any chat at a human pace) are handed over at once; a full
    group (``max_batch``) and ``close()`` do not wait. The ack still follows the COMMIT;
    it may come up to the interval later. Off by default (``COMMIT_INTERVAL``), like
    PostgreSQL's ``commit_delay``: it trades latency for CPU, and only pays at high
    rates (benchmarks/README.md: 2 ms saved 4.5 % of the CPU in scenario b and doubled
    the median latency; 1 ms saved nothing).

Scheduling
    Handing a group over wakes the worker thread. On a busy core Linux would let it
    preempt the loop's thread at once, which still holds the GIL: the worker blocks on
    the GIL straight away, and the pair switch back and forth for every group. The
    worker runs as ``SCHED_BATCH`` (Linux; nothing elsewhere), which only waives that
    wake-up preemption: it runs when the loop waits for I/O or its time slice ends, or
    at once on an idle core. Measured in the fan-out benchmark (interleaved A/B): 0.973x
    the CPU per delivery in scenario b and 0.973x the CPU per message in scenario p.

Several processes on one file
    Seq allocation happens under SQLite's write lock (``BEGIN IMMEDIATE``), and
    ``busy_timeout`` bounds how long we wait for another process' write transaction.
"""

from __future__ import annotations

import asyncio
import functools
import os
import queue
import sqlite3
import sys
import threading
import time
from typing import Any, Callable

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

_STOP = object()

_MCOLS = ", ".join("m." + c.strip() for c in MSG_COLS.split(","))

# Group statements take the group as bound parameters of multi-row VALUES lists: no
# per-row Python encoding and no per-row JSON parsing in SQLite, and still a small,
# bounded number of statements per group (``_chunks``). That matters because the sqlite3
# module drops and retakes the GIL around every step, and each retake can wait for a
# busy event-loop thread. Chunk sizes are powers of two (at most ``_CHUNK`` rows), so
# only a few distinct statements exist and they stay in the connection's statement
# cache; the widest one (9 columns x 256 rows) is far below SQLite's parameter limit.
_CHUNK = 256
_MAX_VARS = 999 if sqlite3.sqlite_version_info < (3, 32, 0) else 32766


def _chunks(n: int, cap: int = _CHUNK):
    """(start, size) pieces of ``n`` rows: full ``cap``-row chunks (``cap`` a power of
    two), then the remainder in descending powers of two."""
    pos = 0
    while n - pos >= cap:
        yield pos, cap
        pos += cap
    size = cap >> 1
    while pos < n:
        if n - pos >= size:
            yield pos, size
            pos += size
        size >>= 1


@functools.lru_cache(maxsize=None)
def _values(width: int, n: int) -> str:
    row = "(" + ",".join("?" * width) + ")"
    return ",".join([row] * n)


@functools.lru_cache(maxsize=None)
def _precheck_keys_sql(n: int) -> str:
    # CROSS JOIN keeps the VALUES list as the outer loop: one index probe per key.
    return (
        f"SELECT {_MCOLS} FROM (VALUES {_values(4, n)}) AS k CROSS JOIN messages AS m "
        "ON m.tenant_id = k.column1 AND m.room = k.column2 AND m.sender = k.column3 "
        "AND m.client_msg_id = k.column4"
    )


@functools.lru_cache(maxsize=None)
def _precheck_ids_sql(n: int) -> str:
    return (
        f"SELECT {_MCOLS} FROM (VALUES {_values(2, n)}) AS k CROSS JOIN messages AS m "
        "ON m.tenant_id = k.column1 AND m.msg_id = k.column2"
    )


@functools.lru_cache(maxsize=None)
def _insert_msgs_sql(n: int) -> str:
    return (
        "INSERT INTO messages (tenant_id, room, seq, msg_id, sender, text, created_at, client_msg_id, reply_to) "
        f"VALUES {_values(9, n)}"
    )


@functools.lru_cache(maxsize=None)
def _add_counters_sql(n: int) -> str:
    # creates missing counter rows, moves the others on by the group's count per room
    return (
        f"INSERT INTO rooms (tenant_id, room, last_seq) VALUES {_values(3, n)} "
        "ON CONFLICT (tenant_id, room) DO UPDATE SET last_seq = last_seq + excluded.last_seq "
        "RETURNING tenant_id, room, last_seq"
    )


def _run_chunked(db: sqlite3.Connection, sql_for: Callable[[int], str], width: int, params: list) -> list:
    """Run ``sql_for(k)`` over ``params`` (``width`` values per row) in ``_chunks``;
    return the rows the statements produced."""
    # SQLite builds before 3.32 allow only 999 parameters per statement.
    cap = _CHUNK
    while cap > 1 and cap * width > _MAX_VARS:
        cap >>= 1
    out: list = []
    for pos, k in _chunks(len(params) // width, cap):
        out += db.execute(sql_for(k), params[pos * width : (pos + k) * width]).fetchall()
    return out


class _RetryWithIds(Exception):
    """The optimistic attempt hit a unique index (a msg_id already stored): redo the
    group with the msg_id pre-check."""


class _Group:
    """A group of appends planned on the loop: the worker only runs its statements."""

    __slots__ = ("msgs", "futs", "out", "per_room", "counters", "params", "inserted", "last")

    def __init__(self, items: list[tuple[NewMessage, asyncio.Future]]):
        self.msgs = msgs = [m for m, _ in items]
        self.futs = [f for _, f in items]
        self.out: list[Any] = [None] * len(msgs)
        # duplicates within the group are settled here; nothing is known about the
        # database yet (a stored copy makes the INSERT fail: then the worker redoes the
        # group with its pre-checks)
        self.per_room = plan_group(msgs, {}, {}, self.out)
        counters: list = []
        params: list = []  # 9 per row, rows of a room together; seq filled in by the worker
        inserted = 0
        for (t, r), idxs in self.per_room.items():
            counters += (t, r, len(idxs))
            inserted += len(idxs)
            for i in idxs:
                m = msgs[i]
                params += (t, r, 0, m.msg_id, m.sender, m.text, m.ts, m.client_msg_id, m.reply_to)
        self.counters = counters
        self.params = params
        self.inserted = inserted
        self.last: dict[tuple[int, str], int] = {}  # per room: last_seq after the group


# The short GIL switch interval is process-wide: the stores that hold it are counted, and
# the value found before the first one is restored after the last (see the module
# docstring, "Two groups in flight").
_switch_lock = threading.Lock()
_switch_holders = 0
_switch_saved = 0.005


def _hold_fast_switch(interval: float) -> None:
    global _switch_holders, _switch_saved
    with _switch_lock:
        if _switch_holders == 0:
            _switch_saved = sys.getswitchinterval()
        _switch_holders += 1
        sys.setswitchinterval(min(interval, _switch_saved))


def _release_fast_switch() -> None:
    global _switch_holders
    with _switch_lock:
        _switch_holders -= 1
        if _switch_holders == 0:
            sys.setswitchinterval(_switch_saved)


class _Job:
    __slots__ = ("fn", "args", "fut")

    def __init__(self, fn: Callable, args: tuple, fut: asyncio.Future):
        self.fn = fn
        self.args = args
        self.fut = fut


def _map_exc(e: BaseException) -> BaseException:
    """sqlite3 errors -> store errors (run on the worker thread)."""
    if isinstance(e, StoreError):
        return e
    if isinstance(e, (sqlite3.IntegrityError, sqlite3.ProgrammingError, sqlite3.InterfaceError, sqlite3.DataError)):
        err: BaseException = StoreError(f"sqlite: {e}")
    elif isinstance(e, (sqlite3.Error, OSError, MemoryError)):
        # OperationalError (locked/busy, disk I/O, disk full, cannot open), corruption.
        err = StoreUnavailable(f"sqlite: {e}")
    else:
        return e
    err.__cause__ = e
    return err


def _is_unavailable(e: BaseException) -> bool:
    return isinstance(_map_exc(e), StoreUnavailable)


def _settle(fut: asyncio.Future, ok: bool, value: Any) -> None:
    if fut.done():
        return
    if ok:
        fut.set_result(value)
    else:
        fut.set_exception(value)


def _settle_many(futs: list[asyncio.Future], results: list[Any]) -> None:
    # One callback per group: results are set in group order, so waiters of one room
    # wake up in seq order.
    for fut, r in zip(futs, results):
        if fut.done():
            continue
        if isinstance(r, BaseException):
            fut.set_exception(r)
        else:
            fut.set_result(r)


COMMIT_INTERVAL = 0.0  # seconds (off); see "Commit interval" in the module docstring


def _batch_scheduling() -> None:
    """(worker thread) Ask Linux not to let this thread preempt the loop's thread when a
    job wakes it (``SCHED_BATCH``; see "Scheduling" in the module docstring)."""
    try:
        os.sched_setscheduler(threading.get_native_id(), os.SCHED_BATCH, os.sched_param(0))
    except (AttributeError, OSError):  # not Linux, or not allowed: no matter
        pass


class SqliteMessageStore:
    """``MessageStore`` + ``RoomStore`` + ``StoreAdmin`` on a SQLite file."""

    dialect = "sqlite"

    def __init__(
        self,
        path: str,
        *,
        retention_max_age_s: int | None = None,
        retention_max_per_room: int | None = None,
        migrate: bool = True,
        busy_timeout_ms: int = 5000,
        max_batch: int = 512,
        pipeline_min: int | None = 128,
        gil_switch_interval: float | None = 1e-4,
        cache_kib: int | None = 16384,
        wal_autocheckpoint: int = 10000,
        commit_interval: float = COMMIT_INTERVAL,
    ) -> None:
        self.path = path
        self.retention_max_age_s = retention_max_age_s
        self.retention_max_per_room = retention_max_per_room
        self._migrate_on_open = migrate
        self._busy_timeout_ms = busy_timeout_ms
        self._max_batch = max(1, max_batch)
        # a second group goes to the worker while one runs only when this many wait
        # (None: never); small groups gain nothing from the overlap and would pay a
        # commit each
        self._pipeline_min = pipeline_min
        self._switch_interval = gil_switch_interval
        self._fast_switch = False  # this store holds the short switch interval
        self._cache_kib = None if cache_kib is None else max(1, int(cache_kib))
        self._wal_autocheckpoint = max(1, int(wal_autocheckpoint))
        # the shortest time between two groups handed to the worker (see "Commit interval")
        self._interval = max(0.0, float(commit_interval))
        self._last_dispatch = -1e18  # time.monotonic() of the last group handed over
        self._timer: asyncio.TimerHandle | None = None  # the dispatch the interval holds back
        self._jobs: queue.SimpleQueue = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopped: asyncio.Future | None = None
        self._closed = False
        self._db: sqlite3.Connection | None = None  # worker thread only
        # appends waiting on the loop for the next group; a group at the worker
        self._pending: list[tuple[NewMessage, asyncio.Future]] = []
        self._busy = 0  # groups handed to the worker and not answered yet (0, 1 or 2)
        self._dispatch_soon = False
        self._drained: asyncio.Future | None = None  # close() waits for the last group
        #: counters for metrics/tests: "groups", "inserted", "duplicates" (written by the
        #: worker thread); "pipelined", groups handed over while another ran (the loop)
        self.stats: dict[str, int] = {"groups": 0, "inserted": 0, "duplicates": 0, "pipelined": 0}

    # ------------------------------------------------------------------ lifecycle
    async def open(self) -> None:
        if self._thread is not None:
            raise StoreError("store already opened")
        self._loop = asyncio.get_running_loop()
        self._stopped = self._loop.create_future()
        self._thread = threading.Thread(target=self._worker, name="chathub-sqlite-store", daemon=True)
        self._thread.start()
        try:
            await self._call(self._t_open)
            if self._migrate_on_open:
                await self.migrate()
        except BaseException:
            await self.close()
            raise

    async def close(self) -> None:
        """Flush queued appends, then close the database and stop the worker."""
        if self._thread is None or self._closed:
            self._closed = True
            return
        self._closed = True
        if self._timer is not None:  # held back by the commit interval: they go now
            self._timer.cancel()
            self._timer = None
        if self._pending or self._busy:  # appends not yet handed to the worker still go in
            self._drained = self._loop.create_future()  # type: ignore[union-attr]
            self._schedule_dispatch()
            await self._drained
        self._jobs.put(_STOP)  # behind every job already queued: those still run
        assert self._stopped is not None
        try:
            await asyncio.wait_for(asyncio.shield(self._stopped), timeout=60)
        except asyncio.TimeoutError:  # worker stuck in a busy wait; it is a daemon thread
            pass
        self._drop_fast_switch()  # only still held if a group was never answered (worker stuck)

    @property
    def available(self) -> bool:
        return self._thread is not None and not self._closed

    async def ping(self) -> None:
        await self._call(lambda db: db.execute("SELECT 1").fetchone())

    # ------------------------------------------------------------------ worker
    def _worker(self) -> None:
        held = None
        _batch_scheduling()
        try:
            while True:
                job = held if held is not None else self._jobs.get()
                held = None
                if job is _STOP:
                    break
                if type(job) is _Group:
                    self._t_group(job)
                else:
                    try:
                        res, ok = job.fn(self._db, *job.args), True
                    except BaseException as e:  # noqa: BLE001 - handed to the caller
                        res, ok = _map_exc(e), False
                    self._post(_settle, job.fut, ok, res)
        finally:
            try:
                if self._db is not None:
                    self._db.close()
            except Exception:
                pass
            self._db = None
            # Anything still queued (only possible after an unexpected worker error).
            while True:
                try:
                    job = self._jobs.get_nowait()
                except queue.Empty:
                    break
                if type(job) is _Group:
                    self._post(self._group_done, job, [StoreUnavailable("store is closed")] * len(job.msgs))
                elif job is not _STOP:
                    self._post(_settle, job.fut, False, StoreUnavailable("store is closed"))
            if self._stopped is not None:
                self._post(_settle, self._stopped, True, None)

    def _post(self, fn: Callable, *args: Any) -> None:
        try:
            self._loop.call_soon_threadsafe(fn, *args)  # type: ignore[union-attr]
        except RuntimeError:  # loop closed: nobody is waiting any more
            pass

    async def _call(self, fn: Callable, *args: Any) -> Any:
        if self._closed or self._thread is None:
            raise StoreUnavailable("store is closed" if self._closed else "store is not open")
        fut = self._loop.create_future()  # type: ignore[union-attr]
        self._jobs.put(_Job(fn, args, fut))
        return await fut

    def _t_open(self, _db: None) -> None:
        d = os.path.dirname(os.path.abspath(self.path))
        os.makedirs(d, exist_ok=True)
        db = sqlite3.connect(
            self.path, timeout=self._busy_timeout_ms / 1000, isolation_level=None, check_same_thread=True
        )
        try:
            # Switching to WAL needs an exclusive lock and SQLite does not run the busy
            # handler for it: retry (worker thread, bounded) while another process opens.
            deadline = time.monotonic() + self._busy_timeout_ms / 1000
            while True:
                try:
                    mode = db.execute("PRAGMA journal_mode=WAL").fetchone()[0]
                    break
                except sqlite3.OperationalError as e:
                    if "locked" not in str(e) or time.monotonic() > deadline:
                        raise
                    time.sleep(0.01)
            if str(mode).lower() != "wal" and self.path != ":memory:":
                raise StoreUnavailable(f"sqlite: cannot enable WAL (journal_mode={mode})")
            db.execute("PRAGMA synchronous=FULL")  # see module docstring
            db.execute(f"PRAGMA busy_timeout={int(self._busy_timeout_ms)}")
            db.execute("PRAGMA foreign_keys=OFF")
            db.execute("PRAGMA temp_store=MEMORY")
            # WAL checkpoint interval (SQLite's default is 1000 pages, 4 MiB): a group of
            # ~1000 messages dirties up to ~1000 index pages, so with the default nearly
            # every COMMIT also ran a checkpoint (copy + fsync of the database file). A
            # longer interval (10000 pages, ~40 MiB of WAL) lets a checkpoint coalesce
            # the pages rewritten by many groups. Durability is unchanged: every COMMIT
            # still fsyncs the WAL before it returns. (A checkpointer thread with its own
            # connection, off the commit path, was measured too: same throughput, p99 at
            # half load 25 instead of 33 ms, but the WAL only restarts if the writer also
            # checkpoints now and then; not worth a second thread.)
            # Page cache: 16 MiB by default (SQLite's default is 2 MiB). The unique
            # indexes take inserts at scattered places, so with a small cache nearly every
            # insert into a table of a few 100k messages reads an index page back from
            # the OS (measured: ~12 us/row with 2 MiB, ~6.5 us/row with 16 MiB). It is
            # an upper bound, filled only as the database is used.
            if self._cache_kib is not None:
                db.execute(f"PRAGMA cache_size=-{self._cache_kib}")
            db.execute(f"PRAGMA wal_autocheckpoint={self._wal_autocheckpoint}")
        except BaseException:
            db.close()
            raise
        self._db = db

    # ------------------------------------------------------------------ migrations
    async def migrate(self) -> list[str]:
        return await self._call(self._t_migrate)

    @staticmethod
    def _t_migrate(db: sqlite3.Connection) -> list[str]:
        db.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations ("
            "version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at INTEGER NOT NULL)"
        )
        applied: list[str] = []
        for m in _migrations.load("sqlite"):
            if db.execute("SELECT 1 FROM schema_migrations WHERE version = ?", (m.version,)).fetchone():
                continue
            # The version row goes in first, inside the write lock: a second process
            # migrating at the same time fails on the primary key and skips it.
            script = (
                "BEGIN IMMEDIATE;\n"
                f"INSERT INTO schema_migrations (version, name, applied_at) VALUES ({m.version}, '{m.name}', {now_ms()});\n"
                f"{m.sql}\n;\nCOMMIT;"
            )
            try:
                db.executescript(script)
            except sqlite3.IntegrityError:
                if db.in_transaction:
                    db.execute("ROLLBACK")
                continue
            except BaseException:
                if db.in_transaction:
                    db.execute("ROLLBACK")
                raise
            applied.append(m.name)
        return applied

    # ------------------------------------------------------------------ append
    async def append(self, msg: NewMessage) -> AppendResult:
        return await self.submit(msg)

    def submit(self, msg: NewMessage) -> asyncio.Future[AppendResult]:
        validate_new(msg)
        if self._closed or self._thread is None:
            raise StoreUnavailable("store is closed" if self._closed else "store is not open")
        fut = self._loop.create_future()  # type: ignore[union-attr]
        pending = self._pending
        pending.append((msg, fut))
        # (while the commit interval holds appends back, only a full group goes early)
        if (not self._dispatch_soon and (self._timer is None or len(pending) >= self._max_batch)
                and (not self._busy or self._may_pipeline())):
            self._schedule_dispatch()
        return fut

    def _may_pipeline(self) -> bool:
        """(loop) May a second group go to the worker while one runs?"""
        return self._busy == 1 and self._pipeline_min is not None and len(self._pending) >= self._pipeline_min

    def _drop_fast_switch(self) -> None:
        """(loop) Give the short switch interval back, if this store holds it."""
        if self._fast_switch:
            self._fast_switch = False
            _release_fast_switch()

    def _schedule_dispatch(self) -> None:
        # call_soon: the group forms after the callbacks already queued in this loop
        # iteration, so every append made in it (e.g. by the callers the last group
        # just answered) goes into the same group.
        self._dispatch_soon = True
        self._loop.call_soon(self._dispatch)  # type: ignore[union-attr]

    def _dispatch(self) -> None:
        """(loop) Hand the next group to the worker if it has none (or a second one, under
        a backlog: ``_may_pipeline``)."""
        self._dispatch_soon = False
        if not self._pending:
            if not self._busy and self._drained is not None and not self._drained.done():
                self._drained.set_result(None)
            return
        if self._busy and not self._may_pipeline():
            return
        if not self._busy and self._interval:
            now = time.monotonic()
            wait = self._last_dispatch + self._interval - now
            if wait > 0 and len(self._pending) < self._max_batch and not self._closed:
                # the last group went less than the interval ago: this one takes what
                # arrives until then (one commit for them all)
                if self._timer is None:
                    self._timer = self._loop.call_later(wait, self._dispatch_held)  # type: ignore[union-attr]
                return
            self._last_dispatch = now
        items = self._pending[: self._max_batch]
        del self._pending[: self._max_batch]
        try:
            group = _Group(items)
        except BaseException as e:  # noqa: BLE001 - never strand the callers
            for _, f in items:
                if not f.done():
                    f.set_exception(StoreError(f"internal error: {e!r}"))
            self._schedule_dispatch()
            return
        self._busy += 1
        if self._busy == 2:
            self.stats["pipelined"] += 1
            if self._switch_interval is not None and not self._fast_switch:
                _hold_fast_switch(self._switch_interval)
                self._fast_switch = True
        self._jobs.put(group)
        if self._may_pipeline():  # a backlog bigger than one group: the next one too
            self._schedule_dispatch()

    def _dispatch_held(self) -> None:
        """(loop) The commit interval has passed: hand the waiting appends over."""
        self._timer = None
        self._dispatch()

    def _group_done(self, group: _Group, results: list[Any] | None) -> None:
        """(loop) The worker is done with ``group``: ``results`` per append, or None when
        the planned statements committed (results are built here from the plan)."""
        self._busy -= 1
        if not self._busy:
            self._drop_fast_switch()
        if results is None:
            out = group.out
            msgs = group.msgs
            for (t, r), idxs in group.per_room.items():
                seq = group.last[(t, r)] - len(idxs)
                for i in idxs:
                    seq += 1
                    out[i] = new_result(t, r, seq, msgs[i])
            if group.inserted != len(msgs):  # repeats of an earlier message of the group
                for i, v in enumerate(out):
                    if type(v) is int:
                        out[i] = AppendResult(out[v].message, duplicate=True)
            results = out
        _settle_many(group.futs, results)
        if self._pending or self._drained is not None:
            self._schedule_dispatch()

    def _t_group(self, group: _Group) -> None:
        """(worker) Run a planned group: one transaction, a handful of statements."""
        db = self._db
        assert db is not None
        results: list[Any] | None = None
        try:
            if group.inserted:
                db.execute("BEGIN IMMEDIATE")
                try:
                    last = group.last
                    for t, r, v in _run_chunked(db, _add_counters_sql, 3, group.counters):
                        last[(t, r)] = v
                    params = group.params
                    pos = 2  # the seq column of the room's first row
                    for (t, r), idxs in group.per_room.items():
                        n = len(idxs)
                        end = last[(t, r)]
                        params[pos : pos + 9 * n : 9] = range(end - n + 1, end + 1)
                        pos += 9 * n
                    _run_chunked(db, _insert_msgs_sql, 9, params)
                    db.execute("COMMIT")
                except BaseException:
                    _rollback(db)
                    raise
            st = self.stats
            st["groups"] += 1
            st["inserted"] += group.inserted
            st["duplicates"] += sum(1 for v in group.out if type(v) is int)
        except sqlite3.IntegrityError:
            # a unique index hit: the group repeats a stored message (or reuses a
            # msg_id). Redo it with the pre-checks, which settle those.
            results = self._t_slow_group(group.msgs)
        except BaseException as e:  # noqa: BLE001
            results = self._t_slow_group(group.msgs, e)
        self._post(self._group_done, group, results)

    def _t_slow_group(self, msgs: list[NewMessage], err: BaseException | None = None) -> list[Any]:
        """(worker) The group with pre-checks after a unique-index hit (``err`` None), or
        after ``err``: all fail when the database is unavailable, else one at a time so
        that a bad message does not fail its neighbours."""
        if err is None:
            try:
                return self._t_append_txn(msgs)
            except BaseException as e:  # noqa: BLE001
                err = e
        if _is_unavailable(err):
            return [_map_exc(err)] + [StoreUnavailable(str(err)) for _ in msgs[1:]]
        results: list[Any] = []
        for m in msgs:
            try:
                results.extend(self._t_append_txn([m]))
            except BaseException as e2:  # noqa: BLE001
                results.append(_map_exc(e2))
        return results

    def _t_append_txn(self, msgs: list[NewMessage]) -> list[Any]:
        """One group, one transaction. The first attempt does not look up the group's
        msg_ids: hub-assigned ids are unique, and the unique index catches a reused one
        (the INSERT fails, the transaction is rolled back and the group is redone with
        the msg_id pre-check, which settles duplicates and cross-room reuse)."""
        try:
            return self._t_append_once(msgs, False)
        except _RetryWithIds:
            return self._t_append_once(msgs, True)

    def _t_append_once(self, msgs: list[NewMessage], check_ids: bool) -> list[Any]:
        """A constant number of statements whatever the group's size (see ``_chunks``)."""
        db = self._db
        assert db is not None
        n = len(msgs)
        out: list[Any] = [None] * n
        inserted = 0
        db.execute("BEGIN IMMEDIATE")
        try:
            existing_key: dict[tuple, StoredMessage] = {}
            keyed: list = []
            for m in msgs:
                if m.client_msg_id is not None:
                    keyed += (m.tenant_id, m.room, m.sender, m.client_msg_id)
            if keyed:
                for row in _run_chunked(db, _precheck_keys_sql, 4, keyed):
                    sm = row_to_message(row)
                    existing_key[(sm.tenant_id, sm.room, sm.sender, sm.client_msg_id)] = sm
            existing_id: dict[tuple, StoredMessage] = {}
            if check_ids:
                ids: list = []
                for m in msgs:
                    ids += (m.tenant_id, m.msg_id)
                for row in _run_chunked(db, _precheck_ids_sql, 2, ids):
                    sm = row_to_message(row)
                    existing_id[(sm.tenant_id, sm.msg_id)] = sm

            per_room = plan_group(msgs, existing_key, existing_id, out)

            if per_room:
                counters: list = []
                for (t, r), idxs in per_room.items():
                    counters += (t, r, len(idxs))
                last = {(t, r): v for t, r, v in _run_chunked(db, _add_counters_sql, 3, counters)}
                params: list = []
                for (t, r), idxs in per_room.items():
                    seq = last[(t, r)] - len(idxs)
                    for i in idxs:
                        m = msgs[i]
                        seq += 1
                        out[i] = new_result(t, r, seq, m)
                        params += (t, r, seq, m.msg_id, m.sender, m.text, m.ts, m.client_msg_id, m.reply_to)
                    inserted += len(idxs)
                try:
                    _run_chunked(db, _insert_msgs_sql, 9, params)
                except sqlite3.IntegrityError as e:
                    if check_ids:
                        raise
                    raise _RetryWithIds() from e
            db.execute("COMMIT")
        except BaseException:
            _rollback(db)
            raise
        st = self.stats
        st["groups"] += 1
        st["inserted"] += inserted
        if inserted != n:  # duplicates: repeats of an earlier message of the group, stored copies
            dups = 0
            for i, v in enumerate(out):
                if type(v) is int:
                    out[i] = v = AppendResult(out[v].message, duplicate=True)
                if type(v) is AppendResult and v.duplicate:
                    dups += 1
            st["duplicates"] += dups
        return out

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
        return await self._call(self._t_history, tenant_id, room, before_seq, after_seq, clamp_limit(limit))

    @staticmethod
    def _t_history(db, t, r, before, after, limit) -> HistoryPage:
        base = f"SELECT {MSG_COLS} FROM messages WHERE tenant_id = ? AND room = ?"
        if after is not None:
            if before is not None:
                rows = db.execute(
                    base + " AND seq > ? AND seq < ? ORDER BY seq LIMIT ?", (t, r, after, before, limit + 1)
                ).fetchall()
            else:
                rows = db.execute(base + " AND seq > ? ORDER BY seq LIMIT ?", (t, r, after, limit + 1)).fetchall()
            more = len(rows) > limit
            return HistoryPage([row_to_message(x) for x in rows[:limit]], more)
        if before is not None:
            rows = db.execute(
                base + " AND seq < ? ORDER BY seq DESC LIMIT ?", (t, r, before, limit + 1)
            ).fetchall()
        else:
            rows = db.execute(base + " ORDER BY seq DESC LIMIT ?", (t, r, limit + 1)).fetchall()
        more = len(rows) > limit
        return HistoryPage([row_to_message(x) for x in reversed(rows[:limit])], more)

    async def replay(self, tenant_id: int, room: str, since_seq: int, limit: int) -> Replay:
        check_scope(tenant_id, room)
        check_int("since_seq", since_seq)
        return await self._call(self._t_replay, tenant_id, room, since_seq, clamp_limit(limit))

    @staticmethod
    def _t_replay(db, t, r, since, limit) -> Replay:
        db.execute("BEGIN")  # one read snapshot for the counter row and the messages
        try:
            row = db.execute(
                "SELECT last_seq, trimmed_seq FROM rooms WHERE tenant_id = ? AND room = ?", (t, r)
            ).fetchone()
            last, trimmed = row if row else (0, 0)
            rows = db.execute(
                f"SELECT {MSG_COLS} FROM messages WHERE tenant_id = ? AND room = ? AND seq > ? ORDER BY seq LIMIT ?",
                (t, r, since, limit),
            ).fetchall()
        finally:
            db.execute("COMMIT")
        return Replay([row_to_message(x) for x in rows], complete=since >= trimmed, last_seq=last)

    async def last_seq(self, tenant_id: int, room: str) -> int:
        check_scope(tenant_id, room)
        return await self._call(self._t_last_seq, tenant_id, room)

    @staticmethod
    def _t_last_seq(db, t, r) -> int:
        row = db.execute("SELECT last_seq FROM rooms WHERE tenant_id = ? AND room = ?", (t, r)).fetchone()
        return row[0] if row else 0

    # ------------------------------------------------------------------ edit / delete
    async def edit(self, tenant_id: int, room: str, seq: int, text: str, ts: int) -> StoredMessage:
        check_scope(tenant_id, room)
        check_int("seq", seq)
        check_str("text", text)
        check_int("ts", ts)
        return await self._call(self._t_edit, tenant_id, room, seq, text, ts)

    @staticmethod
    def _t_edit(db, t, r, seq, text, ts) -> StoredMessage:
        def body():
            cur = db.execute(
                "UPDATE messages SET text = ?, edited_at = ? WHERE tenant_id = ? AND room = ? AND seq = ? AND deleted = 0",
                (text, ts, t, r, seq),
            )
            if cur.rowcount == 0:
                raise NotFound(f"message {t}/{r}#{seq} not found")
            return _one_msg(db, t, r, seq)

        return _in_tx(db, body)

    async def delete(self, tenant_id: int, room: str, seq: int, ts: int) -> StoredMessage:
        check_scope(tenant_id, room)
        check_int("seq", seq)
        check_int("ts", ts)
        return await self._call(self._t_delete, tenant_id, room, seq, ts)

    @staticmethod
    def _t_delete(db, t, r, seq, ts) -> StoredMessage:
        def body():
            cur = db.execute(
                "UPDATE messages SET text = '', deleted = 1, deleted_at = COALESCE(deleted_at, ?) "
                "WHERE tenant_id = ? AND room = ? AND seq = ?",
                (ts, t, r, seq),
            )
            if cur.rowcount == 0:
                raise NotFound(f"message {t}/{r}#{seq} not found")
            db.execute("DELETE FROM reactions WHERE tenant_id = ? AND room = ? AND seq = ?", (t, r, seq))
            return _one_msg(db, t, r, seq)

        return _in_tx(db, body)

    # ------------------------------------------------------------------ read positions
    async def set_read(self, tenant_id: int, room: str, user_id: int, seq: int) -> int:
        check_scope(tenant_id, room)
        check_int("user_id", user_id)
        check_int("seq", seq)
        return await self._call(self._t_set_read, tenant_id, room, user_id, seq)

    @staticmethod
    def _t_set_read(db, t, r, user_id, seq) -> int:
        def body():
            row = db.execute("SELECT last_seq FROM rooms WHERE tenant_id = ? AND room = ?", (t, r)).fetchone()
            pos = max(0, min(seq, row[0] if row else 0))  # never beyond the room's last message
            db.execute(
                "INSERT INTO read_positions (tenant_id, room, user_id, seq) VALUES (?, ?, ?, ?) "
                "ON CONFLICT (tenant_id, room, user_id) DO UPDATE SET seq = max(seq, excluded.seq)",
                (t, r, user_id, pos),
            )
            return db.execute(
                "SELECT seq FROM read_positions WHERE tenant_id = ? AND room = ? AND user_id = ?", (t, r, user_id)
            ).fetchone()[0]

        return _in_tx(db, body)

    async def unread_count(self, tenant_id: int, room: str, user_id: int) -> int:
        check_scope(tenant_id, room)
        check_int("user_id", user_id)
        return await self._call(self._t_unread, tenant_id, room, user_id)

    @staticmethod
    def _t_unread(db, t, r, user_id) -> int:
        return db.execute(
            "SELECT count(*) FROM messages WHERE tenant_id = ? AND room = ? AND deleted = 0 AND seq > "
            "COALESCE((SELECT seq FROM read_positions WHERE tenant_id = ? AND room = ? AND user_id = ?), 0)",
            (t, r, t, r, user_id),
        ).fetchone()[0]

    # ------------------------------------------------------------------ retention
    async def apply_retention(self, now_ms: int) -> int:
        check_int("now_ms", now_ms)
        cutoff = None if self.retention_max_age_s is None else now_ms - int(self.retention_max_age_s) * 1000
        keep = self.retention_max_per_room
        total = 0
        if cutoff is not None or keep is not None:
            cands = await self._call(self._t_retention_candidates, cutoff, keep)
            for t, r in cands:  # one short write transaction per room: appends interleave
                total += await self._call(self._t_retain_room, t, r, cutoff, keep)
        await self._call(
            lambda db: _in_tx(db, lambda: db.execute(
                "DELETE FROM sanctions WHERE until IS NOT NULL AND until <= ?", (now_ms,)
            ))
        )
        return total

    @staticmethod
    def _t_retention_candidates(db, cutoff, keep) -> list[tuple[int, str]]:
        found: set[tuple[int, str]] = set()
        if keep is not None:
            found.update(
                db.execute("SELECT tenant_id, room FROM rooms WHERE last_seq - trimmed_seq > ?", (keep,)).fetchall()
            )
        if cutoff is not None:
            # A room is a candidate when its oldest remaining message is too old.
            found.update(
                db.execute(
                    "SELECT r.tenant_id, r.room FROM rooms r JOIN messages m ON m.tenant_id = r.tenant_id "
                    "AND m.room = r.room AND m.seq = r.trimmed_seq + 1 WHERE m.created_at < ?",
                    (cutoff,),
                ).fetchall()
            )
        return sorted((int(x[0]), str(x[1])) for x in found)

    @staticmethod
    def _t_retain_room(db, t, r, cutoff, keep) -> int:
        def body():
            row = db.execute(
                "SELECT last_seq, trimmed_seq FROM rooms WHERE tenant_id = ? AND room = ?", (t, r)
            ).fetchone()
            if row is None:
                return 0
            last, trimmed = row
            bound = trimmed
            if keep is not None:
                bound = max(bound, last - keep)
            if cutoff is not None:
                # Only a prefix goes: up to the first message that is still young.
                y = db.execute(
                    "SELECT seq FROM messages WHERE tenant_id = ? AND room = ? AND seq > ? AND created_at >= ? "
                    "ORDER BY seq LIMIT 1",
                    (t, r, trimmed, cutoff),
                ).fetchone()
                bound = max(bound, (y[0] - 1) if y else last)
            if bound <= trimmed:
                return 0
            n = db.execute(
                "DELETE FROM messages WHERE tenant_id = ? AND room = ? AND seq <= ?", (t, r, bound)
            ).rowcount
            db.execute("DELETE FROM reactions WHERE tenant_id = ? AND room = ? AND seq <= ?", (t, r, bound))
            db.execute("UPDATE rooms SET trimmed_seq = ? WHERE tenant_id = ? AND room = ?", (bound, t, r))
            return n

        return _in_tx(db, body)

    # ------------------------------------------------------------------ rooms
    async def get_room(self, tenant_id: int, room: str) -> RoomRecord | None:
        check_scope(tenant_id, room)
        return await self._call(self._t_get_room, tenant_id, room)

    @staticmethod
    def _t_get_room(db, t, r) -> RoomRecord | None:
        row = db.execute(
            "SELECT name, private, created_by, created_at FROM rooms WHERE tenant_id = ? AND room = ? AND registered = 1",
            (t, r),
        ).fetchone()
        if row is None:
            return None
        return RoomRecord(t, r, row[0], bool(row[1]), row[2], row[3])

    async def create_room(self, rec: RoomRecord) -> RoomRecord:
        check_scope(rec.tenant_id, rec.room)
        check_str("name", rec.name, optional=True)
        check_int("created_by", rec.created_by)
        check_int("created_at", rec.created_at)
        return await self._call(self._t_create_room, rec)

    @staticmethod
    def _t_create_room(db, rec: RoomRecord) -> RoomRecord:
        def body():
            row = db.execute(
                "SELECT registered FROM rooms WHERE tenant_id = ? AND room = ?", (rec.tenant_id, rec.room)
            ).fetchone()
            if row is not None and row[0]:
                raise Conflict(f"room {rec.tenant_id}/{rec.room} exists")
            db.execute(
                "INSERT INTO rooms (tenant_id, room, name, private, created_by, created_at, updated_at, registered) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, 1) ON CONFLICT (tenant_id, room) DO UPDATE SET name = excluded.name, "
                "private = excluded.private, created_by = excluded.created_by, created_at = excluded.created_at, "
                "updated_at = excluded.updated_at, registered = 1",
                (rec.tenant_id, rec.room, rec.name, int(bool(rec.private)), rec.created_by, rec.created_at,
                 rec.created_at),
            )
            return rec

        return _in_tx(db, body)

    async def delete_room(self, tenant_id: int, room: str) -> None:
        check_scope(tenant_id, room)
        await self._call(self._t_delete_room, tenant_id, room)

    @staticmethod
    def _t_delete_room(db, t, r) -> None:
        # The counter row stays (registered = 0, trimmed up to last_seq), so seqs of a
        # room name are never reused and replay from an old seq reports complete=False.
        def body():
            db.execute(
                "UPDATE rooms SET registered = 0, name = NULL, private = 0, created_by = NULL, created_at = NULL, "
                "updated_at = ?, trimmed_seq = last_seq WHERE tenant_id = ? AND room = ?",
                (now_ms(), t, r),
            )
            for table in ("messages", "memberships", "sanctions", "read_positions", "reactions"):
                db.execute(f"DELETE FROM {table} WHERE tenant_id = ? AND room = ?", (t, r))

        _in_tx(db, body)

    async def get_members(self, tenant_id: int, room: str) -> dict[int, str]:
        check_scope(tenant_id, room)
        return await self._call(
            lambda db: dict(db.execute(
                "SELECT user_id, role FROM memberships WHERE tenant_id = ? AND room = ? ORDER BY user_id",
                (tenant_id, room),
            ).fetchall())
        )

    async def set_member(self, tenant_id: int, room: str, user_id: int, role: str | None) -> None:
        check_scope(tenant_id, room)
        check_int("user_id", user_id)
        check_str("role", role, optional=True)
        await self._call(self._t_set_member, tenant_id, room, user_id, role)

    @staticmethod
    def _t_set_member(db, t, r, user_id, role) -> None:
        if role is None:
            db.execute(
                "DELETE FROM memberships WHERE tenant_id = ? AND room = ? AND user_id = ?", (t, r, user_id)
            )
            return
        ts = now_ms()
        db.execute(
            "INSERT INTO memberships (tenant_id, room, user_id, role, created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?) "
            "ON CONFLICT (tenant_id, room, user_id) DO UPDATE SET role = excluded.role, updated_at = excluded.updated_at",
            (t, r, user_id, role, ts, ts),
        )

    # ------------------------------------------------------------------ sanctions
    async def get_sanctions(self, tenant_id: int, room: str, now_ms: int) -> list[Sanction]:
        check_scope(tenant_id, room)
        check_int("now_ms", now_ms)
        rows = await self._call(
            lambda db: db.execute(
                "SELECT kind, user_id, until, reason FROM sanctions WHERE tenant_id = ? AND room = ? "
                "AND (until IS NULL OR until > ?) ORDER BY kind, user_id",
                (tenant_id, room, now_ms),
            ).fetchall()
        )
        return [Sanction(k, u, until, reason) for k, u, until, reason in rows]

    async def set_sanction(self, tenant_id: int, room: str, s: Sanction) -> None:
        check_scope(tenant_id, room)
        if s.kind not in SANCTION_KINDS:
            raise InvalidMessage(f"unknown sanction kind {s.kind!r}")
        check_int("user_id", s.user_id)
        check_int("until", s.until, optional=True)
        check_str("reason", s.reason, optional=True)
        await self._call(
            lambda db: db.execute(
                "INSERT INTO sanctions (tenant_id, room, kind, user_id, until, reason, created_at) "
                "VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (tenant_id, room, kind, user_id) DO UPDATE SET "
                "until = excluded.until, reason = excluded.reason, created_at = excluded.created_at",
                (tenant_id, room, s.kind, s.user_id, s.until, s.reason, now_ms()),
            )
        )

    async def remove_sanction(self, tenant_id: int, room: str, kind: str, user_id: int) -> None:
        check_scope(tenant_id, room)
        check_int("user_id", user_id)
        await self._call(
            lambda db: db.execute(
                "DELETE FROM sanctions WHERE tenant_id = ? AND room = ? AND kind = ? AND user_id = ?",
                (tenant_id, room, kind, user_id),
            )
        )

    # ------------------------------------------------------------------ reactions
    async def react(
        self, tenant_id: int, room: str, seq: int, user_id: int, emoji: str, remove: bool
    ) -> dict[str, list[int]]:
        check_scope(tenant_id, room)
        check_int("seq", seq)
        check_int("user_id", user_id)
        check_str("emoji", emoji)
        return await self._call(self._t_react, tenant_id, room, seq, user_id, emoji, bool(remove))

    @staticmethod
    def _t_react(db, t, r, seq, user_id, emoji, remove) -> dict[str, list[int]]:
        def body():
            row = db.execute(
                "SELECT deleted FROM messages WHERE tenant_id = ? AND room = ? AND seq = ?", (t, r, seq)
            ).fetchone()
            if row is None or row[0]:
                raise NotFound(f"message {t}/{r}#{seq} not found")
            if remove:
                db.execute(
                    "DELETE FROM reactions WHERE tenant_id = ? AND room = ? AND seq = ? AND emoji = ? AND user_id = ?",
                    (t, r, seq, emoji, user_id),
                )
            else:
                db.execute(
                    "INSERT INTO reactions (tenant_id, room, seq, emoji, user_id, created_at) "
                    "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
                    (t, r, seq, emoji, user_id, now_ms()),
                )
            rows = db.execute(
                "SELECT seq, emoji, user_id FROM reactions WHERE tenant_id = ? AND room = ? AND seq = ? "
                "ORDER BY emoji, user_id",
                (t, r, seq),
            ).fetchall()
            return group_reactions(rows).get(seq, {})

        return _in_tx(db, body)

    async def get_reactions(
        self, tenant_id: int, room: str, seqs: list[int]
    ) -> dict[int, dict[str, list[int]]]:
        check_scope(tenant_id, room)
        seqs = sorted({int(s) for s in seqs})
        for s in seqs:
            check_int("seq", s)
        if not seqs:
            return {}

        def run(db):
            rows: list = []
            for i in range(0, len(seqs), 500):
                chunk = seqs[i : i + 500]
                rows += db.execute(
                    "SELECT seq, emoji, user_id FROM reactions WHERE tenant_id = ? AND room = ? AND seq IN "
                    f"({','.join('?' * len(chunk))}) ORDER BY seq, emoji, user_id",
                    (tenant_id, room, *chunk),
                ).fetchall()
            return group_reactions(rows)

        return await self._call(run)

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
        await self._call(
            lambda db: db.execute(
                "INSERT INTO audit_log (tenant_id, room, actor, action, target, reason, ts) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (tenant_id, room, actor, action, target, reason, ts),
            )
        )

    async def get_audit(self, tenant_id: int, room: str, limit: int = 100) -> list[AuditEntry]:
        check_scope(tenant_id, room)
        rows = await self._call(
            lambda db: db.execute(
                "SELECT actor, action, target, reason, ts FROM audit_log WHERE tenant_id = ? AND room = ? "
                "ORDER BY id DESC LIMIT ?",
                (tenant_id, room, clamp_limit(limit)),
            ).fetchall()
        )
        return [AuditEntry(tenant_id, room, *row) for row in reversed(rows)]


# ---------------------------------------------------------------------- helpers
def _rollback(db: sqlite3.Connection) -> None:
    try:
        if db.in_transaction:
            db.execute("ROLLBACK")
    except sqlite3.Error:
        pass


def _in_tx(db: sqlite3.Connection, body: Callable[[], Any]) -> Any:
    db.execute("BEGIN IMMEDIATE")
    try:
        res = body()
        db.execute("COMMIT")
        return res
    except BaseException:
        _rollback(db)
        raise


def _one_msg(db: sqlite3.Connection, t: int, r: str, seq: int) -> StoredMessage:
    row = db.execute(
        f"SELECT {MSG_COLS} FROM messages WHERE tenant_id = ? AND room = ? AND seq = ?", (t, r, seq)
    ).fetchone()
    if row is None:
        raise NotFound(f"message {t}/{r}#{seq} not found")
    return row_to_message(row)
