"""The resource manager: who may hold an execution environment right now.

Pure accounting, no I/O: a grant is three counters checked together — the
hub-wide in-flight limit, the task's own concurrency limit, and the hub's
memory budget (each running execution reserves its task's memory limit, so a
hub never promises more linear memory than it has).
"""
from __future__ import annotations

from .errors import InvalidManifest
from .manifest import Manifest

__all__ = ["TaskSlot", "ResourceManager"]


class TaskSlot:
    """Per-task accounting and the running statistics the scheduler places by."""

    __slots__ = ("name", "max_concurrency", "memory_mib", "handler", "in_flight", "runs", "ewma_s")

    def __init__(self, manifest: Manifest) -> None:
        self.name = manifest.name
        self.max_concurrency = manifest.max_concurrency
        self.memory_mib = manifest.limits.memory_mib
        self.handler = manifest.kind == "handler"
        self.in_flight = 0
        self.runs = 0
        self.ewma_s = 0.0


class ResourceManager:
    def __init__(self, max_in_flight: int, memory_budget_mib: int) -> None:
        self.max_in_flight = max_in_flight
        self.memory_budget_mib = memory_budget_mib
        self.in_flight = 0
        self.memory_mib = 0

    def admit(self, manifest: Manifest) -> None:
        """Refuse, at registration, a task that could never be granted anything."""
        if manifest.limits.memory_mib > self.memory_budget_mib:
            raise InvalidManifest(
                f"task {manifest.name!r} asks for {manifest.limits.memory_mib} MiB, more than this hub's "
                f"whole memory budget of {self.memory_budget_mib} MiB"
            )

    def has_capacity(self) -> bool:
        return self.in_flight < self.max_in_flight

    def try_acquire(self, slot: TaskSlot) -> bool:
        if (
            self.in_flight >= self.max_in_flight
            or slot.in_flight >= slot.max_concurrency
            or self.memory_mib + slot.memory_mib > self.memory_budget_mib
        ):
            return False
        self.in_flight += 1
        self.memory_mib += slot.memory_mib
        slot.in_flight += 1
        return True

    def release(self, slot: TaskSlot) -> None:
        if slot.in_flight <= 0:
            raise RuntimeError(f"release without a grant for task {slot.name!r}")
        slot.in_flight -= 1
        self.in_flight -= 1
        self.memory_mib -= slot.memory_mib
