"""The fastpath twins under test, and paths and helpers the tests share.

A plain module rather than conftest.py: with several conftest.py files in the
tree, ``from conftest import ...`` resolves to whichever was imported first.
"""
from __future__ import annotations

import importlib
import threading
from pathlib import Path
from types import ModuleType
from typing import Any, Callable

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


def outcome(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> tuple:
    """What a command call did: ("ok", value) or ("raised", type, message,
    trap code, memory_size, stage) — the fields the twins must agree on."""
    try:
        return ("ok", fn(*args, **kwargs))
    except BaseException as exc:  # noqa: BLE001 - the exception is the result
        return ("raised", type(exc), str(exc), getattr(exc, "trap_code", None),
                getattr(exc, "memory_size", "missing"), getattr(exc, "stage", "missing"))


def run_in_threads(worker: Callable[[int], None], n: int) -> None:
    """``worker(k)`` for k in range(n), each on a thread of its own, all at once; returns when all are done."""
    threads = [threading.Thread(target=worker, args=(k,)) for k in range(n)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
