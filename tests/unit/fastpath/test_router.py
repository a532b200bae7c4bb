"""The router's topic trie: both twins, against an edge-case table and a regex reference."""
from __future__ import annotations

import re
import tracemalloc
from types import ModuleType

import pytest
from twins import twin_params, twins
from hypothesis import given, settings
from hypothesis import strategies as st

import fastpath

TWINS = twin_params("router")


def reference_match(topic_filter: str, topic: str) -> bool:
    """MQTT matching as one regex per filter: the model the trie is held against."""
    if topic.startswith("$") and topic_filter[0] in "+#":
        return False
    levels = topic_filter.split("/")
    hashed = levels[-1] == "#"
    if hashed:
        levels.pop()
    body = "/".join("[^/]*" if level == "+" else re.escape(level) for level in levels)
    pattern = (body + "(?:/.*)?" if levels else ".*") if hashed else body
    return re.fullmatch(pattern, topic, re.DOTALL) is not None


EDGE_CASES = [
    # (filter, topic, matches)
    ("a/b", "a/b", True),
    ("a/b", "a/b/", False),
    ("a/b/", "a/b/", True),
    ("a/b", "A/b", False),
    ("a//b", "a//b", True),
    ("a/+/b", "a//b", True),
    ("/a", "/a", True),
    ("+/a", "/a", True),
    ("/#", "/a", True),
    ("#", "/a", True),
    ("#", "a", True),
    ("#", "/", True),
    ("a/#", "a", True),
    ("a/#", "a/", True),
    ("a/#", "a/b/c", True),
    ("a/#", "ab", False),
    ("a/#", "b/a", False),
    ("a/+", "a", False),
    ("a/+", "a/", True),
    ("a/+", "a/b/c", False),
    ("+", "a", True),
    ("+", "/", False),
    ("+/+", "/", True),
    ("+/+", "a/b", True),
    ("+/+", "a/b/c", False),
    ("a/+/#", "a/b", True),
    ("a/+/#", "a", False),
    ("+/#", "a", True),
    ("#", "$SYS/x", False),
    ("#", "$SYS", False),
    ("+/x", "$SYS/x", False),
    ("+/#", "$x/y", False),
    ("$SYS/#", "$SYS/x", True),
    ("$SYS/#", "$SYS", True),
    ("$SYS/+", "$SYS/x", True),
    ("$SYS/+", "$SYS", False),
    ("$x", "$x", True),
    ("a/$x/#", "a/$x", True),
    ("+/$x", "a/$x", True),
    ("ünï/+", "ünï/çø∂e", True),
    ("ünï/+", "uni/çø∂e", False),
    ("a b/+", "a b/c d", True),
]


def test_the_reference_agrees_with_the_table() -> None:
    for topic_filter, topic, expected in EDGE_CASES:
        assert reference_match(topic_filter, topic) is expected, (topic_filter, topic)


@pytest.mark.parametrize("twin", TWINS)
@pytest.mark.parametrize(("topic_filter", "topic", "expected"), EDGE_CASES)
def test_edge_cases(twin: ModuleType, topic_filter: str, topic: str, expected: bool) -> None:
    router = twin.TopicRouter()
    router.subscribe(topic_filter, "v")
    assert router.match(topic) == (["v"] if expected else [])


@pytest.mark.parametrize("twin", TWINS)
def test_all_edge_cases_in_one_router_in_subscription_order(twin: ModuleType) -> None:
    router = twin.TopicRouter()
    for i, (topic_filter, _, _) in enumerate(EDGE_CASES):
        router.subscribe(topic_filter, i)
    for _, topic, _ in EDGE_CASES:
        expected = [i for i, (f, _, _) in enumerate(EDGE_CASES) if reference_match(f, topic)]
        assert router.match(topic) == expected, topic


