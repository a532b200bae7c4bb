"""``command`` tasks: a fresh WASI environment per execution.

Input is the guest's stdin, stdout is the output, stderr becomes log lines, the
exit code is the status.  The coordinator runs command executions on a
``CommandRunner``: a ``fastpath.CommandPool`` whose workers create the store,
set its limits and the watchdog's deadline callback, configure WASI,
instantiate, run ``_start``, read the outputs and delete the store without
ever taking the GIL, and hand finished executions back to the event loop in
batches.  What every execution of a task shares (limits, argv, environment,
preopens) is converted once per task into a ``fastpath.CommandSpec``.

Stdin is served from memory; stdout and stderr go through files (the C API's
custom stdio callbacks were unreliable through wasmtime-py), two per worker,
reused, so an execution costs no directory churn.  The watchdog checks the
stdout file's size at every tick, so a guest that floods its output is
stopped close to its limit instead of filling the disk.  ``run_command`` runs
one execution in the calling thread, for ``wasmyard.invoke``.
"""
from __future__ import annotations

import asyncio
import atexit
import logging
import os
import shutil
import tempfile
import threading
from typing import Any, Callable

import wasmtime

import fastpath

from ..errors import ExecutionCancelled, HostError, OutputTooLarge, TaskExited
from . import host, watchdog
from .compiled import CompiledTask
from .faults import classify
from .outcome import Outcome

__all__ = ["run_command", "CommandRunner", "MAX_STDERR_BYTES"]

log = logging.getLogger("wasmyard.runtime")

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


def _outcome(task: CompiledTask, sink: host.Sink, watch: watchdog.Watch, result: Callable[[], tuple[int, bytes, bytes, bool]],
             outputs: Callable[[], tuple[bytes, bytes]]) -> Outcome:
    """An Outcome from ``result()`` (what ``run_command_env`` returns or raises);
    after a guest failure ``outputs()`` gives what it wrote before it."""
    manifest = task.manifest
    limits = manifest.limits
    error = None
    try:
        exit_code, output, stderr, too_big = result()
    except (wasmtime.Trap, wasmtime.WasmtimeError) as exc:
        if exc.stage == "setup":  # type: ignore[union-attr]
            raise  # a file or directory the hub could not open: the host failed, not the task
        error = classify(exc, watch, manifest, exc.memory_size)  # type: ignore[union-attr]
        exit_code, too_big = None, False
        output, stderr = outputs()
    sink.logs[:0] = [("stderr", line) for line in stderr.decode("utf-8", "replace").splitlines()]
    if error is None and too_big:
        error = OutputTooLarge(f"task {manifest.name!r} wrote more than its output limit of {limits.max_output_kib} KiB")
    if error is None and exit_code:
        error = TaskExited(f"task {manifest.name!r} exited with status {exit_code}", exit_code)
    return Outcome(output, error, sink, exit_code)


def _spec_args(task: CompiledTask) -> dict[str, Any]:
    """What every execution of ``task`` passes to ``run_command_env`` (and a
    ``CommandSpec`` takes): all but its input, its watch key and the output files."""
    manifest = task.manifest
    limits = manifest.limits
    return {
        "engine": task.engine, "pre": task.pre, "max_stdout": limits.max_output_bytes,
        "max_stderr": MAX_STDERR_BYTES, "memory_limit": limits.memory_bytes, "fuel": limits.fuel,
        "deadline_callback": watchdog.CALLBACK_ADDRESS, "argv": (manifest.name,), "env": manifest.permissions.env,
        "preopens": [(grant.host, grant.guest, grant.mode == "rw") for grant in manifest.permissions.dirs],
    }


def run_command(
    task: CompiledTask, data: bytes, sink: host.Sink, on_watch: Callable[[watchdog.Watch], None] | None = None
) -> Outcome:
    """Run a command task once, in this thread; ``on_watch`` receives its Watch (to cancel it).

    For ``wasmyard.invoke`` (a guest waiting for another task's output) and
    tools; the coordinator runs its command executions on a ``CommandRunner``.
    """
    limits = task.manifest.limits
    scratch = _scratch(sink.depth)
    watch = watchdog.new_watch()
    try:
        if on_watch is not None:
            on_watch(watch)
        max_out = limits.max_output_bytes
        stdout_fd = scratch.stdout_fd
        watch.arm(limits.timeout_s, lambda: os.fstat(stdout_fd).st_size > max_out)
        args = _spec_args(task)
        previous = host.enter(sink)
        try:
            # Store, limits, watchdog, WASI config, instance, _start and the
            # outputs in one call, without the GIL; the store is gone after it.
            return _outcome(
                task, sink, watch,
                lambda: fastpath.run_command_env(stdin=data, stdout_path=scratch.stdout, stderr_path=scratch.stderr,
                                                 stdout_fd=stdout_fd, stderr_fd=scratch.stderr_fd,
                                                 watch_key=watch.key, **args),
                lambda: (_read_bounded(stdout_fd, max_out)[0], _read_bounded(scratch.stderr_fd, MAX_STDERR_BYTES)[0]),
            )
        except (wasmtime.Trap, wasmtime.WasmtimeError):
            _forget_scratch(sink.depth)  # a setup failure: start afresh next time
            raise
        finally:
            host.leave(previous)
            watch.disarm()
    finally:
        watch.close()


