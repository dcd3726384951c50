/* specs.c — layer architectures: kind names, the short architecture text
 * ("rmsnorm:64,linear:64x128/gs16+bias,relu,...") and the chaining/limit checks. */
#include "model.h"

#include <ctype.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char *const kind_names[] = {
    [TS_LAYER_LINEAR] = "ternary_linear",
    [TS_LAYER_RMSNORM] = "ternary_rmsnorm",
    [TS_LAYER_RELU] = "relu",
    [TS_LAYER_SILU] = "silu",
    [TS_LAYER_GELU] = "gelu",
};
#define N_KINDS ((int)(sizeof kind_names / sizeof kind_names[0]))

const char *ts_layer_kind_name(ts_layer_kind k)
{
    return (int)k >= 0 && (int)k < N_KINDS ? kind_names[k] : "unknown";
}

int ts_layer_kind_parse(const char *name, ts_layer_kind *out)
{
    for (int k = 0; k < N_KINDS; k++) {
        if (strcmp(name, kind_names[k]) == 0) {
            *out = (ts_layer_kind)k;
            return 0;
        }
    }
    return -1;
}

static int check_dim(int i, const char *what, int64_t v, char *err, size_t errlen)
{
    if (v >= 1 && v <= TS_MAX_DIM)
        return 0;
    snprintf(err, errlen, "layer %d: %s %lld is out of range [1, %d]", i, what, (long long)v,
             TS_MAX_DIM);
    return -1;
}

static int check_one(const ts_layer_spec *s, int i, char *err, size_t errlen)
{
    const char *name = ts_layer_kind_name(s->kind);
    if (strcmp(name, "unknown") == 0) {
        snprintf(err, errlen, "layer %d: unknown layer kind %d", i, (int)s->kind);
        return -1;
    }
    if (check_dim(i, "in_dim", s->in_dim, err, errlen) || check_dim(i, "out_dim", s->out_dim, err, errlen))
        return -1;
    if (s->kind != TS_LAYER_LINEAR && s->in_dim != s->out_dim) {
        snprintf(err, errlen, "layer %d (%s): in_dim %lld and out_dim %lld must be equal", i,
                 name, (long long)s->in_dim, (long long)s->out_dim);
        return -1;
    }
    if (s->has_bias && s->kind != TS_LAYER_LINEAR) {
        snprintf(err, errlen, "layer %d (%s): only ternary_linear layers have a bias", i, name);
        return -1;
    }
    if (s->kind != TS_LAYER_LINEAR && s->kind != TS_LAYER_RMSNORM)
        return 0;
    if (s->group_size < 1 || s->group_size > TS_MAX_GROUP) {
        snprintf(err, errlen, "layer %d (%s): group_size %lld is out of range [1, %d]", i, name,
                 (long long)s->group_size, TS_MAX_GROUP);
        return -1;
    }
    if (s->in_dim * s->out_dim > TS_MAX_PARAMS && s->kind == TS_LAYER_LINEAR) {
        snprintf(err, errlen, "layer %d (%s): %lld x %lld weights exceed the limit of %lld", i,
                 name, (long long)s->out_dim, (long long)s->in_dim, (long long)TS_MAX_PARAMS);
        return -1;
    }
    return 0;
}

static int is_ternary(ts_layer_kind k) { return k == TS_LAYER_LINEAR || k == TS_LAYER_RMSNORM; }

/* Index of the first ternary layer, or -1 + err: activations alone have no dims. */
static int first_ternary(const ts_layer_spec *specs, int n, char *err, size_t errlen)
{
    for (int i = 0; i < n; i++)
        if (is_ternary(specs[i].kind))
            return i;
    snprintf(err, errlen, "a model needs a ternary_linear or ternary_rmsnorm layer (activations "
             "alone have no dims)");
    return -1;
}

int ts_specs_check(const ts_layer_spec *specs, int n, char *err, size_t errlen)
{
    if (n < 1 || n > TS_MAX_LAYERS) {
        snprintf(err, errlen, "a model needs 1 to %d layers, not %d", TS_MAX_LAYERS, n);
        return -1;
    }
    for (int i = 0; i < n; i++) {
        if (check_one(&specs[i], i, err, errlen) != 0)
            return -1;
        if (i > 0 && specs[i].in_dim != specs[i - 1].out_dim) {
            snprintf(err, errlen, "layer %d (%s): in_dim %lld does not match layer %d's out_dim %lld",
                     i, ts_layer_kind_name(specs[i].kind), (long long)specs[i].in_dim, i - 1,
                     (long long)specs[i - 1].out_dim);
            return -1;
        }
    }
    return first_ternary(specs, n, err, errlen) < 0 ? -1 : 0;
}

