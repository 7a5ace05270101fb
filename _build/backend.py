"""In-tree PEP 517 backend: build the Cython fast path, then hand over to maturin.

maturin builds the Rust crate (``rust_core/`` -> ``chathub._rust_core``) and the
wheel, but does not compile Cython. This backend cythonizes and compiles
``chathub/_fastpath/*.pyx`` *in place* (next to the sources, so an editable
install imports them from the tree) and then calls maturin's own hooks; the
``include`` in ``[tool.maturin]`` puts the Cython ``.so`` files in the wheel.
So ``pip install .``, ``pip install -e .``, ``pip wheel .`` and
``python -m build`` each build both layers into one wheel.

Build profile: ``CHATHUB_BUILD_PROFILE`` (or ``--config-settings
chathub.profile=...``), default ``release``:

=========  ============================  ====================================
profile    Cython (C compiler)           Rust (cargo profile)
=========  ============================  ====================================
release    -O2, no linetrace             release (LTO, codegen-units=1)
profiling  -O2 -g, no linetrace          profiling (release + debug symbols)
dev        -O0 -g, linetrace, annotate   dev (unoptimised, debug assertions)
=========  ============================  ====================================

Never benchmark a ``dev`` build. Generated C (and annotation HTML) goes to
``build/cython/``; compiler objects to ``build/cython-temp/``.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import sys
from pathlib import Path
from typing import Any, Iterator, Mapping

import maturin  # type: ignore[import-untyped]
from maturin import (  # type: ignore[import-untyped]  # noqa: F401  (re-exported PEP 517 hooks)
    build_sdist,
    get_requires_for_build_editable,
    get_requires_for_build_sdist,
    get_requires_for_build_wheel,
    prepare_metadata_for_build_editable,
    prepare_metadata_for_build_wheel,
)

ROOT = Path(__file__).resolve().parent.parent
FASTPATH = Path("chathub") / "_fastpath"
PROFILES = ("release", "profiling", "dev")


def _profile(config_settings: Mapping[str, Any] | None) -> str:
    value = None
    if config_settings:
        value = config_settings.get("chathub.profile")
    value = value or os.environ.get("CHATHUB_BUILD_PROFILE") or "release"
    if value not in PROFILES:
        raise ValueError(f"unknown build profile {value!r}; expected one of {', '.join(PROFILES)}")
    return value


@contextlib.contextmanager
def _in_root() -> Iterator[None]:
    old = os.getcwd()
    os.chdir(ROOT)
    try:
        yield
    finally:
        os.chdir(old)


def _cython_include_path() -> list[str]:
    """Directories that ``cimport`` searches: the tree itself and the installed
    picows (``cimport picows`` finds ``picows/picows.pxd`` in its site-packages)."""
    paths = [str(ROOT)]
    spec = importlib.util.find_spec("picows")  # locates the package, imports nothing
    if spec is not None and spec.submodule_search_locations:
        for location in spec.submodule_search_locations:
            parent = str(Path(location).parent)
            if parent not in paths:
                paths.append(parent)
    return paths


def build_cython(profile: str = "release", *, force: bool = False) -> list[str]:
    """Cythonize and compile every ``chathub/_fastpath/*.pyx`` in place.

    Up-to-date modules are skipped (Cython and setuptools compare timestamps),
    so a rebuild after a Rust-only change costs nothing here. Returns the paths
    of the extension modules, relative to the project root.
    """
    from Cython.Build import cythonize
    from setuptools import Distribution, Extension  # type: ignore[import-untyped]
    from setuptools.command.build_ext import build_ext  # type: ignore[import-untyped]

    debug = profile == "dev"
    with _in_root():
        sources = sorted(FASTPATH.glob("*.pyx"))
        if not sources:
            return []
        # Timestamps cannot tell a release .so from a dev one: rebuild everything
        # when the profile changes (or is unknown, e.g. after `rm -rf build`).
        stamp = Path("build") / "cython" / "profile"
        if not stamp.is_file() or stamp.read_text().strip() != profile:
            force = True
        if debug:
            cflags = ["-O0", "-g"]
        elif profile == "profiling":
            cflags = ["-O2", "-g"]
        else:
            cflags = ["-O2", "-g0"]
        macros = [("CYTHON_TRACE", "1"), ("CYTHON_TRACE_NOGIL", "1")] if debug else []
        extensions = [
            Extension(
                ".".join(FASTPATH.parts + (src.stem,)),
                [str(src)],
                extra_compile_args=cflags,
                define_macros=macros,
            )
            for src in sources
        ]
        modules = cythonize(
            extensions,
            include_path=_cython_include_path(),
            build_dir=str(Path("build") / "cython"),
            compiler_directives={
                "language_level": 3,
                "linetrace": debug,
                "embedsignature": True,
            },
            annotate=debug,
            force=force,
            quiet=not debug,
        )
        dist = Distribution({"name": "chathub", "ext_modules": modules})
        cmd = build_ext(dist)
        cmd.inplace = True
        cmd.force = force
        cmd.build_temp = str(Path("build") / "cython-temp" / profile)
        cmd.parallel = max(1, min(len(modules), os.cpu_count() or 1))
        cmd.ensure_finalized()
        cmd.run()
        built = [str(Path(cmd.get_ext_fullpath(ext.name)).resolve().relative_to(ROOT)) for ext in modules]
        stamp.parent.mkdir(parents=True, exist_ok=True)
        stamp.write_text(profile + "\n")
    for path in built:
        print(f"chathub build: {profile} Cython module {path}", file=sys.stderr)
    return built


def _maturin_settings(config_settings: Mapping[str, Any] | None, profile: str) -> dict[str, Any]:
    """maturin's config settings with ``--profile`` added for non-release builds."""
    settings = dict(config_settings or {})
    args = list(maturin.get_maturin_pep517_args(config_settings))  # also reads MATURIN_PEP517_ARGS
    if profile != "release" and "--profile" not in args:
        args += ["--profile", profile]
    # Both spellings: older maturin releases read only "build-args".
    settings["build-args"] = settings["maturin.build-args"] = args
    return settings


def build_wheel(
    wheel_directory: str,
    config_settings: Mapping[str, Any] | None = None,
    metadata_directory: str | None = None,
) -> str:
    profile = _profile(config_settings)
    build_cython(profile)
    return maturin.build_wheel(wheel_directory, _maturin_settings(config_settings, profile), metadata_directory)


def build_editable(
    wheel_directory: str,
    config_settings: Mapping[str, Any] | None = None,
    metadata_directory: str | None = None,
) -> str:
    profile = _profile(config_settings)
    build_cython(profile)
    return maturin.build_editable(wheel_directory, _maturin_settings(config_settings, profile), metadata_directory)


if __name__ == "__main__":
    # `python _build/backend.py [release|profiling|dev]`: rebuild only the Cython modules in place.
    build_cython(sys.argv[1] if len(sys.argv) > 1 else "release", force="--force" in sys.argv)
