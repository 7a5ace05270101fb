"""The fan-out (``chathub._fastpath._fanout``) and its pure-Python twin.

Each connection is a real picows ``WSTransport`` over an in-memory transport that records
every write, close and abort (its ``get_write_buffer_size`` never says 0, so picows'
C-level fast write hands the bytes to ``write`` instead of a socket); the compiled
module's direct writes (``send()`` on the socket while the transport holds nothing) are
tested over a real socket pair at the end. The unit tests run
on both implementations; the differential test drives both with the same random script of
broadcasts, sends, pauses, drains, resumes, resets and closes, and requires the same writes
(byte for byte, write for write), the same closes and the same listener state.
"""

from __future__ import annotations

import functools

import gzip as _gzip
import logging
import random
import struct
import types
import zlib
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from picows import WSCloseCode, WSTransport

from chathub._fastpath import _fanout_py
from chathub.core.hub import EPHEMERAL, MESSAGE, Conn, MemberList
from tests._differential import extensions_disabled, import_compiled

LOGGER = logging.getLogger("tests.fanout")


def _compiled() -> Any:
    return import_compiled("chathub._fastpath._fanout")


@pytest.fixture(params=["compiled", "python"])
def impl(request: pytest.FixtureRequest) -> Any:
    return _compiled() if request.param == "compiled" else _fanout_py


# ---------------------------------------------------------------- in-memory transport


class FakeLoop:
    """What the fan-out needs of a loop: call_soon (end-of-iteration flush), call_later
    (graceful close timeout) and, for WSTransport, create_future."""

    def __init__(self) -> None:
        self.soon: list[Any] = []
        self.later: list[tuple[float, Any]] = []
        self.scheduled = 0

    def call_soon(self, cb: Any, *args: Any) -> None:
        self.scheduled += 1
        self.soon.append((cb, args))

    def call_later(self, delay: float, cb: Any, *args: Any) -> None:
        self.later.append((delay, functools.partial(cb, *args)))

    def create_future(self) -> None:
        return None

    def end_iteration(self) -> None:
        soon, self.soon = self.soon, []
        for cb, args in soon:
            cb(*args)


class _Sock:
    def fileno(self) -> int:
        return -1


class FakeTransport:
    """Records writes; pauses its protocol above ``high`` buffered bytes (synchronously,
    inside ``write``, as uvloop does); ``drain`` empties the buffer and resumes."""

    def __init__(self, high: int = 1 << 62) -> None:
        self.events: list[tuple[Any, ...]] = []
        self.high = high
        self.buffered = 0
        self.closing = False
        self.paused = False
        self.broken = False
        self.listener: Any = None

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return _Sock() if name == "socket" else default

    def get_write_buffer_size(self) -> int:
        return 1  # never 0: picows never calls send() on the fake fd

    def write(self, data: Any) -> None:
        if self.broken:
            raise RuntimeError("transport is gone")
        self.events.append(("write", bytes(data)))
        self.buffered += len(data)
        if not self.paused and self.buffered > self.high:
            self.paused = True
            self.listener.pause_writing()

    def writelines(self, chunks: Any) -> None:
        self.write(b"".join(bytes(c) for c in chunks))

    def is_closing(self) -> bool:
        return self.closing

    def close(self) -> None:
        self.events.append(("close",))
        self.closing = True

    def abort(self) -> None:
        self.events.append(("abort",))
        self.closing = True

    def drain(self) -> None:
        self.buffered = 0
        if self.paused and not self.closing:
            self.paused = False
            self.listener.resume_writing()


class Peer:
    """One connection: a listener of ``mod`` on a WSTransport over a FakeTransport."""

    def __init__(self, mod: Any, fanout: Any, loop: FakeLoop, *, gzip: bool = False, high: int = 1 << 62,
                 deflate: bool = False, raw: FakeTransport | None = None) -> None:
        self.raw = FakeTransport(high) if raw is None else raw
        self.transport = WSTransport(False, self.raw, LOGGER, loop)  # type: ignore[call-arg]  # not public API
        self.listener = mod.FanoutListener(fanout)
        self.listener.deflate = deflate
        self.listener.transport = self.transport
        self.raw.listener = self.listener
        self.conn = Conn("c", self.listener)
        self.conn.gzip = gzip

    def writes(self) -> list[bytes]:
        return [e[1] for e in self.raw.events if e[0] == "write"]

    def stream(self) -> bytes:
        return b"".join(self.writes())


def make(mod: Any, n: int = 1, *, gzip: bool = False, high: int = 1 << 62, **kw: Any) -> tuple[FakeLoop, Any, list[Peer]]:
    loop = FakeLoop()
    fanout = mod.Fanout(loop=loop, **kw)
    return loop, fanout, [Peer(mod, fanout, loop, gzip=gzip, high=high) for _ in range(n)]


def frame(op: int, payload: bytes, rsv1: bool = False) -> bytes:
    n = len(payload)
    b0 = 0x80 | (0x40 if rsv1 else 0) | op
    if n <= 125:
        head = bytes((b0, n))
    elif n <= 0xFFFF:
        head = struct.pack("!BBH", b0, 126, n)
    else:
        head = struct.pack("!BBQ", b0, 127, n)
    return head + payload


def raw_deflate(data: bytes) -> bytes:
    """RFC 7692 message compression: raw deflate, fresh context, 00 00 ff ff removed."""
    c = zlib.compressobj(6, zlib.DEFLATED, -15)
    out = c.compress(data) + c.flush(zlib.Z_SYNC_FLUSH)
    assert out.endswith(b"\x00\x00\xff\xff")
    return out[:-4]


def raw_inflate(data: bytes) -> bytes:
    return zlib.decompressobj(-15).decompress(data + b"\x00\x00\xff\xff")


def close_frame(code: int, reason: str) -> bytes:
    return frame(0x8, struct.pack("!H", code) + reason.encode())


class RecordingHandle:
    """A non-fan-out handle (as in tests/test_node.py): gets raw payloads."""

    def __init__(self) -> None:
        self.got: list[tuple[str, bytes, int]] = []

    def send_text(self, payload: bytes, kind: int) -> None:
        self.got.append(("text", payload, kind))

    def send_binary(self, payload: bytes, kind: int) -> None:
        self.got.append(("binary", payload, kind))


# ---------------------------------------------------------------- both implementations


def test_constants_match_the_hub(impl: Any) -> None:
    assert (impl.MESSAGE, impl.EPHEMERAL) == (MESSAGE, EPHEMERAL)
    assert impl.CORK_CAP == 64 * 1024 and impl.MAX_QUEUED_BYTES == 16 * 1024 * 1024


def test_broadcast_writes_the_same_frame_once_per_connection_at_iteration_end(impl: Any) -> None:
    loop, fanout, peers = make(impl, 5)
    payload = b'{"ev":"message","text":"hi"}'
    assert impl.broadcast([p.conn for p in peers], payload, MESSAGE) == 5
    assert all(p.raw.events == [] for p in peers)  # corked until the end of the iteration
    assert fanout.corked == 5 and loop.scheduled == 1
    loop.end_iteration()
    for p in peers:
        assert p.writes() == [frame(1, payload)]
        assert p.listener.corked_bytes == 0
    assert fanout.corked == 0


