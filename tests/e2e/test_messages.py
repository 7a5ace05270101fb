"""protocol.md "Commands": join, leave, send, history, ping; ids and replies; per-room seq."""

from __future__ import annotations

import asyncio

from tests.helpers.client import Client, run


def test_send_reaches_others_not_the_sender_connection(server):
    async def go():
        a = await Client.connect(server.url(1))
        a2 = await Client.connect(server.url(1))
        b = await Client.connect(server.url(2))
        for c in (a, a2, b):
            r = await c.cmd("join", room="t-send")
            assert r["ok"] and r["room"] == "t-send" and r["last_seq"] == 0
        r = await a.cmd("send", room="t-send", text="hello", client_msg_id="c-1")
        assert r["ok"] and r["seq"] == 1 and r["msg_id"] and isinstance(r["ts"], int)
        for c in (a2, b):
            m = await c.next_event("message")
            assert {k: m[k] for k in ("room", "seq", "from", "text", "client_msg_id")} == {
                "room": "t-send", "seq": 1, "from": 1, "text": "hello", "client_msg_id": "c-1"}
            assert m["msg_id"] == r["msg_id"] and m["ts"] == r["ts"]
        await a.expect_silence()
        # joined events: b saw user 1 join? (1 joined first) - a saw user 2 join
        # per-room seq grows by exactly one, in order for everyone
        for i in range(2, 12):
            r = await b.cmd("send", room="t-send", text=f"m{i}")
            assert r["seq"] == i
        seqs = [(await a.next_event("message"))["seq"] for _ in range(10)]
        assert seqs == list(range(2, 12))

    run(go())


def test_repeated_client_msg_id_is_stored_once(server):
    async def go():
        a = await Client.connect(server.url(1))
        b = await Client.connect(server.url(2))
        await a.cmd("join", room="t-idem")
        await b.cmd("join", room="t-idem")
        r1 = await a.cmd("send", room="t-idem", text="once", client_msg_id="same")
        r2 = await a.cmd("send", room="t-idem", text="once", client_msg_id="same")
        assert r1["seq"] == r2["seq"] == 1 and r2.get("duplicate") is True
        assert (await b.next_event("message"))["seq"] == 1
        await b.expect_silence()
        h = await a.cmd("history", room="t-idem")
        assert [m["seq"] for m in h["messages"]] == [1]

    run(go())


def test_history_pages(server):
    async def go():
        a = await Client.connect(server.url(1))
        await a.cmd("join", room="t-hist")
        for i in range(1, 8):
            await a.cmd("send", room="t-hist", text=f"m{i}", reply_to=i - 1 if i > 1 else None)
        h = await a.cmd("history", room="t-hist", limit=3)
        assert [m["seq"] for m in h["messages"]] == [5, 6, 7] and h["has_more"] is True
        assert h["messages"][0]["text"] == "m5" and h["messages"][0]["from"] == 1
        assert h["messages"][0]["reply_to"] == 4
        h = await a.cmd("history", room="t-hist", before_seq=5, limit=3)
        assert [m["seq"] for m in h["messages"]] == [2, 3, 4] and h["has_more"] is True
        h = await a.cmd("history", room="t-hist", before_seq=2)
        assert [m["seq"] for m in h["messages"]] == [1] and h["has_more"] is False
        h = await a.cmd("history", room="t-hist", after_seq=5)
        assert [m["seq"] for m in h["messages"]] == [6, 7] and h["has_more"] is False
        h = await a.cmd("history", room="t-empty")
        assert h["messages"] == [] and h["has_more"] is False

    run(go())


def test_joined_left_and_leave(server):
    async def go():
        a = await Client.connect(server.url(1))
        b = await Client.connect(server.url(2))
        await a.cmd("join", room="t-jl")
        r = await b.cmd("join", room="t-jl")
        assert r["members"] == [1, 2]
        ev = await a.next_event("joined")
        assert ev == {"ev": "joined", "room": "t-jl", "user_id": 2}
        r = await b.cmd("leave", room="t-jl")
        assert r["ok"]
        assert await a.next_event("left") == {"ev": "left", "room": "t-jl", "user_id": 2}
        # after leaving, b neither receives nor may send
        await a.cmd("send", room="t-jl", text="x")
        await b.expect_silence()
        r = await b.cmd("send", room="t-jl", text="x")
        assert r["error"]["code"] == "forbidden"
        r = await b.cmd("leave", room="t-jl")
        assert r["error"]["code"] == "not_found"

    run(go())


def test_tenants_share_nothing(server):
    async def go():
        a = await Client.connect(server.url(1, 1))
        b = await Client.connect(server.url(2, 2))
        await a.cmd("join", room="general-t")
        r = await b.cmd("join", room="general-t")
        assert r["members"] == [2] and r["last_seq"] == 0
        await a.cmd("send", room="general-t", text="tenant one only")
        await b.expect_silence()
        h = await b.cmd("history", room="general-t")
        assert h["messages"] == []

    run(go())


