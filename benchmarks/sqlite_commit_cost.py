"""CPU of one small SQLite write transaction, as the store's worker runs it at low load.

The store's group commit at ~1 message per group (scenario b of the fan-out benchmark:
1,000 msg/s spread over 100 rooms) is BEGIN IMMEDIATE, the room-counter upsert, one
INSERT, COMMIT in WAL mode. This runs that loop alone on the schema's shape and prints
the process's user and system CPU per transaction with ``synchronous=FULL`` (the
store's setting: the WAL is fsynced at every commit) and ``NORMAL`` (no fsync), so the
cost of the fsync on this machine can be read off.

    python benchmarks/sqlite_commit_cost.py [--n 3000] [--dir /tmp]
"""

from __future__ import annotations

import argparse
import os
import resource
import sqlite3
import tempfile
import time


def run(path: str, sync: str, n: int) -> dict[str, float]:
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute(f"PRAGMA synchronous={sync}")
    db.execute("PRAGMA wal_autocheckpoint=10000")
    db.execute("CREATE TABLE c (t INT, r TEXT, last INT, PRIMARY KEY (t, r))")
    db.execute("CREATE TABLE m (t INT, r TEXT, seq INT, msg_id TEXT, sender INT, text TEXT, cm TEXT, ts INT, "
               "PRIMARY KEY (t, r, seq))")
    db.execute("CREATE UNIQUE INDEX m_cm ON m (t, r, sender, cm)")
    db.execute("CREATE UNIQUE INDEX m_id ON m (t, msg_id)")
    r0, t0 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
    for i in range(n):
        room = f"room{i % 100}"
        db.execute("BEGIN IMMEDIATE")
        (last,) = db.execute("INSERT INTO c VALUES (1, ?, 1) ON CONFLICT DO UPDATE SET last = last + 1 "
                             "RETURNING last", (room,)).fetchone()
        db.execute("INSERT INTO m VALUES (1, ?, ?, ?, ?, ?, NULL, ?)",
                   (room, last, f"{i + (1 << 120):032x}", i % 1000, "x" * 150, i))
        db.execute("COMMIT")
    r1, t1 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
    db.close()
    return {"user_us": 1e6 * (r1.ru_utime - r0.ru_utime) / n, "sys_us": 1e6 * (r1.ru_stime - r0.ru_stime) / n,
            "wall_us": 1e6 * (t1 - t0) / n}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=3000)
    ap.add_argument("--dir", default=None, help="where the database goes (default: a temporary directory)")
    a = ap.parse_args()
    with tempfile.TemporaryDirectory(dir=a.dir) as d:
        for sync in ("FULL", "FULL", "NORMAL"):
            path = os.path.join(d, f"t-{sync}-{time.monotonic_ns()}.db")
            r = run(path, sync, a.n)
            print(f"synchronous={sync:6} per transaction: user {r['user_us']:.0f} us, system {r['sys_us']:.0f} us, "
                  f"wall {r['wall_us']:.0f} us")


if __name__ == "__main__":
    main()
