/* oip.c — Open Inference Protocol (KServe V2 REST) bodies; see oip.h.
 *
 * Parsing runs in three steps: the JSON text becomes a tape (json_lite), the tape's
 * request fields are checked into ts_oip_request with each input's data still in place,
 * then each input's data -- JSON numbers or binary bytes -- is checked against its shape
 * and only then allocated and converted. Nothing is allocated from a declared size before
 * the body has shown it holds that much data. */
#include "oip.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "json_lite.h"

#define NONE UINT32_MAX

typedef enum { DT_FLOAT, DT_SIGNED, DT_UNSIGNED, DT_REFUSED } dt_kind;

typedef struct {
    const char *name;
    int size;                 /* bytes per element in binary data */
    dt_kind kind;
    const char *why;          /* DT_REFUSED: why */
} dtype_info;

static const dtype_info dtypes[] = {
    { "FP32", 4, DT_FLOAT, NULL },      { "FP64", 8, DT_FLOAT, NULL },
    { "INT8", 1, DT_SIGNED, NULL },     { "INT16", 2, DT_SIGNED, NULL },
    { "INT32", 4, DT_SIGNED, NULL },    { "INT64", 8, DT_SIGNED, NULL },
    { "UINT8", 1, DT_UNSIGNED, NULL },  { "UINT16", 2, DT_UNSIGNED, NULL },
    { "UINT32", 4, DT_UNSIGNED, NULL }, { "UINT64", 8, DT_UNSIGNED, NULL },
    { "FP16", 2, DT_REFUSED, "FP16 is not supported: send FP32" },
    { "BF16", 2, DT_REFUSED, "BF16 is not supported: send FP32" },
    { "BOOL", 1, DT_REFUSED, "BOOL is not supported: send FP32 or an integer type" },
    { "BYTES", 0, DT_REFUSED, "BYTES is not supported: send FP32 or an integer type" },
};

/* Where an input's data is, between checking the JSON and converting the data. */
typedef struct {
    const dtype_info *dt;
    uint32_t data;            /* "data" node, or NONE */
    int64_t binary_size;      /* parameters.binary_data_size, or -1 */
} input_src;

typedef struct {
    const ts_jtape *t;
    int64_t max_elements;
    char *err;
    size_t errlen;
} pctx;

static int fail(pctx *c, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(c->err, c->errlen, fmt, ap);
    va_end(ap);
    return -1;
}

static const ts_jt_node *node(const pctx *c, uint32_t i) { return &c->t->nodes[i]; }

/* "[2,3]" */
static const char *shape_str(const ts_oip_tensor *x, char buf[200])
{
    size_t o = 0;
    buf[o++] = '[';
    for (int d = 0; d < x->ndim; d++)
        o += (size_t)snprintf(buf + o, 200 - o, "%s%lld", d ? "," : "", (long long)x->shape[d]);
    snprintf(buf + o, 200 - o, "]");
    return buf;
}

/* A member that must be a string that fits cap (NUL-terminated, no U+0000). 0 when
 * present, 1 when absent, -1 on error. */
static int get_string(pctx *c, uint32_t obj, const char *key, const char *what, char *buf, size_t cap)
{
    uint32_t v;
    int r = ts_jtape_member(c->t, obj, key, &v);
    if (r < 0) return fail(c, "%s: \"%s\" appears twice", what, key);
    if (r == 0) return 1;
    if (node(c, v)->kind != TS_JT_STR)
        return fail(c, "%s: \"%s\" must be a string, got %s", what, key, ts_jtape_kind_name(c->t, v));
    r = ts_jtape_str(c->t, v, buf, cap);
    if (r == -1) return fail(c, "%s: \"%s\" is longer than %zu bytes", what, key, cap - 1);
    if (r == -2) return fail(c, "%s: \"%s\" contains U+0000", what, key);
    return 0;
}

