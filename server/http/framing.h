/* framing.h — where a request's body ends (RFC 9112 §6), decided from its headers.
 *
 * libmicrohttpd 0.9.75 reads the first Content-Length of several and lets
 * Transfer-Encoding: chunked win over Content-Length silently. A proxy in front of the
 * daemon may pick the other one; the two then disagree on where the next request starts
 * (request smuggling). So the HTTP thread feeds every header of a request through
 * ts_framing_add before the body is read and refuses an ambiguous request: two
 * Content-Length headers (equal or not), a Content-Length that is not a plain decimal
 * number, Content-Length together with Transfer-Encoding (400), or a transfer coding other
 * than chunked (501). A refused request is answered with Connection: close, since nothing
 * after it on the connection can be framed.
 *
 * Pure string work (no MHD, no server state): tests/fuzz/fuzz_framing.c checks it.
 */
#ifndef TS_FRAMING_H
#define TS_FRAMING_H

#include <stddef.h>
#include <stdint.h>

typedef struct {
    int n_content_length;      /* Content-Length headers seen */
    int n_transfer_encoding;   /* Transfer-Encoding headers seen */
    int n_host;                /* Host headers seen */
    int bad_length;            /* a Content-Length value is not decimal digits */
    int not_chunked;           /* a Transfer-Encoding value other than "chunked" */
    int64_t content_length;    /* the (first) Content-Length, saturated at INT64_MAX; or -1 */
} ts_framing;

void ts_framing_init(ts_framing *f);
/* One header line as received (name compared case-insensitively; value without the
 * surrounding whitespace, as MHD stores it). NULL value counts as empty. */
void ts_framing_add(ts_framing *f, const char *name, const char *value);
/* 0 when the body's end is unambiguous; else 400 or 501 with a message for the client. */
int ts_framing_verdict(const ts_framing *f, char *err, size_t errlen);

#endif
