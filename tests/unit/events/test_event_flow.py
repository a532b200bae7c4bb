"""The event flow on a real coordinator and a real SQLite durable queue.

The device side is a small in-memory publisher that can be told to refuse,
standing in for the MQTT bridge (tested against a real broker in
tests/integration); everything else is the real thing.
"""
from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from guests import command_wasm, handler_wasm

from engine.config import HubSettings
from engine.coordinator import Coordinator
from engine.errors import BadRequest
from engine.events.durable import DurableQueue
from engine.events.flow import EventFlow
from engine.manifest import parse_manifest
from engine.routing.table import RoutingTable
from engine.runtime import WasmRuntime


class Devices:
    def __init__(self) -> None:
        self.sent: list[tuple[str, bytes, int]] = []
        self.refuse = False

    def publish(self, topic: str, payload: bytes, qos: int = 0, retain: bool = False) -> bool:
        if self.refuse:
            return False
        self.sent.append((topic, payload, qos))
        return True


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def run(rt: WasmRuntime, tmp_path: Path, routes: list[dict[str, Any]],
        scenario: Callable[[Coordinator, EventFlow, Devices, Clock], Awaitable[Any]], **settings: Any) -> Any:
    async def main() -> Any:
        co = Coordinator(HubSettings(state_dir=tmp_path, **settings), runtime=rt)
        co.register_compiled(co.compile(parse_manifest({"name": "echo", "kind": "handler"}), handler_wasm("echo")))
        devices, clock = Devices(), Clock()
        durable = DurableQueue(tmp_path / "events.sqlite", max_events=100, default_ttl_s=60)
        flow = EventFlow(co, RoutingTable.from_dicts(routes), devices=devices, durable=durable, clock=clock,
                         max_hops=3)
        try:
            return await scenario(co, flow, devices, clock)
        finally:
            await flow.aclose()
            await co.aclose()

    return asyncio.run(main())


async def settle(co: Coordinator) -> None:
    while co.resources.in_flight or co.scheduler.depth:
        await asyncio.sleep(0.001)


def test_event_to_task_to_device(rt: WasmRuntime, tmp_path: Path) -> None:
    routes = [{"id": "in", "filter": "s/+/t", "destination": "task:echo"},
              {"id": "out", "source": "task:echo", "filter": "tasks/echo/output", "destination": "device:d/{source}"}]

    async def scenario(co: Coordinator, flow: EventFlow, devices: Devices, clock: Clock) -> None:
        delivery = flow.publish("s/1/t", b"21.5", "device:1")
        assert delivery.to_dict() == {"routes": 1, "delivered": 1, "queued": 0, "dropped": 0}
        await settle(co)
        assert devices.sent == [("d/task:echo", b"21.5", 0)]

    run(rt, tmp_path, routes, scenario)


def test_an_output_nobody_listened_to_is_routed_once_a_route_takes_it(rt: WasmRuntime, tmp_path: Path) -> None:
    """The flow remembers which output topics no route takes; a new table forgets."""
    async def scenario(co: Coordinator, flow: EventFlow, devices: Devices, clock: Clock) -> None:
        for payload in (b"a", b"b"):
            await co.invoke("echo", payload)
        assert devices.sent == [] and flow.table.counters.no_route == 2
        flow.swap(RoutingTable.from_dicts([{"id": "out", "filter": "tasks/+/output", "destination": "device:d"}]))
        await co.invoke("echo", b"c")
        assert devices.sent == [("d", b"c", 0)]
        assert flow.table.counters.as_dict() == {"matched": 1, "no_route": 2, "condition_false": 0,
                                                 "payload_not_json": 0}
        sub = flow.subscribe("tasks/echo/#", 4)
        flow.swap(RoutingTable(()))
        await co.invoke("echo", b"d")  # no route, but a subscriber listens
        assert sub.queue.get_nowait() == ("tasks/echo/output", "task:echo", b"d")
        assert devices.sent == [("d", b"c", 0)] and flow.table.counters.no_route == 3

    run(rt, tmp_path, [], scenario)


def test_wildcard_topics_are_refused(rt: WasmRuntime, tmp_path: Path) -> None:
    async def scenario(co: Coordinator, flow: EventFlow, devices: Devices, clock: Clock) -> None:
        with pytest.raises(BadRequest, match="topic"):
            flow.publish("a/+", b"", "http")

    run(rt, tmp_path, [], scenario)


def test_unknown_task_and_missing_uplink_are_counted_drops(rt: WasmRuntime, tmp_path: Path) -> None:
    routes = [{"id": "a", "filter": "x", "destination": "task:ghost"},
              {"id": "b", "filter": "x", "destination": "shadow:thermostat"}]

    async def scenario(co: Coordinator, flow: EventFlow, devices: Devices, clock: Clock) -> None:
        assert flow.publish("x", b"1", "http").to_dict() == {"routes": 2, "delivered": 0, "queued": 0, "dropped": 2}
        assert flow.counters["dropped:unknown_task"] == 1
        assert flow.counters["dropped:no_shadow_service"] == 1

    run(rt, tmp_path, routes, scenario)


