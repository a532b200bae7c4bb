# cython: language_level=3, boundscheck=False, wraparound=False, initializedcheck=False, cdivision=True
"""The router's MQTT topic table, compiled (twin of ``_router_py.py``).

Same API, errors and answers as the pure twin (validation is shared with it:
it runs when filters change, never in ``match``); read its docstring for the
MQTT semantics and why results come in subscription order.  The layout
differs because ``match`` runs once per routed event and, with 100,000
filters, costs mostly cache misses, which Python objects multiply:

* Filters without wildcards live in a C table keyed by their UTF-8 bytes;
  the wildcard trie is a C array of ``_Node`` structs whose literal edges live
  in a second table keyed by (node id, level bytes).  Both tables are the
  ``Table`` of ``_router_c.pxd``.  Kept apart, the small trie table stays in
  cache while the big one costs one miss, which ``match`` overlaps with the
  walk by prefetching its slot first.
* ``match`` never splits the topic: it reads the str's UTF-8 buffer (for an
  ASCII str, its own memory), finds the ``/`` with ``memchr``, hashes each
  level once, and walks with a C-array stack.  Nothing in the walk allocates
  a Python object, so no garbage collection (and no finalizer) can change the
  router under it.
* Values sit in ``_Values`` objects held by Python lists (the garbage collector
  sees them; a C table only holds ids).  A filter with one value, the usual
  case, also has it mirrored in a C array (``_ones``), so an exact hit reads
  the value without touching its ``_Values``.
"""
from cpython.dict cimport PyDict_Next
from cpython.list cimport PyList_New, PyList_SET_ITEM
from cpython.long cimport PyLong_AsSsize_t
from cpython.mem cimport PyMem_Free, PyMem_Malloc, PyMem_Realloc
from cpython.ref cimport Py_DECREF, Py_INCREF, PyObject
from libc.stdint cimport int32_t, uint64_t
from libc.stdlib cimport qsort
from libc.string cimport memchr, memcpy
from random import getrandbits

from fastpath._router_py import MAX_BYTES, validate_filter, validate_topic

cdef extern from "Python.h":
    PyObject* _list_item "PyList_GET_ITEM"(PyObject* items, Py_ssize_t i)
    const char* PyUnicode_AsUTF8AndSize(object text, Py_ssize_t* size) except NULL

cdef extern from *:
    """
    #if defined(__GNUC__) || defined(__clang__)
    #define WASMYARD_PREFETCH(p) __builtin_prefetch(p)
    #else
    #define WASMYARD_PREFETCH(p) ((void)0)
    #endif
    """
    void _prefetch "WASMYARD_PREFETCH"(const void* address) noexcept nogil

__all__ = ["MAX_BYTES", "TopicRouter", "validate_filter", "validate_topic"]

cdef enum:
    _SMALL = 32      # levels, stack entries, hits and pairs kept on the C stack
    _HAS_EXACT = 1   # _exact_at[node] holds values
    _HAS_HASHES = 2  # _hashes_at[node] holds values
    _FREE = 4        # on the free list; ``plus`` links to the next free id

cdef object _EMPTY = object()


