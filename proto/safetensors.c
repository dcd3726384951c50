/* safetensors.c — the tscale model file (SPEC §2): read strictly, write canonically.
 *
 * The writer lays a file out exactly as safetensors' serializer (and the fallback in
 * tools/torch_export.py) does: compact JSON header, "__metadata__" first with its keys
 * sorted, then the tensors in data order — dtype alignment descending (I64, I32, I8,
 * U8), then name in byte order — padded with spaces to a multiple of 8 bytes.
 *
 * The reader accepts any valid safetensors layout (any tensor order, any metadata
 * order), but only with exactly the tensors the architecture in tscale.layers calls
 * for. It never trusts a length or an offset from the file: every one is checked
 * against the buffer and against the size the architecture implies before use.
 */
#include "safetensors.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <jansson.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "../core/trits.h"
#include "buf.h"
#include "json_lite.h"

#define ST_MAX_HEADER 100000000u /* as safetensors: a larger header is refused */
#define ST_FORMAT "1"
/* step_counter and corr_accum beyond this are refused: real ones never come near (each
 * feedback step moves them by 1 and at most 32768), and feedback steps on a model from such
 * a file could never overflow int64 (signed overflow is undefined behaviour in C). */
#define ST_MAX_COUNTER ((int64_t)1 << 62)

/* ── the tensors of a model ── */

/* In safetensors' Dtype order (its alignment order): the data section is sorted on it. */
typedef enum { ST_U8, ST_I8, ST_I32, ST_I64 } st_dtype;
static const char *const dtype_names[] = {"U8", "I8", "I32", "I64"};
static const int dtype_sizes[] = {1, 1, 4, 8};

/* What a ternary layer's tensor holds. */
typedef enum { F_T_PACKED, F_T_SHAPE, F_T_PAD, F_E, F_CORR, F_STEP, F_BIAS } st_field;
static const char *const field_names[] = {"T_packed", "_T_shape", "_T_pad", "E",
                                          "corr_accum", "step_counter", "bias"};
static const st_dtype field_dtypes[] = {ST_U8, ST_I64, ST_I64, ST_I8, ST_I64, ST_I64, ST_I32};

/* One tensor of the file; its values live in layer `layer` of the model. */
typedef struct {
    char name[32];        /* "{i}.{field}", i < TS_MAX_LAYERS */
    int layer;
    st_field field;
    st_dtype dtype;
    int ndim;             /* 0 (_T_pad) or 1 (everything else) */
    int64_t count;        /* elements; the shape is [count] when ndim is 1 */
    uint64_t begin, end;  /* data_offsets */
    int seen;             /* reader: the header listed it */
} st_tensor;

#define ST_MAX_TENSORS (TS_MAX_LAYERS * 7)

static int is_ternary(ts_layer_kind k)
{
    return k == TS_LAYER_LINEAR || k == TS_LAYER_RMSNORM;
}

/* The tensors of an architecture (checked by ts_specs_check), in layer then field order.
 * Computed from the specs alone, so that a reader can hold a file's offsets against
 * them before allocating anything the file asks for. Returns how many. */
static int tensor_table(const ts_layer_spec *specs, int n_specs, st_tensor *t)
{
    int n = 0;
    for (int i = 0; i < n_specs; i++) {
        const ts_layer_spec *s = &specs[i];
        if (!is_ternary(s->kind))
            continue;
        /* _T_shape = [rows, cols]: linear [out, in], rmsnorm [1, dim]; G = rows·ceil(cols/gs) */
        int64_t rows = s->kind == TS_LAYER_LINEAR ? s->out_dim : 1, cols = s->in_dim;
        int64_t groups = rows * ((cols + s->group_size - 1) / s->group_size);
        int64_t counts[] = {(int64_t)ts_trits_packed_size((size_t)(rows * cols)), 2, 1,
                            groups, groups, 1, rows};
        for (st_field f = F_T_PACKED; f <= F_BIAS; f++) {
            if (f == F_BIAS && !s->has_bias)
                continue;
            memset(&t[n], 0, sizeof t[n]);
            snprintf(t[n].name, sizeof t[n].name, "%d.%s", i, field_names[f]);
            t[n].layer = i;
            t[n].field = f;
            t[n].dtype = field_dtypes[f];
            t[n].ndim = f == F_T_PAD ? 0 : 1;
            t[n].count = counts[f];
            n++;
        }
    }
    return n;
}

