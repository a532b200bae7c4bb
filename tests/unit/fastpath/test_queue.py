"""The scheduler's priority queue: both twins, against tables and a heapq reference."""
from __future__ import annotations

import copy
import gc
import heapq
import importlib
import inspect
import pickle
import random
import sys
import weakref
from types import ModuleType
from typing import Any

import pytest
from twins import twin_params
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule, run_state_machine_as_test

import fastpath

INT64_MIN = -(1 << 63)
INT64_MAX = (1 << 63) - 1
PUBLIC_METHODS = ("push", "repush", "pop", "pop_entry", "peek", "remove", "clear")
DUNDERS = ("__init__", "__contains__", "__len__", "__bool__")


class Reference:
    """The model: heapq with (-priority, entry_id) keys."""

    def __init__(self) -> None:
        self.heap: list[tuple[int, int, object]] = []
        self.last = 0

    def push(self, item: object, priority: int) -> int:
        self.last += 1
        heapq.heappush(self.heap, (-priority, self.last, item))
        return self.last

    def repush(self, item: object, priority: int, entry_id: int) -> None:
        heapq.heappush(self.heap, (-priority, entry_id, item))

    def pop_entry(self) -> tuple[int, int, object]:
        priority, entry_id, item = heapq.heappop(self.heap)
        return entry_id, -priority, item

    def remove(self, entry_id: int) -> bool:
        kept = [entry for entry in self.heap if entry[1] != entry_id]
        found, self.heap = len(kept) < len(self.heap), kept
        heapq.heapify(self.heap)
        return found

    def __contains__(self, entry_id: int) -> bool:
        return any(entry[1] == entry_id for entry in self.heap)

    def __len__(self) -> int:
        return len(self.heap)


@pytest.fixture(params=twin_params("queue"))
def twin(request: pytest.FixtureRequest) -> ModuleType:
    return request.param


@pytest.fixture
def queue(twin: ModuleType) -> Any:
    return twin.PriorityQueue()


def drain(queue: Any) -> list[object]:
    out = []
    while queue:
        out.append(queue.pop())
    return out


class Index:
    """An int-like that is not an int (numpy scalars look like this)."""

    def __init__(self, value: int) -> None:
        self.value = value

    def __index__(self) -> int:
        return self.value


class Item:
    """Weak-referenceable, and deliberately neither comparable nor hashable."""

    __hash__ = None  # type: ignore[assignment]

    def __eq__(self, other: object) -> bool:
        raise AssertionError("items are never compared")

    def __lt__(self, other: object) -> bool:
        raise AssertionError("items are never compared")


# -- the selector ----------------------------------------------------------------


def test_selector_exports_the_loaded_twin() -> None:
    suffix = {"cython": "_c", "python": "_py"}[fastpath.IMPLEMENTATION]
    assert fastpath.PriorityQueue is importlib.import_module(f"fastpath._queue{suffix}").PriorityQueue


def test_twins_expose_the_same_api() -> None:
    compiled = pytest.importorskip("fastpath._queue_c")
    pure = importlib.import_module("fastpath._queue_py")
    c_cls, py_cls = compiled.PriorityQueue, pure.PriorityQueue

    def public(cls: type) -> set[str]:
        return {name for name in dir(cls) if not name.startswith("_")}

    assert public(c_cls) == public(py_cls) == set(PUBLIC_METHODS)
    assert compiled.__all__ == pure.__all__ == ["PriorityQueue"]
    for name in DUNDERS + ("__reduce__",):
        assert name in vars(c_cls) and name in vars(py_cls), name
    for name in PUBLIC_METHODS:
        c_sig = inspect.signature(getattr(c_cls, name))
        py_sig = inspect.signature(getattr(py_cls, name))
        strip = [(p.name, p.kind, p.default) for p in c_sig.parameters.values()]
        assert strip == [(p.name, p.kind, p.default) for p in py_sig.parameters.values()], name
        assert getattr(c_cls, name).__doc__ == getattr(py_cls, name).__doc__, name
    assert c_cls.__doc__ == py_cls.__doc__


# -- table tests -----------------------------------------------------------------


def test_new_queue_is_empty(queue: Any) -> None:
    assert len(queue) == 0
    assert not queue
    assert 1 not in queue
    with pytest.raises(IndexError, match="pop from an empty PriorityQueue"):
        queue.pop()
    with pytest.raises(IndexError, match="pop from an empty PriorityQueue"):
        queue.pop_entry()
    with pytest.raises(IndexError, match="peek from an empty PriorityQueue"):
        queue.peek()


