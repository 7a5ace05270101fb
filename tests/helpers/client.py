"""A small test client over the ``websockets`` library (a client we did not write)."""

from __future__ import annotations

import asyncio
import json
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
