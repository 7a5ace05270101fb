"""picows adapter: one ``WsConnection`` listener per WebSocket, plus plain HTTP routes.

The listener owns nothing but transport state; everything else goes to the ``Node``. Its
receive side (frames in, fragments, last frame time) is here; its send side is the
``FanoutListener`` base (``chathub._fastpath._fanout``, compiled, or its pure-Python twin,
through ``chathub.speedups``): every frame to a client (broadcasts, replies, errors) is
corked and written once per connection at the end of the loop iteration, and the close
frame after it. Slow-consumer policy (docs/protocol.md, "Slow consumers"): while the
transport's write buffer is above its high-water mark, frames are held in a bounded queue
(``message_queue_size`` frames, ``MAX_QUEUED_BYTES`` bytes); ephemeral events (typing,
presence, receipts) are dropped instead of queued; when the queue overflows the connection
is closed with 1013 and the client replays with ``since_seq``.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs

from picows import WSMsgType, WSTransport, WSUpgradeRequest, WSUpgradeResponse, WSUpgradeResponseWithListener

from chathub import speedups
from chathub.core import protocol as P

if TYPE_CHECKING:
    from chathub.core.hub import Conn
    from chathub.server.node import Node

MAX_QUEUED_BYTES = 16 * 1024 * 1024
CLOSE_TIMEOUT = 2.0  # seconds to wait for the client's close frame

_TEXT = WSMsgType.TEXT
_BINARY = WSMsgType.BINARY
_CONT = WSMsgType.CONTINUATION
_CLOSE = WSMsgType.CLOSE


class WsConnection(speedups.FanoutListener):
    """picows listener of one client connection.

    ``send_text``, ``send_binary``, ``close``, ``pause_writing`` and ``resume_writing``
    come from the ``FanoutListener`` base, as do ``transport``, ``closing`` and ``shed``.
    """

    __slots__ = ("node", "conn", "last_rx", "_token", "_gzip", "_frag", "_frag_type")

    def __init__(self, node: Node, fanout: speedups.Fanout, token: str | None, gzip: bool) -> None:
        super().__init__(fanout)
        self.node = node
        self._token = token
        self._gzip = gzip
        self.conn: Conn | None = None
        self.last_rx = time.monotonic()
        self._frag: bytearray | None = None
        self._frag_type: Any = None

    # ------------------------------------------------------------ picows callbacks

    def on_ws_connected(self, transport: WSTransport) -> None:
        self.attach(transport)
        self.conn = self.node.open(self, token=self._token, gzip=self._gzip)
        self._token = None

    def on_ws_frame(self, transport: WSTransport, frame: Any) -> None:
        self.last_rx = self.node.clock()
        mt = frame.msg_type
        if self.closing:
            if mt is _CLOSE:  # the client answered our close: the handshake is done
                transport.disconnect()
            return
        if mt is _TEXT and frame.fin and self._frag is None:
            self.node.on_text(self.conn, frame.get_payload_as_bytes())  # type: ignore[arg-type]
        elif mt is _TEXT or mt is _BINARY:
            if self._frag is not None:
                self.close(1002, "new data frame inside a fragmented message")
                return
            if frame.fin:
                self.node.on_binary(self.conn)  # type: ignore[arg-type]
                return
            self._frag = bytearray(frame.get_payload_as_memoryview())
            self._frag_type = mt
        elif mt is _CONT:
            if self._frag is None:
                self.close(1002, "continuation frame without a message")
                return
            if len(self._frag) + frame.payload_size > self.node.cfg.max_message_size:
                self._frag = None
                self.close(P.CLOSE_TOO_LARGE, "message too large")
                return
            self._frag += frame.get_payload_as_memoryview()
            if frame.fin:
                data, typ = bytes(self._frag), self._frag_type
                self._frag = None
                if typ is _TEXT:
                    self.node.on_text(self.conn, data)  # type: ignore[arg-type]
                else:
                    self.node.on_binary(self.conn)  # type: ignore[arg-type]
        elif mt is _CLOSE:
            self.flush()  # what is corked goes out before the close frame
            self.release()
            transport.send_close(frame.get_close_code())
            transport.disconnect()

    def on_ws_disconnected(self, transport: WSTransport) -> None:
        self.release()
        if self.conn is not None:
            self.node.closed(self.conn)

    # ------------------------------------------------------------ ConnHandle (the rest)

    def ping(self) -> None:
        if not self.closing and self.transport is not None:
            self.transport.send_ping()

    def pause_reading(self) -> None:
        if self.transport is not None:
            self.transport.underlying_transport.pause_reading()

    def resume_reading(self) -> None:
        if self.transport is not None and not self.closing:
            self.transport.underlying_transport.resume_reading()


# ---------------------------------------------------------------- HTTP routes


def _query(request: WSUpgradeRequest) -> tuple[bytes, dict[str, list[str]]]:
    path, _, query = request.path.partition(b"?")
    try:
        q = parse_qs(query.decode("utf-8", "strict"), max_num_fields=20)
    except (UnicodeDecodeError, ValueError):
        q = {}
    return path, q


def make_listener_factory(node: Node, http: Any) -> Any:
    """The picows listener factory: ``/ws`` upgrades, everything else is plain HTTP.

    Every connection of the factory shares one ``Fanout`` (the end-of-iteration flush and
    the slow-consumer limits)."""
    fanout = speedups.Fanout(node.cfg.message_queue_size, MAX_QUEUED_BYTES, close_timeout=CLOSE_TIMEOUT)

    def factory(request: WSUpgradeRequest) -> Any:
        path, q = _query(request)
        if path == b"/ws":
            token = q.get("token", [None])[0]
            gzip = q.get("compression", [""])[0] == "gzip"
            return WsConnection(node, fanout, token or None, gzip)
        resp = http(path, q)
        if resp is None:
            return WSUpgradeResponseWithListener(
                WSUpgradeResponse.create_error_response(404, b"not found\n"), None
            )
        return WSUpgradeResponseWithListener(resp, None)

    return factory
