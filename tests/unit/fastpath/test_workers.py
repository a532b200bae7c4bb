"""``CommandSpec`` / ``CommandJob`` / ``CommandPool`` (fastpath "workers"): command executions on a
pool of worker threads, both twins.

Holds the twins to ``_workers_py``'s contract: a job's ``result()`` is what
``run_command_env`` of the same twin returns or raises for the same arguments
(exit status, outputs, ``too_big``; exception type, message, trap code,
``memory_size``, ``stage``), and the twins agree with each other;
``completed()`` hands back every submitted job exactly once, oldest first;
``cancel()`` only stops a job no worker took; ``close()`` finishes what was
submitted; ``enter`` / ``leave`` wrap a job with a context in its worker
thread, and when they raise the job still completes with their exception and
the worker goes on; a host import's exception is its own job's result, also
with several workers at once; ``result()`` can be asked again; bad arguments
are refused as ``run_command_env`` refuses them.  Waiting is on the eventfd
with a generous deadline, never a timing assertion.
"""
from __future__ import annotations

import gc
import importlib
import os
import select
import threading
import time
from pathlib import Path
from types import ModuleType
from typing import Any, Callable, Iterator, Optional

import pytest
import wasmtime
from guests import command_wasm
from twins import outcome, twin_params

from engine.runtime import watchdog

TWINS = twin_params("workers")
ALL_TWINS: list[ModuleType] = [p.values[0] for p in TWINS]
STDERR_LINE = b"log line on stderr\n"
DEADLINE_S = 120.0  # a guard against hanging, not a timing assertion
ENGINE = wasmtime.Engine()
_config = wasmtime.Config()
_config.epoch_interruption = _config.consume_fuel = True
TICKING_ENGINE = wasmtime.Engine(_config)

# Calls wasmyard.note, writes to stdout and stderr, then {end} (nothing, or a trap).
NOTED = """
(module
  (import "wasi_snapshot_preview1" "fd_write" (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (import "wasmyard" "note" (func $note (param i32 i32) (result i32)))
  (memory (export "memory") 2)
  (data (i32.const 64) "to stdout")
  (data (i32.const 96) "to stderr")
  (func $write (param $fd i32) (param $ptr i32) (param $len i32)
    (i32.store (i32.const 0) (local.get $ptr))
    (i32.store (i32.const 4) (local.get $len))
    (drop (call $fd_write (local.get $fd) (i32.const 0) (i32.const 1) (i32.const 8))))
  (func (export "_start")
    (drop (call $note (i32.const 64) (i32.const 9)))
    (call $write (i32.const 1) (i32.const 64) (i32.const 9))
    (call $write (i32.const 2) (i32.const 96) (i32.const 9))
    {end})
)
"""
NOTED_OK = (0, b"to stdout", b"to stderr", False)
# As NOTED, then ends as note answered: 0 returns, 1 traps, 2 exits with status 7.
ENDINGS = """
(module
  (import "wasi_snapshot_preview1" "fd_write" (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "proc_exit" (func $exit (param i32)))
  (import "wasmyard" "note" (func $note (param i32 i32) (result i32)))
  (memory (export "memory") 2)
  (data (i32.const 64) "to stdout")
  (data (i32.const 96) "to stderr")
  (func $write (param $fd i32) (param $ptr i32) (param $len i32)
    (i32.store (i32.const 0) (local.get $ptr))
    (i32.store (i32.const 4) (local.get $len))
    (drop (call $fd_write (local.get $fd) (i32.const 0) (i32.const 1) (i32.const 8))))
  (func (export "_start") (local $how i32)
    (local.set $how (call $note (i32.const 64) (i32.const 9)))
    (call $write (i32.const 1) (i32.const 64) (i32.const 9))
    (call $write (i32.const 2) (i32.const 96) (i32.const 9))
    (if (i32.eq (local.get $how) (i32.const 1)) (then unreachable))
    (if (i32.eq (local.get $how) (i32.const 2)) (then (call $exit (i32.const 7)))))
)
"""


def call_twin(twin: ModuleType) -> ModuleType:
    """The ``call`` twin a ``workers`` twin runs (``_workers_c`` → ``_call_c``)."""
    return importlib.import_module(twin.__name__.replace("_workers_", "_call_"))


