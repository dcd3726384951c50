/* kernel.h — the narrow boundary between the model and the ternary compute kernels.
 *
 * Everything the kernels need about a layer's weights is a ts_weights: a compute layout
 * built once from T_packed at load and never changed (feedback never touches T). The
 * per-group scales S are passed separately because feedback changes them after each step.
 *
 * Shapes: the layer has `rows` outputs and `cols` inputs; groups are `gs` consecutive
 * columns of one row, gpr = ceil(cols/gs) groups per row, G = rows·gpr, and S[r, g]
 * is the scale of group g of row r, stored at S[ts_scale_index(gpr, r, g)] (below).
 * W_eff[r][c] = S[r, c/gs] · T[r][c].
 *
 * All functions are pure compute: no I/O, no allocation on the hot path. pool may be NULL.
 */
#ifndef TS_KERNEL_H
#define TS_KERNEL_H

#include <stddef.h>
#include <stdint.h>

#include "pool.h"

typedef struct ts_weights ts_weights;

/* S is kept in the kernels' order, not row-major: rows in blocks of TS_SCALE_ROWS (16), each
 * block group by group, the block's 16 rows of one group side by side in one 64-byte line:
 *     S[((r/16) · gpr + g) · 16 + r % 16] = S[r, g]
 * (rows past the layer's end hold 0; the array is 64-byte aligned). A kernel reads the scales
 * of 16 rows with one aligned load, where a row-major S costs a gather or a transpose per group
 * (a quarter of a batch-1 forward). The model refreshes S in this order after every feedback
 * step (ts_layer_update_scales). */
#define TS_SCALE_ROWS 16
/* Floats in S for a layer of `rows` rows and gpr groups per row. */
static inline int64_t ts_scale_count(int64_t rows, int64_t gpr)
{
    return (rows + TS_SCALE_ROWS - 1) / TS_SCALE_ROWS * TS_SCALE_ROWS * gpr;
}
/* Index in S of the scale of group g of row r; a row's groups are TS_SCALE_ROWS apart. */
static inline int64_t ts_scale_index(int64_t gpr, int64_t r, int64_t g)
{
    return ((r / TS_SCALE_ROWS) * gpr + g) * TS_SCALE_ROWS + r % TS_SCALE_ROWS;
}

/* Memory a kernel streams (the layout, S): 64-byte aligned and, when large, on 2 MiB pages
 * where the OS allows (a forward from DRAM then walks few pages: fewer TLB misses, and the
 * prefetchers are not stopped at every 4 KiB). Released with free(); NULL when short. */
void *ts_kernel_alloc(size_t bytes);

/* Build the compute layout. T_packed holds rows·cols trits (ts_trits_pack format).
 * Returns NULL on allocation failure or corrupt T_packed (a byte >= 243). */
ts_weights *ts_weights_build(const uint8_t *T_packed, int64_t rows, int64_t cols, int64_t gs);
void ts_weights_free(ts_weights *w);
/* Bytes the layout holds in memory (for `inspect` and memory accounting). */
size_t ts_weights_bytes(const ts_weights *w);
/* The trit at (r, c), for tests and for rmsnorm's elementwise weight. */
int ts_weights_trit(const ts_weights *w, int64_t r, int64_t c);
/* Pack the trits back into T_packed[ceil(rows·cols/5)] (ts_trits_pack format, pad digits 0):
 * a model may drop its T_packed after the build and rebuild it from here for export. */
void ts_weights_pack(const ts_weights *w, uint8_t *T_packed);

/* y[B][rows] = x[B][cols] · W_effᵀ     (y is overwritten; bias is the caller's) */
void ts_kernel_forward(const ts_weights *w, const float *S, const float *x, int64_t B,
                       float *y, ts_pool *pool);

/* dx[B][cols] = dy[B][rows] · W_eff    (dx is overwritten) */
void ts_kernel_backward_x(const ts_weights *w, const float *S, const float *dy, int64_t B,
                          float *dx, ts_pool *pool);

/* score[G] = Σ_{c∈group} sign(dW[r][c]) · T[r][c], with dW = dyᵀ · x summed over the
 * batch (dW[r][c] = Σ_b dy[b][r] · x[b][c]) and sign(0) = 0, as int16: the reference sums
 * each group's score as int16, so a group wider than 32767 wraps there (ts_wrap16), and here
 * alike; and the step then reads a quarter of the bytes an int64 score would take. */
void ts_kernel_score(const ts_weights *w, const float *dy, const float *x, int64_t B,
                     int16_t *score, ts_pool *pool);
/* v modulo 2^16 as int16 (two's complement), without implementation-defined conversions. */
static inline int16_t ts_wrap16(int64_t v)
{
    int64_t s = v & 0xffff;
    return (int16_t)(s >= 0x8000 ? s - 0x10000 : s);
}

/* Name of the kernel family chosen at run time ("portable", "avx2", "avx512"): the best the
 * CPU runs, unless the environment variable TSCALE_KERNEL names another one it runs. */
const char *ts_kernel_name(void);
/* Use family `name` from now on, for the whole process (tests and benchmarks compare the
 * families with it). Returns 0, or -1 when the name is unknown or the CPU cannot run it.
 * (A kernel call uses one pool thread per ~2^20 weight·batch rows of work; tests set the
 * environment variable TSCALE_KERNEL_SLOT_WORK lower, before the first call, so that
 * small shapes are split between threads as well.) */
int ts_kernel_use(const char *name);

/* Ask for the AMX tile unit (issue 14): 0 when the CPU has AMX-TILE and AMX-BF16 and Linux
 * granted this process the tile data state (arch_prctl ARCH_REQ_XCOMP_PERM, Linux 5.16+);
 * otherwise -1 and the reason in err. Why a separate request: Linux gives AMX's 8 KiB of
 * tile state only to a process that asks, and an AMX family must fall back to the others
 * when it is refused. No AMX kernel family exists yet: `ts_kernel_use("amx")` fails, and
 * tscale-bench --kernel amx reports what this says. */
int ts_kernel_amx_request(char *err, size_t errlen);

#endif
