"""Raw deflate for permessage-deflate (RFC 7692): chathub._rust_core against its
twin chathub._compress_py, the RFC's examples, stdlib zlib and python-websockets.

Compressed bytes may differ between zlib-rs and zlib, so the differential tests
check that each side inflates the other's output and that both accept and
reject the same inputs with the same exception types. A compiled module that
does not import fails these tests unless CHATHUB_NO_EXTENSIONS is set
(tests/_differential.py).
"""

from __future__ import annotations

import array
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
from chathub import _compress_py, speedups
from tests._differential import REPO_ROOT, import_compiled, outcome

SYNC_TAIL = b"\x00\x00\xff\xff"

# RFC 7692 section 7.2.3: "Hello" in the forms the RFC shows.
HELLO = bytes.fromhex("f248cdc9c90700")  # 7.2.3.1, one compressed block (what we send)
HELLO_STORED = bytes.fromhex("000500faff48656c6c6f00")  # 7.2.3.3, no compression
HELLO_BFINAL = bytes.fromhex("f348cdc9c90700")  # 7.2.3.4, BFINAL set
HELLO_TWO_BLOCKS = bytes.fromhex("f24805000000ffffcac9c90700")  # 7.2.3.5
EMPTY = b"\x00"  # 7.2.3.6, an empty message


@pytest.fixture(scope="module")
def rust() -> ModuleType:
    return import_compiled("chathub._rust_core")


@pytest.fixture(params=["compiled", "python"], scope="module")
def impl(request: pytest.FixtureRequest) -> ModuleType:
    """Each test using this runs against both implementations."""
    if request.param == "python":
        return _compress_py
    return import_compiled("chathub._rust_core")


