# cython: language_level=3
"""Prepared calls into wasm through wasmtime's C API: the compiled twin of ``_call_py``.

Same API, results, exceptions and messages as ``_call_py`` (read its
docstring for the handler ABI v1 and the host-function contract); the
difference is the path into wasm:

* exports are looked up and type-checked once, then called with
  ``wasmtime_func_call_unchecked`` on a prepared ``wasmtime_val_raw_t``
  buffer, with the GIL released for the duration of the wasm call;
* host imports are ``wasmtime_linker_define_func_unchecked`` trampolines that
  take the GIL back only to run the Python callback;
* linear memory is read and written with ``memcpy`` after re-reading the
  memory's base and size following every call into wasm (memory can grow and
  move during a call, so no base pointer is kept across calls);
* ``run_start`` checks and converts its arguments into C buffers, then makes
  every C call of a command execution (WASI config, instantiation, ``_start``)
  in one stretch with the GIL released: a worker thread hands the GIL over
  once per execution instead of once per ctypes call;
* ``run_command_env`` goes further: the store itself (created, limited,
  fuelled, given the caller's epoch-deadline callback, deleted) and the reads
  of the two output files are in the same stretch without the GIL.

Nothing links against wasmtime at build time: the C functions are resolved at
import from the library wasmtime-py has already loaded (``wasmtime._ffi.dll``),
and the struct layouts in ``_wasmtime_capi.pxd`` are compared with
wasmtime-py's ctypes bindings; a mismatch, or a wasmtime major other than
``WASMTIME_MAJOR``, makes the import fail so the pure twin is used instead.

Errors are built the way wasmtime-py builds them (``WasmtimeError._from_ptr``,
``Trap._from_ptr``).  An exception raised by a host callback is parked for
its own thread in ``_call_py._PARKED`` (the dict both twins share) and a
failed call into wasm raises its own thread's, never another thread's
(``_claim_pending``; ``_call_py``'s docstring says why); wasmtime-py's
pending-exception slot (``wasmtime._func.LAST_EXCEPTION``) is set too, so a
host function defined here behaves the same under ``Func.__call__``, and an
exception from that slot no other thread parked is raised as a fallback, so a
wasmtime-py host function behaves the same under ``Export``.  A WASI exit is
never replaced by a pending exception: a host import that raises makes the
guest trap, so an exception pending at an exit is not the execution's own.

A ``Store`` is not thread-safe: one thread at a time may call into a given
store (through any ``Export`` / ``HandlerCall`` of it), as with wasmtime-py.
"""
cimport cython
from cpython.bytearray cimport PyByteArray_AS_STRING, PyByteArray_GET_SIZE
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from cpython.long cimport PyLong_Check
from cpython.pythread cimport PyThread_get_thread_ident
from cpython.ref cimport Py_DECREF, Py_INCREF
from libc.stdint cimport int64_t, uint8_t, uint32_t, uint64_t, uintptr_t
from libc.stdlib cimport calloc, free, malloc
from libc.string cimport memcpy, memset
from libc.errno cimport EINTR, ENOMEM, errno
from posix.stat cimport fstat, struct_stat
from posix.types cimport off_t
from posix.unistd cimport pread

from fastpath._wasmtime_capi cimport *

import ctypes
import importlib.metadata
import operator
import os

from wasmtime import Engine, FuncType, Instance, InstancePre, Linker, Store, Trap, ValType, WasmtimeError
from wasmtime import _ffi
from wasmtime import _func as _wasmtime_func

from fastpath import _call_py


cdef extern from "Python.h":
    int Py_IsInitialized() nogil
    unsigned long long PyLong_AsUnsignedLongLongMask(object) except? -1
    long long PyLong_AsLongLongAndOverflow(object, int *overflow) except? -1


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

#: The wasmtime major version this module (and its pure twin) is written for.
WASMTIME_MAJOR = 50
#: The handler ABI version ``HandlerCall`` speaks.
HANDLER_ABI_VERSION = 1

cdef uint64_t U32 = 0xFFFFFFFF


def check_wasmtime_version(installed=None):
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


# -- import-time binding to the loaded library ------------------------------

try:
    check_wasmtime_version()
except RuntimeError as _exc:
    raise ImportError(str(_exc)) from _exc


cdef wasmtime_extern_t _probe_extern
_LAYOUTS = (
    ("wasmtime_func_t", sizeof(wasmtime_func_t)),
    ("wasmtime_memory_t", sizeof(wasmtime_memory_t)),
    ("wasmtime_instance_t", sizeof(wasmtime_instance_t)),
    ("wasmtime_extern_union", sizeof(wasmtime_extern_union_t)),
    ("wasmtime_extern_t", sizeof(wasmtime_extern_t)),
    ("wasmtime_val_raw_t", sizeof(wasmtime_val_raw_t)),
    ("wasm_valtype_vec_t", sizeof(wasm_valtype_vec_t)),
    ("wasm_byte_vec_t", sizeof(wasm_byte_vec_t)),
)
for _name, _size in _LAYOUTS:
    if ctypes.sizeof(getattr(_ffi, _name)) != _size:
        raise ImportError(
            f"fastpath.call: {_name} is {_size} bytes here but "
            f"{ctypes.sizeof(getattr(_ffi, _name))} in wasmtime-py's bindings"
        )
if _ffi.wasmtime_extern_t.of.offset != <size_t>(<char *>&_probe_extern.of - <char *>&_probe_extern):
    raise ImportError("fastpath.call: wasmtime_extern_t.of is not where wasmtime-py has it")


cdef void *_symbol(str name) except NULL:
    try:
        fn = getattr(_ffi.dll, name)
    except AttributeError:
        raise ImportError(f"fastpath.call: wasmtime's C library has no {name}") from None
    return <void *><uintptr_t>ctypes.cast(fn, ctypes.c_void_p).value


cdef fn_wasmtime_func_call_unchecked c_func_call_unchecked = \
    <fn_wasmtime_func_call_unchecked>_symbol("wasmtime_func_call_unchecked")
cdef fn_wasmtime_func_type c_func_type = <fn_wasmtime_func_type>_symbol("wasmtime_func_type")
cdef fn_wasmtime_caller_context c_caller_context = \
    <fn_wasmtime_caller_context>_symbol("wasmtime_caller_context")
cdef fn_wasmtime_caller_export_get c_caller_export_get = \
    <fn_wasmtime_caller_export_get>_symbol("wasmtime_caller_export_get")
cdef fn_wasmtime_instance_export_get c_instance_export_get = \
    <fn_wasmtime_instance_export_get>_symbol("wasmtime_instance_export_get")
cdef fn_wasmtime_extern_delete c_extern_delete = \
    <fn_wasmtime_extern_delete>_symbol("wasmtime_extern_delete")
cdef fn_wasmtime_memory_data c_memory_data = <fn_wasmtime_memory_data>_symbol("wasmtime_memory_data")
cdef fn_wasmtime_memory_data_size c_memory_data_size = \
    <fn_wasmtime_memory_data_size>_symbol("wasmtime_memory_data_size")
cdef fn_wasm_functype_params c_functype_params = \
    <fn_wasm_functype_params>_symbol("wasm_functype_params")
