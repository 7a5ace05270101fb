"""protocol.md "Heartbeat": server pings, and close 1001 after connection_timeout of silence."""

from __future__ import annotations

import asyncio
import struct

from tests.helpers.client import STEP, Client, run


async def raw_upgrade(port: int, token: str):
    r, w = await asyncio.open_connection("127.0.0.1", port)
    w.write(
        f"GET /ws?token={token} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n".encode()
    )
    head = await asyncio.wait_for(r.readuntil(b"\r\n\r\n"), STEP)
    assert head.startswith(b"HTTP/1.1 101")
    return r, w


async def read_frame(r: asyncio.StreamReader) -> tuple[int, bytes]:
    b0, b1 = await asyncio.wait_for(r.readexactly(2), STEP)
    n = b1 & 0x7F
    if n == 126:
        n = struct.unpack("!H", await r.readexactly(2))[0]
    elif n == 127:
        n = struct.unpack("!Q", await r.readexactly(8))[0]
    return b0 & 0x0F, await r.readexactly(n)


def test_silent_client_is_pinged_then_closed_1001(server_factory):
    srv = server_factory(extra_env={"CHATHUB_HEARTBEAT_INTERVAL": "0.3", "CHATHUB_CONNECTION_TIMEOUT": "1"})

    async def go():
        r, w = await raw_upgrade(srv.port, srv.token(1))
        opcodes = []
        t0 = asyncio.get_running_loop().time()
        while True:
            op, payload = await read_frame(r)
            opcodes.append(op)
            if op == 0x8:
                assert struct.unpack("!H", payload[:2])[0] == 1001
                break
        elapsed = asyncio.get_running_loop().time() - t0
        assert opcodes[0] == 0x1  # ready
        assert 0x9 in opcodes  # pinged before being dropped
        assert 0.9 < elapsed < 4
        w.close()

    run(go())


def test_answering_client_stays_connected(server_factory):
    srv = server_factory(extra_env={"CHATHUB_HEARTBEAT_INTERVAL": "0.3", "CHATHUB_CONNECTION_TIMEOUT": "1"})

    async def go():
        c = await Client.connect(srv.url(1))  # websockets answers pings by itself
        await asyncio.sleep(2.5)
        assert (await c.cmd("ping"))["ok"]

    run(go())
