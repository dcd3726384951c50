/* buf.h — the growable byte buffer every text and file builder writes into: JSON responses
 * (json_lite's writers), metrics text, error bodies, the safetensors header.
 *
 * A failed allocation is sticky (oom): later writes do nothing and ts_buf_take returns
 * NULL, so builders check once at the end instead of after every write. The contents are
 * NUL-terminated only by ts_buf_take (appends do not pay for it), and the fast path of an
 * append is inline: json_lite writes each float of a response through it.
 *
 * A zeroed ts_buf is empty and ready. Code that fills reserved space itself (p + len,
 * up to cap - len - 1 bytes after ts_buf_reserve) then advances len. */
#ifndef TS_BUF_H
#define TS_BUF_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

typedef struct {
    char *p;
    size_t len, cap;
    int oom;
} ts_buf;

/* Slow path of ts_buf_reserve: grow geometrically (oom on failure or overflow). */
void ts_buf_grow(ts_buf *b, size_t extra);

/* Room for extra more bytes plus the final NUL (unless oom). */
static inline void ts_buf_reserve(ts_buf *b, size_t extra)
{
    if (!b->oom && b->cap - b->len <= extra)
        ts_buf_grow(b, extra);
}

static inline void ts_buf_put(ts_buf *b, const void *s, size_t n)
{
    ts_buf_reserve(b, n);
    if (b->oom) return;
    memcpy(b->p + b->len, s, n);
    b->len += n;
}

static inline void ts_buf_puts(ts_buf *b, const char *s) { ts_buf_put(b, s, strlen(s)); }

/* Decimal integer. */
void ts_buf_i64(ts_buf *b, int64_t v);
/* printf-style text, never truncated (an encoding error writes nothing). */
void ts_buf_printf(ts_buf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* Hand over the NUL-terminated contents (their length in *len when len is not NULL), or
 * NULL after oom (the memory is freed then). b is empty and ready again afterwards. */
char *ts_buf_take(ts_buf *b, size_t *len);
void ts_buf_free(ts_buf *b);

#endif