class CommandRunner:
    """Runs command executions on a ``fastpath.CommandPool``; each Outcome goes
    to ``on_done(token, outcome)`` on the event loop thread.

    The pool's workers run a whole execution environment without the GIL and
    announce finished ones through an eventfd, once per batch, so under load
    the event loop takes many results per wake-up and no worker waits for the
    GIL: per execution, the loop thread pays for preparing the job and
    building its Outcome, nothing per thread hop.
    """

    def __init__(self, workers: int, on_done: Callable[[Any, Outcome], None]) -> None:
        self._on_done = on_done
        self._scratch = [_Scratch() for _ in range(workers)]
        self._notify = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self._pool = fastpath.CommandPool(
            [(s.stdout, s.stderr, s.stdout_fd, s.stderr_fd) for s in self._scratch], self._notify,
            host.enter, host.leave,
        )
        self._jobs: dict[Any, tuple[CompiledTask, host.Sink, watchdog.Watch, Any]] = {}
        self._specs: dict[CompiledTask, Any] = {}  # fastpath.CommandSpec by task, made at its first run
        self._loop: asyncio.AbstractEventLoop | None = None
        self._idle: list[asyncio.Future[None]] = []
        self._wake_due = False
        self._spare_watches: list[watchdog.Watch] = []  # at most one per execution that ran at once

    def __len__(self) -> int:
        """Executions submitted and not yet handed to ``on_done``."""
        return len(self._jobs)

    def start(self, task: CompiledTask, data: bytes, sink: host.Sink,
              on_watch: Callable[[watchdog.Watch], None], token: Any) -> Any:
        """Queue one execution; returns its job (``job.cancel()`` keeps it from starting)."""
        if self._loop is None:
            self._loop = asyncio.get_running_loop()
            self._loop.add_reader(self._notify, self._drain)
        spec = self._specs.get(task)
        if spec is None:
            spec = self._specs[task] = fastpath.CommandSpec(**_spec_args(task))
        watch = self._spare_watches.pop() if self._spare_watches else watchdog.new_watch()
        try:
            job = spec.job(data, watch.key, sink if task.uses_host else None)
            watch.arm_at_first_tick(task.manifest.limits.timeout_s, job.stdout_over_limit)
            on_watch(watch)
            self._pool.submit(job, False)
        except BaseException:
            watch.close()
            raise
        self._jobs[job] = (task, sink, watch, token)
        if not self._wake_due:  # one wake-up for every job submitted in this turn of the loop
            self._wake_due = True
            self._loop.call_soon(self._wake)
        return job

    def forget(self, task: CompiledTask) -> None:
        """``task`` was replaced or removed: drop what was prepared for it."""
        self._specs.pop(task, None)

    def _wake(self) -> None:
        self._wake_due = False
        self._pool.wake()

    def _drain(self) -> None:
        for job in self._pool.completed():
            task, sink, watch, token = self._jobs.pop(job)
            try:
                if not job.started:
                    outcome = Outcome(error=ExecutionCancelled("cancelled before it started"), sink=sink)
                else:
                    outcome = _outcome(task, sink, watch, job.result, job.outputs)
            except Exception as exc:  # the host's failure (e.g. its scratch files are gone), not the task's
                log.exception("command execution failed in the host task=%s", task.name)
                outcome = Outcome(error=HostError(f"the hub could not run task {task.name!r}: {exc}"), sink=sink)
            finally:
                # Kept for the next execution: a late cancel names this one
                # (Watch.owner), so it can never stop the next.
                watch.disarm()
                self._spare_watches.append(watch)
            outcome.run_s = job.run_s
            self._on_done(token, outcome)
        if not self._jobs:
            for waiter in self._idle:
                if not waiter.done():
                    waiter.set_result(None)
            self._idle.clear()

    async def wait_idle(self) -> None:
        """Until every submitted execution has been handed to ``on_done``."""
        while self._jobs:
            waiter = asyncio.get_running_loop().create_future()
            self._idle.append(waiter)
            await waiter

    def close(self) -> None:
        """Finish what was submitted (outcomes still delivered), then stop the workers."""
        self._pool.close()
        if self._loop is not None:
            self._drain()
            self._loop.remove_reader(self._notify)
        os.close(self._notify)
        while self._spare_watches:
            self._spare_watches.pop().close()
        for scratch in self._scratch:
            _ALL_SCRATCH.remove(scratch)
            scratch.close()
