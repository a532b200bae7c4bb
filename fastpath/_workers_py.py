"""Command executions on a pool of worker threads, finished in batches.

Why a pool of its own rather than ``concurrent.futures``: a command's whole
execution environment runs in one call without the GIL (``run_command_env``),
and what it costs under load is everything around that call that needs the
GIL — taking the work item, setting a future, waking the event loop for each
result.  Every such step makes a worker and the event loop thread hand the
GIL back and forth.  Here a job goes into a list, a worker runs it and puts
it into the finished list, and writes ``notify_fd`` (an eventfd, or any
descriptor that accepts an 8-byte write) only when that list was empty; the
event loop thread watches the descriptor and takes every finished job at
once with ``completed()``.  The compiled twin (``_workers_c``) does all of a
worker's part without the GIL; this one is its reference and fallback.

Contract, the same in both twins:

* ``CommandJob(engine, pre, stdin, max_stdout, max_stderr, memory_limit,
  fuel, watch_key, deadline_callback, argv=(), env=(), preopens=(),
  context=None)`` checks its arguments at once, as ``run_command_env`` does
  (the same exceptions, ``stage`` "setup"); the output files are the
  worker's.  ``context`` (e.g. the execution's host-import sink) is handed
  to the pool's ``enter`` before the run, and what ``enter`` returned to
  ``leave`` after it, in the worker thread.
* ``job.result()`` gives what ``run_command_env`` would have returned or
  raised for it, run in its worker's thread: the exception a host import
  raised is its own job's, never another worker's (``_call_py``'s docstring
  tells how).  It can be called again: every call returns the same tuple or
  raises the same exception object as the first.  ``ValueError(NOT_STARTED)``
  when ``cancel()`` came before a worker took it.  ``job.run_s`` is the run's
  duration in its worker;
  ``job.stdout_over_limit()`` says whether its stdout file already holds
  more than ``max_stdout`` (for the deadline callback, in that worker);
  ``job.outputs()`` is ``(stdout, stderr)`` as read after the run, within
  their limits, also after a failure in the guest.
* ``enter`` or ``leave`` raising is the host's failure, never a worker's
  end: the job is completed (``completed()`` hands it back) and the worker
  takes the next one.  If ``enter`` raises, the guest does not run, ``leave``
  is not called (nothing was entered), ``started`` is still True (a worker
  took the job), ``outputs()`` is empty and ``result()`` raises ``enter``'s
  exception.  If ``leave`` raises, ``result()`` raises its exception when the
  run went well, and the run's own exception otherwise (``leave``'s is then
  dropped).  Either exception gets ``memory_size`` 0 and ``stage`` "setup",
  as a host failure before the run does.
* ``CommandSpec(engine, pre, max_stdout, max_stderr, memory_limit, fuel,
  deadline_callback, argv=(), env=(), preopens=())`` checks and converts
  what every execution of one task shares, once; ``spec.job(stdin,
  watch_key, context=None)`` is the ``CommandJob`` for one execution, as
  ``CommandJob(...)`` with the same arguments would be, at the cost of
  checking only its input and watch key.
* ``CommandPool(outputs, notify_fd, enter=None, leave=None)``: one worker
  per ``(stdout_path, stderr_path, stdout_fd, stderr_fd)`` in ``outputs``
  (the files it reuses; descriptors open for reading).  ``submit(job)``
  never blocks; ``submit(job, wake=False)`` leaves a sleeping worker asleep
  until ``wake()``, so that a caller submitting a burst wakes the workers
  once for it rather than once per job (a wake-up is a system call and,
  on a virtual machine, often an inter-processor interrupt); ``completed()`` returns the finished jobs oldest first and
  consumes the notification; ``close()`` lets the workers finish every
  submitted job and stops them.
"""
from __future__ import annotations

import os
import threading
import time
from collections import deque
from typing import Any, Callable, Optional, Sequence

from fastpath._call_py import _describe, _path, _read_output, check_env_args, run_command_env

__all__ = ["CommandJob", "CommandPool", "CommandSpec", "NOT_STARTED"]

NOT_STARTED = "cancelled before it started"
_ONE = (1).to_bytes(8, "little")


