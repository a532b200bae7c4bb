"""Compiling modules, and keeping the compiled code across restarts.

A compiled artifact only loads into an Engine with the same settings and the
same wasmtime version, so the cache key is the module's sha256 plus both.
Files are written to a temporary name and renamed, so a crash mid-write never
leaves a truncated artifact for the next start to trust.
"""
from __future__ import annotations

import hashlib
import logging
import os
import tempfile
from importlib.metadata import version
from pathlib import Path

import wasmtime

from ..errors import InvalidModule

__all__ = ["ModuleCache", "sha256_hex"]

log = logging.getLogger("wasmyard.runtime")

WASMTIME_VERSION = version("wasmtime")


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class ModuleCache:
    def __init__(self, engine: wasmtime.Engine, settings_tag: str, directory: Path | None) -> None:
        self._engine = engine
        self._tag = f"wasmtime{WASMTIME_VERSION}-{settings_tag}"
        self._dir = directory
        if directory is not None:
            directory.mkdir(parents=True, exist_ok=True)
        self.hits = 0
        self.misses = 0

    def _path(self, digest: str) -> Path | None:
        return None if self._dir is None else self._dir / f"{digest}-{self._tag}.cwasm"

    def load(self, wasm: bytes, digest: str | None = None) -> wasmtime.Module:
        """Compile ``wasm`` (or load its cached artifact); InvalidModule on bad bytes."""
        digest = digest or sha256_hex(wasm)
        path = self._path(digest)
        if path is not None and path.exists():
            try:
                module = wasmtime.Module.deserialize_file(self._engine, str(path))
                self.hits += 1
                return module
            except wasmtime.WasmtimeError as exc:  # stale or damaged: recompile
                log.warning("discarding cached module path=%s reason=%s", path, exc)
                path.unlink(missing_ok=True)
        try:
            module = wasmtime.Module(self._engine, wasm)
        except wasmtime.WasmtimeError as exc:
            raise InvalidModule(f"not a valid WebAssembly module: {_first_line(exc)}") from None
        self.misses += 1
        if path is not None:
            fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
            with os.fdopen(fd, "wb") as f:
                f.write(module.serialize())
            os.replace(tmp, path)
        return module


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return " ".join(text.split("\n")[:3]) if text else type(exc).__name__
