/* test_oip.c — unit tests of the OIP wire format (proto/oip.c), its JSON reader and
 * writer (proto/json_lite.c) and their byte buffer (proto/buf.c): conversions, shapes, binary data that lies, limits, response
 * round trips, escaping, and a random-mutation loop. */
#include <check.h>
#include <float.h>
#include <jansson.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "proto/buf.h"
#include "proto/json_lite.h"
#include "proto/oip.h"
#include "testutil.h"

static ts_oip_request req;
static char err[512];
static const ts_oip_limits lim = { .max_elements = 1 << 20, .max_depth = 16 };

static int parse_json(const char *json)
{
    err[0] = 0;
    return ts_oip_parse_request((const uint8_t *)json, strlen(json), -1, &lim, &req, err, sizeof err);
}

/* A body with one input: name, datatype, shape and data as JSON text. */
static int parse_one(const char *name, const char *dt, const char *shape, const char *data)
{
    char body[512];
    snprintf(body, sizeof body, "{\"inputs\":[{\"name\":\"%s\",\"shape\":%s,\"datatype\":\"%s\",\"data\":%s}]}",
             name, shape, dt, data);
    return parse_json(body);
}

/* A body made of json followed by nbin bytes of binary data; json_len = strlen(json). */
static int parse_bin(const char *json, const void *bin, size_t nbin)
{
    size_t jl = strlen(json);
    uint8_t *body = malloc(jl + nbin + 1);
    memcpy(body, json, jl);
    if (nbin) memcpy(body + jl, bin, nbin);
    err[0] = 0;
    int r = ts_oip_parse_request(body, jl + nbin, (int64_t)jl, &lim, &req, err, sizeof err);
    free(body);
    return r;
}

/* parse must fail, and its message contain each of the given fragments; the request is
 * left cleared. */
static void expect_fail(int r, ...)
{
    ck_assert_msg(r == -1, "expected a failure, parse returned %d", r);
    ck_assert_msg(err[0], "failure without a message");
    va_list ap;
    va_start(ap, r);
    for (const char *frag; (frag = va_arg(ap, const char *));)
        ck_assert_msg(strstr(err, frag), "message \"%s\" lacks \"%s\"", err, frag);
    va_end(ap);
    ck_assert_int_eq(req.n_inputs, 0);
    ck_assert_ptr_null(req.id);
    ck_assert_ptr_null(req.inputs[0].f32);
}

static uint32_t f2u(float f) { uint32_t u; memcpy(&u, &f, 4); return u; }

/* ── JSON requests ── */

START_TEST(test_flat_fp32)
{
    ck_assert_int_eq(parse_json("{\"id\":\"r1\",\"inputs\":[{\"name\":\"input\",\"shape\":[2,3],"
                                "\"datatype\":\"FP32\",\"data\":[1,2.5,-3,4e-1,0.1,-0.0]}]}"), 0);
    ck_assert_str_eq(req.id, "r1");
    ck_assert_int_eq(req.n_inputs, 1);
    const ts_oip_tensor *x = ts_oip_find_input(&req, "input");
    ck_assert_ptr_nonnull(x);
    ck_assert_ptr_null(ts_oip_find_input(&req, "nope"));
    ck_assert_int_eq(x->type, TS_OIP_FP32);
    ck_assert_int_eq(x->ndim, 2);
    ck_assert_int_eq(x->shape[0], 2);
    ck_assert_int_eq(x->shape[1], 3);
    ck_assert_int_eq(x->count, 6);
    ck_assert_str_eq(x->datatype, "FP32");
    const float want[6] = { 1.0f, 2.5f, -3.0f, 0.4f, 0.1f, -0.0f };
    for (int k = 0; k < 6; k++) ck_assert_uint_eq(f2u(x->f32[k]), f2u(want[k]));
    ck_assert_int_eq(req.n_outputs, 0);
    ck_assert_int_eq(req.binary_data_output, 0);
    ts_oip_request_free(&req);
}
END_TEST

START_TEST(test_nested_equals_flat)
{
    const char *nested = "{\"inputs\":[{\"name\":\"a\",\"shape\":[2,2,3],\"datatype\":\"FP32\","
                         "\"data\":[[[1,2,3],[4,5,6]],[[7,8,9],[10,11,12]]]}]}";
    ck_assert_int_eq(parse_json(nested), 0);
    ck_assert_ptr_null(req.id);
    for (int k = 0; k < 12; k++) ck_assert_float_eq(req.inputs[0].f32[k], (float)(k + 1));
    ts_oip_request_free(&req);
    /* Row-major nested labels. */
    ck_assert_int_eq(parse_one("l", "INT64", "[2,1]", "[[3],[-4]]"), 0);
    ck_assert_int_eq(req.inputs[0].type, TS_OIP_INT64);
    ck_assert_int_eq(req.inputs[0].i64[0], 3);
    ck_assert_int_eq(req.inputs[0].i64[1], -4);
    ts_oip_request_free(&req);
}
END_TEST

START_TEST(test_shape_mismatch)
{
    expect_fail(parse_one("input", "FP32", "[2,3]", "[1,2,3,4,5]"),
                "input \"input\": shape [2,3] needs 6 values, got 5", NULL);
    expect_fail(parse_one("input", "FP32", "[2,3]", "[1,2,3,4,5,6,7]"), "needs 6 values, got 7", NULL);
    expect_fail(parse_one("x", "FP32", "[2,3]", "[[1,2,3],[4,5]]"), "input \"x\": data[1] has 2 values", "needs 3", NULL);
    expect_fail(parse_one("x", "FP32", "[2,3]", "[[1,2,3]]"), "data has 1 values", NULL);
    expect_fail(parse_one("x", "FP32", "[2,3]", "[[1,2,3],4]"), "data[1] is an integer", NULL);
    expect_fail(parse_one("x", "FP32", "[2,1,2]", "[[[1,2]],[[3],[4]]]"), "data[1] has 2 values", NULL);
    expect_fail(parse_one("x", "FP32", "[1,2]", "[[1,[2]]]"), "data[0][1] is an array", NULL);
    /* flat data with an array inside */
    expect_fail(parse_one("x", "FP32", "[2]", "[1,[2]]"), "element 1 is an array", NULL);
    expect_fail(parse_one("x", "FP32", "[2]", "{\"a\":1}"), "\"data\" must be an array", NULL);
    /* an empty tensor is fine (the daemon decides whether 0 rows makes sense) */
    ck_assert_int_eq(parse_one("x", "FP32", "[0,3]", "[]"), 0);
    ck_assert_int_eq(req.inputs[0].count, 0);
    ts_oip_request_free(&req);
}
END_TEST

/* FP32 data of each JSON form, FP64 → f32, range checks. */
START_TEST(test_float_conversions)
{
    ck_assert_int_eq(parse_json("{\"inputs\":[{\"name\":\"x\",\"shape\":[6],\"datatype\":\"FP64\","
                                "\"data\":[0.30000001192092896,1e-45,3.4028234663852886e38,"
                                "-123456789012345678901234567890,16777217,1E2]}]}"), 0);
    const float *f = req.inputs[0].f32;
    ck_assert_uint_eq(f2u(f[0]), f2u(0.3f));
    ck_assert_uint_eq(f2u(f[1]), 1u);                     /* the smallest subnormal */
    ck_assert_uint_eq(f2u(f[2]), f2u(FLT_MAX));
    ck_assert_float_eq(f[3], (float)-123456789012345678901234567890.0);
    ck_assert_float_eq(f[4], 16777216.0f);                /* rounds to even */
    ck_assert_float_eq(f[5], 100.0f);
    ts_oip_request_free(&req);
    expect_fail(parse_one("x", "FP32", "[2]", "[1,1e39]"), "input \"x\": element 1 is out of float32 range", NULL);
    expect_fail(parse_one("x", "FP64", "[1]", "[-1e300]"), "element 0 is out of float32 range", NULL);
    expect_fail(parse_one("x", "FP32", "[2]", "[1,true]"), "element 1 is true, not a number", NULL);
    expect_fail(parse_one("x", "FP32", "[2]", "[null,1]"), "element 0 is null, not a number", NULL);
    expect_fail(parse_one("x", "FP32", "[1]", "[\"1.0\"]"), "element 0 is a string", NULL);
    expect_fail(parse_one("x", "FP32", "[1]", "[NaN]"), "invalid JSON", NULL);
    expect_fail(parse_one("x", "FP32", "[1]", "[Infinity]"), "invalid JSON", NULL);
}
END_TEST

