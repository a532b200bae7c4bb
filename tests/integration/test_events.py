"""The event flow over HTTP and WebSocket against a real coordinator process."""
from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest

from guests import handler_wasm
from hub import HubProcess

pytestmark = pytest.mark.integration


def routing(hub: HubProcess) -> dict[str, Any]:
    return hub.request("GET", "/routes").json()


def collect(url: str, topic_filter: str, trigger, want: int, timeout: float = 10) -> list[dict[str, Any]]:  # type: ignore[no-untyped-def]
    """Open a WebSocket on ``filter``, run ``trigger()``, return the first ``want`` events."""

    async def run() -> list[dict[str, Any]]:
        got: list[dict[str, Any]] = []
        async with aiohttp.ClientSession() as session:
            async with session.ws_connect(f"{url}/events/ws?filter={topic_filter}") as ws:
                await asyncio.sleep(0.05)
                await asyncio.get_running_loop().run_in_executor(None, trigger)
                deadline = time.monotonic() + timeout
                while len(got) < want and time.monotonic() < deadline:
                    try:
                        msg = await ws.receive(timeout=deadline - time.monotonic())
                    except asyncio.TimeoutError:
                        break
                    if msg.type != aiohttp.WSMsgType.BINARY:
                        break
                    got.append(orjson.loads(msg.data))
        return got

    return asyncio.run(run())


def reading(hub: HubProcess, device: str, celsius: float) -> dict[str, Any]:
    resp = hub.request("POST", f"/events/sensors/{device}/temperature",
                       orjson.dumps({"device": device, "celsius": celsius}))
    assert resp.status == 202, resp
    return resp.json()


def test_a_reading_flows_through_two_tasks(hub: HubProcess) -> None:
    events = collect(hub.url, "tasks/%23", lambda: reading(hub, "t-1", 21.5), want=2)
    by_topic = {e["topic"]: e for e in events}
    converted = orjson.loads(by_topic["tasks/telemetry/output"]["payload"])
    assert converted == {"device": "t-1", "celsius": 21.5, "fahrenheit": 70.7, "kelvin": 294.65}
    assert by_topic["tasks/telemetry/output"]["source"] == "task:telemetry"
    assert orjson.loads(by_topic["tasks/anomaly/output"]["payload"])["value"] == 21.5


def test_an_anomaly_reaches_the_devices_on_alerts(hub: HubProcess) -> None:
    def readings() -> None:
        for _ in range(12):
            reading(hub, "t-2", 20.0)
        reading(hub, "t-2", 80.0)

    alerts = collect(hub.url, "alerts/%23", readings, want=1)
    assert len(alerts) == 1
    assert alerts[0]["topic"] == "alerts/anomaly" and alerts[0]["source"] == "hub"
    assert orjson.loads(alerts[0]["payload"])["anomaly"] is True


def test_event_topic_with_wildcards_is_400(hub: HubProcess) -> None:
    for topic in ("sensors/+/temperature", "sensors/%23"):
        resp = hub.request("POST", f"/events/{topic}", b"{}")
        assert resp.status == 400, topic
        assert "topic" in resp.json()["error"]["message"]


def test_an_event_no_route_takes_is_counted(hub: HubProcess) -> None:
    before = routing(hub)["routing"]["no_route"]
    resp = hub.request("POST", "/events/nowhere/at/all", b"x")
    assert resp.status == 200 and resp.json()["routes"] == 0
    assert routing(hub)["routing"]["no_route"] == before + 1