cdef class _Values:
    """The values of one filter (or of the filters that end at one trie node),
    with their sequence numbers.  One value is kept inline, with its sequence
    as a C integer; a dict appears only from the second.  Membership is dict
    membership (hash, then identity or equality) in both shapes."""

    cdef object one       # the value while there is exactly one, else _EMPTY
    cdef Py_ssize_t one_seq
    cdef dict many        # value -> sequence once there are two or more, else None
    cdef int32_t leaf     # its index in the router's _leaves, or -1 for a trie node's

    def __cinit__(self):
        self.one = _EMPTY
        self.leaf = -1

    cdef bint _is_one(self, object value) except -1:
        return self.one is not _EMPTY and hash(self.one) == hash(value) and (self.one is value or self.one == value)

    cdef bint add(self, object value, Py_ssize_t seq) except -1:
        """Add ``value`` unless it is there; True if it was added."""
        if self.many is not None:
            if value in self.many:
                return False
            self.many[value] = seq
        elif self.one is _EMPTY:
            self.one, self.one_seq = value, seq
        elif self._is_one(value):
            return False
        else:
            self.many = {self.one: self.one_seq, value: seq}
            self.one = _EMPTY
        return True

    cdef bint remove(self, object value) except -1:
        """Remove ``value``; True if it was there."""
        if self.many is None:
            if not self._is_one(value):
                return False
            self.one = _EMPTY
            return True
        if value not in self.many:
            return False
        del self.many[value]
        if len(self.many) == 1:
            for self.one, self.one_seq in self.many.items():
                pass
            self.many = None
        return True

    cdef inline bint empty(self):
        return self.many is None and self.one is _EMPTY

    cdef inline Py_ssize_t size(self):
        return (self.one is not _EMPTY) if self.many is None else len(self.many)

    cdef list values(self):
        if self.many is not None:
            return list(self.many)
        return [] if self.one is _EMPTY else [self.one]


cdef struct _One:
    PyObject* value   # borrowed from the leaf's _Values; NULL unless it has exactly one
    Py_ssize_t seq


cdef struct _Node:
    int32_t plus      # the '+' child, or -1 (the next free id when _FREE)
    int32_t literals  # how many literal children it has in the trie table
    int32_t flags


cdef struct _Level:   # one level of the topic being matched
    const char* at
    Py_ssize_t size
    uint64_t hash


cdef struct _Step:    # one entry of the walk's stack
    int32_t node
    int32_t depth


