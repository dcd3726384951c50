/* model.c — a sequential model's memory: allocation, derived state (W, S), the mutable
 * state that snapshots hold, copies and sizes. Architecture text and checks live in
 * specs.c, initialisation in init.c. */
#include "model.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "scales.h"
#include "trits.h"

static int is_ternary(ts_layer_kind k) { return k == TS_LAYER_LINEAR || k == TS_LAYER_RMSNORM; }

/* T_packed holding rows·cols trits 0 (digit 1); pad digits are 0 as pack writes them. */
static void fill_zero_trits(uint8_t *packed, size_t n)
{
    size_t nbytes = ts_trits_packed_size(n);
    memset(packed, 1 + 3 + 9 + 27 + 81, nbytes);
    if (n % 5) {
        unsigned byte = 0, mul = 1;
        for (size_t k = 0; k < n % 5; k++, mul *= 3)
            byte += mul;
        packed[nbytes - 1] = (uint8_t)byte;
    }
}

/* S in the kernels' order (kernel.h): 64-byte aligned, padding rows 0. */
static float *scales_alloc(int64_t rows, int64_t gpr)
{
    size_t bytes = (size_t)ts_scale_count(rows, gpr) * sizeof(float);
    float *S = ts_kernel_alloc(bytes);
    if (S)
        memset(S, 0, bytes);
    return S;
}

/* Allocate one ternary layer's state; the specs are already checked, so every size
 * below is far from overflow (TS_MAX_PARAMS trits, TS_MAX_DIM rows). */
static int layer_alloc(ts_layer *l)
{
    const ts_layer_spec *s = &l->spec;
    l->rows = s->kind == TS_LAYER_LINEAR ? s->out_dim : 1;
    l->cols = s->in_dim;
    l->gpr = (l->cols + s->group_size - 1) / s->group_size;
    l->n_groups = l->rows * l->gpr;
    size_t n = (size_t)l->rows * (size_t)l->cols, G = (size_t)l->n_groups;
    l->T_pad = ts_trits_pad(n);
    l->T_packed = malloc(ts_trits_packed_size(n));
    l->E = calloc(G, sizeof *l->E);
    l->corr_accum = calloc(G, sizeof *l->corr_accum);
    l->S = scales_alloc(l->rows, l->gpr);
    if (s->has_bias)
        l->bias = calloc((size_t)l->rows, sizeof *l->bias);
    if (!l->T_packed || !l->E || !l->corr_accum || !l->S || (s->has_bias && !l->bias))
        return -1;
    fill_zero_trits(l->T_packed, n);
    ts_layer_update_scales(l, NULL);
    return 0;
}

ts_model *ts_model_alloc(const ts_layer_spec *specs, int n, char *err, size_t errlen)
{
    if (ts_specs_check(specs, n, err, errlen) != 0)
        return NULL;
    ts_model *m = calloc(1, sizeof *m);
    if (!m || !(m->layers = calloc((size_t)n, sizeof *m->layers))) {
        free(m);
        snprintf(err, errlen, "out of memory allocating a model of %d layers", n);
        return NULL;
    }
    m->n_layers = n;
    m->in_dim = specs[0].in_dim;
    m->out_dim = specs[n - 1].out_dim;
    for (int i = 0; i < n; i++) {
        ts_layer *l = &m->layers[i];
        l->spec = specs[i];
        if (is_ternary(l->spec.kind) && layer_alloc(l) != 0) {
            snprintf(err, errlen, "out of memory allocating layer %d (%s, %lld x %lld)", i,
                     ts_layer_kind_name(l->spec.kind), (long long)l->rows, (long long)l->cols);
            ts_model_free(m);
            return NULL;
        }
    }
    return m;
}

void ts_model_free(ts_model *m)
{
    if (!m)
        return;
    for (int i = 0; i < m->n_layers; i++) {
        ts_layer *l = &m->layers[i];
        free(l->T_packed);
        free(l->E);
        free(l->corr_accum);
        free(l->bias);
        free(l->S);
        ts_weights_free(l->W);
    }
    free(m->layers);
    free(m);
}

