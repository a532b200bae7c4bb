"""Prepared calls into wasm: the pure-Python twin of ``_call_c``.

Uses only wasmtime-py's public API (``Func.__call__``, ``Memory.read`` /
``Memory.write``, ``Linker.define_func`` with the caller), so it is the
reference the compiled twin is tested against: same results, same
exceptions, same messages.

* ``Export`` — one exported function with i32/i64 parameters and at most one
  i32/i64 result, looked up and type-checked once.
* ``HandlerCall`` — input bytes in, output bytes out, per the handler ABI v1:
  the module exports ``memory``, ``wy_abi_version() -> i32`` (1),
  ``wy_alloc(size i32) -> i32`` (0 when it cannot) and
  ``wy_handle(ptr i32, len i32) -> i64``: ``r >= 0`` is ``out_ptr << 32 |
  out_len``; ``r < 0`` is a guest failure, ``msg_ptr = (r >> 32) &
  0x7fffffff``, ``msg_len = r & 0xffffffff``, a UTF-8 message (returned as
  bytes).  ``wy_alloc`` starts an execution (it resets the guest's arena), so
  it is called for empty input too; there a 0 pointer is no failure.
* ``run_start`` — one whole WASI ``command`` execution: a WASI config on the
  store (argv, env, stdin served from bytes, stdout/stderr to files, preopened
  directories), an instance of an ``InstancePre``, a call of its ``_start``;
  the exit status comes back as an int (``ExitTrap`` is not raised).
* ``run_command_env`` — ``run_start`` in a store of its own (memory limit,
  fuel, an epoch-deadline callback given by address), plus the bounded
  reads of the two output files; the store is deleted on every path.
* ``define_host_func`` — a host import whose callback gets a
  ``CallerMemory`` (the caller's ``memory``, valid during the call only) and
  the integer arguments.  A callback must not reference a ``Store`` (or an
  object holding one): the linker keeps the callback where the garbage
  collector cannot see it, so such a cycle is never freed.

An exception raised by a callback becomes a trap in wasm and is re-raised
from the call that entered wasm, as wasmtime-py does.  Traps, fuel and epoch
interruptions and WASI exits raise ``wasmtime.Trap`` / ``WasmtimeError`` /
``ExitTrap`` exactly as ``Func.__call__`` does.

Host exceptions and threads.  wasmtime-py parks a callback's exception in one
process-wide slot, ``wasmtime._func.LAST_EXCEPTION``, and whatever call into
wasm fails next raises it; with several threads in wasm at once (a worker
pool, handlers on a thread pool) a call can raise another thread's exception,
or a bare "python exception" trap when its own was taken.  So a host function
defined by ``define_host_func`` (either twin) also parks its exception for
its own thread, in ``_PARKED`` (keyed by thread ident, used under the GIL),
and every call into wasm made here (``Export``, ``HandlerCall``,
``run_start``, ``run_command_env``, the workers' jobs) raises, when it fails,
its own thread's parked exception first (``_own_failure``; the compiled
twin's ``_claim_pending``), and never one another thread parked.  For
compatibility wasmtime-py's slot is set too: a host function defined here
behaves as before when wasmtime-py's own ``Func.__call__`` /
``instantiate`` enters the guest (that call raises it from the slot; the
parked copy, now stale, is dropped at the thread's next call into wasm made
here, or when a host function of the thread returns normally); and the
exception of a host function defined with plain ``Linker.define_func``
still comes through the slot when no other thread parked it.  Such plain
host functions keep wasmtime-py's limits under threads: nothing tells whose
exception the slot holds.

What this twin cannot fix without re-implementing wasmtime-py's call path:
when a call on thread B fails for a reason of its own (a trap, an error, a
WASI exit) while the slot holds an exception, wasmtime-py's ``enter_wasm``
in B raises that exception and drops B's own trap or error.  If another
thread parked it (found in ``_PARKED``, or — its owner may have taken it
since — raised through this twin's ``_HostCall``), B does not raise it (its
owner raises it, from its parked copy):
B raises its own error, which ``enter_wasm`` chained as that exception's
``__context__`` (errors and WASI exits: ``run_start`` still returns the exit
status), or, for a trap, whose message and code are gone,
``wasmtime.Trap(_LOST_TRAP)`` (``_lost_failure``); the owner may then raise
its exception with B's error as ``__context__``, when it took it first.  A
plain host function's exception from another thread B raises as
wasmtime-py did, even in place of a WASI exit.  The compiled twin builds
every error itself and has no such case.
"""
from __future__ import annotations