def test_frames_of_one_iteration_are_coalesced_into_one_write(impl: Any) -> None:
    loop, fanout, (p, q) = make(impl, 2)
    impl.broadcast([p.conn, q.conn], b"one", MESSAGE)
    p.listener.send_text(b"reply", MESSAGE)
    impl.broadcast([p.conn], b"two", EPHEMERAL)
    p.listener.send_binary(b"\x00bin", MESSAGE)
    assert loop.scheduled == 1
    loop.end_iteration()
    assert p.writes() == [frame(1, b"one") + frame(1, b"reply") + frame(1, b"two") + frame(2, b"\x00bin")]
    assert q.writes() == [frame(1, b"one")]
    # next iteration: scheduled again, written again
    impl.broadcast([p.conn], b"three", MESSAGE)
    assert loop.scheduled == 2
    loop.end_iteration()
    assert p.writes()[-1] == frame(1, b"three")


def test_a_burst_to_one_room_is_one_write_per_connection_in_order(impl: Any) -> None:
    """Broadcasts to the same connections in one iteration (a burst in one room, each
    with a new list as the hub builds them), with other frames for some members and a
    pause in between: every connection gets its frames in order, in one write, and the
    paused one queues the rest."""
    loop, fanout, peers = make(impl, 4, cork_cap=1000)
    room = [p.conn for p in peers[:3]]
    msgs = [b"m%d" % i * 20 for i in range(8)]
    impl.broadcast(list(room), msgs[0])
    impl.broadcast(list(room), msgs[1])
    peers[1].listener.send_text(b"own")  # a reply to one member between two messages
    impl.broadcast(list(room), msgs[2])
    impl.broadcast(list(room), msgs[3])
    peers[2].listener.pause_writing()  # paused without a write: queues from now on
    impl.broadcast(list(room), msgs[4])
    impl.broadcast(list(room) + [peers[3].conn], msgs[5])  # someone joined
    impl.broadcast(list(room) + [peers[3].conn], msgs[6])
    assert peers[2].listener.queued_frames == 3
    for m in msgs[7:]:
        impl.broadcast(list(room) + [peers[3].conn], m)
    loop.end_iteration()
    f = [frame(1, m) for m in msgs]
    assert peers[0].writes() == [b"".join(f)]
    assert peers[1].writes() == [b"".join(f[:2]) + frame(1, b"own") + b"".join(f[2:])]
    assert peers[2].writes() == [b"".join(f[:4])]
    assert peers[3].writes() == [b"".join(f[5:])]
    peers[2].listener.resume_writing()
    assert peers[2].writes()[1:] == [b"".join(f[4:])]
    # the cap splits a long burst the same way as frames corked one by one
    for i in range(30):
        impl.broadcast(list(room), b"%02d" % i * 25)
    loop.end_iteration()
    per = [frame(1, b"%02d" % i * 25) for i in range(30)]
    writes = peers[0].writes()[1:]
    assert writes == [b"".join(per[:19]), b"".join(per[19:])]  # 19 x 52 bytes: the next would pass 1000


def test_a_burst_from_several_senders_skips_each_sender(impl: Any) -> None:
    """A room's member list with the origin excluded (as the hub passes it): several
    members sending in one iteration each miss only their own messages, in order, one
    write each; the compiled module keeps one batch for the whole burst."""
    loop, fanout, peers = make(impl, 4)
    room = [p.conn for p in peers]
    script = [(0, b"a1"), (1, b"b1"), (0, b"a2"), (None, b"sys"), (2, b"c1"), (1, b"b2")]
    for who, body in script:
        exclude = None if who is None else room[who]
        assert impl.broadcast(room, body, exclude=exclude) == (4 if who is None else 3)
    loop.end_iteration()
    for i, p in enumerate(peers):
        assert p.writes() == [b"".join(frame(1, body) for who, body in script if who != i)], i
    if impl is not _fanout_py:
        assert fanout.batched == len(script) - 1


def test_compiled_burst_appends_to_one_batch() -> None:
    """The compiled module does the burst above without per-recipient work: after the
    first broadcast, each one to the same connections is one append to a shared batch."""
    mod = _compiled()
    loop, fanout, peers = make(mod, 50)
    room = [p.conn for p in peers]
    for i in range(16):
        assert mod.broadcast(list(room), b"m%d" % i) == 50
    assert fanout.batched == 15
    peers[7].listener.send_text(b"own")  # diverges: it leaves the batch with a copy and
    mod.broadcast(list(room), b"x")       # gets the later frames one by one; the others
    mod.broadcast(list(room), b"y")       # still share the batch
    assert fanout.batched == 17
    peers[3].listener.pause_writing()  # paused: leaves too, and queues what comes next
    mod.broadcast(list(room), b"z")
    assert fanout.batched == 18 and peers[3].listener.queued_frames == 1
    loop.end_iteration()
    mod.broadcast(list(room), b"next")  # a new iteration: a new batch
    mod.broadcast(list(room), b"again")
    assert fanout.batched == 19
    body = b"".join(frame(1, b"m%d" % i) for i in range(16))
    xyz = frame(1, b"x") + frame(1, b"y") + frame(1, b"z")
    assert peers[0].writes() == [body + xyz]
    assert peers[7].writes() == [body + frame(1, b"own") + xyz]
    assert peers[3].writes() == [body + frame(1, b"x") + frame(1, b"y")]  # the cork; z waits
    peers[3].listener.resume_writing()  # (still paused through the next iteration)
    assert peers[3].writes()[1:] == [frame(1, b"z") + frame(1, b"next") + frame(1, b"again")]
    # a batch no listener holds is not kept open (nor the connections it lists)
    loop.end_iteration()
    for p in peers:
        p.listener.release()
    mod.broadcast(list(room), b"gone")
    mod.broadcast(list(room), b"gone too")
    assert fanout.batched == 19 and fanout.corked == 0


