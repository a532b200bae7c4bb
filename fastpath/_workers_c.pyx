# cython: language_level=3
"""Command executions on worker threads that do not hold the GIL: the compiled twin of ``_workers_py``.

Same API and results as ``_workers_py`` (read its docstring for the
contract).  The difference is where the GIL is: a worker here takes a job
from a mutex-protected list, runs the whole execution environment
(``_call_c._run_env_nogil``: store, WASI, instance, ``_start``, outputs) and
appends the job to the finished list without ever taking the GIL, then
writes the notification descriptor only when that list was empty.  The event
loop thread, the only one running Python in the steady state, collects every
finished job in one ``completed()`` call.  The GIL is taken in a worker only
for a job with a ``context`` (``enter`` / ``leave``, its guest may call host
imports), by the host imports themselves, and after a run that failed in the
guest, to take the exception a host import raised in that worker's thread
(``_call_c._pending_after``): it is parked per thread, so only the thread
that ran the job can take it, and the event loop thread's ``result()`` only
turns into exceptions what the worker kept.
"""
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_GET_SIZE
from cpython.ref cimport Py_DECREF, Py_INCREF
from libc.errno cimport errno
from libc.stdint cimport int64_t, uint8_t, uint64_t, uintptr_t
from libc.stdlib cimport free, malloc
from libc.string cimport memset
from posix.stat cimport fstat, struct_stat
from posix.time cimport clock_gettime, timespec, CLOCK_MONOTONIC
from posix.unistd cimport read, write

from fastpath._call_c cimport (EnvJob, _bounded, _describe, _env_outputs, _env_result, _forget_parked, _free_env,
                               _free_env_results, _may_be_pending, _stdin_bytes, _pending_after, _prepare_env,
                               _run_env_nogil)

import os
import threading

__all__ = ["CommandJob", "CommandPool", "CommandSpec", "NOT_STARTED"]

_UINT64_MAX = (1 << 64) - 1

#: The message of the ``ValueError`` ``CommandJob.result`` raises for a job cancelled before it started.
NOT_STARTED = "cancelled before it started"


cdef extern from "<pthread.h>" nogil:
    ctypedef struct pthread_mutex_t:
        pass
    ctypedef struct pthread_cond_t:
        pass
    int pthread_mutex_init(pthread_mutex_t *, void *)
    int pthread_mutex_destroy(pthread_mutex_t *)
    int pthread_mutex_lock(pthread_mutex_t *)
    int pthread_mutex_unlock(pthread_mutex_t *)
    int pthread_cond_init(pthread_cond_t *, void *)
    int pthread_cond_destroy(pthread_cond_t *)
    int pthread_cond_wait(pthread_cond_t *, pthread_mutex_t *)
    int pthread_cond_signal(pthread_cond_t *)
    int pthread_cond_broadcast(pthread_cond_t *)


cdef extern from *:
    """
    #define WY_LOAD(p) __atomic_load_n((p), __ATOMIC_ACQUIRE)
    #define WY_STORE(p, v) __atomic_store_n((p), (v), __ATOMIC_RELEASE)
    """
    int WY_LOAD(int *p) nogil
    void WY_STORE(int *p, int v) nogil


ctypedef struct PoolJob:
    EnvJob env
    PoolJob *next
    void *owner             # the CommandJob; the pool holds a reference from submit to completed()
    int status              # what _run_env_nogil returned
    int cancelled           # atomic: set by cancel(), read by the worker that takes the job
    int started
    int has_context
    int ran                 # 0 when enter raised: the guest never ran
    int64_t run_ns


ctypedef struct Slot:
    # one worker's output files: paths borrowed from bytes the pool keeps
    const char *stdout_path
    const char *stderr_path
    int stdout_fd
    int stderr_fd


ctypedef struct PoolState:
    pthread_mutex_t lock
    pthread_cond_t wake
    PoolJob *pending_head
    PoolJob *pending_tail
    PoolJob *done_head
    PoolJob *done_tail
    int notify_fd
    int closing
    int waiting             # workers in pthread_cond_wait
    int npending


cdef inline int64_t _now_ns() noexcept nogil:
    cdef timespec ts
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return <int64_t>ts.tv_sec * 1000000000 + ts.tv_nsec


