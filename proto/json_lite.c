/* json_lite.c — see json_lite.h. Reader: one pass, no recursion, a flat tape of nodes.
 * Writer: a growing buffer. Numbers are the hot path: a request carries tens of
 * thousands of them, a response hundreds. */
#include "json_lite.h"

#include <float.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define NONE UINT32_MAX

/* ---- UTF-8 ---------------------------------------------------------------------- */

/* Length of the valid UTF-8 sequence starting at s (a non-ASCII lead byte), or 0:
 * no overlong forms, no surrogates, nothing above U+10FFFF. */
static size_t utf8_len(const uint8_t *s, size_t avail)
{
    uint8_t c = s[0], lo = 0x80, hi = 0xBF;
    size_t n;
    if (c >= 0xC2 && c <= 0xDF) n = 2;
    else if (c >= 0xE0 && c <= 0xEF) {
        n = 3;
        if (c == 0xE0) lo = 0xA0;
        if (c == 0xED) hi = 0x9F;
    } else if (c >= 0xF0 && c <= 0xF4) {
        n = 4;
        if (c == 0xF0) lo = 0x90;
        if (c == 0xF4) hi = 0x8F;
    } else return 0;
    if (avail < n || s[1] < lo || s[1] > hi) return 0;
    for (size_t i = 2; i < n; i++)
        if ((s[i] & 0xC0) != 0x80) return 0;
    return n;
}

static size_t utf8_put(char *out, uint32_t cp)
{
    if (cp < 0x80) { out[0] = (char)cp; return 1; }
    if (cp < 0x800) {
        out[0] = (char)(0xC0 | (cp >> 6));
        out[1] = (char)(0x80 | (cp & 0x3F));
        return 2;
    }
    if (cp < 0x10000) {
        out[0] = (char)(0xE0 | (cp >> 12));
        out[1] = (char)(0x80 | ((cp >> 6) & 0x3F));
        out[2] = (char)(0x80 | (cp & 0x3F));
        return 3;
    }
    out[0] = (char)(0xF0 | (cp >> 18));
    out[1] = (char)(0x80 | ((cp >> 12) & 0x3F));
    out[2] = (char)(0x80 | ((cp >> 6) & 0x3F));
    out[3] = (char)(0x80 | (cp & 0x3F));
    return 4;
}

static int hex4(const uint8_t *s, uint32_t *cp)
{
    uint32_t v = 0;
    for (int i = 0; i < 4; i++) {
        uint8_t c = s[i];
        uint32_t d;
        if (c >= '0' && c <= '9') d = c - '0';
        else if (c >= 'a' && c <= 'f') d = c - 'a' + 10;
        else if (c >= 'A' && c <= 'F') d = c - 'A' + 10;
        else return -1;
        v = v * 16 + d;
    }
    *cp = v;
    return 0;
}

/* The code point of the \u escape at s[0..] ("\uXXXX", or a surrogate pair as two), its
 * length in *used; -1 when malformed. s has avail bytes. */
static int unicode_escape(const uint8_t *s, size_t avail, uint32_t *cp, size_t *used)
{
    uint32_t hi, lo;
    if (avail < 6 || hex4(s + 2, &hi) < 0) return -1;
    if (hi >= 0xDC00 && hi <= 0xDFFF) return -1;          /* lone low surrogate */
    if (hi < 0xD800 || hi > 0xDBFF) { *cp = hi; *used = 6; return 0; }
    if (avail < 12 || s[6] != '\\' || s[7] != 'u' || hex4(s + 8, &lo) < 0) return -1;
    if (lo < 0xDC00 || lo > 0xDFFF) return -1;
    *cp = 0x10000 + ((hi - 0xD800) << 10) + (lo - 0xDC00);
    *used = 12;
    return 0;
}

/* ---- decimal <-> float ---------------------------------------------------------- */

