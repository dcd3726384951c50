/* framing.c — refusing ambiguous request framing (see framing.h). */
#include "server/http/framing.h"

#include <stddef.h>
#include <stdio.h>
#include <strings.h>

void ts_framing_init(ts_framing *f) {
    *f = (ts_framing){.content_length = -1};
}

/* A plain decimal length, saturated at INT64_MAX (any such length is over every limit);
 * -1 when it is not 1 or more digits. */
static int64_t parse_length(const char *v) {
    int64_t n = 0;
    if (!*v)
        return -1;
    for (; *v; v++) {
        if (*v < '0' || *v > '9')
            return -1;
        int d = *v - '0';
        n = n > (INT64_MAX - d) / 10 ? INT64_MAX : n * 10 + d;
    }
    return n;
}

void ts_framing_add(ts_framing *f, const char *name, const char *value) {
    if (!value)
        value = "";
    if (strcasecmp(name, "Content-Length") == 0) {
        int64_t n = parse_length(value);
        if (n < 0)
            f->bad_length = 1;
        if (f->n_content_length++ == 0)
            f->content_length = n;
    } else if (strcasecmp(name, "Transfer-Encoding") == 0) {
        f->n_transfer_encoding++;
        if (strcasecmp(value, "chunked") != 0)
            f->not_chunked = 1;
    } else if (strcasecmp(name, "Host") == 0) {
        f->n_host++;
    }
}

int ts_framing_verdict(const ts_framing *f, char *err, size_t errlen) {
    if (f->n_content_length > 1) {
        snprintf(err, errlen, "the request has %d Content-Length headers: send exactly one",
                 f->n_content_length);
        return 400;
    }
    if (f->bad_length) {
        snprintf(err, errlen, "Content-Length must be a decimal number of bytes");
        return 400;
    }
    if (f->n_content_length && f->n_transfer_encoding) {
        snprintf(err, errlen, "the request has both Content-Length and Transfer-Encoding: "
                 "send one of them");
        return 400;
    }
    if (f->n_transfer_encoding > 1 || f->not_chunked) {
        snprintf(err, errlen, "the only transfer coding accepted is a single "
                 "'Transfer-Encoding: chunked'");
        return 501;
    }
    if (f->n_host > 1) {
        snprintf(err, errlen, "the request has %d Host headers: send exactly one", f->n_host);
        return 400;
    }
    return 0;
}