/* A member of a given kind: 1 and *val when present, 0 when absent, -1 on error. */
static int get_kind(pctx *c, uint32_t obj, const char *key, uint8_t kind, const char *kind_name,
                    const char *what, uint32_t *val)
{
    int r = ts_jtape_member(c->t, obj, key, val);
    if (r < 0) return fail(c, "%s: \"%s\" appears twice", what, key);
    if (r == 0) return 0;
    if (node(c, *val)->kind != kind)
        return fail(c, "%s: \"%s\" must be %s, got %s", what, key, kind_name,
                    ts_jtape_kind_name(c->t, *val));
    return 1;
}

/* A boolean member of the object member "parameters": 1/0 when given, -2 when absent, -1 on error. */
static int get_bool_param(pctx *c, uint32_t obj, const char *key, const char *what)
{
    uint32_t params, v;
    int r = get_kind(c, obj, "parameters", TS_JT_OBJ, "an object", what, &params);
    if (r <= 0) return r < 0 ? -1 : -2;
    r = ts_jtape_member(c->t, params, key, &v);
    if (r < 0) return fail(c, "%s: parameters.%s appears twice", what, key);
    if (r == 0) return -2;
    uint8_t k = node(c, v)->kind;
    if (k != TS_JT_TRUE && k != TS_JT_FALSE)
        return fail(c, "%s: parameters.%s must be true or false, got %s", what, key,
                    ts_jtape_kind_name(c->t, v));
    return k == TS_JT_TRUE;
}

static int parse_shape(pctx *c, uint32_t in, const char *what, ts_oip_tensor *x)
{
    uint32_t s;
    int r = get_kind(c, in, "shape", TS_JT_ARR, "an array of integers", what, &s);
    if (r < 0) return -1;
    if (r == 0) return fail(c, "%s: \"shape\" is missing", what);
    if (node(c, s)->n < 1 || node(c, s)->n > TS_OIP_MAX_DIMS)
        return fail(c, "%s: shape has %u dimensions (1 to %d allowed)", what, node(c, s)->n,
                    TS_OIP_MAX_DIMS);
    x->ndim = (int)node(c, s)->n;
    int zero = 0;
    for (int d = 0; d < x->ndim; d++) {
        const ts_jt_node *dn = node(c, s + 1 + (uint32_t)d);   /* scalars: consecutive nodes */
        if (dn->kind != TS_JT_INT || (dn->flags & TS_JT_BIG) || dn->v.i < 0)
            return fail(c, "%s: shape[%d] must be a non-negative integer", what, d);
        x->shape[d] = dn->v.i;
        zero |= dn->v.i == 0;
    }
    /* Checked against the limit as it grows, so the product never overflows. */
    x->count = 1;
    for (int d = 0; d < x->ndim && !zero; d++) {
        if (x->shape[d] > c->max_elements / x->count) {
            char sb[200];
            return fail(c, "%s: shape %s has more than %lld elements", what, shape_str(x, sb),
                        (long long)c->max_elements);
        }
        x->count *= x->shape[d];
    }
    if (zero) x->count = 0;
    return 0;
}

static int parse_datatype(pctx *c, uint32_t in, const char *what, ts_oip_tensor *x, input_src *src)
{
    int r = get_string(c, in, "datatype", what, x->datatype, sizeof x->datatype);
    if (r < 0) return -1;
    if (r == 1) return fail(c, "%s: \"datatype\" is missing", what);
    for (size_t i = 0; i < sizeof dtypes / sizeof dtypes[0]; i++) {
        if (strcmp(dtypes[i].name, x->datatype) != 0) continue;
        if (dtypes[i].kind == DT_REFUSED) return fail(c, "%s: datatype %s", what, dtypes[i].why);
        src->dt = &dtypes[i];
        x->type = dtypes[i].kind == DT_FLOAT ? TS_OIP_FP32 : TS_OIP_INT64;
        return 0;
    }
    return fail(c, "%s: unknown datatype \"%s\" (FP32, FP64, INT8..INT64 or UINT8..UINT64)",
                what, x->datatype);
}

