# cython: language_level=3
"""The byte-keyed hash table under the compiled topic router (``_router_c.pyx``).

One table maps (parent id, key bytes) to a child id.  The router keeps two:
filters without wildcards (parent ``WHOLE``, the whole filter as key) and the
edges of its wildcard trie (parent node, one level as key).  Why not a dict:
with 100,000 filters a lookup is a cache miss, and a Python dict keyed by str
pays up to three (index, entry, key object) plus the str objects a topic would
have to be split into.  Here a slot is 16 bytes, four to a cache line, and
holds the high half of the key's hash as a tag, so a probe that fails never
reads the key; keys live in one arena as a 2-byte length and the bytes.

Open addressing with linear probing; a deleted slot keeps its tag and gets
parent ``DEAD`` so probes run past it; the table is rebuilt (growing or
shrinking, arena compacted) once live plus deleted slots pass two thirds.
Hashes are seeded per table, so crafted topics cannot aim at collisions.
Ids and offsets are int32: the router refuses more than 2 GiB of keys.
"""
from cpython.mem cimport PyMem_Free, PyMem_Malloc, PyMem_Realloc
from libc.stdint cimport int32_t, uint16_t, uint32_t, uint64_t
from libc.string cimport memcmp, memcpy, memset

cdef enum:
    DEAD = -1    # the parent of a deleted slot
    WHOLE = -2   # the parent of every key in a table of whole filters


cdef struct Slot:
    uint32_t tag      # the high half of the slot hash, never 0; 0 marks a slot never used
    int32_t parent    # a node id, WHOLE, or DEAD
    int32_t child
    int32_t key       # where the key sits in the arena: a 2-byte length, then the bytes


cdef struct Table:
    Slot* slots
    Py_ssize_t cap    # a power of two
    Py_ssize_t live
    Py_ssize_t dead
    char* arena
    Py_ssize_t arena_len
    Py_ssize_t arena_cap
    uint64_t seed


cdef inline uint64_t key_hash(uint64_t seed, const char* p, Py_ssize_t n) noexcept:
    """A seeded multiply-xorshift over the key, eight bytes at a time.  The router
    hashes each level of a topic once and reuses it at every node it visits."""
    cdef uint64_t h = seed ^ (<uint64_t>n * 0x9E3779B97F4A7C15ULL)
    cdef uint64_t w
    while n >= 8:
        memcpy(&w, p, 8)
        h = (h ^ w) * 0xBF58476D1CE4E5B9ULL
        h ^= h >> 31
        p += 8
        n -= 8
    w = 0
    memcpy(&w, p, n)
    h = (h ^ w) * 0x94D049BB133111EBULL
    return h ^ (h >> 29)


cdef inline uint64_t slot_hash(uint64_t khash, int32_t parent) noexcept:
    """(parent, key) mixed by murmur3's finalizer: low bits pick the slot, the
    high half is the tag."""
    cdef uint64_t h = khash ^ ((<uint64_t>parent + 2) * 0x9E3779B97F4A7C15ULL)
    h ^= h >> 33
    h *= 0xFF51AFD7ED558CCDULL
    h ^= h >> 33
    return h


cdef inline uint32_t _tag(uint64_t h) noexcept:
    return <uint32_t>(h >> 32) or 1


cdef inline Py_ssize_t _key_size(const char* at) noexcept:
    cdef uint16_t size
    memcpy(&size, at, 2)
    return size


cdef inline int table_init(Table* t, Py_ssize_t cap, Py_ssize_t arena_cap, uint64_t seed) except -1:
    t.slots = <Slot*>PyMem_Malloc(cap * sizeof(Slot))
    t.arena = <char*>PyMem_Malloc(arena_cap)
    if t.slots == NULL or t.arena == NULL:
        PyMem_Free(t.slots)
        PyMem_Free(t.arena)
        t.slots, t.arena = NULL, NULL
        raise MemoryError()
    memset(t.slots, 0, cap * sizeof(Slot))
    t.cap, t.live, t.dead, t.seed = cap, 0, 0, seed
    t.arena_len, t.arena_cap = 0, arena_cap
    return 0


