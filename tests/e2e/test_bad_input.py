"""Bad input never crashes or hangs the server and never affects other clients."""

from __future__ import annotations

import asyncio
import socket

import pytest

from tests.helpers.client import STEP, Client, raw_upgrade, read_frame, run


async def assert_alive(server, bystander: Client) -> None:
    """The server still answers a bystander and new connections."""
    assert (await bystander.cmd("ping"))["ok"]
    c = await Client.connect(server.url(999))
    assert (await c.cmd("ping"))["ok"]
    await c.close()


@pytest.mark.parametrize(
    "frame, code",
    [
        ("not json", "bad_request"),
        ("", "bad_request"),
        ("[1,2,3]", "bad_request"),
        ('"a string"', "bad_request"),
        ("null", "bad_request"),
        ('{"op":"fly"}', "bad_request"),
        ('{"no":"op"}', "bad_request"),
        ('{"op":42}', "bad_request"),
        ('{"op":"join"}', "bad_request"),
        ('{"op":"join","room":"bad room!"}', "bad_request"),
        ('{"op":"join","room":""}', "bad_request"),
        ('{"op":"join","room":"' + "x" * 65 + '"}', "bad_request"),
        ('{"op":"join","room":["a"]}', "bad_request"),
        ('{"op":"send","room":"r","text":7}', "bad_request"),
        ('{"op":"history","room":"r","limit":"10"}', "bad_request"),
        ('{"op":"join","room":"dm:1:2"}', "forbidden"),
        ('{"op":"join","room":"x","since_seq":1.5}', "bad_request"),
        ('{"op":"send","room":"r","text":"\\ud800"}', "bad_request"),
    ],
)
def test_bad_frames_get_errors_and_the_connection_stays(server, frame, code):
    async def go():
        bystander = await Client.connect(server.url(2))
        c = await Client.connect(server.url(77))
        await c.send_raw(frame)
        m = await c.recv()
        assert m["ok"] is False and m["id"] is None and m["error"]["code"] == code, m
        assert isinstance(m["error"]["message"], str) and m["error"]["message"]
        assert (await c.cmd("ping"))["ok"]
        await assert_alive(server, bystander)

    run(go())


def test_binary_garbage_is_refused(server):
    async def go():
        c = await Client.connect(server.url(3))
        await c.send_raw(bytes(range(256)))
        m = await c.recv()
        assert m["error"]["code"] == "bad_request"
        await c.send_raw(b'{"op":"ping","id":1}')  # binary JSON is not a command either
        m = await c.recv()
        assert m["error"]["code"] == "bad_request"
        assert (await c.cmd("ping"))["ok"]

    run(go())


def test_invalid_utf8_text_frame(server):
    """A text frame that is not UTF-8 is refused with bad_request or closed with 1007."""

    async def go():
        bystander = await Client.connect(server.url(2))
        r, w = await raw_upgrade(server.port, server.token(5))
        payload = b'{"op":"ping","x":"\xff"}'
        mask = b"\x01\x02\x03\x04"
        w.write(bytes([0x81, 0x80 | len(payload)]) + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload)))
        data = b""
        while b"bad_request" not in data and b"\x88" not in data:
            chunk = await asyncio.wait_for(r.read(4096), STEP)
            assert chunk, data
            data += chunk
        w.close()
        await assert_alive(server, bystander)

    run(go())


def test_oversized_frame_closes_1009(server_factory):
    srv = server_factory(extra_env={"CHATHUB_MAX_MESSAGE_SIZE": "4096"})

    async def go():
        bystander = await Client.connect(srv.url(2))
        c = await Client.connect(srv.url(1))
        await c.send_raw('{"op":"ping","pad":"' + "x" * 5000 + '"}')
        assert await c.closed_with() == 1009
        # a message split into fragments is reassembled, and its total is bounded too
        d = await Client.connect(srv.url(3))
        await d.ws.send(['{"op":"ping",', '"id":"frag"}'])
        assert (await d.reply("frag"))["ok"]
        await d.ws.send(['{"op":"ping","pad":"', "x" * 3000, "x" * 3000, '"}'])
        assert await d.closed_with() == 1009
        await assert_alive(srv, bystander)

    run(go())


