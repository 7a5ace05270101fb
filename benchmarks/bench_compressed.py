#!/usr/bin/env python3
"""Compressed broadcast cost against plain: server CPU µs per delivered message.

For each room size (``--sizes``, default 100 and 1000) and mode (``plain``: no extension
offered; ``deflate``: every client offers ``permessage-deflate; client_no_context_takeover;
server_no_context_takeover``, which chathub accepts) a fresh ``python -m chathub serve``
(``CHATHUB_JWT_SECRET``, ``CHATHUB_RATE_LIMITS=off``, a temporary data dir,
``CHATHUB_LARGE_ROOM_THRESHOLD=10`` so the room fills with batched membership events) is
pinned to CPU 0 and this process (uvloop + picows clients) to CPU 1. The N connections
join one room; one of them publishes ``{"op":"send",…}`` with a ≈ 1 KB message event
(random words, so deflate has real work: above the 256-byte deflate threshold) at
``--deliveries-per-s`` ÷ (N − 1) messages/s. After a 1 s warm-up and its drain, the
measured window publishes for ``--seconds`` and waits (at most 20 s more) until every
delivery of those messages has arrived. Receivers only count frames (no inflate, no
parse; only the replies before the join is acked are read), the same cost in
both modes.

Figure: the server's utime + stime (``/proc/PID/stat``) over the window ÷ deliveries
(frames received by the other N − 1 connections in the window). Each (size, mode) runs
``--repeat`` times (interleaved plain/deflate); the median is reported, with the ratio
deflate ÷ plain.

    python benchmarks/bench_compressed.py                      # 100 and 1000, 3 repeats
    python benchmarks/bench_compressed.py --sizes 100 --repeat 1 --seconds 2
    python benchmarks/bench_compressed.py --out benchmarks/results/compressed
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
import zlib
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
from idle_rss import _raise_nofile, rss  # noqa: E402

SECRET = "bench-compressed-secret-0123456789-abcdefghijklmnopqrstuvwxyz"
OFFER = "permessage-deflate; client_no_context_takeover; server_no_context_takeover"
CLK = os.sysconf("SC_CLK_TCK")
WORDS = ("the quick brown fox jumps over lazy dog chat hub room message deliver broadcast server client "
         "socket event json frame deflate window latency buffer kernel python rust cython alpha beta gamma "
         "delta epsilon zeta theta kappa lambda meeting tomorrow lunch release deploy review merge ticket "
         "customer order invoice payment shipping status update weekend coffee thanks please great idea").split()


def cpu_s(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as fh:
        f = fh.read().rsplit(")", 1)[1].split()
    return (int(f[11]) + int(f[12])) / CLK  # utime, stime (fields 14, 15)


def _server_preexec() -> None:
    _raise_nofile()
    os.sched_setaffinity(0, {0})


def start_server(data_dir: str) -> tuple[subprocess.Popen[bytes], int]:
    ready = Path(data_dir) / "ready"
    log = Path(data_dir) / "server.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith("CHATHUB_") or k == "CHATHUB_NO_EXTENSIONS"}
    env.update(CHATHUB_JWT_SECRET=SECRET, CHATHUB_RATE_LIMITS="off", CHATHUB_DATA_DIR=str(Path(data_dir) / "data"),
               CHATHUB_LOG_LEVEL="warning", CHATHUB_LARGE_ROOM_THRESHOLD="10")
    fh = open(log, "wb")
    proc = subprocess.Popen([sys.executable, "-m", "chathub", "serve", "--host", "127.0.0.1", "--port", "0",
                             "--ready-file", str(ready)], stdout=fh, stderr=subprocess.STDOUT, env=env, cwd=ROOT,
                            preexec_fn=_server_preexec)
    fh.close()
    deadline = time.monotonic() + 30
    while not (ready.exists() and ready.read_text().strip()):
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(log.read_text())
        time.sleep(0.05)
    return proc, int(ready.read_text())


class Client(WSListener):  # type: ignore[misc]
    def __init__(self, loop: asyncio.AbstractEventLoop, room: str) -> None:
        super().__init__()
        self.room = room
        self.joined: asyncio.Future[Any] = loop.create_future()
        self.frames = 0
        self.bytes = 0
        self.rsv1 = 0
        self.transport: Any = None

    def on_ws_connected(self, transport: Any) -> None:
        self.transport = transport

    def on_ws_frame(self, transport: Any, frame: Any) -> None:
        self.frames += 1
        if self.joined.done():
            self.bytes += frame.payload_size
            self.rsv1 += frame.rsv1
            return
        if frame.msg_type != WSMsgType.TEXT:
            return
        data = frame.get_payload_as_bytes()
        if frame.rsv1:  # a compressed reply (the join reply lists members: above the threshold)
            data = zlib.decompressobj(-15).decompress(data + b"\x00\x00\xff\xff")
        d = orjson.loads(data)
        if d.get("ev") == "ready":
            transport.send(WSMsgType.TEXT, orjson.dumps({"op": "join", "room": self.room, "id": 1}))
        elif d.get("id") == 1:
            if d.get("ok"):
                self.joined.set_result(d)
            else:
                self.joined.set_exception(RuntimeError(str(d)))


async def open_room(port: int, n: int, deflate: bool) -> tuple[list[Client], bool]:
    loop = asyncio.get_running_loop()
    sem = asyncio.Semaphore(64)
    out: list[Client] = []
    negotiated: list[bool] = []
    headers = {"Sec-WebSocket-Extensions": OFFER} if deflate else None

    async def one(i: int) -> None:
        uid = 1 + i
        sock_factory = spread_source(port, uid, spread=50)

        async with sem:
            url = f"ws://127.0.0.1:{port}/ws?token={mint_token(SECRET, uid, 0)}"
            tr, c = await ws_connect(lambda: Client(loop, "bench"), url, socket_factory=sock_factory,
                                     extra_headers=headers, read_buffer_init_size=16384)
            ext = tr.response.headers.get("Sec-WebSocket-Extensions", "") if tr.response is not None else ""
            negotiated.append("permessage-deflate" in ext.lower())
            await asyncio.wait_for(c.joined, 60)
            out.append(c)

    await asyncio.gather(*(one(i) for i in range(n)))
    return out, all(negotiated)


async def quiet(clients: list[Client], settle: float) -> None:
    last = -1
    while True:
        total = sum(c.frames for c in clients)
        if total == last:
            return
        last = total
        await asyncio.sleep(settle)


def make_texts(count: int, rnd: random.Random, chars: int) -> list[str]:
    out = []
    for _ in range(count):
        words: list[str] = []
        n = 0
        while n < chars:
            w = rnd.choice(WORDS) if rnd.random() > 0.1 else str(rnd.randrange(100000))
            words.append(w)
            n += len(w) + 1
        out.append(" ".join(words)[:chars])
    return out


async def publish(pub: Client, texts: list[str], rate: float, first_id: int) -> None:
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    for i, text in enumerate(texts):
        delay = t0 + i / rate - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        pub.transport.send(WSMsgType.TEXT, orjson.dumps({"op": "send", "room": "bench", "text": text,
                                                         "id": first_id + i}))


def received(recv: list[Client]) -> int:
    return sum(c.frames for c in recv)


async def drain(recv: list[Client], target: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while received(recv) < target:
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.02)
    return True


async def one_run(size: int, mode: str, a: argparse.Namespace, seed: int) -> dict[str, Any]:
    _raise_nofile()
    os.sched_setaffinity(0, {1})
    rnd = random.Random(seed)
    rate = a.deliveries_per_s / (size - 1)
    with tempfile.TemporaryDirectory() as d:
        proc, port = start_server(d)
        try:
            clients, negotiated = await open_room(port, size, mode == "deflate")
            if mode == "deflate" and not negotiated:
                raise RuntimeError("the server did not accept permessage-deflate")
            pub, recv = clients[0], clients[1:]
            await quiet(clients, 1.0)
            # warm-up
            n_warm = max(5, int(rate))
            base = received(recv)
            await publish(pub, make_texts(n_warm, rnd, a.chars), rate, 10)
            await drain(recv, base + n_warm * len(recv), 20)
            await quiet(clients, 0.5)
            # measured window
            n = max(5, int(rate * a.seconds))
            texts = make_texts(n, rnd, a.chars)
            base = received(recv)
            b0 = sum(c.bytes for c in recv)
            r0 = sum(c.rsv1 for c in recv)
            c0, t0 = cpu_s(proc.pid), time.monotonic()
            await publish(pub, texts, rate, 100_000)
            complete = await drain(recv, base + n * len(recv), 20)
            c1, t1 = cpu_s(proc.pid), time.monotonic()
            got = received(recv) - base
            nbytes = sum(c.bytes for c in recv) - b0
            compressed = sum(c.rsv1 for c in recv) - r0
            result = {
                "size": size, "mode": mode, "messages": n, "rate_msg_s": round(rate, 1),
                "deliveries": got, "expected": n * len(recv), "complete": complete,
                "window_s": round(t1 - t0, 2), "server_cpu_s": round(c1 - c0, 3),
                "us_per_delivery": round((c1 - c0) / got * 1e6, 3) if got else None,
                "server_cpu_pct": round((c1 - c0) / (t1 - t0) * 100, 1),
                "payload_bytes_per_delivery": round(nbytes / got, 1) if got else None,
                "rsv1_frames": compressed,
                "rss_mb": round(rss(proc.pid)["VmRSS"] / 2**20, 1),
            }
            for c in clients:
                c.transport.disconnect()
            return result
        finally:
            proc.terminate()
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()


def table(summary: list[dict[str, Any]]) -> str:
    lines = ["| room | plain µs / delivery | deflate µs / delivery | deflate ÷ plain | plain repeats | deflate repeats "
             "| bytes / delivery plain → deflate | server CPU plain / deflate |",
             "|---:|---:|---:|---:|---|---|---:|---:|"]
    for s in summary:
        lines.append(
            f"| {s['size']:,} | {s['plain_us']:.2f} | {s['deflate_us']:.2f} | {s['ratio']:.2f}× "
            f"| {', '.join(f'{x:.2f}' for x in s['plain_repeats'])} "
            f"| {', '.join(f'{x:.2f}' for x in s['deflate_repeats'])} "
            f"| {s['plain_bytes']:.0f} → {s['deflate_bytes']:.0f} | {s['plain_cpu_pct']:.0f} % / {s['deflate_cpu_pct']:.0f} % |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", type=int, nargs="+", default=[100, 1000])
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--seconds", type=float, default=3.0)
    p.add_argument("--deliveries-per-s", type=float, default=40_000)
    p.add_argument("--chars", type=int, default=900, help="message text length (event JSON ≈ chars + 110 bytes)")
    p.add_argument("--out", help="write OUT.json and OUT.md")
    a = p.parse_args()
    import uvloop

    runs = []
    for size in a.sizes:
        for rep in range(a.repeat):
            for mode in ("plain", "deflate"):
                r = uvloop.run(one_run(size, mode, a, seed=rep))
                r["repeat"] = rep
                print(json.dumps(r), flush=True)
                runs.append(r)
    summary = []
    for size in a.sizes:
        s: dict[str, Any] = {"size": size}
        for mode in ("plain", "deflate"):
            rs = [r for r in runs if r["size"] == size and r["mode"] == mode and r["us_per_delivery"]]
            us = [r["us_per_delivery"] for r in rs]
            med = statistics.median(us)
            pick = min(rs, key=lambda r: abs(r["us_per_delivery"] - med))
            s[f"{mode}_us"] = med
            s[f"{mode}_repeats"] = us
            s[f"{mode}_bytes"] = pick["payload_bytes_per_delivery"]
            s[f"{mode}_cpu_pct"] = pick["server_cpu_pct"]
            s[f"{mode}_complete"] = all(r["complete"] for r in rs)
        s["ratio"] = round(s["deflate_us"] / s["plain_us"], 3)
        summary.append(s)
    md = table(summary)
    print(md)
    if a.out:
        impl = "python" if os.environ.get("CHATHUB_NO_EXTENSIONS", "") not in ("", "0") else "compiled"
        meta = {"date": time.strftime("%Y-%m-%d"), "implementation": impl, "seconds": a.seconds,
                "deliveries_per_s": a.deliveries_per_s, "chars": a.chars, "repeat": a.repeat,
                "command": "python benchmarks/bench_compressed.py " + " ".join(sys.argv[1:])}
        Path(a.out + ".json").write_text(json.dumps({"meta": meta, "summary": summary, "runs": runs}, indent=1) + "\n")
        Path(a.out + ".md").write_text(f"# Compressed broadcast vs plain ({meta['date']})\n\n`{meta['command']}`\n\n"
                                       + md + "\n")


if __name__ == "__main__":
    main()