cdef fn_wasm_functype_results c_functype_results = \
    <fn_wasm_functype_results>_symbol("wasm_functype_results")
cdef fn_wasm_functype_delete c_functype_delete = \
    <fn_wasm_functype_delete>_symbol("wasm_functype_delete")
cdef fn_wasm_valtype_kind c_valtype_kind = <fn_wasm_valtype_kind>_symbol("wasm_valtype_kind")
cdef fn_wasmtime_trap_new c_trap_new = <fn_wasmtime_trap_new>_symbol("wasmtime_trap_new")
cdef fn_wasmtime_linker_define_func_unchecked c_linker_define_func_unchecked = \
    <fn_wasmtime_linker_define_func_unchecked>_symbol("wasmtime_linker_define_func_unchecked")
cdef fn_wasm_byte_vec_new c_byte_vec_new = <fn_wasm_byte_vec_new>_symbol("wasm_byte_vec_new")
cdef fn_wasi_config_new c_wasi_config_new = <fn_wasi_config_new>_symbol("wasi_config_new")
cdef fn_wasi_config_delete c_wasi_config_delete = <fn_wasi_config_delete>_symbol("wasi_config_delete")
cdef fn_wasi_config_set_argv c_wasi_config_set_argv = <fn_wasi_config_set_argv>_symbol("wasi_config_set_argv")
cdef fn_wasi_config_set_env c_wasi_config_set_env = <fn_wasi_config_set_env>_symbol("wasi_config_set_env")
cdef fn_wasi_config_set_stdin_bytes c_wasi_config_set_stdin_bytes = \
    <fn_wasi_config_set_stdin_bytes>_symbol("wasi_config_set_stdin_bytes")
cdef fn_wasi_config_set_file c_wasi_config_set_stdout_file = \
    <fn_wasi_config_set_file>_symbol("wasi_config_set_stdout_file")
cdef fn_wasi_config_set_file c_wasi_config_set_stderr_file = \
    <fn_wasi_config_set_file>_symbol("wasi_config_set_stderr_file")
cdef fn_wasi_config_preopen_dir c_wasi_config_preopen_dir = \
    <fn_wasi_config_preopen_dir>_symbol("wasi_config_preopen_dir")
cdef fn_wasmtime_context_set_wasi c_context_set_wasi = \
    <fn_wasmtime_context_set_wasi>_symbol("wasmtime_context_set_wasi")
cdef fn_wasmtime_instance_pre_instantiate c_instance_pre_instantiate = \
    <fn_wasmtime_instance_pre_instantiate>_symbol("wasmtime_instance_pre_instantiate")
cdef fn_wasmtime_error_exit_status c_error_exit_status = \
    <fn_wasmtime_error_exit_status>_symbol("wasmtime_error_exit_status")
cdef fn_wasmtime_error_delete c_error_delete = <fn_wasmtime_error_delete>_symbol("wasmtime_error_delete")
cdef fn_wasm_trap_delete c_trap_delete = <fn_wasm_trap_delete>_symbol("wasm_trap_delete")

_P_ERROR = ctypes.POINTER(_ffi.wasmtime_error_t)
_P_TRAP = ctypes.POINTER(_ffi.wasm_trap_t)
_c_void_p = ctypes.c_void_p
_ctypes_cast = ctypes.cast


cdef inline uintptr_t _address(object ctypes_pointer) except? 0:
    return <uintptr_t>_ctypes_cast(ctypes_pointer, _c_void_p).value


# -- shared checks and messages (spelled as in _call_py) ----------------------

_EXTERN_KINDS = {
    WASMTIME_EXTERN_FUNC: "function",
    WASMTIME_EXTERN_GLOBAL: "global",
    WASMTIME_EXTERN_TABLE: "table",
    WASMTIME_EXTERN_MEMORY: "memory",
    WASMTIME_EXTERN_SHAREDMEMORY: "shared memory",
    WASMTIME_EXTERN_TAG: "tag",
}


cdef _check_store_instance(store, instance):
    if not isinstance(store, Store):
        raise TypeError(f"expected a wasmtime.Store, got {type(store).__name__}")
    if not isinstance(instance, Instance):
        raise TypeError(f"expected a wasmtime.Instance, got {type(instance).__name__}")


cdef str _signature(ty):
    params = ", ".join(str(t) for t in ty.params)
    results = ", ".join(str(t) for t in ty.results)
    return f"({params}) -> ({results})"


cdef str _oob(ptr, length, size):
    return f"ptr={ptr} len={length} memory size={size}"


cdef inline int _check_open(object store) except -1:
    # Store.close() clears the context; wasmtime-py then raises this from _context().
    if store._Store__context is None:
        raise ValueError("already closed")
    return 0


cdef wasmtime_context_t *_context_of(object store) except NULL:
    return <wasmtime_context_t *>_address(store._context())


# -- host exceptions, per thread (see _call_py's docstring) --------------------

# thread ident -> (exception, its __context__ when parked); shared with the
# pure twin, so a host function of either twin is claimed by either's calls.
cdef dict _PARKED = _call_py._PARKED


cdef int _forget_parked() except -1:
    """At a call into wasm: what this thread parked before is stale (the call
    that entered wasm then was wasmtime-py's own, which raised it)."""
    if _PARKED:
        _PARKED.pop(PyThread_get_thread_ident(), None)
    return 0


cdef object _claim_pending():
    """After a failed call into wasm on this thread: the exception a host
    import raised during it, or None.

    This thread's parked exception (taken out of wasmtime-py's slot too when
    the slot holds it); else, for a host function defined with plain
    wasmtime-py, the slot's exception unless another thread parked it.
    """
    cdef object entry = None
    if _PARKED:
        entry = _PARKED.pop(PyThread_get_thread_ident(), None)
    last = _wasmtime_func.LAST_EXCEPTION
    if entry is not None:
        exc = entry[0]
        if last is exc:
            _wasmtime_func.LAST_EXCEPTION = None
        return exc
    if last is None:
        return None
    for entry in _PARKED.values():  # no Python code runs in the loop: the dict cannot change
        if entry[0] is last:
            return None
    _wasmtime_func.LAST_EXCEPTION = None
    return last


cdef int _raise_failure(wasmtime_error_t *error, wasm_trap_t *trap, object pending) except -1:
    # As wasmtime-py's enter_wasm: build the error/trap (taking ownership),
    # but a pending exception from a host callback wins.
    if error != NULL:
        exc = WasmtimeError._from_ptr(_ctypes_cast(<uintptr_t>error, _P_ERROR))
    else:
        exc = Trap._from_ptr(_ctypes_cast(<uintptr_t>trap, _P_TRAP))
    if pending is not None:
        raise pending
    raise exc


cdef inline int _call(wasmtime_context_t *ctx, const wasmtime_func_t *func,
                      wasmtime_val_raw_t *vals, size_t nvals) except -1:
    cdef wasmtime_error_t *error
    cdef wasm_trap_t *trap = NULL
    _forget_parked()
    with nogil:
        error = c_func_call_unchecked(ctx, func, vals, nvals, &trap)
    if error != NULL or trap != NULL:
        _raise_failure(error, trap, _claim_pending())
    return 0


