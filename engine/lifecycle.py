"""The execution lifecycle: one enum, one transition table.

``suspended`` is reserved for checkpointed long-lived executions; the table
already allows it so that checkpoints add transitions' users, not new states.
"""
from __future__ import annotations

import enum

from .errors import IllegalTransition

__all__ = ["ExecutionState", "TRANSITIONS", "TERMINAL", "check_transition"]


class ExecutionState(str, enum.Enum):
    QUEUED = "queued"
    RUNNING = "running"
    SUSPENDED = "suspended"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    TIMED_OUT = "timed_out"
    CANCELLED = "cancelled"

    def __str__(self) -> str:
        return self.value


S = ExecutionState

TRANSITIONS: dict[ExecutionState, frozenset[ExecutionState]] = {
    S.QUEUED: frozenset({S.RUNNING, S.CANCELLED}),
    S.RUNNING: frozenset({S.SUCCEEDED, S.FAILED, S.TIMED_OUT, S.CANCELLED, S.SUSPENDED}),
    S.SUSPENDED: frozenset({S.RUNNING, S.CANCELLED}),
    S.SUCCEEDED: frozenset(),
    S.FAILED: frozenset(),
    S.TIMED_OUT: frozenset(),
    S.CANCELLED: frozenset(),
}

TERMINAL = frozenset(s for s, nxt in TRANSITIONS.items() if not nxt)


def check_transition(current: ExecutionState, new: ExecutionState) -> None:
    """Raise ``IllegalTransition`` unless the table allows ``current → new``."""
    if new not in TRANSITIONS[current]:
        raise IllegalTransition(f"an execution cannot go from {current} to {new}")
