"""``run_start`` and ``run_command_env`` (fastpath "call"): one whole WASI command
execution, both twins.

Each behaviour is checked as an outcome — the exit status, or the exception's
type, message, trap code, ``memory_size`` and ``stage`` — and compared across
the twins; traps and errors are also compared with what plain wasmtime-py
(``WasiConfig`` + ``InstancePre.instantiate`` + ``Func.__call__``) raises.
"""
from __future__ import annotations

import ctypes
import importlib
import os
import subprocess
import sys
import textwrap
import threading
from pathlib import Path
from types import ModuleType
from typing import Any, Callable, Optional

import pytest
import wasmtime
from guests import command_wasm, command_wat
from twins import EXAMPLES, ROOT, outcome, run_in_threads, twin_params

from engine.runtime import watchdog  # the real deadline callback, as the runtime installs it

TWINS = twin_params("call")
ALL_TWINS: list[ModuleType] = [p.values[0] for p in TWINS]
NO_START = "module has no _start function export"


def _engine(**options: Any) -> wasmtime.Engine:
    config = wasmtime.Config()
    for name, value in options.items():
        setattr(config, name, value)
    return wasmtime.Engine(config)


ENGINE = _engine()
FUEL_ENGINE = _engine(consume_fuel=True)
EPOCH_ENGINE = _engine(epoch_interruption=True)
HostDef = tuple[str, str, Callable[..., Any]]  # name, "params:results", callback(mem, *ints)


def prepared(wasm: bytes | str, twin: Optional[ModuleType] = None, engine: wasmtime.Engine = ENGINE,
             host: tuple[HostDef, ...] = ()) -> wasmtime.InstancePre:
    """A linker with WASI (and ``wasmyard.*`` imports from the twin) pre-instantiating ``wasm``."""
    linker = wasmtime.Linker(engine)
    linker.define_wasi()
    for name, sig, callback in host:
        params, results = sig.split(":")
        (twin or ALL_TWINS[-1]).define_host_func(linker, "wasmyard", name, params, results, callback)
    return linker.instantiate_pre(wasmtime.Module(engine, wasm))


class Files:
    def __init__(self, root: Path) -> None:
        self.stdout = str(root / "stdout")
        self.stderr = str(root / "stderr")
        self.stdin = str(root / "stdin")

    def out(self) -> bytes:
        return Path(self.stdout).read_bytes()

    def err(self) -> bytes:
        return Path(self.stderr).read_bytes()


@pytest.fixture
def files(tmp_path: Path) -> Files:
    return Files(tmp_path)


def start(twin: ModuleType, pre: wasmtime.InstancePre, files: Files, stdin: Any = b"",
          engine: wasmtime.Engine = ENGINE, setup: Callable[[wasmtime.Store], None] = lambda s: None,
          **kwargs: Any) -> tuple:
    store = wasmtime.Store(engine)
    setup(store)
    try:
        return outcome(twin.run_start, store, pre, stdin, files.stdout, files.stderr, **kwargs)
    finally:
        store.close()


def plain(pre: wasmtime.InstancePre, files: Files, stdin: bytes = b"", engine: wasmtime.Engine = ENGINE,
          setup: Callable[[wasmtime.Store], None] = lambda s: None) -> tuple:
    """The same execution with wasmtime-py alone: (type, message, trap code) or ("ok", status)."""
    Path(files.stdin).write_bytes(stdin)
    store = wasmtime.Store(engine)
    setup(store)
    try:
        wasi = wasmtime.WasiConfig()
        wasi.stdin_file = files.stdin
        wasi.stdout_file = files.stdout
        wasi.stderr_file = files.stderr
        store.set_wasi(wasi)
        try:
            instance = pre.instantiate(store)
            instance.exports(store)["_start"](store)
            return ("ok", 0)
        except wasmtime.ExitTrap as exc:
            return ("ok", exc.code)
        except (wasmtime.Trap, wasmtime.WasmtimeError) as exc:
            return (type(exc), str(exc), getattr(exc, "trap_code", None))
    finally:
        store.close()


def agree(results: list[tuple]) -> tuple:
    assert all(r == results[0] for r in results), results
    return results[0]


# ---- the package -------------------------------------------------------------


def test_package_exports_the_loaded_twin() -> None:
    import fastpath

    assert fastpath.run_start is ALL_TWINS[0].run_start
    for twin in ALL_TWINS:
        assert "run_start" in twin.__all__ and twin.NO_START == NO_START


# ---- stdin, stdout, stderr, exit status ------------------------------------------


@pytest.mark.parametrize("twin", TWINS)
@pytest.mark.parametrize("data", [b"", b"hello, hub", bytes(range(256)) * 4096], ids=["empty", "short", "1MiB"])
def test_echo_through_stdin_and_stdout(twin: ModuleType, files: Files, data: bytes) -> None:
    assert start(twin, prepared(command_wasm("echo")), files, data) == ("ok", 0)
    assert files.out() == data
    assert files.err() == b"log line on stderr\n"


@pytest.mark.parametrize("twin", TWINS)
def test_the_committed_echo_example(twin: ModuleType, files: Files) -> None:
    data = os.urandom(100_000)
    assert start(twin, prepared((EXAMPLES / "echo" / "echo.wasm").read_bytes()), files, data) == ("ok", 0)
    assert files.out() == data
    assert files.err() == b"echo: 100000 bytes\n"


@pytest.mark.parametrize("twin", TWINS)
@pytest.mark.parametrize("stdin", [bytearray(b"abc"), memoryview(b"xabcx")[1:4]], ids=["bytearray", "memoryview"])
def test_stdin_takes_bytes_like_data(twin: ModuleType, files: Files, stdin: Any) -> None:
    assert start(twin, prepared(command_wasm("echo")), files, stdin) == ("ok", 0)
    assert files.out() == b"abc"


