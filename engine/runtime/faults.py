"""Turning what stopped a guest into one precise, task-attributed error.

The watchdog's reason wins (it knows a timeout from a cancel from an output
flood); then the trap code; then the memory heuristic: a guest that fails
while its linear memory is within one page of its limit ran out of memory —
wasm has no other signal for a refused ``memory.grow`` than -1.
"""
from __future__ import annotations

import wasmtime

from ..errors import (
    ExecutionCancelled,
    FuelExhausted,
    MemoryLimitExceeded,
    OutputTooLarge,
    TaskFault,
    TaskTimedOut,
    TaskTrapped,
    WasmyardError,
)
from ..manifest import Manifest
from .watchdog import Watch

__all__ = ["classify", "trap_text"]

PAGE = 65536


def trap_text(exc: BaseException) -> str:
    """The useful line of a wasmtime error: the trap reason, not the backtrace."""
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    for ln in lines:
        if ln.startswith("wasm trap:"):
            return ln[len("wasm trap:"):].strip()
    for ln in reversed(lines):
        if not ln[:1].isdigit() and "wasm backtrace" not in ln and ln != "Caused by:":
            return ln
    return type(exc).__name__


def classify(exc: BaseException, watch: Watch, manifest: Manifest, memory_bytes: int) -> WasmyardError:
    name = manifest.name
    limits = manifest.limits
    reason = watch.reason
    if reason == "timeout":
        return TaskTimedOut(f"task {name!r} exceeded its time limit of {limits.timeout_ms} ms")
    if reason == "cancelled":
        return ExecutionCancelled(f"execution of task {name!r} was cancelled while running")
    if reason == "output":
        return OutputTooLarge(f"task {name!r} wrote more than its output limit of {limits.max_output_kib} KiB")
    if isinstance(exc, wasmtime.Trap):
        code = exc.trap_code
        if code == wasmtime.TrapCode.OUT_OF_FUEL:
            return FuelExhausted(f"task {name!r} used up its fuel of {limits.fuel}")
        if code == wasmtime.TrapCode.INTERRUPT:
            return TaskTimedOut(f"task {name!r} exceeded its time limit of {limits.timeout_ms} ms")
    text = trap_text(exc)
    if memory_bytes + PAGE > limits.memory_bytes:
        return MemoryLimitExceeded(
            f"task {name!r} reached its memory limit of {limits.memory_mib} MiB and failed: {text}"
        )
    if isinstance(exc, wasmtime.Trap):
        return TaskTrapped(f"task {name!r} trapped: {text}")
    return TaskFault(f"task {name!r} failed: {text}")
