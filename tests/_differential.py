"""Helpers for the tests that compare a compiled module with its pure-Python twin."""

from __future__ import annotations

import importlib
import os
from pathlib import Path
from types import ModuleType
from typing import Any, Callable

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent


def extensions_disabled() -> bool:
    """Same rule as chathub.speedups: CHATHUB_NO_EXTENSIONS set to anything but "" or "0"."""
    return os.environ.get("CHATHUB_NO_EXTENSIONS", "") not in ("", "0")


def import_compiled(name: str) -> ModuleType:
    """Import a compiled module for a differential test.

    A compiled module that cannot be imported fails the test in a normal run
    (the build is broken); it is skipped only when CHATHUB_NO_EXTENSIONS is set,
    i.e. when the run is explicitly about the pure-Python twins.
    """
    try:
        return importlib.import_module(name)
    except ImportError as exc:
        if extensions_disabled():
            pytest.skip(f"{name} not importable and CHATHUB_NO_EXTENSIONS is set: {exc}")
        pytest.fail(
            f"compiled module {name} cannot be imported ({exc}); build it with "
            f"`pip install -e .` (docs/building.md)",
            pytrace=False,
        )


def outcome(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> tuple[str, Any]:
    """("ok", result) or ("raises", exception type): what a differential test compares."""
    try:
        return ("ok", fn(*args, **kwargs))
    except Exception as exc:  # noqa: BLE001 - the type is the result
        return ("raises", type(exc))
