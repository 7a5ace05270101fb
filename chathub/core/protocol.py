"""Wire protocol: command parsing and validation, error and close codes, event encoding.

Pure functions over bytes and dicts; no I/O. See docs/protocol.md.
"""

from __future__ import annotations

import re
from typing import Any

import orjson

# ---------------------------------------------------------------- error / close codes

BAD_REQUEST = "bad_request"
UNAUTHORIZED = "unauthorized"
FORBIDDEN = "forbidden"
NOT_FOUND = "not_found"
RATE_LIMITED = "rate_limited"
TOO_LARGE = "too_large"
BANNED = "banned"
MUTED = "muted"
BLOCKED = "blocked"
CONFLICT = "conflict"
UNAVAILABLE = "unavailable"
INTERNAL = "internal"

ERROR_CODES = frozenset(
    {
        BAD_REQUEST, UNAUTHORIZED, FORBIDDEN, NOT_FOUND, RATE_LIMITED, TOO_LARGE,
        BANNED, MUTED, BLOCKED, CONFLICT, UNAVAILABLE, INTERNAL,
    }
)

CLOSE_NORMAL = 1000
CLOSE_GOING_AWAY = 1001
CLOSE_POLICY = 1008
CLOSE_TOO_LARGE = 1009
CLOSE_INTERNAL = 1011
CLOSE_TRY_AGAIN = 1013
CLOSE_UNAUTHORIZED = 4001
CLOSE_RATE_LIMITED = 4008
CLOSE_TOO_MANY_CONNECTIONS = 4009

MAX_TEXT_CHARS = 64 * 1024  # text of one chat message; frames are bounded by max_message_size
MAX_CLIENT_MSG_ID = 128
MAX_ID_LEN = 128
HISTORY_DEFAULT_LIMIT = 50
HISTORY_MAX_LIMIT = 200

_ROOM_RE = re.compile(r"[A-Za-z0-9_.:\-]{1,64}")
_DM_RE = re.compile(r"dm:(\d+):(\d+)")


class ProtocolError(Exception):
    """A command could not be honoured; becomes an ``ok:false`` reply."""

    __slots__ = ("code", "message", "cmd_id", "extra")

    def __init__(self, code: str, message: str, cmd_id: Any = None, **extra: Any) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.cmd_id = cmd_id
        self.extra = extra


# ---------------------------------------------------------------- commands

#: op -> required fields with their validators, optional fields with theirs.
OPS = frozenset(
    {
        "auth", "join", "leave", "send", "dm", "typing", "read", "history", "presence",
        "edit", "delete", "react", "create_room", "invite", "kick", "ban", "unban",
        "mute", "unmute", "ping",
        # extensions
        "delete_room", "members", "set_role", "set_status",
    }
)


def valid_room_name(room: Any) -> bool:
    return isinstance(room, str) and _ROOM_RE.fullmatch(room) is not None


def dm_room(a: int, b: int) -> str:
    """The direct room of two users: ``dm:A:B`` with A < B."""
    lo, hi = (a, b) if a <= b else (b, a)
    return f"dm:{lo}:{hi}"


def dm_participants(room: str) -> tuple[int, int] | None:
    """The two user ids of a ``dm:`` room, or None when the name is not a valid one."""
    m = _DM_RE.fullmatch(room)
    if m is None:
        return None
    a, b = int(m.group(1)), int(m.group(2))
    if a > b:
        return None
    return a, b


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


class Command:
    """A parsed, validated command. ``args`` holds the op's validated fields."""

    __slots__ = ("op", "id", "has_id", "args")

    def __init__(self, op: str, cmd_id: Any, has_id: bool, args: dict[str, Any]) -> None:
        self.op = op
        self.id = cmd_id
        self.has_id = has_id
        self.args = args

    def __repr__(self) -> str:  # pragma: no cover - debugging aid
        return f"Command({self.op!r}, id={self.id!r}, {self.args!r})"


