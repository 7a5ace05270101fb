#!/usr/bin/env python3
"""Hold tens of thousands of authenticated chathub connections from one process.

    export CHATHUB_JWT_SECRET=…          # the server's secret
    python load_tests/swarm.py --connections 20000 --duration 120 --port 8080 [--server-pid PID]

One uvloop process of picows clients: every connection gets its own user id (a token
minted with ``CHATHUB_JWT_SECRET``; ``max_connections_per_user`` does not bite), waits
for ``ready`` and joins a room (``--room-size`` connections per room: ``swarm-0``,
``swarm-1``, …). Source addresses are spread over 127.0.0.2 … 127.0.0.(1+``--src-addrs``)
so that 20,000+ connections do not run out of ephemeral ports, and RLIMIT_NOFILE is
raised to its hard limit (the run says so when the hard limit is below what is asked).

A one-line counter shows progress (connected / failed / open / server RSS). The run is
bounded: at most ``--connections`` connections, and everything stops by itself after
``--duration`` seconds in all (connecting included); connections then close and a
summary is printed (``--json FILE`` writes it too): connected, failed (by reason),
dropped while held, connect rate, and with ``--server-pid`` the server's RSS before,
at the peak and per connection. Only loopback addresses are accepted as ``--host``.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import ipaddress
import json
import os
import resource
import sys
import time
from typing import Any

import uvloop
from picows import WSListener, WSMsgType, WSTransport, ws_connect

TEXT = WSMsgType.TEXT


def mint_tokens(secret: str, base: int, n: int) -> list[str]:
    try:
        from chathub.auth import mint_token
    except ImportError:
        import jwt

        def mint_token(secret: str, uid: int, tid: int, *, ttl_s: int, now: float) -> str:  # type: ignore[misc]
            return jwt.encode({"sub": str(uid), "tid": tid, "iat": int(now), "exp": int(now + ttl_s)}, secret,
                              algorithm="HS256")
    now = time.time()
    return [mint_token(secret, base + i, 0, ttl_s=24 * 3600, now=now) for i in range(n)]


def rss_kb(pid: int | None) -> int | None:
    if not pid:
        return None
    try:
        with open(f"/proc/{pid}/status", "rb") as fh:
            for line in fh:
                if line.startswith(b"VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


class Stats:
    connected = 0
    failed = 0
    open = 0
    dropped = 0
    frames = 0
    closing = False  # set when the swarm closes its own connections at the end
    reasons: collections.Counter[str] = collections.Counter()


S = Stats()


class SwarmConn(WSListener):
    __slots__ = ("room", "fut", "joined", "transport")

    def __init__(self, room: str, fut: asyncio.Future[None]) -> None:
        super().__init__()
        self.room = room.encode()
        self.fut = fut
        self.joined = False
        self.transport: WSTransport | None = None

    def on_ws_connected(self, transport: WSTransport) -> None:
        self.transport = transport

    def on_ws_frame(self, transport: WSTransport, frame: Any) -> None:
        S.frames += 1
        if self.joined or frame.msg_type is not TEXT:
            return
        data = frame.get_payload_as_bytes()
        if data.startswith(b'{"ev":"ready"'):
            transport.send(TEXT, b'{"op":"join","room":"%s","id":1}' % self.room)
        elif b'"ok":' in data and (b'"id":1,' in data or b'"id":1}' in data):
            if b'"ok":true' in data:
                self.joined = True
                S.open += 1
                if not self.fut.done():
                    self.fut.set_result(None)
            elif not self.fut.done():
                self.fut.set_exception(ConnectionError("join refused: " + data[:160].decode(errors="replace")))
        elif data.startswith(b'{"ev":"error"') and not self.fut.done():
            self.fut.set_exception(ConnectionError("refused: " + data[:160].decode(errors="replace")))

    def on_ws_disconnected(self, transport: WSTransport) -> None:
        if self.joined:
            S.open -= 1
            if not S.closing:
                S.dropped += 1
        elif not self.fut.done():
            self.fut.set_exception(ConnectionError("closed before joining"))


async def swarm(args: argparse.Namespace, tokens: list[str]) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    t_start = time.monotonic()
    deadline = t_start + args.duration
    sem = asyncio.Semaphore(args.concurrency)
    conns: list[SwarmConn] = []
    rss0 = rss_kb(args.server_pid)
    peak = [rss0 or 0]
    stop = asyncio.Event()

    async def one(i: int) -> None:
        if stop.is_set():
            return
        async with sem:
            if stop.is_set():
                return
            fut: asyncio.Future[None] = loop.create_future()
            room = f"{args.room_prefix}-{i // args.room_size}"
            src = f"127.0.0.{2 + i % args.src_addrs}"
            try:
                transport, lst = await ws_connect(
                    lambda: SwarmConn(room, fut), f"ws://{args.host}:{args.port}/ws?token={tokens[i]}",
                    local_addr=(src, 0), websocket_handshake_timeout=args.timeout, read_buffer_init_size=1024,
                    use_aiofastnet=False,
                )
                if lst is None:
                    transport.disconnect()
                    raise ConnectionError("handshake gave no listener")
                conns.append(lst)  # type: ignore[arg-type]
                await asyncio.wait_for(fut, args.timeout)
                S.connected += 1
            except Exception as e:  # noqa: BLE001 - counted by reason
                S.failed += 1
                S.reasons[f"{type(e).__name__}: {str(e)[:100]}"] += 1

    def line(final: bool = False) -> None:
        r = rss_kb(args.server_pid)
        if r:
            peak[0] = max(peak[0], r)
        el = time.monotonic() - t_start
        rs = f"  server RSS {r / 1024:.0f} MB" if r else ""
        sys.stderr.write(f"\r[{el:5.0f}/{args.duration:.0f} s] connected {S.connected:,}/{args.connections:,}  "
                         f"failed {S.failed:,}  open {S.open:,}  dropped {S.dropped:,}{rs}   ")
        if final:
            sys.stderr.write("\n")
        sys.stderr.flush()

    async def ticker() -> None:
        while True:
            line()
            await asyncio.sleep(0.5)

    tick = asyncio.ensure_future(ticker())
    tasks = asyncio.gather(*(one(i) for i in range(args.connections)))
    t_conn = None
    try:
        await asyncio.wait_for(asyncio.shield(tasks), max(0.1, deadline - time.monotonic()))
        t_conn = time.monotonic() - t_start
    except asyncio.TimeoutError:
        stop.set()
    rss_held = rss_kb(args.server_pid)
    # hold until the deadline
    while time.monotonic() < deadline:
        await asyncio.sleep(min(1.0, max(0.0, deadline - time.monotonic())))
    stop.set()
    tick.cancel()
    line(final=True)
    held_at_end = S.open
    rss_end = rss_kb(args.server_pid)
    S.closing = True
    for c in conns:
        if c is not None and c.transport is not None:
            c.transport.disconnect()
    await asyncio.sleep(0.5)
    rss_peak = max(x for x in (peak[0], rss_held or 0, rss_end or 0))
    out: dict[str, Any] = {
        "requested": args.connections, "connected": S.connected, "failed": S.failed,
        "not_attempted": args.connections - S.connected - S.failed,
        "failure_reasons": dict(S.reasons.most_common(8)), "dropped_while_held": S.dropped,
        "open_at_end": held_at_end, "connect_s": round(t_conn, 1) if t_conn else None,
        "connects_per_s": round(S.connected / t_conn, 1) if t_conn else None,
        "duration_s": round(time.monotonic() - t_start, 1), "frames_received": S.frames,
    }
    if args.server_pid:
        out.update(server_rss_before_kb=rss0, server_rss_held_kb=rss_held, server_rss_peak_kb=rss_peak,
                   server_rss_per_conn_kb=round((rss_held - rss0) / S.connected, 2)
                   if rss0 and rss_held and S.connected else None)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--host", default="127.0.0.1", help="server address (loopback only)")
    ap.add_argument("--port", type=int, default=8080)
    ap.add_argument("--connections", type=int, default=20_000, help="connections to open (upper bound)")
    ap.add_argument("--duration", type=float, default=120.0, help="hard bound on the whole run, seconds")
    ap.add_argument("--room-size", type=int, default=100, help="connections per room")
    ap.add_argument("--room-prefix", default="swarm")
    ap.add_argument("--concurrency", type=int, default=200, help="connections being opened at once")
    ap.add_argument("--src-addrs", type=int, default=50, help="source addresses 127.0.0.2 … 127.0.0.(1+N)")
    ap.add_argument("--timeout", type=float, default=60.0, help="per-connection connect+join timeout")
    ap.add_argument("--user-base", type=int, default=2_000_000, help="first user id")
    ap.add_argument("--server-pid", type=int, help="chathub's PID, to report its RSS")
    ap.add_argument("--json", help="also write the summary to this file")
    args = ap.parse_args()

    try:
        if not ipaddress.ip_address(args.host).is_loopback:
            ap.error("--host must be a loopback address")
    except ValueError:
        if args.host != "localhost":
            ap.error("--host must be a loopback address")
    if not 1 <= args.src_addrs <= 250:
        ap.error("--src-addrs must be 1..250")
    secret = os.environ.get("CHATHUB_JWT_SECRET", "")
    if len(secret.encode()) < 32:
        ap.error("set CHATHUB_JWT_SECRET to the server's secret (at least 32 bytes)")

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    if args.connections + 64 > hard:
        print(f"swarm: RLIMIT_NOFILE's hard limit is {hard:,}: at most about {hard - 64:,} connections fit in this "
              f"process (and the server has the same kind of limit); raise it (ulimit -Hn, as root) for more",
              file=sys.stderr)
    print(f"swarm: minting {args.connections:,} tokens …", file=sys.stderr)
    tokens = mint_tokens(secret, args.user_base, args.connections)
    out = uvloop.run(asyncio.wait_for(swarm(args, tokens), args.duration + 30))
    text = json.dumps(out, indent=1)
    print(text)
    if args.json:
        with open(args.json, "w") as fh:
            fh.write(text + "\n")
    sys.stdout.flush()
    os._exit(0 if out["connected"] else 1)


if __name__ == "__main__":
    main()
