"""picows adapter: one ``WsConnection`` listener per WebSocket, plus plain HTTP routes.

The listener owns nothing but transport state (send queue, fragments, last frame time);
everything else goes to the ``Node``. Slow-consumer policy (docs/protocol.md, "Slow
consumers"): while the transport's write buffer is above its high-water mark, frames are
held in a bounded queue (``message_queue_size`` frames, ``MAX_QUEUED_BYTES`` bytes);
ephemeral events (typing, presence, receipts) are dropped instead of queued; when the
queue overflows the connection is closed with 1013 and the client replays with
``since_seq``.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs

from picows import WSListener, WSMsgType, WSTransport, WSUpgradeRequest, WSUpgradeResponse, WSUpgradeResponseWithListener

from chathub.core import protocol as P
from chathub.core.hub import EPHEMERAL

if TYPE_CHECKING:
    from chathub.core.hub import Conn
    from chathub.server.node import Node

log = logging.getLogger("chathub.ws")

MAX_QUEUED_BYTES = 16 * 1024 * 1024
CLOSE_TIMEOUT = 2.0  # seconds to wait for the client's close frame

_TEXT = WSMsgType.TEXT
_BINARY = WSMsgType.BINARY
_CONT = WSMsgType.CONTINUATION
_CLOSE = WSMsgType.CLOSE


class WsConnection(WSListener):
    """picows listener of one client connection."""

    def __init__(self, node: Node, token: str | None, gzip: bool) -> None:
        super().__init__()
        self.node = node
        self._token = token
        self._gzip = gzip
        self.transport: WSTransport | None = None
        self.conn: Conn | None = None
        self.last_rx = time.monotonic()
        self._paused = False
        self._queue: collections.deque[tuple[Any, bytes]] | None = None
        self._queued_bytes = 0
        self._frag: bytearray | None = None
        self._frag_type: Any = None
        self.closing = False
        self.shed = 0

    # ------------------------------------------------------------ picows callbacks

    def on_ws_connected(self, transport: WSTransport) -> None:
        self.transport = transport
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
            self.closing = True
            transport.send_close(frame.get_close_code())
            transport.disconnect()

    def on_ws_disconnected(self, transport: WSTransport) -> None:
        self.closing = True
        self._queue = None
        if self.conn is not None:
            self.node.closed(self.conn)

    def pause_writing(self) -> None:
        self._paused = True
        if self._queue is None:
            self._queue = collections.deque()

    def resume_writing(self) -> None:
        self._paused = False
        q = self._queue
        t = self.transport
        while q and not self._paused and t is not None and not self.closing:
            mt, payload = q.popleft()
            self._queued_bytes -= len(payload)
            t.send(mt, payload)

    # ------------------------------------------------------------ ConnHandle

    def _send(self, mt: Any, payload: bytes, kind: int) -> None:
        if self.closing:
            return
        if not self._paused and not self._queue:
            self.transport.send(mt, payload)  # type: ignore[union-attr]
            return
        if kind == EPHEMERAL:
            self.shed += 1
            return
        q = self._queue
        assert q is not None
        if len(q) >= self.node.cfg.message_queue_size or self._queued_bytes + len(payload) > MAX_QUEUED_BYTES:
            self.close(P.CLOSE_TRY_AGAIN, "slow consumer: send queue overflowed; reconnect with since_seq",
                       abort=True)
            return
        q.append((mt, payload))
        self._queued_bytes += len(payload)

    def send_text(self, payload: bytes, kind: int) -> None:
        self._send(_TEXT, payload, kind)

    def send_binary(self, payload: bytes, kind: int) -> None:
        self._send(_BINARY, payload, kind)

    def close(self, code: int, reason: str, *, abort: bool = False) -> None:
        if self.closing or self.transport is None:
            return
        self.closing = True
        self._queue = None
        self._queued_bytes = 0
        t = self.transport
        try:
            t.send_close(code, reason.encode()[:120])
        finally:
            if abort:
                # a slow consumer cannot take a graceful close: its buffer would never drain
                t.disconnect(graceful=False)
            else:
                # wait for the client's close frame (closing at once could reset the
                # socket and make the client lose our close frame), but not for long
                asyncio.get_running_loop().call_later(CLOSE_TIMEOUT, t.disconnect)

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
    """The picows listener factory: ``/ws`` upgrades, everything else is plain HTTP."""

    def factory(request: WSUpgradeRequest) -> Any:
        path, q = _query(request)
        if path == b"/ws":
            token = q.get("token", [None])[0]
            gzip = q.get("compression", [""])[0] == "gzip"
            return WsConnection(node, token or None, gzip)
        resp = http(path, q)
        if resp is None:
            return WSUpgradeResponseWithListener(
                WSUpgradeResponse.create_error_response(404, b"not found\n"), None
            )
        return WSUpgradeResponseWithListener(resp, None)

    return factory
