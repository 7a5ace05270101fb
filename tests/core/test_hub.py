"""The sans-I/O hub: connections, rooms, fan-out, replay hold-back. No sockets, no loop."""

from __future__ import annotations

import orjson
import pytest

from chathub.core import protocol as P
from chathub.core.hub import (
    EPHEMERAL, MESSAGE, Broadcast, Claims, Close, Hub, HubLimits, Send, Subscribe, Unsubscribe, room_key,
)
from chathub.core.protocol import ProtocolError
from chathub.store.base import StoredMessage


def connect(hub: Hub, user: int, tenant: int = 0):
    c = hub.connect()
    eff = hub.authenticate(c, Claims(user, tenant), 1000)
    assert len(eff) == 1 and isinstance(eff[0], Send)
    ready = orjson.loads(eff[0].payload)
    assert ready["ev"] == "ready" and ready["user_id"] == user and ready["tenant_id"] == tenant
    assert ready["conn_id"] == c.id
    return c


def msg(room: str, seq: int, tenant: int = 0, sender: int = 1) -> StoredMessage:
    return StoredMessage(tenant, room, seq, f"m{seq}", sender, f"text {seq}", 1000 + seq)


def targets(effects, kind=None):
    out = []
    for e in effects:
        if isinstance(e, Broadcast) and (kind is None or e.kind == kind):
            out.extend(c.id for c in e.targets())
    return out


def test_connection_cap_closes_extra_with_4009():
    hub = Hub(HubLimits(max_connections_per_user=2))
    connect(hub, 1)
    connect(hub, 1)
    c3 = hub.connect()
    eff = hub.authenticate(c3, Claims(1), 0)
    assert isinstance(eff[0], Close) and eff[0].code == P.CLOSE_TOO_MANY_CONNECTIONS
    assert not c3.authenticated
    # another tenant's user 1 is a different user
    connect(hub, 1, tenant=5)


def test_join_subscribes_once_and_announces_to_others():
    hub = Hub()
    a, b = connect(hub, 1), connect(hub, 2)
    res, eff = hub.join(a, "general", replay=False)
    assert [type(e) for e in eff] == [Subscribe] and eff[0].channel == room_key(0, "general")
    res, eff = hub.join(b, "general", replay=False)
    assert targets(eff, EPHEMERAL) == [a.id]
    assert orjson.loads(eff[0].payload) == {"ev": "joined", "room": "general", "user_id": 2}
    assert res.room.online() == {1, 2}
    # a second connection of the same user joins silently
    a2 = connect(hub, 1)
    _, eff = hub.join(a2, "general", replay=False)
    assert eff == []


def test_deliver_excludes_only_the_origin_connection():
    hub = Hub()
    a, a2, b = connect(hub, 1), connect(hub, 1), connect(hub, 2)
    for c in (a, a2, b):
        hub.join(c, "r", replay=False)
    eff = hub.deliver(room_key(0, "r"), a.id, 1, Hub.encode_message(msg("r", 1)))
    assert sorted(targets(eff, MESSAGE)) == sorted([a2.id, b.id])
    assert hub.rooms[room_key(0, "r")].last_seq == 1


def test_deliver_passes_the_rooms_member_list_until_membership_changes():
    """Messages of one room reach the fan-out as the same list object (its burst
    detection) with the origin excluded; a join or leave makes a new list, and a list
    handed out earlier is never changed."""
    hub = Hub()
    a, b, c = connect(hub, 1), connect(hub, 2), connect(hub, 3)
    hub.join(a, "r", replay=False)
    hub.join(b, "r", replay=False)
    key = room_key(0, "r")
    (e1,) = hub.deliver(key, a.id, 1, b"{}")
    (e2,) = hub.deliver(key, b.id, 2, b"{}")
    (e3,) = hub.deliver(key, "elsewhere", 3, b"{}")
    assert e1.conns is e2.conns is e3.conns and [x.id for x in e1.conns] == [a.id, b.id]
    assert (e1.exclude, e2.exclude, e3.exclude) == (a, b, None)
    assert [x.id for x in e1.targets()] == [b.id] and [x.id for x in e3.targets()] == [a.id, b.id]
    before = e1.conns
    hub.join(c, "r", replay=False)
    (e4,) = hub.deliver(key, a.id, 4, b"{}")
    assert e4.conns is not before and [x.id for x in before] == [a.id, b.id]
    assert sorted(x.id for x in e4.targets()) == sorted([b.id, c.id])
    hub.disconnect(b)
    (e5,) = hub.deliver(key, a.id, 5, b"{}")
    assert e5.conns is not e4.conns and [x.id for x in e5.targets()] == [c.id]
    assert len(e4.conns) == 3
    hub.disconnect(c)
    assert hub.deliver(key, a.id, 6, b"{}") == []  # only the origin is left