/* Exact in long double (5^27 < 2^64). */
static const long double p10l[28] = {
    1e0L, 1e1L, 1e2L, 1e3L, 1e4L, 1e5L, 1e6L, 1e7L, 1e8L, 1e9L, 1e10L, 1e11L, 1e12L, 1e13L,
    1e14L, 1e15L, 1e16L, 1e17L, 1e18L, 1e19L, 1e20L, 1e21L, 1e22L, 1e23L, 1e24L, 1e25L,
    1e26L, 1e27L,
};

static const double p10d[23] = {
    1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9, 1e10, 1e11, 1e12, 1e13, 1e14, 1e15,
    1e16, 1e17, 1e18, 1e19, 1e20, 1e21, 1e22,
};

float ts_json_double_to_float(double d)
{
    /* Above FLT_MAX + half an ulp the conversion is out of range (undefined in C). */
    if (d >= 0x1.ffffffp127) return INFINITY;
    if (d <= -0x1.ffffffp127) return -INFINITY;
    return (float)d;
}

/* float(double(w · 10^q)) without strtod, or 0 when this cannot be sure. w·10^q is
 * computed in long double (one rounding, relative error ≤ 2^-64), so its rounding to double
 * is the correctly rounded double or a neighbour; float rounding of a double depends only
 * on its low 29 mantissa bits against 2^28, so unless they sit next to that tie all
 * candidates give the same float. Subnormal and overflowing results take the slow path. */
static int dec_to_float_fast(uint64_t w, int64_t q, int neg, float *out)
{
    if (w == 0) { *out = neg ? -0.0f : 0.0f; return 1; }
#if FLT_EVAL_METHOD == 0
    /* Clinger's case: w and 10^|q| are exact doubles, so one operation gives the correctly
     * rounded double; its magnitude (1e-22 .. 9e37) is a normal float. */
    if (w <= (UINT64_C(1) << 53) && q >= -22 && q <= 22) {
        double d = q < 0 ? (double)w / p10d[-q] : (double)w * p10d[q];
        float f = (float)d;
        *out = neg ? -f : f;
        return 1;
    }
#endif
#if LDBL_MANT_DIG >= 64
    if (q < -27 || q > 27) return 0;
    long double x = q < 0 ? (long double)w / p10l[-q] : (long double)w * p10l[q];
    double d = (double)x;
    if (!(d >= 0x1p-125 && d <= FLT_MAX)) return 0;
    uint64_t bits;
    memcpy(&bits, &d, sizeof bits);
    uint64_t low = bits & ((1ull << 29) - 1);
    if (low + 1 >= (1ull << 28) && low <= (1ull << 28) + 1) return 0;
    float f = (float)d;
    *out = neg ? -f : f;
    return 1;
#else
    return 0;
#endif
}

static float dec_to_float_slow(const char *s, size_t len)
{
    char local[96];
    char *buf = len < sizeof local ? local : malloc(len + 1);
    if (!buf) return NAN;   /* caller treats non-finite as refused */
    memcpy(buf, s, len);
    buf[len] = 0;
    /* strtod: the daemon never calls setlocale, so the decimal point is '.'. */
    float f = ts_json_double_to_float(strtod(buf, NULL));
    if (buf != local) free(buf);
    return f;
}

/* A scanned JSON number token. */
typedef struct {
    uint64_t w;       /* first ≤19 significant digits */
    int64_t q;        /* value = w · 10^q (when !inexact) */
    int neg, is_int, inexact;
    int ndig;         /* significant digits kept in w */
} num_tok;

/* Fold the digits s[a..b) into w while it has fewer than 19 significant digits; the
 * rest are dropped (a non-zero one makes the token inexact). */
