"""The coordinator: tasks, executions and the loop that runs them.

Everything here runs on the event loop thread except ``_run`` (a slow
handler's execution, on the thread pool) and what the ``CommandRunner``'s
workers do for commands.  The request path for a warm handler when nothing
is queued is: look up the task, take a grant, run inline, end it — no queue
entry, no future, no thread hop — and the accounting of everything that
ended in this turn of the loop comes after, in one pass (``settle``).
"""
from __future__ import annotations

import asyncio
import logging
import time
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable

from .config import HubSettings
from .errors import (
    Conflict,
    ExecutionCancelled,
    GuestError,
    HostError,
    InvalidManifest,
    OutputTooLarge,
    PayloadTooLarge,
    ShuttingDown,
    TaskTimedOut,
    UnknownExecution,
    UnknownTask,
    WasmyardError,
)
from .execution import Execution, History
from .lifecycle import ExecutionState
from .manifest import Manifest, parse_manifest
from .metrics import Metrics
from .resources import ResourceManager, TaskSlot
from .runtime import CommandRunner, CompiledTask, InstancePool, Outcome, WasmRuntime, host, run_command
from .runtime.host import Sink
from .scheduler import INLINE, Scheduler

__all__ = ["Coordinator", "TaskEntry", "MAX_INVOKE_DEPTH", "SETTLE_AT_MOST"]

MAX_INVOKE_DEPTH = 4
"""How deep ``wasmyard.invoke`` may nest (a task invoking a task invoking …)."""
SETTLE_AT_MOST = 1024
"""Finished executions waiting to be accounted before ``settle`` runs regardless of the loop."""

log = logging.getLogger("wasmyard.coordinator")
S = ExecutionState


class TaskEntry:
    """A registered task: what the hot path reads per execution, one attribute away."""

    __slots__ = ("compiled", "slot", "pool", "manifest", "max_input_bytes", "priority")

    def __init__(self, compiled: CompiledTask, slot: TaskSlot, pool: InstancePool | None) -> None:
        self.compiled = compiled
        self.slot = slot
        self.pool = pool
        self.manifest: Manifest = compiled.manifest
        self.max_input_bytes = compiled.manifest.limits.max_input_bytes
        self.priority = compiled.manifest.priority

    def to_dict(self) -> dict[str, Any]:
        info = self.manifest.to_dict()
        info.update(
            sha256=self.compiled.digest,
            module_bytes=self.compiled.size,
            in_flight=self.slot.in_flight,
            runs=self.slot.runs,
            placement_ewma_us=round(self.slot.ewma_s * 1e6, 1),
        )
        if self.pool is not None:
            info["pool"] = {"idle": self.pool.idle, "created": self.pool.created, "recycled": self.pool.recycled}
        return info


def _state_for(error: WasmyardError | None) -> ExecutionState:
    if error is None:
        return S.SUCCEEDED
    if isinstance(error, TaskTimedOut):
        return S.TIMED_OUT
    if isinstance(error, ExecutionCancelled):
        return S.CANCELLED
    return S.FAILED