static uint64_t tensor_bytes(const st_tensor *t)
{
    return (uint64_t)t->count * (uint64_t)dtype_sizes[t->dtype];
}

/* ── little-endian values ── */

static uint64_t get_le(const uint8_t *p, int size)
{
    uint64_t v = 0;
    for (int k = size - 1; k >= 0; k--)
        v = v << 8 | p[k];
    return v;
}

static void put_le(uint8_t *p, uint64_t v, int size)
{
    for (int k = 0; k < size; k++, v >>= 8)
        p[k] = (uint8_t)v;
}

/* The n-th element of tensor t as an integer (I64 scalars and arrays alike). */
static int64_t element(const ts_model *m, const st_tensor *t, int64_t k)
{
    const ts_layer *l = &m->layers[t->layer];
    switch (t->field) {
    case F_T_PACKED: return 0;   /* encode copies T_packed whole (ts_layer_packed) */
    case F_T_SHAPE: return k == 0 ? l->rows : l->cols;
    case F_T_PAD: return l->T_pad;
    case F_E: return l->E[k];
    case F_CORR: return l->corr_accum[k];
    case F_STEP: return l->step;
    case F_BIAS: return l->bias[k];
    }
    return 0;
}

static void encode(const ts_model *m, const st_tensor *t, uint8_t *out)
{
    int size = dtype_sizes[t->dtype];
    if (t->field == F_T_PACKED) {
        ts_layer_packed(&m->layers[t->layer], out);
        return;
    }
    for (int64_t k = 0; k < t->count; k++)
        put_le(out + k * size, (uint64_t)element(m, t, k), size);
}

/* ── errors ── */

static int fail(char *err, size_t errlen, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
    return -1;
}

/* ── writer ── */

/* tscale.layers in its canonical compact form (keys in SPEC order). */
static void buf_layers(ts_buf *b, const ts_model *m)
{
    ts_buf_put(b, "[", 1);
    for (int i = 0; i < m->n_layers; i++) {
        const ts_layer_spec *s = &m->layers[i].spec;
        if (i)
            ts_buf_put(b, ",", 1);
        ts_buf_printf(b, "{\"type\":\"%s\"", ts_layer_kind_name(s->kind));
        if (s->kind == TS_LAYER_LINEAR)
            ts_buf_printf(b, ",\"in_dim\":%" PRId64 ",\"out_dim\":%" PRId64 ",\"group_size\":%" PRId64
                          ",\"bias\":%s", s->in_dim, s->out_dim, s->group_size,
                          s->has_bias ? "true" : "false");
        else if (s->kind == TS_LAYER_RMSNORM)
            ts_buf_printf(b, ",\"dim\":%" PRId64 ",\"group_size\":%" PRId64, s->in_dim, s->group_size);
        ts_buf_put(b, "}", 1);
    }
    ts_buf_put(b, "]", 1);
}

/* Data order: dtype alignment descending, then name (byte order). */
static int data_order(const void *a, const void *b)
{
    const st_tensor *x = a, *y = b;
    if (x->dtype != y->dtype)
        return x->dtype > y->dtype ? -1 : 1;
    return strcmp(x->name, y->name);
}

