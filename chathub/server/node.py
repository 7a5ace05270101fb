"""The node: composition root of one hub process.

It owns the sans-I/O ``Hub``, a ``Store`` (messages, rooms, admin) and a ``Broker``,
runs each command's recipe (validate in the hub → store → publish → fan out), executes
the hub's effects on connection handles, and runs the timers (auth timeout, heartbeat,
idle timeout, typing lapse, retention). It knows nothing of picows: a connection handle is any object with
the ``ConnHandle`` methods, so tests drive a node with in-memory handles.
"""

from __future__ import annotations

import asyncio
import collections
import functools
import logging
import time
from typing import Any, Awaitable, Callable, Protocol

import orjson
import uuid_utils

from chathub import auth
from chathub import speedups
from chathub.broker.base import Broker, BrokerUnavailable
from chathub.config import HubConfig
from chathub.core import protocol as P
from chathub.core.hub import (
    ADMIN,
    EPHEMERAL,
    MEMBER,
    MESSAGE,
    MODERATOR,
    OWNER,
    RoomMeta,
    Broadcast,
    Claims,
    Close,
    Conn,
    Effect,
    Hub,
    HubLimits,
    Send,
    Subscribe,
    Unsubscribe,
    message_fields,
    room_key,
)
from chathub.core.protocol import Command, ProtocolError
from chathub.store.base import (
    CommitUnknown, Conflict, InvalidMessage, NewMessage, NotFound, RoomRecord, Sanction, Store,
    StoredMessage, StoreUnavailable,
)



HEARTBEAT_SLICE = 256  # connections one step of the heartbeat pings at most
HEARTBEAT_MIN_STEP = 0.01  # seconds between two steps, at least