@pytest.mark.parametrize("twin", TWINS)
def test_output_files_are_truncated(twin: ModuleType, files: Files) -> None:
    Path(files.stdout).write_bytes(b"x" * 10_000)
    Path(files.stderr).write_bytes(b"y" * 10_000)
    assert start(twin, prepared(command_wasm("exit3")), files) == ("ok", 3)
    assert files.out() == files.err() == b""


EXIT = """
(module
  (import "wasi_snapshot_preview1" "proc_exit" (func $exit (param i32)))
  (memory (export "memory") 1)
  (func (export "_start") (call $exit (i32.const CODE)))
)
"""


@pytest.mark.parametrize("twin", TWINS)
@pytest.mark.parametrize("code", [0, 1, 3, 125, 126, 255])
def test_exit_status_is_returned_like_wasmtime_py_exits(twin: ModuleType, files: Files, code: int) -> None:
    pre = prepared(EXIT.replace("CODE", str(code)))
    expected = plain(pre, files)
    got = start(twin, pre, files)
    if code < 126:
        assert expected == got == ("ok", code)
    else:  # WASI has no such status: wasmtime-py raises a plain WasmtimeError
        assert expected[0] is wasmtime.WasmtimeError
        assert got[:4] == ("raised",) + expected
        assert got[4:] == (65536, "start")


# ---- traps and errors ----------------------------------------------------------------


def _limit(store: wasmtime.Store) -> None:
    store.set_limits(memory_size=1 << 20)


def _fuel(store: wasmtime.Store) -> None:
    store.set_fuel(10_000)


def _epoch(store: wasmtime.Store) -> None:
    store.set_epoch_deadline(1)
    EPOCH_ENGINE.increment_epoch()


TRAPS = [
    ("trap", ENGINE, _limit, wasmtime.TrapCode.UNREACHABLE, 65536),
    ("membomb", ENGINE, _limit, wasmtime.TrapCode.UNREACHABLE, 1 << 20),
    ("loop", FUEL_ENGINE, _fuel, wasmtime.TrapCode.OUT_OF_FUEL, 65536),
    ("loop", EPOCH_ENGINE, _epoch, wasmtime.TrapCode.INTERRUPT, 65536),
]


@pytest.mark.parametrize(("kind", "engine", "setup", "code", "size"), TRAPS,
                         ids=["unreachable", "membomb", "fuel", "epoch"])
def test_traps_match_wasmtime_py_and_each_other(files: Files, kind: str, engine: wasmtime.Engine,
                                                 setup: Callable[[wasmtime.Store], None],
                                                 code: wasmtime.TrapCode, size: int) -> None:
    pre = prepared(command_wasm(kind), engine=engine)
    expected = plain(pre, files, engine=engine, setup=setup)
    assert expected[0] is wasmtime.Trap and expected[2] == code
    got = agree([start(twin, pre, files, engine=engine, setup=setup) for twin in ALL_TWINS])
    assert got == ("raised",) + expected + (size, "start")


_DEADLINE_T = ctypes.CFUNCTYPE(ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p,
                               ctypes.POINTER(ctypes.c_uint64), ctypes.POINTER(ctypes.c_uint8))


def _c_function(name: str, restype: Any, *argtypes: Any) -> Any:
    address = ctypes.cast(getattr(wasmtime._ffi.dll, name), ctypes.c_void_p).value
    return ctypes.CFUNCTYPE(restype, *argtypes)(address)


_set_deadline_callback = _c_function("wasmtime_store_epoch_deadline_callback", None, ctypes.c_void_p,
                                     _DEADLINE_T, ctypes.c_void_p, ctypes.c_void_p)
_error_new = _c_function("wasmtime_error_new", ctypes.c_void_p, ctypes.c_char_p)
_STOP = _DEADLINE_T(lambda ctx, data, delta, kind: _error_new(b"stopped by the host"))


def _stopping_callback(store: wasmtime.Store) -> None:
    _set_deadline_callback(ctypes.cast(store.ptr(), ctypes.c_void_p), _STOP, None, None)
    _epoch(store)


def test_an_epoch_callback_error_is_a_wasmtime_error(files: Files) -> None:
    pre = prepared(command_wasm("loop"), engine=EPOCH_ENGINE)
    expected = plain(pre, files, engine=EPOCH_ENGINE, setup=_stopping_callback)
    assert expected[0] is wasmtime.WasmtimeError and "stopped by the host" in expected[1]
    got = agree([start(twin, pre, files, engine=EPOCH_ENGINE, setup=_stopping_callback) for twin in ALL_TWINS])
    assert got == ("raised",) + expected + (65536, "start")


SPIN = """
(module
  (import "wasmyard" "started" (func $started))
  (memory (export "memory") 1)
  (func (export "_start") (call $started) (loop $l (br $l)))
)
"""


@pytest.mark.parametrize("twin", TWINS)
def test_the_guest_runs_without_the_gil(twin: ModuleType, files: Files) -> None:
    """The main thread stops a spinning guest through the epoch, which it can
    only do while the guest runs if ``run_start`` released the GIL; if it did
    not, the guest spins until its fuel is gone and the trap code says so."""
    engine = _engine(epoch_interruption=True, consume_fuel=True)
    started = threading.Event()
    pre = prepared(SPIN, twin, engine, host=(("started", ":", lambda mem: started.set()),))

    def setup(store: wasmtime.Store) -> None:
        store.set_fuel(5_000_000_000)
        store.set_epoch_deadline(1)

    result: list[tuple] = []
    thread = threading.Thread(target=lambda: result.append(start(twin, pre, files, engine=engine, setup=setup)))
    thread.start()
    started.wait(120)  # a guard against hanging, not a timing assertion
    engine.increment_epoch()
    thread.join()
    assert result[0][:2] == ("raised", wasmtime.Trap)
    assert result[0][3] == wasmtime.TrapCode.INTERRUPT


