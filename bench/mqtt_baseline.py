"""The MQTT anchor: how fast mosquitto moves messages between two paho clients here.

    .venv/bin/python bench/mqtt_baseline.py [--n 20000] [--repeat 3] [--bridge] [--quick]

``baseline(port, n)`` is the anchor: one publisher and one subscriber, each a
paho-mqtt client with its own network thread and TCP_NODELAY (the library and
set-up ``engine.comms.mqtt`` uses), QoS 0, ``n`` messages of 40 bytes, timed
from the first publish to the last message received.  A script that measures
the device round trip (device -> broker -> bridge -> coordinator -> bridge ->
broker -> device) imports it and runs it against the same broker in the same
run, so the two figures share the machine's mood:

    sys.path.insert(0, "bench"); from mqtt_baseline import baseline
    anchor = baseline(broker.port, 20_000)

``--bridge`` also measures the bridge alone on the same broker: a paho device
publishing into the bridge (receive rate), and the bridge publishing to a paho
subscriber (publish rate).  The broker is the Broker helper of the integration
tests (mosquitto when installed, amqtt otherwise; its kind is printed).
"""
from __future__ import annotations

import argparse
import asyncio
import secrets
import socket
import sys
import threading
import time
from importlib.metadata import version
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests" / "integration"))

import paho.mqtt.client as paho  # noqa: E402
from paho.mqtt.enums import CallbackAPIVersion  # noqa: E402

from broker import Broker  # noqa: E402

__all__ = ["baseline", "bridge_publish", "bridge_receive"]

PAYLOAD = b'{"device":"d-0042","temp":21.50,"seq":7}'  # 40 bytes
TOPIC = "bench/devices/d-0042/telemetry"
IDLE_S = 2.0  # a run that stops receiving for this long is over (QoS 0 may lose messages)


def _client(role: str) -> paho.Client:
    return paho.Client(CallbackAPIVersion.VERSION2, client_id=f"bench-{role}-{secrets.token_hex(3)}")


def _start(client: paho.Client, port: int, subscribe: str | None = None) -> None:
    """Connect, start the network thread, and wait for CONNACK (and SUBACK)."""
    ready = threading.Event()
    client.on_connect = lambda c, u, f, rc, p: ready.set() if subscribe is None else None
    client.on_subscribe = lambda c, u, mid, rc, p: ready.set()
    client.connect("127.0.0.1", port)
    sock = client.socket()
    if isinstance(sock, socket.socket):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    client.loop_start()
    if subscribe is not None:
        client.subscribe(subscribe, 0)
    if not ready.wait(10):
        raise RuntimeError(f"no {'SUBACK' if subscribe else 'CONNACK'} from the broker on port {port}")


def _stop(client: paho.Client) -> None:
    client.disconnect()
    client.loop_stop()


