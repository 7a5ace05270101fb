"""python-socketio fan-out (aiohttp server on uvloop): part of benchmarks/bench_fanout.py.

The room is the ``room=`` query parameter of the Engine.IO WebSocket URL
(``/socket.io/?EIO=4&transport=websocket&room=N``); a client's ``pub`` event is emitted as
``message`` to every other connection of its room (``emit(..., room=, skip_sid=)``).
python-socketio and aiohttp are pip-installed at benchmark time (not chathub dependencies).

Usage: python socketio_server.py PORT
"""

from __future__ import annotations

import asyncio
import resource
import sys
from importlib.metadata import version
from urllib.parse import parse_qs

import socketio
import uvloop
from aiohttp import web

# ping_interval long enough that idle runs do not depend on Engine.IO pings (the load
# generator answers them anyway); no HTTP compression; websocket transport only.
sio = socketio.AsyncServer(async_mode="aiohttp", ping_interval=600, ping_timeout=600,
                           http_compression=False, transports=["websocket"])
room_of: dict[str, str] = {}


@sio.event
async def connect(sid, environ, auth=None):  # type: ignore[no-untyped-def]
    room = parse_qs(environ.get("QUERY_STRING", "")).get("room", ["0"])[0]
    room_of[sid] = room
    await sio.enter_room(sid, room)


@sio.event
async def disconnect(sid, reason=None):  # type: ignore[no-untyped-def]
    room_of.pop(sid, None)


@sio.on("pub")
async def pub(sid, data):  # type: ignore[no-untyped-def]
    await sio.emit("message", data, room=room_of.get(sid, "0"), skip_sid=sid)


async def main(port: int) -> None:
    app = web.Application()
    sio.attach(app)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", port, backlog=4096)
    await site.start()
    print(f"python-socketio {version('python-socketio')} (aiohttp {version('aiohttp')}) "
          f"listening on 127.0.0.1:{port}", flush=True)
    await asyncio.Event().wait()


if __name__ == "__main__":
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    uvloop.run(main(int(sys.argv[1])))
