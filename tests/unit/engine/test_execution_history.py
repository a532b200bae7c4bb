"""Executions (identity, state, serialised view) and the bounded history."""
from __future__ import annotations

import asyncio
import re

import pytest

from engine.errors import IllegalTransition, TaskTrapped
from engine.execution import Execution, History
from engine.lifecycle import ExecutionState

S = ExecutionState


def finished(task: str = "t", output: bytes = b"", state: ExecutionState = S.SUCCEEDED) -> Execution:
    ex = Execution(task, b"input", 0)
    ex.transition(S.RUNNING)
    ex.transition(state)
    ex.output = output
    return ex


def live(task: str = "t") -> Execution:
    return Execution(task, b"input", 0)


# -- ids -------------------------------------------------------------------------


def test_ids_are_unique() -> None:
    ids = [Execution("t", b"", 0).id for _ in range(20_000)]
    assert len(set(ids)) == len(ids)


def test_ids_sort_in_creation_order_within_a_boot() -> None:
    ids = [Execution("t", b"", 0).id for _ in range(1000)]
    assert sorted(ids) == ids
    assert all(re.fullmatch(r"[0-9a-f]{8}-[0-9a-f]{8,}", i) for i in ids)
    assert len({i.split("-")[0] for i in ids}) == 1


# -- Execution ---------------------------------------------------------------------


def test_new_execution_is_queued() -> None:
    ex = Execution("t", b"data", 3)
    assert (ex.task, ex.state, ex.input, ex.priority, ex.output, ex.error) == ("t", S.QUEUED, b"data", 3, b"", None)
    assert not ex.done
    assert ex.duration_ms is None


def test_transition_follows_the_table() -> None:
    ex = Execution("t", b"", 0)
    with pytest.raises(IllegalTransition):
        ex.transition(S.SUCCEEDED)
    assert ex.state is S.QUEUED
    ex.transition(S.RUNNING)
    ex.transition(S.FAILED)
    assert ex.done
    with pytest.raises(IllegalTransition):
        ex.transition(S.RUNNING)


def test_to_dict_of_a_queued_execution() -> None:
    ex = Execution("t", b"data", 2)
    d = ex.to_dict()
    assert set(d) == {"id", "task", "state", "priority", "created_at", "queued_ms", "duration_ms", "exit_code",
                      "output_bytes", "error", "logs"}
    assert d["id"] == ex.id
    assert (d["task"], d["state"], d["priority"]) == ("t", "queued", 2)
    assert d["created_at"] == ex.created_at
    assert (d["queued_ms"], d["duration_ms"], d["exit_code"], d["output_bytes"], d["error"], d["logs"]) == (
        None, None, None, 0, None, [])


def test_to_dict_of_a_finished_execution() -> None:
    ex = Execution("t", b"", 0)
    ex.transition(S.RUNNING)
    ex.started_ns = ex.created_ns + 2_000_000
    ex.finished_ns = ex.started_ns + 5_500_000
    ex.transition(S.FAILED)
    ex.output = b"12345"
    ex.exit_code = 3
    ex.error = TaskTrapped("task 't' trapped: unreachable")
    ex.logs = [("stderr", "one"), ("info", "two")]
    d = ex.to_dict()
    assert d["state"] == "failed"
    assert d["queued_ms"] == pytest.approx(2.0)
    assert d["duration_ms"] == pytest.approx(5.5)
    assert ex.duration_ms == pytest.approx(5.5)
    assert d["exit_code"] == 3
    assert d["output_bytes"] == 5
    assert d["error"] == {"code": "trap", "message": "task 't' trapped: unreachable"}
    assert d["logs"] == [{"stream": "stderr", "line": "one"}, {"stream": "info", "line": "two"}]


class FakeWatch:
    owner: str | None = None
    cancel_for: str | None = None


def test_set_watch_names_the_owner() -> None:
    ex = Execution("t", b"", 0)
    watch = FakeWatch()
    ex.set_watch(watch)
    assert watch.owner == ex.id and ex.watch is watch
    assert watch.cancel_for is None


def test_cancel_requested_before_the_watch_exists_still_reaches_it() -> None:
    """The cancel arrives on the loop thread before the worker attached a Watch."""
    ex = Execution("t", b"", 0)
    ex.cancel_requested = True
    watch = FakeWatch()
    ex.set_watch(watch)
    assert watch.cancel_for == ex.id == watch.owner


def test_wait_returns_at_once_when_done() -> None:
    ex = finished()
    asyncio.run(asyncio.wait_for(ex.wait(), 5))


def test_wait_wakes_on_notify() -> None:
    async def scenario() -> list[str]:
        ex = Execution("t", b"", 0)
        seen: list[str] = []

        async def waiter(name: str) -> None:
            await ex.wait()
            seen.append(name)

        tasks = [asyncio.create_task(waiter("w1")), asyncio.create_task(waiter("w2"))]
        for _ in range(3):
            await asyncio.sleep(0)
        assert seen == []  # nobody wakes before the execution ends
        ex.transition(S.RUNNING)
        ex.transition(S.SUCCEEDED)
        ex.notify()
        await asyncio.wait_for(asyncio.gather(*tasks), 5)
        ex.notify()  # a second notify is harmless
        return seen

    assert sorted(asyncio.run(scenario())) == ["w1", "w2"]