class _Counter:
    """Counts arrivals from a network thread and remembers when the last one came."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.count = 0
        self.last = 0.0
        self.done = threading.Event()

    def hit(self, *_: object) -> None:
        self.count += 1
        self.last = time.perf_counter()
        if self.count >= self.n:
            self.done.set()

    def wait(self) -> None:
        while not self.done.wait(IDLE_S):
            if time.perf_counter() - self.last > IDLE_S:
                return


def _rate(counter: _Counter, started: float, what: str) -> float:
    if counter.count < counter.n:
        print(f"  note: {what}: {counter.n - counter.count} of {counter.n} QoS 0 messages lost", file=sys.stderr)
    if counter.count == 0:
        return 0.0
    return counter.count / (counter.last - started)


def baseline(port: int, n: int = 20_000, topic: str = TOPIC, subscribe: str = "bench/#",
             what: str = "baseline") -> float:
    """Messages/s from one paho publisher (on ``topic``) to one paho subscriber (on
    ``subscribe``) through the broker on ``port`` (QoS 0).  With a hub routing
    ``topic`` to ``subscribe`` in between, the same function times the round trip."""
    counter = _Counter(n)
    sub, pub = _client("sub"), _client("pub")
    sub.on_message = counter.hit
    _start(sub, port, subscribe=subscribe)
    _start(pub, port)
    try:
        publish = pub.publish
        started = time.perf_counter()
        for _ in range(n):
            publish(topic, PAYLOAD, 0)
        counter.wait()
    finally:
        _stop(pub)
        _stop(sub)
    return _rate(counter, started, what)


def bridge_receive(port: int, n: int = 20_000) -> float:
    """Messages/s from a paho device into ``MqttBridge``'s on_message on the event loop (QoS 0)."""
    from engine.comms import MqttBridge, MqttSettings

    async def main() -> float:
        counter = _Counter(n)
        bridge = MqttBridge(MqttSettings(port=port, subscriptions=[("bench/#", 0)]), counter.hit)
        await bridge.start()
        device = _client("device")
        try:
            if not await bridge.wait_connected(10):
                raise RuntimeError("the bridge did not connect")
            _start(device, port)
            started = time.perf_counter()
            for _ in range(n):
                device.publish(TOPIC, PAYLOAD, 0)
            while not counter.done.is_set() and time.perf_counter() - max(counter.last, started) < IDLE_S:
                await asyncio.sleep(0.01)
        finally:
            _stop(device)
            await bridge.aclose()
        return _rate(counter, started, "bridge receive")

    return asyncio.run(main())


def bridge_publish(port: int, n: int = 20_000) -> float:
    """Messages/s from ``MqttBridge.publish`` on the loop to a paho subscriber (QoS 0)."""
    from engine.comms import MqttBridge, MqttSettings

    async def main() -> float:
        counter = _Counter(n)
        cloud = _client("cloud")
        cloud.on_message = counter.hit
        _start(cloud, port, subscribe="bench/#")
        bridge = MqttBridge(MqttSettings(port=port, subscriptions=[], max_buffer=n), lambda *a: None)
        await bridge.start()
        try:
            if not await bridge.wait_connected(10):
                raise RuntimeError("the bridge did not connect")
            publish = bridge.publish
            started = time.perf_counter()
            for _ in range(n):
                publish(TOPIC, PAYLOAD, 0)
            while not counter.done.is_set() and time.perf_counter() - max(counter.last, started) < IDLE_S:
                await asyncio.sleep(0.01)
        finally:
            await bridge.aclose()
            _stop(cloud)
        return _rate(counter, started, "bridge publish")

    return asyncio.run(main())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=20_000)
    parser.add_argument("--repeat", type=int, default=3, help="rounds; the best one counts")
    parser.add_argument("--bridge", action="store_true", help="also measure MqttBridge on the same broker")
    parser.add_argument("--quick", action="store_true", help="one round of 5,000 messages")
    args = parser.parse_args()
    if args.quick:
        args.n, args.repeat = 5_000, 1
    with Broker() as broker:
        print(f"broker: {broker.kind} on 127.0.0.1:{broker.port}; paho-mqtt {version('paho-mqtt')}")
        print(f"{args.n} messages of {len(PAYLOAD)} bytes, QoS 0, best of {args.repeat}")
        runs = {"anchor: paho -> broker -> paho": baseline}
        if args.bridge:
            runs["paho -> broker -> MqttBridge"] = bridge_receive
            runs["MqttBridge -> broker -> paho"] = bridge_publish
        best = {name: 0.0 for name in runs}
        for _ in range(args.repeat):
            for name, fn in runs.items():  # interleaved, so drift hits them alike
                best[name] = max(best[name], fn(broker.port, args.n))
        anchor = best["anchor: paho -> broker -> paho"]
        for name, rate in best.items():
            ratio = f"  ({rate / anchor:.2f} x anchor)" if anchor and name != next(iter(best)) else ""
            print(f"  {name:<34} {rate:>9,.0f} msg/s{ratio}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