def chat_json(n: int) -> bytes:
    """Chat-like JSON of exactly n bytes."""
    out = b"".join(
        b'{"ev":"message","room":"general","seq":%d,"from":42,"text":"hello %d"}' % (i, i * 7) for i in range(n // 40 + 1)
    )
    return out[:n]


def zlib_inflate(packed: bytes) -> bytes:
    """The reference receiver: stdlib zlib, fresh raw context, tail appended."""
    return zlib.decompressobj(wbits=-15).decompress(packed + SYNC_TAIL)


def test_exported_through_speedups() -> None:
    expected = "chathub._compress_py" if speedups.IMPLEMENTATION != "compiled" else "chathub._rust_core"
    for name in ("deflate_compress_raw", "deflate_decompress_raw"):
        assert getattr(speedups, name).__module__ == expected
        assert name in speedups.__all__


# --- RFC 7692 examples and format -----------------------------------------------------------


def test_rfc7692_hello(impl: ModuleType) -> None:
    assert impl.deflate_compress_raw(b"Hello") == HELLO
    for packed in (HELLO, HELLO_STORED, HELLO_BFINAL, HELLO_TWO_BLOCKS):
        assert impl.deflate_decompress_raw(packed, 5) == b"Hello", packed.hex()
        with pytest.raises(ValueError):
            impl.deflate_decompress_raw(packed, 4)


def test_empty_message(impl: ModuleType) -> None:
    assert impl.deflate_compress_raw(b"") == EMPTY
    assert impl.deflate_decompress_raw(EMPTY, 0) == b""
    assert impl.deflate_decompress_raw(b"", 0) == b""


@pytest.mark.parametrize("level", range(10))
@pytest.mark.parametrize("n", [1, 200, 4096, 70_000])
def test_round_trip_and_zlib_interop(impl: ModuleType, level: int, n: int) -> None:
    data = chat_json(n)
    packed = impl.deflate_compress_raw(data, level)
    assert not packed.endswith(SYNC_TAIL) or level == 0  # the tail is removed
    assert zlib_inflate(packed) == data
    assert impl.deflate_decompress_raw(packed, n) == data
    assert impl.deflate_compress_raw(data, level) == packed  # fresh context: reproducible
    # What a zlib sender (a browser, python-websockets) produces.
    sender = zlib.compressobj(level, zlib.DEFLATED, -15)
    wire = (sender.compress(data) + sender.flush(zlib.Z_SYNC_FLUSH))[:-4]
    assert impl.deflate_decompress_raw(wire, n) == data


def test_default_level_and_keywords(impl: ModuleType) -> None:
    data = chat_json(3000)
    assert impl.deflate_compress_raw(data) == impl.deflate_compress_raw(data, 6) == impl.deflate_compress_raw(data=data, level=6)
    assert impl.deflate_decompress_raw(data=impl.deflate_compress_raw(data), max_size=3000) == data


@pytest.mark.parametrize("make", [bytes, bytearray, memoryview], ids=["bytes", "bytearray", "memoryview"])
def test_bytes_like_arguments(impl: ModuleType, make: type) -> None:
    data = chat_json(2000)
    assert impl.deflate_decompress_raw(make(impl.deflate_compress_raw(make(data))), 2000) == data


def test_messages_do_not_share_a_context(impl: ModuleType) -> None:
    first, second = chat_json(4096), chat_json(4000)
    a, b = impl.deflate_compress_raw(first), impl.deflate_compress_raw(second)
    assert impl.deflate_decompress_raw(b, 4000) == second  # decodes alone, in any order
    assert impl.deflate_decompress_raw(a, 4096) == first
    # A message that refers to an earlier one (context takeover) is refused:
    # we negotiate client_no_context_takeover.
    sender = zlib.compressobj(6, zlib.DEFLATED, -15)
    sender.compress(first)
    sender.flush(zlib.Z_SYNC_FLUSH)
    taken_over = (sender.compress(first) + sender.flush(zlib.Z_SYNC_FLUSH))[:-4]
    with pytest.raises(ValueError):
        impl.deflate_decompress_raw(taken_over, 1 << 20)


def test_python_websockets_interop(impl: ModuleType) -> None:
    """python-websockets' permessage-deflate, without context takeover, reads ours and we read its."""
    pmd_mod = pytest.importorskip("websockets.extensions.permessage_deflate")
    from websockets.frames import Frame, Opcode

    data = chat_json(5000)
    theirs = pmd_mod.PerMessageDeflate(True, True, 15, 15)
    sent = theirs.encode(Frame(Opcode.TEXT, data))
    assert sent.rsv1
    assert impl.deflate_decompress_raw(sent.data, len(data)) == data
    received = pmd_mod.PerMessageDeflate(True, True, 15, 15).decode(
        Frame(Opcode.TEXT, impl.deflate_compress_raw(data), rsv1=True), max_size=len(data)
    )
    assert received.data == data


def test_final_block_then_junk_is_ignored(impl: ModuleType) -> None:
    data = chat_json(1000)
    full = zlib.compress(data, 9, -15)  # one stream ending with a BFINAL block
    assert impl.deflate_decompress_raw(full, 1000) == data
    assert impl.deflate_decompress_raw(full + b"junk", 1000) == data


def test_max_size_boundary(impl: ModuleType) -> None:
    data = chat_json(10_000)
    packed = impl.deflate_compress_raw(data)
    assert impl.deflate_decompress_raw(packed, 10_000) == data
    assert impl.deflate_decompress_raw(packed, 2**80) == data
    for limit in (9_999, 100, 0):
        # The message says which ValueError it is (too large: close 1009; corrupt: 1002/1007).
        with pytest.raises(ValueError, match=r"^decompressed data exceeds max_size"):
            impl.deflate_decompress_raw(packed, limit)


def test_corrupt_inputs(impl: ModuleType) -> None:
    bad = [
        b"\x07",  # BTYPE 11 is reserved
        b"\x00\x05\x00\x00\x00",  # stored block with LEN != ~NLEN
        b"\x03\x02\x00",  # a match before the start of the message
        zlib.compress(b"zlib, not raw deflate"),
        b"\xff" * 20,
    ]
    for data in bad:
        with pytest.raises(ValueError, match=r"^invalid deflate data"):
            impl.deflate_decompress_raw(data, 10_000)


def test_decompression_bomb_in_process(impl: ModuleType) -> None:
    bomb = impl.deflate_compress_raw(bytes(32 << 20), 9)  # 32 MiB of zeros in ~32 KiB
    assert len(bomb) < 100_000
    with pytest.raises(ValueError):
        impl.deflate_decompress_raw(bomb, 1 << 20)


BOMB_SCRIPT = textwrap.dedent(
    """
    import importlib, resource, sys, zlib
    mod = importlib.import_module(sys.argv[1])
    # 512 MiB of zeros as one raw deflate message (~500 KiB), built in 1 MiB steps.
    z = zlib.compressobj(9, zlib.DEFLATED, -15)
    chunk = bytes(1 << 20)
    bomb = b"".join([z.compress(chunk) for _ in range(512)] + [z.flush(zlib.Z_SYNC_FLUSH)])[:-4]
    del chunk, z
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    try:
        mod.deflate_decompress_raw(bomb, 1 << 20)
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
        import_compiled(module)
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
    data = [chat_json(100_000 + i) for i in range(8)]
    results = [False] * len(data)

    def work(i: int) -> None:
        for _ in range(5):
            if rust.deflate_decompress_raw(rust.deflate_compress_raw(data[i]), len(data[i])) != data[i]:
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
        ("deflate_compress_raw", ("text",), TypeError),
        ("deflate_compress_raw", (None,), TypeError),
        ("deflate_compress_raw", (array.array("B", b"ab"),), TypeError),
        ("deflate_compress_raw", (b"x", 10), ValueError),
        ("deflate_compress_raw", (b"x", -1), ValueError),
        ("deflate_compress_raw", (b"x", 2**70), ValueError),
        ("deflate_compress_raw", (b"x", 6.0), TypeError),
        ("deflate_compress_raw", ("text", 99), TypeError),  # every TypeError before any ValueError
        ("deflate_decompress_raw", ("text", 10), TypeError),
        ("deflate_decompress_raw", (b"x", -1), ValueError),
        ("deflate_decompress_raw", (b"x", 1.5), TypeError),
        ("deflate_decompress_raw", (b"x", None), TypeError),
        ("deflate_decompress_raw", ("text", -1), TypeError),
    ],
)
def test_invalid_arguments(impl: ModuleType, func: str, args: tuple, error: type) -> None:
    with pytest.raises(error):
        getattr(impl, func)(*args)


# --- differential: compiled vs twin ---------------------------------------------------------

payloads = st.one_of(
    st.binary(max_size=2000),
    st.builds(chat_json, st.sampled_from([0, 1, 200, 4096, 16_383, 16_384, 65_536, 300_000])),
    st.builds(
        lambda n, seed: bytes((seed * i * 2654435761 >> 13) & 0xFF for i in range(n)),
        st.integers(0, 40_000),
        st.integers(1, 2**16),
    ),
)


@given(data=payloads, level=st.integers(0, 9))
@example(data=b"", level=6)
@example(data=b"Hello", level=6)
@example(data=b"\0" * 200_000, level=9)
def test_round_trip_both_ways(rust: ModuleType, data: bytes, level: int) -> None:
    from_rust = rust.deflate_compress_raw(data, level)
    from_py = _compress_py.deflate_compress_raw(data, level)
    n = len(data)
    assert _compress_py.deflate_decompress_raw(from_rust, n) == data
    assert rust.deflate_decompress_raw(from_py, n) == data
    assert rust.deflate_decompress_raw(from_rust, n) == data
    assert zlib_inflate(from_rust) == data
    if n:
        assert outcome(rust.deflate_decompress_raw, from_py, n - 1) == ("raises", ValueError)
        assert outcome(_compress_py.deflate_decompress_raw, from_rust, n - 1) == ("raises", ValueError)


def _mutations() -> st.SearchStrategy[bytes]:
    base = st.builds(lambda d, lvl: _compress_py.deflate_compress_raw(d, lvl), st.binary(max_size=300), st.integers(0, 9))

    def flip(data: bytes, pos: int, bit: int) -> bytes:
        pos %= len(data)
        return data[:pos] + bytes([data[pos] ^ (1 << bit)]) + data[pos + 1 :]

    return st.one_of(
        st.binary(max_size=64),
        st.builds(flip, base, st.integers(0, 10_000), st.integers(0, 7)),
        st.builds(lambda d, cut: d[: cut % (len(d) + 1)], base, st.integers(0, 10_000)),
        st.builds(lambda d, extra: d + extra, base, st.binary(min_size=1, max_size=8)),
        st.builds(lambda d: zlib.compress(d, 6, -15), st.binary(max_size=300)),  # BFINAL streams
    )


@given(data=_mutations(), max_size=st.one_of(st.integers(0, 400), st.just(2**70)))
@example(data=HELLO, max_size=5)
@example(data=HELLO, max_size=4)
@example(data=HELLO_BFINAL + b"junk", max_size=5)
@example(data=b"\x03\x02\x00", max_size=100)
@example(data=b"", max_size=0)
def test_decompress_accepts_and_rejects_like_twin(rust: ModuleType, data: bytes, max_size: int) -> None:
    got = outcome(rust.deflate_decompress_raw, data, max_size)
    assert got == outcome(_compress_py.deflate_decompress_raw, data, max_size)


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
    for name in ("deflate_compress_raw", "deflate_decompress_raw"):
        got = outcome(getattr(rust, name), data, number)
        want = outcome(getattr(_compress_py, name), data, number)
        if got[0] == want[0] == "ok" and name == "deflate_compress_raw":
            # Compressed bytes may differ: compare what they decompress to.
            got, want = ("ok", zlib_inflate(got[1])), ("ok", zlib_inflate(want[1]))
        assert got == want, name
