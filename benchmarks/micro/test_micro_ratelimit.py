"""Micro-benchmarks: RateLimiter.check, compiled (Rust) vs twin (pure Python).

Not part of the test run (``testpaths = ["tests"]``). Run on a release build::

    python -m pytest benchmarks/micro --benchmark-only

Each round makes 1000 calls on a warm table of 10,000 users x 4 kinds, so the
figure per call is the round's time / 1000 (``extra_info["ns_per_call"]`` holds
the mean); it includes the cost of the Python ``for`` loop, which
``test_loop_baseline`` measures on its own.
"""

from __future__ import annotations

import importlib
import random
from typing import Any, Callable

import pytest

USERS = 10_000
CALLS = 1000
KINDS = ("message", "typing", "reaction", "other")
IMPLS = ["compiled", "python"]


def limiter_class(impl: str) -> Any:
    if impl == "python":
        return importlib.import_module("chathub._ratelimit_py").RateLimiter
    return importlib.import_module("chathub._rust_core").RateLimiter


def warm(impl: str, limit: int) -> Any:
    rl = limiter_class(impl)({k: limit for k in KINDS}, 60.0)
    for user in range(USERS):
        for kind in KINDS:
            rl.check(user, kind, 0.0)
    assert len(rl) == USERS * 4
    return rl


def per_call(benchmark: Any, fn: Callable[[], object]) -> None:
    benchmark(fn)
    benchmark.extra_info["ns_per_call"] = round(benchmark.stats.stats.mean / CALLS * 1e9, 1)


@pytest.fixture(scope="module")
def users() -> list[int]:
    rng = random.Random(7)
    return [rng.randrange(USERS) for _ in range(CALLS)]


@pytest.mark.parametrize("impl", IMPLS)
def test_check_allowed(benchmark: Any, impl: str, users: list[int]) -> None:
    """The common case: random users of a warm table, a token is taken."""
    check = warm(impl, 10**9).check

    def run() -> None:
        for user in users:
            check(user, "message", 1.0)

    per_call(benchmark, run)


@pytest.mark.parametrize("impl", IMPLS)
def test_check_kind_index(benchmark: Any, impl: str, users: list[int]) -> None:
    """The same with the kind as an index into RateLimiter.KINDS."""
    check = warm(impl, 10**9).check

    def run() -> None:
        for user in users:
            check(user, 0, 1.0)

    per_call(benchmark, run)


@pytest.mark.parametrize("impl", IMPLS)
def test_check_refused(benchmark: Any, impl: str, users: list[int]) -> None:
    """Empty buckets: every call is refused (retry_after_ms computed, refusal recorded)."""
    check = warm(impl, 1).check

    def run() -> None:
        for user in users:
            check(user, "message", 0.0)

    per_call(benchmark, run)


@pytest.mark.parametrize("impl", IMPLS)
def test_check_tenant_keys(benchmark: Any, impl: str, users: list[int]) -> None:
    """Keys above 2**64 (tenant << 64 | user): the 128-bit conversion path."""
    rl = limiter_class(impl)({k: 10**9 for k in KINDS}, 60.0)
    keys = [(3 << 64) | u for u in users]
    for key in keys:
        rl.check(key, "message", 0.0)
    check = rl.check

    def run() -> None:
        for key in keys:
            check(key, "message", 1.0)

    per_call(benchmark, run)


def test_loop_baseline(benchmark: Any, users: list[int]) -> None:
    """The loop alone: subtract from the figures above for the cost of the call itself."""

    def run() -> None:
        for user in users:
            pass

    per_call(benchmark, run)
