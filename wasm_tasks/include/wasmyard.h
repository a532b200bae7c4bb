/*
 * wasmyard.h - the C side of the wasmyard handler contract, version 1.
 *
 * A handler task is a WASI reactor that exports `memory`, `wy_abi_version`,
 * `wy_alloc` and `wy_handle` (see wasm_tasks/README.md, "Contract").  This
 * header provides everything except `wy_handle`, which the task writes:
 *
 *     #define WASMYARD_IMPLEMENTATION      // in exactly one .c file
 *     #include "wasmyard.h"
 *
 *     WY_HANDLER int64_t wy_handle(const uint8_t *in, uint32_t len) {
 *         uint8_t *out = wy_arena_alloc(len);
 *         if (!out) return wy_err("out of memory");
 *         ...
 *         return wy_ok(out, n);
 *     }
 *
 * Memory: `wy_alloc` resets a per-execution arena and places the input in it;
 * `wy_arena_alloc` hands out more bytes from the same arena (output buffers,
 * scratch space).  Everything in the arena is valid until the next `wy_alloc`,
 * i.e. until the host starts the next execution.  The arena takes its pages
 * straight from `memory.grow` and keeps them for later executions (high-water
 * mark), so it coexists with malloc() and needs nothing from libc.  State that
 * must survive between executions belongs in static variables, not the arena.
 *
 * Build: clang --target=wasm32-wasi -mexec-model=reactor (see build.py).
 */
#ifndef WASMYARD_H
#define WASMYARD_H

#include <stddef.h>
#include <stdint.h>

#define WY_ABI_VERSION 1

#define WY_EXPORT(name) __attribute__((export_name(name)))
/* Put this in front of your `int64_t wy_handle(const uint8_t *, uint32_t)`. */
#define WY_HANDLER WY_EXPORT("wy_handle")

/* Log levels for wy_log. */
enum { WY_LOG_DEBUG = 0, WY_LOG_INFO = 1, WY_LOG_WARN = 2, WY_LOG_ERROR = 3 };

/* Host import `wasmyard.log(level, ptr, len)`: one UTF-8 log line. */
__attribute__((import_module("wasmyard"), import_name("log")))
void wy_log(int32_t level, const char *msg, uint32_t len);

/* Success: `len` output bytes at `ptr` (ptr must lie below 2 GiB). */
static inline int64_t wy_ok(const void *ptr, uint32_t len) {
    return (int64_t)(((uint64_t)(uintptr_t)ptr << 32) | (uint64_t)len);
}

/* Failure on the task's own account: a UTF-8 message of `len` bytes. */
static inline int64_t wy_errn(const char *msg, uint32_t len) {
    uint64_t p = (uint64_t)((uintptr_t)msg & 0x7fffffffu) | 0x80000000u;
    return (int64_t)((p << 32) | (uint64_t)len);
}

/* Failure with a NUL-terminated message (a string literal or arena bytes). */
static inline int64_t wy_err(const char *msg) {
    uint32_t n = 0;
    while (msg[n]) n++;
    return wy_errn(msg, n);
}

/* Log a NUL-terminated message. */
static inline void wy_logs(int32_t level, const char *msg) {
    uint32_t n = 0;
    while (msg[n]) n++;
    wy_log(level, msg, n);
}

/* `size` bytes (8-byte aligned) from the per-execution arena, or NULL. */
void *wy_arena_alloc(uint32_t size);

#ifdef WASMYARD_IMPLEMENTATION

#define WY__PAGE 65536u
#define WY__MIN_CHUNK (4u * WY__PAGE)

/* Arena chunks are runs of pages from memory.grow, linked through a header. */
typedef struct wy__chunk {
    struct wy__chunk *next;
    uint32_t size; /* usable bytes after the header */
    uint32_t _pad;
} wy__chunk;

static wy__chunk *wy__first, *wy__cur;
static uint32_t wy__used; /* bytes used in wy__cur */

static wy__chunk *wy__grow(uint32_t need) {
    uint32_t bytes = need + (uint32_t)sizeof(wy__chunk);
    if (bytes < need) return NULL; /* overflow */
    if (bytes < WY__MIN_CHUNK) bytes = WY__MIN_CHUNK;
    uint32_t pages = bytes / WY__PAGE + (bytes % WY__PAGE != 0);
    size_t old = __builtin_wasm_memory_grow(0, pages);
    if (old == (size_t)-1) return NULL;
    wy__chunk *c = (wy__chunk *)(old * WY__PAGE);
    c->next = NULL;
    c->size = pages * WY__PAGE - (uint32_t)sizeof(wy__chunk);
    return c;
}

void *wy_arena_alloc(uint32_t size) {
    uint32_t need = (size + 7u) & ~7u;
    if (need < size) return NULL;
    if (!wy__cur) {
        if (!(wy__first = wy__cur = wy__grow(need))) return NULL;
        wy__used = 0;
    }
    /* Move on through chunks kept from earlier executions, then grow. */
    while (wy__cur->size - wy__used < need) {
        if (!wy__cur->next && !(wy__cur->next = wy__grow(need))) return NULL;
        wy__cur = wy__cur->next;
        wy__used = 0;
    }
    uint8_t *p = (uint8_t *)(wy__cur + 1) + wy__used;
    wy__used += need;
    return p;
}

WY_EXPORT("wy_abi_version") int32_t wy_abi_version(void) { return WY_ABI_VERSION; }

/* Starts an execution: drops the previous arena contents, returns room for
 * the input (0 when memory cannot grow). */
WY_EXPORT("wy_alloc") void *wy_alloc(uint32_t size) {
    wy__cur = wy__first;
    wy__used = 0;
    return wy_arena_alloc(size);
}

#endif /* WASMYARD_IMPLEMENTATION */
#endif /* WASMYARD_H */