def test_a_room_burst_with_replies_and_senders_in_between(impl: Any) -> None:
    """Broadcasts to a room's MemberList (the compiled module defers them: no listener
    is touched until the end of the iteration, or until one of them is): several
    senders, a reply to one member, a member that is paused, one that closes, one that
    is released, a broadcast to another room. Everyone gets their frames in order, in
    one write, and nothing after a close."""
    loop, fanout, peers = make(impl, 6)
    room = MemberList([p.conn for p in peers[:5]])
    other = MemberList([peers[4].conn, peers[5].conn])
    peers[3].listener.pause_writing()
    peers[3].raw.paused = True
    got: list[list[bytes]] = [[] for _ in peers]

    def bcast(members: list[Any], body: bytes, sender: int | None = None) -> None:
        ex = None if sender is None else peers[sender].conn
        n = impl.broadcast(members, body, MESSAGE, exclude=ex)
        assert n == len(members) - (ex is not None and ex in members)
        for i, p in enumerate(peers):
            if p.conn in members and p.conn is not ex:
                got[i].append(frame(1, body))

    bcast(room, b"a1", 0)
    bcast(room, b"b1", 1)
    bcast(room, b"a2", 0)
    peers[1].listener.send_text(b"ack")  # a reply: after b1 and a2, which it is due
    got[1].append(frame(1, b"ack"))
    bcast(room, b"sys")
    peers[2].listener.close(1000, "bye")  # writes what it was due, then the close frame
    bcast(room, b"c1", 4)
    bcast(other, b"elsewhere")  # another room: the first one's frames come first
    bcast(room, b"last")
    peers[4].listener.release()  # gone: nothing is written to it
    loop.end_iteration()
    assert peers[0].writes() == [b"".join(got[0])]
    assert peers[1].writes() == [b"".join(got[1])]
    assert peers[2].raw.events[0] == ("write", b"".join(got[2][:4]))
    assert peers[2].raw.events[1] == ("write", close_frame(1000, "bye"))
    assert len(peers[2].writes()) == 2  # nothing after the close frame
    assert peers[3].writes() == []  # paused: queued
    assert peers[3].listener.queued_frames == len(got[3])
    assert peers[4].writes() == []
    assert peers[5].writes() == [frame(1, b"elsewhere")] == [b"".join(got[5])]
    peers[3].raw.paused = False
    peers[3].listener.resume_writing()
    assert peers[3].stream() == b"".join(got[3])
    if impl is not _fanout_py:
        assert fanout.deferred == 7


def test_compiled_deferred_broadcast_touches_no_listener_until_the_flush() -> None:
    """A burst to one room is appended to one deferred batch: no listener holds anything
    until the flush writes it, once per member; a member's own frame settles the batch
    first (the counters then read as if every frame had been corked at once)."""
    mod = _compiled()
    loop, fanout, peers = make(mod, 40)
    room = MemberList([p.conn for p in peers])
    for i in range(16):
        assert mod.broadcast(room, b"m%d" % i, MESSAGE, exclude=peers[0].conn) == 39
    assert fanout.deferred == 16 and fanout.batched == 0
    assert loop.scheduled == 1
    assert all(p.raw.events == [] for p in peers)
    body = b"".join(frame(1, b"m%d" % i) for i in range(16))
    assert peers[1].listener.corked_bytes == len(body)  # (reading it settles the batch)
    assert peers[0].listener.corked_bytes == 0
    assert fanout.corked == 39
    loop.end_iteration()
    assert [p.writes() for p in peers] == [[]] + [[body]] * 39
    # the next iteration: deferred until a member's own frame, which goes after the batch
    mod.broadcast(room, b"x", MESSAGE)
    peers[5].listener.send_text(b"own")
    mod.broadcast(room, b"y", MESSAGE)
    loop.end_iteration()
    assert peers[5].writes()[1] == frame(1, b"x") + frame(1, b"own") + frame(1, b"y")
    assert peers[6].writes()[1] == frame(1, b"x") + frame(1, b"y")
    assert fanout.deferred == 18


def test_a_deferred_broadcast_and_an_outside_pause(impl: Any) -> None:
    """The transport pauses of its own accord (a ping or pong picows wrote itself) after
    a room broadcast and before the flush, for a member with a frame of its own corked
    and the cork at its cap: the compiled module, which deferred the broadcast, writes
    the cork through the transport then, behind picows' bytes, not at the broadcast;
    the bytes and their order are the twin's."""
    loop, fanout, peers = make(impl, 3, cork_cap=200)
    room = MemberList([p.conn for p in peers])
    p = peers[1]
    p.listener.send_text(b"o" * 150)
    impl.broadcast(room, b"r" * 100, MESSAGE)
    p.raw.write(b"PING")  # picows' own write; the transport now holds bytes
    p.raw.paused = True
    p.listener.pause_writing()
    loop.end_iteration()
    assert p.stream().replace(b"PING", b"") == frame(1, b"o" * 150) + frame(1, b"r" * 100)
    if impl is not _fanout_py:
        assert p.raw.events[0] == ("write", b"PING")  # the cork waited for the flush
    assert peers[0].writes() == [frame(1, b"r" * 100)]


def test_compiled_deferred_write_that_raises_still_writes_the_corked_ones() -> None:
    """An exception out of the deferred batch's write at the end of the iteration (here:
    a paused member's queue overflows, and its transport fails the close frame) still
    lets the flush write every corked listener before it propagates; none is left
    corked with no flush to come."""
    mod = _compiled()
    loop, fanout, peers = make(mod, 3, max_queue_frames=1)
    room = MemberList([p.conn for p in peers])
    broken = peers[2]
    broken.listener.pause_writing()
    broken.raw.paused = True
    broken.listener.send_text(b"queued")  # the queue is full now
    loop.end_iteration()
    peers[1].listener.send_text(b"own")  # corked before the broadcast
    mod.broadcast(room, b"msg", MESSAGE)
    broken.raw.broken = True
    with pytest.raises(RuntimeError):
        loop.end_iteration()
    assert peers[0].writes() == [frame(1, b"msg")]
    assert peers[1].writes() == [frame(1, b"own") + frame(1, b"msg")]
    assert fanout.corked == 0
    mod.broadcast(room, b"next", MESSAGE)  # and the next iteration flushes again
    loop.end_iteration()
    assert peers[0].writes()[-1] == frame(1, b"next")


def test_compiled_broadcast_keeps_the_members_handles_on_a_member_list() -> None:
    """A room's MemberList carries the compiled fan-out's copy of its members' handles
    and gzip flags, made by the first broadcast to it and used by the next ones (no Conn
    read per recipient); a plain list, or a new MemberList, gets none of the old one."""
    mod = _compiled()
    loop, fanout, peers = make(mod, 3)
    peers[1].conn.gzip = True
    other = RecordingHandle()
    room = MemberList([p.conn for p in peers] + [Conn("o", other), Conn("none", None)])
    assert room.fan is None
    assert mod.broadcast(room, b"one", MESSAGE, exclude=peers[0].conn) == 3
    handles, flags, fan, any_gzip, any_deflate = room.fan
    assert handles == [p.listener for p in peers] + [other, None]
    assert flags == bytes([0, 1, 0, 0, 0])
    assert fan is None  # not every member has a listener of one fanout: no deferral
    assert any_gzip and not any_deflate
    cache = room.fan
    assert mod.broadcast(room, b"two", MESSAGE) == 4
    assert room.fan is cache
    loop.end_iteration()
    assert [p.stream() for p in peers] == [frame(1, b"two"), frame(1, b"one") + frame(1, b"two"),
                                           frame(1, b"one") + frame(1, b"two")]
    assert [g[1] for g in other.got] == [b"one", b"two"]
    plain = list(room)
    mod.broadcast(plain, b"three", MESSAGE)
    assert MemberList(room).fan is None