cdef class CommandJob:
    """One command execution, prepared on the event loop thread, run by a pool."""

    cdef PoolJob job
    cdef object _keep           # the buffers job.env's pointers borrow, and the engine and pre
    cdef object _pre_closed
    cdef object _context
    cdef object _pending        # a host import's exception, taken by the worker after the run
    cdef object _hook_failure   # what enter or leave raised
    cdef object _previous       # what _leave restores
    cdef object _enter, _leave
    cdef bint _settled          # result() has kept its outcome in _outcome / _failure
    cdef object _outcome
    cdef object _failure
    cdef bint _borrowed         # job.env's argument arrays belong to a CommandSpec (in _keep)

    def __cinit__(self):
        memset(&self.job, 0, sizeof(PoolJob))

    def __init__(self, engine, pre, stdin, max_stdout, max_stderr, memory_limit, fuel, watch_key,
                 deadline_callback, argv=(), env=(), preopens=(), context=None):
        try:
            keep, self._pre_closed = _prepare_env(
                &self.job.env, engine, pre, stdin, max_stdout, max_stderr, memory_limit, fuel, watch_key,
                deadline_callback, argv, env, preopens)
        except BaseException as exc:
            _describe(exc, 0, 0)
            raise
        # job.env also borrows the engine's and the InstancePre's C pointers: a
        # worker may run the job after the caller dropped its own references.
        self._keep = (keep, engine, pre)
        self._context = context
        self.job.has_context = context is not None
        self.job.env.out.fd = -1

    def __dealloc__(self):
        if self._borrowed:
            _free_env_results(&self.job.env)
        else:
            _free_env(&self.job.env)

    def cancel(self):
        """Do not start it; no effect once a worker has started it."""
        WY_STORE(&self.job.cancelled, 1)

    @property
    def started(self):
        return bool(self.job.started)

    @property
    def run_s(self):
        """Seconds its environment took to run, in its worker."""
        return self.job.run_ns / 1e9

    def stdout_over_limit(self):
        """Whether its stdout file already holds more than ``max_stdout``;
        for an epoch-deadline callback, in the worker running it."""
        cdef struct_stat st
        if self.job.env.out.fd < 0 or fstat(self.job.env.out.fd, &st) != 0:
            return False
        return <size_t>st.st_size > self.job.env.out.limit

    def outputs(self):
        """``(stdout, stderr)``, at most their limits, as the worker read them
        after the run, also when it failed; empty if it never started."""
        return _env_outputs(&self.job.env)

    def result(self):
        """``run_command_env``'s result or exception, after the pool completed
        it; every call gives the first one's (see ``_workers_py``)."""
        if not self.job.started:
            raise ValueError(NOT_STARTED)
        if not self._settled:
            self._settle()
        if self._failure is not None:
            raise self._failure
        return self._outcome

    cdef int _settle(self) except -1:
        # Once: _env_result takes the run's C error or trap.
        self._settled = True
        if not self.job.ran:
            self._failure = self._hook_failure  # enter's
            return 0
        pending, self._pending = self._pending, None
        try:
            self._outcome = _env_result(&self.job.env, self.job.status, self._pre_closed, pending)
        except BaseException as exc:
            _describe(exc, self.job.env.start.memory_size, self.job.env.start.stage)
            self._failure = exc
            return 0
        if self._hook_failure is not None:  # leave's, after a run that went well
            _describe(self._hook_failure, 0, 0)
            self._outcome, self._failure = None, self._hook_failure
        return 0


cdef class CommandSpec:
    """What every execution of one command task shares; see ``_workers_py.CommandSpec``."""

    cdef EnvJob template        # an execution's EnvJob but for its stdin and watch key
    cdef object _keep
    cdef object _pre_closed

    def __cinit__(self):
        memset(&self.template, 0, sizeof(EnvJob))

    def __init__(self, engine, pre, max_stdout, max_stderr, memory_limit, fuel, deadline_callback, argv=(), env=(),
                 preopens=()):
        try:
            keep, self._pre_closed = _prepare_env(
                &self.template, engine, pre, b"", max_stdout, max_stderr, memory_limit, fuel, 0, deadline_callback,
                argv, env, preopens)
        except BaseException as exc:
            _describe(exc, 0, 0)
            raise
        self._keep = (keep, engine, pre)

    def __dealloc__(self):
        _free_env(&self.template)

    def job(self, stdin, watch_key, context=None):
        """A ``CommandJob`` of this spec: its arrays are the spec's, not copies."""
        cdef CommandJob job
        try:
            key = _bounded(watch_key, "watch_key", 0, _UINT64_MAX)
            data = _stdin_bytes(stdin)
        except BaseException as exc:
            _describe(exc, 0, 0)
            raise
        job = CommandJob.__new__(CommandJob)
        job.job.env = self.template
        job.job.env.start.stdin_data = <const uint8_t *>PyBytes_AS_STRING(data)
        job.job.env.start.stdin_len = <size_t>PyBytes_GET_SIZE(data)
        job.job.env.watch_key = <void *><uintptr_t>key
        job.job.env.out.fd = -1
        job._borrowed = True
        job._keep = (self, data)
        job._pre_closed = self._pre_closed
        job._context = context
        job.job.has_context = context is not None
        return job


