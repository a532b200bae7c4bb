"""The only package that imports wasmtime: engines, environments, limits."""
from .command import CommandRunner, run_command
from .compiled import CompiledTask, WasmRuntime
from .handler import HandlerInstance, InstancePool
from .outcome import Outcome
from .watchdog import Watch

__all__ = ["CommandRunner", "CompiledTask", "WasmRuntime", "HandlerInstance", "InstancePool", "Outcome", "Watch", "run_command"]
