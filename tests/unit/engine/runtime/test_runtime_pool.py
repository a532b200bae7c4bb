"""InstancePool: warm instances are reused; failed, worn-out or surplus ones are not."""
from __future__ import annotations

import struct

import pytest
from guests import handler_wasm

from engine.manifest import parse_manifest
from engine.runtime import CompiledTask, HandlerInstance, InstancePool, WasmRuntime
from engine.runtime.host import Sink


@pytest.fixture
def counter(rt: WasmRuntime) -> CompiledTask:
    return rt.compile(parse_manifest({"name": "c", "kind": "handler", "max_concurrency": 2}), handler_wasm("counter"))


def count(inst: HandlerInstance) -> int:
    out = inst.invoke(b"", Sink())
    assert out.error is None
    return struct.unpack("<i", out.output)[0]


def test_a_released_healthy_instance_is_reused(counter: CompiledTask) -> None:
    pool = InstancePool(counter)
    first = pool.acquire()
    assert (pool.created, pool.idle) == (1, 0)
    assert count(first) == 1
    pool.release(first, healthy=True)
    assert pool.idle == 1
    again = pool.acquire()
    assert again is first
    assert count(again) == 2  # same instance, state kept
    assert pool.created == 1
    pool.release(again, healthy=True)
    pool.close()


def test_an_instance_after_a_failure_is_not_reused(counter: CompiledTask) -> None:
    pool = InstancePool(counter)
    failed = pool.acquire()
    assert count(failed) == 1
    pool.release(failed, healthy=False)
    assert (pool.idle, pool.recycled) == (0, 1)
    with pytest.raises(ValueError, match="closed"):
        failed.invoke(b"", Sink())  # it was closed
    fresh = pool.acquire()
    assert fresh is not failed
    assert pool.created == 2
    assert count(fresh) == 1  # a new instance starts from scratch
    pool.release(fresh, healthy=True)
    pool.close()


def test_concurrent_executions_get_distinct_instances(counter: CompiledTask) -> None:
    pool = InstancePool(counter)
    a, b = pool.acquire(), pool.acquire()
    assert a is not b and pool.created == 2
    pool.release(a, True)
    pool.release(b, True)
    assert pool.idle == 2
    pool.close()


def test_idle_instances_are_capped_at_max_concurrency(counter: CompiledTask) -> None:
    """Nested invokes may create more instances than the task's concurrency;
    only max_concurrency (2 here) are kept."""
    pool = InstancePool(counter)
    held = [pool.acquire() for _ in range(3)]
    for inst in held:
        pool.release(inst, True)
    assert (pool.created, pool.idle, pool.recycled) == (3, 2, 1)
    pool.close()


def test_worn_out_instances_are_replaced(counter: CompiledTask) -> None:
    pool = InstancePool(counter, max_uses=2)
    inst = pool.acquire()
    count(inst)
    pool.release(inst, True)
    inst = pool.acquire()
    assert count(inst) == 2
    pool.release(inst, True)  # its second use: retired
    assert (pool.idle, pool.recycled) == (0, 1)
    fresh = pool.acquire()
    assert fresh is not inst and count(fresh) == 1
    pool.release(fresh, True)
    pool.close()


def test_close_closes_idle_instances_and_later_releases(counter: CompiledTask) -> None:
    pool = InstancePool(counter)
    idle, busy = pool.acquire(), pool.acquire()
    pool.release(idle, True)
    pool.close()
    assert pool.idle == 0
    with pytest.raises(ValueError, match="closed"):
        idle.invoke(b"", Sink())
    assert count(busy) == 1  # a running execution is not disturbed ...
    pool.release(busy, True)  # ... and its instance is closed when it comes back
    assert pool.idle == 0
    with pytest.raises(ValueError, match="closed"):
        busy.invoke(b"", Sink())
    pool.close()  # idempotent
