#!/usr/bin/env python3
"""Load generator of the fan-out benchmark (benchmarks/bench_fanout.py starts it).

One process on uvloop, pinned to its own CPU, holding every client connection as a
picows client (frames are parsed in Cython; one small Python callback per frame). It
speaks three dialects:

* ``plain``    — the C floor, the picows loop, ``websockets`` and Node's ``ws``: the room is
  the ``room=`` query parameter; a publish is one text frame, forwarded as is to the
  room's other connections;
* ``chathub``  — chathub's protocol (docs/protocol.md): token in the URL, ``ready``,
  ``join`` (each connection its own user id), publishes are ``{"op":"send",…}``, and
  recipients get ``{"ev":"message",…}``;
* ``socketio`` — Engine.IO v4 / Socket.IO v5 over a WebSocket: open packet ``0{…}``,
  namespace connect ``40``, events ``42["pub",{…}]`` → ``42["message",{…}]``, pings
  ``2`` answered ``3``.

Every published message carries ``@`` + the send time (CLOCK_MONOTONIC ns, 20 digits) +
a phase letter (``W`` warm-up, ``M`` measured) in its text; receivers count the
measured deliveries and record their latency. Nothing else in any frame contains ``@``.

Phases: connect (bounded concurrency, source addresses spread over 127.0.0.2…), wait
until the server is quiet (chathub sends ``joined`` events while a room fills), sample
RSS; then either idle (RSS and CPU with idle connections) or warm-up publishes → drain →
measured publishes at a fixed rate → wait until every expected delivery arrived (or
``drain_timeout``) → server CPU time (/proc/PID/stat utime+stime) over exactly that
window. Prints one JSON object (the result) as the last line of stdout.

Usage: python fanout_loadgen.py '<json config>'   (see bench_fanout.py for the keys)
"""

from __future__ import annotations

import asyncio
import collections
import json
import os
import resource
import socket
import sys
import time
from array import array
from typing import Any

import uvloop
from picows import WSListener, WSMsgType, WSTransport, ws_connect

TEXT = WSMsgType.TEXT
now_ns = time.monotonic_ns
CLK_TCK = os.sysconf("SC_CLK_TCK")

# counters: [measured deliveries, warm-up deliveries, other frames, unexpected disconnects,
#            error replies to publishes]
C = [0, 0, 0, 0, 0]
LAT = array("q")
ERRORS: collections.Counter[str] = collections.Counter()
PAD = b"x" * 40


