"""The router's MQTT topic table, pure Python (twin of ``_router_c.pyx``).

Most filters name one topic exactly, so filters without a wildcard live in
one dict keyed by the whole filter: one hash lookup, whatever their number,
and no per-level memory to miss in cache.  Wildcard filters are split on ``/``
into levels and stored along a path of trie nodes: a dict of literal children
per node, one separate ``+`` child, and at the node where a filter ends either
its *exact* values (the filter ended there) or its *hash* values (the filter
ended in ``/#`` there, or is ``#`` at the root).  ``match`` does the one
lookup, then walks the topic's levels with an explicit stack, following the
literal and the ``+`` child at each level and collecting hash values on the
way; its cost depends on the topic's depth and on the wildcard branches it
meets, never on how many filters are stored.

Every subscription takes a sequence number from one counter, and each node
keeps its values in a dict ``value -> sequence`` (insertion-ordered, so
ascending).  A match that touches one node returns that dict's keys; one that
touches several merges them by sequence and drops repeats, so the result is
always in subscription order and deterministic.  Values must be hashable.

Semantics follow MQTT 3.1.1 / 5.0: empty levels are levels; ``+`` matches one
level, empty included; ``a/#`` matches ``a`` and everything below it; a
filter that starts with a wildcard does not match a topic starting with
``$``.  ``match`` does not validate its topic (the edge that accepted the
publish did); ``subscribe`` and ``unsubscribe`` validate their filters.  The
compiled twin imports the validation below rather than repeating it: it runs
when filters change, never in ``match``, and both twins then say the same.
"""
from __future__ import annotations

from sys import intern
from typing import Any

__all__ = ["MAX_BYTES", "TopicRouter", "validate_filter", "validate_topic"]

#: MQTT strings carry a 16-bit length: a filter or topic is at most this many UTF-8 bytes.
MAX_BYTES = 65535


def _show(text: str) -> str:
    """``repr`` of a filter or topic, shortened so that an error stays readable."""
    return repr(text) if len(text) <= 60 else repr(text[:57] + "...")


def _check_string(text: str, what: str) -> None:
    if not isinstance(text, str):
        raise TypeError(f"{what} must be a str, not {type(text).__name__}")
    if not text:
        raise ValueError(f"{what} is empty")
    if "\x00" in text:
        raise ValueError(f"{what} {_show(text)}: contains a NUL character")
    if text.isascii():
        size = len(text)
    else:
        try:
            size = len(text.encode("utf-8"))
        except UnicodeEncodeError:
            raise ValueError(f"{what} {_show(text)}: contains a lone surrogate, not valid UTF-8") from None
    if size > MAX_BYTES:
        raise ValueError(f"{what} {_show(text)}: longer than {MAX_BYTES} bytes in UTF-8")


def validate_filter(topic_filter: str) -> None:
    """Raise ValueError (TypeError for a non-str) unless ``topic_filter`` is a valid
    MQTT topic filter; the message names the rule that is broken."""
    _check_string(topic_filter, "filter")
    if "+" not in topic_filter and "#" not in topic_filter:
        return
    levels = topic_filter.split("/")
    last = len(levels) - 1
    for i, level in enumerate(levels):
        if "#" in level:
            if level != "#":
                raise ValueError(f"filter {_show(topic_filter)}: '#' must be a whole level, not {_show(level)}")
            if i != last:
                raise ValueError(f"filter {_show(topic_filter)}: '#' must be the last level")
        elif "+" in level and level != "+":
            raise ValueError(f"filter {_show(topic_filter)}: '+' must be a whole level, not {_show(level)}")


def validate_topic(topic: str) -> None:
    """Raise ValueError (TypeError for a non-str) unless ``topic`` is a valid topic
    name to publish on: non-empty, no NUL, no wildcard, at most 65535 bytes."""
    _check_string(topic, "topic")
    if "+" in topic or "#" in topic:
        raise ValueError(f"topic {_show(topic)}: wildcards '+' and '#' are only allowed in filters")


class _Node:
    """One level of the wildcard trie; empty parts stay None to keep nodes small."""

    __slots__ = ("children", "plus", "exact", "hashes")

    def __init__(self) -> None:
        self.children: dict[str, _Node] | None = None
        self.plus: _Node | None = None
        self.exact: dict[Any, int] | None = None   # filters that end here
        self.hashes: dict[Any, int] | None = None  # filters that end in '/#' here

    def is_empty(self) -> bool:
        return not (self.children or self.plus or self.exact or self.hashes)