/* Where the data is: "data", or parameters.binary_data_size (exactly one of them). */
static int parse_data_source(pctx *c, uint32_t in, const char *what, input_src *src)
{
    uint32_t params, v;
    src->data = NONE;
    src->binary_size = -1;
    int r = get_kind(c, in, "parameters", TS_JT_OBJ, "an object", what, &params);
    if (r < 0) return -1;
    if (r == 1) {
        r = ts_jtape_member(c->t, params, "binary_data_size", &v);
        if (r < 0) return fail(c, "%s: parameters.binary_data_size appears twice", what);
        if (r == 1) {
            const ts_jt_node *n = node(c, v);
            if (n->kind != TS_JT_INT || (n->flags & TS_JT_BIG) || n->v.i < 0)
                return fail(c, "%s: parameters.binary_data_size must be a non-negative integer", what);
            src->binary_size = n->v.i;
        }
    }
    r = ts_jtape_member(c->t, in, "data", &v);
    if (r < 0) return fail(c, "%s: \"data\" appears twice", what);
    if (r == 1) src->data = v;
    if (r == 1 && src->binary_size >= 0)
        return fail(c, "%s: has both \"data\" and parameters.binary_data_size", what);
    if (r == 0 && src->binary_size < 0)
        return fail(c, "%s: has no data (neither \"data\" nor parameters.binary_data_size)", what);
    return 0;
}

static int parse_input(pctx *c, uint32_t in, int idx, ts_oip_tensor *x, input_src *src)
{
    char what[TS_OIP_NAME_MAX + 16];
    snprintf(what, sizeof what, "inputs[%d]", idx);
    if (node(c, in)->kind != TS_JT_OBJ)
        return fail(c, "%s must be an object, got %s", what, ts_jtape_kind_name(c->t, in));
    int r = get_string(c, in, "name", what, x->name, sizeof x->name);
    if (r < 0) return -1;
    if (r == 1 || !x->name[0]) return fail(c, "%s: \"name\" is missing or empty", what);
    snprintf(what, sizeof what, "input \"%s\"", x->name);
    if (parse_datatype(c, in, what, x, src) < 0 || parse_shape(c, in, what, x) < 0)
        return -1;
    return parse_data_source(c, in, what, src);
}

static int parse_inputs(pctx *c, uint32_t root, ts_oip_request *req, input_src *src)
{
    uint32_t arr;
    int r = get_kind(c, root, "inputs", TS_JT_ARR, "an array", "request", &arr);
    if (r < 0) return -1;
    if (r == 0 || node(c, arr)->n == 0) return fail(c, "request: \"inputs\" is missing or empty");
    if (node(c, arr)->n > TS_OIP_MAX_TENSORS)
        return fail(c, "request: %u inputs (at most %d)", node(c, arr)->n, TS_OIP_MAX_TENSORS);
    uint32_t end = node(c, arr)->next;
    for (uint32_t i = arr + 1; i < end; i = ts_jtape_after(c->t, i)) {
        int k = req->n_inputs;
        if (parse_input(c, i, k, &req->inputs[k], &src[k]) < 0) return -1;
        for (int j = 0; j < k; j++)
            if (strcmp(req->inputs[j].name, req->inputs[k].name) == 0)
                return fail(c, "input \"%s\" is given twice", req->inputs[k].name);
        req->n_inputs++;
    }
    return 0;
}