def test_routes_api_add_replace_delete(hub: HubProcess) -> None:
    route = {"filter": "lab/+/door", "destination": "device:doors/{2}", "condition": "open == true"}
    created = hub.request("PUT", "/routes/doors", orjson.dumps(route))
    assert created.status == 201, created
    assert created.json()["id"] == "doors"
    ids = [r["id"] for r in routing(hub)["routes"]]
    assert "doors" in ids and "readings" in ids
    events = collect(hub.url, "doors/%23", lambda: hub.request("POST", "/events/lab/d7/door", b'{"open": true}'), 1)
    assert [e["topic"] for e in events] == ["doors/d7"]
    replaced = hub.request("PUT", "/routes/doors", orjson.dumps({**route, "condition": "open == false"}))
    assert replaced.status == 200
    assert hub.request("DELETE", "/routes/doors").status == 204
    assert hub.request("DELETE", "/routes/doors").status == 404


@pytest.mark.parametrize(
    ("route", "fragment"),
    [
        ({"id": "r", "filter": "a/#/b", "destination": "cloud"}, "'#'"),
        ({"id": "r", "filter": "+x", "destination": "cloud"}, "'+'"),
        ({"id": "r", "filter": "a/b", "destination": "satellite"}, "destination"),
        ({"id": "r", "filter": "a/b", "destination": "cloud", "condition": "temp >> 3"}, "position"),
        ({"id": "r", "filter": "a/b", "destination": "cloud", "source": "mars"}, "source"),
    ],
)
def test_bad_route_is_400_naming_the_problem(hub: HubProcess, route: dict[str, Any], fragment: str) -> None:
    before = routing(hub)["routes"]
    resp = hub.request("PUT", "/routes", orjson.dumps({"routes": [*before, route]}))
    assert resp.status == 400, resp
    message = resp.json()["error"]["message"]
    assert fragment in message and "'r'" in message
    assert routing(hub)["routes"] == before  # the table was not touched


def test_whole_table_swap_is_atomic(hub: HubProcess) -> None:
    before = routing(hub)["routes"]
    new = [{"id": "only", "filter": "x/y", "destination": "cloud"}]
    assert hub.request("PUT", "/routes", orjson.dumps({"routes": new})).status == 200
    assert [r["id"] for r in routing(hub)["routes"]] == ["only"]
    assert hub.request("PUT", "/routes", orjson.dumps({"routes": before})).status == 200
    assert routing(hub)["routes"] == before


def test_non_json_payload_under_a_field_condition_is_counted(hub: HubProcess) -> None:
    route = {"filter": "plain/+", "destination": "cloud", "condition": "level > 3"}
    assert hub.request("PUT", "/routes/plain", orjson.dumps(route)).status == 201
    before = routing(hub)["routing"]["payload_not_json"]
    resp = hub.request("POST", "/events/plain/x", b"not json")
    assert resp.json()["routes"] == 0
    assert routing(hub)["routing"]["payload_not_json"] == before + 1
    hub.request("DELETE", "/routes/plain")


def test_a_task_that_publishes_in_a_loop_is_bounded_by_its_own_budget(hub: HubProcess) -> None:
    hub.put_task({"name": "chatty", "kind": "handler"}, handler_wasm("publish_flood"))
    before = routing(hub)["counters"].get("in:task", 0)
    resp = hub.request("POST", "/tasks/chatty/invoke", b"x" * 100)
    assert resp.status == 200
    assert int.from_bytes(resp.body, "little", signed=True) == -2  # the host said: limit reached
    published = routing(hub)["counters"]["in:task"] - before
    assert published == 1000 + 1  # its budget of publishes, plus its own output event


def test_task_output_events_carry_the_task_as_source(hub: HubProcess) -> None:
    events = collect(hub.url, "tasks/echo/output", lambda: hub.request("POST", "/tasks/echo/invoke", b"hi"), 1)
    assert events == [{"topic": "tasks/echo/output", "source": "task:echo", "payload": "hi"}]


