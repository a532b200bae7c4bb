"""pytest-benchmark suite for the router: topic matching, conditions, the table.

Run: ``.venv/bin/python -m pytest bench/bench_router.py --benchmark-columns=min,median,ops``

Each group holds its anchor, measured in the same run, so the relative column
pytest-benchmark prints (the parenthesised factors) is the figure to read:
``paho.mqtt.matcher.MQTTMatcher`` for matching, a hand-written function for a
condition.  ``bench/router_ratio.py`` prints the same comparisons as ratios.
Workloads (the building-shaped filter mix, topics, payloads) come from there.
"""
from __future__ import annotations

import random
from collections.abc import Callable
from functools import cache
from typing import Any

import orjson
import pytest
from router_ratio import CONDITION, build, make_filters, make_topics, reference_condition

import fastpath
from engine.routing import Route, RoutingTable, compile_condition

TOPICS = 20_000  # topics per matching call: enough that 100,000 filters do not sit in cache
BATCH = 1_000  # events per condition or table call


@cache
def workload(size: int) -> tuple[list[str], list[str]]:
    rng = random.Random(size)
    filters = make_filters(size, rng)
    return filters, make_topics(filters, TOPICS, rng)


@cache
def matcher(kind: str, size: int) -> Callable[[str], Any]:
    return build(kind, workload(size)[0])


@pytest.mark.parametrize("kind", ["paho", "python", "cython"])
@pytest.mark.parametrize("size", [10, 1_000, 100_000])
def test_match(benchmark: Any, kind: str, size: int) -> None:
    if kind == "cython" and fastpath.IMPLEMENTATION != "cython":
        pytest.skip(f"compiled fastpath not loaded: {fastpath.LOAD_ERROR}")
    match, topics = matcher(kind, size), workload(size)[1]
    expected = [sorted(matcher("paho", size)(t)) for t in topics[:100]]
    assert [sorted(match(t)) for t in topics[:100]] == expected
    benchmark.group = f"match: {size:,} filters, {TOPICS:,} topics per call"

    def run() -> None:
        for topic in topics:
            match(topic)
    benchmark(run)


@cache
def documents() -> tuple[list[bytes], list[object]]:
    rng = random.Random(7)
    raw = [orjson.dumps({"temperature": rng.uniform(0, 60), "status": rng.choice(["ok", "fault"]),
                         "tags": rng.sample(["hvac", "roof", "lab", "east"], 2), "seq": i})
           for i in range(BATCH)]
    return raw, [orjson.loads(r) for r in raw]


@pytest.mark.parametrize("how", ["by hand", "compiled", "orjson.loads"])
def test_condition(benchmark: Any, how: str) -> None:
    raw, docs = documents()
    benchmark.group = f"condition: {CONDITION} ({BATCH:,} events per call)"
    if how == "orjson.loads":
        def run() -> None:
            for r in raw:
                orjson.loads(r)
    else:
        evaluate = reference_condition if how == "by hand" else compile_condition(CONDITION).evaluate

        def run() -> None:
            for doc in docs:
                evaluate(doc)
    benchmark(run)


@pytest.mark.parametrize("what", ["trie only", "table.match"])
def test_table(benchmark: Any, what: str) -> None:
    """1,000 routes, half with the condition: what the table adds to the trie."""
    filters, _ = workload(1_000)
    routes = [Route.from_dict({"id": f"r{i}", "filter": f, "destination": "cloud",
                               "condition": CONDITION if i % 2 else None}) for i, f in enumerate(filters)]
    table = RoutingTable(routes)
    raw, _ = documents()
    events = list(zip(make_topics(filters, BATCH, random.Random(9)), raw))
    benchmark.group = f"routing table: 1,000 routes ({BATCH:,} events per call)"
    if what == "trie only":
        router = fastpath.TopicRouter()
        for i, f in enumerate(filters):
            router.subscribe(f, i)

        def run() -> None:
            for topic, _ in events:
                router.match(topic)
    else:
        def run() -> None:
            for topic, payload in events:
                table.match("device:t-17", topic, payload)
    benchmark(run)
