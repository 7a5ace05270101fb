"""chathub._fastpath._frame (Cython) against its twin _frame_py and RFC 6455.

Differential tests import both modules explicitly; a compiled module that does
not import fails them unless CHATHUB_NO_EXTENSIONS is set (tests/_differential.py).
"""

from __future__ import annotations

import array
import struct
from types import ModuleType

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

import tests._hypothesis_profiles  # noqa: F401  (registers/loads HYPOTHESIS_PROFILE)
from chathub._fastpath import _frame_py
from tests._differential import import_compiled, outcome

MAX_LENGTH = 2**63 - 1
BOUNDARY_LENGTHS = [0, 1, 124, 125, 126, 127, 65534, 65535, 65536, 65537, 2**32 - 1, 2**32, 2**63 - 2, MAX_LENGTH]
BOUNDARY_PAYLOAD_SIZES = [0, 1, 125, 126, 127, 65535, 65536, 65537, 200_000]


@pytest.fixture(scope="module")
def compiled() -> ModuleType:
    return import_compiled("chathub._fastpath._frame")


@pytest.fixture(params=["compiled", "python"], scope="module")
def impl(request: pytest.FixtureRequest) -> ModuleType:
    """Each test using this runs against both implementations."""
    if request.param == "python":
        return _frame_py
    return import_compiled("chathub._fastpath._frame")


def reference_header(opcode: int, length: int, fin: bool = True, rsv1: bool = False) -> bytes:
    """RFC 6455 section 5.2, written independently of both implementations."""
    first = (fin << 7) | (rsv1 << 6) | opcode
    if length < 126:
        return bytes([first, length])
    if length < 1 << 16:
        return bytes([first, 126]) + length.to_bytes(2, "big")
    return bytes([first, 127]) + length.to_bytes(8, "big")


# --- RFC 6455 section 5.7 examples (the unmasked ones: a server never masks) -------------


@pytest.mark.parametrize(
    ("opcode", "payload", "fin", "rsv1", "expected_hex"),
    [
        pytest.param(0x1, b"Hello", True, False, "810548656c6c6f", id="single-frame-text"),
        pytest.param(0x1, b"Hel", False, False, "010348656c", id="fragment-1"),
        pytest.param(0x0, b"lo", True, False, "80026c6f", id="fragment-2-continuation"),
        pytest.param(0x9, b"Hello", True, False, "890548656c6c6f", id="ping"),
        pytest.param(0xA, b"Hello", True, False, "8a0548656c6c6f", id="pong-unmasked"),
        pytest.param(0x8, struct.pack("!H", 1000), True, False, "880203e8", id="close-1000"),
        pytest.param(0x1, b"", True, False, "8100", id="empty-text"),
        # RFC 7692 section 7.2.3.1: "Hello" compressed with permessage-deflate (RSV1 set).
        pytest.param(0x1, bytes.fromhex("f248cdc9c90700"), True, True, "c107f248cdc9c90700", id="rfc7692-hello"),
    ],
)
def test_rfc6455_vectors(impl: ModuleType, opcode: int, payload: bytes, fin: bool, rsv1: bool, expected_hex: str) -> None:
    expected = bytes.fromhex(expected_hex)
    assert impl.encode_frame(opcode, payload, fin, rsv1) == expected
    assert impl.encode_frame_header(opcode, len(payload), fin=fin, rsv1=rsv1) == expected[: len(expected) - len(payload)]


def test_rfc6455_256_byte_binary(impl: ModuleType) -> None:
    payload = bytes(range(256))
    frame = impl.encode_frame(0x2, payload)
    assert frame[:4] == bytes.fromhex("827e0100")
    assert frame[4:] == payload


def test_rfc6455_64k_binary(impl: ModuleType) -> None:
    payload = b"\xab" * 65536
    frame = impl.encode_frame(0x2, payload)
    assert frame[:10] == bytes.fromhex("827f0000000000010000")
    assert frame[10:] == payload
    assert len(frame) == 65546


@pytest.mark.parametrize("length", BOUNDARY_LENGTHS)
def test_header_length_classes(impl: ModuleType, length: int) -> None:
    header = impl.encode_frame_header(0x2, length)
    assert header == reference_header(0x2, length)
    assert len(header) == (2 if length <= 125 else 4 if length <= 65535 else 10)


def test_huge_lengths_without_allocating(impl: ModuleType) -> None:
    assert impl.encode_frame_header(0x2, MAX_LENGTH) == b"\x82\x7f" + MAX_LENGTH.to_bytes(8, "big")
    assert impl.encode_frame_header(0x0, 2**40, fin=False) == b"\x00\x7f" + (2**40).to_bytes(8, "big")


def test_flag_bits(impl: ModuleType) -> None:
    assert impl.encode_frame_header(0x1, 0, fin=True, rsv1=False)[0] == 0x81
    assert impl.encode_frame_header(0x1, 0, fin=False, rsv1=False)[0] == 0x01
    assert impl.encode_frame_header(0x1, 0, fin=True, rsv1=True)[0] == 0xC1
    assert impl.encode_frame_header(0x1, 0, fin=False, rsv1=True)[0] == 0x41
    # All 16 opcodes (reserved ones too: the encoder does not police them).
    for op in range(16):
        assert impl.encode_frame_header(op, 0)[0] == 0x80 | op
    # The mask bit is never set.
    for length in BOUNDARY_LENGTHS:
        assert impl.encode_frame_header(0x2, length)[1] & 0x80 == 0