cdef bint _export_get(wasmtime_context_t *ctx, object instance, str name,
                      wasmtime_extern_t *item) except -1:
    cdef wasmtime_instance_t inst
    cdef bytes raw = name.encode("utf-8")
    memcpy(&inst, <void *>(<uintptr_t>ctypes.addressof(instance._instance)),
           sizeof(wasmtime_instance_t))
    if not c_instance_export_get(ctx, &inst, raw, len(raw), item):
        return False
    if item.kind == WASMTIME_EXTERN_SHAREDMEMORY:
        c_extern_delete(item)  # the only owned kind; only its tag is used below
    return True


cdef tuple _func_kinds(wasmtime_context_t *ctx, const wasmtime_func_t *func):
    """(params, results) of ``func`` as bytes of wasm_valkind_t."""
    cdef wasm_functype_t *ty = c_func_type(ctx, func)
    cdef const wasm_valtype_vec_t *vec
    cdef size_t i
    cdef bytearray params = bytearray(), results = bytearray()
    try:
        vec = c_functype_params(ty)
        for i in range(vec.size):
            params.append(c_valtype_kind(vec.data[i]))
        vec = c_functype_results(ty)
        for i in range(vec.size):
            results.append(c_valtype_kind(vec.data[i]))
    finally:
        c_functype_delete(ty)
    return bytes(params), bytes(results)


cdef inline bint _all_int(bytes kinds):
    for k in kinds:
        if k != WASM_I32 and k != WASM_I64:
            return False
    return True


cdef inline str _kind_name(char kind):
    return "i32" if kind == WASM_I32 else "i64"


cdef inline void _set_int(wasmtime_val_raw_t *slot, char kind, object value):
    # ``value`` is an int.  Wrapped like ctypes (and so wasmtime-py) wraps;
    # an i32 is stored zero-extended, as wasmtime's ValRaw::i32 stores it.
    cdef unsigned long long bits = PyLong_AsUnsignedLongLongMask(value)
    if kind == WASM_I32:
        slot.i64 = <int64_t><uint64_t><uint32_t>bits
    else:
        slot.i64 = <int64_t>bits


cdef inline object _get_int(const wasmtime_val_raw_t *slot, char kind):
    if kind == WASM_I32:
        return slot.i32
    return slot.i64


cdef bytes _other_bytes(object data):
    """``data`` that is neither bytes nor bytearray, as bytes (or TypeError)."""
    if isinstance(data, memoryview):
        return data.tobytes()
    raise TypeError(f"expected bytes-like data, got {type(data).__name__}")


cdef bytes _stdin_bytes(object stdin):
    """A command's input as bytes of its own (a bytearray is copied: a worker
    may read it after the caller changed it), or TypeError."""
    if isinstance(stdin, bytes):
        return stdin
    if isinstance(stdin, bytearray):
        return bytes(stdin)
    return _other_bytes(stdin)


# -- Export ------------------------------------------------------------------

@cython.final
cdef class Export:
    """A prepared call of one exported function with integer (i32/i64)
    params and at most one integer result."""

    cdef object _store
    cdef wasmtime_context_t *_ctx
    cdef wasmtime_func_t _func
    cdef bytes _kinds            # one wasm_valkind_t per parameter
    cdef Py_ssize_t _nparams
    cdef int _result             # -1: no result, else its wasm_valkind_t
    cdef wasmtime_val_raw_t *_vals
    cdef size_t _nvals

    def __cinit__(self):
        self._vals = NULL

    def __dealloc__(self):
        free(self._vals)

    def __init__(self, store, instance, name):
        cdef wasmtime_extern_t item
        _check_store_instance(store, instance)
        if not isinstance(name, str):
            raise TypeError(f"export name must be a str, got {type(name).__name__}")
        ctx = _context_of(store)
        if not _export_get(ctx, instance, name, &item):
            raise ValueError(f"instance has no export named {name!r}")
        if item.kind != WASMTIME_EXTERN_FUNC:
            raise TypeError(f"export {name!r} is a {_EXTERN_KINDS.get(item.kind, 'unknown extern')}, not a function")
        params, results = _func_kinds(ctx, &item.of.func)
        if len(results) > 1 or not _all_int(params) or not _all_int(results):
            ty = instance.exports(store)[name].type(store)
            raise TypeError(
                f"export {name!r} has type {_signature(ty)}; a prepared call takes "
                "i32/i64 parameters and at most one i32/i64 result"
            )
        nvals = max(len(params), len(results), 1)
        vals = <wasmtime_val_raw_t *>calloc(nvals, sizeof(wasmtime_val_raw_t))
        if vals == NULL:
            raise MemoryError()
        free(self._vals)
        self._vals = vals
        self._nvals = nvals
        self._func = item.of.func
        self._kinds = params
        self._nparams = len(params)
        self._result = results[0] if results else -1
        self._ctx = ctx
        self._store = store

    def __call__(self, *args):
        cdef Py_ssize_t i, n = len(args)
        cdef wasmtime_val_raw_t *vals = self._vals
        cdef const char *kinds
        if vals == NULL:
            raise ValueError("Export is not initialized")
        if n != self._nparams:
            word = "many" if n > self._nparams else "few"
            raise WasmtimeError(
                f"too {word} parameters provided: given {n}, expected {self._nparams}"
            )
        if n:
            kinds = PyBytes_AS_STRING(self._kinds)
            for i in range(n):
                arg = args[i]
                if not PyLong_Check(arg):
                    raise TypeError("don't know how to convert %r to %s" % (arg, _kind_name(kinds[i])))
                _set_int(&vals[i], kinds[i], arg)
        _check_open(self._store)
        _call(self._ctx, &self._func, vals, self._nvals)
        if self._result < 0:
            return None
        return _get_int(&vals[0], <char>self._result)


# -- HandlerCall ---------------------------------------------------------------

cdef int _handler_func(wasmtime_context_t *ctx, object store, object instance, str name,
                       bytes params, bytes results, str expected,
                       wasmtime_func_t *out) except -1:
    cdef wasmtime_extern_t item
    if not _export_get(ctx, instance, name, &item):
        raise ValueError(f"handler does not export {name!r} (handler ABI v{HANDLER_ABI_VERSION})")
    if item.kind != WASMTIME_EXTERN_FUNC:
        raise ValueError(
            f"handler export {name!r} is a {_EXTERN_KINDS.get(item.kind, 'unknown extern')}, not a function"
        )
    if _func_kinds(ctx, &item.of.func) != (params, results):
        found = _signature(instance.exports(store)[name].type(store))
        raise ValueError(f"handler export {name!r} has type {found}, expected {expected}")
    out[0] = item.of.func
    return 0


