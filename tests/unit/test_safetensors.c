/* test_safetensors.c — the model file (SPEC §2): round trips, a file written by PyTorch
 * (tools/torch_export.py), every class of malformed file, and random corruption.
 *
 * tests/data/mini.safetensors and mini.io were made from the reference modules with
 *   /usr/bin/python3 tools/torch_export.py example tests/data/mini.safetensors tests/data/mini.io \
 *     --layers "rmsnorm:12/gs5,linear:12x7/gs4+bias,gelu,linear:7x9/gs3+bias,relu,linear:9x5/gs2,silu" \
 *     --steps 8 --batch 3 --rows 6 --seed 11 --name mini
 * (random trits, E and bias, then 8 feedback steps in torch); mini.io holds 6 input rows and
 * the reference's outputs for them.
 */
#include <check.h>
#include <dirent.h>
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "core/feedback.h"
#include "core/forward.h"
#include "core/model.h"
#include "proto/safetensors.h"
#include "testutil.h"

#define MINI "tests/data/mini.safetensors"
#define MINI_IO "tests/data/mini.io"

/* ── a file taken apart and put back together, to make malformed variants ── */

typedef struct {
    json_t *h;          /* the header */
    uint8_t *data;      /* the data section */
    size_t data_len;
} st_file;

static uint64_t le64(const uint8_t *p)
{
    uint64_t v = 0;
    for (int k = 7; k >= 0; k--)
        v = v << 8 | p[k];
    return v;
}

static st_file split(const uint8_t *buf, size_t len)
{
    st_file f;
    uint64_t n = le64(buf);
    json_error_t jerr;
    f.h = json_loadb((const char *)buf + 8, n, 0, &jerr);
    ck_assert_msg(f.h != NULL, "test file header: %s", jerr.text);
    f.data_len = len - 8 - n;
    f.data = malloc(f.data_len + 64);
    memcpy(f.data, buf + 8 + n, f.data_len);
    return f;
}

/* The file's bytes: compact header padded to 8, then data (extra bytes appended). */
static uint8_t *join(const st_file *f, size_t extra, size_t *len)
{
    char *text = json_dumps(f->h, JSON_COMPACT);
    size_t n = strlen(text), padded = (n + 7) / 8 * 8;
    *len = 8 + padded + f->data_len + extra;
    uint8_t *buf = calloc(1, *len);
    for (int k = 0; k < 8; k++)
        buf[k] = (uint8_t)(padded >> (8 * k));
    memcpy(buf + 8, text, n);
    memset(buf + 8 + n, ' ', padded - n);
    memcpy(buf + 8 + padded, f->data, f->data_len);
    free(text);
    return buf;
}

static void drop(st_file *f)
{
    json_decref(f->h);
    free(f->data);
}

static st_file mini(void)
{
    size_t len;
    uint8_t *buf = slurp(MINI, &len);
    st_file f = split(buf, len);
    free(buf);
    return f;
}

static json_t *entry(st_file *f, const char *name)
{
    json_t *e = json_object_get(f->h, name);
    ck_assert_msg(e != NULL, "no tensor %s in the test file", name);
    return e;
}

static uint64_t offset(st_file *f, const char *name, int which)
{
    return (uint64_t)json_integer_value(json_array_get(json_object_get(entry(f, name), "data_offsets"), which));
}

static void set_offsets(st_file *f, const char *name, uint64_t b, uint64_t e)
{
    json_object_set_new(entry(f, name), "data_offsets", json_pack("[I,I]", (json_int_t)b, (json_int_t)e));
}

/* Replace the first `from` in tscale.layers with `to`. */
static void edit_layers(st_file *f, const char *from, const char *to)
{
    json_t *meta = json_object_get(f->h, "__metadata__");
    const char *layers = json_string_value(json_object_get(meta, "tscale.layers"));
    const char *at = strstr(layers, from);
    ck_assert_msg(at != NULL, "'%s' not in tscale.layers", from);
    char out[4096];
    snprintf(out, sizeof out, "%.*s%s%s", (int)(at - layers), layers, to, at + strlen(from));
    json_object_set_new(meta, "tscale.layers", json_string(out));
}

static void expect_refused_buf(const uint8_t *buf, size_t len, const char *want)
{
    char err[512] = "", name[TS_MODEL_NAME_MAX];
    ts_model *m = ts_safetensors_read(buf, len, name, err, sizeof err);
    ck_assert_msg(m == NULL, "accepted a file that should fail with '%s'", want);
    ck_assert_msg(strstr(err, want) != NULL, "error '%s' does not say '%s'", err, want);
}

