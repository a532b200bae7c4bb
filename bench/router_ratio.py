"""Topic matching and route conditions: compiled twin vs pure twin vs paho-mqtt.

Run: ``.venv/bin/python bench/router_ratio.py [--quick]``

Absolute speeds on a shared hub say little, so every figure printed here is
set against an anchor measured in the same run, on the same topics:
``paho.mqtt.matcher.MQTTMatcher`` (the trie most Python MQTT code uses) for
topic matching, and a hand-written Python function for route conditions.

The filter mix is shaped like a building, 400 filters per site: 90% exact
per-device filters (``site/<n>/floor/<m>/device/<id>/telemetry``), 5% ``+``
per floor (``.../floor/<m>/device/+/telemetry``), 3% ``#`` per device on any
floor (``.../floor/+/device/<id>/#``), 2% ``#`` per floor, and four global
ones: a catch-all ``#``, ``$SYS/#``, ``$SYS/broker/+/clients`` and
``+/+/floor/+/device/+/alarm``.  Of 20,000 topics, half come from a filter
(wildcards filled in), 45% are devices nobody subscribed to, 5% are ``$SYS``
topics.  Every implementation must return the same set of values for every
topic before its time counts.

Timings are the best of several rounds, implementations interleaved, with the
garbage collector settled before each round: the spread on a busy machine is
large, the best round is the least disturbed one.
"""
from __future__ import annotations

import gc
import importlib
import os
import random
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import orjson  # noqa: E402
from paho.mqtt.matcher import MQTTMatcher  # noqa: E402

import fastpath  # noqa: E402
from engine.routing import Route, RoutingTable, compile_condition  # noqa: E402

TWINS = {"cython": "fastpath._router_c", "python": "fastpath._router_py"}

SIZES = (10, 1_000, 100_000)
GLOBAL_FILTERS = ("#", "$SYS/#", "$SYS/broker/+/clients", "+/+/floor/+/device/+/alarm")