def test_commands_without_id_get_no_success_reply_but_errors(server):
    async def go():
        a = await Client.connect(server.url(1))
        await a.send_raw('{"op":"join","room":"t-noid"}')
        await a.send_raw('{"op":"ping"}')
        await a.expect_silence()
        await a.send_raw('{"op":"send","room":"not joined","text":"x"}')
        m = await a.recv()
        assert m["id"] is None and m["ok"] is False and m["error"]["code"] == "bad_request"
        await a.send_raw('{"op":"send","room":"t-other","text":"x"}')
        m = await a.recv()
        assert m == {"id": None, "ok": False, "error": {"code": "forbidden", "message": m["error"]["message"]}}

    run(go())


def test_ping(server):
    async def go():
        a = await Client.connect(server.url(1))
        r = await a.cmd("ping")
        assert r["ok"] and r["pong"] and isinstance(r["server_time"], int)
        await a.send_raw('{"op":"ping","id":"str-id"}')  # a string id is echoed as given
        r = await a.reply("str-id")
        assert r["ok"] and r["id"] == "str-id"

    run(go())


def test_concurrent_senders_see_one_order(server):
    """Several users send at once; every member sees the same gap-free seq order."""

    async def go():
        clients = [await Client.connect(server.url(100 + i)) for i in range(5)]
        for c in clients:
            await c.cmd("join", room="t-order")

        async def burst(c: Client, n: int):
            for i in range(n):
                await c.send_raw(f'{{"op":"send","room":"t-order","text":"x{i}","id":{i}}}')

        await asyncio.gather(*(burst(c, 20) for c in clients))
        for c in clients:
            seen = []
            while len(seen) < 80:
                m = await c.recv()
                if m.get("ev") == "message":
                    seen.append(m["seq"])
            assert seen == sorted(seen) and len(set(seen)) == 80
        h = await clients[0].cmd("history", room="t-order", limit=200)
        assert [m["seq"] for m in h["messages"]] == list(range(1, 101))

    run(go())


def test_edit_and_delete_show_in_history(server):
    async def go():
        a = await Client.connect(server.url(1))
        b = await Client.connect(server.url(2))
        await a.cmd("join", room="t-edit")
        await b.cmd("join", room="t-edit")
        s1 = await a.cmd("send", room="t-edit", text="first")
        s2 = await a.cmd("send", room="t-edit", text="second")
        assert (await b.cmd("edit", room="t-edit", seq=s1["seq"], text="hijack"))["error"]["code"] == "forbidden"
        assert (await b.cmd("delete", room="t-edit", seq=s1["seq"]))["error"]["code"] == "forbidden"
        r = await a.cmd("edit", room="t-edit", seq=s1["seq"], text="first, edited")
        assert r["ok"]
        ev = await b.next_event("edited")
        assert (ev["seq"], ev["text"], ev["by"]) == (s1["seq"], "first, edited", 1)
        assert (await a.cmd("delete", room="t-edit", seq=s2["seq"]))["ok"]
        ev = await b.next_event("deleted")
        assert ev["seq"] == s2["seq"] and "text" not in ev
        h = await b.cmd("history", room="t-edit")
        m1, m2 = h["messages"]
        assert m1["text"] == "first, edited" and isinstance(m1["edited_at"], int) and "deleted" not in m1
        assert m2["deleted"] is True and m2["text"] == ""
        assert (await a.cmd("edit", room="t-edit", seq=s2["seq"], text="x"))["error"]["code"] == "not_found"
        assert (await a.cmd("delete", room="t-edit", seq=99))["error"]["code"] == "not_found"

    run(go())


def test_pipelined_commands_take_effect_in_order(server):
    """A client may send join, send, history... without waiting for replies."""

    async def go():
        a = await Client.connect(server.url(1))
        b = await Client.connect(server.url(2))
        await b.cmd("join", room="t-pipe")
        frames = ['{"op":"join","room":"t-pipe","id":"j"}']
        frames += [f'{{"op":"send","room":"t-pipe","text":"p{i}","id":"s{i}"}}' for i in range(20)]
        frames += ['{"op":"history","room":"t-pipe","limit":200,"id":"h"}', '{"op":"leave","room":"t-pipe","id":"l"}',
                   '{"op":"send","room":"t-pipe","text":"after leave","id":"x"}']
        for f in frames:
            await a.send_raw(f)
        replies = {}
        while len(replies) < len(frames):
            m = await a.recv()
            if "ev" not in m:
                replies[m["id"]] = m
        assert replies["j"]["ok"]
        assert [replies[f"s{i}"]["seq"] for i in range(20)] == list(range(1, 21))
        assert [m["text"] for m in replies["h"]["messages"]] == [f"p{i}" for i in range(20)]
        assert replies["l"]["ok"] and replies["x"]["error"]["code"] == "forbidden"
        assert [(await b.next_event("message"))["text"] for _ in range(20)] == [f"p{i}" for i in range(20)]

    run(go())
