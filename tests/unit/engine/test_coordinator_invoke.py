"""The coordinator end to end on one hub: invoking tasks, failures, metrics, closing.

Each test runs its own Coordinator inside ``asyncio.run``; the WasmRuntime is
shared per module (a runtime reserves address space for its instance pool).
"""
from __future__ import annotations

import asyncio
import re
import struct
from pathlib import Path

import pytest
import wasmtime
from guests import command_wasm, handler_wasm
from hubtools import add, on_hub

from engine.config import HubSettings
from engine.coordinator import SETTLE_AT_MOST, Coordinator
from engine.errors import (
    HostError,
    PayloadTooLarge,
    TaskTrapped,
    UnknownExecution,
    UnknownTask,
)
from engine.execution import Execution
from engine.lifecycle import ExecutionState
from engine.manifest import parse_manifest
from engine.runtime import Outcome, WasmRuntime

S = ExecutionState

# Traps on an empty input, echoes anything else.
TRAP_IF_EMPTY = """
(module
  (memory (export "memory") 1)
  (func (export "wy_abi_version") (result i32) (i32.const 1))
  (func (export "wy_alloc") (param i32) (result i32) (i32.const 1024))
  (func (export "wy_handle") (param $p i32) (param $n i32) (result i64)
    (if (i32.eqz (local.get $n)) (then unreachable))
    (i64.or (i64.shl (i64.extend_i32_u (local.get $p)) (i64.const 32)) (i64.extend_i32_u (local.get $n)))))
"""


def test_invoke_a_handler(rt: WasmRuntime, tmp_path: Path) -> None:
    async def scenario(co: Coordinator) -> None:
        add(co, "greet", "handler", handler_wasm("log"))
        ex = await co.invoke("greet", b"payload")
        assert isinstance(ex, Execution)
        assert (ex.state, ex.output, ex.error, ex.logs) == (S.SUCCEEDED, b"payload", None, [("info", "hello from wasm")])
        assert co.get(ex.id) is ex
        d = ex.to_dict()
        assert (d["state"], d["task"], d["output_bytes"], d["error"]) == ("succeeded", "greet", 7, None)
        assert d["duration_ms"] is not None and d["duration_ms"] >= 0
        assert d["queued_ms"] is not None and d["queued_ms"] >= 0

    on_hub(rt, tmp_path, scenario)


def test_invoke_a_command(rt: WasmRuntime, tmp_path: Path) -> None:
    async def scenario(co: Coordinator) -> None:
        add(co, "echo", "command", command_wasm("echo"))
        ex = await co.invoke("echo", b"stdin data")
        assert (ex.state, ex.output, ex.exit_code) == (S.SUCCEEDED, b"stdin data", 0)
        assert ex.logs == [("stderr", "log line on stderr")]

    on_hub(rt, tmp_path, scenario)


def test_command_exit_status_is_a_failure(rt: WasmRuntime, tmp_path: Path) -> None:
    async def scenario(co: Coordinator) -> None:
        add(co, "exit3", "command", command_wasm("exit3"))
        ex = await co.invoke("exit3", b"")
        assert (ex.state, ex.exit_code, ex.error.code) == (S.FAILED, 3, "exit_status")

    on_hub(rt, tmp_path, scenario)


def test_priority_override_is_recorded(rt: WasmRuntime, tmp_path: Path) -> None:
    async def scenario(co: Coordinator) -> None:
        add(co, "echo", "handler", handler_wasm("echo"), priority=3)
        assert (await co.invoke("echo", b"")).priority == 3
        assert (await co.invoke("echo", b"", priority=-7)).priority == -7

    on_hub(rt, tmp_path, scenario)


def test_unknown_task(rt: WasmRuntime, tmp_path: Path) -> None:
    async def scenario(co: Coordinator) -> None:
        with pytest.raises(UnknownTask) as info:
            await co.invoke("ghost", b"")
        assert (info.value.status, info.value.message) == (404, "no task named 'ghost' is registered")
        with pytest.raises(UnknownTask):
            co.submit("ghost", b"")
        with pytest.raises(UnknownTask):
            co.task("ghost")
        assert len(co.history) == 0

    on_hub(rt, tmp_path, scenario)