static int parse_outputs(pctx *c, uint32_t root, ts_oip_request *req)
{
    uint32_t arr;
    int r = get_kind(c, root, "outputs", TS_JT_ARR, "an array", "request", &arr);
    if (r <= 0) return r;
    if (node(c, arr)->n > TS_OIP_MAX_TENSORS)
        return fail(c, "request: %u outputs requested (at most %d)", node(c, arr)->n, TS_OIP_MAX_TENSORS);
    uint32_t end = node(c, arr)->next;
    for (uint32_t i = arr + 1; i < end; i = ts_jtape_after(c->t, i)) {
        int k = req->n_outputs;
        ts_oip_output_req *o = &req->outputs[k];
        char what[32];
        snprintf(what, sizeof what, "outputs[%d]", k);
        if (node(c, i)->kind != TS_JT_OBJ)
            return fail(c, "%s must be an object, got %s", what, ts_jtape_kind_name(c->t, i));
        r = get_string(c, i, "name", what, o->name, sizeof o->name);
        if (r < 0) return -1;
        if (r == 1 || !o->name[0]) return fail(c, "%s: \"name\" is missing or empty", what);
        for (int j = 0; j < k; j++)
            if (strcmp(req->outputs[j].name, o->name) == 0)
                return fail(c, "output \"%s\" is requested twice", o->name);
        o->binary = get_bool_param(c, i, "binary_data", what);
        if (o->binary == -1) return -1;
        req->n_outputs++;
    }
    return 0;
}

/* Request-level parameters.rows: [i, j, ...], non-negative integers (feedback by id). */
static int parse_rows(pctx *c, ts_oip_request *req)
{
    uint32_t params, v;
    int r = get_kind(c, 0, "parameters", TS_JT_OBJ, "an object", "request", &params);
    if (r <= 0) return r;
    r = get_kind(c, params, "rows", TS_JT_ARR, "an array of row indices", "request: parameters", &v);
    if (r <= 0) return r;
    int64_t n = node(c, v)->n;
    if (n > c->max_elements)
        return fail(c, "request: parameters.rows lists %lld rows (at most %lld)", (long long)n,
                    (long long)c->max_elements);
    if (!(req->rows = malloc((size_t)(n ? n : 1) * sizeof *req->rows)))
        return fail(c, "request: out of memory for parameters.rows");
    for (int64_t k = 0; k < n; k++) {
        const ts_jt_node *e = node(c, v + 1 + (uint32_t)k);   /* scalars: consecutive nodes */
        if (e->kind != TS_JT_INT || (e->flags & TS_JT_BIG) || e->v.i < 0)
            return fail(c, "request: parameters.rows[%lld] must be a non-negative integer (a row "
                        "index of the inference), got %s", (long long)k,
                        ts_jtape_kind_name(c->t, v + 1 + (uint32_t)k));
        req->rows[k] = e->v.i;
    }
    req->n_rows = n;
    return 0;
}

/* id, parameters, inputs and outputs of the root object. */
static int parse_fields(pctx *c, ts_oip_request *req, input_src *src)
{
    if (node(c, 0)->kind != TS_JT_OBJ)
        return fail(c, "request body must be a JSON object, got %s", ts_jtape_kind_name(c->t, 0));
    uint32_t v;
    int r = get_kind(c, 0, "id", TS_JT_STR, "a string", "request", &v);
    if (r < 0) return -1;
    if (r == 1 && !(req->id = ts_jtape_strdup(c->t, v)))
        return fail(c, "request: \"id\" contains U+0000 (or out of memory)");
    if (r == 1 && strlen(req->id) > TS_OIP_ID_MAX)
        return fail(c, "request: \"id\" is %zu bytes long; at most %d", strlen(req->id), TS_OIP_ID_MAX);
    r = get_bool_param(c, 0, "binary_data_output", "request");
    if (r == -1) return -1;
    req->binary_data_output = r == 1;
    if (parse_rows(c, req) < 0) return -1;
    if (parse_inputs(c, 0, req, src) < 0 || parse_outputs(c, 0, req) < 0) return -1;
    for (int k = 0; k < req->n_outputs; k++)   /* absent binary_data: the request's default */
        if (req->outputs[k].binary == -2) req->outputs[k].binary = req->binary_data_output;
    return 0;
}

/* ---- data ----------------------------------------------------------------------- */

static int alloc_data(pctx *c, ts_oip_tensor *x)
{
    size_t n = x->count ? (size_t)x->count : 1;
    if (x->type == TS_OIP_FP32) x->f32 = malloc(n * sizeof(float));
    else x->i64 = malloc(n * sizeof(int64_t));
    if (!x->f32 && !x->i64) return fail(c, "input \"%s\": out of memory", x->name);
    return 0;
}

