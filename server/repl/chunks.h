/* chunks.h — a NATS message larger than the server's max_payload (1 MiB by default; the
 * mid models' files are bigger), split into chunks on publishing and put together again on
 * consuming: published states (state.h) and admin messages (repl.h). A chunk carries the
 * header Tscale-Chunk "i/n"; one publisher sends a message's chunks in order, so a
 * consumer appends them per publisher and drops a message with a chunk missing. Pure: no
 * NATS calls; any thread (a ts_chunks is its owner's alone). */
#ifndef TS_CHUNKS_H
#define TS_CHUNKS_H

#include <stddef.h>
#include <stdint.h>

/* Payload bytes per chunk for a server's max_payload (<= 0: unknown, 1 MiB assumed),
 * leaving room for the headers: 16 KiB, or half of a small max_payload. */
size_t ts_chunk_room(int64_t max_payload);
/* How many chunks len bytes take: at least 1 (an empty message is one empty chunk). */
int ts_chunk_count(size_t len, size_t room);
/* The header value of chunk i of n, "i/n", in out[32]. */
void ts_chunk_format(int i, int n, char *out, size_t outlen);
/* Parse "i/n" (0 <= i < n). 0, or -1 when malformed. */
int ts_chunk_parse(const char *text, int *i, int *n);

/* A message being put together. Zero-initialised is empty. */
typedef struct {
    int next, n;        /* the chunk expected next, of n */
    uint8_t *buf;
    size_t len, cap;
} ts_chunks;

/* Start a message of n chunks (what was being put together is dropped). */
void ts_chunks_begin(ts_chunks *c, int n);
/* Append chunk i (data[len]): 1 when the message is complete (take it), 0 when more
 * follow, -1 when i is not the chunk expected or out of memory (the message is dropped). */
int ts_chunks_add(ts_chunks *c, int i, const void *data, size_t len);
/* The complete message (malloc'd, the caller frees; NULL for an empty one) and its length;
 * c is empty again. */
uint8_t *ts_chunks_take(ts_chunks *c, size_t *len);
void ts_chunks_free(ts_chunks *c);

#endif