START_TEST(test_int_conversions)
{
    static const struct { const char *dt, *ok, *bad; int64_t lo, hi; } cases[] = {
        { "INT8", "[-128,127]", "[128]", -128, 127 },
        { "INT16", "[-32768,32767]", "[-32769]", -32768, 32767 },
        { "INT32", "[-2147483648,2147483647]", "[2147483648]", INT32_MIN, INT32_MAX },
        { "INT64", "[-9223372036854775808,9223372036854775807]", "[9223372036854775808]", INT64_MIN, INT64_MAX },
        { "UINT8", "[0,255]", "[256]", 0, 255 },
        { "UINT16", "[0,65535]", "[-1]", 0, 65535 },
        { "UINT32", "[0,4294967295]", "[4294967296]", 0, 4294967295 },
        { "UINT64", "[0,9223372036854775807]", "[18446744073709551615]", 0, INT64_MAX },
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        ck_assert_msg(parse_one("l", cases[i].dt, "[2]", cases[i].ok) == 0, "%s: %s", cases[i].dt, err);
        ck_assert_int_eq(req.inputs[0].type, TS_OIP_INT64);
        ck_assert_int_eq(req.inputs[0].i64[0], cases[i].lo);
        ck_assert_int_eq(req.inputs[0].i64[1], cases[i].hi);
        ts_oip_request_free(&req);
        expect_fail(parse_one("l", cases[i].dt, "[1]", cases[i].bad), "input \"l\": element 0 is out of range for ", cases[i].dt, NULL);
    }
    expect_fail(parse_one("l", "INT64", "[1]", "[1.5]"), "element 0 is not an integer", NULL);
    expect_fail(parse_one("l", "INT64", "[1]", "[1e2]"), "element 0 is not an integer", NULL);
    /* 20 digits: too big for int64 even though the last is a zero */
    expect_fail(parse_one("l", "INT64", "[1]", "[10000000000000000000]"), "out of range for INT64", NULL);
    expect_fail(parse_one("l", "INT64", "[1]", "[-9223372036854775809]"), "out of range for INT64", NULL);
    ck_assert_int_eq(parse_one("x", "FP32", "[2]", "[10000000000000000000,-0]"), 0);
    ck_assert_float_eq(req.inputs[0].f32[0], 1e19f);
    ck_assert_uint_eq(f2u(req.inputs[0].f32[1]), 0);   /* "-0" is the integer 0, as in Python */
    ts_oip_request_free(&req);
    expect_fail(parse_one("l", "INT32", "[1]", "[1.0]"), "element 0 is not an integer", NULL);
    expect_fail(parse_one("l", "INT32", "[1]", "[false]"), "element 0 is false, not a number", NULL);
    /* integers for a float input are fine, also beyond 2^53 */
    ck_assert_int_eq(parse_one("x", "FP32", "[2]", "[9007199254740993,-7]"), 0);
    ck_assert_float_eq(req.inputs[0].f32[0], 9007199254740992.0f);
    ck_assert_float_eq(req.inputs[0].f32[1], -7.0f);
    ts_oip_request_free(&req);
}
END_TEST

START_TEST(test_refused_datatypes)
{
    static const char *dts[] = { "BOOL", "FP16", "BF16", "BYTES" };
    for (size_t i = 0; i < 4; i++) {
        expect_fail(parse_one("x", dts[i], "[1]", "[1]"), "input \"x\": datatype ", dts[i], "is not supported", NULL);
    }
    expect_fail(parse_one("x", "fp32", "[1]", "[1]"), "unknown datatype \"fp32\"", NULL);
    expect_fail(parse_one("x", "A_VERY_LONG_DATATYPE", "[1]", "[1]"), "\"datatype\" is longer than", NULL);
    expect_fail(parse_json("{\"inputs\":[{\"name\":\"x\",\"shape\":[1],\"data\":[1]}]}"),
                "\"datatype\" is missing", NULL);
    expect_fail(parse_json("{\"inputs\":[{\"name\":\"x\",\"shape\":[1],\"datatype\":7,\"data\":[1]}]}"),
                "\"datatype\" must be a string", NULL);
}
END_TEST

START_TEST(test_request_structure)
{
    expect_fail(parse_json("[1,2]"), "request body must be a JSON object", NULL);
    expect_fail(parse_json("{}"), "\"inputs\" is missing or empty", NULL);
    expect_fail(parse_json("{\"inputs\":[]}"), "\"inputs\" is missing or empty", NULL);
    expect_fail(parse_json("{\"inputs\":{}}"), "\"inputs\" must be an array", NULL);
    expect_fail(parse_json("{\"inputs\":[5]}"), "inputs[0] must be an object", NULL);
    expect_fail(parse_json("{\"inputs\":[{\"shape\":[1],\"datatype\":\"FP32\",\"data\":[1]}]}"),
                "inputs[0]: \"name\" is missing", NULL);
    expect_fail(parse_json("{\"inputs\":[{\"name\":\"x\",\"datatype\":\"FP32\",\"data\":[1]}]}"),
                "input \"x\": \"shape\" is missing", NULL);
    expect_fail(parse_json("{\"inputs\":[{\"name\":\"x\",\"shape\":[1],\"datatype\":\"FP32\"}]}"),
                "input \"x\": has no data", NULL);
    expect_fail(parse_json("{\"id\":5,\"inputs\":[{\"name\":\"x\",\"shape\":[1],\"datatype\":\"FP32\",\"data\":[1]}]}"),
                "\"id\" must be a string", NULL);
    expect_fail(parse_json("{\"id\":\"a\\u0000b\",\"inputs\":[{\"name\":\"x\",\"shape\":[1],\"datatype\":\"FP32\",\"data\":[1]}]}"),
                "\"id\" contains U+0000", NULL);
    expect_fail(parse_one("x", "FP32", "[]", "[1]"),
                "shape has 0 dimensions", NULL);
    expect_fail(parse_one("x", "FP32", "[1,1,1,1,1,1,1,1,1]", "[1]"),
                "shape has 9 dimensions", NULL);
    expect_fail(parse_json("{\"inputs\":[{\"name\":\"x\",\"shape\":[-1],\"datatype\":\"FP32\",\"data\":[1]}]}"),
                "shape[0] must be a non-negative integer", NULL);
    expect_fail(parse_json("{\"inputs\":[{\"name\":\"x\",\"shape\":[1.0],\"datatype\":\"FP32\",\"data\":[1]}]}"),
                "shape[0] must be a non-negative integer", NULL);
    expect_fail(parse_json("{\"inputs\":[{\"name\":\"x\",\"shape\":[1,[2]],\"datatype\":\"FP32\",\"data\":[1]}]}"),
                "shape[1] must be a non-negative integer", NULL);
    /* names: the longest that fits, one too long, escapes decoded */
    char body[512];
    char name[TS_OIP_NAME_MAX + 1];
    memset(name, 'n', TS_OIP_NAME_MAX - 1);
    name[TS_OIP_NAME_MAX - 1] = 0;
    snprintf(body, sizeof body, "{\"inputs\":[{\"name\":\"%s\",\"shape\":[1],\"datatype\":\"FP32\",\"data\":[1]}]}", name);
    ck_assert_int_eq(parse_json(body), 0);
    ck_assert_str_eq(req.inputs[0].name, name);
    ts_oip_request_free(&req);
    snprintf(body, sizeof body, "{\"inputs\":[{\"name\":\"%sn\",\"shape\":[1],\"datatype\":\"FP32\",\"data\":[1]}]}", name);
    expect_fail(parse_json(body), "\"name\" is longer than 63 bytes", NULL);
    ck_assert_int_eq(parse_json("{\"\\u0069nputs\":[{\"name\":\"in\\u00e9\\\"\",\"shape\":[1],"
                                "\"datatype\":\"FP32\",\"data\":[1]}],\"extra\":{\"ignored\":[1,{}]}}"), 0);
    ck_assert_str_eq(req.inputs[0].name, "in\xc3\xa9\"");
    ts_oip_request_free(&req);
    /* more inputs than the struct holds */
    strcpy(body, "{\"inputs\":[");
    for (int k = 0; k <= TS_OIP_MAX_TENSORS; k++)
        sprintf(body + strlen(body), "%s{\"name\":\"i%d\",\"shape\":[1],\"datatype\":\"FP32\",\"data\":[1]}", k ? "," : "", k);
    strcat(body, "]}");
    expect_fail(parse_json(body), "9 inputs (at most 8)", NULL);
}
END_TEST