def test_a_loop_of_routes_is_cut_at_max_hops(rt: WasmRuntime, tmp_path: Path) -> None:
    routes = [{"id": "start", "filter": "go", "destination": "task:echo"},
              {"id": "loop", "filter": "tasks/echo/output", "destination": "task:echo"}]

    async def scenario(co: Coordinator, flow: EventFlow, devices: Devices, clock: Clock) -> None:
        flow.publish("go", b"ping", "http")
        for _ in range(200):
            await settle(co)
            if flow.counters["dropped:max_hops"]:
                break
            await asyncio.sleep(0.005)
        assert flow.counters["dropped:max_hops"] == 1
        assert co.metrics.executions[("echo", "succeeded")] == 4  # hops 1, 2, 3, then cut

    run(rt, tmp_path, routes, scenario)


def test_durable_route_keeps_refused_events_and_delivers_them_in_order(rt: WasmRuntime, tmp_path: Path) -> None:
    routes = [{"id": "keep", "filter": "m/+", "destination": "device:bill/{2}", "durable": True},
              {"id": "lossy", "filter": "m/+", "destination": "device:screen/{2}"}]

    async def scenario(co: Coordinator, flow: EventFlow, devices: Devices, clock: Clock) -> None:
        devices.refuse = True
        for n in range(3):
            assert flow.publish(f"m/{n}", b"%d" % n, "device:m").to_dict() == {
                "routes": 2, "delivered": 0, "queued": 1, "dropped": 1}
        assert flow.counters["queued:device_buffer_full"] == 3
        assert flow.counters["dropped:device_buffer_full"] == 3
        assert flow.drain() == 0  # still refused: nothing lost, nothing reordered
        devices.refuse = False
        assert flow.drain() == 3
        assert devices.sent == [(f"bill/{n}", b"%d" % n, 1) for n in range(3)]
        assert flow.durable.stats()["events"] == 0

    run(rt, tmp_path, routes, scenario)


def test_durable_events_expire_after_their_ttl(rt: WasmRuntime, tmp_path: Path) -> None:
    routes = [{"id": "keep", "filter": "m", "destination": "device:bill", "durable": True}]

    async def scenario(co: Coordinator, flow: EventFlow, devices: Devices, clock: Clock) -> None:
        devices.refuse = True
        flow.publish("m", b"old", "http")
        clock.now += 61  # past the queue's 60 s TTL
        devices.refuse = False
        assert flow.drain() == 0
        assert devices.sent == []
        assert flow.counters["dropped:expired"] == 1

    run(rt, tmp_path, routes, scenario)


def test_a_full_task_queue_sends_durable_events_to_disk_not_to_nowhere(rt: WasmRuntime, tmp_path: Path) -> None:
    routes = [{"id": "work", "filter": "job", "destination": "task:slow", "durable": True}]

    async def scenario(co: Coordinator, flow: EventFlow, devices: Devices, clock: Clock) -> None:
        co.register_compiled(co.compile(parse_manifest(
            {"name": "slow", "kind": "command", "max_concurrency": 1, "limits": {"timeout_ms": 200}}),
            command_wasm("loop")))
        outcomes = [flow.publish("job", b"", "http").to_dict() for _ in range(4)]
        # one runs, max_queue (2) wait, the fourth would be refused: it is kept instead
        assert [o["delivered"] for o in outcomes] == [1, 1, 1, 0]
        assert outcomes[3]["queued"] == 1 and flow.durable.stats()["events"] == 1
        for _ in range(400):
            await asyncio.sleep(0.01)
            if flow.durable.stats()["events"] == 0 and not co.resources.in_flight:
                break
        flow.drain()
        await settle(co)
        assert co.metrics.executions[("slow", "timed_out")] == 4

    run(rt, tmp_path, routes, scenario, max_queue=2)


def test_subscribers_see_events_and_device_bound_messages(rt: WasmRuntime, tmp_path: Path) -> None:
    routes = [{"id": "fan", "filter": "in/#", "destination": "device:out/{topic}"}]

    async def scenario(co: Coordinator, flow: EventFlow, devices: Devices, clock: Clock) -> None:
        everything = flow.subscribe("#", size=10)
        outs = flow.subscribe("out/#", size=1)
        flow.publish("in/a", b"1", "http")
        flow.publish("in/b", b"2", "http")
        got = [everything.queue.get_nowait() for _ in range(everything.queue.qsize())]
        assert got == [("in/a", "http", b"1"), ("out/in/a", "hub", b"1"), ("in/b", "http", b"2"),
                       ("out/in/b", "hub", b"2")]
        assert outs.queue.qsize() == 1 and outs.dropped == 1  # a slow client loses events, not the hub memory
        flow.unsubscribe(everything)
        flow.publish("in/c", b"3", "http")
        assert everything.queue.qsize() == 0
        with pytest.raises(BadRequest):
            flow.subscribe("a/#/b")

    run(rt, tmp_path, routes, scenario)