static int range_error(pctx *c, const ts_oip_tensor *x, int64_t k, const char *what)
{
    return fail(c, "input \"%s\": element %lld %s", x->name, (long long)k, what);
}

/* Is v representable in the integer datatype? */
static int int_fits(const dtype_info *dt, int64_t v)
{
    if (dt->kind == DT_UNSIGNED) return v >= 0 && (dt->size == 8 || v < (INT64_C(1) << (8 * dt->size)));
    if (dt->size == 8) return 1;
    int64_t lim = INT64_C(1) << (8 * dt->size - 1);
    return v >= -lim && v < lim;
}

/* Convert the number nodes of data (in tape order: row-major) into x. nested: array nodes
 * are the (already checked) structure and are skipped; otherwise there must be none. */
static int convert_json(pctx *c, ts_oip_tensor *x, const dtype_info *dt, uint32_t data, int nested)
{
    uint32_t end = node(c, data)->next;
    int64_t k = 0;
    for (uint32_t i = data + 1; i < end && k < x->count; i++) {
        const ts_jt_node *n = node(c, i);
        if (n->kind == TS_JT_ARR && nested) continue;
        int is_num = n->kind == TS_JT_INT || n->kind == TS_JT_REAL;
        if (!is_num) {
            char what[64];
            snprintf(what, sizeof what, "is %s, not a number", ts_jtape_kind_name(c->t, i));
            return range_error(c, x, k, what);
        }
        if (x->type == TS_OIP_FP32) {
            float f = n->kind == TS_JT_REAL || (n->flags & TS_JT_BIG) ? n->v.f : (float)(double)n->v.i;
            if (!isfinite(f)) return range_error(c, x, k, "is out of float32 range");
            x->f32[k++] = f;
        } else {
            if (n->kind == TS_JT_REAL)
                return range_error(c, x, k, dt->kind == DT_UNSIGNED || dt->size < 8
                                   ? "is not an integer" : "is not an integer (INT64 needs integers)");
            if ((n->flags & TS_JT_BIG) || !int_fits(dt, n->v.i)) {
                char what[48];
                snprintf(what, sizeof what, "is out of range for %s", dt->name);
                return range_error(c, x, k, what);
            }
            x->i64[k++] = n->v.i;
        }
    }
    return 0;
}

/* Nested data: the array at level must hold shape[level] elements, arrays above the last
 * level. path is "data[1][0]" for messages. */
static int check_nested(pctx *c, const ts_oip_tensor *x, uint32_t arr, int level, char *path, size_t plen)
{
    const ts_jt_node *a = node(c, arr);
    if (a->kind != TS_JT_ARR) {
        char sb[200];
        return fail(c, "input \"%s\": %s is %s, shape %s needs an array there", x->name, path,
                    ts_jtape_kind_name(c->t, arr), shape_str(x, sb));
    }
    if ((int64_t)a->n != x->shape[level]) {
        char sb[200];
        return fail(c, "input \"%s\": %s has %u values, shape %s needs %lld", x->name, path,
                    a->n, shape_str(x, sb), (long long)x->shape[level]);
    }
    uint32_t i = arr + 1;
    if (level == x->ndim - 1) {
        /* The last level holds the values; the converter names any that is not a number,
         * but an array here would otherwise pass for structure. */
        for (uint32_t j = 0; j < a->n; j++, i = ts_jtape_after(c->t, i)) {
            if (node(c, i)->kind != TS_JT_ARR) continue;
            char sb[200];
            return fail(c, "input \"%s\": %s[%u] is an array, shape %s needs a number there",
                        x->name, path, j, shape_str(x, sb));
        }
        return 0;
    }
    for (uint32_t j = 0; j < a->n; j++, i = ts_jtape_after(c->t, i)) {
        size_t l = strlen(path);
        snprintf(path + l, plen - l, "[%u]", j);
        if (check_nested(c, x, i, level + 1, path, plen) < 0) return -1;
        path[l] = 0;
    }
    return 0;
}