def prepared(wasm: bytes | str, twin: ModuleType, engine: wasmtime.Engine = ENGINE,
             note: Optional[Callable[..., int]] = None) -> wasmtime.InstancePre:
    """WASI, and ``wasmyard.note`` from the twin's ``define_host_func`` when given."""
    linker = wasmtime.Linker(engine)
    linker.define_wasi()
    if note is not None:
        call_twin(twin).define_host_func(linker, "wasmyard", "note", "ii", "i", note)
    return linker.instantiate_pre(wasmtime.Module(engine, wasm))


def job_args(pre: wasmtime.InstancePre, stdin: Any = b"", **changes: Any) -> dict[str, Any]:
    """``CommandJob``'s arguments by name (``run_command_env`` takes the same, plus the output files)."""
    return {"engine": ENGINE, "pre": pre, "stdin": stdin, "max_stdout": 1 << 20, "max_stderr": 1 << 16,
            "memory_limit": -1, "fuel": None, "watch_key": 0, "deadline_callback": watchdog.CALLBACK_ADDRESS,
            **changes}


def agree(results: list[Any]) -> Any:
    assert all(r == results[0] for r in results), results
    return results[0]


class Harness:
    """Pools, their eventfds, output files and gates; all closed after the test."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.fds: list[int] = []
        self.notify: dict[Any, int] = {}  # pool -> its eventfd
        self.gates: list[threading.Event] = []

    def output(self) -> tuple[str, str, int, int]:
        """One worker's (stdout_path, stderr_path, stdout_fd, stderr_fd)."""
        paths = [str(self.root / f"{name}{len(self.fds)}") for name in ("stdout", "stderr")]
        fds = [os.open(p, os.O_RDONLY | os.O_CREAT, 0o600) for p in paths]
        self.fds += fds
        return paths[0], paths[1], fds[0], fds[1]

    def pool(self, twin: ModuleType, workers: int = 1, enter: Any = None, leave: Any = None) -> Any:
        notify = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self.fds.append(notify)
        pool = twin.CommandPool([self.output() for _ in range(workers)], notify, enter, leave)
        self.notify[pool] = notify
        return pool

    def direct(self, twin: ModuleType, **args: Any) -> tuple:
        """``outcome`` of the same twin's ``run_command_env``, on files of its own."""
        out, err, out_fd, err_fd = self.output()
        return outcome(call_twin(twin).run_command_env, stdout_path=out, stderr_path=err, stdout_fd=out_fd,
                       stderr_fd=err_fd, **args)

    def drain(self, pool: Any, n: int) -> list[Any]:
        """What ``completed()`` returns until ``n`` jobs came back, in that order; then nothing more."""
        done: list[Any] = []
        deadline = time.monotonic() + DEADLINE_S
        while len(done) < n:
            remaining = deadline - time.monotonic()
            assert remaining > 0, f"only {len(done)} of {n} jobs completed"
            if select.select([self.notify[pool]], [], [], remaining)[0]:
                done += pool.completed()
        assert pool.completed() == []
        return done

    def gate(self) -> tuple[threading.Event, threading.Event, Callable[..., int]]:
        """A ``note`` that says it started and blocks its worker until released."""
        started, release = threading.Event(), threading.Event()
        self.gates.append(release)

        def note(mem: Any, ptr: int, length: int) -> int:
            started.set()
            release.wait(DEADLINE_S)
            return 0
        return started, release, note

    def close(self) -> None:
        for release in self.gates:
            release.set()
        for pool in self.notify:
            pool.close()
        for fd in self.fds:
            os.close(fd)


@pytest.fixture
def harness(tmp_path: Path) -> Iterator[Harness]:
    h = Harness(tmp_path)
    yield h
    h.close()


def run_one(harness: Harness, twin: ModuleType, **args: Any) -> tuple[Any, tuple]:
    pool, job = harness.pool(twin), twin.CommandJob(**args)
    pool.submit(job)
    assert harness.drain(pool, 1) == [job]
    return job, outcome(job.result)


# ---- results -----------------------------------------------------------------------------------


