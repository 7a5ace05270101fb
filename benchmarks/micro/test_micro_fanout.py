"""Micro-benchmarks: the fan-out (``chathub._fastpath._fanout``), compiled vs twin.

Not part of the test run (``testpaths = ["tests"]``). Run on a release build::

    python -m pytest benchmarks/micro/test_micro_fanout.py --benchmark-only

One round is one broadcast of a 200-byte message to N = 1000 hub ``Conn``s, then the
end-of-iteration flush (one write per connection); ``extra_info["ns_per_recipient"]`` is
the round's mean time / N. Recipients are picows ``WSTransport``s over

* ``fake``: an in-memory transport whose methods are C builtins (``write`` discards), so
  the figure is the fan-out's own cost plus picows' write path minus the syscall;
* ``tcp``: real loopback TCP connections under uvloop (the peers are drained between
  rounds, untimed), so every flush is a ``send()`` syscall, as on a server.

Baselines: ``previous_path`` is the send path before the fan-out, replicated
(``Node._broadcast`` → ``WsConnection.send_text`` → ``_send`` → ``transport.send``, one
write per frame); ``direct`` is the floor of that approach (a bare loop calling
``transport.send``). ``cork_only`` times the broadcast without its flush (the
per-recipient C-level work); ``burst`` sends 10 broadcasts in one loop iteration
(corking: one write per connection instead of ten; ns per recipient per message).
"""

from __future__ import annotations

import asyncio
import collections
import importlib
import logging
import resource
import socket
from typing import Any, Callable, Iterator

import pytest
from picows import WSMsgType, WSTransport

from chathub.core.hub import MESSAGE, Conn

N = 1000
BURST = 10
PAYLOAD = b'{"ev":"message","room":"general","seq":4242,"msg_id":"5f0c1e2d3c4b5a69788796a5b4c3d2e1",' \
          b'"from":42,"text":"hello everyone, this is a chat message","ts":1764350000123}'
PAYLOAD = PAYLOAD + b" " * (200 - len(PAYLOAD))
IMPLS = ["compiled", "python"]
LOG = logging.getLogger("bench.fanout")


def module(impl: str) -> Any:
    return importlib.import_module("chathub._fastpath._fanout" if impl == "compiled" else "chathub._fastpath._fanout_py")


class NoLoop:
    """The benchmark flushes by hand; call_soon only has to be cheap."""

    def call_soon(self, cb: Any, *args: Any) -> None:
        pass

    def call_later(self, delay: float, cb: Any, *args: Any) -> None:
        pass

    def create_future(self) -> None:
        return None


class _Sock:
    def fileno(self) -> int:
        return -1


class FakeTransport:
    """Methods are C builtins bound to constants: the fake costs as little as possible."""

    def __init__(self, sink: Any) -> None:
        self.write = sink.append  # discards (deque(maxlen=0))
        self.get_write_buffer_size = (1).__int__  # never 0: picows hands the bytes to write()
        self.is_closing = (False).__bool__

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return _Sock() if name == "socket" else default


def per_recipient(benchmark: Any, fn: Callable[[], object], n: int, setup: Callable[[], object] | None = None) -> None:
    if setup is None:
        benchmark(fn)
    else:
        benchmark.pedantic(fn, setup=setup, rounds=300, iterations=1, warmup_rounds=10)
    benchmark.extra_info["ns_per_recipient"] = round(benchmark.stats.stats.mean / n * 1e9, 1)


def conns_for(impl: str, transports: list[WSTransport]) -> tuple[Any, list[Conn]]:
    mod = module(impl)
    fanout = mod.Fanout(loop=NoLoop())
    conns = []
    for i, t in enumerate(transports):
        lst = mod.FanoutListener(fanout)
        lst.transport = t
        conns.append(Conn(f"c-{i}", lst))
    return fanout, conns


class PreviousHandle:
    """The send path before the fan-out, as it was: ``Node._broadcast`` called
    ``send_text`` on this (``WsConnection``), which checked the queue and called
    ``transport.send`` (picows copies the frame into its buffer and writes it)."""

    __slots__ = ("transport", "closing", "_paused", "_queue")

    def __init__(self, transport: WSTransport) -> None:
        self.transport = transport
        self.closing = False
        self._paused = False
        self._queue: Any = None

    def _send(self, mt: Any, payload: bytes, kind: int) -> None:
        if self.closing:
            return
        if not self._paused and not self._queue:
            self.transport.send(mt, payload)
            return
        raise AssertionError("not exercised")

    def send_text(self, payload: bytes, kind: int) -> None:
        self._send(WSMsgType.TEXT, payload, kind)


def previous_broadcast(conns: Any, payload: bytes, kind: int) -> int:
    """``Node._broadcast`` before the fan-out (gzip branch not taken: small payload)."""
    n = 0
    for c in conns:
        h = c.handle
        if h is None:
            continue
        h.send_text(payload, kind)
        n += 1
    return n


# ---------------------------------------------------------------- fake transports


@pytest.fixture(scope="module")
def fake_transports() -> list[WSTransport]:
    sink: collections.deque[Any] = collections.deque(maxlen=0)
    return [WSTransport(False, FakeTransport(sink), LOG, NoLoop()) for _ in range(N)]  # type: ignore[call-arg]  # not public API


