# cython: language_level=3
"""What ``_call_c`` shares with the other compiled twins: one command
execution as a C struct that can run without the GIL (``_workers_c`` runs
them on its worker threads), and the functions that fill it from Python
arguments and turn its outcome back into Python results or exceptions
(a host import's exception taken, per thread, by the thread that ran it)."""
from libc.stdint cimport int64_t, uint8_t, uint64_t

from fastpath._wasmtime_capi cimport *


ctypedef struct StartJob:
    # in: every pointer borrowed from a Python object the caller keeps alive
    wasmtime_context_t *ctx            # NULL: the store is closed
    const wasmtime_instance_pre_t *pre  # NULL: the InstancePre is closed
    const char **argv
    size_t argc
    const char **env_names
    const char **env_values
    size_t envc
    const uint8_t *stdin_data
    size_t stdin_len
    const char *stdout_path
    const char *stderr_path
    const char **dir_hosts
    const char **dir_guests
    uint8_t *dir_writable
    size_t ndirs
    # out
    wasmtime_error_t *error            # owned: turned into an exception by the caller
    wasm_trap_t *trap                  # likewise
    int exit_code
    size_t nparams
    size_t memory_size
    int stage                          # index into STAGES: how far it got


ctypedef struct Output:
    int fd
    size_t limit
    char *data              # malloc'ed; NULL when empty
    size_t size
    bint too_big


ctypedef struct EnvJob:
    StartJob start
    wasm_engine_t *engine
    int64_t memory_limit
    bint has_fuel
    uint64_t fuel
    wasmtime_epoch_deadline_callback_t callback
    void *watch_key
    Output out
    Output err
    int read_errno


cdef tuple _prepare_env(EnvJob *job, object engine, object pre, object stdin, object max_stdout, object max_stderr,
                        object memory_limit, object fuel, object watch_key, object deadline_callback,
                        object argv, object env, object preopens)
cdef int _run_env_nogil(EnvJob *job) noexcept nogil
cdef int _forget_parked() except -1
cdef bint _may_be_pending(int status) noexcept nogil
cdef object _pending_after(int status)
cdef tuple _env_result(EnvJob *job, int status, object pre_closed, object pending)
cdef tuple _env_outputs(EnvJob *job)
cdef void _free_env(EnvJob *job) noexcept
cdef void _free_env_results(EnvJob *job) noexcept
cdef object _bounded(object value, str what, object low, object high)
cdef bytes _stdin_bytes(object stdin)
cdef int _describe(object exc, size_t memory_size, int stage) except -1
