"""Shadow documents: merge, delete, delta, version checks, persistence."""
from __future__ import annotations

from pathlib import Path

import pytest

from engine.errors import BadRequest
from engine.shadows import Shadow, ShadowStore, ShadowVersionConflict, UnknownShadow, delta


def test_updates_merge_key_by_key_and_null_deletes() -> None:
    s = Shadow("thermostat")
    s.update({"state": {"reported": {"temp": 20, "mode": "eco", "fan": {"speed": 1, "auto": True}}}}, now=1.0)
    s.update({"state": {"reported": {"temp": 21, "mode": None, "fan": {"speed": 2}}}}, now=2.0)
    assert s.reported == {"temp": 21, "fan": {"speed": 2, "auto": True}}
    assert (s.version, s.timestamp) == (2, 2.0)


def test_delta_is_what_desired_asks_and_reported_does_not_show() -> None:
    s = Shadow("t")
    s.update({"state": {"desired": {"temp": 22, "fan": {"speed": 3, "auto": True}, "light": "on"}}}, 1.0)
    s.update({"state": {"reported": {"temp": 22, "fan": {"speed": 1, "auto": True}}}}, 2.0)
    doc = s.document()
    assert doc["state"]["delta"] == {"fan": {"speed": 3}, "light": "on"}
    s.update({"state": {"reported": {"fan": {"speed": 3}, "light": "on"}}}, 3.0)
    assert "delta" not in s.document()["state"]
    assert delta({"a": [1, 2]}, {"a": [1, 2]}) == {}
    assert delta({"a": None}, {}) == {"a": None}


def test_a_stale_version_is_refused_and_changes_nothing() -> None:
    s = Shadow("t")
    s.update({"state": {"desired": {"x": 1}}}, 1.0)
    with pytest.raises(ShadowVersionConflict, match="version 1"):
        s.update({"state": {"desired": {"x": 2}}, "version": 0}, 2.0)
    assert (s.desired, s.version) == ({"x": 1}, 1)
    accepted = s.update({"state": {"desired": {"x": 2}}, "version": 1, "clientToken": "abc"}, 3.0)
    assert accepted == {"state": {"desired": {"x": 2}}, "version": 2, "timestamp": 3.0, "clientToken": "abc"}


@pytest.mark.parametrize("request_doc", [
    None, [], {"state": 5}, {"desired": {}}, {"state": {"wanted": {}}}, {"state": {"reported": [1]}},
])
def test_malformed_updates_are_bad_requests(request_doc: object) -> None:
    s = Shadow("t")
    with pytest.raises(BadRequest):
        s.update(request_doc, 1.0)
    assert s.version == 0


def test_too_deep_an_update_is_refused_whole() -> None:
    s = Shadow("t")
    s.update({"state": {"reported": {"a": 1}}}, 1.0)
    deep: dict = {}
    cur = deep
    for _ in range(20):
        cur["k"] = {}
        cur = cur["k"]
    with pytest.raises(BadRequest, match="deeper"):
        s.update({"state": {"reported": {"b": 2, "deep": deep}}}, 2.0)
    assert s.reported == {"a": 1} and s.version == 1


def test_null_state_part_clears_it() -> None:
    s = Shadow("t")
    s.update({"state": {"desired": {"x": 1}, "reported": {"y": 2}}}, 1.0)
    s.update({"state": {"desired": None}}, 2.0)
    assert (s.desired, s.reported) == ({}, {"y": 2})


def test_store_persists_across_reopen(tmp_path: Path) -> None:
    path = tmp_path / "shadows.sqlite"
    store = ShadowStore(path)
    accepted, diff = store.update("pump", {"state": {"desired": {"on": True}}}, 5.0)
    assert accepted["version"] == 1 and diff == {"on": True}
    with pytest.raises(UnknownShadow):
        store.get("valve")
    store.close()
    again = ShadowStore(path)
    try:
        assert again.names() == ["pump"]
        assert again.get("pump").document() == {"state": {"desired": {"on": True}, "reported": {},
                                                          "delta": {"on": True}}, "version": 1, "timestamp": 5.0}
    finally:
        again.close()
