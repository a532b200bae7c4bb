"""The scheduler: which execution runs next, and where it runs.

Order: higher priority first, FIFO within a priority (``fastpath``'s queue).
An entry whose task is at its concurrency cap is parked on that task — with
its original entry id — and its best parked entry is put back when one of the
task's executions ends, so a busy task never blocks the tasks queued behind
it and loses no place.

Placement: a handler whose recent executions are short runs inline on the
event loop (no thread hop, ~10 µs saved); everything else — commands, slow or
unknown handlers, and any task that just timed out — runs on the thread pool,
where wasm releases the GIL.  The moving average makes a task that turns slow
leave the loop by itself.  The scheduler decides, not the task.
"""
from __future__ import annotations

import heapq
from typing import Any

import fastpath

from .errors import QueueFull
from .resources import ResourceManager, TaskSlot

__all__ = ["Scheduler", "WARMUP_RUNS", "EWMA_ALPHA", "SAMPLE_CAP", "QUEUE", "ON_WORKER", "INLINE"]

WARMUP_RUNS = 3
EWMA_ALPHA = 0.1
SAMPLE_CAP = 4  # a sample counts for at most this many inline thresholds
QUEUE, ON_WORKER, INLINE = 0, 1, 2  # what start_now decided


class Scheduler:
    def __init__(self, resources: ResourceManager, max_queue: int, inline_threshold_s: float = 0.0005) -> None:
        self.resources = resources
        self.max_queue = max_queue
        self.inline_threshold_s = inline_threshold_s
        self.queue = fastpath.PriorityQueue()  # truthy while anything waits in it
        # Per task at its cap: a heap of (-priority, entry_id, item); entry ids are unique,
        # so items are never compared.
        self._parked: dict[str, list[tuple[int, int, Any]]] = {}
        self._parked_count = 0

    @property
    def depth(self) -> int:
        return len(self.queue) + self._parked_count

    def start_now(self, slot: TaskSlot) -> int:
        """Skip the queue when nothing waits and a grant is free (the common
        case), and say where to run: QUEUE (the caller enqueues and pumps, and
        the order decides), ON_WORKER or INLINE — ``inline``'s answer, asked
        here because the submit path needs both every time."""
        if self.queue or self._parked_count or not self.resources.try_acquire(slot):
            return QUEUE
        if slot.handler and slot.runs >= WARMUP_RUNS and slot.ewma_s < self.inline_threshold_s:
            return INLINE
        return ON_WORKER

    def enqueue(self, item: Any, priority: int) -> int:
        if self.depth >= self.max_queue:
            raise QueueFull(f"the execution queue is full ({self.max_queue} waiting); retry later", retry_after=1.0)
        return self.queue.push(item, priority)

    def next_ready(self, slot_of: Any) -> Any | None:
        """Pop the next runnable item and acquire its grant; ``slot_of(item)`` gives its TaskSlot.

        An item whose task is at its own cap is parked on the task; an item
        the hub-wide budget refuses goes back to the head of the queue, and
        nothing behind it jumps ahead (it would starve a large task forever).
        """
        queue = self.queue
        resources = self.resources
        while queue and resources.has_capacity():
            entry_id, priority, item = queue.pop_entry()
            slot = slot_of(item)
            if slot.in_flight >= slot.max_concurrency:
                heapq.heappush(self._parked.setdefault(slot.name, []), (-priority, entry_id, item))
                self._parked_count += 1
                continue
            if resources.try_acquire(slot):
                return item
            queue.repush(item, priority, entry_id)
            return None
        return None

    def _unpark_one(self, task: str) -> None:
        parked = self._parked.get(task)
        if parked:
            neg_priority, entry_id, item = heapq.heappop(parked)
            self._parked_count -= 1
            if not parked:
                del self._parked[task]
            self.queue.repush(item, -neg_priority, entry_id)

    def remove(self, entry_id: int, task: str) -> bool:
        """Withdraw a waiting entry (a cancel); True if it was still waiting."""
        if self.queue.remove(entry_id):
            # It may have been the entry a release just unparked: give its turn to the next.
            self._unpark_one(task)
            return True
        parked = self._parked.get(task)
        if parked:
            for i, entry in enumerate(parked):
                if entry[1] == entry_id:
                    parked[i] = parked[-1]
                    parked.pop()
                    heapq.heapify(parked)
                    self._parked_count -= 1
                    if not parked:
                        del self._parked[task]
                    return True
        return False

    def drop_task(self, task: str) -> list[Any]:
        """Remove every parked entry of a task being deleted; the caller cancels them."""
        parked = self._parked.pop(task, [])
        self._parked_count -= len(parked)
        return [item for _, _, item in sorted(parked)]

    def inline(self, slot: TaskSlot) -> bool:
        return slot.handler and slot.runs >= WARMUP_RUNS and slot.ewma_s < self.inline_threshold_s

    def finished(self, slot: TaskSlot, duration_s: float, timed_out: bool) -> None:
        """An execution of ``slot``'s task ended: ``record`` it, free its grant
        and unpark the task's best entry."""
        self.record(slot, duration_s, timed_out)
        self.resources.release(slot)
        if self._parked:
            self._unpark_one(slot.name)

    def record(self, slot: TaskSlot, duration_s: float, timed_out: bool = False) -> None:
        """Fold one execution's run time into the task's moving average.

        Warm-up runs (which pay for instantiation) only seed it.  One sample
        moves it by at most a bounded step — a garbage-collection pause in an
        otherwise fast handler must not send it off the loop for the next
        hundred runs — except a timeout, which takes the task off the loop at once.
        """
        if slot.runs < WARMUP_RUNS or timed_out:
            slot.ewma_s = duration_s
        else:
            sample = min(duration_s, SAMPLE_CAP * self.inline_threshold_s)
            slot.ewma_s += EWMA_ALPHA * (sample - slot.ewma_s)
        slot.runs += 1