def test_raw_garbage_instead_of_upgrade(server_factory):
    server = server_factory(extra_env={"CHATHUB_AUTH_TIMEOUT": "1"})

    async def go():
        bystander = await Client.connect(server.url(2))
        for junk in (b"\x00\xff" * 500, b"GARBAGE\r\n\r\n", b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello",
                     b"POST /ws HTTP/1.1\r\n\r\n", b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03"):
            r, w = await asyncio.open_connection("127.0.0.1", server.port)
            w.write(junk)
            await w.drain()
            t0 = asyncio.get_running_loop().time()
            try:
                data = await asyncio.wait_for(r.read(65536), STEP)
            except ConnectionResetError:
                data = b""
            # an incomplete request is dropped at the handshake deadline (auth_timeout)
            assert asyncio.get_running_loop().time() - t0 < 3
            assert data == b"" or data.startswith(b"HTTP/1.1 4"), data[:100]
            w.close()
        await assert_alive(server, bystander)

    run(go())


def test_half_sent_handshake_does_not_block_others(server_factory):
    server = server_factory(extra_env={"CHATHUB_AUTH_TIMEOUT": "1"})

    async def go():
        bystander = await Client.connect(server.url(2))
        socks = []
        for _ in range(20):
            s = socket.create_connection(("127.0.0.1", server.port))
            s.sendall(b"GET /ws HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgr")
            socks.append(s)
        await assert_alive(server, bystander)
        a = await Client.connect(server.url(3))
        await a.cmd("join", room="t-half")
        await bystander.cmd("join", room="t-half")
        await a.cmd("send", room="t-half", text="still fine")
        assert (await bystander.next_event("message"))["text"] == "still fine"
        # the half-open sockets are closed by the server at the handshake deadline
        await asyncio.sleep(1.5)
        for s in socks:
            s.settimeout(STEP)
            assert s.recv(100) == b""
            s.close()

    run(go())


def test_http_routes(server):
    import urllib.request
    import json

    with urllib.request.urlopen(server.http_url + "/", timeout=STEP) as r:
        assert r.status == 200 and "text/html" in r.headers["Content-Type"]
        assert b"<html" in r.read().lower()
    with urllib.request.urlopen(server.http_url + "/info", timeout=STEP) as r:
        info = json.loads(r.read())
        assert info["dev_mode"] is False and info["version"]
    with pytest.raises(urllib.error.HTTPError) as ei:
        urllib.request.urlopen(server.http_url + "/dev/token?user=1", timeout=STEP)
    assert ei.value.code == 404  # no dev tokens unless in dev mode
    with pytest.raises(urllib.error.HTTPError) as ei:
        urllib.request.urlopen(server.http_url + "/nope", timeout=STEP)
    assert ei.value.code == 404


def test_dev_mode_hands_out_tokens(server_factory):
    import json
    import urllib.request

    srv = server_factory(dev=True)
    out = srv.output()
    assert "DEV MODE" in out and "CHATHUB_JWT_SECRET=" in out and "token for user 1:" in out
    with urllib.request.urlopen(srv.http_url + "/dev/token?user=42&tenant=3", timeout=STEP) as r:
        tok = json.loads(r.read())
    assert tok["user_id"] == 42 and tok["tenant_id"] == 3

    async def go():
        c = await Client.connect(f"{srv.ws_url}?token={tok['token']}")
        assert (c.ready["user_id"], c.ready["tenant_id"]) == (42, 3)
        # the printed token works too
        printed = out.split("token for user 1:")[1].split()[0]
        d = await Client.connect(f"{srv.ws_url}?token={printed}")
        assert d.ready["user_id"] == 1

    run(go())


@pytest.mark.parametrize("client_close", [b"", (1000).to_bytes(2, "big") + b"bye", (4000).to_bytes(2, "big")])
def test_close_handshake_answer_is_a_valid_close_frame(server, client_close):
    """A client's close frame gets a close frame back that any client accepts: the same
    code, or no code when the client sent none (never code 0, 1005 or 1006 on the wire)."""

    async def go():
        r, w = await raw_upgrade(server.port, server.token(7))
        mask = b"\x01\x02\x03\x04"
        w.write(bytes([0x88, 0x80 | len(client_close)]) + mask
                + bytes(b ^ mask[i % 4] for i, b in enumerate(client_close)))
        op, payload = await read_frame(r)
        while op != 0x8:  # the events before it (ready)
            op, payload = await read_frame(r)
        if client_close:
            assert payload[:2] == client_close[:2]
        else:
            assert payload == b""
        assert await asyncio.wait_for(r.read(), STEP) == b""  # then the server disconnects
        w.close()

    run(go())
