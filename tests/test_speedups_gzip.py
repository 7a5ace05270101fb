"""chathub._rust_core (Rust) against its twin chathub._compress_py and RFC 1952.

Compressed bytes may differ between the two, so the differential tests check
that each side decompresses the other's output, that both accept and reject
the same inputs (with the same exception types) and that maybe_gzip agrees on
None-ness. A compiled module that does not import fails these tests unless
CHATHUB_NO_EXTENSIONS is set (tests/_differential.py).
"""

from __future__ import annotations

import array
import gzip
import struct
import subprocess
import sys
import textwrap
import threading
import zlib
from types import ModuleType

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

import tests._hypothesis_profiles  # noqa: F401  (registers/loads HYPOTHESIS_PROFILE)
from chathub import _compress_py
from tests._differential import REPO_ROOT, import_compiled, outcome

# `gzip -n` of b"hello\n" and `gzip` of a file greeting.txt (FNAME, MTIME set), by GNU gzip 1.12.
GNU_GZIP_HELLO = bytes.fromhex("1f8b0800000000000003cb48cdc9c9e7020020303a3606000000")
GNU_GZIP_HELLO_FNAME = bytes.fromhex(
    "1f8b080800f1536500036772656574696e672e74787400cb48cdc9c9e7020020303a3606000000"
)


@pytest.fixture(scope="module")
def rust() -> ModuleType:
    return import_compiled("chathub._rust_core")


@pytest.fixture(params=["compiled", "python"], scope="module")
def impl(request: pytest.FixtureRequest) -> ModuleType:
    """Each test using this runs against both implementations."""
    if request.param == "python":
        return _compress_py
    return import_compiled("chathub._rust_core")