/* Request-level parameters.rows (feedback by id): non-negative integers, in order. */
START_TEST(test_rows_parameter)
{
    const char *in = "\"inputs\":[{\"name\":\"label\",\"shape\":[2],\"datatype\":\"INT64\",\"data\":[1,0]}]";
    char body[512];
    snprintf(body, sizeof body, "{\"id\":\"q\",%s,\"parameters\":{\"rows\":[3,0,7]}}", in);
    ck_assert_int_eq(parse_json(body), 0);
    ck_assert_int_eq(req.n_rows, 3);
    ck_assert(req.rows[0] == 3 && req.rows[1] == 0 && req.rows[2] == 7);
    ts_oip_request_free(&req);
    ck_assert_ptr_null(req.rows);
    snprintf(body, sizeof body, "{%s,\"parameters\":{\"rows\":[]}}", in);
    ck_assert_int_eq(parse_json(body), 0);          /* empty: the engine says what is wrong */
    ck_assert_ptr_nonnull(req.rows);
    ck_assert_int_eq(req.n_rows, 0);
    ts_oip_request_free(&req);
    snprintf(body, sizeof body, "{%s,\"parameters\":{\"binary_data_output\":true}}", in);
    ck_assert_int_eq(parse_json(body), 0);
    ck_assert_ptr_null(req.rows);                    /* absent */
    ts_oip_request_free(&req);
    const char *bad[] = {"[1,-2]", "[1.5]", "[\"0\"]", "[[0]]", "[0,{}]", "3", "{}", "[18446744073709551616]"};
    for (size_t k = 0; k < sizeof bad / sizeof bad[0]; k++) {
        snprintf(body, sizeof body, "{%s,\"parameters\":{\"rows\":%s}}", in, bad[k]);
        expect_fail(parse_json(body), "parameters", "rows", NULL);
    }
    snprintf(body, sizeof body, "{%s,\"parameters\":{\"rows\":[0],\"rows\":[1]}}", in);
    expect_fail(parse_json(body), "appears twice", NULL);
}
END_TEST

START_TEST(test_duplicates)
{
    expect_fail(parse_json("{\"inputs\":[{\"name\":\"x\",\"shape\":[1],\"datatype\":\"FP32\",\"data\":[1]},"
                           "{\"name\":\"x\",\"shape\":[1],\"datatype\":\"FP32\",\"data\":[2]}]}"),
                "input \"x\" is given twice", NULL);
    expect_fail(parse_json("{\"inputs\":[{\"name\":\"x\",\"shape\":[1],\"datatype\":\"FP32\",\"data\":[1]}],"
                           "\"inputs\":[]}"), "\"inputs\" appears twice", NULL);
    expect_fail(parse_json("{\"inputs\":[{\"name\":\"x\",\"shape\":[1],\"shape\":[1],\"datatype\":\"FP32\",\"data\":[1]}]}"),
                "\"shape\" appears twice", NULL);
    expect_fail(parse_one("x", "FP32", "[1]", "[1],\"data\":[2]"),
                "\"data\" appears twice", NULL);
    expect_fail(parse_json("{\"inputs\":[{\"name\":\"x\",\"shape\":[1],\"datatype\":\"FP32\",\"data\":[1]}],"
                           "\"outputs\":[{\"name\":\"o\"},{\"name\":\"o\"}]}"), "output \"o\" is requested twice", NULL);
    /* two inputs with different names are fine, in order */
    ck_assert_int_eq(parse_json("{\"inputs\":[{\"name\":\"input\",\"shape\":[1,2],\"datatype\":\"FP32\",\"data\":[1,2]},"
                                "{\"name\":\"label\",\"shape\":[1],\"datatype\":\"INT32\",\"data\":[1]}]}"), 0);
    ck_assert_int_eq(req.n_inputs, 2);
    ck_assert_int_eq(ts_oip_find_input(&req, "label")->i64[0], 1);
    ts_oip_request_free(&req);
}
END_TEST

START_TEST(test_outputs_and_binary_flags)
{
    const char *in = "\"inputs\":[{\"name\":\"x\",\"shape\":[1],\"datatype\":\"FP32\",\"data\":[1]}]";
    char body[512];
    snprintf(body, sizeof body, "{%s,\"outputs\":[{\"name\":\"output\",\"parameters\":{\"binary_data\":true}},"
             "{\"name\":\"o2\"},{\"name\":\"o3\",\"parameters\":{\"binary_data\":false,\"classification\":2}}]}", in);
    ck_assert_int_eq(parse_json(body), 0);
    ck_assert_int_eq(req.n_outputs, 3);
    ck_assert_str_eq(req.outputs[0].name, "output");
    ck_assert_int_eq(req.outputs[0].binary, 1);
    ck_assert_int_eq(req.outputs[1].binary, 0);
    ck_assert_int_eq(req.outputs[2].binary, 0);
    ck_assert_int_eq(ts_oip_output_binary(&req, "output"), 1);
    ck_assert_int_eq(ts_oip_output_binary(&req, "unlisted"), 0);
    ts_oip_request_free(&req);
    /* request-wide binary_data_output; an output's own flag overrides it */
    snprintf(body, sizeof body, "{\"parameters\":{\"binary_data_output\":true,\"priority\":1},%s,"
             "\"outputs\":[{\"name\":\"a\"},{\"name\":\"b\",\"parameters\":{\"binary_data\":false}}]}", in);
    ck_assert_int_eq(parse_json(body), 0);
    ck_assert_int_eq(req.binary_data_output, 1);
    ck_assert_int_eq(req.outputs[0].binary, 1);
    ck_assert_int_eq(req.outputs[1].binary, 0);
    ck_assert_int_eq(ts_oip_output_binary(&req, "unlisted"), 1);
    ts_oip_request_free(&req);
    snprintf(body, sizeof body, "{%s,\"outputs\":[{\"name\":\"a\",\"parameters\":{\"binary_data\":1}}]}", in);
    expect_fail(parse_json(body), "outputs[0]: parameters.binary_data must be true or false", NULL);
    snprintf(body, sizeof body, "{\"parameters\":{\"binary_data_output\":\"yes\"},%s}", in);
    expect_fail(parse_json(body), "parameters.binary_data_output must be true or false", NULL);
    snprintf(body, sizeof body, "{%s,\"outputs\":[{}]}", in);
    expect_fail(parse_json(body), "outputs[0]: \"name\" is missing", NULL);
    snprintf(body, sizeof body, "{%s,\"outputs\":{}}", in);
    expect_fail(parse_json(body), "\"outputs\" must be an array", NULL);
    snprintf(body, sizeof body, "{%s,\"parameters\":[]}", in);
    expect_fail(parse_json(body), "\"parameters\" must be an object", NULL);
}
END_TEST

/* ── binary requests ── */

static const char *BIN_FP32 = "{\"inputs\":[{\"name\":\"input\",\"shape\":[2,2],\"datatype\":\"FP32\","
                              "\"parameters\":{\"binary_data_size\":16}}]}";

START_TEST(test_binary_fp32)
{
    const float v[4] = { 1.5f, -2.0f, 1e-40f, FLT_MAX };
    ck_assert_int_eq(parse_bin(BIN_FP32, v, sizeof v), 0);
    ck_assert_mem_eq(req.inputs[0].f32, v, sizeof v);
    ts_oip_request_free(&req);
    /* JSON and binary inputs mixed; binary consumed in input order */
    const char *mixed = "{\"inputs\":[{\"name\":\"a\",\"shape\":[2],\"datatype\":\"FP32\",\"parameters\":{\"binary_data_size\":8}},"
                        "{\"name\":\"b\",\"shape\":[1],\"datatype\":\"FP32\",\"data\":[7]},"
                        "{\"name\":\"c\",\"shape\":[1],\"datatype\":\"INT64\",\"parameters\":{\"binary_data_size\":8}}]}";
    uint8_t bin[16];
    const float a[2] = { 3.0f, 4.0f };
    const int64_t cv = -5;
    memcpy(bin, a, 8);
    memcpy(bin + 8, &cv, 8);
    ck_assert_int_eq(parse_bin(mixed, bin, 16), 0);
    ck_assert_float_eq(ts_oip_find_input(&req, "a")->f32[1], 4.0f);
    ck_assert_float_eq(ts_oip_find_input(&req, "b")->f32[0], 7.0f);
    ck_assert_int_eq(ts_oip_find_input(&req, "c")->i64[0], -5);
    ts_oip_request_free(&req);
}
END_TEST

