"""Cancelling executions on a coordinator: queued, parked, running, and finished ones.

Running guests here loop until a long time limit, so ending up ``cancelled``
(rather than ``timed_out``) shows that the cancel stopped them.
"""
from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import wasmtime
from guests import command_wasm, handler_wasm
from hubtools import add

from engine.config import HubSettings
from engine.coordinator import Coordinator
from engine.errors import Conflict, ExecutionCancelled
from engine.execution import Execution
from engine.lifecycle import ExecutionState
from engine.runtime import WasmRuntime

S = ExecutionState
LONG_MS = 20_000

# Loops while the input is non-empty; answers an empty input at once.
LOOP_IF_INPUT = """
(module
  (memory (export "memory") 1)
  (func (export "wy_abi_version") (result i32) (i32.const 1))
  (func (export "wy_alloc") (param i32) (result i32) (i32.const 1024))
  (func (export "wy_handle") (param $p i32) (param $n i32) (result i64)
    (if (local.get $n) (then (loop $l (br $l))))
    (i64.const 0)))
"""


def on_hub(rt: WasmRuntime, tmp_path: Path, scenario: Callable[[Coordinator], Awaitable[Any]]) -> Any:
    async def main() -> Any:
        co = Coordinator(HubSettings(state_dir=tmp_path, workers=4), runtime=rt)
        try:
            return await scenario(co)
        finally:
            await co.aclose()

    return asyncio.run(main())


async def until(predicate: Callable[[], bool], what: str) -> None:
    for _ in range(2000):  # a hang guard of about 10 s, not a timing assertion
        if predicate():
            return
        await asyncio.sleep(0.005)
    raise AssertionError(f"never happened: {what}")


async def ended(ex: Execution) -> Execution:
    await asyncio.wait_for(ex.wait(), 10)
    return ex


def test_cancel_a_queued_execution_wakes_its_waiter(rt: WasmRuntime, tmp_path: Path) -> None:
    async def scenario(co: Coordinator) -> None:
        add(co, "spin", "command", command_wasm("loop"), max_concurrency=1, limits={"timeout_ms": LONG_MS})
        running = co.submit("spin", b"")
        queued = co.submit("spin", b"")
        waiter = asyncio.create_task(queued.wait())
        await asyncio.sleep(0)
        assert not waiter.done()
        assert co.cancel(queued.id) is queued
        assert queued.state is S.CANCELLED
        assert isinstance(queued.error, ExecutionCancelled)
        assert queued.error.message == "cancelled while queued"
        await asyncio.wait_for(waiter, 5)
        assert co.scheduler.depth == 0
        assert running.state is S.RUNNING  # untouched
        co.cancel(running.id)
        assert (await ended(running)).state is S.CANCELLED

    on_hub(rt, tmp_path, scenario)


def test_cancel_a_parked_execution(rt: WasmRuntime, tmp_path: Path) -> None:
    """An execution popped while its task was at its cap waits parked, outside the queue."""
    async def scenario(co: Coordinator) -> None:
        add(co, "spin", "command", command_wasm("loop"), max_concurrency=1, limits={"timeout_ms": LONG_MS})
        add(co, "tick", "command", command_wasm("loop"), limits={"timeout_ms": 50})
        running = co.submit("spin", b"")
        tick = co.submit("tick", b"")
        parked = co.submit("spin", b"")
        await ended(tick)  # its end pumps the queue: "parked" is popped and parked
        assert parked.state is S.QUEUED and co.scheduler.depth == 1
        assert "spin" in co.scheduler._parked  # parked, not back in the queue
        co.cancel(parked.id)
        assert parked.state is S.CANCELLED and co.scheduler.depth == 0
        co.cancel(running.id)
        await ended(running)
        assert co.resources.in_flight == 0

    on_hub(rt, tmp_path, scenario)