@pytest.mark.parametrize("twin", TWINS)
def test_instantiation_failure_has_no_memory_size(twin: ModuleType, files: Files) -> None:
    """A memory limit below the module's minimum fails instantiation."""
    big = command_wat("echo").replace('(memory (export "memory") 1)', '(memory (export "memory") 40)')
    pre = prepared(big)
    setup = _limit
    expected = plain(pre, files, setup=setup)
    assert expected[0] is wasmtime.WasmtimeError
    assert start(twin, pre, files, setup=setup) == ("raised",) + expected + (0, "instantiate")


START_TRAPS = """
(module
  (memory (export "memory") 2)
  (func $boom unreachable)
  (start $boom)
  (func (export "_start"))
)
"""


@pytest.mark.parametrize("twin", TWINS)
def test_a_trap_in_the_start_section_fails_instantiation(twin: ModuleType, files: Files) -> None:
    pre = prepared(START_TRAPS)
    expected = plain(pre, files)
    assert expected[0] is wasmtime.Trap
    assert start(twin, pre, files) == ("raised",) + expected + (0, "instantiate")


# ---- _start itself ---------------------------------------------------------------------


@pytest.mark.parametrize("twin", TWINS)
@pytest.mark.parametrize(("body", "size"), [
    ("", 65536),
    ('(func (export "main"))', 65536),
    ('(global (export "_start") i32 (i32.const 0))', 65536),
    ('(func (export "_start_") (nop))', 65536),
], ids=["nothing", "other-name", "global", "near-miss"])
def test_a_module_without_a_start_function(twin: ModuleType, files: Files, body: str, size: int) -> None:
    pre = prepared(f'(module (memory (export "memory") 1) {body})')
    assert start(twin, pre, files) == ("raised", ValueError, NO_START, None, size, "start")


@pytest.mark.parametrize("twin", TWINS)
def test_start_taking_parameters_fails_like_func_call(twin: ModuleType, files: Files) -> None:
    pre = prepared('(module (func (export "_start") (param i32 i64)))')
    expected = plain(pre, files)
    assert expected[0] is wasmtime.WasmtimeError
    assert start(twin, pre, files) == ("raised",) + expected + (0, "start")


@pytest.mark.parametrize("twin", TWINS)
def test_start_results_are_ignored(twin: ModuleType, files: Files) -> None:
    results = " ".join(["i32"] * 6)
    consts = " ".join(["(i32.const 7)"] * 6)
    pre = prepared(f'(module (func (export "_start") (result {results}) {consts}))')
    assert plain(pre, files) == start(twin, pre, files) == ("ok", 0)


@pytest.mark.parametrize("twin", TWINS)
def test_memory_size_is_zero_without_a_memory_export(twin: ModuleType, files: Files) -> None:
    pre = prepared('(module (memory 3) (func (export "_start") unreachable))')
    got = start(twin, pre, files)
    assert got[:2] == ("raised", wasmtime.Trap) and got[4:] == (0, "start")


# ---- argv, env, preopened directories -----------------------------------------------------

ARGS_ENV = """
(module
  (import "wasi_snapshot_preview1" "args_sizes_get" (func $args_sizes (param i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "args_get" (func $args (param i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "environ_sizes_get" (func $environ_sizes (param i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "environ_get" (func $environ (param i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_write" (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (func $write (param $fd i32) (param $ptr i32) (param $len i32)
    (i32.store (i32.const 0) (local.get $ptr))
    (i32.store (i32.const 4) (local.get $len))
    (drop (call $fd_write (local.get $fd) (i32.const 0) (i32.const 1) (i32.const 8))))
  ;; counts at 16, sizes at 20, pointers from 1024; argv strings at 8192, environ at 16384
  (func (export "_start")
    (drop (call $args_sizes (i32.const 16) (i32.const 20)))
    (drop (call $args (i32.const 1024) (i32.const 8192)))
    (call $write (i32.const 1) (i32.const 8192) (i32.load (i32.const 20)))
    (drop (call $environ_sizes (i32.const 16) (i32.const 20)))
    (drop (call $environ (i32.const 1024) (i32.const 16384)))
    (call $write (i32.const 2) (i32.const 16384) (i32.load (i32.const 20))))
)
"""


@pytest.mark.parametrize("twin", TWINS)
@pytest.mark.parametrize(("argv", "env"), [
    ((), ()),
    (("prog",), ()),
    (["task", "two words", "é ü"], [("A", "1"), ("EMPTY", ""), ("UNICODE", "ça va")]),
    (("x",) * 50, tuple((f"V{i}", str(i) * i) for i in range(50))),
], ids=["none", "argv0", "mixed", "many"])
def test_argv_and_env_reach_the_guest(twin: ModuleType, files: Files, argv: Any, env: Any) -> None:
    assert start(twin, prepared(ARGS_ENV), files, argv=argv, env=env) == ("ok", 0)
    assert files.out() == b"".join(a.encode() + b"\0" for a in argv)
    assert files.err() == b"".join(f"{k}={v}".encode() + b"\0" for k, v in env)


