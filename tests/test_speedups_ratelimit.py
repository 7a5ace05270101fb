"""chathub._rust_core.RateLimiter (Rust) against its twin chathub._ratelimit_py.RateLimiter.

The twin does the Rust side's float arithmetic in the same order, so the
differential tests demand *identical* results: the same retry_after_ms for the
same call sequence, the same abusive() answers, the same number of buckets.
The plain tests pin the semantics on both. A compiled module that does not
import fails these tests unless CHATHUB_NO_EXTENSIONS is set
(tests/_differential.py).
"""

from __future__ import annotations

import math
from types import ModuleType
from typing import Any

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

import tests._hypothesis_profiles  # noqa: F401  (registers/loads HYPOTHESIS_PROFILE)
from chathub import _ratelimit_py, speedups
from tests._differential import extensions_disabled, import_compiled, outcome

KINDS = ("message", "typing", "reaction", "other")


@pytest.fixture(scope="module")
def rust() -> ModuleType:
    return import_compiled("chathub._rust_core")


@pytest.fixture(params=["compiled", "python"], scope="module")
def RL(request: pytest.FixtureRequest) -> Any:
    """Each test using this runs against both RateLimiter classes."""
    if request.param == "python":
        return _ratelimit_py.RateLimiter
    return import_compiled("chathub._rust_core").RateLimiter


def test_exported_through_speedups() -> None:
    expected = "chathub._ratelimit_py" if speedups.IMPLEMENTATION != "compiled" else "chathub._rust_core"
    assert speedups.RateLimiter.__module__ == expected
    assert "RateLimiter" in speedups.__all__
    if extensions_disabled():
        assert speedups.RateLimiter is _ratelimit_py.RateLimiter


# --- semantics (both implementations) -------------------------------------------------------


def test_defaults_and_properties(RL: Any) -> None:
    rl = RL({}, 60.0)
    assert RL.KINDS == KINDS
    assert rl.limits == {"message": 30, "typing": 60, "reaction": 100, "other": 50}
    assert (rl.window_s, rl.abuse_threshold, rl.abuse_window_s) == (60.0, 20, 10.0)
    assert (len(rl), rl.users) == (0, 0)
    rl = RL({"typing": 5}, 30, abuse_threshold=3, abuse_window_s=2)
    assert rl.limits == {"message": 30, "typing": 5, "reaction": 100, "other": 50}
    assert (rl.window_s, rl.abuse_threshold, rl.abuse_window_s) == (30.0, 3, 2.0)
    assert "RateLimiter(" in repr(rl)


def test_burst_then_refused_then_refill(RL: Any) -> None:
    rl = RL({}, 60.0)
    t = 1000.0
    assert [rl.check(1, "message", t) for _ in range(30)] == [0] * 30  # a burst of N
    # 30 per 60 s: a token every 2 s. The refused call takes nothing.
    assert rl.check(1, "message", t) == 2000
    assert rl.check(1, "message", t) == 2000
    assert rl.check(1, "message", t + 0.5) == 1500
    assert rl.check(1, "message", t + 1.9999) == 1  # 0.1 ms left: rounded up
    assert rl.check(1, "message", t + 2.0) == 0
    assert rl.check(1, "message", t + 2.0) == 2000
    # Sustained rate: one every 2 s is always allowed.
    for i in range(2, 20):
        assert rl.check(1, "message", t + 2.0 * i) == 0
    # A long pause refills the burst, never more than N.
    later = t + 10_000.0
    assert [rl.check(1, "message", later) for _ in range(30)] == [0] * 30
    assert rl.check(1, "message", later) == 2000


def test_retry_after_rounding(RL: Any) -> None:
    rl = RL({"other": 3}, 1.0)
    for _ in range(3):
        assert rl.check(5, "other", 0.0) == 0
    # 1/3 s exactly is 333.33... ms: rounded up to 334.
    assert rl.check(5, "other", 0.0) == math.ceil(1 / 3 * 1000) == 334
    assert rl.check(5, "other", 0.3) == 34  # 33.33 ms left
    assert rl.check(5, "other", 0.3335) == 0


