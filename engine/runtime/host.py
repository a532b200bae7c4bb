"""Host imports (module ``wasmyard``) and where their effects go.

A host import runs in the thread that called into wasm, synchronously, so the
execution it serves is found through a thread-local ``Sink`` set around each
call — never through a reference from the callback to a Store (that cycle
leaks the whole instance memory).
"""
from __future__ import annotations

import threading

import wasmtime

import fastpath

__all__ = ["Sink", "current", "define_host_imports", "LOG_LEVELS", "MAX_LOG_BYTES"]

LOG_LEVELS = ("debug", "info", "warn", "error")
MAX_LOG_BYTES = 64 * 1024
"""Per execution; beyond it log lines are dropped and counted, not stored."""


class Sink:
    """Collects what one execution's host imports produce."""

    __slots__ = ("logs", "log_bytes", "dropped_logs")

    def __init__(self) -> None:
        self.logs: list[tuple[str, str]] = []
        self.log_bytes = 0
        self.dropped_logs = 0

    def log(self, level: int, text: str) -> None:
        if self.log_bytes + len(text) > MAX_LOG_BYTES:
            self.dropped_logs += 1
            return
        self.log_bytes += len(text)
        name = LOG_LEVELS[level] if 0 <= level < len(LOG_LEVELS) else "info"
        self.logs.append((name, text))


_local = threading.local()


def current() -> Sink | None:
    return getattr(_local, "sink", None)


def set_current(sink: Sink | None) -> None:
    _local.sink = sink


def _log(memory: fastpath.CallerMemory, level: int, ptr: int, length: int) -> None:
    sink = current()
    if sink is None:
        return
    sink.log(level, memory.read(ptr, min(length, MAX_LOG_BYTES)).decode("utf-8", "replace"))


def define_host_imports(linker: wasmtime.Linker) -> None:
    """Define every ``wasmyard.*`` import on a Linker (one Linker per Engine).

    They go through ``fastpath.define_host_func``: a guest's call into the
    host then costs a C trampoline, not wasmtime-py's per-call Caller setup.
    """
    fastpath.define_host_func(linker, "wasmyard", "log", "iii", "", _log)
