/* chunks.c — messages split below max_payload (see chunks.h). */
#include "server/repl/chunks.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define HEADER_ROOM 16384
#define DEFAULT_MAX_PAYLOAD (1024 * 1024)

size_t ts_chunk_room(int64_t max_payload) {
    size_t mp = max_payload > 0 ? (size_t)max_payload : DEFAULT_MAX_PAYLOAD;
    return mp - (mp / 2 < HEADER_ROOM ? mp / 2 : HEADER_ROOM);
}

int ts_chunk_count(size_t len, size_t room) {
    size_t n = (len + room - 1) / room;
    return n ? (int)n : 1;
}

void ts_chunk_format(int i, int n, char *out, size_t outlen) { snprintf(out, outlen, "%d/%d", i, n); }

int ts_chunk_parse(const char *text, int *i, int *n) {
    char end;
    if (!text || sscanf(text, "%d/%d%c", i, n, &end) != 2 || *i < 0 || *i >= *n)
        return -1;
    return 0;
}

void ts_chunks_begin(ts_chunks *c, int n) {
    ts_chunks_free(c);
    c->n = n;
}

int ts_chunks_add(ts_chunks *c, int i, const void *data, size_t len) {
    if (i != c->next || c->next >= c->n) {
        ts_chunks_free(c);
        return -1;
    }
    if (c->len + len > c->cap) {
        size_t cap = (c->len + len) * 2;
        uint8_t *b = realloc(c->buf, cap);
        if (!b) {
            ts_chunks_free(c);
            return -1;
        }
        c->buf = b;
        c->cap = cap;
    }
    if (len) /* an empty chunk may have no data pointer */
        memcpy(c->buf + c->len, data, len);
    c->len += len;
    return ++c->next == c->n;
}

uint8_t *ts_chunks_take(ts_chunks *c, size_t *len) {
    uint8_t *b = c->buf;
    *len = c->len;
    *c = (ts_chunks){0};
    return b;
}

void ts_chunks_free(ts_chunks *c) {
    free(c->buf);
    *c = (ts_chunks){0};
}
