"""``wasmyard.publish`` and ``wasmyard.invoke`` through a real coordinator.

The guests answer the status code a host import returned as 4 little-endian
bytes, so each test reads exactly what the guest saw.
"""
from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from guests import command_wasm, handler_wasm

from engine.config import HubSettings
from engine.coordinator import MAX_INVOKE_DEPTH, Coordinator
from engine.execution import Execution
from engine.lifecycle import ExecutionState
from engine.manifest import parse_manifest
from engine.runtime import Outcome, WasmRuntime, host

S = ExecutionState


def status(ex: Execution) -> int:
    assert ex.state is S.SUCCEEDED, ex.error
    return int.from_bytes(ex.output, "little", signed=True)


def on_hub(rt: WasmRuntime, tmp_path: Path, scenario: Callable[[Coordinator, list], Awaitable[Any]]) -> Any:
    async def main() -> Any:
        co = Coordinator(HubSettings(state_dir=tmp_path, workers=2), runtime=rt)
        published: list[tuple[str, list[tuple[str, bytes]]]] = []

        def hook(ex: Execution, outcome: Outcome) -> None:
            published.append((ex.task, list(outcome.sink.published)))

        co.finished_hooks.append(hook)
        try:
            return await scenario(co, published)
        finally:
            await co.aclose()

    return asyncio.run(main())


def add(co: Coordinator, name: str, wasm: bytes, kind: str = "handler", **fields: Any) -> None:
    co.register_compiled(co.compile(parse_manifest({"name": name, "kind": kind, **fields}), wasm))


def test_publish_hands_events_to_the_coordinator_when_the_execution_ends(rt: WasmRuntime, tmp_path: Path) -> None:
    async def scenario(co: Coordinator, published: list) -> None:
        add(co, "pub", handler_wasm("publish"))
        ex = await co.invoke("pub", b"reading")
        assert ex.output == b"reading"
        assert published == [("pub", [("guest/out", b"reading")])]

    on_hub(rt, tmp_path, scenario)


def test_a_publish_loop_is_cut_at_the_execution_budget(rt: WasmRuntime, tmp_path: Path) -> None:
    async def scenario(co: Coordinator, published: list) -> None:
        add(co, "flood", handler_wasm("publish_flood"))
        ex = await co.invoke("flood", b"x" * 10)
        assert status(ex) == host.PUBLISH_LIMIT
        events = published[0][1]
        assert len(events) == host.MAX_PUBLISHES
        # bytes are budgeted too: 1 KiB payloads run out of bytes before count
        add(co, "bigflood", handler_wasm("publish_flood"))
        ex = await co.invoke("bigflood", b"y" * 4096)
        assert status(ex) == host.PUBLISH_LIMIT
        assert len(published[1][1]) == host.MAX_PUBLISH_BYTES // 4096

    on_hub(rt, tmp_path, scenario)


def test_invoke_returns_the_callee_output(rt: WasmRuntime, tmp_path: Path) -> None:
    async def scenario(co: Coordinator, published: list) -> None:
        add(co, "echo", handler_wasm("echo"))
        add(co, "caller", handler_wasm("invoke", target="echo"))
        ex = await co.invoke("caller", b"through two tasks")
        assert ex.output == b"through two tasks"

    on_hub(rt, tmp_path, scenario)


def test_invoke_a_command_task(rt: WasmRuntime, tmp_path: Path) -> None:
    async def scenario(co: Coordinator, published: list) -> None:
        add(co, "cecho", command_wasm("echo"), kind="command")
        add(co, "caller", handler_wasm("invoke", target="cecho"))
        ex = await co.invoke("caller", b"to a command")
        assert ex.output == b"to a command"

    on_hub(rt, tmp_path, scenario)


