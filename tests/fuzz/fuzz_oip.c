/* fuzz_oip.c — the OIP request parser (proto/oip.c) on arbitrary bodies: infer and feedback
 * requests, JSON only or with binary tensor data after the JSON.
 *
 * The first 4 bytes steer the call, the rest is the body:
 *   byte 0   bit 0: the Inference-Header-Content-Length header is absent (json_len = -1);
 *            bits 4-7: max_depth (0 = the default)
 *   bytes 1-2 json_len = v mod (len + 4) - 2, so -2 .. len+1: valid and invalid values alike
 *   byte 3   max_elements = 1 + 256·byte (0 gives 1, small limits reach the limit paths)
 * Properties:
 *  - a refusal carries a message and leaves the request cleared;
 *  - an accepted request keeps every promise of oip.h: 1..8 inputs with unique non-empty
 *    names, count = product of the shape ≤ max_elements, data of the announced type, FP32
 *    values finite, outputs' binary flags 0/1;
 *  - the responses built from it are valid JSON (checked with jansson) that echo the id,
 *    and FP32 values survive the JSON response bit for bit;
 *  - the error body for the refusal message is valid JSON holding one string.
 * Seeds: tests/fuzz/corpus/oip/ (requests as the e2e tests and OIP clients send them).
 */
#include <jansson.h>
#include <math.h>
#include <string.h>

#include "proto/json_lite.h"
#include "proto/oip.h"
#include "tests/fuzz/fuzz.h"

static json_t *fuzz_oip_json(const char *text, size_t len)
{
    json_error_t jerr;
    json_t *j = json_loadb(text, len, JSON_ALLOW_NUL, &jerr);
    TS_FUZZ_CHECK(j != NULL, "built JSON is invalid: %s: %.200s", jerr.text, text);
    return j;
}

static void fuzz_oip_check_error_json(const char *msg)
{
    char *body = ts_oip_error_json(msg);
    TS_FUZZ_CHECK(body != NULL, "ts_oip_error_json returned NULL");
    json_t *j = fuzz_oip_json(body, strlen(body));
    TS_FUZZ_CHECK(json_is_string(json_object_get(j, "error")) && json_object_size(j) == 1,
                  "error body is not {\"error\":string}: %s", body);
    json_decref(j);
    free(body);
}

static void fuzz_oip_check_tensor(const ts_oip_request *req, int k, int64_t max_elements)
{
    const ts_oip_tensor *x = &req->inputs[k];
    TS_FUZZ_CHECK(memchr(x->name, '\0', sizeof x->name) && x->name[0], "input %d: bad name", k);
    for (int j = 0; j < k; j++)
        TS_FUZZ_CHECK(strcmp(req->inputs[j].name, x->name) != 0, "input name twice: %s", x->name);
    TS_FUZZ_CHECK(x->ndim >= 1 && x->ndim <= TS_OIP_MAX_DIMS, "input %d: ndim %d", k, x->ndim);
    int64_t count = 1;
    for (int d = 0; d < x->ndim; d++) {
        TS_FUZZ_CHECK(x->shape[d] >= 0, "input %d: negative dimension", k);
        /* the product may exceed the limit only when a later dimension is 0 */
        count = x->shape[d] == 0 || count == 0 ? 0
              : x->shape[d] > INT64_MAX / count ? INT64_MAX : count * x->shape[d];
    }
    TS_FUZZ_CHECK(count == x->count, "input %d: count %lld but the shape gives %lld", k,
                  (long long)x->count, (long long)count);
    TS_FUZZ_CHECK(x->count <= max_elements, "input %d: %lld elements over the limit %lld", k,
                  (long long)x->count, (long long)max_elements);
    if (x->type == TS_OIP_FP32) {
        TS_FUZZ_CHECK(x->f32 && !x->i64, "input %d: FP32 without f32 data", k);
        for (int64_t e = 0; e < x->count; e++)
            TS_FUZZ_CHECK(isfinite(x->f32[e]), "input %d: element %lld not finite", k, (long long)e);
    } else {
        TS_FUZZ_CHECK(x->type == TS_OIP_INT64 && x->i64 && !x->f32, "input %d: bad type/data", k);
    }
}

