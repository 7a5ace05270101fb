"""The sans-I/O hub: connections, users, rooms and who receives what.

The hub never touches a socket, a clock or a database. Callers pass the time in and
execute the effects it returns:

* ``Send(conn, payload, kind)``: write ``payload`` (one JSON text frame) to one connection.
* ``Broadcast(conns, payload, kind, exclude)``: write the same bytes to every connection
  listed but ``exclude`` (``targets()``).
* ``Close(conn, code, reason)``: close one connection with a WebSocket close code.
* ``Subscribe(channel)`` / ``Unsubscribe(channel)``: the node starts or stops listening to
  a room's broker channel (a room is active on a node while it has local members).

``kind`` is ``MESSAGE`` (must be delivered, or the connection is cut as a slow consumer)
or ``EPHEMERAL`` (typing, presence, receipts: shed first when a connection falls behind).

Persistence is the caller's: ``prepare_send`` validates and builds the record to store,
the caller stores it, then calls ``encode_message`` + ``deliver`` (through the broker).
The recipe for each op is in ``chathub/server/node.py``.
"""

from __future__ import annotations

import itertools
import os
from dataclasses import dataclass, field
from typing import Any, Union

import orjson

from chathub.core import protocol as P
from chathub.core.protocol import ProtocolError
from chathub.store.base import NewMessage, StoredMessage

MESSAGE = 0
EPHEMERAL = 1


@dataclass(frozen=True, slots=True)
class Claims:
    """An authenticated identity, from a verified token."""

    user_id: int
    tenant_id: int = 0
    name: str | None = None
    roles: tuple[str, ...] = ()
    exp: int | None = None


# A connection in no room shares this empty set (an empty ``set()`` is 216 bytes); the hub
# gives it its own set at its first join and takes it back when it leaves its last room.
_NO_ROOMS: tuple[str, ...] = ()


class Conn:
    """One client connection as the hub sees it. ``handle`` belongs to the adapter."""

    __slots__ = ("id", "claims", "rooms", "gzip", "handle")

    def __init__(self, conn_id: str, handle: Any = None) -> None:
        self.id = conn_id
        self.claims: Claims | None = None
        # room keys: the rooms' own key strings (``Room.key``), not copies. A list, not a
        # set: at most ``max_rooms_per_connection`` (50) short entries, and a set's table
        # for 20 rooms is 2 KiB (about 100 B per membership; measured with
        # benchmarks/bench_memory.py), a list's 0.2 KiB. Membership tests compare the
        # shared key objects, so a scan of a few dozen is cheap.
        self.rooms: list[str] = _NO_ROOMS  # type: ignore[assignment]
        self.gzip = False
        self.handle = handle

    @property
    def authenticated(self) -> bool:
        return self.claims is not None

    def __repr__(self) -> str:  # pragma: no cover
        return f"Conn({self.id!r}, {self.claims!r})"


OWNER = "owner"
MODERATOR = "moderator"
MEMBER = "member"
ADMIN = "admin"  # tenant admin (token role): owner powers in every room of the tenant
ROOM_ROLES = (OWNER, MODERATOR, MEMBER)


@dataclass(slots=True)
class RoomMeta:
    """What the hub must know of a room to admit and moderate: kept while it is active.

    ``roles`` holds the room's members (user id -> owner / moderator / member): for a
    private room, the only users admitted. ``bans``/``mutes`` map user ids to when the
    sanction ends (ms since the epoch) or None for indefinitely.
    """

    private: bool = False
    roles: dict[int, str] = field(default_factory=dict)
    bans: dict[int, int | None] = field(default_factory=dict)
    mutes: dict[int, int | None] = field(default_factory=dict)
    dm: bool = False

    def role(self, claims: Claims) -> str | None:
        """The user's effective role: admin (token), owner, moderator (room or token), member."""
        if ADMIN in claims.roles:
            return ADMIN
        r = self.roles.get(claims.user_id)
        if r in (OWNER, MODERATOR):
            return r
        if MODERATOR in claims.roles:
            return MODERATOR
        return r

    def can_moderate(self, claims: Claims) -> bool:
        return self.role(claims) in (ADMIN, OWNER, MODERATOR)

    @staticmethod
    def _active(table: dict[int, int | None], uid: int, now_ms: int) -> tuple[bool, int | None]:
        if uid not in table:
            return False, None
        until = table[uid]
        if until is not None and until <= now_ms:
            del table[uid]
            return False, None
        return True, until

    def banned(self, uid: int, now_ms: int) -> tuple[bool, int | None]:
        return self._active(self.bans, uid, now_ms)

    def muted(self, uid: int, now_ms: int) -> tuple[bool, int | None]:
        return self._active(self.mutes, uid, now_ms)


