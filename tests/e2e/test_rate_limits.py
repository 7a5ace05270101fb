"""protocol.md "Rate limits": token buckets per user and kind, rate_limited, 4008."""

from __future__ import annotations

import asyncio

from tests.helpers.client import Client, run


def test_message_bucket_refuses_with_retry_after_then_4008(server_factory):
    srv = server_factory(extra_env={"CHATHUB_RATE_LIMITS": "on", "CHATHUB_RATE_LIMIT_MESSAGE": "5",
                                    "CHATHUB_RATE_LIMIT_WINDOW": "60"})

    async def go():
        a = await Client.connect(srv.url(1))
        a2 = await Client.connect(srv.url(1))  # the same user shares the buckets
        b = await Client.connect(srv.url(2))
        await a.cmd("join", room="rl")
        for i in range(5):
            assert (await a.cmd("send", room="rl", text=f"m{i}"))["ok"]
        r = await a.cmd("send", room="rl", text="one too many")
        assert r["ok"] is False and r["error"]["code"] == "rate_limited"
        assert 0 < r["error"]["retry_after_ms"] <= 12_000  # one token every 12 s
        await a2.cmd("join", room="rl")
        assert (await a2.cmd("send", room="rl", text="x"))["error"]["code"] == "rate_limited"
        # other kinds and other users have their own buckets
        assert (await a.cmd("typing", room="rl", state="start"))["ok"]
        await b.cmd("join", room="rl")
        assert (await b.cmd("send", room="rl", text="mine"))["ok"]
        # persistent abuse closes the connection with 4008
        for _ in range(40):
            await a.send_raw('{"op":"send","room":"rl","text":"spam"}')
        assert await a.closed_with() == 4008
        assert (await b.cmd("ping"))["ok"]

    run(go())


def test_limits_off_lets_bursts_through(server_factory):
    srv = server_factory(extra_env={"CHATHUB_RATE_LIMITS": "off", "CHATHUB_RATE_LIMIT_MESSAGE": "2"})

    async def go():
        a = await Client.connect(srv.url(1))
        await a.cmd("join", room="rl")
        for i in range(20):
            assert (await a.cmd("send", room="rl", text=f"m{i}"))["ok"]

    run(go())