static void fold_digits(num_tok *nt, const uint8_t *s, size_t a, size_t b, int frac)
{
    size_t i = a;
    if (nt->w == 0) {                          /* leading zeros are not significant */
        while (i < b && s[i] == '0') i++;
        if (frac) nt->q -= (int64_t)(i - a);
    }
    size_t take = b - i < (size_t)(19 - nt->ndig) ? b - i : (size_t)(19 - nt->ndig);
    uint64_t w = nt->w;
    for (size_t k = 0; k < take; k++) w = w * 10 + (uint64_t)(s[i + k] - '0');
    nt->w = w;
    nt->ndig += (int)take;
    if (frac) nt->q -= (int64_t)take;
    i += take;
    if (!frac) nt->q += (int64_t)(b - i);
    for (; i < b; i++) nt->inexact |= s[i] != '0';
}

#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
/* Eight ASCII digits at once (the SWAR trick of simdjson and fast_float): a fraction of
 * the cost of eight dependent multiply-adds. */
static int eight_digits(const uint8_t *s, uint32_t *val)
{
    uint64_t v;
    memcpy(&v, s, 8);
    if (((v & 0xF0F0F0F0F0F0F0F0u) | (((v + 0x0606060606060606u) & 0xF0F0F0F0F0F0F0F0u) >> 4))
        != 0x3333333333333333u)
        return 0;
    v -= 0x3030303030303030u;
    v = v * 10 + (v >> 8);
    v = (((v & 0x000000FF000000FFu) * (100 + (UINT64_C(1000000) << 32))) +
         (((v >> 16) & 0x000000FF000000FFu) * (1 + (UINT64_C(10000) << 32)))) >> 32;
    *val = (uint32_t)v;
    return 1;
}
#else
static int eight_digits(const uint8_t *s, uint32_t *val) { (void)s; (void)val; return 0; }
#endif

/* Digits s[p..) folded into *w (wrapping past 19 digits: the caller then refolds). */
static size_t take_digits(const uint8_t *s, size_t len, size_t p, uint64_t *w)
{
    uint64_t v = *w;
    uint32_t eight;
    while (p + 8 <= len && eight_digits(s + p, &eight)) {
        v = v * 100000000u + eight;
        p += 8;
    }
    for (; p < len && (unsigned)(s[p] - '0') < 10; p++) v = v * 10 + (uint64_t)(s[p] - '0');
    *w = v;
    return p;
}

/* Scan a number at s[*pos] (grammar of RFC 8259). 0, or -1 with *pos at the fault.
 * Up to 19 digits in all (nearly every number) take one pass; longer ones are refolded. */
static int scan_number(const uint8_t *s, size_t len, size_t *pos, num_tok *nt)
{
    size_t p = *pos, ia, fa = 0, fb = 0;
    uint64_t w = 0;
    memset(nt, 0, sizeof *nt);
    nt->is_int = 1;
    if (p < len && s[p] == '-') { nt->neg = 1; p++; }
    if (p >= len || (unsigned)(s[p] - '0') >= 10) { *pos = p; return -1; }
    ia = p;
    p = s[p] == '0' ? p + 1 : take_digits(s, len, p, &w);
    size_t ib = p;
    if (p < len && s[p] == '.') {
        nt->is_int = 0;
        fa = ++p;
        fb = p = take_digits(s, len, p, &w);
        if (fb == fa) { *pos = p; return -1; }
    }
    if ((ib - ia) + (fb - fa) <= 19) {
        nt->w = w;
        nt->q = -(int64_t)(fb - fa);
    } else {
        fold_digits(nt, s, ia, ib, 0);
        if (fb > fa) fold_digits(nt, s, fa, fb, 1);
    }
    if (p < len && (s[p] == 'e' || s[p] == 'E')) {
        nt->is_int = 0;
        p++;
        int eneg = 0;
        int64_t e = 0;
        if (p < len && (s[p] == '+' || s[p] == '-')) eneg = s[p++] == '-';
        if (p >= len || (unsigned)(s[p] - '0') >= 10) { *pos = p; return -1; }
        for (; p < len && (unsigned)(s[p] - '0') < 10; p++)
            if (e < 100000000) e = e * 10 + (s[p] - '0');   /* saturate: far beyond any float */
        nt->q += eneg ? -e : e;
    }
    *pos = p;
    return 0;
}

