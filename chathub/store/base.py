"""The message store interface and the records it trades in.

Every implementation (``SqliteMessageStore``, ``PostgresMessageStore``) passes the
same conformance suite (``tests/store/test_conformance.py``).

Guarantees every implementation gives
-------------------------------------
* **Durable before return.** ``append`` returns only after the message is committed
  to durable storage. If it cannot commit, it raises ``StoreUnavailable`` (the
  backing service is down) and the message is *not* stored; the hub then answers
  ``unavailable`` instead of an acknowledgement. A returned ``AppendResult`` is a
  promise that the message survives a crash of the hub.
* **Per-room sequence.** ``seq`` is per ``(tenant_id, room)``, starts at 1 and grows by
  exactly 1 per stored message: no gaps and no duplicates, even with several hub
  processes writing to the same database.
* **Idempotence.** A second ``append`` with the same ``(tenant_id, room, sender,
  client_msg_id)`` stores nothing and returns the original message with
  ``duplicate=True``.
* **Order of completion.** Appends to one room that are in flight together complete
  in ``seq`` order (implementations commit them in groups, one transaction per group,
  and resolve the group's results in order).
* **Tenants apart.** Every query is scoped by ``tenant_id``; nothing crosses tenants.
* **Bounded reads.** ``history`` never returns more than ``limit`` messages.

None of the methods block the event loop; SQLite work runs on a worker thread.
"""

from __future__ import annotations

import asyncio

from dataclasses import dataclass
from typing import Protocol, runtime_checkable


class StoreError(Exception):
    """Base class of store errors."""


class StoreUnavailable(StoreError):
    """The backing service is down or unreachable; nothing was committed."""


class CommitUnknown(StoreUnavailable):
    """The connection was lost while COMMIT was in flight and the outcome could not be
    settled in time (the backing service stayed away). The message *may* be stored:
    retrying with the same ``client_msg_id`` (or the same ``msg_id``) is safe and
    returns the stored message with ``duplicate=True`` if it was. Subclass of
    ``StoreUnavailable`` so callers that only know that one keep working."""


class NotFound(StoreError):
    """The addressed message does not exist."""


class InvalidMessage(StoreError, ValueError):
    """A value cannot be stored (NUL character, unencodable text, int out of 64-bit range,
    msg_id reused for another room, unknown sanction kind)."""


@dataclass(frozen=True, slots=True)
class NewMessage:
    """A message to append. ``seq`` is assigned by the store."""

    tenant_id: int
    room: str
    sender: int
    text: str
    ts: int  # ms since the Unix epoch, assigned by the hub
    msg_id: str  # globally unique id assigned by the hub
    client_msg_id: str | None = None
    reply_to: int | None = None


@dataclass(frozen=True, slots=True)
class StoredMessage:
    tenant_id: int
    room: str
    seq: int
    msg_id: str
    sender: int
    text: str
    ts: int
    client_msg_id: str | None = None
    reply_to: int | None = None
    edited_at: int | None = None
    deleted: bool = False


@dataclass(frozen=True, slots=True)
class AppendResult:
    message: StoredMessage
    duplicate: bool = False


# Per-message records are built on the hot path. The compiled layer (chathub.speedups)
# learns their slot offsets here: ``new_result`` fills a stored message's records directly,
# and NewMessage's frozen-dataclass ``__init__`` (one ``object.__setattr__`` per field) is
# replaced by one that stores the fields at their offsets (same parameters, same
# objects; with CHATHUB_NO_EXTENSIONS the generated one stays). ``bind_records`` raises
# TypeError if the records no longer have the fields it expects.
def _speed_up_records() -> None:
    from chathub import speedups

    speedups.bind_records(NewMessage, StoredMessage, AppendResult)
    if speedups.new_message_init is not None:
        setattr(NewMessage, "__init__", speedups.new_message_init)


#: NewMessage's dataclass-generated ``__init__`` (the twin of the compiled one)
NEW_MESSAGE_DATACLASS_INIT = NewMessage.__init__
_speed_up_records()


@dataclass(frozen=True, slots=True)
class HistoryPage:
    messages: list[StoredMessage]  # oldest first
    has_more: bool


@dataclass(frozen=True, slots=True)
class Replay:
    """Messages after a given seq, for replay after reconnect.

    ``complete`` is False when history no longer reaches back to ``since_seq + 1``
    (retention removed some of them); ``messages`` then holds what is left.
    """

    messages: list[StoredMessage]
    complete: bool
    last_seq: int