def test_cancel_a_command_waiting_for_a_worker(rt: WasmRuntime, tmp_path: Path) -> None:
    """Granted but behind busy workers: the cancel keeps it from ever starting."""
    async def scenario(co: Coordinator) -> None:
        add(co, "spin", "command", command_wasm("loop"), limits={"timeout_ms": LONG_MS}, max_concurrency=8)
        busy = [co.submit("spin", b"") for _ in range(4)]  # one per worker (on_hub: workers=4)
        await until(lambda: all(ex.job is not None and ex.job.started for ex in busy), "every worker is busy")
        waiting = co.submit("spin", b"")
        assert waiting.state is S.RUNNING and waiting.job is not None and not waiting.job.started
        co.cancel(waiting.id)
        for ex in busy:
            co.cancel(ex.id)
        await ended(waiting)
        assert waiting.state is S.CANCELLED
        assert waiting.error is not None and "cancelled before it started" in waiting.error.message
        for ex in busy:
            await ended(ex)
            assert ex.state is S.CANCELLED and "cancelled while running" in ex.error.message
        assert co.resources.in_flight == 0

    on_hub(rt, tmp_path, scenario)


def test_cancel_a_running_command(rt: WasmRuntime, tmp_path: Path) -> None:
    async def scenario(co: Coordinator) -> None:
        add(co, "spin", "command", command_wasm("loop"), limits={"timeout_ms": LONG_MS})
        ex = co.submit("spin", b"")
        await until(lambda: ex.job is not None and ex.job.started, "a worker started the command")
        assert co.cancel(ex.id) is ex
        await ended(ex)
        assert ex.state is S.CANCELLED
        assert isinstance(ex.error, ExecutionCancelled)
        assert "cancelled while running" in ex.error.message
        assert ex.duration_ms is not None and ex.duration_ms < LONG_MS / 2
        assert co.resources.in_flight == 0

    on_hub(rt, tmp_path, scenario)


def test_cancel_a_running_handler_then_the_task_still_works(rt: WasmRuntime, tmp_path: Path) -> None:
    async def scenario(co: Coordinator) -> None:
        entry = add(co, "spin", "handler", wasmtime.wat2wasm(LOOP_IF_INPUT), limits={"timeout_ms": LONG_MS})
        ex = co.submit("spin", b"loop please")
        await until(lambda: ex.watch is not None, "the handler attached its watch")
        co.cancel(ex.id)
        assert (await ended(ex)).state is S.CANCELLED
        after = await co.invoke("spin", b"")
        assert (after.state, after.output) == (S.SUCCEEDED, b"")
        assert entry.pool is not None and (entry.pool.created, entry.pool.recycled) == (2, 1)

    on_hub(rt, tmp_path, scenario)


def test_cancel_twice_while_running(rt: WasmRuntime, tmp_path: Path) -> None:
    async def scenario(co: Coordinator) -> None:
        add(co, "spin", "command", command_wasm("loop"), limits={"timeout_ms": LONG_MS})
        ex = co.submit("spin", b"")
        co.cancel(ex.id)
        co.cancel(ex.id)
        assert (await ended(ex)).state is S.CANCELLED

    on_hub(rt, tmp_path, scenario)


def test_cancel_a_finished_execution_is_a_conflict(rt: WasmRuntime, tmp_path: Path) -> None:
    async def scenario(co: Coordinator) -> None:
        add(co, "echo", "handler", handler_wasm("echo"))
        ex = await co.invoke("echo", b"done")
        with pytest.raises(Conflict) as info:
            co.cancel(ex.id)
        assert info.value.status == 409
        assert info.value.message == f"execution {ex.id} already ended (succeeded)"
        assert (ex.state, ex.output) == (S.SUCCEEDED, b"done")

    on_hub(rt, tmp_path, scenario)


def test_cancel_of_one_execution_leaves_the_others_alone(rt: WasmRuntime, tmp_path: Path) -> None:
    async def scenario(co: Coordinator) -> None:
        add(co, "spin", "command", command_wasm("loop"), limits={"timeout_ms": 300})
        a, b = co.submit("spin", b""), co.submit("spin", b"")
        await until(lambda: a.watch is not None and b.watch is not None, "both started")
        co.cancel(a.id)
        await ended(a)
        await ended(b)
        assert (a.state, b.state) == (S.CANCELLED, S.TIMED_OUT)

    on_hub(rt, tmp_path, scenario)
