"""Pure-Python twin of ``chathub._rust_core.RateLimiter`` (``rust_core/src/ratelimit.rs``).

Per-user token buckets, one per kind of command, and abuse detection. Sans-I/O:
the caller passes the time in (seconds from any monotonic clock, e.g.
``loop.time()``). The float arithmetic is the Rust side's, operation for
operation, so both give *identical* results (``retry_after_ms`` included) for
the same calls; keep the two in step.

Buckets
    Kind ``k`` allows ``N`` commands per ``window_s`` seconds: a bucket of
    capacity ``N`` refilled at ``N / window_s`` tokens a second, created full
    on the user's first command of that kind (a burst of ``N``, then ``N`` per
    window). ``check(user, kind, now)``::

        if now > last:   tokens = min(cap, tokens + (now - last) * rate); last = now
        if tokens >= 1:  tokens -= 1  -> 0 (allowed)
        else:            -> retry_after_ms = max(1, ceil((1 - tokens) / rate * 1000))

    i.e. ``retry_after_ms`` is the exact wait for one token, rounded *up* to
    the millisecond, at least 1. A refused command takes nothing. A clock that
    goes backwards refills nothing.

Kinds
    ``KINDS = ("message", "typing", "reaction", "other")``; ``check`` takes a
    name (any other string counts as ``"other"``) or its index in ``KINDS``.

Abuse
    Each refusal is recorded in a per-user ring of the last
    ``abuse_threshold`` refusal times; ``abusive(user, now)`` is true when the
    oldest of them is less than ``abuse_window_s`` old, i.e. the user was
    refused at least ``abuse_threshold`` times in the last ``abuse_window_s``
    seconds. (The hub then closes the connection with 4008.)

Memory
    A bucket that is full again behaves exactly like a missing one, and a
    refusal ring whose newest entry is ``abuse_window_s`` old can no longer
    make ``abusive`` true, so ``sweep(now)`` drops both without changing any
    later result. ``check`` sweeps by itself when it is about to add a user and
    the table holds ``_sweep_at`` users (at least ``MIN_SWEEP_AT``, then twice
    the users left after the last sweep): the table stays within about twice
    the users active in the last window, at an amortised O(1) per new user.
    ``forget(user)`` drops a user at once. ``len()`` is the number of buckets.

Arguments
    ``user``: int in ``range(0, 2**128)`` (e.g. ``tenant << 64 | user_id``);
    ``kind``: str, or int index 0..3; ``now``: float or int, finite. Types are
    checked first, left to right, then values: a wrong type is a TypeError, a
    value out of range a ValueError (never an OverflowError).
"""

from __future__ import annotations

import math

__all__ = ["DEFAULT_LIMITS", "KINDS", "RateLimiter"]

KINDS: tuple[str, str, str, str] = ("message", "typing", "reaction", "other")
MESSAGE, TYPING, REACTION, OTHER = range(4)
#: Commands per window for the kinds that ``limits`` does not name.
DEFAULT_LIMITS: dict[str, int] = {"message": 30, "typing": 60, "reaction": 100, "other": 50}
DEFAULT_WINDOW_S = 60.0
DEFAULT_ABUSE_THRESHOLD = 20
DEFAULT_ABUSE_WINDOW_S = 10.0
MAX_LIMIT = 1_000_000_000
MAX_ABUSE_THRESHOLD = 100_000
MIN_SWEEP_AT = 1024

_KIND_INDEX = {name: i for i, name in enumerate(KINDS)}
_USER_END = 1 << 128
_INF = math.inf


def _type_name(value: object) -> str:
    return type(value).__name__


def _float(value: object) -> float | None:
    """A float or int as float (an int too large for a float is +-inf); None for other types."""
    if isinstance(value, float):
        return float(value)
    if isinstance(value, int):
        try:
            return float(value)
        except OverflowError:
            return _INF if value > 0 else -_INF
    return None


def _positive_finite(x: float) -> bool:
    return 0.0 < x < _INF


class _User:
    """One user's buckets (by kind index) and refusal ring."""

    __slots__ = ("tokens", "last", "present", "ring", "next", "count")

    def __init__(self) -> None:
        self.tokens = [0.0, 0.0, 0.0, 0.0]
        self.last = [0.0, 0.0, 0.0, 0.0]
        self.present = 0  # bit k set: bucket k in use
        self.ring: list[float] | None = None  # last refusal times, oldest at `next` when full
        self.next = 0
        self.count = 0


