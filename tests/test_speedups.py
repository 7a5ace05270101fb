"""chathub.speedups: which implementation is selected, and the version in one place."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import tomllib

import pytest

import chathub
from chathub import speedups
from tests._differential import REPO_ROOT, extensions_disabled, import_compiled

EXPORTS = ["encode_frame", "encode_frame_header", "gzip_compress", "gzip_decompress", "maybe_gzip"]

REPORT = textwrap.dedent(
    """
    import json, warnings
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        from chathub import speedups
    print(json.dumps({
        "implementation": speedups.IMPLEMENTATION,
        "describe": speedups.describe(),
        "modules": {name: getattr(speedups, name).__module__ for name in speedups.__all__
                    if callable(getattr(speedups, name)) and name != "describe"},
        "warnings": [(w.category.__name__, str(w.message)) for w in caught],
        "frame": speedups.encode_frame(1, b"Hello").hex(),
        "gzip": speedups.gzip_decompress(speedups.gzip_compress(b"abc"), 3).decode(),
    }))
    """
)

# Makes the Rust module unimportable, as in a source tree that was never built.
BLOCK_RUST = textwrap.dedent(
    """
    import sys
    class _Block:
        def find_spec(self, name, path=None, target=None):
            if name == "chathub._rust_core":
                raise ImportError("blocked by the test")
            return None
    sys.meta_path.insert(0, _Block())
    """
)


def run_report(env_value: str | None, prelude: str = "") -> dict:
    import json

    env = dict(os.environ)
    env.pop("CHATHUB_NO_EXTENSIONS", None)
    if env_value is not None:
        env["CHATHUB_NO_EXTENSIONS"] = env_value
    proc = subprocess.run(
        [sys.executable, "-c", prelude + REPORT],
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
        env=env,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def require_compiled() -> None:
    import_compiled("chathub._fastpath._frame")
    import_compiled("chathub._rust_core")


def test_implementation_follows_environment() -> None:
    if extensions_disabled():
        assert speedups.IMPLEMENTATION == "python"
        assert speedups.encode_frame.__module__ == "chathub._fastpath._frame_py"
        assert speedups.gzip_compress.__module__ == "chathub._compress_py"
    else:
        assert speedups.IMPLEMENTATION == "compiled"
        assert speedups.describe() == "compiled (Cython _frame, _fanout, _records; Rust _rust_core)"
        assert speedups.encode_frame.__module__ == "chathub._fastpath._frame"
        assert speedups.gzip_compress.__module__ == "chathub._rust_core"


def test_exports() -> None:
    for name in EXPORTS + ["IMPLEMENTATION", "describe"]:
        assert name in speedups.__all__
        assert hasattr(speedups, name)
    assert speedups.encode_frame(0x1, b"Hello") == b"\x81\x05Hello"


@pytest.mark.parametrize("value", ["1", "yes", "true"])
def test_env_variable_selects_twins(value: str) -> None:
    report = run_report(value)
    assert report["implementation"] == "python"
    assert report["describe"].startswith("python")
    assert report["modules"]["encode_frame"] == "chathub._fastpath._frame_py"
    assert report["modules"]["gzip_decompress"] == "chathub._compress_py"
    assert report["warnings"] == []
    assert report["frame"] == "810548656c6c6f" and report["gzip"] == "abc"


@pytest.mark.parametrize("value", [None, "", "0"])
def test_unset_selects_compiled(value: str | None) -> None:
    require_compiled()
    report = run_report(value)
    assert report["implementation"] == "compiled"
    assert report["describe"] == "compiled (Cython _frame, _fanout, _records; Rust _rust_core)"
    assert report["modules"]["encode_frame"] == "chathub._fastpath._frame"
    assert report["modules"]["maybe_gzip"] == "chathub._rust_core"
    assert report["warnings"] == []
    assert report["frame"] == "810548656c6c6f" and report["gzip"] == "abc"


def test_missing_compiled_modules_fall_back_with_warning() -> None:
    report = run_report(None, prelude=BLOCK_RUST)
    assert report["implementation"].startswith("python (compiled modules unavailable: ")
    if not extensions_disabled():  # in a normal run the Cython module is built: Rust is what failed
        assert report["implementation"].endswith("ImportError: blocked by the test)")
    assert report["describe"] == report["implementation"]
    # All or nothing: the Cython module is not used either.
    assert report["modules"]["encode_frame"] == "chathub._fastpath._frame_py"
    assert report["modules"]["gzip_compress"] == "chathub._compress_py"
    assert [category for category, _ in report["warnings"]] == ["RuntimeWarning"]
    assert report["frame"] == "810548656c6c6f" and report["gzip"] == "abc"


def test_versions_agree() -> None:
    pyproject = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())
    cargo = tomllib.loads((REPO_ROOT / "rust_core" / "Cargo.toml").read_text())
    assert pyproject["project"]["version"] == chathub.__version__
    assert cargo["package"]["version"] == chathub.__version__
