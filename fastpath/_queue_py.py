"""The scheduler's priority queue, pure Python (twin of ``_queue_c.pyx``).

Higher priority first; first in, first out (by entry id) within a priority.
Built on :mod:`heapq` with lazy deletion: every entry is a list
``[-priority, entry_id, dead, item]``, ``_index`` maps the ids that are in the
queue to their entries, and ``remove`` only marks an entry dead (and drops its
item); dead entries are skipped when they reach the top and swept out when
they outnumber the live ones, so every operation is O(log n) amortized.

The ``dead`` flag sits before the item so that a dead entry and a live one
with the same priority and id (an entry removed, then put back with
``repush``) compare on the flag and never on their items.
"""
from __future__ import annotations

from heapq import heapify, heappop, heappush
from operator import index as _as_index
from typing import Any, NoReturn

__all__ = ["PriorityQueue"]

_INT64_MIN = -(1 << 63)
_INT64_MAX = (1 << 63) - 1
_LIVE = 0
_DEAD = 1
#: Sweep dead entries once there are more of them than live ones (and at least this many).
_SWEEP_AT = 64


def _as_int64(value: object, what: str) -> int:
    """``value`` as a plain int in the signed 64-bit range (TypeError, OverflowError)."""
    number = int(_as_index(value))  # type: ignore[arg-type]
    if not _INT64_MIN <= number <= _INT64_MAX:
        raise OverflowError(f"{what} {number} is outside the signed 64-bit range")
    return number


class PriorityQueue:
    """Higher priority first; FIFO (by entry id) within a priority."""

    __slots__ = ("_heap", "_index", "_last", "_dead")

    def __init__(self) -> None:
        self._heap: list[list[Any]] = []
        self._index: dict[int, list[Any]] = {}
        self._last = 0  # the last entry id issued; ids are never reused
        self._dead = 0  # dead entries still in _heap

    def push(self, item: object, priority: int = 0) -> int:
        """Add ``item``; return its new entry id (monotonic, from 1). O(log n)."""
        if type(priority) is not int or not _INT64_MIN <= priority <= _INT64_MAX:
            priority = _as_int64(priority, "priority")
        entry_id = self._last + 1
        if entry_id > _INT64_MAX:
            raise OverflowError("entry ids are exhausted")
        self._last = entry_id
        entry = [-priority, entry_id, _LIVE, item]
        self._index[entry_id] = entry
        heappush(self._heap, entry)
        return entry_id

    def repush(self, item: object, priority: int, entry_id: int) -> None:
        """Put back an entry popped earlier under its original id, so it keeps its
        FIFO place among its priority.  ValueError if ``entry_id`` is in the queue
        or was never issued."""
        if type(priority) is not int or not _INT64_MIN <= priority <= _INT64_MAX:
            priority = _as_int64(priority, "priority")
        if type(entry_id) is not int:
            entry_id = int(_as_index(entry_id))
        if not 1 <= entry_id <= self._last:
            raise ValueError(f"entry id {entry_id} was never issued by this queue")
        if entry_id in self._index:
            raise ValueError(f"entry id {entry_id} is already in the queue")
        entry = [-priority, entry_id, _LIVE, item]
        self._index[entry_id] = entry
        heappush(self._heap, entry)

    def pop(self) -> object:
        """Remove and return the first item.  IndexError when empty."""
        heap = self._heap
        while heap:
            entry = heappop(heap)
            if entry[2]:
                self._dead -= 1
                continue
            del self._index[entry[1]]
            return entry[3]
        raise IndexError("pop from an empty PriorityQueue")

    def pop_entry(self) -> tuple[int, int, object]:
        """Remove the first entry; return ``(entry_id, priority, item)``."""
        heap = self._heap
        while heap:
            entry = heappop(heap)
            if entry[2]:
                self._dead -= 1
                continue
            del self._index[entry[1]]
            return entry[1], -entry[0], entry[3]
        raise IndexError("pop from an empty PriorityQueue")

    def peek(self) -> object:
        """Return the first item without removing it.  IndexError when empty."""
        heap = self._heap
        while heap:
            entry = heap[0]
            if entry[2]:
                heappop(heap)
                self._dead -= 1
                continue
            return entry[3]
        raise IndexError("peek from an empty PriorityQueue")

    def remove(self, entry_id: int) -> bool:
        """Remove a cancelled entry; False if it is not in the queue.  O(log n)."""
        if type(entry_id) is not int:
            entry_id = _as_index(entry_id)
        entry = self._index.pop(entry_id, None)
        if entry is None:
            return False
        entry[2] = _DEAD
        entry[3] = None  # release the item now, not when the entry surfaces
        self._dead += 1
        if self._dead > _SWEEP_AT and self._dead > len(self._index):
            self._heap = [e for e in self._heap if not e[2]]
            heapify(self._heap)
            self._dead = 0
        return True

    def clear(self) -> None:
        """Drop every entry (entry ids keep counting from where they were)."""
        heap, self._heap, self._index, self._dead = self._heap, [], {}, 0
        heap.clear()

    def __contains__(self, entry_id: int) -> bool:
        if type(entry_id) is not int:
            entry_id = _as_index(entry_id)
        return entry_id in self._index

    def __len__(self) -> int:
        return len(self._index)

    def __bool__(self) -> bool:
        return bool(self._index)

    def __reduce__(self) -> NoReturn:
        raise TypeError(f"cannot pickle {type(self).__name__!r} object")