/* The JSON header (unpadded) for tensors t[n] already in data order; sets their offsets. */
static void buf_header(ts_buf *b, const ts_model *m, const char *name, st_tensor *t, int n)
{
    ts_buf layers = {0};
    buf_layers(&layers, m);
    char *layers_text = ts_buf_take(&layers, NULL);
    if (!layers_text)
        b->oom = 1;
    /* JSON strings as serde_json (and Python's json with ensure_ascii=False) write them:
     * short escapes where JSON has them, other control characters as \u00xx, the rest raw
     * (the name is valid UTF-8: check_name). */
    ts_buf_puts(b, "{\"__metadata__\":{\"tscale.format\":\"" ST_FORMAT "\",\"tscale.layers\":");
    ts_json_put_str(b, layers_text ? layers_text : "");
    free(layers_text);
    if (name) {
        ts_buf_puts(b, ",\"tscale.name\":");
        ts_json_put_str(b, name);
    }
    ts_buf_put(b, "}", 1);
    uint64_t offset = 0;
    for (int k = 0; k < n; k++) {
        t[k].begin = offset;
        t[k].end = offset += tensor_bytes(&t[k]);
        ts_buf_printf(b, ",\"%s\":{\"dtype\":\"%s\",\"shape\":[", t[k].name, dtype_names[t[k].dtype]);
        if (t[k].ndim)
            ts_buf_printf(b, "%" PRId64, t[k].count);
        ts_buf_printf(b, "],\"data_offsets\":[%" PRIu64 ",%" PRIu64 "]}", t[k].begin, t[k].end);
    }
    ts_buf_put(b, "}", 1);
    while (b->len % 8)
        ts_buf_put(b, " ", 1);
}

/* A name must be a JSON string (valid UTF-8) short enough for readers to keep. */
static int check_name(const char *name, char *err, size_t errlen)
{
    if (strlen(name) >= TS_MODEL_NAME_MAX)
        return fail(err, errlen, "model name is %zu bytes, the limit is %d", strlen(name),
                    TS_MODEL_NAME_MAX - 1);
    json_t *s = json_string(name);
    if (!s)
        return fail(err, errlen, "model name is not valid UTF-8");
    json_decref(s);
    return 0;
}

int ts_safetensors_write(const ts_model *m, const char *name, uint8_t **out, size_t *outlen,
                         char *err, size_t errlen)
{
    if (name && check_name(name, err, errlen) != 0)
        return -1;
    st_tensor *t = malloc(ST_MAX_TENSORS * sizeof *t);
    if (!t)
        return fail(err, errlen, "out of memory writing a model file");
    ts_layer_spec specs[TS_MAX_LAYERS];
    for (int i = 0; i < m->n_layers; i++)
        specs[i] = m->layers[i].spec;
    int n = tensor_table(specs, m->n_layers, t);
    qsort(t, (size_t)n, sizeof *t, data_order);
    ts_buf b = {0};
    buf_header(&b, m, name, t, n);
    uint64_t data = n ? t[n - 1].end : 0;
    uint8_t *file = b.oom ? NULL : malloc(8 + b.len + data);
    if (!file) {
        ts_buf_free(&b);
        free(t);
        return fail(err, errlen, "out of memory writing a model file (%" PRIu64 " bytes of tensors)",
                    data);
    }
    put_le(file, b.len, 8);
    memcpy(file + 8, b.p, b.len);
    for (int k = 0; k < n; k++)
        encode(m, &t[k], file + 8 + b.len + t[k].begin);
    *out = file;
    *outlen = 8 + b.len + data;
    ts_buf_free(&b);
    free(t);
    return 0;
}

/* ── reader: metadata and architecture ── */

static int json_get_dim(json_t *o, const char *key, int i, int64_t *out, char *err, size_t errlen)
{
    json_t *v = json_object_get(o, key);
    if (!json_is_integer(v))
        return fail(err, errlen, "tscale.layers[%d]: \"%s\" must be an integer%s", i, key,
                    v ? "" : " (missing)");
    *out = json_integer_value(v);
    return 0;
}

