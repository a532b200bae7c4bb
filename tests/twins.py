"""The fastpath twins under test, and paths the tests share.

A plain module rather than conftest.py: with several conftest.py files in the
tree, ``from conftest import ...`` resolves to whichever was imported first.
"""
from __future__ import annotations

import importlib
from pathlib import Path
from types import ModuleType

import pytest

import fastpath

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "wasm_tasks"


def twins(concept: str) -> list[ModuleType]:
    """The loaded twins of one fastpath concept: always the pure one, plus the
    compiled one whenever the compiled set is loaded (it is, unless
    FASTPATH_NO_EXTENSIONS is set; ``test_fastpath_loaded`` fails otherwise)."""
    mods = [importlib.import_module(f"fastpath._{concept}_py")]
    if fastpath.IMPLEMENTATION == "cython":
        mods.insert(0, importlib.import_module(f"fastpath._{concept}_c"))
    return mods


def twin_params(concept: str) -> list:
    return [pytest.param(m, id=m.__name__.rsplit(".", 1)[1]) for m in twins(concept)]