/* Each binary datatype, little-endian, sign-extended where signed. */
START_TEST(test_binary_datatypes)
{
    static const struct { const char *dt; int size; uint8_t bytes[16]; int64_t i0, i1; double f0, f1; } c[] = {
        { "INT8", 1, { 0x80, 0x7f }, -128, 127, 0, 0 },
        { "UINT8", 1, { 0xff, 0x01 }, 255, 1, 0, 0 },
        { "INT16", 2, { 0x00, 0x80, 0x34, 0x12 }, -32768, 0x1234, 0, 0 },
        { "UINT16", 2, { 0xff, 0xff, 0x00, 0x01 }, 65535, 256, 0, 0 },
        { "INT32", 4, { 0xfe, 0xff, 0xff, 0xff, 1, 0, 0, 0 }, -2, 1, 0, 0 },
        { "UINT32", 4, { 0xff, 0xff, 0xff, 0xff, 2, 0, 0, 0 }, 4294967295, 2, 0, 0 },
        { "INT64", 8, { 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 9 }, -1, 9, 0, 0 },
        { "UINT64", 8, { 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f, 3 }, INT64_MAX, 3, 0, 0 },
        { "FP64", 8, { 0, 0, 0, 0, 0, 0, 0xf0, 0x3f, 0x9a, 0x99, 0x99, 0x99, 0x99, 0x99, 0xb9, 0xbf }, 0, 0, 1.0, -0.1 },
        { "FP32", 4, { 0, 0, 0x80, 0xbf, 0, 0, 0, 0x80 }, 0, 0, -1.0, -0.0 },
    };
    char body[256];
    for (size_t i = 0; i < sizeof c / sizeof c[0]; i++) {
        snprintf(body, sizeof body, "{\"inputs\":[{\"name\":\"t\",\"shape\":[2],\"datatype\":\"%s\","
                 "\"parameters\":{\"binary_data_size\":%d}}]}", c[i].dt, 2 * c[i].size);
        ck_assert_msg(parse_bin(body, c[i].bytes, (size_t)(2 * c[i].size)) == 0, "%s: %s", c[i].dt, err);
        const ts_oip_tensor *x = &req.inputs[0];
        if (c[i].dt[0] == 'F') {
            ck_assert_int_eq(x->type, TS_OIP_FP32);
            ck_assert_uint_eq(f2u(x->f32[0]), f2u((float)c[i].f0));
            ck_assert_uint_eq(f2u(x->f32[1]), f2u((float)c[i].f1));
        } else {
            ck_assert_int_eq(x->type, TS_OIP_INT64);
            ck_assert_int_eq(x->i64[0], c[i].i0);
            ck_assert_int_eq(x->i64[1], c[i].i1);
        }
        ts_oip_request_free(&req);
    }
    /* UINT64 above int64 */
    uint64_t big[1] = { UINT64_C(1) << 63 };
    expect_fail(parse_bin("{\"inputs\":[{\"name\":\"t\",\"shape\":[1],\"datatype\":\"UINT64\","
                          "\"parameters\":{\"binary_data_size\":8}}]}", big, 8), "out of range for int64", NULL);
    /* FP16 / BOOL / BYTES binary are refused by datatype, before the bytes */
    expect_fail(parse_bin("{\"inputs\":[{\"name\":\"t\",\"shape\":[1],\"datatype\":\"FP16\","
                          "\"parameters\":{\"binary_data_size\":2}}]}", "\0\0", 2), "FP16 is not supported", NULL);
}
END_TEST

START_TEST(test_binary_nonfinite)
{
    float v[4] = { 1, 2, 3, 4 };
    v[2] = NAN;
    expect_fail(parse_bin(BIN_FP32, v, sizeof v), "input \"input\": element 2 is not finite", NULL);
    v[2] = 3;
    v[3] = -INFINITY;
    expect_fail(parse_bin(BIN_FP32, v, sizeof v), "element 3 is not finite", NULL);
    const double d[2] = { 1.0, 1e39 };
    expect_fail(parse_bin("{\"inputs\":[{\"name\":\"d\",\"shape\":[2],\"datatype\":\"FP64\","
                          "\"parameters\":{\"binary_data_size\":16}}]}", d, 16), "element 1 is not finite or out of float32 range", NULL);
    const double e[1] = { NAN };
    expect_fail(parse_bin("{\"inputs\":[{\"name\":\"d\",\"shape\":[1],\"datatype\":\"FP64\","
                          "\"parameters\":{\"binary_data_size\":8}}]}", e, 8), "element 0 is not finite", NULL);
}
END_TEST

START_TEST(test_binary_sizes_that_lie)
{
    float v[8] = { 0 };
    /* size too small / too large for the shape */
    expect_fail(parse_bin("{\"inputs\":[{\"name\":\"input\",\"shape\":[2,2],\"datatype\":\"FP32\","
                          "\"parameters\":{\"binary_data_size\":12}}]}", v, 12),
                "input \"input\": binary_data_size is 12 but FP32 [2,2] needs 16 bytes", NULL);
    expect_fail(parse_bin("{\"inputs\":[{\"name\":\"input\",\"shape\":[2,2],\"datatype\":\"FP32\","
                          "\"parameters\":{\"binary_data_size\":20}}]}", v, 20), "binary_data_size is 20", NULL);
    /* the size is right but the body is short */
    expect_fail(parse_bin(BIN_FP32, v, 15), "only 15 bytes of binary data remain", NULL);
    expect_fail(parse_bin(BIN_FP32, v, 0), "only 0 bytes of binary data remain", NULL);
    /* leftover bytes */
    expect_fail(parse_bin(BIN_FP32, v, 17), "1 bytes of binary data after the JSON are not claimed", NULL);
    expect_fail(parse_bin("{\"inputs\":[{\"name\":\"x\",\"shape\":[1],\"datatype\":\"FP32\",\"data\":[1]}]}", v, 4),
                "4 bytes of binary data after the JSON are not claimed", NULL);
    /* sizes that overflow or are not sizes */
    expect_fail(parse_bin("{\"inputs\":[{\"name\":\"input\",\"shape\":[2,2],\"datatype\":\"FP32\","
                          "\"parameters\":{\"binary_data_size\":9223372036854775807}}]}", v, 16), "binary_data_size is 9223372036854775807", NULL);
    expect_fail(parse_bin("{\"inputs\":[{\"name\":\"input\",\"shape\":[2,2],\"datatype\":\"FP32\","
                          "\"parameters\":{\"binary_data_size\":18446744073709551616}}]}", v, 16), "must be a non-negative integer", NULL);
    expect_fail(parse_bin("{\"inputs\":[{\"name\":\"input\",\"shape\":[2,2],\"datatype\":\"FP32\","
                          "\"parameters\":{\"binary_data_size\":-16}}]}", v, 16), "must be a non-negative integer", NULL);
    expect_fail(parse_bin("{\"inputs\":[{\"name\":\"input\",\"shape\":[2,2],\"datatype\":\"FP32\","
                          "\"parameters\":{\"binary_data_size\":16.0}}]}", v, 16), "must be a non-negative integer", NULL);
    /* data and binary both, binary without the header */
    expect_fail(parse_bin("{\"inputs\":[{\"name\":\"input\",\"shape\":[1],\"datatype\":\"FP32\",\"data\":[1],"
                          "\"parameters\":{\"binary_data_size\":4}}]}", v, 4), "has both \"data\" and parameters.binary_data_size", NULL);
    expect_fail(parse_json(BIN_FP32), "binary_data_size needs the Inference-Header-Content-Length header", NULL);
    /* two binary inputs where the first claims the second's bytes */
    expect_fail(parse_bin("{\"inputs\":[{\"name\":\"a\",\"shape\":[1],\"datatype\":\"FP32\",\"parameters\":{\"binary_data_size\":4}},"
                          "{\"name\":\"b\",\"shape\":[1],\"datatype\":\"FP32\",\"parameters\":{\"binary_data_size\":4}}]}", v, 4),
                "input \"b\": binary_data_size 4 but only 0 bytes", NULL);
}
END_TEST

START_TEST(test_json_len_header)
{
    const char *j = "{\"inputs\":[{\"name\":\"x\",\"shape\":[1],\"datatype\":\"FP32\",\"data\":[1]}]}";
    size_t n = strlen(j);
    ck_assert_int_eq(ts_oip_parse_request((const uint8_t *)j, n, (int64_t)n, &lim, &req, err, sizeof err), 0);
    ts_oip_request_free(&req);
    expect_fail(ts_oip_parse_request((const uint8_t *)j, n, (int64_t)n + 1, &lim, &req, err, sizeof err),
                "is larger than the body", NULL);
    expect_fail(ts_oip_parse_request((const uint8_t *)j, n, INT64_MAX, &lim, &req, err, sizeof err),
                "is larger than the body", NULL);
    expect_fail(ts_oip_parse_request((const uint8_t *)j, n, 0, &lim, &req, err, sizeof err),
                "Inference-Header-Content-Length must be a positive JSON length, got 0", NULL);
    expect_fail(ts_oip_parse_request((const uint8_t *)j, n, -5, &lim, &req, err, sizeof err), "got -5", NULL);
    /* a JSON length that cuts the JSON */
    expect_fail(ts_oip_parse_request((const uint8_t *)j, n, (int64_t)n - 1, &lim, &req, err, sizeof err),
                "invalid JSON", NULL);
    expect_fail(ts_oip_parse_request((const uint8_t *)"", 0, -1, &lim, &req, err, sizeof err), "body is empty", NULL);
    expect_fail(ts_oip_parse_request(NULL, 0, -1, &lim, &req, err, sizeof err), "body is empty", NULL);
    /* lim NULL: defaults */
    ck_assert_int_eq(ts_oip_parse_request((const uint8_t *)j, n, -1, NULL, &req, err, sizeof err), 0);
    ts_oip_request_free(&req);
}
END_TEST

/* ── limits ── */