def test_a_cancelled_waiter_does_not_cancel_the_others() -> None:
    async def scenario() -> None:
        ex = Execution("t", b"", 0)
        first = asyncio.create_task(ex.wait())
        second = asyncio.create_task(ex.wait())
        await asyncio.sleep(0)
        first.cancel()
        await asyncio.sleep(0)
        ex.transition(S.RUNNING)
        ex.transition(S.SUCCEEDED)
        ex.notify()
        await asyncio.wait_for(second, 5)
        assert first.cancelled()

    asyncio.run(scenario())


# -- History -------------------------------------------------------------------------


def test_get_and_len() -> None:
    h = History()
    ex = live()
    h.add(ex)
    assert h.get(ex.id) is ex
    assert h.get("nope") is None
    assert len(h) == 1


def test_bounded_by_count_evicting_the_oldest_finished() -> None:
    h = History(max_items=3)
    exs = [finished() for _ in range(5)]
    for ex in exs:
        h.add(ex)
        h.finished(ex)
    assert len(h) == 3
    assert [h.get(ex.id) for ex in exs] == [None, None, *exs[2:]]


def test_bounded_by_output_bytes() -> None:
    h = History(max_items=100, max_bytes=10)
    a, b, c = finished(output=b"aaaaaa"), finished(output=b"bbbb"), finished(output=b"cc")
    for ex in (a, b):
        h.add(ex)
        h.finished(ex)
    assert h.get(a.id) is a and h.get(b.id) is b  # exactly 10 bytes
    h.add(c)
    h.finished(c)  # 12 bytes: the oldest goes
    assert h.get(a.id) is None
    assert h.get(b.id) is b and h.get(c.id) is c
    d = finished(output=b"d" * 7)
    h.add(d)
    h.finished(d)  # 4 + 2 + 7 = 13: b goes, 9 left
    assert (h.get(b.id), h.get(c.id), h.get(d.id)) == (None, c, d)


def test_never_evicts_a_live_execution() -> None:
    h = History(max_items=2)
    running = [live(), live(), live()]
    for ex in running:
        h.add(ex)
    done = finished()
    h.add(done)
    h.finished(done)
    assert len(h) == 3
    assert all(h.get(ex.id) is ex for ex in running)
    assert h.get(done.id) is None


def test_live_executions_survive_a_byte_overflow() -> None:
    h = History(max_items=100, max_bytes=4)
    keep = live()
    h.add(keep)
    big = finished(output=b"x" * 10)
    h.add(big)
    h.finished(big)
    assert h.get(keep.id) is keep
    assert h.get(big.id) is None
    small = finished(output=b"yy")
    h.add(small)
    h.finished(small)  # the evicted bytes were given back: 2 <= 4
    assert h.get(small.id) is small


def test_eviction_skips_live_ones_to_reach_finished_ones() -> None:
    h = History(max_items=2)
    old_live, old_done, new_done = live(), finished(), finished()
    for ex in (old_live, old_done):
        h.add(ex)
    h.finished(old_done)
    h.add(new_done)
    h.finished(new_done)
    assert h.get(old_live.id) is old_live
    assert h.get(old_done.id) is None
    assert h.get(new_done.id) is new_done


def test_finished_drops_the_input() -> None:
    h = History()
    ex = finished()
    h.add(ex)
    h.finished(ex)
    assert ex.input == b""


def test_live_lists_unfinished_executions_of_one_task() -> None:
    h = History()
    a1, a2, b1 = live("a"), live("a"), live("b")
    a_done = finished("a")
    for ex in (a1, a_done, a2, b1):
        h.add(ex)
    running = live("a")
    running.transition(S.RUNNING)
    h.add(running)
    assert h.live("a") == [a1, a2, running]
    assert h.live("b") == [b1]
    assert h.live("c") == []


@pytest.mark.parametrize("max_items, max_bytes", [(3, 1 << 20), (100, 10), (2, 4)])
def test_finishing_many_at_once_keeps_what_finishing_one_by_one_keeps(max_items: int, max_bytes: int) -> None:
    outputs = [b"a" * (i % 4) for i in range(12)]
    one, many = History(max_items, max_bytes), History(max_items, max_bytes)
    keep = live()
    one.add(keep)
    many.add(keep)
    exs = [finished(output=out) for out in outputs]
    for ex in exs:
        one.add(ex)
        one.finished(ex)
    batch = [finished(output=out) for out in outputs]
    for ex in batch:
        many.add(ex)
    many.finished_all(batch)
    assert [one.get(ex.id) is not None for ex in exs] == [many.get(ex.id) is not None for ex in batch]
    assert len(one) == len(many) and many.get(keep.id) is keep
    assert all(ex.input == b"" for ex in batch)