class Coordinator:
    def __init__(self, settings: HubSettings | None = None, runtime: WasmRuntime | None = None) -> None:
        self.settings = settings or HubSettings()
        self.runtime = runtime or WasmRuntime(
            Path(self.settings.state_dir) / "modules",
            instances=self.settings.max_instances,
            max_memory_mib=self.settings.memory_budget_mib,
        )
        self._own_runtime = runtime is None
        self.resources = ResourceManager(self.settings.max_in_flight, self.settings.memory_budget_mib)
        self.scheduler = Scheduler(self.resources, self.settings.max_queue, self.settings.inline_threshold_us / 1e6)
        self.metrics = Metrics()
        self.metrics.before_read = self._settle_pending
        self.history = History(self.settings.history)
        self.tasks: dict[str, TaskEntry] = {}
        self._executor = ThreadPoolExecutor(self.settings.worker_threads, thread_name_prefix="wasmyard-exec")
        self._commands = CommandRunner(self.settings.worker_threads, self._command_finished)
        self._running: set[Future[Outcome]] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._settling: list[tuple[Execution, Outcome, float, bool]] = []  # finished, not yet accounted
        self._settle_due = False
        # Inline runs never overlap (they run on the loop, one at a time), so
        # they share one Sink and hand over what a run left only when it left something.
        self._inline_sink = Sink(self)
        self._closed = False
        self._pumping = False
        #: Called on the loop thread with (execution, outcome) when an execution ran to its end.
        self.finished_hooks: list[Callable[[Execution, Outcome], None]] = []
        self.metrics.gauge("wasmyard_queue_depth", "Executions waiting for a grant.", lambda: self.scheduler.depth)
        self.metrics.gauge("wasmyard_in_flight", "Executions holding an environment.", lambda: self.resources.in_flight)
        self.metrics.gauge("wasmyard_tasks", "Registered tasks.", lambda: len(self.tasks))

    # -- tasks --------------------------------------------------------------

    def register_compiled(self, compiled: CompiledTask) -> TaskEntry:
        """Install (or atomically replace) a compiled task."""
        manifest = compiled.manifest
        self.resources.admit(manifest)
        pool = InstancePool(compiled) if manifest.isolation == "pooled" else None
        old = self.tasks.get(manifest.name)
        # Running executions of a replaced version keep (and release) the old slot.
        entry = TaskEntry(compiled, TaskSlot(manifest), pool)
        self.tasks[manifest.name] = entry
        if old is not None:
            self._commands.forget(old.compiled)
            if old.pool is not None:
                old.pool.close()
        log.info("task registered name=%s kind=%s sha256=%s", manifest.name, manifest.kind, compiled.digest[:12])
        return entry

    def compile(self, manifest: Manifest, wasm: bytes) -> CompiledTask:
        self.resources.admit(manifest)
        return self.runtime.compile(manifest, wasm)

    async def register(self, manifest: Manifest, wasm: bytes) -> TaskEntry:
        """Validate and compile off the loop, then install."""
        compiled = await asyncio.get_running_loop().run_in_executor(self._executor, self.compile, manifest, wasm)
        return self.register_compiled(compiled)

    def load_manifest_file(self, path: Path) -> TaskEntry:
        manifest = parse_manifest(path.read_bytes(), "toml" if path.suffix == ".toml" else "json")
        if not manifest.module:
            raise InvalidManifest(f"{path}: 'module' is required in a manifest file")
        return self.register_compiled(self.compile(manifest, (path.parent / manifest.module).read_bytes()))

    def task(self, name: str) -> TaskEntry:
        entry = self.tasks.get(name)
        if entry is None:
            raise UnknownTask(name)
        return entry

    def remove_task(self, name: str) -> None:
        entry = self.tasks.pop(name, None)
        if entry is None:
            raise UnknownTask(name)
        waiting = self.scheduler.drop_task(name)
        waiting += [ex for ex in self.history.live(name) if self.scheduler.remove(ex.entry_id, name)]
        for execution in waiting:
            self._finish_unstarted(execution, S.CANCELLED, f"task {name!r} was removed")
        self._commands.forget(entry.compiled)
        if entry.pool is not None:
            entry.pool.close()

    # -- executions ---------------------------------------------------------

    def submit(self, name: str, data: bytes, priority: int | None = None, hops: int = 0) -> Execution:
        """Queue (or start at once) an execution; never waits for it.

        ``hops``: how many routed events led to it; what it publishes is one further.
        """
        entry = self.tasks.get(name)
        if entry is None:
            raise UnknownTask(name)
        if self._closed:
            raise ShuttingDown("the hub is shutting down; retry on its successor", retry_after=5.0)
        if len(data) > entry.max_input_bytes:
            self.metrics.rejected_request("input_too_large")
            raise PayloadTooLarge(f"input of {len(data)} bytes is over task {name!r}'s limit of "
                                  f"{entry.manifest.limits.max_input_kib} KiB")
        execution = Execution(name, data, entry.priority if priority is None else priority, hops)
        where = self.scheduler.start_now(entry.slot)
        if where:
            self._start(entry, execution, where == INLINE, recorded=False)
            return execution
        try:
            execution.entry_id = self.scheduler.enqueue(execution, execution.priority)
        except WasmyardError:
            self.metrics.rejected_request("queue_full")
            raise
        self.history.add(execution)
        self._pump()  # other tasks may have room even though something waits
        return execution

    async def invoke(self, name: str, data: bytes, priority: int | None = None) -> Execution:
        """Submit and wait for the end, accounting included (metrics, history, hooks)."""
        execution = self.submit(name, data, priority)
        if not execution.done:
            await execution.wait()
        self._settle_pending()
        return execution

    def get(self, execution_id: str) -> Execution:
        self._settle_pending()  # an inline execution enters the history when it is accounted
        execution = self.history.get(execution_id)
        if execution is None:
            raise UnknownExecution(execution_id)
        return execution

    def cancel(self, execution_id: str) -> Execution:
        execution = self.get(execution_id)
        if execution.done:
            raise Conflict(f"execution {execution_id} already ended ({execution.state})")
        if execution.state is S.QUEUED:
            if self.scheduler.remove(execution.entry_id, execution.task):
                self._finish_unstarted(execution, S.CANCELLED, "cancelled while queued")
            return execution
        execution.cancel_requested = True
        if execution.job is not None:
            execution.job.cancel()
        watch = execution.watch
        if watch is not None:
            watch.cancel_for = execution.id
        return execution

    # -- running ------------------------------------------------------------

    def _start(self, entry: TaskEntry, execution: Execution, inline: bool, recorded: bool = True) -> None:
        """Run a granted execution where the scheduler placed it.  ``recorded``:
        whether the history already has it (it has, if it was queued)."""
        if execution.state is S.QUEUED:  # the only state a start comes from: transition(), inlined
            execution.state = S.RUNNING
        else:
            execution.transition(S.RUNNING)
        execution.started_ns = time.perf_counter_ns()
        if inline:
            self._run_inline(entry, execution, recorded)
            return
        if not recorded:
            self.history.add(execution)
        if entry.pool is None:
            try:
                execution.job = self._commands.start(entry.compiled, execution.input, Sink(self),
                                                     execution.set_watch, (entry, execution))
            except Exception as exc:  # e.g. no worker left after close: record it, keep serving
                self._finish(entry, execution, self._host_failure(execution, exc))
            return
        future = self._executor.submit(self._run, entry, execution)
        self._running.add(future)
        loop = self._loop or asyncio.get_running_loop()
        self._loop = loop
        future.add_done_callback(lambda f: loop.call_soon_threadsafe(self._finished_in_thread, f, entry, execution))

    def _run_inline(self, entry: TaskEntry, execution: Execution, recorded: bool) -> None:
        """A warm handler, on the event loop: the hot path, cut to the steps it needs.

        Nothing else runs on the loop meanwhile, so no cancel can arrive
        during the run: the instance's Watch only has to know whose run it is
        (a late cancel for an earlier one must not stop this one), and the
        execution needs no handle on it, nor, if it was not queued, a place in
        the history before ``settle`` (nothing can look it up before then).
        ``run_s`` stays 0: ``_finish`` takes the execution's own duration,
        inline the same thing measured once.
        """
        pool = entry.pool
        assert pool is not None
        sink = self._inline_sink if entry.compiled.uses_host else None
        try:
            instance = pool.acquire()
            instance.watch.owner = execution.id
            outcome = instance.invoke(execution.input, sink)
            error = outcome.error
            pool.release(instance, error is None or isinstance(error, (GuestError, OutputTooLarge)))
        except Exception as exc:
            outcome = self._host_failure(execution, exc)
        if sink is not None:
            outcome.sink = sink.handed_over()
        self._finish(entry, execution, outcome, recorded)

    def _command_finished(self, token: tuple[TaskEntry, Execution], outcome: Outcome) -> None:
        entry, execution = token
        execution.job = None
        self._finish(entry, execution, outcome)

    def _finished_in_thread(self, future: Future[Outcome], entry: TaskEntry, execution: Execution) -> None:
        self._running.discard(future)
        self._finish(entry, execution, future.result())

    def _run(self, entry: TaskEntry, execution: Execution) -> Outcome:
        """Runs inline or on a worker thread; touches no coordinator state, never raises."""
        started = time.perf_counter()
        try:
            outcome = self._run_environment(entry, execution)
        except Exception as exc:
            outcome = self._host_failure(execution, exc)
        outcome.run_s = time.perf_counter() - started
        return outcome

    @staticmethod
    def _host_failure(execution: Execution, exc: Exception) -> Outcome:
        """A failure of the host, not the task (e.g. no instance slot left): record it, keep serving."""
        log.error("execution failed in the host task=%s id=%s", execution.task, execution.id, exc_info=exc)
        return Outcome(error=HostError(f"the hub could not run task {execution.task!r}: {exc}"))

    def _run_environment(self, entry: TaskEntry, execution: Execution) -> Outcome:
        if execution.cancel_requested:
            return Outcome(error=ExecutionCancelled("cancelled before it started"))
        sink = Sink(self) if entry.compiled.uses_host else None
        pool = entry.pool
        assert pool is not None, "command executions run on the CommandRunner"
        instance = pool.acquire()
        execution.set_watch(instance.watch)
        try:
            outcome = instance.invoke(execution.input, sink)
        finally:
            execution.watch = None
        error = outcome.error
        pool.release(instance, error is None or isinstance(error, (GuestError, OutputTooLarge)))
        return outcome

    def invoke_nested(self, name: str, data: bytes, parent: Sink) -> tuple[int, bytes]:
        """``wasmyard.invoke``: run ``name`` now, in the calling thread.

        It never waits for a grant or a pooled instance — a guest blocked on
        a busy pool while holding an instance of that pool would deadlock —
        so a nested execution takes an idle instance or makes a new one. The
        nesting depth bounds how many can pile up.  It runs under its own
        task's limits and counts as part of the calling execution.
        """
        entry = self.tasks.get(name)
        if entry is None:
            return host.INVOKE_UNKNOWN_TASK, b""
        if parent.depth + 1 > MAX_INVOKE_DEPTH:
            return host.INVOKE_TOO_DEEP, b""
        sink = Sink(self, parent.depth + 1)
        if entry.pool is None:
            outcome = run_command(entry.compiled, data, sink)
        else:
            instance = entry.pool.acquire()
            outcome = instance.invoke(data, sink)
            entry.pool.release(instance, outcome.error is None or isinstance(outcome.error, GuestError))
        parent.absorb(sink)
        if outcome.error is not None:
            return host.INVOKE_FAILED, b""
        return 0, outcome.output

    def _finish(self, entry: TaskEntry, execution: Execution, outcome: Outcome, recorded: bool = True) -> None:
        """End an execution: what its caller and the scheduler need now; the
        rest (metrics, history accounting, finished hooks) once per turn of
        the event loop, in ``settle``.

        Why two steps: under load, one turn of the loop finishes many
        executions, each between two HTTP requests that evict the caches.
        Accounting them one by one finds the metrics, the history and the
        routing table cold every time; accounting them together finds them
        warm (``bench/http_ratio.py`` shows the difference).  Nothing is
        lost or reordered: executions are accounted in the order they ended,
        and reading the history or the metrics accounts what is pending first.
        """
        finished = execution.finished_ns = time.perf_counter_ns()
        duration_s = (finished - execution.started_ns) / 1e9
        error = outcome.error
        execution.output = outcome.output
        if error is None and execution.state is S.RUNNING:  # transition(), inlined: the common end
            execution.state = S.SUCCEEDED
        elif error is None:
            execution.transition(S.SUCCEEDED)
        else:
            execution.error = error
            execution.transition(_state_for(error))
        if outcome.sink is not None:
            execution.logs = outcome.logs
        execution.exit_code = outcome.exit_code
        # Placement statistics now, not in settle: a handler that timed out
        # inline must leave the loop before the next submit.
        self.scheduler.finished(entry.slot, outcome.run_s or duration_s, isinstance(error, TaskTimedOut))
        execution.notify()
        settling = self._settling
        settling.append((execution, outcome, duration_s, recorded))
        if len(settling) >= SETTLE_AT_MOST:  # a caller submitting in a loop without yielding
            self.settle()
        elif not self._settle_due:
            self._settle_due = True
            try:
                loop = self._loop or asyncio.get_running_loop()
            except RuntimeError:  # no event loop (a tool driving the coordinator directly): settle now
                self.settle()
            else:
                self._loop = loop
                loop.call_soon(self.settle)
        if self.scheduler.queue:
            self._pump()

    def _settle_pending(self) -> None:
        if self._settling:
            self.settle()

    def settle(self) -> None:
        """Account every execution that finished since the last call (see ``_finish``)."""
        self._settle_due = False
        batch, self._settling = self._settling, []
        metrics = self.metrics
        history = self.history
        hooks = self.finished_hooks
        for execution, outcome, duration_s, recorded in batch:
            metrics.execution_finished(execution.task, execution.state.value, duration_s)
            if not recorded:
                history.add(execution)
            for hook in hooks:
                try:
                    hook(execution, outcome)
                except Exception:  # a hook's bug must not stop the scheduler
                    log.exception("finished hook failed task=%s id=%s", execution.task, execution.id)
        history.finished_all(execution for execution, _, _, _ in batch)

    def _finish_unstarted(self, execution: Execution, state: ExecutionState, reason: str) -> None:
        execution.transition(state)
        execution.error = ExecutionCancelled(reason)
        self.metrics.execution_finished(execution.task, state.value, None)
        self.history.finished(execution)
        execution.notify()

    def _pump(self) -> None:
        """Start queued executions while grants are available.

        Not re-entrant: an inline execution finishing inside the loop below
        would call it again; the loop itself picks up what that frees, so the
        stack stays flat however long the queue is.
        """
        if self._pumping:
            return
        self._pumping = True
        try:
            tasks = self.tasks
            while True:
                execution = self.scheduler.next_ready(self._slot_for)
                if execution is None:
                    return
                entry = tasks[execution.task]
                self._start(entry, execution, self.scheduler.inline(entry.slot))
        finally:
            self._pumping = False

    def _slot_for(self, execution: Execution) -> TaskSlot:
        return self.tasks[execution.task].slot

    # -- lifecycle ----------------------------------------------------------

    async def aclose(self) -> None:
        """Refuse new executions, finish every accepted one, then free everything.

        Queued executions still run: one may carry a durable event that
        already left its store for this queue, and losing it is worse than a
        slower stop.
        """
        if self._closed:
            return
        self._closed = True
        while self._running or self._commands or self.scheduler.depth or self._settling:
            if self._running:
                await asyncio.wait([asyncio.wrap_future(f) for f in list(self._running)])
            await self._commands.wait_idle()
            await asyncio.sleep(0)  # let the done-callbacks run; they start what is queued
            self.settle()
            self._pump()
        self._executor.shutdown(wait=True)
        self._commands.close()
        self.settle()
        for entry in self.tasks.values():
            if entry.pool is not None:
                entry.pool.close()
        if self._own_runtime:
            self.runtime.close()
