"""Cancelling a running guest from another thread, and late cancels that must miss.

Each guest here would run until a long time limit; a test that ends with
``ExecutionCancelled`` therefore proves the cancel, not the clock, stopped it.
"""
from __future__ import annotations

import threading
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor

import pytest
import wasmtime
from guests import command_wasm, handler_wasm

from engine.errors import ExecutionCancelled, TaskTimedOut
from engine.manifest import parse_manifest
from engine.runtime import HandlerInstance, Outcome, WasmRuntime, Watch, run_command
from engine.runtime.host import Sink

LONG_MS = 20_000

# Loops while the input is non-empty; echoes an empty input at once.
LOOP_IF_INPUT = """
(module
  (memory (export "memory") 1)
  (func (export "wy_abi_version") (result i32) (i32.const 1))
  (func (export "wy_alloc") (param i32) (result i32) (i32.const 1024))
  (func (export "wy_handle") (param $p i32) (param $n i32) (result i64)
    (if (local.get $n) (then (loop $l (br $l))))
    (i64.const 0)))
"""


@pytest.fixture(scope="module")
def pool() -> Iterator[ThreadPoolExecutor]:
    with ThreadPoolExecutor(2) as executor:
        yield executor


def handler(rt: WasmRuntime, wasm: bytes, timeout_ms: int = LONG_MS) -> HandlerInstance:
    manifest = parse_manifest({"name": "h", "kind": "handler", "limits": {"timeout_ms": timeout_ms}})
    return HandlerInstance(rt.compile(manifest, wasm))


def test_cancel_a_running_handler(rt: WasmRuntime, pool: ThreadPoolExecutor) -> None:
    inst = handler(rt, handler_wasm("loop"))
    try:
        inst.watch.owner = "ex-1"
        future = pool.submit(inst.invoke, b"x", Sink())
        with pytest.raises(TimeoutError):
            future.result(timeout=0.05)  # it is running, and keeps running
        inst.watch.cancel_for = "ex-1"
        out = future.result(timeout=5)
        assert type(out.error) is ExecutionCancelled
        assert out.error.message == "execution of task 'h' was cancelled while running"
        assert (out.error.code, out.error.status) == ("cancelled", 409)
    finally:
        inst.close()


def test_cancel_a_running_command(rt: WasmRuntime, pool: ThreadPoolExecutor) -> None:
    manifest = parse_manifest({"name": "c", "kind": "command", "limits": {"timeout_ms": LONG_MS}})
    task = rt.compile(manifest, command_wasm("loop"))
    watches: list[Watch] = []
    attached = threading.Event()

    def on_watch(watch: Watch) -> None:
        watch.owner = "ex-2"
        watches.append(watch)
        attached.set()

    future: Future[Outcome] = pool.submit(run_command, task, b"", Sink(), on_watch)
    assert attached.wait(5)
    watches[0].cancel_for = "ex-2"
    out = future.result(timeout=5)
    assert type(out.error) is ExecutionCancelled
    assert "'c' was cancelled while running" in out.error.message


def test_a_cancel_for_another_owner_does_not_stop_the_guest(rt: WasmRuntime) -> None:
    inst = handler(rt, handler_wasm("loop"), timeout_ms=200)
    try:
        inst.watch.owner = "current"
        inst.watch.cancel_for = "someone-else"
        assert type(inst.invoke(b"x", Sink()).error) is TaskTimedOut
    finally:
        inst.close()


def test_a_late_cancel_does_not_stop_the_next_execution(rt: WasmRuntime) -> None:
    """Execution "a" finished; its cancel arrives afterwards.  Execution "b" on
    the same instance runs until its own deadline, not until the stale cancel."""
    inst = handler(rt, wasmtime.wat2wasm(LOOP_IF_INPUT), timeout_ms=200)
    try:
        inst.watch.owner = "a"
        assert inst.invoke(b"", Sink()).error is None
        inst.watch.cancel_for = "a"  # too late for "a"
        inst.watch.owner = "b"
        out = inst.invoke(b"spin", Sink())
        assert type(out.error) is TaskTimedOut
    finally:
        inst.close()


def test_a_cancel_before_the_call_stops_it_at_once(rt: WasmRuntime) -> None:
    inst = handler(rt, handler_wasm("loop"))
    try:
        inst.watch.owner = "ex-3"
        inst.watch.cancel_for = "ex-3"
        assert type(inst.invoke(b"x", Sink()).error) is ExecutionCancelled
    finally:
        inst.close()