def test_unknown_execution(rt: WasmRuntime, tmp_path: Path) -> None:
    async def scenario(co: Coordinator) -> None:
        with pytest.raises(UnknownExecution) as info:
            co.get("nope")
        assert info.value.status == 404
        with pytest.raises(UnknownExecution):
            co.cancel("nope")

    on_hub(rt, tmp_path, scenario)


def test_input_over_the_limit_is_refused_before_running(rt: WasmRuntime, tmp_path: Path) -> None:
    async def scenario(co: Coordinator) -> None:
        add(co, "small", "handler", handler_wasm("echo"), limits={"max_input_kib": 1})
        assert (await co.invoke("small", b"a" * 1024)).state is S.SUCCEEDED
        with pytest.raises(PayloadTooLarge) as info:
            await co.invoke("small", b"a" * 1025)
        assert info.value.status == 413
        assert info.value.message == "input of 1025 bytes is over task 'small''s limit of 1 KiB"
        assert co.metrics.rejected == {"input_too_large": 1}
        assert len(co.history) == 1  # the refused one was never recorded

    on_hub(rt, tmp_path, scenario)


def test_a_trap_does_not_affect_the_next_execution(rt: WasmRuntime, tmp_path: Path) -> None:
    async def scenario(co: Coordinator) -> None:
        entry = add(co, "fragile", "handler", wasmtime.wat2wasm(TRAP_IF_EMPTY), max_concurrency=1)
        first = await co.invoke("fragile", b"")
        assert first.state is S.FAILED and isinstance(first.error, TaskTrapped)
        second = await co.invoke("fragile", b"fine")
        assert (second.state, second.output, second.error) == (S.SUCCEEDED, b"fine", None)
        assert entry.pool is not None
        assert (entry.pool.created, entry.pool.recycled) == (2, 1)  # the trapped instance was thrown away
        assert co.resources.in_flight == 0 and entry.slot.in_flight == 0

    on_hub(rt, tmp_path, scenario)


def test_pooled_instance_is_reused_between_executions(rt: WasmRuntime, tmp_path: Path) -> None:
    async def scenario(co: Coordinator) -> None:
        entry = add(co, "counter", "handler", handler_wasm("counter"), max_concurrency=1)
        counts = [struct.unpack("<i", (await co.invoke("counter", b"")).output)[0] for _ in range(4)]
        assert counts == [1, 2, 3, 4]
        assert entry.pool is not None and entry.pool.created == 1

    on_hub(rt, tmp_path, scenario)


def test_a_warm_handler_finishes_within_submit(rt: WasmRuntime, tmp_path: Path) -> None:
    """After the warm-up runs a fast handler runs inline: ``submit`` returns it done."""
    async def scenario(co: Coordinator) -> None:
        add(co, "fast", "handler", handler_wasm("echo"))
        warm_up = [co.submit("fast", b"w") for _ in range(3)]
        assert not any(ex.done for ex in warm_up)  # the first runs go to the thread pool
        for ex in warm_up:
            await ex.wait()
        ex = co.submit("fast", b"now")
        assert (ex.state, ex.output) == (S.SUCCEEDED, b"now")

    on_hub(rt, tmp_path, scenario, inline_threshold_us=1_000_000)


def test_a_command_never_runs_inline(rt: WasmRuntime, tmp_path: Path) -> None:
    async def scenario(co: Coordinator) -> None:
        add(co, "echo", "command", command_wasm("echo"))
        for _ in range(4):
            await co.invoke("echo", b"")
        ex = co.submit("echo", b"")
        assert ex.state is S.RUNNING
        await ex.wait()

    on_hub(rt, tmp_path, scenario, inline_threshold_us=1_000_000)


