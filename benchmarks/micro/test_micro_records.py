"""Micro-benchmarks: the stores' per-message records, compiled vs twin.

Not part of the test run. ``python -m pytest benchmarks/micro --benchmark-only``.
``new_result`` builds ``AppendResult(StoredMessage(...))`` for a stored message;
``NewMessage(...)`` is the frozen dataclass' generated ``__init__`` (twin) or the
compiled one that ``chathub.store.base`` installs.
"""

from __future__ import annotations

import importlib
from typing import Any

import pytest

from chathub.store.base import NEW_MESSAGE_DATACLASS_INIT, AppendResult, NewMessage, StoredMessage

IMPLS = {"compiled": "chathub._fastpath._records", "python": "chathub._fastpath._records_py"}
MSG = NewMessage(1, "general", 42, "hello there", 1764350000123, "019ac5f0c3e27c0d8e6f7a8b9c0d1e2f", "c-81", None)


@pytest.mark.parametrize("impl", list(IMPLS))
def test_new_result(benchmark: Any, impl: str) -> None:
    mod = importlib.import_module(IMPLS[impl])
    mod.bind(NewMessage, StoredMessage, AppendResult)
    res = benchmark(mod.new_result, 1, "general", 1042, MSG)
    assert res.message.seq == 1042


@pytest.mark.parametrize("impl", list(IMPLS))
def test_new_message_init(benchmark: Any, impl: str) -> None:
    init = importlib.import_module(IMPLS["compiled"]).new_message_init if impl == "compiled" else NEW_MESSAGE_DATACLASS_INIT
    m = object.__new__(NewMessage)
    benchmark(init, m, 1, "general", 42, "hello there", 1764350000123, "019ac5f0c3e27c0d8e6f7a8b9c0d1e2f", "c-81")
    assert m.text == "hello there"