static float tok_to_float(const num_tok *nt, const char *text, size_t len)
{
    float f;
    if (!nt->inexact && dec_to_float_fast(nt->w, nt->q, nt->neg, &f)) return f;
    return dec_to_float_slow(text, len);
}

int ts_json_parse_float(const char *s, size_t len, float *out)
{
    num_tok nt;
    size_t pos = 0;
    if (scan_number((const uint8_t *)s, len, &pos, &nt) < 0 || pos != len) return -1;
    *out = tok_to_float(&nt, s, len);
    return 0;
}

/* v · 10^k; the factors are exact up to 10^22, so a few roundings at most (relative error
 * ~1e-15, far below the 1e-9 a nine-digit decimal needs). */
static double scale10(double v, int k)
{
    while (k > 22) { v *= p10d[22]; k -= 22; }
    while (k < -22) { v /= p10d[22]; k += 22; }
    return k >= 0 ? v * p10d[k] : v / p10d[-k];
}

/* The nine leading decimal digits of a > 0, rounded, and the exponent of the first: a ≈
 * D9 · 10^(*e - 8), D9 in [1e8, 1e9). *e comes in as an estimate, at most one too low. */
static uint64_t nine_digits(double a, int *e)
{
    uint64_t D9 = (uint64_t)(scale10(a, 8 - *e) + 0.5);
    while (D9 >= 1000000000u) {
        ++*e;
        D9 = (uint64_t)(scale10(a, 8 - *e) + 0.5);
    }
    return D9;
}

/* Does the decimal D · 10^q read back to exactly f? */
static int reads_back(uint64_t D, int64_t q, float f)
{
    float g;
    if (!dec_to_float_fast(D, q, 0, &g)) {
        char buf[48];
        int n = snprintf(buf, sizeof buf, "%llue%lld", (unsigned long long)D, (long long)q);
        g = dec_to_float_slow(buf, (size_t)n);
    }
    return g == f;
}

/* Write digits of D (no trailing zeros) with decimal exponent E (value d.ddd × 10^E) the
 * way Python's repr does: fixed for -4 ≤ E < 16, else d.ddde±XX. */
static size_t place_digits(char *out, uint64_t D, int E)
{
    char dig[24];
    int n = 0;
    while (D % 10 == 0 && D) D /= 10;
    do { dig[n++] = (char)('0' + D % 10); D /= 10; } while (D);
    for (int i = 0; i < n / 2; i++) { char c = dig[i]; dig[i] = dig[n - 1 - i]; dig[n - 1 - i] = c; }
    size_t o = 0;
    if (E >= -4 && E < 16) {
        if (E < 0) {
            out[o++] = '0'; out[o++] = '.';
            for (int i = 0; i < -E - 1; i++) out[o++] = '0';
            for (int i = 0; i < n; i++) out[o++] = dig[i];
        } else {
            for (int i = 0; i <= E; i++) out[o++] = i < n ? dig[i] : '0';
            out[o++] = '.';
            if (n <= E + 1) out[o++] = '0';
            for (int i = E + 1; i < n; i++) out[o++] = dig[i];
        }
    } else {
        out[o++] = dig[0];
        if (n > 1) {
            out[o++] = '.';
            for (int i = 1; i < n; i++) out[o++] = dig[i];
        }
        o += (size_t)sprintf(out + o, "e%c%02d", E < 0 ? '-' : '+', E < 0 ? -E : E);
    }
    out[o] = 0;
    return o;
}

