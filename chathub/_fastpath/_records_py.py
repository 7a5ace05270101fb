"""Pure-Python twin of ``chathub._fastpath._records``: the stores' result records.

Building the result of every stored message is per-message work on the hot path, and a
frozen dataclass ``__init__`` goes through ``object.__setattr__`` once per field.
``new_result`` fills the slots directly through their member descriptors instead; the
objects are ordinary, equal to ones built by the constructors.

``bind(new_message, stored_message, append_result)`` hands over the record types
(``chathub.store.base`` calls it once they are defined; the store package is not
imported from here, which keeps ``chathub.speedups`` free of import cycles). It
raises TypeError when a type's fields are not the ones expected or are not plain slots.

``new_message_init`` is None here: the twin of the compiled ``NewMessage.__init__`` is
the dataclass' own generated ``__init__``, which stays in place.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

__all__ = ["bind", "new_result", "new_message_init", "NEW_FIELDS", "STORED_FIELDS", "RESULT_FIELDS"]

NEW_FIELDS = ("tenant_id", "room", "sender", "text", "ts", "msg_id", "client_msg_id", "reply_to")
STORED_FIELDS = ("tenant_id", "room", "seq", "msg_id", "sender", "text", "ts", "client_msg_id", "reply_to",
                 "edited_at", "deleted")
RESULT_FIELDS = ("message", "duplicate")

_new = object.__new__
new_message_init: Callable[..., None] | None = None
_stored: Any = None
_result: Any = None
_setters: tuple = ()


def _check(tp: Any, fields: tuple[str, ...]) -> None:
    if not isinstance(tp, type) or not dataclasses.is_dataclass(tp):
        raise TypeError(f"{tp!r} is not a dataclass type")
    names = tuple(f.name for f in dataclasses.fields(tp))
    if names != fields:
        raise TypeError(f"{tp.__name__} has fields {names}, expected {fields}")
    for name in fields:
        d = tp.__dict__.get(name)
        if type(d).__name__ != "member_descriptor":
            raise TypeError(f"{tp.__name__}.{name} is not a __slots__ member")


def bind(new_message: type, stored_message: type, append_result: type) -> None:
    global _stored, _result, _setters
    _check(new_message, NEW_FIELDS)
    _check(stored_message, STORED_FIELDS)
    _check(append_result, RESULT_FIELDS)
    _stored, _result = stored_message, append_result
    _setters = tuple(stored_message.__dict__[f].__set__ for f in STORED_FIELDS) + tuple(
        append_result.__dict__[f].__set__ for f in RESULT_FIELDS
    )


def new_result(t: Any, r: Any, seq: Any, m: Any) -> Any:
    """``AppendResult(StoredMessage(t, r, seq, <fields of m>))`` for a newly stored ``m``
    (anything with NewMessage's attributes; AttributeError when one is missing)."""
    if _stored is None:
        raise RuntimeError("chathub._fastpath._records_py.bind() was not called")
    (s_t, s_r, s_seq, s_id, s_s, s_x, s_ts, s_cid, s_rt, s_ed, s_del, a_msg, a_dup) = _setters
    msg_id, sender, text, ts, cid, rt = m.msg_id, m.sender, m.text, m.ts, m.client_msg_id, m.reply_to
    sm = _new(_stored)
    s_t(sm, t)
    s_r(sm, r)
    s_seq(sm, seq)
    s_id(sm, msg_id)
    s_s(sm, sender)
    s_x(sm, text)
    s_ts(sm, ts)
    s_cid(sm, cid)
    s_rt(sm, rt)
    s_ed(sm, None)
    s_del(sm, False)
    res = _new(_result)
    a_msg(res, sm)
    a_dup(res, False)
    return res