def test_clock_going_backwards_refills_nothing(RL: Any) -> None:
    rl = RL({"message": 1}, 10.0)
    assert rl.check(1, "message", 100.0) == 0
    assert rl.check(1, "message", 50.0) == 10_000
    assert rl.check(1, "message", 105.0) == 5000
    assert rl.check(1, "message", 110.0) == 0


def test_kinds_are_independent(RL: Any) -> None:
    rl = RL({}, 60.0)
    for kind, n in zip(KINDS, (30, 60, 100, 50)):
        assert [rl.check(1, kind, 0.0) for _ in range(n)] == [0] * n
        assert rl.check(1, kind, 0.0) == math.ceil(60 / n * 1000)
    assert len(rl) == 4 and rl.users == 1


def test_unknown_kinds_count_as_other_and_indices_work(RL: Any) -> None:
    rl = RL({"other": 3}, 60.0)
    assert rl.check(1, "join", 0.0) == 0
    assert rl.check(1, 3, 0.0) == 0
    assert rl.check(1, "", 0.0) == 0
    assert rl.check(1, "other", 0.0) > 0  # all four shared the "other" bucket
    assert rl.check(1, "\ud800", 0.0) > 0  # even a string that is not valid UTF-8
    for i, kind in enumerate(KINDS[:3]):
        assert rl.check(2, i, 0.0) == 0
        assert rl.check(3, kind, 0.0) == 0
    assert len(rl) == 1 + 3 + 3


def test_users_are_independent(RL: Any) -> None:
    rl = RL({"message": 2}, 60.0)
    tenant_user = (7 << 64) | 1  # keys up to 2**128: tenant << 64 | user
    for user in (1, 2, 2**63 - 1, 2**64, tenant_user, 2**128 - 1):
        assert rl.check(user, "message", 0.0) == 0
        assert rl.check(user, "message", 0.0) == 0
        assert rl.check(user, "message", 0.0) == 30_000
    assert rl.users == 6 and len(rl) == 6


def test_abuse_detection(RL: Any) -> None:
    rl = RL({"message": 1}, 60.0, abuse_threshold=3, abuse_window_s=10.0)
    assert rl.check(1, "message", 0.0) == 0
    assert not rl.abusive(1, 0.0)
    assert rl.check(1, "message", 1.0) > 0
    assert rl.check(1, "message", 2.0) > 0
    assert not rl.abusive(1, 2.0)  # two refusals
    assert rl.check(1, "message", 3.0) > 0
    assert rl.abusive(1, 3.0)  # three within 10 s
    assert rl.abusive(1, 10.999)
    assert not rl.abusive(1, 11.0)  # the refusal at 1.0 is now 10 s old
    assert rl.check(1, "message", 11.5) > 0
    assert rl.abusive(1, 11.5)  # 2.0, 3.0, 11.5
    assert not rl.abusive(2, 11.5)  # other users are not affected
    # Refusals of any kind count.
    rl = RL({"typing": 1, "reaction": 1}, 60.0, abuse_threshold=2, abuse_window_s=5.0)
    rl.check(9, "typing", 0.0)
    rl.check(9, "reaction", 0.0)
    rl.check(9, "typing", 0.0)
    assert not rl.abusive(9, 0.0)
    rl.check(9, "reaction", 0.0)
    assert rl.abusive(9, 0.0)
    rl.forget(9)
    assert not rl.abusive(9, 0.0)


def test_forget(RL: Any) -> None:
    rl = RL({"message": 1}, 60.0)
    rl.check(1, "message", 0.0)
    rl.check(1, "typing", 0.0)
    rl.check(2, "message", 0.0)
    assert (len(rl), rl.users) == (3, 2)
    rl.forget(1)
    rl.forget(12345)  # unknown: nothing happens
    assert (len(rl), rl.users) == (1, 1)
    assert rl.check(1, "message", 0.0) == 0  # a fresh, full bucket
    assert rl.check(2, "message", 0.0) > 0