def chat_text(n: int) -> bytes:
    """Compressible, chat-like data of exactly n bytes."""
    line = b'{"type":"message","room":"general","user":42,"text":"hello there"}\n'
    return (line * (n // len(line) + 1))[:n]


def gzip_member(body: bytes, *, flags: int = 0, extra: bytes = b"", name: bytes = b"", comment: bytes = b"", hcrc: int | None = None) -> bytes:
    """A gzip member with hand-made optional header fields (RFC 1952 section 2.3)."""
    header = bytearray(struct.pack("<BBBBLBB", 0x1F, 0x8B, 8, flags, 0, 0, 255))
    if flags & 0x04:
        header += struct.pack("<H", len(extra)) + extra
    if flags & 0x08:
        header += name + b"\0"
    if flags & 0x10:
        header += comment + b"\0"
    if flags & 0x02:
        header += struct.pack("<H", (zlib.crc32(header) & 0xFFFF) if hcrc is None else hcrc)
    raw = zlib.compress(body, 6, -15)
    return bytes(header) + raw + struct.pack("<LL", zlib.crc32(body), len(body) & 0xFFFFFFFF)


# --- known vectors and format ---------------------------------------------------------------


def test_gnu_gzip_vectors(impl: ModuleType) -> None:
    assert impl.gzip_decompress(GNU_GZIP_HELLO, 6) == b"hello\n"
    assert impl.gzip_decompress(GNU_GZIP_HELLO_FNAME, 100) == b"hello\n"
    with pytest.raises(ValueError):
        impl.gzip_decompress(GNU_GZIP_HELLO, 5)


@pytest.mark.parametrize("level", range(10))
def test_header_and_stdlib_interop(impl: ModuleType, level: int) -> None:
    data = chat_text(5000)
    out = impl.gzip_compress(data, level)
    assert out[:4] == b"\x1f\x8b\x08\x00"  # magic, deflate, no flags
    assert out[4:8] == b"\0\0\0\0"  # MTIME 0: output is reproducible
    assert gzip.decompress(out) == data
    assert impl.gzip_decompress(gzip.compress(data, level), len(data)) == data
    assert impl.gzip_compress(data, level) == out


def test_default_level_and_keywords(impl: ModuleType) -> None:
    data = chat_text(3000)
    assert impl.gzip_compress(data) == impl.gzip_compress(data, 6) == impl.gzip_compress(data=data, level=6)
    assert impl.gzip_decompress(data=impl.gzip_compress(data), max_size=3000) == data
    assert impl.maybe_gzip(payload=data, threshold=5000) is None


@pytest.mark.parametrize("make", [bytes, bytearray, memoryview], ids=["bytes", "bytearray", "memoryview"])
def test_bytes_like_arguments(impl: ModuleType, make: type) -> None:
    data = chat_text(2000)
    packed = impl.gzip_compress(make(data))
    assert impl.gzip_decompress(make(packed), 2000) == data
    assert impl.gzip_decompress(impl.maybe_gzip(make(data), 10), 2000) == data


def test_empty_payload(impl: ModuleType) -> None:
    out = impl.gzip_compress(b"")
    assert impl.gzip_decompress(out, 0) == b""
    assert gzip.decompress(out) == b""
    assert impl.maybe_gzip(b"", 0) is None
    assert impl.maybe_gzip(b"", -1) is not None


def test_max_size_boundary(impl: ModuleType) -> None:
    data = chat_text(10_000)
    packed = impl.gzip_compress(data)
    assert impl.gzip_decompress(packed, 10_000) == data
    assert impl.gzip_decompress(packed, 2**80) == data  # huge limits are fine
    for limit in (9_999, 100, 0):
        with pytest.raises(ValueError):
            impl.gzip_decompress(packed, limit)


def test_maybe_gzip_threshold(impl: ModuleType) -> None:
    assert impl.maybe_gzip(chat_text(1024)) is None
    packed = impl.maybe_gzip(chat_text(1025))
    assert packed is not None and gzip.decompress(packed) == chat_text(1025)
    assert impl.maybe_gzip(chat_text(10), 9) is not None
    assert impl.maybe_gzip(chat_text(10), 10) is None
    assert impl.maybe_gzip(chat_text(10), 2**100) is None


def test_optional_header_fields(impl: ModuleType) -> None:
    body = chat_text(500)
    every = 0x02 | 0x04 | 0x08 | 0x10 | 0x01  # FHCRC FEXTRA FNAME FCOMMENT FTEXT
    member = gzip_member(body, flags=every, extra=b"XY\x02\x00ab", name=b"room.log", comment=b"chathub")
    assert impl.gzip_decompress(member, 500) == body
    bad_hcrc = gzip_member(body, flags=0x02, hcrc=0x1234)
    with pytest.raises(ValueError):
        impl.gzip_decompress(bad_hcrc, 500)
    with pytest.raises(ValueError):  # reserved flag bit
        impl.gzip_decompress(gzip_member(body, flags=0x20), 500)


def test_corrupt_inputs(impl: ModuleType) -> None:
    packed = impl.gzip_compress(chat_text(2000))
    bad = [
        b"",
        b"\x1f",
        b"\x1f\x8b",
        b"not gzip at all",
        zlib.compress(b"zlib, not gzip"),
        packed[:-1],  # truncated trailer
        packed[:12],  # truncated deflate data
        packed + b"\0",  # trailing byte
        packed + packed,  # two members: exactly one is allowed
        packed[:-8] + struct.pack("<LL", 0, 2000),  # CRC mismatch
        packed[:-4] + struct.pack("<L", 1999),  # ISIZE mismatch
        packed[:2] + b"\x07" + packed[3:],  # compression method 7
    ]
    for data in bad:
        with pytest.raises(ValueError):
            impl.gzip_decompress(data, 10_000)


def test_decompression_bomb_in_process(impl: ModuleType) -> None:
    bomb = gzip.compress(bytes(32 << 20), 9)  # 32 MiB of zeros in ~32 KiB
    with pytest.raises(ValueError):
        impl.gzip_decompress(bomb, 1 << 20)


BOMB_SCRIPT = textwrap.dedent(
    """
    import importlib, resource, sys, zlib
    mod = importlib.import_module(sys.argv[1])
    # 512 MiB of zeros as one gzip member (~500 KiB), built in 1 MiB steps.
    z = zlib.compressobj(9, zlib.DEFLATED, 31)
    chunk = bytes(1 << 20)
    bomb = b"".join([z.compress(chunk) for _ in range(512)] + [z.flush()])
    del chunk, z
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    try:
        mod.gzip_decompress(bomb, 1 << 20)
    except ValueError:
        pass
    else:
        raise SystemExit("no ValueError")
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print((after - before) // 1024)  # ru_maxrss is in KiB on Linux: print MiB
    """
)


@pytest.mark.parametrize("module", ["chathub._rust_core", "chathub._compress_py"])
def test_decompression_bomb_stops_early(module: str) -> None:
    """Peak memory stays near max_size: the 512 MiB are never inflated."""
    if module == "chathub._rust_core":
        import_compiled(module)  # fail (or skip under CHATHUB_NO_EXTENSIONS) like the others
    proc = subprocess.run(
        [sys.executable, "-c", BOMB_SCRIPT, module],
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    grew_mib = int(proc.stdout.strip())
    assert grew_mib < 64, f"{module}: peak RSS grew by {grew_mib} MiB"


def test_compiled_releases_gil_safely(rust: ModuleType) -> None:
    """Large inputs run with the GIL released; results stay right under threads."""
    data = [chat_text(100_000 + i) for i in range(8)]
    results: list[bool] = [False] * len(data)

    def work(i: int) -> None:
        for _ in range(5):
            packed = rust.gzip_compress(data[i])
            if rust.gzip_decompress(packed, len(data[i])) != data[i]:
                return
        results[i] = True

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(data))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(results)


@pytest.mark.parametrize(
    ("func", "args", "error"),
    [
        ("gzip_compress", ("text",), TypeError),
        ("gzip_compress", (None,), TypeError),
        ("gzip_compress", (array.array("B", b"ab"),), TypeError),
        ("gzip_compress", (b"x", 10), ValueError),
        ("gzip_compress", (b"x", -1), ValueError),
        ("gzip_compress", (b"x", 2**70), ValueError),
        ("gzip_compress", (b"x", 6.0), TypeError),
        ("gzip_compress", (b"x", None), TypeError),
        ("gzip_compress", ("text", 99), TypeError),  # every TypeError before any ValueError
        ("gzip_decompress", ("text", 10), TypeError),
        ("gzip_decompress", (b"x", -1), ValueError),
        ("gzip_decompress", (b"x", 1.5), TypeError),
        ("gzip_decompress", (b"x", None), TypeError),
        ("gzip_decompress", ("text", -1), TypeError),
        ("maybe_gzip", ("text",), TypeError),
        ("maybe_gzip", (b"x", 1.0), TypeError),
        ("maybe_gzip", (b"x", None), TypeError),
    ],
)
def test_invalid_arguments(impl: ModuleType, func: str, args: tuple, error: type) -> None:
    with pytest.raises(error):
        getattr(impl, func)(*args)


# --- differential: compiled vs twin ---------------------------------------------------------

payloads = st.one_of(
    st.binary(max_size=2000),
    st.builds(chat_text, st.sampled_from([0, 1, 1023, 1024, 1025, 16_383, 16_384, 65_536, 300_000])),
    st.builds(lambda n, seed: bytes((seed * i * 2654435761 >> 13) & 0xFF for i in range(n)), st.integers(0, 40_000), st.integers(1, 2**16)),
)


@given(data=payloads, level=st.integers(0, 9))
@example(data=b"", level=6)
@example(data=b"\0" * 200_000, level=9)
def test_round_trip_both_ways(rust: ModuleType, data: bytes, level: int) -> None:
    from_rust = rust.gzip_compress(data, level)
    from_py = _compress_py.gzip_compress(data, level)
    n = len(data)
    assert _compress_py.gzip_decompress(from_rust, n) == data
    assert rust.gzip_decompress(from_py, n) == data
    assert rust.gzip_decompress(from_rust, n) == data
    assert gzip.decompress(from_rust) == data
    if n:
        assert outcome(rust.gzip_decompress, from_py, n - 1) == ("raises", ValueError)
        assert outcome(_compress_py.gzip_decompress, from_rust, n - 1) == ("raises", ValueError)


@given(data=payloads, threshold=st.one_of(st.integers(-5, 70_000), st.sampled_from([1023, 1024, 1025, 2**64, 2**100, -(2**100)])))
@example(data=b"x" * 1024, threshold=1024)
@example(data=b"x" * 1025, threshold=1024)
def test_maybe_gzip_matches_twin(rust: ModuleType, data: bytes, threshold: int) -> None:
    got = rust.maybe_gzip(data, threshold)
    want = _compress_py.maybe_gzip(data, threshold)
    assert (got is None) == (want is None) == (len(data) <= threshold)
    if got is not None:
        assert _compress_py.gzip_decompress(got, len(data)) == data
        assert rust.gzip_decompress(want, len(data)) == data


def _mutations() -> st.SearchStrategy[bytes]:
    base = st.builds(lambda d, lvl: _compress_py.gzip_compress(d, lvl), st.binary(max_size=300), st.integers(0, 9))

    def flip(data: bytes, pos: int, bit: int) -> bytes:
        pos %= len(data)
        return data[:pos] + bytes([data[pos] ^ (1 << bit)]) + data[pos + 1 :]

    return st.one_of(
        st.binary(max_size=64),
        st.builds(lambda b, tail: b"\x1f\x8b\x08" + tail, st.just(None), st.binary(max_size=64)),
        st.builds(flip, base, st.integers(0, 10_000), st.integers(0, 7)),
        st.builds(lambda d, cut: d[: cut % (len(d) + 1)], base, st.integers(0, 10_000)),
        st.builds(lambda d, extra: d + extra, base, st.binary(min_size=1, max_size=8)),
        st.builds(lambda d, flags: d[:3] + bytes([flags]) + d[4:], base, st.integers(0, 255)),
        st.builds(
            lambda body, flags, extra, name, comment, hcrc: gzip_member(
                body, flags=flags, extra=extra, name=name, comment=comment, hcrc=hcrc
            ),
            st.binary(max_size=100),
            st.integers(0, 0x1F),
            st.binary(max_size=10),
            st.binary(max_size=10).map(lambda b: b.replace(b"\0", b"")),
            st.binary(max_size=10).map(lambda b: b.replace(b"\0", b"")),
            st.one_of(st.none(), st.integers(0, 0xFFFF)),
        ),
    )


@given(data=_mutations(), max_size=st.one_of(st.integers(0, 400), st.just(2**70)))
@example(data=GNU_GZIP_HELLO, max_size=6)
@example(data=GNU_GZIP_HELLO, max_size=5)
@example(data=GNU_GZIP_HELLO + GNU_GZIP_HELLO, max_size=100)
@example(data=b"", max_size=0)
def test_decompress_accepts_and_rejects_like_twin(rust: ModuleType, data: bytes, max_size: int) -> None:
    assert outcome(rust.gzip_decompress, data, max_size) == outcome(_compress_py.gzip_decompress, data, max_size)


odd_arguments = st.one_of(
    st.integers(-20, 20),
    st.integers(min_value=2**62, max_value=2**70),
    st.integers(min_value=-(2**70), max_value=-(2**62)),
    st.booleans(),
    st.floats(allow_nan=False),
    st.text(max_size=3),
    st.none(),
)
odd_data = st.one_of(
    st.binary(max_size=20),
    st.binary(max_size=20).map(bytearray),
    st.binary(max_size=20).map(lambda b: memoryview(b)),
    st.text(max_size=5),
    st.integers(),
    st.none(),
)


@given(data=odd_data, number=odd_arguments)
@example(data="text", number=-1)
@example(data=b"x", number=True)
def test_arguments_match_twin(rust: ModuleType, data: object, number: object) -> None:
    for name in ("gzip_compress", "gzip_decompress", "maybe_gzip"):
        got = outcome(getattr(rust, name), data, number)
        want = outcome(getattr(_compress_py, name), data, number)
        if got[0] == want[0] == "ok" and name != "gzip_decompress" and got[1] is not None:
            # Compressed bytes may differ: compare what they decompress to.
            got = ("ok", gzip.decompress(got[1]))
            want = ("ok", gzip.decompress(want[1]))
        assert got == want, name