size_t ts_json_format_float(float f, char out[32])
{
    size_t o = 0;
    if (signbit(f)) { out[o++] = '-'; f = -f; }
    if (f == 0.0f) { memcpy(out + o, "0.0", 4); return o + 3; }
    /* Nine significant digits always read back (their error, ≤ 5e-9 relative, is well
     * inside half a float ulp, ≥ 3e-8); then fewer, while they still do. */
    int e2;
    frexp((double)f, &e2);                     /* f in [2^(e2-1), 2^e2) */
    int e = (int)floor((e2 - 1) * 0.30102999566398120);
    uint64_t D9 = nine_digits((double)f, &e);
    uint64_t best = D9, div = 10;
    int64_t bestq = e - 8;
    for (int p = 8; p >= 1; p--, div *= 10) {
        uint64_t Dp = (D9 + div / 2) / div;
        int64_t q = e - 8 + (9 - p);
        if (!reads_back(Dp, q, f)) break;
        best = Dp;
        bestq = q;
    }
    int nd = 0;                                /* digits of best: its leading one is 10^(bestq+nd-1) */
    for (uint64_t t = best; t; t /= 10) nd++;
    return o + place_digits(out + o, best, (int)bestq + nd - 1);
}

/* ---- tape reader ---------------------------------------------------------------- */

typedef struct {
    ts_jtape *t;
    const uint8_t *s;
    size_t len, pos;
    int depth, max_depth;
    uint32_t cur;            /* innermost open container, or NONE */
    const char *why;         /* what went wrong at pos */
} jparser;

static uint32_t push(jparser *p, uint8_t kind, size_t off)
{
    ts_jtape *t = p->t;
    if (t->count == t->cap) {
        if (t->cap >= UINT32_MAX / 2) { p->why = "too many values"; return NONE; }
        uint32_t ncap = t->cap ? t->cap * 2 : 64;
        ts_jt_node *nn = realloc(t->nodes, (size_t)ncap * sizeof *nn);
        if (!nn) { p->why = "out of memory"; return NONE; }
        t->nodes = nn;
        t->cap = ncap;
    }
    ts_jt_node *nd = &t->nodes[t->count];
    nd->kind = kind;
    nd->flags = 0;
    nd->n = 0;
    nd->next = 0;
    nd->off = (uint32_t)off;
    nd->v.i = 0;
    return t->count++;
}

static inline void skip_ws(jparser *p)
{
    if (p->pos < p->len && p->s[p->pos] > ' ') return;   /* the usual case: no whitespace */
    while (p->pos < p->len) {
        uint8_t c = p->s[p->pos];
        if (c != ' ' && c != '\n' && c != '\r' && c != '\t') break;
        p->pos++;
    }
}

/* String at pos (on the opening quote) → STR node. */
static int string_node(jparser *p)
{
    const uint8_t *s = p->s;
    size_t i = ++p->pos, start = i;
    uint8_t flags = 0;
    for (;;) {
        while (i < p->len && s[i] >= 0x20 && s[i] < 0x80 && s[i] != '"' && s[i] != '\\') i++;
        if (i >= p->len) { p->pos = i; p->why = "unterminated string"; return -1; }
        uint8_t c = s[i];
        if (c == '"') break;
        if (c < 0x20) { p->pos = i; p->why = "control character in string (escape it)"; return -1; }
        if (c == '\\') {
            flags |= TS_JT_ESC;
            uint8_t e = i + 1 < p->len ? s[i + 1] : 0;
            if (e == 'u') {
                uint32_t cp;
                size_t used;
                if (unicode_escape(s + i, p->len - i, &cp, &used) < 0) {
                    p->pos = i; p->why = "bad \\u escape"; return -1;
                }
                i += used;
            } else if (e && strchr("\"\\/bfnrt", e)) {
                i += 2;
            } else { p->pos = i; p->why = "bad escape in string"; return -1; }
            continue;
        }
        size_t n = utf8_len(s + i, p->len - i);
        if (!n) { p->pos = i; p->why = "invalid UTF-8 in string"; return -1; }
        i += n;
    }
    uint32_t nd = push(p, TS_JT_STR, start);
    if (nd == NONE) return -1;
    p->t->nodes[nd].n = (uint32_t)(i - start);
    p->t->nodes[nd].flags = flags;
    p->pos = i + 1;
    return 0;
}