def test_sweep_drops_full_buckets_only(RL: Any) -> None:
    rl = RL({"message": 30, "typing": 60}, 60.0, abuse_threshold=2, abuse_window_s=10.0)
    rl.check(1, "message", 0.0)  # refilled after 2 s
    rl.check(1, "typing", 0.0)  # refilled after 1 s
    for _ in range(33):
        rl.check(2, "message", 0.0)  # empty, three refusals
    assert rl.abusive(2, 0.0)
    assert rl.sweep(0.5) == 0
    assert rl.sweep(1.0) == 1
    assert (len(rl), rl.users) == (2, 2)
    assert rl.sweep(2.0) == 1
    assert (len(rl), rl.users) == (1, 1)
    assert rl.sweep(60.0) == 1  # user 2's bucket is full; its refusals are old
    assert (len(rl), rl.users) == (0, 0)


def test_sweep_keeps_recent_refusals(RL: Any) -> None:
    rl = RL({"message": 1}, 1.0, abuse_threshold=2, abuse_window_s=10.0)
    rl.check(1, "message", 0.0)
    rl.check(1, "message", 0.0)
    rl.check(1, "message", 0.5)
    assert rl.sweep(5.0) == 1
    assert (len(rl), rl.users) == (0, 1)
    assert rl.abusive(1, 5.0)  # the user is still known as abusive
    rl.sweep(10.5)
    assert rl.users == 0


def test_sweep_changes_no_result(RL: Any) -> None:
    a = RL({"message": 5, "typing": 3}, 4.0, abuse_threshold=4, abuse_window_s=3.0)
    b = RL({"message": 5, "typing": 3}, 4.0, abuse_threshold=4, abuse_window_s=3.0)
    now = 0.0
    for i in range(5000):
        user, kind = (i * 7919) % 11, KINDS[(i * 31) % 4]
        now += ((i * 104729) % 997) / 1000.0
        assert a.check(user, kind, now) == b.check(user, kind, now)
        assert a.abusive(user, now) == b.abusive(user, now)
        if i % 5 == 0:
            b.sweep(now)
    assert len(b) <= len(a)


def test_memory_is_bounded_without_explicit_sweeps(RL: Any) -> None:
    """200,000 users each sending once, 1000 a second: check() sweeps by itself."""
    rl = RL({"message": 2}, 1.0)
    peak = 0
    for user in range(200_000):
        rl.check(user, "message", user / 1000.0)
        peak = max(peak, rl.users)
    assert peak <= 2048, peak
    assert len(rl) == rl.users


def test_int_now_and_bool_arguments(RL: Any) -> None:
    rl = RL({"message": 1}, 60)
    assert rl.check(True, 0, 10) == 0
    assert rl.check(1, False, 10.0) == 60_000
    assert rl.abusive(1, 10) is False


@pytest.mark.parametrize(
    ("method", "args", "error"),
    [
        ("check", ("1", "message", 0.0), TypeError),
        ("check", (1.0, "message", 0.0), TypeError),
        ("check", (None, "message", 0.0), TypeError),
        ("check", (-1, "message", 0.0), ValueError),
        ("check", (2**128, "message", 0.0), ValueError),
        ("check", (1, None, 0.0), TypeError),
        ("check", (1, b"message", 0.0), TypeError),
        ("check", (1, 4, 0.0), ValueError),
        ("check", (1, -1, 0.0), ValueError),
        ("check", (1, 2**70, 0.0), ValueError),
        ("check", (1, "message", "0"), TypeError),
        ("check", (1, "message", None), TypeError),
        ("check", (1, "message", math.nan), ValueError),
        ("check", (1, "message", math.inf), ValueError),
        ("check", (1, "message", 10**400), ValueError),  # never OverflowError
        ("check", (-1, None, math.nan), TypeError),  # every TypeError before any ValueError
        ("check", (-1, 9, None), TypeError),
        ("check", (2**200, 7, 1.0), ValueError),
        ("abusive", ("x", 0.0), TypeError),
        ("abusive", (-5, 0.0), ValueError),
        ("abusive", (1, math.nan), ValueError),
        ("abusive", (-1, "now"), TypeError),
        ("forget", (1.5,), TypeError),
        ("forget", (-1,), ValueError),
        ("sweep", ("now",), TypeError),
        ("sweep", (math.inf,), ValueError),
    ],
)
def test_invalid_arguments(RL: Any, method: str, args: tuple, error: type) -> None:
    rl = RL({}, 60.0)
    with pytest.raises(error):
        getattr(rl, method)(*args)
    assert (len(rl), rl.users) == (0, 0)  # nothing was recorded