int ts_specs_chain(ts_layer_spec *specs, int n, char *err, size_t errlen)
{
    if (n < 1 || n > TS_MAX_LAYERS)
        return ts_specs_check(specs, n, err, errlen);
    int first = first_ternary(specs, n, err, errlen);
    if (first < 0)
        return -1;
    /* Activations are elementwise: in_dim = out_dim = the dim flowing through them. Before
     * the first ternary layer that is the model's input, the first ternary layer's in_dim
     * (nn.Sequential(nn.ReLU(), TernaryScaleTensor(...)) is a valid PyTorch model). */
    for (int i = 0; i < n; i++)
        if (!is_ternary(specs[i].kind))
            specs[i].in_dim = specs[i].out_dim = i < first ? specs[first].in_dim : specs[i - 1].out_dim;
    return ts_specs_check(specs, n, err, errlen);
}

/* ── the architecture text ── */

/* A positive decimal number at *p (advanced past it); -1 when there is none or it is
 * absurdly large (the limits are checked later with a clearer message). */
static int64_t parse_count(const char **p)
{
    if (!isdigit((unsigned char)**p))
        return -1;
    errno = 0;
    char *end;
    long long v = strtoll(*p, &end, 10);
    *p = end;
    return errno == ERANGE || v > ((int64_t)1 << 40) ? -1 : (int64_t)v;
}

/* Parse one item [p, end) into *s (an activation's dims are left to ts_specs_chain).
 * Returns NULL, or a description of what is wrong. */
static const char *parse_item(const char *p, const char *end, ts_layer_spec *s)
{
    static const struct { const char *name; ts_layer_kind kind; } names[] = {
        {"linear", TS_LAYER_LINEAR}, {"ternary_linear", TS_LAYER_LINEAR},
        {"rmsnorm", TS_LAYER_RMSNORM}, {"ternary_rmsnorm", TS_LAYER_RMSNORM},
        {"relu", TS_LAYER_RELU}, {"silu", TS_LAYER_SILU}, {"gelu", TS_LAYER_GELU},
    };
    size_t len = strcspn(p, ":/+,");
    if (p + len > end)
        len = (size_t)(end - p);
    size_t k = 0, nk = sizeof names / sizeof names[0];
    while (k < nk && !(strlen(names[k].name) == len && strncmp(p, names[k].name, len) == 0))
        k++;
    if (k == nk)
        return "unknown layer type (expected linear, rmsnorm, relu, silu or gelu)";
    memset(s, 0, sizeof *s);
    s->kind = names[k].kind;
    s->group_size = 32;
    p += len;
    if (s->kind == TS_LAYER_LINEAR || s->kind == TS_LAYER_RMSNORM) {
        if (*p != ':' || p >= end)
            return s->kind == TS_LAYER_LINEAR ? "expected ':INxOUT' after linear"
                                              : "expected ':DIM' after rmsnorm";
        p++;
        if ((s->in_dim = parse_count(&p)) < 1)
            return "expected a positive dimension after ':'";
        s->out_dim = s->in_dim;
        if (s->kind == TS_LAYER_LINEAR) {
            if (*p != 'x' || (p++, (s->out_dim = parse_count(&p)) < 1))
                return "expected INxOUT with positive dimensions, e.g. linear:64x128";
        }
    }
    int seen_gs = 0;
    while (p < end) {
        if (strncmp(p, "/gs", 3) == 0 && !seen_gs && s->kind != TS_LAYER_RELU &&
            s->kind != TS_LAYER_SILU && s->kind != TS_LAYER_GELU) {
            p += 3;
            if ((s->group_size = parse_count(&p)) < 1)
                return "expected a positive group size after '/gs'";
            seen_gs = 1;
        } else if (strncmp(p, "+bias", 5) == 0 && !s->has_bias && s->kind == TS_LAYER_LINEAR) {
            p += 5;
            s->has_bias = 1;
        } else {
            return "unexpected text (suffixes are /gsN for ternary layers and +bias for linear, "
                   "each at most once)";
        }
    }
    return p == end ? NULL : "unexpected text after the item";
}

int ts_specs_parse(const char *text, ts_layer_spec *specs, int max, int *n, char *err, size_t errlen)
{
    int count = 0;
    const char *p = text;
    for (;;) {
        while (*p == ' ')
            p++;
        const char *end = p + strcspn(p, ",");
        const char *item_end = end;
        while (item_end > p && item_end[-1] == ' ')
            item_end--;
        if (item_end == p) {
            snprintf(err, errlen, "item %d is empty (write items such as linear:64x128, separated "
                     "by commas)", count + 1);
            return -1;
        }
        if (count >= max) {
            snprintf(err, errlen, "more than %d layers", max);
            return -1;
        }
        const char *why = parse_item(p, item_end, &specs[count]);
        if (why) {
            snprintf(err, errlen, "item %d ('%.*s'): %s", count + 1, (int)(item_end - p), p, why);
            return -1;
        }
        count++;
        if (*end == '\0')
            break;
        p = end + 1;
    }
    *n = count;
    return ts_specs_chain(specs, count, err, errlen);
}