static int number_node(jparser *p)
{
    size_t start = p->pos;
    num_tok nt;
    if (scan_number(p->s, p->len, &p->pos, &nt) < 0) { p->why = "malformed number"; return -1; }
    int big = !nt.is_int || nt.inexact || nt.q != 0 ||
              (nt.neg ? nt.w > (uint64_t)INT64_MAX + 1 : nt.w > (uint64_t)INT64_MAX);
    uint32_t nd = push(p, nt.is_int ? TS_JT_INT : TS_JT_REAL, start);
    if (nd == NONE) return -1;
    ts_jt_node *n = &p->t->nodes[nd];
    if (!big) {
        /* -2^63 is representable; negate in unsigned arithmetic to avoid overflow. */
        n->v.i = nt.neg ? (int64_t)(0 - nt.w) : (int64_t)nt.w;
        return 0;
    }
    if (nt.is_int) n->flags = TS_JT_BIG;
    n->v.f = tok_to_float(&nt, (const char *)p->s + start, p->pos - start);
    return 0;
}

static int literal_node(jparser *p, const char *word, uint8_t kind)
{
    size_t n = strlen(word);
    if (p->len - p->pos < n || memcmp(p->s + p->pos, word, n) != 0) {
        p->why = "unexpected character";
        return -1;
    }
    if (push(p, kind, p->pos) == NONE) return -1;
    p->pos += n;
    return 0;
}

/* A value at pos. 0: complete (scalar or empty container); 1: a container opened and
 * awaits its first member; -1: error. */
static int value(jparser *p)
{
    skip_ws(p);
    if (p->pos >= p->len) { p->why = "unexpected end of JSON"; return -1; }
    if (p->cur != NONE) p->t->nodes[p->cur].n++;
    uint8_t c = p->s[p->pos];
    if (c == '{' || c == '[') {
        if (++p->depth > p->max_depth) { p->why = "nested too deeply"; return -1; }
        uint32_t nd = push(p, c == '{' ? TS_JT_OBJ : TS_JT_ARR, p->pos);
        if (nd == NONE) return -1;
        p->t->nodes[nd].next = p->cur;      /* the parent, until the container closes */
        p->cur = nd;
        p->pos++;
        skip_ws(p);
        if (p->pos < p->len && p->s[p->pos] == (c == '{' ? '}' : ']')) {
            p->pos++;
            p->cur = p->t->nodes[nd].next;
            p->t->nodes[nd].next = p->t->count;
            p->depth--;
            return 0;
        }
        return 1;
    }
    if (c == '"') return string_node(p);
    if (c == '-' || (c >= '0' && c <= '9')) return number_node(p);
    if (c == 't') return literal_node(p, "true", TS_JT_TRUE);
    if (c == 'f') return literal_node(p, "false", TS_JT_FALSE);
    if (c == 'n') return literal_node(p, "null", TS_JT_NULL);
    p->why = "unexpected character";
    return -1;
}

/* An object key and its colon. */
static int key(jparser *p)
{
    skip_ws(p);
    if (p->pos >= p->len || p->s[p->pos] != '"') { p->why = "expected a string key"; return -1; }
    if (string_node(p) < 0) return -1;
    skip_ws(p);
    if (p->pos >= p->len || p->s[p->pos] != ':') { p->why = "expected ':' after key"; return -1; }
    p->pos++;
    return 0;
}

/* After a complete value: close containers and find the next value. 1: a value follows;
 * 0: the root is complete; -1: error. */
