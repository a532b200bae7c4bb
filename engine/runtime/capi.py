"""The few wasmtime C API functions that wasmtime-py does not wrap.

Each gets its own ctypes prototype built from the function's address:
``_ffi.dll.<name>`` is the same object wasmtime-py's bindings configured,
so changing its ``argtypes``/``restype`` would break wasmtime-py itself.
"""
from __future__ import annotations

import ctypes
from typing import Any

import wasmtime
from wasmtime import _ffi

__all__ = ["c_function", "DEADLINE_CALLBACK_T", "set_epoch_deadline_callback", "error_new", "set_stdin_bytes"]


def c_function(name: str, restype: Any, *argtypes: Any) -> Any:
    address = ctypes.cast(getattr(_ffi.dll, name), ctypes.c_void_p).value
    return ctypes.CFUNCTYPE(restype, *argtypes)(address)


DEADLINE_CALLBACK_T = ctypes.CFUNCTYPE(
    ctypes.c_void_p,  # wasmtime_error_t* (NULL: keep running)
    ctypes.c_void_p,  # wasmtime_context_t*
    ctypes.c_void_p,  # void* data
    ctypes.POINTER(ctypes.c_uint64),  # epoch_deadline_delta out
    ctypes.POINTER(ctypes.c_uint8),  # wasmtime_update_deadline_kind_t out
)

set_epoch_deadline_callback = c_function(
    "wasmtime_store_epoch_deadline_callback",
    None, ctypes.c_void_p, DEADLINE_CALLBACK_T, ctypes.c_void_p, ctypes.c_void_p,
)
error_new = c_function("wasmtime_error_new", ctypes.c_void_p, ctypes.c_char_p)

_byte_vec_new = c_function("wasm_byte_vec_new", None, ctypes.POINTER(_ffi.wasm_byte_vec_t), ctypes.c_size_t,
                           ctypes.c_char_p)
_set_stdin_bytes = c_function("wasi_config_set_stdin_bytes", None, ctypes.c_void_p,
                              ctypes.POINTER(_ffi.wasm_byte_vec_t))


def set_stdin_bytes(wasi: wasmtime.WasiConfig, data: bytes) -> None:
    """Serve ``data`` as the guest's stdin straight from memory (no file).

    ``wasm_byte_vec_new`` copies the bytes; the WASI config takes ownership
    of that copy, so nothing here outlives the call.
    """
    vec = _ffi.wasm_byte_vec_t()
    _byte_vec_new(ctypes.byref(vec), len(data), data)
    _set_stdin_bytes(ctypes.cast(wasi.ptr(), ctypes.c_void_p), ctypes.byref(vec))
