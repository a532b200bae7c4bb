"""The MQTT bridge against a real broker: receive, publish, outages, limits, close."""
from __future__ import annotations

import asyncio
import random
import threading
import time
from pathlib import Path
from typing import Any, Callable, Coroutine

import pytest

from broker import Broker, Peer, Received
from conftest_mqtt import broker_fixture  # noqa: F401  (the "broker" fixture)
from engine.comms import Backoff, MqttBridge, MqttSettings
from engine.errors import BadRequest

pytestmark = pytest.mark.integration

def run(coro: Coroutine[Any, Any, Any]) -> Any:
    return asyncio.run(coro)


async def until(condition: Callable[[], bool], timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.01)
    return True


def delivered(b: Broker, messages: Received, granted: int) -> Received:
    """What a subscriber granted ``granted`` should see: QoS min(published, granted)
    (MQTT 3.1.1, 3.8.4); amqtt 0.12 delivers at the granted QoS instead."""
    if b.kind == "amqtt":
        return [(t, p, granted) for t, p, _ in messages]
    return [(t, p, min(q, granted)) for t, p, q in messages]


def settings(port: int, **kw: Any) -> MqttSettings:
    kw.setdefault("reconnect_min_s", 0.05)
    kw.setdefault("reconnect_max_s", 0.4)
    return MqttSettings(port=port, **kw)


def collector() -> tuple[Received, Callable[[str, bytes, int], None], list[int]]:
    got: Received = []
    threads: list[int] = []

    def on_message(topic: str, payload: bytes, qos: int) -> None:
        threads.append(threading.get_ident())
        got.append((topic, payload, qos))

    return got, on_message, threads


def test_receives_what_a_device_publishes(broker: Broker) -> None:
    async def main() -> None:
        got, on_message, threads = collector()
        bridge = MqttBridge(settings(broker.port), on_message)
        await bridge.start()
        try:
            assert await bridge.wait_connected(10), broker.log_tail()
            device = Peer(broker.port)
            try:
                device.publish("devices/d1/temp", b'{"c": 21.5}', 1)
                device.publish("devices/d2/door", b"open", 0)
                device.publish("elsewhere/x", b"not subscribed", 0)
                assert await until(lambda: len(got) >= 2)
            finally:
                device.close()
            await asyncio.sleep(0.1)
            sent = [("devices/d1/temp", b'{"c": 21.5}', 1), ("devices/d2/door", b"open", 0)]
            assert got == delivered(broker, sent, 1)
            assert set(threads) == {threading.get_ident()}, "on_message must run on the loop thread"
            stats = bridge.stats()
            assert stats["received"] == 2 and stats["connected"] == 1 and stats["connects"] == 1
        finally:
            await bridge.aclose()

    run(main())


def test_publishes_qos0_and_qos1_to_a_subscriber(broker: Broker) -> None:
    async def main() -> None:
        cloud = Peer(broker.port, subscribe="hub/#", qos=1)
        bridge = MqttBridge(settings(broker.port, subscriptions=[]), lambda *a: None)
        await bridge.start()
        try:
            assert await bridge.wait_connected(10)
            assert bridge.publish("hub/a", b"zero", 0)
            assert bridge.publish("hub/b", b"one", 1)
            assert await until(lambda: len(cloud.messages) >= 2)
            assert sorted(cloud.messages) == delivered(broker, [("hub/a", b"zero", 0), ("hub/b", b"one", 1)], 1)
            assert await until(lambda: bridge.stats()["published"] == 2)
            assert bridge.stats()["buffered"] == 0
        finally:
            await bridge.aclose()
            cloud.close()

    run(main())