def test_finished_hooks_see_every_run_and_a_failing_hook_is_contained(rt: WasmRuntime, tmp_path: Path) -> None:
    async def scenario(co: Coordinator) -> None:
        add(co, "echo", "handler", handler_wasm("echo"))
        seen: list[tuple[str, bytes]] = []

        def broken(ex: Execution, outcome: Outcome) -> None:
            raise RuntimeError("hook bug")

        co.finished_hooks += [broken, lambda ex, outcome: seen.append((ex.id, outcome.output))]
        a = await co.invoke("echo", b"a")
        b = await co.invoke("echo", b"b")
        assert seen == [(a.id, b"a"), (b.id, b"b")]
        assert b.state is S.SUCCEEDED

    on_hub(rt, tmp_path, scenario)


SAMPLE = re.compile(r'^wasmyard_executions_total\{task="([^"]*)",state="([^"]*)"\} (\d+)$', re.M)


def test_metrics_count_executions_by_state(rt: WasmRuntime, tmp_path: Path) -> None:
    async def scenario(co: Coordinator) -> str:
        add(co, "ok", "handler", handler_wasm("echo"))
        add(co, "bad", "handler", handler_wasm("trap"))
        add(co, "slow", "command", command_wasm("loop"), max_concurrency=1, limits={"timeout_ms": 100})
        await co.invoke("ok", b"1")
        await co.invoke("ok", b"2")
        await co.invoke("bad", b"")
        running = co.submit("slow", b"")
        queued = co.submit("slow", b"")
        co.cancel(queued.id)
        await running.wait()
        return co.metrics.render()

    text = on_hub(rt, tmp_path, scenario)
    counts = {(task, state): int(n) for task, state, n in SAMPLE.findall(text)}
    assert counts == {("ok", "succeeded"): 2, ("bad", "failed"): 1, ("slow", "timed_out"): 1,
                      ("slow", "cancelled"): 1}
    assert "\nwasmyard_tasks 3\n" in text
    assert "\nwasmyard_in_flight 0\n" in text
    assert "\nwasmyard_queue_depth 0\n" in text


def test_aclose_is_idempotent_and_closes_the_pools(rt: WasmRuntime, tmp_path: Path) -> None:
    async def main() -> None:
        co = Coordinator(HubSettings(state_dir=tmp_path, workers=2), runtime=rt)
        entry = add(co, "echo", "handler", handler_wasm("echo"))
        await co.invoke("echo", b"x")
        assert entry.pool is not None and entry.pool.idle == 1
        await co.aclose()
        assert entry.pool.idle == 0
        await co.aclose()
        # A runtime handed in belongs to the caller: still usable.
        assert rt.compile(parse_manifest({"name": "after", "kind": "command"}), command_wasm("echo")).name == "after"

    asyncio.run(main())


@pytest.mark.parametrize(
    ("warm", "inline_threshold_us"),
    [pytest.param(False, 500, id="thread-pool"), pytest.param(True, 1_000_000, id="inline")],
)
def test_a_host_failure_is_recorded(rt: WasmRuntime, tmp_path: Path, warm: bool, inline_threshold_us: int) -> None:
    """The same host failure (no instance slot left in the runtime), once on a
    worker thread and once inline on the loop, becomes a HostError result and
    gives its grant back."""
    small = WasmRuntime(None, instances=2, max_memory_mib=16)

    async def main() -> None:
        co = Coordinator(HubSettings(state_dir=tmp_path, workers=2, inline_threshold_us=inline_threshold_us),
                         runtime=small)
        try:
            await exhaust_instances(co, warm=warm)
            ex = await co.invoke("fragile", b"x")
            assert ex.state is S.FAILED and isinstance(ex.error, HostError)
            assert co.resources.in_flight == 0
        finally:
            await co.aclose()

    try:
        asyncio.run(main())
    finally:
        small.close()


