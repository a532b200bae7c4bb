"""Task manifests: what a task is allowed to be, checked before anything runs.

A manifest arrives as TOML (files in ``wasm_tasks/``) or JSON (``PUT /tasks``).
Parsing is strict: unknown keys are rejected, so a typo such as ``memroy_mib``
fails loudly instead of silently running with the default limit.
"""
from __future__ import annotations

import re
import sys
from dataclasses import dataclass, field
from typing import Any, Mapping

import orjson

from .errors import InvalidManifest

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

__all__ = [
    "Limits", "DirGrant", "Permissions", "Manifest", "parse_manifest", "decode_manifest", "manifest_from_dict",
    "KINDS", "ISOLATIONS",
]

NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")
KINDS = ("command", "handler")
ISOLATIONS = ("per-execution", "pooled")
MAX_MEMORY_MIB = 4096
MAX_TIMEOUT_MS = 3_600_000


@dataclass(frozen=True, slots=True)
class Limits:
    memory_mib: int = 16
    timeout_ms: int = 1000
    fuel: int | None = None
    max_output_kib: int = 1024
    max_input_kib: int = 1024
    # Derived once here: the hot path reads them on every execution.
    memory_bytes: int = field(init=False, repr=False, compare=False)
    max_output_bytes: int = field(init=False, repr=False, compare=False)
    max_input_bytes: int = field(init=False, repr=False, compare=False)
    timeout_s: float = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        set_ = object.__setattr__
        set_(self, "memory_bytes", self.memory_mib << 20)
        set_(self, "max_output_bytes", self.max_output_kib << 10)
        set_(self, "max_input_bytes", self.max_input_kib << 10)
        set_(self, "timeout_s", self.timeout_ms / 1000.0)


@dataclass(frozen=True, slots=True)
class DirGrant:
    host: str
    guest: str
    mode: str = "ro"


@dataclass(frozen=True, slots=True)
class Permissions:
    env: tuple[tuple[str, str], ...] = ()
    dirs: tuple[DirGrant, ...] = ()


@dataclass(frozen=True, slots=True)
class Manifest:
    name: str
    kind: str
    version: str = "0.0.0"
    module: str | None = None
    description: str = ""
    priority: int = 0
    max_concurrency: int = 4
    isolation: str = "per-execution"
    limits: Limits = field(default_factory=Limits)
    permissions: Permissions = field(default_factory=Permissions)

    def to_dict(self) -> dict[str, Any]:
        lim = self.limits
        limits: dict[str, Any] = {
            "memory_mib": lim.memory_mib,
            "timeout_ms": lim.timeout_ms,
            "max_output_kib": lim.max_output_kib,
            "max_input_kib": lim.max_input_kib,
        }
        if lim.fuel is not None:
            limits["fuel"] = lim.fuel
        return {
            "name": self.name,
            "version": self.version,
            "kind": self.kind,
            "description": self.description,
            "priority": self.priority,
            "max_concurrency": self.max_concurrency,
            "isolation": self.isolation,
            "limits": limits,
            "permissions": {
                "env": dict(self.permissions.env),
                "dirs": [{"host": d.host, "guest": d.guest, "mode": d.mode} for d in self.permissions.dirs],
            },
        }


_TOP_KEYS = {"name", "version", "kind", "module", "description", "priority", "max_concurrency",
             "isolation", "limits", "permissions"}
_LIMIT_KEYS = {"memory_mib", "timeout_ms", "fuel", "max_output_kib", "max_input_kib"}
_PERM_KEYS = {"env", "dirs"}


def _int(d: Mapping[str, Any], key: str, default: int | None, lo: int, hi: int) -> int | None:
    value = d.get(key, default)
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool):
        raise InvalidManifest(f"{key} must be an integer, got {value!r}")
    if not lo <= value <= hi:
        raise InvalidManifest(f"{key} must be between {lo} and {hi}, got {value}")
    return value


def _only(d: Mapping[str, Any], allowed: set[str], where: str) -> None:
    unknown = sorted(set(d) - allowed)
    if unknown:
        raise InvalidManifest(f"unknown key(s) in {where}: {', '.join(unknown)}")


