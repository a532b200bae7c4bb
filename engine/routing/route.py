"""One route: source selector + topic filter + optional condition -> destination.

Routes arrive in deployments as plain dicts and are checked once, here, when a
table is built, so that the hot path never meets a malformed one and every
mistake is reported with the route and the field it is in, e.g.
``route 'r1': filter 'a/#/b': '#' must be the last level``.

Source selectors: ``device:<id>``, ``task:<name>`` (the part after the colon
may be an fnmatch-style glob: ``device:t-*``, ``task:sensor-?``), ``http``,
``cloud``, ``shadow``, or ``*`` for any source.  Destinations: ``task:<name>``,
``device:<topic template>``, ``cloud``, ``shadow:<name>``; a device template may
use ``{topic}``, ``{source}`` and ``{1}``..``{n}`` for the levels of the topic
that matched (only levels the filter guarantees before any ``#``).
"""
from __future__ import annotations

import fnmatch
import re
from collections.abc import Callable, Mapping
from typing import Any

from engine.errors import BadRequest
from engine.routing.condition import Condition, ConditionError, compile_condition
from fastpath import validate_filter

__all__ = ["Destination", "Route", "RouteError", "SourceSelector"]

_FIELDS = ("id", "source", "filter", "condition", "destination", "priority", "durable")
_BAD_NAME = re.compile(r"[\s\x00-\x1f\x7f]")
_PLACEHOLDER = re.compile(r"\{([^{}]*)\}")


class RouteError(BadRequest, ValueError):
    """An invalid route; ``route_id`` and ``field`` say where, ``position`` is the
    0-based offset in the condition text for a condition that does not parse.
    A BadRequest (400 over HTTP) and, for callers of the table alone, a ValueError."""

    def __init__(self, message: str, route_id: str | None = None, field: str | None = None,
                 position: int | None = None) -> None:
        super().__init__(message if route_id is None else f"route {route_id!r}: {message}")
        self.route_id = route_id
        self.field = field
        self.position = position


def _name(text: str, what: str) -> str:
    if not text or _BAD_NAME.search(text):
        raise ValueError(f"{what} must be non-empty, without spaces or control characters")
    return text


class SourceSelector:
    """Which event sources a route accepts; the glob is compiled once.

    The table reads ``exact`` (a source string to compare, or None) and
    ``pattern`` (a compiled ``match``, or None): both None means any source."""

    __slots__ = ("text", "exact", "pattern")

    def __init__(self, text: str) -> None:
        kind, colon, rest = text.partition(":")
        self.text = text
        self.exact: str | None = None
        self.pattern: Callable[[str], Any] | None = None
        if text == "*":
            return
        if kind in ("http", "cloud", "shadow") and not colon:
            self.exact = text
        elif kind in ("device", "task") and colon:
            _name(rest, f"a {kind} selector's {'id' if kind == 'device' else 'name'}")
            if any(ch in rest for ch in "*?["):
                self.pattern = re.compile(fnmatch.translate(text)).match
            else:
                self.exact = text
        else:
            raise ValueError("expected device:<id or glob>, task:<name or glob>, http, cloud, shadow or *")

    def accepts(self, source: str) -> bool:
        """Whether an event from ``source`` (``device:t-17``, ``http``, ...) is selected."""
        if self.exact is not None:
            return source == self.exact
        return self.pattern is None or self.pattern(source) is not None


class Destination:
    """Where a routed event goes; ``render`` fills a device topic template."""

    __slots__ = ("text", "kind", "target", "_parts", "levels_used")

    def __init__(self, text: str) -> None:
        kind, colon, rest = text.partition(":")
        self.text, self.kind, self.target = text, kind, rest
        self._parts: list[tuple[str, str | int | None]] = []
        self.levels_used = 0  # the highest {n} in a device template
        if kind == "cloud" and not colon:
            return
        if kind in ("task", "shadow") and colon:
            _name(rest, f"a {kind} name")
        elif kind == "device" and colon:
            self._compile(rest)
        else:
            raise ValueError("expected task:<name>, device:<topic template>, cloud or shadow:<name>")

    def _compile(self, template: str) -> None:
        last = 0
        for m in _PLACEHOLDER.finditer(template):
            name = m.group(1)
            if name.isascii() and name.isdigit() and int(name) >= 1:
                key: str | int = int(name)
                self.levels_used = max(self.levels_used, int(name))
            elif name in ("topic", "source"):
                key = name
            else:
                raise ValueError(f"unknown placeholder {m.group(0)!r} (use {{topic}}, {{source}}, {{1}}..{{n}})")
            self._parts.append((template[last:m.start()], key))
            last = m.end()
        self._parts.append((template[last:], None))
        literal = "".join(text for text, _ in self._parts)
        if not template or "{" in literal or "}" in literal:
            raise ValueError("a device topic template must be non-empty with balanced {placeholders}")
        if any(ch in literal for ch in "+#\x00"):
            raise ValueError("a device topic template cannot contain '+', '#' or NUL")

    def render(self, topic: str, source: str) -> str:
        """The device topic for an event on ``topic`` from ``source`` (device destinations)."""
        levels = topic.split("/") if self.levels_used else ()
        out = []
        for text, key in self._parts:
            out.append(text)
            if key is not None:
                out.append(topic if key == "topic" else source if key == "source" else levels[key - 1])  # type: ignore[operator]
        return "".join(out)