def _field(obj: dict[str, Any], name: str, cmd_id: Any, kind: str, *, required: bool) -> Any:
    if name not in obj or obj[name] is None:
        if required:
            raise ProtocolError(BAD_REQUEST, f"missing field '{name}'", cmd_id)
        return None
    v = obj[name]
    if kind == "room":
        if not valid_room_name(v):
            raise ProtocolError(
                BAD_REQUEST,
                f"invalid '{name}': 1-64 characters of A-Z a-z 0-9 _ - . :",
                cmd_id,
            )
    elif kind == "seq":
        if not _is_int(v) or v < 0:
            raise ProtocolError(BAD_REQUEST, f"'{name}' must be a non-negative integer", cmd_id)
    elif kind == "user":
        if isinstance(v, str) and v.isdigit() and len(v) <= 19:
            v = int(v)
        if not _is_int(v) or v < 0 or v >= 2**63:
            raise ProtocolError(BAD_REQUEST, f"'{name}' must be a user id (integer)", cmd_id)
    elif kind == "text":
        if not isinstance(v, str):
            raise ProtocolError(BAD_REQUEST, f"'{name}' must be a string", cmd_id)
        if not v.strip():
            raise ProtocolError(BAD_REQUEST, f"'{name}' must not be empty", cmd_id)
        if len(v) > MAX_TEXT_CHARS:
            raise ProtocolError(TOO_LARGE, f"'{name}' is longer than {MAX_TEXT_CHARS} characters", cmd_id)
    elif kind == "str":
        if not isinstance(v, str) or len(v) > MAX_CLIENT_MSG_ID:
            raise ProtocolError(
                BAD_REQUEST, f"'{name}' must be a string of at most {MAX_CLIENT_MSG_ID} characters", cmd_id
            )
    elif kind == "bool":
        if not isinstance(v, bool):
            raise ProtocolError(BAD_REQUEST, f"'{name}' must be true or false", cmd_id)
    elif kind == "duration":
        if not _is_int(v) or v <= 0 or v > 10 * 365 * 86400:
            raise ProtocolError(BAD_REQUEST, f"'{name}' must be a positive number of seconds", cmd_id)
    elif kind == "emoji":
        if not isinstance(v, str) or not (1 <= len(v) <= 32):
            raise ProtocolError(BAD_REQUEST, f"'{name}' must be a string of 1-32 characters", cmd_id)
    else:  # pragma: no cover - programming error
        raise AssertionError(kind)
    return v


# op -> list of (field, kind, required)
_SPEC: dict[str, tuple[tuple[str, str, bool], ...]] = {
    "auth": (("token", "token", True), ("compression", "compression", False)),
    "join": (("room", "room", True), ("since_seq", "seq", False)),
    "leave": (("room", "room", True),),
    "send": (
        ("room", "room", True), ("text", "text", True),
        ("client_msg_id", "str", False), ("reply_to", "seq", False),
    ),
    "dm": (("to", "user", True), ("text", "text", True), ("client_msg_id", "str", False)),
    "typing": (("room", "room", True), ("state", "typing_state", True)),
    "read": (("room", "room", True), ("seq", "seq", True)),
    "history": (
        ("room", "room", True), ("before_seq", "seq", False), ("after_seq", "seq", False),
        ("limit", "limit", False),
    ),
    "presence": (("room", "room", True), ("cursor", "seq", False), ("limit", "limit", False)),
    "edit": (("room", "room", True), ("seq", "seq", True), ("text", "text", True)),
    "delete": (("room", "room", True), ("seq", "seq", True)),
    "react": (
        ("room", "room", True), ("seq", "seq", True), ("emoji", "emoji", True),
        ("remove", "bool", False),
    ),
    "create_room": (
        ("room", "room", True), ("name", "str", False), ("private", "bool", False),
    ),
    "ping": (),
    "delete_room": (("room", "room", True), ("reason", "str", False)),
    "members": (("room", "room", True),),
    "set_status": (("status", "status", True),),
    "set_role": (("room", "room", True), ("user_id", "user", True), ("role", "role", True)),
}
for _op in ("invite", "kick", "ban", "unban", "mute", "unmute"):
    _SPEC[_op] = (
        ("room", "room", True), ("user_id", "user", True),
        ("duration_s", "duration", False), ("reason", "str", False),
    )