def proc_cpu_s(pid: int) -> float:
    with open(f"/proc/{pid}/stat", "rb") as fh:
        fields = fh.read().rsplit(b")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def cpu_times(cpu: int) -> tuple[int, int, int]:
    """(busy, softirq, total) ticks of one CPU from /proc/stat."""
    with open("/proc/stat", "rb") as fh:
        for line in fh:
            if line.startswith(b"cpu%d " % cpu):
                v = [int(x) for x in line.split()[1:]]
                total = sum(v[:8])
                return total - v[3] - v[4], v[6], total
    return 0, 0, 1


def cpu_share(a: tuple[int, int, int], b: tuple[int, int, int]) -> tuple[float, float]:
    total = max(1, b[2] - a[2])
    return 100.0 * (b[0] - a[0]) / total, 100.0 * (b[1] - a[1]) / total


def proc_rss_kb(pid: int) -> int:
    with open(f"/proc/{pid}/status", "rb") as fh:
        for line in fh:
            if line.startswith(b"VmRSS:"):
                return int(line.split()[1])
    return 0


class Client(WSListener):
    """One client connection; ``fut`` resolves when it is in its room."""

    __slots__ = ("proto", "room", "fut", "t", "ready", "seq")

    def __init__(self, proto: str, room: int, fut: asyncio.Future[None]) -> None:
        super().__init__()
        self.proto = proto
        self.room = room
        self.fut = fut
        self.t: WSTransport | None = None
        self.ready = False
        self.seq = 0

    # ------------------------------------------------------------------ picows callbacks

    def on_ws_connected(self, transport: WSTransport) -> None:
        self.t = transport
        if self.proto == "plain":
            self._set_ready()

    def on_ws_frame(self, transport: WSTransport, frame: Any) -> None:
        if frame.msg_type is not TEXT:
            return
        data = frame.get_payload_as_bytes()
        i = data.find(b"@")
        if i >= 0:
            if data[i + 21] == 77:  # 'M'
                LAT.append(now_ns() - int(data[i + 1:i + 21]))
                C[0] += 1
            else:
                C[1] += 1
            return
        C[2] += 1
        if self.ready:
            if self.proto == "socketio":
                if data == b"2":
                    transport.send(TEXT, b"3")
            elif self.proto == "chathub" and b'"ok":false' in data:
                C[4] += 1
                ERRORS[data[:160].decode(errors="replace")] += 1
            return
        self._handshake(transport, data)

    def on_ws_disconnected(self, transport: WSTransport) -> None:
        if self.ready:
            C[3] += 1
        elif not self.fut.done():
            self.fut.set_exception(ConnectionError("disconnected before it was in its room"))

    # ------------------------------------------------------------------ joining

    def _set_ready(self) -> None:
        self.ready = True
        if not self.fut.done():
            self.fut.set_result(None)

    def _fail(self, why: str) -> None:
        if not self.fut.done():
            self.fut.set_exception(ConnectionError(why))

    def _handshake(self, transport: WSTransport, data: bytes) -> None:
        if self.proto == "chathub":
            if data.startswith(b'{"ev":"ready"'):
                transport.send(TEXT, b'{"op":"join","room":"r%d","id":1}' % self.room)
            elif b'"ok":' in data and (b'"id":1,' in data or b'"id":1}' in data):  # the join reply
                if b'"ok":true' in data:
                    self._set_ready()
                else:
                    self._fail("join refused: " + data[:200].decode(errors="replace"))
            elif data.startswith(b'{"ev":"error"'):
                self._fail("server error: " + data[:200].decode(errors="replace"))
        elif self.proto == "socketio":
            if data.startswith(b"0{"):
                transport.send(TEXT, b"40")
            elif data.startswith(b"40"):
                self._set_ready()
            elif data.startswith(b"44"):
                self._fail("socket.io connect refused: " + data[:200].decode(errors="replace"))
            elif data == b"2":
                transport.send(TEXT, b"3")

    # ------------------------------------------------------------------ publishing

    def publish(self, phase: bytes) -> None:
        """Send one message stamped with the current time (``phase``: b"W" or b"M")."""
        self.seq += 1
        text = b"@%020d%s %s" % (now_ns(), phase, PAD)
        if self.proto == "chathub":
            msg = b'{"op":"send","room":"r%d","text":"%s","id":%d}' % (self.room, text, self.seq + 1)
        else:
            # the same shape and size as chathub's message event
            ev = (b'{"ev":"message","room":"r%d","seq":%d,"msg_id":"0123456789abcdef0123456789abcdef",'
                  b'"from":%d,"text":"%s","ts":1764350000123}' % (self.room, self.seq, 100000 + self.room, text))
            msg = b'42["pub",' + ev + b"]" if self.proto == "socketio" else ev
        self.t.send(TEXT, msg)  # type: ignore[union-attr]

    def cork(self, on: bool) -> None:
        """TCP_CORK the connection around a burst: its frames leave as one segment, as a
        client that pipelines a burst writes it (not one segment per frame)."""
        sock = self.t.underlying_transport.get_extra_info("socket")  # type: ignore[union-attr]
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_CORK, 1 if on else 0)


def url_for(cfg: dict[str, Any], i: int, room: int) -> str:
    base = f"ws://{cfg['host']}:{cfg['port']}"
    if cfg["proto"] == "chathub":
        return f"{base}/ws?token={cfg['tokens'][i]}"
    if cfg["proto"] == "socketio":
        return f"{base}/socket.io/?EIO=4&transport=websocket&room={room}"
    return f"{base}/ws?room={room}"