/* Join f (with extra zero bytes appended), expect a refusal naming `want`, free f. */
static void expect_refused(st_file *f, size_t extra, const char *want)
{
    size_t len;
    uint8_t *buf = join(f, extra, &len);
    expect_refused_buf(buf, len, want);
    free(buf);
    drop(f);
}

/* ── round trips ── */

START_TEST(test_mini_roundtrip_byte_identical)
{
    size_t len, outlen;
    uint8_t *buf = slurp(MINI, &len), *out;
    char err[512], name[TS_MODEL_NAME_MAX];
    ts_model *m = ts_safetensors_read(buf, len, name, err, sizeof err);
    ck_assert_msg(m != NULL, "%s", err);
    ck_assert_str_eq(name, "mini");
    ck_assert_int_eq(m->n_layers, 7);
    ck_assert_int_eq(ts_model_step(m), 8);
    ck_assert_int_eq(ts_safetensors_write(m, name, &out, &outlen, err, sizeof err), 0);
    ck_assert_uint_eq(outlen, len);
    ck_assert_mem_eq(out, buf, len);
    free(out);
    ts_model_free(m);
    free(buf);
}
END_TEST

START_TEST(test_mini_forward_matches_torch)
{
    size_t len;
    uint8_t *io = slurp(MINI_IO, &len);
    ck_assert_mem_eq(io, "TSIO", 4);
    uint32_t dims[3];
    memcpy(dims, io + 4, sizeof dims);
    int64_t B = dims[0];
    ck_assert_uint_eq(len, 16 + 4 * (size_t)B * (dims[1] + dims[2]));
    char err[512];
    ts_model *m = ts_safetensors_load(MINI, NULL, err, sizeof err);
    ck_assert_msg(m != NULL, "%s", err);
    ck_assert_int_eq(m->in_dim, dims[1]);
    ck_assert_int_eq(m->out_dim, dims[2]);
    float *x = malloc(4 * B * m->in_dim), *want = malloc(4 * B * m->out_dim),
          *y = malloc(4 * B * m->out_dim);
    memcpy(x, io + 16, 4 * B * m->in_dim);
    memcpy(want, io + 16 + 4 * B * m->in_dim, 4 * B * m->out_dim);
    ck_assert_int_eq(ts_model_forward(m, x, B, y, NULL), 0);
    for (int64_t k = 0; k < B * m->out_dim; k++)
        ck_assert_msg(fabsf(y[k] - want[k]) <= 1e-4f + 1e-4f * fabsf(want[k]),
                      "output %lld: %g, torch %g", (long long)k, y[k], want[k]);
    free(x);
    free(y);
    free(want);
    free(io);
    ts_model_free(m);
}
END_TEST

/* A C-made model with a lived-in state survives write → read with every value intact. */
START_TEST(test_init_feedback_roundtrip)
{
    char err[512], name[TS_MODEL_NAME_MAX];
    ts_model *m = model_from("linear:10x16/gs4+bias,relu,rmsnorm:16/gs3,linear:16x6/gs5,gelu", 42);
    m->layers[0].bias[3] = -7;
    float x[3 * 10], t[3 * 6];
    for (int k = 0; k < 30; k++)
        x[k] = sinf((float)k);
    for (int k = 0; k < 18; k++)
        t[k] = cosf((float)k);
    ts_feedback_input in = {.kind = TS_LOSS_MSE, .target = t};
    for (int s = 0; s < 3; s++)
        ck_assert_int_eq(ts_model_feedback(m, x, 3, &in, NULL, NULL, err, sizeof err), 0);
    uint8_t *a, *b;
    size_t alen, blen;
    ck_assert_int_eq(ts_safetensors_write(m, "c \"quoted\"\n", &a, &alen, err, sizeof err), 0);
    ts_model *back = ts_safetensors_read(a, alen, name, err, sizeof err);
    ck_assert_msg(back != NULL, "%s", err);
    ck_assert_str_eq(name, "c \"quoted\"\n");
    ck_assert_uint_eq(ts_state_len(back), ts_state_len(m));
    int64_t *s1 = malloc(8 * ts_state_len(m)), *s2 = malloc(8 * ts_state_len(m));
    ts_state_save(m, s1);
    ts_state_save(back, s2);
    ck_assert_mem_eq(s1, s2, 8 * ts_state_len(m));
    ck_assert_int_eq(ts_model_step(back), 3);
    ck_assert_int_eq(back->layers[0].bias[3], -7);
    ck_assert_int_eq(ts_safetensors_write(back, name, &b, &blen, err, sizeof err), 0);
    ck_assert_uint_eq(alen, blen);
    ck_assert_mem_eq(a, b, alen);
    /* Without a name there is no tscale.name at all. */
    free(b);
    ck_assert_int_eq(ts_safetensors_write(back, NULL, &b, &blen, err, sizeof err), 0);
    ck_assert_ptr_null(memmem(b, blen, "tscale.name", 11));
    ts_model *c = ts_safetensors_read(b, blen, name, err, sizeof err);
    ck_assert_ptr_nonnull(c);
    ck_assert_str_eq(name, "");
    free(s1);
    free(s2);
    free(a);
    free(b);
    ts_model_free(m);
    ts_model_free(back);
    ts_model_free(c);
}
END_TEST

