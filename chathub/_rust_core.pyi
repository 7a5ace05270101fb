"""Rust hot path of chathub (``rust_core/``, built by maturin).

Hand-written stub, checked against the binary with
``python -m mypy.stubtest chathub._rust_core``. The pure-Python twins are
``chathub._compress_py`` (gzip, raw deflate) and ``chathub._ratelimit_py``
(``RateLimiter``); import through ``chathub.speedups``.
"""

from typing import ClassVar, Self, final

__all__ = [
    "RateLimiter",
    "deflate_compress_raw",
    "deflate_decompress_raw",
    "gzip_compress",
    "gzip_decompress",
    "maybe_gzip",
]

def gzip_compress(data: bytes | bytearray | memoryview, level: int = 6) -> bytes:
    """Compress ``data`` into one gzip member (MTIME 0). ``level`` is 0..9."""

def gzip_decompress(data: bytes | bytearray | memoryview, max_size: int) -> bytes:
    """Decompress exactly one gzip member.

    Raises ValueError if ``data`` is not a valid gzip member or if the output
    would exceed ``max_size`` bytes; inflation stops at that bound.
    """

def maybe_gzip(payload: bytes | bytearray | memoryview, threshold: int = 1024) -> bytes | None:
    """None if ``len(payload) <= threshold``, else ``gzip_compress(payload)``."""

def deflate_compress_raw(data: bytes | bytearray | memoryview, level: int = 6) -> bytes:
    """Raw DEFLATE of one permessage-deflate message (RFC 7692 §7.2.1): fresh
    context, sync flush, trailing 00 00 ff ff removed. ``level`` is 0..9."""

def deflate_decompress_raw(data: bytes | bytearray | memoryview, max_size: int) -> bytes:
    """Inflate one permessage-deflate message (RFC 7692 §7.2.2): appends
    00 00 ff ff, fresh context. Raises ValueError on invalid data or if the
    output would exceed ``max_size`` bytes; inflation stops at that bound."""

@final
class RateLimiter:
    """Token buckets keyed by (user, kind) with abuse detection.

    ``limits`` maps kind names (``KINDS``) to commands per ``window_s``
    seconds; kinds it does not name keep the defaults (message 30, typing 60,
    reaction 100, other 50). See ``chathub._ratelimit_py`` for the rules.
    """

    KINDS: ClassVar[tuple[str, str, str, str]]

    def __new__(
        cls,
        limits: dict[str, int],
        window_s: float,
        *,
        abuse_threshold: int = 20,
        abuse_window_s: float = 10.0,
    ) -> Self: ...
    def check(self, user: int, kind: str | int, now: float) -> int:
        """Take one token of ``kind`` for ``user`` at time ``now`` (seconds, monotonic).

        Returns 0 when allowed, else the milliseconds (>= 1) until a token is
        available; the command must then be refused (nothing was taken).
        """
    def abusive(self, user: int, now: float) -> bool:
        """True when ``user`` was refused at least ``abuse_threshold`` times
        within the last ``abuse_window_s`` seconds (the hub then closes with 4008)."""
    def forget(self, user: int) -> None:
        """Drop everything held for ``user`` (buckets and refusals)."""
    def sweep(self, now: float) -> int:
        """Drop the buckets that are full again at ``now`` and refusal records
        too old to matter; changes no later result. Returns the buckets dropped."""
    def __len__(self) -> int:
        """Number of buckets held."""
    @property
    def users(self) -> int:
        """Number of users held (with a bucket or recent refusals)."""
    @property
    def limits(self) -> dict[str, int]:
        """Commands per window of every kind."""
    @property
    def window_s(self) -> float: ...
    @property
    def abuse_threshold(self) -> int: ...
    @property
    def abuse_window_s(self) -> float: ...
