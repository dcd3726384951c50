/* buf.c — growable byte buffer (see buf.h). */
#include "buf.h"

#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

void ts_buf_grow(ts_buf *b, size_t extra)
{
    if (b->oom || b->cap - b->len > extra) return;   /* keep one byte for the NUL */
    size_t ncap = b->cap ? b->cap : 256;
    while (ncap - b->len <= extra) {
        if (ncap > SIZE_MAX / 2) { b->oom = 1; return; }
        ncap *= 2;
    }
    char *np = realloc(b->p, ncap);
    if (!np) { b->oom = 1; return; }
    b->p = np;
    b->cap = ncap;
}

void ts_buf_i64(ts_buf *b, int64_t v)
{
    char tmp[24];
    int n = snprintf(tmp, sizeof tmp, "%lld", (long long)v);
    ts_buf_put(b, tmp, (size_t)n);
}

/* Format straight into the spare room; only text longer than that is formatted twice. */
void ts_buf_printf(ts_buf *b, const char *fmt, ...)
{
    if (b->oom) return;
    size_t room = b->cap - b->len;   /* 0 while nothing is allocated */
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(room ? b->p + b->len : NULL, room, fmt, ap);
    va_end(ap);
    if (n < 0) return;
    if ((size_t)n >= room) {
        ts_buf_reserve(b, (size_t)n);
        if (b->oom) return;
        va_start(ap, fmt);
        vsnprintf(b->p + b->len, (size_t)n + 1, fmt, ap);
        va_end(ap);
    }
    b->len += (size_t)n;
}

char *ts_buf_take(ts_buf *b, size_t *len)
{
    ts_buf_reserve(b, 0);
    char *p = NULL;
    if (!b->oom) {
        b->p[b->len] = '\0';
        p = b->p;
        if (len) *len = b->len;
    } else {
        free(b->p);
    }
    memset(b, 0, sizeof *b);
    return p;
}

void ts_buf_free(ts_buf *b)
{
    free(b->p);
    memset(b, 0, sizeof *b);
}
