"""Fixtures of the store tests.

No pytest-asyncio: every test gets its own event loop (uvloop when installed, like the
hub) through the ``loop`` fixture, and runs coroutines with ``run(coro)``, which bounds
each call with a timeout so no test can hang.

``store`` is parametrised over both implementations: an opened, empty store. SQLite runs
twice: with its defaults, and with groups of at most 8 of which two may be in flight
("sqlite-pipelined"), so that the suite's concurrent tests cross group boundaries. The
PostgreSQL half needs ``CHATHUB_TEST_POSTGRES_DSN`` (e.g.
``postgresql://postgres@127.0.0.1:5432/postgres``) and is skipped only when it is unset;
each test gets a fresh schema in that database, dropped afterwards.
"""

from __future__ import annotations

import asyncio
import os
import sys
import uuid

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # for pg_private

from chathub.store import PostgresMessageStore, SqliteMessageStore  # noqa: E402

PG_ENV = "CHATHUB_TEST_POSTGRES_DSN"
RUN_TIMEOUT = 120.0


def new_loop() -> asyncio.AbstractEventLoop:
    if os.environ.get("CHATHUB_TEST_LOOP") == "asyncio":  # the stock loop instead of uvloop
        return asyncio.new_event_loop()
    try:
        import uvloop

        return uvloop.new_event_loop()
    except ImportError:  # pragma: no cover
        return asyncio.new_event_loop()


@pytest.fixture
def loop():
    lp = new_loop()
    asyncio.set_event_loop(lp)
    try:
        yield lp
    finally:
        try:
            pending = [t for t in asyncio.all_tasks(lp) if not t.done()]
            for t in pending:
                t.cancel()
            if pending:
                lp.run_until_complete(asyncio.wait(pending, timeout=10))
            lp.run_until_complete(lp.shutdown_asyncgens())
        finally:
            asyncio.set_event_loop(None)
            lp.close()


@pytest.fixture
def run(loop):
    def _run(coro, timeout: float = RUN_TIMEOUT):
        return loop.run_until_complete(asyncio.wait_for(coro, timeout))

    return _run


async def drop_schema(dsn: str, schema: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(dsn, timeout=10)
    try:
        await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE', timeout=60)
    finally:
        await conn.close(timeout=5)


class StoreFactory:
    """Opens stores of one kind over ONE backing database (so two instances of the
    factory's stores behave like two hub processes sharing it)."""

    def __init__(self, kind: str, path: str, dsn: str | None):
        self.kind = kind
        self.path = path
        self.dsn = dsn
        self.schema = f"t_{uuid.uuid4().hex[:16]}"
        self.stores: list = []

    def build(self, **kw):
        if self.kind == "sqlite-pipelined":
            # small groups, and a second group in flight as soon as two appends wait:
            # the whole suite also runs with the worker's two-groups-in-flight path
            kw.setdefault("max_batch", 8)
            kw.setdefault("pipeline_min", 2)
        if self.kind.startswith("sqlite"):
            return SqliteMessageStore(self.path, **kw)
        kw.setdefault("schema", self.schema)
        return PostgresMessageStore(self.dsn, **kw)

    async def __call__(self, **kw):
        s = self.build(**kw)
        self.stores.append(s)
        await s.open()
        return s

    async def aclose(self) -> None:
        for s in self.stores:
            await asyncio.wait_for(s.close(), 60)
        if self.kind == "postgres":
            await drop_schema(self.dsn, self.schema)


@pytest.fixture(params=["sqlite", "sqlite-pipelined", "postgres"])
def store_factory(request, run, tmp_path):
    kind = request.param
    dsn = None
    if kind == "postgres":
        dsn = os.environ.get(PG_ENV)
        if not dsn:
            pytest.skip(f"{PG_ENV} is not set: PostgreSQL half of the store suite skipped")
    f = StoreFactory(kind, str(tmp_path / "chathub.sqlite3"), dsn)
    try:
        yield f
    finally:
        run(f.aclose())


@pytest.fixture
def store(store_factory, run):
    return run(store_factory())