def test_keyword_arguments(impl: ModuleType) -> None:
    assert impl.encode_frame(opcode=1, payload=b"x", fin=False, rsv1=True) == b"\x41\x01x"
    assert impl.encode_frame_header(opcode=2, length=3, fin=False, rsv1=True) == b"\x42\x03"


@pytest.mark.parametrize("make", [bytes, bytearray, memoryview], ids=["bytes", "bytearray", "memoryview"])
def test_bytes_like_payloads(impl: ModuleType, make: type) -> None:
    assert impl.encode_frame(0x2, make(b"abc")) == b"\x82\x03abc"


def test_non_contiguous_memoryview(impl: ModuleType) -> None:
    view = memoryview(b"abcdef")[::2]
    assert impl.encode_frame(0x2, view) == b"\x82\x03ace"


@pytest.mark.parametrize(
    ("args", "error"),
    [
        ((16, 0), ValueError),
        ((-1, 0), ValueError),
        ((2**64, 0), ValueError),
        ((1, -1), ValueError),
        ((1, 2**63), ValueError),
        ((1, 2**64 + 5), ValueError),
        ((1.0, 0), TypeError),
        (("1", 0), TypeError),
        ((None, 0), TypeError),
        ((1, 1.0), TypeError),
        ((1, "5"), TypeError),
        ((1, None), TypeError),
        ((99, "x"), TypeError),  # every TypeError before any ValueError
        ((b"\x01", 0), TypeError),
    ],
)
def test_header_invalid_arguments(impl: ModuleType, args: tuple, error: type) -> None:
    with pytest.raises(error):
        impl.encode_frame_header(*args)


@pytest.mark.parametrize(
    ("args", "error"),
    [
        ((1, "text"), TypeError),
        ((1, None), TypeError),
        ((1, 5), TypeError),
        ((1, [1, 2]), TypeError),
        ((1, array.array("B", b"ab")), TypeError),
        ((16, b""), ValueError),
        ((-1, b""), ValueError),
        ((1.5, b""), TypeError),
        ((99, "text"), TypeError),  # every TypeError before any ValueError
    ],
)
def test_frame_invalid_arguments(impl: ModuleType, args: tuple, error: type) -> None:
    with pytest.raises(error):
        impl.encode_frame(*args)


# --- differential: compiled vs twin --------------------------------------------------------

lengths = st.one_of(st.sampled_from(BOUNDARY_LENGTHS), st.integers(0, 70000), st.integers(0, MAX_LENGTH))
flags = st.booleans()


@given(opcode=st.integers(0, 15), length=lengths, fin=flags, rsv1=flags)
def test_header_matches_twin(compiled: ModuleType, opcode: int, length: int, fin: bool, rsv1: bool) -> None:
    got = compiled.encode_frame_header(opcode, length, fin, rsv1)
    assert got == _frame_py.encode_frame_header(opcode, length, fin, rsv1)
    assert got == reference_header(opcode, length, fin, rsv1)


weird_values = st.one_of(
    st.integers(),
    st.integers(min_value=2**62, max_value=2**70),
    st.integers(min_value=-(2**70), max_value=-1),
    st.booleans(),
    st.floats(allow_nan=False),
    st.text(max_size=3),
    st.binary(max_size=3),
    st.none(),
    st.just(object()),
)


@given(opcode=weird_values, length=weird_values, fin=st.one_of(st.booleans(), st.integers(), st.none(), st.text(max_size=1)))
@example(opcode=16, length=0, fin=True)
@example(opcode=0, length=2**63, fin=True)
@example(opcode=0, length=-1, fin=True)
@example(opcode=True, length=False, fin=0)
def test_header_arguments_match_twin(compiled: ModuleType, opcode: object, length: object, fin: object) -> None:
    assert outcome(compiled.encode_frame_header, opcode, length, fin) == outcome(
        _frame_py.encode_frame_header, opcode, length, fin
    )


payloads = st.one_of(
    st.binary(max_size=300),
    st.builds(lambda n, b: bytes([b]) * n, st.sampled_from(BOUNDARY_PAYLOAD_SIZES), st.integers(0, 255)),
)
wrappers = st.sampled_from([bytes, bytearray, memoryview])


@given(opcode=st.integers(0, 15), payload=payloads, wrap=wrappers, fin=flags, rsv1=flags)
@example(opcode=2, payload=b"", wrap=bytes, fin=True, rsv1=False)
@example(opcode=2, payload=b"\0" * 65536, wrap=memoryview, fin=True, rsv1=True)
def test_frame_matches_twin(compiled: ModuleType, opcode: int, payload: bytes, wrap: type, fin: bool, rsv1: bool) -> None:
    got = compiled.encode_frame(opcode, wrap(payload), fin, rsv1)
    assert type(got) is bytes
    assert got == _frame_py.encode_frame(opcode, wrap(payload), fin, rsv1)
    assert got == reference_header(opcode, len(payload), fin, rsv1) + payload


@given(
    opcode=weird_values,
    payload=st.one_of(st.binary(max_size=10), st.text(max_size=10), st.integers(), st.none(), st.lists(st.integers(0, 255), max_size=3)),
    rsv1=st.one_of(st.booleans(), st.integers(), st.none()),
)
@example(opcode=1, payload="Hello", rsv1=False)
@example(opcode=20, payload="Hello", rsv1=False)
def test_frame_arguments_match_twin(compiled: ModuleType, opcode: object, payload: object, rsv1: object) -> None:
    assert outcome(compiled.encode_frame, opcode, payload, rsv1=rsv1) == outcome(
        _frame_py.encode_frame, opcode, payload, rsv1=rsv1
    )
