"""Priority queue throughput, as ratios against bare heapq measured in the same run.

    .venv/bin/python bench/queue_ratio.py [--repeat 15]

Two workloads, each run on the compiled twin, the pure twin and the anchor
(``heapq`` with ``(-priority, seq, item)`` tuples, the textbook recipe):

* burst:  push N items with mixed priorities, then pop them all;
* steady: at a queue depth of DEPTH, push one, pop one, STEPS times.

Ops are pushes plus pops.  Every repetition runs all implementations back to
back (in a rotating order) and the best repetition of each counts, so drift
on a busy machine hits them alike.  ``bench/bench_queue.py`` runs the same
workloads under pytest-benchmark.
"""
from __future__ import annotations

import argparse
import heapq
import importlib
import itertools
import random
import sys
import time
from pathlib import Path
from types import ModuleType
from typing import Any, Callable

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

N = 10_000
DEPTH = 1_000
STEPS = 10_000
LEVELS = 8  # distinct priorities: plenty of FIFO ties, as in the scheduler

_rng = random.Random(1729)
BURST = [(f"event-{n}", _rng.randrange(LEVELS) - 2) for n in range(N)]
PREFILL = [(f"parked-{n}", _rng.randrange(LEVELS) - 2) for n in range(DEPTH)]
STEADY = [(f"event-{n}", _rng.randrange(LEVELS) - 2) for n in range(STEPS)]

OPS = {"burst": 2 * N, "steady": 2 * STEPS}
ANCHOR = "heapq"


def twins() -> dict[str, ModuleType]:
    """The priority queue twins that import here, by implementation name."""
    found = {}
    for name, module in (("cython", "fastpath._queue_c"), ("python", "fastpath._queue_py")):
        try:
            found[name] = importlib.import_module(module)
        except ImportError as exc:
            print(f"{module} not available ({exc}); skipped", file=sys.stderr)
    return found


# -- the anchor: bare heapq --------------------------------------------------------


def heapq_burst() -> None:
    heap: list[tuple[int, int, str]] = []
    seq = itertools.count()
    push, pop = heapq.heappush, heapq.heappop
    for item, priority in BURST:
        push(heap, (-priority, next(seq), item))
    for _ in range(N):
        pop(heap)[2]


def heapq_prefilled() -> tuple[list[tuple[int, int, str]], Any]:
    seq = itertools.count()
    heap = [(-priority, next(seq), item) for item, priority in PREFILL]
    heapq.heapify(heap)
    return heap, seq


def heapq_steady(state: tuple[list[tuple[int, int, str]], Any]) -> None:
    heap, seq = state
    push, pop = heapq.heappush, heapq.heappop
    for item, priority in STEADY:
        push(heap, (-priority, next(seq), item))
        pop(heap)[2]


# -- the twins ---------------------------------------------------------------------


def twin_burst(cls: type) -> None:
    queue = cls()
    push, pop = queue.push, queue.pop
    for item, priority in BURST:
        push(item, priority)
    for _ in range(N):
        pop()


def twin_prefilled(cls: type) -> Any:
    queue = cls()
    for item, priority in PREFILL:
        queue.push(item, priority)
    return queue


def twin_steady(queue: Any) -> None:
    push, pop = queue.push, queue.pop
    for item, priority in STEADY:
        push(item, priority)
        pop()


def workloads() -> dict[tuple[str, str], tuple[Callable[[Any], None], Callable[[], Any]]]:
    """``(workload, implementation) -> (run, setup)``; ``run(setup())`` is timed."""
    table: dict[tuple[str, str], tuple[Callable[[Any], None], Callable[[], Any]]] = {
        ("burst", ANCHOR): (lambda _: heapq_burst(), lambda: None),
        ("steady", ANCHOR): (heapq_steady, heapq_prefilled),
    }
    for name, module in twins().items():
        cls = module.PriorityQueue
        table[("burst", name)] = (lambda _, cls=cls: twin_burst(cls), lambda: None)
        table[("steady", name)] = (twin_steady, lambda cls=cls: twin_prefilled(cls))
    return table


def measure(repeat: int) -> dict[tuple[str, str], float]:
    """Best seconds per run of every workload and implementation."""
    table = workloads()
    best = {key: float("inf") for key in table}
    keys = list(table)
    for rep in range(repeat):
        rotated = keys[rep % len(keys):] + keys[: rep % len(keys)]
        for key in rotated:
            run, setup = table[key]
            state = setup()
            start = time.perf_counter()
            run(state)
            best[key] = min(best[key], time.perf_counter() - start)
    return best


def report(best: dict[tuple[str, str], float]) -> str:
    lines = [
        f"{'workload':<8} {'implementation':<15} {'ops/s':>12} {'x heapq':>8}",
        "-" * 46,
    ]
    for workload in OPS:
        anchor = best[(workload, ANCHOR)]
        for (name, impl), seconds in best.items():
            if name == workload:
                ops = OPS[workload] / seconds
                lines.append(f"{workload:<8} {impl:<15} {ops:>12,.0f} {anchor / seconds:>8.2f}")
    lines.append(f"burst: N={N:,} pushes then pops; steady: push one, pop one, "
                 f"{STEPS:,} times at depth {DEPTH:,}; x heapq > 1 is faster than the anchor")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=15, help="repetitions; the best counts")
    args = parser.parse_args(argv)
    print(report(measure(args.repeat)))


if __name__ == "__main__":
    main()
