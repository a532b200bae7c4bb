"""Prepared calls into wasm (fastpath "call"): both twins, against wasmtime-py
and against each other.

Every behaviour is checked as an *outcome* — the value, or the exception's
type, message, trap code and exit code — compared with what plain wasmtime-py
(``Func.__call__``, ``Linker.define_func``) does on a fresh instance of the
same module, so the twins agree with wasmtime-py and hence with each other.
"""
from __future__ import annotations

import ctypes
import functools
import gc
import importlib.metadata
import json
import threading
import time
import weakref
from types import ModuleType
from typing import Any, Callable, Optional

import pytest
import wasmtime
from twins import EXAMPLES, run_in_threads, twin_params
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import fastpath

TWINS = twin_params("call")
ALL_TWINS: list[ModuleType] = [p.values[0] for p in TWINS]

ENGINE = wasmtime.Engine()


def _engine(**options: Any) -> wasmtime.Engine:
    config = wasmtime.Config()
    for name, value in options.items():
        setattr(config, name, value)
    return wasmtime.Engine(config)


FUEL_ENGINE = _engine(consume_fuel=True)
EPOCH_ENGINE = _engine(epoch_interruption=True)
# No reservation, no guard, no headroom: every memory.grow moves the memory.
MOVING_ENGINE = _engine(memory_reservation=0, memory_guard_size=0, memory_reservation_for_growth=0)
I32, I64 = wasmtime.ValType.i32(), wasmtime.ValType.i64()


@functools.lru_cache(maxsize=None)
def compiled(engine: wasmtime.Engine, wat: str) -> wasmtime.Module:
    return wasmtime.Module(engine, wat)


def outcome(fn: Callable[..., Any], *args: Any) -> tuple:
    """What a call did: ("ok", value) or ("raised", type, message, trap code, exit code)."""
    try:
        return ("ok", fn(*args))
    except BaseException as exc:  # noqa: BLE001 - the exception is the result
        return ("raised", type(exc), str(exc), getattr(exc, "trap_code", None), getattr(exc, "code", None))


HostDef = tuple[str, str, Callable[..., Any]]  # name, "params:results", callback(mem, *ints)


def instantiate(wat: str, twin: Optional[ModuleType], host: tuple[HostDef, ...] = (),
                engine: wasmtime.Engine = ENGINE, wasi: bool = False) -> tuple[wasmtime.Store, wasmtime.Instance]:
    """A fresh store + instance; ``wasmyard.*`` imports come from the twin's
    ``define_host_func``, or from plain ``Linker.define_func`` when twin is None."""
    store = wasmtime.Store(engine)
    linker = wasmtime.Linker(engine)
    if wasi:
        store.set_wasi(wasmtime.WasiConfig())
        linker.define_wasi()
    for name, sig, callback in host:
        params, results = sig.split(":")
        if twin is not None:
            twin.define_host_func(linker, "wasmyard", name, params, results, callback)
        else:
            kinds = {"i": I32, "I": I64}
            ty = wasmtime.FuncType([kinds[c] for c in params], [kinds[c] for c in results])
            linker.define_func("wasmyard", name, ty, functools.partial(callback, None))
    return store, linker.instantiate(store, compiled(engine, wat))


def call(twin: Optional[ModuleType], store: wasmtime.Store, instance: wasmtime.Instance,
         name: str, *args: Any) -> tuple:
    """The outcome of calling export ``name`` through the twin, or through ``Func.__call__``."""
    if twin is None:
        func = instance.exports(store)[name]
        return outcome(func, store, *args)
    return outcome(twin.Export(store, instance, name), *args)


# ---- the version pin ------------------------------------------------------------


@pytest.mark.parametrize("twin", TWINS)
def test_written_for_the_installed_wasmtime_major(twin: ModuleType) -> None:
    assert twin.WASMTIME_MAJOR == 50
    assert int(importlib.metadata.version("wasmtime").split(".")[0]) == twin.WASMTIME_MAJOR
    twin.check_wasmtime_version()
    twin.check_wasmtime_version("50.7.1")


@pytest.mark.parametrize("twin", TWINS)
@pytest.mark.parametrize("version", ["51.0.0", "49.0.1", "5.0.0", "dev"])
def test_other_wasmtime_majors_are_refused(twin: ModuleType, version: str) -> None:
    with pytest.raises(RuntimeError) as info:
        twin.check_wasmtime_version(version)
    assert f"wasmtime {version} is installed" in str(info.value)
    assert "wasmtime>=50,<51" in str(info.value)


def test_package_exports_the_loaded_twin() -> None:
    loaded = ALL_TWINS[0]
    assert fastpath.Export is loaded.Export and fastpath.HandlerCall is loaded.HandlerCall
    assert fastpath.define_host_func is loaded.define_host_func


# ---- Export -----------------------------------------------------------------

CALLS = """
(module
  (memory (export "memory") 1)
  (global (export "g") i32 (i32.const 0))
  (func (export "nop"))
  (func (export "add") (param i32 i32) (result i32) (i32.add (local.get 0) (local.get 1)))
  (func (export "add64") (param i64 i64) (result i64) (i64.add (local.get 0) (local.get 1)))
  (func (export "mixed") (param i32 i64 i32) (result i64)
    (i64.add (i64.extend_i32_s (local.get 0)) (i64.mul (local.get 1) (i64.extend_i32_u (local.get 2)))))
  (func (export "sum10") (param i32 i32 i32 i32 i32 i32 i32 i32 i32 i32) (result i32)
    (i32.add (i32.add (i32.add (i32.add (i32.add (i32.add (i32.add (i32.add (i32.add
      (local.get 0) (local.get 1)) (local.get 2)) (local.get 3)) (local.get 4)) (local.get 5))
      (local.get 6)) (local.get 7)) (local.get 8)) (local.get 9)))
  (func (export "hi32") (param i64) (result i32) (i32.wrap_i64 (i64.shr_u (local.get 0) (i64.const 32))))
  (func (export "store") (param i32 i32) (i32.store (local.get 0) (local.get 1)))
  (func (export "load") (param i32) (result i32) (i32.load (local.get 0)))
  (func (export "grow") (param i32) (result i32) (memory.grow (local.get 0)))
  (func (export "f32") (param f32) (result f32) (local.get 0))
  (func (export "two") (result i32 i32) (i32.const 1) (i32.const 2))
  (func (export "unreachable") unreachable)
  (func (export "divzero") (param i32) (result i32) (i32.div_s (i32.const 1) (local.get 0)))
  (func (export "oob") (result i32) (i32.load (i32.const 0x7ffffff0)))
  (func (export "spin") (loop $l (br $l)))
)
"""