@pytest.mark.parametrize("twin", TWINS)
def test_two_workers_run_many_jobs_as_run_command_env_does(twin: ModuleType, harness: Harness) -> None:
    pre = prepared(command_wasm("echo"), twin)
    inputs = [f"job {i};".encode() * (i % 50) for i in range(200)]
    pool = harness.pool(twin, workers=2)
    jobs = [twin.CommandJob(**job_args(pre, data)) for data in inputs]
    for job in jobs:
        pool.submit(job)
    assert sorted(map(id, harness.drain(pool, len(jobs)))) == sorted(map(id, jobs))  # each one exactly once
    for job, data in zip(jobs, inputs):
        expected = harness.direct(twin, **job_args(pre, data))
        assert expected == ("ok", (0, data, STDERR_LINE, False))
        assert job.started and outcome(job.result) == expected
        assert isinstance(job.run_s, float) and job.run_s > 0


def spec_of(twin: ModuleType, args: dict[str, Any]) -> Any:
    """The ``CommandSpec`` of ``CommandJob`` arguments (all but stdin and watch_key)."""
    shared = {k: v for k, v in args.items() if k not in ("stdin", "watch_key")}
    return twin.CommandSpec(**shared)


@pytest.mark.parametrize("twin", TWINS)
def test_jobs_of_a_spec_run_as_jobs_made_whole(twin: ModuleType, harness: Harness) -> None:
    """spec.job(stdin, watch_key) is CommandJob(...) with the same arguments;
    its jobs share the spec's converted arguments and keep the spec alive."""
    pre = prepared(command_wasm("echo"), twin)
    args = job_args(pre, max_stdout=20, max_stderr=4)
    spec = spec_of(twin, args)
    inputs = [b"", b"short", b"x" * 50, bytearray(b"from a bytearray"), memoryview(b"from a view")]
    jobs = [spec.job(data, 0) for data in inputs]
    del spec
    gc.collect()
    pool = harness.pool(twin, workers=2)
    for job in jobs:
        pool.submit(job)
    harness.drain(pool, len(jobs))
    for job, data in zip(jobs, inputs):
        expected = harness.direct(twin, **{**args, "stdin": data})
        assert expected[0] == "ok" and outcome(job.result) == expected


@pytest.mark.parametrize("twin", TWINS)
def test_jobs_submitted_without_waking_run_at_the_next_wake(twin: ModuleType, harness: Harness) -> None:
    pre = prepared(command_wasm("echo"), twin)
    spec = spec_of(twin, job_args(pre))
    pool = harness.pool(twin, workers=2)
    for burst in range(3):
        jobs = [spec.job(b"burst %d job %d" % (burst, i), 0) for i in range(5)]
        for job in jobs:
            pool.submit(job, wake=False)
        pool.wake()
        assert harness.drain(pool, len(jobs)) is not None
        assert [job.result()[1] for job in jobs] == [b"burst %d job %d" % (burst, i) for i in range(5)]


BAD_SPEC_JOBS = [("stdin", "text"), ("stdin", None), ("watch_key", -1), ("watch_key", 1 << 64), ("watch_key", "1")]


@pytest.mark.parametrize(("name", "value"), BAD_SPEC_JOBS, ids=[f"{n}-{i}" for i, (n, _) in enumerate(BAD_SPEC_JOBS)])
def test_a_specs_job_refuses_what_command_job_refuses(name: str, value: Any) -> None:
    results = []
    for twin in ALL_TWINS:
        args = {**job_args(prepared(command_wasm("echo"), twin)), name: value}
        got = outcome(spec_of(twin, args).job, args["stdin"], args["watch_key"])
        assert got == outcome(twin.CommandJob, **args)
        results.append(got)
    got = agree(results)
    assert got[1] in (TypeError, ValueError) and got[4:] == (0, "setup")


OUTCOMES: dict[str, tuple[str, dict[str, Any], Callable[[tuple], bool]]] = {
    "exit3": ("exit3", {}, lambda got: got == ("ok", (3, b"", b"", False))),
    "unreachable": ("trap", {}, lambda got: got[1] is wasmtime.Trap and got[4:] == (65536, "start")),
    "memory-limit": ("membomb", {"memory_limit": 1 << 20},
                     lambda got: got[3] == wasmtime.TrapCode.UNREACHABLE and got[4:] == (1 << 20, "start")),
    "below-minimum": ("echo", {"memory_limit": 1000},
                      lambda got: got[1] is wasmtime.WasmtimeError and got[4:] == (0, "instantiate")),
    "out-of-fuel": ("loop", {"engine": TICKING_ENGINE, "fuel": 10_000},
                    lambda got: got[3] == wasmtime.TrapCode.OUT_OF_FUEL and got[4:] == (65536, "start")),
    "fuel-unset": ("echo", {"fuel": 10}, lambda got: got[1] is wasmtime.WasmtimeError and got[4:] == (0, "setup")),
    "stdout-too-big": ("echo", {"stdin": b"0123456789" * 10, "max_stdout": 42, "max_stderr": 4},
                       lambda got: got == ("ok", (0, b"0123456789" * 4 + b"01", STDERR_LINE[:4], True))),
}