@pytest.mark.parametrize("twin", TWINS)
def test_values_duplicates_and_order(twin: ModuleType) -> None:
    router = twin.TopicRouter()
    router.subscribe("a/+", "x")
    router.subscribe("a/b", "y")
    router.subscribe("#", "z")
    router.subscribe("a/b", "y")  # the same (filter, value) again: stored once
    router.subscribe("a/b", "x")  # "x" under a second filter: still reported once
    router.subscribe("a/#", "w")
    assert len(router) == 5
    assert router.filters() == ["a/+", "a/b", "#", "a/#"]
    assert router.match("a/b") == ["x", "y", "z", "w"]
    assert router.match("a/c") == ["x", "z", "w"]
    assert router.match("a") == ["z", "w"]
    assert router.match("b") == ["z"]
    assert router.unsubscribe("a/+", "x") is True
    assert router.match("a/b") == ["y", "z", "x", "w"]  # "x" now only by its later subscription
    assert router.unsubscribe("a/+", "x") is False
    assert router.unsubscribe("a/+/c", "x") is False
    assert router.unsubscribe("q", "x") is False
    assert len(router) == 4


@pytest.mark.parametrize("twin", TWINS)
def test_many_values_on_one_filter_and_fresh_result_lists(twin: ModuleType) -> None:
    router = twin.TopicRouter()
    for i in range(100):
        router.subscribe("s/+/t", i)
        router.subscribe("s/1/t", 1000 + i)
    result = router.match("s/1/t")
    assert result == [v for i in range(100) for v in (i, 1000 + i)]
    result.clear()
    assert len(router.match("s/1/t")) == 200
    assert router.match("s/2/t") == list(range(100))


@pytest.mark.parametrize("twin", TWINS)
def test_deep_topics_beyond_the_small_stack(twin: ModuleType) -> None:
    router = twin.TopicRouter()
    deep = "/".join(["x"] * 200)
    router.subscribe("/".join(["+"] * 200), 1)
    router.subscribe("/".join(["x"] * 50) + "/#", 2)
    router.subscribe("+/" * 150 + "#", 3)
    router.subscribe(deep, 4)
    assert router.match(deep) == [1, 2, 3, 4]
    assert router.match(deep + "/y") == [2, 3]
    many = twin.TopicRouter()  # one topic reaching 60 nodes with values, then 120
    for k in range(60, 0, -1):
        many.subscribe("/".join(["x"] * k) + "/#", k)
    assert many.match("/".join(["x"] * 70)) == list(range(60, 0, -1))
    for k in range(1, 61):
        many.subscribe("/".join(["+"] * k) + "/#", -k)
    assert many.match("/".join(["x"] * 70)) == list(range(60, 0, -1)) + [-k for k in range(1, 61)]


@pytest.mark.parametrize("twin", TWINS)
def test_unsubscribe_prunes_the_trie(twin: ModuleType) -> None:
    """Nodes left empty go: unique wildcard filters, subscribed and unsubscribed
    round after round, must not leave memory behind."""
    router = twin.TopicRouter()

    def one_round(r: int) -> None:
        for i in range(500):
            router.subscribe(f"w/{r}-{i}/+/x/#", i)
        for i in range(500):
            assert router.unsubscribe(f"w/{r}-{i}/+/x/#", i)
        assert len(router) == 0 and router.filters() == []

    tracemalloc.start()
    try:
        for r in range(3):
            one_round(r)
        before = tracemalloc.get_traced_memory()[0]
        for r in range(3, 13):
            one_round(r)
        grown = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert grown < 100_000, f"{grown} bytes left behind by 5,000 unsubscribed filters"
    assert router.match("w/3-3/a/x") == []
    router.subscribe("w/3-3/+/x/#", "again")
    assert router.match("w/3-3/a/x/y") == ["again"]


def test_unsubscribe_prunes_the_trie_pure_internals() -> None:
    from fastpath import _router_py

    router = _router_py.TopicRouter()
    router.subscribe("a/+/b/#", 1)
    router.subscribe("a/+/c", 2)
    router.unsubscribe("a/+/b/#", 1)
    assert router._root.children["a"].plus.children.keys() == {"c"}  # type: ignore[union-attr,index]
    router.unsubscribe("a/+/c", 2)
    assert router._root.is_empty()


@pytest.mark.parametrize("twin", TWINS)
def test_clear_and_empty(twin: ModuleType) -> None:
    router = twin.TopicRouter()
    assert router.match("a") == [] and len(router) == 0
    router.subscribe("#", 1)
    router.subscribe("a", 2)
    router.clear()
    assert router.match("a") == [] and len(router) == 0 and router.filters() == []
    router.subscribe("a", 2)
    assert router.match("a") == [2]