def _permissions(raw: Any) -> Permissions:
    if raw is None:
        return Permissions()
    if not isinstance(raw, dict):
        raise InvalidManifest("permissions must be a table")
    _only(raw, _PERM_KEYS, "permissions")
    env = raw.get("env", {})
    if not isinstance(env, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in env.items()):
        raise InvalidManifest("permissions.env must map names to string values")
    dirs = []
    raw_dirs = raw.get("dirs", [])
    if not isinstance(raw_dirs, list):
        raise InvalidManifest("permissions.dirs must be a list of {host, guest, mode} tables")
    for item in raw_dirs:
        if not isinstance(item, dict) or not isinstance(item.get("host"), str) or not isinstance(item.get("guest"), str):
            raise InvalidManifest("each permissions.dirs entry needs string 'host' and 'guest'")
        _only(item, {"host", "guest", "mode"}, "a permissions.dirs entry")
        mode = item.get("mode", "ro")
        if mode not in ("ro", "rw"):
            raise InvalidManifest(f"permissions.dirs mode must be 'ro' or 'rw', got {mode!r}")
        dirs.append(DirGrant(item["host"], item["guest"], mode))
    return Permissions(env=tuple(sorted(env.items())), dirs=tuple(dirs))


def manifest_from_dict(raw: Any) -> Manifest:
    """Validate a decoded manifest document and build a ``Manifest``."""
    if not isinstance(raw, dict):
        raise InvalidManifest("a manifest must be a table/object")
    _only(raw, _TOP_KEYS, "manifest")
    name = raw.get("name")
    if not isinstance(name, str) or not NAME_RE.fullmatch(name):
        raise InvalidManifest(f"name must match {NAME_RE.pattern}, got {name!r}")
    kind = raw.get("kind")
    if kind not in KINDS:
        raise InvalidManifest(f"kind must be one of {', '.join(KINDS)}, got {kind!r}")
    isolation = raw.get("isolation", "pooled" if kind == "handler" else "per-execution")
    if isolation not in ISOLATIONS:
        raise InvalidManifest(f"isolation must be one of {', '.join(ISOLATIONS)}, got {isolation!r}")
    if isolation == "pooled" and kind != "handler":
        raise InvalidManifest("only handler tasks can be pooled; a command gets a fresh environment each time")
    limits_raw = raw.get("limits", {})
    if not isinstance(limits_raw, dict):
        raise InvalidManifest("limits must be a table")
    _only(limits_raw, _LIMIT_KEYS, "limits")
    limits = Limits(
        memory_mib=_int(limits_raw, "memory_mib", 16, 1, MAX_MEMORY_MIB),  # type: ignore[arg-type]
        timeout_ms=_int(limits_raw, "timeout_ms", 1000, 1, MAX_TIMEOUT_MS),  # type: ignore[arg-type]
        fuel=_int(limits_raw, "fuel", None, 1, 2**62),
        max_output_kib=_int(limits_raw, "max_output_kib", 1024, 1, 1 << 20),  # type: ignore[arg-type]
        max_input_kib=_int(limits_raw, "max_input_kib", 1024, 1, 1 << 20),  # type: ignore[arg-type]
    )
    for key in ("version", "description", "module"):
        if key in raw and not isinstance(raw[key], str):
            raise InvalidManifest(f"{key} must be a string")
    return Manifest(
        name=name,
        kind=kind,
        version=raw.get("version", "0.0.0"),
        module=raw.get("module"),
        description=raw.get("description", ""),
        priority=_int(raw, "priority", 0, -1000, 1000),  # type: ignore[arg-type]
        max_concurrency=_int(raw, "max_concurrency", 4, 1, 4096),  # type: ignore[arg-type]
        isolation=isolation,
        limits=limits,
        permissions=_permissions(raw.get("permissions")),
    )


def decode_manifest(data: bytes | str, fmt: str | None = None) -> Any:
    """Decode TOML or JSON manifest text (``fmt`` guessed when omitted), unvalidated."""
    text = data.decode("utf-8", "replace") if isinstance(data, bytes) else data
    if fmt is None:
        fmt = "json" if text.lstrip().startswith("{") else "toml"
    try:
        return orjson.loads(text) if fmt == "json" else tomllib.loads(text)
    except (orjson.JSONDecodeError, tomllib.TOMLDecodeError) as exc:
        raise InvalidManifest(f"manifest is not valid {fmt.upper()}: {exc}") from None


def parse_manifest(data: bytes | str | Mapping[str, Any], fmt: str | None = None) -> Manifest:
    """Parse and validate a manifest from TOML/JSON text or an already decoded mapping."""
    if isinstance(data, Mapping):
        return manifest_from_dict(dict(data))
    return manifest_from_dict(decode_manifest(data, fmt))
