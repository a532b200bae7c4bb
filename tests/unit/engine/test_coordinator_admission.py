"""Admission on a coordinator: the queue limit, concurrency caps, and who waits for whom."""
from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from guests import command_wasm, handler_wasm
from hubtools import add, on_hub

from engine.coordinator import Coordinator
from engine.errors import QueueFull
from engine.execution import Execution
from engine.lifecycle import ExecutionState
from engine.runtime import WasmRuntime

S = ExecutionState


async def settle(co: Coordinator, executions: list[Execution]) -> None:
    """Cancel whatever is still going and wait for all of it to end (bounded)."""
    for ex in executions:
        if not ex.done:
            co.cancel(ex.id)
    await asyncio.wait_for(asyncio.gather(*(ex.wait() for ex in executions)), 10)


def max_overlap(executions: list[Execution]) -> int:
    """The most executions that were running at the same moment, from their timestamps."""
    events = sorted([(ex.started_ns, 1) for ex in executions] + [(ex.finished_ns, -1) for ex in executions],
                    key=lambda e: (e[0], e[1]))
    running = peak = 0
    for _, delta in events:
        running += delta
        peak = max(peak, running)
    return peak


def test_queue_full(rt: WasmRuntime, tmp_path: Path) -> None:
    async def scenario(co: Coordinator) -> None:
        add(co, "spin", "command", command_wasm("loop"), max_concurrency=1, limits={"timeout_ms": 300})
        accepted: list[Execution] = []
        with pytest.raises(QueueFull) as info:
            for _ in range(10):
                accepted.append(co.submit("spin", b""))
        # one running, then max_queue (2) waiting
        assert [ex.state for ex in accepted] == [S.RUNNING, S.QUEUED, S.QUEUED]
        err = info.value
        assert (err.status, err.code) == (429, "queue_full") and err.retry_after > 0
        assert co.metrics.rejected == {"queue_full": 1}
        assert len(co.history) == 3  # the refused one was never recorded
        await settle(co, accepted)

    on_hub(rt, tmp_path, scenario, max_queue=2)


def test_the_queue_takes_new_work_again_once_it_drains(rt: WasmRuntime, tmp_path: Path) -> None:
    async def scenario(co: Coordinator) -> None:
        add(co, "spin", "command", command_wasm("loop"), max_concurrency=1, limits={"timeout_ms": 100})
        first = [co.submit("spin", b"") for _ in range(2)]
        with pytest.raises(QueueFull):
            co.submit("spin", b"")
        await asyncio.wait_for(first[0].wait(), 10)  # the queued one starts: room again
        later = co.submit("spin", b"")
        await settle(co, [*first, later])

    on_hub(rt, tmp_path, scenario, max_queue=1)


def test_per_task_concurrency_cap(rt: WasmRuntime, tmp_path: Path) -> None:
    async def scenario(co: Coordinator) -> None:
        entry = add(co, "spin", "command", command_wasm("loop"), max_concurrency=2, limits={"timeout_ms": 150})
        executions = [co.submit("spin", b"") for _ in range(5)]
        assert (entry.slot.in_flight, co.resources.in_flight, co.scheduler.depth) == (2, 2, 3)
        assert [ex.state for ex in executions] == [S.RUNNING] * 2 + [S.QUEUED] * 3
        await asyncio.wait_for(asyncio.gather(*(ex.wait() for ex in executions)), 10)
        assert all(ex.state is S.TIMED_OUT for ex in executions)
        assert max_overlap(executions) == 2
        assert (entry.slot.in_flight, co.resources.in_flight, co.scheduler.depth) == (0, 0, 0)

    on_hub(rt, tmp_path, scenario)


def test_hub_wide_in_flight_cap(rt: WasmRuntime, tmp_path: Path) -> None:
    async def scenario(co: Coordinator) -> None:
        add(co, "a", "command", command_wasm("loop"), limits={"timeout_ms": 100})
        add(co, "b", "command", command_wasm("loop"), limits={"timeout_ms": 100})
        executions = [co.submit(name, b"") for name in ("a", "b", "a", "b")]
        assert co.resources.in_flight == 3 and co.scheduler.depth == 1
        await asyncio.wait_for(asyncio.gather(*(ex.wait() for ex in executions)), 10)
        assert max_overlap(executions) == 3

    on_hub(rt, tmp_path, scenario, max_in_flight=3)