/* One tscale.layers entry into s (an activation's dims come from ts_specs_chain). */
static int parse_layer(json_t *o, int i, ts_layer_spec *s, char *err, size_t errlen)
{
    static const char *const keys[][6] = {
        [TS_LAYER_LINEAR] = {"type", "in_dim", "out_dim", "group_size", "bias", NULL},
        [TS_LAYER_RMSNORM] = {"type", "dim", "group_size", NULL},
        [TS_LAYER_RELU] = {"type", NULL}, [TS_LAYER_SILU] = {"type", NULL},
        [TS_LAYER_GELU] = {"type", NULL},
    };
    const char *type = json_string_value(json_object_get(o, "type"));
    if (!json_is_object(o) || !type)
        return fail(err, errlen, "tscale.layers[%d]: expected an object with a string \"type\"", i);
    memset(s, 0, sizeof *s);
    if (ts_layer_kind_parse(type, &s->kind) != 0)
        return fail(err, errlen, "tscale.layers[%d]: unknown layer type \"%s\" (expected "
                    "ternary_linear, ternary_rmsnorm, relu, silu or gelu)", i, type);
    const char *key;
    json_t *v;
    json_object_foreach(o, key, v) {
        int k = 0;
        while (keys[s->kind][k] && strcmp(keys[s->kind][k], key) != 0)
            k++;
        if (!keys[s->kind][k])
            return fail(err, errlen, "tscale.layers[%d] (%s): unknown key \"%s\"", i, type, key);
    }
    if (s->kind == TS_LAYER_LINEAR) {
        json_t *bias = json_object_get(o, "bias");
        if (!json_is_boolean(bias))
            return fail(err, errlen, "tscale.layers[%d]: \"bias\" must be true or false", i);
        s->has_bias = json_is_true(bias);
        if (json_get_dim(o, "in_dim", i, &s->in_dim, err, errlen) ||
            json_get_dim(o, "out_dim", i, &s->out_dim, err, errlen) ||
            json_get_dim(o, "group_size", i, &s->group_size, err, errlen))
            return -1;
    } else if (s->kind == TS_LAYER_RMSNORM) {
        if (json_get_dim(o, "dim", i, &s->in_dim, err, errlen) ||
            json_get_dim(o, "group_size", i, &s->group_size, err, errlen))
            return -1;
        s->out_dim = s->in_dim;
    }
    return 0;
}

static int parse_layers(const char *text, ts_layer_spec *specs, int *n, char *err, size_t errlen)
{
    json_error_t jerr;
    json_t *a = json_loads(text, JSON_REJECT_DUPLICATES, &jerr);
    if (!a)
        return fail(err, errlen, "metadata: tscale.layers is not valid JSON: %s", jerr.text);
    int rc = 0;
    size_t count = json_array_size(a);
    if (!json_is_array(a) || count < 1 || count > TS_MAX_LAYERS)
        rc = fail(err, errlen, "metadata: tscale.layers must be a JSON array of 1 to %d layers",
                  TS_MAX_LAYERS);
    for (size_t i = 0; rc == 0 && i < count; i++)
        rc = parse_layer(json_array_get(a, i), (int)i, &specs[i], err, errlen);
    json_decref(a);
    *n = (int)count;
    if (rc == 0 && ts_specs_chain(specs, *n, err, errlen) != 0) {
        char why[256];
        snprintf(why, sizeof why, "%s", err);
        rc = fail(err, errlen, "tscale.layers: %s", why);
    }
    return rc;
}

/* __metadata__: tscale.format "1", tscale.layers, optionally tscale.name; foreign keys ignored. */
static int parse_metadata(json_t *meta, ts_layer_spec *specs, int *n, char *name,
                          char *err, size_t errlen)
{
    if (!json_is_object(meta))
        return fail(err, errlen, "header: \"__metadata__\" is %s (a tscale model file needs "
                    "tscale.format and tscale.layers)", meta ? "not an object" : "missing");
    const char *key;
    json_t *v;
    json_object_foreach(meta, key, v) {
        /* Other tools annotate safetensors files with keys of their own (transformers adds
         * "format":"pt"); those are not ours to judge. An unknown tscale.* key is a feature
         * of a newer format that this build would silently drop, so it is refused. */
        if (strncmp(key, "tscale.", 7) == 0 && strcmp(key, "tscale.format") &&
            strcmp(key, "tscale.layers") && strcmp(key, "tscale.name"))
            return fail(err, errlen, "metadata: unknown key \"%s\" (this build knows tscale.format, "
                        "tscale.layers, tscale.name)", key);
        if (!json_is_string(v))
            return fail(err, errlen, "metadata: \"%s\" must be a string", key);
    }
    const char *format = json_string_value(json_object_get(meta, "tscale.format"));
    if (!format)
        return fail(err, errlen, "metadata: tscale.format is missing (not a tscale model file?)");
    if (strcmp(format, ST_FORMAT) != 0)
        return fail(err, errlen, "metadata: tscale.format is \"%s\", this build reads \"" ST_FORMAT
                    "\"", format);
    const char *layers = json_string_value(json_object_get(meta, "tscale.layers"));
    if (!layers)
        return fail(err, errlen, "metadata: tscale.layers is missing");
    const char *nm = json_string_value(json_object_get(meta, "tscale.name"));
    if (nm && check_name(nm, err, errlen) != 0)
        return fail(err, errlen, "metadata: tscale.name is too long (%zu bytes, the limit is %d)",
                    strlen(nm), TS_MODEL_NAME_MAX - 1);
    if (name)
        snprintf(name, TS_MODEL_NAME_MAX, "%s", nm ? nm : "");
    return parse_layers(layers, specs, n, err, errlen);
}