def test_starts_without_a_broker_and_connects_when_it_comes(tmp_path: Path) -> None:
    later = Broker(tmp_path / "broker")  # port chosen, process not started

    async def main() -> None:
        got, on_message, _ = collector()
        bridge = MqttBridge(settings(later.port), on_message)
        t0 = time.monotonic()
        await bridge.start()
        assert time.monotonic() - t0 < 0.1, "start() must not wait for a broker"
        try:
            assert not await bridge.wait_connected(0.8)
            assert not bridge.connected and bridge.stats()["connects"] == 0
            assert bridge.publish("hub/early", b"queued before the broker existed", 1)
            # Blocking calls: the loop (and so the bridge's pump) waits for them.
            later.start()
            cloud = Peer(later.port, subscribe="hub/#")
            device = Peer(later.port)
            try:
                assert await bridge.wait_connected(10), later.log_tail()
                assert await until(lambda: len(cloud.messages) == 1)
                assert cloud.messages == [("hub/early", b"queued before the broker existed", 1)]
                device.publish("devices/late/x", b"hello", 1)
                assert await until(lambda: len(got) == 1)
            finally:
                cloud.close()
                device.close()
            stats = bridge.stats()
            assert stats["connects"] == 1 and stats["reconnects"] == 0 and stats["buffered"] == 0
        finally:
            await bridge.aclose()

    try:
        run(main())
    finally:
        later.close()


def test_broker_outage_buffers_and_redelivers_after_reconnect(broker: Broker) -> None:
    async def main() -> None:
        got, on_message, _ = collector()
        bridge = MqttBridge(settings(broker.port), on_message)
        await bridge.start()
        try:
            assert await bridge.wait_connected(10)
            broker.stop()
            assert await until(lambda: not bridge.connected, 10), "the bridge did not notice the broker leave"
            qos1 = [(f"hub/q1/{i}", f"one-{i}".encode(), 1) for i in range(50)]
            qos0 = [(f"hub/q0/{i}", f"zero-{i}".encode(), 0) for i in range(10)]
            for topic, payload, qos in qos1 + qos0:
                assert bridge.publish(topic, payload, qos)
            await asyncio.sleep(0.3)  # a few failed reconnects meanwhile; nothing raises
            assert not bridge.connected
            assert bridge.stats()["buffered"] == 60
            assert not bridge._task.done()  # type: ignore[union-attr]

            broker.start()  # same port
            cloud = Peer(broker.port, subscribe="hub/#")
            device = Peer(broker.port)
            try:
                assert await bridge.wait_connected(10), broker.log_tail()
                assert await until(lambda: len(cloud.messages) >= 60)
                await asyncio.sleep(0.1)
                assert sorted(cloud.messages) == sorted(delivered(broker, qos1 + qos0, 1))
                in_order = [m for m in cloud.messages if m[0].startswith("hub/q1/")]
                assert in_order == qos1
                device.publish("devices/back/x", b"resubscribed", 1)  # subscriptions came back too
                assert await until(lambda: ("devices/back/x", b"resubscribed", 1) in got)
            finally:
                cloud.close()
                device.close()
            stats = bridge.stats()
            assert stats["connects"] == 2 and stats["reconnects"] == 1
            assert stats["buffered"] == 0 and stats["published"] == 60 and stats["dropped"] == 0
        finally:
            await bridge.aclose()

    run(main())


def test_unacknowledged_qos1_is_resent_after_a_broker_crash(broker: Broker) -> None:
    async def main() -> None:
        bridge = MqttBridge(settings(broker.port, subscriptions=[]), lambda *a: None)
        await bridge.start()
        try:
            assert await bridge.wait_connected(10)
            broker.pause()  # takes the bytes (the kernel does), acknowledges nothing
            sent = [(f"hub/inflight/{i}", f"m{i}".encode(), 1) for i in range(20)]
            for topic, payload, qos in sent:
                assert bridge.publish(topic, payload, qos)
            assert await until(lambda: bridge.stats()["in_flight"] == 20), bridge.stats()
            broker.kill()
            assert await until(lambda: not bridge.connected)
            assert bridge.stats()["buffered"] == 20 and bridge.stats()["dropped"] == 0

            broker.start()
            cloud = Peer(broker.port, subscribe="hub/#")
            try:
                assert await bridge.wait_connected(10)
                assert await until(lambda: len(cloud.messages) >= 20)
                assert cloud.messages == sent
            finally:
                cloud.close()
            assert await until(lambda: bridge.stats()["published"] == 20)
            assert bridge.stats()["buffered"] == 0 and bridge.stats()["reconnects"] == 1
        finally:
            await bridge.aclose()

    run(main())


