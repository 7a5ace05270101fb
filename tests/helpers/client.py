"""A small test client over the ``websockets`` library (a client we did not write)."""

from __future__ import annotations

import asyncio
import json
import struct
from typing import Any, Awaitable, TypeVar

import websockets

from tests.helpers.server import TIMEOUT_SCALE

T = TypeVar("T")
STEP = 5.0 * TIMEOUT_SCALE  # seconds any single expected event may take


_open: list["Client"] = []


def run(coro: Awaitable[T], timeout: float = 60.0) -> T:
    """Run a coroutine to completion with an overall deadline; close its clients after."""

    async def bounded() -> T:
        try:
            return await asyncio.wait_for(coro, timeout * TIMEOUT_SCALE)
        finally:
            clients = list(_open)
            _open.clear()
            await asyncio.gather(*(c.ws.close() for c in clients), return_exceptions=True)

    return asyncio.run(bounded())


class Client:
    """One WebSocket connection speaking the chathub protocol."""

    def __init__(self, ws: websockets.ClientConnection) -> None:
        self.ws = ws
        self._next_id = 0
        self.events: list[dict[str, Any]] = []  # events received while waiting for replies

    @classmethod
    async def connect(cls, url: str, *, ready: bool = True, **kw: Any) -> "Client":
        ws = await websockets.connect(url, open_timeout=STEP, max_size=None, **kw)
        c = cls(ws)
        _open.append(c)
        if ready:
            ev = await c.next_event("ready")
            c.ready = ev
        return c

    async def send_raw(self, data: str | bytes) -> None:
        await self.ws.send(data)

    async def recv(self, timeout: float = STEP) -> dict[str, Any]:
        raw = await asyncio.wait_for(self.ws.recv(), timeout)
        return json.loads(raw)

    async def cmd(self, op: str, **fields: Any) -> dict[str, Any]:
        """Send a command with an id and return its reply; events seen meanwhile are kept."""
        self._next_id += 1
        cid = self._next_id
        await self.ws.send(json.dumps({"op": op, "id": cid, **fields}))
        return await self.reply(cid)

    async def reply(self, cid: Any, timeout: float = STEP) -> dict[str, Any]:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            msg = await self.recv(max(0.01, deadline - loop.time()))
            if "ev" not in msg and msg.get("id") == cid:
                return msg
            self.events.append(msg)

    async def next_event(self, ev: str | None = None, timeout: float = STEP) -> dict[str, Any]:
        for i, m in enumerate(self.events):
            if "ev" in m and (ev is None or m["ev"] == ev):
                return self.events.pop(i)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            msg = await self.recv(max(0.01, deadline - loop.time()))
            if "ev" in msg and (ev is None or msg["ev"] == ev):
                return msg
            self.events.append(msg)

    async def expect_silence(self, seconds: float = 0.3) -> None:
        try:
            msg = await asyncio.wait_for(self.ws.recv(), seconds)
        except asyncio.TimeoutError:
            return
        raise AssertionError(f"expected nothing, got {msg!r}")

    async def closed_with(self, timeout: float = STEP) -> int | None:
        """Wait for the server to close; return the close code it sent."""
        try:
            while True:
                await asyncio.wait_for(self.ws.recv(), timeout)
        except websockets.ConnectionClosed as e:
            return e.rcvd.code if e.rcvd is not None else None

    async def close(self) -> None:
        await self.ws.close()


# ------------------------------------------------------------------ raw frames


async def raw_upgrade(port: int, token: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A WebSocket upgrade written by hand (for frames no library would send)."""
    r, w = await asyncio.open_connection("127.0.0.1", port)
    w.write(
        f"GET /ws?token={token} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n".encode()
    )
    head = await asyncio.wait_for(r.readuntil(b"\r\n\r\n"), STEP)
    assert head.startswith(b"HTTP/1.1 101")
    return r, w


async def read_frame(r: asyncio.StreamReader) -> tuple[int, bytes]:
    """One unmasked server frame: (opcode, payload)."""
    b0, b1 = await asyncio.wait_for(r.readexactly(2), STEP)
    n = b1 & 0x7F
    if n == 126:
        n = struct.unpack("!H", await r.readexactly(2))[0]
    elif n == 127:
        n = struct.unpack("!Q", await r.readexactly(8))[0]
    return b0 & 0x0F, await r.readexactly(n)
