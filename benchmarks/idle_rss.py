#!/usr/bin/env python3
"""Server memory per idle connection: authenticated and joined to one room.

Starts ``python -m chathub serve`` (``CHATHUB_JWT_SECRET`` set, ``CHATHUB_RATE_LIMITS=off``,
a temporary data dir), opens ``--warm`` connections (allocates the steady-state structures:
SQLite cache, interned strings, free lists), samples the server's RSS, opens ``--conns``
more (each its own user, ``--room-size`` connections a room, source addresses spread over
127.0.0.2…), waits until the server is quiet, samples again and prints the RSS growth per
connection (VmRSS from /proc/PID/status; also RssAnon).

    python benchmarks/idle_rss.py --conns 5000
    CHATHUB_NO_EXTENSIONS=1 python benchmarks/idle_rss.py --conns 5000
    python benchmarks/idle_rss.py --conns 2000 --tracemalloc   # where the bytes go (Python heap)
    python benchmarks/idle_rss.py --logger-adapter             # without picows' child loggers

With ``--tracemalloc`` the server runs with ``PYTHONTRACEMALLOC`` and prints the
allocation sites that grew most between the two samples (``SIGUSR1`` snapshots; only
allocations through Python's allocators, i.e. objects and PyMem buffers, not libuv's or
the kernel's).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
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

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from chathub.auth import mint_token  # noqa: E402

SECRET = "idle-rss-secret-0123456789-abcdefghijklmnopqrstuvwxyz"

# Runs inside the server process (with --tracemalloc): snapshot on SIGUSR1, diff on SIGUSR2.
TRACE_HOOK = r"""
import signal, tracemalloc, sys, runpy
_snap = {}
def _take(signum, frame):
    _snap["a"] = tracemalloc.take_snapshot()
def _diff(signum, frame):
    b = tracemalloc.take_snapshot()
    flt = [tracemalloc.Filter(False, tracemalloc.__file__)]
    stats = b.filter_traces(flt).compare_to(_snap["a"].filter_traces(flt), "lineno")
    total = sum(s.size_diff for s in stats)
    print("TRACEMALLOC total growth %d bytes" % total, flush=True)
    for s in stats[:25]:
        f = s.traceback[0]
        print("TRACEMALLOC %9d B %7d blocks  %s:%d" % (s.size_diff, s.count_diff, f.filename, f.lineno), flush=True)
signal.signal(signal.SIGUSR1, _take)
signal.signal(signal.SIGUSR2, _diff)
"""

# With --logger-adapter: the server passes picows a LoggerAdapter instead of a logger name,
# so picows does not create a child logging.Logger for every connection (it does that only
# for plain Logger instances), as chathub/server/app.py would with that change.
ADAPTER_HOOK = r"""
import logging
import chathub.server.app as _app
_orig = _app.ws_create_server
def _patched(*args, **kw):
    name = kw.get("logger_name")
    if isinstance(name, str):
        kw["logger_name"] = logging.LoggerAdapter(logging.getLogger("picows." + name), {})
    return _orig(*args, **kw)
