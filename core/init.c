/* init.c — fresh models, initialised by the reference constructors' procedure
 * (TernaryScaleTensor / TernaryRMSNorm in tscale_mini.py) from our own seeded RNG. */
#include "model.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>

#include "rng.h"
#include "trits.h"

/* The demo model: rmsnorm → linear(+bias) → gelu → linear, 16 inputs, 4 outputs, small
 * groups so that every code path (several groups per row, a partial group) is used. */
#define TS_DEMO_SPECS "rmsnorm:16/gs8,linear:16x64/gs8+bias,gelu,linear:64x4/gs16"
#define TS_DEMO_SEED  0x747363616c65ull   /* "tscale" */

/* E = clamp(round(log2(max(0.5 · in^-0.5, 2^-8))), -8, 0); Python's round() is
 * round-half-even, as is nearbyint() in the default rounding mode. */
static int8_t linear_E(int64_t in_dim)
{
    double target = 0.5 * pow((double)in_dim, -0.5);
    double e = nearbyint(log2(fmax(target, ldexp(1.0, -8))));
    return (int8_t)fmin(0.0, fmax(-8.0, e));
}

/* T = ternarise(N(0, std²), threshold): sign(w) where |w| > threshold, else 0. */
static int init_layer(ts_layer *l, ts_rng *rng)
{
    int linear = l->spec.kind == TS_LAYER_LINEAR;
    float std = linear ? (l->spec.has_bias ? 0.02f : 0.1f) : 0.02f;
    float threshold = linear ? 0.05f : 0.01f;
    size_t n = (size_t)l->rows * (size_t)l->cols;
    int8_t *T = malloc(n);
    if (!T)
        return -1;
    for (size_t k = 0; k < n; k++) {
        float w = (float)ts_rng_normal(rng) * std;
        T[k] = (int8_t)((w > threshold) - (w < -threshold));
    }
    ts_trits_pack(T, n, l->T_packed);
    free(T);
    int8_t E = linear ? linear_E(l->cols) : -4;
    for (int64_t g = 0; g < l->n_groups; g++)
        l->E[g] = E;
    return 0;
}

ts_model *ts_model_init(const ts_layer_spec *specs, int n, uint64_t seed, char *err, size_t errlen)
{
    ts_model *m = ts_model_alloc(specs, n, err, errlen);
    if (!m)
        return NULL;
    ts_rng rng;
    ts_rng_seed(&rng, seed);
    for (int i = 0; i < n; i++) {
        ts_layer *l = &m->layers[i];
        if (l->spec.kind != TS_LAYER_LINEAR && l->spec.kind != TS_LAYER_RMSNORM)
            continue;
        if (init_layer(l, &rng) != 0) {
            snprintf(err, errlen, "out of memory initialising layer %d", i);
            ts_model_free(m);
            return NULL;
        }
    }
    if (ts_model_prepare(m, err, errlen) != 0) {
        ts_model_free(m);
        return NULL;
    }
    return m;
}

ts_model *ts_model_demo(char *err, size_t errlen)
{
    ts_layer_spec specs[8];
    int n;
    if (ts_specs_parse(TS_DEMO_SPECS, specs, 8, &n, err, errlen) != 0)
        return NULL;
    return ts_model_init(specs, n, TS_DEMO_SEED, err, errlen);
}