@pytest.mark.parametrize("case", list(OUTCOMES))
def test_outcomes_match_run_command_env_and_the_other_twin(harness: Harness, case: str) -> None:
    kind, changes, expected = OUTCOMES[case]
    results = []
    for twin in ALL_TWINS:
        args = job_args(prepared(command_wasm(kind), twin, changes.get("engine", ENGINE)), **changes)
        direct = harness.direct(twin, **args)
        assert expected(direct), direct
        assert run_one(harness, twin, **args)[1] == direct
        results.append(direct)
    agree(results)


@pytest.mark.parametrize(("max_stdout", "max_stderr"), [(1 << 20, 1 << 16), (4, 2), (0, 0)])
def test_outputs_after_a_trap_are_what_the_guest_wrote(harness: Harness, max_stdout: int, max_stderr: int) -> None:
    results = []
    for twin in ALL_TWINS:
        pre = prepared(NOTED.format(end="unreachable"), twin, note=lambda mem, p, n: 0)
        job, got = run_one(harness, twin, **job_args(pre, max_stdout=max_stdout, max_stderr=max_stderr))
        assert got[1] is wasmtime.Trap and got[4:] == (2 * 65536, "start")
        assert job.outputs() == (b"to stdout"[:max_stdout], b"to stderr"[:max_stderr])
        results.append((got, job.outputs()))
    agree(results)


@pytest.mark.parametrize("twin", TWINS)
def test_a_job_keeps_its_engine_and_pre_alive(twin: ModuleType, harness: Harness) -> None:
    def make() -> Any:  # the only references to this engine and pre are the job's
        engine = wasmtime.Engine()
        linker = wasmtime.Linker(engine)
        linker.define_wasi()
        return twin.CommandJob(**job_args(linker.instantiate_pre(wasmtime.Module(engine, command_wasm("exit3"))),
                                          engine=engine))
    job = make()
    gc.collect()
    for _ in range(50):  # what the freed engine and pre were is likely reused meanwhile
        prepared(command_wasm("trap"), twin)
    pool = harness.pool(twin)
    pool.submit(job)
    assert harness.drain(pool, 1) == [job] and job.result() == (3, b"", b"", False)


# ---- cancel, close, submit ---------------------------------------------------------------------


@pytest.mark.parametrize("twin", TWINS)
def test_cancel_stops_only_a_job_no_worker_took(twin: ModuleType, harness: Harness) -> None:
    started, release, note = harness.gate()
    gated, echo = prepared(NOTED.format(end=""), twin, note=note), prepared(command_wasm("echo"), twin)
    pool = harness.pool(twin, workers=1)
    jobs = first, second, third = [twin.CommandJob(**job_args(gated))] + [
        twin.CommandJob(**job_args(echo, data)) for data in (b"2nd", b"3rd")]
    for job in jobs:
        pool.submit(job)
    assert started.wait(DEADLINE_S)  # the only worker runs the first job
    second.cancel()
    first.cancel()  # too late: it runs on
    release.set()
    assert harness.drain(pool, 3) == jobs  # oldest first
    assert first.started and outcome(first.result) == harness.direct(twin, **job_args(gated)) == ("ok", NOTED_OK)
    assert not second.started and not second.stdout_over_limit() and second.outputs() == (b"", b"")
    assert outcome(second.result)[1:3] == (ValueError, twin.NOT_STARTED) == (ValueError, "cancelled before it started")
    assert third.started and third.result() == (0, b"3rd", STDERR_LINE, False)