def test_cork_is_written_when_it_reaches_the_cap(impl: Any) -> None:
    loop, fanout, (p,) = make(impl, cork_cap=1000)
    a, b, c = b"a" * 400, b"b" * 400, b"c" * 400
    p.listener.send_text(a)
    p.listener.send_text(b)
    assert p.writes() == []
    p.listener.send_text(c)  # would pass the cap: the cork is written first
    assert p.writes() == [frame(1, a) + frame(1, b)]
    big = b"d" * 5000  # bigger than the cap on its own: written at once, not copied
    p.listener.send_text(big)
    assert p.writes()[1:] == [frame(1, c), frame(1, big)]
    loop.end_iteration()
    assert len(p.writes()) == 3
    p.listener.send_text(b"x" * 998)  # reaches the cap exactly (2-byte header)
    assert p.writes()[3:] == [frame(1, b"x" * 998)]


def test_gzip_variant_is_compressed_once_and_only_when_wanted(impl: Any) -> None:
    calls: list[bytes] = []

    def compress(data: bytes) -> bytes:
        calls.append(data)
        return _gzip.compress(data, mtime=0)

    loop, fanout, peers = make(impl, 3)
    peers[1].conn.gzip = True
    peers[2].conn.gzip = True
    small, big = b"s" * 1024, b'{"text":"' + b"b" * 2000 + b'"}'
    conns = [p.conn for p in peers]
    impl.broadcast(conns, small, MESSAGE, 1024, compress)
    assert calls == []  # not above the threshold
    impl.broadcast(conns[:1], big, MESSAGE, 1024, compress)
    assert calls == []  # no gzip recipient
    impl.broadcast(conns, big, MESSAGE, 1024, compress)
    assert calls == [big]
    loop.end_iteration()
    gz = _gzip.compress(big, mtime=0)
    assert peers[0].writes() == [frame(1, small) + frame(1, big) + frame(1, big)]
    assert peers[1].writes() == [frame(1, small) + frame(2, gz)]
    assert peers[2].writes() == peers[1].writes()
    impl.broadcast(conns, big, MESSAGE, 1024, None)  # no compressor: text for everyone
    loop.end_iteration()
    assert peers[1].writes()[-1] == frame(1, big)


def test_deflate_variant_is_compressed_once_with_rsv1_and_only_when_wanted(impl: Any) -> None:
    calls: list[bytes] = []

    def deflate(data: bytes) -> bytes:
        calls.append(data)
        return raw_deflate(data)

    loop, fanout, peers = make(impl, 3)
    assert [p.listener.deflate for p in peers] == [False] * 3  # off unless negotiated
    peers[1].listener.deflate = True
    peers[2].listener.deflate = True
    rec = RecordingHandle()
    conns = [p.conn for p in peers] + [Conn("o", rec)]
    small, big = b"s" * impl.DEFLATE_THRESHOLD, b'{"text":"' + b"b" * 600 + b'"}'
    assert impl.DEFLATE_THRESHOLD == 256
    impl.broadcast(conns, small, MESSAGE, 1024, None, deflate)
    assert calls == []  # not above the threshold: plain text frame, RSV1 clear
    impl.broadcast(conns[:1], big, MESSAGE, 1024, None, deflate)
    assert calls == []  # no deflate recipient
    impl.broadcast(conns, big, MESSAGE, 1024, None, deflate)
    assert calls == [big]  # once for both deflate recipients
    loop.end_iteration()
    d = raw_deflate(big)
    assert peers[0].writes() == [frame(1, small) + frame(1, big) + frame(1, big)]
    assert peers[1].writes() == [frame(1, small) + frame(1, d, rsv1=True)]
    assert peers[2].writes() == peers[1].writes()
    assert peers[1].writes()[0][len(frame(1, small))] == 0xC1  # FIN | RSV1 | text
    assert raw_inflate(d) == big
    assert rec.got == [("text", small, MESSAGE), ("text", big, MESSAGE)]  # other handles: raw payloads
    # a custom threshold; without a compressor everyone gets text
    impl.broadcast(conns[1:2], small, MESSAGE, 1024, None, deflate, 100)
    impl.broadcast(conns[1:2], big, MESSAGE, 1024, None, None)
    loop.end_iteration()
    assert peers[1].writes()[-1] == frame(1, raw_deflate(small), rsv1=True) + frame(1, big)
    # keywords work too
    impl.broadcast(conns[1:2], big, deflate=deflate, deflate_threshold=10)
    loop.end_iteration()
    assert peers[1].writes()[-1] == frame(1, d, rsv1=True)


def test_gzip_takes_precedence_over_deflate(impl: Any) -> None:
    loop, fanout, (p, q) = make(impl, 2)
    for peer in (p, q):
        peer.listener.deflate = True
    p.conn.gzip = True
    gzipped: list[bytes] = []

    def compress(data: bytes) -> bytes:
        gzipped.append(data)
        return _gzip.compress(data, mtime=0)

    mid, big = b"m" * 500, b"b" * 2000
    impl.broadcast([p.conn, q.conn], big, MESSAGE, 1024, compress, raw_deflate)
    impl.broadcast([p.conn, q.conn], mid, MESSAGE, 1024, compress, raw_deflate)
    loop.end_iteration()
    assert gzipped == [big]
    # above the gzip threshold: the gzip frame; between the thresholds: deflate (RSV1)
    assert p.writes() == [frame(2, _gzip.compress(big, mtime=0)) + frame(1, raw_deflate(mid), rsv1=True)]
    assert q.writes() == [frame(1, raw_deflate(big), rsv1=True) + frame(1, raw_deflate(mid), rsv1=True)]


def test_other_handles_get_payloads_and_missing_handles_are_skipped(impl: Any) -> None:
    loop, fanout, (p,) = make(impl)
    rec = RecordingHandle()
    gone = Conn("gone", None)
    other = types.SimpleNamespace(handle=rec, gzip=True)
    big = b"z" * 2000
    assert impl.broadcast((p.conn, gone, other), b"hello", EPHEMERAL) == 2
    assert impl.broadcast(iter([other]), big, MESSAGE, 1024, lambda d: b"GZ") == 1
    assert rec.got == [("text", b"hello", EPHEMERAL), ("binary", b"GZ", MESSAGE)]
    loop.end_iteration()
    assert p.writes() == [frame(1, b"hello")]


def test_conn_subclass_with_a_handle_property_is_read_with_getattr(impl: Any) -> None:
    loop, fanout, (p, q) = make(impl, 2)

    class Redirect(Conn):
        __slots__ = ()
        handle = property(lambda self: q.listener, lambda self, value: None)  # type: ignore[assignment]

    r = Redirect("r", p.listener)
    impl.broadcast([p.conn, r, p.conn], b"m", MESSAGE)
    loop.end_iteration()
    assert p.writes() == [frame(1, b"m") * 2]
    assert q.writes() == [frame(1, b"m")]


