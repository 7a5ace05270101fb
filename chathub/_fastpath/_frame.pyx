# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""RFC 6455 frame encoding for the server side (unmasked frames).

Compiled twin of ``chathub._fastpath._frame_py``; the tests check that both
give the same bytes and raise the same exception types. Check order (shared):
every TypeError (non-int opcode/length, non bytes-like payload) comes before
any ValueError (opcode outside 0..15, length outside 0 <= length < 2**63).
``fin`` and ``rsv1`` are taken by truth value.
"""

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from cpython.long cimport PyLong_AsLongLongAndOverflow
from libc.stdint cimport uint8_t, uint64_t
from libc.string cimport memcpy

__all__ = ["encode_frame_header", "encode_frame"]


cdef Py_ssize_t frame_header_size(uint64_t length) noexcept nogil:
    if length <= 125:
        return 2
    if length <= 0xFFFF:
        return 4
    return 10


cdef Py_ssize_t write_frame_header(uint8_t* buf, uint8_t opcode, uint64_t length,
                                   bint fin, bint rsv1) noexcept nogil:
    cdef int shift
    buf[0] = (0x80 if fin else 0) | (0x40 if rsv1 else 0) | (opcode & 0x0F)
    if length <= 125:
        buf[1] = <uint8_t>length
        return 2
    if length <= 0xFFFF:
        buf[1] = 126
        buf[2] = <uint8_t>(length >> 8)
        buf[3] = <uint8_t>length
        return 4
    buf[1] = 127
    for shift in range(8):
        buf[2 + shift] = <uint8_t>(length >> (56 - 8 * shift))
    return 10


cdef bytes build_frame(uint8_t opcode, const char* data, Py_ssize_t size,
                       bint fin, bint rsv1):
    cdef Py_ssize_t hlen = frame_header_size(<uint64_t>size)
    cdef bytes out = PyBytes_FromStringAndSize(NULL, hlen + size)
    cdef char* dst = PyBytes_AS_STRING(out)
    write_frame_header(<uint8_t*>dst, opcode, <uint64_t>size, fin, rsv1)
    if size:
        memcpy(dst + hlen, data, <size_t>size)
    return out


cdef inline int _check_int(object value, str name) except -1:
    if not isinstance(value, int):
        raise TypeError(f"{name} must be int, not {type(value).__name__}")
    return 0


cdef uint8_t _opcode_value(object opcode) except 0xFF:
    cdef int overflow = 0
    cdef long long v = PyLong_AsLongLongAndOverflow(opcode, &overflow)
    if overflow or v < 0 or v > 15:
        raise ValueError(f"opcode must be in 0..15, got {opcode!r}")
    return <uint8_t>v


cdef uint64_t _length_value(object length) except 0xFFFFFFFFFFFFFFFF:
    cdef int overflow = 0
    cdef long long v = PyLong_AsLongLongAndOverflow(length, &overflow)
    if overflow or v < 0:
        raise ValueError(f"length must be in 0..2**63-1, got {length!r}")
    return <uint64_t>v


def encode_frame_header(opcode, length, bint fin=True, bint rsv1=False):
    """Header of an unmasked frame with a payload of ``length`` bytes.

    2 bytes for length <= 125, 4 (126 + 16-bit length) up to 65535, 10 (127 +
    64-bit length) above. Raises TypeError for non-int opcode/length and
    ValueError for an opcode outside 0..15 or a length outside 0..2**63-1.
    """
    cdef uint8_t buf[MAX_HEADER_SIZE]
    _check_int(opcode, "opcode")
    _check_int(length, "length")
    cdef uint8_t op = _opcode_value(opcode)
    cdef uint64_t n = _length_value(length)
    cdef Py_ssize_t hlen = write_frame_header(buf, op, n, fin, rsv1)
    return PyBytes_FromStringAndSize(<char*>buf, hlen)


def encode_frame(opcode, payload, bint fin=True, bint rsv1=False):
    """Header followed by ``payload`` (bytes, bytearray or memoryview) in one bytes.

    Raises TypeError for a non-int opcode or any other payload type (``str``
    included) and ValueError for an opcode outside 0..15.
    """
    _check_int(opcode, "opcode")
    if not isinstance(payload, bytes):
        if isinstance(payload, (bytearray, memoryview)):
            payload = bytes(payload)
        else:
            raise TypeError(
                f"payload must be bytes, bytearray or memoryview, not {type(payload).__name__}"
            )
    cdef uint8_t op = _opcode_value(opcode)
    return build_frame(op, PyBytes_AS_STRING(payload), PyBytes_GET_SIZE(payload), fin, rsv1)
