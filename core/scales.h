/* scales.h — the per-group scales of a ternary layer, S = 2^(E + 4·mean_corr), computed fast
 * and bit-identical to the plain libm loop.
 *
 * After every feedback step every scale of a layer changes (the step count is in the mean),
 * so all of them are recomputed; one libm exp2f per group costs more than a batch-8 forward of
 * a 4096×4096 layer. ts_scales_compute gives the same float bits as the readable definition
 *     S[i·stride] = exp2f((float)E[i] + ((float)corr[i] / denom) · 4.0f)    when step > 0
 *     S[i·stride] = exp2f((float)E[i])                                      otherwise
 * (the float32 operations of model.h's formula, in that order). The AVX-512 path
 * (scales_avx512.c) evaluates glibc's exp2f algorithm 16 lanes at a time; it is used only
 * when this process's libm exp2f gives its bits (checked once, on inputs where libm's of other
 * versions or builds differ), else the plain loop runs.
 */
#ifndef TS_SCALES_H
#define TS_SCALES_H

#include <stdint.h>

/* The float32 divisor of the mean: (float)(step·gs), or (float)step · (float)gs when step·gs
 * overflows int64; 1 when step <= 0 (the mean is then not used) or gs < 1. */
float ts_scales_denom(int64_t step, int64_t gs);

/* S[i·stride] for i in [0, n), as above; denom from ts_scales_denom; corr may be NULL when
 * step <= 0. stride >= 1: 1 for a row-major S, or the distance between a row's groups in a
 * blocked layout (S of a row computed per call). */
void ts_scales_compute(const int8_t *E, const int64_t *corr, int64_t n, int64_t step, float denom,
                       float *S, int64_t stride);

/* The scales of a block of nrows <= 16 rows of gpr groups (row r's E and corr at E + r·gpr,
 * corr + r·gpr) into S[g·16 + r], g < gpr: the kernels' order (kernel.h), where 16 rows'
 * scales of one group are side by side. The same bits as ts_scales_compute. When score is
 * not NULL, update_corr comes first: corr -= score (same layout as corr), in the same pass. */
void ts_scales_block(const int8_t *E, int64_t *corr, const int16_t *score, int64_t gpr, int nrows,
                     int64_t step, float denom, float *S);

/* y[i] = exp2f(x[i]) for i in [0, n), bit for bit (the same choice of path as above). */
void ts_scales_exp2(const float *x, int64_t n, float *y);

/* The path in use, "avx512" or "portable": the AVX-512 one when the CPU runs it and libm's
 * exp2f is the one it reproduces. ts_scales_use("portable" or "avx512") switches the whole
 * process (tests compare the paths with it); -1 when the name is unknown or the path cannot
 * run here. */
const char *ts_scales_name(void);
int ts_scales_use(const char *name);

/* The AVX-512 bodies (scales_avx512.c): call the dispatching functions above instead. */
void ts_scales_compute_avx512(const int8_t *E, const int64_t *corr, int64_t n, int64_t step,
                              float denom, float *S, int64_t stride);
void ts_scales_exp2_avx512(const float *x, int64_t n, float *y);
void ts_scales_block_avx512(const int8_t *E, int64_t *corr, const int16_t *score, int64_t gpr,
                            int nrows, int64_t step, float denom, float *S);

#endif
