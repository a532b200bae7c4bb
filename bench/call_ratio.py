"""Calls into wasm, as ratios against plain wasmtime-py measured in the same run.

    .venv/bin/python bench/call_ratio.py [--repeat 15 | --quick]

Four workloads, each on the compiled twin, the pure twin and the anchor
(plain wasmtime-py: ``Func.__call__``, ``Linker.define_func``,
``Memory.read`` / ``Memory.write``):

* export:     call a trivial export ``inc(i32) -> i32``;
* host-call:  one wasm -> host -> wasm import call, timed inside a wasm loop
              of HOST_LOOP calls (so entering wasm is not counted);
* round-trip: call an export that calls one host import and returns;
* handler-1k: 1 KiB in -> ``wy_handle`` (copies it) -> 1 KiB out, per the
              handler ABI v1 (``HandlerCall.invoke``; the anchor spells the
              same contract out with wasmtime-py).

Every repetition runs all implementations back to back (in a rotating order)
and the best repetition of each counts, so drift on a busy machine hits them
alike.  ``bench/bench_call.py`` runs the same workloads under pytest-benchmark.
"""
from __future__ import annotations

import argparse
import importlib
import sys
import time
from pathlib import Path
from types import ModuleType
from typing import Any, Callable

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import wasmtime  # noqa: E402

CALLS = 2_000       # export calls per run
HOST_LOOP = 2_000   # host calls per run, inside one wasm call
ROUND_TRIPS = 1_000
INVOKES = 1_000
PAYLOAD = bytes(range(256)) * 4  # 1 KiB

OPS = {"export": CALLS, "host-call": HOST_LOOP, "round-trip": ROUND_TRIPS, "handler-1k": INVOKES}
ANCHOR = "wasmtime-py"
# (most µs per op, least speed-up over the anchor) for the compiled twin
TARGETS = {"export": (2.5, 10.0), "host-call": (None, 3.0), "handler-1k": (6.0, None)}

GUEST = """
(module
  (import "wasmyard" "h" (func $h (param i32) (result i32)))
  (memory (export "memory") 1)
  (func (export "inc") (param i32) (result i32) (i32.add (local.get 0) (i32.const 1)))
  (func (export "ping") (param i32) (result i32) (call $h (local.get 0)))
  (func (export "host_loop") (param $n i32) (result i32) (local $acc i32)
    (block $done (loop $l
      (br_if $done (i32.eqz (local.get $n)))
      (local.set $acc (call $h (local.get $acc)))
      (local.set $n (i32.sub (local.get $n) (i32.const 1)))
      (br $l)))
    (local.get $acc))
  (func (export "wy_abi_version") (result i32) (i32.const 1))
  ;; input at 1024, output right after it; one page holds 1 KiB each way
  (func (export "wy_alloc") (param $n i32) (result i32)
    (if (i32.gt_u (local.get $n) (i32.const 30000)) (then (return (i32.const 0))))
    (i32.const 1024))
  (func (export "wy_handle") (param $p i32) (param $n i32) (result i64)
    (local $out i32)
    (local.set $out (i32.add (local.get $p) (local.get $n)))
    (memory.copy (local.get $out) (local.get $p) (local.get $n))
    (i64.or (i64.shl (i64.extend_i32_u (local.get $out)) (i64.const 32)) (i64.extend_i32_u (local.get $n))))
)
"""


def twins() -> dict[str, ModuleType]:
    """The call twins that import here, by implementation name."""
    found = {}
    for name, module in (("cython", "fastpath._call_c"), ("python", "fastpath._call_py")):
        try:
            found[name] = importlib.import_module(module)
        except ImportError as exc:
            print(f"{module} not available ({exc}); skipped", file=sys.stderr)
    return found


def _bump(x: int) -> int:
    return x + 1


def _instance(engine: wasmtime.Engine, module: wasmtime.Module,
              twin: ModuleType | None) -> tuple[wasmtime.Store, wasmtime.Instance]:
    store = wasmtime.Store(engine)
    linker = wasmtime.Linker(engine)
    if twin is None:
        i32 = wasmtime.ValType.i32()
        linker.define_func("wasmyard", "h", wasmtime.FuncType([i32], [i32]), _bump)
    else:
        twin.define_host_func(linker, "wasmyard", "h", "i", "i", lambda mem, x: x + 1)
    return store, linker.instantiate(store, module)


# -- the anchor: plain wasmtime-py ----------------------------------------------------