def test_tenants_are_apart():
    hub = Hub()
    a, b = connect(hub, 1, tenant=1), connect(hub, 2, tenant=2)
    hub.join(a, "general", replay=False)
    _, eff = hub.join(b, "general", replay=False)
    assert targets(eff) == []
    eff = hub.deliver(room_key(1, "general"), "other", 1, b"{}")
    assert targets(eff) == [a.id]


def test_leave_and_last_member_empties_room():
    hub = Hub()
    a, b = connect(hub, 1), connect(hub, 2)
    hub.join(a, "r", replay=False)
    hub.join(b, "r", replay=False)
    eff = hub.leave(a, "r")
    assert targets(eff) == [b.id] and orjson.loads(eff[0].payload)["ev"] == "left"
    eff = hub.disconnect(b)
    assert any(isinstance(e, Unsubscribe) for e in eff)
    assert hub.rooms == {}
    with pytest.raises(ProtocolError) as ei:
        hub.leave(a, "r")
    assert ei.value.code == P.NOT_FOUND


def test_room_limit_per_connection_keeps_connection():
    hub = Hub(HubLimits(max_rooms_per_connection=2))
    a = connect(hub, 1)
    hub.join(a, "r1", replay=False)
    hub.join(a, "r2", replay=False)
    with pytest.raises(ProtocolError) as ei:
        hub.join(a, "r3", replay=False)
    assert ei.value.code == P.FORBIDDEN
    hub.join(a, "r1", replay=False)  # re-joining a room it is in is fine


def test_dm_rooms_admit_only_participants():
    hub = Hub()
    a = connect(hub, 3)
    hub.join(a, "dm:3:9", replay=False)
    for bad in ("dm:4:9", "dm:9:3", "dm:x:y"):
        with pytest.raises(ProtocolError) as ei:
            hub.join(a, bad, replay=False)
        assert ei.value.code == P.FORBIDDEN


def test_unauthenticated_connection_cannot_join():
    hub = Hub()
    c = hub.connect()
    with pytest.raises(ProtocolError) as ei:
        hub.join(c, "r", replay=False)
    assert ei.value.code == P.UNAUTHORIZED


def test_send_requires_membership():
    hub = Hub()
    a = connect(hub, 1)
    with pytest.raises(ProtocolError) as ei:
        hub.prepare_send(a, "r", "hi", now_ms=1, msg_id="x")
    assert ei.value.code == P.FORBIDDEN
    hub.join(a, "r", replay=False)
    new = hub.prepare_send(a, "r", "hi", now_ms=1, msg_id="x", client_msg_id="c1")
    assert (new.room, new.sender, new.text, new.client_msg_id) == ("r", 1, "hi", "c1")


def test_replay_holds_live_messages_and_releases_them_without_duplicates():
    hub = Hub()
    a, b = connect(hub, 1), connect(hub, 2)
    key = room_key(0, "r")
    hub.join(a, "r", replay=False)
    hub.join(b, "r", replay=True)  # b replays from since_seq; live ones are held back
    for seq in (5, 6, 7):
        eff = hub.deliver(key, a.id, seq, Hub.encode_message(msg("r", seq)))
        assert targets(eff) == []
    # typing and other ephemeral events are not held
    eff = hub.deliver(key, a.id, 0, b'{"ev":"typing"}', EPHEMERAL)
    assert targets(eff) == [b.id]
    # the replay covered up to 6: only 7 is released
    eff = hub.finish_replay(b, key, 6)
    assert [orjson.loads(e.payload)["seq"] for e in eff] == [7]
    eff = hub.deliver(key, a.id, 8, b"{}")
    assert targets(eff) == [b.id]


def test_replay_buffer_overflow_closes_1013():
    hub = Hub(HubLimits(max_replay_buffer=3))
    a, b = connect(hub, 1), connect(hub, 2)
    key = room_key(0, "r")
    hub.join(a, "r", replay=False)
    hub.join(b, "r", replay=True)
    closes = []
    for seq in range(1, 6):
        closes += [e for e in hub.deliver(key, a.id, seq, b"{}") if isinstance(e, Close)]
    assert len(closes) == 1 and closes[0].conn is b and closes[0].code == P.CLOSE_TRY_AGAIN


def test_typing_coalesces_and_lapses():
    hub = Hub(HubLimits(typing_timeout=6))
    a, b = connect(hub, 1), connect(hub, 2)
    hub.join(a, "r", replay=False)
    hub.join(b, "r", replay=False)
    assert targets(hub.typing(a, "r", "start", now=0.0)) == [b.id]
    assert hub.typing(a, "r", "start", now=2.0) == []  # coalesced
    assert hub.tick(7.0) == []  # renewed at 2.0, lapses at 8.0
    eff = hub.tick(8.5)
    assert targets(eff) == [b.id] and orjson.loads(eff[0].payload)["state"] == "stop"
    assert hub.typing(a, "r", "stop", now=9.0) == []  # nothing to stop


