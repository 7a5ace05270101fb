"""Micro-benchmarks: raw deflate for permessage-deflate (RFC 7692), compiled vs twin.

Not part of the test run. ``python -m pytest benchmarks/micro --benchmark-only``.
Chat-like JSON messages of 200 B and 4 KiB, level 6 (the default).
"""

from __future__ import annotations

import importlib
from typing import Any

import pytest

IMPLS = {"compiled": "chathub._rust_core", "python": "chathub._compress_py"}


def chat_json(n: int) -> bytes:
    out = b"".join(
        b'{"ev":"message","room":"general","seq":%d,"msg_id":"01J%08d","from":%d,"text":"hello there %d","ts":17643500%05d}'
        % (i, i * 7919, 40 + i % 5, i, i)
        for i in range(n // 60 + 1)
    )
    return out[:n]


@pytest.mark.parametrize("size", [200, 4096])
@pytest.mark.parametrize("impl", list(IMPLS))
def test_compress(benchmark: Any, impl: str, size: int) -> None:
    mod = importlib.import_module(IMPLS[impl])
    data = chat_json(size)
    out = benchmark(mod.deflate_compress_raw, data)
    benchmark.extra_info["compressed_bytes"] = len(out)


@pytest.mark.parametrize("size", [200, 4096])
@pytest.mark.parametrize("impl", list(IMPLS))
def test_decompress(benchmark: Any, impl: str, size: int) -> None:
    mod = importlib.import_module(IMPLS[impl])
    data = chat_json(size)
    packed = mod.deflate_compress_raw(data)
    assert benchmark(mod.deflate_decompress_raw, packed, 1 << 20) == data
