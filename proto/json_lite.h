/* json_lite.h — a small, fast JSON reader and writer for request and response bodies.
 *
 * jansson builds one heap object per value: a 64×1024 FP32 request costs ~20 ms there.
 * This reader makes one pass over the text into a flat "tape" of nodes (pre-order, one
 * allocation that grows geometrically), converting numbers as it goes, so a tensor's
 * numbers sit in consecutive nodes. It validates full JSON (RFC 8259: grammar, UTF-8,
 * escapes, surrogate pairs) and bounds nesting depth without recursion.
 *
 * Numbers: an integer token that fits int64 keeps its exact value; any other number keeps
 * float(double(text)) -- the value Python, numpy and strtod-then-cast give, computed with
 * a fast exact path and strtod for the rare hard cases.
 *
 * The writers put escaped strings and floats printed with the fewest digits that read back
 * to the same float32 into a growing byte buffer (buf.h).
 */
#ifndef TS_JSON_LITE_H
#define TS_JSON_LITE_H

#include <stddef.h>
#include <stdint.h>

#include "buf.h"

typedef enum {
    TS_JT_OBJ = 1, TS_JT_ARR, TS_JT_STR, TS_JT_INT, TS_JT_REAL, TS_JT_TRUE, TS_JT_FALSE, TS_JT_NULL
} ts_jt_kind;

#define TS_JT_BIG 1u  /* INT node: does not fit int64; v.f holds its float value */
#define TS_JT_ESC 2u  /* STR node: the raw text holds escapes */

typedef struct {
    uint8_t kind;             /* ts_jt_kind */
    uint8_t flags;            /* TS_JT_BIG, TS_JT_ESC */
    uint32_t n;               /* OBJ: members; ARR: elements; STR: raw byte length */
    uint32_t next;            /* OBJ/ARR: index just past the subtree */
    uint32_t off;             /* byte offset in the text (STR: after the opening quote) */
    union { int64_t i; float f; } v;  /* INT (not BIG): i; REAL, BIG INT: f */
} ts_jt_node;

/* Objects hold key (STR) and value nodes alternately; the root is node 0. */
typedef struct {
    const char *text;
    size_t len;
    ts_jt_node *nodes;
    uint32_t count, cap;
} ts_jtape;

/* Parse text[len] (one JSON value, whitespace around it allowed). Nesting deeper than
 * max_depth arrays/objects is refused. 0, or -1 with "invalid JSON at byte N: ..." in err;
 * the tape is freed on failure. */
int ts_jtape_parse(ts_jtape *t, const char *text, size_t len, int max_depth, char *err, size_t errlen);
void ts_jtape_free(ts_jtape *t);

/* Index of the node after node i and its subtree. */
static inline uint32_t ts_jtape_after(const ts_jtape *t, uint32_t i)
{
    uint8_t k = t->nodes[i].kind;
    return (k == TS_JT_OBJ || k == TS_JT_ARR) ? t->nodes[i].next : i + 1;
}

/* Look up key in object node obj: 1 and *val = value index, 0 when absent, -1 when the
 * key appears more than once. */
int ts_jtape_member(const ts_jtape *t, uint32_t obj, const char *key, uint32_t *val);

/* Decode string node i into buf[cap] (NUL-terminated): its length, -1 when it does not
 * fit, -2 when it contains U+0000. */
int ts_jtape_str(const ts_jtape *t, uint32_t i, char *buf, size_t cap);
/* Decoded malloc'd copy of string node i, or NULL (allocation, or U+0000 inside). */
char *ts_jtape_strdup(const ts_jtape *t, uint32_t i);
/* "an object", "a string", "true", ... for messages. */
const char *ts_jtape_kind_name(const ts_jtape *t, uint32_t i);

/* float(double(s[len])) for a JSON number token; -1 when s is not one. */
int ts_json_parse_float(const char *s, size_t len, float *out);
/* (float)d without undefined behaviour for |d| > FLT_MAX (rounds to ±FLT_MAX or ±inf as
 * the hardware would). */
float ts_json_double_to_float(double d);
/* Shortest decimal that reads back (via double, then float) to f exactly; always has a
 * '.' or an exponent, so JSON readers see a real. f must be finite. Returns the length. */
size_t ts_json_format_float(float f, char out[32]);

/* Writers into a ts_buf (buf.h). */
/* A finite float as ts_json_format_float; null for NaN/inf (never bare NaN tokens). */
void ts_json_put_float(ts_buf *b, float f);
/* s as a quoted JSON string: quotes, backslashes and control characters escaped, each
 * byte that is not part of valid UTF-8 replaced by U+FFFD. NULL writes null. */
void ts_json_put_str(ts_buf *b, const char *s);

#endif