def test_constructor_takes_no_arguments(twin: ModuleType) -> None:
    with pytest.raises(TypeError):
        twin.PriorityQueue(1)


def test_push_returns_monotonic_ids_from_one(queue: Any) -> None:
    assert [queue.push(f"item{n}", n % 3) for n in range(5)] == [1, 2, 3, 4, 5]
    assert len(queue) == 5 and queue
    assert all(entry_id in queue for entry_id in range(1, 6))
    assert 0 not in queue and 6 not in queue


@pytest.mark.parametrize(
    ("priorities", "order"),
    [
        ([0, 0, 0], [0, 1, 2]),  # FIFO within one priority
        ([1, 3, 2], [1, 2, 0]),
        ([2, 5, 2, 5, 2], [1, 3, 0, 2, 4]),  # FIFO within each priority
        ([-1, -5, 0, -1], [2, 0, 3, 1]),  # negative priorities
        ([INT64_MIN, INT64_MAX, 0, INT64_MAX], [1, 3, 2, 0]),  # the extremes
        ([7], [0]),
    ],
)
def test_higher_priority_first_fifo_within(queue: Any, priorities: list[int], order: list[int]) -> None:
    for index, priority in enumerate(priorities):
        queue.push(index, priority)
    assert drain(queue) == order


def test_default_priority_is_zero_and_keywords_work(queue: Any) -> None:
    queue.push("a")
    queue.push(item="b", priority=1)
    queue.push("c", priority=-1)
    assert drain(queue) == ["b", "a", "c"]


def test_pop_entry_peek(queue: Any) -> None:
    item = Item()
    queue.push("low", -2)
    entry_id = queue.push(item, 9)
    assert queue.peek() is item
    assert len(queue) == 2  # peek leaves it there
    got = queue.pop_entry()
    assert got == (entry_id, 9, item) and type(got) is tuple
    assert type(got[0]) is int and type(got[1]) is int
    assert queue.pop_entry() == (1, -2, "low")
    assert not queue


@pytest.mark.parametrize(
    ("priority", "stored"),
    [(INT64_MIN, INT64_MIN), (INT64_MAX, INT64_MAX), (True, 1), (False, 0), (Index(-7), -7)],
)
def test_int_like_priorities_are_stored_as_int(queue: Any, priority: object, stored: int) -> None:
    queue.push("x", priority)  # type: ignore[arg-type]
    entry_id, got, _ = queue.pop_entry()
    assert got == stored and type(got) is int


BAD_PRIORITIES = [
    (INT64_MAX + 1, OverflowError),
    (INT64_MIN - 1, OverflowError),
    (1 << 200, OverflowError),
    (Index(1 << 64), OverflowError),
    (1.0, TypeError),
    (None, TypeError),
    ("1", TypeError),
    (b"1", TypeError),
    ([], TypeError),
]


@pytest.mark.parametrize(("priority", "error"), BAD_PRIORITIES)
def test_bad_priority_changes_nothing(queue: Any, priority: object, error: type) -> None:
    queue.push("kept", 1)
    with pytest.raises(error):
        queue.push("x", priority)  # type: ignore[arg-type]
    with pytest.raises(error):
        queue.repush("x", priority, 1)  # type: ignore[arg-type]
    assert len(queue) == 1
    assert queue.push("next") == 2  # a failed push consumed no id


def test_repush_keeps_its_fifo_place(queue: Any) -> None:
    a = queue.push("a", 1)
    queue.push("b", 1)
    assert queue.pop_entry() == (a, 1, "a")  # the scheduler parks "a" ...
    queue.push("c", 1)
    queue.push("d", 2)
    queue.repush("a", 1, a)  # ... and puts it back: still ahead of b and c
    assert a in queue
    assert drain(queue) == ["d", "a", "b", "c"]


def test_repush_with_another_priority(queue: Any) -> None:
    a = queue.push("a", 0)
    queue.push("b", 5)
    queue.pop()
    queue.pop()
    queue.push("c", 5)
    queue.repush("a", 5, a)
    assert queue.pop_entry() == (a, 5, "a")