@runtime_checkable
class MessageStore(Protocol):
    """Durable per-room message history. See the module docstring for guarantees."""

    async def open(self) -> None:
        """Connect and apply pending migrations (when configured to)."""

    async def close(self) -> None:
        """Flush pending groups and release resources."""

    async def append(self, msg: NewMessage) -> AppendResult:
        """Store ``msg`` durably and give it the room's next seq.

        Raises ``StoreUnavailable`` when it could not be committed.
        """

    def submit(self, msg: NewMessage) -> "asyncio.Future[AppendResult]":
        """``append`` without the coroutine: queue ``msg`` now (so its place in call
        order is taken by this call, not when a task first runs) and return the future
        of its result. Invalid input or a closed store raise here, at once."""

    async def history(
        self,
        tenant_id: int,
        room: str,
        *,
        before_seq: int | None = None,
        after_seq: int | None = None,
        limit: int = 50,
    ) -> HistoryPage:
        """A page of history, oldest first.

        With ``before_seq``: the ``limit`` messages just before it. With
        ``after_seq``: the ``limit`` messages just after it. With neither: the latest
        ``limit`` messages. ``has_more`` says whether more exist in the direction paged.
        """

    async def replay(self, tenant_id: int, room: str, since_seq: int, limit: int) -> Replay:
        """Messages with seq > ``since_seq``, oldest first, at most ``limit``."""

    async def last_seq(self, tenant_id: int, room: str) -> int:
        """The room's highest seq, 0 when it has none."""

    async def edit(self, tenant_id: int, room: str, seq: int, text: str, ts: int) -> StoredMessage:
        """Replace the text of a message; raises ``NotFound``."""

    async def delete(self, tenant_id: int, room: str, seq: int, ts: int) -> StoredMessage:
        """Mark a message deleted (its text is cleared); raises ``NotFound``."""

    async def set_read(self, tenant_id: int, room: str, user_id: int, seq: int) -> int:
        """Move the user's read position forward to ``seq``; return the position now stored."""

    async def unread_count(self, tenant_id: int, room: str, user_id: int) -> int:
        """Messages in the room after the user's read position."""


# --------------------------------------------------------------------------------------
# Room metadata: rooms, memberships and roles, sanctions (bans/mutes), reactions, audit.
# Implemented by the same classes as MessageStore; the hub reads a room's metadata when
# the room becomes active on a node and writes through on every change.
# --------------------------------------------------------------------------------------


class Conflict(StoreError):
    """The record already exists (e.g. create_room of an existing room)."""


@dataclass(frozen=True, slots=True)
class RoomRecord:
    tenant_id: int
    room: str
    name: str | None
    private: bool
    created_by: int
    created_at: int  # ms


@dataclass(frozen=True, slots=True)
class Sanction:
    kind: str  # "ban" | "mute"
    user_id: int
    until: int | None  # ms since epoch; None = indefinite
    reason: str | None


@runtime_checkable
class RoomStore(Protocol):
    async def get_room(self, tenant_id: int, room: str) -> RoomRecord | None: ...

    async def create_room(self, rec: RoomRecord) -> RoomRecord:
        """Insert; raises ``Conflict`` if the room exists."""

    async def delete_room(self, tenant_id: int, room: str) -> None:
        """Remove the room with its members, sanctions, messages and read positions."""

    async def get_members(self, tenant_id: int, room: str) -> dict[int, str]:
        """user_id -> role ("owner" | "moderator" | "member") of the room's members."""

    async def set_member(self, tenant_id: int, room: str, user_id: int, role: str | None) -> None:
        """Add or change a member's role; ``None`` removes the membership."""

    async def get_sanctions(self, tenant_id: int, room: str, now_ms: int) -> list[Sanction]:
        """Bans and mutes of the room still in force at ``now_ms``."""

    async def set_sanction(self, tenant_id: int, room: str, s: Sanction) -> None: ...

    async def remove_sanction(self, tenant_id: int, room: str, kind: str, user_id: int) -> None: ...

    async def react(
        self, tenant_id: int, room: str, seq: int, user_id: int, emoji: str, remove: bool
    ) -> dict[str, list[int]]:
        """Add or remove one user's reaction; return the message's reactions after it.
        Raises ``NotFound`` when the message does not exist."""

    async def audit(
        self, tenant_id: int, room: str, actor: int, action: str, target: int | None,
        reason: str | None, ts: int,
    ) -> None:
        """Append a moderation action to the audit log."""


# --------------------------------------------------------------------------------------
# Additions implemented by SqliteMessageStore and PostgresMessageStore (kept out of the
# two protocols above so that fakes written against those stay conforming).
# --------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class AuditEntry:
    tenant_id: int
    room: str
    actor: int
    action: str
    target: int | None
    reason: str | None
    ts: int


@runtime_checkable
class StoreAdmin(Protocol):
    async def migrate(self) -> list[str]:
        """Apply pending schema migrations; return the names applied (idempotent)."""

    async def ping(self) -> None:
        """Round trip to the backing service; raises ``StoreUnavailable``."""

    async def apply_retention(self, now_ms: int) -> int:
        """Remove messages beyond the configured retention (age and/or count per room,
        off by default); return how many were removed. Only ever removes the oldest
        messages of a room (a contiguous prefix), so ``replay`` can tell exactly
        whether history still reaches back to a given seq."""

    async def get_reactions(
        self, tenant_id: int, room: str, seqs: list[int]
    ) -> dict[int, dict[str, list[int]]]:
        """seq -> {emoji: sorted user ids} for those of ``seqs`` that have reactions."""

    async def get_audit(self, tenant_id: int, room: str, limit: int = 100) -> list[AuditEntry]:
        """The room's latest audit entries, oldest first."""


@runtime_checkable
class Store(MessageStore, RoomStore, StoreAdmin, Protocol):
    """All three: what a hub node needs of its store (both implementations are one)."""