static int after_value(jparser *p)
{
    while (p->cur != NONE) {
        ts_jt_node *c = &p->t->nodes[p->cur];
        skip_ws(p);
        uint8_t ch = p->pos < p->len ? p->s[p->pos] : 0;
        if (ch == ',') {
            p->pos++;
            if (c->kind == TS_JT_OBJ) return key(p) < 0 ? -1 : 1;
            /* Arrays of numbers are the bulk of a request: take them here, without the
             * round trip through value(). */
            skip_ws(p);
            uint8_t d = p->pos < p->len ? p->s[p->pos] : 0;
            if (d != '-' && (d < '0' || d > '9')) return 1;
            c->n++;
            if (number_node(p) < 0) return -1;
            continue;
        }
        if (ch != (c->kind == TS_JT_OBJ ? '}' : ']')) {
            p->why = c->kind == TS_JT_OBJ ? "expected ',' or '}'" : "expected ',' or ']'";
            return -1;
        }
        p->pos++;
        p->cur = c->next;
        c->next = p->t->count;
        p->depth--;
    }
    return 0;
}

int ts_jtape_parse(ts_jtape *t, const char *text, size_t len, int max_depth, char *err, size_t errlen)
{
    memset(t, 0, sizeof *t);
    t->text = text;
    t->len = len;
    jparser p = { .t = t, .s = (const uint8_t *)text, .len = len, .max_depth = max_depth,
                  .cur = NONE };
    int r = 0;
    if (len >= UINT32_MAX) { p.why = "text larger than 4 GiB"; r = -1; }
    if (r == 0) {
        /* A guess that fits typical tensor bodies (~10 bytes a number) in one allocation,
         * capped so that a body of long strings does not reserve much for nothing. */
        t->cap = (uint32_t)(len / 8 + 64 < (1u << 20) ? len / 8 + 64 : (1u << 20));
        t->nodes = malloc((size_t)t->cap * sizeof *t->nodes);
        if (!t->nodes) { t->cap = 0; p.why = "out of memory"; r = -1; }
    }
    while (r == 0) {
        r = value(&p);
        while (r == 1) {
            if (p.t->nodes[p.cur].kind == TS_JT_OBJ && key(&p) < 0) { r = -1; break; }
            r = value(&p);
        }
        if (r < 0) break;
        r = after_value(&p);
        if (r <= 0) break;
        r = 0;   /* another value follows */
    }
    if (r == 0) {
        skip_ws(&p);
        if (p.pos != len) { p.why = "unexpected data after the JSON value"; r = -1; }
    }
    if (r < 0) {
        snprintf(err, errlen, "invalid JSON at byte %zu: %s", p.pos, p.why);
        ts_jtape_free(t);
        return -1;
    }
    return 0;
}

void ts_jtape_free(ts_jtape *t)
{
    free(t->nodes);
    t->nodes = NULL;
    t->count = t->cap = 0;
}

/* ---- tape access ---------------------------------------------------------------- */

static int key_is(const ts_jtape *t, uint32_t i, const char *key)
{
    const ts_jt_node *n = &t->nodes[i];
    size_t kl = strlen(key);
    if (!(n->flags & TS_JT_ESC))
        return n->n == kl && memcmp(t->text + n->off, key, kl) == 0;
    /* Room for the whole key: a stored key with escapes may decode to any lookup key. */
    char local[64];
    char *buf = kl + 2 <= sizeof local ? local : malloc(kl + 2);
    if (!buf) return 0;
    int l = ts_jtape_str(t, i, buf, kl + 2);
    int same = l >= 0 && (size_t)l == kl && memcmp(buf, key, kl) == 0;
    if (buf != local) free(buf);
    return same;
}

int ts_jtape_member(const ts_jtape *t, uint32_t obj, const char *key, uint32_t *val)
{
    int found = 0;
    uint32_t end = t->nodes[obj].next;
    for (uint32_t i = obj + 1; i < end; i = ts_jtape_after(t, i + 1)) {
        if (!key_is(t, i, key)) continue;
        if (found) return -1;
        found = 1;
        *val = i + 1;
    }
    return found;
}

