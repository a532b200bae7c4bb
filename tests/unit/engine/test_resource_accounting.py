"""The resource manager: hub-wide in-flight cap, per-task cap, memory budget."""
from __future__ import annotations

import pytest

from engine.errors import InvalidManifest
from engine.manifest import parse_manifest
from engine.resources import ResourceManager, TaskSlot


def slot(name: str = "t", *, cap: int = 4, memory_mib: int = 16, kind: str = "command") -> TaskSlot:
    return TaskSlot(parse_manifest({"name": name, "kind": kind, "max_concurrency": cap,
                                    "limits": {"memory_mib": memory_mib}}))


def test_task_slot_from_manifest() -> None:
    s = slot("h", cap=3, memory_mib=8, kind="handler")
    assert (s.name, s.max_concurrency, s.memory_mib, s.handler) == ("h", 3, 8, True)
    assert (s.in_flight, s.runs, s.ewma_s) == (0, 0, 0.0)
    assert slot(kind="command").handler is False


def test_hub_wide_in_flight_cap() -> None:
    rm = ResourceManager(max_in_flight=3, memory_budget_mib=10_000)
    a, b = slot("a"), slot("b")
    assert [rm.try_acquire(a), rm.try_acquire(b), rm.try_acquire(a)] == [True, True, True]
    assert not rm.has_capacity()
    assert rm.try_acquire(b) is False
    assert (rm.in_flight, a.in_flight, b.in_flight) == (3, 2, 1)
    rm.release(a)
    assert rm.has_capacity()
    assert rm.try_acquire(b) is True
    assert (rm.in_flight, a.in_flight, b.in_flight) == (3, 1, 2)


def test_per_task_cap_leaves_room_for_other_tasks() -> None:
    rm = ResourceManager(max_in_flight=10, memory_budget_mib=10_000)
    a, b = slot("a", cap=2), slot("b", cap=2)
    assert rm.try_acquire(a) and rm.try_acquire(a)
    assert rm.try_acquire(a) is False
    assert rm.in_flight == 2 and a.in_flight == 2  # a refusal changes nothing
    assert rm.try_acquire(b) is True
    rm.release(a)
    assert rm.try_acquire(a) is True


def test_memory_budget() -> None:
    rm = ResourceManager(max_in_flight=10, memory_budget_mib=100)
    big, small = slot("big", memory_mib=60), slot("small", memory_mib=30)
    assert rm.try_acquire(big) and rm.memory_mib == 60
    assert rm.try_acquire(big) is False  # 120 > 100
    assert rm.try_acquire(small) is True and rm.memory_mib == 90
    assert rm.try_acquire(small) is False  # 120 > 100
    assert (rm.in_flight, big.in_flight, small.in_flight) == (2, 1, 1)
    rm.release(big)
    assert rm.memory_mib == 30
    assert rm.try_acquire(small) is True and rm.memory_mib == 60


def test_memory_budget_exactly_full_is_allowed() -> None:
    rm = ResourceManager(max_in_flight=10, memory_budget_mib=64)
    s = slot(memory_mib=32)
    assert rm.try_acquire(s) and rm.try_acquire(s)
    assert rm.memory_mib == 64
    assert rm.try_acquire(slot("other", memory_mib=1)) is False


def test_release_gives_everything_back() -> None:
    rm = ResourceManager(max_in_flight=2, memory_budget_mib=100)
    s = slot(memory_mib=40)
    rm.try_acquire(s)
    rm.try_acquire(s)
    rm.release(s)
    rm.release(s)
    assert (rm.in_flight, rm.memory_mib, s.in_flight) == (0, 0, 0)


def test_release_without_grant_raises_and_changes_nothing() -> None:
    rm = ResourceManager(max_in_flight=2, memory_budget_mib=100)
    granted, never = slot("granted"), slot("never")
    rm.try_acquire(granted)
    with pytest.raises(RuntimeError, match="release without a grant for task 'never'"):
        rm.release(never)
    assert (rm.in_flight, rm.memory_mib, granted.in_flight, never.in_flight) == (1, 16, 1, 0)
    rm.release(granted)
    with pytest.raises(RuntimeError):
        rm.release(granted)


def test_admit_refuses_a_task_bigger_than_the_whole_budget() -> None:
    rm = ResourceManager(max_in_flight=2, memory_budget_mib=64)
    with pytest.raises(InvalidManifest) as info:
        rm.admit(parse_manifest({"name": "huge", "kind": "command", "limits": {"memory_mib": 65}}))
    assert "'huge' asks for 65 MiB" in info.value.message
    assert "memory budget of 64 MiB" in info.value.message


def test_admit_accepts_a_task_that_fits_exactly() -> None:
    rm = ResourceManager(max_in_flight=2, memory_budget_mib=64)
    assert rm.admit(parse_manifest({"name": "fits", "kind": "command", "limits": {"memory_mib": 64}})) is None
    assert (rm.in_flight, rm.memory_mib) == (0, 0)  # admitting reserves nothing
