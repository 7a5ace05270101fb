"""protocol.md "Rooms and moderation": create_room, private rooms, roles, invite, kick,
ban/unban, mute/unmute, delete_room, members, reactions."""

from __future__ import annotations

import asyncio

from tests.helpers.client import Client, run


def test_private_room_admits_invited_members_only(server):
    async def go():
        owner = await Client.connect(server.url(1))
        guest = await Client.connect(server.url(2))
        other = await Client.connect(server.url(3))
        r = await owner.cmd("create_room", room="priv-1", name="Secret", private=True)
        assert r["ok"] and r["role"] == "owner" and r["private"] is True
        r = await owner.cmd("create_room", room="priv-1")
        assert r["error"]["code"] == "conflict"
        assert (await owner.cmd("join", room="priv-1"))["ok"]
        r = await guest.cmd("join", room="priv-1")
        assert r["error"]["code"] == "forbidden"
        r = await guest.cmd("history", room="priv-1")
        assert r["error"]["code"] == "forbidden"
        # a member cannot invite; the owner can
        r = await other.cmd("invite", room="priv-1", user_id=2)
        assert r["error"]["code"] == "forbidden"
        r = await owner.cmd("invite", room="priv-1", user_id=2)
        assert r["ok"]
        ev = await guest.next_event("moderation")
        assert (ev["room"], ev["action"], ev["by"]) == ("priv-1", "invite", 1)
        assert (await guest.cmd("join", room="priv-1"))["ok"]
        m = await owner.cmd("members", room="priv-1")
        assert m["members"] == [
            {"user_id": 1, "role": "owner", "online": True},
            {"user_id": 2, "role": "member", "online": True},
        ]
        assert (await other.cmd("members", room="priv-1"))["error"]["code"] == "forbidden"
        # kick from a private room removes the membership too
        r = await owner.cmd("kick", room="priv-1", user_id=2, reason="bye")
        assert r["ok"]
        ev = await guest.next_event("moderation")
        assert (ev["action"], ev["reason"]) == ("kick", "bye")
        assert await owner.next_event("left") == {"ev": "left", "room": "priv-1", "user_id": 2}
        await owner.cmd("send", room="priv-1", text="after kick")
        await guest.expect_silence()
        assert (await guest.cmd("join", room="priv-1"))["error"]["code"] == "forbidden"

    run(go())


def test_ban_takes_effect_on_every_connection_at_once(server):
    async def go():
        mod = await Client.connect(server.url(10))
        t1 = await Client.connect(server.url(11))
        t2 = await Client.connect(server.url(11))
        await mod.cmd("create_room", room="ban-room")
        for c in (mod, t1, t2):
            assert (await c.cmd("join", room="ban-room"))["ok"]
        r = await mod.cmd("ban", room="ban-room", user_id=11, duration_s=3600, reason="spam")
        assert r["ok"] and r["until"] > 0
        for c in (t1, t2):
            ev = await c.next_event("moderation")
            assert (ev["action"], ev["reason"], ev["until"]) == ("ban", "spam", r["until"])
        await mod.cmd("send", room="ban-room", text="you can't see this")
        await t1.expect_silence()
        await t2.expect_silence()
        r = await t1.cmd("join", room="ban-room")
        assert r["error"]["code"] == "banned" and r["error"]["until"] > 0
        r = await t1.cmd("send", room="ban-room", text="x")
        assert r["error"]["code"] == "forbidden"
        # unban: can join again
        assert (await mod.cmd("unban", room="ban-room", user_id=11))["ok"]
        assert (await t1.cmd("join", room="ban-room"))["ok"]

    run(go())


def test_mute_blocks_sending_not_reading(server):
    async def go():
        mod = await Client.connect(server.url(20))
        u = await Client.connect(server.url(21))
        await mod.cmd("create_room", room="mute-room")
        await mod.cmd("join", room="mute-room")
        await u.cmd("join", room="mute-room")
        assert (await mod.cmd("mute", room="mute-room", user_id=21))["ok"]
        assert (await u.next_event("moderation"))["action"] == "mute"
        r = await u.cmd("send", room="mute-room", text="hello?")
        assert r["error"]["code"] == "muted"
        await mod.cmd("send", room="mute-room", text="still reading")
        assert (await u.next_event("message"))["text"] == "still reading"
        assert (await mod.cmd("unmute", room="mute-room", user_id=21))["ok"]
        assert (await u.cmd("send", room="mute-room", text="back"))["ok"]

    run(go())


