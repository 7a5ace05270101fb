# cython: language_level=3, boundscheck=False, wraparound=False
"""The stores' result records, built with their slots written directly.

Compiled twin of ``chathub._fastpath._records_py`` (which explains the why); the tests
check that both build equal objects and raise the same exception types.
``new_result`` allocates the two records with their types' ``tp_alloc`` (what
``object.__new__`` does for them) and stores each field at its slot offset; a
``NewMessage`` of the exact bound type is read the same way, anything else with
``getattr``. ``bind`` learns the offsets and refuses types whose fields are not the
expected plain ``__slots__`` members, so no write can land outside an object.
"""

from cpython.object cimport PyObject, PyTypeObject
from cpython.ref cimport Py_INCREF

from chathub._fastpath._slots cimport (
    PyMemberDescr_Type, PyMemberDescrObject, Py_TYPE, T_OBJECT_EX, slot_get, slot_replace,
)

import dataclasses

__all__ = ["bind", "new_result", "new_message_init", "NEW_FIELDS", "STORED_FIELDS", "RESULT_FIELDS"]

NEW_FIELDS = ("tenant_id", "room", "sender", "text", "ts", "msg_id", "client_msg_id", "reply_to")
STORED_FIELDS = ("tenant_id", "room", "seq", "msg_id", "sender", "text", "ts", "client_msg_id", "reply_to",
                 "edited_at", "deleted")
RESULT_FIELDS = ("message", "duplicate")


cdef extern from *:
    """
    static PyObject* chathub_records_alloc(PyTypeObject* tp) { return tp->tp_alloc(tp, 0); }
    """
    object _alloc "chathub_records_alloc"(PyTypeObject* tp)


# bound types (references kept here) and slot offsets
cdef object _new_type = None
cdef object _stored_type = None
cdef object _result_type = None
cdef PyTypeObject* _new_tp = NULL
cdef PyTypeObject* _stored_tp = NULL
cdef PyTypeObject* _result_tp = NULL
# NewMessage, in NEW_FIELDS order
cdef Py_ssize_t _n_off[8]
# StoredMessage, in STORED_FIELDS order
cdef Py_ssize_t _s_off[11]
cdef Py_ssize_t _a_msg, _a_dup


cdef Py_ssize_t _offset(object tp, str name) except -1:
    d = tp.__dict__.get(name)
    if d is None or Py_TYPE(d) is not &PyMemberDescr_Type:
        raise TypeError(f"{tp.__name__}.{name} is not a __slots__ member")
    cdef PyMemberDescrObject* md = <PyMemberDescrObject*><PyObject*>d
    if md.d_member.type != T_OBJECT_EX or md.d_member.offset <= 0:
        raise TypeError(f"{tp.__name__}.{name} is not an object slot")
    return md.d_member.offset


cdef int _check(object tp, tuple fields) except -1:
    if not isinstance(tp, type) or not dataclasses.is_dataclass(tp):
        raise TypeError(f"{tp!r} is not a dataclass type")
    names = tuple([f.name for f in dataclasses.fields(tp)])
    if names != fields:
        raise TypeError(f"{tp.__name__} has fields {names}, expected {fields}")
    for name in fields:
        _offset(tp, name)
    return 0


def bind(new_message, stored_message, append_result):
    """Learn the record types (see the module docstring); TypeError if unusable."""
    global _new_type, _stored_type, _result_type, _new_tp, _stored_tp, _result_tp
    global _a_msg, _a_dup
    _check(new_message, NEW_FIELDS)
    _check(stored_message, STORED_FIELDS)
    _check(append_result, RESULT_FIELDS)
    cdef Py_ssize_t i
    for i in range(11):
        _s_off[i] = _offset(stored_message, STORED_FIELDS[i])
    for i in range(8):
        _n_off[i] = _offset(new_message, NEW_FIELDS[i])
    _a_msg = _offset(append_result, "message")
    _a_dup = _offset(append_result, "duplicate")
    _new_type, _stored_type, _result_type = new_message, stored_message, append_result
    _new_tp = <PyTypeObject*>new_message
    _stored_tp = <PyTypeObject*>stored_message
    _result_tp = <PyTypeObject*>append_result