_OPEN = """
(module
  (import "wasi_snapshot_preview1" "path_open"
    (func $path_open (param i32 i32 i32 i32 i32 i64 i64 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_read" (func $fd_read (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_write" (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "proc_exit" (func $exit (param i32)))
  (memory (export "memory") 1)
  (data (i32.const 64) "in.txt")
  (data (i32.const 80) "out.txt")
  (data (i32.const 96) "written by the guest")
  (func $fail_on (param $errno i32) (if (local.get $errno) (then (call $exit (local.get $errno)))))
  (func (export "_start")
    {body})
)
"""
# read in.txt (in the first preopen, fd 3) and copy it to stdout
READER = _OPEN.format(body="""
    (call $fail_on (call $path_open (i32.const 3) (i32.const 0) (i32.const 64) (i32.const 6)
      (i32.const 0) (i64.const 2) (i64.const 0) (i32.const 0) (i32.const 32)))
    (i32.store (i32.const 0) (i32.const 1024))
    (i32.store (i32.const 4) (i32.const 4096))
    (call $fail_on (call $fd_read (i32.load (i32.const 32)) (i32.const 0) (i32.const 1) (i32.const 8)))
    (i32.store (i32.const 4) (i32.load (i32.const 8)))
    (call $fail_on (call $fd_write (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8)))""")
# create (or truncate) out.txt and write a line to it
WRITER = _OPEN.format(body="""
    (call $fail_on (call $path_open (i32.const 3) (i32.const 0) (i32.const 80) (i32.const 7)
      (i32.const 9) (i64.const 0x42) (i64.const 0) (i32.const 0) (i32.const 32)))
    (i32.store (i32.const 0) (i32.const 96))
    (i32.store (i32.const 4) (i32.const 20))
    (call $fail_on (call $fd_write (i32.load (i32.const 32)) (i32.const 0) (i32.const 1) (i32.const 8)))""")


@pytest.mark.parametrize("twin", TWINS)
@pytest.mark.parametrize("writable", [False, True], ids=["ro", "rw"])
def test_a_preopened_directory_can_be_read(twin: ModuleType, files: Files, tmp_path: Path, writable: bool) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    (shared / "in.txt").write_bytes(b"data from the host")
    got = start(twin, prepared(READER), files, preopens=[(str(shared), "/data", writable)])
    assert got == ("ok", 0)
    assert files.out() == b"data from the host"


