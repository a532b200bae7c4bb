"""Task registration on a coordinator: register, replace, remove, load from a file."""
from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from guests import command_wasm, handler_wasm
from hubtools import add, on_hub

from engine.coordinator import Coordinator
from engine.errors import (
    ExecutionCancelled,
    InvalidManifest,
    InvalidModule,
    UnknownTask,
)
from engine.execution import Execution
from engine.lifecycle import ExecutionState
from engine.manifest import parse_manifest
from engine.runtime import WasmRuntime

S = ExecutionState


async def ended(*executions: Execution) -> None:
    await asyncio.wait_for(asyncio.gather(*(ex.wait() for ex in executions)), 10)


def test_register_off_the_loop(rt: WasmRuntime, tmp_path: Path) -> None:
    async def scenario(co: Coordinator) -> None:
        entry = await co.register(parse_manifest({"name": "echo", "kind": "handler"}), handler_wasm("echo"))
        assert co.task("echo") is entry
        assert (await co.invoke("echo", b"hi")).output == b"hi"

    on_hub(rt, tmp_path, scenario)


def test_register_refuses_an_invalid_module(rt: WasmRuntime, tmp_path: Path) -> None:
    async def scenario(co: Coordinator) -> None:
        with pytest.raises(InvalidModule):
            await co.register(parse_manifest({"name": "bad", "kind": "handler"}), command_wasm("echo"))
        assert "bad" not in co.tasks

    on_hub(rt, tmp_path, scenario)


def test_a_task_bigger_than_the_memory_budget_is_refused(rt: WasmRuntime, tmp_path: Path) -> None:
    async def scenario(co: Coordinator) -> None:
        manifest = parse_manifest({"name": "huge", "kind": "command", "limits": {"memory_mib": 64}})
        with pytest.raises(InvalidManifest, match="more than this hub's whole memory budget of 32 MiB"):
            co.compile(manifest, command_wasm("echo"))
        assert "huge" not in co.tasks

    on_hub(rt, tmp_path, scenario, memory_budget_mib=32)


def test_task_entry_to_dict(rt: WasmRuntime, tmp_path: Path) -> None:
    async def scenario(co: Coordinator) -> None:
        wasm = handler_wasm("echo")
        entry = add(co, "echo", "handler", wasm, version="2.0.0")
        await co.invoke("echo", b"x")
        d = entry.to_dict()
        assert (d["name"], d["version"], d["kind"], d["isolation"]) == ("echo", "2.0.0", "handler", "pooled")
        assert d["sha256"] == entry.compiled.digest and len(d["sha256"]) == 64
        assert (d["module_bytes"], d["in_flight"], d["runs"]) == (len(wasm), 0, 1)
        assert d["pool"] == {"idle": 1, "created": 1, "recycled": 0}
        assert "pool" not in add(co, "cmd", "command", command_wasm("echo")).to_dict()

    on_hub(rt, tmp_path, scenario)


def test_remove_task_cancels_its_queued_and_parked_executions(rt: WasmRuntime, tmp_path: Path) -> None:
    async def scenario(co: Coordinator) -> None:
        add(co, "doomed", "command", command_wasm("loop"), max_concurrency=1, limits={"timeout_ms": 300})
        add(co, "tick", "command", command_wasm("loop"), limits={"timeout_ms": 50})
        add(co, "other", "command", command_wasm("loop"), max_concurrency=1, limits={"timeout_ms": 300})
        running = co.submit("doomed", b"")
        tick = co.submit("tick", b"")
        parked = co.submit("doomed", b"")
        await ended(tick)  # pumps the queue: "parked" is parked on its busy task
        queued = co.submit("doomed", b"")
        other = co.submit("other", b"")  # another task's execution: not affected
        co.remove_task("doomed")
        for ex in (parked, queued):
            assert ex.state is S.CANCELLED
            assert isinstance(ex.error, ExecutionCancelled)
            assert ex.error.message == "task 'doomed' was removed"
        assert running.state is S.RUNNING  # a running execution runs to its end
        with pytest.raises(UnknownTask):
            co.submit("doomed", b"")
        await ended(running, other)
        assert running.state is S.TIMED_OUT
        assert other.state is S.TIMED_OUT
        assert (co.scheduler.depth, co.resources.in_flight) == (0, 0)

    on_hub(rt, tmp_path, scenario)