/* "data": flat (count numbers) or nested to match the shape exactly. */
static int fill_json(pctx *c, ts_oip_tensor *x, const dtype_info *dt, uint32_t data)
{
    const ts_jt_node *d = node(c, data);
    if (d->kind != TS_JT_ARR)
        return fail(c, "input \"%s\": \"data\" must be an array, got %s", x->name,
                    ts_jtape_kind_name(c->t, data));
    int nested = x->ndim > 1 && d->n > 0 && node(c, data + 1)->kind == TS_JT_ARR;
    if (nested) {
        char path[160] = "data";
        if (check_nested(c, x, data, 0, path, sizeof path) < 0) return -1;
    } else if ((int64_t)d->n != x->count) {
        char sb[200];
        return fail(c, "input \"%s\": shape %s needs %lld values, got %u", x->name,
                    shape_str(x, sb), (long long)x->count, d->n);
    }
    if (alloc_data(c, x) < 0) return -1;
    return convert_json(c, x, dt, data, nested);
}

static uint64_t load_le(const uint8_t *p, int size)
{
    uint64_t v = 0;
    for (int i = size - 1; i >= 0; i--) v = v << 8 | p[i];
    return v;
}

static int is_little_endian(void)
{
    const uint16_t one = 1;
    uint8_t b;
    memcpy(&b, &one, 1);
    return b == 1;
}

static int convert_binary_float(pctx *c, ts_oip_tensor *x, const dtype_info *dt, const uint8_t *p)
{
    if (dt->size == 4 && is_little_endian()) {
        memcpy(x->f32, p, (size_t)x->count * 4);   /* the common case: a copy and a scan */
    } else {
        for (int64_t k = 0; k < x->count; k++) {
            uint64_t bits = load_le(p + k * dt->size, dt->size);
            if (dt->size == 4) {
                uint32_t b32 = (uint32_t)bits;
                memcpy(&x->f32[k], &b32, 4);
            } else {
                double d;
                memcpy(&d, &bits, 8);
                x->f32[k] = isfinite(d) ? ts_json_double_to_float(d) : (float)NAN;
            }
        }
    }
    for (int64_t k = 0; k < x->count; k++) {
        if (isfinite(x->f32[k])) continue;
        return range_error(c, x, k, dt->size == 8 ? "is not finite or out of float32 range"
                                                  : "is not finite (NaN or infinity)");
    }
    return 0;
}

static int convert_binary_int(pctx *c, ts_oip_tensor *x, const dtype_info *dt, const uint8_t *p)
{
    int bits = 8 * dt->size;
    for (int64_t k = 0; k < x->count; k++) {
        uint64_t u = load_le(p + k * dt->size, dt->size);
        int64_t v;
        if (dt->kind == DT_UNSIGNED) {
            if (u > (uint64_t)INT64_MAX) return range_error(c, x, k, "is out of range for int64");
            v = (int64_t)u;
        } else if (bits < 64 && (u >> (bits - 1)) & 1) {
            v = (int64_t)(u | ~((UINT64_C(1) << bits) - 1));   /* sign-extend */
        } else {
            v = (int64_t)u;
        }
        x->i64[k] = v;
    }
    return 0;
}

/* Binary data for x at bin[*used..avail): exactly count × element size bytes. */
static int fill_binary(pctx *c, ts_oip_tensor *x, const input_src *src, const uint8_t *bin,
                       size_t avail, size_t *used)
{
    if (x->count > INT64_MAX / src->dt->size)    /* only with an absurd max_elements */
        return fail(c, "input \"%s\": %lld elements is too many bytes", x->name, (long long)x->count);
    int64_t need = x->count * src->dt->size;
    if (src->binary_size != need) {
        char sb[200];
        return fail(c, "input \"%s\": binary_data_size is %lld but %s %s needs %lld bytes", x->name,
                    (long long)src->binary_size, src->dt->name, shape_str(x, sb), (long long)need);
    }
    if ((uint64_t)need > avail - *used)
        return fail(c, "input \"%s\": binary_data_size %lld but only %zu bytes of binary data remain",
                    x->name, (long long)need, avail - *used);
    if (alloc_data(c, x) < 0) return -1;
    const uint8_t *p = bin + *used;
    *used += (size_t)need;
    return x->type == TS_OIP_FP32 ? convert_binary_float(c, x, src->dt, p)
                                  : convert_binary_int(c, x, src->dt, p);
}