import ctypes
import importlib.metadata
import operator
import os
import sys
from threading import get_ident
from typing import Any, Callable, Optional, Sequence, Union

from wasmtime import (
    Caller,
    Engine,
    ExitTrap,
    Func,
    FuncType,
    Global,
    Instance,
    InstancePre,
    Linker,
    Memory,
    SharedMemory,
    Store,
    Table,
    Tag,
    Trap,
    ValType,
    WasiConfig,
    WasmtimeError,
    _ffi,
)
from wasmtime import _func as _wasmtime_func

__all__ = [
    "HANDLER_ABI_VERSION",
    "WASMTIME_MAJOR",
    "CallerMemory",
    "Export",
    "HandlerCall",
    "check_wasmtime_version",
    "define_host_func",
    "run_command_env",
    "run_start",
]

#: The wasmtime major version this module (and its compiled twin) is written for.
WASMTIME_MAJOR = 50
#: The handler ABI version ``HandlerCall`` speaks.
HANDLER_ABI_VERSION = 1

_U32 = 0xFFFFFFFF
_TYPE_CODES = {"i": "i32", "I": "i64"}
_INT_TYPES = ("i32", "i64")
BytesLike = Union[bytes, bytearray, memoryview]


def check_wasmtime_version(installed: Optional[str] = None) -> None:
    """Raise ``RuntimeError`` unless wasmtime ``WASMTIME_MAJOR``.x is installed.

    ``installed`` overrides the version read from the installed distribution.
    """
    if installed is None:
        try:
            installed = importlib.metadata.version("wasmtime")
        except importlib.metadata.PackageNotFoundError as exc:
            raise RuntimeError(
                "cannot tell which wasmtime is installed: no 'wasmtime' distribution found"
            ) from exc
    major = installed.split(".", 1)[0]
    if not major.isdigit() or int(major) != WASMTIME_MAJOR:
        raise RuntimeError(
            f"fastpath.call is written for wasmtime {WASMTIME_MAJOR}.x, but wasmtime "
            f"{installed} is installed; install wasmtime>={WASMTIME_MAJOR},<{WASMTIME_MAJOR + 1}"
        )


# -- shared checks and messages (the compiled twin spells them the same) ------

def _check_store_instance(store: Any, instance: Any) -> None:
    if not isinstance(store, Store):
        raise TypeError(f"expected a wasmtime.Store, got {type(store).__name__}")
    if not isinstance(instance, Instance):
        raise TypeError(f"expected a wasmtime.Instance, got {type(instance).__name__}")


def _extern_kind(item: Any) -> str:
    for cls, kind in ((Func, "function"), (Memory, "memory"), (Global, "global"),
                      (Table, "table"), (SharedMemory, "shared memory"), (Tag, "tag")):
        if isinstance(item, cls):
            return kind
    return "unknown extern"


def _signature(ty: FuncType) -> str:
    params = ", ".join(str(t) for t in ty.params)
    results = ", ".join(str(t) for t in ty.results)
    return f"({params}) -> ({results})"


def _as_bytes(data: Any) -> Union[bytes, bytearray]:
    if isinstance(data, (bytes, bytearray)):
        return data
    if isinstance(data, memoryview):
        return data.tobytes()
    raise TypeError(f"expected bytes-like data, got {type(data).__name__}")


def _oob(ptr: int, length: int, size: int) -> str:
    return f"ptr={ptr} len={length} memory size={size}"


# -- host exceptions, per thread (see the module docstring) -------------------

#: Thread ident -> (exception, its ``__context__`` when parked): what a host
#: function defined by ``define_host_func`` (either twin: the compiled one uses
#: this dict too) raised on that thread, until the failed call into wasm of
#: that thread takes it.
_PARKED: dict[int, tuple[BaseException, Optional[BaseException]]] = {}
#: The message of the ``Trap`` raised for a trap wasmtime-py dropped (``_lost_failure``).
_LOST_TRAP = "wasm trapped, but wasmtime-py raised another thread's host exception in place of this trap"