def test_remove_unknown_task(rt: WasmRuntime, tmp_path: Path) -> None:
    async def scenario(co: Coordinator) -> None:
        with pytest.raises(UnknownTask):
            co.remove_task("ghost")

    on_hub(rt, tmp_path, scenario)


def test_remove_closes_the_pool(rt: WasmRuntime, tmp_path: Path) -> None:
    async def scenario(co: Coordinator) -> None:
        entry = add(co, "echo", "handler", handler_wasm("echo"))
        await co.invoke("echo", b"x")
        assert entry.pool is not None and entry.pool.idle == 1
        co.remove_task("echo")
        assert entry.pool.idle == 0
        assert "echo" not in co.tasks

    on_hub(rt, tmp_path, scenario)


def test_replacing_a_task_runs_waiting_executions_on_the_new_version(rt: WasmRuntime, tmp_path: Path) -> None:
    async def scenario(co: Coordinator) -> None:
        add(co, "t", "command", command_wasm("loop"), version="1", max_concurrency=1, limits={"timeout_ms": 200})
        first = co.submit("t", b"first")
        waiting = co.submit("t", b"second")
        new = add(co, "t", "command", command_wasm("echo"), version="2", max_concurrency=1)
        assert co.task("t") is new
        await ended(first, waiting)
        assert first.state is S.TIMED_OUT  # the old version ran to its end
        assert (waiting.state, waiting.output) == (S.SUCCEEDED, b"second")
        assert co.resources.in_flight == 0

    on_hub(rt, tmp_path, scenario)


def test_replacing_a_pooled_task_drops_the_old_instances(rt: WasmRuntime, tmp_path: Path) -> None:
    async def scenario(co: Coordinator) -> None:
        old = add(co, "c", "handler", handler_wasm("counter"))
        await co.invoke("c", b"")
        await co.invoke("c", b"")
        assert old.pool is not None and old.pool.idle == 1
        new = add(co, "c", "handler", handler_wasm("counter"))
        assert old.pool.idle == 0
        assert (await co.invoke("c", b"")).output == (1).to_bytes(4, "little")  # fresh state
        assert new.pool is not None and new.pool.created == 1

    on_hub(rt, tmp_path, scenario)


def test_load_manifest_file(rt: WasmRuntime, tmp_path: Path) -> None:
    task_dir = tmp_path / "greeter"
    task_dir.mkdir()
    (task_dir / "greeter.wasm").write_bytes(handler_wasm("echo"))
    (task_dir / "task.toml").write_text('name = "greeter"\nkind = "handler"\nmodule = "greeter.wasm"\n')
    (task_dir / "task.json").write_text('{"name": "greeter-json", "kind": "handler", "module": "greeter.wasm"}')

    async def scenario(co: Coordinator) -> None:
        entry = co.load_manifest_file(task_dir / "task.toml")
        assert (entry.manifest.name, entry.manifest.module) == ("greeter", "greeter.wasm")
        assert (await co.invoke("greeter", b"from a file")).output == b"from a file"
        assert co.load_manifest_file(task_dir / "task.json").manifest.name == "greeter-json"

    on_hub(rt, tmp_path, scenario)


def test_load_manifest_file_needs_a_module(rt: WasmRuntime, tmp_path: Path) -> None:
    path = tmp_path / "task.toml"
    path.write_text('name = "nomod"\nkind = "handler"\n')

    async def scenario(co: Coordinator) -> None:
        with pytest.raises(InvalidManifest, match="'module' is required in a manifest file"):
            co.load_manifest_file(path)

    on_hub(rt, tmp_path, scenario)
