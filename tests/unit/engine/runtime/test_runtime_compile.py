"""Compiling and checking modules: what ``WasmRuntime.compile`` refuses, and why."""
from __future__ import annotations

import hashlib

import pytest
import wasmtime
from guests import command_wasm, handler_wasm, handler_wat

from engine.errors import InvalidModule
from engine.manifest import Manifest, parse_manifest
from engine.runtime import CompiledTask, WasmRuntime


def manifest(kind: str, **limits: int) -> Manifest:
    return parse_manifest({"name": "t", "kind": kind, "limits": limits})


def refused(rt: WasmRuntime, m: Manifest, wasm: bytes) -> str:
    with pytest.raises(InvalidModule) as info:
        rt.compile(m, wasm)
    assert (info.value.code, info.value.status) == ("invalid_module", 400)
    return info.value.message


HANDLER_WITHOUT_HANDLE = """
(module
  (memory (export "memory") 1)
  (func (export "wy_abi_version") (result i32) (i32.const 1))
  (func (export "wy_alloc") (param i32) (result i32) (i32.const 1024)))
"""


def test_compiled_task_fields(rt: WasmRuntime) -> None:
    wasm = handler_wasm("echo")
    task = rt.compile(manifest("handler"), wasm)
    assert isinstance(task, CompiledTask)
    assert task.name == "t"
    assert task.size == len(wasm)
    assert task.digest == hashlib.sha256(wasm).hexdigest()


def test_garbage_bytes(rt: WasmRuntime) -> None:
    message = refused(rt, manifest("command"), b"\x00asm\x01\x00\x00\x00garbage")
    assert message.startswith("not a valid WebAssembly module: ")


def test_not_wasm_at_all(rt: WasmRuntime) -> None:
    assert refused(rt, manifest("handler"), b"hello").startswith("not a valid WebAssembly module")


def test_handler_missing_wy_handle(rt: WasmRuntime) -> None:
    message = refused(rt, manifest("handler"), wasmtime.wat2wasm(HANDLER_WITHOUT_HANDLE))
    assert "handler task 't' is missing export(s) wy_handle" in message


def test_command_module_registered_as_handler(rt: WasmRuntime) -> None:
    message = refused(rt, manifest("handler"), command_wasm("echo"))
    assert "missing export(s) wy_abi_version, wy_alloc, wy_handle" in message


def test_command_without_start(rt: WasmRuntime) -> None:
    message = refused(rt, manifest("command"), handler_wasm("echo"))
    assert message == "command task 't' must export a WASI _start function"


def test_start_that_is_not_a_function(rt: WasmRuntime) -> None:
    wasm = wasmtime.wat2wasm('(module (global (export "_start") i32 (i32.const 0)))')
    assert "must export a WASI _start function" in refused(rt, manifest("command"), wasm)


def test_import_from_another_module(rt: WasmRuntime) -> None:
    wasm = wasmtime.wat2wasm('(module (import "env" "clock" (func)) (func (export "_start")))')
    message = refused(rt, manifest("command"), wasm)
    assert "imports env.clock" in message
    assert "wasi_snapshot_preview1 and wasmyard" in message


def test_unknown_host_import(rt: WasmRuntime) -> None:
    wasm = wasmtime.wat2wasm('(module (import "wasmyard" "teleport" (func)) (func (export "_start")))')
    assert refused(rt, manifest("command"), wasm).startswith("task 't' cannot be linked: ")


def test_host_import_with_the_wrong_signature(rt: WasmRuntime) -> None:
    wasm = wasmtime.wat2wasm('(module (import "wasmyard" "log" (func (param i32))) (func (export "_start")))')
    assert refused(rt, manifest("command"), wasm).startswith("task 't' cannot be linked: ")


def test_handler_initial_memory_above_the_limit(rt: WasmRuntime) -> None:
    wasm = wasmtime.wat2wasm(handler_wat("echo", pages=48))  # 3 MiB
    message = refused(rt, manifest("handler", memory_mib=2), wasm)
    assert message == "task 't' needs 3 MiB of memory at start, more than its limit of 2 MiB"


def test_handler_initial_memory_at_the_limit(rt: WasmRuntime) -> None:
    wasm = wasmtime.wat2wasm(handler_wat("echo", pages=32))  # exactly 2 MiB
    assert rt.compile(manifest("handler", memory_mib=2), wasm).name == "t"


def test_command_initial_memory_above_the_limit(rt: WasmRuntime) -> None:
    wasm = wasmtime.wat2wasm('(module (memory (export "memory") 48) (func (export "_start")))')
    assert "more than its limit of 2 MiB" in refused(rt, manifest("command", memory_mib=2), wasm)


def test_uncached_runtime_compiles_too() -> None:
    runtime = WasmRuntime(None, instances=8, max_memory_mib=64)
    try:
        assert runtime.compile(manifest("command"), command_wasm("echo")).name == "t"
        assert runtime.compile(manifest("command"), command_wasm("echo")).name == "t"
        assert runtime.cache_stats() == {"hits": 0, "misses": 2}
    finally:
        runtime.close()