/* ── reader: the tensor entries of the header ── */

static int json_uint(json_t *v, uint64_t *out)
{
    if (!json_is_integer(v) || json_integer_value(v) < 0)
        return -1;
    *out = (uint64_t)json_integer_value(v);
    return 0;
}

static void shape_text(json_t *shape, char *out, size_t len)
{
    char *s = json_dumps(shape, JSON_COMPACT | JSON_ENCODE_ANY);
    snprintf(out, len, "%s", s ? s : "?");
    free(s);
}

/* One header entry against the tensor the architecture expects under that name. */
static int check_entry(const char *key, json_t *info, st_tensor *t, uint64_t data_len,
                       char *err, size_t errlen)
{
    json_t *dtype = json_object_get(info, "dtype"), *shape = json_object_get(info, "shape");
    json_t *off = json_object_get(info, "data_offsets");
    if (!json_is_object(info) || json_object_size(info) != 3 || !dtype || !shape || !off)
        return fail(err, errlen, "tensor \"%s\": expected an object with exactly dtype, shape "
                    "and data_offsets", key);
    if (!json_is_string(dtype) || strcmp(json_string_value(dtype), dtype_names[t->dtype]) != 0)
        return fail(err, errlen, "tensor \"%s\": dtype %s, expected %s", key,
                    json_is_string(dtype) ? json_string_value(dtype) : "(not a string)",
                    dtype_names[t->dtype]);
    uint64_t dim = 0;
    if (!json_is_array(shape) || json_array_size(shape) != (size_t)t->ndim ||
        (t->ndim && (json_uint(json_array_get(shape, 0), &dim) || dim != (uint64_t)t->count))) {
        char got[64], want[32] = "[]";
        shape_text(shape, got, sizeof got);
        if (t->ndim)
            snprintf(want, sizeof want, "[%" PRId64 "]", t->count);
        return fail(err, errlen, "tensor \"%s\": shape %s, expected %s", key, got, want);
    }
    if (!json_is_array(off) || json_array_size(off) != 2 ||
        json_uint(json_array_get(off, 0), &t->begin) || json_uint(json_array_get(off, 1), &t->end) ||
        t->end < t->begin)
        return fail(err, errlen, "tensor \"%s\": data_offsets must be [begin, end] with "
                    "0 <= begin <= end", key);
    if (t->end - t->begin != tensor_bytes(t))
        return fail(err, errlen, "tensor \"%s\": data_offsets [%" PRIu64 ", %" PRIu64 "] span %"
                    PRIu64 " bytes, its shape needs %" PRIu64, key, t->begin, t->end,
                    t->end - t->begin, tensor_bytes(t));
    if (t->end > data_len)
        return fail(err, errlen, "tensor \"%s\": data_offsets [%" PRIu64 ", %" PRIu64 "] out of "
                    "range: the data section is %" PRIu64 " bytes", key, t->begin, t->end, data_len);
    t->seen = 1;
    return 0;
}

static int check_entries(json_t *header, st_tensor *t, int n, uint64_t data_len,
                         char *err, size_t errlen)
{
    const char *key;
    json_t *info;
    json_object_foreach(header, key, info) {
        if (strcmp(key, "__metadata__") == 0)
            continue;
        int k = 0;
        while (k < n && strcmp(t[k].name, key) != 0)
            k++;
        if (k == n)
            return fail(err, errlen, "tensor \"%s\": not part of the model described by "
                        "tscale.layers", key);
        if (check_entry(key, info, &t[k], data_len, err, errlen) != 0)
            return -1;
    }
    for (int k = 0; k < n; k++)
        if (!t[k].seen)
            return fail(err, errlen, "tensor \"%s\": missing (tscale.layers calls for it)", t[k].name);
    return 0;
}

