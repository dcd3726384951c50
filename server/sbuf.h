/* sbuf.h — a growable byte buffer for building response bodies (metrics text, JSON).
 * An allocation failure is sticky: later appends do nothing and ts_sbuf_take returns NULL,
 * so builders check once at the end instead of after every append. */
#ifndef TS_SBUF_H
#define TS_SBUF_H

#include <stddef.h>

typedef struct {
    char *data;
    size_t len, cap;
    int failed;
} ts_sbuf;

void ts_sbuf_append(ts_sbuf *b, const void *p, size_t n);
void ts_sbuf_printf(ts_sbuf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Hand over the NUL-terminated contents (length in *len); NULL when an append failed.
 * The buffer is empty afterwards. */
char *ts_sbuf_take(ts_sbuf *b, size_t *len);
void ts_sbuf_free(ts_sbuf *b);

#endif
