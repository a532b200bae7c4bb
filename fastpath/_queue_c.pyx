# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""The scheduler's priority queue, compiled (twin of ``_queue_py.py``).

Higher priority first; first in, first out (by entry id) within a priority.

A binary max-heap of C structs (priority, entry id, item pointer, cell) in one
growable array, plus an open-addressing table (linear probing, Fibonacci
hashing, backward-shift deletion) from entry id to heap position.  Each heap
slot knows its table cell and each cell knows its heap position, so a sift
moves entries without hashing and ``remove`` is O(log n).  push and pop
allocate no Python objects; the queue owns one reference to every item.

The items are visited by the cycle collector (see ``_traverse`` at the end),
so an item that refers back to its queue is still collected.
"""
cimport cython
from cpython.mem cimport PyMem_Free, PyMem_Malloc, PyMem_Realloc
from cpython.ref cimport Py_INCREF, Py_XDECREF, PyObject
from libc.stdint cimport INT64_MAX, int64_t, uint64_t
from libc.string cimport memset

cdef extern from "Python.h":
    long long PyLong_AsLongLongAndOverflow(object, int*) except? -1
    ctypedef int (*visitproc)(PyObject*, void*) noexcept
    ctypedef int (*traverseproc)(PyObject*, visitproc, void*) noexcept
    ctypedef int (*inquiry)(PyObject*) noexcept
    ctypedef struct _GCSlots "PyTypeObject":
        traverseproc tp_traverse
        inquiry tp_clear

__all__ = ["PriorityQueue"]

cdef struct _Slot:
    int64_t priority
    int64_t entry_id
    PyObject* item        # one owned reference
    Py_ssize_t cell       # this entry's cell in the id table

cdef struct _Cell:
    int64_t entry_id      # 0: empty (entry ids start at 1)
    Py_ssize_t pos        # heap position of the entry

cdef enum:
    _MIN_SLOTS = 16
    _MIN_CELLS = 8        # a power of two; the table is kept at most half full

cdef uint64_t _FIBONACCI = 0x9E3779B97F4A7C15ULL


cdef inline bint _before(const _Slot* a, const _Slot* b) noexcept nogil:
    """True if ``a`` leaves the queue before ``b``."""
    return a.priority > b.priority or (a.priority == b.priority and a.entry_id < b.entry_id)


cdef int64_t _as_priority(object value) except? -1:
    cdef int overflow = 0
    cdef long long number = PyLong_AsLongLongAndOverflow(value, &overflow)
    if overflow:
        raise OverflowError(f"priority {int(value)} is outside the signed 64-bit range")
    return <int64_t>number


cdef int _as_entry_id(object value, int64_t* out) except -1:
    """Store ``value`` in ``out``; return 0 if it is outside int64 (never an id)."""
    cdef int overflow = 0
    cdef long long number = PyLong_AsLongLongAndOverflow(value, &overflow)
    if overflow:
        return 0
    out[0] = <int64_t>number
    return 1


cdef class PriorityQueue:
    """Higher priority first; FIFO (by entry id) within a priority."""

    cdef _Slot* _heap
    cdef Py_ssize_t _size          # entries in the heap (and cells in use)
    cdef Py_ssize_t _capacity      # slots allocated
    cdef _Cell* _cells
    cdef Py_ssize_t _ncells        # a power of two, or 0 before the first push
    cdef int _shift                # 64 - log2(_ncells)
    cdef int64_t _last             # the last entry id issued; ids are never reused
    # Only here so that Cython builds this type with Py_TPFLAGS_HAVE_GC; the
    # items themselves are reported to the collector by _traverse below.
    cdef object _gc_anchor

    def __cinit__(self, *args, **kwargs):  # __init__ checks the arguments (and subclasses may)
        self._heap = NULL
        self._cells = NULL
        self._size = self._capacity = self._ncells = 0
        self._shift = 64
        self._last = 0

    def __init__(self) -> None:
        pass

    def __dealloc__(self):
        self._release()
        PyMem_Free(self._cells)
        self._cells = NULL

    # -- the id table ----------------------------------------------------------

    @cython.final
    cdef inline Py_ssize_t _home(self, int64_t entry_id) noexcept nogil:
        return <Py_ssize_t>((<uint64_t>entry_id * _FIBONACCI) >> self._shift)

    @cython.final
    cdef Py_ssize_t _find(self, int64_t entry_id) noexcept nogil:
        """The cell holding ``entry_id``, or -1."""
        cdef Py_ssize_t mask, i
        if self._size == 0 or entry_id <= 0 or entry_id > self._last:
            return -1
        mask = self._ncells - 1
        i = self._home(entry_id)
        while self._cells[i].entry_id != 0:
            if self._cells[i].entry_id == entry_id:
                return i
            i = (i + 1) & mask
        return -1

    @cython.final
    cdef Py_ssize_t _cell_insert(self, int64_t entry_id, Py_ssize_t pos) noexcept nogil:
        cdef Py_ssize_t mask = self._ncells - 1
        cdef Py_ssize_t i = self._home(entry_id)
        while self._cells[i].entry_id != 0:
            i = (i + 1) & mask
        self._cells[i].entry_id = entry_id
        self._cells[i].pos = pos
        return i

    @cython.final
    cdef void _cell_delete(self, Py_ssize_t i) noexcept nogil:
        """Empty cell ``i``, shifting back the cells of its probe run."""
        cdef Py_ssize_t mask = self._ncells - 1
        cdef Py_ssize_t j = i, home
        while True:
            j = (j + 1) & mask
            if self._cells[j].entry_id == 0:
                break
            home = self._home(self._cells[j].entry_id)
            # the entry in j may stay unless its home lies cyclically outside (i, j]
            if (i < home <= j) if i <= j else (i < home or home <= j):
                continue
            self._cells[i] = self._cells[j]
            self._heap[self._cells[i].pos].cell = i
            i = j
        self._cells[i].entry_id = 0

    @cython.final
    cdef int _rehash(self, Py_ssize_t ncells) noexcept:
        """Rebuild the table with ``ncells`` cells; -1 (nothing changed) if out of memory."""
        cdef _Cell* cells = <_Cell*>PyMem_Malloc(ncells * sizeof(_Cell))
        cdef Py_ssize_t pos
        cdef int bits = 0
        if cells == NULL:
            return -1
        memset(cells, 0, ncells * sizeof(_Cell))
        while (<Py_ssize_t>1 << bits) < ncells:
            bits += 1
        PyMem_Free(self._cells)
        self._cells = cells
        self._ncells = ncells
        self._shift = 64 - bits
        for pos in range(self._size):
            self._heap[pos].cell = self._cell_insert(self._heap[pos].entry_id, pos)
        return 0

    # -- the heap ----------------------------------------------------------------

    @cython.final
    cdef void _sift_up(self, Py_ssize_t pos) noexcept nogil:
        cdef _Slot moving = self._heap[pos]
        cdef Py_ssize_t parent
        while pos > 0:
            parent = (pos - 1) >> 1
            if not _before(&moving, &self._heap[parent]):
                break
            self._heap[pos] = self._heap[parent]
            self._cells[self._heap[pos].cell].pos = pos
            pos = parent
        self._heap[pos] = moving
        self._cells[moving.cell].pos = pos

    @cython.final
    cdef void _sift_down(self, Py_ssize_t pos) noexcept nogil:
        cdef _Slot moving = self._heap[pos]
        cdef Py_ssize_t child, size = self._size
        while True:
            child = 2 * pos + 1
            if child >= size:
                break
            if child + 1 < size and _before(&self._heap[child + 1], &self._heap[child]):
                child += 1
            if not _before(&self._heap[child], &moving):
                break
            self._heap[pos] = self._heap[child]
            self._cells[self._heap[pos].cell].pos = pos
            pos = child
        self._heap[pos] = moving
        self._cells[moving.cell].pos = pos

    @cython.final
    cdef int _reserve(self) except -1:
        """Make room for one more entry (MemoryError, nothing changed, if there is none)."""
        cdef Py_ssize_t capacity
        cdef _Slot* heap
        if self._size == self._capacity:
            capacity = self._capacity * 2 if self._capacity else _MIN_SLOTS
            heap = <_Slot*>PyMem_Realloc(self._heap, capacity * sizeof(_Slot))
            if heap == NULL:
                raise MemoryError()
            self._heap = heap
            self._capacity = capacity
        if 2 * (self._size + 1) > self._ncells:
            if self._rehash(self._ncells * 2 if self._ncells else _MIN_CELLS) < 0:
                raise MemoryError()
        return 0

    @cython.final
    cdef int _insert(self, object item, int64_t priority, int64_t entry_id) except -1:
        cdef Py_ssize_t pos
        self._reserve()
        pos = self._size
        self._heap[pos].priority = priority
        self._heap[pos].entry_id = entry_id
        Py_INCREF(item)
        self._heap[pos].item = <PyObject*>item
        self._heap[pos].cell = self._cell_insert(entry_id, pos)
        self._size = pos + 1
        self._sift_up(pos)
        return 0

    @cython.final
    cdef PyObject* _take(self, Py_ssize_t pos) noexcept:
        """Unlink the entry at ``pos``; return its item (the caller owns that reference)."""
        cdef PyObject* item = self._heap[pos].item
        cdef Py_ssize_t last
        self._cell_delete(self._heap[pos].cell)
        self._size -= 1
        last = self._size
        if pos != last:
            self._heap[pos] = self._heap[last]
            self._cells[self._heap[pos].cell].pos = pos
            if pos > 0 and _before(&self._heap[pos], &self._heap[(pos - 1) >> 1]):
                self._sift_up(pos)
            else:
                self._sift_down(pos)
        self._shrink()
        return item

    @cython.final
    cdef void _shrink(self) noexcept:
        """Give memory back after the queue drained (best effort)."""
        cdef _Slot* heap
        if self._capacity > _MIN_SLOTS and self._size < self._capacity // 4:
            heap = <_Slot*>PyMem_Realloc(self._heap, (self._capacity // 2) * sizeof(_Slot))
            if heap != NULL:
                self._heap = heap
                self._capacity //= 2
        if self._ncells > _MIN_CELLS and 8 * self._size < self._ncells:
            self._rehash(self._ncells // 2)

    @cython.final
    cdef void _release(self) noexcept:
        """Empty the queue, then drop the references it held.  The queue is
        consistent before any item is released, since releasing one can run
        arbitrary code (a ``__del__`` that pushes onto this very queue)."""
        cdef _Slot* heap = self._heap
        cdef Py_ssize_t pos, size = self._size
        self._heap = NULL
        self._size = self._capacity = 0
        if self._cells != NULL:
            memset(self._cells, 0, self._ncells * sizeof(_Cell))
        for pos in range(size):
            Py_XDECREF(heap[pos].item)
        PyMem_Free(heap)

    # -- the API -------------------------------------------------------------------

    def push(self, object item, object priority=0) -> int:
        """Add ``item``; return its new entry id (monotonic, from 1). O(log n)."""
        cdef int64_t prio = _as_priority(priority)
        if self._last == INT64_MAX:
            raise OverflowError("entry ids are exhausted")
        self._insert(item, prio, self._last + 1)
        self._last += 1
        return self._last

    def repush(self, object item, object priority, object entry_id) -> None:
        """Put back an entry popped earlier under its original id, so it keeps its
        FIFO place among its priority.  ValueError if ``entry_id`` is in the queue
        or was never issued."""
        cdef int64_t prio = _as_priority(priority)
        cdef int64_t eid = 0
        if not _as_entry_id(entry_id, &eid) or not 1 <= eid <= self._last:
            raise ValueError(f"entry id {int(entry_id)} was never issued by this queue")
        if self._find(eid) >= 0:
            raise ValueError(f"entry id {eid} is already in the queue")
        self._insert(item, prio, eid)

    def pop(self) -> object:
        """Remove and return the first item.  IndexError when empty."""
        if self._size == 0:
            raise IndexError("pop from an empty PriorityQueue")
        cdef PyObject* item = self._take(0)
        result = <object>item
        Py_XDECREF(item)
        return result

    def pop_entry(self) -> tuple:
        """Remove the first entry; return ``(entry_id, priority, item)``."""
        if self._size == 0:
            raise IndexError("pop from an empty PriorityQueue")
        cdef int64_t entry_id = self._heap[0].entry_id
        cdef int64_t priority = self._heap[0].priority
        cdef PyObject* item = self._take(0)
        result = <object>item
        Py_XDECREF(item)
        return entry_id, priority, result

    def peek(self) -> object:
        """Return the first item without removing it.  IndexError when empty."""
        if self._size == 0:
            raise IndexError("peek from an empty PriorityQueue")
        return <object>self._heap[0].item

    def remove(self, object entry_id) -> bool:
        """Remove a cancelled entry; False if it is not in the queue.  O(log n)."""
        cdef int64_t eid = 0
        cdef Py_ssize_t cell
        if not _as_entry_id(entry_id, &eid):
            return False
        cell = self._find(eid)
        if cell < 0:
            return False
        Py_XDECREF(self._take(self._cells[cell].pos))
        return True

    def clear(self) -> None:
        """Drop every entry (entry ids keep counting from where they were)."""
        self._release()
        if self._ncells > _MIN_CELLS:
            self._rehash(_MIN_CELLS)

    def __contains__(self, object entry_id) -> bool:
        cdef int64_t eid = 0
        if not _as_entry_id(entry_id, &eid):
            return False
        return self._find(eid) >= 0

    def __len__(self) -> int:
        return self._size

    def __bool__(self) -> bool:
        return self._size != 0

    def __reduce__(self):
        raise TypeError(f"cannot pickle {type(self).__name__!r} object")


# -- the cycle collector ---------------------------------------------------------
# Cython only reports object attributes to the collector, not the items behind
# the raw pointers, so the generated tp_traverse / tp_clear are wrapped.

cdef traverseproc _base_traverse
cdef inquiry _base_clear


cdef int _traverse(PyObject* obj, visitproc visit, void* arg) noexcept:
    cdef Py_ssize_t pos
    cdef int err
    if _base_traverse != NULL:
        err = _base_traverse(obj, visit, arg)
        if err:
            return err
    for pos in range((<PriorityQueue>obj)._size):
        err = visit((<PriorityQueue>obj)._heap[pos].item, arg)
        if err:
            return err
    return 0


cdef int _clear(PyObject* obj) noexcept:
    (<PriorityQueue>obj)._release()
    if _base_clear != NULL:
        return _base_clear(obj)
    return 0


cdef _GCSlots* _slots = <_GCSlots*><void*>PriorityQueue
_base_traverse = _slots.tp_traverse
_base_clear = _slots.tp_clear
_slots.tp_traverse = _traverse
_slots.tp_clear = _clear