@pytest.mark.parametrize("twin", TWINS)
def test_close_finishes_what_was_submitted_and_refuses_more(twin: ModuleType, harness: Harness) -> None:
    started, release, note = harness.gate()
    gated, echo = prepared(NOTED.format(end=""), twin, note=note), prepared(command_wasm("echo"), twin)
    pool = harness.pool(twin, workers=1)
    jobs = [twin.CommandJob(**job_args(gated))] + [twin.CommandJob(**job_args(echo, b"%d" % i)) for i in range(5)]
    for job in jobs:
        pool.submit(job)
    assert started.wait(DEADLINE_S)
    closer = threading.Thread(target=pool.close)
    closer.start()
    for _ in range(10_000):  # submit until close() took effect; whatever got in must still run
        job = twin.CommandJob(**job_args(echo, b"late"))
        try:
            pool.submit(job)
        except RuntimeError as exc:
            assert str(exc) == "the pool is closed"
            break
        jobs.append(job)
    else:
        pytest.fail("submit() still accepted jobs after close()")
    release.set()
    closer.join()
    assert pool.completed() == jobs
    stdins = [b"%d" % i for i in range(5)] + [b"late"] * (len(jobs) - 6)
    assert [outcome(job.result) for job in jobs] == [("ok", NOTED_OK)] + [
        ("ok", (0, data, STDERR_LINE, False)) for data in stdins]


def test_submit_refuses_alike(harness: Harness) -> None:
    """Twice, into another pool, a context without enter/leave, not a job."""
    results = []
    for twin in ALL_TWINS:
        pre = prepared(command_wasm("exit3"), twin)
        pool, job = harness.pool(twin), twin.CommandJob(**job_args(pre))
        pool.submit(job)
        got = [outcome(pool.submit, job)]
        assert harness.drain(pool, 1) == [job] and job.result() == (3, b"", b"", False)
        got += [outcome(pool.submit, job), outcome(harness.pool(twin).submit, job),
                outcome(pool.submit, twin.CommandJob(**job_args(pre), context=object())),
                outcome(pool.submit, job=None), outcome(pool.submit, "job")]
        results.append([g[:3] for g in got])
    assert agree(results) == [("raised", ValueError, "a CommandJob runs once")] * 3 + [
        ("raised", ValueError, "a job with a context needs a pool with enter and leave"),
        ("raised", TypeError, "expected a CommandJob, got NoneType"),
        ("raised", TypeError, "expected a CommandJob, got str")]


# ---- context: enter / leave in the worker thread, host imports ---------------------------------------


class Context:
    """A pool's enter / leave: a thread-local current context, and a log of
    (what, context, thread name)."""

    def __init__(self) -> None:
        self.local = threading.local()
        self.log: list[tuple[str, Any, str]] = []

    def current(self) -> Any:
        return getattr(self.local, "context", None)

    def record(self, what: str, value: Any) -> int:
        self.log.append((what, value, threading.current_thread().name))
        return 0

    def enter(self, context: Any) -> tuple:
        previous, self.local.context = self.current(), context
        self.record("enter", context)
        return ("was", previous)

    def leave(self, previous: tuple) -> None:
        self.local.context = previous[1]
        self.record("leave", previous)


@pytest.mark.parametrize("twin", TWINS)
def test_enter_and_leave_wrap_a_job_with_a_context(twin: ModuleType, harness: Harness) -> None:
    ctx = Context()
    pre = prepared(NOTED.format(end=""), twin, note=lambda mem, p, n: ctx.record("note", ctx.current()))
    pool = harness.pool(twin, workers=1, enter=ctx.enter, leave=ctx.leave)
    jobs = [twin.CommandJob(**job_args(pre), context=c) for c in ("ctx-a", None, "ctx-c")]
    for job in jobs:
        pool.submit(job)
    assert harness.drain(pool, 3) == jobs
    assert [job.result() for job in jobs] == [NOTED_OK] * 3
    names = {name for _, _, name in ctx.log}
    assert len(names) == 1 and names.pop().startswith("wasmyard-command-")
    assert [entry[:2] for entry in ctx.log] == [
        ("enter", "ctx-a"), ("note", "ctx-a"), ("leave", ("was", None)),
        ("note", None),  # no context: neither enter nor leave
        ("enter", "ctx-c"), ("note", "ctx-c"), ("leave", ("was", None)),
    ]


class Refused(Exception):
    pass


