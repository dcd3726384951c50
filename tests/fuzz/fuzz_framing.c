/* fuzz_framing.c — request framing (server/http/framing.c): which header sets make the end of a
 * request body ambiguous (two Content-Length, Content-Length with Transfer-Encoding, an
 * odd length or transfer coding), the request-smuggling cases the HTTP thread refuses.
 *
 * Input: a request head as a client sends it, "Name: value" lines separated by "\n" or
 * "\r\n" (a line without ':' is skipped; the value is trimmed of spaces and tabs, as
 * libmicrohttpd stores it); at most 64 lines.
 * Properties:
 *  - the verdict is 0, 400 or 501; a refusal carries a message;
 *  - it is 0 exactly when an independent reading of the same lines finds at most one
 *    Content-Length made of digits only, no Content-Length beside a Transfer-Encoding,
 *    at most one Transfer-Encoding and that one "chunked" (any case), at most one Host;
 *  - an accepted Content-Length is the number its digits spell (saturated at INT64_MAX);
 *  - the verdict does not depend on the order of the lines.
 */
#include <string.h>
#include <strings.h>

#include "server/http/framing.h"
#include "tests/fuzz/fuzz.h"

#define FRAMING_MAX_LINES 64

typedef struct {
    char name[256], value[256];
} fuzz_header;

/* Split data into at most FRAMING_MAX_LINES headers; returns how many. */
static int fuzz_framing_split(const uint8_t *data, size_t size, fuzz_header *hs)
{
    int n = 0;
    size_t i = 0;
    while (i < size && n < FRAMING_MAX_LINES) {
        size_t end = i;
        while (end < size && data[end] != '\n')
            end++;
        size_t len = end - i;
        if (len && data[i + len - 1] == '\r')
            len--;
        const uint8_t *colon = memchr(data + i, ':', len);
        if (colon && colon != data + i) {
            size_t nl = (size_t)(colon - (data + i)), vs = nl + 1, ve = len;
            while (vs < ve && (data[i + vs] == ' ' || data[i + vs] == '\t'))
                vs++;
            while (ve > vs && (data[i + ve - 1] == ' ' || data[i + ve - 1] == '\t'))
                ve--;
            if (nl < sizeof hs[n].name && ve - vs < sizeof hs[n].value &&
                !memchr(data + i, '\0', len)) {
                memcpy(hs[n].name, data + i, nl);
                hs[n].name[nl] = '\0';
                memcpy(hs[n].value, data + i + vs, ve - vs);
                hs[n].value[ve - vs] = '\0';
                n++;
            }
        }
        i = end + 1;
    }
    return n;
}

/* The independent reading: 1 when the framing is unambiguous. */
static int fuzz_framing_model(const fuzz_header *hs, int n, long long *length)
{
    int cl = 0, te = 0, host = 0, ok = 1;
    *length = -1;
    for (int k = 0; k < n; k++) {
        if (strcasecmp(hs[k].name, "content-length") == 0) {
            size_t d = strspn(hs[k].value, "0123456789");
            if (d == 0 || hs[k].value[d])
                ok = 0;
            else if (cl == 0)
                *length = strtoll(hs[k].value, NULL, 10); /* LLONG_MAX when it overflows */
            cl++;
        } else if (strcasecmp(hs[k].name, "transfer-encoding") == 0) {
            te++;
            if (strcasecmp(hs[k].value, "chunked") != 0)
                ok = 0;
        } else if (strcasecmp(hs[k].name, "host") == 0) {
            host++;
        }
    }
    return ok && cl <= 1 && te <= 1 && !(cl && te) && host <= 1;
}

static int fuzz_framing_verdict(const fuzz_header *hs, int n, int reverse, ts_framing *f,
                                char *err, size_t errlen)
{
    ts_framing_init(f);
    for (int k = 0; k < n; k++) {
        const fuzz_header *h = &hs[reverse ? n - 1 - k : k];
        ts_framing_add(f, h->name, h->value);
    }
    err[0] = '\0';
    return ts_framing_verdict(f, err, errlen);
}

int ts_fuzz_framing(const uint8_t *data, size_t size)
{
    static fuzz_header hs[FRAMING_MAX_LINES];
    int n = fuzz_framing_split(data, size, hs);
    ts_framing f;
    char err[256], err2[256];
    int v = fuzz_framing_verdict(hs, n, 0, &f, err, sizeof err);
    TS_FUZZ_CHECK(v == 0 || v == 400 || v == 501, "verdict %d", v);
    TS_FUZZ_CHECK(v == 0 || err[0], "refusal %d without a message", v);
    long long length;
    int ok = fuzz_framing_model(hs, n, &length);
    TS_FUZZ_CHECK(ok == (v == 0), "verdict %d (%s) but the model says %s", v, err,
                  ok ? "unambiguous" : "ambiguous");
    if (v == 0)
        TS_FUZZ_CHECK(f.content_length == length, "length %lld, expected %lld",
                      (long long)f.content_length, length);
    ts_framing r;
    int v2 = fuzz_framing_verdict(hs, n, 1, &r, err2, sizeof err2);
    TS_FUZZ_CHECK(v2 == v, "verdict %d, reversed %d", v, v2);
    return 0;
}

TS_FUZZ_ENTRY(ts_fuzz_framing)
