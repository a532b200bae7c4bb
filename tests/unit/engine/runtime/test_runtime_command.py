"""``command`` tasks: stdin in, stdout out, stderr as logs, exit status, limits."""
from __future__ import annotations

import os
import time

import wasmtime
from guests import command_wasm

from engine.errors import (
    MemoryLimitExceeded,
    OutputTooLarge,
    TaskExited,
    TaskFault,
    TaskTimedOut,
    TaskTrapped,
)
from engine.manifest import parse_manifest
from engine.runtime import CompiledTask, Outcome, WasmRuntime, run_command
from engine.runtime.host import Sink


def task(rt: WasmRuntime, kind: str, **limits: int) -> CompiledTask:
    return rt.compile(parse_manifest({"name": "cmd", "kind": "command", "limits": limits}), command_wasm(kind))


def run(t: CompiledTask, data: bytes = b"") -> Outcome:
    return run_command(t, data, Sink())


def test_echo_round_trip(rt: WasmRuntime) -> None:
    out = run(task(rt, "echo"), b"hello, hub")
    assert (out.output, out.error, out.exit_code, out.ok) == (b"hello, hub", None, 0, True)


def test_echo_one_mebibyte(rt: WasmRuntime) -> None:
    data = os.urandom(1 << 20)
    out = run(task(rt, "echo"), data)
    assert out.error is None
    assert out.output == data


def test_echo_empty_input(rt: WasmRuntime) -> None:
    out = run(task(rt, "echo"), b"")
    assert (out.output, out.error, out.exit_code) == (b"", None, 0)


def test_consecutive_runs_do_not_see_each_others_output(rt: WasmRuntime) -> None:
    """Scratch files are reused per thread: a short output after a long one
    must not carry the long one's tail."""
    t = task(rt, "echo")
    assert run(t, b"x" * 10_000).output == b"x" * 10_000
    assert run(t, b"short").output == b"short"


def test_stderr_lines_become_logs(rt: WasmRuntime) -> None:
    out = run(task(rt, "echo"), b"x")
    assert out.logs == [("stderr", "log line on stderr")]


def test_stderr_lines_come_before_host_logs(rt: WasmRuntime) -> None:
    sink = Sink()
    sink.log(1, "logged by a host import")
    out = run_command(task(rt, "echo"), b"x", sink)
    assert out.logs == [("stderr", "log line on stderr"), ("info", "logged by a host import")]


def test_exit_code(rt: WasmRuntime) -> None:
    out = run(task(rt, "exit3"))
    assert isinstance(out.error, TaskExited)
    assert out.error.exit_code == out.exit_code == 3
    assert out.error.message == "task 'cmd' exited with status 3"
    assert (out.error.code, out.error.status) == ("exit_status", 502)


def test_trap(rt: WasmRuntime) -> None:
    out = run(task(rt, "trap"))
    assert type(out.error) is TaskTrapped
    assert out.error.message.startswith("task 'cmd' trapped: ")
    assert "unreachable" in out.error.message
    assert out.exit_code is None


def test_loop_times_out_close_to_its_limit(rt: WasmRuntime) -> None:
    t = task(rt, "loop", timeout_ms=300)
    started = time.monotonic()
    out = run(t)
    elapsed = time.monotonic() - started
    assert type(out.error) is TaskTimedOut
    assert out.error.message == "task 'cmd' exceeded its time limit of 300 ms"
    assert 0.3 <= elapsed < 0.8


def test_membomb_names_the_memory_limit(rt: WasmRuntime) -> None:
    out = run(task(rt, "membomb", memory_mib=2))
    assert type(out.error) is MemoryLimitExceeded
    assert "reached its memory limit of 2 MiB" in out.error.message


def test_flood_is_stopped_at_the_output_limit(rt: WasmRuntime) -> None:
    out = run(task(rt, "flood", max_output_kib=64, timeout_ms=5000))
    assert type(out.error) is OutputTooLarge
    assert out.error.message == "task 'cmd' wrote more than its output limit of 64 KiB"
    assert len(out.output) <= 64 * 1024


def test_output_exactly_at_the_limit_is_fine(rt: WasmRuntime) -> None:
    data = b"z" * 4096
    out = run(task(rt, "echo", max_output_kib=4), data)
    assert (out.output, out.error) == (data, None)


def test_output_one_byte_over_the_limit(rt: WasmRuntime) -> None:
    out = run(task(rt, "echo", max_output_kib=4), b"z" * 4097)
    assert type(out.error) is OutputTooLarge
    assert len(out.output) == 4096


def test_a_task_fault_is_returned_not_raised(rt: WasmRuntime) -> None:
    """Every guest failure above is an Outcome; the host keeps going."""
    for kind in ("trap", "exit3"):
        assert isinstance(run(task(rt, kind)).error, TaskFault)
    assert run(task(rt, "echo"), b"after").output == b"after"


def test_env_permission_reaches_the_guest(rt: WasmRuntime) -> None:
    """A guest sees the granted environment: checked with a guest that writes
    environ_sizes_get's count to stdout."""
    wat = """
    (module
      (import "wasi_snapshot_preview1" "environ_sizes_get" (func $sizes (param i32 i32) (result i32)))
      (import "wasi_snapshot_preview1" "fd_write" (func $fd_write (param i32 i32 i32 i32) (result i32)))
      (memory (export "memory") 1)
      (func (export "_start")
        (drop (call $sizes (i32.const 100) (i32.const 104)))
        (i32.store (i32.const 0) (i32.const 100))
        (i32.store (i32.const 4) (i32.const 4))
        (drop (call $fd_write (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8)))))
    """
    wasm = wasmtime.wat2wasm(wat)
    bare = rt.compile(parse_manifest({"name": "env", "kind": "command"}), wasm)
    granted = rt.compile(parse_manifest({"name": "env", "kind": "command",
                                         "permissions": {"env": {"A": "1", "B": "2"}}}), wasm)
    assert int.from_bytes(run(bare).output, "little") == 0
    assert int.from_bytes(run(granted).output, "little") == 2