assert set(_SPEC) == OPS


def _special(obj: dict[str, Any], name: str, kind: str, required: bool, cmd_id: Any) -> Any:
    v = obj.get(name)
    if v is None:
        if required:
            raise ProtocolError(BAD_REQUEST, f"missing field '{name}'", cmd_id)
        return None
    if kind == "token":
        if not isinstance(v, str) or not v or len(v) > 8192:
            raise ProtocolError(BAD_REQUEST, "'token' must be a non-empty string", cmd_id)
        return v
    if kind == "compression":
        if v not in ("gzip", "none"):
            raise ProtocolError(BAD_REQUEST, "'compression' must be \"gzip\" or \"none\"", cmd_id)
        return v
    if kind == "typing_state":
        if v not in ("start", "stop"):
            raise ProtocolError(BAD_REQUEST, "'state' must be \"start\" or \"stop\"", cmd_id)
        return v
    if kind == "status":
        if v not in ("online", "away"):
            raise ProtocolError(BAD_REQUEST, "'status' must be \"online\" or \"away\"", cmd_id)
        return v
    if kind == "role":
        if v not in ("moderator", "member"):
            raise ProtocolError(BAD_REQUEST, "'role' must be \"moderator\" or \"member\"", cmd_id)
        return v
    if kind == "limit":
        if not _is_int(v) or not (1 <= v <= HISTORY_MAX_LIMIT):
            raise ProtocolError(BAD_REQUEST, f"'limit' must be an integer 1-{HISTORY_MAX_LIMIT}", cmd_id)
        return v
    raise AssertionError(kind)  # pragma: no cover


_SPECIAL_KINDS = frozenset({"token", "compression", "typing_state", "limit", "role", "status"})


def parse_command(data: bytes | str) -> Command:
    """Parse one text frame into a validated ``Command``.

    Raises ``ProtocolError`` (with the command's id when it could be read) for
    non-JSON, non-object JSON, unknown op, missing or mistyped fields.
    """
    try:
        obj = orjson.loads(data)
    except orjson.JSONDecodeError:
        raise ProtocolError(BAD_REQUEST, "frame is not valid JSON") from None
    if not isinstance(obj, dict):
        raise ProtocolError(BAD_REQUEST, "a command must be a JSON object")
    has_id = "id" in obj and obj["id"] is not None
    cmd_id = obj.get("id")
    if has_id:
        if isinstance(cmd_id, bool) or not isinstance(cmd_id, (int, str)) or (
            isinstance(cmd_id, str) and len(cmd_id) > MAX_ID_LEN
        ):
            raise ProtocolError(BAD_REQUEST, "'id' must be an integer or a short string")
    op = obj.get("op")
    if not isinstance(op, str):
        raise ProtocolError(BAD_REQUEST, "missing field 'op'", cmd_id)
    spec = _SPEC.get(op)
    if spec is None:
        raise ProtocolError(BAD_REQUEST, f"unknown op '{op[:32]}'", cmd_id)
    args: dict[str, Any] = {}
    for name, kind, required in spec:
        if kind in _SPECIAL_KINDS:
            args[name] = _special(obj, name, kind, required, cmd_id)
        else:
            args[name] = _field(obj, name, cmd_id, kind, required=required)
    if op == "history" and args["before_seq"] is not None and args["after_seq"] is not None:
        raise ProtocolError(BAD_REQUEST, "give 'before_seq' or 'after_seq', not both", cmd_id)
    return Command(op, cmd_id, has_id, args)


# ---------------------------------------------------------------- encoding

dumps = orjson.dumps


def reply_ok(cmd_id: Any, **result: Any) -> bytes:
    result["id"] = cmd_id
    result["ok"] = True
    return orjson.dumps(result)


def reply_error(cmd_id: Any, code: str, message: str, **extra: Any) -> bytes:
    err: dict[str, Any] = {"code": code, "message": message}
    err.update(extra)
    return orjson.dumps({"id": cmd_id, "ok": False, "error": err})


def error_event(code: str, message: str) -> bytes:
    return orjson.dumps({"ev": "error", "code": code, "message": message})
