"""The scheduler's queue discipline: priority, FIFO, parking, withdrawal."""
from __future__ import annotations

from dataclasses import dataclass

import pytest

from engine.errors import Overloaded, QueueFull
from engine.manifest import parse_manifest
from engine.resources import ResourceManager, TaskSlot
from engine.scheduler import QUEUE, Scheduler


@dataclass(eq=False)
class Item:
    task: str
    label: str


class Hub:
    """A scheduler over named task slots, with helpers that read like the scenario."""

    def __init__(self, *, in_flight: int = 100, memory_mib: int = 100_000, max_queue: int = 1000,
                 **caps: int) -> None:
        self.resources = ResourceManager(in_flight, memory_mib)
        self.scheduler = Scheduler(self.resources, max_queue)
        self.slots: dict[str, TaskSlot] = {}
        for name, cap in caps.items():
            self.add(name, cap)

    def add(self, name: str, cap: int = 100, memory_mib: int = 1) -> TaskSlot:
        self.slots[name] = TaskSlot(parse_manifest({
            "name": name, "kind": "command", "max_concurrency": cap, "limits": {"memory_mib": memory_mib}}))
        return self.slots[name]

    def enqueue(self, task: str, label: str, priority: int = 0) -> int:
        return self.scheduler.enqueue(Item(task, label), priority)

    def next(self) -> str | None:
        item = self.scheduler.next_ready(lambda it: self.slots[it.task])
        return None if item is None else item.label

    def start_directly(self, task: str) -> None:
        assert self.resources.try_acquire(self.slots[task])

    def release(self, task: str) -> None:
        self.scheduler.finished(self.slots[task], 0.0, False)

    def drain(self) -> list[str]:
        out = []
        while (label := self.next()) is not None:
            out.append(label)
        return out


def test_higher_priority_first_fifo_within_a_priority() -> None:
    hub = Hub(t=100)
    plan = [("a", 0), ("b", 5), ("c", 0), ("d", -3), ("e", 5), ("f", 9), ("g", 0), ("h", -3)]
    for label, priority in plan:
        hub.enqueue("t", label, priority)
    assert hub.drain() == ["f", "b", "e", "a", "c", "g", "d", "h"]
    assert hub.scheduler.depth == 0


def test_entry_ids_increase() -> None:
    hub = Hub(t=1)
    ids = [hub.enqueue("t", str(i), i % 3) for i in range(5)]
    assert ids == sorted(ids) and len(set(ids)) == 5


def test_queue_full_raises_with_retry_after() -> None:
    hub = Hub(t=1, max_queue=2)
    hub.enqueue("t", "a")
    hub.enqueue("t", "b")
    with pytest.raises(QueueFull) as info:
        hub.enqueue("t", "c")
    err = info.value
    assert isinstance(err, Overloaded)
    assert err.retry_after > 0
    assert (err.code, err.status) == ("queue_full", 429)
    assert "2 waiting" in err.message
    assert hub.scheduler.depth == 2


def test_parked_entries_count_towards_the_queue_limit() -> None:
    hub = Hub(t=1, max_queue=2)
    hub.start_directly("t")
    hub.enqueue("t", "a")
    assert hub.next() is None  # "a" is parked on t
    assert hub.scheduler.depth == 1
    hub.enqueue("t", "b")
    with pytest.raises(QueueFull):
        hub.enqueue("t", "c")


def test_start_now_only_when_nothing_waits() -> None:
    hub = Hub(t=1, u=5)
    assert hub.scheduler.start_now(hub.slots["t"]) != QUEUE
    assert hub.slots["t"].in_flight == 1 and hub.resources.in_flight == 1
    assert hub.scheduler.start_now(hub.slots["t"]) == QUEUE  # at its cap
    hub.enqueue("u", "queued")
    assert hub.scheduler.start_now(hub.slots["u"]) == QUEUE  # would overtake "queued"
    assert hub.slots["u"].in_flight == 0


def test_next_ready_without_global_capacity_leaves_the_queue_alone() -> None:
    hub = Hub(in_flight=1, t=5, u=5)
    hub.start_directly("u")
    hub.enqueue("t", "a")
    assert hub.next() is None
    assert hub.scheduler.depth == 1 and hub.slots["t"].in_flight == 0
    hub.release("u")
    assert hub.next() == "a"


def test_a_task_at_its_cap_does_not_block_the_tasks_behind_it() -> None:
    hub = Hub(busy=1, other=5)
    hub.start_directly("busy")
    hub.enqueue("busy", "b1", priority=9)
    hub.enqueue("other", "o1")
    assert hub.next() == "o1"
    assert hub.next() is None  # b1 stays parked while busy is at its cap
    assert hub.scheduler.depth == 1


