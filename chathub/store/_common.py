"""Helpers shared by the SQLite and PostgreSQL stores."""

from __future__ import annotations

import time

from chathub.speedups import new_result  # noqa: F401  (the stores' result records; bound in .base)

from .base import AppendResult, InvalidMessage, NewMessage, StoredMessage

I64_MIN = -(1 << 63)
I64_MAX = (1 << 63) - 1

#: history/replay never return more than this many messages, whatever ``limit`` says.
MAX_PAGE = 1000

#: column order used by every message SELECT in both dialects (see ``row_to_message``).
MSG_COLS = "tenant_id, room, seq, msg_id, sender, text, created_at, client_msg_id, reply_to, edited_at, deleted"

SANCTION_KINDS = ("ban", "mute")


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def check_int(name: str, v: object, *, optional: bool = False) -> None:
    if v is None and optional:
        return
    if isinstance(v, bool) or not isinstance(v, int):
        raise InvalidMessage(f"{name} must be an int, got {type(v).__name__}")
    if not I64_MIN <= v <= I64_MAX:  # type: ignore[operator]
        raise InvalidMessage(f"{name} out of 64-bit range")


def check_str(name: str, v: object, *, optional: bool = False) -> None:
    if v is None and optional:
        return
    if not isinstance(v, str):
        raise InvalidMessage(f"{name} must be a str, got {type(v).__name__}")
    if "\x00" in v:
        raise InvalidMessage(f"{name} must not contain NUL characters")
    if not v.isascii():
        try:
            v.encode("utf-8")
        except UnicodeEncodeError as e:
            raise InvalidMessage(f"{name} is not valid Unicode (lone surrogate)") from e


def _plain(s: object) -> bool:
    return type(s) is str and s.isascii() and "\x00" not in s  # type: ignore[operator]


def validate_new(msg: NewMessage) -> None:
    """Reject values neither backend can store, before they can poison a group commit."""
    # Fast path (this runs for every message on the event loop): exact types, 64-bit
    # ints, ASCII strings without NUL; anything else takes the detailed checks below.
    t, s, ts, rt, cid, text = msg.tenant_id, msg.sender, msg.ts, msg.reply_to, msg.client_msg_id, msg.text
    if (
        type(t) is int and type(s) is int and type(ts) is int
        and I64_MIN <= t <= I64_MAX and I64_MIN <= s <= I64_MAX and I64_MIN <= ts <= I64_MAX
        and (rt is None or (type(rt) is int and I64_MIN <= rt <= I64_MAX))
        and _plain(msg.room) and _plain(msg.msg_id) and (cid is None or _plain(cid))
        and type(text) is str and "\x00" not in text
        and (text.isascii() or _utf8_ok(text))
    ):
        return
    check_int("tenant_id", msg.tenant_id)
    check_str("room", msg.room)
    check_int("sender", msg.sender)
    check_str("text", msg.text)
    check_int("ts", msg.ts)
    check_str("msg_id", msg.msg_id)
    check_str("client_msg_id", msg.client_msg_id, optional=True)
    check_int("reply_to", msg.reply_to, optional=True)


def _utf8_ok(s: str) -> bool:
    try:
        s.encode("utf-8")
        return True
    except UnicodeEncodeError:
        return False


def check_scope(tenant_id: object, room: object) -> None:
    check_int("tenant_id", tenant_id)
    check_str("room", room)


def clamp_limit(limit: int) -> int:
    return max(0, min(int(limit), MAX_PAGE))


def row_to_message(r) -> StoredMessage:
    """Row in MSG_COLS order (tuple, sqlite3.Row or asyncpg.Record) -> StoredMessage."""
    return StoredMessage(
        tenant_id=r[0],
        room=r[1],
        seq=r[2],
        msg_id=r[3],
        sender=r[4],
        text=r[5],
        ts=r[6],
        client_msg_id=r[7],
        reply_to=r[8],
        edited_at=r[9],
        deleted=bool(r[10]),
    )


def group_reactions(rows) -> dict[int, dict[str, list[int]]]:
    """Rows (seq, emoji, user_id) ordered by seq, emoji, user_id -> nested dict."""
    out: dict[int, dict[str, list[int]]] = {}
    for seq, emoji, user_id in rows:
        out.setdefault(seq, {}).setdefault(emoji, []).append(user_id)
    return out


def plan_group(
    msgs: list[NewMessage],
    existing_key: dict[tuple, StoredMessage],
    existing_id: dict[tuple, StoredMessage],
    out: list,
) -> dict[tuple[int, str], list[int]]:
    """Plan one group commit: settle duplicates and the messages that cannot be stored
    into ``out`` (an ``AppendResult``, an exception, or the index of the earlier message of
    the same group it repeats) and return the indices left to insert, grouped by room in
    batch order. ``existing_*`` hold what the database already has, by
    (tenant, room, sender, client_msg_id) and by (tenant, msg_id)."""
    per_room: dict[tuple[int, str], list[int]] = {}
    seen_key: dict[tuple, int] = {}
    seen_id: dict[tuple, int] = {}
    # (lookups in empty dicts skipped: usually nothing is stored yet)
    ex_key = existing_key.get if existing_key else None
    ex_id = existing_id.get if existing_id else None
    for i, m in enumerate(msgs):
        key = None
        if m.client_msg_id is not None:
            key = (m.tenant_id, m.room, m.sender, m.client_msg_id)
            if ex_key is not None:
                ex = ex_key(key)
                if ex is not None:
                    out[i] = AppendResult(ex, duplicate=True)
                    continue
            j = seen_key.get(key)
            if j is not None:
                out[i] = j
                continue
        idk = (m.tenant_id, m.msg_id)
        if ex_id is not None:
            ex = ex_id(idk)
            if ex is not None:
                out[i] = (
                    AppendResult(ex, duplicate=True)
                    if ex.room == m.room
                    else InvalidMessage(f"msg_id {m.msg_id!r} already used in another room")
                )
                continue
        j = seen_id.get(idk)
        if j is not None:
            out[i] = (
                j if msgs[j].room == m.room
                else InvalidMessage(f"msg_id {m.msg_id!r} already used in another room")
            )
            continue
        rk = (m.tenant_id, m.room)
        idxs = per_room.get(rk)
        if idxs is None:
            per_room[rk] = [i]
        else:
            idxs.append(i)
        if key is not None:
            seen_key[key] = i
        seen_id[idk] = i
    return per_room
