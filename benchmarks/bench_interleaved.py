#!/usr/bin/env python3
"""Interleaved fan-out benchmark: several servers measured in alternating short windows.

    python benchmarks/bench_interleaved.py --scenario a --servers chathub c-floor [--rounds 10]
                                           [--seconds 3] [--out benchmarks/results/interleaved-a]

``bench_fanout.py`` measures one server after the other, each for one 10 s window, so a
ratio between two servers spans a minute or more, and this machine's speed drifts by
10-30 % over minutes (the C floor's own repeats in scenario a range from 2.3 to 4.4 µs).
Here every server of the list runs at once (all pinned to CPU 0, each with its own load
generator process pinned to CPU 1, connected and warmed up before the first round), and
the rounds go round the servers, in forward then reverse order (A B B A A B …): while
one server is measured, the others hold their connections idle. Each window measures
the same things as ``bench_fanout.py`` (the server's CPU comes from its process CPU
clock, in ns). The ratio of every server to the baseline (the first server of the
list, or ``--baseline``) is taken over all windows together, and over each pair of
rounds (one forward, one reversed: each server once early and once late in it, which
cancels the order effect, see benchmarks/README.md); the report gives both, the pairs'
as median and range.

A server is any name ``bench_fanout.py`` knows, or ``chathub@PATH``: chathub run from
another source tree (``PATH`` with its compiled modules built in place), for an A/B of
two builds of chathub in one run.

Writes ``interleaved.json`` and ``interleaved.md`` to ``--out``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import queue
import resource
import secrets
import subprocess
import sys
import tempfile
import threading
import time
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench_fanout as bf  # noqa: E402


def prepare(spec: str, workdir: str, secret: str) -> bf.Prepared:
    """``bench_fanout.prepare`` for a server name, or chathub from another tree."""
    if "@" not in spec:
        return bf.prepare(spec, workdir, secret)
    name, path = spec.split("@", 1)
    if name != "chathub":
        raise bf.Unavailable(f"{spec!r}: only chathub@PATH can name a source tree")
    path = os.path.abspath(path)
    r = bf.run_cmd([sys.executable, "-m", "chathub", "--version"], 60, cwd=path)
    if r.returncode:
        raise bf.Unavailable(f"`python -m chathub --version` in {path} failed: {bf.tail(r.stderr)}")
    base = bf.prepare("chathub", workdir, secret)
    env = dict(base.env, PYTHONPATH=path)
    return bf.Prepared(spec, base.argv, base.proto, env, f"{r.stdout.strip()} from {path}",
                       needs_data_dir=True, cwd=path)


class Loadgen:
    """One load generator process in rounds mode, talking JSON lines over its pipes."""

    def __init__(self, prep: bf.Prepared, srv: bf.Server, scen_key: str, scen: dict[str, Any],
                 secret: str) -> None:
        cfg = dict(scen)
        cfg.update(server=prep.name, scenario=scen_key, proto=prep.proto, host="127.0.0.1", port=srv.port,
                   server_pid=srv.proc.pid, cpu=bf.LOADGEN_CPU, server_cpu=bf.SERVER_CPU, jwt_secret=secret,
                   drain_timeout=max(10.0, 2 * scen["seconds"]), rounds=True, hard_timeout=24 * 3600)
        self.proc = subprocess.Popen([sys.executable, bf.LOADGEN, json.dumps(cfg)], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True, bufsize=1, cwd=bf.ROOT)
        self.lines: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            if line.startswith("{"):
                self.lines.put(line)
        self.lines.put(None)

    def result(self, timeout: float) -> dict[str, Any]:
        try:
            line = self.lines.get(timeout=timeout)
        except queue.Empty:
            return {"error": f"no answer from the load generator within {timeout:.0f} s"}
        if line is None:
            return {"error": f"load generator exited {self.proc.wait()}"}
        return json.loads(line)

    def send(self, cmd: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(cmd + "\n")
        self.proc.stdin.flush()

    def stop(self) -> None:
        try:
            self.send("quit")
            self.proc.wait(30)
        except (OSError, subprocess.TimeoutExpired, ValueError):
            self.proc.kill()
            self.proc.wait(10)


def quantiles(xs: list[float]) -> tuple[float, float, float]:
    s = sorted(xs)
    return s[0], bf.median(s), s[-1]


def summarize(doc: dict[str, Any]) -> dict[str, Any]:
    names = doc["servers"]
    base = doc["baseline"]
    rounds = doc["rounds"]
    per: dict[str, Any] = {}
    for n in names:
        ws = [r[n] for r in rounds if n in r and r[n].get("cpu_us_per_delivery")]
        if not ws:
            per[n] = {"windows": 0}
            continue
        cpu = sum(w["server_cpu_s"] for w in ws)
        dl = sum(w["delivered_in_window"] for w in ws)
        wall = sum(w["window_s"] for w in ws)
        per[n] = {
            "windows": len(ws),
            "cpu_us_per_delivery": round(cpu * 1e6 / dl, 3) if dl else None,
            "per_window": [w["cpu_us_per_delivery"] for w in ws],
            "server_cpu_pct": round(100 * cpu / wall, 1),
            "deliveries_per_s": round(dl / wall, 1),
            "p50_ms_median": round(bf.median([w["p50_ms"] for w in ws if w.get("p50_ms") is not None] or [0]), 3),
            "p99_ms_median": round(bf.median([w["p99_ms"] for w in ws if w.get("p99_ms") is not None] or [0]), 3),
            "p99_ms_max": round(max(w["p99_ms"] or 0 for w in ws), 3),
            "drained_all": all(w.get("drained") for w in ws),
            "softirq_pct_median": round(bf.median([w["server_cpu_softirq_pct"] for w in ws]), 1),
            "others_pct_median": round(bf.median([w["server_cpu_others_pct"] for w in ws]), 1),
        }
    for n in names:
        if n == base or not per[n].get("windows") or not per[base].get("windows"):
            continue
        # pairs of rounds (one forward, one reversed): each server is once early and once
        # late in a pair, so a pair is free of the order effect (README: the window after
        # a server's idle spell costs it more)
        rs = []
        for k in range(0, len(rounds) - 1, 2):
            pair = rounds[k:k + 2]
            if all(r.get(n, {}).get("cpu_us_per_delivery") and r.get(base, {}).get("cpu_us_per_delivery")
                   for r in pair):
                rs.append(_cost(pair, n) / _cost(pair, base))
        out = {"all_windows": round(per[n]["cpu_us_per_delivery"] / per[base]["cpu_us_per_delivery"], 3)}
        if rs:
            lo, med, hi = quantiles(rs)
            out.update(pairs_median=round(med, 3), pairs_min=round(lo, 3), pairs_max=round(hi, 3),
                       per_pair=[round(x, 3) for x in rs])
        per[n]["ratio_to_baseline"] = out
    return per


def _cost(rounds: list[dict[str, Any]], name: str) -> float:
    """CPU per delivery of ``name`` over these rounds' windows together."""
    return sum(r[name]["server_cpu_s"] for r in rounds) / sum(r[name]["delivered_in_window"] for r in rounds)