cdef class TopicRouter:
    """MQTT topic filters -> values; ``match(topic)`` in subscription order."""

    cdef Table _whole      # filter without wildcards -> index into _leaves
    cdef list _leaves      # index -> _Values, or None once freed
    cdef list _free_leaves
    cdef _One* _ones       # index -> its single value, mirrored (see _sync)
    cdef Py_ssize_t _ones_cap
    cdef Table _trie       # (node, level) -> child node, for filters with wildcards
    cdef _Node* _nodes     # node 0 is the root
    cdef int32_t _node_count
    cdef int32_t _node_cap
    cdef int32_t _free     # first free node id, or -1
    cdef list _exact_at    # node id -> _Values of the filters that end there, or None
    cdef list _hashes_at   # node id -> _Values of the filters that end in '/#' there, or None
    cdef Py_ssize_t _seq
    cdef Py_ssize_t _size
    cdef dict _filters     # filter -> number of values, first-subscribed first
    cdef dict _owners      # value -> number of filters it is under
    cdef Py_ssize_t _shared  # values under more than one filter: only they can repeat in a match

    def __cinit__(self):
        self._reset()

    def __dealloc__(self):
        table_free(&self._whole)
        table_free(&self._trie)
        PyMem_Free(self._nodes)
        PyMem_Free(self._ones)

    cdef int _reset(self) except -1:
        """Start empty; everything new is allocated before anything old is freed,
        so a MemoryError leaves the router as it was."""
        cdef Table whole, trie
        cdef _Node* nodes = <_Node*>PyMem_Malloc(16 * sizeof(_Node))
        if nodes == NULL:
            raise MemoryError()
        try:
            table_init(&whole, 16, 256, getrandbits(64))
            try:
                table_init(&trie, 16, 256, getrandbits(64))
            except MemoryError:
                table_free(&whole)
                raise
        except MemoryError:
            PyMem_Free(nodes)
            raise
        table_free(&self._whole)
        table_free(&self._trie)
        PyMem_Free(self._nodes)
        PyMem_Free(self._ones)
        self._whole, self._trie, self._nodes = whole, trie, nodes
        self._ones, self._ones_cap = NULL, 0
        self._node_cap, self._node_count, self._free = 16, 1, -1
        self._nodes[0].plus, self._nodes[0].literals, self._nodes[0].flags = -1, 0, 0
        self._leaves, self._free_leaves = [], []
        self._exact_at, self._hashes_at = [None], [None]
        self._filters, self._owners = {}, {}
        self._size = self._shared = 0
        return 0

    cdef int32_t _new_node(self) except -1:
        cdef int32_t node
        cdef _Node* grown
        if self._free >= 0:
            node = self._free
            self._free = self._nodes[node].plus
        else:
            if self._node_count == self._node_cap:
                grown = <_Node*>PyMem_Realloc(self._nodes, 2 * self._node_cap * sizeof(_Node))
                if grown == NULL:
                    raise MemoryError()
                self._nodes, self._node_cap = grown, 2 * self._node_cap
            node = self._node_count
            self._node_count += 1
            self._exact_at.append(None)
            self._hashes_at.append(None)
        self._nodes[node].plus, self._nodes[node].literals, self._nodes[node].flags = -1, 0, 0
        return node

    cdef int32_t _new_leaf(self, _Values values) except -1:
        cdef int32_t leaf
        cdef _One* grown
        if self._free_leaves:
            leaf = self._free_leaves.pop()
            self._leaves[leaf] = values
        else:
            leaf = len(self._leaves)
            if leaf == self._ones_cap:
                grown = <_One*>PyMem_Realloc(self._ones, max(16, 2 * self._ones_cap) * sizeof(_One))
                if grown == NULL:
                    raise MemoryError()
                self._ones, self._ones_cap = grown, max(16, 2 * self._ones_cap)
            self._leaves.append(values)
        values.leaf = leaf
        self._sync(values)
        return leaf

    cdef void _sync(self, _Values values) noexcept:
        """Mirror a leaf's single value (or that it has not exactly one) into _ones."""
        cdef _One* one = &self._ones[values.leaf]
        if values.many is None and values.one is not _EMPTY:
            one.value, one.seq = <PyObject*>values.one, values.one_seq
        else:
            one.value, one.seq = NULL, -1

    # -- subscriptions ---------------------------------------------------------
    def subscribe(self, topic_filter, value):
        """Route topics matching ``topic_filter`` to ``value``.  Many values may share
        a filter; subscribing the same (filter, value) again changes nothing."""
        validate_filter(topic_filter)
        hash(value)  # an unhashable value fails before anything is built for it
        cdef _Values values = self._values_for(topic_filter.encode("utf-8"))
        if not values.add(value, self._seq + 1):
            return
        if values.leaf >= 0:
            self._sync(values)
        self._seq += 1
        self._size += 1
        self._filters[topic_filter] = self._filters.get(topic_filter, 0) + 1
        owners = self._owners.get(value, 0) + 1
        self._owners[value] = owners
        if owners == 2:
            self._shared += 1

    cdef _Values _values_for(self, bytes key):
        """The _Values of a valid filter, created (with its trie path) if need be."""
        cdef Py_ssize_t slot
        cdef int32_t node = 0
        cdef int32_t child
        cdef _Values values
        if b"+" not in key and b"#" not in key:
            slot = table_lookup(&self._whole, WHOLE, key, len(key))
            if slot >= 0:
                return self._leaves[self._whole.slots[slot].child]
            values = _Values()
            table_insert(&self._whole, WHOLE, key, len(key), self._new_leaf(values))
            return values
        cdef list levels = key.split(b"/")
        cdef bint hashed = levels[len(levels) - 1] == b"#"
        if hashed:
            levels.pop()
        for level in levels:
            if level == b"+":
                if self._nodes[node].plus < 0:
                    child = self._new_node()
                    self._nodes[node].plus = child
                node = self._nodes[node].plus
            else:
                child = table_child(&self._trie, node, level, len(level))
                if child < 0:
                    child = self._new_node()
                    table_insert(&self._trie, node, level, len(level), child)
                    self._nodes[node].literals += 1
                node = child
        at = self._hashes_at if hashed else self._exact_at
        if at[node] is None:
            at[node] = _Values()
            self._nodes[node].flags |= _HAS_HASHES if hashed else _HAS_EXACT
        return at[node]

    def unsubscribe(self, topic_filter, value):
        """Remove one (filter, value) subscription and prune what is left empty.
        Return False when it was not there."""
        validate_filter(topic_filter)
        if not self._remove(topic_filter.encode("utf-8"), value):
            return False
        self._size -= 1
        left = self._filters[topic_filter] - 1
        if left:
            self._filters[topic_filter] = left
        else:
            del self._filters[topic_filter]
        owners = self._owners[value] - 1
        if owners:
            self._owners[value] = owners
            if owners == 1:
                self._shared -= 1
        else:
            del self._owners[value]
        return True

    cdef bint _remove(self, bytes key, object value) except -1:
        cdef Py_ssize_t slot
        cdef int32_t node = 0
        cdef int32_t child
        cdef _Values values
        cdef _Node* nd
        if b"+" not in key and b"#" not in key:
            slot = table_lookup(&self._whole, WHOLE, key, len(key))
            if slot < 0:
                return False
            values = self._leaves[self._whole.slots[slot].child]
            if not values.remove(value):
                return False
            self._sync(values)
            if values.empty():
                table_delete(&self._whole, slot)
                self._leaves[values.leaf] = None
                self._free_leaves.append(values.leaf)
            return True
        cdef list levels = key.split(b"/")
        cdef bint hashed = levels[len(levels) - 1] == b"#"
        cdef list path = []
        if hashed:
            levels.pop()
        for level in levels:
            child = self._nodes[node].plus if level == b"+" else table_child(&self._trie, node, level, len(level))
            if child < 0:
                return False
            path.append((node, level))
            node = child
        at = self._hashes_at if hashed else self._exact_at
        values = at[node]
        if values is None or not values.remove(value):
            return False
        if values.empty():
            at[node] = None
            self._nodes[node].flags &= ~(_HAS_HASHES if hashed else _HAS_EXACT)
        while path:  # prune the nodes this left empty, deepest first
            nd = &self._nodes[node]
            if nd.plus >= 0 or nd.literals or nd.flags:
                break
            parent, level = path.pop()
            if level == b"+":
                self._nodes[<int32_t>parent].plus = -1
            else:
                table_delete(&self._trie, table_lookup(&self._trie, parent, level, len(level)))
                self._nodes[<int32_t>parent].literals -= 1
            nd.flags, nd.plus = _FREE, self._free
            self._free = node
            node = parent
        return True

    # -- matching --------------------------------------------------------------
    def match(self, object topic):
        """Every value whose filter matches ``topic``, each once, in subscription order."""
        if not isinstance(topic, str):
            raise TypeError(f"topic must be a str, not {type(topic).__name__}")
        cdef Py_ssize_t size
        cdef const char* data
        cdef bytes encoded
        try:
            data = PyUnicode_AsUTF8AndSize(topic, &size)
        except UnicodeEncodeError:  # a lone surrogate: it can still meet a wildcard
            encoded = (<str>topic).encode("utf-8", "surrogatepass")
            data, size = encoded, len(encoded)
        cdef Py_ssize_t slot
        cdef _One* one
        cdef _Node* root = &self._nodes[0]
        cdef uint64_t whole = key_hash(self._whole.seed, data, size)
        cdef _Hits hits
        hits.refs, hits.count, hits.capacity = hits.small, 0, _SMALL
        try:
            # With many filters the exact lookup is a cache miss: ask for its slot
            # now and walk the smaller, warmer trie while the line arrives.
            _prefetch(&self._whole.slots[slot_hash(whole, WHOLE) & <uint64_t>(self._whole.cap - 1)])
            if root.literals or root.plus >= 0 or root.flags:
                self._walk(data, size, &hits)
            slot = table_find(&self._whole, WHOLE, whole, data, size)
            if slot >= 0:
                one = &self._ones[self._whole.slots[slot].child]
                if one.value != NULL:
                    _add(&hits, one.value, one.seq)
                else:
                    _add(&hits, _list_item(<PyObject*>self._leaves, self._whole.slots[slot].child), -1)
            if hits.count == 0:
                return []
            if hits.count == 1:
                if hits.refs[0].seq >= 0:
                    return [<object>hits.refs[0].obj]
                return (<_Values>hits.refs[0].obj).values()
            return _merge(&hits, self._shared != 0)
        finally:
            _release(&hits)

    cdef int _walk(self, const char* data, Py_ssize_t size, _Hits* hits) except -1:
        """Add the values of every trie node the topic (UTF-8 ``data``) reaches."""
        cdef Py_ssize_t n = 1
        cdef const char* at = data
        cdef const char* end = data + size
        while True:
            at = <const char*>memchr(at, b"/", end - at)
            if at == NULL:
                break
            n += 1
            at += 1
        # Each level is found and hashed once.  The stack never holds more than
        # n + 2 entries: one pending sibling per depth, plus two just pushed.
        cdef _Level small_levels[_SMALL]
        cdef _Step small_stack[_SMALL + 2]
        cdef _Level* levels = small_levels
        cdef _Step* stack = small_stack
        if n > _SMALL:
            levels = <_Level*>PyMem_Malloc(n * sizeof(_Level))
            stack = <_Step*>PyMem_Malloc((n + 2) * sizeof(_Step))
        cdef Py_ssize_t i
        cdef Py_ssize_t sp = 1
        cdef int32_t node
        cdef Py_ssize_t slot
        cdef _Node* nd
        cdef _Level* level
        try:
            if levels == NULL or stack == NULL:
                raise MemoryError()
            at = data
            for i in range(n):
                end = <const char*>memchr(at, b"/", data + size - at) if i < n - 1 else data + size
                levels[i].at, levels[i].size = at, end - at
                levels[i].hash = key_hash(self._trie.seed, at, end - at)
                at = end + 1
            stack[0].node, stack[0].depth = 0, 0
            if size and data[0] == b"$":
                # A '$' topic is not matched by a filter whose first level is a wildcard.
                slot = table_find(&self._trie, 0, levels[0].hash, levels[0].at, levels[0].size)
                sp = 0
                if slot >= 0:
                    stack[0].node, stack[0].depth, sp = self._trie.slots[slot].child, 1, 1
            while sp:
                sp -= 1
                node, i = stack[sp].node, stack[sp].depth
                nd = &self._nodes[node]
                if nd.flags & _HAS_HASHES:
                    _add(hits, _list_item(<PyObject*>self._hashes_at, node), -1)
                if i == n:
                    if nd.flags & _HAS_EXACT:
                        _add(hits, _list_item(<PyObject*>self._exact_at, node), -1)
                    continue
                if nd.literals:
                    level = &levels[i]
                    slot = table_find(&self._trie, node, level.hash, level.at, level.size)
                    if slot >= 0:
                        stack[sp].node, stack[sp].depth = self._trie.slots[slot].child, <int32_t>(i + 1)
                        sp += 1
                if nd.plus >= 0:
                    stack[sp].node, stack[sp].depth = nd.plus, <int32_t>(i + 1)
                    sp += 1
        finally:
            if levels != small_levels:
                PyMem_Free(levels)
                PyMem_Free(stack)
        return 0

    def __len__(self):
        """The number of (filter, value) subscriptions."""
        return self._size

    def filters(self):
        """Every filter with at least one value, in the order first subscribed."""
        return list(self._filters)

    def clear(self):
        """Drop every subscription."""
        self._reset()