/* Decode the raw string into out (room for raw length bytes: decoding never grows). */
static size_t decode_raw(const ts_jtape *t, uint32_t i, char *out, int *has_nul)
{
    const uint8_t *s = (const uint8_t *)t->text + t->nodes[i].off;
    size_t n = t->nodes[i].n, o = 0;
    *has_nul = 0;
    for (size_t k = 0; k < n;) {
        if (s[k] != '\\') { out[o++] = (char)s[k++]; continue; }
        uint8_t e = s[k + 1];
        if (e == 'u') {
            uint32_t cp = 0;
            size_t used = 6;
            unicode_escape(s + k, n - k, &cp, &used);   /* validated by the reader */
            if (cp == 0) *has_nul = 1;
            o += utf8_put(out + o, cp);
            k += used;
            continue;
        }
        static const char from[] = "\"\\/bfnrt", to[] = "\"\\/\b\f\n\r\t";
        out[o++] = to[strchr(from, e) - from];
        k += 2;
    }
    return o;
}

int ts_jtape_str(const ts_jtape *t, uint32_t i, char *buf, size_t cap)
{
    size_t raw = t->nodes[i].n;
    char local[256];
    char *tmp = raw <= sizeof local ? local : malloc(raw);
    if (!tmp) return -1;
    int nul;
    size_t n = decode_raw(t, i, tmp, &nul);
    int r = nul ? -2 : n + 1 > cap ? -1 : (int)n;
    if (r >= 0) {
        memcpy(buf, tmp, n);
        buf[n] = 0;
    }
    if (tmp != local) free(tmp);
    return r;
}

char *ts_jtape_strdup(const ts_jtape *t, uint32_t i)
{
    char *s = malloc((size_t)t->nodes[i].n + 1);
    if (!s) return NULL;
    int nul;
    size_t n = decode_raw(t, i, s, &nul);
    if (nul) { free(s); return NULL; }
    s[n] = 0;
    return s;
}

const char *ts_jtape_kind_name(const ts_jtape *t, uint32_t i)
{
    switch (t->nodes[i].kind) {
    case TS_JT_OBJ: return "an object";
    case TS_JT_ARR: return "an array";
    case TS_JT_STR: return "a string";
    case TS_JT_INT: return "an integer";
    case TS_JT_REAL: return "a number";
    case TS_JT_TRUE: return "true";
    case TS_JT_FALSE: return "false";
    default: return "null";
    }
}

/* ---- writer --------------------------------------------------------------------- */

void ts_json_put_float(ts_buf *b, float f)
{
    if (!isfinite(f)) { ts_buf_put(b, "null", 4); return; }
    ts_buf_reserve(b, 32);
    if (b->oom) return;
    b->len += ts_json_format_float(f, b->p + b->len);
}

void ts_json_put_str(ts_buf *b, const char *str)
{
    if (!str) { ts_buf_put(b, "null", 4); return; }
    const uint8_t *s = (const uint8_t *)str;
    size_t n = strlen(str);
    ts_buf_put(b, "\"", 1);
    for (size_t i = 0; i < n;) {
        size_t run = i;
        while (run < n && s[run] >= 0x20 && s[run] < 0x80 && s[run] != '"' && s[run] != '\\') run++;
        ts_buf_put(b, str + i, run - i);
        if ((i = run) >= n) break;
        uint8_t c = s[i];
        if (c >= 0x80) {
            size_t l = utf8_len(s + i, n - i);
            if (l) ts_buf_put(b, str + i, l);
            else ts_buf_put(b, "\\ufffd", 6);
            i += l ? l : 1;
            continue;
        }
        char esc[8];
        const char *named = c == '"' ? "\\\"" : c == '\\' ? "\\\\" : c == '\n' ? "\\n"
                          : c == '\r' ? "\\r" : c == '\t' ? "\\t" : c == '\b' ? "\\b"
                          : c == '\f' ? "\\f" : NULL;
        if (!named) { snprintf(esc, sizeof esc, "\\u%04x", c); named = esc; }
        ts_buf_puts(b, named);
        i++;
    }
    ts_buf_put(b, "\"", 1);
}