def _own_failure(raised: BaseException, caller: Any) -> BaseException:
    """What the call into wasm made from frame ``caller`` raises, given what
    wasmtime-py raised there.

    This thread's parked exception if there is one; else ``raised``, unless
    it is an exception another thread parked, which wasmtime-py raised in
    place of this call's own failure (``_lost_failure``).  Parked by another
    thread: still in ``_PARKED``, or — its owner may have taken it meanwhile —
    raised through this twin's ``_HostCall`` (its frame is in the traceback)
    although this thread has nothing parked.
    """
    entry = _PARKED.pop(get_ident(), None)
    if entry is not None:
        if _wasmtime_func.LAST_EXCEPTION is entry[0]:
            _wasmtime_func.LAST_EXCEPTION = None
        return entry[0]
    for entry in tuple(_PARKED.values()):
        if entry[0] is raised:
            return _lost_failure(raised, caller, entry)
    if _went_through_host_call(raised):
        return _lost_failure(raised, caller, None)
    return raised


def _went_through_host_call(exc: BaseException) -> bool:
    tb = exc.__traceback__
    while tb is not None:
        if tb.tb_frame.f_code is _HOST_CALL_CODE:
            return True
        tb = tb.tb_next
    return False


def _lost_failure(raised: BaseException, caller: Any,
                  entry: Optional[tuple[BaseException, Optional[BaseException]]]) -> BaseException:
    """The call into wasm made from frame ``caller`` failed and wasmtime-py
    raised another thread's parked exception ``raised`` instead: the call's
    own failure, as far as it is left.

    ``enter_wasm`` raises the slot's exception while handling a
    ``WasmtimeError`` (``ExitTrap`` included), which chains that error as its
    ``__context__``; it is this call's own when it was raised by a frame
    ``caller`` called (an older context is not).  While ``raised`` is still
    parked (``entry``) its context is put back as the callback left it; once
    its owner took it (``entry`` None) that is unknown, and the owner raises
    it with this error as its context.  Only this thread writes the context:
    an owner writing it back could race this read.  A trap ``enter_wasm``
    drops without a trace.
    """
    context = raised.__context__
    if isinstance(context, WasmtimeError):
        tb = context.__traceback__
        while tb is not None:
            if tb.tb_frame.f_back is caller:
                if entry is not None:
                    raised.__context__ = entry[1]
                return context
            tb = tb.tb_next
    return Trap(_LOST_TRAP)


def _into_wasm(fn: Callable[..., Any], *args: Any) -> Any:
    """``fn(*args)``, a wasmtime-py call that enters wasm, failing with this thread's own failure.

    What this thread parked before is stale here (wasmtime-py's own call
    raised it, not ours) and is dropped first.  The failure is raised outside
    the ``except`` clause: raising it inside would chain what wasmtime-py
    raised as its ``__context__``.
    """
    if _PARKED:
        _PARKED.pop(get_ident(), None)
    try:
        return fn(*args)
    except BaseException as exc:  # noqa: BLE001 - re-raised below, as this thread's own
        raised = exc
    try:
        raise _own_failure(raised, sys._getframe())
    finally:
        del raised  # no cycle through this frame


# -- Export ------------------------------------------------------------------

class Export:
    """A prepared call of one exported function with integer (i32/i64)
    params and at most one integer result."""

    __slots__ = ("_store", "_func", "_kinds")

    def __init__(self, store: Store, instance: Instance, name: str) -> None:
        _check_store_instance(store, instance)
        if not isinstance(name, str):
            raise TypeError(f"export name must be a str, got {type(name).__name__}")
        item = instance.exports(store).get(name)
        if item is None:
            raise ValueError(f"instance has no export named {name!r}")
        if not isinstance(item, Func):
            raise TypeError(f"export {name!r} is a {_extern_kind(item)}, not a function")
        ty = item.type(store)
        params = tuple(str(t) for t in ty.params)
        results = tuple(str(t) for t in ty.results)
        if len(results) > 1 or not all(k in _INT_TYPES for k in params + results):
            raise TypeError(
                f"export {name!r} has type {_signature(ty)}; a prepared call takes "
                "i32/i64 parameters and at most one i32/i64 result"
            )
        self._store = store
        self._func = item
        self._kinds = params

    def __call__(self, *args: int) -> Optional[int]:
        kinds = self._kinds
        if len(args) != len(kinds):
            word = "many" if len(args) > len(kinds) else "few"
            raise WasmtimeError(
                f"too {word} parameters provided: given {len(args)}, expected {len(kinds)}"
            )
        for arg, kind in zip(args, kinds):
            if not isinstance(arg, int):
                raise TypeError("don't know how to convert %r to %s" % (arg, kind))
        return _into_wasm(self._func, self._store, *args)


