"""Command parsing and validation (protocol.md, "Commands" and "Errors"); no sockets."""

from __future__ import annotations

import orjson
import pytest
from hypothesis import given, strategies as st

from chathub.core import protocol as P
from chathub.core.protocol import ProtocolError, parse_command


def err(data) -> ProtocolError:
    with pytest.raises(ProtocolError) as ei:
        parse_command(data if isinstance(data, (bytes, str)) else orjson.dumps(data))
    return ei.value


@pytest.mark.parametrize("raw", [b"", b"not json", b"{", b"\xff\xfe", b'{"op":"ping"'])
def test_non_json_is_bad_request(raw):
    e = err(raw)
    assert e.code == P.BAD_REQUEST and e.cmd_id is None


@pytest.mark.parametrize("value", [[], 1, "x", None, True, [{"op": "ping"}]])
def test_non_object_is_bad_request(value):
    assert err(value).code == P.BAD_REQUEST


def test_unknown_op_keeps_the_id():
    e = err({"op": "fly", "id": 7})
    assert (e.code, e.cmd_id) == (P.BAD_REQUEST, 7)
    assert "unknown op" in e.message


def test_missing_op():
    assert err({"id": "a"}).cmd_id == "a"


@pytest.mark.parametrize("bad_id", [1.5, [1], {"a": 1}, True, "x" * 200])
def test_bad_id(bad_id):
    assert err({"op": "ping", "id": bad_id}).code == P.BAD_REQUEST


@pytest.mark.parametrize(
    "cmd",
    [
        {"op": "join"},
        {"op": "join", "room": ""},
        {"op": "join", "room": "a" * 65},
        {"op": "join", "room": "has space"},
        {"op": "join", "room": "slash/no"},
        {"op": "join", "room": 5},
        {"op": "join", "room": "ok", "since_seq": -1},
        {"op": "join", "room": "ok", "since_seq": "3"},
        {"op": "send", "room": "ok"},
        {"op": "send", "room": "ok", "text": ""},
        {"op": "send", "room": "ok", "text": "   "},
        {"op": "send", "room": "ok", "text": 5},
        {"op": "send", "room": "ok", "text": "x", "reply_to": True},
        {"op": "send", "room": "ok", "text": "x", "client_msg_id": 5},
        {"op": "history", "room": "ok", "limit": 0},
        {"op": "history", "room": "ok", "limit": 201},
        {"op": "history", "room": "ok", "before_seq": 5, "after_seq": 1},
        {"op": "typing", "room": "ok", "state": "maybe"},
        {"op": "dm", "to": "abc", "text": "hi"},
        {"op": "dm", "to": -1, "text": "hi"},
        {"op": "auth"},
        {"op": "auth", "token": ""},
        {"op": "react", "room": "ok", "seq": 1, "emoji": ""},
        {"op": "ban", "room": "ok", "user_id": 3, "duration_s": 0},
    ],
)
def test_invalid_fields(cmd):
    cmd["id"] = 1
    e = err(cmd)
    assert e.code == P.BAD_REQUEST, e.message
    assert e.cmd_id == 1


def test_valid_commands():
    c = parse_command(b'{"op":"join","room":"general","since_seq":3,"id":"x"}')
    assert (c.op, c.id, c.has_id, c.args) == ("join", "x", True, {"room": "general", "since_seq": 3})
    c = parse_command('{"op":"send","room":"a-b_c.d:e","text":"hi \u00e9"}')
    assert c.has_id is False and c.args["text"] == "hi \u00e9" and c.args["client_msg_id"] is None
    c = parse_command(b'{"op":"dm","to":"12","text":"x"}')
    assert c.args["to"] == 12
    c = parse_command(b'{"op":"history","room":"r"}')
    assert c.args["limit"] is None


def test_text_too_long_is_too_large():
    assert err({"op": "send", "room": "r", "text": "x" * (P.MAX_TEXT_CHARS + 1)}).code == P.TOO_LARGE


def test_dm_room_names():
    assert P.dm_room(9, 3) == "dm:3:9"
    assert P.dm_participants("dm:3:9") == (3, 9)
    assert P.dm_participants("dm:9:3") is None
    assert P.dm_participants("dm:x:3") is None


@given(st.binary(max_size=200))
def test_arbitrary_bytes_never_crash(data):
    try:
        parse_command(data)
    except ProtocolError as e:
        assert e.code in P.ERROR_CODES


@given(st.dictionaries(st.sampled_from(["op", "id", "room", "text", "since_seq", "to", "seq", "limit", "state"]),
                       st.one_of(st.none(), st.booleans(), st.integers(-2**63, 2**63 - 1), st.text(max_size=80), st.floats(),
                                 st.lists(st.integers(0, 9), max_size=2)),
                       max_size=6))
def test_arbitrary_objects_never_crash(obj):
    try:
        parse_command(orjson.dumps(obj))
    except ProtocolError as e:
        assert e.code in P.ERROR_CODES
