"""Hub configuration: a TOML file, or the embedded default (no file needed).

The embedded default (``engine/default_hub.toml``) loads the example tasks that
ship in the ``wasm_tasks`` package, so ``wasmyard run`` on a fresh machine has
something to invoke.
"""
from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field, fields
from importlib import resources
from pathlib import Path
from typing import Any

from .errors import BadRequest

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

__all__ = ["HubSettings", "EventSettings", "HubConfig", "load_config", "example_manifests", "default_state_dir"]


def default_state_dir() -> Path:
    base = os.environ.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"), ".local", "state")
    return Path(base) / "wasmyard"


@dataclass
class HubSettings:
    host: str = "127.0.0.1"
    port: int = 8080
    state_dir: Path = field(default_factory=default_state_dir)
    max_queue: int = 1024
    max_in_flight: int = 64
    memory_budget_mib: int = 2048
    max_body_kib: int = 1024
    inline_threshold_us: int = 500
    workers: int = 0
    history: int = 10_000
    max_instances: int = 512

    @property
    def worker_threads(self) -> int:
        return self.workers or max(4, 2 * (os.cpu_count() or 1))


@dataclass
class EventSettings:
    max_hops: int = 8
    cloud_prefix: str = "cloud"
    durable_max_events: int = 100_000
    durable_max_mib: int = 64
    durable_ttl_s: int = 86_400


@dataclass
class HubConfig:
    hub: HubSettings = field(default_factory=HubSettings)
    manifests: list[Path] = field(default_factory=list)
    routes: list[dict[str, Any]] = field(default_factory=list)
    events: EventSettings = field(default_factory=EventSettings)
    #: The MQTT bridge's settings ([mqtt] table); None: no broker, the bridge is off.
    mqtt: dict[str, Any] | None = None


def example_manifests() -> list[Path]:
    """Manifests of the example tasks bundled with the package."""
    import wasm_tasks

    return sorted(p for root in wasm_tasks.__path__ for p in Path(root).glob("*/task.toml"))


def _table(cls: type, raw: Any, section: str, base: Path) -> Any:
    """Fill dataclass ``cls`` from a TOML table: known keys only, types as declared."""
    if not isinstance(raw, dict):
        raise BadRequest(f"[{section}] must be a table")
    known = {f.name: f for f in fields(cls)}
    unknown = sorted(set(raw) - set(known))
    if unknown:
        raise BadRequest(f"unknown key(s) in [{section}]: {', '.join(unknown)}")
    settings = cls()
    for key, value in raw.items():
        current = getattr(settings, key)
        if key == "state_dir":
            value = (base / os.path.expanduser(str(value))).resolve()
        elif isinstance(current, str):
            if not isinstance(value, str):
                raise BadRequest(f"[{section}] {key} must be a string, got {value!r}")
        elif not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise BadRequest(f"[{section}] {key} must be a non-negative integer, got {value!r}")
        setattr(settings, key, value)
    return settings


def load_config(path: str | os.PathLike[str] | None = None) -> HubConfig:
    """Read a hub config file; without a path, the embedded default."""
    if path is None:
        text = resources.files("engine").joinpath("default_hub.toml").read_text()
        base = Path.cwd()
    else:
        path = Path(path)
        try:
            text = path.read_text()
        except OSError as exc:
            raise BadRequest(f"cannot read config {path}: {exc.strerror}") from None
        base = path.parent
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise BadRequest(f"config {path or 'default'} is not valid TOML: {exc}") from None
    unknown = sorted(set(raw) - {"hub", "tasks", "examples", "routes", "events", "mqtt"})
    if unknown:
        raise BadRequest(f"unknown section(s) in config: {', '.join(unknown)}")
    config = HubConfig(hub=_table(HubSettings, raw.get("hub", {}), "hub", base),
                       events=_table(EventSettings, raw.get("events", {}), "events", base))
    routes = raw.get("routes", [])
    if not isinstance(routes, list) or not all(isinstance(r, dict) for r in routes):
        raise BadRequest("[[routes]] entries must be tables")
    config.routes = routes
    if "mqtt" in raw:
        if not isinstance(raw["mqtt"], dict):
            raise BadRequest("[mqtt] must be a table")
        config.mqtt = dict(raw["mqtt"])
    examples = raw.get("examples", False)
    if not isinstance(examples, bool):
        raise BadRequest(f"examples must be true or false, got {examples!r}")
    if examples:
        config.manifests.extend(example_manifests())
    tasks = raw.get("tasks", [])
    if not isinstance(tasks, list):
        raise BadRequest("tasks must be a list of [[tasks]] tables")
    for entry in tasks:
        if not isinstance(entry, dict) or not isinstance(entry.get("manifest"), str):
            raise BadRequest("each [[tasks]] entry needs a 'manifest' path")
        config.manifests.append((base / entry["manifest"]).resolve())
    return config