# wasmtime-py parks a host import's exception in one process-wide slot
# (wasmtime._func.LAST_EXCEPTION) until a call that entered wasm takes it;
# with several workers another worker's call could take it or overwrite it,
# which is why define_host_func parks it per thread as well.
@pytest.mark.parametrize("workers", [1, 2, 4])
def test_a_host_exception_is_its_own_jobs_result(harness: Harness, workers: int) -> None:
    """Each guest's import raises with its own job's context: every job gets
    its own exception back, as run_command_env raises it, with any number of
    workers; nothing is left in wasmtime-py's slot."""
    results = []
    for twin in ALL_TWINS:
        ctx = Context()

        def note(mem: Any, ptr: int, length: int) -> int:
            raise Refused(f"refused {ctx.current()}")

        pre = prepared(NOTED.format(end=""), twin, note=note)
        pool = harness.pool(twin, workers=workers, enter=ctx.enter, leave=ctx.leave)
        jobs = [twin.CommandJob(**job_args(pre), context=i) for i in range(100)]
        for job in jobs:
            pool.submit(job)
        harness.drain(pool, len(jobs))
        got = [outcome(job.result) for job in jobs]
        assert got == [("raised", Refused, f"refused {i}", None, 2 * 65536, "start") for i in range(100)]
        ctx.local.context = "direct"
        assert harness.direct(twin, **job_args(pre)) == ("raised", Refused, "refused direct", None, 2 * 65536, "start")
        assert wasmtime._func.LAST_EXCEPTION is None
        results.append(got)
    agree(results)


@pytest.mark.parametrize("twin", TWINS)
@pytest.mark.parametrize("workers", [2, 4])
def test_concurrent_jobs_keep_their_own_endings(twin: ModuleType, harness: Harness, workers: int) -> None:
    """Jobs whose import raises run alongside jobs that return, trap and exit:
    no job gets another job's exception, nor loses its own, its trap or its
    exit status.  The pure twin may replace a trap by ``_LOST_TRAP`` (the case
    ``_call_py``'s docstring describes: wasmtime-py dropped it), never by
    another job's exception."""
    ctx = Context()

    def note(mem: Any, ptr: int, length: int) -> int:
        i = ctx.current()
        if i % 4 == 0:
            raise Refused(f"refused {i}")
        return i % 4 - 1

    pre = prepared(ENDINGS, twin, note=note)
    ctx.local.context = 2
    trapped = harness.direct(twin, **job_args(pre))
    assert trapped[1] is wasmtime.Trap and trapped[3] == wasmtime.TrapCode.UNREACHABLE
    lost = ("raised", wasmtime.Trap, call_twin(twin).__dict__.get("_LOST_TRAP"), None, 2 * 65536, "start")
    pool = harness.pool(twin, workers=workers, enter=ctx.enter, leave=ctx.leave)
    jobs = [twin.CommandJob(**job_args(pre), context=i) for i in range(200)]
    for job in jobs:
        pool.submit(job)
    harness.drain(pool, len(jobs))
    for i, job in enumerate(jobs):
        got = outcome(job.result)
        if i % 4 == 0:
            assert got == ("raised", Refused, f"refused {i}", None, 2 * 65536, "start"), i
        elif i % 4 == 1:
            assert got == ("ok", NOTED_OK), i
        elif i % 4 == 2:
            assert got == trapped or (twin.__name__.endswith("_py") and got == lost), (i, got)
            assert job.outputs() == NOTED_OK[1:3]
        else:
            assert got == ("ok", (7,) + NOTED_OK[1:]), i
    assert wasmtime._func.LAST_EXCEPTION is None


# ---- result() asked again; enter / leave that raise ------------------------------------------------


def test_result_can_be_asked_again(harness: Harness) -> None:
    """The same tuple, or the same exception object, every time, in both
    twins: a failed job's C error is only turned into an exception once."""
    results = []
    for twin in ALL_TWINS:
        got = []
        for kind in ("echo", "exit3", "trap", "below-minimum"):
            changes = {"memory_limit": 1000} if kind == "below-minimum" else {}
            pre = prepared(command_wasm("echo" if kind == "below-minimum" else kind), twin)
            job, first = run_one(harness, twin, **job_args(pre, b"again", **changes))
            for _ in range(3):
                if first[0] == "ok":
                    assert job.result() is first[1]
                else:
                    with pytest.raises(first[1]) as info:
                        job.result()
                    again = outcome(job.result)
                    assert again == first and info.value is _raised(job.result)
            got.append(first)
        ctx = Context()
        pre = prepared(NOTED.format(end=""), twin, note=lambda mem, p, n: _raise_now(Refused("once")))
        pool = harness.pool(twin, enter=ctx.enter, leave=ctx.leave)
        job = twin.CommandJob(**job_args(pre), context="c")
        pool.submit(job)
        harness.drain(pool, 1)
        first_exc = _raised(job.result)
        assert isinstance(first_exc, Refused) and all(_raised(job.result) is first_exc for _ in range(3))
        got.append(outcome(job.result))
        results.append(got)
    assert [g[:2] for g in agree(results)] == [
        ("ok", (0, b"again", STDERR_LINE, False)), ("ok", (3, b"", b"", False)), ("raised", wasmtime.Trap),
        ("raised", wasmtime.WasmtimeError), ("raised", Refused)]