class MemberList(list):  # type: ignore[type-arg]
    """A room's member connections as ``Members.members()`` hands them out: never changed
    once made. ``fan`` is the compiled fan-out's cache of the members' handles (see
    ``chathub._fastpath._fanout``); nothing else uses it."""

    __slots__ = ("fan",)

    def __init__(self, items: Any = ()) -> None:
        super().__init__(items)
        self.fan: Any = None


class Members(dict):  # type: ignore[type-arg]
    """A room's local connections by id, with their list cached for fan-out.

    ``members()`` is the same list object until the membership changes; a change makes
    a new one (never edits the old one in place), so a list handed out stays valid, and
    the compiled fan-out recognises a burst to one room by its unchanged list."""

    __slots__ = ("_list",)

    def __init__(self) -> None:
        super().__init__()
        self._list: MemberList | None = None

    def members(self) -> list[Conn]:
        out = self._list
        if out is None:
            out = self._list = MemberList(self.values())
        return out

    def __setitem__(self, key: str, value: Conn) -> None:
        self._list = None
        dict.__setitem__(self, key, value)

    def __delitem__(self, key: str) -> None:
        self._list = None
        dict.__delitem__(self, key)

    def pop(self, key: str, *default: Any) -> Any:
        self._list = None
        return dict.pop(self, key, *default)

    def popitem(self) -> tuple[str, Conn]:
        self._list = None
        return dict.popitem(self)

    def clear(self) -> None:
        self._list = None
        dict.clear(self)

    def setdefault(self, key: str, default: Any = None) -> Any:
        self._list = None
        return dict.setdefault(self, key, default)

    def update(self, *args: Any, **kw: Any) -> None:
        self._list = None
        dict.update(self, *args, **kw)

    def __ior__(self, other: Any) -> Members:  # type: ignore[override,misc]
        self._list = None
        dict.update(self, other)
        return self


class Room:
    """A room active on this node: its local member connections."""

    __slots__ = (
        "key", "tenant_id", "name", "conns", "users", "last_seq", "replaying", "typing", "meta",
        "departing", "batch", "floor",
    )

    def __init__(self, key: str, tenant_id: int, name: str, meta: RoomMeta | None = None) -> None:
        self.key = key
        self.tenant_id = tenant_id
        self.name = name
        self.meta = meta or RoomMeta()
        self.conns: Members = Members()
        self.users: dict[int, int] = {}  # user id -> local connections joined
        self.last_seq = -1  # -1: not known yet on this node
        # conn id -> live messages held back while that connection replays history
        self.replaying: dict[str, list[tuple[int, bytes]]] = {}
        # conn id -> highest seq a finished replay sent it: a live copy of one of those
        # messages arriving late (another store connection, another node) is dropped
        self.floor: dict[str, int] = {}
        self.typing: dict[int, float] = {}  # user id -> when the start lapses
        # users whose last connection closed: still shown online until the grace ends
        self.departing: dict[int, float] = {}
        # large rooms: joined/left/presence changes collected for one batched event a tick
        self.batch: dict[str, Any] | None = None

    def online(self) -> set[int]:
        """Users online in the room: connected, or within the grace period."""
        return self.users.keys() | self.departing.keys()

    def size(self) -> int:
        return len(self.users) + len(self.departing)


@dataclass(slots=True)
class Send:
    conn: Conn
    payload: bytes
    kind: int = MESSAGE


@dataclass(slots=True)
class Broadcast:
    """``payload`` to every connection of ``conns`` but ``exclude`` (the origin of a room
    message: the room's member list is passed as it is, not copied without it)."""

    conns: list[Conn]
    payload: bytes
    kind: int = MESSAGE
    exclude: Conn | None = None

    def targets(self) -> list[Conn]:
        """The connections that get the payload."""
        ex = self.exclude
        return list(self.conns) if ex is None else [c for c in self.conns if c is not ex]