def test_paused_connection_queues_messages_and_sheds_ephemeral_events(impl: Any) -> None:
    loop, fanout, (p,) = make(impl)
    lst = p.listener
    lst.send_text(b"before")
    lst.pause_writing()
    lst.send_text(b"m1", MESSAGE)
    lst.send_text(b"typing", EPHEMERAL)
    impl.broadcast([p.conn], b"m2", MESSAGE)
    impl.broadcast([p.conn], b"receipt", EPHEMERAL)
    assert (lst.queued_frames, lst.shed) == (2, 2)
    assert lst.queued_bytes == len(frame(1, b"m1")) + len(frame(1, b"m2"))
    loop.end_iteration()  # the cork is older than the queue: written now
    assert p.writes() == [frame(1, b"before")]
    lst.resume_writing()
    assert p.writes()[1:] == [frame(1, b"m1") + frame(1, b"m2")]
    assert (lst.queued_frames, lst.queued_bytes) == (0, 0)
    lst.send_text(b"typing", EPHEMERAL)  # caught up: ephemeral events flow again
    loop.end_iteration()
    assert p.writes()[-1] == frame(1, b"typing")


def test_resume_writes_the_cork_before_the_queue(impl: Any) -> None:
    loop, fanout, (p,) = make(impl)
    p.listener.send_text(b"corked")
    p.listener.pause_writing()
    p.listener.send_text(b"queued")
    p.listener.resume_writing()  # before the end-of-iteration flush
    assert p.writes() == [frame(1, b"corked"), frame(1, b"queued")]
    loop.end_iteration()
    assert len(p.writes()) == 2


def test_resume_stops_when_the_transport_pauses_again(impl: Any) -> None:
    loop, fanout, (p,) = make(impl, cork_cap=100, high=150)
    lst = p.listener
    lst.pause_writing()
    p.raw.paused = True
    frames = [frame(1, b"%02d" % i + b"q" * 38) for i in range(10)]  # 42 bytes each
    for f in frames:
        lst.send_text(f[2:])
    p.raw.drain()  # two frames a write (cap 100) until the buffer passes 150 bytes
    assert p.writes() == [frames[0] + frames[1], frames[2] + frames[3]]
    assert lst.paused and lst.queued_frames == 6 and lst.corked_bytes == 0
    p.raw.drain()
    assert p.writes()[2:] == [frames[4] + frames[5], frames[6] + frames[7]]
    assert lst.paused and lst.queued_frames == 2
    p.raw.drain()
    assert p.writes()[4:] == [frames[8] + frames[9]]
    assert not lst.paused and lst.queued_frames == 0 and lst.queued_bytes == 0


def test_queue_overflow_closes_1013_and_aborts(impl: Any) -> None:
    loop, fanout, (p, q) = make(impl, 2, max_queue_frames=3)
    lst = p.listener
    lst.send_text(b"corked")
    lst.pause_writing()
    for i in range(3):
        impl.broadcast([p.conn, q.conn], b"m%d" % i, MESSAGE)
    assert lst.queued_frames == 3 and not lst.closing
    impl.broadcast([p.conn, q.conn], b"m3", MESSAGE)
    assert lst.closing and lst.queued_frames == 0 and lst.corked_bytes == 0
    reason = impl.SLOW_CONSUMER
    # the close frame goes out at once; the reset waits close_timeout for a reader
    assert p.raw.events == [("write", close_frame(1013, reason))]
    impl.broadcast([p.conn, q.conn], b"m4", MESSAGE)  # closing: dropped
    loop.end_iteration()
    loop.later[-1][1]()  # the client never read it
    assert p.raw.events == [("write", close_frame(1013, reason)), ("abort",)]
    assert q.writes() == [b"".join(frame(1, b"m%d" % i) for i in range(5))]


def test_queue_byte_cap(impl: Any) -> None:
    loop, fanout, (p,) = make(impl, max_queue_bytes=100)
    p.listener.pause_writing()
    p.listener.send_text(b"a" * 60)
    assert not p.listener.closing
    p.listener.send_text(b"b" * 60)
    loop.later[-1][1]()
    assert p.listener.closing and p.raw.events[-1] == ("abort",)


def test_close_writes_the_cork_first_and_waits_for_the_client(impl: Any) -> None:
    loop, fanout, (p,) = make(impl, close_timeout=1.5)
    p.listener.send_text(b"last words")
    p.listener.pause_writing()
    p.listener.send_text(b"queued: dropped by the close")
    p.listener.close(1001, "going away")
    assert p.raw.events == [("write", frame(1, b"last words")), ("write", close_frame(1001, "going away"))]
    assert [d for d, _ in loop.later] == [1.5]
    p.listener.send_text(b"after")
    p.listener.close(1000, "again")
    loop.end_iteration()
    loop.later[0][1]()  # the client never answered
    assert p.raw.events[2:] == [("close",)]


def test_close_reason_is_cut_at_120_bytes(impl: Any) -> None:
    loop, fanout, (p,) = make(impl)
    p.listener.close(4001, "x" * 300, abort=True)
    loop.later[-1][1]()
    assert p.raw.events == [("write", close_frame(4001, "x" * 120)), ("abort",)]


def test_attach_keeps_pings_and_closes_working(impl: Any) -> None:
    """attach() trims picows' per-connection state (compiled); picows' own writes of the
    connection (pings, close frames with the longest reason) still come out whole."""
    loop, fanout, (p,) = make(impl)
    p.listener.attach(p.transport)
    assert p.listener.transport is p.transport
    assert p.transport.request is None and p.transport.response is None
    p.transport.send_ping()
    p.transport.send_pong(b"p" * 125)
    p.listener.send_text(b"m" * 3000)
    p.listener.close(1001, "r" * 200)
    assert p.raw.events == [("write", frame(0x9, b"")), ("write", frame(0xA, b"p" * 125)),
                            ("write", frame(1, b"m" * 3000)), ("write", close_frame(1001, "r" * 120))]


def test_nothing_is_written_after_a_close_frame_or_a_reset(impl: Any) -> None:
    loop, fanout, (p, q, r) = make(impl, 3)
    conns = [p.conn, q.conn, r.conn]
    impl.broadcast(conns, b"x", MESSAGE)
    p.transport.send_close(WSCloseCode.OK)  # picows closed it itself (e.g. a protocol error)
    q.raw.closing = True  # the peer reset it
    r.listener.release()  # on_ws_disconnected
    loop.end_iteration()
    assert p.raw.events == [("write", close_frame(1000, ""))]
    assert q.raw.events == [] and r.raw.events == []
    assert impl.broadcast(conns, b"y", MESSAGE) == 3
    loop.end_iteration()
    assert len(p.raw.events) == 1 and q.raw.events == [] and r.raw.events == []


def test_a_failing_write_drops_only_that_connection(impl: Any) -> None:
    loop, fanout, (p, q) = make(impl, 2)

    p.raw.broken = True
    q_transport = q.transport
    impl.broadcast([p.conn, q.conn], b"x", MESSAGE)
    loop.end_iteration()
    assert p.listener.closing and p.raw.events == [("abort",)]
    assert q.writes() == [frame(1, b"x")] and q_transport is q.listener.transport