/* A view (ts_model_view, what a published replication state is written from off the loop)
 * writes exactly the bytes its model wrote when it was taken, and keeps them while the
 * model takes further feedback steps. */
START_TEST(test_view_writes_the_state_it_was_taken_at)
{
    char err[512];
    ts_model *m = model_from("linear:10x16/gs4+bias,relu,rmsnorm:16/gs3,linear:16x6/gs5,gelu", 7);
    float x[2 * 10], t[2 * 6];
    for (int k = 0; k < 20; k++)
        x[k] = sinf((float)k * 0.7f);
    for (int k = 0; k < 12; k++)
        t[k] = cosf((float)k);
    ts_feedback_input in = {.kind = TS_LOSS_MSE, .target = t};
    ck_assert_int_eq(ts_model_feedback(m, x, 2, &in, NULL, NULL, err, sizeof err), 0);
    uint8_t *want, *got, *later;
    size_t wlen, glen, llen;
    ck_assert_int_eq(ts_safetensors_write(m, "v", &want, &wlen, err, sizeof err), 0);
    ts_model *v = ts_model_view(m);
    ck_assert_ptr_nonnull(v);
    for (int s = 0; s < 2; s++) /* m moves on; the view must not */
        ck_assert_int_eq(ts_model_feedback(m, x, 2, &in, NULL, NULL, err, sizeof err), 0);
    ck_assert_int_eq(ts_safetensors_write(v, "v", &got, &glen, err, sizeof err), 0);
    ck_assert_uint_eq(glen, wlen);
    ck_assert_mem_eq(got, want, wlen);
    ck_assert_int_eq(ts_model_step(v), 1);
    ck_assert_int_eq(ts_safetensors_write(m, "v", &later, &llen, err, sizeof err), 0);
    ck_assert_int_eq(ts_model_step(m), 3);
    ck_assert_msg(llen != wlen || memcmp(later, want, wlen) != 0, "the model's state did not change");
    free(want);
    free(got);
    free(later);
    ts_model_view_free(v);
    ts_model_free(m);
}
END_TEST

/* The header is exactly safetensors' layout: 8-aligned, compact, I64 tensors first. */
START_TEST(test_header_layout)
{
    char err[512];
    ts_model *m = model_from("linear:3x2/gs2+bias", 1);
    uint8_t *b;
    size_t len;
    ck_assert_int_eq(ts_safetensors_write(m, "t", &b, &len, err, sizeof err), 0);
    uint64_t hl = le64(b);
    ck_assert_uint_eq(hl % 8, 0);
    const char *want =
        "{\"__metadata__\":{\"tscale.format\":\"1\",\"tscale.layers\":\"[{\\\"type\\\":"
        "\\\"ternary_linear\\\",\\\"in_dim\\\":3,\\\"out_dim\\\":2,\\\"group_size\\\":2,"
        "\\\"bias\\\":true}]\",\"tscale.name\":\"t\"},"
        "\"0._T_pad\":{\"dtype\":\"I64\",\"shape\":[],\"data_offsets\":[0,8]},"
        "\"0._T_shape\":{\"dtype\":\"I64\",\"shape\":[2],\"data_offsets\":[8,24]},"
        "\"0.corr_accum\":{\"dtype\":\"I64\",\"shape\":[4],\"data_offsets\":[24,56]},"
        "\"0.step_counter\":{\"dtype\":\"I64\",\"shape\":[1],\"data_offsets\":[56,64]},"
        "\"0.bias\":{\"dtype\":\"I32\",\"shape\":[2],\"data_offsets\":[64,72]},"
        "\"0.E\":{\"dtype\":\"I8\",\"shape\":[4],\"data_offsets\":[72,76]},"
        "\"0.T_packed\":{\"dtype\":\"U8\",\"shape\":[2],\"data_offsets\":[76,78]}}";
    ck_assert_uint_eq(hl, (strlen(want) + 7) / 8 * 8);
    ck_assert_mem_eq(b + 8, want, strlen(want));
    for (size_t k = strlen(want); k < hl; k++)
        ck_assert_uint_eq(b[8 + k], ' ');
    ck_assert_uint_eq(len, 8 + hl + 78);
    ck_assert_uint_eq(b[8 + hl], 4);      /* _T_pad: 6 trits → 4 pad digits */
    ck_assert_uint_eq(b[8 + hl + 8], 2);  /* _T_shape [2, 3] */
    ck_assert_uint_eq(b[8 + hl + 16], 3);
    free(b);
    ts_model_free(m);
}
END_TEST