_app.ws_create_server = _patched
"""

RUN = r"""
import sys, runpy
sys.argv = ["chathub"] + sys.argv[1:]
runpy.run_module("chathub", run_name="__main__")
"""


def rss(pid: int) -> dict[str, int]:
    out = {}
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            k, _, v = line.partition(":")
            if k in ("VmRSS", "RssAnon", "RssFile"):
                out[k] = int(v.split()[0]) * 1024
    return out


def start_server(data_dir: str, tracemalloc: bool, adapter: bool) -> tuple[subprocess.Popen[bytes], int, Path]:
    ready = Path(data_dir) / "ready"
    log = Path(data_dir) / "server.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith("CHATHUB_") or k == "CHATHUB_NO_EXTENSIONS"}
    env.update(CHATHUB_JWT_SECRET=SECRET, CHATHUB_RATE_LIMITS="off", CHATHUB_DATA_DIR=str(Path(data_dir) / "data"),
               CHATHUB_LOG_LEVEL="warning", CHATHUB_MAX_CONNECTIONS_PER_USER="3")
    args = ["serve", "--host", "127.0.0.1", "--port", "0", "--ready-file", str(ready)]
    if tracemalloc:
        env["PYTHONTRACEMALLOC"] = "1"
    hooks = (TRACE_HOOK if tracemalloc else "") + (ADAPTER_HOOK if adapter else "")
    cmd = [sys.executable, "-c", hooks + RUN, *args] if hooks else [sys.executable, "-m", "chathub", *args]
    fh = open(log, "wb")
    proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, env=env, cwd=ROOT,
                            preexec_fn=_raise_nofile)
    fh.close()
    deadline = time.monotonic() + 30
    while not (ready.exists() and ready.read_text().strip()):
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(log.read_text())
        time.sleep(0.05)
    return proc, int(ready.read_text()), log


def _raise_nofile() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


class Member(WSListener):  # type: ignore[misc]
    def __init__(self, room: str, done: asyncio.Future[Any]) -> None:
        super().__init__()
        self.room = room
        self.done = done
        self.frames = 0

    def on_ws_frame(self, transport: Any, frame: Any) -> None:
        self.frames += 1
        if frame.msg_type != WSMsgType.TEXT:
            return
        d = orjson.loads(frame.get_payload_as_bytes())
        if d.get("ev") == "ready":
            transport.send(WSMsgType.TEXT, orjson.dumps({"op": "join", "room": self.room, "id": 1}))
        elif d.get("id") == 1 and not self.done.done():
            if d.get("ok"):
                self.done.set_result(d)
            else:
                self.done.set_exception(RuntimeError(str(d)))


async def open_many(port: int, first_user: int, n: int, room_size: int, concurrency: int) -> list[Any]:
    loop = asyncio.get_running_loop()
    sem = asyncio.Semaphore(concurrency)
    kept: list[Any] = []

    async def one(i: int) -> None:
        uid = first_user + i
        sock_factory = spread_source(port, uid)

        async with sem:
            done: asyncio.Future[Any] = loop.create_future()
            room = f"r{uid // room_size}"
            url = f"ws://127.0.0.1:{port}/ws?token={mint_token(SECRET, uid, 0)}"
            tr, lst = await ws_connect(lambda: Member(room, done), url, socket_factory=sock_factory,
                                       read_buffer_init_size=4096)
            await asyncio.wait_for(done, 60)
            kept.append((tr, lst))

    await asyncio.gather(*(one(i) for i in range(n)))
    return kept


async def quiet(members: list[Any], settle: float = 1.0) -> None:
    """Wait until no frame arrived for ``settle`` seconds (joined events, presence batches)."""
    last = -1
    while True:
        total = sum(m.frames for _, m in members)
        if total == last:
            return
        last = total
        await asyncio.sleep(settle)


async def main_async(a: argparse.Namespace) -> dict[str, Any]:
    _raise_nofile()
    with tempfile.TemporaryDirectory() as d:
        proc, port, log = start_server(d, a.tracemalloc, a.logger_adapter)
        try:
            warm = await open_many(port, 1, a.warm, a.room_size, a.concurrency)
            await quiet(warm, 1.5)
            time.sleep(0.5)
            base = rss(proc.pid)
            if a.tracemalloc:
                proc.send_signal(signal.SIGUSR1)
                await asyncio.sleep(3)
            t0 = time.monotonic()
            conns = await open_many(port, 100_000, a.conns, a.room_size, a.concurrency)
            t_open = time.monotonic() - t0
            await quiet(warm + conns, 2.0)
            await asyncio.sleep(1.0)
            after = rss(proc.pid)
            if a.tracemalloc:
                proc.send_signal(signal.SIGUSR2)
                await asyncio.sleep(5)
            per = {k: (after[k] - base[k]) / a.conns for k in base}
            impl = "python" if os.environ.get("CHATHUB_NO_EXTENSIONS", "") not in ("", "0") else "compiled"
            result = {
                "implementation": impl, "conns": a.conns, "warm": a.warm, "room_size": a.room_size,
                "open_s": round(t_open, 1), "rss_base_mb": round(base["VmRSS"] / 2**20, 1),
                "rss_after_mb": round(after["VmRSS"] / 2**20, 1),
                "bytes_per_conn": round(per["VmRSS"]), "anon_bytes_per_conn": round(per["RssAnon"]),
                "logger_adapter": a.logger_adapter,
            }
            for _tr, _ in warm + conns:
                _tr.disconnect()
            return result
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
            if a.tracemalloc:
                print("\n".join(line for line in log.read_text().splitlines() if line.startswith("TRACEMALLOC")))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--conns", type=int, default=5000)
    p.add_argument("--warm", type=int, default=200)
    p.add_argument("--room-size", type=int, default=100)
    p.add_argument("--concurrency", type=int, default=200)
    p.add_argument("--tracemalloc", action="store_true")
    p.add_argument("--logger-adapter", action="store_true",
                   help="patch the server to pass picows a LoggerAdapter (no child logger per connection)")
    a = p.parse_args()
    import uvloop

    print(json.dumps(uvloop.run(main_async(a))))


if __name__ == "__main__":
    main()