def test_argument_types(impl: Any) -> None:
    loop, fanout, (p,) = make(impl)
    with pytest.raises(TypeError):
        impl.broadcast([p.conn], "text", MESSAGE)
    with pytest.raises(TypeError):
        p.listener.send_text("text")
    with pytest.raises(TypeError):
        impl.FanoutListener(None)
    with pytest.raises(ValueError):
        impl.Fanout(max_queue_frames=0)


def test_frames_wait_until_connected(impl: Any) -> None:
    loop = FakeLoop()
    lst = impl.FanoutListener(impl.Fanout(loop=loop))
    lst.send_text(b"nowhere")
    assert impl.broadcast([Conn("c", lst)], b"x") == 1
    assert lst.corked_bytes == 0 and loop.soon == []


# ---------------------------------------------------------------- differential


OPS = ("broadcast", "room", "regroup", "send_text", "send_binary", "end", "pause", "drain", "resume", "close",
       "reset", "release")
WEIGHTS = (15, 25, 2, 8, 3, 15, 5, 8, 3, 1, 0.5, 0.5)


def run_script(mod: Any, seed: int, steps: int) -> dict[str, Any]:
    """Play one random script against ``mod``; return everything observable."""
    rnd = random.Random(seed)
    loop = FakeLoop()
    fanout = mod.Fanout(max_queue_frames=rnd.choice([2, 5, 50]), max_queue_bytes=rnd.choice([3000, 1 << 20]),
                       cork_cap=rnd.choice([200, 4096, 65536]), close_timeout=2.0, loop=loop)
    peers = [Peer(mod, fanout, loop, gzip=rnd.random() < 0.3, high=rnd.choice([300, 5000, 1 << 40]),
                  deflate=rnd.random() < 0.4)
             for _ in range(rnd.randint(1, 8))]
    others = [RecordingHandle() for _ in range(2)]
    conns: list[Any] = [p.conn for p in peers]
    conns += [Conn("o%d" % i, h) for i, h in enumerate(others)]
    conns.append(Conn("none", None))
    out: list[Any] = []
    # a "room": the same connections broadcast to again and again, so the compiled
    # module's batches grow, close and reopen: as the hub hands it out (the same
    # MemberList until a regroup, which carries the compiled module's handle cache) or
    # as a fresh plain list
    def new_room() -> list[Any]:
        pool = conns if rnd.random() < 0.2 else [p.conn for p in peers]
        return MemberList(rnd.sample(pool, rnd.randint(1, len(pool))))

    room = new_room()

    def compress(data: bytes) -> bytes:
        out.append(("compress", len(data)))
        return _gzip.compress(data, mtime=0)

    def deflate(data: bytes) -> bytes:
        out.append(("deflate", len(data)))
        return raw_deflate(data)

    def payload() -> bytes:
        n = rnd.choice([0, 1, 5, 125, 126, 256, 257, 1000, 1025, 3000, 70000])
        return bytes(rnd.getrandbits(8) for _ in range(min(n, 64))) * (n // 64) + b"p" * (n % 64)

    for _ in range(steps):
        op = rnd.choices(OPS, WEIGHTS)[0]
        p = rnd.choice(peers)
        kind = rnd.choice([MESSAGE, EPHEMERAL])
        if op == "broadcast":
            targets = rnd.sample(conns, rnd.randint(0, len(conns)))
            exclude = rnd.choice(targets) if targets and rnd.random() < 0.3 else None
            out.append(("n", mod.broadcast(targets, payload(), kind, 1024, compress, deflate, exclude=exclude)))
        elif op == "room":
            # a message from one member (excluded), from outside (None), or excluding a
            # connection that is not in the list
            body = payload() if rnd.random() < 0.3 else b"m" * rnd.choice([0, 10, 125, 190, 300])
            exclude = rnd.choice([None, None, rnd.choice(conns)] + room[:3])
            targets = room if rnd.random() < 0.5 else list(room)
            out.append(("n", mod.broadcast(targets, body, kind, 1024, compress, deflate, exclude=exclude)))
        elif op == "regroup":
            room = new_room()
        elif op == "send_text":
            p.listener.send_text(payload(), kind)
        elif op == "send_binary":
            p.listener.send_binary(payload(), kind)
        elif op == "end":
            loop.end_iteration()
        elif op == "pause":
            # The transport pausing of its own accord (in the server: a write of picows'
            # own, a ping, pong or close frame). The compiled module may not have handed a
            # deferred broadcast to this listener yet: a listener that had frames of its
            # own corked may then get its bytes in other writes than the twin's (same
            # bytes, same order; see test_a_deferred_broadcast_and_an_outside_pause), so
            # the script settles first.
            fanout.settle()
            p.raw.paused = True
            p.listener.pause_writing()
        elif op == "drain":
            fanout.settle()  # (as for "pause")
            p.raw.drain()
        elif op == "resume":
            fanout.settle()  # (as for "pause")
            p.raw.paused = False
            p.listener.resume_writing()
        elif op == "close":
            p.listener.close(rnd.choice([1000, 1001, 4001]), "bye", abort=rnd.random() < 0.5)
        elif op == "reset":
            fanout.settle()  # (as for "pause")
            p.raw.closing = True
        elif op == "release":
            p.listener.release()
        if rnd.random() >= 0.25:
            continue  # (unobserved: the compiled module's deferred broadcasts stay deferred)
        fanout.settle()
        out.append(("state", fanout.corked, [
            (q.listener.closing, q.listener.paused, q.listener.shed, q.listener.queued_frames,
             q.listener.queued_bytes, q.listener.corked_bytes) for q in peers]))
    loop.end_iteration()
    return {
        "trace": out,
        "events": [p.raw.events for p in peers],
        "others": [h.got for h in others],
        "scheduled": loop.scheduled,
        "later": [d for d, _ in loop.later],
        "fanout": fanout,
    }


@settings(deadline=None)
@given(seed=st.integers(0, 2**32 - 1), steps=st.integers(1, 120))
def test_compiled_and_twin_write_the_same_bytes(seed: int, steps: int) -> None:
    compiled = _compiled()
    a = run_script(compiled, seed, steps)
    b = run_script(_fanout_py, seed, steps)
    a.pop("fanout"), b.pop("fanout")
    assert a["events"] == b["events"]
    # a deferred broadcast schedules the flush even if none of its listeners takes it
    assert a.pop("scheduled") >= b.pop("scheduled")
    assert a == b


def test_differential_long_scripts() -> None:
    compiled = _compiled()
    wrote = batched = deferred = 0
    for seed in range(40):
        a = run_script(compiled, seed, 600)
        b = run_script(_fanout_py, seed, 600)
        f = a.pop("fanout")
        batched += f.batched
        deferred += f.deferred
        b.pop("fanout")
        assert a.pop("scheduled") >= b.pop("scheduled")
        assert a == b, seed
        wrote += sum(1 for events in a["events"] for e in events if e[0] == "write")
    assert wrote > 1000
    assert batched > 20  # the scripts do grow the compiled module's broadcast batches
    assert deferred > 200  # and defer broadcasts to member lists


def test_twin_is_selected_by_speedups() -> None:
    from chathub import speedups

    if extensions_disabled():
        assert speedups.broadcast is _fanout_py.broadcast
        assert speedups.FanoutListener is _fanout_py.FanoutListener
    else:
        assert speedups.broadcast.__module__ == "chathub._fastpath._fanout"
        assert speedups.FanoutListener.__module__ == "chathub._fastpath._fanout"
        assert speedups.Fanout is _compiled().Fanout


# ---------------------------------------------------------------- real sockets


def test_real_socket_order_backpressure_and_close(impl: Any) -> None:
    """A picows server whose listener is the fan-out's, a picows client that reads slowly
    at first: every frame arrives once, in order (broadcasts, replies, a burst far beyond
    the socket buffers, so the transport pauses and the queue drains on resume), then
    the close frame."""
    import asyncio

    import uvloop
    from picows import WSListener, WSMsgType, ws_connect, ws_create_server

    n_burst = 3000
    big = b"b" * 4000

    async def go() -> tuple[list[Any], int | None, int]:
        loop = asyncio.get_running_loop()
        fanout = impl.Fanout(max_queue_frames=10 * n_burst, loop=loop)
        server_side: list[Any] = []

        class Server(impl.FanoutListener):  # type: ignore[misc, name-defined]
            def on_ws_connected(self, transport: Any) -> None:
                self.attach(transport)
                server_side.append(self)

        got: list[Any] = []
        closed: asyncio.Future[int | None] = loop.create_future()

        class Client(WSListener):  # type: ignore[misc]
            def on_ws_frame(self, transport: Any, frame: Any) -> None:
                if frame.msg_type == WSMsgType.CLOSE:
                    if not closed.done():
                        closed.set_result(frame.get_close_code())
                    transport.send_close(frame.get_close_code())
                    transport.disconnect()
                else:
                    got.append((frame.msg_type, frame.get_payload_as_bytes()[:12]))

        server = await ws_create_server(lambda r: Server(fanout), "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        tr, _ = await ws_connect(Client, f"ws://127.0.0.1:{port}/")
        while not server_side:
            await asyncio.sleep(0.01)
        s = server_side[0]
        conn = Conn("c", s)
        tr.underlying_transport.pause_reading()  # a slow reader: the server's buffers fill
        impl.broadcast([conn], b"first", MESSAGE)
        s.send_text(b"reply-1", MESSAGE)
        for i in range(n_burst):
            impl.broadcast([conn], b"%05d" % i + big, MESSAGE)
        await asyncio.sleep(0.2)
        paused = s.paused
        queued = s.queued_frames
        s.send_text(b"typing", EPHEMERAL)  # behind: shed
        s.send_binary(b"last", MESSAGE)
        s.close(1001, "bye")
        tr.underlying_transport.resume_reading()
        code = await asyncio.wait_for(closed, 20)
        assert paused and queued > 0, (paused, queued)
        server.close()
        return got, code, s.shed

    got, code, shed = uvloop.run(go())
    assert code == 1001
    # the close dropped what was still queued: a gap-free prefix of the burst came first
    assert got[:2] == [(WSMsgType.TEXT, b"first"), (WSMsgType.TEXT, b"reply-1")]
    burst = [p for t, p in got[2:]]
    assert burst == [b"%05d" % i + big[:7] for i in range(len(burst))]
    assert shed == 1


# ---------------------------------------------------------------- direct writes (compiled)


class SocketTransport(FakeTransport):
    """A transport over one end of a real socket pair, with uvloop's flow control: its
    buffer holds what the socket did not take, ``write`` tries the socket first when it
    holds nothing, pauses the protocol above ``high`` (synchronously) and ``drain``
    moves the buffer to the socket and resumes at ``low`` or below."""

    def __init__(self, sock: Any) -> None:
        super().__init__()
        self.sock = sock
        self.buf = bytearray()
        self.low = 0
        self.limits: list[tuple[Any, Any]] = []

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self.sock if name == "socket" else default

    def set_write_buffer_limits(self, high: Any = None, low: Any = None) -> None:
        self.limits.append((high, low))
        self.high = high
        self.low = high // 4 if low is None else low

    def get_write_buffer_size(self) -> int:
        return len(self.buf)

    def write(self, data: Any) -> None:
        data = bytes(data)
        self.events.append(("write", data))
        if not self.buf:
            try:
                data = data[self.sock.send(data):]
            except BlockingIOError:
                pass
        self.buf += data
        if not self.paused and len(self.buf) > self.high:
            self.paused = True
            self.listener.pause_writing()

    def drain(self) -> None:
        while self.buf:
            try:
                del self.buf[: self.sock.send(self.buf)]
            except BlockingIOError:
                break
        if self.paused and len(self.buf) <= self.low:
            self.paused = False
            self.listener.resume_writing()


def _direct_peer(mod: Any, fanout: Any, loop: FakeLoop, sndbuf: int | None = None) -> tuple[Peer, Any]:
    import socket

    a, b = socket.socketpair()
    a.setblocking(False)
    b.setblocking(False)
    if sndbuf is not None:
        a.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, sndbuf)
        b.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, sndbuf)
    p = Peer(mod, fanout, loop, raw=SocketTransport(a))
    p.listener.attach(p.transport)
    return p, b