BAD_FILTERS = [
    ("", "is empty"),
    ("a/#/b", "'#' must be the last level"),
    ("#/a", "'#' must be the last level"),
    ("a#", "'#' must be a whole level"),
    ("#a", "'#' must be a whole level"),
    ("a/b#", "'#' must be a whole level"),
    ("+x", "'+' must be a whole level"),
    ("a+/b", "'+' must be a whole level"),
    ("a/+b", "'+' must be a whole level"),
    ("++", "'+' must be a whole level"),
    ("a\x00b", "NUL"),
    ("x" * 65536, "longer than 65535 bytes"),
    ("é" * 32768, "longer than 65535 bytes"),
    ("a/\ud800", "lone surrogate"),
]
GOOD_FILTERS = ["#", "+", "+/+", "/", "//", "a//b", "$SYS/#", "+/#", "x" * 65535, "é" * 32767, "a b/ü"]
BAD_TOPICS = [("", "is empty"), ("a/+", "wildcards"), ("a/#", "wildcards"), ("+", "wildcards"),
              ("a\x00", "NUL"), ("x" * 65536, "longer than 65535 bytes")]
GOOD_TOPICS = ["a", "/", "a//b", "$SYS/x", "x" * 65535]


@pytest.mark.parametrize("twin", TWINS)
def test_validation(twin: ModuleType) -> None:
    router = twin.TopicRouter()
    for bad, reason in BAD_FILTERS:
        for call in (twin.validate_filter, lambda f: router.subscribe(f, 1), lambda f: router.unsubscribe(f, 1)):
            with pytest.raises(ValueError, match=re.escape(reason)):
                call(bad)
    for good in GOOD_FILTERS:
        twin.validate_filter(good)
        router.subscribe(good, good)
    assert len(router) == len(GOOD_FILTERS)
    for bad, reason in BAD_TOPICS:
        with pytest.raises(ValueError, match=re.escape(reason)):
            twin.validate_topic(bad)
    for good in GOOD_TOPICS:
        twin.validate_topic(good)
    with pytest.raises(TypeError):
        twin.validate_filter(None)
    with pytest.raises(TypeError):
        twin.validate_topic(b"a")
    with pytest.raises(TypeError):
        router.subscribe(b"a", 1)
    with pytest.raises(TypeError):
        router.match(b"a")
    fresh = twin.TopicRouter()
    for topic_filter in ("a", "a/+", "a/#"):
        with pytest.raises(TypeError):
            fresh.subscribe(topic_filter, [])  # values must be hashable; nothing is left behind
    assert fresh.match("a") == [] and fresh.match("a/b") == [] and len(fresh) == 0 and fresh.filters() == []


def test_both_twins_say_the_same() -> None:
    loaded = twins("router")
    for bad, _ in BAD_FILTERS + BAD_TOPICS:
        messages = set()
        for twin in loaded:
            for check in (twin.validate_filter, twin.validate_topic):
                try:
                    check(bad)
                except ValueError as exc:
                    messages.add((check.__name__, str(exc)))
        assert len(messages) <= 2, messages
    assert "a/#/b" in str(pytest.raises(ValueError, loaded[0].validate_filter, "a/#/b").value)


def test_the_selector_exports_the_router() -> None:
    assert fastpath.TopicRouter.__module__ == f"fastpath._router_{'c' if fastpath.IMPLEMENTATION == 'cython' else 'py'}"


LEVELS = st.sampled_from(["", "a", "b", "$x", "é", "a b"])
TOPICS = st.lists(LEVELS, min_size=1, max_size=4).map("/".join).filter(bool)
FILTERS = st.one_of(
    st.just("#"),
    st.tuples(st.lists(st.one_of(LEVELS, st.just("+")), min_size=1, max_size=4), st.booleans()).map(
        lambda t: "/".join(t[0] + (["#"] if t[1] else []))),
).filter(bool)
OPS = st.lists(st.tuples(st.booleans(), FILTERS, st.integers(0, 5)), min_size=1, max_size=25)


