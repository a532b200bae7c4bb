"""The scheduler against a ten-line model, on random operation sequences.

The model keeps every waiting entry in one list and, when asked for the next
one, picks the highest-priority, earliest entry among those whose task has
room — only if the hub-wide cap has room at all.  Parking, unparking and entry
ids are the scheduler's business; the model knows none of them, so any
difference in what starts is a difference in behaviour.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from engine.manifest import parse_manifest
from engine.resources import ResourceManager, TaskSlot
from engine.scheduler import QUEUE, Scheduler

TASKS = ("a", "b")


@dataclass(eq=False)
class Item:
    task: str
    seq: int
    priority: int
    entry_id: int = 0


@dataclass
class Model:
    global_cap: int
    caps: dict[str, int]
    waiting: list[Item] = field(default_factory=list)
    running: dict[str, int] = field(default_factory=lambda: dict.fromkeys(TASKS, 0))

    @property
    def in_flight(self) -> int:
        return sum(self.running.values())

    def next(self) -> Item | None:
        if self.in_flight >= self.global_cap:
            return None
        ready = [it for it in self.waiting if self.running[it.task] < self.caps[it.task]]
        if not ready:
            return None
        best = max(ready, key=lambda it: (it.priority, -it.seq))
        self.waiting.remove(best)
        self.running[best.task] += 1
        return best


def run(global_cap: int, caps: dict[str, int], ops: list[tuple], priority_of: dict[str, int] | None) -> None:
    """Apply ``ops`` to a real Scheduler and to the model; compare after every step.

    ``priority_of`` fixes one priority per task; None uses each enqueue's own.
    """
    resources = ResourceManager(global_cap, memory_budget_mib=1 << 30)
    scheduler = Scheduler(resources, max_queue=10_000)
    slots = {t: TaskSlot(parse_manifest({"name": t, "kind": "command", "max_concurrency": caps[t],
                                         "limits": {"memory_mib": 1}})) for t in TASKS}
    model = Model(global_cap, caps)
    seq = 0
    for step in ops:
        kind = step[0]
        if kind == "enqueue":
            task = step[1]
            priority = step[2] if priority_of is None else priority_of[task]
            seq += 1
            item = Item(task, seq, priority)
            item.entry_id = scheduler.enqueue(item, priority)
            model.waiting.append(item)
        elif kind == "next":
            got = scheduler.next_ready(lambda it: slots[it.task])
            want = model.next()
            assert got is want, f"started {got} but the model starts {want}"
        elif kind == "release":
            task = step[1]
            if model.running[task] == 0:
                continue
            scheduler.finished(slots[task], 0.0, False)
            model.running[task] -= 1
        elif kind == "start_now":
            task = step[1]
            want = not model.waiting and model.in_flight < global_cap and model.running[task] < caps[task]
            assert (scheduler.start_now(slots[task]) != QUEUE) is want
            if want:
                model.running[task] += 1
        elif kind == "remove":
            if not model.waiting:
                continue
            item = model.waiting.pop(step[1] % len(model.waiting))
            assert scheduler.remove(item.entry_id, item.task) is True
            assert scheduler.remove(item.entry_id, item.task) is False
        else:  # pragma: no cover - a typo in a strategy
            raise AssertionError(f"unknown op {step!r}")
        # invariants after every step
        assert resources.in_flight == model.in_flight <= global_cap
        for task in TASKS:
            assert slots[task].in_flight == model.running[task] <= caps[task]
        assert scheduler.depth == len(model.waiting)


# Weighted by repetition: the interesting cases need a task at its cap with
# entries parked on it, then a release, then a pick.
BASE_OPS = [
    st.tuples(st.just("enqueue"), st.sampled_from(TASKS), st.integers(-2, 2)),
    st.tuples(st.just("enqueue"), st.sampled_from(TASKS), st.integers(-2, 2)),
    st.tuples(st.just("next")),
    st.tuples(st.just("next")),
    st.tuples(st.just("release"), st.sampled_from(TASKS)),
    st.tuples(st.just("release"), st.sampled_from(TASKS)),
    st.tuples(st.just("start_now"), st.sampled_from(TASKS)),
]
REMOVE = st.tuples(st.just("remove"), st.integers(0, 50))

caps_strategy = st.fixed_dictionaries({t: st.integers(1, 2) for t in TASKS})
priorities_strategy = st.fixed_dictionaries({t: st.integers(-2, 2) for t in TASKS})
# Short sequences rarely get a task to its cap and back; at least 20 steps do
# (checked by breaking ``Scheduler.release`` on purpose: found in every run).
ops_without_remove = st.lists(st.one_of(*BASE_OPS), min_size=20, max_size=80)
all_ops = st.lists(st.one_of(*BASE_OPS, REMOVE), min_size=20, max_size=80)
SETTINGS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@SETTINGS
@given(global_cap=st.integers(1, 4), caps=caps_strategy, ops=ops_without_remove, priorities=priorities_strategy)
def test_scheduler_matches_model_one_priority_per_task_no_withdrawals(
    global_cap: int, caps: dict[str, int], ops: list[tuple], priorities: dict[str, int]
) -> None:
    """Executions of a task share its manifest priority (the coordinator's
    default) and none is withdrawn: the common case, searched on its own."""
    run(global_cap, caps, ops, priorities)


@SETTINGS
@given(global_cap=st.integers(1, 4), caps=caps_strategy, ops=all_ops)
@example(  # a higher-priority entry parked after a lower one must start first
    global_cap=3,
    caps={"a": 1, "b": 1},
    ops=[("start_now", "a"), ("enqueue", "a", 0), ("next",), ("enqueue", "a", 2), ("next",),
         ("release", "a"), ("next",)] + [("next",)] * 13,
)
@example(  # cancelling an entry a release just unparked must unpark the next
    global_cap=3,
    caps={"a": 1, "b": 1},
    ops=[("start_now", "a"), ("enqueue", "a", 0), ("enqueue", "a", 0), ("next",), ("release", "a"),
         ("remove", 0), ("next",)] + [("next",)] * 13,
)
def test_scheduler_matches_model(global_cap: int, caps: dict[str, int], ops: list[tuple]) -> None:
    """Any priority per execution (``submit(..., priority=...)``) and withdrawals (cancels)."""
    run(global_cap, caps, ops, None)