VALUE_CASES = [
    ("nop", ()),
    ("add", (2, 3)),
    ("add", (2**31 - 1, 1)),           # wraps to i32 min
    ("add", (-1, 2**32 + 7)),          # arguments are wrapped like wasmtime-py wraps them
    ("add", (True, 2**70)),
    ("add64", (2**63 - 1, 1)),
    ("add64", (-(2**63), -1)),
    ("mixed", (-5, 3, 2**32 - 1)),
    ("sum10", tuple(range(10))),
    ("hi32", (-1,)),
    ("hi32", (0x1234567800000000,)),
    ("load", (0,)),
    ("grow", (0,)),
]


@pytest.mark.parametrize("twin", TWINS)
@pytest.mark.parametrize(("name", "args"), VALUE_CASES)
def test_export_values_match_wasmtime_py(twin: ModuleType, name: str, args: tuple) -> None:
    expected = call(None, *instantiate(CALLS, None), name, *args)
    assert expected[0] == "ok"
    assert call(twin, *instantiate(CALLS, twin), name, *args) == expected


@pytest.mark.parametrize("twin", TWINS)
def test_export_is_reusable_and_sees_memory(twin: ModuleType) -> None:
    store, instance = instantiate(CALLS, twin)
    store_fn, load = twin.Export(store, instance, "store"), twin.Export(store, instance, "load")
    grow = twin.Export(store, instance, "grow")
    for i in range(100):
        assert store_fn(4 * i, i * 1000) is None
    assert [load(4 * i) for i in range(100)] == [i * 1000 for i in range(100)]
    assert grow(3) == 1 and grow(0) == 4


@pytest.mark.parametrize("twin", TWINS)
@pytest.mark.parametrize(("name", "args"), [
    ("add", (1,)), ("add", (1, 2, 3)), ("nop", (1,)),
    ("add", (1.5, 2)), ("add", ("1", 2)), ("add", (None, 2)), ("add64", (1, b"x")),
])
def test_export_argument_errors_match_wasmtime_py(twin: ModuleType, name: str, args: tuple) -> None:
    expected = call(None, *instantiate(CALLS, None), name, *args)
    assert expected[0] == "raised"
    assert call(twin, *instantiate(CALLS, twin), name, *args) == expected


@pytest.mark.parametrize("twin", TWINS)
@pytest.mark.parametrize(("name", "error", "message"), [
    ("missing", ValueError, "instance has no export named 'missing'"),
    ("memory", TypeError, "export 'memory' is a memory, not a function"),
    ("g", TypeError, "export 'g' is a global, not a function"),
    ("f32", TypeError, "export 'f32' has type (f32) -> (f32); a prepared call takes i32/i64 parameters and at most one i32/i64 result"),
    ("two", TypeError, "export 'two' has type () -> (i32, i32); a prepared call takes i32/i64 parameters and at most one i32/i64 result"),
])
def test_export_refuses_what_it_cannot_call(twin: ModuleType, name: str, error: type, message: str) -> None:
    store, instance = instantiate(CALLS, twin)
    with pytest.raises(error) as info:
        twin.Export(store, instance, name)
    assert str(info.value) == message


@pytest.mark.parametrize("twin", TWINS)
def test_export_checks_its_arguments(twin: ModuleType) -> None:
    store, instance = instantiate(CALLS, twin)
    with pytest.raises(TypeError, match="expected a wasmtime.Store"):
        twin.Export(object(), instance, "nop")
    with pytest.raises(TypeError, match="expected a wasmtime.Instance"):
        twin.Export(store, object(), "nop")
    with pytest.raises(TypeError, match="export name must be a str, got bytes"):
        twin.Export(store, instance, b"nop")
    with pytest.raises(TypeError, match="expected a wasmtime.Store"):
        twin.HandlerCall(None, instance)


@pytest.mark.parametrize("twin", TWINS)
def test_closed_store_raises_like_wasmtime_py(twin: ModuleType) -> None:
    store, instance = instantiate(CALLS, None)
    func = instance.exports(store)["add"]
    store.close()
    expected = outcome(func, store, 1, 2)
    store, instance = instantiate(CALLS, twin)
    add = twin.Export(store, instance, "add")
    store.close()
    assert outcome(add, 1, 2) == expected == ("raised", ValueError, "already closed", None, None)


# ---- traps and interruptions ----------------------------------------------------


def _prepared(kind: str, twin: Optional[ModuleType]) -> tuple[wasmtime.Store, wasmtime.Instance]:
    engine = {"plain": ENGINE, "fuel": FUEL_ENGINE, "epoch": EPOCH_ENGINE}[kind]
    store, instance = instantiate(CALLS, twin, engine=engine)
    if kind == "fuel":
        store.set_fuel(10_000)
    if kind == "epoch":
        store.set_epoch_deadline(1)
        engine.increment_epoch()
    return store, instance


TRAPS = [
    ("plain", "unreachable", (), wasmtime.TrapCode.UNREACHABLE),
    ("plain", "divzero", (0,), wasmtime.TrapCode.INTEGER_DIVISION_BY_ZERO),
    ("plain", "oob", (), wasmtime.TrapCode.MEMORY_OUT_OF_BOUNDS),
    ("fuel", "spin", (), wasmtime.TrapCode.OUT_OF_FUEL),
    ("epoch", "spin", (), wasmtime.TrapCode.INTERRUPT),
]


