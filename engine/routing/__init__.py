"""Event routing: which destinations an event goes to, decided without I/O.

``condition`` is the payload expression language, ``route`` one validated
route, ``table`` the immutable set of routes the hub matches events against.
The topic trie itself is ``fastpath.TopicRouter`` (compiled, with a pure twin).
"""
from __future__ import annotations

from engine.routing.condition import Condition, ConditionError, compile_condition
from engine.routing.route import Destination, Route, RouteError, SourceSelector
from engine.routing.table import RouteCounters, RoutingTable

__all__ = [
    "Condition",
    "ConditionError",
    "Destination",
    "Route",
    "RouteCounters",
    "RouteError",
    "RoutingTable",
    "SourceSelector",
    "compile_condition",
]