/* Any valid safetensors order loads: here every tensor reversed in header and data. */
START_TEST(test_any_tensor_order_loads)
{
    st_file f = mini();
    json_t *h = json_object();
    const char *names[64];
    int n = 0;
    const char *key;
    json_t *v;
    json_object_foreach(f.h, key, v)
        if (strcmp(key, "__metadata__"))
            names[n++] = key;
    uint8_t *data = malloc(f.data_len);
    uint64_t at = 0;
    for (int k = n - 1; k >= 0; k--) {
        uint64_t b = offset(&f, names[k], 0), e = offset(&f, names[k], 1);
        memcpy(data + at, f.data + b, e - b);
        json_t *copy = json_deep_copy(entry(&f, names[k]));
        json_object_set_new(copy, "data_offsets", json_pack("[I,I]", (json_int_t)at, (json_int_t)(at + e - b)));
        json_object_set_new(h, names[k], copy);
        at += e - b;
    }
    json_object_set(h, "__metadata__", json_object_get(f.h, "__metadata__"));
    json_decref(f.h);
    f.h = h;
    memcpy(f.data, data, f.data_len);
    free(data);
    size_t len, outlen, orig_len;
    uint8_t *buf = join(&f, 0, &len), *out, *orig = slurp(MINI, &orig_len);
    char err[512], name[TS_MODEL_NAME_MAX];
    ts_model *m = ts_safetensors_read(buf, len, name, err, sizeof err);
    ck_assert_msg(m != NULL, "%s", err);
    ck_assert_mem_ne(buf, orig, 64);
    /* and the export is the canonical form again */
    ck_assert_int_eq(ts_safetensors_write(m, name, &out, &outlen, err, sizeof err), 0);
    ck_assert_uint_eq(outlen, orig_len);
    ck_assert_mem_eq(out, orig, orig_len);
    free(out);
    free(orig);
    free(buf);
    ts_model_free(m);
    drop(&f);
}
END_TEST

/* ── malformed files, one class each ── */

START_TEST(test_refuse_truncated)
{
    size_t len;
    uint8_t *buf = slurp(MINI, &len);
    expect_refused_buf(buf, 5, "too short for the 8-byte header length");
    expect_refused_buf(buf, 100, "header length");
    expect_refused_buf(buf, len - 1, "out of range");
    free(buf);
}
END_TEST

START_TEST(test_refuse_header_length_lies)
{
    size_t len;
    uint8_t *buf = slurp(MINI, &len);
    uint64_t real = le64(buf);
    uint8_t *b = malloc(len);
    memcpy(b, buf, len);
    uint64_t lies[] = {0, 1, len - 7, (uint64_t)-1, 100000001};
    for (size_t k = 0; k < sizeof lies / sizeof lies[0]; k++) {
        for (int i = 0; i < 8; i++)
            b[i] = (uint8_t)(lies[k] >> (8 * i));
        expect_refused_buf(b, len, "header length");
    }
    for (int i = 0; i < 8; i++)   /* shorter than the JSON: cuts it */
        b[i] = (uint8_t)((real - 16) >> (8 * i));
    expect_refused_buf(b, len, "header is not valid JSON");
    for (int i = 0; i < 8; i++)   /* longer: swallows tensor bytes into the "header" */
        b[i] = (uint8_t)((real + 8) >> (8 * i));
    expect_refused_buf(b, len, "header is not valid JSON");
    free(b);
    free(buf);
}
END_TEST

START_TEST(test_refuse_bad_json)
{
    size_t len;
    uint8_t *buf = slurp(MINI, &len);
    buf[8] = 'x';
    expect_refused_buf(buf, len, "header is not valid JSON");
    free(buf);
    const char *bad[] = {"[1,2]   ", "\"str\"   "};
    for (int k = 0; k < 2; k++) {
        uint8_t f[16] = {8};
        memcpy(f + 8, bad[k], 8);
        expect_refused_buf(f, 16, k == 0 ? "header is not a JSON object" : "header is not valid JSON");
    }
    /* duplicate keys are ambiguous: refused */
    const char *dup = "{\"a\":1,\"a\":2}   ";
    uint8_t f[24] = {16};
    memcpy(f + 8, dup, 16);
    expect_refused_buf(f, 24, "duplicate");
}
END_TEST

