"""Running a Coordinator inside one test: register tasks, run a scenario, close."""
from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from engine.config import HubSettings
from engine.coordinator import Coordinator, TaskEntry
from engine.manifest import parse_manifest
from engine.runtime import WasmRuntime


def add(co: Coordinator, name: str, kind: str, wasm: bytes, **fields: Any) -> TaskEntry:
    return co.register_compiled(co.compile(parse_manifest({"name": name, "kind": kind, **fields}), wasm))


def on_hub(rt: WasmRuntime, tmp_path: Path, scenario: Callable[[Coordinator], Awaitable[Any]],
           **settings: Any) -> Any:
    """Run ``scenario(coordinator)`` on a fresh event loop with a fresh Coordinator on ``rt``."""
    async def main() -> Any:
        co = Coordinator(HubSettings(state_dir=tmp_path, workers=4, **settings), runtime=rt)
        try:
            return await scenario(co)
        finally:
            await co.aclose()

    return asyncio.run(main())
