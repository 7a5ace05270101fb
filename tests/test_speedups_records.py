"""chathub._fastpath._records (Cython) against its twin _records_py.

Both build ``AppendResult(StoredMessage(...))`` for a newly stored ``NewMessage``; they
must build equal objects of the same types, read a message the same way whatever its
type, and raise the same exception types.
"""

from __future__ import annotations

import dataclasses
import gc
import sys
from types import ModuleType

import pytest
from hypothesis import given
from hypothesis import strategies as st

import tests._hypothesis_profiles  # noqa: F401  (registers/loads HYPOTHESIS_PROFILE)
from chathub._fastpath import _records_py
from chathub.store.base import AppendResult, NewMessage, StoredMessage
from tests._differential import import_compiled, outcome


@pytest.fixture(scope="module")
def compiled() -> ModuleType:
    mod = import_compiled("chathub._fastpath._records")
    mod.bind(NewMessage, StoredMessage, AppendResult)
    return mod


@pytest.fixture(autouse=True, scope="module")
def _twin_bound() -> None:
    _records_py.bind(NewMessage, StoredMessage, AppendResult)


def reference(t, r, seq, m) -> AppendResult:
    """What the constructors build."""
    return AppendResult(StoredMessage(t, r, seq, m.msg_id, m.sender, m.text, m.ts, m.client_msg_id, m.reply_to,
                                      None, False), False)


def same(a: AppendResult, b: AppendResult) -> bool:
    """Equal, same types, and every field the identical object (nothing copied)."""
    if type(a) is not type(b) or type(a.message) is not type(b.message) or a != b:
        return False
    fa, fb = dataclasses.astuple(a.message), dataclasses.astuple(b.message)
    return all(x is y or (x == y and type(x) is type(y)) for x, y in zip(fa, fb))


ints = st.one_of(st.integers(), st.integers(-(2**70), 2**70))
texts = st.text(max_size=50)
opt_texts = st.one_of(st.none(), texts)
opt_ints = st.one_of(st.none(), ints)


@given(t=ints, r=texts, seq=ints, sender=ints, text=texts, ts=ints, msg_id=texts, cid=opt_texts, rt=opt_ints)
def test_builds_what_the_constructors_build(compiled, t, r, seq, sender, text, ts, msg_id, cid, rt):
    m = NewMessage(t, r, sender, text, ts, msg_id, cid, rt)
    want = reference(t, r, seq, m)
    for impl in (compiled, _records_py):
        got = impl.new_result(t, r, seq, m)
        assert same(got, want)
        assert got.message.msg_id is m.msg_id and got.message.text is m.text
        assert hash(got) == hash(want)


class SubMessage(NewMessage):
    __slots__ = ()


@dataclasses.dataclass
class LooseMessage:  # not slotted, not a NewMessage: read with getattr
    msg_id: object = "id"
    sender: object = 1
    text: object = "x"
    ts: object = 2
    client_msg_id: object = None
    reply_to: object = 7


class Missing:
    def __init__(self, *names):
        for n in ("msg_id", "sender", "text", "ts", "client_msg_id", "reply_to"):
            if n not in names:
                setattr(self, n, n)


@pytest.mark.parametrize(
    "m",
    [
        NewMessage(1, "r", 2, "t", 3, "i", None, None),
        SubMessage(1, "r", 2, "t", 3, "i", "c", 4),
        LooseMessage(),
        LooseMessage(msg_id=b"bytes", sender="not an int"),
        Missing(),
        Missing("msg_id"),
        Missing("reply_to"),
        Missing("text", "ts"),
        object.__new__(NewMessage),  # no slot set
        None,
    ],
    ids=lambda m: type(m).__name__,
)
def test_any_message_object_is_read_the_same_way(compiled, m):
    a = outcome(compiled.new_result, 1, "r", 9, m)
    b = outcome(_records_py.new_result, 1, "r", 9, m)
    if a[0] == "ok":
        assert b[0] == "ok" and same(a[1], b[1])
    else:
        assert a == b


def test_partly_set_exact_message_falls_back_to_getattr(compiled):
    m = object.__new__(NewMessage)
    for name in ("msg_id", "sender", "text", "ts", "client_msg_id"):
        object.__setattr__(m, name, name)
    for impl in (compiled, _records_py):
        assert outcome(impl.new_result, 1, "r", 1, m) == ("raises", AttributeError)
    object.__setattr__(m, "reply_to", None)
    assert same(compiled.new_result(1, "r", 1, m), _records_py.new_result(1, "r", 1, m))


@dataclasses.dataclass(frozen=True)
class NoSlots:
    message: object
    duplicate: bool = False


@dataclasses.dataclass(frozen=True, slots=True)
class OtherFields:
    message: object
    dup: bool = False


class NotADataclass:
    __slots__ = ("message", "duplicate")


@pytest.mark.parametrize("bad", [NoSlots, OtherFields, NotADataclass, None, 3])
def test_bind_refuses_unusable_types_and_keeps_the_binding(compiled, bad):
    for impl in (compiled, _records_py):
        assert outcome(impl.bind, NewMessage, StoredMessage, bad) == ("raises", TypeError)
        assert outcome(impl.bind, bad, StoredMessage, AppendResult) == ("raises", TypeError)
        m = NewMessage(1, "r", 2, "t", 3, "i")
        assert same(impl.new_result(1, "r", 5, m), reference(1, "r", 5, m))


