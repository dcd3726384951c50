/* fuzz_oip_binary.c — the binary tensor data extension of the OIP parser (proto/oip.c):
 * Inference-Header-Content-Length (json_len) and each input's binary_data_size against its
 * datatype and shape, the size arithmetic, and where each input's bytes are taken from.
 *
 * The input is not a body but a recipe for one (structure-aware), so that almost every run
 * reaches the size checks instead of dying in the JSON:
 *   byte 0       inputs (1..9: 9 is over the limit), json_len mode, max_elements
 *   per input    datatype (all 14 names, refused ones too), ndim (1..3), each dimension
 *                (one byte, or with bit 7 of the mode byte eight bytes: overflow territory),
 *                binary_data_size mode (exact, exact ± 1, 8 raw bytes, or JSON "data")
 *   the rest     the binary data that follows the JSON
 * Properties:
 *  - refusals carry a message;
 *  - acceptance only when every size is consistent: json_len is the JSON's length, each
 *    binary_data_size is count × element size, the data is exactly their sum;
 *  - a consistent request whose values are valid is accepted (FP32 finite, unsigned 64-bit
 *    within int64), and each tensor holds exactly its bytes, in input order.
 */
#include <math.h>
#include <string.h>

#include "proto/json_lite.h"
#include "proto/oip.h"
#include "tests/fuzz/fuzz.h"

static const struct {
    const char *name;
    int size;   /* 0: refused datatype */
    int is_float, is_unsigned;
} fuzz_bin_dtypes[] = {
    {"FP32", 4, 1, 0},   {"FP64", 8, 1, 0},   {"INT8", 1, 0, 0},   {"INT16", 2, 0, 0},
    {"INT32", 4, 0, 0},  {"INT64", 8, 0, 0},  {"UINT8", 1, 0, 1},  {"UINT16", 2, 0, 1},
    {"UINT32", 4, 0, 1}, {"UINT64", 8, 0, 1}, {"FP16", 0, 1, 0},   {"BF16", 0, 1, 0},
    {"BOOL", 0, 0, 0},   {"BYTES", 0, 0, 0},  {"FP8", 0, 0, 0},    {"", 0, 0, 0},
};

typedef struct {
    int dt;                 /* index into fuzz_bin_dtypes */
    int ndim;
    int64_t shape[3];
    uint64_t count;         /* product, saturating at UINT64_MAX */
    int json_data;          /* "data":[] instead of binary (valid only when count == 0) */
    int64_t size;           /* binary_data_size as sent */
    int size_exact;
} fuzz_bin_input;

static uint64_t fuzz_bin_mul(uint64_t a, uint64_t b)
{
    return a && b > UINT64_MAX / a ? UINT64_MAX : a * b;
}

/* Value of element e of input x read from p, as the parser must convert it. Returns 0 when
 * the value is invalid (non-finite float, UINT64 over INT64_MAX). */
static int fuzz_bin_value(const fuzz_bin_input *x, const uint8_t *p, double *f, int64_t *i)
{
    int size = fuzz_bin_dtypes[x->dt].size;
    uint64_t u = 0;
    for (int k = size - 1; k >= 0; k--)
        u = u << 8 | p[k];
    if (fuzz_bin_dtypes[x->dt].is_float) {
        if (size == 4) {
            uint32_t u32 = (uint32_t)u;
            float v;
            memcpy(&v, &u32, 4);
            *f = v;
            return isfinite(v);
        }
        double d;
        memcpy(&d, &u, 8);
        *f = d;
        return isfinite(d) && isfinite(ts_json_double_to_float(d));
    }
    if (fuzz_bin_dtypes[x->dt].is_unsigned) {
        *i = (int64_t)u;
        return u <= (uint64_t)INT64_MAX;
    }
    int bits = 8 * size;
    *i = bits < 64 && (u >> (bits - 1) & 1) ? (int64_t)(u | ~((UINT64_C(1) << bits) - 1)) : (int64_t)u;
    return 1;
}

static size_t fuzz_bin_json(char *j, size_t cap, const fuzz_bin_input *in, int n)
{
    size_t o = (size_t)snprintf(j, cap, "{\"id\":\"f\",\"inputs\":[");
    for (int k = 0; k < n && o < cap; k++) {
        const fuzz_bin_input *x = &in[k];
        o += (size_t)snprintf(j + o, cap - o, "%s{\"name\":\"in%d\",\"datatype\":\"%s\",\"shape\":[",
                              k ? "," : "", k, fuzz_bin_dtypes[x->dt].name);
        for (int d = 0; d < x->ndim && o < cap; d++)
            o += (size_t)snprintf(j + o, cap - o, "%s%lld", d ? "," : "", (long long)x->shape[d]);
        if (o < cap && x->json_data)
            o += (size_t)snprintf(j + o, cap - o, "],\"data\":[]}");
        else if (o < cap)
            o += (size_t)snprintf(j + o, cap - o, "],\"parameters\":{\"binary_data_size\":%lld}}",
                                  (long long)x->size);
    }
    if (o < cap)
        o += (size_t)snprintf(j + o, cap - o, "],\"outputs\":[{\"name\":\"output\"}]}");
    TS_FUZZ_CHECK(o < cap, "recipe JSON too long");
    return o;
}