def test_queued_executions_start_in_priority_order(rt: WasmRuntime, tmp_path: Path) -> None:
    async def scenario(co: Coordinator) -> None:
        add(co, "gate", "command", command_wasm("loop"), limits={"timeout_ms": 100})
        add(co, "work", "command", command_wasm("echo"))
        gate = co.submit("gate", b"")
        low = co.submit("work", b"low", priority=-1)
        mid = co.submit("work", b"mid")
        high = co.submit("work", b"high", priority=5)
        mid2 = co.submit("work", b"mid2")
        batch = [low, mid, high, mid2]
        await asyncio.wait_for(asyncio.gather(*(ex.wait() for ex in [gate, *batch])), 10)
        assert all(ex.state is S.SUCCEEDED for ex in batch)
        assert [ex.output for ex in sorted(batch, key=lambda ex: ex.started_ns)] == [b"high", b"mid", b"mid2", b"low"]

    on_hub(rt, tmp_path, scenario, max_in_flight=1)


def test_a_busy_task_does_not_hold_up_another_task(rt: WasmRuntime, tmp_path: Path) -> None:
    async def scenario(co: Coordinator) -> None:
        add(co, "busy", "command", command_wasm("loop"), max_concurrency=1, limits={"timeout_ms": 1000})
        add(co, "quick", "command", command_wasm("echo"))
        busy = [co.submit("busy", b""), co.submit("busy", b"")]  # the second waits for the first
        quick = co.submit("quick", b"hi")
        try:
            await asyncio.wait_for(quick.wait(), 10)
            assert quick.state is S.SUCCEEDED
            assert not busy[0].done, "quick waited until busy's first execution timed out"
        finally:
            await settle(co, busy)

    on_hub(rt, tmp_path, scenario)


def test_draining_many_queued_inline_executions(rt: WasmRuntime, tmp_path: Path) -> None:
    async def scenario(co: Coordinator) -> None:
        add(co, "fast", "handler", handler_wasm("echo"), max_concurrency=1)
        add(co, "gate", "command", command_wasm("loop"), limits={"timeout_ms": 100})
        for _ in range(3):
            await co.invoke("fast", b"warm-up")
        assert co.scheduler.inline(co.tasks["fast"].slot)
        gate = co.submit("gate", b"")  # holds the only grant
        queued = [co.submit("fast", b"%d" % i) for i in range(1000)]
        await asyncio.wait_for(gate.wait(), 10)
        await asyncio.sleep(0)
        # Inline executions run synchronously in the callback that ended "gate":
        # by now every one of them has run.
        assert [ex.state for ex in queued] == [S.SUCCEEDED] * len(queued)
        assert [ex.output for ex in queued] == [b"%d" % i for i in range(1000)]

    on_hub(rt, tmp_path, scenario, max_in_flight=1, max_queue=2000, inline_threshold_us=1_000_000)


def test_closing_finishes_accepted_work_and_refuses_new(rt: WasmRuntime, tmp_path: Path) -> None:
    """A stopping hub loses nothing it accepted (queued ones still run) and takes nothing new."""
    async def main() -> None:
        from engine.config import HubSettings
        from engine.errors import ShuttingDown

        co = Coordinator(HubSettings(state_dir=tmp_path, workers=2), runtime=rt)
        add(co, "slow", "command", command_wasm("echo"), max_concurrency=1)
        accepted = [co.submit("slow", b"%d" % i) for i in range(5)]
        assert co.scheduler.depth > 0  # some of them are still waiting
        await co.aclose()
        assert [(ex.state, ex.output) for ex in accepted] == [(S.SUCCEEDED, b"%d" % i) for i in range(5)]
        assert co.resources.in_flight == 0 and co.scheduler.depth == 0
        with pytest.raises(ShuttingDown) as refused:
            co.submit("slow", b"late")
        assert refused.value.status == 503

    asyncio.run(main())
