"""Metrics: the rendered text is valid Prometheus exposition format.

A small parser (``parse``) enforces the rules a scraper relies on: each family
is announced by HELP then TYPE, its samples follow before the next family, no
family appears twice, label values are escaped, and histograms are cumulative
with ``+Inf`` equal to ``_count``.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

import pytest

from engine.metrics import BUCKETS_S, Metrics

NAME = r"[a-zA-Z_:][a-zA-Z0-9_:]*"
SAMPLE_RE = re.compile(rf"^({NAME})(?:\{{(.*)\}})? (\S+)$")
LABEL_RE = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\\n]|\\[\\"n])*)"(,|$)')
SUFFIXES = {"counter": ("",), "gauge": ("",), "histogram": ("_bucket", "_sum", "_count")}


@dataclass
class Family:
    name: str
    help: str
    type: str = ""
    samples: list[tuple[str, dict[str, str], float]] = field(default_factory=list)


def unescape(value: str) -> str:
    return re.sub(r"\\(.)", lambda m: {"n": "\n", "\\": "\\", '"': '"'}[m.group(1)], value)


def parse_labels(text: str) -> dict[str, str]:
    labels: dict[str, str] = {}
    pos = 0
    while pos < len(text):
        m = LABEL_RE.match(text, pos)
        assert m, f"bad label syntax at {text[pos:]!r}"
        assert m.group(1) not in labels, f"label {m.group(1)} repeated"
        labels[m.group(1)] = unescape(m.group(2))
        pos = m.end()
    return labels


def parse(text: str) -> dict[str, Family]:
    assert text.endswith("\n")
    families: dict[str, Family] = {}
    current: Family | None = None
    for line in text[:-1].split("\n"):
        if line.startswith("# HELP "):
            name, _, help_text = line[len("# HELP "):].partition(" ")
            assert re.fullmatch(NAME, name) and help_text
            assert name not in families, f"family {name} announced twice"
            current = families[name] = Family(name, help_text)
        elif line.startswith("# TYPE "):
            name, _, kind = line[len("# TYPE "):].partition(" ")
            assert current is not None and current.name == name and not current.type, f"TYPE without HELP: {line}"
            assert kind in SUFFIXES
            current.type = kind
        else:
            m = SAMPLE_RE.match(line)
            assert m, f"not a sample line: {line!r}"
            assert current is not None and current.type, f"sample before HELP/TYPE: {line}"
            name, labels, value = m.group(1), m.group(2), m.group(3)
            assert name in {current.name + s for s in SUFFIXES[current.type]}, f"{name} outside its family"
            current.samples.append((name, parse_labels(labels or ""), float(value)))
    return families


def check_histogram(family: Family) -> dict[str, tuple[list[tuple[float, float]], float, float]]:
    """Per label set: (buckets as (le, cumulative count), sum, count), checked for consistency."""
    out: dict[str, tuple[list[tuple[float, float]], float, float]] = {}
    by_task: dict[str, dict[str, list]] = {}
    for name, labels, value in family.samples:
        task = labels["task"]
        parts = by_task.setdefault(task, {"_bucket": [], "_sum": [], "_count": []})
        suffix = name[len(family.name):]
        if suffix == "_bucket":
            parts["_bucket"].append((float(labels["le"]), value))
        else:
            assert set(labels) == {"task"}
            parts[suffix].append(value)
    for task, parts in by_task.items():
        buckets = parts["_bucket"]
        assert [le for le, _ in buckets] == sorted(le for le, _ in buckets), "le not increasing"
        assert buckets[-1][0] == math.inf, "last bucket must be +Inf"
        counts = [n for _, n in buckets]
        assert counts == sorted(counts), "buckets not cumulative"
        assert len(parts["_sum"]) == len(parts["_count"]) == 1
        assert buckets[-1][1] == parts["_count"][0], "+Inf bucket differs from _count"
        out[task] = (buckets, parts["_sum"][0], parts["_count"][0])
    return out


def test_empty_metrics_render_every_family_announced() -> None:
    families = parse(Metrics().render())
    assert {f: families[f].type for f in families} == {
        "wasmyard_executions_total": "counter",
        "wasmyard_execution_duration_seconds": "histogram",
        "wasmyard_rejected_total": "counter",
    }
    assert all(not f.samples for f in families.values())


def test_executions_counted_by_task_and_state() -> None:
    m = Metrics()
    for state in ("succeeded", "succeeded", "failed", "timed_out"):
        m.execution_finished("alpha", state, 0.001)
    m.execution_finished("beta", "cancelled", None)
    samples = parse(m.render())["wasmyard_executions_total"].samples
    assert sorted((labels["task"], labels["state"], v) for _, labels, v in samples) == [
        ("alpha", "failed", 1), ("alpha", "succeeded", 2), ("alpha", "timed_out", 1), ("beta", "cancelled", 1),
    ]


def test_reading_accounts_what_has_ended_first() -> None:
    """Readers call before_read (the coordinator settles what is pending) before they count."""
    m = Metrics()
    pending = [("t", "succeeded", 0.001), ("t", "failed", None)]
    m.before_read = lambda: [m.execution_finished(*p) for p in pending] and pending.clear()
    assert m.executions == {("t", "succeeded"): 1, ("t", "failed"): 1}
    pending.append(("u", "succeeded", 0.002))
    counts = {labels["task"] + ":" + labels["state"]: v
              for _, labels, v in parse(m.render())["wasmyard_executions_total"].samples}
    assert counts == {"t:succeeded": 1, "t:failed": 1, "u:succeeded": 1}


def test_histogram_is_cumulative_and_consistent() -> None:
    m = Metrics()
    values = [0.00001, 0.0003, 0.0003, 0.002, 0.07, 3.0, 42.0]
    for v in values:
        m.execution_finished("t", "succeeded", v)
    hist = check_histogram(parse(m.render())["wasmyard_execution_duration_seconds"])
    buckets, total, count = hist["t"]
    assert count == len(values)
    assert total == pytest.approx(sum(values))
    assert [le for le, _ in buckets] == [*BUCKETS_S, math.inf]
    for le, n in buckets:
        assert n == sum(1 for v in values if v <= le), f"bucket le={le}"


def test_a_value_on_a_bucket_bound_counts_in_that_bucket() -> None:
    """Prometheus buckets are "less than or equal"."""
    m = Metrics()
    m.execution_finished("t", "succeeded", 0.001)
    buckets, _, _ = check_histogram(parse(m.render())["wasmyard_execution_duration_seconds"])["t"]
    assert dict(buckets)[0.001] == 1
    assert dict(buckets)[0.0005] == 0


def test_unstarted_executions_are_counted_but_not_timed() -> None:
    m = Metrics()
    m.execution_finished("t", "cancelled", None)
    families = parse(m.render())
    assert families["wasmyard_executions_total"].samples == [
        ("wasmyard_executions_total", {"task": "t", "state": "cancelled"}, 1)]
    assert families["wasmyard_execution_duration_seconds"].samples == []


def test_one_histogram_per_task() -> None:
    m = Metrics()
    m.execution_finished("a", "succeeded", 0.01)
    m.execution_finished("b", "failed", 0.02)
    m.execution_finished("b", "succeeded", 0.03)
    hist = check_histogram(parse(m.render())["wasmyard_execution_duration_seconds"])
    assert {task: count for task, (_, _, count) in hist.items()} == {"a": 1, "b": 2}


@pytest.mark.parametrize("task", ['quo"te', "back\\slash", "new\nline", 'all\\"\n"\\', "plain"])
def test_label_values_are_escaped(task: str) -> None:
    m = Metrics()
    m.execution_finished(task, "succeeded", 0.001)
    families = parse(m.render())
    [(_, labels, _)] = families["wasmyard_executions_total"].samples
    assert labels == {"task": task, "state": "succeeded"}
    assert set(check_histogram(families["wasmyard_execution_duration_seconds"])) == {task}


def test_rejections_counted_by_reason() -> None:
    m = Metrics()
    for reason in ("queue_full", "input_too_large", "queue_full"):
        m.rejected_request(reason)
    samples = parse(m.render())["wasmyard_rejected_total"].samples
    assert sorted((labels["reason"], v) for _, labels, v in samples) == [("input_too_large", 1), ("queue_full", 2)]


def test_gauges_are_read_at_render_time() -> None:
    m = Metrics()
    depth = [3]
    m.gauge("wasmyard_queue_depth", "Executions waiting.", lambda: depth[0])
    m.gauge("wasmyard_in_flight", "Executions running.", lambda: 1.5)
    first = parse(m.render())
    assert first["wasmyard_queue_depth"].type == "gauge"
    assert first["wasmyard_queue_depth"].help == "Executions waiting."
    assert first["wasmyard_queue_depth"].samples == [("wasmyard_queue_depth", {}, 3)]
    assert first["wasmyard_in_flight"].samples == [("wasmyard_in_flight", {}, 1.5)]
    depth[0] = 7
    assert parse(m.render())["wasmyard_queue_depth"].samples == [("wasmyard_queue_depth", {}, 7)]


def test_the_parser_rejects_what_it_should() -> None:
    """The checks above are only as good as this parser; it must refuse broken text."""
    good = Metrics()
    good.execution_finished("t", "succeeded", 0.01)
    text = good.render()
    broken = [
        text.rstrip("\n"),  # no final newline
        text.replace("# TYPE wasmyard_executions_total counter\n", ""),  # sample before TYPE
        text + text,  # family twice
        text.replace('task="t",state', 'task="t\n",state'),  # raw newline in a label
        text.replace('task="t"', 'task=t', 1),  # unquoted label
    ]
    for doc in broken:
        with pytest.raises(AssertionError):
            parse(doc)
    cumulative_broken = text.replace('le="+Inf"} 1', 'le="+Inf"} 2')
    with pytest.raises(AssertionError):
        check_histogram(parse(cumulative_broken)["wasmyard_execution_duration_seconds"])