@pytest.mark.parametrize("impl", IMPLS)
def test_broadcast_fake(benchmark: Any, impl: str, fake_transports: list[WSTransport]) -> None:
    fanout, conns = conns_for(impl, fake_transports)
    broadcast = module(impl).broadcast

    def round_() -> None:
        broadcast(conns, PAYLOAD, MESSAGE)
        fanout.flush()

    per_recipient(benchmark, round_, N)


@pytest.mark.parametrize("impl", IMPLS)
def test_cork_only_fake(benchmark: Any, impl: str, fake_transports: list[WSTransport]) -> None:
    fanout, conns = conns_for(impl, fake_transports)
    broadcast = module(impl).broadcast
    per_recipient(benchmark, lambda: broadcast(conns, PAYLOAD, MESSAGE), N, setup=fanout.flush)


def test_direct_fake(benchmark: Any, fake_transports: list[WSTransport]) -> None:
    """Before the fan-out: a Python loop, one ``transport.send`` (copy + write) each."""
    conns = [Conn(f"c-{i}", t) for i, t in enumerate(fake_transports)]
    text = WSMsgType.TEXT

    def round_() -> None:
        for c in conns:
            h = c.handle
            if h is None:
                continue
            h.send(text, PAYLOAD)

    per_recipient(benchmark, round_, N)


def test_previous_path_fake(benchmark: Any, fake_transports: list[WSTransport]) -> None:
    conns = [Conn(f"c-{i}", PreviousHandle(t)) for i, t in enumerate(fake_transports)]
    per_recipient(benchmark, lambda: previous_broadcast(conns, PAYLOAD, MESSAGE), N)


# ---------------------------------------------------------------- loopback TCP


class _Proto(asyncio.Protocol):
    pass


@pytest.fixture(scope="module")
def tcp() -> Iterator[tuple[list[WSTransport], Callable[[], None]]]:
    import uvloop

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < 4 * N:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 8 * N), hard))
    loop = uvloop.new_event_loop()
    lsock = socket.socket()
    lsock.bind(("127.0.0.1", 0))
    lsock.listen(N)
    peers: list[socket.socket] = []
    transports: list[WSTransport] = []
    for _ in range(N):
        c = socket.create_connection(lsock.getsockname())
        s, _ = lsock.accept()
        c.setblocking(False)
        peers.append(c)
        tr, _ = loop.run_until_complete(loop.create_connection(_Proto, sock=s))
        transports.append(WSTransport(False, tr, LOG, loop))  # type: ignore[call-arg]  # not public API

    def drain() -> None:
        for c in peers:
            try:
                while c.recv(1 << 20):
                    pass
            except BlockingIOError:
                pass

    yield transports, drain
    for t in transports:
        t.underlying_transport.abort()
    loop.run_until_complete(asyncio.sleep(0.01))
    for c in peers:
        c.close()
    lsock.close()
    loop.close()


@pytest.mark.parametrize("impl", IMPLS)
def test_broadcast_tcp(benchmark: Any, impl: str, tcp: Any) -> None:
    transports, drain = tcp
    fanout, conns = conns_for(impl, transports)
    broadcast = module(impl).broadcast

    def round_() -> None:
        broadcast(conns, PAYLOAD, MESSAGE)
        fanout.flush()

    per_recipient(benchmark, round_, N, setup=drain)


def test_direct_tcp(benchmark: Any, tcp: Any) -> None:
    transports, drain = tcp
    conns = [Conn(f"c-{i}", t) for i, t in enumerate(transports)]
    text = WSMsgType.TEXT

    def round_() -> None:
        for c in conns:
            h = c.handle
            if h is None:
                continue
            h.send(text, PAYLOAD)

    per_recipient(benchmark, round_, N, setup=drain)


def test_previous_path_tcp(benchmark: Any, tcp: Any) -> None:
    transports, drain = tcp
    conns = [Conn(f"c-{i}", PreviousHandle(t)) for i, t in enumerate(transports)]
    per_recipient(benchmark, lambda: previous_broadcast(conns, PAYLOAD, MESSAGE), N, setup=drain)


@pytest.mark.parametrize("impl", IMPLS)
def test_burst_tcp(benchmark: Any, impl: str, tcp: Any) -> None:
    """Ten broadcasts in one loop iteration: corked into one write per connection."""
    transports, drain = tcp
    fanout, conns = conns_for(impl, transports)
    broadcast = module(impl).broadcast

    def round_() -> None:
        for _ in range(BURST):
            broadcast(conns, PAYLOAD, MESSAGE)
        fanout.flush()

    per_recipient(benchmark, round_, N * BURST, setup=drain)


def test_burst_previous_path_tcp(benchmark: Any, tcp: Any) -> None:
    """Ten broadcasts on the previous path: ten writes (syscalls) per connection."""
    transports, drain = tcp
    conns = [Conn(f"c-{i}", PreviousHandle(t)) for i, t in enumerate(transports)]

    def round_() -> None:
        for _ in range(BURST):
            previous_broadcast(conns, PAYLOAD, MESSAGE)

    per_recipient(benchmark, round_, N * BURST, setup=drain)