def test_repush_after_remove_with_equal_keys(queue: Any) -> None:
    # A cancelled entry is put back several times with the same priority and id;
    # the items cannot be compared, so the queue must never compare them.
    items = [Item() for _ in range(4)]
    ids = [queue.push(item, 3) for item in items]
    for _ in range(3):
        assert queue.remove(ids[1])
        queue.repush(items[1], 3, ids[1])
    assert queue.remove(ids[2])
    assert [queue.pop() for _ in range(3)] == [items[0], items[1], items[3]]


@pytest.mark.parametrize("entry_id", [0, -1, 4, 5, INT64_MAX, INT64_MAX + 1, INT64_MIN - 1, 1 << 100])
def test_repush_never_issued_id(queue: Any, entry_id: int) -> None:
    for n in range(3):
        queue.push(n)
    queue.pop()
    with pytest.raises(ValueError, match="never issued"):
        queue.repush("x", 0, entry_id)
    assert len(queue) == 2


def test_repush_id_in_queue(queue: Any) -> None:
    entry_id = queue.push("a")
    with pytest.raises(ValueError, match="already in the queue"):
        queue.repush("a", 0, entry_id)
    assert len(queue) == 1


@pytest.mark.parametrize("entry_id", [1.0, None, "1"])
def test_bad_entry_id_type(queue: Any, entry_id: object) -> None:
    queue.push("a")
    queue.pop()
    with pytest.raises(TypeError):
        queue.repush("a", 0, entry_id)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        queue.remove(entry_id)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        entry_id in queue  # noqa: B015


def test_int_like_entry_ids(queue: Any) -> None:
    entry_id = queue.push("a")
    assert Index(entry_id) in queue and True in queue
    assert queue.remove(Index(entry_id))
    queue.repush("a", 0, Index(entry_id))  # type: ignore[arg-type]
    assert queue.pop_entry() == (1, 0, "a")


@pytest.mark.parametrize("which", ["head", "middle", "tail"])
def test_remove(queue: Any, which: str) -> None:
    ids = {name: queue.push(name, priority) for name, priority in [("head", 9), ("middle", 5), ("tail", 1)]}
    ids["other"] = queue.push("other", 5)
    assert queue.remove(ids[which]) is True
    assert ids[which] not in queue
    assert len(queue) == 3
    assert queue.remove(ids[which]) is False  # already removed
    assert drain(queue) == [name for name in ["head", "middle", "other", "tail"] if name != which]


@pytest.mark.parametrize("entry_id", [0, -1, 3, 99, INT64_MAX, INT64_MAX + 1, INT64_MIN - 1, 1 << 100])
def test_remove_absent(queue: Any, entry_id: int) -> None:
    queue.push("a")
    queue.push("b")
    assert queue.remove(entry_id) is False
    assert (entry_id in queue) is False
    assert len(queue) == 2


def test_remove_popped(queue: Any) -> None:
    entry_id = queue.push("a")
    queue.pop()
    assert queue.remove(entry_id) is False


def test_clear(queue: Any) -> None:
    ids = [queue.push(n, n) for n in range(100)]
    queue.clear()
    assert len(queue) == 0 and not queue
    assert not any(entry_id in queue for entry_id in ids)
    with pytest.raises(IndexError):
        queue.peek()
    assert queue.push("after") == 101  # ids are never reused
    queue.repush("back", 0, 5)  # an id issued before clear() may come back
    assert drain(queue) == ["back", "after"]
    queue.clear()
    queue.clear()


def test_not_picklable_or_copyable(queue: Any) -> None:
    queue.push("a")
    with pytest.raises(TypeError, match="cannot pickle"):
        pickle.dumps(queue)
    with pytest.raises(TypeError, match="cannot pickle"):
        copy.copy(queue)


def test_queues_are_independent(twin: ModuleType) -> None:
    one, two = twin.PriorityQueue(), twin.PriorityQueue()
    assert one.push("a") == two.push("b") == 1
    assert one.pop() == "a" and two.pop() == "b"


# -- references --------------------------------------------------------------------


def _dead_after(twin: ModuleType, action: str) -> bool:
    queue = twin.PriorityQueue()
    item = Item()
    ref = weakref.ref(item)
    queue.push("before", 1)
    entry_id = queue.push(item, 1)
    queue.push("after", 1)
    del item
    if action == "pop":
        queue.pop()
        assert queue.pop() is not None
    elif action == "pop_entry":
        queue.pop()
        queue.pop_entry()
    elif action == "remove":
        assert queue.remove(entry_id)
    elif action == "clear":
        queue.clear()
    elif action == "del":
        del queue
    gc.collect()
    return ref() is None


