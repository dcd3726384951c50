/* oip.h — Open Inference Protocol (KServe V2 REST) request and response bodies,
 * JSON and the binary tensor data extension.
 *
 * A request body is JSON, optionally followed by binary tensor data: when the HTTP header
 * Inference-Header-Content-Length is present its value is the JSON length, and each input
 * whose "parameters" hold "binary_data_size" takes that many bytes, in input order, from
 * the data that follows. The parser converts every tensor to the type the model needs:
 * FP32 (from FP32/FP64/integer JSON numbers or binary FP32/FP64) or INT64 (labels,
 * from INT32/INT64). Nothing here knows about models; limits bound every size.
 *
 * The JSON reader is proto/json_lite (a flat tape, not jansson): a 64×1024 FP32 body parses
 * in a couple of milliseconds, and nothing is allocated from a declared shape before the
 * body has shown that it holds the data.
 */
#ifndef TS_OIP_H
#define TS_OIP_H

#include <stddef.h>
#include <stdint.h>

#define TS_OIP_MAX_TENSORS 8
#define TS_OIP_NAME_MAX 64
/* Longest request "id" in bytes. Why a bound: the daemon keeps ids (exactly-once records, the
 * feedback window), writes them to its journal and echoes them in every answer; a UUID is 36. */
#define TS_OIP_ID_MAX 1024
#define TS_OIP_MAX_DIMS 8

/* Used when ts_oip_parse_request gets lim == NULL (or a field <= 0). */
#define TS_OIP_DEFAULT_MAX_ELEMENTS (1 << 24)
#define TS_OIP_DEFAULT_MAX_DEPTH 32

typedef enum { TS_OIP_FP32, TS_OIP_INT64 } ts_oip_type;

typedef struct {
    char name[TS_OIP_NAME_MAX];
    char datatype[16];        /* as sent: "FP32", "FP64", "INT32", "INT64", ... */
    int ndim;                 /* 1..TS_OIP_MAX_DIMS */
    int64_t shape[TS_OIP_MAX_DIMS];
    int64_t count;            /* product of shape */
    ts_oip_type type;         /* what data holds after conversion */
    float *f32;               /* [count] when type == TS_OIP_FP32 (malloc'd) */
    int64_t *i64;             /* [count] when type == TS_OIP_INT64 (malloc'd) */
} ts_oip_tensor;

typedef struct {
    char name[TS_OIP_NAME_MAX];
    int binary;               /* parameters.binary_data; when absent, the request's
                                 binary_data_output (the spec's override rule) */
} ts_oip_output_req;

typedef struct {
    char *id;                 /* malloc'd copy of "id", or NULL */
    int n_inputs;
    ts_oip_tensor inputs[TS_OIP_MAX_TENSORS];
    int n_outputs;            /* requested outputs; 0 = all, as JSON */
    ts_oip_output_req outputs[TS_OIP_MAX_TENSORS];
    int binary_data_output;   /* request-level parameters.binary_data_output */
    int64_t *rows;            /* request-level parameters.rows (feedback by id: which rows of
                                 the stored inference, in order), malloc'd; NULL when absent */
    int64_t n_rows;
} ts_oip_request;

typedef struct {
    int64_t max_elements;     /* per tensor */
    int max_depth;            /* JSON nesting: arrays and objects, the root object is 1;
                                 a [B,n] request with nested data needs 5 */
} ts_oip_limits;

/* Parse body[len]. json_len is the Inference-Header-Content-Length value, or -1 when the
 * header is absent (the whole body is JSON); 0, other negatives and values beyond len are
 * refused. The declared datatype decides the conversion:
 *   FP32, FP64                 → TS_OIP_FP32 (JSON integers or reals; as Python/numpy do,
 *                                float(double(text))); NaN, ±inf and values beyond the
 *                                float32 range are refused;
 *   INT8..INT64, UINT8..UINT64 → TS_OIP_INT64 (JSON integers only, in the datatype's range;
 *                                UINT64 above INT64_MAX refused) -- the caller converts an
 *                                integer `input` to float when it needs one;
 *   BOOL, FP16, BF16, BYTES    → refused. JSON booleans are never numbers.
 * "data" is flat (count values) or nested exactly as the shape; shape has 1..8
 * non-negative dimensions with a product ≤ lim->max_elements. Binary data must match
 * count × element size exactly and be consumed entirely. lim NULL (or fields ≤ 0):
 * TS_OIP_DEFAULT_*. Unknown keys and parameters are ignored; known ones given twice refused.
 * The request-level parameters.rows must be an array of non-negative integers (at most
 * lim->max_elements of them); what they index is the caller's business.
 * Returns 0, or -1 with a message in err naming the input and what is wrong (the caller
 * answers 400). The request is cleared on failure. */
int ts_oip_parse_request(const uint8_t *body, size_t len, int64_t json_len,
                         const ts_oip_limits *lim, ts_oip_request *req, char *err, size_t errlen);
void ts_oip_request_free(ts_oip_request *req);

/* Find an input by name, or NULL. */
const ts_oip_tensor *ts_oip_find_input(const ts_oip_request *req, const char *name);

/* Should output `name` be sent as binary data? Its own parameters.binary_data when the
 * request lists it, else the request's parameters.binary_data_output. */
int ts_oip_output_binary(const ts_oip_request *req, const char *name);

/* An inference response with one FP32 output [rows][cols]. binary: put the data after the
 * JSON (binary tensor extension) and set *json_len to the JSON part's length (the value
 * for the Inference-Header-Content-Length response header); otherwise *json_len = -1.
 * *out is malloc'd. 0, or -1 on allocation failure. */
int ts_oip_build_response(const char *model_name, const char *model_version, const char *id,
                          const char *output_name, const float *data, int64_t rows, int64_t cols,
                          int binary, uint8_t **out, size_t *outlen, int64_t *json_len);

/* The data of both forms is printed/stored as given: JSON floats with the fewest digits
 * that read back to the same float32 (non-finite values, which JSON cannot hold, as
 * null); binary bytes little-endian. model_version and id are left out when NULL. */

/* Feedback response: {"model_name","model_version","id","step","loss"}; loss is left out
 * when NAN (no loss computed: the client sent grad_output) and null when infinite.
 * malloc'd NUL-terminated string, or NULL on allocation failure. */
char *ts_oip_build_feedback_response(const char *model_name, const char *model_version,
                                     const char *id, int64_t step, double loss);

/* {"error":"..."} with proper JSON escaping (quotes, control characters; bytes that are not
 * UTF-8 become U+FFFD); malloc'd NUL-terminated string, NULL on allocation failure. */
char *ts_oip_error_json(const char *msg);

#endif