int ts_fuzz_oip_binary(const uint8_t *data, size_t size)
{
    ts_fuzz_bytes b = {data, size};
    unsigned mode = (unsigned)ts_fuzz_take(&b, 1);
    int n = 1 + (int)(mode % 9);
    int64_t max_elements = (mode & 0x40) ? 64 : 1 << 20;
    fuzz_bin_input in[9];
    uint64_t need = 0;        /* the binary bytes a consistent request has */
    int consistent = 1, valid_types = 1, any_binary = 0;
    for (int k = 0; k < n; k++) {
        fuzz_bin_input *x = &in[k];
        unsigned t = (unsigned)ts_fuzz_take(&b, 1);
        x->dt = (int)(t & 15);
        x->ndim = 1 + (int)((t >> 4) % 3);
        x->count = 1;
        for (int d = 0; d < x->ndim; d++) {
            x->shape[d] = (mode & 0x80) ? (int64_t)(ts_fuzz_take(&b, 8) >> 1) : (int64_t)ts_fuzz_take(&b, 1);
            x->count = fuzz_bin_mul(x->count, (uint64_t)x->shape[d]);
        }
        int esize = fuzz_bin_dtypes[x->dt].size;
        uint64_t exact = fuzz_bin_mul(x->count, (uint64_t)esize);
        unsigned sm = (unsigned)(t >> 6);
        x->json_data = sm == 3 && (ts_fuzz_take(&b, 1) & 1);
        x->size = sm == 0 || exact > INT64_MAX ? (int64_t)(exact > INT64_MAX ? INT64_MAX : exact)
                : sm == 1 ? (int64_t)exact + ((t & 8) ? 1 : -1)
                : (int64_t)(ts_fuzz_take(&b, 8) >> 1);
        x->size_exact = !x->json_data && exact <= INT64_MAX && (uint64_t)x->size == exact;
        valid_types &= esize > 0;
        any_binary |= !x->json_data;
        consistent &= x->count <= (uint64_t)max_elements && (x->size_exact || (x->json_data && x->count == 0));
        if (x->size_exact)
            need += exact;
    }
    consistent &= n <= TS_OIP_MAX_TENSORS && valid_types;
    char json[4096];
    size_t jlen = fuzz_bin_json(json, sizeof json, in, n);
    unsigned jm = (unsigned)ts_fuzz_take(&b, 1);
    int64_t json_len = jm % 4 == 0 ? (int64_t)jlen - 1 + (jm >> 2) % 3 : jm % 4 == 1 ? -1 : (int64_t)jlen;
    /* The JSON part may run past the recipe's JSON into the bytes after it as long as those
     * are whitespace; without the header the whole body is JSON, which suits a request
     * without binary inputs. */
    size_t ws = 0;
    while (ws < b.n && strchr(" \t\r\n", b.p[ws]) && b.p[ws])
        ws++;
    size_t json_tail = json_len > (int64_t)jlen ? (size_t)json_len - jlen : 0;
    consistent &= json_len == -1 ? !any_binary && ws == b.n
                : json_len >= (int64_t)jlen && json_tail <= ws && b.n - json_tail == need;

    size_t len = jlen + b.n;
    uint8_t *body = malloc(len ? len : 1);
    memcpy(body, json, jlen);
    memcpy(body + jlen, b.p, b.n);
    ts_oip_request req;
    char err[256] = "";
    ts_oip_limits lim = {.max_elements = max_elements, .max_depth = 0};
    int rc = ts_oip_parse_request(body, len, json_len, &lim, &req, err, sizeof err);
    TS_FUZZ_CHECK(rc == 0 || err[0], "refused without a message");
    TS_FUZZ_CHECK(rc != 0 || consistent, "accepted an inconsistent request: %.300s", json);

    /* Consistent: accepted exactly when every value is valid, with those values. */
    int values_ok = 1;
    const uint8_t *p = b.p + json_tail;
    for (int k = 0; consistent && k < n; k++) {
        const fuzz_bin_input *x = &in[k];
        int esize = fuzz_bin_dtypes[x->dt].size;
        for (uint64_t e = 0; e < x->count && !x->json_data; e++, p += esize) {
            double f = 0;
            int64_t i = 0;
            int ok = fuzz_bin_value(x, p, &f, &i);
            values_ok &= ok;
            if (rc != 0 || !ok)
                continue;
            const ts_oip_tensor *t = &req.inputs[k];
            if (fuzz_bin_dtypes[x->dt].is_float)
                TS_FUZZ_CHECK(t->f32[e] == ts_json_double_to_float(f), "input %d element %llu: %g, expected %g", k,
                              (unsigned long long)e, (double)t->f32[e], f);
            else
                TS_FUZZ_CHECK(t->i64[e] == i, "input %d element %llu: %lld, expected %lld", k,
                              (unsigned long long)e, (long long)t->i64[e], (long long)i);
        }
    }
    if (consistent)
        TS_FUZZ_CHECK((rc == 0) == values_ok, "consistent request with %s values %s: %s",
                      values_ok ? "valid" : "invalid", rc == 0 ? "accepted" : "refused", err);
    if (rc == 0)
        ts_oip_request_free(&req);
    free(body);
    return 0;
}

TS_FUZZ_ENTRY(ts_fuzz_oip_binary)