cdef int _enter(PoolJob *job) noexcept with gil:
    """``enter(context)``; 0 when it raised (the job then does not run)."""
    cdef CommandJob owner = <CommandJob>job.owner
    try:
        _forget_parked()
        owner._previous = owner._enter(owner._context)
        return 1
    except BaseException as exc:
        owner._hook_failure = exc
        _describe(exc, 0, 0)  # the host's failure: stage "setup"
        return 0


cdef int _claim(PoolJob *job) noexcept with gil:
    """Take the exception a host import raised in this run, in this thread."""
    cdef CommandJob owner = <CommandJob>job.owner
    try:
        owner._pending = _pending_after(job.status)
    except BaseException:  # MemoryError: the run's own failure stands
        pass
    return 0


cdef int _leave(PoolJob *job) noexcept with gil:
    """Take the run's pending exception, then ``leave(previous)``: taken first
    because ``leave`` may run code that calls into wasm on this thread."""
    cdef CommandJob owner = <CommandJob>job.owner
    if _may_be_pending(job.status):
        _claim(job)
    try:
        owner._leave(owner._previous)
    except BaseException as exc:
        owner._hook_failure = exc  # the result only if the run went well (result() tells)
    owner._previous = None
    return 0


cdef void _work(PoolState *s, Slot *slot) noexcept nogil:
    cdef PoolJob *job
    cdef uint64_t one = 1
    cdef bint notify
    cdef int64_t t
    while True:
        pthread_mutex_lock(&s.lock)
        while s.pending_head == NULL and not s.closing:
            s.waiting += 1
            pthread_cond_wait(&s.wake, &s.lock)
            s.waiting -= 1
        job = s.pending_head
        if job == NULL:
            pthread_mutex_unlock(&s.lock)
            return
        s.pending_head = job.next
        if s.pending_head == NULL:
            s.pending_tail = NULL
        s.npending -= 1
        job.next = NULL
        pthread_mutex_unlock(&s.lock)

        job.started = not WY_LOAD(&job.cancelled)
        if job.started:
            job.env.start.stdout_path = slot.stdout_path
            job.env.start.stderr_path = slot.stderr_path
            job.env.out.fd = slot.stdout_fd
            job.env.err.fd = slot.stderr_fd
            t = _now_ns()
            job.ran = not job.has_context or _enter(job)
            if job.ran:
                job.status = _run_env_nogil(&job.env)
                if job.has_context:
                    _leave(job)
                elif _may_be_pending(job.status):
                    _claim(job)
            job.run_ns = _now_ns() - t

        pthread_mutex_lock(&s.lock)
        notify = s.done_head == NULL
        if s.done_tail == NULL:
            s.done_head = job
        else:
            s.done_tail.next = job
        s.done_tail = job
        pthread_mutex_unlock(&s.lock)
        if notify:
            write(s.notify_fd, &one, sizeof(one))


