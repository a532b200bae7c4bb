"""The routing table: topic, source, condition and priority decide; counters count."""
from __future__ import annotations

from typing import Any

import orjson
import pytest

from engine.routing import RouteCounters, RouteError, RoutingTable

ROUTES: list[dict[str, Any]] = [
    {"id": "archive", "filter": "#", "destination": "cloud"},
    {"id": "hot", "filter": "site/+/temp", "condition": "value > 30", "destination": "task:alarm", "priority": 5},
    {"id": "thermo", "source": "device:t-*", "filter": "site/+/temp", "destination": "shadow:thermostat"},
    {"id": "api", "source": "http", "filter": "site/#", "destination": "task:api", "priority": 1},
    {"id": "ok", "filter": "site/+/status", "condition": "state == 'ok'", "destination": "cloud"},
    {"id": "const", "filter": "site/+/status", "condition": "true", "destination": "task:log", "priority": -1},
    {"id": "sys", "filter": "$SYS/#", "destination": "task:monitor"},
]


def ids(routes: list[Any]) -> list[str]:
    return [r.id for r in routes]


@pytest.fixture
def table() -> RoutingTable:
    return RoutingTable.from_dicts(ROUTES)


def test_topic_source_condition_priority(table: RoutingTable) -> None:
    hot = orjson.dumps({"value": 31})
    cold = orjson.dumps({"value": 20})
    assert ids(table.match("device:t-17", "site/1/temp", hot)) == ["hot", "archive", "thermo"]
    assert ids(table.match("device:x-1", "site/1/temp", cold)) == ["archive"]
    assert ids(table.match("http", "site/1/temp", hot)) == ["hot", "api", "archive"]
    assert ids(table.match("http", "site/1/temp/extra", hot)) == ["api", "archive"]
    assert ids(table.match("task:x", "$SYS/load", b"1")) == ["sys"]
    assert ids(table.match("cloud", "other", b"")) == ["archive"]


def test_counters(table: RoutingTable) -> None:
    c = table.counters
    table.match("device:t-1", "site/1/status", b'{"state": "ok"}')
    assert c.as_dict() == {"matched": 1, "no_route": 0, "condition_false": 0, "payload_not_json": 0}
    table.match("device:t-1", "site/1/status", b'{"state": "fault"}')
    assert c.condition_false == 1
    table.match("device:t-1", "site/1/temp", b'{"value": 1}')  # hot: false
    assert c.condition_false == 2
    table.match("device:t-1", "$SYS", b"x")  # '$SYS/#' matches '$SYS' too
    assert c.matched == 4 and c.no_route == 0


def test_non_json_payload_under_a_field_condition(table: RoutingTable) -> None:
    taken = table.match("device:t-1", "site/1/status", b"not json")
    assert ids(taken) == ["archive", "const"]  # 'ok' needs fields: skipped; 'true' needs none
    assert table.counters.payload_not_json == 1
    assert table.counters.condition_false == 0
    taken = table.match("device:t-1", "site/1/temp", b"\xff\xfe")
    assert ids(taken) == ["archive", "thermo"]
    assert table.counters.payload_not_json == 2


def test_no_route_and_shared_counters() -> None:
    counters = RouteCounters()
    first = RoutingTable.from_dicts([{"id": "a", "filter": "a/+", "destination": "cloud",
                                      "condition": "x == 1"}], counters)
    assert first.match("http", "b", b"{}") == []
    assert first.match("http", "a/b", b'{"x": 2}') == []
    assert counters.no_route == 2 and counters.condition_false == 1
    second = RoutingTable.from_dicts([{"id": "b", "filter": "b", "destination": "cloud"}], counters)
    assert ids(second.match("http", "b", b"")) == ["b"]
    assert counters.as_dict() == {"matched": 1, "no_route": 2, "condition_false": 1, "payload_not_json": 0}
    assert "matched" in repr(counters)


def test_payload_parsed_at_most_once_and_only_when_needed(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[bytes] = []
    real = orjson.loads

    def counting(data: bytes) -> Any:
        calls.append(data)
        return real(data)

    monkeypatch.setattr(orjson, "loads", counting)  # the table reads orjson.loads per call
    table = RoutingTable.from_dicts([
        {"id": f"r{i}", "filter": "s/+", "condition": f"v >= {i}", "destination": "cloud"} for i in range(5)
    ] + [{"id": "plain", "filter": "p", "destination": "cloud"},
         {"id": "const", "filter": "c", "condition": "1 < 2", "destination": "cloud"},
         {"id": "picky", "source": "http", "filter": "q", "condition": "v == 1", "destination": "cloud"}])
    assert ids(table.match("http", "s/1", b'{"v": 2}')) == ["r0", "r1", "r2"]
    assert len(calls) == 1
    table.match("http", "p", b"{}")
    table.match("http", "c", b"{}")
    table.match("device:d", "q", b"{}")  # the only candidate is refused by source first
    assert len(calls) == 1


def test_equal_priorities_keep_table_order_and_priorities_sort() -> None:
    table = RoutingTable.from_dicts([
        {"id": "z", "filter": "a/#", "destination": "cloud"},
        {"id": "y", "filter": "a/+", "destination": "cloud"},
        {"id": "x", "filter": "a/b", "destination": "cloud"},
    ])
    assert ids(table.match("http", "a/b", b"")) == ["z", "y", "x"]
    table = RoutingTable.from_dicts([
        {"id": "low", "filter": "a/#", "destination": "cloud", "priority": -1},
        {"id": "mid1", "filter": "a/+", "destination": "cloud"},
        {"id": "high", "filter": "a/b", "destination": "cloud", "priority": 3},
        {"id": "mid2", "filter": "+/b", "destination": "cloud"},
    ])
    assert ids(table.match("http", "a/b", b"")) == ["high", "mid1", "mid2", "low"]


def test_immutable_and_introspection(table: RoutingTable) -> None:
    assert len(table) == len(ROUTES)
    assert ids(list(table)) == [r["id"] for r in ROUTES]
    assert table.routes[1].id == "hot"
    assert table.get("hot") is table.routes[1] and table.get("nope") is None
    assert "7 routes" in repr(table)
    with pytest.raises(AttributeError):
        table.extra = 1  # type: ignore[attr-defined]


def test_building_errors() -> None:
    with pytest.raises(RouteError, match="route 'a': id is used by more than one route") as info:
        RoutingTable.from_dicts([{"id": "a", "filter": "x", "destination": "cloud"},
                                 {"id": "a", "filter": "y", "destination": "cloud"}])
    assert info.value.field == "id"
    with pytest.raises(RouteError, match="route 'b': filter 'a/#/b': '#' must be the last level"):
        RoutingTable.from_dicts([{"id": "b", "filter": "a/#/b", "destination": "cloud"}])
    with pytest.raises(TypeError):
        RoutingTable([{"id": "a"}])  # type: ignore[list-item]
    assert RoutingTable([]).match("http", "a", b"") == []