class CommandSpec:
    def __init__(self, engine: Any, pre: Any, max_stdout: int, max_stderr: int, memory_limit: int,
                 fuel: Optional[int], deadline_callback: int, argv: Sequence[str] = (),
                 env: Sequence[tuple[str, str]] = (), preopens: Sequence[tuple[str, str, bool]] = ()) -> None:
        try:
            check_env_args(engine, pre, b"", max_stdout, max_stderr, memory_limit, fuel, 0, deadline_callback,
                           argv, env, preopens)
        except BaseException as exc:
            _describe(exc, 0, "setup")
            raise
        self._args = (engine, pre, max_stdout, max_stderr, memory_limit, fuel, deadline_callback, argv, env, preopens)

    def job(self, stdin: Any, watch_key: int, context: Any = None) -> "CommandJob":
        engine, pre, max_stdout, max_stderr, memory_limit, fuel, deadline_callback, argv, env, preopens = self._args
        return CommandJob(engine, pre, stdin, max_stdout, max_stderr, memory_limit, fuel, watch_key,
                          deadline_callback, argv, env, preopens, context)


class CommandJob:
    def __init__(self, engine: Any, pre: Any, stdin: Any, max_stdout: int, max_stderr: int, memory_limit: int,
                 fuel: Optional[int], watch_key: int, deadline_callback: int, argv: Sequence[str] = (),
                 env: Sequence[tuple[str, str]] = (), preopens: Sequence[tuple[str, str, bool]] = (),
                 context: Any = None) -> None:
        try:
            check_env_args(engine, pre, stdin, max_stdout, max_stderr, memory_limit, fuel, watch_key,
                           deadline_callback, argv, env, preopens)
        except BaseException as exc:
            _describe(exc, 0, "setup")
            raise
        self._args = (engine, pre, bytes(stdin))
        self._limits = (max_stdout, max_stderr, memory_limit, fuel, watch_key, deadline_callback)
        self._wasi = (argv, env, preopens)
        self._context = context
        self._cancelled = False
        self._started = False
        self._queued = False
        self._stdout_fd = -1
        self._outcome: Any = None
        self._failure: Optional[BaseException] = None
        self._outputs = (b"", b"")
        self.run_s = 0.0

    def cancel(self) -> None:
        self._cancelled = True

    @property
    def started(self) -> bool:
        return self._started

    def stdout_over_limit(self) -> bool:
        if self._stdout_fd < 0:
            return False
        try:
            return os.fstat(self._stdout_fd).st_size > self._limits[0]
        except OSError:
            return False

    def outputs(self) -> tuple[bytes, bytes]:
        return self._outputs

    def result(self) -> tuple[int, bytes, bytes, bool]:
        if not self._started:
            raise ValueError(NOT_STARTED)
        if self._failure is not None:
            raise self._failure
        return self._outcome  # type: ignore[no-any-return]

    def _run(self, output: tuple[str, str, int, int], enter: Optional[Callable], leave: Optional[Callable]) -> None:
        """In a worker thread: the whole environment; keeps the result or the
        exception.  Raises nothing: the worker must go on (see the contract)."""
        self._started = not self._cancelled
        if not self._started:
            return
        stdout_path, stderr_path, stdout_fd, stderr_fd = output
        self._stdout_fd = stdout_fd
        t = time.perf_counter()
        try:
            if self._context is None or enter is None or leave is None:
                self._execute(stdout_path, stderr_path, stdout_fd, stderr_fd)
                return
            try:
                previous = enter(self._context)
            except BaseException as exc:  # noqa: BLE001 - handed to result()
                self._failure = _host_failure(exc)
                return
            self._execute(stdout_path, stderr_path, stdout_fd, stderr_fd)
            try:
                leave(previous)
            except BaseException as exc:  # noqa: BLE001 - handed to result() unless the run failed
                if self._failure is None:
                    self._outcome, self._failure = None, _host_failure(exc)
        finally:
            self.run_s = time.perf_counter() - t

    def _execute(self, stdout_path: str, stderr_path: str, stdout_fd: int, stderr_fd: int) -> None:
        """``run_command_env`` in this thread (so a host import's exception is
        taken here, before ``leave`` runs); keeps its result or exception and
        the outputs."""
        engine, pre, stdin = self._args
        max_stdout, max_stderr, memory_limit, fuel, watch_key, deadline_callback = self._limits
        argv, env, preopens = self._wasi
        try:
            self._outcome = run_command_env(engine, pre, stdin, stdout_path, stderr_path, stdout_fd, stderr_fd,
                                            max_stdout, max_stderr, memory_limit, fuel, watch_key,
                                            deadline_callback, argv, env, preopens)
        except BaseException as exc:  # noqa: BLE001 - handed to result()
            self._failure = exc
            if getattr(exc, "stage", "setup") != "setup":
                try:
                    self._outputs = (_read_output(stdout_fd, max_stdout)[0], _read_output(stderr_fd, max_stderr)[0])
                except OSError:
                    pass
        else:
            self._outputs = self._outcome[1:3]