# -- HandlerCall ---------------------------------------------------------------

def _handler_export(store: Store, exports: Any, name: str, expected: str) -> Any:
    item = exports.get(name)
    if item is None:
        raise ValueError(f"handler does not export {name!r} (handler ABI v{HANDLER_ABI_VERSION})")
    if expected == "memory":
        if not isinstance(item, Memory):
            raise ValueError(f"handler export {name!r} is a {_extern_kind(item)}, not a memory")
        return item
    if not isinstance(item, Func):
        raise ValueError(f"handler export {name!r} is a {_extern_kind(item)}, not a function")
    found = _signature(item.type(store))
    if found != expected:
        raise ValueError(f"handler export {name!r} has type {found}, expected {expected}")
    return item


class HandlerCall:
    """Prepared calls into one handler instance per the handler ABI v1."""

    __slots__ = ("_store", "_memory", "_alloc", "_handle")

    def __init__(self, store: Store, instance: Instance) -> None:
        _check_store_instance(store, instance)
        exports = instance.exports(store)
        version_fn = _handler_export(store, exports, "wy_abi_version", "() -> (i32)")
        version = _into_wasm(version_fn, store)
        if version != HANDLER_ABI_VERSION:
            raise ValueError(
                f"handler speaks ABI version {version}, this host speaks version {HANDLER_ABI_VERSION}"
            )
        self._memory: Memory = _handler_export(store, exports, "memory", "memory")
        self._alloc: Func = _handler_export(store, exports, "wy_alloc", "(i32) -> (i32)")
        self._handle: Func = _handler_export(store, exports, "wy_handle", "(i32, i32) -> (i64)")
        self._store = store

    def invoke(self, data: BytesLike) -> tuple[bool, bytes]:
        """Run ``wy_handle`` on ``data``: ``(True, output)`` or ``(False, message)``."""
        data = _as_bytes(data)
        store, memory = self._store, self._memory
        n = len(data)
        if n > _U32:
            raise ValueError(f"input of {n} bytes does not fit a 32-bit memory")
        ptr = _into_wasm(self._alloc, store, n) & _U32
        if n:
            if ptr == 0:
                raise ValueError(f"wy_alloc could not allocate {n} bytes")
            size = memory.data_len(store)
            if ptr + n > size:
                raise ValueError(f"wy_alloc returned an out-of-bounds pointer: {_oob(ptr, n, size)}")
            memory.write(store, data, ptr)
        r = _into_wasm(self._handle, store, ptr, n)
        size = memory.data_len(store)
        length = r & _U32
        if r >= 0:
            out = r >> 32
            if out + length > size:
                raise ValueError(f"handler returned an out-of-bounds output: {_oob(out, length, size)}")
            return True, bytes(memory.read(store, out, out + length))
        msg = (r >> 32) & 0x7FFFFFFF
        if msg + length > size:
            raise ValueError(
                f"handler returned an out-of-bounds error message: {_oob(msg, length, size)}"
            )
        return False, bytes(memory.read(store, msg, msg + length))

    def memory_size(self) -> int:
        """The current size of the handler's linear memory, in bytes."""
        return self._memory.data_len(self._store)


# -- host functions ----------------------------------------------------------

