# The few pieces of wasmtime's C API that ``_call_c`` uses, declared by hand.
#
# Nothing here includes wasmtime's headers and nothing links against the
# library: the layouts below are written out from wasmtime 50's
# ``crates/c-api/include`` (func.h, extern.h, val.h, instance.h, memory.h,
# linker.h, trap.h, error.h, store.h, wasi.h and wasm.h), and ``_call_c`` compares each
# struct's size with wasmtime-py's ctypes bindings of the same release at
# import.  Functions are typed pointers, filled in at import from the shared
# library that ``wasmtime._ffi.dll`` already loaded.
#
# Opaque handles are plain ``void``; C ``bool`` results are ``uint8_t`` (a
# one-byte return value, so the upper bits of the register are never read);
# C ``bool`` parameters are the compiler's own ``bool`` (stdbool.h), so they
# are passed exactly as C passes them.

from libc.stdint cimport int32_t, int64_t, uint8_t, uint32_t, uint64_t

cdef extern from "<stdbool.h>":
    ctypedef bint c_bool "bool"

ctypedef void wasmtime_context_t
ctypedef void wasmtime_caller_t
ctypedef void wasmtime_linker_t
ctypedef void wasmtime_error_t
ctypedef void wasm_trap_t
ctypedef void wasm_functype_t
ctypedef void wasm_valtype_t
ctypedef void wasmtime_instance_pre_t
ctypedef void wasi_config_t

ctypedef uint8_t wasm_valkind_t
ctypedef uint8_t wasmtime_extern_kind_t

# wasm.h: WASM_I32 .. WASM_F64
cdef enum:
    WASM_I32 = 0
    WASM_I64 = 1

# extern.h: WASMTIME_EXTERN_*
cdef enum:
    WASMTIME_EXTERN_FUNC = 0
    WASMTIME_EXTERN_GLOBAL = 1
    WASMTIME_EXTERN_TABLE = 2
    WASMTIME_EXTERN_MEMORY = 3
    WASMTIME_EXTERN_SHAREDMEMORY = 4
    WASMTIME_EXTERN_TAG = 5

# extern.h: typedef struct wasmtime_func { uint64_t store_id; void *__private; }
ctypedef struct wasmtime_func_t:
    uint64_t store_id
    void *private_

# extern.h: typedef struct wasmtime_memory {
#     struct { uint64_t store_id; uint32_t __private1; }; uint32_t __private2; }
ctypedef struct wasmtime_store_id_u32_t:
    uint64_t store_id
    uint32_t private1

ctypedef struct wasmtime_memory_t:
    wasmtime_store_id_u32_t anon
    uint32_t private2

# extern.h: union wasmtime_extern_union { func, global, table, memory,
# sharedmemory*, tag }; the largest members (global/table/memory/tag) are
# 24 bytes, 8-aligned, which ``pad`` stands for.
ctypedef union wasmtime_extern_union_t:
    wasmtime_func_t func
    wasmtime_memory_t memory
    void *sharedmemory
    uint64_t pad[3]

# extern.h: typedef struct wasmtime_extern { kind; union of; }
ctypedef struct wasmtime_extern_t:
    wasmtime_extern_kind_t kind
    wasmtime_extern_union_t of

# instance.h: typedef struct wasmtime_instance { uint64_t store_id; size_t __private; }
ctypedef struct wasmtime_instance_t:
    uint64_t store_id
    size_t private_

# val.h: typedef union wasmtime_val_raw { ... } (16 bytes: the v128 member)
ctypedef union wasmtime_val_raw_t:
    int32_t i32
    int64_t i64
    float f32
    double f64
    uint8_t v128[16]
    uint32_t anyref
    uint32_t externref
    uint32_t exnref
    void *funcref

# wasm.h: WASM_DECLARE_VEC(byte, ) -- wasm_byte_vec_t { size_t size; wasm_byte_t *data; }
ctypedef struct wasm_byte_vec_t:
    size_t size
    uint8_t *data

# wasm.h: WASM_DECLARE_VEC(valtype, *)
ctypedef struct wasm_valtype_vec_t:
    size_t size
    wasm_valtype_t **data

# func.h: wasmtime_func_unchecked_callback_t
ctypedef wasm_trap_t *(*wasmtime_func_unchecked_callback_t)(
    void *env, wasmtime_caller_t *caller,
    wasmtime_val_raw_t *args_and_results, size_t num_args_and_results) noexcept

ctypedef void (*wasmtime_finalizer_t)(void *env) noexcept

# -- function pointer types, one per C function used ------------------------

# func.h
ctypedef wasmtime_error_t *(*fn_wasmtime_func_call_unchecked)(
    wasmtime_context_t *store, const wasmtime_func_t *func,
    wasmtime_val_raw_t *args_and_results, size_t args_and_results_len,
    wasm_trap_t **trap) noexcept nogil
ctypedef wasm_functype_t *(*fn_wasmtime_func_type)(
    const wasmtime_context_t *store, const wasmtime_func_t *func) noexcept nogil
ctypedef wasmtime_context_t *(*fn_wasmtime_caller_context)(
    wasmtime_caller_t *caller) noexcept nogil
ctypedef uint8_t (*fn_wasmtime_caller_export_get)(
    wasmtime_caller_t *caller, const char *name, size_t name_len,
    wasmtime_extern_t *item) noexcept nogil

# instance.h
ctypedef uint8_t (*fn_wasmtime_instance_export_get)(
    wasmtime_context_t *store, const wasmtime_instance_t *instance,
    const char *name, size_t name_len, wasmtime_extern_t *item) noexcept nogil

# extern.h
ctypedef void (*fn_wasmtime_extern_delete)(wasmtime_extern_t *item) noexcept nogil