@dataclass(slots=True)
class Close:
    conn: Conn
    code: int
    reason: str


@dataclass(slots=True)
class Subscribe:
    channel: str


@dataclass(slots=True)
class Unsubscribe:
    channel: str


Effect = Union[Send, Broadcast, Close, Subscribe, Unsubscribe]


@dataclass(frozen=True, slots=True)
class HubLimits:
    max_connections_per_user: int = 3
    max_rooms_per_connection: int = 50
    heartbeat_interval: float = 30.0
    typing_timeout: float = 6.0
    max_replay_buffer: int = 1000  # live messages held per replaying connection
    presence_grace: float = 5.0  # seconds a user stays online after the last connection closes
    large_room: int = 1000  # above this many online users, membership events are batched
    presence_page: int = 100


@dataclass(slots=True)
class JoinResult:
    room: Room
    already: bool


def message_fields(m: StoredMessage, into: dict[str, Any] | None = None) -> dict[str, Any]:
    """A stored message as the protocol shows it (in ``message`` events and ``history``)."""
    d = into if into is not None else {}
    d["room"] = m.room
    d["seq"] = m.seq
    d["msg_id"] = m.msg_id
    d["from"] = m.sender
    d["text"] = m.text
    d["ts"] = m.ts
    if m.client_msg_id is not None:
        d["client_msg_id"] = m.client_msg_id
    if m.reply_to is not None:
        d["reply_to"] = m.reply_to
    if m.edited_at is not None:
        d["edited_at"] = m.edited_at
    if m.deleted:
        d["deleted"] = True
    return d


def room_key(tenant_id: int, room: str) -> str:
    """The node-wide key (and broker channel) of a tenant's room."""
    return f"{tenant_id}/{room}"