START_TEST(test_refuse_wrong_dtype)
{
    st_file f = mini();
    json_object_set_new(entry(&f, "1.E"), "dtype", json_string("I64"));
    expect_refused(&f, 0, "tensor \"1.E\": dtype I64, expected I8");
}
END_TEST

START_TEST(test_refuse_wrong_shape)
{
    st_file f = mini();
    json_object_set_new(entry(&f, "1.E"), "shape", json_pack("[i]", 20));
    expect_refused(&f, 0, "tensor \"1.E\": shape [20], expected [21]");
    f = mini();
    json_object_set_new(entry(&f, "3.corr_accum"), "shape", json_pack("[i,i]", 9, 3));
    expect_refused(&f, 0, "tensor \"3.corr_accum\": shape [9,3], expected [27]");
    f = mini();
    json_object_set_new(entry(&f, "1._T_pad"), "shape", json_pack("[i]", 1));
    expect_refused(&f, 0, "tensor \"1._T_pad\": shape [1], expected []");
}
END_TEST

START_TEST(test_refuse_offsets)
{
    st_file f = mini();   /* overlapping: 1.E moved one byte back */
    uint64_t b = offset(&f, "1.E", 0), e = offset(&f, "1.E", 1);
    set_offsets(&f, "1.E", b - 1, e - 1);
    expect_refused(&f, 0, "overlap");
    f = mini();           /* out of range */
    b = offset(&f, "0.E", 0), e = offset(&f, "0.E", 1);
    char want[128];
    snprintf(want, sizeof want, "tensor \"0.E\": data_offsets [%zu, %zu] out of range",
             f.data_len, f.data_len + 3);
    set_offsets(&f, "0.E", f.data_len, f.data_len + (e - b));
    expect_refused(&f, 0, want);
    f = mini();
    set_offsets(&f, "0.E", b, e + 1);
    expect_refused(&f, 0, "span 4 bytes, its shape needs 3");
    f = mini();
    set_offsets(&f, "0.E", e, b);
    expect_refused(&f, 0, "0 <= begin <= end");
    f = mini();
    json_object_set_new(entry(&f, "0.E"), "data_offsets", json_pack("[i,i]", -3, 0));
    expect_refused(&f, 0, "tensor \"0.E\": data_offsets must be");
}
END_TEST

START_TEST(test_refuse_hole)
{
    st_file f = mini();   /* the last tensor moved one byte on, the file one byte longer */
    const char *last = "5.T_packed";
    uint64_t b = offset(&f, last, 0), e = offset(&f, last, 1);
    ck_assert_uint_eq(e, f.data_len);
    memmove(f.data + b + 1, f.data + b, e - b);
    f.data_len++;
    set_offsets(&f, last, b + 1, e + 1);
    expect_refused(&f, 0, "hole of 1 unused bytes");
}
END_TEST

START_TEST(test_refuse_trailing_garbage)
{
    st_file f = mini();
    expect_refused(&f, 3, "3 bytes of trailing garbage");
}
END_TEST

START_TEST(test_refuse_unknown_layer_type)
{
    st_file f = mini();
    edit_layers(&f, "\"gelu\"", "\"swish\"");
    expect_refused(&f, 0, "tscale.layers[2]: unknown layer type \"swish\"");
}
END_TEST

/* A header entry for a tensor appended after the data section (the caller adds its bytes). */
static void add_tensor(st_file *f, const char *name, const char *dtype, int count, int bytes)
{
    json_object_set_new(f->h, name, json_pack("{s:s,s:[i],s:[I,I]}", "dtype", dtype, "shape", count,
                                              "data_offsets", (json_int_t)f->data_len,
                                              (json_int_t)f->data_len + bytes));
}

START_TEST(test_refuse_missing_and_extra_tensor)
{
    st_file f = mini();
    json_object_del(f.h, "3.step_counter");
    expect_refused(&f, 0, "tensor \"3.step_counter\": missing");
    f = mini();
    add_tensor(&f, "2.E", "I8", 1, 1);
    expect_refused(&f, 1, "tensor \"2.E\": not part of the model");
    f = mini();   /* linear 5 has no bias */
    add_tensor(&f, "5.bias", "I32", 5, 20);
    expect_refused(&f, 20, "tensor \"5.bias\": not part of the model");
    f = mini();
    json_object_set_new(entry(&f, "1.E"), "extra", json_true());
    expect_refused(&f, 0, "tensor \"1.E\": expected an object with exactly");
}
END_TEST

