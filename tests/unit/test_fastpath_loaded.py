"""The compiled fastpath must load wherever it could have been built.

A silent fallback to the pure twins would make every benchmark and every
"both twins" test quietly test one twin twice.
"""
from __future__ import annotations

import os
import shutil
import sysconfig

import fastpath


def _compiler_available() -> bool:
    cc = (sysconfig.get_config_var("CC") or "cc").split()[0]
    return shutil.which(cc) is not None


def test_compiled_fastpath_loaded_unless_disabled() -> None:
    if os.environ.get("FASTPATH_NO_EXTENSIONS"):
        assert fastpath.IMPLEMENTATION == "python"
    elif _compiler_available():
        assert fastpath.IMPLEMENTATION == "cython", f"compiled fastpath did not load: {fastpath.LOAD_ERROR}"
    else:
        assert fastpath.IMPLEMENTATION == "python"


def test_every_concept_has_both_twins_with_the_same_public_api() -> None:
    pure = fastpath.load("python")
    compiled = fastpath.load("cython") if fastpath.IMPLEMENTATION == "cython" else pure
    for name in fastpath.MODULES:
        public_py = {n for n in dir(pure[name]) if not n.startswith("_")}
        public_c = {n for n in dir(compiled[name]) if not n.startswith("_")}
        expected = set(getattr(pure[name], "__all__", public_py))
        assert expected <= public_py and expected <= public_c, name