def make_filters(count: int, rng: random.Random) -> list[str]:
    """``count`` distinct filters of the building mix (the global ones included)."""
    sites = max(1, count // 400)
    out = dict.fromkeys(GLOBAL_FILTERS[: max(1, min(len(GLOBAL_FILTERS), count // 3))])
    while len(out) < count:
        s, f, d = rng.randrange(sites), rng.randrange(20), rng.randrange(1_000_000)
        x = rng.random()
        if x < 0.90:
            out[f"site/{s}/floor/{f}/device/{d}/telemetry"] = None
        elif x < 0.95:
            out[f"site/{s}/floor/{f}/device/+/telemetry"] = None
        elif x < 0.98:
            out[f"site/{s}/floor/+/device/{d}/#"] = None
        else:
            out[f"site/{s}/floor/{f}/#"] = None
    return list(out)


def make_topics(filters: Sequence[str], count: int, rng: random.Random) -> list[str]:
    """Half from a filter with its wildcards filled in, 45% unknown devices, 5% ``$SYS``."""
    sites = max(1, len(filters) // 400)
    topics = []
    for _ in range(count):
        x = rng.random()
        if x < 0.5:
            levels = rng.choice(filters).split("/")
            filled = [str(rng.randrange(99)) if lv == "+" else lv for lv in levels]
            if filled[-1] == "#":
                filled[-1:] = rng.choice([[], ["status"], ["a", "b"]])
            topics.append("/".join(filled) or "x")
        elif x < 0.95:
            topics.append(f"site/{rng.randrange(sites)}/floor/{rng.randrange(20)}"
                          f"/device/{rng.randrange(1_000_000)}/telemetry")
        else:
            topics.append(rng.choice(["$SYS/broker/load", "$SYS/broker/7/clients", "$SYS"]))
    return topics


def build(kind: str, filters: Sequence[str]) -> Callable[[str], Any]:
    """A ``match(topic)`` callable of one implementation, every filter -> its index."""
    if kind == "paho":
        matcher = MQTTMatcher()
        for i, f in enumerate(filters):
            matcher[f] = i
        iter_match = matcher.iter_match
        return lambda topic: list(iter_match(topic))
    router = importlib.import_module(TWINS[kind]).TopicRouter()
    for i, f in enumerate(filters):
        router.subscribe(f, i)
    match: Callable[[str], Any] = router.match
    return match


def best_of(rounds: int, runs: dict[str, Callable[[], None]]) -> dict[str, float]:
    """Best wall time per name, the runs interleaved round by round."""
    best = dict.fromkeys(runs, float("inf"))
    for _ in range(rounds):
        for name, run in runs.items():
            gc.collect()
            start = time.perf_counter()
            run()
            best[name] = min(best[name], time.perf_counter() - start)
    return best


def loop(match: Callable[[str], Any], topics: Sequence[str]) -> Callable[[], None]:
    def run() -> None:
        for topic in topics:
            match(topic)
    return run


def bench_matching(quick: bool) -> None:
    rng = random.Random(20240501)
    kinds: tuple[str, ...] = ("cython", "python", "paho")
    if fastpath.IMPLEMENTATION != "cython":
        print(f"(compiled twin not loaded: {fastpath.LOAD_ERROR})")
        kinds = ("python", "paho")
    print(f"{'filters':>8} {'impl':>7} {'matches/s':>12} {'ns/match':>9} {'vs paho':>8}  hits/topic")
    for size in SIZES:
        filters = make_filters(size, rng)
        topics = make_topics(filters, 5_000 if quick else 20_000, rng)
        matchers = {kind: build(kind, filters) for kind in kinds}
        expect = [sorted(matchers["paho"](t)) for t in topics]
        for kind in kinds[:-1]:
            if [sorted(matchers[kind](t)) for t in topics] != expect:
                raise SystemExit(f"{kind} disagrees with paho at {size} filters")
        hits = sum(map(len, expect)) / len(topics)
        best = best_of(3 if quick else 7, {k: loop(m, topics) for k, m in matchers.items()})
        for kind in kinds:
            seconds = best[kind] / len(topics)
            print(f"{size:>8} {kind:>7} {1 / seconds:>12,.0f} {seconds * 1e9:>9.0f}"
                  f" {best['paho'] / best[kind]:>7.1f}x  {hits:.2f}")
        del matchers
    print()


CONDITION = 'temperature > 30.5 and status == "ok" and "hvac" in tags'


def reference_condition(payload: object) -> bool:
    """The anchor: what a careful engineer would write by hand for CONDITION."""
    if type(payload) is not dict:
        return False
    t, s, tags = payload.get("temperature"), payload.get("status"), payload.get("tags")
    return ((type(t) is int or type(t) is float) and t > 30.5 and s == "ok"
            and type(tags) is list and "hvac" in tags)


def bench_conditions(quick: bool) -> None:
    rng = random.Random(7)
    raw = [orjson.dumps({"temperature": rng.uniform(0, 60), "status": rng.choice(["ok", "fault"]),
                         "tags": rng.sample(["hvac", "roof", "lab", "east"], 2), "seq": i})
           for i in range(5_000 if quick else 20_000)]
    docs = [orjson.loads(r) for r in raw]
    condition = compile_condition(CONDITION)
    if [condition(d) for d in docs] != [reference_condition(d) for d in docs]:
        raise SystemExit("the compiled condition disagrees with the hand-written one")

    def evaluate(fn: Callable[[object], bool]) -> Callable[[], None]:
        def run() -> None:
            for doc in docs:
                fn(doc)
        return run

    def parse() -> None:
        for r in raw:
            orjson.loads(r)

    routes = [Route.from_dict({"id": f"r{i}", "filter": f, "destination": "cloud",
                               "condition": CONDITION if i % 2 else None})
              for i, f in enumerate(make_filters(1_000, random.Random(3)))]
    table = RoutingTable(routes)
    events = [(t, r) for t, r in zip(make_topics([r.filter for r in routes], len(raw), rng), raw)]
    router = fastpath.TopicRouter()  # the one the table uses
    for i, r in enumerate(routes):
        router.subscribe(r.filter, i)

    def table_match() -> None:
        for topic, payload in events:
            table.match("device:t-17", topic, payload)

    def trie_only() -> None:
        for topic, _ in events:
            router.match(topic)

    best = best_of(3 if quick else 7, {"by hand": evaluate(reference_condition),
                                       "compiled": evaluate(condition),
                                       "orjson.loads": parse,
                                       "table.match": table_match,
                                       "trie only": trie_only})
    n = len(docs)
    print(f"condition: {CONDITION}")
    print(f"{'what':>14} {'ns/event':>9} {'vs by hand':>11}")
    for name in ("by hand", "compiled", "orjson.loads"):
        print(f"{name:>14} {best[name] / n * 1e9:>9.0f} {best[name] / best['by hand']:>10.2f}x")
    print(f"\nrouting table: 1,000 routes, half with that condition (router: {fastpath.IMPLEMENTATION})")
    print(f"{'what':>14} {'ns/event':>9} {'vs trie':>11}")
    for name in ("trie only", "table.match"):
        print(f"{name:>14} {best[name] / n * 1e9:>9.0f} {best[name] / best['trie only']:>10.2f}x")


def main(argv: Sequence[str]) -> None:
    quick = "--quick" in argv
    print(f"python {sys.version.split()[0]}, {os.cpu_count()} cpu(s)\n")
    bench_matching(quick)
    bench_conditions(quick)


if __name__ == "__main__":
    main(sys.argv[1:])