@pytest.mark.parametrize("action", ["pop", "pop_entry", "remove", "clear", "del"])
def test_references_released(twin: ModuleType, action: str) -> None:
    assert _dead_after(twin, action)


def test_item_still_held_while_queued(twin: ModuleType) -> None:
    queue = twin.PriorityQueue()
    item = Item()
    ref = weakref.ref(item)
    queue.push(item)
    del item
    gc.collect()
    assert ref() is not None
    assert queue.peek() is ref()


def test_reference_counts_balance(queue: Any) -> None:
    item = Item()
    before = sys.getrefcount(item)
    for _ in range(50):
        entry_id = queue.push(item, 1)
        queue.peek()
        queue.pop_entry()
        queue.repush(item, 1, entry_id)
        queue.remove(entry_id)
        queue.push(item)
        queue.clear()
    gc.collect()
    assert sys.getrefcount(item) == before


def test_cycle_through_the_queue_is_collected(twin: ModuleType) -> None:
    queue = twin.PriorityQueue()
    item = Item()
    item.queue = queue  # type: ignore[attr-defined]
    queue.push(item)
    ref = weakref.ref(item)
    del item, queue
    gc.collect()
    assert ref() is None


@pytest.mark.parametrize("action", ["pop", "remove", "clear"])
def test_release_may_reenter_the_queue(twin: ModuleType, action: str) -> None:
    queue = twin.PriorityQueue()

    class Reentrant:
        def __del__(self) -> None:
            queue.push("from __del__", 7)

    for n in range(20):
        queue.push(n, n % 4)
    entry_id = queue.push(Reentrant(), 10)
    if action == "pop":
        queue.pop()
    elif action == "remove":
        queue.remove(entry_id)
    else:
        queue.clear()
    gc.collect()
    assert "from __del__" in drain(queue)


# -- a long deterministic run (grows and shrinks the C twin's arrays) ---------------


