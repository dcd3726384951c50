/* fuzz_json.c — json_lite (proto/json_lite.c), the JSON reader every request body goes
 * through, against jansson as the reference, and its float printer.
 *
 * Byte 0 steers: bits 0-5 max_depth (1..64); the rest is the JSON text. The printer gets
 * every aligned 4 bytes of the whole input as a float.
 * Properties:
 *  - json_lite accepts exactly what jansson accepts, except where jansson has its own
 *    limits (integers beyond int64, reals beyond double, U+0000 in keys, nesting beyond
 *    max_depth, duplicate keys that jansson is asked to reject);
 *  - when both accept, the trees are the same: kinds, string bytes, integers exactly,
 *    reals as float(double(text)), member order and counts;
 *  - the tape's structure is sound (next indices, counts) — walked by index;
 *  - ts_json_format_float prints every finite float so it reads back to the same bits,
 *    with a '.' or an exponent.
 */
#include <jansson.h>
#include <math.h>
#include <string.h>

#include "proto/json_lite.h"
#include "tests/fuzz/fuzz.h"

/* Compare tape node i with jansson value j; returns the index after node i's subtree. */
static uint32_t fuzz_json_same(const ts_jtape *t, uint32_t i, json_t *j)
{
    TS_FUZZ_CHECK(i < t->count, "tape index %u beyond %u nodes", i, t->count);
    const ts_jt_node *n = &t->nodes[i];
    switch (n->kind) {
    case TS_JT_OBJ: {
        TS_FUZZ_CHECK(json_is_object(j) && json_object_size(j) == n->n, "object of %u members vs %zu",
                      n->n, json_object_size(j));
        uint32_t k = i + 1;
        for (uint32_t m = 0; m < n->n; m++) {
            char *key = ts_jtape_strdup(t, k);
            TS_FUZZ_CHECK(key != NULL, "object key %u does not decode", m);
            json_t *v = json_object_get(j, key);
            TS_FUZZ_CHECK(v != NULL, "key \"%s\" missing in jansson's object", key);
            uint32_t val;
            TS_FUZZ_CHECK(ts_jtape_member(t, i, key, &val) == 1 && val == k + 1, "member lookup of \"%s\"", key);
            free(key);
            k = fuzz_json_same(t, k + 1, v);
        }
        TS_FUZZ_CHECK(k == n->next, "object next %u, walked to %u", n->next, k);
        return k;
    }
    case TS_JT_ARR: {
        TS_FUZZ_CHECK(json_is_array(j) && json_array_size(j) == n->n, "array of %u vs %zu", n->n,
                      json_array_size(j));
        uint32_t k = i + 1;
        for (uint32_t m = 0; m < n->n; m++)
            k = fuzz_json_same(t, k, json_array_get(j, m));
        TS_FUZZ_CHECK(k == n->next, "array next %u, walked to %u", n->next, k);
        return k;
    }
    case TS_JT_STR: {
        TS_FUZZ_CHECK(json_is_string(j), "string vs another kind");
        size_t len = json_string_length(j);
        char *buf = malloc(len + 2);
        int r = ts_jtape_str(t, i, buf, len + 2);
        if (memchr(json_string_value(j), '\0', len))
            TS_FUZZ_CHECK(r == -2, "string with U+0000 decoded as %d", r);
        else
            TS_FUZZ_CHECK(r == (int)len && memcmp(buf, json_string_value(j), len) == 0,
                          "string decodes to %d bytes, jansson %zu", r, len);
        free(buf);
        return i + 1;
    }
    case TS_JT_INT:
        if (n->flags & TS_JT_BIG) /* jansson refused such documents; never here */
            TS_FUZZ_CHECK(0, "big integer accepted by jansson");
        TS_FUZZ_CHECK(json_is_integer(j) && json_integer_value(j) == n->v.i, "integer %lld",
                      (long long)n->v.i);
        return i + 1;
    case TS_JT_REAL: {
        TS_FUZZ_CHECK(json_is_real(j), "real vs another kind");
        float want = ts_json_double_to_float(json_real_value(j));
        TS_FUZZ_CHECK(memcmp(&want, &n->v.f, 4) == 0, "real %.9g, jansson gives %.9g (%.*s)",
                      (double)n->v.f, (double)want, 40, t->text + n->off);
        return i + 1;
    }
    case TS_JT_TRUE: TS_FUZZ_CHECK(json_is_true(j), "true"); return i + 1;
    case TS_JT_FALSE: TS_FUZZ_CHECK(json_is_false(j), "false"); return i + 1;
    case TS_JT_NULL: TS_FUZZ_CHECK(json_is_null(j), "null"); return i + 1;
    }
    TS_FUZZ_CHECK(0, "node %u has kind %d", i, n->kind);
    return 0;
}

