"""Routes from deployment dicts: validation messages, selectors, destination templates."""
from __future__ import annotations

from typing import Any

import pytest

from engine.routing import Destination, Route, RouteError, SourceSelector


def route(**fields: Any) -> Route:
    return Route.from_dict({"id": "r1", "filter": "site/+/temp", "destination": "cloud", **fields})


def test_round_trip_and_defaults() -> None:
    r = route()
    assert r.to_dict() == {"id": "r1", "source": "*", "filter": "site/+/temp", "condition": None,
                           "destination": "cloud", "priority": 0, "durable": False}
    full = route(source="device:t-*", condition="value > 3", destination="device:out/{1}/{source}",
                 priority=-2, durable=True)
    assert Route.from_dict(full.to_dict()) == full
    assert full != r and hash(Route.from_dict(full.to_dict())) == hash(full)
    assert full.condition is not None and full.condition.source == "value > 3"
    assert eval(repr(full), {"Route": Route}) == full  # noqa: S307 - the repr is the constructor call
    with pytest.raises(AttributeError):
        full.priority = 3


BAD = [
    # (fields, field, message)
    ({"filter": "a/#/b"}, "filter", "route 'r1': filter 'a/#/b': '#' must be the last level"),
    ({"filter": "+x"}, "filter", "route 'r1': filter '+x': '+' must be a whole level, not '+x'"),
    ({"filter": "a+/b"}, "filter", "'+' must be a whole level"),
    ({"filter": ""}, "filter", "route 'r1': filter is empty"),
    ({"filter": 5}, "filter", "route 'r1': filter must be a string, not int"),
    ({"source": "dev:x"}, "source", "route 'r1': source 'dev:x': expected device:<id or glob>"),
    ({"source": "device:"}, "source", "route 'r1': source 'device:': a device selector's id must be non-empty"),
    ({"source": "device:a b"}, "source", "without spaces"),
    ({"source": "http:x"}, "source", "source 'http:x'"),
    ({"source": "task"}, "source", "source 'task'"),
    ({"destination": "mqtt"}, "destination", "route 'r1': destination 'mqtt': expected task:<name>"),
    ({"destination": "task:"}, "destination", "a task name must be non-empty"),
    ({"destination": "cloud:x"}, "destination", "destination 'cloud:x'"),
    ({"destination": "shadow:"}, "destination", "a shadow name must be non-empty"),
    ({"destination": "device:"}, "destination", "non-empty"),
    ({"destination": "device:out/{name}"}, "destination", "unknown placeholder '{name}'"),
    ({"destination": "device:out/{0}"}, "destination", "unknown placeholder '{0}'"),
    ({"destination": "device:out/{1"}, "destination", "balanced"),
    ({"destination": "device:out/#"}, "destination", "cannot contain '+', '#'"),
    ({"destination": "device:out/{4}"}, "destination", "placeholder {4} is past the 3 level(s) filter 'site/+/temp' guarantees"),
    ({"filter": "a/b/#", "destination": "device:{3}"}, "destination", "past the 2 level(s)"),
    ({"condition": "temperature >"}, "condition",
     "route 'r1': condition 'temperature >': expected an operand at position 13, found end of input"),
    ({"condition": 3}, "condition", "condition must be a string"),
    ({"priority": "high"}, "priority", "priority must be an integer, not 'high'"),
    ({"priority": True}, "priority", "priority must be an integer"),
    ({"priority": 1.0}, "priority", "priority must be an integer"),
    ({"durable": "yes"}, "durable", "durable must be true or false"),
    ({"prio": 1}, "prio", "route 'r1': unknown field 'prio'"),
]


@pytest.mark.parametrize(("fields", "field", "message"), BAD)
def test_errors_name_the_route_and_the_field(fields: dict[str, Any], field: str, message: str) -> None:
    with pytest.raises(RouteError) as info:
        route(**fields)
    assert message in str(info.value)
    assert info.value.field == field
    assert info.value.route_id == "r1"
    assert isinstance(info.value, ValueError)


def test_condition_errors_carry_the_position() -> None:
    with pytest.raises(RouteError) as info:
        route(condition="a == 1 and (b > ")
    assert info.value.position == 16
    assert route(filter="a").condition is None
    with pytest.raises(RouteError) as info:
        route(filter="a/#/b")
    assert info.value.position is None


@pytest.mark.parametrize(("d", "message"), [
    ([], "a route must be an object, not list"),
    ({"filter": "a", "destination": "cloud"}, "a route needs an 'id'"),
    ({"id": "", "filter": "a", "destination": "cloud"}, "a route needs an 'id'"),
    ({"id": 7, "filter": "a", "destination": "cloud"}, "a route needs an 'id'"),
    ({"id": "r1", "destination": "cloud"}, "route 'r1': missing field 'filter'"),
    ({"id": "r1", "filter": "a"}, "route 'r1': missing field 'destination'"),
])
def test_malformed_definitions(d: Any, message: str) -> None:
    with pytest.raises(RouteError, match=message):
        Route.from_dict(d)


@pytest.mark.parametrize(("selector", "accepted", "refused"), [
    ("*", ["device:a", "http", "task:x", "cloud", "shadow"], []),
    ("http", ["http"], ["cloud", "device:http", "https"]),
    ("cloud", ["cloud"], ["http"]),
    ("shadow", ["shadow"], ["shadow:x"]),
    ("device:t-17", ["device:t-17"], ["device:t-170", "device:t-1", "task:t-17"]),
    ("device:t-*", ["device:t-17", "device:t-", "device:t-a:b"], ["device:x-17", "task:t-17", "device:T-17"]),
    ("device:t-?", ["device:t-1"], ["device:t-17"]),
    ("device:[ab]*", ["device:a1", "device:b"], ["device:c1"]),
    ("device:*", ["device:anything"], ["task:anything", "http"]),
    ("task:telemetry", ["task:telemetry"], ["task:telemetry2", "device:telemetry"]),
    ("task:tele*", ["task:telemetry"], ["device:telemetry"]),
])
def test_source_selectors(selector: str, accepted: list[str], refused: list[str]) -> None:
    s = SourceSelector(selector)
    assert all(s.accepts(source) for source in accepted)
    assert not any(s.accepts(source) for source in refused)


def test_destinations_and_templates() -> None:
    assert Destination("task:alarm").kind == "task" and Destination("task:alarm").target == "alarm"
    assert Destination("shadow:thermostat").target == "thermostat"
    assert Destination("cloud").kind == "cloud"
    d = Destination("device:cmd/{2}/{1}/ack")
    assert d.kind == "device" and d.levels_used == 2
    assert d.render("site/7/temp", "device:t-17") == "cmd/7/site/ack"
    assert Destination("device:mirror/{topic}").render("a//b", "http") == "mirror/a//b"
    assert Destination("device:from/{source}").render("a", "device:t-17") == "from/device:t-17"
    assert Destination("device:fixed/topic").render("a", "http") == "fixed/topic"
    r = route(filter="site/+/temp/#", destination="device:cmd/{3}")
    assert r.destination.render("site/9/temp", "http") == "cmd/temp"