/* Build both response forms from an FP32 input as [shape[0], rest] and read them back. */
static void fuzz_oip_check_response(const ts_oip_request *req, const ts_oip_tensor *x)
{
    int64_t rows = x->shape[0], cols = rows ? x->count / rows : 0;
    for (int binary = 0; binary <= 1; binary++) {
        uint8_t *out;
        size_t outlen;
        int64_t json_len;
        int rc = ts_oip_build_response(x->name, "1", req->id, "output", x->f32, rows, cols, binary,
                                       &out, &outlen, &json_len);
        TS_FUZZ_CHECK(rc == 0, "build_response failed");
        size_t jl = binary ? (size_t)json_len : outlen;
        TS_FUZZ_CHECK(binary ? json_len > 0 && jl + (size_t)x->count * 4 == outlen : json_len == -1,
                      "response lengths: json %lld, total %zu", (long long)json_len, outlen);
        json_t *j = fuzz_oip_json((const char *)out, jl);
        json_t *id = json_object_get(j, "id");
        TS_FUZZ_CHECK(!req->id || (json_is_string(id) && strlen(req->id) == json_string_length(id)),
                      "response does not echo the id");
        json_t *data = json_object_get(json_array_get(json_object_get(j, "outputs"), 0), "data");
        if (binary) {
            TS_FUZZ_CHECK(memcmp(out + jl, x->f32, (size_t)x->count * 4) == 0, "binary output differs");
        } else {
            TS_FUZZ_CHECK(json_array_size(data) == (size_t)x->count, "output has %zu values, not %lld",
                          json_array_size(data), (long long)x->count);
            for (int64_t e = 0; e < x->count; e++) {
                json_t *v = json_array_get(data, (size_t)e);
                float f = ts_json_double_to_float(json_number_value(v));
                TS_FUZZ_CHECK(memcmp(&f, &x->f32[e], 4) == 0 || (f == 0 && x->f32[e] == 0 && json_is_integer(v)),
                              "output %lld: %.9g printed as a different float %.9g", (long long)e,
                              (double)x->f32[e], (double)f);
            }
        }
        json_decref(j);
        free(out);
    }
}

int ts_fuzz_oip(const uint8_t *data, size_t size)
{
    ts_fuzz_bytes b = {data, size};
    unsigned mode = (unsigned)ts_fuzz_take(&b, 1);
    uint64_t jl = ts_fuzz_take(&b, 2);
    ts_oip_limits lim = {.max_elements = 1 + 256 * (int64_t)ts_fuzz_take(&b, 1),
                         .max_depth = (int)(mode >> 4)};
    int64_t json_len = mode & 1 ? -1 : (int64_t)(jl % (b.n + 4)) - 2;
    /* The body in its own allocation, so ASan sees any read past its end. */
    uint8_t *body = calloc(1, b.n ? b.n : 1);
    memcpy(body, b.p, b.n);
    ts_oip_request req;
    char err[256] = "";
    int rc = ts_oip_parse_request(body, b.n, json_len, &lim, &req, err, sizeof err);
    if (rc != 0) {
        TS_FUZZ_CHECK(rc == -1 && err[0], "refused without a message (rc %d)", rc);
        TS_FUZZ_CHECK(req.n_inputs == 0 && !req.id && !req.inputs[0].f32 && !req.inputs[0].i64,
                      "a refused request is not cleared");
        fuzz_oip_check_error_json(err);
        free(body);
        return 0;
    }
    TS_FUZZ_CHECK(req.n_inputs >= 1 && req.n_inputs <= TS_OIP_MAX_TENSORS, "%d inputs", req.n_inputs);
    for (int k = 0; k < req.n_inputs; k++)
        fuzz_oip_check_tensor(&req, k, lim.max_elements);
    TS_FUZZ_CHECK(req.n_outputs >= 0 && req.n_outputs <= TS_OIP_MAX_TENSORS, "%d outputs", req.n_outputs);
    for (int k = 0; k < req.n_outputs; k++) {
        TS_FUZZ_CHECK(req.outputs[k].binary == 0 || req.outputs[k].binary == 1, "output binary flag %d",
                      req.outputs[k].binary);
        TS_FUZZ_CHECK(ts_oip_output_binary(&req, req.outputs[k].name) == req.outputs[k].binary,
                      "output_binary disagrees");
    }
    TS_FUZZ_CHECK(ts_oip_find_input(&req, req.inputs[0].name) == &req.inputs[0], "find_input");
    for (int k = 0; k < req.n_inputs; k++)
        if (req.inputs[k].type == TS_OIP_FP32)
            fuzz_oip_check_response(&req, &req.inputs[k]);
    char *fb = ts_oip_build_feedback_response("m", "1", req.id, 3, req.n_inputs > 1 ? 0.25 : NAN);
    TS_FUZZ_CHECK(fb != NULL, "feedback response NULL");
    json_decref(fuzz_oip_json(fb, strlen(fb)));
    free(fb);
    ts_oip_request_free(&req);
    free(body);
    return 0;
}

TS_FUZZ_ENTRY(ts_fuzz_oip)
