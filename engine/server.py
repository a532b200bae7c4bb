"""Starting and stopping a hub: coordinator + HTTP interface on one event loop."""
from __future__ import annotations

import asyncio
import logging
import signal
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiohttp import web

from .comms.mqtt import MqttBridge, MqttSettings
from .config import HubConfig
from .coordinator import Coordinator
from .errors import BadRequest, WasmyardError
from .events.durable import DurableQueue
from .events.flow import EventFlow
from .http.app import create_app, request_handler
from .routing.route import RouteError
from .routing.table import RoutingTable
from .shadows import ShadowStore

__all__ = ["Hub", "start_hub", "run_forever", "use_uvloop"]

log = logging.getLogger("wasmyard.server")


def use_uvloop() -> bool:
    """Install uvloop's event loop policy where it is available."""
    try:
        import uvloop
    except ImportError:
        return False
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    return True


@dataclass
class Hub:
    coordinator: Coordinator
    flow: EventFlow
    bridge: MqttBridge | None
    runner: web.AppRunner | None
    url: str

    async def aclose(self) -> None:
        """Stop taking requests and device messages, finish the accepted
        executions (what they route onwards to durable routes is kept), then
        close the event flow's stores."""
        if self.runner is not None:
            await self.runner.cleanup()
            self.runner = None
        if self.bridge is not None:
            await self.bridge.aclose()
        await self.coordinator.aclose()
        await self.flow.aclose()


def _routing_table(config: HubConfig) -> RoutingTable:
    try:
        return RoutingTable.from_dicts(config.routes)
    except RouteError as exc:
        raise BadRequest(f"config: {exc}") from None


def _mqtt_settings(raw: dict[str, Any]) -> MqttSettings:
    raw = dict(raw)
    if "subscriptions" in raw:
        raw["subscriptions"] = [tuple(s) if isinstance(s, list) else (s, 1) for s in raw["subscriptions"]]
    try:
        return MqttSettings(**raw)
    except TypeError as exc:
        raise BadRequest(f"[mqtt]: {exc}") from None


async def start_hub(config: HubConfig, host: str | None = None, port: int | None = None) -> Hub:
    """Coordinator, event flow, MQTT bridge (when configured) and HTTP interface."""
    settings = config.hub
    events = config.events
    table = _routing_table(config)
    mqtt = dict(config.mqtt) if config.mqtt is not None else None
    device_level = int(mqtt.pop("device_level", 2)) if mqtt is not None else 2
    coordinator = Coordinator(settings)
    durable = shadows = None
    try:
        for path in config.manifests:
            coordinator.load_manifest_file(path)
        durable = DurableQueue(Path(settings.state_dir) / "events.sqlite", events.durable_max_events,
                               events.durable_max_mib << 20, events.durable_ttl_s)
        shadows = ShadowStore(Path(settings.state_dir) / "shadows.sqlite")
    except BaseException:
        for store in (durable, shadows):
            if store is not None:
                store.close()
        await coordinator.aclose()
        raise
    bridge = None
    if mqtt is not None:
        bridge = MqttBridge(_mqtt_settings(mqtt), lambda topic, payload, qos: _from_device(
            flow, device_level, topic, payload))
    flow = EventFlow(coordinator, table, devices=bridge, durable=durable, shadows=shadows,
                     cloud_prefix=events.cloud_prefix, max_hops=events.max_hops)
    hub = Hub(coordinator, flow, bridge, None, "")
    try:
        await flow.start()
        if bridge is not None:
            await bridge.start()
        app = create_app(coordinator, flow)
        hub.runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await hub.runner.setup()
        assert hub.runner.server is not None
        hub.runner.server.request_handler = request_handler(app)
        site = web.TCPSite(hub.runner, host or settings.host, settings.port if port is None else port)
        await site.start()
    except BaseException:
        await hub.aclose()
        raise
    sockname = hub.runner.addresses[0]
    hub.url = f"http://{sockname[0]}:{sockname[1]}"
    return hub


def _from_device(flow: EventFlow, device_level: int, topic: str, payload: bytes) -> None:
    """An MQTT message is an event from ``device:<id>``, the id being one level of its topic."""
    levels = topic.split("/")
    device = levels[device_level - 1] if 0 < device_level <= len(levels) else "unknown"
    try:
        flow.publish(topic, payload, f"device:{device}")
    except WasmyardError as exc:
        log.warning("device message refused topic=%s reason=%s", topic, exc.message)


async def run_forever(config: HubConfig, host: str | None, port: int | None) -> None:
    hub = await start_hub(config, host, port)
    names = ", ".join(sorted(hub.coordinator.tasks)) or "none"
    print(f"wasmyard coordinator listening on {hub.url} (tasks: {names})", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        print("wasmyard coordinator stopping", flush=True)
        await hub.aclose()
