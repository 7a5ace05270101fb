"""The hub on PostgreSQL (CHATHUB_POSTGRES_DSN): real server processes, a real database."""

from __future__ import annotations

import asyncio
import os
import uuid
from urllib.parse import urlsplit, urlunsplit

import pytest

from tests.helpers.client import Client, run

PG_ENV = "CHATHUB_TEST_POSTGRES_DSN"


@pytest.fixture
def pg_dsn():
    dsn = os.environ.get(PG_ENV)
    if not dsn:
        pytest.skip(f"{PG_ENV} is not set: the PostgreSQL hub tests need a real server")
    import asyncpg

    name = f"hub_{uuid.uuid4().hex[:12]}"

    async def admin(sql: str) -> None:
        conn = await asyncpg.connect(dsn, timeout=10)
        try:
            await conn.execute(sql, timeout=60)
        finally:
            await conn.close()

    asyncio.run(admin(f'CREATE DATABASE "{name}"'))
    parts = urlsplit(dsn)
    yield urlunsplit(parts._replace(path="/" + name))
    asyncio.run(admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


def test_chat_and_history_survive_a_restart(server_factory, pg_dsn):
    env = {"CHATHUB_POSTGRES_DSN": pg_dsn}
    srv = server_factory(extra_env=env)
    assert "store: PostgreSQL" in srv.output()

    async def chat():
        a = await Client.connect(srv.url(1))
        b = await Client.connect(srv.url(2))
        await a.cmd("create_room", room="pg-room", private=True)
        await a.cmd("invite", room="pg-room", user_id=2)
        await a.cmd("join", room="pg-room")
        await b.cmd("join", room="pg-room")
        for i in range(20):
            r = await a.cmd("send", room="pg-room", text=f"m{i}", client_msg_id=f"c{i}")
            assert r["seq"] == i + 1
        assert [(await b.next_event("message"))["seq"] for _ in range(20)] == list(range(1, 21))
        await b.cmd("read", room="pg-room", seq=15)

    run(chat())
    assert srv.stop() == 0
    srv2 = server_factory(extra_env=env)

    async def after():
        b = await Client.connect(srv2.url(2))
        r = await b.cmd("join", room="pg-room", since_seq=10)
        assert r["ok"] and r["recovered"] and r["last_seq"] == 20 and r["unread"] == 5
        assert [(await b.next_event("message"))["seq"] for _ in range(10)] == list(range(11, 21))
        c = await Client.connect(srv2.url(3))  # the private room and its members persisted
        assert (await c.cmd("join", room="pg-room"))["error"]["code"] == "forbidden"
        a = await Client.connect(srv2.url(1))
        await a.cmd("join", room="pg-room")
        r = await a.cmd("send", room="pg-room", text="again", client_msg_id="c3")
        assert r["seq"] == 4 and r["duplicate"] is True  # idempotence survives the restart

    run(after())


def test_two_hub_processes_share_one_gap_free_sequence(server_factory, pg_dsn):
    env = {"CHATHUB_POSTGRES_DSN": pg_dsn}
    s1 = server_factory(extra_env=env)
    s2 = server_factory(extra_env=env)

    async def go():
        clients = [await Client.connect(s.url(10 + i)) for i, s in enumerate((s1, s2, s1, s2))]
        for c in clients:
            await c.cmd("join", room="shared")

        async def burst(c: Client, tag: str) -> list[int]:
            seqs = []
            for i in range(25):
                r = await c.cmd("send", room="shared", text=f"{tag}{i}")
                assert r["ok"], r
                seqs.append(r["seq"])
            return seqs

        results = await asyncio.gather(*(burst(c, f"u{i}-") for i, c in enumerate(clients)))
        acked = sorted(s for seqs in results for s in seqs)
        assert acked == list(range(1, 101))
        h = await clients[0].cmd("history", room="shared", limit=200)
        assert [m["seq"] for m in h["messages"]] == list(range(1, 101))

    run(go())


def test_pipelined_sends_then_reads_see_them(server_factory, pg_dsn):
    """PostgreSQL reads run on other connections than the writes: a history or a join
    with replay pipelined right behind sends must still see them (the hub holds such a
    command until the connection's earlier sends are answered)."""
    srv = server_factory(extra_env={"CHATHUB_POSTGRES_DSN": pg_dsn})

    async def go():
        a = await Client.connect(srv.url(1))
        frames = ['{"op":"join","room":"pg-pipe","id":"j"}']
        frames += [f'{{"op":"send","room":"pg-pipe","text":"p{i}","id":"s{i}"}}' for i in range(30)]
        frames += ['{"op":"history","room":"pg-pipe","limit":200,"id":"h"}',
                   '{"op":"leave","room":"pg-pipe","id":"l"}',
                   '{"op":"join","room":"pg-pipe","since_seq":0,"id":"j2"}']
        for f in frames:
            await a.send_raw(f)
        replies = {}
        replayed = []
        while len(replies) < len(frames) or len(replayed) < 30:
            m = await a.recv()
            if m.get("ev") == "message" and "j2" in replies:
                replayed.append(m["text"])
            elif "ev" not in m:
                replies[m["id"]] = m
        assert [replies[f"s{i}"]["seq"] for i in range(30)] == list(range(1, 31))
        assert [m["text"] for m in replies["h"]["messages"]] == [f"p{i}" for i in range(30)]
        assert replies["j2"]["ok"]
        assert replayed == [f"p{i}" for i in range(30)]

    run(go())
