"""The wasmtime side of the hub: engines, linkers, compiled tasks.

Two Engines at most: fuel metering changes the generated code (+37% on
call-heavy guests, measured), so only tasks that ask for fuel pay for it.
Each Engine has exactly one Linker, shared by every task compiled for it, with
WASI and the ``wasmyard`` host imports defined once.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import wasmtime

from ..errors import InvalidModule
from ..manifest import Manifest
from .host import define_host_imports
from .capi import use_pooling_allocator
from .modules import ModuleCache, sha256_hex
from .watchdog import Ticker

__all__ = ["CompiledTask", "WasmRuntime", "HANDLER_EXPORTS"]

HANDLER_EXPORTS = ("memory", "wy_abi_version", "wy_alloc", "wy_handle")
ALLOWED_IMPORT_MODULES = ("wasi_snapshot_preview1", "wasmyard")


@dataclass(eq=False)
class CompiledTask:
    manifest: Manifest
    digest: str
    size: int
    module: wasmtime.Module
    pre: wasmtime.InstancePre
    engine: wasmtime.Engine
    uses_host: bool = False
    """Whether the module imports ``wasmyard.*``: only then does a run need its host-import sink."""

    @property
    def name(self) -> str:
        return self.manifest.name


class _EngineSet:
    def __init__(self, fuel: bool, cache_dir: Path | None, instances: int, max_memory_mib: int) -> None:
        config = wasmtime.Config()
        config.epoch_interruption = True
        config.consume_fuel = fuel
        config.cranelift_opt_level = "speed"
        use_pooling_allocator(config, instances, max_memory_mib << 20)
        self.engine = wasmtime.Engine(config)
        self.linker = wasmtime.Linker(self.engine)
        self.linker.define_wasi()
        define_host_imports(self.linker)
        tag = hashlib.sha256(f"epoch=1;fuel={int(fuel)};opt=speed;alloc=pool".encode()).hexdigest()[:12]
        self.cache = ModuleCache(self.engine, tag, cache_dir)

    def close(self) -> None:
        self.linker.close()
        self.engine.close()


class WasmRuntime:
    """Owns the Engines, the epoch ticker and the on-disk module cache.

    ``instances`` bounds the live instances per Engine (pooled handlers plus
    running commands) and ``max_memory_mib`` the linear memory of any one.
    """

    def __init__(self, cache_dir: Path | None = None, instances: int = 512, max_memory_mib: int = 4096) -> None:
        self.max_memory_mib = max_memory_mib
        self._cache_dir = cache_dir
        self._instances = instances
        # The fuel Engine (and its share of address space) only exists once a task asks for fuel.
        self._sets: dict[bool, _EngineSet] = {False: _EngineSet(False, cache_dir, instances, max_memory_mib)}
        self._engines = [self._sets[False].engine]
        self._ticker = Ticker(self._engines)
        self._closed = False

    def _engine_set(self, fuel: bool) -> _EngineSet:
        engines = self._sets.get(fuel)
        if engines is None:
            engines = self._sets[fuel] = _EngineSet(fuel, self._cache_dir, self._instances, self.max_memory_mib)
            self._engines.append(engines.engine)
        return engines

    def cache_stats(self) -> dict[str, int]:
        return {
            "hits": sum(s.cache.hits for s in self._sets.values()),
            "misses": sum(s.cache.misses for s in self._sets.values()),
        }

    def compile(self, manifest: Manifest, wasm: bytes) -> CompiledTask:
        """Validate, compile (or load from cache) and link a task; InvalidModule says why not."""
        digest = sha256_hex(wasm)
        engines = self._engine_set(manifest.limits.fuel is not None)
        module = engines.cache.load(wasm, digest)
        _check_shape(manifest, module)
        try:
            pre = engines.linker.instantiate_pre(module)
        except wasmtime.WasmtimeError as exc:
            raise InvalidModule(f"task {manifest.name!r} cannot be linked: {str(exc).splitlines()[0]}") from None
        uses_host = any(imp.module == "wasmyard" for imp in module.imports)
        return CompiledTask(manifest, digest, len(wasm), module, pre, engines.engine, uses_host)

    def close(self) -> None:
        """Stop the ticker and drop our references to the Engines, whose pooled
        address space is returned once the last module and store using it go."""
        if self._closed:
            return
        self._closed = True
        self._ticker.close()
        for engines in self._sets.values():
            engines.close()
        self._sets.clear()


def _check_shape(manifest: Manifest, module: wasmtime.Module) -> None:
    exports = {e.name: e.type for e in module.exports}
    for imp in module.imports:
        if imp.module not in ALLOWED_IMPORT_MODULES:
            raise InvalidModule(
                f"task {manifest.name!r} imports {imp.module}.{imp.name}; only "
                f"{' and '.join(ALLOWED_IMPORT_MODULES)} imports are provided"
            )
    for mem_type in list(exports.values()) + [imp.type for imp in module.imports]:
        if isinstance(mem_type, wasmtime.MemoryType):
            minimum = mem_type.limits.min * 65536
            if minimum > manifest.limits.memory_bytes:
                raise InvalidModule(
                    f"task {manifest.name!r} needs {minimum / (1 << 20):g} MiB of memory at start, "
                    f"more than its limit of {manifest.limits.memory_mib} MiB"
                )
    if manifest.kind == "command":
        if not isinstance(exports.get("_start"), wasmtime.FuncType):
            raise InvalidModule(f"command task {manifest.name!r} must export a WASI _start function")
        return
    missing = [n for n in HANDLER_EXPORTS if n not in exports]
    if missing:
        raise InvalidModule(
            f"handler task {manifest.name!r} is missing export(s) {', '.join(missing)} "
            "(see the handler ABI in wasm_tasks/README.md)"
        )