static int offset_order(const void *a, const void *b)
{
    const st_tensor *x = a, *y = b;
    return x->begin < y->begin ? -1 : x->begin > y->begin;
}

/* Sorted by offset, the tensors must tile the data section: no overlap, hole or tail. */
static int check_tiling(st_tensor *t, int n, uint64_t data_len, char *err, size_t errlen)
{
    qsort(t, (size_t)n, sizeof *t, offset_order);
    uint64_t at = 0;
    for (int k = 0; k < n; k++) {
        if (t[k].begin < at)
            return fail(err, errlen, "tensor \"%s\": data_offsets [%" PRIu64 ", %" PRIu64 "] "
                        "overlap tensor \"%s\"", t[k].name, t[k].begin, t[k].end, t[k - 1].name);
        if (t[k].begin > at)
            return fail(err, errlen, "tensor \"%s\": data_offsets begin at %" PRIu64 ", leaving a "
                        "hole of %" PRIu64 " unused bytes before it", t[k].name, t[k].begin,
                        t[k].begin - at);
        at = t[k].end;
    }
    if (at != data_len)
        return fail(err, errlen, "%" PRIu64 " bytes of trailing garbage after the last tensor",
                    data_len - at);
    return 0;
}

/* ── reader: tensor values ── */

/* The trits of the last byte beyond rows·cols are padding, digit 0 as the reference packs. */
static int check_packed(const ts_layer *l, const st_tensor *t, char *err, size_t errlen)
{
    for (int64_t k = 0; k < t->count; k++)
        if (l->T_packed[k] >= 243)
            return fail(err, errlen, "tensor \"%s\": byte %" PRId64 " is %u, must be < 243 "
                        "(corrupt ternary data)", t->name, k, l->T_packed[k]);
    int pad = ts_trits_pad((size_t)(l->rows * l->cols));
    static const int pow3[] = {1, 3, 9, 27, 81, 243};
    if (pad && l->T_packed[t->count - 1] >= pow3[5 - pad])
        return fail(err, errlen, "tensor \"%s\": the %d pad digits of the last byte must be 0 "
                    "(byte is %u)", t->name, pad, l->T_packed[t->count - 1]);
    return 0;
}

/* Copy tensor t from src into the model, checking the values that are fixed by the layer. */
static int decode(ts_model *m, const st_tensor *t, const uint8_t *src, char *err, size_t errlen)
{
    ts_layer *l = &m->layers[t->layer];
    int size = dtype_sizes[t->dtype];
    int64_t v0 = (int64_t)get_le(src, size);
    switch (t->field) {
    case F_T_PACKED:
        memcpy(l->T_packed, src, (size_t)t->count);
        return check_packed(l, t, err, errlen);
    case F_T_SHAPE: {
        int64_t v1 = (int64_t)get_le(src + 8, 8);
        if (v0 != l->rows || v1 != l->cols)
            return fail(err, errlen, "tensor \"%s\": [%" PRId64 ", %" PRId64 "], expected [%" PRId64
                        ", %" PRId64 "] from tscale.layers", t->name, v0, v1, l->rows, l->cols);
        return 0;
    }
    case F_T_PAD:
        l->T_pad = v0;
        if (v0 != ts_trits_pad((size_t)(l->rows * l->cols)))
            return fail(err, errlen, "tensor \"%s\": %" PRId64 ", expected %d (pad digits of %" PRId64
                        " trits)", t->name, v0, ts_trits_pad((size_t)(l->rows * l->cols)),
                        l->rows * l->cols);
        return 0;
    case F_STEP:
        l->step = v0;
        if (v0 < 0 || v0 > ST_MAX_COUNTER)
            return fail(err, errlen, "tensor \"%s\": %" PRId64 " is out of range [0, 2^62] for a "
                        "step count", t->name, v0);
        return 0;
    case F_E: memcpy(l->E, src, (size_t)t->count); return 0;
    case F_CORR:
        for (int64_t k = 0; k < t->count; k++) {
            l->corr_accum[k] = (int64_t)get_le(src + 8 * k, 8);
            if (l->corr_accum[k] < -ST_MAX_COUNTER || l->corr_accum[k] > ST_MAX_COUNTER)
                return fail(err, errlen, "tensor \"%s\": element %" PRId64 " is %" PRId64 ", out of "
                            "range [-2^62, 2^62]", t->name, k, l->corr_accum[k]);
        }
        return 0;
    case F_BIAS:
        for (int64_t k = 0; k < t->count; k++)
            l->bias[k] = (int32_t)(uint32_t)get_le(src + 4 * k, 4);
        return 0;
    }
    return 0;
}