class Hub:
    """Connection, user and room state of one node. Not thread-safe; one event loop."""

    def __init__(self, limits: HubLimits | None = None, node_id: str | None = None) -> None:
        self.limits = limits or HubLimits()
        self.node_id = node_id or os.urandom(4).hex()
        self._ids = itertools.count(1)
        self.conns: dict[str, Conn] = {}
        self.users: dict[tuple[int, int], list[Conn]] = {}
        self.rooms: dict[str, Room] = {}
        # rooms with something for ``tick`` (a typing start, a departure's grace, a
        # membership batch), in the order they got it: ``tick`` visits only these
        self._timed: dict[str, Room] = {}
        # (tenant, user) -> [status, since_ms] of users with a connection on this node
        self.status: dict[tuple[int, int], list[Any]] = {}

    # ------------------------------------------------------------ connections

    def connect(self, handle: Any = None) -> Conn:
        conn = Conn(f"{self.node_id}-{next(self._ids)}", handle)
        self.conns[conn.id] = conn
        return conn

    def authenticate(self, conn: Conn, claims: Claims, now_ms: int, *, gzip: bool = False) -> list[Effect]:
        """Bind an identity to ``conn``: the ``ready`` event, or close 4009 over the cap."""
        if conn.claims is not None:
            raise ProtocolError(P.CONFLICT, "already authenticated")
        key = (claims.tenant_id, claims.user_id)
        mine = self.users.get(key)
        if mine is not None and len(mine) >= self.limits.max_connections_per_user:
            return [
                Close(
                    conn,
                    P.CLOSE_TOO_MANY_CONNECTIONS,
                    f"too many connections for this user (max {self.limits.max_connections_per_user})",
                )
            ]
        conn.claims = claims
        conn.gzip = gzip
        self.users.setdefault(key, []).append(conn)
        if key not in self.status:
            self.status[key] = ["online", now_ms]
        ready = {
            "ev": "ready",
            "conn_id": conn.id,
            "user_id": claims.user_id,
            "tenant_id": claims.tenant_id,
            "heartbeat_s": self.limits.heartbeat_interval,
            "server_time": now_ms,
        }
        if claims.name is not None:
            ready["name"] = claims.name
        return [Send(conn, orjson.dumps(ready))]

    def disconnect(self, conn: Conn, now: float | None = None) -> list[Effect]:
        """Forget ``conn``: it leaves its rooms. When it was the user's last connection in
        a room, others get ``left`` after the grace period (``tick``), unless the user
        comes back first; with ``now`` None, at once."""
        effects: list[Effect] = []
        if self.conns.pop(conn.id, None) is None:
            return effects
        grace_until = None if now is None or self.limits.presence_grace <= 0 else now + self.limits.presence_grace
        for key in list(conn.rooms):
            effects.extend(self._leave(conn, self.rooms[key], grace_until))
        if conn.claims is not None:
            ukey = (conn.claims.tenant_id, conn.claims.user_id)
            mine = self.users.get(ukey)
            if mine is not None:
                try:
                    mine.remove(conn)
                except ValueError:
                    pass
                if not mine:
                    del self.users[ukey]
                    self.status.pop(ukey, None)
        return effects

    def user_conns(self, tenant_id: int, user_id: int) -> list[Conn]:
        return self.users.get((tenant_id, user_id), [])

    # ------------------------------------------------------------ rooms

    def _claims(self, conn: Conn) -> Claims:
        if conn.claims is None:
            raise ProtocolError(P.UNAUTHORIZED, "authenticate first")
        return conn.claims

    def check_access(self, conn: Conn, room: str, cmd_id: Any = None) -> str:
        """Raise unless ``conn`` may address ``room``; return the room key."""
        claims = self._claims(conn)
        if room.startswith("dm:"):
            pair = P.dm_participants(room)
            if pair is None or claims.user_id not in pair:
                raise ProtocolError(P.FORBIDDEN, "not a participant of this direct room", cmd_id)
        return room_key(claims.tenant_id, room)

    def active_meta(self, tenant_id: int, room: str) -> RoomMeta | None:
        """The metadata of a room active on this node (None: load it from the store)."""
        r = self.rooms.get(room_key(tenant_id, room))
        return r.meta if r is not None else None

    def admit(self, claims: Claims, meta: RoomMeta, now_ms: int, cmd_id: Any = None) -> None:
        """Raise unless the user may join a room with ``meta``."""
        banned, until = meta.banned(claims.user_id, now_ms)
        if banned and ADMIN not in claims.roles:
            extra = {"until": until} if until is not None else {}
            raise ProtocolError(P.BANNED, "you are banned from this room", cmd_id, **extra)
        if meta.private and meta.role(claims) is None:
            raise ProtocolError(P.FORBIDDEN, "this room is private: an invitation is needed", cmd_id)

    def join(
        self, conn: Conn, room: str, *, replay: bool, cmd_id: Any = None,
        meta: RoomMeta | None = None, now_ms: int = 0,
    ) -> tuple[JoinResult, list[Effect]]:
        """Add ``conn`` to ``room``. With ``replay``, live messages for this connection are
        held back until ``finish_replay``. ``meta`` is the room's metadata when the room is
        not active on this node yet (the caller loaded it); an active room's own is used."""
        key = self.check_access(conn, room, cmd_id)
        claims = conn.claims
        assert claims is not None
        effects: list[Effect] = []
        r = self.rooms.get(key)
        self.admit(claims, r.meta if r is not None else (meta or RoomMeta()), now_ms, cmd_id)
        if r is not None and conn.id in r.conns:
            if replay:
                r.replaying[conn.id] = []
            return JoinResult(r, True), effects
        if len(conn.rooms) >= self.limits.max_rooms_per_connection:
            raise ProtocolError(
                P.FORBIDDEN,
                f"this connection is in {len(conn.rooms)} rooms, the most allowed",
                cmd_id,
            )
        if r is None:
            r = self.rooms[key] = Room(key, claims.tenant_id, room, meta)
            effects.append(Subscribe(key))
        r.conns[conn.id] = conn
        if conn.rooms is _NO_ROOMS:
            conn.rooms = []
        conn.rooms.append(r.key)  # the room's string, shared by its members (``key`` is a fresh copy)
        if replay:
            r.replaying[conn.id] = []
        uid = claims.user_id
        n = r.users.get(uid, 0)
        r.users[uid] = n + 1
        if n == 0 and r.departing.pop(uid, None) is None:
            effects += self._membership_event(r, "joined", uid)
        return JoinResult(r, False), effects

    def _membership_event(self, r: Room, ev: str, uid: int, status: str | None = None) -> list[Effect]:
        """``joined``/``left``/``presence`` to the room's other users, or, in a large room,
        into the batch that ``tick`` sends once (O(N) frames however many change)."""
        if r.size() > self.limits.large_room or r.batch is not None:
            b = r.batch
            if b is None:
                b = r.batch = {"joined": [], "left": [], "status": {}}
                self._timed[r.key] = r
            if ev == "presence":
                b["status"][uid] = status
            else:
                b[ev].append(uid)
            return []
        others = [c for c in r.conns.values() if c.claims is not None and c.claims.user_id != uid]
        if not others:
            return []
        d: dict[str, Any] = {"ev": ev, "room": r.name, "user_id": uid}
        if status is not None:
            d["status"] = status
        return [Broadcast(others, orjson.dumps(d), EPHEMERAL)]

    def leave(self, conn: Conn, room: str, cmd_id: Any = None) -> list[Effect]:
        key = self.check_access(conn, room, cmd_id)
        r = self.rooms.get(key)
        if r is None or conn.id not in r.conns:
            raise ProtocolError(P.NOT_FOUND, "not in this room", cmd_id)
        return self._leave(conn, r)

    def _leave(self, conn: Conn, r: Room, grace_until: float | None = None) -> list[Effect]:
        effects: list[Effect] = []
        del r.conns[conn.id]
        r.replaying.pop(conn.id, None)
        r.floor.pop(conn.id, None)
        conn.rooms.remove(r.key)  # it is there: ``r.conns`` had it
        if not conn.rooms:
            conn.rooms = _NO_ROOMS  # type: ignore[assignment]
        claims = conn.claims
        assert claims is not None
        uid = claims.user_id
        n = r.users[uid] - 1
        if n:
            r.users[uid] = n
        else:
            del r.users[uid]
            if r.typing.pop(uid, None) is not None:
                effects += self._to_others(r, uid, {"ev": "typing", "room": r.name, "user_id": uid, "state": "stop"})
            if grace_until is not None:
                r.departing[uid] = grace_until
                self._timed[r.key] = r
            else:
                effects += self._membership_event(r, "left", uid)
        if not r.conns:
            del self.rooms[r.key]
            effects.append(Unsubscribe(r.key))
        return effects

    def member_room(self, conn: Conn, room: str, cmd_id: Any = None) -> Room:
        """The room ``conn`` has joined, or ``forbidden``."""
        key = self.check_access(conn, room, cmd_id)
        r = self.rooms.get(key)
        if r is None or conn.id not in r.conns:
            raise ProtocolError(P.FORBIDDEN, "join the room first", cmd_id)
        return r

    # ------------------------------------------------------------ messages

    def prepare_send(
        self, conn: Conn, room: str, text: str, *, now_ms: int, msg_id: str,
        client_msg_id: str | None = None, reply_to: int | None = None, cmd_id: Any = None,
    ) -> NewMessage:
        """Validate a ``send`` and build the record to store."""
        r = self.member_room(conn, room, cmd_id)
        claims = conn.claims
        assert claims is not None
        muted, until = r.meta.muted(claims.user_id, now_ms)
        if muted:
            extra = {"until": until} if until is not None else {}
            raise ProtocolError(P.MUTED, "you are muted in this room", cmd_id, **extra)
        if reply_to is not None and r.last_seq >= 0 and reply_to > r.last_seq:
            raise ProtocolError(P.NOT_FOUND, f"no message {reply_to} to reply to", cmd_id)
        return NewMessage(
            tenant_id=r.tenant_id, room=room, sender=claims.user_id, text=text, ts=now_ms,
            msg_id=msg_id, client_msg_id=client_msg_id, reply_to=reply_to,
        )

    @staticmethod
    def encode_message(m: StoredMessage) -> bytes:
        """The ``message`` event of a stored message, encoded once for every recipient."""
        return orjson.dumps(message_fields(m, {"ev": "message"}))

    def note_seq(self, key: str, seq: int) -> None:
        """Record that the room has a stored message ``seq`` (delivered by another path)."""
        r = self.rooms.get(key)
        if r is not None and seq > r.last_seq:
            r.last_seq = seq

    def deliver(self, key: str, origin: str, seq: int, payload: bytes, kind: int = MESSAGE) -> list[Effect]:
        """Fan a room event out to the room's local connections except ``origin``.

        ``seq`` > 0 marks a stored message: it advances the room's ``last_seq`` and is
        held back for connections that are replaying history.
        """
        r = self.rooms.get(key)
        if r is None:
            return []
        if seq > 0 and seq > r.last_seq:
            r.last_seq = seq
        if not r.replaying and not r.floor:
            # the room's cached member list, the origin excluded by the fan-out: no list
            # built per message, and a burst in the room reaches the fan-out as one list
            oc = r.conns.get(origin)
            if len(r.conns) > (oc is not None):
                return [Broadcast(r.conns.members(), payload, kind, oc)]
            return []
        effects: list[Effect] = []
        targets = []
        floor = r.floor
        for cid, c in r.conns.items():
            if cid == origin:
                continue
            if seq > 0 and floor:
                f = floor.get(cid)
                if f is not None:
                    if seq <= f:
                        continue  # the replay already sent it
                    del floor[cid]  # live delivery has passed the replay: back to the fast path
            held = r.replaying.get(cid)
            if held is None or seq <= 0:
                targets.append(c)
            elif len(held) >= self.limits.max_replay_buffer:
                r.replaying.pop(cid)
                effects.append(Close(c, P.CLOSE_TRY_AGAIN, "fell behind during replay; reconnect with since_seq"))
            else:
                held.append((seq, payload))
        if targets:
            effects.insert(0, Broadcast(targets, payload, kind))
        return effects

    def finish_replay(self, conn: Conn, key: str, replayed_to: int) -> list[Effect]:
        """End a replay that sent every message up to ``replayed_to``: release the live
        messages held meanwhile, skipping those the replay already covered."""
        r = self.rooms.get(key)
        if r is None:
            return []
        held = r.replaying.pop(conn.id, None) or []
        held.sort(key=lambda t: t[0])
        out: list[Effect] = []
        last = replayed_to
        for seq, payload in held:
            if seq > last:
                out.append(Send(conn, payload, MESSAGE))
                last = seq
        if last > 0:
            r.floor[conn.id] = last
        return out

    # ------------------------------------------------------------ moderation

    def apply_control(self, key: str, ctl: dict[str, Any]) -> list[Effect]:
        """Apply a room change published by any node (ban, mute, kick, role, invite,
        delete) to the room's cached metadata and its local connections."""
        r = self.rooms.get(key)
        if r is None:
            return []
        action = ctl["action"]
        uid: int = ctl.get("user_id")  # type: ignore[assignment]  # every action but delete_room has one
        meta = r.meta
        effects: list[Effect] = []
        if action == "ban":
            meta.bans[uid] = ctl.get("until")
            effects += self._remove_user(r, uid)
        elif action == "unban":
            meta.bans.pop(uid, None)
        elif action == "mute":
            meta.mutes[uid] = ctl.get("until")
        elif action == "unmute":
            meta.mutes.pop(uid, None)
        elif action == "kick":
            if meta.private and meta.roles.get(uid) != OWNER:
                meta.roles.pop(uid, None)
            effects += self._remove_user(r, uid)
        elif action == "invite":
            meta.roles.setdefault(uid, MEMBER)
        elif action == "role":
            if ctl.get("role") is None:
                meta.roles.pop(uid, None)
            else:
                meta.roles[uid] = ctl["role"]
        elif action == "delete_room":
            ev = orjson.dumps({"ev": "moderation", "room": r.name, "action": "delete_room", "reason": ctl.get("reason")})
            targets = list(r.conns.values())
            effects.append(Broadcast(targets, ev, MESSAGE))
            for c in targets:
                effects += self._leave(c, r)
        return effects

    def _remove_user(self, r: Room, uid: int) -> list[Effect]:
        effects: list[Effect] = []
        for c in [c for c in r.conns.values() if c.claims is not None and c.claims.user_id == uid]:
            if c.id in r.conns:
                effects += self._leave(c, r)
        return effects

    # ------------------------------------------------------------ ephemeral

    def typing(self, conn: Conn, room: str, state: str, now: float, cmd_id: Any = None) -> list[Effect]:
        """``typing`` start/stop to the room's other users; repeated starts within the
        lapse period are coalesced, a start lapses after ``typing_timeout``."""
        r = self.member_room(conn, room, cmd_id)
        uid = conn.claims.user_id  # type: ignore[union-attr]
        if state == "start":
            lapse = r.typing.get(uid)
            r.typing[uid] = now + self.limits.typing_timeout
            self._timed[r.key] = r
            if lapse is not None and lapse > now:
                return []
        else:
            if r.typing.pop(uid, None) is None:
                return []
        return self._to_others(r, uid, {"ev": "typing", "room": r.name, "user_id": uid, "state": state})

    def _to_others(self, r: Room, uid: int, ev: dict[str, Any]) -> list[Effect]:
        targets = [c for c in r.conns.values() if c.claims is not None and c.claims.user_id != uid]
        return [Broadcast(targets, orjson.dumps(ev), EPHEMERAL)] if targets else []

    def set_status(self, conn: Conn, status: str, now_ms: int) -> list[Effect]:
        """``online``/``away`` of the user; a change goes to every room the user is in."""
        claims = self._claims(conn)
        key = (claims.tenant_id, claims.user_id)
        cur = self.status.get(key)
        if cur is None or cur[0] == status:
            return []
        self.status[key] = [status, now_ms]
        effects: list[Effect] = []
        seen: set[str] = set()
        for c in self.users.get(key, []):
            for rk in c.rooms:
                if rk not in seen:
                    seen.add(rk)
                    effects += self._membership_event(self.rooms[rk], "presence", claims.user_id, status)
        return effects

    def presence(self, conn: Conn, room: str, cursor: int | None, limit: int | None, cmd_id: Any = None) -> dict[str, Any]:
        """A page of the room's online users, by user id, after ``cursor``."""
        r = self.member_room(conn, room, cmd_id)
        limit = limit or self.limits.presence_page
        ids = sorted(u for u in r.online() if cursor is None or u > cursor)
        page = ids[:limit]
        users = []
        for uid in page:
            st = self.status.get((r.tenant_id, uid))
            users.append({"user_id": uid, "status": st[0] if st else "online", "since": st[1] if st else None})
        return {"room": r.name, "users": users, "online": r.size(),
                "next_cursor": page[-1] if len(ids) > limit else None}

    def tick(self, now: float) -> list[Effect]:
        """Timers: lapsed typing starts become ``stop``; departures past their grace become
        ``left``; large rooms get their batched membership event."""
        effects: list[Effect] = []
        timed = self._timed
        # (the rooms with timers, not every room: at 10,000 rooms a walk over all of them
        # each second is a stall of its own)
        for key, r in list(timed.items()):
            if self.rooms.get(key) is not r:  # deleted since (or replaced by a new one)
                del timed[key]
                continue
            if r.departing:
                for uid, until in list(r.departing.items()):
                    if until <= now:
                        del r.departing[uid]
                        effects += self._membership_event(r, "left", uid)
            if r.batch is not None:
                b, r.batch = r.batch, None
                ev: dict[str, Any] = {"ev": "presence_batch", "room": r.name, "online": r.size()}
                for k in ("joined", "left"):
                    ev[k] = b[k][:100]
                ev["status"] = {str(u): s for u, s in list(b["status"].items())[:100]}
                ev["truncated"] = max(len(b["joined"]), len(b["left"]), len(b["status"])) > 100
                if r.conns:
                    effects.append(Broadcast(r.conns.members(), orjson.dumps(ev), EPHEMERAL))
            for uid, lapse in list(r.typing.items()):
                if lapse <= now:
                    del r.typing[uid]
                    effects.extend(
                        self._to_others(r, uid, {"ev": "typing", "room": r.name, "user_id": uid, "state": "stop"})
                    )
            if not r.departing and r.batch is None and not r.typing:
                del timed[key]
        return effects
