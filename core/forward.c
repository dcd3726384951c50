/* forward.c — batched float32 inference through a sequential model (see forward.h).
 *
 * Two scratch buffers ping-pong between layers; the last layer writes into y. */
#include "forward.h"

#include <float.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>

float ts_gelu(float x) { return 0.5f * x * (1.0f + erff(x * (float)M_SQRT1_2)); }

float ts_silu(float x) { return x / (1.0f + expf(-x)); }

float ts_rmsnorm_rscale(const float *x, int64_t dim)
{
    float ss = 0.0f;
    for (int64_t c = 0; c < dim; c++)
        ss += x[c] * x[c];
    return 1.0f / sqrtf(ss / (float)dim + FLT_EPSILON);
}

float ts_rmsnorm_weight(const ts_layer *l, int64_t c)
{
    return ts_layer_scale(l, 0, c / l->spec.group_size) * (float)ts_weights_trit(l->W, 0, c);
}

/* y = (x · rsqrt(mean(x²) + ε)) ⊙ w_eff, in the reference's order. */
void ts_rmsnorm_forward(const ts_layer *l, const float *x, int64_t B, float *y)
{
    int64_t dim = l->cols;
    for (int64_t b = 0; b < B; b++) {
        float r = ts_rmsnorm_rscale(x + b * dim, dim);
        for (int64_t c = 0; c < dim; c++)
            y[b * dim + c] = x[b * dim + c] * r;
    }
    /* Columns outer: each weight is computed once per call. */
    for (int64_t c = 0; c < dim; c++) {
        float w = ts_rmsnorm_weight(l, c);
        for (int64_t b = 0; b < B; b++)
            y[b * dim + c] *= w;
    }
}

void ts_layer_forward(const ts_layer *l, const float *x, int64_t B, float *y, ts_pool *pool)
{
    int64_t n = B * l->spec.out_dim;
    switch (l->spec.kind) {
    case TS_LAYER_LINEAR:
        /* y[B][out] = x[B][in] · W_effᵀ + bias */
        ts_kernel_forward(l->W, l->S, x, B, y, pool);
        if (l->bias)
            for (int64_t b = 0; b < B; b++)
                for (int64_t r = 0; r < l->rows; r++)
                    y[b * l->rows + r] += (float)l->bias[r];
        break;
    case TS_LAYER_RMSNORM:
        ts_rmsnorm_forward(l, x, B, y);
        break;
    case TS_LAYER_RELU:
        for (int64_t k = 0; k < n; k++)
            y[k] = x[k] > 0.0f ? x[k] : 0.0f;
        break;
    case TS_LAYER_SILU:
        for (int64_t k = 0; k < n; k++)
            y[k] = ts_silu(x[k]);
        break;
    case TS_LAYER_GELU:
        for (int64_t k = 0; k < n; k++)
            y[k] = ts_gelu(x[k]);
        break;
    }
}

/* Largest dim any layer's output has (the scratch row width). */
static int64_t max_dim(const ts_model *m)
{
    int64_t d = m->in_dim;
    for (int i = 0; i < m->n_layers; i++)
        if (m->layers[i].spec.out_dim > d)
            d = m->layers[i].spec.out_dim;
    return d;
}

int ts_model_forward(const ts_model *m, const float *x, int64_t B, float *y, ts_pool *pool)
{
    if (B < 0)
        return -1;
    if (B == 0)
        return 0;
    int64_t dim = max_dim(m);
    if ((uint64_t)B > SIZE_MAX / 2 / sizeof(float) / (uint64_t)dim)
        return -1;
    size_t row = (size_t)B * (size_t)dim;
    float *buf = malloc(2 * row * sizeof *buf);   /* [2][B][dim] */
    if (!buf)
        return -1;
    const float *in = x;
    for (int i = 0; i < m->n_layers; i++) {
        float *out = i == m->n_layers - 1 ? y : buf + (size_t)(i % 2) * row;
        ts_layer_forward(&m->layers[i], in, B, out, pool);
        in = out;
    }
    free(buf);
    return 0;
}
