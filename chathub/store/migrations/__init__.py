"""Versioned schema migrations, one folder of SQL files per dialect.

Files are named ``NNNN_description.sql`` (``NNNN`` = version, strictly increasing);
applied versions are recorded in ``schema_migrations(version, name, applied_at)``.
A migration, once released, is never edited: add a new file instead.

Applying is done by the stores (``await store.migrate()``, and by ``open()`` unless
``migrate=False``); ``migrate(store)`` below is the module-level spelling. Both
dialects are safe when several processes start at once: PostgreSQL serialises on a
transaction-level advisory lock, SQLite on ``BEGIN IMMEDIATE`` plus the version
table's primary key.

Packaging note: the ``*.sql`` files must ship as package data of ``chathub.store``
(``migrations/*/*.sql``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

_DIR = Path(__file__).resolve().parent
_NAME = re.compile(r"^(\d{4})_[a-z0-9_]+\.sql$")

# Key of the PostgreSQL advisory lock held while migrating ("chathub" in ASCII).
ADVISORY_LOCK_KEY = 0x63686174687562


@dataclass(frozen=True, slots=True)
class Migration:
    version: int
    name: str  # file name without .sql, e.g. "0001_initial"
    sql: str


def load(dialect: str) -> list[Migration]:
    """All migrations of ``dialect`` ("sqlite" | "postgres"), by version."""
    d = _DIR / dialect
    if not d.is_dir():
        raise ValueError(f"no migrations for dialect {dialect!r}")
    out: list[Migration] = []
    for f in sorted(d.iterdir()):
        m = _NAME.match(f.name)
        if not m:
            continue
        out.append(Migration(int(m.group(1)), f.stem, f.read_text(encoding="utf-8")))
    versions = [m.version for m in out]
    if len(set(versions)) != len(versions) or not out:
        raise ValueError(f"bad migration set for {dialect}: {[m.name for m in out]}")
    return out


async def migrate(store) -> list[str]:
    """Apply the store's pending migrations; return the names applied (idempotent)."""
    return await store.migrate()
