"""Placement: which executions run inline on the event loop, and the running average."""
from __future__ import annotations

import pytest

from engine.manifest import parse_manifest
from engine.resources import ResourceManager, TaskSlot
from engine.scheduler import EWMA_ALPHA, WARMUP_RUNS, Scheduler

THRESHOLD = 0.0005
FAST = 0.00005
SLOW = 0.05


def scheduler() -> Scheduler:
    return Scheduler(ResourceManager(10, 1000), max_queue=10, inline_threshold_s=THRESHOLD)


def slot(kind: str) -> TaskSlot:
    return TaskSlot(parse_manifest({"name": "t", "kind": kind}))


def test_constants() -> None:
    assert WARMUP_RUNS == 3
    assert 0 < EWMA_ALPHA < 1


def test_handler_goes_inline_only_after_the_warm_up_runs() -> None:
    sched, s = scheduler(), slot("handler")
    seen = []
    for _ in range(WARMUP_RUNS):
        seen.append(sched.inline(s))
        sched.record(s, FAST)
    assert seen == [False] * WARMUP_RUNS
    assert sched.inline(s) is True


def test_command_never_goes_inline() -> None:
    sched, s = scheduler(), slot("command")
    for _ in range(WARMUP_RUNS + 10):
        sched.record(s, FAST)
    assert sched.inline(s) is False


def test_slow_warm_up_keeps_a_handler_on_the_thread_pool() -> None:
    sched, s = scheduler(), slot("handler")
    for _ in range(WARMUP_RUNS):
        sched.record(s, SLOW)
    assert sched.inline(s) is False


def test_a_slow_run_moves_a_handler_back_to_the_thread_pool() -> None:
    sched, s = scheduler(), slot("handler")
    for _ in range(WARMUP_RUNS + 5):
        sched.record(s, FAST)
    assert sched.inline(s) is True
    sched.record(s, SLOW)
    assert s.ewma_s > THRESHOLD
    assert sched.inline(s) is False


def test_the_average_falls_back_after_fast_runs() -> None:
    sched, s = scheduler(), slot("handler")
    for _ in range(WARMUP_RUNS):
        sched.record(s, FAST)
    sched.record(s, SLOW)
    assert sched.inline(s) is False
    runs = 0
    while not sched.inline(s):
        sched.record(s, FAST)
        runs += 1
        assert runs < 200
    assert runs > 1  # one fast run does not undo a slow one


def test_warm_up_runs_only_seed_the_average() -> None:
    """The first runs pay for instantiation; each replaces the seed instead of
    being averaged in, so a very slow first run leaves no trace."""
    s = slot("handler")
    Scheduler.record(s, 1.0)
    assert (s.runs, s.ewma_s) == (1, 1.0)
    Scheduler.record(s, 0.002)
    assert (s.runs, s.ewma_s) == (2, 0.002)
    Scheduler.record(s, 0.0001)
    assert (s.runs, s.ewma_s) == (3, 0.0001)


def test_after_warm_up_the_average_moves_by_alpha() -> None:
    s = slot("handler")
    for _ in range(WARMUP_RUNS):
        Scheduler.record(s, 0.001)
    Scheduler.record(s, 0.011)
    assert s.runs == WARMUP_RUNS + 1
    assert s.ewma_s == pytest.approx(0.001 + EWMA_ALPHA * 0.010)
    Scheduler.record(s, 0.001)
    expected = 0.001 + EWMA_ALPHA * 0.010
    expected += EWMA_ALPHA * (0.001 - expected)
    assert s.ewma_s == pytest.approx(expected)


def test_threshold_is_strict() -> None:
    sched, s = scheduler(), slot("handler")
    for _ in range(WARMUP_RUNS):
        sched.record(s, THRESHOLD)
    assert sched.inline(s) is False
