"""``handler`` tasks in one HandlerInstance: the ABI, logs, state, and each failure class."""
from __future__ import annotations

import os
import struct
import time
from collections.abc import Callable, Iterator

import pytest
from guests import handler_wasm

from engine.errors import (
    GuestError,
    MemoryLimitExceeded,
    OutputTooLarge,
    TaskFault,
    TaskTimedOut,
    TaskTrapped,
)
from engine.manifest import parse_manifest
from engine.runtime import HandlerInstance, Outcome, WasmRuntime
from engine.runtime.host import Sink

Make = Callable[..., HandlerInstance]


@pytest.fixture
def instance(rt: WasmRuntime) -> Iterator[Make]:
    """A factory of HandlerInstances that are closed after the test."""
    made: list[HandlerInstance] = []

    def make(kind: str, **limits: int) -> HandlerInstance:
        compiled = rt.compile(parse_manifest({"name": "h", "kind": "handler", "limits": limits}), handler_wasm(kind))
        made.append(HandlerInstance(compiled))
        return made[-1]

    yield make
    for inst in made:
        inst.close()


def call(inst: HandlerInstance, data: bytes = b"in") -> Outcome:
    return inst.invoke(data, Sink())


def test_echo(instance: Make) -> None:
    out = call(instance("echo"), b"hello")
    assert (out.output, out.error, list(out.logs), out.ok) == (b"hello", None, [], True)


def test_echo_empty_input(instance: Make) -> None:
    assert call(instance("echo"), b"").output == b""


def test_echo_input_larger_than_initial_memory(instance: Make) -> None:
    data = os.urandom(200_000)  # the guest grows its memory in wy_alloc
    out = call(instance("echo", memory_mib=4), data)
    assert (out.output, out.error) == (data, None)


def test_log_import_becomes_a_log_line(instance: Make) -> None:
    out = call(instance("log"), b"x")
    assert out.output == b"x"
    assert out.logs == [("info", "hello from wasm")]


def test_logs_go_to_the_sink_given(instance: Make) -> None:
    sink = Sink()
    out = instance("log").invoke(b"x", sink)
    assert out.sink is sink and sink.logs == [("info", "hello from wasm")]


def test_counter_keeps_state_across_calls(instance: Make) -> None:
    inst = instance("counter")
    counts = [struct.unpack("<i", call(inst).output)[0] for _ in range(5)]
    assert counts == [1, 2, 3, 4, 5]
    assert inst.uses == 5


def test_separate_instances_do_not_share_state(instance: Make) -> None:
    a, b = instance("counter"), instance("counter")
    call(a)
    call(a)
    assert call(b).output == struct.pack("<i", 1)


def test_trap(instance: Make) -> None:
    err = call(instance("trap")).error
    assert type(err) is TaskTrapped
    assert err.message == "task 'h' trapped: wasm `unreachable` instruction executed"


def test_divide_by_zero(instance: Make) -> None:
    err = call(instance("divzero")).error
    assert type(err) is TaskTrapped
    assert "integer divide by zero" in err.message


def test_loop_times_out_close_to_its_limit(instance: Make) -> None:
    inst = instance("loop", timeout_ms=250)
    started = time.monotonic()
    out = call(inst)
    elapsed = time.monotonic() - started
    assert type(out.error) is TaskTimedOut
    assert out.error.message == "task 'h' exceeded its time limit of 250 ms"
    assert 0.25 <= elapsed < 0.75


def test_each_call_gets_its_own_deadline(instance: Make) -> None:
    """A deadline is per execution: a second call on the same instance gets the
    whole limit again, not what the first one left."""
    inst = instance("loop", timeout_ms=200)
    call(inst)
    started = time.monotonic()
    assert type(call(inst).error) is TaskTimedOut
    assert time.monotonic() - started >= 0.2


def test_membomb(instance: Make) -> None:
    err = call(instance("membomb", memory_mib=2)).error
    assert type(err) is MemoryLimitExceeded
    assert "reached its memory limit of 2 MiB" in err.message


def test_guest_reported_error(instance: Make) -> None:
    out = call(instance("error"))
    assert type(out.error) is GuestError
    assert out.error.message == "task 'h' reported an error: bad input: refused"
    assert out.output == b""


def test_output_pointer_out_of_bounds(instance: Make) -> None:
    err = call(instance("oob")).error
    assert type(err) is TaskFault
    assert "out-of-bounds output" in err.message


def test_output_over_the_limit(instance: Make) -> None:
    out = call(instance("echo", max_output_kib=1), b"y" * 1025)
    assert type(out.error) is OutputTooLarge
    assert out.error.message == "task 'h' returned 1025 bytes, over its output limit of 1 KiB"
    assert out.output == b""


def test_output_at_the_limit(instance: Make) -> None:
    assert call(instance("echo", max_output_kib=1), b"y" * 1024).output == b"y" * 1024


def test_faults_are_outcomes_not_exceptions(instance: Make) -> None:
    for kind in ("trap", "divzero", "error", "oob"):
        assert isinstance(call(instance(kind)).error, TaskFault), kind


def test_a_closed_instance_cannot_run(instance: Make) -> None:
    inst = instance("echo")
    inst.close()
    inst.close()  # idempotent
    with pytest.raises(ValueError, match="closed"):
        call(inst)