@pytest.mark.parametrize("twin", TWINS)
@pytest.mark.parametrize(("kind", "name", "args", "code"), TRAPS, ids=[t[1] + "-" + t[0] for t in TRAPS])
def test_traps_match_wasmtime_py(twin: ModuleType, kind: str, name: str, args: tuple,
                                 code: wasmtime.TrapCode) -> None:
    expected = call(None, *_prepared(kind, None), name, *args)
    assert expected[1] is wasmtime.Trap and expected[3] == code
    store, instance = _prepared(kind, twin)
    assert call(twin, store, instance, name, *args) == expected
    # Not resumable, but the store stays usable.
    if kind == "fuel":
        store.set_fuel(10_000)
    if kind == "epoch":
        store.set_epoch_deadline(1)
    assert call(twin, store, instance, "add", 20, 22) == ("ok", 42)


EXIT = """
(module
  (import "wasi_snapshot_preview1" "proc_exit" (func $exit (param i32)))
  (memory (export "memory") 1)
  (func (export "quit") (param i32) (call $exit (local.get 0)))
)
"""


@pytest.mark.parametrize("twin", TWINS)
@pytest.mark.parametrize("code", [0, 3, 255])
def test_wasi_exit_raises_exit_trap_like_wasmtime_py(twin: ModuleType, code: int) -> None:
    expected = call(None, *instantiate(EXIT, None, wasi=True), "quit", code)
    if code < 126:
        assert expected[1] is wasmtime.ExitTrap and expected[4] == code
    else:  # WASI has no such exit status: a plain WasmtimeError
        assert expected[1] is wasmtime.WasmtimeError
    assert call(twin, *instantiate(EXIT, twin, wasi=True), "quit", code) == expected


# ---- host functions ---------------------------------------------------------------

HOSTED = """
(module
  (import "wasmyard" "h" (func $h (param i32 i64) (result i64)))
  (import "wasmyard" "h32" (func $h32 (param i32) (result i32)))
  (import "wasmyard" "note" (func $note (param i32 i32 i32)))
  (memory (export "memory") 1)
  (data (i32.const 100) "hello")
  (func (export "call_h") (param i32 i64) (result i64) (call $h (local.get 0) (local.get 1)))
  (func (export "call_h32") (param i32) (result i32) (call $h32 (local.get 0)))
  (func (export "call_note") (param i32 i32 i32) (call $note (local.get 0) (local.get 1) (local.get 2)))
  (func (export "load") (param i32) (result i32) (i32.load (local.get 0)))
  (func (export "h32_loop") (param $n i32) (result i32) (local $acc i32)
    (block $done (loop $l
      (br_if $done (i32.eqz (local.get $n)))
      (local.set $acc (call $h32 (local.get $acc)))
      (local.set $n (i32.sub (local.get $n) (i32.const 1)))
      (br $l)))
    (local.get $acc))
)
"""
NOMEM = """
(module
  (import "wasmyard" "note" (func $note (param i32 i32 i32)))
  (func (export "call_note") (param i32 i32 i32) (call $note (local.get 0) (local.get 1) (local.get 2)))
)
"""


def _hosted(twin: Optional[ModuleType], h: Callable[..., Any] = lambda mem, a, b: a + b,
            h32: Callable[..., Any] = lambda mem, a: a + 1,
            note: Callable[..., Any] = lambda mem, *a: None, wat: str = HOSTED):
    defs = (("h", "iI:I", h), ("h32", "i:i", h32), ("note", "iii:", note))
    return instantiate(wat, twin, tuple(d for d in defs if f'"{d[0]}"' in wat))


class Boom(Exception):
    pass


class Halt(BaseException):
    pass


def _raise(exc: BaseException) -> Callable[..., Any]:
    def callback(mem: Any, *args: int) -> None:
        raise exc
    return callback


HOST_CASES = {
    "values": ("call_h", (-7, 2**40), dict(h=lambda mem, a, b: a * b)),
    "i32-result-wraps": ("call_h32", (1,), dict(h32=lambda mem, a: 2**40 + 5)),
    "i64-result-wraps": ("call_h", (1, 1), dict(h=lambda mem, a, b: -(2**64) - 2)),
    "negative-params": ("call_h", (-1, -(2**63)), dict(h=lambda mem, a, b: a ^ b)),
    "bool-result": ("call_h32", (1,), dict(h32=lambda mem, a: True)),
    "raises": ("call_h32", (1,), dict(h32=_raise(Boom("boom 7")))),
    "raises-value-error": ("call_h", (1, 2), dict(h=_raise(ValueError("bad reading")))),
    "raises-base-exception": ("call_h32", (1,), dict(h32=_raise(Halt("stop")))),
    "result-of-wrong-type": ("call_h32", (1,), dict(h32=lambda mem, a: "x")),
    "missing-result": ("call_h", (1, 2), dict(h=lambda mem, a, b: None)),
    "float-result": ("call_h", (1, 2), dict(h=lambda mem, a, b: 1.5)),
    "unexpected-result": ("call_note", (1, 2, 3), dict(note=lambda mem, *a: 5)),
    "many-calls": ("h32_loop", (1000,), {}),
}


@pytest.mark.parametrize("twin", TWINS)
@pytest.mark.parametrize("case", HOST_CASES)
def test_host_funcs_match_define_func(twin: ModuleType, case: str) -> None:
    name, args, callbacks = HOST_CASES[case]
    expected = call(None, *_hosted(None, **callbacks), name, *args)
    got = call(twin, *_hosted(twin, **callbacks), name, *args)
    assert got == expected
    assert wasmtime._func.LAST_EXCEPTION is None  # consumed by the call that entered wasm


@pytest.mark.parametrize("twin", TWINS)
def test_host_exception_surfaces_through_plain_func_call(twin: ModuleType) -> None:
    store, instance = _hosted(twin, h32=_raise(Boom("under Func.__call__")))
    func = instance.exports(store)["call_h32"]
    assert outcome(func, store, 1)[:3] == ("raised", Boom, "under Func.__call__")