START_TEST(test_huge_shapes)
{
    /* Refused from the shape alone: nothing of the declared size is allocated (ASan would
     * fail a malloc of this size). */
    expect_fail(parse_json("{\"inputs\":[{\"name\":\"x\",\"shape\":[1000000000000,1000000000000],"
                           "\"datatype\":\"FP32\",\"data\":[1]}]}"), "input \"x\": shape [1000000000000,1000000000000] has more than 1048576 elements", NULL);
    expect_fail(parse_json("{\"inputs\":[{\"name\":\"x\",\"shape\":[4611686018427387904,4,4],"
                           "\"datatype\":\"FP32\",\"data\":[1]}]}"), "has more than", NULL);
    expect_fail(parse_one("x", "FP32", "[1024,1025]", "[1]"),
                "has more than 1048576 elements", NULL);
    expect_fail(parse_one("x", "FP32", "[9223372036854775808]", "[1]"),
                "shape[0] must be a non-negative integer", NULL);
    /* at the limit, the declared size is allowed but the data must be there */
    expect_fail(parse_one("x", "FP32", "[1024,1024]", "[1]"),
                "needs 1048576 values, got 1", NULL);
    float v[1] = { 0 };
    expect_fail(parse_bin("{\"inputs\":[{\"name\":\"x\",\"shape\":[1024,1024],\"datatype\":\"FP64\","
                          "\"parameters\":{\"binary_data_size\":8388608}}]}", v, 4), "only 4 bytes", NULL);
    /* a zero dimension makes the count 0 however big the others */
    expect_fail(parse_one("x", "FP32", "[0,9223372036854775807]", "[1]"),
                "needs 0 values, got 1", NULL);
}
END_TEST

START_TEST(test_depth)
{
    /* depth bombs: refused without recursion, in the data or anywhere else */
    size_t n = 200000;
    char *bomb = malloc(n + 64);
    strcpy(bomb, "{\"inputs\":");
    size_t o = strlen(bomb);
    memset(bomb + o, '[', n);
    bomb[o + n] = 0;
    expect_fail(parse_json(bomb), "invalid JSON at byte 25: nested too deeply", NULL);
    for (size_t k = 0; k + 5 < n; k += 5) memcpy(bomb + k, "{\"a\":", 5);
    bomb[n - n % 5] = 0;
    expect_fail(parse_json(bomb), "invalid JSON at byte 80: nested too deeply", NULL);
    free(bomb);
    /* [B,n] nested data is depth 5: allowed at 5, refused at 4 */
    const char *j = "{\"inputs\":[{\"name\":\"x\",\"shape\":[1,2],\"datatype\":\"FP32\",\"data\":[[1,2]]}]}";
    ts_oip_limits l5 = { .max_elements = 10, .max_depth = 5 }, l4 = { .max_elements = 10, .max_depth = 4 };
    ck_assert_int_eq(ts_oip_parse_request((const uint8_t *)j, strlen(j), -1, &l5, &req, err, sizeof err), 0);
    ts_oip_request_free(&req);
    expect_fail(ts_oip_parse_request((const uint8_t *)j, strlen(j), -1, &l4, &req, err, sizeof err),
                "nested too deeply", NULL);
    /* closing and reopening keeps the count right: many siblings at depth 3 */
    char wide[4096] = "{\"inputs\":[{\"name\":\"x\",\"shape\":[1],\"datatype\":\"FP32\",\"data\":[1]}],\"z\":[";
    for (int k = 0; k < 300; k++) strcat(wide, k ? ",[[]]" : "[[]]");
    strcat(wide, "]}");
    ts_oip_limits l4b = { .max_elements = 10, .max_depth = 4 };
    ck_assert_int_eq(ts_oip_parse_request((const uint8_t *)wide, strlen(wide), -1, &l4b, &req, err, sizeof err), 0);
    ts_oip_request_free(&req);
}
END_TEST

START_TEST(test_invalid_json)
{
    static const char *bad[] = {
        "{", "{\"inputs\":[1,]}", "{\"inputs\":[01]}", "{\"a\":1,}", "{\"a\" 1}", "{'a':1}",
        "{\"a\":-}", "{\"a\":1.}", "{\"a\":.5}", "{\"a\":1e}", "{\"a\":+1}", "{\"a\":tru}",
        "{\"a\":\"\\x\"}", "{\"a\":\"\\ud800\"}", "{\"a\":\"\\udc00\"}", "{\"a\":\"\\ud800\\u0041\"}",
        "{\"a\":\"\\u12g4\"}", "{\"a\":\"tab\there\"}", "{\"a\":\"\xff\"}", "{\"a\":\"\xc0\xaf\"}",
        "{\"a\":\"\xed\xa0\x80\"}", "{\"a\":\"\xf4\x90\x80\x80\"}", "{\"a\":\"unterminated}",
        "{} {}", "{}x", "\xef\xbb\xbf{}", "{\"a\":[1 2]}", "{\"a\":{\"b\"}}", "{1:2}", " ",
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        int r = parse_json(bad[i]);
        ck_assert_msg(r == -1 && strstr(err, "invalid JSON at byte"), "accepted %s (%s)", bad[i], err);
        ck_assert_int_eq(req.n_inputs, 0);
    }
    /* valid JSON with everything in it: only the OIP fields matter */
    ck_assert_int_eq(parse_json(" \t\r\n{\"x\":[true,false,null,\"\\\"\\\\\\/\\b\\f\\n\\r\\t\\ud83d\\ude00\","
                                "-0,0.5e-3,1E+2,{}],\"inputs\" : [ {\"name\":\"x\" , \"shape\":[ 1 ],"
                                "\"datatype\":\"FP32\",\"data\":[ -1.25e0 ] } ] } \n"), 0);
    ck_assert_float_eq(req.inputs[0].f32[0], -1.25f);
    ts_oip_request_free(&req);
}
END_TEST

/* ── json_lite numbers ── */

/* Our reader against strtod-then-cast on random decimal strings, including the 17-digit
 * forms Python writes for float32 values and decimals right at float ties. */
START_TEST(test_float_reader_matches_strtod)
{
    srand(7);
    char s[64];
    for (int it = 0; it < 300000; it++) {
        int kind = it % 4;
        if (kind == 0) {          /* random digits, point, exponent */
            int nd = 1 + rand() % 22, pt = rand() % (nd + 1);
            size_t o = 0;
            if (rand() & 1) s[o++] = '-';
            for (int k = 0; k < nd; k++) {
                if (k == pt && k) s[o++] = '.';
                s[o++] = (char)('0' + (k == 0 ? 1 + rand() % 9 : rand() % 10));
            }
            if (rand() & 1) o += (size_t)sprintf(s + o, "e%d", rand() % 90 - 50);
            s[o] = 0;
        } else if (kind == 1) {   /* Python repr of a float32 value */
            uint32_t u = (uint32_t)rand() << 1 ^ (uint32_t)rand();
            float f;
            memcpy(&f, &u, 4);
            if (!isfinite(f)) continue;
            sprintf(s, "%.17g", (double)f);
        } else if (kind == 2) {   /* the exact midpoint between two floats, and a hair off */
            uint32_t u = ((uint32_t)rand() << 1 ^ (uint32_t)rand()) & 0x7f7fffff;
            float f;
            memcpy(&f, &u, 4);
            double mid = ((double)f + (double)nextafterf(f, INFINITY)) / 2;
            sprintf(s, "%.*g", 17 + rand() % 8, mid);
        } else {                  /* %.9g of a float */
            uint32_t u = (uint32_t)rand() << 1 ^ (uint32_t)rand();
            float f;
            memcpy(&f, &u, 4);
            if (!isfinite(f)) continue;
            sprintf(s, "%.9g", (double)f);
        }
        float got, want = ts_json_double_to_float(strtod(s, NULL));
        ck_assert_int_eq(ts_json_parse_float(s, strlen(s), &got), 0);
        ck_assert_msg(f2u(got) == f2u(want), "%s: got %a want %a", s, (double)got, (double)want);
    }
    float g;
    ck_assert_int_eq(ts_json_parse_float("1e", 2, &g), -1);
    ck_assert_int_eq(ts_json_parse_float("1 ", 2, &g), -1);
    ck_assert_int_eq(ts_json_parse_float("1e99999999999999999999", 22, &g), 0);
    ck_assert(isinf(g));
    ck_assert_int_eq(ts_json_parse_float("-1e-99999999999", 15, &g), 0);
    ck_assert(g == 0 && signbit(g));
}
END_TEST