cdef inline void table_free(Table* t) noexcept:
    PyMem_Free(t.slots)
    PyMem_Free(t.arena)
    t.slots, t.arena = NULL, NULL


cdef inline Py_ssize_t table_find(Table* t, int32_t parent, uint64_t khash, const char* p, Py_ssize_t n) noexcept:
    """The slot holding (parent, key), or -1; ``khash`` is ``key_hash`` of the key."""
    cdef uint64_t h = slot_hash(khash, parent)
    cdef uint32_t tag = _tag(h)
    cdef Py_ssize_t mask = t.cap - 1
    cdef Py_ssize_t i = <Py_ssize_t>(h & <uint64_t>mask)
    cdef Slot* s
    while True:
        s = &t.slots[i]
        if s.tag == 0:
            return -1
        if (s.tag == tag and s.parent == parent and _key_size(t.arena + s.key) == n
                and memcmp(t.arena + s.key + 2, p, n) == 0):
            return i
        i = (i + 1) & mask


cdef inline Py_ssize_t table_lookup(Table* t, int32_t parent, const char* p, Py_ssize_t n) noexcept:
    return table_find(t, parent, key_hash(t.seed, p, n), p, n)


cdef inline int32_t table_child(Table* t, int32_t parent, const char* p, Py_ssize_t n) noexcept:
    cdef Py_ssize_t i = table_lookup(t, parent, p, n)
    return -1 if i < 0 else t.slots[i].child


cdef inline int _append(Table* t, int32_t parent, const char* p, Py_ssize_t n, int32_t child) except -1:
    """Copy the key into the arena and take the first free slot of its probe."""
    cdef char* grown
    cdef Py_ssize_t cap
    cdef uint16_t size = <uint16_t>n
    cdef uint64_t h = slot_hash(key_hash(t.seed, p, n), parent)
    cdef Py_ssize_t i = <Py_ssize_t>(h & <uint64_t>(t.cap - 1))
    if t.arena_len + n + 2 > t.arena_cap:
        cap = max(2 * t.arena_cap, t.arena_len + n + 2)
        if cap > 0x7FFFFFFF:
            raise MemoryError("topic router: more than 2 GiB of filter bytes")
        grown = <char*>PyMem_Realloc(t.arena, cap)
        if grown == NULL:
            raise MemoryError()
        t.arena, t.arena_cap = grown, cap
    memcpy(t.arena + t.arena_len, &size, 2)
    memcpy(t.arena + t.arena_len + 2, p, n)
    while t.slots[i].tag != 0:
        i = (i + 1) & (t.cap - 1)
    t.slots[i].tag, t.slots[i].parent, t.slots[i].child = _tag(h), parent, child
    t.slots[i].key = <int32_t>t.arena_len
    t.arena_len += n + 2
    t.live += 1
    return 0


cdef inline int _rebuild(Table* t, Py_ssize_t live) except -1:
    """Rebuild at most half full, without deleted slots, with a compacted arena."""
    cdef Py_ssize_t cap = 16
    cdef Py_ssize_t used = 0
    cdef Py_ssize_t i
    cdef const char* key
    cdef Table fresh
    while live * 2 > cap:
        cap *= 2
    for i in range(t.cap):
        if t.slots[i].tag != 0 and t.slots[i].parent != DEAD:
            used += _key_size(t.arena + t.slots[i].key) + 2
    table_init(&fresh, cap, max(256, 2 * used), t.seed)
    for i in range(t.cap):
        if t.slots[i].tag != 0 and t.slots[i].parent != DEAD:
            key = t.arena + t.slots[i].key
            _append(&fresh, t.slots[i].parent, key + 2, _key_size(key), t.slots[i].child)
    table_free(t)
    t[0] = fresh
    return 0


cdef inline int table_insert(Table* t, int32_t parent, const char* p, Py_ssize_t n, int32_t child) except -1:
    """Add (parent, key) -> child; the caller knows the key is not there."""
    if (t.live + t.dead + 1) * 3 > t.cap * 2:
        _rebuild(t, t.live + 1)
    return _append(t, parent, p, n, child)


cdef inline void table_delete(Table* t, Py_ssize_t slot) noexcept:
    t.slots[slot].parent = DEAD
    t.live -= 1
    t.dead += 1
