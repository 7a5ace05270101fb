"""Plain-Python picows fan-out loop: the baseline chathub's own Python layer is measured against.

Part of benchmarks/bench_fanout.py. The room is the ``room=`` query parameter of the
upgrade URL; every text frame a client sends is forwarded, as is, to every other
connection of its room with one ``transport.send`` each. No JSON, no auth, no store.
Same picows settings as ``chathub serve`` (read_buffer_init_size=2048, no aiofastnet).

Usage: python picows_server.py PORT
"""

from __future__ import annotations

import resource
import sys
from urllib.parse import parse_qs

import uvloop
from picows import WSListener, WSMsgType, WSTransport, ws_create_server

TEXT = WSMsgType.TEXT
CLOSE = WSMsgType.CLOSE
rooms: dict[str, list[WSTransport]] = {}


class Conn(WSListener):
    __slots__ = ("members",)

    def __init__(self, room: str) -> None:
        super().__init__()
        self.members = rooms.setdefault(room, [])

    def on_ws_connected(self, transport: WSTransport) -> None:
        self.members.append(transport)

    def on_ws_frame(self, transport: WSTransport, frame) -> None:  # type: ignore[no-untyped-def]
        mt = frame.msg_type
        if mt is TEXT:
            payload = frame.get_payload_as_bytes()
            for t in self.members:
                if t is not transport:
                    t.send(TEXT, payload)
        elif mt is CLOSE:
            transport.send_close(frame.get_close_code())
            transport.disconnect()

    def on_ws_disconnected(self, transport: WSTransport) -> None:
        try:
            self.members.remove(transport)
        except ValueError:
            pass


def factory(request):  # type: ignore[no-untyped-def]
    _, _, query = request.path.partition(b"?")
    room = parse_qs(query.decode()).get("room", ["0"])[0]
    return Conn(room)


async def main(port: int) -> None:
    server = await ws_create_server(factory, "127.0.0.1", port, read_buffer_init_size=2048,
                                    use_aiofastnet=False, backlog=4096)
    print(f"picows loop listening on 127.0.0.1:{port}", flush=True)
    await server.serve_forever()


if __name__ == "__main__":
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    uvloop.run(main(int(sys.argv[1])))