START_TEST(test_float_writer)
{
    static const struct { float f; const char *s; } known[] = {
        { 0.1f, "0.1" }, { 1.0f, "1.0" }, { -2.5f, "-2.5" }, { 0.0f, "0.0" }, { -0.0f, "-0.0" },
        { 1e20f, "1e+20" }, { 1.5e-7f, "1.5e-07" }, { 0.0001f, "0.0001" }, { 123456.0f, "123456.0" },
        { FLT_MAX, "3.4028235e+38" }, { 1e-45f, "1e-45" }, { 16777216.0f, "16777216.0" },
        { 1e16f, "1e+16" }, { 0.3f, "0.3" }, { 100.0f, "100.0" },
    };
    char out[32];
    for (size_t i = 0; i < sizeof known / sizeof known[0]; i++) {
        ts_json_format_float(known[i].f, out);
        ck_assert_str_eq(out, known[i].s);
    }
    /* every written float reads back exactly, with at most 9 digits */
    srand(11);
    for (int it = 0; it < 200000; it++) {
        uint32_t u = (uint32_t)rand() << 1 ^ (uint32_t)rand();
        if (it < 1000) u = (uint32_t)it;          /* subnormals */
        float f;
        memcpy(&f, &u, 4);
        if (!isfinite(f)) continue;
        size_t n = ts_json_format_float(f, out);
        ck_assert_uint_eq(n, strlen(out));
        ck_assert(n < 32);
        float back = ts_json_double_to_float(strtod(out, NULL));
        ck_assert_msg(f2u(back) == f2u(f), "%a written as %s", (double)f, out);
        char dig[32];
        size_t nd = 0;
        for (const char *p = out; *p && *p != 'e'; p++)
            if (*p >= '0' && *p <= '9' && (nd || *p != '0')) dig[nd++] = *p;
        while (nd && dig[nd - 1] == '0') nd--;
        ck_assert_msg(nd <= 9, "%s", out);   /* significant digits */
    }
}
END_TEST

/* ── responses ── */

static float randf(void)
{
    switch (rand() % 5) {
    case 0: return (float)rand() / (float)RAND_MAX * 2 - 1;
    case 1: return (float)(rand() % 100);
    case 2: { uint32_t u = (uint32_t)rand() << 1 ^ (uint32_t)rand(); float f; memcpy(&f, &u, 4);
              return isfinite(f) ? f : 1.0f; }
    case 3: return -0.0f;
    default: return ldexpf(1.0f, rand() % 250 - 140);
    }
}

START_TEST(test_response_json_roundtrip)
{
    srand(3);
    enum { R = 64, C = 10 };
    float data[R * C];
    for (int k = 0; k < R * C; k++) data[k] = randf();
    uint8_t *out;
    size_t outlen;
    int64_t jl;
    ck_assert_int_eq(ts_oip_build_response("m\"1", "3", "req-\n1", "output", data, R, C, 0, &out, &outlen, &jl), 0);
    ck_assert_int_eq(jl, -1);
    ck_assert_uint_eq(strlen((char *)out), outlen);
    json_error_t je;
    json_t *root = json_loadb((const char *)out, outlen, JSON_REJECT_DUPLICATES, &je);
    ck_assert_msg(root != NULL, "response is not JSON: %s", je.text);
    ck_assert_str_eq(json_string_value(json_object_get(root, "model_name")), "m\"1");
    ck_assert_str_eq(json_string_value(json_object_get(root, "model_version")), "3");
    ck_assert_str_eq(json_string_value(json_object_get(root, "id")), "req-\n1");
    json_t *o = json_array_get(json_object_get(root, "outputs"), 0);
    ck_assert_str_eq(json_string_value(json_object_get(o, "name")), "output");
    ck_assert_str_eq(json_string_value(json_object_get(o, "datatype")), "FP32");
    ck_assert_int_eq(json_integer_value(json_array_get(json_object_get(o, "shape"), 0)), R);
    ck_assert_int_eq(json_integer_value(json_array_get(json_object_get(o, "shape"), 1)), C);
    json_t *d = json_object_get(o, "data");
    ck_assert_uint_eq(json_array_size(d), R * C);
    for (int k = 0; k < R * C; k++) {
        json_t *v = json_array_get(d, (size_t)k);
        ck_assert_msg(json_is_real(v), "element %d is not a JSON real", k);   /* "1.0", not "1" */
        ck_assert_uint_eq(f2u((float)json_real_value(v)), f2u(data[k]));
    }
    json_decref(root);
    /* and our own parser reads it back the same, as a request's data */
    free(out);
    /* non-finite values become null, never bare NaN tokens; NULL id/version are left out */
    float bad[3] = { NAN, INFINITY, 1.0f };
    ck_assert_int_eq(ts_oip_build_response("m", NULL, NULL, "output", bad, 1, 3, 0, &out, &outlen, &jl), 0);
    ck_assert_str_eq((char *)out, "{\"model_name\":\"m\",\"outputs\":[{\"name\":\"output\",\"datatype\":\"FP32\","
                                  "\"shape\":[1,3],\"data\":[null,null,1.0]}]}");
    free(out);
    ck_assert_int_eq(ts_oip_build_response("m", "1", NULL, "output", NULL, 0, 4, 0, &out, &outlen, &jl), 0);
    ck_assert(strstr((char *)out, "\"shape\":[0,4],\"data\":[]"));
    free(out);
    ck_assert_int_eq(ts_oip_build_response("m", "1", NULL, "output", data, -1, 4, 0, &out, &outlen, &jl), -1);
    ck_assert_ptr_null(out);
}
END_TEST

START_TEST(test_response_binary)
{
    float data[6] = { 1.0f, -2.0f, NAN, 1e-45f, FLT_MAX, -0.0f };
    uint8_t *out;
    size_t outlen;
    int64_t jl;
    ck_assert_int_eq(ts_oip_build_response("m", "1", "x", "output", data, 2, 3, 1, &out, &outlen, &jl), 0);
    ck_assert_int_gt(jl, 0);
    ck_assert_uint_eq(outlen, (size_t)jl + sizeof data);
    ck_assert_mem_eq(out + jl, data, sizeof data);      /* little-endian host */
    json_error_t je;
    json_t *root = json_loadb((const char *)out, (size_t)jl, 0, &je);
    ck_assert_msg(root != NULL, "JSON part: %s", je.text);
    json_t *o = json_array_get(json_object_get(root, "outputs"), 0);
    ck_assert_ptr_null(json_object_get(o, "data"));
    ck_assert_int_eq(json_integer_value(json_object_get(json_object_get(o, "parameters"), "binary_data_size")), 24);
    ck_assert_int_eq(json_integer_value(json_array_get(json_object_get(o, "shape"), 1)), 3);
    json_decref(root);
    free(out);
}
END_TEST

START_TEST(test_feedback_response)
{
    char *s = ts_oip_build_feedback_response("demo", "1", "abc", 42, 0.25);
    ck_assert_str_eq(s, "{\"model_name\":\"demo\",\"model_version\":\"1\",\"id\":\"abc\",\"step\":42,\"loss\":0.25}");
    free(s);
    s = ts_oip_build_feedback_response("demo", "1", NULL, 7, NAN);
    ck_assert_str_eq(s, "{\"model_name\":\"demo\",\"model_version\":\"1\",\"step\":7}");
    free(s);
    s = ts_oip_build_feedback_response("demo", "1", NULL, 7, INFINITY);
    ck_assert(strstr(s, "\"loss\":null"));
    free(s);
    float lf = 2.3025851f;
    s = ts_oip_build_feedback_response("demo", "1", NULL, 1, (double)lf);
    json_t *root = json_loads(s, 0, NULL);
    ck_assert_ptr_nonnull(root);
    ck_assert_uint_eq(f2u((float)json_real_value(json_object_get(root, "loss"))), f2u(lf));
    json_decref(root);
    free(s);
    s = ts_oip_build_feedback_response("demo", "1", NULL, 1, 0.1);   /* a double, not a float */
    root = json_loads(s, 0, NULL);
    ck_assert(json_real_value(json_object_get(root, "loss")) == 0.1);
    json_decref(root);
    free(s);
}
END_TEST

START_TEST(test_error_json)
{
    char *s = ts_oip_error_json("input \"x\": bad\\path\n\t\x01\x1f end");
    ck_assert_str_eq(s, "{\"error\":\"input \\\"x\\\": bad\\\\path\\n\\t\\u0001\\u001f end\"}");
    json_t *root = json_loads(s, 0, NULL);
    ck_assert_ptr_nonnull(root);
    ck_assert_str_eq(json_string_value(json_object_get(root, "error")), "input \"x\": bad\\path\n\t\x01\x1f end");
    json_decref(root);
    free(s);
    /* valid UTF-8 passes, each invalid byte becomes U+FFFD */
    s = ts_oip_error_json("caf\xc3\xa9 \xff\xfe \xc3 \xed\xa0\x80 \xf0\x9f\x98\x80");
    ck_assert_str_eq(s, "{\"error\":\"caf\xc3\xa9 \\ufffd\\ufffd \\ufffd \\ufffd\\ufffd\\ufffd \xf0\x9f\x98\x80\"}");
    root = json_loads(s, 0, NULL);
    ck_assert_ptr_nonnull(root);
    json_decref(root);
    free(s);
    s = ts_oip_error_json("");
    ck_assert_str_eq(s, "{\"error\":\"\"}");
    free(s);
    s = ts_oip_error_json(NULL);
    ck_assert_str_eq(s, "{\"error\":\"\"}");
    free(s);
}
END_TEST