@cython.final
cdef class HandlerCall:
    """Prepared calls into one handler instance per the handler ABI v1."""

    cdef object _store
    cdef wasmtime_context_t *_ctx
    cdef wasmtime_memory_t _memory
    cdef wasmtime_func_t _alloc
    cdef wasmtime_func_t _handle
    cdef wasmtime_val_raw_t _vals[2]

    def __init__(self, store, instance):
        cdef wasmtime_extern_t item
        cdef wasmtime_func_t version_fn
        _check_store_instance(store, instance)
        ctx = _context_of(store)
        _handler_func(ctx, store, instance, "wy_abi_version", b"", b"\x00", "() -> (i32)", &version_fn)
        memset(self._vals, 0, sizeof(self._vals))
        _call(ctx, &version_fn, self._vals, 1)
        version = self._vals[0].i32
        if version != HANDLER_ABI_VERSION:
            raise ValueError(
                f"handler speaks ABI version {version}, this host speaks version {HANDLER_ABI_VERSION}"
            )
        if not _export_get(ctx, instance, "memory", &item):
            raise ValueError(f"handler does not export 'memory' (handler ABI v{HANDLER_ABI_VERSION})")
        if item.kind != WASMTIME_EXTERN_MEMORY:
            raise ValueError(
                f"handler export 'memory' is a {_EXTERN_KINDS.get(item.kind, 'unknown extern')}, not a memory"
            )
        self._memory = item.of.memory
        _handler_func(ctx, store, instance, "wy_alloc", b"\x00", b"\x00", "(i32) -> (i32)", &self._alloc)
        _handler_func(ctx, store, instance, "wy_handle", b"\x00\x00", b"\x01", "(i32, i32) -> (i64)",
                      &self._handle)
        self._ctx = ctx
        self._store = store

    def invoke(self, data):
        """Run ``wy_handle`` on ``data``: ``(True, output)`` or ``(False, message)``."""
        cdef const char *src
        cdef uint8_t *base
        cdef uint64_t n, ptr, size, out, length
        cdef int64_t r
        cdef wasmtime_context_t *ctx = self._ctx
        if isinstance(data, bytes):
            n = <uint64_t>PyBytes_GET_SIZE(data)
        elif isinstance(data, bytearray):
            n = <uint64_t>PyByteArray_GET_SIZE(data)
        else:
            data = _other_bytes(data)
            n = <uint64_t>PyBytes_GET_SIZE(data)
        if n > U32:
            raise ValueError(f"input of {n} bytes does not fit a 32-bit memory")
        if self._store is None:
            raise ValueError("HandlerCall is not initialized")
        _check_open(self._store)
        self._vals[0].i64 = <int64_t>n
        _call(ctx, &self._alloc, self._vals, 1)
        ptr = <uint32_t>self._vals[0].i32
        if n:
            if ptr == 0:
                raise ValueError(f"wy_alloc could not allocate {n} bytes")
            size = c_memory_data_size(ctx, &self._memory)
            if ptr + n > size:
                raise ValueError(f"wy_alloc returned an out-of-bounds pointer: {_oob(ptr, n, size)}")
            base = c_memory_data(ctx, &self._memory)
            # The source pointer is taken now, not before the call: a
            # bytearray can be resized by another thread while wasm runs.
            if isinstance(data, bytes):
                src = PyBytes_AS_STRING(data)
            else:
                if <uint64_t>PyByteArray_GET_SIZE(data) != n:
                    raise ValueError("input bytearray changed size during the call")
                src = PyByteArray_AS_STRING(data)
            memcpy(base + ptr, src, n)
        self._vals[0].i64 = <int64_t>ptr
        self._vals[1].i64 = <int64_t>n
        _call(ctx, &self._handle, self._vals, 2)
        r = self._vals[0].i64
        size = c_memory_data_size(ctx, &self._memory)
        base = c_memory_data(ctx, &self._memory)
        length = <uint64_t>r & U32
        if r >= 0:
            out = <uint64_t>r >> 32
            if out + length > size:
                raise ValueError(f"handler returned an out-of-bounds output: {_oob(out, length, size)}")
            return True, PyBytes_FromStringAndSize(<char *>base + out, <Py_ssize_t>length)
        out = (<uint64_t>r >> 32) & 0x7FFFFFFF
        if out + length > size:
            raise ValueError(
                f"handler returned an out-of-bounds error message: {_oob(out, length, size)}"
            )
        return False, PyBytes_FromStringAndSize(<char *>base + out, <Py_ssize_t>length)

    def memory_size(self):
        """The current size of the handler's linear memory, in bytes."""
        if self._store is None:
            raise ValueError("HandlerCall is not initialized")
        _check_open(self._store)
        return c_memory_data_size(self._ctx, &self._memory)


# -- host functions ----------------------------------------------------------

@cython.final
@cython.freelist(8)
cdef class CallerMemory:
    """The calling instance's exported ``memory``, during one host call.

    Host calls create these; using one after its call returned raises
    ``ValueError``.  Accesses are bounds-checked: ``ValueError`` when
    ``[ptr, ptr + len)`` is not inside the memory.
    """

    cdef wasmtime_caller_t *_caller
    cdef wasmtime_memory_t _memory
    cdef bint _resolved

    def __init__(self, *args, **kwargs):
        raise TypeError("CallerMemory objects are made by host calls")

    cdef int _get(self, uint8_t **base, size_t *size) except -1:
        cdef wasmtime_extern_t item
        if self._caller == NULL:
            raise ValueError("CallerMemory used after its host call returned")
        if not self._resolved:
            if not c_caller_export_get(self._caller, "memory", 6, &item):
                raise ValueError("the calling instance exports no memory named 'memory'")
            if item.kind != WASMTIME_EXTERN_MEMORY:
                if item.kind == WASMTIME_EXTERN_SHAREDMEMORY:
                    c_extern_delete(&item)
                raise ValueError("the calling instance exports no memory named 'memory'")
            self._memory = item.of.memory
            self._resolved = True
        ctx = c_caller_context(self._caller)
        size[0] = c_memory_data_size(ctx, &self._memory)
        base[0] = c_memory_data(ctx, &self._memory)
        return 0

    def size(self):
        """The current size of the caller's memory, in bytes."""
        cdef uint8_t *base
        cdef size_t size
        self._get(&base, &size)
        return size

    def read(self, ptr, length):
        """A copy of ``length`` bytes at ``ptr``."""
        cdef uint8_t *base
        cdef size_t size
        cdef uint64_t p, n
        self._get(&base, &size)
        ptr = operator.index(ptr)
        length = operator.index(length)
        if not _span(ptr, length, size, &p, &n):
            raise ValueError(f"out-of-bounds memory access: {_oob(ptr, length, size)}")
        return PyBytes_FromStringAndSize(<char *>base + p, <Py_ssize_t>n)

    def write(self, ptr, data):
        """Copy ``data`` into the memory at ``ptr``."""
        cdef uint8_t *base
        cdef size_t size
        cdef uint64_t p, n
        cdef const char *src
        self._get(&base, &size)
        ptr = operator.index(ptr)
        if isinstance(data, bytes):
            src = PyBytes_AS_STRING(data)
            length = PyBytes_GET_SIZE(data)
        elif isinstance(data, bytearray):
            src = PyByteArray_AS_STRING(data)
            length = PyByteArray_GET_SIZE(data)
        else:
            data = _other_bytes(data)
            src = PyBytes_AS_STRING(data)
            length = PyBytes_GET_SIZE(data)
        if not _span(ptr, length, size, &p, &n):
            raise ValueError(f"out-of-bounds memory access: {_oob(ptr, length, size)}")
        memcpy(base + p, src, n)


