/* arena.c — chunked memory for records with FIFO-like lifetimes (see arena.h).
 *
 * Each allocation is preceded by a header naming its chunk, so freeing needs nothing but
 * the pointer; a chunk knows how many of its allocations are live.
 */
#include "server/engine/arena.h"

#include <stdalign.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

/* AddressSanitizer: gcc says so with __SANITIZE_ADDRESS__, clang (the fuzzers') with
 * __has_feature. */
#if defined(__SANITIZE_ADDRESS__)
#define ARENA_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define ARENA_ASAN 1
#endif
#endif

#ifdef ARENA_ASAN
#define CHUNK_BYTES 0 /* every allocation a chunk of its own: ASan sees each one */
#else
#define CHUNK_BYTES TS_ARENA_CHUNK
#endif

struct ts_arena_chunk {
    size_t live;   /* allocations not yet freed */
    size_t used;   /* bytes of data[] handed out */
    size_t cap;    /* bytes of data[] */
    alignas(max_align_t) unsigned char data[];
};

/* Before every allocation: its chunk, padded so that the allocation stays aligned. */
typedef union {
    ts_arena_chunk *chunk;
    max_align_t align;
} header;

#define ALIGN_UP(n) (((n) + alignof(max_align_t) - 1) / alignof(max_align_t) * alignof(max_align_t))

void ts_arena_init(ts_arena *a) { memset(a, 0, sizeof *a); }

static void chunk_free(ts_arena *a, ts_arena_chunk *c) {
    a->bytes -= sizeof *c + c->cap;
    if (a->newest == c)
        a->newest = NULL;
    free(c);
}

void *ts_arena_alloc(ts_arena *a, size_t n) {
    if (n > SIZE_MAX / 2)
        return NULL;
    size_t need = sizeof(header) + (CHUNK_BYTES ? ALIGN_UP(n) : n); /* ASan: not a byte more */
    ts_arena_chunk *c = a->newest;
    if (!c || c->cap - c->used < need) {
        size_t cap = need > CHUNK_BYTES / 4 ? need : CHUNK_BYTES;
        ts_arena_chunk *fresh = malloc(sizeof *fresh + cap);
        if (!fresh)
            return NULL;
        fresh->live = fresh->used = 0;
        fresh->cap = cap;
        a->bytes += sizeof *fresh + cap;
        if (need > CHUNK_BYTES / 4 && c) {
            c = fresh; /* a large one: its own chunk; the newest stays the one to bump from */
        } else {
            /* The old newest still has live allocations (an empty one restarts at its start
             * and fits any small need; under ASan it is freed at once): its last one frees it. */
            a->newest = c = fresh;
        }
    }
    header *h = (header *)(c->data + c->used);
    h->chunk = c;
    c->used += need;
    c->live++;
    return h + 1;
}

char *ts_arena_strdup(ts_arena *a, const char *s) {
    size_t n = strlen(s) + 1;
    char *p = ts_arena_alloc(a, n);
    if (p)
        memcpy(p, s, n);
    return p;
}

void ts_arena_free(ts_arena *a, void *p) {
    if (!p)
        return;
    ts_arena_chunk *c = ((header *)p - 1)->chunk;
    if (--c->live > 0)
        return;
    if (c == a->newest && CHUNK_BYTES > 0)
        c->used = 0; /* empty: bump from its start again */
    else
        chunk_free(a, c);
}

void ts_arena_release(ts_arena *a) {
    if (a->newest)
        chunk_free(a, a->newest);
}
