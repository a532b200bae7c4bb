"""Placement: which executions run inline on the event loop, and the running average."""
from __future__ import annotations

import pytest

from engine.manifest import parse_manifest
from engine.resources import ResourceManager, TaskSlot
from engine.scheduler import EWMA_ALPHA, INLINE, ON_WORKER, QUEUE, SAMPLE_CAP, WARMUP_RUNS, Scheduler

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


def test_one_slow_run_does_not_send_a_fast_handler_off_the_loop() -> None:
    """A single pause (a garbage collection, a page fault storm) is not a slow task."""
    sched, s = scheduler(), slot("handler")
    for _ in range(WARMUP_RUNS + 5):
        sched.record(s, FAST)
    sched.record(s, SLOW)
    assert s.ewma_s == pytest.approx(FAST + EWMA_ALPHA * (SAMPLE_CAP * THRESHOLD - FAST))
    assert sched.inline(s) is True


def test_a_handler_that_turns_slow_moves_to_the_thread_pool() -> None:
    sched, s = scheduler(), slot("handler")
    for _ in range(WARMUP_RUNS + 5):
        sched.record(s, FAST)
    runs = 0
    while sched.inline(s):
        sched.record(s, SLOW)
        runs += 1
        assert runs < 50
    assert 1 < runs < 20
    assert s.ewma_s > THRESHOLD


def test_a_timeout_moves_a_handler_off_the_loop_at_once() -> None:
    sched, s = scheduler(), slot("handler")
    for _ in range(WARMUP_RUNS + 5):
        sched.record(s, FAST)
    sched.record(s, 1.0, timed_out=True)
    assert s.ewma_s == 1.0
    assert sched.inline(s) is False


def test_the_average_falls_back_after_fast_runs() -> None:
    sched, s = scheduler(), slot("handler")
    for _ in range(WARMUP_RUNS):
        sched.record(s, FAST)
    sched.record(s, SLOW, timed_out=True)
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
    sched, s = scheduler(), slot("handler")
    sched.record(s, 1.0)
    assert (s.runs, s.ewma_s) == (1, 1.0)
    sched.record(s, 0.002)
    assert (s.runs, s.ewma_s) == (2, 0.002)
    sched.record(s, 0.0001)
    assert (s.runs, s.ewma_s) == (3, 0.0001)


def test_after_warm_up_the_average_moves_by_alpha() -> None:
    sched, s = scheduler(), slot("handler")
    for _ in range(WARMUP_RUNS):
        sched.record(s, 0.001)
    sched.record(s, 0.0015)
    assert s.runs == WARMUP_RUNS + 1
    assert s.ewma_s == pytest.approx(0.001 + EWMA_ALPHA * 0.0005)
    sched.record(s, 0.001)
    expected = 0.001 + EWMA_ALPHA * 0.0005
    expected += EWMA_ALPHA * (0.001 - expected)
    assert s.ewma_s == pytest.approx(expected)


def test_threshold_is_strict() -> None:
    sched, s = scheduler(), slot("handler")
    for _ in range(WARMUP_RUNS):
        sched.record(s, THRESHOLD)
    assert sched.inline(s) is False


@pytest.mark.parametrize("kind", ["handler", "command"])
@pytest.mark.parametrize("durations", [[FAST] * 6, [SLOW] * 6, [FAST, FAST, FAST, SLOW, FAST, FAST, FAST]])
def test_start_now_places_as_inline_does_and_finished_records(kind: str, durations: list[float]) -> None:
    """start_now grants and answers where inline() would; finished records as record() does."""
    sched, s = scheduler(), slot(kind)
    model, m = scheduler(), slot(kind)  # record() alone, for the statistics
    for i, duration in enumerate(durations):
        if i == 4:  # something waits: nothing may skip the queue
            sched.enqueue("other", 0)
        expected = QUEUE if i >= 4 else INLINE if sched.inline(s) else ON_WORKER
        assert sched.start_now(s) == expected
        assert (s.in_flight, sched.resources.in_flight) == ((1, 1) if expected else (0, 0))
        if expected:
            sched.finished(s, duration, False)
            model.record(m, duration)
        assert (s.runs, s.ewma_s, s.in_flight, sched.resources.in_flight) == (m.runs, m.ewma_s, 0, 0)