cdef bint _span(object ptr, object length, size_t size, uint64_t *p, uint64_t *n) except -1:
    """Whether [ptr, ptr + length) lies in a memory of ``size`` bytes (both ints)."""
    cdef int overflow = 0
    cdef long long a = PyLong_AsLongLongAndOverflow(ptr, &overflow)
    if overflow or a < 0:
        return False
    cdef long long b = PyLong_AsLongLongAndOverflow(length, &overflow)
    if overflow or b < 0:
        return False
    if <uint64_t>a + <uint64_t>b > size:  # both < 2**63: no wrap-around
        return False
    p[0] = <uint64_t>a
    n[0] = <uint64_t>b
    return True


@cython.final
cdef class _HostFunc:
    """What one host import's trampoline needs; owned by the linker."""
    cdef object callback
    cdef bytes kinds        # one wasm_valkind_t per parameter
    cdef Py_ssize_t nparams
    cdef int result         # -1: no result, else its wasm_valkind_t


cdef wasm_trap_t *_host_failure(object exc) noexcept:
    # As wasmtime-py's trampoline: park the exception for the call into wasm
    # of this thread (and in wasmtime-py's slot, for wasmtime-py's own calls),
    # and unwind wasm with a trap.
    try:
        _PARKED[PyThread_get_thread_ident()] = (exc, exc.__context__)
        _wasmtime_func.LAST_EXCEPTION = exc
    except BaseException:
        pass
    return c_trap_new("python exception", 16)


cdef wasm_trap_t *_host_trampoline(void *env, wasmtime_caller_t *caller,
                                   wasmtime_val_raw_t *vals, size_t nvals) noexcept with gil:
    cdef _HostFunc func = <_HostFunc>env
    cdef CallerMemory mem
    cdef const char *kinds
    cdef Py_ssize_t i, n = func.nparams
    try:
        mem = CallerMemory.__new__(CallerMemory)
        mem._caller = caller
        try:
            kinds = PyBytes_AS_STRING(func.kinds)
            if n == 0:
                result = func.callback(mem)
            elif n == 1:
                result = func.callback(mem, _get_int(&vals[0], kinds[0]))
            elif n == 2:
                result = func.callback(mem, _get_int(&vals[0], kinds[0]),
                                       _get_int(&vals[1], kinds[1]))
            elif n == 3:
                result = func.callback(mem, _get_int(&vals[0], kinds[0]),
                                       _get_int(&vals[1], kinds[1]),
                                       _get_int(&vals[2], kinds[2]))
            else:
                args = [mem]
                for i in range(n):
                    args.append(_get_int(&vals[i], kinds[i]))
                result = func.callback(*args)
        finally:
            mem._caller = NULL
        if func.result < 0:
            if result is not None:
                raise WasmtimeError("callback produced results when it shouldn't")
        else:
            if not PyLong_Check(result):
                raise TypeError("don't know how to convert %r to %s"
                                % (result, _kind_name(<char>func.result)))
            _set_int(&vals[0], <char>func.result, result)
        if _PARKED:  # what a nested call parked on this thread and the callback handled is stale
            _PARKED.pop(PyThread_get_thread_ident(), None)
        return NULL
    except BaseException as exc:
        return _host_failure(exc)


cdef void _host_release(void *env) noexcept nogil:
    # Runs when wasmtime drops the function (linker and every store using it
    # gone), from whatever thread drops it, usually without the GIL.
    if Py_IsInitialized():
        with gil:
            Py_DECREF(<object>env)


_TYPE_CODES = {"i": "i32", "I": "i64"}


cdef list _parse_types(spec, str what):
    if not isinstance(spec, str):
        raise TypeError(f"{what} must be a str of type codes, got {type(spec).__name__}")
    kinds = []
    for code in spec:
        kind = _TYPE_CODES.get(code)
        if kind is None:
            raise ValueError(f"unknown type code {code!r} in {what} {spec!r}; use 'i' (i32) or 'I' (i64)")
        kinds.append(kind)
    return kinds


cdef tuple _check_host_func(linker, module, name, params, results, callback):
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


def define_host_func(linker, module, name, params, results, callback):
    """Define ``module.name`` on ``linker`` as a call of ``callback(mem, *ints)``.

    ``params`` / ``results`` are type codes, ``"i"`` for i32 and ``"I"`` for
    i64 (e.g. ``"iii"`` and ``""``); at most one result.  ``mem`` is a
    ``CallerMemory``.  The callback returns an int (wrapped to the result
    type) or ``None`` when there is no result.
    """
    cdef _HostFunc func
    cdef wasmtime_error_t *error
    param_kinds, result_kinds = _check_host_func(linker, module, name, params, results, callback)
    valtype = {"i32": ValType.i32, "i64": ValType.i64}
    ty = FuncType([valtype[k]() for k in param_kinds], [valtype[k]() for k in result_kinds])
    func = _HostFunc.__new__(_HostFunc)
    func.callback = callback
    func.kinds = bytes([WASM_I32 if k == "i32" else WASM_I64 for k in param_kinds])
    func.nparams = len(param_kinds)
    func.result = (WASM_I32 if result_kinds[0] == "i32" else WASM_I64) if result_kinds else -1
    raw_module = module.encode("utf-8")
    raw_name = name.encode("utf-8")
    linker_ptr = <wasmtime_linker_t *>_address(linker.ptr())
    ty_ptr = <wasm_functype_t *>_address(ty.ptr())
    # The linker owns this reference from here on: wasmtime calls
    # _host_release when it drops the function, also when defining fails.
    Py_INCREF(func)
    error = c_linker_define_func_unchecked(
        linker_ptr, raw_module, len(raw_module), raw_name, len(raw_name), ty_ptr,
        _host_trampoline, <void *>func, _host_release)
    if error != NULL:
        raise WasmtimeError._from_ptr(_ctypes_cast(<uintptr_t>error, _P_ERROR))


# -- run_start: one WASI command execution -------------------------------------

#: The message of the ``ValueError`` raised for a module without a ``_start`` function.
NO_START = "module has no _start function export"

# Where _run_start_nogil stopped: what run_start raises (or returns) for it.
cdef enum:
    START_OK = 0
    START_EXIT              # job.exit_code
    START_ARGV_REFUSED
    START_ENV_REFUSED
    START_STDOUT_REFUSED
    START_STDERR_REFUSED
    START_PREOPEN_REFUSED
    START_STORE_CLOSED
    START_SET_WASI_FAILED   # job.error
    START_PRE_CLOSED
    START_ENTER_FAILED      # job.error or job.trap, from instantiation or _start
    START_NO_START
    START_HAS_PARAMS        # job.nparams
    START_NO_MEMORY

cdef enum:
    START_STACK_VALS = 4    # results beyond this many go to a heap buffer (no real _start has any)


cdef int _exit_or(StartJob *job, int failure) noexcept nogil:
    """An error that is a WASI exit becomes START_EXIT (the error is freed)."""
    cdef int code = 0
    if job.error != NULL and c_error_exit_status(job.error, &code):
        c_error_delete(job.error)
        job.error = NULL
        job.exit_code = code
        return START_EXIT
    return failure