@pytest.mark.parametrize(
    ("args", "kwargs", "error"),
    [
        (([("message", 1)], 60.0), {}, TypeError),
        (({1: 5}, 60.0), {}, TypeError),
        (({"message": 5.0}, 60.0), {}, TypeError),
        (({"message": None}, 60.0), {}, TypeError),
        (({}, "60"), {}, TypeError),
        (({}, None), {}, TypeError),
        (({}, 60.0), {"abuse_threshold": 2.0}, TypeError),
        (({}, 60.0), {"abuse_threshold": None}, TypeError),
        (({}, 60.0), {"abuse_window_s": None}, TypeError),
        (({"send": 5}, 60.0), {}, ValueError),
        (({"message": 0}, 60.0), {}, ValueError),
        (({"message": -1}, 60.0), {}, ValueError),
        (({"message": 2**40}, 60.0), {}, ValueError),
        (({}, 0.0), {}, ValueError),
        (({}, -1), {}, ValueError),
        (({}, math.nan), {}, ValueError),
        (({}, math.inf), {}, ValueError),
        (({}, 10**400), {}, ValueError),
        (({}, 1e-320), {}, ValueError),  # 30 / 1e-320 overflows: no finite rate
        (({}, 60.0), {"abuse_threshold": 0}, ValueError),
        (({}, 60.0), {"abuse_threshold": 10**6}, ValueError),
        (({}, 60.0), {"abuse_window_s": 0}, ValueError),
        (({}, 60.0), {"abuse_window_s": -math.inf}, ValueError),
        (({"send": 5}, None), {}, TypeError),  # TypeError before ValueError
        (({"message": 0}, 60.0), {"abuse_window_s": "x"}, TypeError),
    ],
)
def test_invalid_construction(RL: Any, args: tuple, kwargs: dict, error: type) -> None:
    with pytest.raises(error):
        RL(*args, **kwargs)


def test_keyword_only_options(RL: Any) -> None:
    with pytest.raises(TypeError):
        RL({}, 60.0, 20)
    assert RL(limits={}, window_s=1.0).window_s == 1.0


# --- differential: compiled vs twin ---------------------------------------------------------

configs = st.fixed_dictionaries(
    {
        "limits": st.dictionaries(st.sampled_from(KINDS), st.integers(1, 8), max_size=4),
        "window_s": st.sampled_from([1.0, 0.5, 3.0, 7.3, 60.0, 0.1]),
        "abuse_threshold": st.integers(1, 6),
        "abuse_window_s": st.sampled_from([0.25, 1.0, 2.5, 10.0]),
    }
)
kind_args = st.one_of(st.sampled_from(KINDS), st.sampled_from(["join", "send", "", "MESSAGE"]), st.integers(0, 3))
steps = st.one_of(
    st.just(0.0),
    st.sampled_from([1e-9, 0.001, 1 / 3, 0.1, 0.25, 1.0, 2.0, 10.0]),
    st.floats(min_value=0.0, max_value=5.0, allow_nan=False),
    st.floats(min_value=-1.0, max_value=0.0, allow_nan=False),  # the clock may go back
)
ops = st.lists(
    st.one_of(
        st.tuples(st.just("check"), st.integers(0, 4), kind_args, steps),
        st.tuples(st.just("abusive"), st.integers(0, 4), st.none(), steps),
        st.tuples(st.just("sweep"), st.none(), st.none(), steps),
        st.tuples(st.just("forget"), st.integers(0, 4), st.none(), st.just(0.0)),
    ),
    max_size=300,
)


def _run(limiter: Any, sequence: list, start: float) -> list:
    out: list = []
    now = start
    for op, user, kind, dt in sequence:
        now += dt
        if op == "check":
            out.append(limiter.check(user, kind, now))
        elif op == "abusive":
            out.append(limiter.abusive(user, now))
        elif op == "sweep":
            out.append(limiter.sweep(now))
        else:
            out.append(limiter.forget(user))
        out.append((len(limiter), limiter.users))
    return out


