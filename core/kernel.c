/* kernel.c — the portable ternary kernels (see kernel.h).
 *
 * Layout: the trits unpacked to one int8 per weight, row-major [rows][cols]. Work is split
 * over output rows (forward, score) or input columns (backward_x) with the pool, so every
 * output element is written by exactly one thread and sums run in a fixed order: results
 * do not depend on the thread count.
 */
#include "kernel.h"

#include <stdlib.h>

#include "trits.h"

struct ts_weights {
    int64_t rows, cols, gs, gpr;
    int8_t *T;   /* [rows][cols] trits in {-1, 0, +1} */
};

ts_weights *ts_weights_build(const uint8_t *T_packed, int64_t rows, int64_t cols, int64_t gs)
{
    if (rows < 1 || cols < 1 || gs < 1 || (uint64_t)rows > SIZE_MAX / (uint64_t)cols)
        return NULL;
    ts_weights *w = calloc(1, sizeof *w);
    if (!w)
        return NULL;
    size_t n = (size_t)rows * (size_t)cols;
    w->T = malloc(n);
    if (!w->T || ts_trits_unpack(T_packed, n, w->T) != 0) {
        ts_weights_free(w);
        return NULL;
    }
    w->rows = rows;
    w->cols = cols;
    w->gs = gs;
    w->gpr = (cols + gs - 1) / gs;
    return w;
}

void ts_weights_free(ts_weights *w)
{
    if (!w)
        return;
    free(w->T);
    free(w);
}

size_t ts_weights_bytes(const ts_weights *w)
{
    return w ? sizeof *w + (size_t)w->rows * (size_t)w->cols : 0;
}

int ts_weights_trit(const ts_weights *w, int64_t r, int64_t c) { return w->T[r * w->cols + c]; }

/* ── forward: y[b][r] = Σ_c S[r,c/gs] · T[r][c] · x[b][c] ── */
typedef struct {
    const ts_weights *w;
    const float *S, *x;
    int64_t B;
    float *y;
} fwd_job;

static void forward_rows(void *arg, int64_t r0, int64_t r1)
{
    const fwd_job *j = arg;
    const ts_weights *w = j->w;
    for (int64_t b = 0; b < j->B; b++) {
        const float *x = j->x + b * w->cols;
        for (int64_t r = r0; r < r1; r++) {
            const int8_t *t = w->T + r * w->cols;
            const float *s = j->S + r * w->gpr;
            float acc = 0.0f;
            for (int64_t c = 0; c < w->cols; c++)
                acc += s[c / w->gs] * (float)t[c] * x[c];
            j->y[b * w->rows + r] = acc;
        }
    }
}

void ts_kernel_forward(const ts_weights *w, const float *S, const float *x, int64_t B,
                       float *y, ts_pool *pool)
{
    fwd_job j = {w, S, x, B, y};
    ts_pool_run(pool, w->rows, 16, forward_rows, &j);
}

/* ── backward_x: dx[b][c] = Σ_r dy[b][r] · S[r,c/gs] · T[r][c] ── */
typedef struct {
    const ts_weights *w;
    const float *S, *dy;
    int64_t B;
    float *dx;
} bwd_job;

static void backward_cols(void *arg, int64_t c0, int64_t c1)
{
    const bwd_job *j = arg;
    const ts_weights *w = j->w;
    for (int64_t b = 0; b < j->B; b++) {
        float *dx = j->dx + b * w->cols;
        const float *dy = j->dy + b * w->rows;
        for (int64_t c = c0; c < c1; c++)
            dx[c] = 0.0f;
        for (int64_t r = 0; r < w->rows; r++) {
            const int8_t *t = w->T + r * w->cols;
            const float *s = j->S + r * w->gpr;
            for (int64_t c = c0; c < c1; c++)
                dx[c] += dy[r] * (s[c / w->gs] * (float)t[c]);
        }
    }
}

void ts_kernel_backward_x(const ts_weights *w, const float *S, const float *dy, int64_t B,
                          float *dx, ts_pool *pool)
{
    bwd_job j = {w, S, dy, B, dx};
    ts_pool_run(pool, w->cols, 64, backward_cols, &j);
}

/* ── score[r,g] = Σ_{c∈g} sign(Σ_b dy[b][r] · x[b][c]) · T[r][c] ── */
typedef struct {
    const ts_weights *w;
    const float *dy, *x;
    int64_t B;
    int64_t *score;
} score_job;

static void score_rows(void *arg, int64_t r0, int64_t r1)
{
    const score_job *j = arg;
    const ts_weights *w = j->w;
    for (int64_t r = r0; r < r1; r++) {
        const int8_t *t = w->T + r * w->cols;
        int64_t *score = j->score + r * w->gpr;
        for (int64_t g = 0; g < w->gpr; g++)
            score[g] = 0;
        for (int64_t c = 0; c < w->cols; c++) {
            if (t[c] == 0)
                continue;   /* contributes 0 whatever dW's sign */
            float dw = 0.0f;
            for (int64_t b = 0; b < j->B; b++)
                dw += j->dy[b * w->rows + r] * j->x[b * w->cols + c];
            int sign = (dw > 0.0f) - (dw < 0.0f);
            score[c / w->gs] += sign * t[c];
        }
    }
}

void ts_kernel_score(const ts_weights *w, const float *dy, const float *x, int64_t B,
                     int64_t *score, ts_pool *pool)
{
    score_job j = {w, dy, x, B, score};
    ts_pool_run(pool, w->rows, 16, score_rows, &j);
}

const char *ts_kernel_name(void) { return "portable"; }
