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
* ``define_host_func`` — a host import whose callback gets a
  ``CallerMemory`` (the caller's ``memory``, valid during the call only) and
  the integer arguments.  A callback must not reference a ``Store`` (or an
  object holding one): the linker keeps the callback where the garbage
  collector cannot see it, so such a cycle is never freed.

An exception raised by a callback becomes a trap in wasm and is re-raised
from the call that entered wasm, as wasmtime-py does.  Traps, fuel and epoch
interruptions and WASI exits raise ``wasmtime.Trap`` / ``WasmtimeError`` /
``ExitTrap`` exactly as ``Func.__call__`` does.
"""
from __future__ import annotations

import importlib.metadata
import operator
from typing import Any, Callable, Optional, Union

from wasmtime import (
    Caller,
    Func,
    FuncType,
    Global,
    Instance,
    Linker,
    Memory,
    SharedMemory,
    Store,
    Table,
    Tag,
    ValType,
    WasmtimeError,
)

__all__ = [
    "HANDLER_ABI_VERSION",
    "WASMTIME_MAJOR",
    "CallerMemory",
    "Export",
    "HandlerCall",
    "check_wasmtime_version",
    "define_host_func",
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
        return self._func(self._store, *args)  # type: ignore[no-any-return]


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
        version = version_fn(store)
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
        ptr = self._alloc(store, n) & _U32
        if n:
            if ptr == 0:
                raise ValueError(f"wy_alloc could not allocate {n} bytes")
            size = memory.data_len(store)
            if ptr + n > size:
                raise ValueError(f"wy_alloc returned an out-of-bounds pointer: {_oob(ptr, n, size)}")
            memory.write(store, data, ptr)
        r = self._handle(store, ptr, n)
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

    def host_call(caller: Caller, *args: int) -> Optional[int]:
        mem = CallerMemory(caller)
        try:
            result = callback(mem, *args)
        finally:
            mem._caller = None
        if result_kind is not None and not isinstance(result, int):
            raise TypeError("don't know how to convert %r to %s" % (result, result_kind))
        return result

    linker.define_func(module, name, ty, host_call, access_caller=True)