def test_bind_to_other_record_types(compiled):
    @dataclasses.dataclass(frozen=True, slots=True)
    class Stored2:
        tenant_id: object
        room: object
        seq: object
        msg_id: object
        sender: object
        text: object
        ts: object
        client_msg_id: object = None
        reply_to: object = None
        edited_at: object = None
        deleted: object = False

    @dataclasses.dataclass(frozen=True, slots=True)
    class Result2:
        message: object
        duplicate: object = False

    m = NewMessage(1, "r", 2, "t", 3, "i", "c", 4)
    try:
        for impl in (compiled, _records_py):
            impl.bind(NewMessage, Stored2, Result2)
            got = impl.new_result(1, "r", 5, m)
            assert type(got) is Result2 and type(got.message) is Stored2
            assert got == Result2(Stored2(1, "r", 5, "i", 2, "t", 3, "c", 4, None, False), False)
    finally:
        compiled.bind(NewMessage, StoredMessage, AppendResult)
        _records_py.bind(NewMessage, StoredMessage, AppendResult)


def test_no_reference_leaked_or_lost(compiled):
    text = "".join(["unique text ", str(id(object()))])
    msg_id = "".join(["unique id ", str(id(object()))])
    m = NewMessage(1, "r", 2, text, 3, msg_id, None, None)
    gc.collect()
    before = (sys.getrefcount(text), sys.getrefcount(msg_id))
    kept = [compiled.new_result(1, "r", i, m) for i in range(1000)]
    assert sys.getrefcount(text) == before[0] + 1000
    del kept
    gc.collect()
    assert (sys.getrefcount(text), sys.getrefcount(msg_id)) == before
    # the objects are GC-tracked like constructor-built ones
    r = compiled.new_result(1, "r", 1, m)
    assert gc.is_tracked(r) and gc.is_tracked(r.message)


def test_frozen_like_constructor_built_ones(compiled):
    r = compiled.new_result(1, "r", 1, NewMessage(1, "r", 2, "t", 3, "i"))
    with pytest.raises(dataclasses.FrozenInstanceError):
        r.message.seq = 2  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        r.duplicate = True  # type: ignore[misc]


def test_the_stores_use_the_selected_implementation():
    from chathub import speedups
    from chathub.store import _common

    assert _common.new_result is speedups.new_result
    if speedups.IMPLEMENTATION == "compiled":
        assert type(speedups.new_result).__name__ == "cython_function_or_method"


# ------------------------------------------------------------------ NewMessage.__init__
from chathub.store.base import NEW_MESSAGE_DATACLASS_INIT  # noqa: E402

FIELDS = ("tenant_id", "room", "sender", "text", "ts", "msg_id", "client_msg_id", "reply_to")
_MISSING = object()


def slots_of(o) -> tuple:
    return tuple(getattr(o, f, _MISSING) for f in FIELDS)


def run_init(init, cls, args, kwargs):
    o = object.__new__(cls)
    res = outcome(init, o, *args, **kwargs)
    return res[0] if res[0] == "ok" else res, slots_of(o)


values = st.one_of(st.none(), st.integers(), st.text(max_size=10))


@given(
    args=st.lists(values, max_size=10),
    kwargs=st.dictionaries(st.sampled_from(FIELDS + ("extra", "self")), values, max_size=4),
)
def test_new_message_init_is_the_dataclass_init(compiled, args, kwargs):
    init = compiled.new_message_init
    for cls in (NewMessage, SubMessage):
        assert run_init(init, cls, args, kwargs) == run_init(NEW_MESSAGE_DATACLASS_INIT, cls, args, kwargs)


def test_new_message_init_on_other_objects(compiled):
    for target in (object(), LooseMessage(), None):
        assert outcome(compiled.new_message_init, target, 1, "r", 2, "t", 3, "i") == outcome(
            NEW_MESSAGE_DATACLASS_INIT, target, 1, "r", 2, "t", 3, "i")


def test_new_message_init_again_replaces_and_releases(compiled):
    old_text = "".join(["old ", str(id(object()))])
    new_text = "".join(["new ", str(id(object()))])
    m = NewMessage(1, "r", 2, old_text, 3, "i", "c", 4)
    gc.collect()
    before_old, before_new = sys.getrefcount(old_text), sys.getrefcount(new_text)
    compiled.new_message_init(m, 5, "s", 6, new_text, 7, "j")
    assert slots_of(m) == (5, "s", 6, new_text, 7, "j", None, None)
    assert sys.getrefcount(old_text) == before_old - 1
    assert sys.getrefcount(new_text) == before_new + 1


def test_the_compiled_init_is_installed_when_compiled():
    from chathub import speedups

    if speedups.IMPLEMENTATION == "compiled":
        assert NewMessage.__init__ is speedups.new_message_init
    else:
        assert NewMessage.__init__ is NEW_MESSAGE_DATACLASS_INIT
    m = NewMessage(1, "r", 2, "t", 3, "i", reply_to=9)
    assert (m.tenant_id, m.room, m.sender, m.text, m.ts, m.msg_id, m.client_msg_id, m.reply_to) == (
        1, "r", 2, "t", 3, "i", None, 9)
    with pytest.raises(dataclasses.FrozenInstanceError):
        m.text = "x"  # type: ignore[misc]


@pytest.mark.parametrize("args, kwargs", [((1, "r"), {}), ((1, "r", 2, "t", 3, "i"), {"bogus": 1}),
                                          ((1, "r", 2, "t", 3, "i", None, None, 9), {})])
def test_wrong_arguments_name_init_not_the_module_function(args, kwargs):
    # whichever implementation is installed, the TypeError speaks of __init__()
    with pytest.raises(TypeError, match=r"__init__\(\)") as e:
        NewMessage(*args, **kwargs)
    assert "new_message_init" not in str(e.value)