cdef size_t _instance_memory_size(wasmtime_context_t *ctx, const wasmtime_instance_t *instance) noexcept nogil:
    cdef wasmtime_extern_t item
    if not c_instance_export_get(ctx, instance, "memory", 6, &item):
        return 0
    if item.kind == WASMTIME_EXTERN_MEMORY:
        return c_memory_data_size(ctx, &item.of.memory)
    if item.kind == WASMTIME_EXTERN_SHAREDMEMORY:
        c_extern_delete(&item)
    return 0


cdef int _call_start(StartJob *job, const wasmtime_instance_t *instance) noexcept nogil:
    cdef wasmtime_extern_t item
    cdef wasm_functype_t *ty
    cdef size_t nresults, nvals
    cdef wasmtime_val_raw_t stack_vals[START_STACK_VALS]
    cdef wasmtime_val_raw_t *vals = stack_vals
    if not c_instance_export_get(job.ctx, instance, "_start", 6, &item):
        return START_NO_START
    if item.kind != WASMTIME_EXTERN_FUNC:
        if item.kind == WASMTIME_EXTERN_SHAREDMEMORY:
            c_extern_delete(&item)
        return START_NO_START
    ty = c_func_type(job.ctx, &item.of.func)
    job.nparams = c_functype_params(ty).size
    nresults = c_functype_results(ty).size
    c_functype_delete(ty)
    if job.nparams:
        return START_HAS_PARAMS
    nvals = nresults if nresults > 1 else 1
    if nvals > START_STACK_VALS:
        vals = <wasmtime_val_raw_t *>calloc(nvals, sizeof(wasmtime_val_raw_t))
        if vals == NULL:
            return START_NO_MEMORY
    job.error = c_func_call_unchecked(job.ctx, &item.of.func, vals, nvals, &job.trap)
    if vals != stack_vals:
        free(vals)
    if job.error != NULL or job.trap != NULL:
        return _exit_or(job, START_ENTER_FAILED)
    return START_OK


cdef int _run_start_nogil(StartJob *job) noexcept nogil:
    """Every C call of one command execution, in wasmtime-py's order; no GIL needed.

    Host imports and the epoch-deadline callback called from inside take the
    GIL themselves.  Frees everything it creates except ``job.error`` /
    ``job.trap``, which the caller turns into exceptions.
    """
    cdef wasi_config_t *config
    cdef wasm_byte_vec_t vec
    cdef wasmtime_instance_t instance
    cdef size_t i
    cdef int status
    config = c_wasi_config_new()
    if not c_wasi_config_set_argv(config, job.argc, job.argv):
        c_wasi_config_delete(config)
        return START_ARGV_REFUSED
    if not c_wasi_config_set_env(config, job.envc, job.env_names, job.env_values):
        c_wasi_config_delete(config)
        return START_ENV_REFUSED
    c_byte_vec_new(&vec, job.stdin_len, job.stdin_data)
    c_wasi_config_set_stdin_bytes(config, &vec)  # the config owns the copy now
    if not c_wasi_config_set_stdout_file(config, job.stdout_path):
        c_wasi_config_delete(config)
        return START_STDOUT_REFUSED
    if not c_wasi_config_set_stderr_file(config, job.stderr_path):
        c_wasi_config_delete(config)
        return START_STDERR_REFUSED
    for i in range(job.ndirs):
        if not c_wasi_config_preopen_dir(config, job.dir_hosts[i], job.dir_guests[i], job.dir_writable[i] != 0):
            c_wasi_config_delete(config)
            return START_PREOPEN_REFUSED
    if job.ctx == NULL:
        c_wasi_config_delete(config)
        return START_STORE_CLOSED
    job.error = c_context_set_wasi(job.ctx, config)  # consumes the config, also on error
    if job.error != NULL:
        return START_SET_WASI_FAILED
    job.stage = 1
    if job.pre == NULL:
        return START_PRE_CLOSED
    job.error = c_instance_pre_instantiate(job.pre, job.ctx, &instance, &job.trap)
    if job.error != NULL or job.trap != NULL:
        return _exit_or(job, START_ENTER_FAILED)
    job.stage = 2
    status = _call_start(job, &instance)
    if status != START_OK and status != START_EXIT:
        job.memory_size = _instance_memory_size(job.ctx, &instance)
    return status


# Argument checks, spelled as in _call_py.

cdef list _items(value, str what):
    if isinstance(value, (str, bytes, bytearray)):
        raise TypeError(f"{what} must be a sequence, not {type(value).__name__}")
    return list(value)


cdef bytes _text(value, str what):
    """``value`` (a str) as NUL-free UTF-8."""
    if not isinstance(value, str):
        raise TypeError(f"{what} must be a str, got {type(value).__name__}")
    cdef bytes raw = (<str>value).encode("utf-8")
    if b"\0" in raw:
        raise ValueError(f"{what} contains a NUL character")
    return raw


cdef bytes _path(value, str what):
    if isinstance(value, os.PathLike):
        value = os.fspath(value)
    return _text(value, what)


cdef tuple _unpack(item, Py_ssize_t n, str what):
    try:
        values = () if isinstance(item, (str, bytes)) else tuple(item)
    except TypeError:
        values = ()
    if len(values) != n:
        raise TypeError(f"{what} must be {n}-item sequences, got {item!r}")
    return values


cdef const char **_pointers(list raws) except? NULL:
    """A malloc'ed array of the buffers of ``raws`` (bytes); NULL when empty."""
    cdef Py_ssize_t i, n = len(raws)
    cdef const char **out
    if n == 0:
        return NULL
    out = <const char **>malloc(n * sizeof(char *))
    if out == NULL:
        raise MemoryError()
    for i in range(n):
        out[i] = PyBytes_AS_STRING(raws[i])
    return out


cdef void _free_job(StartJob *job) noexcept:
    # job.error / job.trap are NULL here unless converting them failed
    if job.error != NULL:
        c_error_delete(job.error)
    if job.trap != NULL:
        c_trap_delete(job.trap)
    free(job.argv)
    free(job.env_names)
    free(job.env_values)
    free(job.dir_hosts)
    free(job.dir_guests)
    free(job.dir_writable)


STAGES = ("setup", "instantiate", "start")


cdef int _describe(object exc, size_t memory_size, int stage) except -1:
    try:
        exc.memory_size = memory_size
        exc.stage = STAGES[stage]
    except (AttributeError, TypeError):  # an exception type that takes no attributes
        pass
    return 0


