"""Calls into wasm under pytest-benchmark, against plain wasmtime-py in the same run.

    .venv/bin/python -m pytest bench/bench_call.py --benchmark-only

The workloads are the ones in ``bench/call_ratio.py``.  Each group holds the
compiled twin, the pure twin and the wasmtime-py anchor; after the last
benchmark the time per operation and the ratio to the anchor (by median) are
printed, with the compiled twin's targets.
"""
from __future__ import annotations

from typing import Any, Iterator

import call_ratio
import pytest

IMPLEMENTATIONS = ["cython", "python", call_ratio.ANCHOR]
_WORKLOADS = call_ratio.workloads()
_MEDIANS: dict[tuple[str, str], float] = {}


@pytest.fixture(scope="module", autouse=True)
def ratios(request: pytest.FixtureRequest) -> Iterator[None]:
    yield
    plugins = request.config.pluginmanager
    reporter = plugins.get_plugin("terminalreporter")
    capture = plugins.get_plugin("capturemanager")
    if reporter is None or capture is None or not _MEDIANS:
        return
    lines = ["", "calls into wasm, us per op and ratio to plain wasmtime-py (medians, this run):"]
    for workload, ops in call_ratio.OPS.items():
        anchor = _MEDIANS.get((workload, call_ratio.ANCHOR))
        for impl in IMPLEMENTATIONS:
            median = _MEDIANS.get((workload, impl))
            if median and anchor:
                micros = median / ops * 1e6
                note = call_ratio.target_note(workload, micros, anchor / median) if impl == "cython" else ""
                lines.append(f"  {workload:<10} {impl:<11} {micros:>9.3f} us  {anchor / median:6.1f}x  {note}")
    with capture.global_and_fixture_disabled():
        for line in lines:
            reporter.write_line(line)


def _run(benchmark: Any, workload: str, impl: str) -> None:
    if (workload, impl) not in _WORKLOADS:
        pytest.skip(f"{impl} twin not available")
    benchmark.extra_info["ops"] = call_ratio.OPS[workload]
    benchmark.pedantic(_WORKLOADS[(workload, impl)], rounds=20, warmup_rounds=2)
    if benchmark.stats is not None:
        _MEDIANS[(workload, impl)] = benchmark.stats.stats.median


@pytest.mark.benchmark(group=f"export: {call_ratio.CALLS:,} calls of inc(i32) -> i32")
@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
def test_export(benchmark: Any, impl: str) -> None:
    _run(benchmark, "export", impl)


@pytest.mark.benchmark(group=f"host-call: {call_ratio.HOST_LOOP:,} wasm -> host -> wasm calls in one loop")
@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
def test_host_call(benchmark: Any, impl: str) -> None:
    _run(benchmark, "host-call", impl)


@pytest.mark.benchmark(group=f"round-trip: {call_ratio.ROUND_TRIPS:,} x (export -> host -> back)")
@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
def test_round_trip(benchmark: Any, impl: str) -> None:
    _run(benchmark, "round-trip", impl)


@pytest.mark.benchmark(group=f"handler-1k: {call_ratio.INVOKES:,} x (1 KiB in -> wy_handle -> 1 KiB out)")
@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
def test_handler_1k(benchmark: Any, impl: str) -> None:
    _run(benchmark, "handler-1k", impl)