def test_unparked_entry_keeps_its_original_fifo_place() -> None:
    """busy1 waits parked while a later entry of another task runs; once busy has
    room again, busy1 goes before an entry queued after it at the same priority."""
    hub = Hub(busy=1, other=5)
    hub.start_directly("busy")
    hub.enqueue("busy", "busy1")
    hub.enqueue("other", "other1")
    assert hub.next() == "other1"  # runs in between; busy1 is parked
    hub.enqueue("other", "other2")
    hub.release("busy")
    assert hub.next() == "busy1"
    assert hub.next() == "other2"


def test_release_of_another_task_does_not_unpark() -> None:
    hub = Hub(busy=1, other=5)
    hub.start_directly("busy")
    hub.start_directly("other")
    hub.enqueue("busy", "busy1")
    assert hub.next() is None
    hub.release("other")
    assert hub.next() is None
    hub.release("busy")
    assert hub.next() == "busy1"


def test_one_release_unparks_one_entry() -> None:
    hub = Hub(busy=1)
    hub.start_directly("busy")
    for label in ("p1", "p2", "p3"):
        hub.enqueue("busy", label)
    assert hub.next() is None
    assert hub.scheduler.depth == 3
    hub.release("busy")
    assert hub.next() == "p1"
    assert hub.next() is None
    hub.release("busy")
    assert hub.next() == "p2"
    hub.release("busy")
    assert hub.next() == "p3"
    assert hub.scheduler.depth == 0


def test_remove_a_queued_entry() -> None:
    hub = Hub(t=5)
    a = hub.enqueue("t", "a")
    hub.enqueue("t", "b")
    assert hub.scheduler.remove(a, "t") is True
    assert hub.scheduler.depth == 1
    assert hub.scheduler.remove(a, "t") is False
    assert hub.drain() == ["b"]


def test_remove_a_parked_entry() -> None:
    hub = Hub(busy=1)
    hub.start_directly("busy")
    p1 = hub.enqueue("busy", "p1")
    hub.enqueue("busy", "p2")
    assert hub.next() is None  # both parked
    assert hub.scheduler.remove(p1, "busy") is True
    assert hub.scheduler.depth == 1
    assert hub.scheduler.remove(p1, "busy") is False
    hub.release("busy")
    assert hub.next() == "p2"


def test_remove_unknown_entry() -> None:
    hub = Hub(t=1)
    assert hub.scheduler.remove(12345, "t") is False
    assert hub.scheduler.remove(1, "nobody") is False


def test_drop_task_returns_only_that_tasks_parked_entries() -> None:
    hub = Hub(gone=1, kept=1)
    hub.start_directly("gone")
    hub.start_directly("kept")
    hub.enqueue("gone", "g1")
    hub.enqueue("kept", "k1")
    hub.enqueue("gone", "g2")
    assert hub.next() is None  # all three parked
    dropped = hub.scheduler.drop_task("gone")
    assert [item.label for item in dropped] == ["g1", "g2"]
    assert hub.scheduler.depth == 1
    assert hub.scheduler.drop_task("gone") == []
    hub.release("kept")
    assert hub.next() == "k1"


def test_drop_task_leaves_queued_entries_to_the_caller() -> None:
    """Entries still in the queue (never popped) are withdrawn one by one with
    ``remove``; ``drop_task`` only knows the parked ones."""
    hub = Hub(gone=1)
    entry = hub.enqueue("gone", "q1")
    assert hub.scheduler.drop_task("gone") == []
    assert hub.scheduler.depth == 1
    assert hub.scheduler.remove(entry, "gone") is True
    assert hub.scheduler.depth == 0


def test_entry_refused_for_memory_runs_once_memory_is_free() -> None:
    hub = Hub(in_flight=10, memory_mib=100)
    hub.add("a", cap=4, memory_mib=60)
    hub.add("b", cap=4, memory_mib=60)
    hub.start_directly("a")
    hub.enqueue("b", "b1")
    assert hub.next() is None  # 60 + 60 > 100: b1 must wait
    hub.release("a")
    assert hub.next() == "b1"


def test_unparking_respects_priority_within_a_task() -> None:
    hub = Hub(busy=1)
    hub.start_directly("busy")
    hub.enqueue("busy", "low", priority=0)
    assert hub.next() is None  # "low" parked
    hub.enqueue("busy", "high", priority=5)
    assert hub.next() is None  # "high" parked behind it
    hub.release("busy")
    assert hub.next() == "high"


def test_withdrawing_an_unparked_entry_unparks_the_next() -> None:
    hub = Hub(busy=1)
    hub.start_directly("busy")
    p1 = hub.enqueue("busy", "p1")
    hub.enqueue("busy", "p2")
    assert hub.next() is None  # both parked
    hub.release("busy")  # p1 is put back in the queue
    assert hub.scheduler.remove(p1, "busy") is True  # ... and cancelled before it ran
    assert hub.next() == "p2"