class CallerMemory:
    """The calling instance's exported ``memory``, during one host call.

    Host calls create these; using one after its call returned raises
    ``ValueError``.  Accesses are bounds-checked: ``ValueError`` when
    ``[ptr, ptr + len)`` is not inside the memory.
    """

    __slots__ = ("_caller", "_memory")

    def __init__(self, caller: Caller) -> None:
        self._caller: Optional[Caller] = caller
        self._memory: Optional[Memory] = None

    def _get(self) -> tuple[Caller, Memory]:
        caller = self._caller
        if caller is None:
            raise ValueError("CallerMemory used after its host call returned")
        memory = self._memory
        if memory is None:
            item = caller.get("memory")
            if not isinstance(item, Memory):
                raise ValueError("the calling instance exports no memory named 'memory'")
            memory = self._memory = item
        return caller, memory

    def size(self) -> int:
        """The current size of the caller's memory, in bytes."""
        caller, memory = self._get()
        return memory.data_len(caller)

    def read(self, ptr: int, length: int) -> bytes:
        """A copy of ``length`` bytes at ``ptr``."""
        caller, memory = self._get()
        ptr, length = operator.index(ptr), operator.index(length)
        size = memory.data_len(caller)
        if ptr < 0 or length < 0 or ptr + length > size:
            raise ValueError(f"out-of-bounds memory access: {_oob(ptr, length, size)}")
        return bytes(memory.read(caller, ptr, ptr + length))

    def write(self, ptr: int, data: BytesLike) -> None:
        """Copy ``data`` into the memory at ``ptr``."""
        caller, memory = self._get()
        ptr = operator.index(ptr)
        data = _as_bytes(data)
        size = memory.data_len(caller)
        if ptr < 0 or ptr + len(data) > size:
            raise ValueError(f"out-of-bounds memory access: {_oob(ptr, len(data), size)}")
        if data:
            memory.write(caller, data, ptr)


def _parse_types(spec: Any, what: str) -> list[str]:
    if not isinstance(spec, str):
        raise TypeError(f"{what} must be a str of type codes, got {type(spec).__name__}")
    kinds = []
    for code in spec:
        kind = _TYPE_CODES.get(code)
        if kind is None:
            raise ValueError(f"unknown type code {code!r} in {what} {spec!r}; use 'i' (i32) or 'I' (i64)")
        kinds.append(kind)
    return kinds


def _check_host_func(linker: Any, module: Any, name: Any, params: Any, results: Any,
                     callback: Any) -> tuple[list[str], list[str]]:
    if not isinstance(linker, Linker):
        raise TypeError(f"expected a wasmtime.Linker, got {type(linker).__name__}")
    if not isinstance(module, str) or not isinstance(name, str):
        raise TypeError("module and name must be str")
    param_kinds = _parse_types(params, "params")
    result_kinds = _parse_types(results, "results")
    if len(result_kinds) > 1:
        raise ValueError(f"a host function returns at most one result, got results {results!r}")
    if not callable(callback):
        raise TypeError(f"callback must be callable, got {type(callback).__name__}")
    return param_kinds, result_kinds


def _valtype(kind: str) -> ValType:
    return ValType.i32() if kind == "i32" else ValType.i64()


class _HostCall:
    """What wasmtime-py calls for one host function of ``define_host_func``.

    Every exception is raised here, not in wasmtime-py's trampoline after the
    return (a result where none is expected), so that each one is parked for
    this thread (see the module docstring) before wasmtime-py puts it in its
    slot.
    """

    __slots__ = ("_callback", "_result_kind")

    def __init__(self, callback: Callable[..., Optional[int]], result_kind: Optional[str]) -> None:
        self._callback = callback
        self._result_kind = result_kind

    def __call__(self, caller: Caller, *args: int) -> Optional[int]:
        mem = CallerMemory(caller)
        try:
            result = self._callback(mem, *args)
            if self._result_kind is None:
                if result is not None:
                    raise WasmtimeError("callback produced results when it shouldn't")
            elif not isinstance(result, int):
                raise TypeError("don't know how to convert %r to %s" % (result, self._result_kind))
        except BaseException as exc:
            _PARKED[get_ident()] = (exc, exc.__context__)
            raise
        finally:
            mem._caller = None
        if _PARKED:  # what a nested call parked on this thread and the callback handled is stale
            _PARKED.pop(get_ident(), None)
        return result


_HOST_CALL_CODE = _HostCall.__call__.__code__


def define_host_func(linker: Linker, module: str, name: str, params: str, results: str,
                     callback: Callable[..., Optional[int]]) -> None:
    """Define ``module.name`` on ``linker`` as a call of ``callback(mem, *ints)``.

    ``params`` / ``results`` are type codes, ``"i"`` for i32 and ``"I"`` for
    i64 (e.g. ``"iii"`` and ``""``); at most one result.  ``mem`` is a
    ``CallerMemory``.  The callback returns an int (wrapped to the result
    type) or ``None`` when there is no result.
    """
    param_kinds, result_kinds = _check_host_func(linker, module, name, params, results, callback)
    result_kind = result_kinds[0] if result_kinds else None
    ty = FuncType([_valtype(k) for k in param_kinds], [_valtype(k) for k in result_kinds])
    linker.define_func(module, name, ty, _HostCall(callback, result_kind), access_caller=True)