def mint_tokens(cfg: dict[str, Any]) -> None:
    if cfg["proto"] != "chathub":
        return
    from chathub.auth import mint_token

    secret = cfg["jwt_secret"]
    base = cfg.get("user_base", 1_000_000)
    t0 = time.time()
    cfg["tokens"] = [mint_token(secret, base + i, 0, ttl_s=3600, now=t0) for i in range(cfg["conns"])]


async def connect_all(cfg: dict[str, Any]) -> tuple[list[Client], collections.Counter[str], float]:
    loop = asyncio.get_running_loop()
    n = cfg["conns"]
    room_size = cfg["room_size"]
    n_src = cfg.get("src_addrs", 50)
    sem = asyncio.Semaphore(cfg.get("concurrency", 64))
    clients: list[Client | None] = [None] * n
    fails: collections.Counter[str] = collections.Counter()
    done = [0]
    t0 = time.monotonic()

    async def one(i: int) -> None:
        room = i // room_size
        fut: asyncio.Future[None] = loop.create_future()
        src = f"127.0.0.{2 + i % n_src}"
        async with sem:
            try:
                _, lst = await ws_connect(
                    lambda: Client(cfg["proto"], room, fut), url_for(cfg, i, room),
                    local_addr=(src, 0), websocket_handshake_timeout=60, read_buffer_init_size=2048,
                    use_aiofastnet=False, max_frame_size=1 << 20,
                )
                await asyncio.wait_for(fut, 60)
                clients[i] = lst  # type: ignore[assignment]
            except Exception as e:  # noqa: BLE001 - every failure is counted by kind
                fails[f"{type(e).__name__}: {str(e)[:120]}"] += 1
            done[0] += 1

    async def progress() -> None:
        while True:
            await asyncio.sleep(2)
            print(f"  loadgen: {done[0]}/{n} connections settled "
                  f"({sum(fails.values())} failed, {time.monotonic() - t0:.0f} s)", file=sys.stderr, flush=True)

    p = asyncio.ensure_future(progress())
    await asyncio.gather(*(one(i) for i in range(n)))
    p.cancel()
    return [c for c in clients if c is not None], fails, time.monotonic() - t0


async def quiesce(max_s: float = 60.0, quiet_s: float = 0.5) -> float:
    """Wait until no frame arrived for ``quiet_s`` (joined events, presence batches)."""
    t0 = time.monotonic()
    last = -1
    last_change = t0
    while time.monotonic() - t0 < max_s:
        cur = C[0] + C[1] + C[2]
        if cur != last:
            last, last_change = cur, time.monotonic()
        elif time.monotonic() - last_change >= quiet_s:
            break
        await asyncio.sleep(0.05)
    return time.monotonic() - t0


async def publish_phase(pubs: list[Client], rate: float, seconds: float, phase: bytes, burst: int = 1) -> int:
    """Publish ``rate*seconds`` messages at a fixed rate, round-robin over the publishers;
    with ``burst`` > 1, in bursts of that many back-to-back messages from one publisher,
    written as one TCP segment (corked)."""
    total = max(1, int(rate * seconds))
    start = time.monotonic()
    sent = 0
    k = 0
    npub = len(pubs)
    while sent < total:
        due = min(total, (int((time.monotonic() - start) * rate / burst) + 1) * burst)
        while sent < due:
            if burst > 1 and sent % burst == 0:
                pubs[k].cork(True)
            pubs[k].publish(phase)
            sent += 1
            if sent % burst == 0:
                if burst > 1:
                    pubs[k].cork(False)
                k = k + 1 if k + 1 < npub else 0
        await asyncio.sleep(0.001)
    return sent