static int layer_prepare(ts_layer *l, int i, char *err, size_t errlen)
{
    size_t n = (size_t)l->rows * (size_t)l->cols, nbytes = ts_trits_packed_size(n);
    if (l->T_pad != ts_trits_pad(n)) {
        snprintf(err, errlen, "layer %d: _T_pad is %lld but %zu trits need %d pad digits", i,
                 (long long)l->T_pad, n, ts_trits_pad(n));
        return -1;
    }
    if (!l->T_packed) {   /* prepared before: W holds T, only the scales may have changed */
        ts_layer_update_scales(l, NULL);
        return 0;
    }
    for (size_t k = 0; k < nbytes; k++) {
        if (l->T_packed[k] >= 243) {
            snprintf(err, errlen, "layer %d: T_packed byte %zu is %u (must be < 243): corrupt "
                     "ternary data", i, k, l->T_packed[k]);
            return -1;
        }
    }
    static const unsigned pow3[] = {1, 3, 9, 27, 81, 243};
    if (l->T_pad && l->T_packed[nbytes - 1] >= pow3[5 - l->T_pad]) {
        snprintf(err, errlen, "layer %d: the %d pad digits of the last T_packed byte must be 0 "
                 "(byte is %u)", i, (int)l->T_pad, l->T_packed[nbytes - 1]);
        return -1;
    }
    ts_weights *W = ts_weights_build(l->T_packed, l->rows, l->cols, l->spec.group_size);
    if (!W) {
        snprintf(err, errlen, "out of memory building the weights of layer %d (%lld x %lld)", i,
                 (long long)l->rows, (long long)l->cols);
        return -1;
    }
    ts_weights_free(l->W);
    l->W = W;
    free(l->T_packed);   /* W gives the bytes back (ts_layer_packed): keep one copy of T */
    l->T_packed = NULL;
    ts_layer_update_scales(l, NULL);
    return 0;
}

void ts_layer_packed(const ts_layer *l, uint8_t *out)
{
    if (l->T_packed)
        memcpy(out, l->T_packed, ts_trits_packed_size((size_t)l->rows * (size_t)l->cols));
    else
        ts_weights_pack(l->W, out);
}

int ts_model_prepare(ts_model *m, char *err, size_t errlen)
{
    for (int i = 0; i < m->n_layers; i++)
        if (is_ternary(m->layers[i].spec.kind) && layer_prepare(&m->layers[i], i, err, errlen) != 0)
            return -1;
    return 0;
}

typedef struct {
    ts_layer *l;
    const int16_t *score;   /* [G] to subtract from corr_accum first, or NULL */
    float denom;
} scales_job;

/* Row blocks [k0, k1): update_corr of their rows when there is a score, then their scales,
 * a block of 16 rows at a time into the kernels' order, in one pass (ts_scales_block). */
static void scales_blocks(void *arg, int64_t k0, int64_t k1)
{
    const scales_job *j = arg;
    ts_layer *l = j->l;
    for (int64_t k = k0; k < k1; k++) {
        int64_t r0 = k * TS_SCALE_ROWS;
        int nrows = (int)(l->rows - r0 < TS_SCALE_ROWS ? l->rows - r0 : TS_SCALE_ROWS);
        ts_scales_block(l->E + r0 * l->gpr, l->corr_accum + r0 * l->gpr,
                        j->score ? j->score + r0 * l->gpr : NULL, l->gpr, nrows, l->step,
                        j->denom, l->S + ts_scale_index(l->gpr, r0, 0));
    }
}

/* Both run over the row blocks on the pool's threads, enough groups (~2^16) per thread to be worth
 * waking it. S = exp2f(E + ((float)corr_accum / (float)(step·gs)) · 4) in float32 (scales.h
 * has the reference's exact operations). */
static void scales_run(ts_layer *l, const int16_t *score, ts_pool *pool)
{
    scales_job j = {l, score, ts_scales_denom(l->step, l->spec.group_size)};
    int64_t blocks = (l->rows + TS_SCALE_ROWS - 1) / TS_SCALE_ROWS;
    ts_pool_run(pool, blocks, ((int64_t)1 << 16) / (l->gpr * TS_SCALE_ROWS) + 1, scales_blocks, &j);
}

void ts_layer_update_scales(ts_layer *l, ts_pool *pool) { scales_run(l, NULL, pool); }

void ts_layer_update_corr(ts_layer *l, const int16_t *score, ts_pool *pool)
{
    l->step += 1;
    scales_run(l, score, pool);
}

size_t ts_model_score_len(const ts_model *m)
{
    size_t n = 0;
    for (int i = 0; i < m->n_layers; i++)
        if (m->layers[i].spec.kind == TS_LAYER_LINEAR)
            n += (size_t)m->layers[i].n_groups;
    return n;
}

void ts_model_apply_scores(ts_model *m, const int16_t *scores, int sign, ts_pool *pool)
{
    for (int i = 0; i < m->n_layers; i++) {
        ts_layer *l = &m->layers[i];
        if (l->spec.kind != TS_LAYER_LINEAR)
            continue;
        if (sign > 0) {
            ts_layer_update_corr(l, scores, pool);
        } else {
            for (int64_t g = 0; g < l->n_groups; g++)
                l->corr_accum[g] += scores[g];
            l->step -= 1;
            ts_layer_update_scales(l, pool);
        }
        scores += l->n_groups;
    }
}

void ts_model_apply_sum(ts_model *m, const int32_t *sums, int64_t steps, ts_pool *pool)
{
    for (int i = 0; i < m->n_layers; i++) {
        ts_layer *l = &m->layers[i];
        if (l->spec.kind != TS_LAYER_LINEAR)
            continue;
        for (int64_t g = 0; g < l->n_groups; g++)
            l->corr_accum[g] -= sums[g];
        l->step += steps;
        ts_layer_update_scales(l, pool);
        sums += l->n_groups;
    }
}