def test_full_buffer_refuses_and_counts_drops(tmp_path: Path) -> None:
    nobody = Broker(tmp_path / "broker")  # never started: everything stays buffered

    async def main() -> None:
        bridge = MqttBridge(settings(nobody.port, max_buffer=5), lambda *a: None)
        await bridge.start()
        try:
            assert [bridge.publish("hub/x", b"p", 1) for _ in range(5)] == [True] * 5
            assert bridge.publish("hub/x", b"p", 1) is False
            assert bridge.publish("hub/x", b"p", 0) is False
            stats = bridge.stats()
            assert stats["dropped"] == 2 and stats["buffered"] == 5
            with pytest.raises(BadRequest):
                bridge.publish("hub/#", b"wildcards are for filters", 0)
        finally:
            await bridge.aclose()

    run(main())


def test_aclose_is_idempotent_and_leaves_nothing_running(broker: Broker) -> None:
    before = set(threading.enumerate())

    async def main() -> None:
        bridge = MqttBridge(settings(broker.port), lambda *a: None)
        await bridge.aclose()  # never started
        bridge = MqttBridge(settings(broker.port), lambda *a: None)
        await bridge.start()
        assert await bridge.wait_connected(10)
        bridge.publish("hub/bye", b"x", 1)
        await asyncio.gather(bridge.aclose(), bridge.aclose())
        await bridge.aclose()
        assert not bridge.connected
        assert bridge.publish("hub/after", b"x", 0) is False
        assert asyncio.all_tasks() == {asyncio.current_task()}

        # Closing while the broker is away (connect attempts and backoff in progress).
        away = MqttBridge(settings(broker.port), lambda *a: None)
        broker.stop()
        await away.start()
        await asyncio.sleep(0.2)
        await away.aclose()
        await away.aclose()
        assert asyncio.all_tasks() == {asyncio.current_task()}

    run(main())
    leftover = [t for t in set(threading.enumerate()) - before if t.name.startswith("paho")]
    assert leftover == []


def test_aclose_is_prompt_when_the_broker_is_frozen(broker: Broker) -> None:
    async def main() -> None:
        bridge = MqttBridge(settings(broker.port), lambda *a: None)
        await bridge.start()
        assert await bridge.wait_connected(10)
        broker.pause()
        try:
            bridge.publish("hub/x", b"never acknowledged", 1)
            await asyncio.sleep(0.1)
            t0 = time.monotonic()
            await bridge.aclose()
            assert time.monotonic() - t0 < 2.0
            assert asyncio.all_tasks() == {asyncio.current_task()}
        finally:
            broker.resume()

    run(main())


def test_backoff_grows_with_jitter_and_resets() -> None:
    b = Backoff(0.1, 1.0, random.Random(7))
    delays = [b.next() for _ in range(8)]
    assert delays[0] == pytest.approx(0.1)
    assert all(0.1 <= d <= 1.0 for d in delays)
    assert len({round(d, 6) for d in delays[3:]}) > 1, "jittered, not a fixed ladder"
    ceilings = [0.1, 0.2, 0.4, 0.8, 1.0, 1.0, 1.0, 1.0]
    assert all(d <= c + 1e-12 for d, c in zip(delays, ceilings, strict=True))
    b.reset()
    assert b.next() == pytest.approx(0.1)
    with pytest.raises(ValueError):
        Backoff(0, 1)


def test_bad_settings_are_refused_up_front() -> None:
    for bad in ({"port": 0}, {"max_buffer": 0}, {"reconnect_min_s": 2, "reconnect_max_s": 1},
                {"subscriptions": [("devices/#", 3)]}, {"subscriptions": [("", 0)]}):
        with pytest.raises(BadRequest):
            MqttSettings(**bad)  # type: ignore[arg-type]
