/* scales.c — the scales' readable definition (the plain libm loop) and the run-time choice
 * between it and the AVX-512 path (scales_avx512.c), which gives the same bits faster.
 */
#include "scales.h"

#include <math.h>
#include <pthread.h>
#include <string.h>

/* The reference divides by the float32 value of the Python int step·gs (model.c). */
float ts_scales_denom(int64_t step, int64_t gs)
{
    if (step <= 0 || gs < 1)
        return 1.0f;
    return step <= INT64_MAX / gs ? (float)(step * gs) : (float)step * (float)gs;
}

static void compute_portable(const int8_t *E, const int64_t *corr, int64_t n, int64_t step,
                             float denom, float *S, int64_t stride)
{
    for (int64_t i = 0; i < n; i++) {
        float e = (float)E[i];
        if (step > 0) {
            float mean_corr = (float)corr[i] / denom;
            e = e + mean_corr * 4.0f;
        }
        S[i * stride] = exp2f(e);
    }
}

static void block_portable(const int8_t *E, int64_t *corr, const int16_t *score, int64_t gpr,
                           int nrows, int64_t step, float denom, float *S)
{
    if (score)
        for (int64_t i = 0; i < nrows * gpr; i++)
            corr[i] -= score[i];
    for (int r = 0; r < nrows; r++)
        compute_portable(E + r * gpr, step > 0 ? corr + r * gpr : NULL, gpr, step, denom, S + r, 16);
}

static void exp2_portable(const float *x, int64_t n, float *y)
{
    for (int64_t i = 0; i < n; i++)
        y[i] = exp2f(x[i]);
}

typedef struct {
    const char *name;
    void (*compute)(const int8_t *E, const int64_t *corr, int64_t n, int64_t step, float denom,
                    float *S, int64_t stride);
    void (*exp2)(const float *x, int64_t n, float *y);
    void (*block)(const int8_t *E, int64_t *corr, const int16_t *score, int64_t gpr, int nrows,
                  int64_t step, float denom, float *S);
} scales_path;

static const scales_path path_portable = {"portable", compute_portable, exp2_portable,
                                          block_portable};
static const scales_path path_avx512 = {"avx512", ts_scales_compute_avx512, ts_scales_exp2_avx512,
                                        ts_scales_block_avx512};

/* Inputs where glibc 2.36's exp2f is not the correctly rounded result (found by comparing it
 * with exp2 in double over every float), spread over the range, and a few ordinary, subnormal
 * and special ones. Where libm agrees with the AVX-512 path on all of them, it is the
 * algorithm scales_avx512.c reproduces; a correctly rounded exp2f (or another algorithm)
 * would differ on some, and then the plain loop runs. */
static const float probes[] = {
    -0x1.10454ap+7f, -0x1.fc3832p+6f, -0x1.02cac4p+6f, -0x1.d330acp+2f, -0x1.ccc02ep-1f,
    0x1.8609cp-9f, 0x1.19f282p-8f, 0x1.a687d2p+1f, 0x1.51a096p+4f, 0x1.92e70ep+6f,
    0x1.fce926p+6f, 0.0f, -0.0f, 1.0f, -1.0f, 0.5f, -0x1.2bfffep+7f, 0x1.fffffep+6f,
    -128.0f, 127.0f, 128.0f, -150.0f, INFINITY, -INFINITY,
};

/* libm's exp2f, called through a pointer the compiler cannot see through: a call it could
 * see, on a constant, it may evaluate at compile time (correctly rounded, not libm's). */
static float (*volatile libm_exp2f)(float) = exp2f;

static int avx512_runs(void)
{
    __builtin_cpu_init();
    if (!__builtin_cpu_supports("avx512f") || !__builtin_cpu_supports("avx512bw") ||
        !__builtin_cpu_supports("avx512vl") || !__builtin_cpu_supports("avx512dq"))
        return 0;
    int n = (int)(sizeof probes / sizeof probes[0]);
    float got[sizeof probes / sizeof probes[0]];
    ts_scales_exp2_avx512(probes, n, got);
    for (int i = 0; i < n; i++) {
        float want = libm_exp2f(probes[i]);
        if (memcmp(&want, &got[i], sizeof want) != 0)
            return 0;
    }
    return 1;
}

/* The choice depends only on the CPU and libm, so it is made once per process. */
static const scales_path *chosen;
static int avx512_ok;
static pthread_once_t chosen_once = PTHREAD_ONCE_INIT;

static void choose_path(void)
{
    avx512_ok = avx512_runs();
    chosen = avx512_ok ? &path_avx512 : &path_portable;
}

static const scales_path *path(void)
{
    pthread_once(&chosen_once, choose_path);
    return chosen;
}

void ts_scales_compute(const int8_t *E, const int64_t *corr, int64_t n, int64_t step, float denom,
                       float *S, int64_t stride)
{
    path()->compute(E, corr, n, step, denom, S, stride);
}

void ts_scales_block(const int8_t *E, int64_t *corr, const int16_t *score, int64_t gpr, int nrows,
                     int64_t step, float denom, float *S)
{
    path()->block(E, corr, score, gpr, nrows, step, denom, S);
}

void ts_scales_exp2(const float *x, int64_t n, float *y)
{
    path()->exp2(x, n, y);
}

const char *ts_scales_name(void) { return path()->name; }

int ts_scales_use(const char *name)
{
    pthread_once(&chosen_once, choose_path);
    if (name && strcmp(name, "portable") == 0)
        chosen = &path_portable;
    else if (name && strcmp(name, "avx512") == 0 && avx512_ok)
        chosen = &path_avx512;
    else
        return -1;
    return 0;
}
