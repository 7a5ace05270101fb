"""One import point for the compiled hot path and its pure-Python twins.

    from chathub import speedups
    speedups.encode_frame(0x1, b"hello")

Compiled: ``chathub._fastpath._frame``, ``chathub._fastpath._fanout`` and
``chathub._fastpath._records`` (Cython) and ``chathub._rust_core`` (Rust). Twins:
``chathub._fastpath._frame_py``, ``chathub._fastpath._fanout_py``,
``chathub._fastpath._records_py``, ``chathub._compress_py`` and
``chathub._ratelimit_py``.
Both give the same results and raise the same exception types (the tests
compare them).

Selection, once, at import:

* ``CHATHUB_NO_EXTENSIONS`` set to anything but ``""`` or ``"0"``: the twins,
  ``IMPLEMENTATION == "python"``.
* otherwise the compiled modules, ``IMPLEMENTATION == "compiled"``; if they
  cannot be imported (say, a source tree that was never built) the twins are
  used, ``IMPLEMENTATION`` says why, and a ``RuntimeWarning`` is emitted.
  Importing this module never fails because of the compiled layer.

All of the compiled layer is used or none of it, so a run is never half one
and half the other.
"""

from __future__ import annotations

import os
import warnings
from typing import TYPE_CHECKING

__all__ = [
    "Fanout",
    "FanoutListener",
    "IMPLEMENTATION",
    "RateLimiter",
    "bind_records",
    "broadcast",
    "deflate_compress_raw",
    "deflate_decompress_raw",
    "describe",
    "encode_frame",
    "encode_frame_header",
    "gzip_compress",
    "gzip_decompress",
    "maybe_gzip",
    "new_message_init",
    "new_result",
]

ENV_VAR = "CHATHUB_NO_EXTENSIONS"


def extensions_disabled() -> bool:
    """True when ``CHATHUB_NO_EXTENSIONS`` asks for the pure-Python twins."""
    return os.environ.get(ENV_VAR, "") not in ("", "0")


IMPLEMENTATION: str
_DESCRIPTION: str

if TYPE_CHECKING:
    # Type checkers see the twins, whose signatures the stubs match.
    from chathub._compress_py import (
        deflate_compress_raw,
        deflate_decompress_raw,
        gzip_compress,
        gzip_decompress,
        maybe_gzip,
    )
    from chathub._fastpath._frame_py import encode_frame, encode_frame_header
    from chathub._fastpath._fanout_py import Fanout, FanoutListener, broadcast
    from chathub._fastpath._records_py import bind as bind_records
    from chathub._fastpath._records_py import new_message_init, new_result
    from chathub._ratelimit_py import RateLimiter
elif extensions_disabled():
    from chathub._compress_py import (
        deflate_compress_raw,
        deflate_decompress_raw,
        gzip_compress,
        gzip_decompress,
        maybe_gzip,
    )
    from chathub._fastpath._frame_py import encode_frame, encode_frame_header
    from chathub._fastpath._fanout_py import Fanout, FanoutListener, broadcast
    from chathub._fastpath._records_py import bind as bind_records
    from chathub._fastpath._records_py import new_message_init, new_result
    from chathub._ratelimit_py import RateLimiter

    IMPLEMENTATION = "python"
    _DESCRIPTION = f"python (pure-Python twins, {ENV_VAR} is set)"
else:
    try:
        from chathub._fastpath._frame import encode_frame, encode_frame_header
        from chathub._fastpath._fanout import Fanout, FanoutListener, broadcast
        from chathub._fastpath._records import bind as bind_records
        from chathub._fastpath._records import new_message_init, new_result
        from chathub._rust_core import (
            RateLimiter,
            deflate_compress_raw,
            deflate_decompress_raw,
            gzip_compress,
            gzip_decompress,
            maybe_gzip,
        )
    except Exception as exc:  # never crash: an unbuilt tree still runs, slowly
        from chathub._compress_py import (
            deflate_compress_raw,
            deflate_decompress_raw,
            gzip_compress,
            gzip_decompress,
            maybe_gzip,
        )
        from chathub._fastpath._frame_py import encode_frame, encode_frame_header
        from chathub._fastpath._fanout_py import Fanout, FanoutListener, broadcast
        from chathub._fastpath._records_py import bind as bind_records
        from chathub._fastpath._records_py import new_message_init, new_result
        from chathub._ratelimit_py import RateLimiter

        _reason = f"{type(exc).__name__}: {exc}"
        IMPLEMENTATION = f"python (compiled modules unavailable: {_reason})"
        _DESCRIPTION = IMPLEMENTATION
        warnings.warn(
            f"chathub is running on its pure-Python twins because the compiled modules "
            f"could not be imported ({_reason}); build them with `pip install -e .` "
            f"(see docs/building.md) or set {ENV_VAR}=1 to silence this warning",
            RuntimeWarning,
            stacklevel=2,
        )
        del _reason
    else:
        IMPLEMENTATION = "compiled"
        _DESCRIPTION = "compiled (Cython _frame, _fanout, _records; Rust _rust_core)"


def describe() -> str:
    """One line for ``chathub --version`` and start-up logs, e.g.
    ``"compiled (Cython _frame, _fanout, _records; Rust _rust_core)"``."""
    return _DESCRIPTION