@pytest.mark.parametrize("twin", TWINS)
def test_a_read_only_directory_cannot_be_written(twin: ModuleType, files: Files, tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    got = start(twin, prepared(WRITER), files, preopens=[(str(shared), "/data", False)])
    assert got[0] == "ok" and got[1] != 0  # the guest's errno, as its exit status
    assert not (shared / "out.txt").exists()
    assert got == start(ALL_TWINS[-1], prepared(WRITER), files, preopens=[(str(shared), "/data", False)])


@pytest.mark.parametrize("twin", TWINS)
def test_a_writable_directory_can_be_written(twin: ModuleType, files: Files, tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    assert start(twin, prepared(WRITER), files, preopens=[(str(shared), "/data", True)]) == ("ok", 0)
    assert (shared / "out.txt").read_bytes() == b"written by the guest"


@pytest.mark.parametrize("twin", TWINS)
def test_without_a_preopen_the_guest_sees_no_directory(twin: ModuleType, files: Files) -> None:
    got = start(twin, prepared(READER), files)
    assert got[0] == "ok" and got[1] != 0  # EBADF from path_open on fd 3


# ---- host imports --------------------------------------------------------------------------

NOTE = """
(module
  (import "wasmyard" "note" (func $note (param i32 i32) (result i32)))
  (memory (export "memory") 2)
  (data (i32.const 100) "hello from _start")
  (func (export "_start")
    (if (i32.ne (call $note (i32.const 100) (i32.const 17)) (i32.const 42)) (then unreachable)))
)
"""


@pytest.mark.parametrize("twin", TWINS)
def test_a_host_import_runs_during_start(twin: ModuleType, files: Files) -> None:
    seen: list[tuple[bytes, str]] = []

    def note(mem: Any, ptr: int, length: int) -> int:
        seen.append((mem.read(ptr, length), threading.current_thread().name))
        return 42

    pre = prepared(NOTE, twin, host=(("note", "ii:i", note),))
    assert start(twin, pre, files) == ("ok", 0)
    assert seen == [(b"hello from _start", threading.current_thread().name)]


class Refused(Exception):
    pass


@pytest.mark.parametrize("twin", TWINS)
def test_a_host_exception_surfaces_with_the_memory_size(twin: ModuleType, files: Files) -> None:
    def note(mem: Any, ptr: int, length: int) -> int:
        raise Refused("no notes today")

    pre = prepared(NOTE, twin, host=(("note", "ii:i", note),))
    assert start(twin, pre, files) == ("raised", Refused, "no notes today", None, 2 * 65536, "start")


# Ends as note answers: 0 returns, 1 traps, 2 exits with status 7.
ENDINGS = """
(module
  (import "wasi_snapshot_preview1" "proc_exit" (func $exit (param i32)))
  (import "wasmyard" "note" (func $note (param i32 i32) (result i32)))
  (memory (export "memory") 2)
  (func (export "_start") (local $how i32)
    (local.set $how (call $note (i32.const 0) (i32.const 0)))
    (if (i32.eq (local.get $how) (i32.const 1)) (then unreachable))
    (if (i32.eq (local.get $how) (i32.const 2)) (then (call $exit (i32.const 7)))))
)
"""


@pytest.mark.parametrize("twin", TWINS)
def test_concurrent_executions_keep_their_own_endings(twin: ModuleType, tmp_path: Path) -> None:
    """Threads run commands in stores of their own: imports that raise an
    exception naming the thread and the run, alongside runs that return, trap,
    exit and fail to instantiate.  Each run gets its own outcome, never another
    thread's exception; an exit keeps its status and an instantiation its
    error also when (pure twin) wasmtime-py raised another thread's exception
    in their place.  Only a trap may become ``Trap(_LOST_TRAP)`` there."""
    threads, rounds = 4, 100
    barrier = threading.Barrier(threads)
    failures: list[Any] = []
    lost = ("raised", wasmtime.Trap, getattr(twin, "_LOST_TRAP", None), None, 2 * 65536, "start")
    reference = Files(tmp_path)
    trapped = start(twin, prepared(ENDINGS, twin, host=(("note", "ii:i", lambda mem, p, n: 1),)), reference)
    assert trapped[1] is wasmtime.Trap and trapped[3] == wasmtime.TrapCode.UNREACHABLE
    too_small = start(twin, prepared(command_wasm("echo")), reference, setup=lambda s: s.set_limits(memory_size=1000))
    assert too_small[1] is wasmtime.WasmtimeError and too_small[4:] == (0, "instantiate")

    def worker(k: int) -> None:
        mine = Files(tmp_path)
        mine.stdout, mine.stderr = str(tmp_path / f"out{k}"), str(tmp_path / f"err{k}")
        current = [0]

        def note(mem: Any, ptr: int, length: int) -> int:
            i = current[0]
            if i % 5 == 0:
                raise Refused(f"thread {k} run {i}")
            return i % 5 - 1

        pre, echo = prepared(ENDINGS, twin, host=(("note", "ii:i", note),)), prepared(command_wasm("echo"))
        barrier.wait()
        for i in range(rounds):
            current[0] = i
            if i % 5 == 4:
                got = start(twin, echo, mine, setup=lambda s: s.set_limits(memory_size=1000))
                expected = too_small
            else:
                got = start(twin, pre, mine)
                expected = [("raised", Refused, f"thread {k} run {i}", None, 2 * 65536, "start"), ("ok", 0),
                            trapped, ("ok", 7)][i % 5]
            if got != expected and not (expected is trapped and twin.__name__.endswith("_py") and got == lost):
                failures.append((k, i, got))

    run_in_threads(worker, threads)
    assert failures == []
    assert wasmtime._func.LAST_EXCEPTION is None


@pytest.mark.parametrize("twin", TWINS)
def test_an_exit_or_error_is_kept_when_the_slot_holds_another_threads_exception(twin: ModuleType,
                                                                                  files: Files) -> None:
    """The pure twin's recovery, made certain: wasmtime-py's slot holds an
    exception another thread parked while a command exits, or fails to
    instantiate.  Both twins return the exit status and raise the error; the
    exception stays its owner's, with its context as it was."""
    parked = Refused("another thread's")
    other = threading.Thread(target=lambda: None)
    other.start()
    other.join()
    shared = importlib.import_module("fastpath._call_py")._PARKED
    try:
        for setup, expected in [(lambda s: None, ("ok", 3)),
                                (lambda s: s.set_limits(memory_size=1000), (wasmtime.WasmtimeError, 0, "instantiate"))]:
            shared[other.ident] = (parked, None)
            wasmtime._func.LAST_EXCEPTION = parked
            got = start(twin, prepared(command_wasm("exit3")), files, setup=setup)
            assert (got if got[0] == "ok" else (got[1],) + got[4:]) == expected
            assert shared[other.ident] == (parked, None)
            wasmtime._func.LAST_EXCEPTION = None
    finally:
        wasmtime._func.LAST_EXCEPTION = None
        shared.pop(other.ident, None)


# ---- setup failures and arguments -----------------------------------------------------------


@pytest.mark.parametrize("twin", TWINS)
def test_files_and_directories_that_cannot_be_opened(twin: ModuleType, files: Files, tmp_path: Path) -> None:
    pre = prepared(command_wasm("echo"))
    missing = str(tmp_path / "no" / "such" / "dir")
    store = wasmtime.Store(ENGINE)
    cases = [
        ((store, pre, b"", missing + "/out", files.stderr), "failed to set stdout file"),
        ((store, pre, b"", files.stdout, missing + "/err"), "failed to set stderr file"),
    ]
    for args, message in cases:
        assert outcome(twin.run_start, *args) == ("raised", wasmtime.WasmtimeError, message, None, 0, "setup")
    got = outcome(twin.run_start, store, pre, b"", files.stdout, files.stderr, preopens=[(missing, "/d", True)])
    assert got == ("raised", wasmtime.WasmtimeError, "failed to add preopen dir", None, 0, "setup")
    # Nothing was half-done: the store still runs a command.
    assert outcome(twin.run_start, store, pre, b"ok", files.stdout, files.stderr) == ("ok", 0)
    assert files.out() == b"ok"


@pytest.mark.parametrize("twin", TWINS)
def test_closed_store_and_closed_pre(twin: ModuleType, files: Files) -> None:
    pre = prepared(command_wasm("echo"))
    store = wasmtime.Store(ENGINE)
    store.close()
    assert outcome(twin.run_start, store, pre, b"", files.stdout, files.stderr) == \
        ("raised", ValueError, "already closed", None, 0, "setup")
    closed = prepared(command_wasm("echo"))
    closed.close()
    assert start(twin, closed, files) == ("raised", ValueError, "already closed", None, 0, "instantiate")


BAD_ARGUMENTS: list[tuple[str, dict[str, Any]]] = [
    ("store", {"store": None}),
    ("pre", {"pre": "echo"}),
    ("stdin-str", {"stdin": "text"}),
    ("stdin-none", {"stdin": None}),
    ("stdout-int", {"stdout_path": 1}),
    ("stdout-bytes", {"stdout_path": b"/tmp/x"}),
    ("stderr-nul", {"stderr_path": "/tmp/a\0b"}),
    ("argv-str", {"argv": "prog"}),
    ("argv-int", {"argv": 5}),
    ("argv-item", {"argv": ["ok", 3]}),
    ("argv-nul", {"argv": ["a\0b"]}),
    ("argv-surrogate", {"argv": ["\udcff"]}),
    ("env-dict-item", {"env": ["A=1"]}),
    ("env-triple", {"env": [("A", "1", "x")]}),
    ("env-value", {"env": [("A", 1)]}),
    ("env-nul", {"env": [("A\0", "1")]}),
    ("preopen-pair", {"preopens": [("/tmp", "/t")]}),
    ("preopen-host", {"preopens": [(None, "/t", True)]}),
    ("preopens-bytes", {"preopens": b"/tmp"}),
    ("several", {"stdout_path": None, "argv": [1], "env": 3}),  # the first one found wins
]


@pytest.mark.parametrize(("case", "changes"), BAD_ARGUMENTS, ids=[c for c, _ in BAD_ARGUMENTS])
def test_bad_arguments_are_refused_alike(files: Files, case: str, changes: dict[str, Any]) -> None:
    pre = prepared(command_wasm("echo"))
    results = []
    for twin in ALL_TWINS:
        store = wasmtime.Store(ENGINE)
        args: dict[str, Any] = {"store": store, "pre": pre, "stdin": b"", "stdout_path": files.stdout,
                                "stderr_path": files.stderr, **changes}
        results.append(outcome(twin.run_start, **args))
        store.close()
    got = agree(results)
    assert got[1] in (TypeError, ValueError, UnicodeEncodeError) and got[4:] == (0, "setup")


@pytest.mark.parametrize("twin", TWINS)
def test_paths_may_be_path_objects(twin: ModuleType, files: Files, tmp_path: Path) -> None:
    store = wasmtime.Store(ENGINE)
    got = outcome(twin.run_start, store, prepared(command_wasm("echo")), b"p", Path(files.stdout),
                  Path(files.stderr))
    assert got == ("ok", 0) and files.out() == b"p"


@pytest.mark.parametrize("twin", TWINS)
def test_one_store_after_another_on_one_thread_and_many(twin: ModuleType, tmp_path: Path) -> None:
    """Each worker thread with its own files, several executions each."""
    pre = prepared(command_wasm("echo"))
    failures: list[Any] = []

    def worker(k: int) -> None:
        mine = Files(tmp_path)
        mine.stdout, mine.stderr = str(tmp_path / f"out{k}"), str(tmp_path / f"err{k}")
        for i in range(50):
            data = f"{k}:{i}".encode() * (i + 1)
            got = start(twin, pre, mine, data)
            if got != ("ok", 0) or mine.out() != data:
                failures.append((k, i, got))

    run_in_threads(worker, 4)
    assert failures == []


# ---- no leaks --------------------------------------------------------------------------------

LEAK_CHECK = textwrap.dedent("""
    import importlib, os, sys, tempfile
    sys.path[:0] = [{root!r}, {tests!r}]
    import wasmtime
    from guests import command_wasm
    twin = importlib.import_module({module!r})

    def rss():
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    engine = wasmtime.Engine()
    linker = wasmtime.Linker(engine)
    linker.define_wasi()
    pres = [linker.instantiate_pre(wasmtime.Module(engine, command_wasm(k))) for k in ("echo", "exit3", "trap")]
    d = tempfile.mkdtemp()
    out, err, missing = os.path.join(d, "o"), os.path.join(d, "e"), os.path.join(d, "no", "o")
    stdin = b"x" * 8192
    argv = ["task"] + ["argument-" * 20] * 8
    env = [("NAME%d" % i, "value-" * 40) for i in range(8)]
    preopens = [(d, "/d", True), (d, "/r", False)]

    def run(i):
        store = wasmtime.Store(engine)
        try:
            kind = i % 4
            if kind == 3:  # fails in setup, after the config took argv, env and stdin
                twin.run_start(store, pres[0], stdin, out, missing, argv, env, preopens)
            else:
                status = twin.run_start(store, pres[kind], stdin, out, err, argv, env, preopens)
                assert status == (0, 3)[kind], status
        except (wasmtime.Trap, wasmtime.WasmtimeError) as exc:
            assert (i % 4, exc.stage) in ((2, "start"), (3, "setup")), (i, exc)
        finally:
            store.close()

    for i in range(2000):
        run(i)
    before = rss()
    for i in range({n}):
        run(i)
    print(rss() - before)
""")


@pytest.mark.skipif(not Path("/proc/self/statm").exists(), reason="reads RSS from /proc")
@pytest.mark.parametrize("twin", TWINS)
def test_twenty_thousand_executions_do_not_leak(twin: ModuleType) -> None:
    """A leaked stdin copy alone would be 20,000 × 8 KiB = 160 MiB; anything
    left behind per execution (config, error, trap, strings) shows up here."""
    script = LEAK_CHECK.format(root=str(ROOT), tests=str(ROOT / "tests"), module=twin.__name__, n=20_000)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    growth = int(done.stdout.split()[-1])
    assert growth < 16 << 20, f"RSS grew by {growth / (1 << 20):.1f} MiB over 20,000 executions"


# ---- run_command_env: the whole execution environment in one call ------------------------------

STDERR_LINE = b"log line on stderr\n"
TICKING_ENGINE = _engine(epoch_interruption=True, consume_fuel=True)


class Descriptors:
    """The two output files with a read descriptor on each, as the runtime keeps them."""

    def __init__(self, files: Files) -> None:
        self.files = files
        self.stdout_fd = os.open(files.stdout, os.O_RDONLY | os.O_CREAT, 0o600)
        self.stderr_fd = os.open(files.stderr, os.O_RDONLY | os.O_CREAT, 0o600)

    def close(self) -> None:
        os.close(self.stdout_fd)
        os.close(self.stderr_fd)


@pytest.fixture
def fds(files: Files) -> Any:
    d = Descriptors(files)
    yield d
    d.close()


def env_run(twin: ModuleType, pre: wasmtime.InstancePre, fds: Descriptors, stdin: Any = b"",
            engine: wasmtime.Engine = ENGINE, max_stdout: int = 1 << 20, max_stderr: int = 1 << 16,
            memory_limit: int = -1, fuel: Optional[int] = None, watch: Optional[watchdog.Watch] = None,
            **kwargs: Any) -> tuple:
    """``outcome`` of ``run_command_env``, with a Watch of its own unless one is given."""
    mine = watch or watchdog.new_watch()
    if watch is None:
        mine.arm(60)
    try:
        return outcome(twin.run_command_env, engine, pre, stdin, fds.files.stdout, fds.files.stderr,
                       fds.stdout_fd, fds.stderr_fd, max_stdout, max_stderr, memory_limit, fuel,
                       mine.key, watchdog.CALLBACK_ADDRESS, **kwargs)
    finally:
        if watch is None:
            mine.close()


def test_package_exports_run_command_env() -> None:
    import fastpath

    assert fastpath.run_command_env is ALL_TWINS[0].run_command_env
    assert all("run_command_env" in twin.__all__ for twin in ALL_TWINS)


@pytest.mark.parametrize("data", [b"", b"hello, hub", bytes(range(256)) * 4096], ids=["empty", "short", "1MiB"])
def test_env_echo_returns_both_outputs(fds: Descriptors, data: bytes) -> None:
    pre = prepared(command_wasm("echo"))
    got = agree([env_run(twin, pre, fds, data, engine=ENGINE) for twin in ALL_TWINS])
    assert got == ("ok", (0, data, STDERR_LINE, False))


def test_env_outputs_are_bounded(fds: Descriptors) -> None:
    pre = prepared(command_wasm("echo"))
    data = b"0123456789" * 10
    for limit, expected in ((100, False), (99, True), (0, True)):
        got = agree([env_run(twin, pre, fds, data, max_stdout=limit, max_stderr=4) for twin in ALL_TWINS])
        assert got == ("ok", (0, data[:limit], STDERR_LINE[:4], expected))


@pytest.mark.parametrize("twin", TWINS)
def test_env_exit_status(twin: ModuleType, fds: Descriptors) -> None:
    got = env_run(twin, prepared(command_wasm("exit3"), engine=TICKING_ENGINE), fds, fuel=10_000,
                  engine=TICKING_ENGINE)
    assert got == ("ok", (3, b"", b"", False))


def test_env_memory_limit_and_trap_carry_memory_size(fds: Descriptors) -> None:
    pre = prepared(command_wasm("membomb"))
    got = agree([env_run(twin, pre, fds, memory_limit=1 << 20) for twin in ALL_TWINS])
    assert got[:2] == ("raised", wasmtime.Trap) and got[3] == wasmtime.TrapCode.UNREACHABLE
    assert got[4:] == (1 << 20, "start")
    got = agree([env_run(twin, prepared(command_wasm("trap")), fds) for twin in ALL_TWINS])
    assert got[3] == wasmtime.TrapCode.UNREACHABLE and got[4:] == (65536, "start")
    got = agree([env_run(twin, pre, fds, memory_limit=1000) for twin in ALL_TWINS])  # below the minimum
    assert got[:2] == ("raised", wasmtime.WasmtimeError) and got[4:] == (0, "instantiate")


def test_env_fuel_exhaustion_and_fuel_without_fuel(fds: Descriptors) -> None:
    pre = prepared(command_wasm("loop"), engine=TICKING_ENGINE)
    got = agree([env_run(twin, pre, fds, engine=TICKING_ENGINE, fuel=10_000) for twin in ALL_TWINS])
    assert got[:2] == ("raised", wasmtime.Trap) and got[3] == wasmtime.TrapCode.OUT_OF_FUEL
    assert got[4:] == (65536, "start")
    got = agree([env_run(twin, prepared(command_wasm("echo")), fds, fuel=10) for twin in ALL_TWINS])
    assert got[:2] == ("raised", wasmtime.WasmtimeError) and got[4:] == (0, "setup")


@pytest.fixture
def ticker() -> Any:
    t = watchdog.Ticker([TICKING_ENGINE])
    yield t
    t.close()


@pytest.mark.parametrize("twin", TWINS)
def test_env_timeout_through_the_watchdog(twin: ModuleType, fds: Descriptors, ticker: watchdog.Ticker) -> None:
    pre = prepared(command_wasm("loop"), engine=TICKING_ENGINE)
    watch = watchdog.new_watch()
    try:
        watch.arm(0.05)
        got = env_run(twin, pre, fds, engine=TICKING_ENGINE, fuel=1 << 62, watch=watch)
    finally:
        watch.close()
    assert got[:2] == ("raised", wasmtime.WasmtimeError) and "execution stopped (timeout)" in got[2]
    assert got[4:] == (65536, "start") and watch.reason == "timeout"


@pytest.mark.parametrize("twin", TWINS)
def test_env_cancel_through_the_watchdog(twin: ModuleType, fds: Descriptors, ticker: watchdog.Ticker) -> None:
    started = threading.Event()
    pre = prepared(SPIN, twin, TICKING_ENGINE, host=(("started", ":", lambda mem: started.set()),))
    watch = watchdog.new_watch()
    watch.owner = "exec-1"
    result: list[tuple] = []
    try:
        watch.arm(60)
        thread = threading.Thread(target=lambda: result.append(
            env_run(twin, pre, fds, engine=TICKING_ENGINE, fuel=1 << 62, watch=watch)))
        thread.start()
        started.wait(120)  # a guard against hanging, not a timing assertion
        watch.cancel_for = "exec-2"  # another execution's cancel does not stop this one
        thread.join(0.1)
        assert thread.is_alive()
        watch.cancel_for = "exec-1"
        thread.join()
    finally:
        watch.close()
    assert result[0][:2] == ("raised", wasmtime.WasmtimeError) and "(cancelled)" in result[0][2]
    assert watch.reason == "cancelled"


@pytest.mark.parametrize("twin", TWINS)
def test_env_output_check_through_the_watchdog(twin: ModuleType, fds: Descriptors,
                                               ticker: watchdog.Ticker) -> None:
    pre = prepared(command_wasm("flood"), engine=TICKING_ENGINE)
    watch = watchdog.new_watch()
    try:
        watch.arm(60, lambda: os.fstat(fds.stdout_fd).st_size > 1 << 16)
        got = env_run(twin, pre, fds, engine=TICKING_ENGINE, fuel=1 << 62, watch=watch)
    finally:
        watch.close()
    assert got[:2] == ("raised", wasmtime.WasmtimeError) and "(output)" in got[2]


def test_env_setup_failures_and_bad_arguments(fds: Descriptors, tmp_path: Path) -> None:
    pre = prepared(command_wasm("echo"))
    missing = str(tmp_path / "no" / "such")
    results = [outcome(twin.run_command_env, ENGINE, pre, b"", fds.files.stdout, missing, fds.stdout_fd,
                       fds.stderr_fd, 10, 10, -1, None, 1, watchdog.CALLBACK_ADDRESS) for twin in ALL_TWINS]
    got = agree(results)
    assert got[:2] == ("raised", wasmtime.WasmtimeError) and got[4:] == (0, "setup")
    good = dict(engine=ENGINE, pre=pre, stdin=b"", stdout_path=fds.files.stdout, stderr_path=fds.files.stderr,
                stdout_fd=fds.stdout_fd, stderr_fd=fds.stderr_fd, max_stdout=10, max_stderr=10, memory_limit=-1,
                fuel=None, watch_key=1, deadline_callback=watchdog.CALLBACK_ADDRESS)
    for name, value in [("engine", None), ("pre", ENGINE), ("stdout_fd", -1), ("stderr_fd", "2"),
                        ("max_stdout", -1), ("max_stderr", 1.5), ("memory_limit", -2), ("fuel", -1),
                        ("watch_key", None), ("deadline_callback", 0), ("stdin", "text"), ("argv", "a")]:
        got = agree([outcome(twin.run_command_env, **{**good, name: value}) for twin in ALL_TWINS])
        assert got[1] in (TypeError, ValueError) and got[4:] == (0, "setup"), (name, got)


def test_env_a_closed_descriptor_is_an_os_error(files: Files) -> None:
    pre = prepared(command_wasm("echo"))
    d = Descriptors(files)
    d.close()
    got = agree([env_run(twin, pre, d) for twin in ALL_TWINS])
    assert got == ("raised", OSError, "[Errno 9] Bad file descriptor", None, 0, "start")


ENV_LEAK_CHECK = textwrap.dedent("""
    import importlib, os, sys, tempfile
    sys.path[:0] = [{root!r}, {tests!r}]
    import wasmtime
    from guests import command_wasm
    from engine.runtime import watchdog
    twin = importlib.import_module({module!r})

    def rss():
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    config = wasmtime.Config()
    config.consume_fuel = True
    config.epoch_interruption = True
    engine = wasmtime.Engine(config)
    linker = wasmtime.Linker(engine)
    linker.define_wasi()
    pres = [linker.instantiate_pre(wasmtime.Module(engine, command_wasm(k))) for k in ("echo", "exit3", "trap")]
    d = tempfile.mkdtemp()
    out, err, missing = os.path.join(d, "o"), os.path.join(d, "e"), os.path.join(d, "no", "o")
    out_fd = os.open(out, os.O_RDONLY | os.O_CREAT, 0o600)
    err_fd = os.open(err, os.O_RDONLY | os.O_CREAT, 0o600)
    stdin = b"x" * 8192
    argv = ["task"] + ["argument-" * 20] * 8
    env = [("NAME%d" % i, "value-" * 40) for i in range(8)]
    watch = watchdog.new_watch()
    watch.arm(600)

    def run(i):
        kind = i % 4
        try:
            code, o, e, big = twin.run_command_env(
                engine, pres[kind % 3], stdin, out, missing if kind == 3 else err, out_fd, err_fd, 4096, 4096,
                16 << 20, 1 << 30, watch.key, watchdog.CALLBACK_ADDRESS, argv, env)
            assert (code, len(o), big) == ((0, 4096, True), (3, 0, False))[kind], (code, len(o), big)
        except (wasmtime.Trap, wasmtime.WasmtimeError) as exc:
            assert (kind, exc.stage) in ((2, "start"), (3, "setup")), (i, exc)

    for i in range(2000):
        run(i)
    before = rss()
    for i in range({n}):
        run(i)
    print(rss() - before)
""")


@pytest.mark.skipif(not Path("/proc/self/statm").exists(), reason="reads RSS from /proc")
@pytest.mark.parametrize("twin", TWINS)
def test_twenty_thousand_environments_do_not_leak(twin: ModuleType) -> None:
    """Stores, outputs, errors and traps: anything left behind per execution
    (a store alone holds far more than 800 bytes) shows up here."""
    script = ENV_LEAK_CHECK.format(root=str(ROOT), tests=str(ROOT / "tests"), module=twin.__name__, n=20_000)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    growth = int(done.stdout.split()[-1])
    assert growth < 16 << 20, f"RSS grew by {growth / (1 << 20):.1f} MiB over 20,000 executions"