/* jansson refuses for a reason of its own that json_lite need not share. */
static int fuzz_json_jansson_limit(const char *why)
{
    static const char *const own[] = {"too big", "overflow", "NUL byte in object key",
                                      "duplicate", "maximum parsing depth"};
    for (size_t k = 0; k < sizeof own / sizeof own[0]; k++)
        if (strstr(why, own[k]))
            return 1;
    return 0;
}

/* Nesting depth of the text (arrays and objects outside strings): json_lite's limit. */
static int fuzz_json_depth(const uint8_t *s, size_t n)
{
    int depth = 0, deepest = 0, in_str = 0;
    for (size_t k = 0; k < n; k++) {
        if (in_str) {
            if (s[k] == '\\') k++;
            else if (s[k] == '"') in_str = 0;
        } else if (s[k] == '"') in_str = 1;
        else if (s[k] == '[' || s[k] == '{') deepest = ++depth > deepest ? depth : deepest;
        else if (s[k] == ']' || s[k] == '}') depth--;
    }
    return deepest;
}

static void fuzz_json_float(const uint8_t *p)
{
    float f;
    memcpy(&f, p, 4);
    if (!isfinite(f))
        return;
    char out[32], copy[33];
    size_t n = ts_json_format_float(f, out);
    TS_FUZZ_CHECK(n > 0 && n < 32, "format_float length %zu", n);
    memcpy(copy, out, n);
    copy[n] = '\0';
    TS_FUZZ_CHECK(strpbrk(copy, ".eE") != NULL, "%s has no '.' or exponent", copy);
    float back;
    TS_FUZZ_CHECK(ts_json_parse_float(copy, n, &back) == 0 && memcmp(&back, &f, 4) == 0,
                  "%.9g printed as %s reads back as %.9g", (double)f, copy, (double)back);
    float via_strtod = ts_json_double_to_float(strtod(copy, NULL));
    TS_FUZZ_CHECK(memcmp(&via_strtod, &f, 4) == 0, "%s via strtod is %.9g, not %.9g", copy,
                  (double)via_strtod, (double)f);
}

int ts_fuzz_json(const uint8_t *data, size_t size)
{
    for (size_t k = 0; k + 4 <= size; k += 4)
        fuzz_json_float(data + k);
    ts_fuzz_bytes b = {data, size};
    int max_depth = 1 + (int)(ts_fuzz_take(&b, 1) & 63);
    char *text = calloc(1, b.n ? b.n : 1);  /* own allocation: ASan sees reads past the end */
    memcpy(text, b.p, b.n);
    ts_jtape t;
    char err[256] = "";
    int lite = ts_jtape_parse(&t, text, b.n, max_depth, err, sizeof err);
    TS_FUZZ_CHECK(lite == 0 || (lite == -1 && err[0]), "refusal without a message");
    json_error_t jerr;
    json_t *j = json_loadb(text, b.n, JSON_DECODE_ANY | JSON_ALLOW_NUL | JSON_REJECT_DUPLICATES, &jerr);
    int too_deep = fuzz_json_depth(b.p, b.n) > max_depth;
    if (lite == 0) {
        TS_FUZZ_CHECK(!too_deep, "accepted nesting deeper than %d", max_depth);
        TS_FUZZ_CHECK(j || fuzz_json_jansson_limit(jerr.text),
                      "json_lite accepts what jansson refuses (%s at %d): %.200s", jerr.text,
                      jerr.position, text);
        if (j)
            TS_FUZZ_CHECK(fuzz_json_same(&t, 0, j) == t.count, "tape has nodes after the root");
        ts_jtape_free(&t);
    } else if (j && !memchr(text, '\0', b.n)) {
        /* (jansson stops reading at a raw NUL byte: "1\0" is "1" to it) */
        TS_FUZZ_CHECK(too_deep, "json_lite refuses what jansson accepts: %s", err);
    }
    json_decref(j);
    free(text);
    return 0;
}

TS_FUZZ_ENTRY(ts_fuzz_json)
