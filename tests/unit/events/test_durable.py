"""The durable event queue on real SQLite files, with an explicit clock."""
from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from engine.errors import BadRequest, HostError, Overloaded
from engine.events import DurableEvent, DurableQueue, DurableQueueFull

T0 = 1_000_000.0


def put(q: DurableQueue, destination: str, payload: bytes, now: float = T0, ttl_s: float | None = None) -> int:
    return q.put(destination, "route-1", f"devices/{destination}/t", "device:d1", payload, now, ttl_s)


@pytest.fixture
def queue(tmp_path: Path):
    q = DurableQueue(tmp_path / "events.db")
    yield q
    q.close()


def test_fifo_per_destination_and_ack(queue: DurableQueue) -> None:
    a1 = put(queue, "task:a", b"a1")
    b1 = put(queue, "task:b", b"b1")
    a2 = put(queue, "task:a", b"a2")
    a3 = put(queue, "task:a", b"a3")
    assert queue.destinations() == ["task:a", "task:b"]

    first = queue.peek("task:a", 2, T0)
    assert [e.payload for e in first] == [b"a1", b"a2"]
    assert [e.id for e in first] == [a1, a2]
    assert first[0] == DurableEvent(a1, "task:a", "route-1", "devices/task:a/t", "device:d1", b"a1", T0, T0 + 86_400, 0)
    assert queue.peek("task:a", 10, T0) == queue.peek("task:a", 10, T0), "peek removes nothing"

    queue.ack([a1, a2])
    assert [e.id for e in queue.peek("task:a", 10, T0)] == [a3]
    assert [e.id for e in queue.peek("task:b", 10, T0)] == [b1]
    queue.ack([a3, 999_999])  # an unknown id is ignored
    assert queue.destinations() == ["task:b"]
    stats = queue.stats()
    assert stats["events"] == 1 and stats["bytes"] == 2 and stats["delivered_total"] == 3


def test_ttl_expiry_follows_the_given_clock(queue: DurableQueue) -> None:
    short = put(queue, "cloud", b"short", T0, ttl_s=10)
    long = put(queue, "cloud", b"long", T0, ttl_s=100)
    default = put(queue, "cloud", b"default", T0)
    assert [e.id for e in queue.peek("cloud", 10, T0 + 9.999)] == [short, long, default]
    assert [e.id for e in queue.peek("cloud", 10, T0 + 10)] == [long, default], "expired events are not offered"
    assert queue.stats()["events"] == 3, "peek does not delete"

    assert queue.expire(T0 + 10) == 1
    assert queue.expire(T0 + 10) == 0
    assert queue.expire(T0 + 86_400) == 2
    stats = queue.stats()
    assert stats["events"] == 0 and stats["bytes"] == 0 and stats["expired_total"] == 3
    with pytest.raises(BadRequest):
        put(queue, "cloud", b"x", T0, ttl_s=0)


def test_cap_by_count_rejects_after_dropping_expired(tmp_path: Path) -> None:
    with DurableQueue(tmp_path / "q.db", max_events=3) as q:
        put(q, "d", b"1", T0, ttl_s=5)
        put(q, "d", b"2", T0)
        put(q, "d", b"3", T0)
        with pytest.raises(DurableQueueFull) as info:
            put(q, "d", b"4", T0 + 1)
        assert isinstance(info.value, Overloaded) and info.value.status == 429
        assert info.value.code == "durable_queue_full"
        assert q.stats()["rejected_total"] == 1 and q.stats()["events"] == 3
        # Once the first one has expired, a put makes room by dropping it.
        put(q, "d", b"4", T0 + 5)
        assert [e.payload for e in q.peek("d", 10, T0 + 5)] == [b"2", b"3", b"4"]
        stats = q.stats()
        assert stats["expired_total"] == 1 and stats["events"] == 3 and stats["rejected_total"] == 1


def test_cap_by_bytes(tmp_path: Path) -> None:
    with DurableQueue(tmp_path / "q.db", max_bytes=10) as q:
        put(q, "d", b"123456")
        with pytest.raises(DurableQueueFull):
            put(q, "d", b"12345")
        put(q, "d", b"1234")
        assert q.stats()["bytes"] == 10
        with pytest.raises(DurableQueueFull):
            put(q, "d", b"x")
        assert q.stats()["rejected_total"] == 2
        with pytest.raises(DurableQueueFull):
            put(q, "other", b"x" * 11)  # bigger than the whole cap


def test_put_many_is_all_or_nothing(tmp_path: Path) -> None:
    with DurableQueue(tmp_path / "q.db", max_events=4) as q:
        ids = q.put_many([("d", "r", "t", "s", b"a"), ("d", "r", "t", "s", b"b")], T0)
        assert ids == sorted(ids) and len(ids) == 2
        with pytest.raises(DurableQueueFull):
            q.put_many([("d", "r", "t", "s", b"c")] * 3, T0)
        assert q.stats()["events"] == 2 and q.stats()["rejected_total"] == 3
        assert [e.payload for e in q.peek("d", 10, T0)] == [b"a", b"b"]


def test_nack_counts_attempts_and_keeps_the_event(queue: DurableQueue) -> None:
    kept = put(queue, "d", b"keep", T0, ttl_s=100)
    doomed = put(queue, "d", b"doomed", T0, ttl_s=10)
    queue.nack([kept, doomed], T0 + 1)
    queue.nack([kept], T0 + 2)
    assert [(e.id, e.attempts) for e in queue.peek("d", 10, T0 + 2)] == [(kept, 2), (doomed, 1)]
    # A failed delivery of an event that has expired meanwhile drops it.
    queue.nack([kept, doomed], T0 + 10)
    assert [(e.id, e.attempts) for e in queue.peek("d", 10, T0 + 10)] == [(kept, 3)]
    assert queue.stats()["expired_total"] == 1 and queue.stats()["events"] == 1


def test_survives_close_and_reopen(tmp_path: Path) -> None:
    path = tmp_path / "events.db"
    q = DurableQueue(path)
    ids = [put(q, "task:a", f"event-{i}".encode()) for i in range(5)]
    q.ack(ids[:1])
    q.nack(ids[1:2], T0)
    q.close()
    q.close()  # idempotent
    with pytest.raises(HostError):
        q.peek("task:a", 1, T0)

    with DurableQueue(path) as again:
        events = again.peek("task:a", 10, T0)
        assert [e.id for e in events] == ids[1:]
        assert events[0].attempts == 1 and events[0].payload == b"event-1"
        stats = again.stats()
        assert stats["events"] == 4 and stats["bytes"] == sum(len(e.payload) for e in events)
        assert again.stats()["delivered_total"] == 0, "totals count since open"
        new = put(again, "task:a", b"after restart")
        assert new > ids[-1]


def test_wal_mode_is_on(tmp_path: Path) -> None:
    path = tmp_path / "events.db"
    with DurableQueue(path) as q:
        put(q, "d", b"x")
        assert Path(f"{path}-wal").exists()
        other = sqlite3.connect(path)
        try:
            assert other.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
            assert other.execute("SELECT COUNT(*) FROM events").fetchone()[0] == 1, "committed, visible to a reader"
            index = other.execute("SELECT sql FROM sqlite_master WHERE name = 'events_by_destination'").fetchone()[0]
            assert "(destination, id)" in index
        finally:
            other.close()


def test_unusable_path_is_a_host_error(tmp_path: Path) -> None:
    with pytest.raises(HostError):
        DurableQueue(tmp_path)  # a directory, not a database file
