"""Shared by the benchmark clients: connect from 127.0.0.x source addresses, so that
tens of thousands of connections to one loopback port do not run out of ephemeral ports."""

from __future__ import annotations

import asyncio
import socket
from typing import Any, Awaitable, Callable


def spread_source(port: int, uid: int, spread: int = 200) -> Callable[[Any], Awaitable[socket.socket]]:
    """A picows ``socket_factory`` connecting to 127.0.0.1:``port`` from 127.0.0.(2 + uid % spread)."""
    src = f"127.0.0.{2 + uid % spread}"

    async def factory(url: Any) -> socket.socket:
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setblocking(False)
        s.bind((src, 0))
        await asyncio.get_running_loop().sock_connect(s, ("127.0.0.1", port))
        return s

    return factory
