"""Priority queue throughput under pytest-benchmark, against bare heapq in the same run.

    .venv/bin/python -m pytest bench/bench_queue.py --benchmark-only

The workloads are the ones in ``bench/queue_ratio.py``.  Each group holds the
compiled twin, the pure twin and the heapq anchor; after the last benchmark
the ratios to the anchor (by median) are printed as well.
"""
from __future__ import annotations

from typing import Any, Iterator

import pytest
import queue_ratio

IMPLEMENTATIONS = ["cython", "python", queue_ratio.ANCHOR]
_WORKLOADS = queue_ratio.workloads()
_MEDIANS: dict[tuple[str, str], float] = {}


@pytest.fixture(scope="module", autouse=True)
def ratios(request: pytest.FixtureRequest) -> Iterator[None]:
    yield
    plugins = request.config.pluginmanager
    reporter = plugins.get_plugin("terminalreporter")
    capture = plugins.get_plugin("capturemanager")
    if reporter is None or capture is None or not _MEDIANS:
        return
    lines = ["", "priority queue, ops/s and ratio to the heapq anchor (medians, this run):"]
    for workload, ops in queue_ratio.OPS.items():
        anchor = _MEDIANS.get((workload, queue_ratio.ANCHOR))
        for impl in IMPLEMENTATIONS:
            median = _MEDIANS.get((workload, impl))
            if median and anchor:
                lines.append(
                    f"  {workload:<7} {impl:<7} {ops / median:>12,.0f} ops/s  {anchor / median:5.2f}x heapq"
                )
    with capture.global_and_fixture_disabled():
        for line in lines:
            reporter.write_line(line)


def _run(benchmark: Any, workload: str, impl: str) -> None:
    if (workload, impl) not in _WORKLOADS:
        pytest.skip(f"{impl} twin not available")
    run, setup = _WORKLOADS[(workload, impl)]
    benchmark.extra_info["ops"] = queue_ratio.OPS[workload]
    benchmark.pedantic(run, setup=lambda: ((setup(),), {}), rounds=30, warmup_rounds=2)
    if benchmark.stats is not None:
        _MEDIANS[(workload, impl)] = benchmark.stats.stats.median


@pytest.mark.benchmark(group=f"burst: push {queue_ratio.N:,} then pop all")
@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
def test_burst(benchmark: Any, impl: str) -> None:
    _run(benchmark, "burst", impl)


@pytest.mark.benchmark(group=f"steady: push one, pop one at depth {queue_ratio.DEPTH:,}")
@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
def test_steady(benchmark: Any, impl: str) -> None:
    _run(benchmark, "steady", impl)