class TopicRouter:
    """MQTT topic filters -> values; ``match(topic)`` in subscription order."""

    __slots__ = ("_exact", "_root", "_seq", "_size", "_filters", "_owners", "_shared")

    def __init__(self) -> None:
        self._exact: dict[str, dict[Any, int]] = {}  # filter without wildcards -> values
        self._root = _Node()  # filters with a wildcard
        self._seq = 0
        self._size = 0
        self._filters: dict[str, int] = {}  # filter -> number of values, first-subscribed first
        self._owners: dict[Any, int] = {}  # value -> number of filters it is under
        self._shared = 0  # values under more than one filter: only they can repeat in a match

    def subscribe(self, topic_filter: str, value: object) -> None:
        """Route topics matching ``topic_filter`` to ``value``.  Many values may share
        a filter; subscribing the same (filter, value) again changes nothing."""
        validate_filter(topic_filter)
        hash(value)  # an unhashable value fails before anything is built for it
        if "+" not in topic_filter and "#" not in topic_filter:
            values = self._exact.get(topic_filter)
            if values is None:
                values = self._exact[topic_filter] = {}
        else:
            node = self._root
            levels = topic_filter.split("/")
            hashed = levels[-1] == "#"
            if hashed:
                levels.pop()
            for level in levels:
                if level == "+":
                    if node.plus is None:
                        node.plus = _Node()
                    node = node.plus
                else:
                    if node.children is None:
                        node.children = {}
                    child = node.children.get(level)
                    if child is None:
                        child = node.children[intern(level)] = _Node()
                    node = child
            if hashed:
                if node.hashes is None:
                    node.hashes = {}
                values = node.hashes
            else:
                if node.exact is None:
                    node.exact = {}
                values = node.exact
        if value in values:
            return
        self._seq += 1
        values[value] = self._seq
        self._size += 1
        self._filters[topic_filter] = self._filters.get(topic_filter, 0) + 1
        owners = self._owners.get(value, 0) + 1
        self._owners[value] = owners
        if owners == 2:
            self._shared += 1

    def unsubscribe(self, topic_filter: str, value: object) -> bool:
        """Remove one (filter, value) subscription and prune what is left empty.
        Return False when it was not there."""
        validate_filter(topic_filter)
        if "+" not in topic_filter and "#" not in topic_filter:
            values = self._exact.get(topic_filter)
            if values is None or value not in values:
                return False
            del values[value]
            if not values:
                del self._exact[topic_filter]
        elif not self._unsubscribe_wild(topic_filter, value):
            return False
        self._size -= 1
        left = self._filters[topic_filter] - 1
        if left:
            self._filters[topic_filter] = left
        else:
            del self._filters[topic_filter]
        owners = self._owners[value] - 1
        if owners:
            self._owners[value] = owners
            if owners == 1:
                self._shared -= 1
        else:
            del self._owners[value]
        return True

    def _unsubscribe_wild(self, topic_filter: str, value: object) -> bool:
        levels = topic_filter.split("/")
        hashed = levels[-1] == "#"
        if hashed:
            levels.pop()
        node: _Node | None = self._root
        path: list[tuple[_Node, str]] = []
        for level in levels:
            parent = node
            assert parent is not None
            if level == "+":
                node = parent.plus
            else:
                node = parent.children.get(level) if parent.children else None
            if node is None:
                return False
            path.append((parent, level))
        assert node is not None
        values = node.hashes if hashed else node.exact
        if not values or value not in values:
            return False
        del values[value]
        while path and node.is_empty():
            parent, level = path.pop()
            if level == "+":
                parent.plus = None
            else:
                assert parent.children is not None
                del parent.children[level]
            node = parent
        return True

    def match(self, topic: str) -> list[Any]:
        """Every value whose filter matches ``topic``, each once, in subscription order."""
        if not isinstance(topic, str):
            raise TypeError(f"topic must be a str, not {type(topic).__name__}")
        hits: list[dict[Any, int]] = []
        exact = self._exact.get(topic)
        if exact is not None:
            hits.append(exact)
        root = self._root
        if root.children is not None or root.plus is not None or root.hashes is not None:
            levels = topic.split("/")
            n = len(levels)
            if topic[:1] == "$":
                # A '$' topic is not matched by a filter whose first level is a wildcard.
                stack: list[tuple[_Node, int]] = []
                child = root.children.get(levels[0]) if root.children is not None else None
                if child is not None:
                    stack.append((child, 1))
            else:
                stack = [(root, 0)]
            pop = stack.pop
            push = stack.append
            while stack:
                node, i = pop()
                if node.hashes is not None:
                    hits.append(node.hashes)
                if i == n:
                    if node.exact is not None:
                        hits.append(node.exact)
                    continue
                if node.children is not None:
                    child = node.children.get(levels[i])
                    if child is not None:
                        push((child, i + 1))
                if node.plus is not None:
                    push((node.plus, i + 1))
        if not hits:
            return []
        if len(hits) == 1:
            return list(hits[0])
        pairs = [pair for values in hits for pair in values.items()]
        pairs.sort(key=_second)
        if self._shared:
            return list(dict.fromkeys([value for value, _ in pairs]))
        return [value for value, _ in pairs]

    def __len__(self) -> int:
        """The number of (filter, value) subscriptions."""
        return self._size

    def filters(self) -> list[str]:
        """Every filter with at least one value, in the order first subscribed."""
        return list(self._filters)

    def clear(self) -> None:
        """Drop every subscription."""
        self._exact.clear()
        self._root = _Node()
        self._size = 0
        self._filters.clear()
        self._owners.clear()
        self._shared = 0


def _second(pair: tuple[Any, int]) -> int:
    return pair[1]