# -- run_start: one WASI command execution -------------------------------------

#: The message of the ``ValueError`` raised for a module without a ``_start`` function.
NO_START = "module has no _start function export"


# wasmtime-py has no setter for stdin bytes (wasi_config_set_stdin_bytes): the
# C function is called through ctypes, with a prototype of its own (the one in
# wasmtime-py's bindings is shared with wasmtime-py).
def _c_function(name: str, restype: Any, *argtypes: Any) -> Any:
    address = ctypes.cast(getattr(_ffi.dll, name), ctypes.c_void_p).value
    if address is None:  # pragma: no cover - the symbol exists in every wasmtime 50 build
        raise ImportError(f"wasmtime's C library has no {name}")
    return ctypes.CFUNCTYPE(restype, *argtypes)(address)


_byte_vec_new = _c_function("wasm_byte_vec_new", None, ctypes.POINTER(_ffi.wasm_byte_vec_t), ctypes.c_size_t,
                            ctypes.c_char_p)
_set_stdin_bytes = _c_function("wasi_config_set_stdin_bytes", None, ctypes.c_void_p,
                               ctypes.POINTER(_ffi.wasm_byte_vec_t))


def _items(value: Any, what: str) -> list:
    if isinstance(value, (str, bytes, bytearray)):
        raise TypeError(f"{what} must be a sequence, not {type(value).__name__}")
    return list(value)


def _text(value: Any, what: str) -> str:
    if not isinstance(value, str):
        raise TypeError(f"{what} must be a str, got {type(value).__name__}")
    if b"\0" in value.encode("utf-8"):
        raise ValueError(f"{what} contains a NUL character")
    return value


def _path(value: Any, what: str) -> str:
    if isinstance(value, os.PathLike):
        value = os.fspath(value)
    return _text(value, what)


def _unpack(item: Any, n: int, what: str) -> tuple:
    try:
        values = () if isinstance(item, (str, bytes)) else tuple(item)
    except TypeError:
        values = ()
    if len(values) != n:
        raise TypeError(f"{what} must be {n}-item sequences, got {item!r}")
    return values


def _memory_size(store: Store, instance: Optional[Instance]) -> int:
    if instance is None:
        return 0
    try:
        memory = instance.exports(store).get("memory")
        return memory.data_len(store) if isinstance(memory, Memory) else 0
    except ValueError:  # the store was closed meanwhile
        return 0


def _describe(exc: BaseException, memory_size: int, stage: str) -> None:
    try:
        exc.memory_size = memory_size  # type: ignore[attr-defined]
        exc.stage = stage  # type: ignore[attr-defined]
    except (AttributeError, TypeError):  # an exception type that takes no attributes
        pass