/* Messages from the parser survive the trip into an error body. */
START_TEST(test_error_json_of_parse_errors)
{
    expect_fail(parse_json("{\"inputs\":[{\"name\":\"\\u0001\xc3\xa9\",\"shape\":[1],\"datatype\":\"FP32\",\"data\":[]}]}"),
                "needs 1 values, got 0", NULL);
    char *s = ts_oip_error_json(err);
    json_t *root = json_loads(s, 0, NULL);
    ck_assert_ptr_nonnull(root);
    ck_assert_str_eq(json_string_value(json_object_get(root, "error")), err);
    json_decref(root);
    free(s);
}
END_TEST

/* ── robustness ── */

/* The seed bodies in tests/data/oip (run from the repository root). */
static const char *const seed_files[] = {
    "tritonclient_json.json", "binary_data_output.json", "feedback_label.json",
    "feedback_target.json", "escapes.json",
};
enum { N_SEED_FILES = sizeof seed_files / sizeof seed_files[0] };

static char *read_seed(const char *name, size_t *len)
{
    char path[256];
    snprintf(path, sizeof path, "tests/data/oip/%s", name);
    return (char *)slurp(path, len);
}

START_TEST(test_seeds)
{
    size_t len;
    char *s = read_seed("tritonclient_json.json", &len);
    ck_assert_int_eq(ts_oip_parse_request((uint8_t *)s, len, -1, &lim, &req, err, sizeof err), 0);
    ck_assert_str_eq(req.id, "42");
    ck_assert_uint_eq(f2u(req.inputs[0].f32[0]), f2u(0.1f));
    ck_assert_uint_eq(f2u(req.inputs[0].f32[7]), f2u(123.456f));
    ck_assert_int_eq(ts_oip_output_binary(&req, "output"), 0);
    ts_oip_request_free(&req);
    free(s);
    s = read_seed("binary_data_output.json", &len);
    ck_assert_int_eq(ts_oip_parse_request((uint8_t *)s, len, (int64_t)len, &lim, &req, err, sizeof err), 0);
    ck_assert_int_eq(ts_oip_output_binary(&req, "output"), 1);
    ck_assert_float_eq(req.inputs[0].f32[2], 3e-5f);
    ts_oip_request_free(&req);
    free(s);
    s = read_seed("escapes.json", &len);
    ck_assert_int_eq(ts_oip_parse_request((uint8_t *)s, len, -1, &lim, &req, err, sizeof err), 0);
    ck_assert_str_eq(req.id, "a\"b\\c\xc3\xa9\xf0\x9f\x98\x80\n");
    ck_assert_str_eq(req.inputs[0].name, "input");
    ck_assert_int_eq(req.inputs[0].i64[0], 255);
    ck_assert_int_eq(req.n_outputs, 0);
    ts_oip_request_free(&req);
    free(s);
    for (int k = 2; k < 4; k++) {
        s = read_seed(seed_files[k], &len);
        ck_assert_msg(ts_oip_parse_request((uint8_t *)s, len, -1, &lim, &req, err, sizeof err) == 0, "%s: %s", seed_files[k], err);
        ck_assert_int_eq(req.n_inputs, 2);
        ts_oip_request_free(&req);
        free(s);
    }
}
END_TEST

/* Random byte mutations of valid bodies (JSON and binary): never a crash or a leak; a
 * success is a consistent request, a failure a cleared one with a message. */
/* One to four random edits: a byte, a JSON-ish character, a deletion, an insertion, or
 * a slice copied elsewhere. jl follows the JSON part's length. */
static void mutate(uint8_t *body, size_t *len, size_t *jl, size_t cap)
{
    int nmut = 1 + rand() % 4;
    for (int m = 0; m < nmut && *len > 1; m++) {
        size_t at = (size_t)rand() % *len;
        switch (rand() % 5) {
        case 0: body[at] = (uint8_t)rand(); break;
        case 1: body[at] = (uint8_t)"[]{},:\"0-e.\\ 9"[rand() % 14]; break;
        case 2:
            memmove(body + at, body + at + 1, *len - at - 1);
            --*len;
            if (at < *jl) --*jl;
            break;
        case 3:
            if (*len + 1 >= cap) break;
            memmove(body + at + 1, body + at, *len - at);
            body[at] = (uint8_t)"19]-"[rand() % 4];
            ++*len;
            if (at < *jl) ++*jl;
            break;
        default: {
            size_t from = (size_t)rand() % *len, n = 1 + (size_t)rand() % 24;
            if (from + n > *len) n = *len - from;
            if (*len + n >= cap) break;
            uint8_t tmp[24];
            memcpy(tmp, body + from, n);
            memmove(body + at + n, body + at, *len - at);
            memcpy(body + at, tmp, n);
            *len += n;
            if (at < *jl) *jl += n;
        }
        }
    }
}

/* Parse; a success must be a consistent request, a failure a cleared one whose message
 * makes valid error JSON. The request is left for the caller to free. */
static void check_parse_invariants(const uint8_t *body, size_t len, int64_t hdr)
{
    err[0] = 0;
    int r = ts_oip_parse_request(body, len, hdr, &lim, &req, err, sizeof err);
    if (r == 0) {
        ck_assert_int_ge(req.n_inputs, 1);
        for (int k = 0; k < req.n_inputs; k++) {
            const ts_oip_tensor *x = &req.inputs[k];
            int64_t cnt = 1;
            for (int d = 0; d < x->ndim; d++) cnt *= x->shape[d];
            ck_assert_int_eq(cnt, x->count);
            ck_assert_int_le(x->count, lim.max_elements);
            ck_assert(x->type == TS_OIP_FP32 ? x->f32 != NULL : x->i64 != NULL);
            for (int64_t e = 0; x->type == TS_OIP_FP32 && e < x->count; e++) ck_assert(isfinite(x->f32[e]));
        }
        return;
    }
    ck_assert_int_eq(r, -1);
    ck_assert(err[0] != 0);
    ck_assert_int_eq(req.n_inputs, 0);
    char *ej = ts_oip_error_json(err);
    json_t *root = json_loads(ej, 0, NULL);
    ck_assert_msg(root != NULL, "error JSON does not parse: %s", ej);
    json_decref(root);
    free(ej);
}

/* Our reader and jansson agree on what is JSON. The differences allowed: jansson refuses
 * integers beyond int64 and reals beyond double, which we keep as floats (the OIP layer
 * judges them per datatype). */
static void check_json_agrees(const uint8_t *text, size_t n)
{
    json_error_t je;
    json_t *j = json_loadb((const char *)text, n, JSON_DECODE_ANY | JSON_ALLOW_NUL, &je);
    ts_jtape t;
    char e2[200];
    int ours = ts_jtape_parse(&t, (const char *)text, n, 1000, e2, sizeof e2);
    if (ours == 0) ts_jtape_free(&t);
    if (j) {
        json_decref(j);
        ck_assert_msg(ours == 0, "we refuse (%s) what jansson accepts: %.*s", e2, (int)n, text);
    } else if (!strstr(je.text, "too big integer") && !strstr(je.text, "real number overflow")) {
        ck_assert_msg(ours < 0, "we accept what jansson refuses (%s): %.*s", je.text, (int)n, text);
    }
}