cdef tuple _fill_job(StartJob *job, object pre, object stdin, object stdout_path, object stderr_path,
                     object argv, object env, object preopens, bint paths=True):
    """Check and convert run_start's arguments into ``job``.

    Returns what must stay alive while ``job`` is used (the buffers its
    pointers borrow) and the message for a closed ``pre`` (None if open).
    Without ``paths`` the output files are left for whoever runs the job
    (a worker thread sets its own).
    """
    cdef Py_ssize_t i
    if not isinstance(pre, InstancePre):
        raise TypeError(f"expected a wasmtime.InstancePre, got {type(pre).__name__}")
    data = _stdin_bytes(stdin)
    stdout = _path(stdout_path, "stdout_path") if paths else None
    stderr = _path(stderr_path, "stderr_path") if paths else None
    args = [_text(a, "argv item") for a in _items(argv, "argv")]
    names, values = [], []
    for item in _items(env, "env"):
        name, value = _unpack(item, 2, "env items")
        names.append(_text(name, "env name"))
        values.append(_text(value, "env value"))
    hosts, guests, writable = [], [], []
    for item in _items(preopens, "preopens"):
        host, guest, flag = _unpack(item, 3, "preopens items")
        hosts.append(_text(host, "preopen host path"))
        guests.append(_text(guest, "preopen guest path"))
        writable.append(bool(flag))

    # A closed pre fails where wasmtime-py would notice it: later.
    pre_closed = None
    try:
        job.pre = <const wasmtime_instance_pre_t *>_address(pre.ptr())
    except ValueError as exc:
        pre_closed = str(exc)

    job.argc = len(args)
    job.argv = _pointers(args)
    job.envc = len(names)
    job.env_names = _pointers(names)
    job.env_values = _pointers(values)
    job.ndirs = len(hosts)
    job.dir_hosts = _pointers(hosts)
    job.dir_guests = _pointers(guests)
    if job.ndirs:
        job.dir_writable = <uint8_t *>malloc(job.ndirs)
        if job.dir_writable == NULL:
            raise MemoryError()
        for i in range(<Py_ssize_t>job.ndirs):
            job.dir_writable[i] = writable[i]
    job.stdin_data = <const uint8_t *>PyBytes_AS_STRING(data)
    job.stdin_len = <size_t>PyBytes_GET_SIZE(data)
    if paths:
        job.stdout_path = PyBytes_AS_STRING(stdout)
        job.stderr_path = PyBytes_AS_STRING(stderr)
    return (data, stdout, stderr, args, names, values, hosts, guests), pre_closed


cdef bint _may_be_pending(int status) noexcept nogil:
    """Whether a host import's exception can be pending after a run that ended
    with ``status``: only a failed instantiation or ``_start`` can raise one."""
    return status == START_ENTER_FAILED


cdef object _pending_after(int status):
    """``_claim_pending()`` when ``status`` calls for it, else None; in the
    thread that ran the job, right after the run."""
    return _claim_pending() if _may_be_pending(status) else None


cdef int _start_result(StartJob *job, int status, object pre_closed, object pending) except -1:
    """The exit status for ``status`` (what _run_start_nogil returned), or the
    exception; ``pending`` is ``_pending_after(status)`` of the thread that ran it."""
    cdef wasmtime_error_t *error
    cdef wasm_trap_t *trap
    if status == START_OK:
        return 0
    if status == START_EXIT:
        return job.exit_code
    if status == START_ENTER_FAILED:
        error, trap = job.error, job.trap
        job.error = job.trap = NULL
        _raise_failure(error, trap, pending)
    if status == START_SET_WASI_FAILED:
        error = job.error
        job.error = NULL
        raise WasmtimeError._from_ptr(_ctypes_cast(<uintptr_t>error, _P_ERROR))
    if status == START_ARGV_REFUSED:
        raise WasmtimeError("failed to configure argv")
    if status == START_ENV_REFUSED:
        raise WasmtimeError("failed to configure environment")
    if status == START_STDOUT_REFUSED:
        raise WasmtimeError("failed to set stdout file")
    if status == START_STDERR_REFUSED:
        raise WasmtimeError("failed to set stderr file")
    if status == START_PREOPEN_REFUSED:
        raise WasmtimeError("failed to add preopen dir")
    if status == START_STORE_CLOSED:
        raise ValueError("already closed")
    if status == START_PRE_CLOSED:
        raise ValueError(pre_closed)
    if status == START_NO_START:
        raise ValueError(NO_START)
    if status == START_HAS_PARAMS:
        raise WasmtimeError(f"too few parameters provided: given 0, expected {job.nparams}")
    raise MemoryError()


def run_start(store, pre, stdin, stdout_path, stderr_path, argv=(), env=(), preopens=()):
    """Run one WASI command in ``store``: configure WASI, instantiate ``pre``, call ``_start``.

    Returns the exit status (0 when ``_start`` returns, the code given to
    ``proc_exit`` otherwise); raises as wasmtime-py would, and every
    exception carries ``memory_size`` (the instance's memory size in bytes
    when it failed, 0 without an instance) and ``stage`` ("setup",
    "instantiate" or "start").  ``_call_py.run_start`` is the reference for
    the details.
    """
    cdef StartJob job
    cdef int status
    memset(&job, 0, sizeof(StartJob))
    try:
        try:
            if not isinstance(store, Store):
                raise TypeError(f"expected a wasmtime.Store, got {type(store).__name__}")
            keep, pre_closed = _fill_job(&job, pre, stdin, stdout_path, stderr_path, argv, env, preopens)
            # A closed store fails where wasmtime-py would notice it: later.
            if store._Store__context is not None:
                job.ctx = _context_of(store)
            _forget_parked()
            with nogil:
                status = _run_start_nogil(&job)
            return _start_result(&job, status, pre_closed, _pending_after(status))
        except BaseException as exc:
            _describe(exc, job.memory_size, job.stage)
            raise
    finally:
        _free_job(&job)


# -- run_command_env: a whole command execution environment ---------------------

cdef fn_wasmtime_store_new c_store_new = <fn_wasmtime_store_new>_symbol("wasmtime_store_new")
cdef fn_wasmtime_store_context c_store_context = <fn_wasmtime_store_context>_symbol("wasmtime_store_context")
cdef fn_wasmtime_store_limiter c_store_limiter = <fn_wasmtime_store_limiter>_symbol("wasmtime_store_limiter")
cdef fn_wasmtime_store_delete c_store_delete = <fn_wasmtime_store_delete>_symbol("wasmtime_store_delete")
cdef fn_wasmtime_context_set_fuel c_context_set_fuel = \
    <fn_wasmtime_context_set_fuel>_symbol("wasmtime_context_set_fuel")
cdef fn_wasmtime_store_epoch_deadline_callback c_store_epoch_deadline_callback = \
    <fn_wasmtime_store_epoch_deadline_callback>_symbol("wasmtime_store_epoch_deadline_callback")
cdef fn_wasmtime_context_set_epoch_deadline c_context_set_epoch_deadline = \
    <fn_wasmtime_context_set_epoch_deadline>_symbol("wasmtime_context_set_epoch_deadline")

cdef enum:
    ENV_FUEL_FAILED = 100   # env.start.error
    ENV_READ_FAILED         # env.read_errno


cdef int _read_output(Output *o) noexcept nogil:
    """At most ``o.limit`` bytes of the file open at ``o.fd`` (from offset 0),
    sized by fstat first; 0 or an errno."""
    cdef struct_stat st
    cdef size_t n, got = 0
    cdef ssize_t r
    cdef int code
    if fstat(o.fd, &st) != 0:
        return errno
    n = <size_t>st.st_size
    o.too_big = n > o.limit
    if n > o.limit:
        n = o.limit
    if n == 0:
        return 0
    o.data = <char *>malloc(n)
    if o.data == NULL:
        return ENOMEM
    while got < n:
        r = pread(o.fd, o.data + got, n - got, <off_t>got)
        if r < 0:
            code = errno
            if code == EINTR:
                continue
            return code
        if r == 0:
            break
        got += <size_t>r
    o.size = got
    return 0


