"""``handler`` tasks: reactor instances kept warm in a bounded pool.

An instance is created lazily, reused for up to ``max_uses`` executions (so a
slow leak in a guest cannot grow forever) and thrown away after any failure:
a trapped instance may have half-updated state, and a fresh one costs ~25 µs.
The calls themselves go through ``fastpath.HandlerCall`` — the prepared C API
path, or its pure twin.
"""
from __future__ import annotations

from collections import deque
from math import inf as INFINITY
from time import monotonic

import wasmtime

import fastpath

from ..errors import GuestError, OutputTooLarge, TaskFault
from . import host, watchdog
from .compiled import CompiledTask
from .faults import classify
from .outcome import Outcome

__all__ = ["HandlerInstance", "InstancePool", "DEFAULT_MAX_USES"]

DEFAULT_MAX_USES = 100_000


class HandlerInstance:
    """One Store + instance of a handler task, used by one execution at a time."""

    __slots__ = ("task", "limits", "store", "watch", "call", "uses", "_closed")

    def __init__(self, task: CompiledTask) -> None:
        self.task = task
        self.limits = task.manifest.limits
        self.uses = 0
        self._closed = False
        self.store = wasmtime.Store(task.engine)
        self.watch = watchdog.install(self.store)
        try:
            limits = task.manifest.limits
            self.store.set_limits(memory_size=limits.memory_bytes)
            self.store.set_wasi(wasmtime.WasiConfig())
            if limits.fuel is not None:
                self.store.set_fuel(limits.fuel)
            self.watch.arm(limits.timeout_s)
            instance = task.pre.instantiate(self.store)
            init = instance.exports(self.store).get("_initialize")
            if isinstance(init, wasmtime.Func):
                init(self.store)
            self.watch.disarm()
            self.call = fastpath.HandlerCall(self.store, instance)
        except BaseException:
            self.close()
            raise

    def invoke(self, data: bytes, sink: host.Sink | None) -> Outcome:
        """Run one execution; its host imports report into ``sink``
        (None for a module that imports none)."""
        limits = self.limits
        self.uses += 1
        if limits.fuel is not None:
            self.store.set_fuel(limits.fuel)
        previous = host.enter(sink) if sink is not None else None
        watch = self.watch
        # watch.arm(timeout) and watch.disarm(), inlined: the hot path of every handler execution
        watch.deadline = monotonic() + limits.timeout_s
        watch.reason = watch.check = None
        try:
            ok, payload = self.call.invoke(data)
        except (wasmtime.Trap, wasmtime.WasmtimeError, ValueError) as exc:
            return Outcome(b"", classify(exc, watch, self.task.manifest, self.call.memory_size()), sink)
        finally:
            watch.deadline = INFINITY
            if sink is not None:
                host.leave(previous)
        if ok and len(payload) <= limits.max_output_bytes:
            return Outcome(payload, None, sink)
        manifest = self.task.manifest
        error: TaskFault
        if not ok:
            error = GuestError(f"task {manifest.name!r} reported an error: {payload.decode('utf-8', 'replace')}")
            return Outcome(b"", error, sink)
        error = OutputTooLarge(
            f"task {manifest.name!r} returned {len(payload)} bytes, over its output limit of "
            f"{limits.max_output_kib} KiB"
        )
        return Outcome(b"", error, sink)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self.watch.close()
        self.store.close()


class InstancePool:
    """Idle instances of one task.  Never blocks: the scheduler never grants more
    concurrent executions than ``max_concurrency``, which is also the number of
    idle instances kept."""

    def __init__(self, task: CompiledTask, max_uses: int = DEFAULT_MAX_USES) -> None:
        self.task = task
        self.max_uses = max_uses
        self._idle: deque[HandlerInstance] = deque()
        self._keep = task.manifest.max_concurrency
        self._closed = False
        self.created = 0
        self.recycled = 0

    def acquire(self) -> HandlerInstance:
        try:
            return self._idle.pop()
        except IndexError:
            self.created += 1
            return HandlerInstance(self.task)

    def release(self, instance: HandlerInstance, healthy: bool) -> None:
        # Nested invokes may create instances beyond max_concurrency rather than
        # wait (waiting could deadlock); the extras are not kept.
        if (not healthy or instance.uses >= self.max_uses or self._closed
                or len(self._idle) >= self._keep):
            self.recycled += 1
            instance.close()
            return
        self._idle.append(instance)
        if self._closed:  # close() ran between the check above and the append
            self._drain()

    @property
    def idle(self) -> int:
        return len(self._idle)

    def close(self) -> None:
        self._closed = True
        self._drain()

    def _drain(self) -> None:
        # deque.pop is atomic: a release and a close draining at once close
        # each instance once, without a lock on the release path.
        idle = self._idle
        while True:
            try:
                instance = idle.pop()
            except IndexError:
                return
            instance.close()