START_TEST(test_mutation_fuzz)
{
    /* JSON seeds from files; binary seeds here (their JSON length is the header value). */
    static const char *bin_seeds[] = {
        "{\"inputs\":[{\"name\":\"input\",\"shape\":[2,2],\"datatype\":\"FP32\",\"parameters\":{\"binary_data_size\":16}},"
        "{\"name\":\"t\",\"shape\":[2],\"datatype\":\"UINT16\",\"parameters\":{\"binary_data_size\":4}}]}",
        "{\"inputs\": [{\"name\": \"input\", \"shape\": [1, 2], \"datatype\": \"FP64\", \"parameters\": "
        "{\"binary_data_size\": 16}}, {\"name\": \"label\", \"shape\": [1], \"datatype\": \"INT32\", \"data\": [1]}], "
        "\"parameters\": {\"binary_data_output\": true}}",
    };
    enum { NB = sizeof bin_seeds / sizeof bin_seeds[0], NS = N_SEED_FILES + NB };
    char *seeds[NS];
    size_t seed_len[NS], seed_jl[NS];
    for (int k = 0; k < NS; k++) {
        if (k < N_SEED_FILES) {
            seeds[k] = read_seed(seed_files[k], &seed_len[k]);
            seed_jl[k] = 0;
            continue;
        }
        seed_jl[k] = strlen(bin_seeds[k - N_SEED_FILES]);
        seed_len[k] = seed_jl[k] + 20;
        seeds[k] = malloc(seed_len[k]);
        memcpy(seeds[k], bin_seeds[k - N_SEED_FILES], seed_jl[k]);
        for (size_t i = seed_jl[k]; i < seed_len[k]; i++) seeds[k][i] = (char)(i * 7 + 1);
    }
    /* OIP_FUZZ_ITERS=1000000 for a longer run by hand. */
    const char *env = getenv("OIP_FUZZ_ITERS");
    long iters = env ? atol(env) : 8000;
    srand(5);
    uint8_t body[8192];
    int ok = 0;
    for (long it = 0; it < iters; it++) {
        int which = it % NS;
        size_t len = seed_len[which], jl = seed_jl[which];
        memcpy(body, seeds[which], len);
        mutate(body, &len, &jl, sizeof body);
        int64_t hdr = jl ? (int64_t)jl + (rand() % 5 ? 0 : rand() % 3 - 1) : (rand() % 8 ? -1 : (int64_t)len);
        check_parse_invariants(body, len, hdr);
        check_json_agrees(body, hdr >= 0 && (size_t)hdr <= len ? (size_t)hdr : len);
        ok += req.n_inputs > 0;
        ts_oip_request_free(&req);
    }
    ck_assert_int_gt(ok, 100);     /* some mutants still parse: the loop reaches the data paths */
    for (int k = 0; k < NS; k++) free(seeds[k]);
}
END_TEST

/* A 64×1024 request through the JSON and binary paths gives the same floats; prints the
 * time for information only (no test depends on timing). */
START_TEST(test_id_length_bounded)
{
    /* An id up to TS_OIP_ID_MAX bytes is kept whole; one byte more is refused with its length. */
    static char body[TS_OIP_ID_MAX + 256], id[TS_OIP_ID_MAX + 2];
    memset(id, 'x', TS_OIP_ID_MAX);
    id[TS_OIP_ID_MAX] = 0;
    snprintf(body, sizeof body, "{\"id\":\"%s\",\"inputs\":[{\"name\":\"input\",\"shape\":[1],"
             "\"datatype\":\"FP32\",\"data\":[1]}]}", id);
    ck_assert_int_eq(parse_json(body), 0);
    ck_assert_uint_eq(strlen(req.id), TS_OIP_ID_MAX);
    ts_oip_request_free(&req);
    strcat(id, "y");
    snprintf(body, sizeof body, "{\"id\":\"%s\",\"inputs\":[{\"name\":\"input\",\"shape\":[1],"
             "\"datatype\":\"FP32\",\"data\":[1]}]}", id);
    expect_fail(parse_json(body), "\"id\" is 1025 bytes long; at most 1024", NULL);
}
END_TEST

START_TEST(test_large_request)
{
    enum { R = 64, C = 1024 };
    float *v = malloc(sizeof(float) * R * C);
    srand(9);
    for (int k = 0; k < R * C; k++) v[k] = (float)rand() / (float)RAND_MAX * 2 - 1;
    uint8_t *resp;
    size_t rlen;
    int64_t jl;
    /* build a request body out of a response body's data array */
    ck_assert_int_eq(ts_oip_build_response("m", "1", NULL, "input", v, R, C, 0, &resp, &rlen, &jl), 0);
    const char *data = strstr((char *)resp, "\"data\":");
    size_t blen = strlen(data) + 128;
    char *body = malloc(blen);
    snprintf(body, blen, "{\"inputs\":[{\"name\":\"input\",\"shape\":[%d,%d],\"datatype\":\"FP32\",%.*s}]}",
             R, C, (int)(strlen(data) - 3), data);
    ts_oip_limits big = { .max_elements = R * C, .max_depth = 8 };
    ck_assert_msg(ts_oip_parse_request((uint8_t *)body, strlen(body), -1, &big, &req, err, sizeof err) == 0, "%s", err);
    ck_assert_mem_eq(req.inputs[0].f32, v, sizeof(float) * R * C);
    ts_oip_request_free(&req);
    free(body);
    free(resp);
    free(v);
}
END_TEST

/* ---- byte buffer ---- */

START_TEST(buf_builds)
{
    ts_buf b = {0};
    for (int i = 0; i < 1000; i++)
        ts_buf_printf(&b, "%d,", i);
    ts_buf_put(&b, "end", 3);
    size_t len;
    char *s = ts_buf_take(&b, &len);
    ck_assert_ptr_nonnull(s);
    ck_assert_uint_eq(len, strlen(s));
    ck_assert(strncmp(s, "0,1,2,", 6) == 0);
    ck_assert(strcmp(s + len - 7, "999,end") == 0);
    free(s);
    ck_assert_ptr_null(b.p);
    /* printf text longer than the room left (and than the first allocation) is whole */
    char big[1001];
    memset(big, 'x', 1000);
    big[1000] = 0;
    ts_buf_puts(&b, "<");
    ts_buf_printf(&b, "%s>%d", big, 7);
    s = ts_buf_take(&b, &len);
    ck_assert_uint_eq(len, 1003);
    ck_assert(s[0] == '<' && strcmp(s + 1001, ">7") == 0 && strspn(s + 1, "x") == 1000);
    free(s);
    /* an empty buffer hands over "" */
    s = ts_buf_take(&b, &len);
    ck_assert_str_eq(s, "");
    ck_assert_uint_eq(len, 0);
    free(s);
}
END_TEST

/* A failed allocation sticks: later writes do nothing and take gives NULL, once. */
START_TEST(buf_oom_sticks)
{
    ts_buf b = {0};
    ts_buf_puts(&b, "abc");
    ts_buf_reserve(&b, SIZE_MAX - 8);   /* cannot be had: fails like a refused realloc */
    ck_assert(b.oom);
    ts_buf_puts(&b, "def");
    ts_buf_printf(&b, "%d", 42);
    ts_buf_i64(&b, 42);
    ts_json_put_str(&b, "x");
    ts_json_put_float(&b, 1.0f);
    ck_assert_uint_eq(b.len, 3);
    size_t len = 99;
    ck_assert_ptr_null(ts_buf_take(&b, &len));
    ck_assert_uint_eq(len, 99);
    ck_assert_ptr_null(b.p);
    ck_assert(!b.oom);   /* ready again */
    ts_buf_i64(&b, INT64_MIN);
    char *s = ts_buf_take(&b, NULL);
    ck_assert_str_eq(s, "-9223372036854775808");
    free(s);
}
END_TEST

static Suite *oip_suite(void)
{
    Suite *s = suite_create("oip");
    TCase *tc = tcase_create("request");
    tcase_add_test(tc, test_flat_fp32);
    tcase_add_test(tc, test_nested_equals_flat);
    tcase_add_test(tc, test_shape_mismatch);
    tcase_add_test(tc, test_float_conversions);
    tcase_add_test(tc, test_int_conversions);
    tcase_add_test(tc, test_refused_datatypes);
    tcase_add_test(tc, test_request_structure);
    tcase_add_test(tc, test_rows_parameter);
    tcase_add_test(tc, test_duplicates);
    tcase_add_test(tc, test_outputs_and_binary_flags);
    suite_add_tcase(s, tc);
    tc = tcase_create("binary");
    tcase_add_test(tc, test_binary_fp32);
    tcase_add_test(tc, test_binary_datatypes);
    tcase_add_test(tc, test_binary_nonfinite);
    tcase_add_test(tc, test_binary_sizes_that_lie);
    tcase_add_test(tc, test_json_len_header);
    suite_add_tcase(s, tc);
    tc = tcase_create("limits");
    tcase_add_test(tc, test_huge_shapes);
    tcase_add_test(tc, test_depth);
    tcase_add_test(tc, test_invalid_json);
    suite_add_tcase(s, tc);
    tc = tcase_create("numbers");
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, test_float_reader_matches_strtod);
    tcase_add_test(tc, test_float_writer);
    suite_add_tcase(s, tc);
    tc = tcase_create("responses");
    tcase_add_test(tc, test_response_json_roundtrip);
    tcase_add_test(tc, test_response_binary);
    tcase_add_test(tc, test_feedback_response);
    tcase_add_test(tc, test_error_json);
    tcase_add_test(tc, test_error_json_of_parse_errors);
    suite_add_tcase(s, tc);
    tc = tcase_create("robustness");
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, test_seeds);
    tcase_add_test(tc, test_mutation_fuzz);
    tcase_add_test(tc, test_large_request);
    tcase_add_test(tc, test_id_length_bounded);
    suite_add_tcase(s, tc);
    tc = tcase_create("buffer");
    tcase_add_test(tc, buf_builds);
    tcase_add_test(tc, buf_oom_sticks);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    return run_suite(oip_suite());
}
