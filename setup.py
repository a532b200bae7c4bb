"""Build the Cython twins in ``fastpath/``; fall back to the pure-Python ones.

Every ``fastpath/_*_c.pyx`` becomes an extension.  With
``FASTPATH_NO_EXTENSIONS=1``, without Cython, or without a working C compiler,
the wheel carries only the pure-Python twins and the build says so, so that an
install never fails just because a hub has no compiler.
"""
from __future__ import annotations

import glob
import os
import sys

from setuptools import setup
from setuptools.command.build_ext import build_ext


def _say(message: str) -> None:
    print(f"wasmyard build: {message}", file=sys.stderr)


class OptionalBuildExt(build_ext):
    """Build extensions, but turn a compiler failure into a pure-Python build."""

    def run(self) -> None:
        try:
            super().run()
        except Exception as exc:  # noqa: BLE001 - any toolchain failure
            _say(f"C extensions not built ({exc}); using the pure-Python twins")

    def build_extension(self, ext) -> None:  # type: ignore[no-untyped-def]
        try:
            super().build_extension(ext)
        except Exception as exc:  # noqa: BLE001
            _say(f"extension {ext.name} not built ({exc}); using the pure-Python twins")


def _extensions() -> list:
    if os.environ.get("FASTPATH_NO_EXTENSIONS"):
        _say("FASTPATH_NO_EXTENSIONS is set; using the pure-Python twins")
        return []
    sources = sorted(glob.glob(os.path.join("fastpath", "_*_c.pyx")))
    try:
        from Cython.Build import cythonize
    except ImportError:
        _say("Cython is not installed; using the pure-Python twins")
        return []
    _say(f"building {len(sources)} Cython extension(s): {', '.join(sources)}")
    return cythonize(
        sources,
        language_level=3,
        compiler_directives={"boundscheck": False, "wraparound": False, "cdivision": True},
    )


setup(ext_modules=_extensions(), cmdclass={"build_ext": OptionalBuildExt})