def test_long_random_run_matches_reference(twin: ModuleType) -> None:
    rng = random.Random(20240611)
    queue, ref = twin.PriorityQueue(), Reference()
    parked: list[tuple[int, int, object]] = []
    for step in range(30_000):
        phase = (step // 5_000) % 2  # grow, then drain, then grow again
        roll = rng.random()
        if roll < (0.6 if phase == 0 else 0.2):
            item, priority = object(), rng.randint(-4, 4)
            assert queue.push(item, priority) == ref.push(item, priority)
        elif roll < 0.75:
            if ref.heap:
                got = queue.pop_entry()
                assert got == ref.pop_entry()
                if rng.random() < 0.3:
                    parked.append(got)
        elif roll < 0.85 and ref.last:
            entry_id = rng.randint(1, ref.last)
            assert queue.remove(entry_id) == ref.remove(entry_id)
        elif parked:
            entry_id, priority, item = parked.pop(rng.randrange(len(parked)))
            if entry_id not in ref:
                queue.repush(item, priority, entry_id)
                ref.repush(item, priority, entry_id)
        assert len(queue) == len(ref)
    while ref.heap:
        assert queue.pop_entry() == ref.pop_entry()
    assert not queue


# -- property tests against the reference ------------------------------------------

PRIORITIES = st.integers(-3, 3) | st.sampled_from([INT64_MIN, INT64_MAX])


@pytest.mark.parametrize("twin", twin_params("queue"))
def test_state_machine_matches_reference(twin: ModuleType) -> None:
    class QueueMachine(RuleBasedStateMachine):
        def __init__(self) -> None:
            super().__init__()
            self.queue = twin.PriorityQueue()
            self.ref = Reference()
            self.out: dict[int, object] = {}  # entries that left the queue, for repush

        @rule(priority=PRIORITIES)
        def push(self, priority: int) -> None:
            item = object()
            assert self.queue.push(item, priority) == self.ref.push(item, priority)

        @rule()
        def pop(self) -> None:
            if not self.ref.heap:
                with pytest.raises(IndexError):
                    self.queue.pop()
                return
            entry_id, _, item = self.ref.pop_entry()
            assert self.queue.pop() is item
            self.out[entry_id] = item

        @rule()
        def pop_entry(self) -> None:
            if not self.ref.heap:
                with pytest.raises(IndexError):
                    self.queue.pop_entry()
                return
            want = self.ref.pop_entry()
            got = self.queue.pop_entry()
            assert got[:2] == want[:2] and got[2] is want[2]
            self.out[want[0]] = want[2]

        @rule()
        def peek(self) -> None:
            if not self.ref.heap:
                with pytest.raises(IndexError):
                    self.queue.peek()
            else:
                assert self.queue.peek() is self.ref.heap[0][2]

        @rule(data=st.data())
        def remove(self, data: st.DataObject) -> None:
            entry_id = data.draw(st.integers(-1, self.ref.last + 2))
            item = next((e[2] for e in self.ref.heap if e[1] == entry_id), None)
            assert self.queue.remove(entry_id) == self.ref.remove(entry_id)
            if item is not None:
                self.out[entry_id] = item

        @rule(data=st.data(), priority=PRIORITIES)
        def repush(self, data: st.DataObject, priority: int) -> None:
            choices = st.integers(-1, self.ref.last + 2)
            if self.out:
                choices = st.sampled_from(sorted(self.out)) | choices
            entry_id = data.draw(choices)
            item = self.out.get(entry_id, object())
            if entry_id in self.ref or not 1 <= entry_id <= self.ref.last:
                with pytest.raises(ValueError):
                    self.queue.repush(item, priority, entry_id)
                return
            self.queue.repush(item, priority, entry_id)
            self.ref.repush(item, priority, entry_id)
            self.out.pop(entry_id, None)

        @rule(data=st.data())
        def contains(self, data: st.DataObject) -> None:
            entry_id = data.draw(st.integers(-1, self.ref.last + 2))
            assert (entry_id in self.queue) == (entry_id in self.ref)

        @rule(roll=st.integers(0, 9))
        def clear(self, roll: int) -> None:
            if roll == 0:  # rarely, so that queues get deep
                for _, entry_id, item in self.ref.heap:
                    self.out[entry_id] = item
                self.queue.clear()
                self.ref.heap.clear()

        @invariant()
        def same_size(self) -> None:
            assert len(self.queue) == len(self.ref)
            assert bool(self.queue) == bool(self.ref.heap)

    run_state_machine_as_test(
        QueueMachine, settings=settings(max_examples=150, stateful_step_count=80, deadline=None)
    )


@pytest.mark.parametrize("twin", twin_params("queue"))
@given(entries=st.lists(st.integers(INT64_MIN, INT64_MAX) | st.integers(-2, 2), max_size=200))
def test_drain_order_is_priority_then_id(twin: ModuleType, entries: list[int]) -> None:
    queue = twin.PriorityQueue()
    for index, priority in enumerate(entries):
        queue.push(index, priority)
    expected = sorted(range(len(entries)), key=lambda index: (-entries[index], index))
    assert drain(queue) == expected


INT_LIKE = st.integers() | st.booleans() | st.integers().map(Index)
NOT_INT = st.floats() | st.none() | st.text(max_size=3) | st.binary(max_size=3) | st.tuples()


def _priority_error(value: object) -> type[Exception] | None:
    if not isinstance(value, (int, Index)):
        return TypeError
    number = value.__index__()
    return None if INT64_MIN <= number <= INT64_MAX else OverflowError


@pytest.mark.parametrize("twin", twin_params("queue"))
@given(value=INT_LIKE | NOT_INT)
def test_argument_errors_match_the_spec(twin: ModuleType, value: object) -> None:
    queue = twin.PriorityQueue()
    error = _priority_error(value)
    if error is None:
        assert queue.push("x", value) == 1  # type: ignore[arg-type]
        assert queue.pop_entry() == (1, value.__index__(), "x")  # type: ignore[attr-defined]
    else:
        with pytest.raises(error):
            queue.push("x", value)  # type: ignore[arg-type]
    # entry ids: any integer is a fair question (only 1 is issued here),
    # anything else is a TypeError
    queue = twin.PriorityQueue()
    queue.push("a")
    if isinstance(value, (int, Index)):
        number = value.__index__()
        assert queue.remove(value) is (number == 1)  # type: ignore[arg-type]
        if number == 1:
            queue.repush("a", 0, value)  # type: ignore[arg-type]
        else:
            with pytest.raises(ValueError):
                queue.repush("a", 0, value)  # type: ignore[arg-type]
    else:
        for call in (queue.remove, queue.__contains__, lambda v: queue.repush("a", 0, v)):
            with pytest.raises(TypeError):
                call(value)
