"""Starting and stopping a hub: coordinator + HTTP interface on one event loop."""
from __future__ import annotations

import asyncio
import logging
import signal
from dataclasses import dataclass

from aiohttp import web

from .config import HubConfig
from .coordinator import Coordinator
from .http.app import create_app

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
    runner: web.AppRunner
    url: str

    async def aclose(self) -> None:
        await self.runner.cleanup()
        await self.coordinator.aclose()


async def start_hub(config: HubConfig, host: str | None = None, port: int | None = None) -> Hub:
    settings = config.hub
    coordinator = Coordinator(settings)
    try:
        for path in config.manifests:
            coordinator.load_manifest_file(path)
        runner = web.AppRunner(create_app(coordinator), access_log=None, handle_signals=False)
        await runner.setup()
        site = web.TCPSite(runner, host or settings.host, settings.port if port is None else port)
        await site.start()
    except BaseException:
        await coordinator.aclose()
        raise
    sockname = runner.addresses[0]
    url = f"http://{sockname[0]}:{sockname[1]}"
    return Hub(coordinator, runner, url)


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
