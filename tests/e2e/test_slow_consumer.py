"""protocol.md "Slow consumers": a connection that stops reading is cut with 1013 while
the others get everything, and the server's memory stays bounded.

The slow connection is a raw socket (hand-made HTTP upgrade, one masked text frame to
join, then no reads at all) with a tiny receive buffer, so the kernel buffers fill fast
and the server has to hold (and then give up on) what it cannot write.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import socket
import struct
import time
import urllib.request
from typing import Any, Callable

from tests.helpers.client import STEP, Client, run
from tests.helpers.server import TIMEOUT_SCALE, ServerProcess

N_MESSAGES = 20_000
TEXT_SIZE = 2048  # characters of each message text (ASCII): the frame is ~2.2 KB
QUEUE_SIZE = 1000  # CHATHUB_MESSAGE_QUEUE_SIZE (the default, spelled out)
N_MEMBERS = 3  # normal `websockets` members besides the two senders
WINDOW = 400  # sends a sender keeps in flight (pipelined, not waiting for each reply)
# The senders stay at most this many messages ahead of the slowest normal member, so that
# a busy test process never makes a normal member a slow consumer too (the server would
# queue for it, and cut it at QUEUE_SIZE): the flood stays as fast as the members read.
MAX_LAG = 600

# Memory budget of the flood, in the server process. Holding every frame for the slow
# connection would cost N_MESSAGES * ~2.2 KB ≈ 44 MB (before any per-object overhead), and
# even a byte cap of 16 MiB alone (the ws.py MAX_QUEUED_BYTES) would show as ≥ 16 MB; the
# policy's queue holds at most QUEUE_SIZE frames ≈ 2.2 MB. Everything else the flood
# allocates (SQLite page cache, transport buffers of the fast members, allocator slack)
# measured 2.5-8 MB, also with three runs at once on 2 cores (with an unbounded frame
# queue, i.e. only the 16 MiB byte cap, it measured 20 MB). 14 MB separates "bounded" from "buffers what it cannot send" with room
# on both sides.
MAX_RSS_GROWTH = 14 * 1024 * 1024


# ---------------------------------------------------------------- raw WebSocket client


def masked_text_frame(payload: bytes) -> bytes:
    """One client-to-server text frame (FIN, masked), payload < 64 KiB."""
    mask = os.urandom(4)
    n = len(payload)
    head = bytes([0x81, 0x80 | n]) if n < 126 else bytes([0x81, 0x80 | 126]) + struct.pack("!H", n)
    body = bytes(b ^ mask[i & 3] for i, b in enumerate(payload))
    return head + mask + body


def raw_connect(srv: ServerProcess, user_id: int, rcvbuf: int = 4096) -> socket.socket:
    """Upgrade a plain socket with a small receive buffer; return it right after the 101
    response head (read byte by byte, so every frame byte stays unread in the socket)."""
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)  # before connect: sets the window
    s.settimeout(STEP)
    s.connect(("127.0.0.1", srv.port))
    key = base64.b64encode(os.urandom(16)).decode()
    s.sendall(
        (
            f"GET /ws?token={srv.token(user_id)} HTTP/1.1\r\n"
            f"Host: 127.0.0.1:{srv.port}\r\n"
            "Upgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
        ).encode()
    )
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = s.recv(1)  # byte by byte: leave every frame byte in the socket
        assert chunk, "server closed during the upgrade"
        head += chunk
    assert head.startswith(b"HTTP/1.1 101"), head
    return s


class FrameReader:
    """Parse server frames (unmasked) from a raw socket, blocking, with a deadline."""

    def __init__(self, s: socket.socket) -> None:
        self.s = s
        self.buf = bytearray()
        self.eof: str | None = None  # "eof" or "reset" once the server is gone
        self.nbytes = 0

    def _fill(self, n: int, deadline: float) -> bool:
        while len(self.buf) < n:
            if self.eof is not None:
                return False
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"no data from the server for a while ({len(self.buf)} bytes buffered)")
            self.s.settimeout(min(left, 1.0))
            try:
                chunk = self.s.recv(1 << 16)
            except socket.timeout:
                continue
            except ConnectionResetError:
                self.eof = "reset"
                return False
            if not chunk:
                self.eof = "eof"
                return False
            self.nbytes += len(chunk)
            self.buf += chunk
        return True

    def frame(self, deadline: float) -> tuple[int, bytes] | None:
        """The next (opcode, payload), or None at EOF / reset."""
        if not self._fill(2, deadline):
            return None
        b0, b1 = self.buf[0], self.buf[1]
        assert not b1 & 0x80, "server frames are not masked"
        n, off = b1 & 0x7F, 2
        if n == 126:
            if not self._fill(4, deadline):
                return None
            n, off = struct.unpack_from("!H", self.buf, 2)[0], 4
        elif n == 127:
            if not self._fill(10, deadline):
                return None
            n, off = struct.unpack_from("!Q", self.buf, 2)[0], 10
        if not self._fill(off + n, deadline):
            return None
        payload = bytes(self.buf[off:off + n])
        del self.buf[:off + n]
        assert b0 & 0x80, "the server does not fragment"
        return b0 & 0x0F, payload


def drain_events(reader: FrameReader, timeout: float, *, until_messages: int | None = None):
    """Read every frame until EOF/reset (or until ``until_messages`` message events):
    return (events, close code or None)."""
    deadline = time.monotonic() + timeout
    events: list[dict[str, Any]] = []
    nmsg = 0
    close_code = None
    while True:
        f = reader.frame(deadline)
        if f is None:
            break
        op, payload = f
        if op == 0x1:
            try:
                ev = json.loads(payload)
            except ValueError:
                raise AssertionError(
                    f"corrupt text frame after {len(events)} events "
                    f"(last {events[-1] if events else None!r:.200}): {len(payload)} bytes "
                    f"{payload[:120]!r}...{payload[-60:]!r}") from None
            events.append(ev)
            if ev.get("ev") == "message":
                nmsg += 1
                if until_messages is not None and nmsg >= until_messages:
                    break
        elif op == 0x8:
            close_code = struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else None
        else:  # a ping: this client does not answer
            assert op == 0x9, f"unexpected frame opcode {op:#x} after {len(events)} events: {payload[:80]!r}"
    return events, close_code


# ---------------------------------------------------------------- helpers


def rss_bytes(pid: int, field: str = "VmRSS") -> int:
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise AssertionError(f"no {field} for pid {pid}")


def healthz(srv: ServerProcess) -> dict[str, Any]:
    with urllib.request.urlopen(srv.http_url + "/healthz", timeout=STEP) as r:
        return json.loads(r.read())


async def wait_connections(srv: ServerProcess, n: int, timeout: float = STEP) -> None:
    deadline = time.monotonic() + timeout
    while True:
        got = (await asyncio.to_thread(healthz, srv))["connections"]
        if got == n:
            return
        assert time.monotonic() < deadline, f"server counts {got} connections, expected {n}"
        await asyncio.sleep(0.05)


async def wait_joined(observer: Client, user_id: int, room: str) -> None:
    """The raw connection cannot read its join reply: watch another member instead."""
    while True:
        ev = await observer.next_event("joined")
        if ev["user_id"] == user_id and ev["room"] == room:
            return


class Flow:
    """Keeps the senders at most MAX_LAG messages ahead of the slowest member."""

    def __init__(self, n_members: int) -> None:
        self.sent = 0
        self.progress = [0] * n_members
        self._moved = asyncio.Event()

    async def admit(self) -> None:
        while self.sent - min(self.progress) >= MAX_LAG:
            self._moved.clear()
            await asyncio.wait_for(self._moved.wait(), STEP)
        self.sent += 1

    def advance(self, member: int) -> None:
        self.progress[member] += 1
        self._moved.set()


class Sender:
    """A member that pipelines ``send``s (up to WINDOW in flight) and records replies and
    the messages it receives, from one reader task."""

    def __init__(self, client: Client, room: str, tag: str) -> None:
        self.c = client
        self.room = room
        self.tag = tag
        self.acks: dict[int, dict[str, Any]] = {}  # command id -> reply
        self.received: list[int] = []  # seqs of message events
        self._free = asyncio.Semaphore(WINDOW)
        self._next = 0

    async def read_loop(self, expect_acks: int, expect_msgs: int) -> None:
        while len(self.acks) < expect_acks or len(self.received) < expect_msgs:
            m = json.loads(await asyncio.wait_for(self.c.ws.recv(), STEP))
            if "ev" not in m:
                assert m.get("ok") is True, m
                self.acks[m["id"]] = m
                self._free.release()
            elif m["ev"] == "message" and m["room"] == self.room:
                self.received.append(m["seq"])

    async def send_many(self, n: int, text: str | Callable[[int], str], flow: Flow | None = None) -> None:
        for _ in range(n):
            await asyncio.wait_for(self._free.acquire(), STEP)
            if flow is not None:
                await flow.admit()
            self._next += 1
            i = self._next
            t = text(i) if callable(text) else text
            await self.c.ws.send(json.dumps(
                {"op": "send", "room": self.room, "text": t, "client_msg_id": f"{self.tag}-{i}", "id": i}))


async def consume(c: Client, room: str, n: int, flow: Flow | None = None, me: int = 0) -> list[dict[str, Any]]:
    """Collect ``n`` message events of ``room`` (seq and client_msg_id only)."""
    out: list[dict[str, Any]] = []
    while len(out) < n:
        m = json.loads(await asyncio.wait_for(c.ws.recv(), STEP))
        if m.get("ev") == "message" and m["room"] == room:
            out.append({"seq": m["seq"], "cid": m.get("client_msg_id"), "len": len(m["text"])})
            if flow is not None:
                flow.advance(me)
    return out


async def connect(srv: ServerProcess, user_id: int) -> Client:
    # max_queue=None: the websockets client reads its socket eagerly, so the *test*
    # being busy never makes a normal member look like a slow consumer to the server
    return await Client.connect(srv.url(user_id), max_queue=None)


# ---------------------------------------------------------------- tests


def test_slow_consumer_is_cut_and_others_get_everything(server_factory):
    # SQLite's page cache at 2 MiB (its own default): the flood stores 40 MB of
    # messages, and the hub's default 16 MiB cache would fill up and hide the difference
    # this test is about (a bounded queue vs one held back only by the byte cap)
    srv = server_factory(extra_env={"CHATHUB_MESSAGE_QUEUE_SIZE": str(QUEUE_SIZE), "CHATHUB_SQLITE_CACHE_KIB": "2048"})
    pid = srv.proc.pid
    room, warm = "flood", "warmup"
    text = "x" * TEXT_SIZE
    slow_user = 999
    t_start = time.monotonic()

    async def go() -> dict[str, Any]:
        members = [await connect(srv, 100 + i) for i in range(N_MEMBERS)]
        senders = [Sender(await connect(srv, 200 + i), room, f"s{i}") for i in range(2)]
        everyone = members + [s.c for s in senders]
        for c in everyone:
            assert (await c.cmd("join", room=room))["ok"]
            assert (await c.cmd("join", room=warm))["ok"]

        # warm-up in another room: the first thousand messages allocate the steady-state
        # structures (SQLite cache, buffers, interned objects) before the baseline
        n_warm = 1000
        consumers = [asyncio.create_task(consume(c, warm, n_warm)) for c in members]
        w = Sender(senders[0].c, warm, "w")
        wr = asyncio.create_task(w.read_loop(n_warm, 0))
        await w.send_many(n_warm, text)
        await asyncio.wait_for(wr, 30 * TIMEOUT_SCALE)
        for t in consumers:
            assert len(await asyncio.wait_for(t, 30 * TIMEOUT_SCALE)) == n_warm
        await asyncio.sleep(0.3)
        for c in everyone:
            c.events.clear()
        # the other sender got the warm-up messages too: read them away
        while True:
            try:
                await asyncio.wait_for(senders[1].c.ws.recv(), 0.2)
            except asyncio.TimeoutError:
                break

        # the slow connection: join, then never read again
        raw = await asyncio.to_thread(raw_connect, srv, slow_user)
        try:
            raw.sendall(masked_text_frame(json.dumps({"op": "join", "room": room}).encode()))
            for c in members:
                await wait_joined(c, slow_user, room)
            await wait_connections(srv, len(everyone) + 1)
            base_rss = rss_bytes(pid)

            peak = base_rss
            flood_done = asyncio.Event()

            async def sample() -> None:
                nonlocal peak
                while not flood_done.is_set():
                    peak = max(peak, rss_bytes(pid))
                    await asyncio.sleep(0.02)

            sampler = asyncio.create_task(sample())
            t0 = time.monotonic()
            per = N_MESSAGES // len(senders)
            flow = Flow(len(members))
            consumers = [asyncio.create_task(consume(c, room, N_MESSAGES, flow, i)) for i, c in enumerate(members)]
            readers = [asyncio.create_task(s.read_loop(per, N_MESSAGES - per)) for s in senders]
            await asyncio.wait_for(
                asyncio.gather(*(s.send_many(per, text, flow) for s in senders)), 60 * TIMEOUT_SCALE)
            await asyncio.wait_for(asyncio.gather(*readers), 30 * TIMEOUT_SCALE)
            received = await asyncio.wait_for(asyncio.gather(*consumers), 30 * TIMEOUT_SCALE)
            flood_s = time.monotonic() - t0
            flood_done.set()
            await sampler
            peak = max(peak, rss_bytes(pid))
            after_rss = rss_bytes(pid)

            # the slow connection is gone from the server (it was aborted, not waited for)
            await wait_connections(srv, len(everyone))

            # the replies: every send was stored once, seqs 1..N with no gap
            seq_of: dict[str, int] = {}
            for s in senders:
                assert len(s.acks) == per
                for i, a in s.acks.items():
                    assert a["room"] == room and not a.get("duplicate")
                    seq_of[f"{s.tag}-{i}"] = a["seq"]
            assert sorted(seq_of.values()) == list(range(1, N_MESSAGES + 1))

            # every normal member got all of them, exactly once, in seq order, intact
            for got in received:
                assert [m["seq"] for m in got] == list(range(1, N_MESSAGES + 1))
                assert all(seq_of[m["cid"]] == m["seq"] for m in got)
                assert all(m["len"] == TEXT_SIZE for m in got)
            # each sender got the other's messages (not its own), in order
            for s in senders:
                mine = {a["seq"] for a in s.acks.values()}
                assert s.received == [q for q in range(1, N_MESSAGES + 1) if q not in mine]

            # now read what reached the slow connection: a gap-free prefix of the room,
            # then EOF or reset (the close frame itself may be lost with the abort)
            reader = FrameReader(raw)
            events, close_code = await asyncio.to_thread(drain_events, reader, 20 * TIMEOUT_SCALE)
            assert reader.eof is not None, "the server never closed the slow connection"
            seqs = [e["seq"] for e in events if e.get("ev") == "message"]
            assert seqs == list(range(1, len(seqs) + 1)), (
                f"the slow connection got seqs {seqs[:5]}…{seqs[-3:]} ({len(seqs)}), "
                f"first events {[{k: e.get(k) for k in ('ev', 'seq', 'user_id')} for e in events[:4]]}")
            assert len(seqs) < N_MESSAGES
            assert close_code in (None, 1013), close_code
            return {
                "base": base_rss, "peak": peak, "after": after_rss, "flood_s": flood_s,
                "slow_got": len(seqs), "slow_bytes": reader.nbytes, "close": close_code, "end": reader.eof,
            }
        finally:
            raw.close()

    r = run(go(), timeout=110)
    growth = r["peak"] - r["base"]
    print(
        f"\nflood of {N_MESSAGES} x {TEXT_SIZE} B in {r['flood_s']:.1f}s; server RSS "
        f"{r['base'] / 2**20:.1f} MB -> peak {r['peak'] / 2**20:.1f} MB, after {r['after'] / 2**20:.1f} MB "
        f"(growth {growth / 2**20:.1f} MB); slow connection got {r['slow_got']} messages "
        f"({r['slow_bytes']} bytes), then {r['end']}, close frame {r['close']}; "
        f"total {time.monotonic() - t_start:.1f}s"
    )
    assert growth < MAX_RSS_GROWTH, f"server RSS grew by {growth / 2**20:.1f} MB during the flood"
    out = srv.output()
    assert "Traceback" not in out, out
    assert srv.stop() == 0, srv.output()


def _tcp_wmem_max() -> int:
    try:
        with open("/proc/sys/net/ipv4/tcp_wmem") as fh:
            return int(fh.read().split()[2])
    except (OSError, ValueError, IndexError):
        return 4 * 1024 * 1024


def test_ephemeral_events_are_shed_while_behind_messages_are_kept(server_factory):
    """While a connection is behind (frames wait in its queue), typing, joined/left and
    receipt events to it are dropped and messages are kept, in order; before it fell
    behind it got them all."""
    srv = server_factory(extra_env={"CHATHUB_MESSAGE_QUEUE_SIZE": "5000"})
    room = "shed"
    big = "y" * 8192
    # enough bytes to fill every buffer in the way for sure: the server socket's send
    # buffer (at most tcp_wmem's maximum), the slow socket's receive buffer and what the
    # transport holds; what is left waits in the server's queue
    prefill = (_tcp_wmem_max() + 512 * 1024) // len(big) + 50
    slow_user, typer, visitor = 12, 11, 13

    async def go() -> None:
        t = await connect(srv, typer)
        assert (await t.cmd("join", room=room))["ok"]
        raw = await asyncio.to_thread(raw_connect, srv, slow_user)
        try:
            raw.sendall(masked_text_frame(json.dumps({"op": "join", "room": room}).encode()))
            await wait_joined(t, slow_user, room)

            # not behind: the slow connection gets ephemeral events like anyone
            assert (await t.cmd("send", room=room, text="marker"))["seq"] == 1
            assert (await t.cmd("typing", room=room, state="start"))["ok"]
            assert (await t.cmd("typing", room=room, state="stop"))["ok"]
            assert (await t.cmd("read", room=room, seq=1))["ok"]

            # fall behind: the prefill cannot all be written to the socket
            s = Sender(t, room, "p")
            rd = asyncio.create_task(s.read_loop(prefill, 0))
            await s.send_many(prefill, big)
            await asyncio.wait_for(rd, 60 * TIMEOUT_SCALE)
            seq = 1 + prefill

            # behind: ephemeral events now, interleaved with messages
            v = await connect(srv, visitor)
            for k in range(10):
                assert (await t.cmd("typing", room=room, state="start"))["ok"]
                seq += 1
                assert (await t.cmd("send", room=room, text=f"during {k}"))["seq"] == seq
                assert (await t.cmd("typing", room=room, state="stop"))["ok"]
                assert (await t.cmd("read", room=room, seq=seq))["ok"]
                assert (await v.cmd("join", room=room))["ok"]  # joined
                assert (await v.cmd("leave", room=room))["ok"]  # left
                seq += 1
                assert (await t.cmd("send", room=room, text=f"after {k}"))["seq"] == seq

            # read it all: still connected (the queue never overflowed), nothing missing
            reader = FrameReader(raw)
            events, close_code = await asyncio.to_thread(
                drain_events, reader, 60 * TIMEOUT_SCALE, until_messages=seq)
            assert close_code is None and reader.eof is None
            kinds = [e["ev"] for e in events]
            assert kinds[:5] == ["ready", "message", "typing", "typing", "receipt"], kinds[:5]
            rest = events[5:]
            assert [e["ev"] for e in rest] == ["message"] * (seq - 1), sorted(set(kinds[5:]))
            assert [e["seq"] for e in rest] == list(range(2, seq + 1))
            assert rest[-1]["text"] == "after 9"

            # and once caught up it gets ephemeral events again
            assert (await t.cmd("typing", room=room, state="start"))["ok"]
            events, _ = await asyncio.to_thread(drain_one_event, reader, STEP)
            assert events["ev"] == "typing" and events["state"] == "start"
        finally:
            raw.close()

    run(go(), timeout=100)
    out = srv.output()
    assert "Traceback" not in out, out


def drain_one_event(reader: FrameReader, timeout: float):
    deadline = time.monotonic() + timeout
    while True:
        f = reader.frame(deadline)
        assert f is not None, reader.eof
        if f[0] == 0x1:
            return json.loads(f[1]), None


def test_large_messages_survive_a_backlog(server_factory):
    """Messages whose frames exceed 8 KiB, sent while the connection is behind, arrive
    intact and in order once it reads again.

    A regression guard: picows 2.3.1's own ``WSTransport.send`` (server side, without
    aiofastnet) writes a frame larger than 8192 bytes as ``writelines([memoryview of its
    reusable header buffer, payload])``; when uvloop has to hold that write (socket
    backlog), the next send on the transport overwrites the held header, and the client
    gets a wrong length and a corrupt stream. chathub must not send large frames that way.
    Frames of different sizes make the headers differ, so an overwritten one shows."""
    srv = server_factory(extra_env={"CHATHUB_MESSAGE_QUEUE_SIZE": "5000"})
    room = "big"

    def text(i: int) -> str:  # frames of different sizes: their headers differ
        return "z" * (9000 + i % 97) if i % 5 else f"small {i}"

    n = (_tcp_wmem_max() + 4 * 1024 * 1024) // 7000

    async def go() -> None:
        t = await connect(srv, 21)
        assert (await t.cmd("join", room=room))["ok"]
        raw = await asyncio.to_thread(raw_connect, srv, 22)
        try:
            raw.sendall(masked_text_frame(json.dumps({"op": "join", "room": room}).encode()))
            await wait_joined(t, 22, room)
            s = Sender(t, room, "b")
            rd = asyncio.create_task(s.read_loop(n, 0))
            await s.send_many(n, text)
            await asyncio.wait_for(rd, 60 * TIMEOUT_SCALE)
            reader = FrameReader(raw)
            events, close_code = await asyncio.to_thread(drain_events, reader, 60 * TIMEOUT_SCALE, until_messages=n)
            assert close_code is None and reader.eof is None
            msgs = [e for e in events if e.get("ev") == "message"]
            assert [e["seq"] for e in msgs] == list(range(1, n + 1))
            assert [e["text"] for e in msgs] == [text(i) for i in range(1, n + 1)]
        finally:
            raw.close()

    run(go(), timeout=100)