def _host_failure(exc: BaseException) -> BaseException:
    """``exc``, raised by ``enter`` or ``leave``, described as a host failure before the run."""
    _describe(exc, 0, "setup")
    return exc


def check_pool_args(outputs: Any, notify_fd: Any, enter: Any, leave: Any) -> list[tuple[str, str, int, int]]:
    """``CommandPool``'s arguments, checked (both twins raise these)."""
    if isinstance(outputs, (str, bytes)):
        raise TypeError("outputs must be a sequence of (stdout_path, stderr_path, stdout_fd, stderr_fd)")
    checked = []
    for item in outputs:
        if not isinstance(item, tuple) or len(item) != 4:
            raise TypeError(f"outputs items must be (stdout_path, stderr_path, stdout_fd, stderr_fd), got {item!r}")
        out_path, err_path, out_fd, err_fd = item
        for fd in (out_fd, err_fd):
            if not isinstance(fd, int) or isinstance(fd, bool) or fd < 0:
                raise TypeError(f"output descriptors must be non-negative ints, got {fd!r}")
        checked.append((_path(out_path, "stdout_path"), _path(err_path, "stderr_path"), out_fd, err_fd))
    if not checked:
        raise ValueError("a pool needs at least one worker (one outputs item)")
    if not isinstance(notify_fd, int) or isinstance(notify_fd, bool) or notify_fd < 0:
        raise TypeError(f"notify_fd must be a non-negative int, got {notify_fd!r}")
    if (enter is None) != (leave is None) or (enter is not None and not (callable(enter) and callable(leave))):
        raise TypeError("enter and leave must both be callables, or both None")
    return checked


class CommandPool:
    def __init__(self, outputs: Sequence[tuple[str, str, int, int]], notify_fd: int,
                 enter: Optional[Callable[[Any], Any]] = None, leave: Optional[Callable[[Any], None]] = None) -> None:
        self._outputs = check_pool_args(outputs, notify_fd, enter, leave)
        self._notify_fd = notify_fd
        self._enter, self._leave = enter, leave
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._pending: deque[CommandJob] = deque()
        self._done: list[CommandJob] = []
        self._closing = False
        self._threads = [threading.Thread(target=self._work, args=(output,), name=f"wasmyard-command-{i}",
                                          daemon=True) for i, output in enumerate(self._outputs)]
        for thread in self._threads:
            thread.start()

    def submit(self, job: CommandJob, wake: bool = True) -> None:
        if not isinstance(job, CommandJob):
            raise TypeError(f"expected a CommandJob, got {type(job).__name__}")
        if job._queued:
            raise ValueError("a CommandJob runs once")
        if self._closing:
            raise RuntimeError("the pool is closed")
        if job._context is not None and self._enter is None:
            raise ValueError("a job with a context needs a pool with enter and leave")
        job._queued = True
        with self._lock:
            self._pending.append(job)
            if wake:
                self._wake.notify()

    def wake(self) -> None:
        with self._lock:
            self._wake.notify(len(self._pending))

    def completed(self) -> list[CommandJob]:
        try:
            os.read(self._notify_fd, 8)
        except BlockingIOError:
            pass
        with self._lock:
            done, self._done = self._done, []
        return done

    def close(self) -> None:
        with self._lock:
            self._closing = True
            self._wake.notify_all()
        current = threading.current_thread()
        for thread in self._threads:
            if thread is not current:
                thread.join()

    def _work(self, output: tuple[str, str, int, int]) -> None:
        while True:
            with self._lock:
                while not self._pending and not self._closing:
                    self._wake.wait()
                if not self._pending:
                    return
                job = self._pending.popleft()
            job._run(output, self._enter, self._leave)
            with self._lock:
                notify = not self._done
                self._done.append(job)
            if notify:
                os.write(self._notify_fd, _ONE)
