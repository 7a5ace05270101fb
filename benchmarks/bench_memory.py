#!/usr/bin/env python3
"""Server memory per room membership.

Starts ``python -m chathub serve`` (``CHATHUB_JWT_SECRET`` set, ``CHATHUB_RATE_LIMITS=off``,
a temporary data dir, ``CHATHUB_MAX_ROOMS_PER_CONNECTION`` = ``--rooms-per-conn``), opens
``--warm`` connections that each join ``--rooms-per-conn`` warm-up rooms (allocates the
steady-state structures: SQLite cache, free lists, dict/set sizes), then ``--conns``
connections (each its own user, source addresses spread over 127.0.0.2…) that only
authenticate (wait for ``ready``). When the server is quiet its RSS is sampled (A); then
every one of those connections joins ``--rooms-per-conn`` rooms (its joins sent
``--in-flight`` at a time ahead of their acks), the server is left to go quiet and RSS is sampled again (B).
Result: (B − A) ÷ (conns × rooms-per-conn) bytes per membership (VmRSS, also RssAnon).

Room layout (``--layout``):

* ``shared`` (default): every connection joins the same ``--rooms-per-conn`` rooms, so a
  room has ``--conns`` members and the per-room cost (``Room``, ``RoomMeta``, its SQLite
  row) is spread over them: the marginal cost of one membership.
* ``rooms-of-N`` (e.g. ``rooms-of-100``): rooms of N members, so per-room costs are
  included (≈ conns × rooms-per-conn ÷ N rooms).

``CHATHUB_LARGE_ROOM_THRESHOLD`` is set to ``--large-room`` (default 10) so that the joins
produce one batched ``presence_batch`` per room and tick instead of an O(N²) storm of
``joined`` events (which would measure the load generator, not memory).

    python benchmarks/bench_memory.py                           # 1,000 × 50, shared rooms
    python benchmarks/bench_memory.py --conns 2000 --rooms-per-conn 20
    python benchmarks/bench_memory.py --layout rooms-of-100
    CHATHUB_NO_EXTENSIONS=1 python benchmarks/bench_memory.py
    python benchmarks/bench_memory.py --tracemalloc             # where the bytes go (Python heap)
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import orjson
from _loopback import spread_source
from picows import WSListener, WSMsgType, ws_connect

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(HERE))

from chathub.auth import mint_token  # noqa: E402
from idle_rss import RUN, TRACE_HOOK, _raise_nofile, rss  # noqa: E402

SECRET = "bench-memory-secret-0123456789-abcdefghijklmnopqrstuvwxyz"


def start_server(data_dir: str, extra_env: dict[str, str],
                 tracemalloc: bool = False) -> tuple[subprocess.Popen[bytes], int, Path]:
    ready = Path(data_dir) / "ready"
    log = Path(data_dir) / "server.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith("CHATHUB_") or k == "CHATHUB_NO_EXTENSIONS"}
    env.update(CHATHUB_JWT_SECRET=SECRET, CHATHUB_RATE_LIMITS="off", CHATHUB_DATA_DIR=str(Path(data_dir) / "data"),
               CHATHUB_LOG_LEVEL="warning", CHATHUB_MAX_CONNECTIONS_PER_USER="3")
    env.update(extra_env)
    args = ["serve", "--host", "127.0.0.1", "--port", "0", "--ready-file", str(ready)]
    cmd = [sys.executable, "-m", "chathub", *args]
    if tracemalloc:
        env["PYTHONTRACEMALLOC"] = "1"
        cmd = [sys.executable, "-c", TRACE_HOOK + RUN, *args]
    fh = open(log, "wb")
    proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT,
                            env=env, cwd=ROOT, preexec_fn=_raise_nofile)
    fh.close()
    deadline = time.monotonic() + 30
    while not (ready.exists() and ready.read_text().strip()):
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(log.read_text())
        time.sleep(0.05)
    return proc, int(ready.read_text()), log


class Client(WSListener):  # type: ignore[misc]
    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__()
        self.ready: asyncio.Future[Any] = loop.create_future()
        self.joined: asyncio.Future[Any] | None = None
        self.pending = 0
        self.frames = 0
        self.transport: Any = None
        self.to_send: list[tuple[int, str]] = []

    def on_ws_connected(self, transport: Any) -> None:
        self.transport = transport

    def join(self, rooms: list[str], in_flight: int) -> asyncio.Future[Any]:
        """Join ``rooms``, at most ``in_flight`` joins unacknowledged at a time."""
        loop = asyncio.get_running_loop()
        self.joined = loop.create_future()
        self.pending = len(rooms)
        self.to_send = list(enumerate(rooms))[::-1]
        for _ in range(min(in_flight, len(rooms))):
            self._next()
        return self.joined

    def _next(self) -> None:
        if self.to_send:
            i, room = self.to_send.pop()
            self.transport.send(WSMsgType.TEXT, orjson.dumps({"op": "join", "room": room, "id": 1000 + i}))

    def on_ws_frame(self, transport: Any, frame: Any) -> None:
        self.frames += 1
        if frame.msg_type != WSMsgType.TEXT:
            return
        d = orjson.loads(frame.get_payload_as_bytes())
        if d.get("ev") == "ready":
            if not self.ready.done():
                self.ready.set_result(d)
        elif isinstance(d.get("id"), int) and d["id"] >= 1000 and self.joined is not None:
            if not d.get("ok"):
                if not self.joined.done():
                    self.joined.set_exception(RuntimeError(str(d)))
                return
            self.pending -= 1
            self._next()
            if self.pending == 0 and not self.joined.done():
                self.joined.set_result(None)


async def open_many(port: int, first_user: int, n: int, concurrency: int) -> list[Client]:
    loop = asyncio.get_running_loop()
    sem = asyncio.Semaphore(concurrency)
    out: list[Client] = []

    async def one(i: int) -> None:
        uid = first_user + i
        sock_factory = spread_source(port, uid)

        async with sem:
            url = f"ws://127.0.0.1:{port}/ws?token={mint_token(SECRET, uid, 0)}"
            _tr, c = await ws_connect(lambda: Client(loop), url, socket_factory=sock_factory,
                                      read_buffer_init_size=4096)
            await asyncio.wait_for(c.ready, 60)
            out.append(c)

    await asyncio.gather(*(one(i) for i in range(n)))
    return out


async def join_all(clients: list[Client], rooms_of: Any, concurrency: int, in_flight: int) -> None:
    sem = asyncio.Semaphore(concurrency)

    async def one(i: int, c: Client) -> None:
        async with sem:
            await asyncio.wait_for(c.join(rooms_of(i), in_flight), 120)

    await asyncio.gather(*(one(i, c) for i, c in enumerate(clients)))


async def quiet(clients: list[Client], settle: float) -> None:
    last = -1
    while True:
        total = sum(c.frames for c in clients)
        if total == last:
            return
        last = total
        await asyncio.sleep(settle)


async def main_async(a: argparse.Namespace) -> dict[str, Any]:
    _raise_nofile()
    k = a.rooms_per_conn
    if a.layout == "shared":
        def rooms_of(i: int, prefix: str = "m") -> list[str]:
            return [f"{prefix}{j}" for j in range(k)]
    else:
        size = int(a.layout.removeprefix("rooms-of-"))

        def rooms_of(i: int, prefix: str = "m") -> list[str]:
            # connection i joins k rooms; room r gets `size` members
            return [f"{prefix}{(i // size) * k + j}" for j in range(k)]
    env = {"CHATHUB_MAX_ROOMS_PER_CONNECTION": str(max(k, 50)),
           "CHATHUB_LARGE_ROOM_THRESHOLD": str(a.large_room)}
    with tempfile.TemporaryDirectory() as d:
        proc, port, log = start_server(d, env, a.tracemalloc)
        try:
            warm = await open_many(port, 1, a.warm, a.concurrency)
            await join_all(warm, lambda i: rooms_of(i, "w"), a.concurrency, a.in_flight)
            conns = await open_many(port, 100_000, a.conns, a.concurrency)
            everyone = warm + conns
            await quiet(everyone, 1.5)
            await asyncio.sleep(1.0)
            before = rss(proc.pid)
            if a.tracemalloc:
                proc.send_signal(signal.SIGUSR1)
                await asyncio.sleep(3)
            t0 = time.monotonic()
            await join_all(conns, rooms_of, a.concurrency, a.in_flight)
            t_join = time.monotonic() - t0
            await quiet(everyone, 2.0)
            await asyncio.sleep(1.0)
            after = rss(proc.pid)
            if a.tracemalloc:
                proc.send_signal(signal.SIGUSR2)
                await asyncio.sleep(5)
            memberships = a.conns * k
            rooms = len({r for i in range(a.conns) for r in rooms_of(i)})
            impl = "python" if os.environ.get("CHATHUB_NO_EXTENSIONS", "") not in ("", "0") else "compiled"
            result = {
                "implementation": impl, "layout": a.layout, "conns": a.conns, "rooms_per_conn": k,
                "memberships": memberships, "rooms": rooms, "warm": a.warm, "large_room_threshold": a.large_room, "in_flight": a.in_flight,
                "join_s": round(t_join, 1),
                "rss_before_mb": round(before["VmRSS"] / 2**20, 2), "rss_after_mb": round(after["VmRSS"] / 2**20, 2),
                "bytes_per_membership": round((after["VmRSS"] - before["VmRSS"]) / memberships, 1),
                "anon_bytes_per_membership": round((after["RssAnon"] - before["RssAnon"]) / memberships, 1),
            }
            for c in everyone:
                c.transport.disconnect()
            return result
        finally:
            proc.terminate()
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
            if a.tracemalloc:
                print("\n".join(line for line in log.read_text().splitlines() if line.startswith("TRACEMALLOC")))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--conns", type=int, default=1000)
    p.add_argument("--rooms-per-conn", type=int, default=50)
    p.add_argument("--layout", default="shared", help="shared | rooms-of-N")
    p.add_argument("--warm", type=int, default=100)
    p.add_argument("--large-room", type=int, default=10, help="CHATHUB_LARGE_ROOM_THRESHOLD")
    p.add_argument("--concurrency", type=int, default=200)
    p.add_argument("--in-flight", type=int, default=5,
                   help="joins sent ahead of their acks per connection (a burst of 50 grows the server's "
                        "2 KB read buffer of that connection to 4 KB: a per-connection cost, not a membership's)")
    p.add_argument("--repeat", type=int, default=1)
    p.add_argument("--tracemalloc", action="store_true", help="print where the Python heap grew (server side)")
    p.add_argument("--out", help="append the JSON result(s) to this file (a JSON list)")
    a = p.parse_args()
    import uvloop

    results = []
    for _ in range(a.repeat):
        r = uvloop.run(main_async(a))
        print(json.dumps(r), flush=True)
        results.append(r)
    if a.out:
        path = Path(a.out)
        old = json.loads(path.read_text()) if path.exists() else []
        path.write_text(json.dumps(old + results, indent=1) + "\n")


if __name__ == "__main__":
    main()