def _raise_now(exc: BaseException) -> Any:
    raise exc


def _raised(fn: Callable[[], Any]) -> BaseException:
    try:
        fn()
    except BaseException as exc:  # noqa: BLE001 - the exception is the result
        return exc
    pytest.fail(f"{fn} did not raise")


class HookFailed(Exception):
    pass


class FailingHooks(Context):
    """A Context whose enter / leave raise for the contexts named so."""

    def enter(self, context: Any) -> tuple:
        if "enter" in str(context):
            self.record("enter-raised", context)
            raise HookFailed(f"enter {context}")
        return super().enter(context)

    def leave(self, previous: tuple) -> None:
        context = self.current()
        super().leave(previous)
        if "leave" in str(context):
            raise HookFailed(f"leave {context}")


HOOK_CASES = {
    # context: (what the guest does, the job's outcome, whether the guest ran)
    "enter-ok": ("", ("raised", HookFailed, "enter enter-ok", None, 0, "setup"), False),
    "enter-trap": ("unreachable", ("raised", HookFailed, "enter enter-trap", None, 0, "setup"), False),
    "leave-ok": ("", ("raised", HookFailed, "leave leave-ok", None, 0, "setup"), True),
    "leave-trap": ("unreachable", ("raised", wasmtime.Trap), True),
    "leave-host": ("refuse", ("raised", Refused, "refused leave-host", None, 2 * 65536, "start"), True),
    "fine": ("", ("ok", NOTED_OK), True),
}


@pytest.mark.parametrize("workers", [1, 2])
def test_enter_or_leave_that_raises_is_the_jobs_result(harness: Harness, workers: int) -> None:
    """enter raising: the guest does not run, leave is not called, result()
    raises enter's exception; leave raising: its exception is the result
    unless the run's own came first.  Every job completes, the workers go on
    (the last jobs run fine), and nothing is left in wasmtime-py's slot."""
    results = []
    for twin in ALL_TWINS:
        hooks = FailingHooks()

        def note(mem: Any, ptr: int, length: int) -> int:
            context = hooks.current()
            hooks.record("note", context)
            if context == "leave-host":
                raise Refused(f"refused {context}")
            return 0

        pres = {end: prepared(NOTED.format(end=end), twin, note=note) for end in ("", "unreachable")}
        pool = harness.pool(twin, workers=workers, enter=hooks.enter, leave=hooks.leave)
        contexts = list(HOOK_CASES) * 3 + ["fine"] * 4
        jobs = [twin.CommandJob(**job_args(pres[HOOK_CASES[c][0].replace("refuse", "")]), context=c)
                for c in contexts]
        for job in jobs:
            pool.submit(job)
        assert sorted(map(id, harness.drain(pool, len(jobs)))) == sorted(map(id, jobs))
        got = []
        for context, job in zip(contexts, jobs):
            _, expected, ran = HOOK_CASES[context]
            result = outcome(job.result)
            assert result[:len(expected)] == expected, (context, result)
            assert job.started and outcome(job.result) == result
            wrote = ran and context != "leave-host"  # the import raises before the guest writes
            assert job.outputs() == (NOTED_OK[1:3] if wrote else (b"", b""))
            got.append(result[:len(expected)])  # a trap's message may be _LOST_TRAP in the pure twin
        for context in HOOK_CASES:  # the guest ran for each job whose enter did not raise
            noted = sum(1 for what, value, _ in hooks.log if what == "note" and value == context)
            assert noted == contexts.count(context) * HOOK_CASES[context][2], context
        counts = {what: sum(1 for w, _, _ in hooks.log if w == what) for what in ("enter", "enter-raised", "leave")}
        assert counts == {"enter": len(jobs) - 6, "enter-raised": 6, "leave": len(jobs) - 6}
        assert wasmtime._func.LAST_EXCEPTION is None
        results.append(got)
    agree(results)


