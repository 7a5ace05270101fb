"""Micro-benchmarks: the hub's once-a-second ``tick`` with many rooms.

Not part of the test run. ``python -m pytest benchmarks/micro/test_micro_hub.py --benchmark-only``.
``tick`` visits only the rooms with a pending timer (a typing start, a departure's grace,
a membership batch); with 10,000 rooms of which none or ten have one, it should cost
next to nothing (a walk over every room cost ≈ 0.7 ms a tick on the reference VM).
"""

from __future__ import annotations

from typing import Any

import pytest

from chathub.core.hub import Claims, Hub, HubLimits


def _hub(rooms: int, typing: int) -> Hub:
    hub = Hub(HubLimits(typing_timeout=6))
    for i in range(rooms):
        c = hub.connect()
        hub.authenticate(c, Claims(i + 1, 0), 1000)
        hub.join(c, "r%d" % i, replay=False)
        if i < typing:
            hub.typing(c, "r%d" % i, "start", now=0.0)
    return hub


@pytest.mark.parametrize("typing", [0, 10])
def test_tick_10k_rooms(benchmark: Any, typing: int) -> None:
    hub = _hub(10_000, typing)
    benchmark(hub.tick, 1.0)  # nothing lapses at 1.0: the same work every round
    assert len(hub._timed) == typing