@pytest.mark.parametrize(
    ("target", "callee", "expected"),
    [
        ("nosuch", None, host.INVOKE_UNKNOWN_TASK),
        ("trapper", "trap", host.INVOKE_FAILED),
        ("refuser", "error", host.INVOKE_FAILED),
        ("self", None, host.INVOKE_TOO_DEEP),
    ],
)
def test_invoke_failures_are_status_codes_not_crashes(
    rt: WasmRuntime, tmp_path: Path, target: str, callee: str | None, expected: int
) -> None:
    async def scenario(co: Coordinator, published: list) -> None:
        if callee is not None:
            add(co, target, handler_wasm(callee))
        add(co, "self" if target == "self" else "caller", handler_wasm("invoke", target=target))
        ex = await co.invoke("self" if target == "self" else "caller", b"x")
        assert status(ex) == expected
        # and the hub carries on
        add(co, "plain", handler_wasm("echo"))
        assert (await co.invoke("plain", b"ok")).output == b"ok"

    on_hub(rt, tmp_path, scenario)


def test_recursion_stops_at_the_depth_limit(rt: WasmRuntime, tmp_path: Path) -> None:
    async def scenario(co: Coordinator, published: list) -> None:
        add(co, "self", handler_wasm("invoke", target="self"))
        ex = await co.invoke("self", b"x")
        assert status(ex) == host.INVOKE_TOO_DEEP
        # each level took its own instance instead of waiting for the one in use
        assert co.tasks["self"].pool.created == MAX_INVOKE_DEPTH + 1

    on_hub(rt, tmp_path, scenario)


def test_output_larger_than_the_callers_buffer(rt: WasmRuntime, tmp_path: Path) -> None:
    async def scenario(co: Coordinator, published: list) -> None:
        add(co, "echo", handler_wasm("echo"))
        add(co, "caller", handler_wasm("invoke", target="echo"))
        ex = await co.invoke("caller", b"z" * 20_000)  # the guest's buffer holds 16 KiB
        assert status(ex) == host.INVOKE_BUFFER_TOO_SMALL

    on_hub(rt, tmp_path, scenario)


def test_invoke_while_the_callee_pool_is_busy_does_not_deadlock(rt: WasmRuntime, tmp_path: Path) -> None:
    """Eight concurrent callers, both tasks capped at one execution: every
    nested call happens while the caller holds its task's only grant, and
    all of them finish (the recursion test above covers a truly busy pool)."""
    async def scenario(co: Coordinator, published: list) -> None:
        add(co, "echo", handler_wasm("echo"), max_concurrency=1)
        add(co, "caller", handler_wasm("invoke", target="echo"), max_concurrency=1)
        results = await asyncio.wait_for(asyncio.gather(*(co.invoke("caller", b"%d" % i) for i in range(8))), 20)
        assert [ex.output for ex in results] == [b"%d" % i for i in range(8)]
        assert co.tasks["echo"].pool.idle <= 1  # extras made for nested calls are not kept

    on_hub(rt, tmp_path, scenario)


def test_what_a_callee_publishes_counts_against_the_caller(rt: WasmRuntime, tmp_path: Path) -> None:
    async def scenario(co: Coordinator, published: list) -> None:
        add(co, "pub", handler_wasm("publish"))
        add(co, "caller", handler_wasm("invoke", target="pub"))
        ex = await co.invoke("caller", b"nested")
        assert ex.output == b"nested"
        assert ("caller", [("guest/out", b"nested")]) in published

    on_hub(rt, tmp_path, scenario)


def test_host_imports_outside_an_execution_do_nothing_harmful() -> None:
    assert host.current() is None
    sink = host.Sink()
    previous = host.enter(sink)
    try:
        assert host.current() is sink
    finally:
        host.leave(previous)
    assert host.current() is None


def test_a_command_invoking_a_command_keeps_its_own_output(rt: WasmRuntime, tmp_path: Path) -> None:
    """The inner command runs in the caller's thread; it must not write over
    (or truncate) the outer command's stdout."""
    async def scenario(co: Coordinator, published: list) -> None:
        add(co, "cecho", command_wasm("echo"), kind="command")
        add(co, "outer", command_wasm("nested"), kind="command")
        ex = await co.invoke("outer", b"")
        assert ex.state is S.SUCCEEDED, ex.error
        assert ex.output == b"outer:inner"

    on_hub(rt, tmp_path, scenario)