@pytest.mark.parametrize("twin", TWINS)
def test_define_func_exception_surfaces_through_export(twin: ModuleType) -> None:
    store, instance = _hosted(None, h32=_raise(Boom("under Export")))
    assert call(twin, store, instance, "call_h32", 1)[:3] == ("raised", Boom, "under Export")


@pytest.mark.parametrize("twin", TWINS)
def test_caller_memory_reads_and_writes(twin: ModuleType) -> None:
    seen = []

    def note(mem: Any, ptr: int, length: int, where: int) -> None:
        seen.append((mem.read(ptr, length), mem.size(), mem.read(0, 0)))
        mem.write(where, b"\x01\x02\x03\x04")
        mem.write(where + 4, bytearray(b"\x05"))
        mem.write(where + 5, memoryview(b"\x06\x07"))
        mem.write(65536, b"")

    store, instance = _hosted(twin, note=note)
    assert call(twin, store, instance, "call_note", 100, 5, 200) == ("ok", None)
    assert seen == [(b"hello", 65536, b"")]
    assert call(twin, store, instance, "load", 200) == ("ok", 0x04030201)
    assert call(twin, store, instance, "load", 204) == ("ok", 0x00070605)


@pytest.mark.parametrize("twin", TWINS)
@pytest.mark.parametrize(("access", "error", "message"), [
    (lambda mem: mem.read(65530, 10), ValueError, "out-of-bounds memory access: ptr=65530 len=10 memory size=65536"),
    (lambda mem: mem.read(-1, 1), ValueError, "out-of-bounds memory access: ptr=-1 len=1 memory size=65536"),
    (lambda mem: mem.read(0, -1), ValueError, "out-of-bounds memory access: ptr=0 len=-1 memory size=65536"),
    (lambda mem: mem.read(2**64, 1), ValueError, f"out-of-bounds memory access: ptr={2**64} len=1 memory size=65536"),
    (lambda mem: mem.write(65535, b"ab"), ValueError, "out-of-bounds memory access: ptr=65535 len=2 memory size=65536"),
    (lambda mem: mem.write(-2, b"ab"), ValueError, "out-of-bounds memory access: ptr=-2 len=2 memory size=65536"),
    (lambda mem: mem.write(0, "text"), TypeError, "expected bytes-like data, got str"),
    (lambda mem: mem.read("0", 1), TypeError, "'str' object cannot be interpreted as an integer"),
])
def test_caller_memory_refuses_bad_access(twin: ModuleType, access: Callable[[Any], Any], error: type,
                                          message: str) -> None:
    store, instance = _hosted(twin, note=lambda mem, *a: access(mem))
    assert call(twin, store, instance, "call_note", 0, 0, 0) == ("raised", error, message, None, None)


@pytest.mark.parametrize("twin", TWINS)
def test_caller_memory_is_only_valid_during_the_call(twin: ModuleType) -> None:
    kept: list[Any] = []
    store, instance = _hosted(twin, note=lambda mem, *a: kept.append(mem))
    assert call(twin, store, instance, "call_note", 0, 0, 0) == ("ok", None)
    for use in (lambda m: m.read(0, 1), lambda m: m.write(0, b"x"), lambda m: m.size()):
        with pytest.raises(ValueError, match="CallerMemory used after its host call returned"):
            use(kept[0])


@pytest.mark.parametrize("twin", TWINS)
def test_caller_without_memory(twin: ModuleType) -> None:
    store, instance = _hosted(twin, note=lambda mem, *a: mem.read(0, 0), wat=NOMEM)
    assert call(twin, store, instance, "call_note", 0, 0, 0) == (
        "raised", ValueError, "the calling instance exports no memory named 'memory'", None, None)


@pytest.mark.parametrize("twin", TWINS)
def test_host_func_can_reenter_the_same_instance(twin: ModuleType) -> None:
    inner: list[Any] = []

    def h32(mem: Any, depth: int) -> int:
        return depth if depth >= 3 else inner[0](depth + 1) * 10 + depth

    store, instance = _hosted(twin, h32=h32)
    inner.append(twin.Export(store, instance, "call_h32"))
    try:
        assert inner[0](0) == 3210
        assert call(twin, store, instance, "call_h32", 1) == ("ok", 321)
    finally:
        inner.clear()  # the callback must not keep the Store alive


@pytest.mark.parametrize("twin", TWINS)
def test_host_callback_is_released_with_linker_and_store(twin: ModuleType) -> None:
    class Callback:
        def __call__(self, mem: Any, a: int) -> int:
            return a + 1

    callback = Callback()
    ref = weakref.ref(callback)
    store, instance = _hosted(twin, h32=callback)
    assert call(twin, store, instance, "call_h32", 1) == ("ok", 2)
    del callback, store, instance
    gc.collect()
    assert ref() is None


@pytest.mark.parametrize("twin", TWINS)
@pytest.mark.parametrize(("params", "results", "callback", "error", "message"), [
    ("ix", "", len, ValueError, "unknown type code 'x' in params 'ix'; use 'i' (i32) or 'I' (i64)"),
    ("i", "f", len, ValueError, "unknown type code 'f' in results 'f'; use 'i' (i32) or 'I' (i64)"),
    ("i", "ii", len, ValueError, "a host function returns at most one result, got results 'ii'"),
    (["i"], "", len, TypeError, "params must be a str of type codes, got list"),
    ("i", "", 42, TypeError, "callback must be callable, got int"),
])
def test_define_host_func_checks_its_arguments(twin: ModuleType, params: Any, results: Any,
                                               callback: Any, error: type, message: str) -> None:
    linker = wasmtime.Linker(ENGINE)
    with pytest.raises(error) as info:
        twin.define_host_func(linker, "wasmyard", "f", params, results, callback)
    assert str(info.value) == message
    with pytest.raises(TypeError, match="expected a wasmtime.Linker"):
        twin.define_host_func(object(), "wasmyard", "f", "", "", len)


