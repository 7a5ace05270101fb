"""Rust hot path of chathub (``rust_core/``, built by maturin).

Hand-written stub, checked against the binary with
``python -m mypy.stubtest chathub._rust_core``. The pure-Python twin is
``chathub._compress_py``; import through ``chathub.speedups``.
"""

__all__ = ["gzip_compress", "gzip_decompress", "maybe_gzip"]

def gzip_compress(data: bytes | bytearray | memoryview, level: int = 6) -> bytes:
    """Compress ``data`` into one gzip member (MTIME 0). ``level`` is 0..9."""

def gzip_decompress(data: bytes | bytearray | memoryview, max_size: int) -> bytes:
    """Decompress exactly one gzip member.

    Raises ValueError if ``data`` is not a valid gzip member or if the output
    would exceed ``max_size`` bytes; inflation stops at that bound.
    """

def maybe_gzip(payload: bytes | bytearray | memoryview, threshold: int = 1024) -> bytes | None:
    """None if ``len(payload) <= threshold``, else ``gzip_compress(payload)``."""
