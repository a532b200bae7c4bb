"""Fresh execution environments: the coordinator's cost vs plain wasmtime-py.

    .venv/bin/python bench/env_ratio.py [--n 2000]

Both sides build the same thing from the same compiled module (the echo
example): a Store with a memory limit, a WASI config with stdin and
stdout/stderr files, an instance.  The coordinator's side adds what isolation
needs — the watchdog's epoch callback — serves stdin from memory and goes
through ``InstancePre`` on the pooling allocator; the plain side is what a wasmtime-py user would write.  The
next rows time a whole ``command`` execution (environment + ``_start`` +
reading the output) both ways: through ``run_command`` (watchdog, host sink,
output limits), and through ``fastpath.run_start`` alone (a Store with a
memory limit, the one call, reading the output).  Ratios are from one run.
"""
from __future__ import annotations

import argparse
import ctypes
import sys
import tempfile
import time
from pathlib import Path

import wasmtime

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import fastpath  # noqa: E402
from engine.manifest import parse_manifest  # noqa: E402
from engine.runtime import WasmRuntime, run_command  # noqa: E402
from engine.runtime import watchdog  # noqa: E402
from engine.runtime.capi import c_function  # noqa: E402
from engine.runtime.host import Sink  # noqa: E402
from engine.runtime.command import _scratch  # noqa: E402

ECHO = ROOT / "wasm_tasks" / "echo"


_byte_vec_new = c_function("wasm_byte_vec_new", None, ctypes.POINTER(wasmtime._ffi.wasm_byte_vec_t), ctypes.c_size_t,
                           ctypes.c_char_p)
_set_stdin_bytes = c_function("wasi_config_set_stdin_bytes", None, ctypes.c_void_p,
                              ctypes.POINTER(wasmtime._ffi.wasm_byte_vec_t))


def set_stdin_bytes(wasi: wasmtime.WasiConfig, data: bytes) -> None:
    """Serve ``data`` as the guest's stdin straight from memory (no file).

    ``wasm_byte_vec_new`` copies the bytes; the WASI config takes ownership
    of that copy, so nothing here outlives the call.
    """
    vec = wasmtime._ffi.wasm_byte_vec_t()
    _byte_vec_new(ctypes.byref(vec), len(data), data)
    _set_stdin_bytes(ctypes.cast(wasi.ptr(), ctypes.c_void_p), ctypes.byref(vec))


def best_of(fn, n: int, repeat: int = 5) -> float:  # type: ignore[no-untyped-def]
    best = float("inf")
    for _ in range(repeat):
        t = time.perf_counter()
        for _ in range(n):
            fn()
        best = min(best, (time.perf_counter() - t) / n)
    return best


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=2000)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    n = 300 if args.quick else args.n

    manifest = parse_manifest((ECHO / "task.toml").read_bytes())
    wasm = (ECHO / manifest.module).read_bytes()  # type: ignore[operator]
    runtime = WasmRuntime(Path(tempfile.mkdtemp()))
    task = runtime.compile(manifest, wasm)
    scratch = _scratch(0)
    payload = b'{"device":"t-17","celsius":21.5}'

    def ours_env() -> None:
        store = wasmtime.Store(task.engine)
        watch = watchdog.install(store)
        store.set_limits(memory_size=manifest.limits.memory_bytes)
        wasi = wasmtime.WasiConfig()
        wasi.argv = [manifest.name]
        set_stdin_bytes(wasi, payload)
        wasi.stdout_file = scratch.stdout
        wasi.stderr_file = scratch.stderr
        store.set_wasi(wasi)
        task.pre.instantiate(store)
        watch.close()
        store.close()

    # Plain wasmtime-py: its own engine (epochs on, like ours), linker, module.
    config = wasmtime.Config()
    config.epoch_interruption = True
    engine = wasmtime.Engine(config)
    linker = wasmtime.Linker(engine)
    linker.define_wasi()
    linker.define_func("wasmyard", "log", wasmtime.FuncType([wasmtime.ValType.i32()] * 3, []), lambda *a: None)
    module = wasmtime.Module(engine, wasm)
    tmp = Path(tempfile.mkdtemp())
    stdin, stdout, stderr = (str(tmp / n) for n in ("in", "out", "err"))
    Path(stdin).write_bytes(payload)

    def plain_env() -> wasmtime.Instance:
        store = wasmtime.Store(engine)
        store.set_epoch_deadline(1 << 40)
        store.set_limits(memory_size=manifest.limits.memory_bytes)
        wasi = wasmtime.WasiConfig()
        wasi.argv = [manifest.name]
        wasi.stdin_file = stdin
        wasi.stdout_file = stdout
        wasi.stderr_file = stderr
        store.set_wasi(wasi)
        instance = linker.instantiate(store, module)
        store.close()
        return instance

    def ours_exec() -> None:
        outcome = run_command(task, payload, Sink())
        assert outcome.output == payload, outcome.error

    argv = (manifest.name,)

    def ours_run_start() -> None:
        store = wasmtime.Store(task.engine)
        store.set_epoch_deadline(1 << 40)  # the engine's epoch ticks: no deadline traps at once
        store.set_limits(memory_size=manifest.limits.memory_bytes)
        status = fastpath.run_start(store, task.pre, payload, scratch.stdout, scratch.stderr, argv)
        store.close()
        with open(scratch.stdout, "rb") as f:
            assert status == 0 and f.read() == payload

    def plain_exec() -> None:
        store = wasmtime.Store(engine)
        store.set_epoch_deadline(1 << 40)
        store.set_limits(memory_size=manifest.limits.memory_bytes)
        wasi = wasmtime.WasiConfig()
        wasi.stdin_file = stdin
        wasi.stdout_file = stdout
        wasi.stderr_file = stderr
        store.set_wasi(wasi)
        instance = linker.instantiate(store, module)
        instance.exports(store)["_start"](store)
        with open(stdout, "rb") as f:
            assert f.read() == payload
        store.close()

    rows = []
    cases = (
        ("fresh environment", ours_env, plain_env),
        ("whole command execution", ours_exec, plain_exec),
        ("whole command execution via fastpath.run_start", ours_run_start, plain_exec),
    )
    for label, ours, plain in cases:
        a, b = best_of(ours, n), best_of(plain, n)
        rows.append((label, a, b))
    runtime.close()
    print(f"\nfresh execution environments (echo example, best of 5 × {n}, fastpath: {fastpath.IMPLEMENTATION})")
    print(f"{'what':<48} {'wasmyard µs':>12} {'wasmtime-py µs':>15} {'ratio':>7}")
    for label, a, b in rows:
        print(f"{label:<48} {a * 1e6:>12.1f} {b * 1e6:>15.1f} {a / b:>6.2f}×")
    print("ratio = wasmyard time / plain wasmtime-py time (lower is better)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