static int fill_all(pctx *c, ts_oip_request *req, const input_src *src, const uint8_t *bin,
                    size_t avail, int have_header)
{
    size_t used = 0;
    for (int k = 0; k < req->n_inputs; k++) {
        ts_oip_tensor *x = &req->inputs[k];
        int r;
        if (src[k].data != NONE) {
            r = fill_json(c, x, src[k].dt, src[k].data);
        } else if (!have_header) {
            r = fail(c, "input \"%s\": parameters.binary_data_size needs the "
                        "Inference-Header-Content-Length header", x->name);
        } else {
            r = fill_binary(c, x, &src[k], bin, avail, &used);
        }
        if (r < 0) return -1;
    }
    if (used != avail)
        return fail(c, "%zu bytes of binary data after the JSON are not claimed by any input "
                       "(binary_data_size)", avail - used);
    return 0;
}

int ts_oip_parse_request(const uint8_t *body, size_t len, int64_t json_len,
                         const ts_oip_limits *lim, ts_oip_request *req, char *err, size_t errlen)
{
    memset(req, 0, sizeof *req);
    pctx c = { .err = err, .errlen = errlen, .max_elements = TS_OIP_DEFAULT_MAX_ELEMENTS };
    int max_depth = TS_OIP_DEFAULT_MAX_DEPTH;
    if (lim && lim->max_elements > 0) c.max_elements = lim->max_elements;
    if (lim && lim->max_depth > 0) max_depth = lim->max_depth;
    if (json_len < -1 || json_len == 0)
        return fail(&c, "Inference-Header-Content-Length must be a positive JSON length, got %lld",
                    (long long)json_len);
    if (json_len > 0 && (uint64_t)json_len > len)
        return fail(&c, "Inference-Header-Content-Length %lld is larger than the body (%zu bytes)",
                    (long long)json_len, len);
    size_t jlen = json_len < 0 ? len : (size_t)json_len;
    if (!body || jlen == 0) return fail(&c, "request body is empty: expected a JSON object");

    ts_jtape t;
    if (ts_jtape_parse(&t, (const char *)body, jlen, max_depth, err, errlen) < 0) return -1;
    c.t = &t;
    input_src src[TS_OIP_MAX_TENSORS];
    int r = parse_fields(&c, req, src);
    if (r == 0) r = fill_all(&c, req, src, body + jlen, len - jlen, json_len >= 0);
    ts_jtape_free(&t);
    if (r < 0) ts_oip_request_free(req);
    return r;
}

void ts_oip_request_free(ts_oip_request *req)
{
    free(req->id);
    free(req->rows);
    for (int k = 0; k < TS_OIP_MAX_TENSORS; k++) {
        free(req->inputs[k].f32);
        free(req->inputs[k].i64);
    }
    memset(req, 0, sizeof *req);
}

const ts_oip_tensor *ts_oip_find_input(const ts_oip_request *req, const char *name)
{
    for (int k = 0; k < req->n_inputs; k++)
        if (strcmp(req->inputs[k].name, name) == 0) return &req->inputs[k];
    return NULL;
}

int ts_oip_output_binary(const ts_oip_request *req, const char *name)
{
    for (int k = 0; k < req->n_outputs; k++)
        if (strcmp(req->outputs[k].name, name) == 0) return req->outputs[k].binary;
    return req->binary_data_output;
}

/* ---- responses ------------------------------------------------------------------ */

