"""protocol.md "dm" and "join with since_seq": direct messages and replay after reconnect."""

from __future__ import annotations

import asyncio

from tests.helpers.client import Client, run


def test_dm_reaches_every_connection_of_both_users(server):
    async def go():
        a1 = await Client.connect(server.url(9))
        a2 = await Client.connect(server.url(9))
        b1 = await Client.connect(server.url(4))
        b2 = await Client.connect(server.url(4))
        c = await Client.connect(server.url(5))
        r = await a1.cmd("dm", to=4, text="psst", client_msg_id="d1")
        assert r["ok"] and r["room"] == "dm:4:9" and r["seq"] == 1
        for conn in (a2, b1, b2):
            m = await conn.next_event("message")
            assert (m["room"], m["from"], m["text"], m["seq"]) == ("dm:4:9", 9, "psst", 1)
        await a1.expect_silence(0.2)
        await c.expect_silence(0.2)
        # stored like any room; only the two users may read it
        h = await b1.cmd("history", room="dm:4:9")
        assert [m["text"] for m in h["messages"]] == ["psst"]
        assert (await c.cmd("history", room="dm:4:9"))["error"]["code"] == "forbidden"
        assert (await c.cmd("join", room="dm:4:9"))["error"]["code"] == "forbidden"
        r = await b2.cmd("dm", to="9", text="hi back")
        assert r["seq"] == 2
        # a repeated client_msg_id is delivered once
        r = await a1.cmd("dm", to=4, text="psst", client_msg_id="d1")
        assert r["seq"] == 1 and r["duplicate"] is True

    run(go())


def test_replay_after_reconnect_has_no_gap_and_no_duplicate_while_others_send(server):
    async def go():
        writer = await Client.connect(server.url(1))
        reader = await Client.connect(server.url(2))
        await writer.cmd("join", room="rp")
        await reader.cmd("join", room="rp")
        for i in range(30):
            await writer.cmd("send", room="rp", text=f"a{i}")
        seen = [(await reader.next_event("message"))["seq"] for _ in range(30)]
        assert seen == list(range(1, 31))
        await reader.close()
        for i in range(300):  # sent while the reader is away
            await writer.send_raw(f'{{"op":"send","room":"rp","text":"b{i}"}}')
        # reconnect and replay while the writer keeps sending
        stop = asyncio.Event()

        async def keep_sending():
            i = 0
            while not stop.is_set():
                await writer.send_raw(f'{{"op":"send","room":"rp","text":"c{i}"}}')
                i += 1
                await asyncio.sleep(0.001)
            return i

        sender = asyncio.create_task(keep_sending())
        await asyncio.sleep(0.05)
        reader = await Client.connect(server.url(2))
        r = await reader.cmd("join", room="rp", since_seq=30)
        assert r["ok"] and r["recovered"] is True
        await asyncio.sleep(0.3)
        stop.set()
        extra = await sender
        total = 30 + 300 + extra
        # wait until the writer's sends are all stored
        for _ in range(100):
            h = await writer.cmd("history", room="rp", limit=1)
            if h["messages"] and h["messages"][-1]["seq"] == total:
                break
            await asyncio.sleep(0.05)
        got = []
        while len(got) < total - 30:
            got.append((await reader.next_event("message"))["seq"])
        assert got == list(range(31, total + 1))
        await reader.expect_silence(0.3)

    run(go())


def test_replay_from_zero_and_beyond_last(server):
    async def go():
        a = await Client.connect(server.url(1))
        await a.cmd("join", room="rp0")
        for i in range(3):
            await a.cmd("send", room="rp0", text=f"x{i}")
        b = await Client.connect(server.url(2))
        r = await b.cmd("join", room="rp0", since_seq=0)
        assert r["recovered"] is True and r["last_seq"] == 3
        assert [(await b.next_event("message"))["seq"] for _ in range(3)] == [1, 2, 3]
        c = await Client.connect(server.url(3))
        r = await c.cmd("join", room="rp0", since_seq=3)
        assert r["recovered"] is True
        await c.expect_silence(0.3)

    run(go())