cdef int _run_env_nogil(EnvJob *job) noexcept nogil:
    """Store, limits, fuel, epoch callback, run_start's calls, the outputs; the
    store is deleted before returning, whatever happened."""
    cdef wasmtime_store_t *store = c_store_new(job.engine, NULL, NULL)
    cdef int status
    job.start.ctx = c_store_context(store)
    c_store_limiter(store, job.memory_limit, -1, -1, -1, -1)
    if job.has_fuel:
        job.start.error = c_context_set_fuel(job.start.ctx, job.fuel)
        if job.start.error != NULL:
            c_store_delete(store)
            return ENV_FUEL_FAILED
    c_store_epoch_deadline_callback(store, job.callback, job.watch_key, NULL)
    c_context_set_epoch_deadline(job.start.ctx, 1)
    status = _run_start_nogil(&job.start)
    c_store_delete(store)
    job.start.ctx = NULL
    if job.start.stage >= 1:  # WASI opened the files: what the guest wrote, also before a failure
        job.read_errno = _read_output(&job.out)
        if job.read_errno == 0:
            job.read_errno = _read_output(&job.err)
        if job.read_errno != 0 and (status == START_OK or status == START_EXIT):
            return ENV_READ_FAILED
    return status


cdef object _bounded(object value, str what, object low, object high):
    """``value`` as an int in [low, high], or TypeError / ValueError (spelled as in _call_py)."""
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError(f"{what} must be an int, got {type(value).__name__}")
    if not low <= value <= high:
        raise ValueError(f"{what} must be between {low} and {high}, got {value}")
    return value


_INT32_MAX = (1 << 31) - 1
_INT64_MAX = (1 << 63) - 1
_UINT64_MAX = (1 << 64) - 1


cdef tuple _prepare_env(EnvJob *job, object engine, object pre, object stdin, object max_stdout, object max_stderr,
                        object memory_limit, object fuel, object watch_key, object deadline_callback,
                        object argv, object env, object preopens):
    """Check and convert everything but the output files into ``job``;
    returns what ``_fill_job`` returns.  ``job`` must be zeroed."""
    if not isinstance(engine, Engine):
        raise TypeError(f"expected a wasmtime.Engine, got {type(engine).__name__}")
    if not isinstance(pre, InstancePre):
        raise TypeError(f"expected a wasmtime.InstancePre, got {type(pre).__name__}")
    job.out.limit = _bounded(max_stdout, "max_stdout", 0, _INT64_MAX)
    job.err.limit = _bounded(max_stderr, "max_stderr", 0, _INT64_MAX)
    job.memory_limit = _bounded(memory_limit, "memory_limit", -1, _INT64_MAX)
    if fuel is not None:
        job.fuel = _bounded(fuel, "fuel", 0, _UINT64_MAX)
        job.has_fuel = True
    job.watch_key = <void *><uintptr_t>_bounded(watch_key, "watch_key", 0, _UINT64_MAX)
    job.callback = <wasmtime_epoch_deadline_callback_t><uintptr_t>_bounded(
        deadline_callback, "deadline_callback", 1, _UINT64_MAX)
    kept = _fill_job(&job.start, pre, stdin, None, None, argv, env, preopens, False)
    job.engine = <wasm_engine_t *>_address(engine.ptr())
    return kept


cdef tuple _env_result(EnvJob *job, int status, object pre_closed, object pending):
    """``(exit_code, stdout, stderr, stdout_too_big)`` for what ``_run_env_nogil``
    returned, or the exception (without ``memory_size`` / ``stage``);
    ``pending`` is ``_pending_after(status)`` of the thread that ran it.
    Call it once per run: it takes the C error or trap of a failed one."""
    cdef wasmtime_error_t *error
    cdef int code
    if status == ENV_FUEL_FAILED:
        error = job.start.error
        job.start.error = NULL
        raise WasmtimeError._from_ptr(_ctypes_cast(<uintptr_t>error, _P_ERROR))
    if status == ENV_READ_FAILED:  # the run itself ended well: nothing can be pending
        code = job.read_errno
        raise OSError(code, os.strerror(code))
    code = _start_result(&job.start, status, pre_closed, pending)
    return (code,) + _env_outputs(job) + (bool(job.out.too_big),)


cdef tuple _env_outputs(EnvJob *job):
    """``(stdout, stderr)`` as read after the run (whatever its result)."""
    return (PyBytes_FromStringAndSize(job.out.data, job.out.size) if job.out.size else b"",
            PyBytes_FromStringAndSize(job.err.data, job.err.size) if job.err.size else b"")


cdef void _free_env_results(EnvJob *job) noexcept:
    """What a run left in ``job``: its C error or trap and the outputs read."""
    if job.start.error != NULL:
        c_error_delete(job.start.error)
        job.start.error = NULL
    if job.start.trap != NULL:
        c_trap_delete(job.start.trap)
        job.start.trap = NULL
    free(job.out.data)
    free(job.err.data)
    job.out.data = job.err.data = NULL


cdef void _free_env(EnvJob *job) noexcept:
    _free_env_results(job)
    _free_job(&job.start)


def run_command_env(engine, pre, stdin, stdout_path, stderr_path, stdout_fd, stderr_fd, max_stdout, max_stderr,
                    memory_limit, fuel, watch_key, deadline_callback, argv=(), env=(), preopens=()):
    """One whole command execution environment: ``run_start`` in a store of its own.

    Returns ``(exit_code, stdout, stderr, stdout_too_big)``; the outputs are
    read from the files open at ``stdout_fd`` / ``stderr_fd``.  Raises what
    ``run_start`` raises, with ``memory_size`` and ``stage``.
    ``_call_py.run_command_env`` is the reference for the details.
    """
    cdef EnvJob job
    cdef int status
    memset(&job, 0, sizeof(EnvJob))
    try:
        try:
            job.out.fd = _bounded(stdout_fd, "stdout_fd", 0, _INT32_MAX)
            job.err.fd = _bounded(stderr_fd, "stderr_fd", 0, _INT32_MAX)
            paths = _path(stdout_path, "stdout_path"), _path(stderr_path, "stderr_path")
            keep, pre_closed = _prepare_env(&job, engine, pre, stdin, max_stdout, max_stderr, memory_limit, fuel,
                                            watch_key, deadline_callback, argv, env, preopens)
            job.start.stdout_path = PyBytes_AS_STRING(paths[0])
            job.start.stderr_path = PyBytes_AS_STRING(paths[1])
            _forget_parked()
            with nogil:
                status = _run_env_nogil(&job)
            return _env_result(&job, status, pre_closed, _pending_after(status))
        except BaseException as exc:
            _describe(exc, job.start.memory_size, job.start.stage)
            raise
    finally:
        _free_env(&job)