START_TEST(test_refuse_bad_packed_byte)
{
    st_file f = mini();
    uint64_t b = offset(&f, "1.T_packed", 0);
    f.data[b + 2] = 243;
    expect_refused(&f, 0, "tensor \"1.T_packed\": byte 2 is 243, must be < 243");
    f = mini();   /* 84 trits: 1 pad digit, which must be 0 → last byte < 81 */
    uint64_t e = offset(&f, "1.T_packed", 1);
    f.data[e - 1] = 81;
    expect_refused(&f, 0, "pad digits of the last byte must be 0");
}
END_TEST

START_TEST(test_refuse_dims_not_chaining)
{
    st_file f = mini();
    edit_layers(&f, "\"in_dim\":7", "\"in_dim\":8");
    expect_refused(&f, 0, "in_dim 8 does not match layer 2's out_dim 7");
    f = mini();
    edit_layers(&f, "\"dim\":12", "\"dim\":11");
    expect_refused(&f, 0, "does not match");
}
END_TEST

static void set_i64(st_file *f, const char *name, int k, int64_t v)
{
    uint64_t b = offset(f, name, 0) + 8 * (uint64_t)k;
    for (int i = 0; i < 8; i++)
        f->data[b + i] = (uint8_t)((uint64_t)v >> (8 * i));
}

START_TEST(test_refuse_bad_scalars)
{
    st_file f = mini();
    set_i64(&f, "1._T_pad", 0, 4);
    expect_refused(&f, 0, "tensor \"1._T_pad\": 4, expected 1");
    f = mini();
    set_i64(&f, "3._T_shape", 1, 9);
    expect_refused(&f, 0, "tensor \"3._T_shape\": [9, 9], expected [9, 7]");
    f = mini();
    set_i64(&f, "5.step_counter", 0, -1);
    expect_refused(&f, 0, "tensor \"5.step_counter\": -1");
}
END_TEST

START_TEST(test_refuse_metadata)
{
    st_file f = mini();
    json_t *meta = json_object_get(f.h, "__metadata__");
    /* A foreign annotation (transformers writes "format":"pt") is not ours to judge: it loads. */
    json_object_set_new(meta, "format", json_string("pt"));
    size_t len;
    uint8_t *buf = join(&f, 0, &len);
    char err[512] = "";
    ts_model *m = ts_safetensors_read(buf, len, NULL, err, sizeof err);
    ck_assert_msg(m != NULL, "a foreign metadata key was refused: %s", err);
    ts_model_free(m);
    free(buf);
    drop(&f);
    /* An unknown tscale.* key is a newer format feature this build would drop: refused. */
    f = mini();
    json_object_set_new(json_object_get(f.h, "__metadata__"), "tscale.future", json_string("x"));
    expect_refused(&f, 0, "metadata: unknown key \"tscale.future\"");
    f = mini();
    json_object_del(json_object_get(f.h, "__metadata__"), "tscale.format");
    expect_refused(&f, 0, "tscale.format is missing");
    f = mini();
    json_object_set_new(json_object_get(f.h, "__metadata__"), "tscale.format", json_string("2"));
    expect_refused(&f, 0, "tscale.format is \"2\"");
    f = mini();
    json_object_del(json_object_get(f.h, "__metadata__"), "tscale.layers");
    expect_refused(&f, 0, "tscale.layers is missing");
    f = mini();
    json_object_del(f.h, "__metadata__");
    expect_refused(&f, 0, "\"__metadata__\" is missing");
    f = mini();
    json_object_set_new(json_object_get(f.h, "__metadata__"), "tscale.name", json_integer(3));
    expect_refused(&f, 0, "\"tscale.name\" must be a string");
    f = mini();
    char longname[200];
    memset(longname, 'n', sizeof longname - 1);
    longname[sizeof longname - 1] = '\0';
    json_object_set_new(json_object_get(f.h, "__metadata__"), "tscale.name", json_string(longname));
    expect_refused(&f, 0, "tscale.name is too long");
}
END_TEST

