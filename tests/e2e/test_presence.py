"""protocol.md "presence", "typing", "read": presence with grace, away, typing lapse, receipts."""

from __future__ import annotations

import asyncio

from tests.helpers.client import Client, run


def test_presence_grace_and_away(server_factory):
    srv = server_factory(extra_env={"CHATHUB_PRESENCE_GRACE": "1"})

    async def go():
        a = await Client.connect(srv.url(1))
        b = await Client.connect(srv.url(2))
        await a.cmd("join", room="p")
        await b.cmd("join", room="p")
        assert (await a.next_event("joined"))["user_id"] == 2
        p = await a.cmd("presence", room="p")
        assert [(u["user_id"], u["status"]) for u in p["users"]] == [(1, "online"), (2, "online")]
        assert all(isinstance(u["since"], int) for u in p["users"])
        # away reaches the room
        assert (await b.cmd("set_status", status="away"))["ok"]
        ev = await a.next_event("presence")
        assert (ev["user_id"], ev["status"], ev["room"]) == (2, "away", "p")
        # a quick reconnect: no left, no joined
        await b.close()
        b = await Client.connect(srv.url(2))
        await b.cmd("join", room="p")
        await a.expect_silence(1.3)
        # a real departure: left after the grace period
        await b.close()
        await a.expect_silence(0.5)
        ev = await a.next_event("left", timeout=3)
        assert ev == {"ev": "left", "room": "p", "user_id": 2}
        p = await a.cmd("presence", room="p")
        assert [u["user_id"] for u in p["users"]] == [1]

    run(go())


def test_typing_reaches_others_coalesces_and_lapses(server_factory):
    srv = server_factory(extra_env={"CHATHUB_TYPING_TIMEOUT": "1"})

    async def go():
        a = await Client.connect(srv.url(1))
        a2 = await Client.connect(srv.url(1))
        b = await Client.connect(srv.url(2))
        for c in (a, a2, b):
            await c.cmd("join", room="ty")
        await a.cmd("typing", room="ty", state="start")
        ev = await b.next_event("typing")
        assert ev == {"ev": "typing", "room": "ty", "user_id": 1, "state": "start"}
        await asyncio.sleep(0.2)
        try:  # not to the typist's own connections
            while True:
                a2.events.append(await a2.recv(0.1))
        except asyncio.TimeoutError:
            pass
        assert not [e for e in a2.events if e.get("ev") == "typing"]
        await a.cmd("typing", room="ty", state="start")  # coalesced
        ev = await b.next_event("typing", timeout=3)  # the lapse, not a second start
        assert ev["state"] == "stop"
        assert (await a.cmd("typing", room="ty", state="maybe"))["error"]["code"] == "bad_request"
        assert (await a.cmd("typing", room="elsewhere", state="start"))["error"]["code"] == "forbidden"

    run(go())


def test_read_receipts_are_forward_only_and_unread_counts(server):
    async def go():
        a = await Client.connect(server.url(1))
        b = await Client.connect(server.url(2))
        await a.cmd("join", room="rd")
        await b.cmd("join", room="rd")
        for i in range(5):
            await a.cmd("send", room="rd", text=f"m{i}")
        r = await b.cmd("read", room="rd", seq=3)
        assert r["ok"] and r["seq"] == 3
        ev = await a.next_event("receipt")
        assert ev == {"ev": "receipt", "room": "rd", "user_id": 2, "seq": 3}
        r = await b.cmd("read", room="rd", seq=1)  # never moves back
        assert r["seq"] == 3
        assert (await b.cmd("read", room="rd", seq=99))["error"]["code"] == "bad_request"
        await b.cmd("leave", room="rd")
        r = await b.cmd("join", room="rd")
        assert r["unread"] == 2 and r["last_seq"] == 5

    run(go())