def test_timed_mute_expires(server):
    async def go():
        mod = await Client.connect(server.url(25))
        u = await Client.connect(server.url(26))
        await mod.cmd("create_room", room="tmute")
        await u.cmd("join", room="tmute")
        assert (await mod.cmd("mute", room="tmute", user_id=26, duration_s=1))["ok"]
        assert (await u.cmd("send", room="tmute", text="x"))["error"]["code"] == "muted"
        await asyncio.sleep(1.2)
        assert (await u.cmd("send", room="tmute", text="x"))["ok"]

    run(go())


def test_roles_moderators_and_owner(server):
    async def go():
        owner = await Client.connect(server.url(30))
        mod = await Client.connect(server.url(31))
        member = await Client.connect(server.url(32))
        await owner.cmd("create_room", room="roles")
        for c in (owner, mod, member):
            await c.cmd("join", room="roles")
        assert (await mod.cmd("kick", room="roles", user_id=32))["error"]["code"] == "forbidden"
        assert (await member.cmd("set_role", room="roles", user_id=31, role="moderator"))["error"]["code"] == "forbidden"
        assert (await owner.cmd("set_role", room="roles", user_id=31, role="moderator"))["ok"]
        assert (await mod.cmd("kick", room="roles", user_id=32))["ok"]
        # nobody moderates the owner, and the moderator cannot promote
        assert (await mod.cmd("ban", room="roles", user_id=30))["error"]["code"] == "forbidden"
        assert (await mod.cmd("set_role", room="roles", user_id=32, role="moderator"))["error"]["code"] == "forbidden"
        # message deletion by a moderator
        await member.cmd("join", room="roles")
        s = await member.cmd("send", room="roles", text="oops")
        assert (await owner.cmd("edit", room="roles", seq=s["seq"], text="x"))["error"]["code"] == "forbidden"
        assert (await mod.cmd("delete", room="roles", seq=s["seq"]))["ok"]

    run(go())


def test_tenant_admin_token_moderates_any_room(server):
    async def go():
        owner = await Client.connect(server.url(40))
        admin = await Client.connect(f"{server.ws_url}?token={server.token(41, roles=['admin'])}")
        await owner.cmd("create_room", room="adm", private=True)
        assert (await admin.cmd("join", room="adm"))["ok"]  # admins enter private rooms
        assert (await admin.cmd("ban", room="adm", user_id=40))["ok"]  # even the owner
        other_tenant_admin = await Client.connect(f"{server.ws_url}?token={server.token(42, 7, roles=['admin'])}")
        r = await other_tenant_admin.cmd("delete_room", room="adm")
        assert r["error"]["code"] == "not_found"  # tenant 7 has no such room

    run(go())


def test_delete_room(server):
    async def go():
        owner = await Client.connect(server.url(50))
        u = await Client.connect(server.url(51))
        await owner.cmd("create_room", room="doomed")
        await owner.cmd("join", room="doomed")
        await u.cmd("join", room="doomed")
        await owner.cmd("send", room="doomed", text="last words")
        assert (await u.cmd("delete_room", room="doomed"))["error"]["code"] == "forbidden"
        assert (await owner.cmd("delete_room", room="doomed", reason="done"))["ok"]
        ev = await u.next_event("moderation")
        assert (ev["action"], ev["room"]) == ("delete_room", "doomed")
        r = await u.cmd("send", room="doomed", text="x")
        assert r["error"]["code"] == "forbidden"
        h = await u.cmd("history", room="doomed")
        assert h["messages"] == []

    run(go())


def test_reactions(server):
    async def go():
        a = await Client.connect(server.url(60))
        b = await Client.connect(server.url(61))
        await a.cmd("join", room="react")
        await b.cmd("join", room="react")
        s = await a.cmd("send", room="react", text="nice")
        await b.next_event("message")
        r = await b.cmd("react", room="react", seq=s["seq"], emoji="👍")
        assert r["ok"] and r["reactions"] == {"👍": [61]}
        ev = await a.next_event("reaction")
        assert (ev["seq"], ev["emoji"], ev["user_id"], ev["remove"]) == (s["seq"], "👍", 61, False)
        r = await b.cmd("react", room="react", seq=s["seq"], emoji="👍", remove=True)
        assert r["reactions"] == {}
        assert (await b.cmd("react", room="react", seq=999, emoji="x"))["error"]["code"] == "not_found"

    run(go())
