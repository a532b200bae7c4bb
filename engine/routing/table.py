"""The routing table: which routes an event takes, decided without I/O.

A table is built once from a deployment's routes and never changes; a new
deployment builds a new table and its owner swaps the reference, so a match
in progress never sees half of an update.  Building does all the work that
can be done early: filters go into a ``fastpath.TopicRouter`` (each route's
position is its value, so matches come back in table order), selectors and
conditions are compiled, and per-route facts are laid out in one tuple each.

Per event, ``match`` costs one trie lookup plus a short loop over the routes
whose filter matched.  The payload is parsed as JSON at most once, and only
when a candidate route has a condition that reads fields; a payload that is
not JSON makes such routes not match, and is counted.  Counters live in a
small mutable object that the owner can hand from the old table to the new
one, so a redeployment does not reset them.
"""
from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import orjson

from engine.routing.route import Route, RouteError

from fastpath import TopicRouter

__all__ = ["RouteCounters", "RoutingTable"]

_UNPARSED: Any = object()
_NOT_JSON: Any = object()


class RouteCounters:
    """What the tables have decided, for metrics.

    ``matched`` / ``no_route``: events that took at least one route / none.
    ``condition_false``: routes whose topic and source matched but whose
    condition was false.  ``payload_not_json``: events whose payload had to be
    read by a condition and was not JSON (those routes did not match)."""

    __slots__ = ("matched", "no_route", "condition_false", "payload_not_json")

    def __init__(self) -> None:
        self.matched = 0
        self.no_route = 0
        self.condition_false = 0
        self.payload_not_json = 0

    def as_dict(self) -> dict[str, int]:
        return {name: getattr(self, name) for name in self.__slots__}

    def __repr__(self) -> str:
        return f"RouteCounters({self.as_dict()})"


class RoutingTable:
    """An immutable set of routes, matched by source, topic and payload."""

    __slots__ = ("_routes", "_by_id", "_entries", "_match", "_ordered", "counters")

    def __init__(self, routes: Iterable[Route], counters: RouteCounters | None = None) -> None:
        self._routes = tuple(routes)
        self._by_id: dict[str, Route] = {}
        router = TopicRouter()
        entries = []
        for i, route in enumerate(self._routes):
            if not isinstance(route, Route):
                raise TypeError(f"routes[{i}] is a {type(route).__name__}, not a Route")
            if route.id in self._by_id:
                raise RouteError("id is used by more than one route", route.id, "id")
            self._by_id[route.id] = route
            router.subscribe(route.filter, i)
            condition = route.condition
            entries.append((route, route.source.exact, route.source.pattern,
                            None if condition is None else condition.evaluate,
                            condition is not None and condition.needs_fields))
        self._entries = tuple(entries)
        self._match = router.match
        # Routes come back from the trie in table order; sort only if priorities differ.
        self._ordered = len({route.priority for route in self._routes}) <= 1
        self.counters = counters if counters is not None else RouteCounters()

    @classmethod
    def from_dicts(cls, routes: Iterable[Mapping[str, Any]], counters: RouteCounters | None = None) -> RoutingTable:
        """A table from a deployment's route list; RouteError on the first bad route."""
        return cls((Route.from_dict(d) for d in routes), counters)

    def match(self, source: str, topic: str, payload: bytes) -> list[Route]:
        """The routes an event takes, highest priority first, then in table order.

        ``topic`` must already be a valid topic name (the edge that accepted
        the event checked it); ``payload`` is raw bytes, parsed here only if a
        candidate route's condition reads fields."""
        counters = self.counters
        taken: list[Route] = []
        doc = _UNPARSED
        entries = self._entries
        for i in self._match(topic):
            route, exact, pattern, evaluate, needs_fields = entries[i]
            if exact is not None:
                if source != exact:
                    continue
            elif pattern is not None and pattern(source) is None:
                continue
            if evaluate is not None:
                if needs_fields:
                    if doc is _UNPARSED:
                        try:
                            doc = orjson.loads(payload)
                        except orjson.JSONDecodeError:
                            doc = _NOT_JSON
                            counters.payload_not_json += 1
                    if doc is _NOT_JSON:
                        continue
                    ok = evaluate(doc)
                else:
                    ok = evaluate(None)
                if not ok:
                    counters.condition_false += 1
                    continue
            taken.append(route)
        if not taken:
            counters.no_route += 1
            return taken
        counters.matched += 1
        if not self._ordered and len(taken) > 1:
            taken.sort(key=_by_priority)
        return taken

    def listens(self, topic: str) -> bool:
        """Whether some route's topic filter matches ``topic`` (whatever its source and condition)."""
        return bool(self._match(topic))

    @property
    def routes(self) -> tuple[Route, ...]:
        """Every route, in table order."""
        return self._routes

    def get(self, route_id: str) -> Route | None:
        return self._by_id.get(route_id)

    def __len__(self) -> int:
        return len(self._routes)

    def __iter__(self) -> Iterator[Route]:
        return iter(self._routes)

    def __repr__(self) -> str:
        return f"<RoutingTable {len(self._routes)} routes>"


def _by_priority(route: Route) -> int:
    return -route.priority
