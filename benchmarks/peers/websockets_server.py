"""The ``websockets`` library's fan-out: ``websockets.broadcast()`` to the room's others.

Part of benchmarks/bench_fanout.py. The room is the ``room=`` query parameter; every
text message a client sends goes to every other connection of its room with
``websockets.broadcast``. Runs on uvloop; no compression, no keepalive pings (the load
generator answers pings anyway, but idle-connection runs should not depend on them).

Usage: python websockets_server.py PORT
"""

from __future__ import annotations

import resource
import sys
from urllib.parse import parse_qs, urlsplit

import uvloop
import websockets
from websockets.asyncio.server import ServerConnection, serve

rooms: dict[str, set[ServerConnection]] = {}


async def handler(ws: ServerConnection) -> None:
    room = parse_qs(urlsplit(ws.request.path).query).get("room", ["0"])[0]  # type: ignore[union-attr]
    members = rooms.setdefault(room, set())
    members.add(ws)
    try:
        async for msg in ws:
            websockets.broadcast([c for c in members if c is not ws], msg)
    finally:
        members.discard(ws)


async def main(port: int) -> None:
    async with serve(handler, "127.0.0.1", port, compression=None, ping_interval=None,
                     backlog=4096, max_queue=None) as server:
        print(f"websockets listening on 127.0.0.1:{port} (websockets {websockets.version.version})", flush=True)
        await server.serve_forever()


if __name__ == "__main__":
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    uvloop.run(main(int(sys.argv[1])))