cdef inline void _put(object o, Py_ssize_t off, object v) noexcept:
    # only on a fresh object from tp_alloc: the slot is NULL, nothing to release
    Py_INCREF(v)
    (<PyObject**>((<char*><PyObject*>o) + off))[0] = <PyObject*>v


_setattr = object.__setattr__


def __init__(self, tenant_id, room, sender, text, ts, msg_id, client_msg_id=None, reply_to=None):
    """``NewMessage.__init__`` (installed by ``chathub.store.base`` when compiled): the
    dataclass' generated one sets each field with ``object.__setattr__`` (it is frozen);
    this stores them at their slot offsets. Same parameters; on anything but the exact
    bound type it does what the generated one does, field by field. (Defined as
    ``__init__`` so that a call with wrong arguments raises a TypeError naming
    ``__init__()``, as the dataclass' does, not this module's name for it.)"""
    if _new_tp is not NULL and Py_TYPE(self) is _new_tp:
        slot_replace(self, _n_off[0], tenant_id)
        slot_replace(self, _n_off[1], room)
        slot_replace(self, _n_off[2], sender)
        slot_replace(self, _n_off[3], text)
        slot_replace(self, _n_off[4], ts)
        slot_replace(self, _n_off[5], msg_id)
        slot_replace(self, _n_off[6], client_msg_id)
        slot_replace(self, _n_off[7], reply_to)
        return
    _setattr(self, "tenant_id", tenant_id)
    _setattr(self, "room", room)
    _setattr(self, "sender", sender)
    _setattr(self, "text", text)
    _setattr(self, "ts", ts)
    _setattr(self, "msg_id", msg_id)
    _setattr(self, "client_msg_id", client_msg_id)
    _setattr(self, "reply_to", reply_to)


new_message_init = __init__
del __init__


def new_result(t, r, seq, m):
    """``AppendResult(StoredMessage(t, r, seq, <fields of m>))`` for a newly stored ``m``
    (anything with NewMessage's attributes; AttributeError when one is missing)."""
    if _stored_tp is NULL:
        raise RuntimeError("chathub._fastpath._records.bind() was not called")
    # NewMessage's fields after tenant_id and room (NEW_FIELDS[2:]): sender, text, ts,
    # msg_id, client_msg_id, reply_to
    cdef PyObject* v[6]
    cdef int i
    cdef bint slots = Py_TYPE(m) is _new_tp
    if slots:
        for i in range(6):
            v[i] = slot_get(m, _n_off[i + 2])
            if v[i] is NULL:  # unset slot
                slots = False
                break
    cdef object msg_id, sender, text, ts, cid, rt
    if slots:
        sender, text, ts = <object>v[0], <object>v[1], <object>v[2]
        msg_id, cid, rt = <object>v[3], <object>v[4], <object>v[5]
    else:  # (the twin's order, so the same AttributeError comes first)
        msg_id, sender, text, ts, cid, rt = m.msg_id, m.sender, m.text, m.ts, m.client_msg_id, m.reply_to
    sm = _alloc(_stored_tp)
    _put(sm, _s_off[0], t)
    _put(sm, _s_off[1], r)
    _put(sm, _s_off[2], seq)
    _put(sm, _s_off[3], msg_id)
    _put(sm, _s_off[4], sender)
    _put(sm, _s_off[5], text)
    _put(sm, _s_off[6], ts)
    _put(sm, _s_off[7], cid)
    _put(sm, _s_off[8], rt)
    _put(sm, _s_off[9], None)
    _put(sm, _s_off[10], False)
    res = _alloc(_result_tp)
    _put(res, _a_msg, sm)
    _put(res, _a_dup, False)
    return res