class Route:
    """An immutable, validated route.  Build it from a deployment with ``from_dict``."""

    __slots__ = _FIELDS
    id: str
    source: SourceSelector
    filter: str
    condition: Condition | None
    destination: Destination
    priority: int
    durable: bool

    def __init__(self, id: str, filter: str, destination: str, source: str = "*",
                 condition: str | None = None, priority: int = 0, durable: bool = False) -> None:
        if not isinstance(id, str) or not id:
            raise RouteError(f"id must be a non-empty string, not {id!r}", field="id")
        set_ = object.__setattr__
        set_(self, "id", id)
        set_(self, "filter", self._check(id, "filter", filter, _filter))
        set_(self, "source", self._check(id, "source", source, SourceSelector))
        set_(self, "destination", self._check(id, "destination", destination, Destination))
        set_(self, "condition", None if condition is None else self._condition(id, condition))
        if type(priority) is not int:
            raise RouteError(f"priority must be an integer, not {priority!r}", id, "priority")
        if type(durable) is not bool:
            raise RouteError(f"durable must be true or false, not {durable!r}", id, "durable")
        set_(self, "priority", priority)
        set_(self, "durable", durable)
        levels = filter.split("/")
        guaranteed = len(levels) - (levels[-1] == "#")
        if self.destination.levels_used > guaranteed:
            raise RouteError(f"destination {destination!r}: placeholder {{{self.destination.levels_used}}} "
                             f"is past the {guaranteed} level(s) filter {filter!r} guarantees", id, "destination")

    @staticmethod
    def _check(route_id: str, field: str, value: object, parse: Callable[[str], Any]) -> Any:
        if not isinstance(value, str):
            raise RouteError(f"{field} must be a string, not {type(value).__name__}", route_id, field)
        try:
            return parse(value)
        except ValueError as exc:
            message = str(exc) if field == "filter" else f"{field} {value!r}: {exc}"
            raise RouteError(message, route_id, field) from None

    @staticmethod
    def _condition(route_id: str, text: object) -> Condition:
        if not isinstance(text, str):
            raise RouteError(f"condition must be a string, not {type(text).__name__}", route_id, "condition")
        try:
            return compile_condition(text)
        except ConditionError as exc:
            raise RouteError(f"condition {text!r}: {exc}", route_id, "condition", exc.position) from None

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError("a Route is immutable; build a new one")

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Route:
        """A route from its deployment form; RouteError names the route and the field."""
        if not isinstance(d, Mapping):
            raise RouteError(f"a route must be an object, not {type(d).__name__}")
        route_id = d.get("id")
        if not isinstance(route_id, str) or not route_id:
            raise RouteError(f"a route needs an 'id' that is a non-empty string, not {route_id!r}", field="id")
        unknown = [key for key in d if key not in _FIELDS]
        if unknown:
            raise RouteError(f"unknown field {unknown[0]!r} (expected {', '.join(_FIELDS)})", route_id, str(unknown[0]))
        for required in ("filter", "destination"):
            if required not in d:
                raise RouteError(f"missing field {required!r}", route_id, required)
        return cls(**d)

    def to_dict(self) -> dict[str, Any]:
        """The deployment form; ``Route.from_dict(r.to_dict()) == r``."""
        return {"id": self.id, "source": self.source.text, "filter": self.filter,
                "condition": None if self.condition is None else self.condition.source,
                "destination": self.destination.text, "priority": self.priority, "durable": self.durable}

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Route) and other.to_dict() == self.to_dict()

    def __hash__(self) -> int:
        return hash((self.id, self.filter, self.destination.text))

    def __repr__(self) -> str:
        return f"Route.from_dict({self.to_dict()!r})"


def _filter(text: str) -> str:
    validate_filter(text)
    return text
