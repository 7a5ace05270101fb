"""protocol.md "Compression": permessage-deflate (RFC 7692) negotiated in the handshake, and
the ``?compression=gzip`` mode (binary gzip frames).

The ``websockets`` client offers permessage-deflate by default (``compression="deflate"``),
inflates what it receives and compresses what it sends; the raw-socket client below writes
and reads frames by hand to check the bits on the wire (RSV1) and the protocol errors.
"""

from __future__ import annotations

import asyncio
import gzip
import json
import os
import struct
import zlib
from typing import Any

from tests.helpers.client import STEP, Client, run

DEFLATE_RESPONSE = "permessage-deflate; server_no_context_takeover; client_no_context_takeover"


def raw_deflate(data: bytes) -> bytes:
    c = zlib.compressobj(6, zlib.DEFLATED, -15)
    out = c.compress(data) + c.flush(zlib.Z_SYNC_FLUSH)
    assert out.endswith(b"\x00\x00\xff\xff")
    return out[:-4]


def raw_inflate(data: bytes) -> bytes:
    return zlib.decompressobj(-15).decompress(data + b"\x00\x00\xff\xff")


class RawWs:
    """A hand-written WebSocket client over a plain TCP connection."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, headers: str) -> None:
        self.r, self.w, self.headers = reader, writer, headers

    @classmethod
    async def connect(cls, server: Any, user: int, extensions: str | None = None, query: str = "") -> "RawWs":
        r, w = await asyncio.open_connection("127.0.0.1", server.port)
        ext = f"Sec-WebSocket-Extensions: {extensions}\r\n" if extensions is not None else ""
        w.write(
            f"GET /ws?token={server.token(user)}{query} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
            f"Sec-WebSocket-Version: 13\r\n{ext}\r\n".encode()
        )
        head = (await asyncio.wait_for(r.readuntil(b"\r\n\r\n"), STEP)).decode()
        assert head.startswith("HTTP/1.1 101"), head
        return cls(r, w, head)

    def extension_header(self) -> str | None:
        for line in self.headers.split("\r\n")[1:]:
            name, _, value = line.partition(":")
            if name.strip().lower() == "sec-websocket-extensions":
                return value.strip()
        return None

    def send_frame(self, first_byte: int, payload: bytes) -> None:
        mask = os.urandom(4)
        n = len(payload)
        if n <= 125:
            head = bytes((first_byte, 0x80 | n))
        elif n <= 0xFFFF:
            head = struct.pack("!BBH", first_byte, 0x80 | 126, n)
        else:
            head = struct.pack("!BBQ", first_byte, 0x80 | 127, n)
        self.w.write(head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload)))

    async def read_frame(self, timeout: float = STEP) -> tuple[int, bytes]:
        """(first byte, payload) of the next frame from the server (unmasked)."""
        b0, b1 = await asyncio.wait_for(self.r.readexactly(2), timeout)
        n = b1 & 0x7F
        if n == 126:
            (n,) = struct.unpack("!H", await self.r.readexactly(2))
        elif n == 127:
            (n,) = struct.unpack("!Q", await self.r.readexactly(8))
        return b0, await asyncio.wait_for(self.r.readexactly(n), timeout)

    async def read_json(self) -> tuple[int, dict[str, Any]]:
        """Next data frame, inflated if RSV1 is set: (first byte, JSON)."""
        while True:
            b0, payload = await self.read_frame()
            if b0 & 0x0F in (0x1, 0x2):
                return b0, json.loads(raw_inflate(payload) if b0 & 0x40 else payload)

    async def closed_with(self) -> int | None:
        """Read until the server's close frame; return its code."""
        while True:
            try:
                b0, payload = await self.read_frame()
            except (asyncio.IncompleteReadError, ConnectionResetError):
                return None
            if b0 & 0x0F == 0x8:
                return struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else None

    async def cmd(self, op: str, cid: int, **fields: Any) -> dict[str, Any]:
        self.send_frame(0x81, json.dumps({"op": op, "id": cid, **fields}).encode())
        while True:
            _, msg = await self.read_json()
            if msg.get("id") == cid and "ev" not in msg:
                return msg

    def close(self) -> None:
        self.w.close()


async def assert_alive(server: Any) -> None:
    c = await Client.connect(server.url(99))
    assert (await c.cmd("ping"))["ok"]