# -- what a match reached, and putting it in order ----------------------------------

cdef struct _Ref:
    PyObject* obj     # owned: a value when seq >= 0, else a _Values
    Py_ssize_t seq


cdef struct _Hits:
    # Owned references, so a finalizer run by a garbage collection cannot free
    # what a match is about to return.
    _Ref* refs
    Py_ssize_t count
    Py_ssize_t capacity
    _Ref small[_SMALL]


cdef int _add(_Hits* hits, PyObject* obj, Py_ssize_t seq) except -1:
    cdef _Ref* grown
    if hits.count == hits.capacity:
        if hits.refs == hits.small:
            grown = <_Ref*>PyMem_Malloc(2 * hits.capacity * sizeof(_Ref))
            if grown != NULL:
                memcpy(grown, hits.small, hits.count * sizeof(_Ref))
        else:
            grown = <_Ref*>PyMem_Realloc(hits.refs, 2 * hits.capacity * sizeof(_Ref))
        if grown == NULL:
            raise MemoryError()
        hits.refs, hits.capacity = grown, 2 * hits.capacity
    Py_INCREF(<object>obj)
    hits.refs[hits.count].obj, hits.refs[hits.count].seq = obj, seq
    hits.count += 1
    return 0


cdef void _release(_Hits* hits) noexcept:
    cdef Py_ssize_t k
    for k in range(hits.count):
        Py_DECREF(<object>hits.refs[k].obj)
    hits.count = 0
    if hits.refs != hits.small:
        PyMem_Free(hits.refs)
        hits.refs = hits.small


