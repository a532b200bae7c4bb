"""The on-disk module cache: hits across runtimes, keys, and damaged files."""
from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from guests import command_wasm, handler_wasm

from engine.manifest import Manifest, parse_manifest
from engine.runtime import HandlerInstance, WasmRuntime, run_command
from engine.runtime.host import Sink


@contextmanager
def runtime(cache: Path | None) -> Iterator[WasmRuntime]:
    rt = WasmRuntime(cache, instances=8, max_memory_mib=64)
    try:
        yield rt
    finally:
        rt.close()


def manifest(kind: str = "command", **limits: int) -> Manifest:
    return parse_manifest({"name": "t", "kind": kind, "limits": limits})


def artifacts(cache: Path) -> list[Path]:
    return sorted(cache.glob("*.cwasm"))


def test_second_runtime_on_the_same_directory_hits(tmp_path: Path) -> None:
    wasm = command_wasm("echo")
    with runtime(tmp_path) as first:
        first.compile(manifest(), wasm)
        assert first.cache_stats() == {"hits": 0, "misses": 1}
    assert len(artifacts(tmp_path)) == 1
    with runtime(tmp_path) as second:
        task = second.compile(manifest(), wasm)
        assert second.cache_stats() == {"hits": 1, "misses": 0}
        outcome = run_command(task, b"from the cache", Sink())
        assert (outcome.output, outcome.error) == (b"from the cache", None)


def test_same_runtime_hits_its_own_artifact(tmp_path: Path) -> None:
    with runtime(tmp_path) as rt:
        rt.compile(manifest("handler"), handler_wasm("echo"))
        task = rt.compile(manifest("handler"), handler_wasm("echo"))
        assert rt.cache_stats() == {"hits": 1, "misses": 1}
        instance = HandlerInstance(task)
        try:
            assert instance.invoke(b"ok", Sink()).output == b"ok"
        finally:
            instance.close()


def test_different_modules_do_not_share_an_artifact(tmp_path: Path) -> None:
    with runtime(tmp_path) as rt:
        rt.compile(manifest(), command_wasm("echo"))
        rt.compile(manifest(), command_wasm("trap"))
        assert rt.cache_stats() == {"hits": 0, "misses": 2}
    assert len(artifacts(tmp_path)) == 2


def test_fuel_metering_is_part_of_the_key(tmp_path: Path) -> None:
    """Fuel changes the generated code: an artifact compiled without it must not
    be loaded into the fuel engine (it would not even deserialize)."""
    wasm = command_wasm("echo")
    with runtime(tmp_path) as rt:
        rt.compile(manifest(), wasm)
        task = rt.compile(manifest(fuel=1_000_000), wasm)
        assert rt.cache_stats() == {"hits": 0, "misses": 2}
        assert run_command(task, b"metered", Sink()).output == b"metered"
    assert len(artifacts(tmp_path)) == 2
    with runtime(tmp_path) as rt:
        rt.compile(manifest(fuel=5), wasm)
        rt.compile(manifest(), wasm)
        assert rt.cache_stats() == {"hits": 2, "misses": 0}


@pytest.mark.parametrize("damage", ["garbage", "truncated", "empty"])
def test_a_damaged_artifact_is_discarded_and_recompiled(tmp_path: Path, damage: str) -> None:
    wasm = command_wasm("echo")
    with runtime(tmp_path) as rt:
        rt.compile(manifest(), wasm)
    [path] = artifacts(tmp_path)
    good = path.read_bytes()
    path.write_bytes({"garbage": b"not an artifact" * 50, "truncated": good[: len(good) // 2], "empty": b""}[damage])
    with runtime(tmp_path) as rt:
        task = rt.compile(manifest(), wasm)
        assert rt.cache_stats() == {"hits": 0, "misses": 1}
        assert run_command(task, b"recompiled", Sink()).output == b"recompiled"
    assert artifacts(tmp_path) == [path]  # written again, under the same name
    with runtime(tmp_path) as rt:
        rt.compile(manifest(), wasm)
        assert rt.cache_stats() == {"hits": 1, "misses": 0}


def test_no_temporary_files_are_left_behind(tmp_path: Path) -> None:
    with runtime(tmp_path) as rt:
        rt.compile(manifest(), command_wasm("echo"))
        rt.compile(manifest("handler"), handler_wasm("echo"))
    assert sorted(p.suffix for p in tmp_path.iterdir()) == [".cwasm", ".cwasm"]


def test_cache_directory_is_created(tmp_path: Path) -> None:
    cache = tmp_path / "a" / "b"
    with runtime(cache) as rt:
        rt.compile(manifest(), command_wasm("echo"))
    assert len(artifacts(cache)) == 1
