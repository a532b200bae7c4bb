"""Devices over a real MQTT broker: readings in, alerts out, outages survived."""
from __future__ import annotations

import time
from pathlib import Path
from typing import Iterator

import orjson
import pytest

from broker import Broker, Peer
from hub import HubProcess

pytestmark = pytest.mark.integration


def hub_config(tmp_path: Path, port: int) -> Path:
    config = tmp_path / "hub.toml"
    default = (Path(__file__).resolve().parents[2] / "engine" / "default_hub.toml").read_text()
    config.write_text(
        default.replace("port = 8080", "port = 0")
        + f'\n[mqtt]\nport = {port}\nsubscriptions = [["sensors/#", 1]]\nreconnect_max_s = 0.5\n'
    )
    return config


@pytest.fixture
def device_hub(tmp_path: Path, broker: Broker) -> Iterator[HubProcess]:
    hub = HubProcess(tmp_path / "state", hub_config(tmp_path, broker.port))
    assert wait_for(lambda: mqtt(hub).get("connected"), 10), "the hub did not connect to the broker"
    yield hub
    hub.stop()


def mqtt(hub: HubProcess) -> dict:
    return hub.request("GET", "/healthz").json().get("mqtt", {})


def wait_for(check, timeout: float) -> bool:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.05)
    return False


def test_readings_from_a_device_raise_an_alert_to_the_devices(device_hub: HubProcess, broker: Broker) -> None:
    alerts = Peer(broker.port, subscribe="alerts/#")
    device = Peer(broker.port)
    try:
        for _ in range(12):
            device.publish("sensors/t-9/temperature", orjson.dumps({"device": "t-9", "celsius": 20.0}))
        device.publish("sensors/t-9/temperature", orjson.dumps({"device": "t-9", "celsius": 85.0}))
        assert wait_for(lambda: alerts.messages, 10)
        topic, payload, _ = alerts.messages[0]
        assert topic == "alerts/anomaly"
        assert orjson.loads(payload)["anomaly"] is True and orjson.loads(payload)["value"] == 85.0
        routing = device_hub.request("GET", "/routes").json()
        assert routing["counters"]["in:device"] >= 13
        assert mqtt(device_hub)["received"] >= 13
    finally:
        alerts.close()
        device.close()


def test_broker_outage_keeps_http_serving_and_the_hub_reconnects(device_hub: HubProcess, broker: Broker) -> None:
    broker.stop()
    assert wait_for(lambda: not mqtt(device_hub)["connected"], 10)
    resp = device_hub.request("POST", "/tasks/echo/invoke", b"still serving")
    assert resp.status == 200 and resp.body == b"still serving"
    broker.start()
    assert wait_for(lambda: mqtt(device_hub)["connected"], 15), mqtt(device_hub)
    assert mqtt(device_hub)["reconnects"] >= 1
    device = Peer(broker.port)
    alerts = Peer(broker.port, subscribe="alerts/#")
    try:
        for _ in range(12):
            device.publish("sensors/t-3/temperature", b'{"celsius": 20.0}')
        device.publish("sensors/t-3/temperature", b'{"celsius": -40.0}')
        assert wait_for(lambda: alerts.messages, 10)
    finally:
        device.close()
        alerts.close()


def test_hub_without_a_reachable_broker_still_starts_and_serves(tmp_path: Path) -> None:
    from broker import free_port

    hub = HubProcess(tmp_path / "state", hub_config(tmp_path, free_port()))
    try:
        assert mqtt(hub)["connected"] == 0
        assert hub.request("POST", "/tasks/echo/invoke", b"ok").body == b"ok"
    finally:
        hub.stop()