# memory.h
ctypedef uint8_t *(*fn_wasmtime_memory_data)(
    const wasmtime_context_t *store, const wasmtime_memory_t *memory) noexcept nogil
ctypedef size_t (*fn_wasmtime_memory_data_size)(
    const wasmtime_context_t *store, const wasmtime_memory_t *memory) noexcept nogil

# wasm.h
ctypedef const wasm_valtype_vec_t *(*fn_wasm_functype_params)(
    const wasm_functype_t *ty) noexcept nogil
ctypedef const wasm_valtype_vec_t *(*fn_wasm_functype_results)(
    const wasm_functype_t *ty) noexcept nogil
ctypedef void (*fn_wasm_functype_delete)(wasm_functype_t *ty) noexcept nogil
ctypedef wasm_valkind_t (*fn_wasm_valtype_kind)(const wasm_valtype_t *ty) noexcept nogil

# trap.h
ctypedef wasm_trap_t *(*fn_wasmtime_trap_new)(const char *msg, size_t msg_len) noexcept nogil
# wasm.h
ctypedef void (*fn_wasm_trap_delete)(wasm_trap_t *trap) noexcept nogil

# linker.h
ctypedef wasmtime_error_t *(*fn_wasmtime_linker_define_func_unchecked)(
    wasmtime_linker_t *linker, const char *module, size_t module_len,
    const char *name, size_t name_len, const wasm_functype_t *ty,
    wasmtime_func_unchecked_callback_t cb, void *data,
    wasmtime_finalizer_t finalizer) noexcept nogil

# -- WASI command execution (run_start) ---------------------------------------

# wasm.h: void wasm_byte_vec_new(own wasm_byte_vec_t *out, size_t, own wasm_byte_t const[])
ctypedef void (*fn_wasm_byte_vec_new)(
    wasm_byte_vec_t *out, size_t size, const uint8_t *data) noexcept nogil

# wasi.h
ctypedef wasi_config_t *(*fn_wasi_config_new)() noexcept nogil
ctypedef void (*fn_wasi_config_delete)(wasi_config_t *config) noexcept nogil
ctypedef uint8_t (*fn_wasi_config_set_argv)(
    wasi_config_t *config, size_t argc, const char **argv) noexcept nogil
ctypedef uint8_t (*fn_wasi_config_set_env)(
    wasi_config_t *config, size_t envc, const char **names, const char **values) noexcept nogil
# takes ownership of ``binary`` (its contents; the struct itself is the caller's)
ctypedef void (*fn_wasi_config_set_stdin_bytes)(
    wasi_config_t *config, wasm_byte_vec_t *binary) noexcept nogil
ctypedef uint8_t (*fn_wasi_config_set_file)(
    wasi_config_t *config, const char *path) noexcept nogil
ctypedef uint8_t (*fn_wasi_config_preopen_dir)(
    wasi_config_t *config, const char *host_path, const char *guest_path,
    c_bool fs_mutable) noexcept nogil

# store.h: takes ownership of ``wasi``, also when it returns an error
ctypedef wasmtime_error_t *(*fn_wasmtime_context_set_wasi)(
    wasmtime_context_t *context, wasi_config_t *wasi) noexcept nogil

# instance.h
ctypedef wasmtime_error_t *(*fn_wasmtime_instance_pre_instantiate)(
    const wasmtime_instance_pre_t *instance_pre, wasmtime_context_t *store,
    wasmtime_instance_t *instance, wasm_trap_t **trap_ptr) noexcept nogil

# error.h
ctypedef uint8_t (*fn_wasmtime_error_exit_status)(
    const wasmtime_error_t *error, int *status) noexcept nogil
ctypedef void (*fn_wasmtime_error_delete)(wasmtime_error_t *error) noexcept nogil

# -- a whole command execution environment (run_command_env) -------------------

ctypedef void wasm_engine_t
ctypedef void wasmtime_store_t

# store.h: wasmtime_error_t *(*func)(wasmtime_context_t *context, void *data,
#     uint64_t *epoch_deadline_delta, wasmtime_update_deadline_kind_t *update_kind)
# (wasmtime_update_deadline_kind_t is uint8_t); called with wasm on the stack,
# a ctypes callback takes the GIL itself.
ctypedef wasmtime_error_t *(*wasmtime_epoch_deadline_callback_t)(
    wasmtime_context_t *context, void *data, uint64_t *epoch_deadline_delta,
    uint8_t *update_kind) noexcept nogil

# store.h
ctypedef wasmtime_store_t *(*fn_wasmtime_store_new)(
    wasm_engine_t *engine, void *data, wasmtime_finalizer_t finalizer) noexcept nogil
ctypedef wasmtime_context_t *(*fn_wasmtime_store_context)(wasmtime_store_t *store) noexcept nogil
ctypedef void (*fn_wasmtime_store_limiter)(
    wasmtime_store_t *store, int64_t memory_size, int64_t table_elements,
    int64_t instances, int64_t tables, int64_t memories) noexcept nogil
ctypedef void (*fn_wasmtime_store_delete)(wasmtime_store_t *store) noexcept nogil
ctypedef wasmtime_error_t *(*fn_wasmtime_context_set_fuel)(
    wasmtime_context_t *store, uint64_t fuel) noexcept nogil
ctypedef void (*fn_wasmtime_store_epoch_deadline_callback)(
    wasmtime_store_t *store, wasmtime_epoch_deadline_callback_t func, void *data,
    wasmtime_finalizer_t finalizer) noexcept nogil
ctypedef void (*fn_wasmtime_context_set_epoch_deadline)(
    wasmtime_context_t *context, uint64_t ticks_beyond_current) noexcept nogil
