"""``command`` tasks: a fresh WASI environment per execution.

Input is the guest's stdin, stdout is the output, stderr becomes log lines, the
exit code is the status.  ``fastpath.run_start`` configures WASI, instantiates
and runs ``_start`` in one call with the GIL released throughout, so a worker
thread hands the GIL to the event loop once per execution rather than once per
wasmtime call.  Stdin is served from memory; stdout and stderr go through files
(``stdout_custom`` callbacks were unreliable in wasmtime-py), two per worker
thread, reused, so an execution costs no directory churn.  The watchdog checks
the stdout file's size at every tick, so a guest that floods its output is
stopped close to its limit instead of filling the disk.
"""
from __future__ import annotations

import atexit
import os
import shutil
import tempfile
import threading
from typing import Callable

import wasmtime

import fastpath

from ..errors import OutputTooLarge, TaskExited
from . import host, watchdog
from .compiled import CompiledTask
from .faults import classify
from .outcome import Outcome

__all__ = ["run_command", "MAX_STDERR_BYTES"]

MAX_STDERR_BYTES = host.MAX_LOG_BYTES
_SCRATCH_ROOT = "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None
_local = threading.local()


class _Scratch:
    """One thread's stdout/stderr files at one nesting depth, reused across
    executions (WASI truncates them when it opens them; stdin is served from
    memory).  A command that invokes a command (``wasmyard.invoke``) runs the
    inner one in the same thread, one depth further, so it gets other files."""

    def __init__(self) -> None:
        self.dir = tempfile.mkdtemp(prefix="wasmyard-", dir=_SCRATCH_ROOT)
        self.stdout = os.path.join(self.dir, "stdout")
        self.stderr = os.path.join(self.dir, "stderr")
        _ALL_SCRATCH.add(self.dir)


_ALL_SCRATCH: set[str] = set()


@atexit.register
def _remove_scratch() -> None:
    for directory in list(_ALL_SCRATCH):
        shutil.rmtree(directory, ignore_errors=True)
    _ALL_SCRATCH.clear()


def _scratch(depth: int = 0) -> _Scratch:
    by_depth: dict[int, _Scratch] | None = getattr(_local, "scratch", None)
    if by_depth is None:
        by_depth = _local.scratch = {}
    scratch = by_depth.get(depth)
    if scratch is None or not os.path.isdir(scratch.dir):
        scratch = by_depth[depth] = _Scratch()
    return scratch


def _read_bounded(path: str, limit: int) -> tuple[bytes, bool]:
    """At most ``limit`` bytes of a file, and whether it held more.  Sized by
    fstat first: ``read(limit + 1)`` would allocate the whole limit every time."""
    with open(path, "rb", buffering=0) as f:
        size = os.fstat(f.fileno()).st_size
        data = f.read(min(size, limit)) if size else b""
    return data, size > limit


def run_command(
    task: CompiledTask, data: bytes, sink: host.Sink, on_watch: Callable[[watchdog.Watch], None] | None = None
) -> Outcome:
    """Run a command task once; ``on_watch`` receives its Watch (to cancel it)."""
    manifest = task.manifest
    limits = manifest.limits
    permissions = manifest.permissions
    scratch = _scratch(sink.depth)
    store = wasmtime.Store(task.engine)
    watch = watchdog.install(store)
    if on_watch is not None:
        on_watch(watch)
    exit_code: int | None = None
    error = None
    try:
        store.set_limits(memory_size=limits.memory_bytes)
        if limits.fuel is not None:
            store.set_fuel(limits.fuel)
        max_out = limits.max_output_bytes
        stdout_path = scratch.stdout
        watch.arm(limits.timeout_s, lambda: os.path.getsize(stdout_path) > max_out)
        previous = host.enter(sink)
        try:
            # WASI config, instance and _start in one call, without the GIL.
            exit_code = fastpath.run_start(
                store, task.pre, data, stdout_path, scratch.stderr, (manifest.name,), permissions.env,
                [(grant.host, grant.guest, grant.mode == "rw") for grant in permissions.dirs],
            )
        except (wasmtime.Trap, wasmtime.WasmtimeError) as exc:
            if exc.stage == "setup":  # type: ignore[union-attr]
                raise  # a file or directory the hub could not open: the host failed, not the task
            error = classify(exc, watch, manifest, exc.memory_size)  # type: ignore[union-attr]
        finally:
            host.leave(previous)
            watch.disarm()
        output, too_big = _read_bounded(stdout_path, max_out)
        stderr, _ = _read_bounded(scratch.stderr, MAX_STDERR_BYTES)
    finally:
        watch.close()
        store.close()
    sink.logs[:0] = [("stderr", line) for line in stderr.decode("utf-8", "replace").splitlines()]
    if error is None and too_big:
        error = OutputTooLarge(f"task {manifest.name!r} wrote more than its output limit of {limits.max_output_kib} KiB")
    if error is None and exit_code:
        error = TaskExited(f"task {manifest.name!r} exited with status {exit_code}", exit_code)
    return Outcome(output, error, sink, exit_code)