def test_route_loops_are_cut_at_max_hops(tmp_path: Path) -> None:
    config = tmp_path / "hub.toml"
    config.write_text(
        "examples = true\n[events]\nmax_hops = 3\n"
        '[[routes]]\nid = "loop"\nsource = "*"\nfilter = "tasks/echo/output"\ndestination = "task:echo"\n'
        '[[routes]]\nid = "start"\nfilter = "go"\ndestination = "task:echo"\n'
    )
    hub = HubProcess(tmp_path / "state", config)
    try:
        hub.request("POST", "/events/go", b"ping")
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not routing(hub)["counters"].get("dropped:max_hops"):
            time.sleep(0.05)
        counters = routing(hub)["counters"]
        assert counters["dropped:max_hops"] == 1
        text = hub.request("GET", "/metrics").body.decode()
        assert 'wasmyard_executions_total{task="echo",state="succeeded"} 4' in text
        assert 'wasmyard_events_total{outcome="dropped:max_hops"} 1' in text
    finally:
        hub.stop()


def test_durable_route_keeps_events_across_a_restart(tmp_path: Path) -> None:
    config = tmp_path / "hub.toml"
    config.write_text(
        '[[routes]]\nid = "keep"\nfilter = "meter/+"\ndestination = "device:billing/{2}"\ndurable = true\n'
    )
    hub = HubProcess(tmp_path / "state", config)
    try:
        for n in range(3):
            resp = hub.request("POST", f"/events/meter/m{n}", f"kwh={n}".encode())
            assert resp.json() == {"topic": f"meter/m{n}", "routes": 1, "delivered": 0, "queued": 1, "dropped": 0}
        assert routing(hub)["durable"]["events"] == 3
        assert 'wasmyard_durable{stat="events"} 3' in hub.request("GET", "/metrics").body.decode()
    finally:
        hub.stop()
    hub = HubProcess(tmp_path / "state", config)  # same state dir: same SQLite file
    try:
        assert routing(hub)["durable"]["events"] == 3
        events = collect(hub.url, "billing/%23", lambda: None, want=3, timeout=10)
        assert [(e["topic"], e["payload"]) for e in events] == [(f"billing/m{n}", f"kwh={n}") for n in range(3)]
        deadline = time.monotonic() + 5
        while routing(hub)["durable"]["events"] and time.monotonic() < deadline:
            time.sleep(0.05)
        assert routing(hub)["durable"]["events"] == 0
    finally:
        hub.stop()


def test_shadow_desired_change_reaches_the_device_and_reports_come_back(hub: HubProcess) -> None:
    route = {"source": "shadow", "filter": "$shadow/+/update/delta", "destination": "device:config/{2}"}
    assert hub.request("PUT", "/routes/shadow-delta", orjson.dumps(route)).status == 201
    report = {"filter": "state/+/reported", "destination": "shadow:pump-1"}
    assert hub.request("PUT", "/routes/reports", orjson.dumps(report)).status == 201

    def desire() -> None:
        resp = hub.request("POST", "/shadows/pump-1", orjson.dumps({"state": {"desired": {"on": True, "rpm": 900}}}))
        assert resp.status == 200 and resp.json()["version"] == 1

    deltas = collect(hub.url, "config/%23", desire, want=1)
    assert deltas[0]["topic"] == "config/pump-1"
    assert orjson.loads(deltas[0]["payload"]) == {"state": {"on": True, "rpm": 900}, "version": 1}
    # the device reports (as a routed event): the delta shrinks to what is still missing
    hub.request("POST", "/events/state/pump-1/reported", b'{"on": true, "rpm": 600}')
    doc = hub.request("GET", "/shadows/pump-1").json()
    assert doc["version"] == 2
    assert doc["state"]["reported"] == {"on": True, "rpm": 600}
    assert doc["state"]["delta"] == {"rpm": 900}
    stale = hub.request("POST", "/shadows/pump-1", orjson.dumps({"state": {"desired": {"rpm": 1}}, "version": 1}))
    assert stale.status == 409 and stale.json()["error"]["code"] == "version_conflict"
    assert hub.request("GET", "/shadows/nope").status == 404
    assert "pump-1" in hub.request("GET", "/shadows").json()["shadows"]
    hub.request("DELETE", "/routes/shadow-delta")
    hub.request("DELETE", "/routes/reports")