START_TEST(test_refuse_bad_layers)
{
    struct { const char *from, *to, *want; } cases[] = {
        {"\"bias\":true", "\"bias\":1", "\"bias\" must be true or false"},
        {"\"group_size\":4", "\"group_size\":0", "group_size 0 is out of range"},
        {"\"group_size\":4", "\"group_size\":\"4\"", "\"group_size\" must be an integer"},
        {"\"in_dim\":12,", "", "\"in_dim\" must be an integer (missing)"},
        {"{\"type\":\"gelu\"}", "{\"type\":\"gelu\",\"approximate\":\"tanh\"}", "unknown key \"approximate\""},
        {"[", "[1,", "tscale.layers[0]: expected an object"},
        {"]", "", "tscale.layers is not valid JSON"},
    };
    for (size_t k = 0; k < sizeof cases / sizeof cases[0]; k++) {
        st_file f = mini();
        edit_layers(&f, cases[k].from, cases[k].to);
        expect_refused(&f, 0, cases[k].want);
    }
    st_file f = mini();
    json_object_set_new(json_object_get(f.h, "__metadata__"), "tscale.layers", json_string("[]"));
    expect_refused(&f, 0, "array of 1 to");
    f = mini(); /* activations alone have no dims */
    json_object_set_new(json_object_get(f.h, "__metadata__"), "tscale.layers",
                        json_string("[{\"type\":\"relu\"},{\"type\":\"gelu\"}]"));
    expect_refused(&f, 0, "tscale.layers: a model needs a ternary_linear or ternary_rmsnorm layer");
}
END_TEST

/* A few hundred bytes that claim a 2^34-weight layer are refused before anything that
 * size is allocated: the offsets are checked against the file first. */
START_TEST(test_refuse_huge_claim_without_allocating)
{
    const int64_t out = 1 << 20, in = 1 << 14, gs = 1 << 16;
    const int64_t packed = out * in / 5 + 1, G = out;   /* one group per row */
    struct { const char *name, *dtype; int64_t count, size; } t[] = {
        {"0._T_pad", "I64", -1, 8}, {"0._T_shape", "I64", 2, 8}, {"0.corr_accum", "I64", G, 8},
        {"0.step_counter", "I64", 1, 8}, {"0.E", "I8", G, 1}, {"0.T_packed", "U8", packed, 1},
    };
    st_file f = {.h = json_object(), .data = malloc(64), .data_len = 8};
    char layers[256];
    snprintf(layers, sizeof layers, "[{\"type\":\"ternary_linear\",\"in_dim\":%lld,\"out_dim\":%lld,"
             "\"group_size\":%lld,\"bias\":false}]", (long long)in, (long long)out, (long long)gs);
    json_object_set_new(f.h, "__metadata__", json_pack("{s:s,s:s}", "tscale.format", "1",
                                                       "tscale.layers", layers));
    json_int_t at = 0;
    for (size_t k = 0; k < sizeof t / sizeof t[0]; k++) {
        json_int_t n = t[k].count < 0 ? 1 : t[k].count;
        json_t *shape = t[k].count < 0 ? json_array() : json_pack("[I]", (json_int_t)t[k].count);
        json_object_set_new(f.h, t[k].name, json_pack("{s:s,s:o,s:[I,I]}", "dtype", t[k].dtype,
                                                      "shape", shape, "data_offsets", at,
                                                      at + n * t[k].size));
        at += n * t[k].size;
    }
    memset(f.data, 0, 8);
    expect_refused(&f, 0, "out of range");
}
END_TEST

/* ── random corruption ── */

static uint64_t rng_next(uint64_t *s)
{
    *s ^= *s << 13;
    *s ^= *s >> 7;
    *s ^= *s << 17;
    return *s;
}

START_TEST(test_mutated_bytes_never_crash)
{
    size_t len;
    uint8_t *orig = slurp(MINI, &len), *buf = malloc(len);
    uint64_t seed = 0x9e3779b97f4a7c15u;
    int loaded = 0, refused = 0;
    for (int iter = 0; iter < 4000; iter++) {
        memcpy(buf, orig, len);
        int flips = 1 + (int)(rng_next(&seed) % 4);
        for (int k = 0; k < flips; k++) {
            size_t at = rng_next(&seed) % len;
            /* half the time a printable character: keeps the JSON parseable more often */
            buf[at] = rng_next(&seed) % 2 ? (uint8_t)rng_next(&seed) : (uint8_t)(' ' + rng_next(&seed) % 95);
        }
        size_t n = rng_next(&seed) % 8 == 0 ? rng_next(&seed) % (len + 1) : len;
        char err[512] = "";
        ts_model *m = ts_safetensors_read(buf, n, NULL, err, sizeof err);
        if (m) {
            loaded++;
            ts_model_free(m);
        } else {
            refused++;
            ck_assert_msg(err[0] != '\0', "refused without a message");
        }
    }
    ck_assert_int_gt(refused, 0);
    ck_assert_int_gt(loaded, 0);   /* flips in tensor values load (different model) */
    free(buf);
    free(orig);
}
END_TEST

/* ── files ── */