/* Each feedback step moves a group's corr_accum by its score, |score| <= group_size, so
 * |corr_accum| <= step_counter * group_size in every state feedback can produce. Past it,
 * the scale 2^(E + 4 * corr / (step * gs)) overflows to inf and the layer infers NaN: such
 * a file is refused, naming the tensor. With step_counter 0 the scale ignores corr_accum
 * (SPEC §1: 2^E), and SPEC's own test files hold such states: accepted. */
static int check_counters(const ts_model *m, char *err, size_t errlen)
{
    for (int i = 0; i < m->n_layers; i++) {
        const ts_layer *l = &m->layers[i];
        if (!is_ternary(l->spec.kind) || l->step == 0)
            continue;
        /* step <= 2^62 and gs <= 2^31: the bound is exact as unsigned __int128 */
        unsigned __int128 bound = (unsigned __int128)(uint64_t)l->step * (uint64_t)l->spec.group_size;
        for (int64_t g = 0; g < l->n_groups; g++) {
            int64_t c = l->corr_accum[g];
            unsigned __int128 mag = (unsigned __int128)(c < 0 ? -(uint64_t)c : (uint64_t)c);
            if (mag > bound)
                return fail(err, errlen, "tensor \"%d.corr_accum\": element %" PRId64 " is %" PRId64
                            ", beyond step_counter x group_size = %" PRId64 " x %" PRId64 " (no "
                            "sequence of feedback steps reaches it; it would make the layer's "
                            "scales infinite)", i, g, c, l->step, l->spec.group_size);
        }
    }
    return 0;
}

/* ── reader ── */

static json_t *parse_header(const uint8_t *buf, size_t len, uint64_t *hlen, char *err, size_t errlen)
{
    if (len < 8) {
        fail(err, errlen, "not a safetensors model file: it is %zu bytes, too short for the "
             "8-byte header length a safetensors file starts with", len);
        return NULL;
    }
    uint64_t n = get_le(buf, 8);
    if (n < 2 || n > ST_MAX_HEADER || n > len - 8) {
        fail(err, errlen, "not a safetensors model file: a safetensors file starts with its "
             "JSON header length (8 bytes, little-endian), and here those bytes say %" PRIu64
             ", which is not at least 2, at most %u, and within the %zu bytes after them",
             n, ST_MAX_HEADER, len - 8);
        return NULL;
    }
    json_error_t jerr;
    json_t *h = json_loadb((const char *)buf + 8, (size_t)n, JSON_REJECT_DUPLICATES, &jerr);
    if (!h) {
        fail(err, errlen, "header is not valid JSON: %s (at byte %d of the header)", jerr.text,
             jerr.position);
        return NULL;
    }
    if (!json_is_object(h)) {
        json_decref(h);
        fail(err, errlen, "header is not a JSON object");
        return NULL;
    }
    *hlen = n;
    return h;
}