def run_start(store: Store, pre: InstancePre, stdin: BytesLike, stdout_path: Union[str, "os.PathLike[str]"],
              stderr_path: Union[str, "os.PathLike[str]"], argv: Sequence[str] = (),
              env: Sequence[tuple[str, str]] = (), preopens: Sequence[tuple[str, str, bool]] = ()) -> int:
    """Run one WASI command in ``store``: configure WASI, instantiate ``pre``, call ``_start``.

    The WASI config gets ``argv``, the ``env`` (name, value) pairs, ``stdin``
    (served from a copy of the bytes), stdout and stderr written to the two
    files (created, or truncated), and ``preopens`` (host dir, guest path,
    writable): a writable one grants every directory and file permission, a
    read-only one only reading — ``WasiConfig.preopen_dir``'s ``fs_mutable``.

    Returns the exit status: 0 when ``_start`` returns, the guest's code
    when it calls ``proc_exit`` (what wasmtime-py raises as ``ExitTrap``).
    Otherwise raises what wasmtime-py raises: ``wasmtime.Trap`` for traps
    (fuel, epoch interruption included), ``WasmtimeError`` for other errors
    (instantiation, an epoch-deadline callback's error, a file that cannot
    be opened), the exception a host import raised, ``ValueError(NO_START)``
    for a module without a ``_start`` function, ``TypeError`` /
    ``ValueError`` for bad arguments (checked before anything is done).

    Every exception raised carries two attributes:

    * ``memory_size``: the byte size of the instance's exported ``memory``
      when it failed (0 without an instance or such a memory), which tells
      a guest that ran out of memory from one that merely trapped;
    * ``stage``: ``"setup"`` (the arguments, the WASI configuration — e.g. a
      file or directory that cannot be opened — or ``set_wasi``),
      ``"instantiate"`` (``pre.instantiate``, a closed ``pre`` included) or
      ``"start"`` (finding and running ``_start``): a failure in setup is the
      host's, the others are the guest's.
    """
    instance: Optional[Instance] = None
    stage = "setup"
    try:
        if not isinstance(store, Store):
            raise TypeError(f"expected a wasmtime.Store, got {type(store).__name__}")
        if not isinstance(pre, InstancePre):
            raise TypeError(f"expected a wasmtime.InstancePre, got {type(pre).__name__}")
        data = bytes(_as_bytes(stdin))
        stdout = _path(stdout_path, "stdout_path")
        stderr = _path(stderr_path, "stderr_path")
        args = [_text(a, "argv item") for a in _items(argv, "argv")]
        pairs = []
        for item in _items(env, "env"):
            name, value = _unpack(item, 2, "env items")
            pairs.append((_text(name, "env name"), _text(value, "env value")))
        dirs = []
        for item in _items(preopens, "preopens"):
            host, guest, writable = _unpack(item, 3, "preopens items")
            dirs.append((_text(host, "preopen host path"), _text(guest, "preopen guest path"), bool(writable)))

        wasi = WasiConfig()
        wasi.argv = args
        wasi.env = pairs
        vec = _ffi.wasm_byte_vec_t()
        _byte_vec_new(ctypes.byref(vec), len(data), data)
        _set_stdin_bytes(ctypes.cast(wasi.ptr(), ctypes.c_void_p), ctypes.byref(vec))  # takes the copy
        wasi.stdout_file = stdout
        wasi.stderr_file = stderr
        for host, guest, writable in dirs:
            wasi.preopen_dir(host, guest, writable)
        store.set_wasi(wasi)
        try:
            stage = "instantiate"
            instance = _into_wasm(pre.instantiate, store)
            stage = "start"
            start = instance.exports(store).get("_start")
            if not isinstance(start, Func):
                raise ValueError(NO_START)
            _into_wasm(start, store)
        except ExitTrap as exc:
            return exc.code
        return 0
    except BaseException as exc:
        _describe(exc, _memory_size(store, instance), stage)
        raise


# -- run_command_env: a whole command execution environment ---------------------

# wasmtime-py does not wrap the epoch-deadline callback; the callback is passed
# as the address of a C function (the caller keeps it alive), data as an integer.
_set_deadline_callback = _c_function("wasmtime_store_epoch_deadline_callback", None, ctypes.c_void_p,
                                     ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p)
_INT32_MAX = (1 << 31) - 1
_INT64_MAX = (1 << 63) - 1
_UINT64_MAX = (1 << 64) - 1


def _bounded(value: Any, what: str, low: int, high: int) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError(f"{what} must be an int, got {type(value).__name__}")
    if not low <= value <= high:
        raise ValueError(f"{what} must be between {low} and {high}, got {value}")
    return value


