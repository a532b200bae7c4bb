"""Device shadows: desired and reported state, their delta, and a version.

AWS IoT Device Shadow semantics, so the same devices and tools work against a
hub: an update carries ``state.desired`` and/or ``state.reported``; objects
merge key by key, ``null`` deletes a key, any other value replaces;
``version`` (when given) must equal the shadow's current version or the
update is refused; ``clientToken`` is echoed.  The delta is what ``desired``
asks for that ``reported`` does not show yet.

``Shadow`` is pure (a clock comes in, documents go out); ``ShadowStore`` keeps
them in SQLite so that a restart loses no state.
"""
from __future__ import annotations

import sqlite3
import threading
from pathlib import Path
from typing import Any

import orjson

from .errors import BadRequest, Conflict, NotFound

__all__ = ["Shadow", "ShadowStore", "ShadowVersionConflict", "UnknownShadow", "delta"]

MAX_DEPTH = 8


class ShadowVersionConflict(Conflict):
    code = "version_conflict"


class UnknownShadow(NotFound):
    code = "unknown_shadow"


def _merge(into: dict[str, Any], update: dict[str, Any], depth: int = 0) -> None:
    if depth > MAX_DEPTH:
        raise BadRequest(f"shadow state nests deeper than {MAX_DEPTH} levels")
    for key, value in update.items():
        if value is None:
            into.pop(key, None)
        elif isinstance(value, dict) and isinstance(into.get(key), dict):
            _merge(into[key], value, depth + 1)
        elif isinstance(value, dict):
            into[key] = {}
            _merge(into[key], value, depth + 1)
        else:
            into[key] = value


def delta(desired: dict[str, Any], reported: dict[str, Any]) -> dict[str, Any]:
    """The part of ``desired`` that ``reported`` does not match (objects compared key by key)."""
    out: dict[str, Any] = {}
    for key, want in desired.items():
        have = reported.get(key)
        if isinstance(want, dict) and isinstance(have, dict):
            inner = delta(want, have)
            if inner:
                out[key] = inner
        elif want != have or key not in reported:
            out[key] = want
    return out


class Shadow:
    __slots__ = ("name", "desired", "reported", "version", "timestamp")

    def __init__(self, name: str, desired: dict[str, Any] | None = None, reported: dict[str, Any] | None = None,
                 version: int = 0, timestamp: float = 0.0) -> None:
        self.name = name
        self.desired = desired or {}
        self.reported = reported or {}
        self.version = version
        self.timestamp = timestamp

    def update(self, request: Any, now: float) -> dict[str, Any]:
        """Apply an update request; returns the accepted document (what changed, new version)."""
        if not isinstance(request, dict) or not isinstance(request.get("state"), dict):
            raise BadRequest('a shadow update is {"state": {"desired": {...}, "reported": {...}}}')
        state = request["state"]
        unknown = set(state) - {"desired", "reported"}
        if unknown:
            raise BadRequest(f"unknown key(s) in state: {', '.join(sorted(unknown))}")
        for part in ("desired", "reported"):
            if part in state and state[part] is not None and not isinstance(state[part], dict):
                raise BadRequest(f"state.{part} must be an object or null")
        expected = request.get("version")
        if expected is not None and expected != self.version:
            raise ShadowVersionConflict(
                f"shadow {self.name!r} is at version {self.version}, the update expected {expected}")
        merged = {}
        for part in ("desired", "reported"):
            if part in state:
                # merge into a copy: a refused update leaves the shadow as it was
                merged[part] = {} if state[part] is None else orjson.loads(orjson.dumps(getattr(self, part)))
                if state[part] is not None:
                    _merge(merged[part], state[part])
        for part, value in merged.items():
            setattr(self, part, value)
        self.version += 1
        self.timestamp = now
        accepted: dict[str, Any] = {"state": state, "version": self.version, "timestamp": now}
        if "clientToken" in request:
            accepted["clientToken"] = request["clientToken"]
        return accepted

    def document(self) -> dict[str, Any]:
        state: dict[str, Any] = {"desired": self.desired, "reported": self.reported}
        diff = delta(self.desired, self.reported)
        if diff:
            state["delta"] = diff
        return {"state": state, "version": self.version, "timestamp": self.timestamp}


class ShadowStore:
    """Shadows by name, each saved to SQLite on every accepted update."""

    def __init__(self, path: Path) -> None:
        self._db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
        self._lock = threading.Lock()
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("CREATE TABLE IF NOT EXISTS shadows (name TEXT PRIMARY KEY, doc BLOB NOT NULL)")
        self._shadows: dict[str, Shadow] = {}
        for name, doc in self._db.execute("SELECT name, doc FROM shadows"):
            d = orjson.loads(doc)
            self._shadows[name] = Shadow(name, d["desired"], d["reported"], d["version"], d["timestamp"])

    def get(self, name: str) -> Shadow:
        shadow = self._shadows.get(name)
        if shadow is None:
            raise UnknownShadow(f"no shadow named {name!r}")
        return shadow

    def names(self) -> list[str]:
        return sorted(self._shadows)

    def update(self, name: str, request: Any, now: float) -> tuple[dict[str, Any], dict[str, Any]]:
        """Apply an update (creating the shadow); returns (accepted document, delta)."""
        shadow = self._shadows.get(name) or Shadow(name)
        accepted = shadow.update(request, now)
        doc = orjson.dumps({"desired": shadow.desired, "reported": shadow.reported,
                            "version": shadow.version, "timestamp": shadow.timestamp})
        with self._lock:
            self._db.execute("INSERT OR REPLACE INTO shadows (name, doc) VALUES (?, ?)", (name, doc))
        self._shadows[name] = shadow
        return accepted, delta(shadow.desired, shadow.reported)

    def close(self) -> None:
        with self._lock:
            self._db.close()