def _read_all(sock: Any) -> bytes:
    out = bytearray()
    while True:
        try:
            chunk = sock.recv(1 << 20)
        except BlockingIOError:
            return bytes(out)
        if not chunk:
            return bytes(out)
        out += chunk


def test_direct_writes_go_to_the_socket_not_the_transport() -> None:
    mod = _compiled()
    loop = FakeLoop()
    fanout = mod.Fanout(loop=loop)
    p, peer = _direct_peer(mod, fanout, loop)
    try:
        assert p.listener.direct and p.raw.limits == [(0, None)]
        mod.broadcast([p.conn], b"one", MESSAGE)
        mod.broadcast([p.conn], b"two", MESSAGE)
        p.listener.send_text(b"three")
        loop.end_iteration()
        assert _read_all(peer) == frame(1, b"one") + frame(1, b"two") + frame(1, b"three")
        assert p.raw.events == []  # not one call into the transport's write
    finally:
        p.raw.sock.close()
        peer.close()


def test_direct_writes_stop_at_a_close_frame_picows_sent_itself() -> None:
    """picows sends close frames of its own (protocol errors, ping timeouts) straight on
    the transport; a direct write must not put a frame after one, nor after the
    disconnect (``release``)."""
    from picows import WSCloseCode

    mod = _compiled()
    loop = FakeLoop()
    fanout = mod.Fanout(loop=loop)
    p, peer = _direct_peer(mod, fanout, loop)
    q, qpeer = _direct_peer(mod, fanout, loop)
    try:
        mod.broadcast([p.conn, q.conn], b"before", MESSAGE)
        loop.end_iteration()
        p.transport.send_close(WSCloseCode.PROTOCOL_ERROR)
        mod.broadcast([p.conn, q.conn], b"after", MESSAGE)
        loop.end_iteration()
        assert _read_all(peer) == frame(1, b"before") + close_frame(1002, "")
        assert _read_all(qpeer) == frame(1, b"before") + frame(1, b"after")
        q.listener.release()  # what on_ws_disconnected does
        mod.broadcast([q.conn], b"gone", MESSAGE)
        loop.end_iteration()
        assert _read_all(qpeer) == b""
    finally:
        for s in (p.raw.sock, peer, q.raw.sock, qpeer):
            s.close()