class RateLimiter:
    """Token buckets keyed by (user, kind), with abuse detection (see the module docs)."""

    KINDS = KINDS

    __slots__ = (
        "_limits", "_cap", "_rate", "_window_s", "_abuse_threshold", "_abuse_window_s",
        "_users", "_buckets", "_sweep_at",
    )

    def __init__(
        self,
        limits: dict[str, int],
        window_s: float,
        *,
        abuse_threshold: int = DEFAULT_ABUSE_THRESHOLD,
        abuse_window_s: float = DEFAULT_ABUSE_WINDOW_S,
    ) -> None:
        # Types first (left to right), then values: the Rust side's order.
        if not isinstance(limits, dict):
            raise TypeError(f"limits must be a dict, not {_type_name(limits)}")
        for key, value in limits.items():
            if not isinstance(key, str):
                raise TypeError(f"limits keys must be str, not {_type_name(key)}")
            if not isinstance(value, int):
                raise TypeError(f"limits values must be int, not {_type_name(value)}")
        window = _float(window_s)
        if window is None:
            raise TypeError(f"window_s must be float or int, not {_type_name(window_s)}")
        if not isinstance(abuse_threshold, int):
            raise TypeError(f"abuse_threshold must be int, not {_type_name(abuse_threshold)}")
        abuse_window = _float(abuse_window_s)
        if abuse_window is None:
            raise TypeError(f"abuse_window_s must be float or int, not {_type_name(abuse_window_s)}")

        counts = dict(DEFAULT_LIMITS)
        for key, value in limits.items():
            if key not in _KIND_INDEX:
                raise ValueError(f"unknown rate-limit kind {key!r} (expected message, typing, reaction or other)")
            counts[key] = value
        for name in KINDS:
            if not 1 <= counts[name] <= MAX_LIMIT:
                raise ValueError(f"limit of {name!r} must be between 1 and {MAX_LIMIT}")
        if not _positive_finite(window):
            raise ValueError("window_s must be a finite number > 0")
        if not 1 <= abuse_threshold <= MAX_ABUSE_THRESHOLD:
            raise ValueError(f"abuse_threshold must be between 1 and {MAX_ABUSE_THRESHOLD}")
        if not _positive_finite(abuse_window):
            raise ValueError("abuse_window_s must be a finite number > 0")
        cap = [float(counts[name]) for name in KINDS]
        rate = [c / window for c in cap]
        if not all(_positive_finite(r) for r in rate):
            raise ValueError("window_s must be a finite number > 0")

        self._limits = [int(counts[name]) for name in KINDS]
        self._cap = cap
        self._rate = rate
        self._window_s = window
        self._abuse_threshold = int(abuse_threshold)
        self._abuse_window_s = abuse_window
        self._users: dict[int, _User] = {}
        self._buckets = 0
        self._sweep_at = MIN_SWEEP_AT

    # -- arguments ---------------------------------------------------------------------------

    @staticmethod
    def _args(user: object, kind: object, now: object, with_kind: bool = True) -> tuple[int, int, float]:
        """Checks and converts the arguments; raises the first TypeError, else the first ValueError."""
        type_errors: list[str] = []
        value_errors: list[str] = []
        key = 0
        if not isinstance(user, int):
            type_errors.append(f"user must be int, not {_type_name(user)}")
        elif not 0 <= user < _USER_END:
            value_errors.append("user must be an int in range(0, 2**128)")
        else:
            key = int(user)
        k = OTHER
        if with_kind:
            if isinstance(kind, str):
                k = _KIND_INDEX.get(kind, OTHER)
            elif isinstance(kind, int):
                if 0 <= kind < 4:
                    k = int(kind)
                else:
                    value_errors.append("kind index must be 0, 1, 2 or 3")
            else:
                type_errors.append(f"kind must be str or int, not {_type_name(kind)}")
        t = _float(now)
        if t is None:
            type_errors.append(f"now must be float or int, not {_type_name(now)}")
            t = 0.0
        elif not -_INF < t < _INF:
            value_errors.append("now must be finite")
        if type_errors:
            raise TypeError(type_errors[0])
        if value_errors:
            raise ValueError(value_errors[0])
        return key, k, t

    # -- the API -----------------------------------------------------------------------------

    def check(self, user: int, kind: str | int, now: float) -> int:
        """Take one token of ``kind`` for ``user`` at time ``now`` (seconds, monotonic).

        Returns 0 when allowed, else the milliseconds (>= 1) until a token is
        available; the command must then be refused (nothing was taken).
        """
        if type(user) is int and 0 <= user < _USER_END and type(now) is float and now - now == 0.0:
            if type(kind) is str:
                k = _KIND_INDEX.get(kind, OTHER)
            elif type(kind) is int and 0 <= kind < 4:
                k = kind
            else:
                user, k, now = self._args(user, kind, now)
        else:
            user, k, now = self._args(user, kind, now)

        st = self._users.get(user)
        cap = self._cap[k]
        if st is None:
            if len(self._users) >= self._sweep_at:
                self.sweep(now)
                self._sweep_at = max(MIN_SWEEP_AT, 2 * len(self._users))
            st = self._users[user] = _User()
            st.tokens[k] = cap - 1.0
            st.last[k] = now
            st.present = 1 << k
            self._buckets += 1
            return 0
        bit = 1 << k
        if not st.present & bit:
            st.present |= bit
            self._buckets += 1
            tokens = cap
            st.last[k] = now
        else:
            tokens = st.tokens[k]
            last = st.last[k]
            if now > last:
                t = tokens + (now - last) * self._rate[k]
                tokens = t if t < cap else cap
                st.last[k] = now
        if tokens >= 1.0:
            st.tokens[k] = tokens - 1.0
            return 0
        st.tokens[k] = tokens
        wait = math.ceil((1.0 - tokens) / self._rate[k] * 1000.0)
        ring = st.ring
        if ring is None:
            ring = st.ring = [0.0] * self._abuse_threshold
        ring[st.next] = now
        st.next = 0 if st.next + 1 == len(ring) else st.next + 1
        if st.count < len(ring):
            st.count += 1
        return wait if wait >= 1 else 1

    def abusive(self, user: int, now: float) -> bool:
        """True when ``user`` was refused at least ``abuse_threshold`` times
        within the last ``abuse_window_s`` seconds (the hub then closes with 4008)."""
        key, _, t = self._args(user, None, now, with_kind=False)
        st = self._users.get(key)
        if st is None or st.ring is None:
            return False
        return st.count >= self._abuse_threshold and t - st.ring[st.next] < self._abuse_window_s

    def forget(self, user: int) -> None:
        """Drop everything held for ``user`` (buckets and refusals)."""
        if not isinstance(user, int):
            raise TypeError(f"user must be int, not {_type_name(user)}")
        if not 0 <= user < _USER_END:
            raise ValueError("user must be an int in range(0, 2**128)")
        st = self._users.pop(int(user), None)
        if st is not None:
            self._buckets -= bin(st.present).count("1")

    def sweep(self, now: float) -> int:
        """Drop the buckets that are full again at ``now`` and refusal records
        too old to matter; changes no later result. Returns the buckets dropped."""
        t = _float(now)
        if t is None:
            raise TypeError(f"now must be float or int, not {_type_name(now)}")
        if not -_INF < t < _INF:
            raise ValueError("now must be finite")
        cap, rate, window = self._cap, self._rate, self._abuse_window_s
        dropped = 0
        gone = []
        for key, st in self._users.items():
            for k in range(4):
                bit = 1 << k
                if st.present & bit:
                    last = st.last[k]
                    tokens = st.tokens[k] + (t - last) * rate[k] if t > last else st.tokens[k]
                    if tokens >= cap[k]:
                        st.present &= ~bit
                        dropped += 1
            ring = st.ring
            if ring is not None:
                newest = ring[st.next - 1]  # index -1 is the last slot: the ring wraps
                if t - newest >= window:
                    st.ring = None
                    st.next = st.count = 0
            if not st.present and st.ring is None:
                gone.append(key)
        for key in gone:
            del self._users[key]
        self._buckets -= dropped
        return dropped

    def __len__(self) -> int:
        """Number of buckets held."""
        return self._buckets

    @property
    def users(self) -> int:
        """Number of users held (with a bucket or recent refusals)."""
        return len(self._users)

    @property
    def limits(self) -> dict[str, int]:
        """Commands per window of every kind, e.g. ``{"message": 30, ...}``."""
        return dict(zip(KINDS, self._limits))

    @property
    def window_s(self) -> float:
        return self._window_s

    @property
    def abuse_threshold(self) -> int:
        return self._abuse_threshold

    @property
    def abuse_window_s(self) -> float:
        return self._abuse_window_s

    def __repr__(self) -> str:
        return (
            f"RateLimiter({self.limits!r}, {self._window_s!r}, "
            f"abuse_threshold={self._abuse_threshold}, abuse_window_s={self._abuse_window_s!r})"
        )