@pytest.fixture(scope="module")
def ticker() -> Iterator[watchdog.Ticker]:
    t = watchdog.Ticker([TICKING_ENGINE])
    yield t
    t.close()


@pytest.mark.parametrize("twin", TWINS)
def test_stdout_over_limit_lets_the_watchdog_stop_a_flood(twin: ModuleType, harness: Harness,
                                                          ticker: watchdog.Ticker) -> None:
    """As CommandRunner arms it: the deadline callback checks the job's stdout in its worker."""
    watch = watchdog.new_watch()
    try:
        pre = prepared(command_wasm("flood"), twin, TICKING_ENGINE)
        args = job_args(pre, engine=TICKING_ENGINE, fuel=1 << 62, watch_key=watch.key, max_stdout=1 << 16)
        job = twin.CommandJob(**args)
        assert not job.stdout_over_limit()
        watch.arm_at_first_tick(DEADLINE_S, job.stdout_over_limit)
        pool = harness.pool(twin)
        pool.submit(job)
        harness.drain(pool, 1)
    finally:
        watch.close()
    got = outcome(job.result)
    assert got[1] is wasmtime.WasmtimeError and "execution stopped (output)" in got[2] and got[4:] == (65536, "start")
    assert watch.reason == "output" and job.outputs() == (bytes(1 << 16), b"")


# ---- bad arguments ------------------------------------------------------------------------------------

BAD_JOBS = [("engine", None), ("pre", ENGINE), ("max_stdout", -1), ("max_stderr", 1.5), ("fuel", -1),
            ("deadline_callback", 0), ("stdin", "text"), ("argv", ["ok", 3]), ("argv", ["a\0b"]),
            ("env", ["A=1"]), ("env", [("A", "1", "x")]), ("preopens", [("/tmp", "/t")])]


@pytest.mark.parametrize(("name", "value"), BAD_JOBS, ids=[f"{n}-{i}" for i, (n, _) in enumerate(BAD_JOBS)])
def test_bad_job_arguments_are_refused_as_run_command_env_refuses_them(harness: Harness, name: str,
                                                                       value: Any) -> None:
    results = []
    for twin in ALL_TWINS:
        args = {**job_args(prepared(command_wasm("echo"), twin)), name: value}
        got = outcome(twin.CommandJob, **args)
        assert got == harness.direct(twin, **args)
        if name != "stdin":  # a spec takes everything but the input (and the watch key)
            assert outcome(spec_of, twin, args) == got
        results.append(got)
    got = agree(results)
    assert got[1] in (TypeError, ValueError) and got[4:] == (0, "setup")


BAD_POOLS: dict[str, Callable[[tuple], dict[str, Any]]] = {
    "no-outputs": lambda out: {"outputs": []}, "outputs-str": lambda out: {"outputs": "stdout"},
    "short-item": lambda out: {"outputs": [out[:3]]}, "list-item": lambda out: {"outputs": [list(out)]},
    "negative-fd": lambda out: {"outputs": [out[:2] + (-1, out[3])]},
    "bool-fd": lambda out: {"outputs": [out[:3] + (True,)]}, "nul-path": lambda out: {"outputs": [("a\0b",) + out[1:]]},
    "notify-negative": lambda out: {"notify_fd": -1}, "only-enter": lambda out: {"enter": lambda c: None},
    "only-leave": lambda out: {"leave": lambda p: None}, "not-callable": lambda out: {"enter": 1, "leave": 2},
}


@pytest.mark.parametrize("case", list(BAD_POOLS))
def test_bad_pool_arguments_are_refused_alike(harness: Harness, case: str) -> None:
    out = harness.output()
    results = []
    for twin in ALL_TWINS:
        got = outcome(twin.CommandPool, **{"outputs": [out], "notify_fd": out[2], **BAD_POOLS[case](out)})
        if got[0] == "ok":
            got[1].close()
        results.append(got[:3])
    assert agree(results)[1] in (TypeError, ValueError)