def publisher_of(j: int, npub: int, burst: int) -> int:
    """Index of the publisher of the j-th message of a phase (see ``publish_phase``)."""
    return (j // burst) % npub


async def wait_count(idx: int, target: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while C[idx] < target:
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.002)
    return True


def pct(sorted_ns: list[int], p: float) -> float | None:
    if not sorted_ns:
        return None
    k = min(len(sorted_ns) - 1, max(0, int(round(p / 100.0 * len(sorted_ns))) - 1))
    return sorted_ns[k] / 1e6  # ms


async def run(cfg: dict[str, Any]) -> dict[str, Any]:
    pid = cfg["server_pid"]
    out: dict[str, Any] = {"server": cfg.get("server"), "scenario": cfg.get("scenario")}
    rss0 = proc_rss_kb(pid)
    clients, fails, t_conn = await connect_all(cfg)
    out.update(connections_requested=cfg["conns"], connections=len(clients),
               connect_failures=dict(fails.most_common(5)), connect_s=round(t_conn, 2))
    if not clients:
        out["error"] = "no connection succeeded: " + "; ".join(fails)
        return out
    out["quiesce_s"] = round(await quiesce(), 2)
    await asyncio.sleep(0.5)
    rss1 = proc_rss_kb(pid)
    out.update(rss_base_kb=rss0, rss_kb=rss1, rss_per_conn_kb=round((rss1 - rss0) / len(clients), 3))

    if cfg.get("idle"):
        secs = cfg.get("idle_seconds", 5.0)
        c0, t0 = proc_cpu_s(pid), time.monotonic()
        await asyncio.sleep(secs)
        c1, t1 = proc_cpu_s(pid), time.monotonic()
        rss2 = proc_rss_kb(pid)
        out.update(idle_cpu_pct=round(100 * (c1 - c0) / (t1 - t0), 2), rss_after_idle_kb=rss2,
                   rss_per_conn_kb=round((max(rss1, rss2) - rss0) / len(clients), 3),
                   unexpected_disconnects=C[3])
        return out

    # rooms → members; the room's first connected member publishes
    by_room: dict[int, list[Client]] = collections.defaultdict(list)
    for c in clients:
        by_room[c.room].append(c)
    pubs = [members[0] for members in by_room.values() if len(members) >= 2]
    recipients = {id(m[0]): len(m) - 1 for m in by_room.values()}
    rate = cfg["rate"]
    if not pubs:
        out["error"] = "no room has two connected members"
        return out

    burst = int(cfg.get("burst", 1))

    def expected(n_msgs: int) -> int:
        npub = len(pubs)
        return sum(recipients[id(pubs[publisher_of(j, npub, burst)])] for j in range(n_msgs))

    # warm-up
    wn = await publish_phase(pubs, rate, cfg.get("warmup", 2.0), b"W", burst)
    warm_ok = await wait_count(1, expected(wn), cfg.get("drain_timeout", 20.0))
    await quiesce(max_s=10, quiet_s=0.3)
    out.update(warmup_messages=wn, warmup_drained=warm_ok)

    if cfg.get("rounds"):
        # interleaved mode (bench_interleaved.py): report readiness, then measure one
        # window per "measure" line on stdin until "quit" (or EOF)
        emit({"ready": True, **out})
        loop = asyncio.get_running_loop()
        while True:
            line = (await loop.run_in_executor(None, sys.stdin.readline)).strip()
            if not line or line == "quit":
                break
            if line == "measure":
                emit(await measure_window(cfg, pid, pubs, expected, rate, burst))
        return {"done": True}
    out.update(await measure_window(cfg, pid, pubs, expected, rate, burst))
    return out


def emit(obj: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


def cpu_clock(pid: int) -> int | None:
    """The process-wide CPU clock of ``pid`` (all its threads, ns resolution; Linux's
    CPUCLOCK_SCHED of the process), or None where it cannot be read."""
    try:
        return time.clock_gettime_ns(((~pid) << 3) | 2)
    except (OSError, OverflowError):
        return None


async def measure_window(cfg: dict[str, Any], pid: int, pubs: list[Client], expected: Any, rate: float,
                         burst: int) -> dict[str, Any]:
    """One measured window: server CPU from the first measured publish to the last delivery."""
    LAT[:] = array("q")
    ru0 = resource.getrusage(resource.RUSAGE_SELF)
    scpu = cfg.get("server_cpu", 0)
    k0 = cpu_times(scpu)
    d0 = C[0] + C[1]
    m0 = C[0]
    n0 = cpu_clock(pid)
    c0, t0 = proc_cpu_s(pid), time.monotonic()
    n_msgs = await publish_phase(pubs, rate, cfg["seconds"], b"M", burst)
    t_pub = time.monotonic()
    exp = expected(n_msgs)
    drained = await wait_count(0, m0 + exp, cfg.get("drain_timeout", 20.0))
    c1, t1 = proc_cpu_s(pid), time.monotonic()
    n1 = cpu_clock(pid)
    k1 = cpu_times(scpu)
    ru1 = resource.getrusage(resource.RUSAGE_SELF)
    busy, softirq = cpu_share(k0, k1)
    # deliveries completed inside the window, whichever phase they belong to: equal to the
    # measured ones when the server keeps up (the warm-up drained first); a saturated
    # server still works off warm-up messages in the window, and those count too
    in_window = C[0] + C[1] - d0
    cpu = c1 - c0
    if n0 is not None and n1 is not None:
        cpu = (n1 - n0) / 1e9  # the same quantity, without /proc/PID/stat's clock-tick granularity
    wall = t1 - t0
    lat = sorted(LAT)
    lg_cpu = (ru1.ru_utime + ru1.ru_stime) - (ru0.ru_utime + ru0.ru_stime)
    return dict(
        publishers=len(pubs), rate=rate, messages=n_msgs, expected_deliveries=exp, delivered=C[0] - m0,
        delivered_in_window=in_window,
        drained=drained, publish_s=round(t_pub - t0, 3), drain_s=round(t1 - t_pub, 3), window_s=round(wall, 3),
        server_cpu_s=round(cpu, 4), server_cpu_pct=round(100 * cpu / wall, 1),
        cpu_us_per_delivery=round(cpu * 1e6 / in_window, 3) if in_window else None,
        deliveries_per_s=round(in_window / wall, 1),
        offered_deliveries_per_s=round(exp / (t_pub - t0), 1),
        p50_ms=pct(lat, 50), p99_ms=pct(lat, 99), p999_ms=pct(lat, 99.9), max_ms=lat[-1] / 1e6 if lat else None,
        loadgen_cpu_pct=round(100 * lg_cpu / wall, 1), unexpected_disconnects=C[3], publish_errors=C[4],
        # what else ran on the server's CPU during the window (other processes; softirq apart)
        server_cpu_busy_pct=round(busy, 1), server_cpu_softirq_pct=round(softirq, 1),
        server_cpu_others_pct=round(max(0.0, busy - softirq - 100 * cpu / wall), 1),
        publish_error_samples=dict(ERRORS.most_common(3)),
    )


def main() -> None:
    cfg = json.loads(sys.argv[1])
    cpu = cfg.get("cpu")
    if cpu is not None:
        try:
            os.sched_setaffinity(0, {cpu})
        except OSError as e:
            print(f"loadgen: cannot pin to CPU {cpu}: {e}", file=sys.stderr)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    mint_tokens(cfg)
    try:
        result = uvloop.run(asyncio.wait_for(run(cfg), cfg.get("hard_timeout", 900)))
    except Exception as e:  # noqa: BLE001 - reported to the orchestrator
        result = {"server": cfg.get("server"), "scenario": cfg.get("scenario"), "error": f"{type(e).__name__}: {e}"}
    emit(result)
    os._exit(0)  # do not spend time closing 20,000 sockets one by one


if __name__ == "__main__":
    main()