ts_model *ts_safetensors_read(const uint8_t *buf, size_t len, char *name, char *err, size_t errlen)
{
    uint64_t hlen;
    json_t *h = parse_header(buf, len, &hlen, err, errlen);
    if (!h)
        return NULL;
    ts_layer_spec specs[TS_MAX_LAYERS];
    int n_specs = 0;
    ts_model *m = NULL;
    st_tensor *t = NULL;
    if (parse_metadata(json_object_get(h, "__metadata__"), specs, &n_specs, name, err, errlen) != 0)
        goto fail;
    if (!(t = malloc(ST_MAX_TENSORS * sizeof *t))) {
        fail(err, errlen, "out of memory reading a model file");
        goto fail;
    }
    const uint8_t *data = buf + 8 + hlen;
    uint64_t data_len = len - 8 - hlen;
    int n = tensor_table(specs, n_specs, t);
    /* The file holds every byte the architecture needs before we allocate for it. */
    if (check_entries(h, t, n, data_len, err, errlen) != 0 ||
        check_tiling(t, n, data_len, err, errlen) != 0)
        goto fail;
    if (!(m = ts_model_alloc(specs, n_specs, err, errlen)))
        goto fail;
    for (int k = 0; k < n; k++)
        if (decode(m, &t[k], data + t[k].begin, err, errlen) != 0)
            goto fail;
    if (check_counters(m, err, errlen) != 0 || ts_model_prepare(m, err, errlen) != 0)
        goto fail;
    free(t);
    json_decref(h);
    return m;
fail:
    free(t);
    ts_model_free(m);
    json_decref(h);
    return NULL;
}

/* ── files ── */

ts_model *ts_safetensors_load(const char *path, char *name, char *err, size_t errlen)
{
    FILE *f = fopen(path, "rb");
    if (!f) {
        fail(err, errlen, "%s: %s", path, strerror(errno));
        return NULL;
    }
    struct stat st;
    uint8_t *buf = NULL;
    size_t len = 0;
    if (fstat(fileno(f), &st) != 0 || !S_ISREG(st.st_mode)) {
        fail(err, errlen, "%s: not a regular file", path);
    } else if (!(buf = malloc(st.st_size ? (size_t)st.st_size : 1))) {
        fail(err, errlen, "%s: out of memory reading %lld bytes", path, (long long)st.st_size);
    } else if ((len = fread(buf, 1, (size_t)st.st_size, f)) != (size_t)st.st_size || ferror(f)) {
        fail(err, errlen, "%s: read error (%zu of %lld bytes)", path, len, (long long)st.st_size);
        free(buf);
        buf = NULL;
    }
    fclose(f);
    if (!buf)
        return NULL;
    char why[512];
    ts_model *m = ts_safetensors_read(buf, len, name, why, sizeof why);
    if (!m)
        fail(err, errlen, "%s: %s", path, why);
    free(buf);
    return m;
}

static int write_all(int fd, const uint8_t *p, size_t n)
{
    while (n > 0) {
        ssize_t w = write(fd, p, n);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0)
            return -1;
        p += w;
        n -= (size_t)w;
    }
    return 0;
}

/* Make the rename durable: fsync the directory holding path. Best effort. */
static void sync_dir(const char *path)
{
    char dir[4096];
    snprintf(dir, sizeof dir, "%s", path);
    char *slash = strrchr(dir, '/');
    if (slash == dir)
        slash[1] = '\0';
    else if (slash)
        *slash = '\0';
    else
        snprintf(dir, sizeof dir, ".");
    int fd = open(dir, O_RDONLY | O_DIRECTORY);
    if (fd >= 0) {
        fsync(fd);
        close(fd);
    }
}

int ts_safetensors_save(const ts_model *m, const char *name, const char *path, char *err, size_t errlen)
{
    uint8_t *bytes;
    size_t len;
    if (ts_safetensors_write(m, name, &bytes, &len, err, errlen) != 0)
        return -1;
    char tmp[4096];
    if (snprintf(tmp, sizeof tmp, "%s.tmp.XXXXXX", path) >= (int)sizeof tmp) {
        free(bytes);
        return fail(err, errlen, "%s: path too long", path);
    }
    int fd = mkstemp(tmp); /* mode 0600 */
    if (fd < 0) {
        free(bytes);
        return fail(err, errlen, "%s: cannot create a temporary file beside it: %s", path,
                    strerror(errno));
    }
    int rc = write_all(fd, bytes, len) == 0 && fsync(fd) == 0 ? 0 : -1;
    int saved = errno;
    free(bytes);
    if (close(fd) != 0 && rc == 0) {
        rc = -1;
        saved = errno;
    }
    if (rc == 0 && rename(tmp, path) != 0) {
        rc = -1;
        saved = errno;
    }
    if (rc != 0) {
        unlink(tmp);
        return fail(err, errlen, "%s: cannot write: %s", path, strerror(saved));
    }
    sync_dir(path);
    return 0;
}