def markdown(doc: dict[str, Any]) -> str:
    meta = doc["meta"]
    base = doc["baseline"]
    out = [f"# Interleaved fan-out benchmark: {doc['scenario']['name']}", "",
           f"{meta['date']} · {meta['machine']} · servers pinned to CPU {bf.SERVER_CPU}, load generators to CPU "
           f"{bf.LOADGEN_CPU} · {len(doc['rounds'])} rounds of {doc['scenario']['seconds']:g} s windows per server "
           f"(after {meta['discarded']} discarded), order alternating", "",
           f"Command: `{meta['command']}`", "",
           f"| server | CPU µs / delivery (all windows) | ÷ {base}, all windows; pairs of rounds: median "
           "(min–max) | server CPU "
           "(% of a core) | deliveries/s | p50 / p99 ms (median of windows) | worst window p99 ms |",
           "|---|---:|---:|---:|---:|---:|---:|"]
    for n in doc["servers"]:
        s = doc["summary"][n]
        if not s.get("windows"):
            out.append(f"| {n} | – | – | – | – | – | – |")
            continue
        r = s.get("ratio_to_baseline")
        if not r:
            rtxt = "baseline"
        elif "pairs_median" in r:
            rtxt = (f"**{r['all_windows']:.3f}×**; {r['pairs_median']:.3f}× "
                    f"({r['pairs_min']:.3f}–{r['pairs_max']:.3f})")
        else:
            rtxt = f"**{r['all_windows']:.3f}×**"
        out.append(f"| {n} | {s['cpu_us_per_delivery']:.3f} | {rtxt} | {s['server_cpu_pct']:.1f} % | "
                   f"{s['deliveries_per_s']:,.0f} | {s['p50_ms_median']:.2f} / {s['p99_ms_median']:.2f} | "
                   f"{s['p99_ms_max']:.2f} |")
    out += ["", "Per window, µs per delivery (rounds in order):", ""]
    for n in doc["servers"]:
        s = doc["summary"][n]
        if s.get("windows"):
            out.append(f"* {n}: " + ", ".join(f"{x:.3f}" for x in s["per_window"]))
    out += ["", "Versions: " + "; ".join(f"**{k}** {v}" for k, v in meta["versions"].items()), ""]
    bad = [n for n in doc["servers"] if doc["summary"][n].get("windows") and not doc["summary"][n]["drained_all"]]
    if bad:
        out.append("Not every expected delivery arrived in some windows of: " + ", ".join(bad)
                   + " (saturated: figures are not comparable).")
    errs = doc.get("errors") or []
    if errs:
        out += ["", "Errors:", ""] + [f"* {e}" for e in errs]
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scenario", choices=[k for k, v in bf.SCENARIOS.items() if not v.get("idle")], default="a")
    ap.add_argument("--servers", nargs="+", default=["chathub", bf.FLOOR],
                    help="server names as bench_fanout.py knows them, or chathub@PATH")
    ap.add_argument("--baseline", help="the server the ratios are taken against (default: the first)")
    ap.add_argument("--rounds", type=int, default=10, help="measured rounds (each measures every server once)")
    ap.add_argument("--discard", type=int, default=1, help="rounds run first and not counted")
    ap.add_argument("--seconds", type=float, default=3.0, help="length of one window's publishing")
    ap.add_argument("--quick", action="store_true", help="the scenario's quick size (development)")
    ap.add_argument("--out", default=os.path.join(bf.HERE, "results", "interleaved"))
    ap.add_argument("--report-only", metavar="JSON", help="only redo the summary and Markdown of an earlier run")
    args = ap.parse_args(argv)
    if args.report_only:
        with open(args.report_only) as fh:
            doc = json.load(fh)
        doc["summary"] = summarize(doc)
        with open(args.report_only, "w") as fh:
            json.dump(doc, fh, indent=1)
        md = markdown(doc)
        with open(os.path.join(os.path.dirname(args.report_only), "interleaved.md"), "w") as fh:
            fh.write(md)
        print(md)
        return 0
    base = args.baseline or args.servers[0]
    if base not in args.servers:
        ap.error(f"--baseline {base} is not among --servers")
    if len(set(args.servers)) != len(args.servers):
        ap.error("a server appears twice in --servers")
    if (os.cpu_count() or 1) < 2:
        bf.LOADGEN_CPU = 0
        bf.log("warning: one CPU: servers and load generators share CPU 0")
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    scen = dict((bf.QUICK if args.quick else bf.SCENARIOS)[args.scenario])
    scen["seconds"] = args.seconds
    secret = secrets.token_urlsafe(32)
    workdir = tempfile.mkdtemp(prefix="chathub-interleaved-")
    bf.log(f"work dir {workdir} (server logs)")
    preps: dict[str, bf.Prepared] = {}
    for spec in args.servers:
        bf.log(f"preparing {spec} …")
        preps[spec] = prepare(spec, workdir, secret)
        bf.log(f"  {preps[spec].version}")

    servers: dict[str, bf.Server] = {}
    gens: dict[str, Loadgen] = {}
    errors: list[str] = []
    rounds: list[dict[str, Any]] = []
    setup: dict[str, Any] = {}
    t0 = time.monotonic()
    try:
        # one at a time: a server's connect and warm-up phases do not overlap another's
        for i, spec in enumerate(args.servers):
            srv = bf.Server(preps[spec], workdir, f"s{i}")
            servers[spec] = srv
            srv.wait_ready()
            bf.log(f"[{time.monotonic() - t0:5.0f} s] {spec}: connecting {scen['conns']:,} clients, warm-up")
            gens[spec] = Loadgen(preps[spec], srv, args.scenario, scen, secret)
            ready = gens[spec].result(timeout=300 + scen["conns"] / 20)
            if not ready.get("ready") or ready.get("error"):
                raise bf.Unavailable(f"{spec}: {ready.get('error') or ready}")
            setup[spec] = ready
        total = args.discard + args.rounds
        for k in range(total):
            order = args.servers if k % 2 == 0 else list(reversed(args.servers))
            row: dict[str, Any] = {}
            for spec in order:
                gens[spec].send("measure")
                res = gens[spec].result(timeout=120 + 4 * args.seconds)
                if servers[spec].proc.poll() is not None:
                    res["error"] = f"server exited with {servers[spec].proc.returncode}: {servers[spec].log_tail()}"
                if res.get("error"):
                    errors.append(f"round {k}, {spec}: {res['error']}")
                    raise bf.Unavailable(errors[-1])
                row[spec] = res
            tag = "discarded" if k < args.discard else f"round {k - args.discard + 1}/{args.rounds}"
            bf.log(f"[{time.monotonic() - t0:5.0f} s] {tag}: "
                   + ", ".join(f"{s} {row[s]['cpu_us_per_delivery']}" for s in args.servers))
            if k >= args.discard:
                rounds.append(row)
    except bf.Unavailable as e:
        errors.append(str(e))
        bf.log(f"stopped: {e}")
    finally:
        for g in gens.values():
            g.stop()
        for srv in servers.values():
            srv.stop()

    doc: dict[str, Any] = {
        "meta": {
            "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "machine": bf.machine(),
            "command": "python benchmarks/bench_interleaved.py " + " ".join(sys.argv[1:] if argv is None else argv),
            "versions": {n: p.version for n, p in preps.items()},
            "python": platform.python_version(),
            "discarded": args.discard,
            "wall_s": round(time.monotonic() - t0, 1),
        },
        "scenario": dict(scen, key=args.scenario),
        "servers": args.servers,
        "baseline": base,
        "setup": setup,
        "rounds": rounds,
        "errors": errors,
    }
    doc["summary"] = summarize(doc)
    os.makedirs(args.out, exist_ok=True)
    jpath = os.path.join(args.out, "interleaved.json")
    with open(jpath, "w") as fh:
        json.dump(doc, fh, indent=1)
    md = markdown(doc)
    with open(os.path.join(args.out, "interleaved.md"), "w") as fh:
        fh.write(md)
    print(md)
    bf.log(f"wrote {jpath} and interleaved.md")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