@pytest.mark.parametrize("twin", TWINS)
def test_duplicate_definition_fails_like_define_func(twin: ModuleType) -> None:
    linker = wasmtime.Linker(ENGINE)
    linker.define_func("wasmyard", "f", wasmtime.FuncType([I32], []), lambda a: None)
    expected = outcome(linker.define_func, "wasmyard", "f", wasmtime.FuncType([I32], []), lambda a: None)
    assert expected[1] is wasmtime.WasmtimeError
    assert outcome(twin.define_host_func, linker, "wasmyard", "f", "i", "", lambda mem, a: None) == expected


# ---- the GIL ------------------------------------------------------------------------

SPIN = """
(module
  (memory (export "memory") 1)
  (func (export "spin") (i32.store (i32.const 0) (i32.const 1)) (loop $l (br $l)))
)
"""


@pytest.mark.parametrize("twin", TWINS)
def test_wasm_runs_without_the_gil(twin: ModuleType) -> None:
    """The main thread interrupts a spinning guest through the epoch, which it
    can only do while the guest runs if the call released the GIL; if it did
    not, the guest runs until its fuel is gone and the trap code says so."""
    engine = _engine(epoch_interruption=True, consume_fuel=True)
    store, instance = instantiate(SPIN, twin, engine=engine)
    store.set_fuel(5_000_000_000)
    store.set_epoch_deadline(1)
    memory = instance.exports(store)["memory"]
    flag = ctypes.c_int32.from_address(ctypes.addressof(memory.data_ptr(store).contents))
    spin = twin.Export(store, instance, "spin")
    result: list[tuple] = []
    thread = threading.Thread(target=lambda: result.append(outcome(spin)))
    thread.start()
    give_up = time.monotonic() + 120  # a guard against hanging, not a timing assertion
    while flag.value == 0 and thread.is_alive() and time.monotonic() < give_up:
        time.sleep(0.001)
    engine.increment_epoch()
    thread.join()
    assert result[0][1] is wasmtime.Trap
    assert result[0][3] == wasmtime.TrapCode.INTERRUPT


# ---- HandlerCall ----------------------------------------------------------------------

HANDLER = """
(module
  (import "wasmyard" "log" (func $log (param i32 i32 i32)))
  (memory (export "memory") 1)
  (global $heap (mut i32) (i32.const 1024))
  (func (export "wy_abi_version") (result i32) (i32.const VERSION))
  ;; make [at, at + n) addressable; 0 when memory cannot grow
  (func $reserve (param $at i32) (param $n i32) (result i32)
    (local $need i32)
    (local.set $need
      (i32.sub
        (i32.wrap_i64 (i64.shr_u
          (i64.add (i64.add (i64.extend_i32_u (local.get $at)) (i64.extend_i32_u (local.get $n))) (i64.const 65535))
          (i64.const 16)))
        (memory.size)))
    (if (i32.gt_s (local.get $need) (i32.const 0))
      (then (if (i32.eq (memory.grow (local.get $need)) (i32.const -1)) (then (return (i32.const 0))))))
    (local.get $at))
  (func (export "wy_alloc") (param $n i32) (result i32)
    (global.set $heap (i32.add (i32.const 1024) (local.get $n)))
    ALLOC)
  (func $ok (param $p i32) (param $n i32) (result i64)
    (i64.or (i64.shl (i64.extend_i32_u (local.get $p)) (i64.const 32)) (i64.extend_i32_u (local.get $n))))
  (func $err (param $p i32) (param $n i32) (result i64)
    (i64.or (i64.const 0x8000000000000000) (call $ok (local.get $p) (local.get $n))))
  ;; output = the input reversed, ASCII upper-cased; a first byte of
  ;; '!' fails with the rest as message, '#' traps, '?' / '@' point the
  ;; output / message past the end of memory, '%' logs the input first
  (func (export "wy_handle") (param $p i32) (param $n i32) (result i64)
    (local $out i32) (local $i i32) (local $c i32) (local $first i32)
    (if (local.get $n) (then (local.set $first (i32.load8_u (local.get $p)))))
    (if (i32.eq (local.get $first) (i32.const 33))
      (then (return (call $err (i32.add (local.get $p) (i32.const 1)) (i32.sub (local.get $n) (i32.const 1))))))
    (if (i32.eq (local.get $first) (i32.const 35)) (then unreachable))
    (if (i32.eq (local.get $first) (i32.const 63)) (then (return (call $ok (i32.const 0x7fff0000) (local.get $n)))))
    (if (i32.eq (local.get $first) (i32.const 64)) (then (return (call $err (i32.const 0x7fff0000) (local.get $n)))))
    (if (i32.eq (local.get $first) (i32.const 37)) (then (call $log (i32.const 1) (local.get $p) (local.get $n))))
    (local.set $out OUT)
    (block $done (loop $l
      (br_if $done (i32.ge_u (local.get $i) (local.get $n)))
      (local.set $c (i32.load8_u (i32.sub (i32.add (local.get $p) (local.get $n)) (i32.add (local.get $i) (i32.const 1)))))
      (if (i32.and (i32.ge_u (local.get $c) (i32.const 97)) (i32.le_u (local.get $c) (i32.const 122)))
        (then (local.set $c (i32.sub (local.get $c) (i32.const 32)))))
      (i32.store8 (i32.add (local.get $out) (local.get $i)) (local.get $c))
      (local.set $i (i32.add (local.get $i) (i32.const 1)))
      (br $l)))
    (call $ok (local.get $out) (local.get $n)))
)
"""
DEFAULTS = {
    "VERSION": "1",
    "ALLOC": "(call $reserve (i32.const 1024) (local.get $n))",
    # the output right after the input, in the same arena
    "OUT": "(call $reserve (global.get $heap) (local.get $n))",
}
# the output in pages grown during the call: the memory moves under MOVING_ENGINE
GROWING = {"OUT": "(i32.mul (memory.grow (i32.add (i32.const 1) (i32.shr_u (local.get $n) (i32.const 16)))) "
                  "(i32.const 65536))"}