/* {"model_name":..,"model_version":..,"id":.., -- the common head of both responses. */
static void put_head(ts_buf *b, const char *model_name, const char *model_version, const char *id)
{
    ts_buf_puts(b, "{\"model_name\":");
    ts_json_put_str(b, model_name ? model_name : "");
    if (model_version) {
        ts_buf_puts(b, ",\"model_version\":");
        ts_json_put_str(b, model_version);
    }
    if (id) {
        ts_buf_puts(b, ",\"id\":");
        ts_json_put_str(b, id);
    }
}

int ts_oip_build_response(const char *model_name, const char *model_version, const char *id,
                          const char *output_name, const float *data, int64_t rows, int64_t cols,
                          int binary, uint8_t **out, size_t *outlen, int64_t *json_len)
{
    *out = NULL;
    *outlen = 0;
    *json_len = -1;
    if (rows < 0 || cols < 0 || (cols && (uint64_t)rows > SIZE_MAX / 32 / (uint64_t)cols)) return -1;
    size_t n = (size_t)rows * (size_t)cols;
    ts_buf b = { 0 };
    ts_buf_reserve(&b, 256 + (binary ? n * 4 : n * 16));
    put_head(&b, model_name, model_version, id);
    ts_buf_puts(&b, ",\"outputs\":[{\"name\":");
    ts_json_put_str(&b, output_name);
    ts_buf_puts(&b, ",\"datatype\":\"FP32\",\"shape\":[");
    ts_buf_i64(&b, rows);
    ts_buf_puts(&b, ",");
    ts_buf_i64(&b, cols);
    if (binary) {
        ts_buf_puts(&b, "],\"parameters\":{\"binary_data_size\":");
        ts_buf_i64(&b, (int64_t)(n * 4));
        ts_buf_puts(&b, "}}]}");
        size_t jl = b.len;
        ts_buf_reserve(&b, n * 4);
        if (!b.oom) {
            if (is_little_endian()) {
                memcpy(b.p + b.len, data, n * 4);
            } else {
                for (size_t k = 0; k < n; k++) {
                    uint32_t u;
                    memcpy(&u, &data[k], 4);
                    for (int i = 0; i < 4; i++) b.p[b.len + k * 4 + (size_t)i] = (char)(u >> (8 * i));
                }
            }
            b.len += n * 4;
        }
        *json_len = (int64_t)jl;
    } else {
        ts_buf_puts(&b, "],\"data\":[");
        for (size_t k = 0; k < n; k++) {
            if (k) ts_buf_put(&b, ",", 1);
            ts_json_put_float(&b, data[k]);
        }
        ts_buf_puts(&b, "]}]}");
    }
    size_t total;
    char *p = ts_buf_take(&b, &total);
    if (!p) { *json_len = -1; return -1; }
    *out = (uint8_t *)p;
    *outlen = total;
    return 0;
}

char *ts_oip_build_feedback_response(const char *model_name, const char *model_version,
                                     const char *id, int64_t step, double loss)
{
    ts_buf b = { 0 };
    put_head(&b, model_name, model_version, id);
    ts_buf_puts(&b, ",\"step\":");
    ts_buf_i64(&b, step);
    if (!isnan(loss)) {
        ts_buf_puts(&b, ",\"loss\":");
        if (isinf(loss)) {
            ts_buf_puts(&b, "null");
        } else if ((double)ts_json_double_to_float(loss) == loss) {
            ts_json_put_float(&b, (float)loss);
        } else {
            char tmp[32];
            ts_buf_put(&b, tmp, (size_t)snprintf(tmp, sizeof tmp, "%.17g", loss));
        }
    }
    ts_buf_puts(&b, "}");
    return ts_buf_take(&b, NULL);
}

char *ts_oip_error_json(const char *msg)
{
    ts_buf b = { 0 };
    ts_buf_puts(&b, "{\"error\":");
    ts_json_put_str(&b, msg ? msg : "");
    ts_buf_puts(&b, "}");
    return ts_buf_take(&b, NULL);
}
