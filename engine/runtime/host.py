"""Host imports (module ``wasmyard``) and where their effects go.

A host import runs in the thread that called into wasm, synchronously, so the
execution it serves is found through a thread-local ``Sink`` set around each
call — never through a reference from the callback to a Store (that cycle
leaks the whole instance memory).  The ``Sink`` only collects: logs and
published events are handed to the coordinator when the execution ends, on
the event loop thread, so a guest never touches coordinator state from a
worker thread and a guest that publishes in a loop is bounded by its own
per-execution budget, not by the coordinator's memory.
"""
from __future__ import annotations

import threading
from typing import Protocol

import wasmtime

import fastpath

__all__ = [
    "Sink", "Invoker", "current", "enter", "leave", "define_host_imports",
    "LOG_LEVELS", "MAX_LOG_BYTES", "MAX_PUBLISHES", "MAX_PUBLISH_BYTES", "MAX_TOPIC_BYTES",
    "PUBLISH_OK", "PUBLISH_BAD_TOPIC", "PUBLISH_LIMIT",
    "INVOKE_UNKNOWN_TASK", "INVOKE_FAILED", "INVOKE_BUFFER_TOO_SMALL", "INVOKE_TOO_DEEP", "INVOKE_UNAVAILABLE",
]

LOG_LEVELS = ("debug", "info", "warn", "error")
MAX_LOG_BYTES = 64 * 1024
"""Per execution; beyond it log lines are dropped and counted, not stored."""
MAX_PUBLISHES = 1000
MAX_PUBLISH_BYTES = 1 << 20
MAX_TOPIC_BYTES = 1024

PUBLISH_OK = 0
PUBLISH_BAD_TOPIC = -1
PUBLISH_LIMIT = -2

INVOKE_UNKNOWN_TASK = -1
INVOKE_FAILED = -2
INVOKE_BUFFER_TOO_SMALL = -3
INVOKE_TOO_DEEP = -4
INVOKE_UNAVAILABLE = -5


class Invoker(Protocol):
    """Runs another task synchronously, in the calling thread, for ``wasmyard.invoke``."""

    def invoke_nested(self, name: str, data: bytes, parent: "Sink") -> tuple[int, bytes]: ...


class Sink:
    """Collects what one execution's host imports produce."""

    __slots__ = ("logs", "log_bytes", "dropped_logs", "published", "publish_bytes", "dropped_publishes",
                 "invoker", "depth")

    def __init__(self, invoker: Invoker | None = None, depth: int = 0) -> None:
        self.logs: list[tuple[str, str]] = []
        self.log_bytes = 0
        self.dropped_logs = 0
        self.published: list[tuple[str, bytes]] = []
        self.publish_bytes = 0
        self.dropped_publishes = 0
        self.invoker = invoker
        self.depth = depth

    def log(self, level: int, text: str) -> None:
        if self.log_bytes + len(text) > MAX_LOG_BYTES:
            self.dropped_logs += 1
            return
        self.log_bytes += len(text)
        name = LOG_LEVELS[level] if 0 <= level < len(LOG_LEVELS) else "info"
        self.logs.append((name, text))

    def publish(self, topic: str, payload: bytes) -> int:
        if len(self.published) >= MAX_PUBLISHES or self.publish_bytes + len(payload) > MAX_PUBLISH_BYTES:
            self.dropped_publishes += 1
            return PUBLISH_LIMIT
        self.publish_bytes += len(payload)
        self.published.append((topic, payload))
        return PUBLISH_OK

    def handed_over(self) -> "Sink | None":
        """For a Sink reused run after run: what this run left, in a Sink of
        its own, and this one emptied; None when it left nothing (the common
        case, which then costs no allocation)."""
        if not (self.logs or self.published or self.dropped_logs or self.dropped_publishes):
            return None
        taken = Sink(self.invoker, self.depth)
        taken.logs, taken.log_bytes, taken.dropped_logs = self.logs, self.log_bytes, self.dropped_logs
        taken.published, taken.publish_bytes = self.published, self.publish_bytes
        taken.dropped_publishes = self.dropped_publishes
        self.logs, self.published = [], []
        self.log_bytes = self.dropped_logs = self.publish_bytes = self.dropped_publishes = 0
        return taken

    def absorb(self, child: "Sink") -> None:
        """Take over what a nested execution published, within this one's budget."""
        for topic, payload in child.published:
            self.publish(topic, payload)
        self.dropped_publishes += child.dropped_publishes


_local = threading.local()


def current() -> Sink | None:
    return getattr(_local, "sink", None)


def enter(sink: Sink) -> Sink | None:
    """Make ``sink`` current for this thread; returns the one to restore (nested invokes)."""
    previous = getattr(_local, "sink", None)
    _local.sink = sink
    return previous


def leave(previous: Sink | None) -> None:
    _local.sink = previous


def _log(memory: fastpath.CallerMemory, level: int, ptr: int, length: int) -> None:
    sink = current()
    if sink is None:
        return
    sink.log(level, memory.read(ptr, min(length, MAX_LOG_BYTES)).decode("utf-8", "replace"))


def _topic(memory: fastpath.CallerMemory, ptr: int, length: int) -> str | None:
    if not 0 < length <= MAX_TOPIC_BYTES:
        return None
    try:
        topic = memory.read(ptr, length).decode("utf-8")
    except UnicodeDecodeError:
        return None
    return None if "+" in topic or "#" in topic or "\0" in topic else topic


def _publish(memory: fastpath.CallerMemory, topic_ptr: int, topic_len: int, ptr: int, length: int) -> int:
    sink = current()
    topic = _topic(memory, topic_ptr, topic_len)
    if topic is None:
        return PUBLISH_BAD_TOPIC
    if sink is None:
        return PUBLISH_OK
    if length > MAX_PUBLISH_BYTES:
        sink.dropped_publishes += 1
        return PUBLISH_LIMIT
    return sink.publish(topic, memory.read(ptr, length))


def _invoke(memory: fastpath.CallerMemory, name_ptr: int, name_len: int, in_ptr: int, in_len: int,
            out_ptr: int, out_cap: int) -> int:
    sink = current()
    if sink is None or sink.invoker is None:
        return INVOKE_UNAVAILABLE
    if not 0 < name_len <= 64:
        return INVOKE_UNKNOWN_TASK
    name = memory.read(name_ptr, name_len).decode("utf-8", "replace")
    status, output = sink.invoker.invoke_nested(name, memory.read(in_ptr, in_len), sink)
    if status < 0:
        return status
    if len(output) > out_cap:
        return INVOKE_BUFFER_TOO_SMALL
    memory.write(out_ptr, output)
    return len(output)


def define_host_imports(linker: wasmtime.Linker) -> None:
    """Define every ``wasmyard.*`` import on a Linker (one Linker per Engine).

    They go through ``fastpath.define_host_func``: a guest's call into the
    host then costs a C trampoline, not wasmtime-py's per-call Caller setup.
    """
    fastpath.define_host_func(linker, "wasmyard", "log", "iii", "", _log)
    fastpath.define_host_func(linker, "wasmyard", "publish", "iiii", "i", _publish)
    fastpath.define_host_func(linker, "wasmyard", "invoke", "iiiiii", "i", _invoke)