@given(config=configs, sequence=ops, start=st.sampled_from([0.0, 1e5, 12345.678, 1.7e9]))
@example(
    config={"limits": {"message": 1}, "window_s": 3.0, "abuse_threshold": 1, "abuse_window_s": 1.0},
    sequence=[("check", 0, "message", 0.0), ("check", 0, "message", 1 / 3), ("abusive", 0, None, 0.0)],
    start=0.0,
)
def test_identical_results_for_identical_calls(rust: ModuleType, config: dict, sequence: list, start: float) -> None:
    kwargs = {"abuse_threshold": config["abuse_threshold"], "abuse_window_s": config["abuse_window_s"]}
    compiled = rust.RateLimiter(config["limits"], config["window_s"], **kwargs)
    twin = _ratelimit_py.RateLimiter(config["limits"], config["window_s"], **kwargs)
    assert _run(compiled, sequence, start) == _run(twin, sequence, start)


@given(
    users=st.lists(st.integers(0, 2**128 - 1), min_size=1, max_size=5),
    sequence=st.lists(st.tuples(st.integers(0, 4), kind_args, steps), max_size=200),
)
def test_identical_results_for_large_keys(rust: ModuleType, users: list[int], sequence: list) -> None:
    compiled = rust.RateLimiter({"message": 3, "other": 2}, 1.5, abuse_threshold=3, abuse_window_s=1.0)
    twin = _ratelimit_py.RateLimiter({"message": 3, "other": 2}, 1.5, abuse_threshold=3, abuse_window_s=1.0)
    now = 0.0
    for i, kind, dt in sequence:
        now += dt
        user = users[i % len(users)]
        assert compiled.check(user, kind, now) == twin.check(user, kind, now)
        assert compiled.abusive(user, now) == twin.abusive(user, now)
    assert (len(compiled), compiled.users) == (len(twin), twin.users)


odd_values = st.one_of(
    st.integers(-5, 5),
    st.integers(min_value=2**62, max_value=2**130),
    st.integers(min_value=-(2**130), max_value=-(2**62)),
    st.booleans(),
    st.floats(),
    st.text(max_size=8),
    st.sampled_from(KINDS),
    st.binary(max_size=3),
    st.none(),
    st.just(10**400),
)


@given(user=odd_values, kind=odd_values, now=odd_values)
@example(user=-1, kind=None, now=math.nan)
@example(user=True, kind=True, now=True)
@example(user=2**127, kind="typing", now=-(10**400))
def test_arguments_match_twin(rust: ModuleType, user: object, kind: object, now: object) -> None:
    compiled = rust.RateLimiter({"message": 1}, 60.0)
    twin = _ratelimit_py.RateLimiter({"message": 1}, 60.0)
    for _ in range(2):
        assert outcome(compiled.check, user, kind, now) == outcome(twin.check, user, kind, now)
    assert outcome(compiled.abusive, user, now) == outcome(twin.abusive, user, now)
    assert outcome(compiled.sweep, now) == outcome(twin.sweep, now)
    assert outcome(compiled.forget, user) == outcome(twin.forget, user)
    assert (len(compiled), compiled.users) == (len(twin), twin.users)


@given(
    limits=st.one_of(
        st.dictionaries(st.one_of(st.sampled_from(KINDS), st.text(max_size=4)), odd_values, max_size=3),
        st.dictionaries(st.integers(), st.integers(), max_size=2),
        st.lists(st.integers(), max_size=2),
        st.none(),
    ),
    window=odd_values,
    threshold=odd_values,
    abuse_window=odd_values,
)
def test_construction_matches_twin(rust: ModuleType, limits: object, window: object, threshold: object, abuse_window: object) -> None:
    args = (limits, window)
    kwargs = {"abuse_threshold": threshold, "abuse_window_s": abuse_window}
    got, want = outcome(rust.RateLimiter, *args, **kwargs), outcome(_ratelimit_py.RateLimiter, *args, **kwargs)
    assert got[0] == want[0]
    if got[0] == "raises":
        assert got[1] is want[1]
    else:
        g, w = got[1], want[1]
        assert (g.limits, g.window_s, g.abuse_threshold, g.abuse_window_s) == (
            w.limits,
            w.window_s,
            w.abuse_threshold,
            w.abuse_window_s,
        )
