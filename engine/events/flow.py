"""The event flow: every input goes to the destinations the routing table names.

Inputs are device messages (MQTT), HTTP events, task outputs, task
publishes and shadow updates; destinations are tasks, device topics (MQTT
and WebSocket subscribers), the cloud uplink and shadows.  A shadow update
is announced as events on ``$shadow/<name>/update/accepted`` and, while the
desired state differs from the reported one, ``$shadow/<name>/update/delta``.  The decisions — which routes an
event takes — are the routing table's, made without I/O; this module only
carries them out, and counts what happened to every event.

Loops are bounded: an event made by a task inherits the hop count of the
execution that made it, plus one, and an event past ``max_hops`` is dropped
and counted, so a route table that sends a task's output back to itself
cannot spin forever.  Durable routes persist what a destination could not
take right now and deliver it later, oldest first.
"""
from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from typing import Any, Callable, Protocol

import orjson

import fastpath

from ..coordinator import Coordinator
from ..errors import BadRequest, HostError, Overloaded, UnknownTask, WasmyardError
from ..execution import Execution
from ..routing.route import Route
from ..routing.table import RoutingTable
from ..runtime import Outcome
from ..shadows import ShadowStore

__all__ = ["EventFlow", "Publisher", "Delivery"]

log = logging.getLogger("wasmyard.events")


class Publisher(Protocol):
    """The device side (the MQTT bridge): never blocks, False when it cannot take more."""

    def publish(self, topic: str, payload: bytes, qos: int = 0, retain: bool = False) -> bool: ...


_MAX_REMEMBERED = 4096


class Delivery:
    """What one event did: routes it took and what became of each destination."""

    __slots__ = ("routes", "delivered", "queued", "dropped")

    def __init__(self) -> None:
        self.routes = 0
        self.delivered = 0
        self.queued = 0
        self.dropped = 0

    def to_dict(self) -> dict[str, int]:
        return {"routes": self.routes, "delivered": self.delivered, "queued": self.queued, "dropped": self.dropped}


class _Subscriber:
    """A WebSocket client: a bounded queue; when it is full the client loses events, not the hub memory."""

    __slots__ = ("filter", "queue", "dropped")

    def __init__(self, topic_filter: str, size: int) -> None:
        self.filter = topic_filter
        self.queue: asyncio.Queue[tuple[str, str, bytes]] = asyncio.Queue(size)
        self.dropped = 0

    def offer(self, topic: str, source: str, payload: bytes) -> None:
        try:
            self.queue.put_nowait((topic, source, payload))
        except asyncio.QueueFull:
            self.dropped += 1


