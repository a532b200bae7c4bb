"""Wall-clock deadlines, cancellation and output caps for running wasm.

One ticker thread per process advances the epoch of every wasmtime Engine the
hub owns.  Each Store gets, once, an epoch-deadline callback (wasmtime's C API,
which wasmtime-py does not wrap) whose only state is an integer key: the
callback looks the key up in ``_WATCHES`` to find the execution's deadline and
cancel flag.  Keeping that state outside the Store is deliberate — a callback
that referenced its Store would form a cycle the GC cannot free.

Why a callback rather than a plain epoch deadline: a deadline alone cannot
cancel an execution running on another thread, nor stop a command that
floods its stdout file; the callback can, at every tick, for ~10 µs.
"""
from __future__ import annotations

import ctypes
import itertools
import threading
import time
from typing import Callable

import wasmtime

from .capi import DEADLINE_CALLBACK_T, error_new, set_epoch_deadline_callback

__all__ = ["Watch", "Ticker", "install", "new_watch", "CALLBACK_ADDRESS", "TICK_S"]

TICK_S = 0.005
"""Epoch period: timeouts and cancellation take effect within one tick."""



class Watch:
    """What the watchdog checks for one execution environment (one Store).

    ``reason`` is set by the watchdog when it stops the guest: "timeout",
    "cancelled" or "output"; the runtime turns it into the right error.
    A pooled instance's Watch serves many executions in turn, so a cancel
    names the execution it is for (``cancel_for``) and only stops the guest
    while that execution is the ``owner``: a cancel that arrives late can
    never stop the next execution to use the instance.
    """

    __slots__ = ("key", "deadline", "timeout_s", "owner", "cancel_for", "reason", "check")

    def __init__(self) -> None:
        self.key = next(_keys)
        self.deadline = float("inf")
        self.timeout_s = 0.0
        self.owner: str | None = None
        self.cancel_for: str | None = None
        self.reason: str | None = None
        self.check: Callable[[], bool] | None = None  # True: stop for "output"

    def arm(self, timeout_s: float, check: Callable[[], bool] | None = None) -> None:
        """Start a new call: a fresh deadline, no reason yet."""
        self.deadline = time.monotonic() + timeout_s
        self.reason = None
        self.check = check

    def arm_at_first_tick(self, timeout_s: float, check: Callable[[], bool] | None = None) -> None:
        """As ``arm``, for a run that starts later on a thread that cannot tell
        Python when: the deadline is set by the first tick that finds it
        running, so queueing does not count and the limit holds within a tick."""
        self.deadline = 0.0
        self.timeout_s = timeout_s
        self.reason = None
        self.check = check

    def disarm(self) -> None:
        self.deadline = float("inf")
        self.check = None

    def close(self) -> None:
        _WATCHES.pop(self.key, None)


_keys = itertools.count(1)
_WATCHES: dict[int, Watch] = {}


def _on_deadline(_ctx, data, delta, kind):  # type: ignore[no-untyped-def]
    """Runs in the thread executing wasm, once per tick while wasm runs."""
    watch = _WATCHES.get(data or 0)
    if watch is not None:
        now = time.monotonic()
        if not watch.deadline:
            watch.deadline = now + watch.timeout_s
        if watch.cancel_for is not None and watch.cancel_for == watch.owner:
            watch.reason = "cancelled"
        elif now >= watch.deadline:
            watch.reason = "timeout"
        elif watch.check is not None and watch.check():
            watch.reason = "output"
        if watch.reason is not None:
            return error_new(f"wasmyard: execution stopped ({watch.reason})".encode())
    delta[0] = 1
    kind[0] = 0  # WASMTIME_UPDATE_DEADLINE_CONTINUE
    return None


_CALLBACK = DEADLINE_CALLBACK_T(_on_deadline)  # kept alive for the life of the process


CALLBACK_ADDRESS: int = ctypes.cast(_CALLBACK, ctypes.c_void_p).value or 0
"""The C address of the deadline callback, for a store created without the GIL
(``fastpath.run_command_env``): install it there with a Watch's ``key`` as data."""


def new_watch() -> Watch:
    """A registered ``Watch`` not yet attached to a store; close it when done."""
    watch = Watch()
    _WATCHES[watch.key] = watch
    return watch


def install(store: wasmtime.Store) -> Watch:
    """Attach a new ``Watch`` to ``store``; close it with the store."""
    watch = new_watch()
    set_epoch_deadline_callback(ctypes.cast(store.ptr(), ctypes.c_void_p), _CALLBACK, ctypes.c_void_p(watch.key), None)
    store.set_epoch_deadline(1)
    return watch


class Ticker:
    """The one thread that advances the epoch of the hub's engines."""

    def __init__(self, engines: list[wasmtime.Engine], period_s: float = TICK_S) -> None:
        self._engines = engines
        self._period = period_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="wasmyard-epoch", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self._period):
            for engine in self._engines:
                engine.increment_epoch()

    def close(self) -> None:
        self._stop.set()
        if self._thread.is_alive() and threading.current_thread() is not self._thread:
            self._thread.join()