cdef int _by_seq(const void* a, const void* b) noexcept nogil:
    cdef Py_ssize_t x = (<_Ref*>a).seq
    cdef Py_ssize_t y = (<_Ref*>b).seq
    return (x > y) - (x < y)


cdef list _merge(_Hits* hits, bint dedupe):
    """The values of several hits by sequence; each once when ``dedupe`` (some
    value sits under two filters).  (value, sequence) pairs are sorted as C
    structs, each value owned first; up to _SMALL pairs need no heap."""
    cdef _Ref small[_SMALL]
    cdef _Ref* pairs = small
    cdef _Ref item
    cdef Py_ssize_t total = 0
    cdef Py_ssize_t k, j
    cdef Py_ssize_t taken = 0
    cdef Py_ssize_t pos
    cdef PyObject* key
    cdef PyObject* seq
    cdef list out = None
    cdef _Values leaf
    for k in range(hits.count):
        total += 1 if hits.refs[k].seq >= 0 else (<_Values>hits.refs[k].obj).size()
    if total > _SMALL:
        pairs = <_Ref*>PyMem_Malloc(total * sizeof(_Ref))
        if pairs == NULL:
            raise MemoryError()
    try:
        for k in range(hits.count):
            if hits.refs[k].seq >= 0:
                pairs[taken] = hits.refs[k]
                Py_INCREF(<object>pairs[taken].obj)
                taken += 1
                continue
            leaf = <_Values>hits.refs[k].obj
            if leaf.many is None:
                if leaf.one is not _EMPTY:
                    pairs[taken].obj, pairs[taken].seq = <PyObject*>leaf.one, leaf.one_seq
                    Py_INCREF(leaf.one)
                    taken += 1
                continue
            pos = 0
            while PyDict_Next(leaf.many, &pos, &key, &seq):
                pairs[taken].obj, pairs[taken].seq = key, PyLong_AsSsize_t(<object>seq)
                Py_INCREF(<object>key)
                taken += 1
        if taken > _SMALL:
            qsort(pairs, taken, sizeof(_Ref), _by_seq)
        else:
            for k in range(1, taken):  # insertion sort: a handful of hits
                item = pairs[k]
                j = k - 1
                while j >= 0 and pairs[j].seq > item.seq:
                    pairs[j + 1] = pairs[j]
                    j -= 1
                pairs[j + 1] = item
        out = PyList_New(taken)
        for k in range(taken):
            PyList_SET_ITEM(out, k, <object>pairs[k].obj)  # steals the reference
        taken = 0
    finally:
        for k in range(taken):  # only when the list could not be made
            Py_DECREF(<object>pairs[k].obj)
        if pairs != small:
            PyMem_Free(pairs)
    if dedupe:
        return list(dict.fromkeys(out))
    return out
