"""One run of a task: its identity, state, input, output and timings."""
from __future__ import annotations

import asyncio
import itertools
import os
import time
from collections import OrderedDict
from typing import Any, Iterable, Sequence

from .errors import WasmyardError
from .lifecycle import TERMINAL, TRANSITIONS, ExecutionState, check_transition

__all__ = ["Execution", "History"]

_BOOT = os.urandom(4).hex()
_counter = itertools.count(1)
# Wall-clock time = perf_counter time + this offset: one clock read per execution instead of two.
_WALL_OFFSET_NS = time.time_ns() - time.perf_counter_ns()


class Execution:
    __slots__ = (
        "id", "task", "state", "input", "output", "error", "logs", "exit_code", "priority",
        "entry_id", "created_ns", "started_ns", "finished_ns", "watch",
        "cancel_requested", "hops", "job", "_waiters",
    )

    def __init__(self, task: str, data: bytes, priority: int, hops: int = 0) -> None:
        # Unique per hub and boot, cheap (no uuid4 on the hot path), sortable within a boot.
        self.id = f"{_BOOT}-{next(_counter):08x}"
        self.task = task
        self.state = ExecutionState.QUEUED
        self.input = data
        self.output = b""
        self.error: WasmyardError | None = None
        self.logs: Sequence[tuple[str, str]] = ()
        self.exit_code: int | None = None
        self.priority = priority
        self.entry_id = 0
        self.created_ns = time.perf_counter_ns()
        self.started_ns = 0
        self.finished_ns = 0
        self.watch: Any = None
        self.cancel_requested = False
        self.hops = hops  # events this execution publishes are one hop further
        self.job: Any = None  # a command's job while a worker pool holds it (cancel keeps it from starting)
        self._waiters: list[asyncio.Future[None]] | None = None

    def set_watch(self, watch: Any) -> None:
        """Attach the running environment's Watch.  Called from the worker thread;
        the re-check closes the window in which a cancel saw no Watch yet."""
        watch.owner = self.id
        self.watch = watch
        if self.cancel_requested:
            watch.cancel_for = self.id

    def transition(self, new: ExecutionState) -> None:
        if new not in TRANSITIONS[self.state]:  # check_transition, inlined: twice per execution
            check_transition(self.state, new)
        self.state = new

    @property
    def created_at(self) -> float:
        """Wall-clock time (Unix seconds) it was submitted."""
        return (self.created_ns + _WALL_OFFSET_NS) / 1e9

    @property
    def done(self) -> bool:
        return self.state in TERMINAL

    @property
    def duration_ms(self) -> float | None:
        if not self.finished_ns or not self.started_ns:
            return None
        return (self.finished_ns - self.started_ns) / 1e6

    async def wait(self) -> None:
        """Wait until the execution reaches a terminal state.

        Each waiter has a future of its own: cancelling one waiter (a client
        that went away) must not wake or cancel the others, and a future per
        waiter is cheaper than shielding a shared one.
        """
        if self.done:
            return
        waiter = asyncio.get_running_loop().create_future()
        if self._waiters is None:
            self._waiters = [waiter]
        else:
            self._waiters.append(waiter)
        await waiter

    def notify(self) -> None:
        """Wake waiters; called once, when the execution becomes terminal."""
        waiters = self._waiters
        if waiters is not None:
            self._waiters = None
            for waiter in waiters:
                if not waiter.done():
                    waiter.set_result(None)

    def to_dict(self) -> dict[str, Any]:
        queued_ms = (self.started_ns - self.created_ns) / 1e6 if self.started_ns else None
        return {
            "id": self.id,
            "task": self.task,
            "state": self.state.value,
            "priority": self.priority,
            "created_at": self.created_at,
            "queued_ms": queued_ms,
            "duration_ms": self.duration_ms,
            "exit_code": self.exit_code,
            "output_bytes": len(self.output),
            "error": self.error.to_dict() if self.error is not None else None,
            "logs": [{"stream": s, "line": line} for s, line in self.logs],
        }


class History:
    """Recent executions by id, bounded by count and by retained output bytes."""

    def __init__(self, max_items: int = 10_000, max_bytes: int = 64 << 20) -> None:
        self.max_items = max_items
        self.max_bytes = max_bytes
        self._items: OrderedDict[str, Execution] = OrderedDict()
        self._bytes = 0

    def add(self, execution: Execution) -> None:
        self._items[execution.id] = execution

    def get(self, execution_id: str) -> Execution | None:
        return self._items.get(execution_id)

    def finished(self, execution: Execution) -> None:
        """Account a terminal execution's output, then evict the oldest finished ones."""
        self.finished_all((execution,))

    def finished_all(self, executions: Iterable[Execution]) -> None:
        """``finished`` for many at once: one eviction pass for the lot."""
        added = 0
        for execution in executions:
            execution.input = b""
            added += len(execution.output)
        self._bytes += added
        items = self._items
        while len(items) > self.max_items or self._bytes > self.max_bytes:
            key, old = next(iter(items.items()))
            if old.done:  # the common case: the oldest is done, pop it without a scan
                items.popitem(last=False)
            else:
                for key, old in items.items():
                    if old.done:
                        break
                else:
                    return
                del items[key]
            self._bytes -= len(old.output)

    def live(self, task: str) -> list[Execution]:
        """Executions of ``task`` that have not ended yet."""
        return [ex for ex in self._items.values() if ex.task == task and not ex.done]

    def __len__(self) -> int:
        return len(self._items)
