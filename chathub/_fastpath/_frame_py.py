"""Pure-Python twin of ``chathub._fastpath._frame`` (RFC 6455 frame encoding).

Same results and exception types as the Cython module. Check order: every
TypeError (non-int opcode/length, non bytes-like payload) comes before any
ValueError (opcode outside 0..15, length outside 0 <= length < 2**63).
``fin`` and ``rsv1`` are taken by truth value.
"""

from __future__ import annotations

import struct

__all__ = ["encode_frame_header", "encode_frame"]

_MAX_LENGTH = 2**63 - 1
_pack_16 = struct.Struct("!BBH").pack
_pack_64 = struct.Struct("!BBQ").pack


def _check_int(value: object, name: str) -> None:
    if not isinstance(value, int):
        raise TypeError(f"{name} must be int, not {type(value).__name__}")


def _check_opcode(opcode: int) -> None:
    if not 0 <= opcode <= 15:
        raise ValueError(f"opcode must be in 0..15, got {opcode!r}")


def _header(opcode: int, length: int, fin: bool, rsv1: bool) -> bytes:
    first = (0x80 if fin else 0) | (0x40 if rsv1 else 0) | opcode
    if length <= 125:
        return bytes((first, length))
    if length <= 0xFFFF:
        return _pack_16(first, 126, length)
    return _pack_64(first, 127, length)


def encode_frame_header(opcode: int, length: int, fin: bool = True, rsv1: bool = False) -> bytes:
    """Header of an unmasked frame with a payload of ``length`` bytes.

    2 bytes for length <= 125, 4 (126 + 16-bit length) up to 65535, 10 (127 +
    64-bit length) above. Raises TypeError for non-int opcode/length and
    ValueError for an opcode outside 0..15 or a length outside 0..2**63-1.
    """
    fin = bool(fin)
    rsv1 = bool(rsv1)
    _check_int(opcode, "opcode")
    _check_int(length, "length")
    _check_opcode(opcode)
    if not 0 <= length <= _MAX_LENGTH:
        raise ValueError(f"length must be in 0..2**63-1, got {length!r}")
    return _header(int(opcode), int(length), fin, rsv1)


def encode_frame(
    opcode: int, payload: bytes | bytearray | memoryview, fin: bool = True, rsv1: bool = False
) -> bytes:
    """Header followed by ``payload`` (bytes, bytearray or memoryview) in one bytes.

    Raises TypeError for a non-int opcode or any other payload type (``str``
    included) and ValueError for an opcode outside 0..15.
    """
    fin = bool(fin)
    rsv1 = bool(rsv1)
    _check_int(opcode, "opcode")
    if not isinstance(payload, bytes):
        if isinstance(payload, (bytearray, memoryview)):
            payload = bytes(payload)
        else:
            raise TypeError(
                f"payload must be bytes, bytearray or memoryview, not {type(payload).__name__}"
            )
    _check_opcode(opcode)
    return _header(int(opcode), len(payload), fin, rsv1) + payload