cdef class CommandPool:
    """Worker threads running ``CommandJob``s; see ``_workers_py.CommandPool``."""

    cdef PoolState *_state
    cdef Slot *_slots
    cdef Py_ssize_t _nslots
    cdef object _paths          # keeps the bytes _slots point into
    cdef object _threads
    cdef object _enter, _leave

    def __cinit__(self):
        self._state = <PoolState *>malloc(sizeof(PoolState))
        if self._state == NULL:
            raise MemoryError()
        memset(self._state, 0, sizeof(PoolState))
        pthread_mutex_init(&self._state.lock, NULL)
        pthread_cond_init(&self._state.wake, NULL)

    def __init__(self, outputs, notify_fd, enter=None, leave=None):
        cdef Py_ssize_t i
        outputs = _check_pool_args(outputs, notify_fd, enter, leave)
        self._nslots = len(outputs)
        self._slots = <Slot *>malloc(self._nslots * sizeof(Slot))
        if self._slots == NULL:
            raise MemoryError()
        self._paths = []
        for i, (out_path, err_path, out_fd, err_fd) in enumerate(outputs):
            raw = (os.fsencode(out_path), os.fsencode(err_path))
            self._paths.append(raw)
            self._slots[i].stdout_path = raw[0]
            self._slots[i].stderr_path = raw[1]
            self._slots[i].stdout_fd = out_fd
            self._slots[i].stderr_fd = err_fd
        self._state.notify_fd = notify_fd
        self._enter, self._leave = enter, leave
        self._threads = [threading.Thread(target=self._run, args=(i,), name=f"wasmyard-command-{i}", daemon=True)
                         for i in range(self._nslots)]
        for thread in self._threads:
            thread.start()

    def _run(self, Py_ssize_t i):
        cdef PoolState *s = self._state
        cdef Slot *slot = &self._slots[i]
        with nogil:
            _work(s, slot)

    def submit(self, job, wake=True):
        """Queue ``job`` for the next free worker; never blocks.  ``wake=False``
        leaves waking a sleeping worker to a later ``wake()``."""
        cdef PoolState *s = self._state
        cdef CommandJob j
        if not isinstance(job, CommandJob):  # spelled as _workers_py spells it
            raise TypeError(f"expected a CommandJob, got {type(job).__name__}")
        j = <CommandJob>job
        if j.job.owner != NULL:
            raise ValueError("a CommandJob runs once")
        if s.closing:
            raise RuntimeError("the pool is closed")
        if j.job.has_context and self._enter is None:
            raise ValueError("a job with a context needs a pool with enter and leave")
        j._enter, j._leave = self._enter, self._leave
        Py_INCREF(j)
        j.job.owner = <void *>j
        pthread_mutex_lock(&s.lock)
        if s.pending_tail == NULL:
            s.pending_head = &j.job
        else:
            s.pending_tail.next = &j.job
        s.pending_tail = &j.job
        s.npending += 1
        if wake and s.waiting:
            pthread_cond_signal(&s.wake)
        pthread_mutex_unlock(&s.lock)

    def wake(self):
        """Wake as many sleeping workers as there are jobs waiting (at most)."""
        cdef PoolState *s = self._state
        cdef int n
        pthread_mutex_lock(&s.lock)
        n = s.npending if s.npending < s.waiting else s.waiting
        while n > 0:
            pthread_cond_signal(&s.wake)
            n -= 1
        pthread_mutex_unlock(&s.lock)

    def completed(self):
        """Every job finished since the last call, oldest first; consumes the notification."""
        cdef PoolState *s = self._state
        cdef PoolJob *job
        cdef PoolJob *nxt
        cdef uint64_t count
        read(s.notify_fd, &count, sizeof(count))  # non-blocking; nothing to read is fine
        pthread_mutex_lock(&s.lock)
        job = s.done_head
        s.done_head = s.done_tail = NULL
        pthread_mutex_unlock(&s.lock)
        out = []
        while job != NULL:
            nxt = job.next
            job.next = NULL
            owner = <object>job.owner
            out.append(owner)
            Py_DECREF(owner)    # the pool's reference, taken in submit
            job = nxt
        return out

    def close(self):
        """Let the workers finish every submitted job, then stop them."""
        cdef PoolState *s = self._state
        pthread_mutex_lock(&s.lock)
        s.closing = 1
        pthread_cond_broadcast(&s.wake)
        pthread_mutex_unlock(&s.lock)
        current = threading.current_thread()
        for thread in self._threads:
            if thread is not current:
                thread.join()

    def __dealloc__(self):
        # Only reached when no worker runs: a worker's thread references the pool.
        if self._state != NULL:
            pthread_cond_destroy(&self._state.wake)
            pthread_mutex_destroy(&self._state.lock)
            free(self._state)
        free(self._slots)


def _check_pool_args(outputs, notify_fd, enter, leave):
    from fastpath._workers_py import check_pool_args

    return check_pool_args(outputs, notify_fd, enter, leave)
