"""The hot path: each module here is a Cython extension with a pure-Python twin.

One selector for all of them.  ``FASTPATH_NO_EXTENSIONS=1`` forces the twins;
otherwise the compiled modules are used when every one of them imports, so the
hot path never mixes a compiled queue with a pure router by accident.
``IMPLEMENTATION`` says which set is loaded ("cython" or "python") and
``LOAD_ERROR`` keeps the reason the compiled set did not load, which a test
turns into a failure where a compiler was available.
"""
from __future__ import annotations

import importlib
import os
from types import ModuleType

__all__ = [
    "IMPLEMENTATION", "LOAD_ERROR", "MODULES", "load",
    "PriorityQueue", "TopicRouter", "validate_filter", "validate_topic",
    "Export", "HandlerCall", "CallerMemory", "define_host_func", "check_wasmtime_version", "run_start",
    "run_command_env", "CommandJob", "CommandPool", "CommandSpec",
]

#: Every twin pair, by concept.  ``_<name>_c`` (Cython) beside ``_<name>_py``.
MODULES: tuple[str, ...] = ("queue", "router", "call", "workers")


def load(implementation: str) -> dict[str, ModuleType]:
    """Import one whole set of twins ("cython" or "python"), by concept name."""
    suffix = {"cython": "_c", "python": "_py"}[implementation]
    return {name: importlib.import_module(f"{__name__}._{name}{suffix}") for name in MODULES}


LOAD_ERROR: str | None = None
if os.environ.get("FASTPATH_NO_EXTENSIONS"):
    _modules = load("python")
    IMPLEMENTATION = "python"
    LOAD_ERROR = "FASTPATH_NO_EXTENSIONS is set"
else:
    try:
        _modules = load("cython")
        IMPLEMENTATION = "cython"
    except ImportError as exc:
        _modules = load("python")
        IMPLEMENTATION = "python"
        LOAD_ERROR = f"{type(exc).__name__}: {exc}"

PriorityQueue = _modules["queue"].PriorityQueue
TopicRouter = _modules["router"].TopicRouter
validate_filter = _modules["router"].validate_filter
validate_topic = _modules["router"].validate_topic
_call = _modules["call"]
Export = _call.Export
HandlerCall = _call.HandlerCall
CallerMemory = _call.CallerMemory
define_host_func = _call.define_host_func
check_wasmtime_version = _call.check_wasmtime_version
run_start = _call.run_start
run_command_env = _call.run_command_env
CommandJob = _modules["workers"].CommandJob
CommandPool = _modules["workers"].CommandPool
CommandSpec = _modules["workers"].CommandSpec