def big_text(n: int = 3000) -> str:
    return "".join(f"word{i % 97} " for i in range(n // 7))[:n]


# ---------------------------------------------------------------- negotiation


def test_websockets_client_negotiates_permessage_deflate(server):
    async def go():
        c = await Client.connect(server.url(1))
        assert c.ws.response.headers["Sec-WebSocket-Extensions"] == DEFLATE_RESPONSE
        assert [e.name for e in c.ws.protocol.extensions] == ["permessage-deflate"]
        plain = await Client.connect(server.url(2), compression=None)
        assert "Sec-WebSocket-Extensions" not in plain.ws.response.headers

    run(go())


def test_offers_are_parsed_and_unacceptable_ones_declined(server):
    cases = {
        "permessage-deflate": True,
        "permessage-deflate; client_max_window_bits": True,
        "permessage-deflate; client_max_window_bits=10; server_no_context_takeover": True,
        'permessage-deflate; client_max_window_bits="15"': True,
        "permessage-deflate; server_max_window_bits=15; client_no_context_takeover": True,
        "permessage-deflate; server_max_window_bits=10": False,  # smaller window than we use
        "permessage-deflate; server_max_window_bits=10, permessage-deflate": True,  # the fallback
        "x-webkit-deflate-frame, permessage-deflate; client_max_window_bits": True,
        "permessage-deflate; unknown_param": False,
        "permessage-deflate; client_max_window_bits=7": False,
        "permessage-deflate; server_no_context_takeover=1": False,
        "permessage-deflate; server_no_context_takeover; server_no_context_takeover": False,
        "x-webkit-deflate-frame": False,
        "": False,
    }

    async def go():
        for offer, accepted in cases.items():
            ws = await RawWs.connect(server, 1, offer)
            assert ws.extension_header() == (DEFLATE_RESPONSE if accepted else None), offer
            ws.close()

    run(go())


def test_disabled_compression_is_not_negotiated(server_factory):
    srv = server_factory(extra_env={"CHATHUB_ENABLE_COMPRESSION": "false"})

    async def go():
        c = await Client.connect(srv.url(1))
        assert "Sec-WebSocket-Extensions" not in c.ws.response.headers
        assert c.ws.protocol.extensions == []
        a = await Client.connect(srv.url(2))
        for x in (a, c):
            await x.cmd("join", room="t-off")
        text = big_text()
        await a.cmd("send", room="t-off", text=text)
        assert (await c.next_event("message"))["text"] == text

    run(go())


# ---------------------------------------------------------------- outbound


def test_large_messages_arrive_compressed_and_intact(server):
    async def go():
        a = await Client.connect(server.url(1))
        b = await Client.connect(server.url(2))
        plain = await Client.connect(server.url(3), compression=None)
        raw = await RawWs.connect(server, 4, "permessage-deflate; client_max_window_bits")
        assert raw.extension_header() == DEFLATE_RESPONSE
        for c in (a, b, plain):
            await c.cmd("join", room="t-deflate")
        assert (await raw.cmd("join", 1, room="t-deflate"))["ok"]
        for n in (3000, 70000):
            text = big_text(n)
            r = await a.cmd("send", room="t-deflate", text=text[: 64 * 1024])
            assert r["ok"]
            for c in (b, plain):
                assert (await c.next_event("message"))["text"] == text[: 64 * 1024]
            while True:
                b0, payload = await raw.read_frame()
                if b0 & 0x0F == 0x1:
                    msg = json.loads(raw_inflate(payload) if b0 & 0x40 else payload)
                    if msg.get("ev") == "message":
                        break
            assert b0 == 0xC1  # FIN, RSV1, text: compressed
            assert len(payload) < n // 2
            assert msg["text"] == text[: 64 * 1024]
        # a small one goes uncompressed (RSV1 clear), which RFC 7692 allows
        await a.cmd("send", room="t-deflate", text="hi")
        while True:
            b0, payload = await raw.read_frame()
            if b0 & 0x0F == 0x1 and json.loads(payload).get("ev") == "message":
                break
        assert b0 == 0x81 and json.loads(payload)["text"] == "hi"
        raw.close()

    run(go())


# ---------------------------------------------------------------- inbound


def test_compressed_client_frames_are_understood(server):
    async def go():
        a = await Client.connect(server.url(1))  # websockets compresses what it sends
        b = await Client.connect(server.url(2), compression=None)
        for c in (a, b):
            await c.cmd("join", room="t-in")
        text = big_text(20000)
        assert (await a.cmd("send", room="t-in", text=text))["ok"]
        assert (await b.next_event("message"))["text"] == text
        # fragmented compressed message, written by hand: RSV1 on the first frame only
        raw = await RawWs.connect(server, 3, "permessage-deflate")
        assert (await raw.cmd("join", 1, room="t-in"))["ok"]
        body = raw_deflate(json.dumps({"op": "send", "id": 2, "room": "t-in", "text": text}).encode())
        third = len(body) // 3
        raw.send_frame(0x41, body[:third])  # text, RSV1, not FIN
        raw.send_frame(0x00, body[third : 2 * third])
        raw.send_frame(0x80, body[2 * third :])  # continuation, FIN
        while True:
            _, msg = await raw.read_json()
            if msg.get("id") == 2:
                break
        assert msg["ok"], msg
        assert (await b.next_event("message"))["text"] == text
        # a compressed frame and a plain one, mixed
        raw.send_frame(0xC1, raw_deflate(b'{"op":"ping","id":3}'))
        raw.send_frame(0x81, b'{"op":"ping","id":4}')
        ids = []
        while len(ids) < 2:
            _, msg = await raw.read_json()
            if "id" in msg:
                assert msg["ok"]
                ids.append(msg["id"])
        assert ids == [3, 4]
        raw.close()

    run(go())


def test_decompression_bomb_closes_1009(server_factory):
    srv = server_factory(extra_env={"CHATHUB_MAX_MESSAGE_SIZE": "4096"})

    async def go():
        bomb = json.dumps({"op": "ping", "id": 1, "pad": "x" * 1_000_000}).encode()
        # through websockets: it compresses the ~1 MB message into a small frame
        c = await Client.connect(srv.url(1))
        await c.send_raw(bomb.decode())
        assert await c.closed_with() == 1009
        # by hand, to be sure the frame on the wire is small
        raw = await RawWs.connect(srv, 2, "permessage-deflate")
        small = raw_deflate(bomb)
        assert len(small) < 4096
        raw.send_frame(0xC1, small)
        assert await raw.closed_with() == 1009
        raw.close()
        # just under the limit is fine
        ok = await Client.connect(srv.url(3))
        assert (await ok.cmd("ping", pad="y" * 3000))["ok"]
        await assert_alive(srv)

    run(go())


def test_corrupt_compressed_data_closes_1007(server):
    async def go():
        raw = await RawWs.connect(server, 1, "permessage-deflate")
        raw.send_frame(0xC1, b"\xff\xff\xff\xff not deflate")
        assert await raw.closed_with() == 1007
        raw.close()
        await assert_alive(server)

    run(go())


def test_rsv1_without_negotiation_closes_1002(server):
    async def go():
        # the websockets client without compression, then a hand-written RSV1 frame on its socket
        c = await Client.connect(server.url(1), compression=None)
        assert "Sec-WebSocket-Extensions" not in c.ws.response.headers
        payload = raw_deflate(b'{"op":"ping","id":1}')
        mask = b"\x01\x02\x03\x04"
        c.ws.transport.write(bytes([0xC1, 0x80 | len(payload)]) + mask
                             + bytes(b ^ mask[i % 4] for i, b in enumerate(payload)))
        assert await c.closed_with() == 1002
        # the same over a raw socket that offered nothing
        raw = await RawWs.connect(server, 2)
        assert raw.extension_header() is None
        raw.send_frame(0xC1, payload)
        assert await raw.closed_with() == 1002
        raw.close()
        await assert_alive(server)

    run(go())


def test_misplaced_reserved_bits_close_1002(server):
    async def go():
        cases = [
            # RSV1 on a continuation frame
            [(0x01, b'{"op":"pi'), (0xC0, b'ng","id":1}')],
            # RSV1 on a control frame (pong, close). PINGs are answered by picows itself
            # (auto-pong) before the listener sees them, so an RSV1 ping is not caught.
            [(0xCA, b"x")],
            [(0xC8, struct.pack("!H", 1000))],
            # RSV2, RSV3 (no extension defines them)
            [(0xA1, b'{"op":"ping","id":1}')],
            [(0x91, b'{"op":"ping","id":1}')],
        ]
        for frames in cases:
            raw = await RawWs.connect(server, 1, "permessage-deflate")
            for b0, payload in frames:
                raw.send_frame(b0, payload)
            assert await raw.closed_with() == 1002, frames
            raw.close()
        await assert_alive(server)

    run(go())


# ---------------------------------------------------------------- gzip mode


def test_gzip_mode_sends_binary_gzip_frames(server):
    async def go():
        a = await Client.connect(server.url(1))
        # gzip takes precedence over the negotiated deflate for this connection
        g = await Client.connect(server.url(2, compression="gzip"))
        assert g.ws.response.headers["Sec-WebSocket-Extensions"] == DEFLATE_RESPONSE
        g_plain = await Client.connect(server.url(3, compression="gzip"), compression=None)
        for c in (a, g, g_plain):
            await c.cmd("join", room="t-gzip")
        text = big_text(5000)
        await a.cmd("send", room="t-gzip", text=text)
        for c in (g, g_plain):
            while True:
                raw = await asyncio.wait_for(c.ws.recv(), STEP)
                if isinstance(raw, bytes):
                    break
                assert len(raw) <= 1024, "a big message arrived as text"
            msg = json.loads(gzip.decompress(raw))
            assert msg["ev"] == "message" and msg["text"] == text
        # small ones stay text
        await a.cmd("send", room="t-gzip", text="small")
        for c in (g, g_plain):
            assert (await c.next_event("message"))["text"] == "small"

    run(go())

