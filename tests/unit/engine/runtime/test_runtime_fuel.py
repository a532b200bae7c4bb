"""Fuel metering: tasks that ask for it are stopped when it runs out, per execution."""
from __future__ import annotations

from guests import command_wasm, handler_wasm

from engine.errors import FuelExhausted
from engine.manifest import Manifest, parse_manifest
from engine.runtime import HandlerInstance, WasmRuntime, run_command
from engine.runtime.host import Sink


def manifest(kind: str, **limits: int) -> Manifest:
    return parse_manifest({"name": "f", "kind": kind, "limits": limits})


def test_command_loop_runs_out_of_fuel(rt: WasmRuntime) -> None:
    """The time limit is 60 s: only fuel can stop this loop within the test."""
    t = rt.compile(manifest("command", fuel=10_000, timeout_ms=60_000), command_wasm("loop"))
    err = run_command(t, b"", Sink()).error
    assert type(err) is FuelExhausted
    assert err.message == "task 'f' used up its fuel of 10000"
    assert (err.code, err.status) == ("fuel_exhausted", 502)


def test_handler_loop_runs_out_of_fuel(rt: WasmRuntime) -> None:
    t = rt.compile(manifest("handler", fuel=10_000, timeout_ms=60_000), handler_wasm("loop"))
    inst = HandlerInstance(t)
    try:
        err = inst.invoke(b"x", Sink()).error
        assert type(err) is FuelExhausted
        assert "fuel of 10000" in err.message
    finally:
        inst.close()


def test_enough_fuel_runs_normally(rt: WasmRuntime) -> None:
    t = rt.compile(manifest("command", fuel=10_000_000), command_wasm("echo"))
    out = run_command(t, b"metered", Sink())
    assert (out.output, out.error) == (b"metered", None)


def test_fuel_is_refilled_for_each_execution(rt: WasmRuntime) -> None:
    """A pooled instance must not run dry after many cheap executions: 200 calls
    of a few dozen instructions each add up to far more than one call's fuel."""
    t = rt.compile(manifest("handler", fuel=2_000), handler_wasm("counter"))
    inst = HandlerInstance(t)
    try:
        for i in range(1, 201):
            out = inst.invoke(b"", Sink())
            assert out.error is None, f"call {i}: {out.error}"
    finally:
        inst.close()