def _client_frame(op: int, payload: bytes) -> bytes:
    """A masked client-to-server frame (payload under 126 bytes)."""
    mask = b"\x11\x22\x33\x44"
    return bytes((0x80 | op, 0x80 | len(payload))) + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


def _split_frames(data: bytes) -> list[tuple[int, bytes]]:
    """(opcode, payload) of each unmasked server frame in ``data``; the tail must be whole."""
    out = []
    pos = 0
    while pos < len(data):
        op, n = data[pos] & 0x0F, data[pos + 1] & 0x7F
        pos += 2
        if n == 126:
            n, pos = struct.unpack_from("!H", data, pos)[0], pos + 2
        elif n == 127:
            n, pos = struct.unpack_from("!Q", data, pos)[0], pos + 8
        out.append((op, data[pos:pos + n]))
        pos += n
    assert pos == len(data), "a partial frame at the end"
    return out


def test_on_uvloop_the_listener_stands_in_for_picows_protocol() -> None:
    """On uvloop a direct listener becomes the socket transport's protocol, in front of
    picows': received frames still reach ``on_ws_frame``. When picows answers a client's
    protocol error with a close frame of its own (inside ``buffer_updated``), nothing
    the fan-out writes afterwards follows that frame onto the wire, although a flush no
    longer reads the transport's flags; and the disconnect releases the listener even
    when ``on_ws_disconnected`` does not."""
    import asyncio
    import base64
    import os

    import uvloop
    from picows import ws_create_server

    mod = _compiled()

    async def go() -> tuple[bytes, list[bytes], bool, bool]:
        loop = asyncio.get_running_loop()
        fanout = mod.Fanout(loop=loop)
        side: list[Any] = []
        received: list[bytes] = []
        gone: list[asyncio.Future[None]] = [loop.create_future(), loop.create_future()]
        conns: list[Any] = []

        class Server(mod.FanoutListener):  # type: ignore[misc, name-defined]
            def on_ws_connected(self, transport: Any) -> None:
                self.attach(transport)
                side.append(self)

            def on_ws_frame(self, transport: Any, frame: Any) -> None:
                received.append(frame.get_payload_as_bytes())

            def on_ws_disconnected(self, transport: Any) -> None:
                gone[side.index(self)].set_result(None)  # (no release() here, on purpose)

            def buffer_updated(self, nbytes: int) -> None:
                super().buffer_updated(nbytes)
                if self.transport.is_close_frame_sent and conns:
                    # within the same callback, long before picows' own disconnect
                    mod.broadcast(conns, b"after", MESSAGE)
                    fanout.flush()

        # (as chathub's server: uvloop's own transports, not aiofastnet's)
        server = await ws_create_server(lambda r: Server(fanout), "127.0.0.1", 0, use_aiofastnet=False)
        port = server.sockets[0].getsockname()[1]

        async def client() -> tuple[Any, Any, Any]:
            n = len(side)
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            key = base64.b64encode(os.urandom(16)).decode()
            writer.write((f"GET / HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\nConnection: "
                          f"Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n").encode())
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
            assert head.startswith(b"HTTP/1.1 101"), head
            while len(side) == n:
                await asyncio.sleep(0.001)
            return reader, writer, side[n]

        # a client that just goes away: the disconnect alone stops the writes
        _, w2, s2 = await client()
        w2.close()
        await asyncio.wait_for(gone[0], 5)
        released = s2.closing
        mod.broadcast([Conn("c2", s2)], b"to nobody", MESSAGE)
        fanout.flush()

        reader, writer, s = await client()
        hooked = s.direct and s.transport.underlying_transport.get_protocol() is s
        conns.append(Conn("c", s))
        writer.write(_client_frame(0x1, b"hello"))
        for _ in range(500):
            if received:
                break
            await asyncio.sleep(0.01)
        mod.broadcast(conns, b"before", MESSAGE)
        await asyncio.sleep(0.05)  # flushed at the end of this iteration
        writer.write(_client_frame(0x3, b""))  # opcode 3 is reserved: picows closes with 1002
        data = await asyncio.wait_for(reader.read(), 5)  # until picows disconnects
        await asyncio.wait_for(gone[1], 5)
        writer.close()
        server.close()
        return data, received, hooked, released

    data, received, hooked, released = uvloop.run(go())
    assert hooked
    assert received == [b"hello"]
    frames = _split_frames(data)
    assert frames[0] == (0x1, b"before")
    assert [op for op, _ in frames[1:]] == [0x8], frames  # the close frame, and nothing after it
    assert struct.unpack("!H", frames[1][1][:2])[0] == 1002
    assert released


def test_direct_partial_write_keeps_the_byte_order_through_pause_and_resume() -> None:
    """The socket takes part of a write: the rest goes to the transport, which pauses
    the listener at once; later frames queue (messages) or are shed (ephemeral) until
    the transport has drained, and the stream the peer reads is every message frame
    in order."""
    mod = _compiled()
    loop = FakeLoop()
    fanout = mod.Fanout(loop=loop)
    p, peer = _direct_peer(mod, fanout, loop, sndbuf=4096)
    try:
        big = [bytes([65 + i]) * 50_000 for i in range(3)]
        want = b""
        for payload in big:
            mod.broadcast([p.conn], payload, MESSAGE)
            want += frame(1, payload)
            loop.end_iteration()
        assert p.listener.paused and p.raw.buf  # the socket took only part of the first
        assert p.listener.queued_frames == 2
        p.listener.send_text(b"typing", EPHEMERAL)  # shed while behind
        assert p.listener.shed == 1
        got = bytearray()
        for _ in range(10_000):
            got += _read_all(peer)
            p.raw.drain()
            if len(got) == len(want) and not p.listener.paused and not p.listener.queued_frames:
                break
        got += _read_all(peer)
        assert bytes(got) == want
        # resumed: direct again
        n = len(p.raw.events)
        mod.broadcast([p.conn], b"after", MESSAGE)
        loop.end_iteration()
        assert _read_all(peer) == frame(1, b"after") and len(p.raw.events) == n
    finally:
        p.raw.sock.close()
        peer.close()


def test_no_direct_writes_without_flow_control_or_socket(impl: Any) -> None:
    loop, fanout, (p,) = make(impl)
    p.listener.attach(p.transport)  # fake: no set_write_buffer_limits, fd -1
    assert p.listener.direct is False
