# cython: language_level=3
"""C-level API of chathub._fastpath._frame, for ``cimport`` by other modules.

    from chathub._fastpath._frame cimport write_frame_header, build_frame

All functions take already-validated arguments (opcode 0..15, length < 2**63);
the Python-level functions in _frame.pyx do the checking.
"""

from libc.stdint cimport uint8_t, uint64_t

# Largest RFC 6455 server (unmasked) frame header.
cdef enum:
    MAX_HEADER_SIZE = 10

# Number of header bytes for a payload of ``length`` bytes: 2, 4 or 10.
cdef Py_ssize_t frame_header_size(uint64_t length) noexcept nogil

# Writes the header into ``buf`` (at least MAX_HEADER_SIZE bytes) and returns
# the number of bytes written.
cdef Py_ssize_t write_frame_header(uint8_t* buf, uint8_t opcode, uint64_t length,
                                   bint fin, bint rsv1) noexcept nogil

# A new bytes object: header followed by ``size`` bytes from ``data``.
cdef bytes build_frame(uint8_t opcode, const char* data, Py_ssize_t size,
                       bint fin, bint rsv1)
