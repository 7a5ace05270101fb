"""Pure-Python twin of ``chathub._rust_core``'s gzip and raw-deflate helpers, on stdlib zlib.

(The twin of ``RateLimiter`` is ``chathub._ratelimit_py``.)

Same results and the same exception types as the Rust module; only the
compressed bytes may differ. The Rust side re-implements the rules of zlib's
``inflate()`` in gzip mode (``wbits=31``) used here:

* exactly one gzip member; bytes after its trailer are an error,
* compression method 8 only, reserved header flag bits clear, FHCRC verified,
* the trailer's CRC-32 and ISIZE are verified.

``gzip_decompress`` never inflates more than ``max_size + 1`` bytes, so a
small "decompression bomb" cannot make it allocate its expanded size.

Raw DEFLATE for permessage-deflate (RFC 7692), no context takeover either way:
``deflate_compress_raw`` compresses one message with a fresh context, ends it
with a sync flush and strips the trailing ``00 00 ff ff`` (section 7.2.1);
``deflate_decompress_raw`` appends ``00 00 ff ff`` and inflates with a fresh
context (section 7.2.2), stopping past ``max_size`` like ``gzip_decompress``.
Data after a final (BFINAL) block is ignored, and a message that ends inside
a block gives what was decoded so far, as zlib's ``inflate()`` does; only
invalid DEFLATE data is an error (ValueError).

Arguments: ``data``/``payload`` are bytes, bytearray or memoryview (anything
else is a TypeError); integer arguments must be ``int`` (TypeError otherwise)
and out-of-range values are a ValueError, never an OverflowError. All type
checks come before any value check, so a call with both kinds of mistake
raises TypeError on both implementations.
"""

from __future__ import annotations

import struct
import sys
import zlib

__all__ = ["deflate_compress_raw", "deflate_decompress_raw", "gzip_compress", "gzip_decompress", "maybe_gzip"]

DEFAULT_LEVEL = 6
DEFAULT_THRESHOLD = 1024

_Buffer = bytes | bytearray | memoryview
#: The empty stored block that ends a sync flush (RFC 7692 section 7.2.1).
_SYNC_TAIL = b"\x00\x00\xff\xff"


def _as_bytes(name: str, value: object) -> bytes:
    if isinstance(value, bytes):
        return value
    if isinstance(value, (bytearray, memoryview)):
        return bytes(value)
    raise TypeError(f"{name} must be bytes, bytearray or memoryview, not {type(value).__name__}")


def _check_int(name: str, value: object) -> int:
    if not isinstance(value, int):
        raise TypeError(f"{name} must be int, not {type(value).__name__}")
    return value


def _compress(data: bytes, level: int) -> bytes:
    xfl = 2 if level == 9 else 4 if level == 1 else 0
    # ID1 ID2 CM FLG MTIME(0) XFL OS(255 = unknown): what the Rust side writes.
    header = struct.pack("<BBBBLBB", 0x1F, 0x8B, 8, 0, 0, xfl, 255)
    body = zlib.compress(data, level, -15)
    trailer = struct.pack("<LL", zlib.crc32(data), len(data) & 0xFFFFFFFF)
    return header + body + trailer


def gzip_compress(data: _Buffer, level: int = DEFAULT_LEVEL) -> bytes:
    """Compress ``data`` into one gzip member (MTIME 0). ``level`` is 0..9."""
    level = _check_int("level", level)
    raw = _as_bytes("data", data)
    if not 0 <= level <= 9:
        raise ValueError("compression level must be between 0 and 9")
    return _compress(raw, level)


def _check_max_size(max_size: int) -> int:
    if max_size < 0:
        raise ValueError("max_size must be >= 0")
    # Never ask for more than a bytes object can hold (zlib wants a Py_ssize_t).
    return min(max_size, sys.maxsize - 1)


def gzip_decompress(data: _Buffer, max_size: int) -> bytes:
    """Decompress exactly one gzip member.

    Raises ValueError if ``data`` is not a valid gzip member or if the output
    would exceed ``max_size`` bytes; inflation stops at that bound.
    """
    max_size = _check_int("max_size", max_size)
    raw = _as_bytes("data", data)
    max_size = _check_max_size(max_size)
    inflater = zlib.decompressobj(wbits=31)
    try:
        out = inflater.decompress(raw, max_size + 1)
    except zlib.error as exc:
        raise ValueError(f"invalid gzip data: {exc}") from None
    if len(out) > max_size:
        raise ValueError(f"decompressed data exceeds max_size ({max_size} bytes)")
    if not inflater.eof:
        raise ValueError("truncated gzip stream")
    if inflater.unused_data:
        raise ValueError(f"{len(inflater.unused_data)} bytes of trailing data after the gzip member")
    return out


def maybe_gzip(payload: _Buffer, threshold: int = DEFAULT_THRESHOLD) -> bytes | None:
    """None if ``len(payload) <= threshold``, else ``gzip_compress(payload)``."""
    threshold = _check_int("threshold", threshold)
    raw = _as_bytes("payload", payload)
    if len(raw) <= threshold:
        return None
    return _compress(raw, DEFAULT_LEVEL)


def deflate_compress_raw(data: _Buffer, level: int = DEFAULT_LEVEL) -> bytes:
    """Raw DEFLATE of one permessage-deflate message (RFC 7692 section 7.2.1):
    fresh context, sync flush, trailing ``00 00 ff ff`` removed. ``level`` is 0..9."""
    level = _check_int("level", level)
    raw = _as_bytes("data", data)
    if not 0 <= level <= 9:
        raise ValueError("compression level must be between 0 and 9")
    deflater = zlib.compressobj(level, zlib.DEFLATED, -15)
    out = deflater.compress(raw) + deflater.flush(zlib.Z_SYNC_FLUSH)
    if not out.endswith(_SYNC_TAIL):  # zlib always ends a sync flush with it
        raise ValueError("invalid deflate data: sync flush did not end with 00 00 ff ff")
    return out[: -len(_SYNC_TAIL)]


def deflate_decompress_raw(data: _Buffer, max_size: int) -> bytes:
    """Inflate one permessage-deflate message (RFC 7692 section 7.2.2): appends
    ``00 00 ff ff``, fresh context. Raises ValueError on invalid data or if the
    output would exceed ``max_size`` bytes; inflation stops at that bound."""
    max_size = _check_int("max_size", max_size)
    raw = _as_bytes("data", data)
    max_size = _check_max_size(max_size)
    inflater = zlib.decompressobj(wbits=-15)
    try:
        out = inflater.decompress(raw + _SYNC_TAIL, max_size + 1)
    except zlib.error as exc:
        raise ValueError(f"invalid deflate data: {exc}") from None
    if len(out) > max_size:
        raise ValueError(f"decompressed data exceeds max_size ({max_size} bytes)")
    return out
