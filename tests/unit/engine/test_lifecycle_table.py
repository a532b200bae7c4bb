"""The execution lifecycle: the allowed moves, and nothing else.

The allowed set is written out here from the specification rather than read
back from ``TRANSITIONS``, so a change to the table has to change this test too.
"""
from __future__ import annotations

import itertools

import pytest

from engine.errors import Conflict, IllegalTransition
from engine.lifecycle import TERMINAL, TRANSITIONS, ExecutionState, check_transition

S = ExecutionState

ALLOWED = {
    (S.QUEUED, S.RUNNING),
    (S.QUEUED, S.CANCELLED),
    (S.RUNNING, S.SUCCEEDED),
    (S.RUNNING, S.FAILED),
    (S.RUNNING, S.TIMED_OUT),
    (S.RUNNING, S.CANCELLED),
    (S.RUNNING, S.SUSPENDED),
    (S.SUSPENDED, S.RUNNING),
    (S.SUSPENDED, S.CANCELLED),
}
ALL_PAIRS = set(itertools.product(ExecutionState, repeat=2))
FORBIDDEN = sorted(ALL_PAIRS - ALLOWED, key=lambda p: (p[0].value, p[1].value))


def test_states_and_values() -> None:
    assert [s.value for s in ExecutionState] == [
        "queued", "running", "suspended", "succeeded", "failed", "timed_out", "cancelled",
    ]
    assert str(S.TIMED_OUT) == "timed_out"
    assert f"{S.QUEUED}" == "queued"


def test_table_is_exactly_the_specified_moves() -> None:
    table = {(a, b) for a, targets in TRANSITIONS.items() for b in targets}
    assert table == ALLOWED
    assert set(TRANSITIONS) == set(ExecutionState)


@pytest.mark.parametrize(("current", "new"), sorted(ALLOWED, key=lambda p: (p[0].value, p[1].value)),
                         ids=lambda s: s.value)
def test_allowed_transition_passes(current: ExecutionState, new: ExecutionState) -> None:
    assert check_transition(current, new) is None


@pytest.mark.parametrize(("current", "new"), FORBIDDEN, ids=lambda s: s.value)
def test_every_other_pair_raises(current: ExecutionState, new: ExecutionState) -> None:
    with pytest.raises(IllegalTransition) as info:
        check_transition(current, new)
    assert info.value.message == f"an execution cannot go from {current} to {new}"
    assert info.value.code == "illegal_transition"
    assert isinstance(info.value, Conflict) and info.value.status == 409


def test_forbidden_pairs_cover_the_rest_of_the_square() -> None:
    assert len(FORBIDDEN) == len(ExecutionState) ** 2 - len(ALLOWED) == 40


def test_terminal_states() -> None:
    assert TERMINAL == frozenset({S.SUCCEEDED, S.FAILED, S.TIMED_OUT, S.CANCELLED})


@pytest.mark.parametrize("state", sorted(TERMINAL, key=lambda s: s.value), ids=lambda s: s.value)
def test_terminal_states_have_no_way_out_not_even_to_themselves(state: ExecutionState) -> None:
    for new in ExecutionState:
        with pytest.raises(IllegalTransition):
            check_transition(state, new)