async def exhaust_instances(co: Coordinator, warm: bool) -> None:
    """Fill a two-slot runtime with idle instances of "b" and "c" while "fragile"
    has just thrown its own instance away after a trap."""
    one = {"max_concurrency": 1, "limits": {"memory_mib": 1}}
    add(co, "fragile", "handler", wasmtime.wat2wasm(TRAP_IF_EMPTY), **one)
    add(co, "b", "handler", handler_wasm("echo"), **one)
    add(co, "c", "handler", handler_wasm("echo"), **one)
    for _ in range(3 if warm else 1):
        assert (await co.invoke("fragile", b"x")).state is S.SUCCEEDED
    assert co.scheduler.inline(co.tasks["fragile"].slot) is warm
    assert (await co.invoke("b", b"x")).state is S.SUCCEEDED
    assert (await co.invoke("fragile", b"")).state is S.FAILED  # trap: instance closed, slot free
    assert (await co.invoke("c", b"x")).state is S.SUCCEEDED  # c takes that slot


def test_an_inline_execution_is_accounted_by_the_end_of_the_loop_turn(rt: WasmRuntime, tmp_path: Path) -> None:
    """A warm handler runs inline and its caller has the result at once; the
    metrics, the history and the finished hooks get it before the loop takes
    new work, and a lookup by id finds it even before that."""
    async def scenario(co: Coordinator) -> None:
        add(co, "h", "handler", handler_wasm("echo"))
        for _ in range(5):  # warm up: placement then runs it inline
            await co.invoke("h", b"warm")
        seen: list[str] = []
        co.finished_hooks.append(lambda ex, outcome: seen.append(ex.id))
        before = co.metrics.executions.get(("h", "succeeded"), 0)
        runs = [co.submit("h", b"%d" % i) for i in range(3)]
        assert all(ex.state is S.SUCCEEDED and ex.output == b"%d" % i for i, ex in enumerate(runs))
        assert co.get(runs[1].id) is runs[1]
        await asyncio.sleep(0)
        assert seen == [ex.id for ex in runs]  # once each, in the order they finished
        assert co.metrics.executions[("h", "succeeded")] == before + 3
        assert all(co.history.get(ex.id) is ex and ex.input == b"" for ex in runs)

    on_hub(rt, tmp_path, scenario)


def test_inline_runs_keep_their_own_logs_and_events(rt: WasmRuntime, tmp_path: Path) -> None:
    """Inline runs share one Sink; each execution still gets exactly what it logged and published."""
    async def scenario(co: Coordinator) -> None:
        add(co, "logs", "handler", handler_wasm("log", log_text="a line"))
        add(co, "quiet", "handler", handler_wasm("echo"))
        add(co, "pub", "handler", handler_wasm("publish"))
        for _ in range(5):  # warm up: placement then runs them inline
            for name in ("logs", "quiet", "pub"):
                await co.invoke(name, b"warm")
        published: list[tuple[str, list[tuple[str, bytes]]]] = []
        co.finished_hooks.append(lambda ex, outcome: published.append((ex.task, list(outcome.published))))
        runs = [co.submit(name, b"x%d" % i) for i in range(2) for name in ("logs", "quiet", "pub")]
        await asyncio.sleep(0)
        assert [list(ex.logs) for ex in runs] == [[("info", "a line")], [], []] * 2
        assert published == [("logs", []), ("quiet", []), ("pub", [("guest/out", b"x0")]),
                             ("logs", []), ("quiet", []), ("pub", [("guest/out", b"x1")])]

    on_hub(rt, tmp_path, scenario)


def test_a_caller_that_never_yields_does_not_pile_up_unaccounted_executions(rt: WasmRuntime,
                                                                           tmp_path: Path) -> None:
    async def scenario(co: Coordinator) -> None:
        add(co, "h", "handler", handler_wasm("echo"))
        for _ in range(5):
            await co.invoke("h", b"warm")
        before = len(co.history)  # an inline execution enters it when it is accounted
        runs = [co.submit("h", b"x") for _ in range(SETTLE_AT_MOST + 10)]
        assert all(ex.done for ex in runs)
        # no await since: accounting ran on its own once SETTLE_AT_MOST were waiting
        assert len(co.history) == before + SETTLE_AT_MOST
        await asyncio.sleep(0)
        assert len(co.history) == before + SETTLE_AT_MOST + 10
        assert co.metrics.executions[("h", "succeeded")] == 5 + SETTLE_AT_MOST + 10

    on_hub(rt, tmp_path, scenario)
