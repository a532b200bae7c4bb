"""Counters and a latency histogram, rendered in Prometheus text format.

Recording is a few integer additions into preallocated lists, done once per
finished execution, in the coordinator's once-per-loop-turn accounting —
never per routed event, never with a lock (all calls come from the event
loop thread).  Readers go through ``before_read`` first, so what has ended
but not been accounted yet is counted too.
"""
from __future__ import annotations

import bisect
from typing import Callable, Mapping

__all__ = ["Metrics", "BUCKETS_S"]

BUCKETS_S = (0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class _Histogram:
    __slots__ = ("counts", "sum", "count")

    def __init__(self) -> None:
        self.counts = [0] * (len(BUCKETS_S) + 1)
        self.sum = 0.0
        self.count = 0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(BUCKETS_S, value)] += 1
        self.sum += value
        self.count += 1


def _esc(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


class Metrics:
    def __init__(self) -> None:
        self._executions: dict[tuple[str, str], int] = {}
        self._durations: dict[str, _Histogram] = {}
        self.rejected: dict[str, int] = {}
        self.gauges: dict[str, tuple[str, Callable[[], float]]] = {}
        self.families: dict[str, tuple[str, str, Callable[[], Mapping[str, float]]]] = {}
        #: Called before the counters are read, to record what has finished but not been reported yet.
        self.before_read: Callable[[], None] | None = None

    def execution_finished(self, task: str, state: str, duration_s: float | None) -> None:
        key = (task, state)
        executions = self._executions
        executions[key] = executions.get(key, 0) + 1
        if duration_s is not None:
            hist = self._durations.get(task)
            if hist is None:
                hist = self._durations[task] = _Histogram()
            hist.observe(duration_s)

    def _read(self) -> None:
        if self.before_read is not None:
            self.before_read()

    @property
    def executions(self) -> dict[tuple[str, str], int]:
        """Finished executions by (task, state)."""
        self._read()
        return self._executions

    @property
    def durations(self) -> dict[str, _Histogram]:
        """Execution durations by task."""
        self._read()
        return self._durations

    def rejected_request(self, reason: str) -> None:
        self.rejected[reason] = self.rejected.get(reason, 0) + 1

    def gauge(self, name: str, help_text: str, read: Callable[[], float]) -> None:
        self.gauges[name] = (help_text, read)

    def family(self, name: str, help_text: str, label: str, read: Callable[[], Mapping[str, float]]) -> None:
        """A counter family kept elsewhere (``read`` returns label value → count), read at scrape time."""
        self.families[name] = (help_text, label, read)

    def render(self) -> str:
        out: list[str] = [
            "# HELP wasmyard_executions_total Executions that reached a terminal state.",
            "# TYPE wasmyard_executions_total counter",
        ]
        for (task, state), n in sorted(self.executions.items()):
            out.append(f'wasmyard_executions_total{{task="{_esc(task)}",state="{state}"}} {n}')
        out += [
            "# HELP wasmyard_execution_duration_seconds Time from start to end of an execution.",
            "# TYPE wasmyard_execution_duration_seconds histogram",
        ]
        for task, hist in sorted(self.durations.items()):
            label = f'task="{_esc(task)}"'
            running = 0
            for bound, n in zip(BUCKETS_S, hist.counts):
                running += n
                out.append(f'wasmyard_execution_duration_seconds_bucket{{{label},le="{bound}"}} {running}')
            out.append(f'wasmyard_execution_duration_seconds_bucket{{{label},le="+Inf"}} {hist.count}')
            out.append(f"wasmyard_execution_duration_seconds_sum{{{label}}} {hist.sum:.9f}")
            out.append(f"wasmyard_execution_duration_seconds_count{{{label}}} {hist.count}")
        out += [
            "# HELP wasmyard_rejected_total Requests refused before running (queue full, too large, ...).",
            "# TYPE wasmyard_rejected_total counter",
        ]
        for reason, n in sorted(self.rejected.items()):
            out.append(f'wasmyard_rejected_total{{reason="{reason}"}} {n}')
        for name, (help_text, label, read_family) in sorted(self.families.items()):
            out += [f"# HELP {name} {help_text}", f"# TYPE {name} counter"]
            for value, count in sorted(read_family().items()):
                out.append(f'{name}{{{label}="{_esc(value)}"}} {count}')
        for name, (help_text, read) in sorted(self.gauges.items()):
            out += [f"# HELP {name} {help_text}", f"# TYPE {name} gauge", f"{name} {read()}"]
        return "\n".join(out) + "\n"