def handler_wat(**changes: str) -> str:
    wat = HANDLER
    for key, value in {**DEFAULTS, **changes}.items():
        wat = wat.replace(key, value)
    return wat


def make_handler(twin: ModuleType, wat: str, engine: wasmtime.Engine = ENGINE, logs: Optional[list] = None,
                 fuel: Optional[int] = None) -> tuple[Any, wasmtime.Store, wasmtime.Instance]:
    sink = [] if logs is None else logs
    store, instance = instantiate(
        wat, twin, (("log", "iii:", lambda mem, level, ptr, n: sink.append((level, mem.read(ptr, n)))),),
        engine=engine)
    if fuel is not None:
        store.set_fuel(fuel)
    return twin.HandlerCall(store, instance), store, instance


def expected_reply(data: bytes) -> Optional[tuple[bool, bytes]]:
    """What the handler answers, or None where the host must raise."""
    first = data[:1]
    if first == b"!":
        return False, data[1:]
    if first in (b"#", b"?", b"@"):
        return None
    return True, data[::-1].upper()


@functools.lru_cache(maxsize=None)
def pooled(twin: ModuleType, variant: str) -> tuple[Any, list]:
    """One handler instance per twin and variant, reused like a pooled instance."""
    logs: list = []
    wat, engine = {"arena": (handler_wat(), ENGINE), "growing": (handler_wat(**GROWING), MOVING_ENGINE)}[variant]
    return make_handler(twin, wat, engine, logs)[0], logs