def test_tick_visits_only_rooms_with_timers():
    """``tick`` walks the rooms that have something pending (a typing start here), not
    every room, and forgets a room once nothing is pending or it is gone."""
    hub = Hub(HubLimits(typing_timeout=6))
    conns = [connect(hub, u) for u in range(1, 41)]
    for i, c in enumerate(conns):
        hub.join(c, "r%d" % (i // 2), replay=False)  # 20 rooms of 2
    assert hub._timed == {}
    hub.typing(conns[0], "r0", "start", now=0.0)
    hub.typing(conns[2], "r1", "start", now=0.0)
    assert list(hub._timed) == [room_key(0, "r0"), room_key(0, "r1")]
    assert hub.tick(1.0) == [] and len(hub._timed) == 2
    hub.leave(conns[2], "r1")
    hub.leave(conns[3], "r1")  # r1 is gone (and its typing with it)
    eff = hub.tick(7.0)
    assert targets(eff) == [conns[1].id] and orjson.loads(eff[0].payload)["state"] == "stop"
    assert hub._timed == {}


def test_encode_message_fields():
    m = StoredMessage(0, "r", 3, "id3", 7, "hi", 123, client_msg_id="c", reply_to=1)
    assert orjson.loads(Hub.encode_message(m)) == {
        "ev": "message", "room": "r", "seq": 3, "msg_id": "id3", "from": 7, "text": "hi", "ts": 123,
        "client_msg_id": "c", "reply_to": 1,
    }


def test_quick_reconnect_shows_no_left_or_joined():
    hub = Hub(HubLimits(presence_grace=5))
    a, b = connect(hub, 1), connect(hub, 2)
    hub.join(a, "r", replay=False)
    hub.join(b, "r", replay=False)
    assert hub.disconnect(b, now=100.0) == []  # no left yet
    assert hub.rooms[room_key(0, "r")].online() == {1, 2}  # still online during the grace
    b2 = connect(hub, 2)
    _, eff = hub.join(b2, "r", replay=False)
    assert eff == []  # no joined: nobody saw a flicker
    assert hub.tick(200.0) == []


def test_departure_becomes_left_after_grace():
    hub = Hub(HubLimits(presence_grace=5))
    a, b = connect(hub, 1), connect(hub, 2)
    hub.join(a, "r", replay=False)
    hub.join(b, "r", replay=False)
    hub.disconnect(b, now=100.0)
    assert hub.tick(104.0) == []
    eff = hub.tick(105.0)
    assert targets(eff) == [a.id] and orjson.loads(eff[0].payload) == {"ev": "left", "room": "r", "user_id": 2}
    assert hub.rooms[room_key(0, "r")].online() == {1}


def test_away_status_reaches_shared_rooms_once_per_room():
    hub = Hub()
    a, b, c = connect(hub, 1), connect(hub, 2), connect(hub, 3)
    for conn in (a, b):
        hub.join(conn, "r1", replay=False)
    hub.join(a, "r2", replay=False)
    hub.join(c, "r2", replay=False)
    eff = hub.set_status(a, "away", 5000)
    got = sorted((e.conns[0].id, orjson.loads(e.payload)["room"]) for e in eff)
    assert got == sorted([(b.id, "r1"), (c.id, "r2")])
    assert orjson.loads(eff[0].payload)["status"] == "away"
    assert hub.set_status(a, "away", 6000) == []  # no change, no event
    page = hub.presence(b, "r1", None, None)
    assert page["users"] == [{"user_id": 1, "status": "away", "since": 5000},
                             {"user_id": 2, "status": "online", "since": 1000}]


def test_presence_pages():
    hub = Hub(HubLimits(max_connections_per_user=1))
    conns = [connect(hub, u) for u in range(1, 8)]
    for c in conns:
        hub.join(c, "big", replay=False)
    p1 = hub.presence(conns[0], "big", None, 3)
    assert [u["user_id"] for u in p1["users"]] == [1, 2, 3] and p1["next_cursor"] == 3 and p1["online"] == 7
    p2 = hub.presence(conns[0], "big", p1["next_cursor"], 3)
    p3 = hub.presence(conns[0], "big", p2["next_cursor"], 3)
    assert [u["user_id"] for u in p2["users"] + p3["users"]] == [4, 5, 6, 7] and p3["next_cursor"] is None


def test_large_room_membership_events_cost_linear_frames():
    """1000 joins into a room above the threshold cost O(N) frames, not O(N^2)."""
    n = 1000
    hub = Hub(HubLimits(large_room=50, max_connections_per_user=1))
    frames = 0
    for u in range(n):
        c = connect(hub, u)
        _, eff = hub.join(c, "huge", replay=False)
        frames += sum(len(e.targets()) for e in eff if isinstance(e, Broadcast))
    eff = hub.tick(1.0)
    frames += sum(len(e.targets()) for e in eff if isinstance(e, Broadcast))
    # the first 50 joins are announced one by one (at most 50*50/2 frames), then one batch
    assert frames <= 50 * 50 // 2 + n
    batch = orjson.loads(eff[-1].payload)
    assert batch["ev"] == "presence_batch" and batch["online"] == n and batch["truncated"] is True
    assert len(batch["joined"]) == 100