def anchor_workloads(engine: wasmtime.Engine, module: wasmtime.Module) -> dict[str, Callable[[], Any]]:
    store, instance = _instance(engine, module, None)
    exports = instance.exports(store)
    inc, ping, host_loop = exports["inc"], exports["ping"], exports["host_loop"]
    alloc, handle, memory = exports["wy_alloc"], exports["wy_handle"], exports["memory"]

    def export() -> None:
        for i in range(CALLS):
            inc(store, i)

    def round_trip() -> None:
        for i in range(ROUND_TRIPS):
            ping(store, i)

    def handler() -> None:
        for _ in range(INVOKES):
            n = len(PAYLOAD)
            ptr = alloc(store, n)
            memory.write(store, PAYLOAD, ptr)
            r = handle(store, ptr, n)
            start = r >> 32
            bytes(memory.read(store, start, start + (r & 0xFFFFFFFF)))

    return {"export": export, "host-call": lambda: host_loop(store, HOST_LOOP),
            "round-trip": round_trip, "handler-1k": handler}


# -- the twins ---------------------------------------------------------------------


def twin_workloads(engine: wasmtime.Engine, module: wasmtime.Module,
                   twin: ModuleType) -> dict[str, Callable[[], Any]]:
    store, instance = _instance(engine, module, twin)
    inc = twin.Export(store, instance, "inc")
    ping = twin.Export(store, instance, "ping")
    host_loop = twin.Export(store, instance, "host_loop")
    invoke = twin.HandlerCall(store, instance).invoke
    assert invoke(PAYLOAD) == (True, PAYLOAD)

    def export() -> None:
        for i in range(CALLS):
            inc(i)

    def round_trip() -> None:
        for i in range(ROUND_TRIPS):
            ping(i)

    def handler() -> None:
        for _ in range(INVOKES):
            invoke(PAYLOAD)

    return {"export": export, "host-call": lambda: host_loop(HOST_LOOP),
            "round-trip": round_trip, "handler-1k": handler}


def workloads() -> dict[tuple[str, str], Callable[[], Any]]:
    """``(workload, implementation) -> run``; one ``run()`` is timed, OPS[workload] ops."""
    engine = wasmtime.Engine()
    module = wasmtime.Module(engine, GUEST)
    table = {(w, ANCHOR): run for w, run in anchor_workloads(engine, module).items()}
    for name, twin in twins().items():
        table.update({(w, name): run for w, run in twin_workloads(engine, module, twin).items()})
    return table


def measure(repeat: int) -> dict[tuple[str, str], float]:
    """Best seconds per run of every workload and implementation."""
    table = workloads()
    best = {key: float("inf") for key in table}
    keys = list(table)
    for run in table.values():  # warm up
        run()
    for rep in range(repeat):
        rotated = keys[rep % len(keys):] + keys[: rep % len(keys)]
        for key in rotated:
            start = time.perf_counter_ns()
            table[key]()
            best[key] = min(best[key], (time.perf_counter_ns() - start) / 1e9)
    return best


def target_note(workload: str, micros: float, speedup: float) -> str:
    most, least = TARGETS.get(workload, (None, None))
    checks = []
    if most is not None:
        checks.append(f"<= {most} us: {'met' if micros <= most else 'MISSED'}")
    if least is not None:
        checks.append(f">= {least:g}x: {'met' if speedup >= least else 'MISSED'}")
    return "; ".join(checks)


def report(best: dict[tuple[str, str], float]) -> str:
    lines = [
        f"{'workload':<11} {'implementation':<13} {'us/op':>9} {'x anchor':>9} {'x pure':>7}  "
        "target (compiled twin)",
        "-" * 86,
    ]
    for workload, ops in OPS.items():
        anchor = best[(workload, ANCHOR)]
        pure = best.get((workload, "python"))
        for (name, impl), seconds in sorted(best.items(), key=lambda kv: kv[1]):
            if name != workload:
                continue
            micros = seconds / ops * 1e6
            note = target_note(workload, micros, anchor / seconds) if impl == "cython" else ""
            vs_pure = f"{pure / seconds:>7.1f}" if pure else f"{'-':>7}"
            lines.append(f"{workload:<11} {impl:<13} {micros:>9.3f} {anchor / seconds:>9.1f} {vs_pure}  {note}")
    lines.append(
        f"us/op: best of the repetitions; x anchor / x pure > 1 is faster than plain wasmtime-py / "
        f"the pure twin. "
        f"export: inc(i32); host-call: per call, {HOST_LOOP:,} in one wasm loop; "
        f"round-trip: export -> host -> back; handler-1k: {len(PAYLOAD)} B in and out."
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--repeat", type=int, default=15, help="repetitions; the best counts")
    parser.add_argument("--quick", action="store_true", help="3 repetitions: a smoke run")
    args = parser.parse_args(argv)
    print(report(measure(3 if args.quick else args.repeat)))


if __name__ == "__main__":
    main()