payloads = st.one_of(
    st.binary(max_size=65536),
    st.tuples(st.sampled_from(b"!#?@%a"), st.binary(max_size=2048)).map(lambda t: bytes([t[0]]) + t[1]),
    st.tuples(st.binary(min_size=1, max_size=16), st.integers(0, 65536)).map(
        lambda t: (t[0] * (t[1] // len(t[0]) + 1))[: t[1]]),
    st.sampled_from([b"", b"!", bytes(65536), b"%" * 65536]),
)


@pytest.mark.parametrize("variant", ["arena", "growing"])
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=payloads)
def test_handler_twins_agree_on_random_input(variant: str, data: bytes) -> None:
    results = []
    for twin in ALL_TWINS:
        handler, logs = pooled(twin, variant)
        del logs[:]
        results.append((outcome(handler.invoke, data), list(logs), handler.memory_size()))
    assert all(r == results[0] for r in results), results
    got, logs, _ = results[0]
    reply = expected_reply(data)
    if reply is not None:
        assert got == ("ok", reply)
    elif data[:1] == b"#":
        assert got[1] is wasmtime.Trap and got[3] == wasmtime.TrapCode.UNREACHABLE
    else:
        what = "output" if data[:1] == b"?" else "error message"
        assert got[:2] == ("raised", ValueError)
        assert got[2].startswith(f"handler returned an out-of-bounds {what}: ptr=2147418112 len={len(data)}")
    assert logs == ([(1, data)] if data[:1] == b"%" else [])


@pytest.mark.parametrize("twin", TWINS)
def test_handler_output_after_the_memory_moved(twin: ModuleType) -> None:
    handler, store, instance = make_handler(twin, handler_wat(**GROWING), MOVING_ENGINE)
    memory = instance.exports(store)["memory"]
    data = bytes(range(256)) * 300
    base = ctypes.addressof(memory.data_ptr(store).contents)
    before = handler.memory_size()
    assert handler.invoke(data) == (True, data[::-1].upper())
    # wy_alloc grew to 2 pages for the input; the call grew 2 more for the output
    assert handler.memory_size() == memory.data_len(store) == 4 * 65536 > before
    assert ctypes.addressof(memory.data_ptr(store).contents) != base, "the memory did not move"
    assert handler.invoke(b"abc") == (True, b"CBA")


@pytest.mark.parametrize("twin", TWINS)
def test_handler_accepts_bytes_like_input(twin: ModuleType) -> None:
    handler = make_handler(twin, handler_wat())[0]
    assert handler.invoke(bytearray(b"abc")) == (True, b"CBA")
    assert handler.invoke(memoryview(b"xabcx")[1:4]) == (True, b"CBA")
    assert handler.invoke(b"") == (True, b"")
    with pytest.raises(TypeError, match="expected bytes-like data, got str"):
        handler.invoke("abc")


@pytest.mark.parametrize("twin", TWINS)
@pytest.mark.parametrize(("changes", "message"), [
    ({"ALLOC": "(i32.const 0)"}, "wy_alloc could not allocate 3 bytes"),
    ({"ALLOC": "(i32.const -16)"}, "wy_alloc returned an out-of-bounds pointer: ptr=4294967280 len=3 memory size=65536"),
    ({"ALLOC": "(i32.const 65534)"}, "wy_alloc returned an out-of-bounds pointer: ptr=65534 len=3 memory size=65536"),
])
def test_handler_refuses_a_bad_allocation(twin: ModuleType, changes: dict, message: str) -> None:
    handler = make_handler(twin, handler_wat(**changes))[0]
    assert outcome(handler.invoke, b"abc") == ("raised", ValueError, message, None, None)
    # Empty input still starts an execution with wy_alloc, but needs no room.
    if changes["ALLOC"] == "(i32.const 0)":
        assert handler.invoke(b"") == (True, b"")


@pytest.mark.parametrize("twin", TWINS)
@pytest.mark.parametrize(("wat", "message"), [
    (handler_wat(VERSION="2"), "handler speaks ABI version 2, this host speaks version 1"),
    (handler_wat().replace('(export "wy_abi_version")', ""), "handler does not export 'wy_abi_version' (handler ABI v1)"),
    (handler_wat().replace('(memory (export "memory") 1)', "(memory 1)"), "handler does not export 'memory' (handler ABI v1)"),
    (handler_wat().replace('(export "wy_alloc")', ""), "handler does not export 'wy_alloc' (handler ABI v1)"),
    (handler_wat().replace('(export "wy_handle")', ""), "handler does not export 'wy_handle' (handler ABI v1)"),
    (handler_wat().replace('(memory (export "memory") 1)', '(memory 1) (global (export "memory") i32 (i32.const 0))'),
     "handler export 'memory' is a global, not a memory"),
    (handler_wat().replace('(func (export "wy_alloc") (param $n i32)', '(func (export "wy_alloc") (param $n i32) (param i32)'),
     "handler export 'wy_alloc' has type (i32, i32) -> (i32), expected (i32) -> (i32)"),
    (handler_wat().replace('(export "wy_handle")', "").replace("(global $heap", '(memory $m2 1) (export "wy_handle" (memory $m2)) (global $heap'),
     None),
])
def test_handler_abi_is_checked(twin: ModuleType, wat: str, message: Optional[str]) -> None:
    store, instance = instantiate(wat, twin, (("log", "iii:", lambda mem, *a: None),),
                                  engine=_engine(wasm_multi_memory=True) if message is None else ENGINE)
    with pytest.raises(ValueError) as info:
        twin.HandlerCall(store, instance)
    assert str(info.value) == (message or "handler export 'wy_handle' is a memory, not a function")


@pytest.mark.parametrize("twin", TWINS)
def test_handler_traps_and_closed_store(twin: ModuleType) -> None:
    handler, store, _ = make_handler(twin, handler_wat())
    got = outcome(handler.invoke, b"#")
    assert got[1] is wasmtime.Trap and got[3] == wasmtime.TrapCode.UNREACHABLE
    assert handler.invoke(b"ok") == (True, b"KO")
    store.close()
    assert outcome(handler.invoke, b"x") == ("raised", ValueError, "already closed", None, None)
    assert outcome(handler.invoke, b"") == ("raised", ValueError, "already closed", None, None)
    assert outcome(handler.memory_size) == ("raised", ValueError, "already closed", None, None)


@pytest.mark.parametrize("twin", TWINS)
def test_handler_fuel_runs_out_like_wasmtime_py(twin: ModuleType) -> None:
    handler, store, _ = make_handler(twin, handler_wat(), FUEL_ENGINE, fuel=100_000)
    assert handler.invoke(b"abc") == (True, b"CBA")
    got = outcome(handler.invoke, b"a" * 60_000)
    assert got[1] is wasmtime.Trap and got[3] == wasmtime.TrapCode.OUT_OF_FUEL
    store.set_fuel(100_000)
    assert handler.invoke(b"abc") == (True, b"CBA")


# ---- threads: a host exception is raised on its own thread ------------------------------

# Each thread's calls, in turn: an import that raises (through an Export, and
# through a HandlerCall's log), a genuine trap (an out-of-bounds load), and a
# call that succeeds.
THREAD_CALLS = ("export", "trap", "handler", "ok")


def _lost_trap(twin: ModuleType) -> Optional[str]:
    """The pure twin's message for a trap wasmtime-py dropped (see ``_call_py``); None in the compiled one."""
    return getattr(twin, "_LOST_TRAP", None) if twin.__name__.endswith("_py") else None


@pytest.mark.parametrize("twin", TWINS)
@pytest.mark.parametrize("threads", [2, 4])
def test_concurrent_host_exceptions_stay_on_their_threads(twin: ModuleType, threads: int) -> None:
    """Threads call into stores of their own whose host imports raise an
    exception naming the thread and the call: every call raises its own, and
    a trap or a success in between is never replaced by another thread's
    exception (wasmtime-py's process-wide slot is shared by all of them)."""
    rounds = 400
    barrier = threading.Barrier(threads)
    failures: list[Any] = []
    oob = call(twin, *_hosted(twin), "load", 70000)
    assert oob[1] is wasmtime.Trap and oob[3] == wasmtime.TrapCode.MEMORY_OUT_OF_BOUNDS

    def worker(k: int) -> None:
        current = [0]

        def refuse(mem: Any, *args: int) -> None:
            raise Boom(f"thread {k} call {current[0]}")

        store, instance = _hosted(twin, h32=refuse)
        export, load = twin.Export(store, instance, "call_h32"), twin.Export(store, instance, "load")
        handler = twin.HandlerCall(*instantiate(handler_wat(), twin, (("log", "iii:", refuse),)))
        barrier.wait()
        for i in range(rounds):
            current[0] = i
            kind = THREAD_CALLS[i % len(THREAD_CALLS)]
            if kind == "export":
                got, expected = outcome(export, 1), ("raised", Boom, f"thread {k} call {i}", None, None)
            elif kind == "handler":
                got, expected = outcome(handler.invoke, b"%log"), ("raised", Boom, f"thread {k} call {i}", None, None)
            elif kind == "trap":
                got, expected = outcome(load, 70000), oob
                if got[:3] == ("raised", wasmtime.Trap, _lost_trap(twin)):
                    continue  # the documented case of the pure twin: its trap dropped, no other exception
            else:
                got, expected = outcome(handler.invoke, b"fine"), ("ok", (True, b"ENIF"))
            if got != expected:
                failures.append((k, i, got))

    run_in_threads(worker, threads)
    assert failures == []
    assert wasmtime._func.LAST_EXCEPTION is None


@pytest.mark.parametrize("twin", TWINS)
def test_a_stale_host_exception_is_not_raised_later(twin: ModuleType) -> None:
    """An exception raised under wasmtime-py's own ``Func.__call__`` is raised
    there; it is not raised again by this thread's next failing call (a trap),
    nor by a nested call the callback handled."""
    store, instance = _hosted(twin, h32=_raise(Boom("under Func.__call__")))
    assert outcome(instance.exports(store)["call_h32"], store, 1)[:3] == ("raised", Boom, "under Func.__call__")
    assert call(twin, store, instance, "load", 70000)[1] is wasmtime.Trap

    inner_store, inner = _hosted(twin, h32=_raise(Boom("inner")))
    inner_call = inner.exports(inner_store)["call_h32"]

    def swallow(mem: Any, a: int) -> int:
        try:
            inner_call(inner_store, 1)  # wasmtime-py's own call: it raises Boom("inner") here
        except Boom:
            return a
        return -1

    outer_store, outer = _hosted(twin, h32=swallow)
    assert call(twin, outer_store, outer, "call_h32", 5) == ("ok", 5)
    assert call(twin, outer_store, outer, "load", 70000)[1] is wasmtime.Trap
    assert wasmtime._func.LAST_EXCEPTION is None


@pytest.mark.parametrize("twin", TWINS)
def test_an_exception_another_thread_parked_is_not_raised_here(twin: ModuleType) -> None:
    """wasmtime-py's slot holds an exception another thread's host import
    parked (that thread has not taken it yet) when a call here traps: the call
    raises its own trap.  The compiled twin leaves the exception in the slot;
    the pure one cannot stop wasmtime-py from taking it (and dropping the
    trap), so it raises ``Trap(_LOST_TRAP)``; the owner's parked copy is
    untouched either way."""
    parked = Boom("another thread's")
    other = threading.Thread(target=lambda: None)
    other.start()
    other.join()
    shared = importlib.import_module("fastpath._call_py")._PARKED
    shared[other.ident] = (parked, None)
    wasmtime._func.LAST_EXCEPTION = parked
    try:
        got = call(twin, *_hosted(twin), "load", 70000)
        if twin.__name__.endswith("_py"):
            assert got[:4] == ("raised", wasmtime.Trap, twin._LOST_TRAP, None)
        else:
            assert got[1] is wasmtime.Trap and got[3] == wasmtime.TrapCode.MEMORY_OUT_OF_BOUNDS
            assert wasmtime._func.LAST_EXCEPTION is parked
        assert shared[other.ident] == (parked, None) and parked.__context__ is None
    finally:
        wasmtime._func.LAST_EXCEPTION = None
        shared.pop(other.ident, None)

# ---- the example tasks ------------------------------------------------------------------

TASK_INPUTS = {
    "telemetry": [
        b'{"device":"t-17","celsius":21.5}', b'{"device":"t-17","fahrenheit":70.7}', b'{"fahrenheit":100}',
        b"", b"{not json", b"21.5", b'{"celsius":-300}', b'{"celsius":"21.5"}',
        json.dumps({"device": "hall \"B\" \u00fc", "celsius": 1e9}).encode(),
        json.dumps({"celsius": 20.0, "pad": "x" * 300_000}).encode(),
    ] + [json.dumps({"device": f"d{i}", "celsius": i * 1.25 - 40}).encode() for i in range(50)],
    "anomaly": [json.dumps({"value": 20 + (i % 5) * 0.05}).encode() for i in range(20)] + [
        b'{"value": 35.0}', b'{"celsius": 20.0}', b"", b"[1,2]", b'{"value": "1"}', b'{"value": 1e999}',
        b"[" * 100 + b"]" * 100, json.dumps({"value": 20.0, "pad": "y" * 200_000}).encode(),
    ] + [json.dumps({"celsius": 50 + (40 if i % 17 == 0 else (i % 7) - 3)}).encode() for i in range(60)],
}


def _task_instance(name: str, twin: Optional[ModuleType]) -> tuple[Callable[[bytes], tuple[bool, bytes]], list]:
    module = wasmtime.Module.from_file(ENGINE, str(EXAMPLES / name / f"{name}.wasm"))
    logs: list = []

    def log(mem: Any, level: int, ptr: int, length: int) -> None:
        logs.append((level, mem.read(ptr, length) if mem is not None else None))

    store = wasmtime.Store(ENGINE)
    store.set_wasi(wasmtime.WasiConfig())
    linker = wasmtime.Linker(ENGINE)
    linker.define_wasi()
    if twin is not None:
        twin.define_host_func(linker, "wasmyard", "log", "iii", "", log)
        instance = linker.instantiate(store, module)
        if "_initialize" in instance.exports(store):
            twin.Export(store, instance, "_initialize")()
        return twin.HandlerCall(store, instance).invoke, logs

    # The reference: the contract spelled out with plain wasmtime-py.
    def raw_log(caller: wasmtime.Caller, level: int, ptr: int, length: int) -> None:
        memory = caller["memory"]
        logs.append((level, bytes(memory.read(caller, ptr, ptr + length))))

    linker.define_func("wasmyard", "log", wasmtime.FuncType([I32, I32, I32], []), raw_log, access_caller=True)
    instance = linker.instantiate(store, module)
    exports = instance.exports(store)
    if "_initialize" in exports:
        exports["_initialize"](store)
    memory = exports["memory"]

    def invoke(data: bytes) -> tuple[bool, bytes]:
        ptr = exports["wy_alloc"](store, len(data))
        memory.write(store, data, ptr)
        r = exports["wy_handle"](store, ptr, len(data))
        start, length = (r >> 32) & 0x7FFFFFFF, r & 0xFFFFFFFF
        return r >= 0, bytes(memory.read(store, start, start + length))

    return invoke, logs


@pytest.mark.parametrize("name", sorted(TASK_INPUTS))
def test_example_handlers_give_identical_results(name: str) -> None:
    if not (EXAMPLES / name / f"{name}.wasm").is_file():
        pytest.skip(f"wasm_tasks/{name}/{name}.wasm is not built")
    runs = []
    for twin in [None, *ALL_TWINS]:
        invoke, logs = _task_instance(name, twin)
        runs.append(([outcome(invoke, data) for data in TASK_INPUTS[name]], logs))
    for run in runs[1:]:
        assert run == runs[0]
    replies = runs[0][0]
    assert all(r[0] == "ok" for r in replies)
    assert any(r[1][0] for r in replies) and any(not r[1][0] for r in replies)
    if name == "telemetry":
        assert replies[0] == ("ok", (True, b'{"device":"t-17","celsius":21.5,"fahrenheit":70.7,"kelvin":294.65}'))
    else:
        assert runs[0][1], "the outlier should have been logged"
