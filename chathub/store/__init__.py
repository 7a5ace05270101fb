"""Durable message stores: SQLite (single node, default) and PostgreSQL (shared by
several hub processes). See ``base`` for the interface and its guarantees."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

from .base import (
    AppendResult,
    AuditEntry,
    CommitUnknown,
    Conflict,
    HistoryPage,
    InvalidMessage,
    MessageStore,
    NewMessage,
    NotFound,
    Replay,
    RoomRecord,
    RoomStore,
    Sanction,
    Store,
    StoreAdmin,
    StoredMessage,
    StoreError,
    StoreUnavailable,
)
from .migrations import migrate
from .sqlite import SqliteMessageStore

if TYPE_CHECKING:
    from .postgres import PostgresMessageStore

SQLITE_FILENAME = "chathub.sqlite3"

__all__ = [
    "AppendResult", "AuditEntry", "CommitUnknown", "Conflict", "HistoryPage", "InvalidMessage",
    "MessageStore", "NewMessage", "NotFound", "Replay", "RoomRecord", "RoomStore", "Sanction",
    "Store", "StoreAdmin", "StoredMessage", "StoreError", "StoreUnavailable", "SqliteMessageStore",
    "PostgresMessageStore", "open_store", "migrate", "SQLITE_FILENAME",
]


def open_store(
    *,
    postgres_dsn: str | None,
    data_dir: str,
    retention_max_age_s: int | None = None,
    retention_max_per_room: int | None = None,
    **options: Any,
) -> "SqliteMessageStore | PostgresMessageStore":
    """Build the configured store (not yet opened: ``await store.open()``, which also
    applies pending migrations, and ``await store.close()`` at shutdown).

    With ``postgres_dsn``: a ``PostgresMessageStore``. Without: a ``SqliteMessageStore``
    on ``<data_dir>/chathub.sqlite3`` (``data_dir`` is created if missing). Extra
    keyword ``options`` go to the store's constructor.
    """
    if postgres_dsn:
        from .postgres import PostgresMessageStore

        return PostgresMessageStore(
            postgres_dsn,
            retention_max_age_s=retention_max_age_s,
            retention_max_per_room=retention_max_per_room,
            **options,
        )
    os.makedirs(data_dir, exist_ok=True)
    return SqliteMessageStore(
        os.path.join(data_dir, SQLITE_FILENAME),
        retention_max_age_s=retention_max_age_s,
        retention_max_per_room=retention_max_per_room,
        **options,
    )


def __getattr__(name: str):  # lazy: asyncpg is only imported when PostgreSQL is used
    if name == "PostgresMessageStore":
        from .postgres import PostgresMessageStore

        return PostgresMessageStore
    raise AttributeError(name)
