"""``command`` tasks: a fresh WASI environment per execution.

Input is the guest's stdin, stdout is the output, stderr becomes log lines, the
exit code is the status.  ``fastpath.run_command_env`` creates the store, sets
its limits and the watchdog's deadline callback, configures WASI, instantiates,
runs ``_start``, reads the outputs and deletes the store in one call with the
GIL released throughout, so a worker thread hands the GIL to the event loop
once per execution rather than once per wasmtime call or system call.  Stdin is served from memory; stdout and stderr go through files
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
    inner one in the same thread, one depth further, so it gets other files.

    The hub keeps a read descriptor on each file (WASI truncates the same
    inode), so reading the results costs two system calls per file.  Every
    system call on a worker thread hands the GIL to the event loop and back,
    and under load that hand-off, not the work, is what a command costs.
    """

    def __init__(self) -> None:
        self.dir = tempfile.mkdtemp(prefix="wasmyard-", dir=_SCRATCH_ROOT)
        self.stdout = os.path.join(self.dir, "stdout")
        self.stderr = os.path.join(self.dir, "stderr")
        self.stdout_fd = os.open(self.stdout, os.O_RDONLY | os.O_CREAT, 0o600)
        self.stderr_fd = os.open(self.stderr, os.O_RDONLY | os.O_CREAT, 0o600)
        _ALL_SCRATCH.append(self)

    def close(self) -> None:
        for fd in (self.stdout_fd, self.stderr_fd):
            try:
                os.close(fd)
            except OSError:
                pass
        shutil.rmtree(self.dir, ignore_errors=True)


_ALL_SCRATCH: list[_Scratch] = []


@atexit.register
def _remove_scratch() -> None:
    while _ALL_SCRATCH:
        _ALL_SCRATCH.pop().close()


def _scratch(depth: int) -> _Scratch:
    by_depth: dict[int, _Scratch] | None = getattr(_local, "scratch", None)
    if by_depth is None:
        by_depth = _local.scratch = {}
    scratch = by_depth.get(depth)
    if scratch is None:
        scratch = by_depth[depth] = _Scratch()
    return scratch


def _forget_scratch(depth: int) -> None:
    """After a setup failure (e.g. someone removed the directory): start afresh next time."""
    scratch = getattr(_local, "scratch", {}).pop(depth, None)
    if scratch is not None:
        _ALL_SCRATCH.remove(scratch)
        scratch.close()


def _read_bounded(fd: int, limit: int) -> tuple[bytes, bool]:
    """At most ``limit`` bytes of a file, and whether it held more (after a
    failure; a successful run gets its outputs from ``run_command_env``)."""
    size = os.fstat(fd).st_size
    return (os.pread(fd, min(size, limit), 0) if size else b""), size > limit


def run_command(
    task: CompiledTask, data: bytes, sink: host.Sink, on_watch: Callable[[watchdog.Watch], None] | None = None
) -> Outcome:
    """Run a command task once; ``on_watch`` receives its Watch (to cancel it)."""
    manifest = task.manifest
    limits = manifest.limits
    permissions = manifest.permissions
    scratch = _scratch(sink.depth)
    watch = watchdog.new_watch()
    try:
        if on_watch is not None:
            on_watch(watch)
        max_out = limits.max_output_bytes
        stdout_fd = scratch.stdout_fd
        error = None
        watch.arm(limits.timeout_s, lambda: os.fstat(stdout_fd).st_size > max_out)
        previous = host.enter(sink)
        try:
            # Store, limits, watchdog, WASI config, instance, _start and the
            # outputs in one call, without the GIL; the store is gone after it.
            exit_code, output, stderr, too_big = fastpath.run_command_env(
                task.engine, task.pre, data, scratch.stdout, scratch.stderr, stdout_fd, scratch.stderr_fd,
                max_out, MAX_STDERR_BYTES, limits.memory_bytes, limits.fuel, watch.key, watchdog.CALLBACK_ADDRESS,
                (manifest.name,), permissions.env,
                [(grant.host, grant.guest, grant.mode == "rw") for grant in permissions.dirs],
            )
        except (wasmtime.Trap, wasmtime.WasmtimeError) as exc:
            if exc.stage == "setup":  # type: ignore[union-attr]
                _forget_scratch(sink.depth)
                raise  # a file or directory the hub could not open: the host failed, not the task
            error = classify(exc, watch, manifest, exc.memory_size)  # type: ignore[union-attr]
            exit_code = None
            output, _ = _read_bounded(stdout_fd, max_out)
            stderr, _ = _read_bounded(scratch.stderr_fd, MAX_STDERR_BYTES)
            too_big = False
        finally:
            host.leave(previous)
            watch.disarm()
    finally:
        watch.close()
    sink.logs[:0] = [("stderr", line) for line in stderr.decode("utf-8", "replace").splitlines()]
    if error is None and too_big:
        error = OutputTooLarge(f"task {manifest.name!r} wrote more than its output limit of {limits.max_output_kib} KiB")
    if error is None and exit_code:
        error = TaskExited(f"task {manifest.name!r} exited with status {exit_code}", exit_code)
    return Outcome(output, error, sink, exit_code)
