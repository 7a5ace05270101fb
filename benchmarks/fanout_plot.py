#!/usr/bin/env python3
"""Plot of bench_fanout.py's JSON: CPU per delivery (a, b), p99 latency (a, b), RSS per idle connection (c).

Usage: python benchmarks/fanout_plot.py fanout.json fanout.png   (needs matplotlib)
"""

from __future__ import annotations

import json
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

COLORS = {"chathub": "#d62728", "c-floor": "#444444", "c-floor-batch16": "#999999", "picows-loop": "#1f77b4",
          "websockets": "#2ca02c", "python-socketio": "#9467bd", "node-ws": "#ff7f0e"}


def bars(ax, rows, key, title, unit, log=False):  # type: ignore[no-untyped-def]
    rows = [r for r in rows if r.get(key) is not None]
    if not rows:
        ax.set_visible(False)
        return
    names = [r["server"] for r in rows]
    vals = [r[key] for r in rows]
    ax.barh(names, vals, color=[COLORS.get(n, "#17becf") for n in names])
    for i, v in enumerate(vals):
        ax.text(v, i, f" {v:.3g}", va="center", fontsize=8)
    ax.invert_yaxis()
    ax.set_title(title, fontsize=10)
    ax.set_xlabel(unit)
    if log:
        ax.set_xscale("log")
    ax.margins(x=0.25)


def main() -> None:
    with open(sys.argv[1]) as fh:
        doc = json.load(fh)
    res = doc["results"]
    scen = doc["scenarios"]
    fan = [k for k, s in scen.items() if not s.get("idle")]
    idle = [k for k, s in scen.items() if s.get("idle")]
    ncols = max(1, len(fan))
    nrows = (2 if fan else 0) + (1 if idle else 0)
    fig, axes = plt.subplots(nrows, ncols, figsize=(6.5 * ncols, 3.2 * nrows), squeeze=False)
    row = 0
    if fan:
        for j, k in enumerate(fan):
            rows = [r for r in res if r["scenario"] == k]
            bars(axes[0][j], rows, "cpu_us_per_delivery", f"{scen[k]['name']}\nserver CPU per delivery", "µs", log=True)
            bars(axes[1][j], [r for r in rows if r["server"] != "c-floor-batch16"], "p99_ms",
                 f"{scen[k]['name']}\np99 end-to-end latency", "ms", log=True)
        row = 2
    if idle:
        rows = [r for r in res if r["scenario"] == idle[0]]
        bars(axes[row][0], rows, "rss_per_conn_kb", f"{scen[idle[0]]['name']}\nRSS per idle connection", "KB")
        for j in range(1, ncols):
            axes[row][j].set_visible(False)
    meta = doc["meta"]
    fig.suptitle(f"chathub fan-out benchmark — {meta['date']} — {meta['machine']}", fontsize=9)
    fig.tight_layout()
    fig.savefig(sys.argv[2], dpi=110)


if __name__ == "__main__":
    main()
