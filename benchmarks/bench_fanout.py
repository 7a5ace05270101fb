#!/usr/bin/env python3
"""End-to-end fan-out benchmark: chathub against the kernel's floor and its peers.

    python benchmarks/bench_fanout.py [--quick] [--scenarios a b c] [--servers ...] [--out benchmarks/results]

Every server under test runs as its own process pinned to CPU 0; the load generator
(benchmarks/fanout_loadgen.py, one uvloop process of picows clients) is pinned to CPU 1.
Each (server, scenario) gets a fresh server process. Servers:

* ``chathub``        — ``python -m chathub serve`` (its own protocol: auth, join, send);
* ``c-floor``        — benchmarks/floor/floor.c, compiled now: one send() per recipient of
  a frame built once per message — the kernel's cost, the floor to beat;
* ``c-floor-batch16``— the same writing 16 frames per send() (not a bar for latency: a
  frame waits for 15 more, or 2 s);
* ``picows-loop``    — benchmarks/peers/picows_server.py: a Python loop of transport.send;
* ``websockets``     — benchmarks/peers/websockets_server.py: websockets.broadcast();
* ``python-socketio``— benchmarks/peers/socketio_server.py (aiohttp, uvloop), pip-installed
  into a cache venv now;
* ``node-ws``        — benchmarks/peers/ws_server.js, ``ws`` npm-installed into a cache dir now.

Scenarios (full size; ``--quick`` shrinks them to a few seconds each):

* ``a`` — one room of 1000 connections, one of them publishing 50 messages/s;
* ``b`` — 10,000 connections in rooms of 100, 1,000 publishes/s in total (one publisher
  per room);
* ``c`` — 20,000 idle connections in rooms of 100 (capped by RLIMIT_NOFILE's hard
  limit: the server needs a few descriptors beyond its connections);
* ``a16`` — one room of 1000, 800 messages/s sent in bursts of 16 back-to-back messages
  (50 bursts/s): at least 16 frames queued per connection at once, the case the
  ``c-floor-batch16`` cost is the bar for;
* ``p`` — diagnostic, only when named: 1000 rooms of 2 at 2,000 messages/s, one delivery
  per message, so the per-message work (parse, store, ack, encode) dominates.

Figures, per server and scenario: server CPU µs per delivered message (the process CPU
clock, or utime+stime from /proc/PID/stat, over the measured window only: first measured publish → last expected
delivery), deliveries/s, end-to-end latency p50/p99/p99.9 (send time stamped in the
message, measured by the receivers), RSS per connection (VmRSS delta / connections).
Writes ``fanout.json``, ``fanout.md`` and ``fanout.png`` (``fanout-quick.*`` with
``--quick``) into ``--out``. A peer that cannot be installed or started is reported as
"unavailable: reason"; the run goes on. Only 127.0.0.1 is ever contacted; every phase is
bounded in time.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import resource
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
LOADGEN = os.path.join(HERE, "fanout_loadgen.py")
CACHE = os.environ.get("CHATHUB_BENCH_CACHE", os.path.join(os.path.expanduser("~"), ".cache", "chathub-bench"))

SERVERS = ["chathub", "c-floor", "c-floor-batch16", "picows-loop", "websockets", "python-socketio", "node-ws"]
FLOOR = "c-floor"
PICOWS = "picows-loop"

SCENARIOS: dict[str, dict[str, Any]] = {
    "a": dict(name="a: 1 room × 1000, 50 msg/s", conns=1000, room_size=1000, rate=50.0, warmup=2.0, seconds=10.0),
    "b": dict(name="b: 10,000 in rooms of 100, 1000 msg/s", conns=10_000, room_size=100, rate=1000.0, warmup=2.0,
              seconds=10.0),
    "c": dict(name="c: 20,000 idle", conns=20_000, room_size=100, idle=True, idle_seconds=5.0),
    "a16": dict(name="a16: 1 room × 1000, 800 msg/s in bursts of 16", conns=1000, room_size=1000, rate=800.0,
                burst=16, warmup=2.0, seconds=10.0),
    # diagnostic, not in the default set: one delivery per message, so the per-message
    # work (parse, store, ack, encode) is most of what is measured
    "p": dict(name="p: 1000 rooms of 2, 2000 msg/s (per-message cost)", conns=2000, room_size=2, rate=2000.0,
              warmup=2.0, seconds=10.0),
}
QUICK: dict[str, dict[str, Any]] = {
    "a": dict(name="a (quick): 1 room × 200, 50 msg/s", conns=200, room_size=200, rate=50.0, warmup=1.0, seconds=3.0),
    "b": dict(name="b (quick): 1000 in rooms of 100, 100 msg/s", conns=1000, room_size=100, rate=100.0, warmup=1.0,
              seconds=3.0),
    "c": dict(name="c (quick): 2000 idle", conns=2000, room_size=100, idle=True, idle_seconds=2.0),
    "a16": dict(name="a16 (quick): 1 room × 200, 800 msg/s in bursts of 16", conns=200, room_size=200, rate=800.0,
                burst=16, warmup=1.0, seconds=3.0),
    "p": dict(name="p (quick): 200 rooms of 2, 400 msg/s", conns=400, room_size=2, rate=400.0, warmup=1.0,
              seconds=3.0),
}
SERVER_CPU = 0
LOADGEN_CPU = 1


class Unavailable(Exception):
    """A server that cannot be installed, built or started; the message says why."""


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def run_cmd(cmd: list[str], timeout: float, **kw: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, **kw)


def tail(text: str, n: int = 400) -> str:
    return " ".join(text.strip().split())[-n:]


# ---------------------------------------------------------------- preparing the servers


class Prepared:
    """How to start one server: argv, environment, load generator dialect."""

    def __init__(self, name: str, argv: list[str], proto: str, env: dict[str, str] | None = None,
                 version: str = "", needs_data_dir: bool = False, cwd: str = ROOT) -> None:
        self.name = name
        self.cwd = cwd
        self.argv = argv
        self.proto = proto
        self.env = env or {}
        self.version = version
        self.needs_data_dir = needs_data_dir


def peers_venv() -> str:
    """A cached venv (seeing the system site-packages: uvloop, picows) for pip-installed peers."""
    venv = os.path.join(CACHE, "venv")
    py = os.path.join(venv, "bin", "python")
    if not os.path.exists(py):
        os.makedirs(CACHE, exist_ok=True)
        r = run_cmd([sys.executable, "-m", "venv", "--system-site-packages", venv], 120)
        if r.returncode:
            raise Unavailable(f"cannot create a venv: {tail(r.stderr)}")
    return py


def pip_install(py: str, pkgs: list[str]) -> None:
    try:
        r = run_cmd([py, "-m", "pip", "install", "-q", "--disable-pip-version-check", *pkgs], 600)
    except subprocess.TimeoutExpired:
        raise Unavailable(f"pip install {' '.join(pkgs)} timed out") from None
    if r.returncode:
        raise Unavailable(f"pip install {' '.join(pkgs)} failed: {tail(r.stderr)}")


def py_version(py: str, dist: str) -> str:
    r = run_cmd([py, "-c", f"from importlib.metadata import version; print(version({dist!r}))"], 60)
    return r.stdout.strip() if r.returncode == 0 else "?"


def prepare(name: str, workdir: str, secret: str) -> Prepared:
    py = sys.executable
    if name == "chathub":
        r = run_cmd([py, "-m", "chathub", "--version"], 60, cwd=ROOT)
        if r.returncode:
            raise Unavailable(f"`python -m chathub --version` failed: {tail(r.stderr)}")
        env = {"CHATHUB_JWT_SECRET": secret, "CHATHUB_RATE_LIMITS": "off", "CHATHUB_LOG_LEVEL": "warning"}
        return Prepared(name, [py, "-m", "chathub", "serve", "--host", "127.0.0.1", "--port", "{port}"], "chathub",
                        env, r.stdout.strip(), needs_data_dir=True)
    if name in (FLOOR, "c-floor-batch16"):
        exe = os.path.join(workdir, "floor")
        if not os.path.exists(exe):
            cc = shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
            if cc is None:
                raise Unavailable("no C compiler (cc) on PATH")
            r = run_cmd([cc, "-O2", "-o", exe, os.path.join(HERE, "floor", "floor.c")], 120)
            if r.returncode:
                raise Unavailable(f"cc failed: {tail(r.stderr)}")
        extra = ["--batch", "16", "--flush-ms", "2000"] if name.endswith("batch16") else []
        ccv = run_cmd([shutil.which("cc") or "cc", "--version"], 30).stdout.splitlines()[:1]
        return Prepared(name, [exe, "{port}", *extra], "plain", version=(ccv[0] if ccv else "cc") + " -O2")
    if name == PICOWS:
        return Prepared(name, [py, os.path.join(HERE, "peers", "picows_server.py"), "{port}"], "plain",
                        version="picows " + py_version(py, "picows"))
    if name == "websockets":
        interp = py
        if run_cmd([py, "-c", "import websockets.asyncio.server"], 60).returncode:
            interp = peers_venv()
            pip_install(interp, ["websockets"])
        return Prepared(name, [interp, os.path.join(HERE, "peers", "websockets_server.py"), "{port}"], "plain",
                        version="websockets " + py_version(interp, "websockets"))
    if name == "python-socketio":
        vpy = peers_venv()
        if run_cmd([vpy, "-c", "import socketio, aiohttp"], 60).returncode:
            pip_install(vpy, ["python-socketio", "aiohttp"])
        return Prepared(name, [vpy, os.path.join(HERE, "peers", "socketio_server.py"), "{port}"], "socketio",
                        version=f"python-socketio {py_version(vpy, 'python-socketio')}, "
                                f"aiohttp {py_version(vpy, 'aiohttp')}")
    if name == "node-ws":
        node = shutil.which("node")
        npm = shutil.which("npm")
        if node is None or npm is None:
            raise Unavailable("node/npm not on PATH")
        ndir = os.path.join(CACHE, "node")
        os.makedirs(ndir, exist_ok=True)
        if not os.path.exists(os.path.join(ndir, "node_modules", "ws", "package.json")):
            pkg = os.path.join(ndir, "package.json")
            if not os.path.exists(pkg):
                with open(pkg, "w") as fh:
                    fh.write('{"name": "chathub-bench-peers", "private": true}\n')
            try:
                r = run_cmd([npm, "install", "--no-audit", "--no-fund", "ws"], 600, cwd=ndir)
            except subprocess.TimeoutExpired:
                raise Unavailable("npm install ws timed out") from None
            if r.returncode:
                raise Unavailable(f"npm install ws failed: {tail(r.stderr)}")
        with open(os.path.join(ndir, "node_modules", "ws", "package.json")) as fh:
            wsv = json.load(fh)["version"]
        nv = run_cmd([node, "--version"], 30).stdout.strip()
        return Prepared(name, [node, os.path.join(HERE, "peers", "ws_server.js"), "{port}"], "plain",
                        env={"NODE_PATH": os.path.join(ndir, "node_modules")}, version=f"ws {wsv}, node {nv}")
    raise Unavailable(f"unknown server {name!r}")


# ---------------------------------------------------------------- running one server


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _server_preexec() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    try:
        os.sched_setaffinity(0, {SERVER_CPU})
    except OSError:
        pass
    os.setsid()


class Server:
    def __init__(self, prep: Prepared, workdir: str, tag: str) -> None:
        self.prep = prep
        self.port = free_port()
        self.logpath = os.path.join(workdir, f"{tag}.log")
        env = dict(os.environ)
        env.pop("CHATHUB_NO_EXTENSIONS", None)
        env.update(prep.env)
        if prep.needs_data_dir:
            env["CHATHUB_DATA_DIR"] = tempfile.mkdtemp(prefix="data-", dir=workdir)
        argv = [a.replace("{port}", str(self.port)) for a in prep.argv]
        self.logfh = open(self.logpath, "w")
        self.proc = subprocess.Popen(argv, stdout=self.logfh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                     env=env, cwd=prep.cwd, preexec_fn=_server_preexec)

    def wait_ready(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise Unavailable(f"exited with {self.proc.returncode} at start: {self.log_tail()}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    time.sleep(0.5)  # let it settle (imports, store open) before the baseline RSS
                    return
            except OSError:
                time.sleep(0.1)
        raise Unavailable(f"did not listen within {timeout:.0f} s: {self.log_tail()}")

    def log_tail(self) -> str:
        self.logfh.flush()
        try:
            with open(self.logpath) as fh:
                return tail(fh.read())
        except OSError:
            return ""

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self.logfh.close()


def run_one(prep: Prepared, scen_key: str, scen: dict[str, Any], workdir: str, secret: str) -> dict[str, Any]:
    tag = f"{prep.name}-{scen_key}"
    srv = Server(prep, workdir, tag)
    try:
        srv.wait_ready()
        cfg = dict(scen)
        cfg.update(server=prep.name, scenario=scen_key, proto=prep.proto, host="127.0.0.1", port=srv.port,
                   server_pid=srv.proc.pid, cpu=LOADGEN_CPU, server_cpu=SERVER_CPU, jwt_secret=secret,
                   drain_timeout=max(10.0, 2 * scen.get("seconds", 5.0)))
        budget = 120 + cfg["conns"] / 50 + 3 * (scen.get("seconds", 0) + scen.get("warmup", 0)) + 2 * cfg["drain_timeout"]
        cfg["hard_timeout"] = budget
        try:
            r = subprocess.run([sys.executable, LOADGEN, json.dumps(cfg)], stdout=subprocess.PIPE, text=True,
                               timeout=budget + 60, cwd=ROOT)
        except subprocess.TimeoutExpired:
            return {"server": prep.name, "scenario": scen_key, "error": f"load generator timed out after {budget:.0f} s"}
        lines = [ln for ln in r.stdout.splitlines() if ln.startswith("{")]
        if not lines:
            return {"server": prep.name, "scenario": scen_key, "error": f"load generator exited {r.returncode} "
                                                                      "without a result"}
        res = json.loads(lines[-1])
        if srv.proc.poll() is not None:
            res["error"] = f"server exited with {srv.proc.returncode} during the run: {srv.log_tail()}"
        res["port"] = srv.port
        return res
    except Unavailable as e:
        return {"server": prep.name, "scenario": scen_key, "unavailable": str(e)}
    finally:
        srv.stop()


# ---------------------------------------------------------------- report


def fmt(v: Any, nd: int = 2) -> str:
    if v is None:
        return "–"
    if isinstance(v, float):
        return f"{v:,.{nd}f}"
    if isinstance(v, int):
        return f"{v:,}"
    return str(v)


def ratio(v: float | None, base: float | None) -> str:
    if v is None or not base:
        return "–"
    return f"{v / base:.2f}×"


def median(xs: list[float]) -> float:
    s = sorted(xs)
    n = len(s)
    return s[n // 2] if n % 2 else (s[n // 2 - 1] + s[n // 2]) / 2


def combine(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Several repeats of one (server, scenario): the run with the median CPU per delivery
    (or median RSS per connection for idle runs), with every repeat's figure kept."""
    ok = [r for r in runs if "error" not in r and "unavailable" not in r]
    if not ok:
        return runs[-1]
    key = "cpu_us_per_delivery" if ok[0].get("cpu_us_per_delivery") is not None else "rss_per_conn_kb"
    ok.sort(key=lambda r: r.get(key) or 0)
    best = dict(ok[(len(ok) - 1) // 2])
    best["repeats"] = [r.get(key) for r in runs]
    return best


def markdown(doc: dict[str, Any]) -> str:
    meta = doc["meta"]
    out = [f"# Fan-out benchmark{' (quick)' if meta['quick'] else ''}", "",
           f"{meta['date']} · {meta['machine']} · server pinned to CPU {SERVER_CPU}, load generator to CPU "
           f"{LOADGEN_CPU} · repeats: {meta['repeat']} (median shown)", ""]
    out.append("Versions: " + "; ".join(f"**{k}** {v}" for k, v in meta["versions"].items()))
    out.append("")
    res = doc["results"]
    for key, scen in doc["scenarios"].items():
        rows = [r for r in res if r["scenario"] == key]
        if not rows:
            continue
        out += [f"## {scen['name']}", ""]
        if scen.get("idle"):
            out += ["| server | connections | RSS per connection | server RSS | idle CPU | note |",
                    "|---|---:|---:|---:|---:|---|"]
            for r in rows:
                if "unavailable" in r or "error" in r:
                    out.append(f"| {r['server']} | – | – | – | – | {note(r)} |")
                    continue
                out.append(f"| {r['server']} | {fmt(r['connections'])} | {fmt(r['rss_per_conn_kb'], 2)} KB | "
                           f"{fmt(r['rss_kb'] / 1024, 1)} MB | {fmt(r['idle_cpu_pct'], 1)} % | {note(r)} |")
            out.append("")
            continue
        floor = next((r.get("cpu_us_per_delivery") for r in rows if r["server"] == FLOOR), None)
        pic = next((r.get("cpu_us_per_delivery") for r in rows if r["server"] == PICOWS), None)
        out += ["| server | CPU µs / delivery | × C floor | × picows loop | server CPU (% of a core) | deliveries/s "
                "| p50 ms | p99 ms | p99.9 ms | RSS / conn | its CPU: softirq / others | note |",
                "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
        for r in rows:
            if "unavailable" in r or ("error" in r and r.get("cpu_us_per_delivery") is None):
                out.append(f"| {r['server']} | – | – | – | – | – | – | – | – | – | – | {note(r)} |")
                continue
            c = r.get("cpu_us_per_delivery")
            out.append(
                f"| {r['server']} | {fmt(c, 3)} | {ratio(c, floor)} | {ratio(c, pic)} | {fmt(r['server_cpu_pct'], 1)} | "
                f"{fmt(int(r['deliveries_per_s']))} | {fmt(r['p50_ms'], 2)} | {fmt(r['p99_ms'], 2)} | "
                f"{fmt(r['p999_ms'], 2)} | {fmt(r['rss_per_conn_kb'], 1)} KB | "
                f"{cpu0(r)} | "
                f"{note(r)} |")
        out.append("")
    out += ["## chathub against the targets", ""]
    out += targets(doc)
    out.append("")
    return "\n".join(out)


def cpu0(r: dict[str, Any]) -> str:
    """What else ran on the server's CPU in the window: softirq (loopback TCP, charged to
    no process) and other processes (this machine is shared)."""
    if r.get("server_cpu_softirq_pct") is None:
        return "–"
    return f"{r['server_cpu_softirq_pct']:.0f} % / {r['server_cpu_others_pct']:.0f} %"


def note(r: dict[str, Any]) -> str:
    if "unavailable" in r:
        return "unavailable: " + r["unavailable"].replace("|", "/")
    parts = []
    if "error" in r:
        parts.append("error: " + str(r["error"]).replace("|", "/")[:200])
    if r.get("connections") is not None and r.get("connections") != r.get("connections_requested"):
        parts.append(f"{r['connections']:,} of {r['connections_requested']:,} connected "
                     f"({'; '.join(f'{k} ×{v}' for k, v in (r.get('connect_failures') or {}).items())[:160]})")
    if r.get("drained") is False:
        parts.append(f"saturated: {r['delivered']:,} of {r['expected_deliveries']:,} measured deliveries done "
                     f"{r.get('drain_s', 0):.0f} s after the last publish (figures: all deliveries in the window)")
    if r.get("publish_errors"):
        parts.append(f"{r['publish_errors']} publish errors")
    if r.get("unexpected_disconnects"):
        parts.append(f"{r['unexpected_disconnects']} disconnects")
    if r["server"] == "c-floor-batch16" and r.get("p50_ms") is not None:
        parts.append("latency = batching delay")
    if r.get("loadgen_cpu_pct") is not None and r["loadgen_cpu_pct"] > 85:
        parts.append(f"load generator at {r['loadgen_cpu_pct']:.0f} % CPU")
    if r.get("repeats") and len(r["repeats"]) > 1:
        parts.append("repeats: " + ", ".join(fmt(x, 3) if isinstance(x, float) else "–" for x in r["repeats"]))
    return "; ".join(parts)


def targets(doc: dict[str, Any]) -> list[str]:
    res = {(r["server"], r["scenario"]): r for r in doc["results"]}
    lines = []

    def ok(b: bool) -> str:
        return "**met**" if b else "**not met**"

    for key in ("a", "b"):
        ch = res.get(("chathub", key), {})
        fl = res.get((FLOOR, key), {})
        c, f = ch.get("cpu_us_per_delivery"), fl.get("cpu_us_per_delivery")
        if c is not None and f:
            lines.append(f"* scenario {key}: CPU per delivery {c:.3f} µs = {c / f:.2f}× the C floor "
                         f"({f:.3f} µs); target ≤ 1.10×: {ok(c / f <= 1.10)}")
        if c is not None:
            peers = [(s, r.get("cpu_us_per_delivery")) for (s, k), r in res.items()
                     if k == key and s not in ("chathub", FLOOR, "c-floor-batch16", PICOWS) and r.get("cpu_us_per_delivery")]
            if peers:
                worse = [s for s, v in peers if v <= c]
                lines.append(f"* scenario {key}: below every peer (websockets, python-socketio, node-ws): "
                             f"{ok(not worse)}" + (f" (not below {', '.join(worse)})" if worse else ""))
            p = res.get((PICOWS, key), {}).get("cpu_us_per_delivery")
            if p:
                lines.append(f"* scenario {key}: {c / p:.2f}× the plain picows loop ({p:.3f} µs) measured in the same run")
    ch = res.get(("chathub", "a16"), {})
    fb = res.get(("c-floor-batch16", "a16"), {}) or res.get(("c-floor-batch16", "a"), {})
    c, f = ch.get("cpu_us_per_delivery"), fb.get("cpu_us_per_delivery")
    if c is not None and f:
        lines.append(f"* scenario a16 (bursts of 16 frames per connection): CPU per delivery {c:.3f} µs = "
                     f"{c / f:.2f}× the batched C cost ({f:.3f} µs, 16 frames per send()); target ≤ 1.5×: "
                     f"{ok(c / f <= 1.5)}")
    ch = res.get(("chathub", "b"), {})
    if ch.get("server_cpu_pct") is not None:
        lines.append(f"* scenario b: server CPU {ch['server_cpu_pct']:.1f} % of a core (target ≤ 35 %): "
                     f"{ok(ch['server_cpu_pct'] <= 35)}; p99 {ch['p99_ms']:.2f} ms (target ≤ 1 ms): "
                     f"{ok(ch['p99_ms'] <= 1.0)}")
    ch = res.get(("chathub", "c"), {})
    if ch.get("rss_per_conn_kb") is not None:
        lines.append(f"* scenario c: RSS per idle connection {ch['rss_per_conn_kb']:.2f} KB over "
                     f"{ch['connections']:,} connections (target ≤ 6 KB): {ok(ch['rss_per_conn_kb'] <= 6)}")
    if doc["meta"]["quick"]:
        lines.append("* (quick sizes: the targets are stated for the full scenarios)")
    return lines or ["* chathub was not measured"]


def plot(json_path: str, png_path: str) -> str:
    """Draw the PNG with matplotlib: here if importable, else in the cache venv (pip-installed)."""
    script = os.path.join(HERE, "fanout_plot.py")
    py = sys.executable
    if run_cmd([py, "-c", "import matplotlib"], 60).returncode:
        try:
            py = peers_venv()
            if run_cmd([py, "-c", "import matplotlib"], 60).returncode:
                pip_install(py, ["matplotlib"])
        except Unavailable as e:
            return f"no plot: {e}"
    r = run_cmd([py, script, json_path, png_path], 120)
    return png_path if r.returncode == 0 else f"no plot: {tail(r.stderr)}"


# ---------------------------------------------------------------- main


def machine() -> str:
    model = "?"
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return f"{os.cpu_count()} cores ({model}), {mem:.0f} GiB, Linux {platform.release()}"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="small sizes, a few seconds per run (development)")
    ap.add_argument("--scenarios", nargs="+", choices=sorted(SCENARIOS), default=["a", "a16", "b", "c"])
    ap.add_argument("--servers", nargs="+", choices=SERVERS, default=SERVERS)
    ap.add_argument("--out", default=os.path.join(HERE, "results"), help="directory of the JSON, Markdown and PNG")
    ap.add_argument("--repeat", type=int, default=1, help="runs per (server, scenario); the median is reported")
    ap.add_argument("--seconds", type=float, help="override the measured window of scenarios a and b")
    ap.add_argument("--idle-conns", type=int, help="override the connection count of scenario c")
    ap.add_argument("--report-only", metavar="JSON", help="only rewrite the Markdown and PNG of an earlier run's JSON")
    args = ap.parse_args(argv)

    if args.report_only:
        with open(args.report_only) as fh:
            doc = json.load(fh)
        base = os.path.splitext(args.report_only)[0]
        md = markdown(doc)
        png = plot(args.report_only, base + ".png")
        if png.startswith("no plot"):
            md += f"\n({png})\n"
        with open(base + ".md", "w") as fh:
            fh.write(md)
        print(md)
        return 0

    if (os.cpu_count() or 1) < 2:
        global LOADGEN_CPU
        LOADGEN_CPU = 0
        log("warning: one CPU: server and load generator share CPU 0")
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    table = QUICK if args.quick else SCENARIOS
    scenarios = {k: dict(table[k]) for k in args.scenarios}
    for k, s in scenarios.items():
        if args.seconds and not s.get("idle"):
            s["seconds"] = args.seconds
        if s.get("idle"):
            want = args.idle_conns or s["conns"]
            # each process needs a few descriptors of its own beyond its connections
            cap = hard - 64
            if want > cap:
                log(f"scenario {k}: {want:,} connections capped at {cap:,} by RLIMIT_NOFILE's hard limit {hard:,}")
                s["name"] = s["name"].replace(f"{want:,}", f"{cap:,}") + f" (capped by RLIMIT_NOFILE={hard:,})"
                want = cap
            s["conns"] = want
    stem = "fanout-quick" if args.quick else "fanout"
    os.makedirs(args.out, exist_ok=True)
    secret = secrets.token_urlsafe(32)
    workdir = tempfile.mkdtemp(prefix="chathub-fanout-")
    log(f"work dir {workdir} (server logs); cache {CACHE}")

    preps: dict[str, Prepared | str] = {}
    for name in args.servers:
        log(f"preparing {name} …")
        try:
            preps[name] = prepare(name, workdir, secret)
            log(f"  {preps[name].version}")  # type: ignore[union-attr]
        except (Unavailable, subprocess.TimeoutExpired, OSError) as e:
            preps[name] = f"{e}"
            log(f"  unavailable: {e}")

    results: list[dict[str, Any]] = []
    t_start = time.monotonic()
    for key, scen in scenarios.items():
        # repeats go round the servers (so that a change in the machine's background load
        # hits every server alike); idle runs measure memory and are not repeated
        reps = 1 if scen.get("idle") else args.repeat
        runs: dict[str, list[dict[str, Any]]] = {}
        for i in range(reps):
            for name in args.servers:
                if scen.get("idle") and name == "c-floor-batch16":
                    continue  # idle memory is the same program's
                prep = preps[name]
                if isinstance(prep, str):
                    runs[name] = [{"server": name, "scenario": key, "unavailable": prep}]
                    continue
                if runs.get(name) and "unavailable" in runs[name][-1]:
                    continue
                log(f"[{time.monotonic() - t_start:6.0f} s] {scen['name']} — {name}"
                    + (f" (run {i + 1}/{reps})" if reps > 1 else ""))
                r = run_one(prep, key, scen, workdir, secret)
                runs.setdefault(name, []).append(r)
                brief = {k: r.get(k) for k in ("connections", "cpu_us_per_delivery", "server_cpu_pct", "deliveries_per_s",
                                               "p50_ms", "p99_ms", "rss_per_conn_kb", "idle_cpu_pct", "drained",
                                               "server_cpu_softirq_pct", "server_cpu_others_pct", "loadgen_cpu_pct",
                                               "error", "unavailable") if r.get(k) is not None}
                log(f"    {brief}")
        for name in args.servers:
            if name in runs:
                results.append(combine(runs[name]))

    doc = {
        "meta": {
            "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "machine": machine(),
            "load_avg_at_end": open("/proc/loadavg").read().split()[:3],
            "quick": args.quick,
            "repeat": args.repeat,
            "rlimit_nofile": [soft, hard],
            "versions": {n: (p.version if isinstance(p, Prepared) else "unavailable") for n, p in preps.items()},
            "python": platform.python_version(),
            "wall_s": round(time.monotonic() - t_start, 1),
        },
        "scenarios": scenarios,
        "results": results,
    }
    jpath = os.path.join(args.out, stem + ".json")
    with open(jpath, "w") as fh:
        json.dump(doc, fh, indent=1)
    md = markdown(doc)
    mpath = os.path.join(args.out, stem + ".md")
    png = plot(jpath, os.path.join(args.out, stem + ".png"))
    if png.startswith("no plot"):
        md += f"\n({png})\n"
    with open(mpath, "w") as fh:
        fh.write(md)
    print(md)
    log(f"wrote {jpath}, {mpath}, {png}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