float ts_layer_scale(const ts_layer *l, int64_t r, int64_t g)
{
    return l->S[ts_scale_index(l->gpr, r, g)];
}

int64_t ts_model_step(const ts_model *m)
{
    for (int i = 0; i < m->n_layers; i++)
        if (m->layers[i].spec.kind == TS_LAYER_LINEAR)
            return m->layers[i].step;
    return 0;
}

size_t ts_state_len(const ts_model *m)
{
    size_t len = 0;
    for (int i = 0; i < m->n_layers; i++)
        if (is_ternary(m->layers[i].spec.kind))
            len += 1 + (size_t)m->layers[i].n_groups;
    return len;
}

void ts_state_save(const ts_model *m, int64_t *out)
{
    for (int i = 0; i < m->n_layers; i++) {
        const ts_layer *l = &m->layers[i];
        if (!is_ternary(l->spec.kind))
            continue;
        *out++ = l->step;
        memcpy(out, l->corr_accum, (size_t)l->n_groups * sizeof *out);
        out += l->n_groups;
    }
}

void ts_state_load(ts_model *m, const int64_t *in)
{
    for (int i = 0; i < m->n_layers; i++) {
        ts_layer *l = &m->layers[i];
        if (!is_ternary(l->spec.kind))
            continue;
        l->step = *in++;
        memcpy(l->corr_accum, in, (size_t)l->n_groups * sizeof *in);
        in += l->n_groups;
        ts_layer_update_scales(l, NULL);
    }
}

ts_model *ts_model_clone(const ts_model *m)
{
    char err[256];
    ts_layer_spec specs[TS_MAX_LAYERS];
    for (int i = 0; i < m->n_layers; i++)
        specs[i] = m->layers[i].spec;
    ts_model *c = ts_model_alloc(specs, m->n_layers, err, sizeof err);
    if (!c)
        return NULL;
    for (int i = 0; i < m->n_layers; i++) {
        const ts_layer *src = &m->layers[i];
        ts_layer *dst = &c->layers[i];
        if (!is_ternary(src->spec.kind))
            continue;
        size_t G = (size_t)src->n_groups;
        ts_layer_packed(src, dst->T_packed);
        dst->T_pad = src->T_pad;
        memcpy(dst->E, src->E, G * sizeof *dst->E);
        memcpy(dst->corr_accum, src->corr_accum, G * sizeof *dst->corr_accum);
        dst->step = src->step;
        if (src->bias)
            memcpy(dst->bias, src->bias, (size_t)src->rows * sizeof *dst->bias);
    }
    if (ts_model_prepare(c, err, sizeof err) != 0) {
        ts_model_free(c);
        return NULL;
    }
    return c;
}

/* One allocation: the model, its layer table, then the copied state (ts_state_save's
 * layout, so corr_accum of each layer points just after its step). */
ts_model *ts_model_view(const ts_model *m)
{
    size_t n = (size_t)m->n_layers, len = ts_state_len(m);
    ts_model *v = malloc(sizeof *v + n * sizeof(ts_layer) + len * sizeof(int64_t));
    if (!v)
        return NULL;
    *v = *m;
    v->layers = (ts_layer *)(v + 1);
    int64_t *state = (int64_t *)(v->layers + n);
    ts_state_save(m, state);
    for (size_t i = 0; i < n; i++) {
        ts_layer *l = &v->layers[i];
        *l = m->layers[i];
        l->S = NULL; /* derived, and being rewritten by every step of m */
        if (!is_ternary(l->spec.kind))
            continue;
        l->step = *state++;
        l->corr_accum = state;
        state += l->n_groups;
    }
    return v;
}

void ts_model_view_free(ts_model *v)
{
    free(v);
}

int64_t ts_model_params(const ts_model *m)
{
    int64_t n = 0;
    for (int i = 0; i < m->n_layers; i++)
        if (is_ternary(m->layers[i].spec.kind))
            n += m->layers[i].rows * m->layers[i].cols;
    return n;
}

int64_t ts_model_groups(const ts_model *m)
{
    int64_t n = 0;
    for (int i = 0; i < m->n_layers; i++)
        n += m->layers[i].n_groups;   /* 0 for activations */
    return n;
}

size_t ts_model_bytes(const ts_model *m)
{
    size_t bytes = sizeof *m + (size_t)m->n_layers * sizeof *m->layers;
    for (int i = 0; i < m->n_layers; i++) {
        const ts_layer *l = &m->layers[i];
        if (!is_ternary(l->spec.kind))
            continue;
        size_t G = (size_t)l->n_groups;
        if (l->T_packed)   /* only until ts_model_prepare */
            bytes += ts_trits_packed_size((size_t)l->rows * (size_t)l->cols);
        bytes += G * (sizeof *l->E + sizeof *l->corr_accum) +
                 (size_t)ts_scale_count(l->rows, l->gpr) * sizeof *l->S;
        if (l->bias)
            bytes += (size_t)l->rows * sizeof *l->bias;
        bytes += ts_weights_bytes(l->W);
    }
    return bytes;
}