def heartbeat_plan(n: int, interval: float) -> tuple[int, int]:
    """(steps, connections per step) of a heartbeat round over ``n`` connections: the
    fewest steps of at most ``HEARTBEAT_SLICE`` each, spread over ``interval``, but no
    more steps than ``HEARTBEAT_MIN_STEP`` apart allows (then the slices grow)."""
    steps = max(1, min(-(-n // HEARTBEAT_SLICE), int(interval / HEARTBEAT_MIN_STEP)))
    return steps, -(-n // steps)


def new_msg_id() -> str:
    """A new message id: a UUIDv7 (RFC 9562) as 32 hex digits. Time-ordered, so the
    stores' ``msg_id`` index grows at its right edge (one page a group commit touches)
    instead of at random places (uuid4: one page per message); 74 random bits keep ids
    unguessable and unique."""
    return uuid_utils.uuid7().hex

log = logging.getLogger("chathub.node")

GZIP_THRESHOLD = 1024
ABUSE_THRESHOLD = 20  # refusals within ABUSE_WINDOW_S that close the connection with 4008
ABUSE_WINDOW_S = 10.0
#: op -> rate-limit bucket
_LIMIT_KIND = {"send": "message", "dm": "message", "typing": "typing", "react": "reaction"}
CONTROL = -1  # envelope seq of a room control event (moderation), never shown to clients
REPLAY_PAGE = 200
MAX_INFLIGHT_PER_CONN = 32  # commands of one connection past their ordering point
MAX_BACKLOG_PER_CONN = 64  # commands of one connection waiting for the one before
_APPEND_OPS = frozenset({"send", "dm"})  # ordered by the store among themselves


class ConnHandle(Protocol):
    """What the node needs of a transport-level connection."""

    last_rx: float

    def send_text(self, payload: bytes, kind: int) -> None: ...

    def send_binary(self, payload: bytes, kind: int) -> None: ...

    def close(self, code: int, reason: str) -> None: ...

    def ping(self) -> None: ...

    def pause_reading(self) -> None: ...

    def resume_reading(self) -> None: ...


def _user_channel(tenant_id: int, user_id: int) -> str:
    return f"u/{tenant_id}/{user_id}"


def _limit_key(claims: Any) -> int:
    """One integer per (tenant, user) for the rate limiter (exact: ids are below 2**63)."""
    return (claims.tenant_id << 64) | claims.user_id


class Node:
    def __init__(
        self,
        cfg: HubConfig,
        store: Store,
        broker: Broker,
        *,
        clock: Callable[[], float] = time.monotonic,
        wall_ms: Callable[[], int] = lambda: time.time_ns() // 1_000_000,
    ) -> None:
        self.cfg = cfg
        self.store = store
        self.broker = broker
        self.clock = clock
        self.wall_ms = wall_ms
        self.hub = Hub(
            HubLimits(
                max_connections_per_user=cfg.max_connections_per_user,
                max_rooms_per_connection=cfg.max_rooms_per_connection,
                heartbeat_interval=cfg.heartbeat_interval,
                typing_timeout=cfg.typing_timeout,
                max_replay_buffer=cfg.message_queue_size,
                presence_grace=cfg.presence_grace,
                large_room=cfg.large_room_threshold,
            )
        )
        self.dev_secret: str | None = None
        self._auth_cfg = cfg
        if cfg.dev_mode:
            self.dev_secret = auth.generate_secret()
            import dataclasses

            self._auth_cfg = dataclasses.replace(cfg, jwt_secret=self.dev_secret)
        broker.set_handler(self._on_broker)
        # a broker that publishes synchronously (in-process) offers publish_nowait
        self._publish_nowait: Callable[[str, bytes], None] | None = getattr(broker, "publish_nowait", None)
        self._tasks: set[asyncio.Task[Any]] = set()
        self._append_futs: set[asyncio.Future[Any]] = set()  # appends the store has not answered
        self._inflight: dict[str, int] = {}
        # conn id -> commands waiting while an earlier command of the connection has not
        # reached its ordering point (present while such a command runs)
        self._busy: dict[str, collections.deque[Command]] = {}
        # conn id -> appends (send/dm) handed to the store and not answered yet. While
        # there are some, a ``_busy`` entry of the connection can only be a command
        # waiting for them (no command that holds the others back starts meanwhile).
        self._appending: dict[str, int] = {}
        self._pauses: dict[str, int] = {}
        self._timers: list[asyncio.Task[Any]] = []
        self.started = False
        self.stats = {"commands": 0, "errors": 0, "delivered": 0, "rate_limited": 0}
        self.limiter: Any = None
        self._last_sweep = 0.0
        if cfg.rate_limits:
            self.limiter = speedups.RateLimiter(
                {
                    "message": cfg.rate_limit_message,
                    "typing": cfg.rate_limit_typing,
                    "reaction": cfg.rate_limit_reaction,
                    "other": cfg.rate_limit_other,
                },
                cfg.rate_limit_window,
                abuse_threshold=ABUSE_THRESHOLD,
                abuse_window_s=ABUSE_WINDOW_S,
            )

    # ------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        await self.store.open()
        await self.broker.start()
        self._timers.append(asyncio.create_task(self._tick_loop()))
        self._timers.append(asyncio.create_task(self._heartbeat_loop()))
        if self.cfg.retention_max_age_s or self.cfg.retention_max_per_room:
            self._timers.append(asyncio.create_task(self._retention_loop()))
        self.started = True

    async def stop(self, code: int = P.CLOSE_GOING_AWAY, reason: str = "server shutting down") -> None:
        for t in self._timers:
            t.cancel()
        for conn in list(self.hub.conns.values()):
            if conn.handle is not None:
                conn.handle.close(code, reason)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 5
        while (self._tasks or self._append_futs) and loop.time() < deadline:
            await asyncio.wait([*self._tasks, *self._append_futs], timeout=deadline - loop.time())
            await asyncio.sleep(0)  # done callbacks run (an answered append publishes and acks)
        await self.broker.close()
        await self.store.close()

    def token_for(self, user_id: int, tenant_id: int = 0, **kw: Any) -> str:
        secret = self._auth_cfg.jwt_secret
        if secret is None:
            raise RuntimeError("tokens can be minted only with an HS* secret")
        return auth.mint_token(secret, user_id, tenant_id, algorithm=self.cfg.jwt_algorithm, **kw)

    # ------------------------------------------------------------ connections

    def open(self, handle: ConnHandle, *, token: str | None = None, gzip: bool = False) -> Conn:
        """A WebSocket connection was upgraded. Authenticate now (token in the URL) or
        within ``auth_timeout`` (first frame ``auth``)."""
        conn = self.hub.connect(handle)
        if token is not None:
            self._authenticate(conn, token, gzip, None)
        else:
            asyncio.get_running_loop().call_later(self.cfg.auth_timeout, self._auth_deadline, conn)
        return conn

    def _auth_deadline(self, conn: Conn) -> None:
        if conn.claims is None and conn.id in self.hub.conns and conn.handle is not None:
            conn.handle.close(P.CLOSE_UNAUTHORIZED, "authentication timed out")

    def _authenticate(self, conn: Conn, token: str, gzip: bool, cmd_id: Any) -> None:
        try:
            claims = auth.verify_token(token, self._auth_cfg, time.time())
        except auth.AuthError as e:
            h = conn.handle
            if cmd_id is not None:
                h.send_text(P.reply_error(cmd_id, P.UNAUTHORIZED, str(e)), MESSAGE)
            else:
                h.send_text(P.error_event(P.UNAUTHORIZED, str(e)), MESSAGE)
            h.close(P.CLOSE_UNAUTHORIZED, str(e))
            return
        effects = self.hub.authenticate(conn, claims, self.wall_ms(), gzip=gzip and self.cfg.enable_compression)
        if conn.claims is not None:
            mine = self.hub.user_conns(claims.tenant_id, claims.user_id)
            if len(mine) == 1:
                effects.append(Subscribe(_user_channel(claims.tenant_id, claims.user_id)))
            if cmd_id is not None:
                effects.append(Send(conn, P.reply_ok(cmd_id, conn_id=conn.id, user_id=claims.user_id,
                                                     tenant_id=claims.tenant_id)))
        self.execute(effects)

    def closed(self, conn: Conn) -> None:
        """The transport is gone."""
        claims = conn.claims
        effects = self.hub.disconnect(conn, self.clock())
        if claims is not None and not self.hub.user_conns(claims.tenant_id, claims.user_id):
            effects.append(Unsubscribe(_user_channel(claims.tenant_id, claims.user_id)))
        self._inflight.pop(conn.id, None)
        self._busy.pop(conn.id, None)
        self._appending.pop(conn.id, None)
        self._pauses.pop(conn.id, None)
        conn.handle = None
        self.execute(effects)

    # ------------------------------------------------------------ effects

    def execute(self, effects: list[Effect]) -> None:
        broadcast = speedups.broadcast
        gz = speedups.gzip_compress
        dfl = speedups.deflate_compress_raw  # only for listeners that negotiated permessage-deflate
        delivered = 0
        try:
            for e in effects:
                if type(e) is Broadcast:
                    delivered += broadcast(e.conns, e.payload, e.kind, GZIP_THRESHOLD, gz, dfl, exclude=e.exclude)
                elif type(e) is Send:
                    delivered += broadcast((e.conn,), e.payload, e.kind, GZIP_THRESHOLD, gz, dfl)
                elif type(e) is Close:
                    if e.conn.handle is not None:
                        e.conn.handle.close(e.code, e.reason)
                elif type(e) is Subscribe:
                    self.broker.subscribe(e.channel)
                elif type(e) is Unsubscribe:
                    self.broker.unsubscribe(e.channel)
        finally:
            if delivered:
                self.stats["delivered"] += delivered

    def _broadcast(self, conns: Any, payload: bytes, kind: int) -> None:
        """Write ``payload`` to every connection of ``conns`` with a handle: the frame is
        encoded once and the same bytes corked for every picows listener (one write per
        connection per loop iteration, ordered with replies and closes); gzip clients get
        one shared compressed copy of a payload above ``GZIP_THRESHOLD``; listeners that
        negotiated permessage-deflate get one shared compressed text frame (RSV1) of a
        payload above the fan-out's ``DEFLATE_THRESHOLD``; other handles (in-memory ones in
        tests) get ``send_text``/``send_binary``. See ``chathub._fastpath._fanout``."""
        self.stats["delivered"] += speedups.broadcast(
            conns, payload, kind, GZIP_THRESHOLD, speedups.gzip_compress, speedups.deflate_compress_raw
        )

    def _reply(self, conn: Conn, cmd: Command, **result: Any) -> None:
        if cmd.has_id and conn.handle is not None:
            self._broadcast((conn,), P.reply_ok(cmd.id, **result), MESSAGE)

    def _fail(self, conn: Conn, cmd_id: Any, code: str, message: str, **extra: Any) -> None:
        self.stats["errors"] += 1
        if conn.handle is not None:
            self._broadcast((conn,), P.reply_error(cmd_id, code, message, **extra), MESSAGE)

    # ------------------------------------------------------------ broker

    @staticmethod
    def _envelope(origin: str, seq: int, payload: bytes) -> bytes:
        """A publication as the broker carries it (``_on_broker`` takes it apart)."""
        return b"%s %d %s" % (origin.encode(), seq, payload)

    def _publish(self, channel: str, origin: str, seq: int, payload: bytes) -> Awaitable[None]:
        return self.broker.publish(channel, self._envelope(origin, seq, payload))

    def _on_broker(self, channel: str, data: bytes) -> None:
        origin, seq_s, payload = data.split(b" ", 2)
        seq = int(seq_s)
        if seq == CONTROL:
            self.execute(self.hub.apply_control(channel, orjson.loads(payload)))
            return
        kind = MESSAGE if seq > 0 or payload.startswith(b'{"ev":"message"') else EPHEMERAL
        if channel.startswith("u/"):
            _, tid, uid = channel.split("/")
            o = origin.decode()
            targets = [c for c in self.hub.user_conns(int(tid), int(uid)) if c.id != o]
            self._broadcast(targets, payload, kind)
        else:
            self.execute(self.hub.deliver(channel, origin.decode(), seq, payload, kind))

    # ------------------------------------------------------------ commands

    def on_text(self, conn: Conn, data: bytes) -> None:
        """One complete text message from the client."""
        self.stats["commands"] += 1
        try:
            cmd = P.parse_command(data)
        except ProtocolError as e:
            self._fail(conn, e.cmd_id, e.code, e.message, **e.extra)
            return
        if conn.claims is None:
            if cmd.op == "auth":
                self._authenticate(conn, cmd.args["token"], cmd.args["compression"] == "gzip", cmd.id)
            else:
                self._fail(conn, cmd.id, P.UNAUTHORIZED, "authenticate first")
            return
        limiter = self.limiter
        if limiter is not None and cmd.op != "ping":
            ukey = _limit_key(conn.claims)
            now = self.clock()
            retry = limiter.check(ukey, _LIMIT_KIND.get(cmd.op, "other"), now)
            if retry:
                self.stats["rate_limited"] += 1
                if limiter.abusive(ukey, now):
                    conn.handle.close(P.CLOSE_RATE_LIMITED, "rate limits exceeded persistently")
                    return
                self._fail(conn, cmd.id, P.RATE_LIMITED, f"too many '{cmd.op}' commands; retry later",
                           retry_after_ms=retry)
                return
        backlog = self._busy.get(conn.id)
        if backlog is not None:
            backlog.append(cmd)
            if len(backlog) == MAX_BACKLOG_PER_CONN:
                self._pause(conn)
            return
        self._dispatch(conn, cmd)

    def _dispatch(self, conn: Conn, cmd: Command) -> None:
        """Run one command. Commands of a connection take effect in the order sent: an
        async command holds the ones after it back until its *ordering point* (``send``:
        handed to the store, which keeps the order of appends; others: done). Another
        async command (a read, a join with replay, an edit…) also waits until the
        connection's earlier appends are answered, so that it sees them whatever the
        store does with concurrent reads."""
        handler = self._ops.get(cmd.op)
        try:
            if handler is not None:
                handler(self, conn, cmd)
            elif cmd.op in _APPEND_OPS:
                self._start_append(conn, cmd)
            elif self._appending.get(conn.id):
                self._busy[conn.id] = collections.deque((cmd,))  # started by _finish_append
            else:
                self._busy[conn.id] = collections.deque()
                self._spawn(conn, cmd, self._async_ops[cmd.op](self, conn, cmd))
        except ProtocolError as e:
            self._fail(conn, cmd.id, e.code, e.message, **e.extra)

    def _ordered(self, conn: Conn) -> None:
        """The running command of ``conn`` reached its ordering point: start what waits."""
        backlog = self._busy.pop(conn.id, None)
        if backlog is None:
            return
        was_full = len(backlog) >= MAX_BACKLOG_PER_CONN
        while backlog and conn.handle is not None:
            self._dispatch(conn, backlog.popleft())
            nxt = self._busy.get(conn.id)
            if nxt is not None:  # an async command leads now; the rest wait behind it
                nxt.extend(backlog)
                break
        if was_full:
            self._resume(conn)

    def _pause(self, conn: Conn) -> None:
        n = self._pauses.get(conn.id, 0)
        self._pauses[conn.id] = n + 1
        if n == 0 and conn.handle is not None:
            conn.handle.pause_reading()

    def _resume(self, conn: Conn) -> None:
        n = self._pauses.get(conn.id, 0) - 1
        if n < 0:
            return
        self._pauses[conn.id] = n
        if n == 0 and conn.handle is not None:
            conn.handle.resume_reading()

    def on_binary(self, conn: Conn) -> None:
        self._fail(conn, None, P.BAD_REQUEST, "binary frames are not accepted; send JSON text frames")

    def _spawn(self, conn: Conn, cmd: Command, coro: Awaitable[None], leads: bool = True,
               entered: bool = False) -> None:
        """Run an async command. ``leads``: it holds the connection's later commands back
        until it is done (see ``_dispatch``). ``entered``: already counted in flight."""
        if not entered:
            self._enter(conn)
        task = asyncio.ensure_future(self._run(conn, cmd, coro, leads))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _enter(self, conn: Conn) -> None:
        """One more command of ``conn`` in flight (past its ordering point, not done); at
        ``MAX_INFLIGHT_PER_CONN`` the connection's reading pauses."""
        n = self._inflight.get(conn.id, 0) + 1
        self._inflight[conn.id] = n
        if n == MAX_INFLIGHT_PER_CONN:
            self._pause(conn)

    def _leave(self, conn: Conn) -> None:
        n = self._inflight.get(conn.id)
        if n is not None:
            self._inflight[conn.id] = n - 1
            if n == MAX_INFLIGHT_PER_CONN:
                self._resume(conn)

    async def _run(self, conn: Conn, cmd: Command, coro: Awaitable[None], leads: bool = True) -> None:
        try:
            await coro
        except Exception as e:  # noqa: BLE001
            self._fail_with(conn, cmd, e)
        finally:
            if leads:
                self._ordered(conn)
            self._leave(conn)

    def _fail_with(self, conn: Conn, cmd: Command, exc: Exception) -> None:
        """Answer a failed command with the protocol's error for ``exc``."""
        try:
            raise exc
        except ProtocolError as e:
            self._fail(conn, cmd.id, e.code, e.message, **e.extra)
        except CommitUnknown:
            self._fail(conn, cmd.id, P.UNAVAILABLE,
                       "message store failed while committing; the message may or may not be stored: "
                       "retry with the same client_msg_id")
        except StoreUnavailable:
            self._fail(conn, cmd.id, P.UNAVAILABLE, "message store unavailable; nothing was stored, try again")
        except InvalidMessage as e:
            self._fail(conn, cmd.id, P.BAD_REQUEST, str(e))
        except BrokerUnavailable:
            self._fail(conn, cmd.id, P.UNAVAILABLE, "broker unavailable")
        except Exception:
            log.exception("internal error in op %s", cmd.op)
            self._fail(conn, cmd.id, P.INTERNAL, "internal error")

    # sync ops -------------------------------------------------------

    def _op_auth(self, conn: Conn, cmd: Command) -> None:
        raise ProtocolError(P.CONFLICT, "already authenticated", cmd.id)

    def _op_ping(self, conn: Conn, cmd: Command) -> None:
        if cmd.has_id:
            self._reply(conn, cmd, pong=True, server_time=self.wall_ms())

    def _op_leave(self, conn: Conn, cmd: Command) -> None:
        self.execute(self.hub.leave(conn, cmd.args["room"], cmd.id))
        self._reply(conn, cmd, room=cmd.args["room"])

    def _op_typing(self, conn: Conn, cmd: Command) -> None:
        self.execute(self.hub.typing(conn, cmd.args["room"], cmd.args["state"], self.clock(), cmd.id))
        self._reply(conn, cmd)

    def _op_presence(self, conn: Conn, cmd: Command) -> None:
        a = cmd.args
        self._reply(conn, cmd, **self.hub.presence(conn, a["room"], a["cursor"], a["limit"], cmd.id))

    def _op_set_status(self, conn: Conn, cmd: Command) -> None:
        self.execute(self.hub.set_status(conn, cmd.args["status"], self.wall_ms()))
        self._reply(conn, cmd, status=cmd.args["status"])

    # async ops ------------------------------------------------------

    async def _op_join(self, conn: Conn, cmd: Command) -> None:
        room = cmd.args["room"]
        since = cmd.args["since_seq"]
        claims = conn.claims
        assert claims is not None
        self.hub.check_access(conn, room, cmd.id)
        meta = self.hub.active_meta(claims.tenant_id, room)
        if meta is None:
            meta = await self._load_meta(claims.tenant_id, room, creator=claims.user_id, cmd_id=cmd.id)
        res, effects = self.hub.join(conn, room, replay=since is not None, cmd_id=cmd.id, meta=meta,
                                     now_ms=self.wall_ms())
        self.execute(effects)
        r = res.room
        try:
            if r.last_seq < 0:
                last = await self.store.last_seq(r.tenant_id, room)
                r.last_seq = max(r.last_seq, last)
            unread = await self.store.unread_count(r.tenant_id, room, claims.user_id)
            if since is None:
                self._reply(conn, cmd, room=room, last_seq=r.last_seq, unread=unread, **self._members(r))
                return
            rep = await self.store.replay(r.tenant_id, room, since, REPLAY_PAGE)
        except BaseException:
            if conn.handle is not None and r.key in conn.rooms and not res.already:
                self.execute(self.hub.leave(conn, room))
            raise
        self._reply(
            conn, cmd, room=room, last_seq=max(r.last_seq, rep.last_seq), unread=unread,
            recovered=rep.complete, **self._members(r),
        )
        sent = since
        while True:
            if conn.handle is None or r.key not in conn.rooms:
                return
            for m in rep.messages:
                if m.seq > sent:
                    self._broadcast((conn,), Hub.encode_message(m), MESSAGE)
                    sent = m.seq
            if len(rep.messages) < REPLAY_PAGE:
                break
            rep = await self.store.replay(r.tenant_id, room, sent, REPLAY_PAGE)
        self.execute(self.hub.finish_replay(conn, r.key, sent))

    def _members(self, r: Any) -> dict[str, Any]:
        """``members`` of a join reply: the online user ids, at most a page of them."""
        online = sorted(r.online())
        page = self.hub.limits.presence_page
        out: dict[str, Any] = {"members": online[:page], "online": len(online)}
        if len(online) > page:
            out["members_truncated"] = True
        return out

    def _start_append(self, conn: Conn, cmd: Command) -> None:
        """``send``/``dm``: checked and handed to the store right here, in the order the
        connection sent them (their ordering point), so a burst of sends from one
        connection lands in one store group and one fan-out pass; the rest (ack,
        publish) follows when the store answers."""
        if cmd.op == "send":
            a = cmd.args
            new = self.hub.prepare_send(
                conn, a["room"], a["text"], now_ms=self.wall_ms(), msg_id=new_msg_id(),
                client_msg_id=a["client_msg_id"], reply_to=a["reply_to"], cmd_id=cmd.id,
            )
            channels = [room_key(new.tenant_id, new.room)]
        else:
            new, channels = self._prepare_dm(conn, cmd)
        try:
            fut = self.store.submit(new)
        except Exception as e:  # noqa: BLE001 - StoreUnavailable, InvalidMessage…
            self._fail_with(conn, cmd, e)
            return
        cid = conn.id
        self._appending[cid] = self._appending.get(cid, 0) + 1
        # the rest runs as the future's callback, not as a task: no Task, coroutine or
        # extra loop callbacks per message (a task only for a broker that must be awaited)
        self._enter(conn)
        self._append_futs.add(fut)
        fut.add_done_callback(functools.partial(self._append_done, conn, cmd, channels))

    def _append_done(self, conn: Conn, cmd: Command, channels: list[str], fut: asyncio.Future) -> None:
        """(the store's answer to an append) Publish, then ack: the ack goes out only
        after the commit. What the store raised is answered as the protocol's error."""
        self._append_futs.discard(fut)
        cid = conn.id
        n = self._appending.get(cid, 0) - 1
        if n > 0:
            self._appending[cid] = n
        else:
            self._appending.pop(cid, None)
            if cid in self._busy and conn.handle is not None:
                self._ordered(conn)  # the command waiting for these appends
        handed_on = False
        try:
            if fut.cancelled():
                return
            res = fut.result()
            if not res.duplicate:
                m = res.message
                payload = Hub.encode_message(m)
                if self._publish_nowait is None:
                    handed_on = True
                    self._spawn(conn, cmd, self._publish_and_ack(conn, cmd, res, payload, channels), leads=False,
                                entered=True)
                    return
                for ch in channels:
                    self._publish_nowait(ch, self._envelope(cid, m.seq, payload))
                self.hub.note_seq(room_key(m.tenant_id, m.room), m.seq)
            self._ack_append(conn, cmd, res)
        except Exception as e:  # noqa: BLE001 - answered with the protocol's error
            self._fail_with(conn, cmd, e)
        finally:
            if not handed_on:
                self._leave(conn)

    async def _publish_and_ack(self, conn: Conn, cmd: Command, res: Any, payload: bytes, channels: list[str]) -> None:
        """``_append_done``'s tail for a broker whose publish must be awaited."""
        m = res.message
        for ch in channels:
            await self._publish(ch, conn.id, m.seq, payload)
        self.hub.note_seq(room_key(m.tenant_id, m.room), m.seq)
        self._ack_append(conn, cmd, res)

    def _ack_append(self, conn: Conn, cmd: Command, res: Any) -> None:
        m = res.message
        result: dict[str, Any] = {"room": m.room, "seq": m.seq, "msg_id": m.msg_id, "ts": m.ts}
        if res.duplicate:
            result["duplicate"] = True
        self._reply(conn, cmd, **result)

    def _prepare_dm(self, conn: Conn, cmd: Command) -> tuple[NewMessage, list[str]]:
        """A direct message reaches every connection of both users (their user channels)."""
        claims = conn.claims
        assert claims is not None
        to = cmd.args["to"]
        room = P.dm_room(claims.user_id, to)
        new = NewMessage(
            tenant_id=claims.tenant_id, room=room, sender=claims.user_id, text=cmd.args["text"],
            ts=self.wall_ms(), msg_id=new_msg_id(), client_msg_id=cmd.args["client_msg_id"],
        )
        channels = [_user_channel(claims.tenant_id, claims.user_id)]
        if to != claims.user_id:
            channels.append(_user_channel(claims.tenant_id, to))
        return new, channels

    async def _op_history(self, conn: Conn, cmd: Command) -> None:
        a = cmd.args
        claims = conn.claims
        assert claims is not None
        meta = await self._meta(conn, a["room"], cmd.id, missing_ok=True)
        if meta.role(claims) not in (ADMIN, OWNER, MODERATOR):
            self.hub.admit(claims, meta, self.wall_ms(), cmd.id)
        page = await self.store.history(
            claims.tenant_id, a["room"], before_seq=a["before_seq"], after_seq=a["after_seq"],
            limit=a["limit"] or P.HISTORY_DEFAULT_LIMIT,
        )
        self._reply(conn, cmd, room=a["room"], messages=[message_fields(m) for m in page.messages], has_more=page.has_more)

    async def _op_read(self, conn: Conn, cmd: Command) -> None:
        r = self.hub.member_room(conn, cmd.args["room"], cmd.id)
        claims = conn.claims
        assert claims is not None
        seq = cmd.args["seq"]
        if r.last_seq >= 0 and seq > r.last_seq:
            raise ProtocolError(P.BAD_REQUEST, f"seq {seq} is beyond the room's last message ({r.last_seq})", cmd.id)
        pos = await self.store.set_read(r.tenant_id, r.name, claims.user_id, seq)
        ev = orjson.dumps({"ev": "receipt", "room": r.name, "user_id": claims.user_id, "seq": pos})
        await self._publish(r.key, conn.id, 0, ev)
        self._reply(conn, cmd, room=r.name, seq=pos)

    async def _op_edit(self, conn: Conn, cmd: Command) -> None:
        await self._modify(conn, cmd, edit=True)

    async def _op_delete(self, conn: Conn, cmd: Command) -> None:
        await self._modify(conn, cmd, edit=False)

    async def _modify(self, conn: Conn, cmd: Command, *, edit: bool) -> None:
        a = cmd.args
        r = self.hub.member_room(conn, a["room"], cmd.id)
        claims = conn.claims
        assert claims is not None
        page = await self.store.history(r.tenant_id, r.name, after_seq=a["seq"] - 1, limit=1)
        if not page.messages or page.messages[0].seq != a["seq"]:
            raise ProtocolError(P.NOT_FOUND, f"no message {a['seq']} in this room", cmd.id)
        orig = page.messages[0]
        if orig.deleted:
            raise ProtocolError(P.NOT_FOUND, f"message {a['seq']} was deleted", cmd.id)
        is_author = orig.sender == claims.user_id
        if edit and not is_author:
            raise ProtocolError(P.FORBIDDEN, "only the author can edit a message", cmd.id)
        if not edit and not is_author and not r.meta.can_moderate(claims):
            raise ProtocolError(P.FORBIDDEN, "only the author or a moderator can delete a message", cmd.id)
        now = self.wall_ms()
        try:
            m = await (self.store.edit(r.tenant_id, r.name, a["seq"], a["text"], now) if edit
                       else self.store.delete(r.tenant_id, r.name, a["seq"], now))
        except NotFound:
            raise ProtocolError(P.NOT_FOUND, f"no message {a['seq']} in this room", cmd.id) from None
        ev: dict[str, Any] = {"ev": "edited" if edit else "deleted", "room": r.name, "seq": m.seq, "by": claims.user_id, "ts": now}
        if edit:
            ev["text"] = m.text
        await self._publish(r.key, conn.id, 0, orjson.dumps(ev))
        self._reply(conn, cmd, room=r.name, seq=m.seq)

    # rooms and moderation ---------------------------------------------

    async def _load_meta(self, tenant_id: int, room: str, *, creator: int | None = None, cmd_id: Any = None) -> RoomMeta:
        """A room's metadata from the store. With ``creator``, a public room that does not
        exist is created (``auto_create_rooms``); without, a missing room is ``not_found``."""
        if room.startswith("dm:"):
            return RoomMeta(dm=True)
        rec = await self.store.get_room(tenant_id, room)
        if rec is None:
            if creator is None or not self.cfg.auto_create_rooms:
                raise ProtocolError(P.NOT_FOUND, "no such room", cmd_id)
            try:
                await self.store.create_room(RoomRecord(tenant_id, room, None, False, creator, self.wall_ms()))
            except Conflict:
                pass  # created meanwhile
            rec = await self.store.get_room(tenant_id, room)
            assert rec is not None
        roles = await self.store.get_members(tenant_id, room)
        meta = RoomMeta(private=rec.private, roles=dict(roles))
        for s in await self.store.get_sanctions(tenant_id, room, self.wall_ms()):
            (meta.bans if s.kind == "ban" else meta.mutes)[s.user_id] = s.until
        return meta

    async def _meta(self, conn: Conn, room: str, cmd_id: Any, *, missing_ok: bool = False) -> RoomMeta:
        """The room's metadata (cached while active). A missing room is ``not_found``, or,
        with ``missing_ok`` and ``auto_create_rooms``, an empty public room."""
        claims = conn.claims
        assert claims is not None
        self.hub.check_access(conn, room, cmd_id)
        meta = self.hub.active_meta(claims.tenant_id, room)
        if meta is not None:
            return meta
        try:
            return await self._load_meta(claims.tenant_id, room, cmd_id=cmd_id)
        except ProtocolError as e:
            if e.code == P.NOT_FOUND and missing_ok and self.cfg.auto_create_rooms:
                return RoomMeta()
            raise

    async def _control(self, tenant_id: int, room: str, ctl: dict[str, Any]) -> None:
        await self._publish(room_key(tenant_id, room), "-", CONTROL, orjson.dumps(ctl))

    async def _notify_user(self, tenant_id: int, user_id: int, ev: dict[str, Any]) -> None:
        await self._publish(_user_channel(tenant_id, user_id), "-", 0, orjson.dumps(ev))

    async def _op_create_room(self, conn: Conn, cmd: Command) -> None:
        a = cmd.args
        claims = conn.claims
        assert claims is not None
        if a["room"].startswith("dm:"):
            raise ProtocolError(P.BAD_REQUEST, "dm: rooms are created by sending a dm", cmd.id)
        rec = RoomRecord(claims.tenant_id, a["room"], a["name"], bool(a["private"]), claims.user_id, self.wall_ms())
        try:
            await self.store.create_room(rec)
        except Conflict:
            raise ProtocolError(P.CONFLICT, "a room with this name exists", cmd.id) from None
        await self.store.set_member(claims.tenant_id, a["room"], claims.user_id, OWNER)
        await self._control(claims.tenant_id, a["room"], {"action": "role", "user_id": claims.user_id, "role": OWNER})
        self._reply(conn, cmd, room=a["room"], name=a["name"], private=rec.private, role=OWNER)

    async def _op_delete_room(self, conn: Conn, cmd: Command) -> None:
        a = cmd.args
        claims = conn.claims
        assert claims is not None
        meta = await self._meta(conn, a["room"], cmd.id)
        if meta.dm or meta.role(claims) not in (OWNER, ADMIN):
            raise ProtocolError(P.FORBIDDEN, "only the owner or a tenant admin can delete a room", cmd.id)
        await self.store.delete_room(claims.tenant_id, a["room"])
        await self.store.audit(claims.tenant_id, a["room"], claims.user_id, "delete_room", None, a["reason"], self.wall_ms())
        await self._control(claims.tenant_id, a["room"], {"action": "delete_room", "reason": a["reason"]})
        self._reply(conn, cmd, room=a["room"])

    async def _op_members(self, conn: Conn, cmd: Command) -> None:
        a = cmd.args
        claims = conn.claims
        assert claims is not None
        meta = await self._meta(conn, a["room"], cmd.id)
        if meta.private and meta.role(claims) is None:
            raise ProtocolError(P.FORBIDDEN, "this room is private", cmd.id)
        roles = await self.store.get_members(claims.tenant_id, a["room"])
        r = self.hub.rooms.get(room_key(claims.tenant_id, a["room"]))
        online = set(r.users) if r is not None else set()
        members = [{"user_id": u, "role": role, "online": u in online} for u, role in sorted(roles.items())]
        self._reply(conn, cmd, room=a["room"], members=members)

    async def _moderate(self, conn: Conn, cmd: Command) -> None:
        """invite / kick / ban / unban / mute / unmute / set_role: owner or moderator only."""
        a = cmd.args
        op = cmd.op
        claims = conn.claims
        assert claims is not None
        tid, room, target = claims.tenant_id, a["room"], a["user_id"]
        meta = await self._meta(conn, room, cmd.id)
        if meta.dm:
            raise ProtocolError(P.FORBIDDEN, "direct rooms have no moderation", cmd.id)
        actor_role = meta.role(claims)
        if actor_role not in (OWNER, MODERATOR, ADMIN):
            raise ProtocolError(P.FORBIDDEN, f"only the owner or a moderator can {op.replace('_', ' ')}", cmd.id)
        target_role = meta.roles.get(target)
        if op != "invite" and target_role == OWNER and actor_role != ADMIN:
            raise ProtocolError(P.FORBIDDEN, "the owner cannot be moderated", cmd.id)
        if op == "set_role" and actor_role not in (OWNER, ADMIN):
            raise ProtocolError(P.FORBIDDEN, "only the owner can change roles", cmd.id)
        if target == claims.user_id and op != "invite":
            raise ProtocolError(P.BAD_REQUEST, "you cannot moderate yourself", cmd.id)
        now = self.wall_ms()
        until = now + a["duration_s"] * 1000 if a.get("duration_s") else None
        reason = a.get("reason")
        ctl: dict[str, Any] = {"action": op, "user_id": target}
        if op == "invite":
            if target_role is None:
                await self.store.set_member(tid, room, target, MEMBER)
        elif op == "set_role":
            await self.store.set_member(tid, room, target, a["role"])
            ctl = {"action": "role", "user_id": target, "role": a["role"]}
        elif op == "kick":
            if meta.private:
                await self.store.set_member(tid, room, target, None)
        elif op in ("ban", "mute"):
            await self.store.set_sanction(tid, room, Sanction(op, target, until, reason))
            ctl["until"] = until
        elif op in ("unban", "unmute"):
            await self.store.remove_sanction(tid, room, op[2:], target)
        await self.store.audit(tid, room, claims.user_id, op, target, reason, now)
        await self._control(tid, room, ctl)
        ev: dict[str, Any] = {"ev": "moderation", "room": room, "action": op, "reason": reason, "by": claims.user_id}
        if until is not None:
            ev["until"] = until
        if op == "set_role":
            ev["role"] = a["role"]
        await self._notify_user(tid, target, ev)
        result: dict[str, Any] = {"room": room, "user_id": target, "action": op}
        if until is not None:
            result["until"] = until
        self._reply(conn, cmd, **result)

    async def _op_react(self, conn: Conn, cmd: Command) -> None:
        a = cmd.args
        r = self.hub.member_room(conn, a["room"], cmd.id)
        claims = conn.claims
        assert claims is not None
        try:
            reactions = await self.store.react(r.tenant_id, r.name, a["seq"], claims.user_id, a["emoji"], bool(a["remove"]))
        except NotFound:
            raise ProtocolError(P.NOT_FOUND, f"no message {a['seq']} in this room", cmd.id) from None
        ev = {"ev": "reaction", "room": r.name, "seq": a["seq"], "user_id": claims.user_id, "emoji": a["emoji"],
              "remove": bool(a["remove"]), "reactions": reactions}
        await self._publish(r.key, conn.id, 0, orjson.dumps(ev))
        self._reply(conn, cmd, room=r.name, seq=a["seq"], reactions=reactions)

    _ops: dict[str, Callable[["Node", Conn, Command], None]] = {
        "auth": _op_auth,
        "ping": _op_ping,
        "leave": _op_leave,
        "typing": _op_typing,
        "presence": _op_presence,
        "set_status": _op_set_status,
    }
    _async_ops: dict[str, Callable[["Node", Conn, Command], Awaitable[None]]] = {
        "join": _op_join,
        "history": _op_history,
        "read": _op_read,
        "edit": _op_edit,
        "delete": _op_delete,
        "react": _op_react,
        "create_room": _op_create_room,
        "delete_room": _op_delete_room,
        "members": _op_members,
        "invite": _moderate,
        "kick": _moderate,
        "ban": _moderate,
        "unban": _moderate,
        "mute": _moderate,
        "unmute": _moderate,
        "set_role": _moderate,
    }

    # ------------------------------------------------------------ server-side calls

    async def multicast(self, tenant_id: int, user_ids: list[int], event: dict[str, Any]) -> None:
        """Send one event to every connection of each listed user (server side; the admin
        API exposes it). The event is encoded once and goes through the users' channels,
        so it reaches them on whichever node they are connected."""
        if "ev" not in event:
            raise ValueError("an event needs an 'ev' field")
        payload = orjson.dumps(event)
        for uid in dict.fromkeys(user_ids):
            await self._publish(_user_channel(tenant_id, uid), "-", 0, payload)

    # ------------------------------------------------------------ timers

    async def _tick_loop(self) -> None:
        while True:
            await asyncio.sleep(1.0)
            try:
                now = self.clock()
                self.execute(self.hub.tick(now))
                if self.limiter is not None and now - self._last_sweep > self.cfg.rate_limit_window:
                    self._last_sweep = now
                    self.limiter.sweep(now)
            except Exception:  # pragma: no cover - defensive
                log.exception("tick failed")

    async def _heartbeat_loop(self) -> None:
        """Every connection gets a ping once per ``heartbeat_interval``, or is closed
        (1001) once it has been silent for ``connection_timeout``. A round takes the
        connections there are when it starts, in steps of at most ``HEARTBEAT_SLICE``
        spread over the interval, so that no loop iteration does more than a slice
        whatever the number of connections (all of them at once stalled the loop for
        ~100 ms at 10,000)."""
        interval = self.cfg.heartbeat_interval
        while True:
            conns = list(self.hub.conns.values())
            steps, size = heartbeat_plan(len(conns), interval)
            for i in range(steps):
                await asyncio.sleep(interval / steps)
                self._heartbeat(conns[i * size : (i + 1) * size])

    def _heartbeat(self, conns: list[Conn]) -> None:
        now = self.clock()
        timeout = self.cfg.connection_timeout
        for conn in conns:
            h = conn.handle
            if h is None:  # gone since the round started
                continue
            if now - h.last_rx > timeout:
                h.close(P.CLOSE_GOING_AWAY, "idle timeout")
            else:
                h.ping()

    async def _retention_loop(self) -> None:
        while True:
            await asyncio.sleep(60)
            try:
                apply = getattr(self.store, "apply_retention", None)
                if apply is not None:
                    await apply(self.wall_ms())
            except StoreUnavailable:
                pass
            except Exception:  # pragma: no cover - defensive
                log.exception("retention failed")

