"""Per-transaction CPU of the store's append on variants of the messages schema.

The store's append at one message per group (BEGIN IMMEDIATE, the room-counter upsert,
one INSERT, COMMIT, in WAL mode), after 50,000 messages in 100 rooms, for: the shipped
shape (a rowid table, its primary-key index and the two unique indexes), ``WITHOUT
ROWID``, and ``WITHOUT ROWID`` with the ``client_msg_id`` index partial (``WHERE
client_msg_id IS NOT NULL``), and the shipped shape with ``locking_mode=EXCLUSIVE``
(no shared-memory locks per transaction); with and without a client_msg_id on every message. Prints
user and system CPU and wall time per transaction.

    python benchmarks/sqlite_schema_variants.py FULL     # or NORMAL (no fsync)
"""

from __future__ import annotations

import os
import resource
import sqlite3
import sys
import tempfile
import time
import uuid

ROOMS = """CREATE TABLE rooms (tenant_id INTEGER NOT NULL, room TEXT NOT NULL, name TEXT, private INTEGER NOT NULL DEFAULT 0,
 created_by INTEGER, created_at INTEGER, updated_at INTEGER, registered INTEGER NOT NULL DEFAULT 0, last_seq INTEGER NOT NULL DEFAULT 0,
 trimmed_seq INTEGER NOT NULL DEFAULT 0, PRIMARY KEY (tenant_id, room))"""
MSG = """CREATE TABLE messages (tenant_id INTEGER NOT NULL, room TEXT NOT NULL, seq INTEGER NOT NULL, msg_id TEXT NOT NULL,
 sender INTEGER NOT NULL, text TEXT NOT NULL, reply_to INTEGER, client_msg_id TEXT, created_at INTEGER NOT NULL, edited_at INTEGER,
 deleted INTEGER NOT NULL DEFAULT 0, deleted_at INTEGER, PRIMARY KEY (tenant_id, room, seq)){}"""
def run(path, variant, cm, n, sync):
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL"); db.execute(f"PRAGMA synchronous={sync}"); db.execute("PRAGMA wal_autocheckpoint=10000")
    db.execute("PRAGMA cache_size=-16384")
    if variant.endswith("+exclusive"):
        db.execute("PRAGMA locking_mode=EXCLUSIVE")
    db.execute(ROOMS)
    db.execute(MSG.format(" WITHOUT ROWID" if variant.startswith("norowid") else ""))
    where = " WHERE client_msg_id IS NOT NULL" if variant == "norowid+partial" else ""
    db.execute(f"CREATE UNIQUE INDEX messages_client_msg_id ON messages (tenant_id, room, client_msg_id, sender){where}")
    db.execute("CREATE UNIQUE INDEX messages_msg_id ON messages (tenant_id, msg_id)")
    # pre-fill 50k messages in 100 rooms
    db.execute("BEGIN")
    for i in range(50000):
        db.execute("INSERT INTO messages (tenant_id, room, seq, msg_id, sender, text, created_at, client_msg_id, reply_to) VALUES (1,?,?,?,?,?,?,?,NULL)",
                   (f"room{i%100}", i//100+1, str(uuid.uuid1()), i%1000, "x"*150, i, f"c{i}" if cm else None))
    db.execute("INSERT INTO rooms (tenant_id, room, last_seq) SELECT 1, room, max(seq) FROM messages GROUP BY room")
    db.execute("COMMIT"); db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    r0 = resource.getrusage(resource.RUSAGE_SELF); t0 = time.perf_counter()
    for i in range(50000, 50000+n):
        room = f"room{i % 100}"
        db.execute("BEGIN IMMEDIATE")
        (t, r, last) = db.execute("INSERT INTO rooms (tenant_id, room, last_seq) VALUES (1,?,1) ON CONFLICT (tenant_id, room) DO UPDATE SET last_seq = last_seq + excluded.last_seq RETURNING tenant_id, room, last_seq", (room,)).fetchone()
        db.execute("INSERT INTO messages (tenant_id, room, seq, msg_id, sender, text, created_at, client_msg_id, reply_to) VALUES (1,?,?,?,?,?,?,?,NULL)",
                   (room, last, str(uuid.uuid1()), i % 1000, "x" * 150, i, f"c{i}" if cm else None))
        db.execute("COMMIT")
    r1 = resource.getrusage(resource.RUSAGE_SELF); t1 = time.perf_counter()
    db.close()
    return 1e6*(r1.ru_utime-r0.ru_utime)/n, 1e6*(r1.ru_stime-r0.ru_stime)/n, 1e6*(t1-t0)/n
sync = sys.argv[1] if len(sys.argv) > 1 else "FULL"
with tempfile.TemporaryDirectory(dir="/tmp") as d:
    for rep in range(2):
        for cm in (True, False):
            for v in ("rowid", "norowid", "norowid+partial", "rowid+exclusive"):
                u, s, w = run(os.path.join(d, f"{v}-{cm}-{rep}.db"), v, cm, 2000, sync)
                print(f"{sync} cm={cm!s:5} {v:16} user {u:5.0f} sys {s:5.0f} total {u+s:5.0f} wall {w:5.0f} us")
