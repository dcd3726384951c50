/* forward.h — batched float32 inference through a sequential model.
 *
 *   x[B][in_dim]  →  y[B][out_dim]
 *
 * Reads the model only, so several forwards may run at once on one model; the caller
 * keeps feedback steps (which write corr_accum/step/S) from overlapping them.
 */
#ifndef TS_FORWARD_H
#define TS_FORWARD_H

#include "model.h"
#include "pool.h"

/* Returns 0, or -1 on allocation failure. */
int ts_model_forward(const ts_model *m, const float *x, int64_t B, float *y, ts_pool *pool);

/* One layer: x[B][spec.in_dim] → y[B][spec.out_dim] (y must not alias x). */
void ts_layer_forward(const ts_layer *l, const float *x, int64_t B, float *y, ts_pool *pool);

/* The elementwise pieces, shared with feedback (backward). */
void ts_rmsnorm_forward(const ts_layer *l, const float *x, int64_t B, float *y);
/* rsqrt(mean(x²) + FLT_EPSILON) of one row x[dim]. */
float ts_rmsnorm_rscale(const float *x, int64_t dim);
/* The rmsnorm weight w_eff[c] = S[c/gs] · T[0][c]. */
float ts_rmsnorm_weight(const ts_layer *l, int64_t c);
float ts_gelu(float x);
float ts_silu(float x);

#endif
