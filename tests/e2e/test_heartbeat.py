"""protocol.md "Heartbeat": server pings, and close 1001 after connection_timeout of silence."""

from __future__ import annotations

import asyncio
import struct

from tests.helpers.client import Client, raw_upgrade, read_frame, run


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