START_TEST(test_save_atomic_0600)
{
    char dir[] = "/tmp/tscale-st-XXXXXX";
    ck_assert_ptr_nonnull(mkdtemp(dir));
    char path[256], err[512], name[TS_MODEL_NAME_MAX];
    snprintf(path, sizeof path, "%s/m.safetensors", dir);
    ts_model *m = ts_safetensors_load(MINI, name, err, sizeof err);
    ck_assert_msg(m != NULL, "%s", err);
    write_file(path, "old", 3);   /* an old file is replaced whole */
    ck_assert_int_eq(ts_safetensors_save(m, name, path, err, sizeof err), 0);
    struct stat st;
    ck_assert_int_eq(stat(path, &st), 0);
    ck_assert_int_eq(st.st_mode & 0777, 0600);
    size_t a, b;
    uint8_t *x = slurp(path, &a), *y = slurp(MINI, &b);
    ck_assert_uint_eq(a, b);
    ck_assert_mem_eq(x, y, a);
    free(x);
    free(y);
    DIR *d = opendir(dir);   /* no temporary file left behind */
    struct dirent *de;
    int files = 0;
    while ((de = readdir(d)))
        files += de->d_name[0] != '.';
    closedir(d);
    ck_assert_int_eq(files, 1);
    snprintf(path, sizeof path, "%s/no/such/dir/m.safetensors", dir);
    ck_assert_int_eq(ts_safetensors_save(m, name, path, err, sizeof err), -1);
    ck_assert_ptr_nonnull(strstr(err, "no/such/dir"));
    snprintf(path, sizeof path, "%s/m.safetensors", dir);
    unlink(path);
    rmdir(dir);
    ts_model_free(m);
    ck_assert_ptr_null(ts_safetensors_load("/nonexistent/x.safetensors", NULL, err, sizeof err));
    ck_assert_ptr_nonnull(strstr(err, "/nonexistent/x.safetensors"));
    ck_assert_ptr_null(ts_safetensors_load("/tmp", NULL, err, sizeof err));
    ck_assert_ptr_nonnull(strstr(err, "not a regular file"));
}
END_TEST

START_TEST(test_write_refuses_bad_name)
{
    char err[512];
    ts_model *m = ts_safetensors_load(MINI, NULL, err, sizeof err);
    uint8_t *b = NULL;
    size_t len;
    char longname[TS_MODEL_NAME_MAX + 1];
    memset(longname, 'x', TS_MODEL_NAME_MAX);
    longname[TS_MODEL_NAME_MAX] = '\0';
    ck_assert_int_eq(ts_safetensors_write(m, longname, &b, &len, err, sizeof err), -1);
    ck_assert_ptr_nonnull(strstr(err, "model name is"));
    ck_assert_int_eq(ts_safetensors_write(m, "bad \xff utf8", &b, &len, err, sizeof err), -1);
    ck_assert_ptr_nonnull(strstr(err, "UTF-8"));
    ts_model_free(m);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("safetensors");
    TCase *tc = tcase_create("all");
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, test_mini_roundtrip_byte_identical);
    tcase_add_test(tc, test_mini_forward_matches_torch);
    tcase_add_test(tc, test_init_feedback_roundtrip);
    tcase_add_test(tc, test_view_writes_the_state_it_was_taken_at);
    tcase_add_test(tc, test_header_layout);
    tcase_add_test(tc, test_any_tensor_order_loads);
    tcase_add_test(tc, test_refuse_truncated);
    tcase_add_test(tc, test_refuse_header_length_lies);
    tcase_add_test(tc, test_refuse_bad_json);
    tcase_add_test(tc, test_refuse_wrong_dtype);
    tcase_add_test(tc, test_refuse_wrong_shape);
    tcase_add_test(tc, test_refuse_offsets);
    tcase_add_test(tc, test_refuse_hole);
    tcase_add_test(tc, test_refuse_trailing_garbage);
    tcase_add_test(tc, test_refuse_unknown_layer_type);
    tcase_add_test(tc, test_refuse_missing_and_extra_tensor);
    tcase_add_test(tc, test_refuse_bad_packed_byte);
    tcase_add_test(tc, test_refuse_dims_not_chaining);
    tcase_add_test(tc, test_refuse_bad_scalars);
    tcase_add_test(tc, test_refuse_metadata);
    tcase_add_test(tc, test_refuse_bad_layers);
    tcase_add_test(tc, test_refuse_huge_claim_without_allocating);
    tcase_add_test(tc, test_mutated_bytes_never_crash);
    tcase_add_test(tc, test_save_atomic_0600);
    tcase_add_test(tc, test_write_refuses_bad_name);
    suite_add_tcase(s, tc);
    return run_suite(s);
}