@pytest.mark.parametrize("twin", TWINS)
@settings(max_examples=300, deadline=None)
@given(ops=OPS, topics=st.lists(TOPICS, min_size=1, max_size=8))
def test_against_the_regex_reference(twin: ModuleType, ops: list[tuple[bool, str, int]], topics: list[str]) -> None:
    """Random subscribes and unsubscribes over a small alphabet of levels, then
    every topic matched by the trie and by the model: a list of live (filter,
    value) pairs in subscription order, matched by regex, values kept once."""
    router = twin.TopicRouter()
    model: list[tuple[str, int]] = []
    for subscribe, topic_filter, value in ops:
        pair = (topic_filter, value)
        if subscribe:
            router.subscribe(topic_filter, value)
            if pair not in model:
                model.append(pair)
        else:
            assert router.unsubscribe(topic_filter, value) is (pair in model)
            if pair in model:
                model.remove(pair)
    assert len(router) == len(model)
    assert sorted(router.filters()) == sorted({f for f, _ in model})
    for topic in topics:
        expected = list(dict.fromkeys(v for f, v in model if reference_match(f, topic)))
        assert router.match(topic) == expected, (topic, model)


def test_churn_agrees_with_the_pure_twin() -> None:
    """Thousands of subscribes and unsubscribes (so the compiled twin's tables
    grow, rebuild and reuse freed nodes and slots), compared after every step
    of a random walk; with only the pure twin loaded, it checks itself."""
    import random

    loaded = twins("router")
    rng = random.Random(5)
    alphabet = ["", "a", "b", "$s", "ü", "x" * 9, "+", "17"]

    def random_filter() -> str:
        levels = [rng.choice(alphabet) for _ in range(rng.randint(1, 5))]
        if rng.random() < 0.2:
            levels.append("#")
        return "/".join(levels) or "#"

    def random_topic() -> str:
        return "/".join(rng.choice(alphabet[:-2] + ["q"]) for _ in range(rng.randint(1, 6))) or "q"

    routers = [twin.TopicRouter() for twin in loaded]
    live: list[tuple[str, int]] = []
    for step in range(4000):
        if live and rng.random() < 0.45:
            topic_filter, value = live.pop(rng.randrange(len(live)))
            assert [r.unsubscribe(topic_filter, value) for r in routers] == [True] * len(routers)
        else:
            topic_filter, value = random_filter(), rng.randrange(50)
            for r in routers:
                r.subscribe(topic_filter, value)
            if (topic_filter, value) not in live:
                live.append((topic_filter, value))
        if step % 7 == 0:
            topic = random_topic()
            expected = list(dict.fromkeys(v for f, v in live if reference_match(f, topic)))
            assert routers[0].match(topic) == expected, topic
            assert all(r.match(topic) == routers[0].match(topic) for r in routers), topic
    for r in routers:
        assert len(r) == len(live)
        for topic_filter, value in live:
            assert r.unsubscribe(topic_filter, value)
        assert len(r) == 0 and r.match("a") == [] and r.filters() == []


@pytest.mark.parametrize("twin", TWINS)
def test_no_reference_leaks(twin: ModuleType) -> None:
    import sys

    class Value:  # hashable by identity, with a refcount of its own
        pass

    one, two, three = Value(), Value(), Value()
    baseline = [sys.getrefcount(v) for v in (one, two, three)]
    router = twin.TopicRouter()
    router.subscribe("a/b", one)          # an exact filter with one value
    router.subscribe("a/+", two)          # a wildcard filter
    router.subscribe("a/+", three)        # ... with two values
    router.subscribe("#", one)            # one value under two filters
    held = [sys.getrefcount(v) for v in (one, two, three)]
    for topic in ("a/b", "a/c", "a", "x", "$x") * 200:
        router.match(topic)
    assert [sys.getrefcount(v) for v in (one, two, three)] == held
    assert router.match("a/b") == [one, two, three]
    for topic_filter, index in (("a/b", 0), ("a/+", 1), ("a/+", 2), ("#", 0)):
        assert router.unsubscribe(topic_filter, (one, two, three)[index])
    assert [sys.getrefcount(v) for v in (one, two, three)] == baseline