class EventFlow:
    def __init__(
        self,
        coordinator: Coordinator,
        table: RoutingTable | None = None,
        *,
        devices: Publisher | None = None,
        durable: Any = None,
        shadows: ShadowStore | None = None,
        cloud_prefix: str = "cloud",
        max_hops: int = 8,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.coordinator = coordinator
        self.table = table if table is not None else RoutingTable(())
        self.devices = devices
        self.durable = durable
        self.shadows = shadows
        self.cloud_prefix = cloud_prefix
        self.max_hops = max_hops
        self.clock = clock
        self.counters: Counter[str] = Counter()
        self._subscribers = fastpath.TopicRouter()
        self._listens: dict[str, bool] = {}  # _listened's answers for the current table
        self._task_names: dict[str, tuple[str, str]] = {}  # task -> (its event source, its output topic)
        self._wake = asyncio.Event()
        # Whether the durable queue may hold events: kept in memory so that the
        # hot path never asks SQLite (set on persist and at start, cleared by a drain that empties it).
        self._durable_pending = False
        self._drainer: asyncio.Task[None] | None = None
        coordinator.finished_hooks.append(self._execution_finished)
        metrics = coordinator.metrics
        metrics.family("wasmyard_events_total", "Events by what happened to them (in:<source>, "
                       "dropped:<reason>, queued:<reason>, delivered:durable).", "outcome", self.counters.copy)
        metrics.family("wasmyard_routing_total", "Routing table decisions.", "decision",
                       lambda: self.table.counters.as_dict())
        if devices is not None and hasattr(devices, "stats"):
            metrics.family("wasmyard_mqtt", "MQTT bridge state and message counts.", "stat", devices.stats)
        if durable is not None:
            metrics.family("wasmyard_durable", "Durable route queue: held events and bytes, its caps, and "
                           "totals expired, rejected (cap) and delivered.", "stat", durable.stats)

    # -- the table ----------------------------------------------------------

    def swap(self, table: RoutingTable) -> None:
        """Replace the whole table at once; counters carry over."""
        table.counters = self.table.counters
        self.table = table
        self._listens.clear()

    def _listened(self, topic: str) -> bool:
        """Whether any route's filter takes ``topic``; remembered per table.
        Most tasks' outputs go nowhere but back to their caller, and every
        execution asks this."""
        known = self._listens.get(topic)
        if known is None:
            if len(self._listens) >= _MAX_REMEMBERED:
                self._listens.clear()
            known = self._listens[topic] = self.table.listens(topic)
        return known

    # -- ingress ------------------------------------------------------------

    def publish(self, topic: str, payload: bytes, source: str, hops: int = 0) -> Delivery:
        """Route one event now.  BadRequest for a topic name with wildcards."""
        try:
            fastpath.validate_topic(topic)
        except ValueError as exc:
            raise BadRequest(f"topic {topic!r}: {exc}") from None
        self.counters[f"in:{source.partition(':')[0]}"] += 1
        return self._route(topic, payload, source, hops)

    def _route(self, topic: str, payload: bytes, source: str, hops: int) -> Delivery:
        """``publish`` for a topic already known to be valid and an event already counted."""
        delivery = Delivery()
        if hops > self.max_hops:
            self.counters["dropped:max_hops"] += 1
            delivery.dropped += 1
            return delivery
        if len(self._subscribers):
            for sub in self._subscribers.match(topic):
                sub.offer(topic, source, payload)
        routes = self.table.match(source, topic, payload)
        delivery.routes = len(routes)
        for route in routes:
            outcome = self._deliver(route, topic, payload, source, hops)
            if outcome is None:
                delivery.delivered += 1
            elif route.durable and self.durable is not None:
                self._persist(route, topic, payload, source, outcome, delivery)
            else:
                self.counters[f"dropped:{outcome}"] += 1
                delivery.dropped += 1
        return delivery

    def _deliver(self, route: Route, topic: str, payload: bytes, source: str, hops: int) -> str | None:
        """Hand an event to one destination: None when it took it, else why not."""
        dest = route.destination
        kind = dest.kind
        if kind == "task":
            try:
                # the hop count goes in before it may run (and finish) inline
                self.coordinator.submit(dest.target, payload, route.priority or None, hops + 1)
            except Overloaded as exc:  # queue full, or the hub shutting down
                return exc.code
            except UnknownTask:
                return "unknown_task"
            except WasmyardError as exc:
                return exc.code
            return None
        if kind == "device":
            return self._to_device(dest.render(topic, source), payload, qos=1 if route.durable else 0)
        if kind == "cloud":
            if self.devices is None:
                return "no_uplink"
            return None if self.devices.publish(f"{self.cloud_prefix}/{topic}", payload, 1) else "uplink_full"
        if self.shadows is None:
            return "no_shadow_service"
        try:
            doc = orjson.loads(payload)
        except orjson.JSONDecodeError:
            return "shadow_not_json"
        # A full update document, or (what devices usually send) just their reported state.
        request = doc if isinstance(doc, dict) and "state" in doc else {"state": {"reported": doc}}
        try:
            self.update_shadow(dest.target, request, hops)
        except WasmyardError as exc:
            self._route(f"$shadow/{dest.target}/update/rejected", orjson.dumps({"error": exc.to_dict()}),
                        "shadow", hops + 1)
            return "shadow_rejected"
        return None

    def update_shadow(self, name: str, request: Any, hops: int = 0) -> dict[str, Any]:
        """Apply a shadow update and announce it: ``$shadow/<name>/update/accepted``, and
        ``$shadow/<name>/update/delta`` while desired and reported differ (devices route on these)."""
        if self.shadows is None:
            raise HostError("this hub has no shadow service")
        accepted, diff = self.shadows.update(name, request, self.clock())
        self.counters["in:shadow"] += 1
        self._route(f"$shadow/{name}/update/accepted", orjson.dumps(accepted), "shadow", hops + 1)
        if diff:
            self._route(f"$shadow/{name}/update/delta",
                        orjson.dumps({"state": diff, "version": accepted["version"]}), "shadow", hops + 1)
        return accepted

    def _to_device(self, topic: str, payload: bytes, qos: int) -> str | None:
        taken = False
        if len(self._subscribers):
            for sub in self._subscribers.match(topic):
                sub.offer(topic, "hub", payload)
                taken = True
        if self.devices is not None:
            if self.devices.publish(topic, payload, qos):
                return None
            return "device_buffer_full"
        return None if taken else "no_device_link"

    # -- task outputs and publishes -------------------------------------------

    def _execution_finished(self, execution: Execution, outcome: Outcome) -> None:
        """Route what an execution published, then its output (once per execution: kept lean)."""
        names = self._task_names.get(execution.task)
        if names is None:
            task = execution.task
            names = self._task_names[task] = ("task:" + task, "tasks/" + task + "/output")
        source, output_topic = names
        hops = execution.hops
        published = outcome.published
        if published:
            for topic, payload in published:
                try:
                    self.publish(topic, payload, source, hops)
                except BadRequest:  # the host refuses wildcards; other invalid names end here
                    self.counters["dropped:bad_topic"] += 1
        if outcome.error is None:
            self.counters["in:task"] += 1
            if len(self._subscribers) or hops > self.max_hops or self._listened(output_topic):
                self._route(output_topic, outcome.output, source, hops)
            else:  # no route's filter takes it: what _route would conclude, without its work
                self.table.counters.no_route += 1
        if self._durable_pending:
            self._wake.set()

    # -- durable delivery ---------------------------------------------------

    def _persist(self, route: Route, topic: str, payload: bytes, source: str, reason: str, delivery: Delivery) -> None:
        try:
            self.durable.put(route.destination.text, route.id, topic, source, payload, self.clock())
        except Overloaded:
            self.counters["dropped:durable_full"] += 1
            delivery.dropped += 1
            return
        self.counters[f"queued:{reason}"] += 1
        delivery.queued += 1
        self._durable_pending = True
        self._wake.set()

    async def start(self) -> None:
        if self.durable is not None and self._drainer is None:
            self._durable_pending = self.durable.stats()["events"] > 0
            self._drainer = asyncio.get_running_loop().create_task(self._drain_forever(), name="wasmyard-durable")

    async def _drain_forever(self, idle_s: float = 1.0) -> None:
        while True:
            try:
                await asyncio.wait_for(self._wake.wait(), idle_s)
            except asyncio.TimeoutError:
                pass
            self._wake.clear()
            if not self._durable_pending:
                continue
            try:
                self.drain()
            except Exception:  # a broken store must not kill delivery for good
                log.exception("durable delivery failed")

    def drain(self, batch: int = 256) -> int:
        """Deliver what durable routes kept, oldest first; stop a destination at its first refusal."""
        now = self.clock()
        expired = self.durable.expire(now)
        if expired:
            self.counters["dropped:expired"] += expired
        delivered = 0
        for destination in self.durable.destinations():
            events = self.durable.peek(destination, batch, now)
            done = []
            for event in events:
                route = self.table.get(event.route_id)
                if route is None:  # the route is gone: its events go where it pointed
                    route = Route(event.route_id, "#", destination, durable=True)
                if self._deliver(route, event.topic, event.payload, event.source, 0) is not None:
                    self.durable.nack([event.id], now)
                    break
                done.append(event.id)
            if done:
                self.durable.ack(done)
                delivered += len(done)
        self.counters["delivered:durable"] += delivered
        self._durable_pending = self.durable.stats()["events"] > 0
        return delivered

    # -- WebSocket subscribers -------------------------------------------------

    def subscribe(self, topic_filter: str, size: int = 1024) -> _Subscriber:
        try:
            fastpath.validate_filter(topic_filter)
        except ValueError as exc:
            raise BadRequest(f"filter {topic_filter!r}: {exc}") from None
        sub = _Subscriber(topic_filter, size)
        self._subscribers.subscribe(topic_filter, sub)
        return sub

    def unsubscribe(self, sub: _Subscriber) -> None:
        self._subscribers.unsubscribe(sub.filter, sub)

    def stats(self) -> dict[str, Any]:
        out: dict[str, Any] = {"counters": dict(self.counters), "routing": self.table.counters.as_dict(),
                               "table_size": len(self.table), "subscribers": len(self._subscribers)}
        if self.durable is not None:
            out["durable"] = self.durable.stats()
        return out

    async def aclose(self) -> None:
        if self._drainer is not None:
            self._drainer.cancel()
            try:
                await self._drainer
            except asyncio.CancelledError:
                pass
            self._drainer = None
        if self.durable is not None:
            self.durable.close()
        if self.shadows is not None:
            self.shadows.close()
