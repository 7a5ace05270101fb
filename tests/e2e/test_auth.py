"""protocol.md "Transport": authentication by URL and by first frame, 4001, 4009."""

from __future__ import annotations

import time

import jwt
import pytest

from chathub.auth import mint_token
from tests.helpers.client import Client, run
from tests.helpers.server import TEST_SECRET


def test_token_in_query_gets_ready(server):
    async def go():
        c = await Client.connect(server.url(42, 3))
        r = c.ready
        assert (r["user_id"], r["tenant_id"], r["heartbeat_s"]) == (42, 3, 30)
        assert isinstance(r["conn_id"], str) and r["conn_id"]
        assert abs(r["server_time"] - time.time() * 1000) < 60_000
        await c.close()

    run(go())


def test_auth_as_first_frame(server):
    async def go():
        c = await Client.connect(server.ws_url, ready=False)
        # before auth every other command is refused, the connection stays
        r = await c.cmd("join", room="general")
        assert r["ok"] is False and r["error"]["code"] == "unauthorized"
        r = await c.cmd("auth", token=server.token(7))
        assert r["ok"] is True and r["user_id"] == 7
        ready = await c.next_event("ready")  # sent before the reply
        assert ready["user_id"] == 7 and ready["conn_id"] == r["conn_id"]
        r = await c.cmd("ping")
        assert r["ok"] and r["pong"] is True
        r = await c.cmd("auth", token=server.token(7))
        assert r["ok"] is False and r["error"]["code"] == "conflict"
        await c.close()

    run(go())


@pytest.mark.parametrize(
    "token_kind",
    ["garbage", "wrong_secret", "expired", "alg_none", "no_exp", "bad_sub", "hs512"],
)
def test_bad_tokens_close_4001(server, token_kind):
    now = time.time()
    tokens = {
        "garbage": "not.a.jwt",
        "wrong_secret": mint_token("another-secret-that-is-long-enough-0123456789", 1),
        "expired": mint_token(TEST_SECRET, 1, now=now - 7200, ttl_s=60),
        "alg_none": jwt.encode({"sub": "1", "exp": int(now) + 60}, None, algorithm="none"),
        "no_exp": jwt.encode({"sub": "1"}, TEST_SECRET, algorithm="HS256"),
        "bad_sub": jwt.encode({"sub": "alice", "exp": int(now) + 60}, TEST_SECRET, algorithm="HS256"),
        "hs512": jwt.encode({"sub": "1", "exp": int(now) + 60}, TEST_SECRET, algorithm="HS512"),
    }
    token = tokens[token_kind]

    async def go():
        c = await Client.connect(f"{server.ws_url}?token={token}", ready=False)
        ev = await c.next_event("error")
        assert ev["code"] == "unauthorized"
        assert await c.closed_with() == 4001
        c2 = await Client.connect(server.ws_url, ready=False)
        await c2.send_raw(f'{{"op":"auth","token":"{token}","id":"a"}}')
        r = await c2.reply("a")
        assert r["ok"] is False and r["error"]["code"] == "unauthorized"
        assert await c2.closed_with() == 4001

    run(go())


def test_auth_timeout_closes_4001(server_factory):
    srv = server_factory(extra_env={"CHATHUB_AUTH_TIMEOUT": "0.5"})

    async def go():
        c = await Client.connect(srv.ws_url, ready=False)
        t0 = time.monotonic()
        assert await c.closed_with(timeout=5) == 4001
        assert time.monotonic() - t0 < 4

    run(go())


def test_extra_connection_closed_4009(server_factory):
    srv = server_factory(extra_env={"CHATHUB_MAX_CONNECTIONS_PER_USER": "2"})

    async def go():
        a = await Client.connect(srv.url(5))
        b = await Client.connect(srv.url(5))
        c = await Client.connect(srv.url(5), ready=False)
        assert await c.closed_with() == 4009
        # the first two still work; after one closes, a new one is admitted
        assert (await a.cmd("ping"))["ok"]
        await b.close()
        for _ in range(50):
            try:
                d = await Client.connect(srv.url(5))
                break
            except Exception:  # pragma: no cover - timing
                pass
        assert (await d.cmd("ping"))["ok"]
        # another tenant's user 5 is someone else
        e = await Client.connect(srv.url(5, 9))
        assert e.ready["tenant_id"] == 9

    run(go())
