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

permessage-deflate (RFC 7692, docs/protocol.md "Compression"): negotiated in the upgrade
when the client offers it with parameters we can honour (``_negotiate_deflate``); always
with ``server_no_context_takeover; client_no_context_takeover``, so every message is
(de)compressed with a fresh context. A data message whose first frame has RSV1 set is
inflated after reassembly, bounded by ``max_message_size`` (1009 above it, 1007 if the
data is corrupt); RSV1 without the extension, on a continuation or a control frame, and
RSV2/RSV3 always, close with 1002. Outbound, the fan-out sends broadcasts above its
``DEFLATE_THRESHOLD`` compressed (once per broadcast) to such connections.
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

CLOSE_PROTOCOL_ERROR = 1002
CLOSE_INVALID_DATA = 1007

DEFLATE_RESPONSE = "permessage-deflate; server_no_context_takeover; client_no_context_takeover"
_NO_VALUE_PARAMS = frozenset(("server_no_context_takeover", "client_no_context_takeover"))


class WsConnection(speedups.FanoutListener):
    """picows listener of one client connection.

    ``send_text``, ``send_binary``, ``close``, ``pause_writing`` and ``resume_writing``
    come from the ``FanoutListener`` base, as do ``transport``, ``closing`` and ``shed``.
    """

    __slots__ = ("node", "conn", "last_rx", "_token", "_gzip", "_frag", "_frag_type", "_frag_rsv1")

    def __init__(
        self, node: Node, fanout: speedups.Fanout, token: str | None, gzip: bool, deflate: bool = False
    ) -> None:
        super().__init__(fanout)
        self.deflate = deflate  # FanoutListener field: permessage-deflate negotiated
        self.node = node
        self._token = token
        self._gzip = gzip
        self.conn: Conn | None = None
        self.last_rx = time.monotonic()
        self._frag: bytearray | None = None
        self._frag_type: Any = None
        self._frag_rsv1 = False

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
        if frame.rsv2 or frame.rsv3:
            self._frag = None
            self.close(CLOSE_PROTOCOL_ERROR, "RSV2/RSV3 set: no extension defines them")
            return
        rsv1 = frame.rsv1
        if mt is _TEXT and frame.fin and self._frag is None and not rsv1:
            self.node.on_text(self.conn, frame.get_payload_as_bytes())  # type: ignore[arg-type]
        elif mt is _TEXT or mt is _BINARY:
            if self._frag is not None:
                self.close(CLOSE_PROTOCOL_ERROR, "new data frame inside a fragmented message")
                return
            if rsv1 and not self.deflate:
                self.close(CLOSE_PROTOCOL_ERROR, "RSV1 set but permessage-deflate was not negotiated")
                return
            if frame.fin:
                if mt is _TEXT:  # RSV1 set: a compressed message in one frame
                    data = self._inflate(frame.get_payload_as_bytes())
                    if data is not None:
                        self.node.on_text(self.conn, data)  # type: ignore[arg-type]
                else:
                    self.node.on_binary(self.conn)  # type: ignore[arg-type]
                return
            self._frag = bytearray(frame.get_payload_as_memoryview())
            self._frag_type = mt
            self._frag_rsv1 = bool(rsv1)
        elif mt is _CONT:
            if self._frag is None:
                self.close(CLOSE_PROTOCOL_ERROR, "continuation frame without a message")
                return
            if rsv1:
                self._frag = None
                self.close(CLOSE_PROTOCOL_ERROR, "RSV1 set on a continuation frame")
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
                    if self._frag_rsv1:
                        data = self._inflate(data)
                        if data is None:
                            return
                    self.node.on_text(self.conn, data)  # type: ignore[arg-type]
                else:
                    self.node.on_binary(self.conn)  # type: ignore[arg-type]
        elif rsv1:  # a control frame (close, ping, pong) with RSV1
            self._frag = None
            self.close(CLOSE_PROTOCOL_ERROR, "RSV1 set on a control frame")
        elif mt is _CLOSE:
            self.flush()  # what is corked goes out before the close frame
            self.release()
            if frame.payload_size >= 2:
                transport.send_close(frame.get_close_code())  # echo the code (RFC 6455 5.5.1)
            else:
                # no code: answer with none (picows' send_close would put its NO_INFO,
                # 0, on the wire, which clients reject as a protocol error)
                transport.send(_CLOSE, b"")
            transport.disconnect()

    def _inflate(self, data: bytes) -> bytes | None:
        """One permessage-deflate message, inflated; None (and the connection closing)
        if it inflates beyond ``max_message_size`` (1009) or is not valid deflate (1007)."""
        try:
            return speedups.deflate_decompress_raw(data, self.node.cfg.max_message_size)
        except ValueError as exc:
            if "exceeds max_size" in str(exc):
                self.close(P.CLOSE_TOO_LARGE, "message too large")
            else:
                self.close(CLOSE_INVALID_DATA, "invalid compressed data")
            return None

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


def _acceptable_deflate_params(params: list[str]) -> bool:
    """Whether we can honour one permessage-deflate offer's parameters (RFC 7692 7.1).

    We always answer ``server_no_context_takeover; client_no_context_takeover`` and inflate
    with a 15-bit window: any ``client_max_window_bits`` (none, or 8..15: the client will
    not use a larger window than we can read) is fine; ``server_max_window_bits`` only as
    15 (we compress with a 15-bit window). Unknown, duplicate or malformed parameters
    decline the offer."""
    seen: set[str] = set()
    for param in params:
        name, eq, value = param.partition("=")
        name = name.strip().lower()
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] == '"':
            value = value[1:-1]
        if not name or name in seen:
            return False
        seen.add(name)
        if name in _NO_VALUE_PARAMS:
            if eq:
                return False
        elif name == "client_max_window_bits":
            if eq and not (value.isdigit() and len(value) <= 2 and 8 <= int(value) <= 15):
                return False
        elif name == "server_max_window_bits":
            if not (value.isdigit() and len(value) <= 2 and int(value) == 15):
                return False  # a smaller window than we compress with: cannot honour
        else:
            return False
    return True


def _negotiate_deflate(header_values: list[str]) -> bool:
    """Whether one of the ``Sec-WebSocket-Extensions`` offers is a permessage-deflate we
    can accept (offers are comma-separated, in preference order, over one or more header
    lines; parameters follow ``;``)."""
    for value in header_values:
        for offer in value.split(","):
            name, *params = offer.split(";")
            if name.strip().lower() == "permessage-deflate" and _acceptable_deflate_params(params):
                return True
    return False


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
            if node.cfg.enable_compression and _negotiate_deflate(
                request.headers.getall("Sec-WebSocket-Extensions", [])
            ):
                return WSUpgradeResponseWithListener(
                    WSUpgradeResponse.create_101_response(
                        extra_headers={"Sec-WebSocket-Extensions": DEFLATE_RESPONSE}
                    ),
                    WsConnection(node, fanout, token or None, gzip, deflate=True),
                )
            return WsConnection(node, fanout, token or None, gzip)
        resp = http(path, q)
        if resp is None:
            return WSUpgradeResponseWithListener(
                WSUpgradeResponse.create_error_response(404, b"not found\n"), None
            )
        return WSUpgradeResponseWithListener(resp, None)

    return factory