def check_env_args(engine: Any, pre: Any, stdin: Any, max_stdout: Any, max_stderr: Any, memory_limit: Any,
                   fuel: Any, watch_key: Any, deadline_callback: Any, argv: Any, env: Any, preopens: Any) -> None:
    """The checks of ``run_command_env``'s arguments other than the output
    files, in the compiled twin's order (``_prepare_env``); raises TypeError /
    ValueError before anything is done."""
    if not isinstance(engine, Engine):
        raise TypeError(f"expected a wasmtime.Engine, got {type(engine).__name__}")
    if not isinstance(pre, InstancePre):
        raise TypeError(f"expected a wasmtime.InstancePre, got {type(pre).__name__}")
    _bounded(max_stdout, "max_stdout", 0, _INT64_MAX)
    _bounded(max_stderr, "max_stderr", 0, _INT64_MAX)
    _bounded(memory_limit, "memory_limit", -1, _INT64_MAX)
    if fuel is not None:
        _bounded(fuel, "fuel", 0, _UINT64_MAX)
    _bounded(watch_key, "watch_key", 0, _UINT64_MAX)
    _bounded(deadline_callback, "deadline_callback", 1, _UINT64_MAX)
    _as_bytes(stdin)
    for a in _items(argv, "argv"):
        _text(a, "argv item")
    for item in _items(env, "env"):
        name, value = _unpack(item, 2, "env items")
        _text(name, "env name")
        _text(value, "env value")
    for item in _items(preopens, "preopens"):
        host, guest, _ = _unpack(item, 3, "preopens items")
        _text(host, "preopen host path")
        _text(guest, "preopen guest path")


def _read_output(fd: int, limit: int) -> tuple[bytes, bool]:
    """At most ``limit`` bytes of the file open at ``fd``, and whether it held
    more.  Sized by fstat first: reading ``limit + 1`` would allocate the whole
    limit every time."""
    size = os.fstat(fd).st_size
    n = min(size, limit)
    return (os.pread(fd, n, 0) if n else b""), size > limit


def run_command_env(engine: Engine, pre: InstancePre, stdin: BytesLike,
                    stdout_path: Union[str, "os.PathLike[str]"], stderr_path: Union[str, "os.PathLike[str]"],
                    stdout_fd: int, stderr_fd: int, max_stdout: int, max_stderr: int, memory_limit: int,
                    fuel: Optional[int], watch_key: int, deadline_callback: int, argv: Sequence[str] = (),
                    env: Sequence[tuple[str, str]] = (),
                    preopens: Sequence[tuple[str, str, bool]] = ()) -> tuple[int, bytes, bytes, bool]:
    """One whole command execution environment: ``run_start`` in a store of its own.

    Creates a store on ``engine`` with ``memory_limit`` bytes of linear memory
    (-1: no limit) and ``fuel`` (None: fuel is not set), installs the epoch
    deadline callback at address ``deadline_callback`` (a C function, e.g. a
    ctypes callback the caller keeps alive) with ``watch_key`` as its data,
    sets the epoch deadline to 1, runs ``run_start``, then reads the outputs
    through ``stdout_fd`` / ``stderr_fd``, descriptors open for reading on
    the two files.  The store is deleted on every path; the compiled twin
    makes all these calls without the GIL.

    Returns ``(exit_code, stdout, stderr, stdout_too_big)``: at most
    ``max_stdout`` / ``max_stderr`` bytes of each file, and whether stdout held
    more than ``max_stdout``.  Raises what ``run_start`` raises, with
    ``memory_size`` and ``stage`` attributes; bad arguments and a fuel that
    cannot be set (an engine without fuel) are ``"setup"`` failures; an
    ``OSError`` from reading the outputs is a ``"start"`` one, memory size 0.
    """
    try:
        _bounded(stdout_fd, "stdout_fd", 0, _INT32_MAX)
        _bounded(stderr_fd, "stderr_fd", 0, _INT32_MAX)
        _path(stdout_path, "stdout_path")
        _path(stderr_path, "stderr_path")
        check_env_args(engine, pre, stdin, max_stdout, max_stderr, memory_limit, fuel, watch_key, deadline_callback,
                       argv, env, preopens)
        store = Store(engine)
    except BaseException as exc:
        _describe(exc, 0, "setup")
        raise
    try:
        try:
            store.set_limits(memory_size=memory_limit)
            if fuel is not None:
                store.set_fuel(fuel)
            _set_deadline_callback(ctypes.cast(store.ptr(), ctypes.c_void_p), deadline_callback,
                                   watch_key or None, None)
            store.set_epoch_deadline(1)
        except BaseException as exc:
            _describe(exc, 0, "setup")
            raise
        code = run_start(store, pre, stdin, stdout_path, stderr_path, argv, env, preopens)
        try:
            stdout, too_big = _read_output(stdout_fd, max_stdout)
            stderr, _ = _read_output(stderr_fd, max_stderr)
        except BaseException as exc:
            _describe(exc, 0, "start")
            raise
        return code, stdout, stderr, too_big
    finally:
        store.close()
