/* kernel_avx512.c — the AVX-512 family (compiled with -mavx512f/bw/vl/dq; chosen at run
 * time by kernel.c only on CPUs that have them).
 *
 * forward, small batch (< GEMM_MIN_BATCH): per batch row a 32-float table per triple of x
 *   columns (the 27 sums ±x0 ± x1 ± x2), and vpermt2ps looks up 16 rows' 5-bit fields in it
 *   at once: one shift, one lookup and one add per 3 weights × 16 rows, 4 blocks sharing each
 *   table load, 2 batch rows sharing each word load and shift. Per group, the 16 sums are
 *   scaled by the rows' S (one aligned load: S is in the kernels' order) into the rows'
 *   accumulators. Every accumulator stays in a register: the loops are unrolled and each
 *   word's field count is a constant (the compiler spilled them to the stack otherwise, 2×
 *   slower). Threads own home ranges of rows, walked backwards on odd passes (ts_krange).
 * forward, larger batch: kernel_gemm.h with 16 batch lanes.
 * backward_x: per group, z[r] = dy[r]·S[r,g]; per triple of columns the three trit vectors
 *   of 16 rows (looked up from the field) are multiplied into z and summed over all rows.
 * score: dW for 16 rows of one column by fused multiply-adds over the batch (in the
 *   portable kernel's order, so the sign is identical), compared with the trits.
 */
#include <immintrin.h>
#include <string.h>

#include "kernel_impl.h"

#define VEC __m512
#define LANES 16
#define VZERO() _mm512_setzero_ps()
#define VLOAD(p) _mm512_load_ps(p)
#define VSTORE(p, v) _mm512_store_ps((float *)(p), v)
#define VADD(a, b) _mm512_add_ps(a, b)
#define VSUB(a, b) _mm512_sub_ps(a, b)
#define VFMA(a, b, c) _mm512_fmadd_ps(a, b, c)
#define VBCAST(f) _mm512_set1_ps(f)
#define GEMM_PREFIX(name) avx512_gemm_##name
#define GEMM_OFFSETS(words, off) avx512_offsets(words, off)

static inline void avx512_offsets(const uint32_t *words, uint32_t off[TS_FPW][TS_RB])
{
    __m512i d = _mm512_load_si512(words), m = _mm512_set1_epi32(31 << 6);
    _mm512_store_si512(off[0], _mm512_and_si512(_mm512_slli_epi32(d, 6), m));
    _mm512_store_si512(off[1], _mm512_and_si512(_mm512_slli_epi32(d, 1), m));
    _mm512_store_si512(off[2], _mm512_and_si512(_mm512_srli_epi32(d, 4), m));
    _mm512_store_si512(off[3], _mm512_and_si512(_mm512_srli_epi32(d, 9), m));
    _mm512_store_si512(off[4], _mm512_and_si512(_mm512_srli_epi32(d, 14), m));
    _mm512_store_si512(off[5], _mm512_and_si512(_mm512_srli_epi32(d, 19), m));
}
#include "kernel_gemm.h"

/* The per-row tables win below GEMM_MIN_BATCH rows while they fit in L2 (measured on a
 * 4096×4096 layer, 2 threads: batch 8 955 µs against 1494 µs; batch 12 1672 against 1633). */
#define GEMM_MIN_BATCH 12
#define GEMV_MAX_TABLES ((size_t)2 << 20)
#define GEMV_BLOCKS 4   /* row blocks that share one table load */

/* d-1 of digit i of field v, for v < 27 (0 above), as 32-entry float tables. */
static void trit_tables(__m512 lo[3], __m512 hi[3])
{
    float t[3][32] __attribute__((aligned(64)));
    for (int v = 0; v < 32; v++)
        for (int i = 0, p = 1; i < 3; i++, p *= 3)
            t[i][v] = v < 27 ? (float)((v / p) % 3 - 1) : 0.0f;
    for (int i = 0; i < 3; i++) {
        lo[i] = _mm512_load_ps(t[i]);
        hi[i] = _mm512_load_ps(t[i] + 16);
    }
}

/* Lane i of the rows mask of block blk: row blk·16 + i exists. */
static inline __mmask16 rows_mask(const ts_weights *w, int64_t blk)
{
    int64_t n = w->rows - blk * TS_RB;
    return n >= TS_RB ? (__mmask16)0xffff : n <= 0 ? 0 : (__mmask16)((1u << n) - 1);
}

/* S[rows of block blk, g] (S in the kernels' order: one aligned line; 0 for padding rows). */
static inline __m512 block_scales(const ts_weights *w, const float *S, int64_t blk, int64_t g)
{
    return _mm512_load_ps(S + ts_scale_index(w->gpr, blk * TS_RB, g));
}

/* ── forward, small batch ── */

typedef struct {
    const ts_weights *w;
    const float *S, *x;
    int64_t B;
    float *y;
    float *tabs;   /* [B][gpr][ntr][32] */
    ts_krange *ranges;   /* [nranges] of units of GEMV_BLOCKS row blocks */
    int nranges;
    int reverse;   /* walk the home ranges backwards (ts_weights_pass) */
    /* The tables are built by the threads together, GEMV_TAB_PARTS parts of the groups, before
     * any lookup: from DRAM (x and the scratch cold) one thread takes ~20 µs for a 4096-wide x. */
    atomic_int tab_next, tab_done;
} gemv_job;

#define GEMV_TAB_PARTS 16

/* Tables for batch row b, groups [g0, g1). */
static void gemv_build(const gemv_job *j, int64_t b, int64_t g0, int64_t g1)
{
    const ts_weights *w = j->w;
    __m512 clo[3], chi[3];
    trit_tables(clo, chi);
    const float *x = j->x + b * w->cols;
    float *tab = j->tabs + ((b * w->gpr + g0) * w->ntr) * 32;
    for (int64_t g = g0; g < g1; g++)
        for (int64_t t = 0; t < w->ntr; t++, tab += 32) {
            int n = ts_wtriple_cols(w, g, t);
            const float *xc = x + g * w->gs + 3 * t;
            __m512 lo = _mm512_setzero_ps(), hi = _mm512_setzero_ps();
            for (int i = 0; i < n; i++) {
                __m512 xi = _mm512_set1_ps(xc[i]);
                lo = _mm512_fmadd_ps(clo[i], xi, lo);
                hi = _mm512_fmadd_ps(chi[i], xi, hi);
            }
            _mm512_store_ps(tab, lo);
            _mm512_store_ps(tab + 16, hi);
        }
}

/* One word (up to six fields) of GEMV_BLOCKS blocks, NB batch rows from tab (whose batch rows
 * are bstride floats apart): acc[b][k] += table[field] field after field. The indices are
 * shifted out of the loaded words afresh for each field, so the permute may overwrite them
 * and no register is copied; vpermt2ps reads the low 5 bits only, so no mask is needed. */
static inline __attribute__((always_inline)) void gemv_word(const __m512i d[GEMV_BLOCKS],
                                                            int64_t nf, const float *tab,
                                                            int64_t bstride, const int NB,
                                                            __m512 acc[][GEMV_BLOCKS])
{
#define GEMV_FIELD(f)                                                                        \
    if (f < nf) {                                                                            \
        __m512i idx[GEMV_BLOCKS];                                                            \
        _Pragma("GCC unroll 8")                                                              \
        for (int k = 0; k < GEMV_BLOCKS; k++)                                                \
            idx[k] = f ? _mm512_srli_epi32(d[k], 5 * f) : d[k];                             \
        _Pragma("GCC unroll 8")                                                              \
        for (int b = 0; b < NB; b++) {                                                       \
            const float *t = tab + b * bstride + 32 * f;                                     \
            __m512 lo = _mm512_load_ps(t), hi = _mm512_load_ps(t + 16);                      \
            _Pragma("GCC unroll 8")                                                          \
            for (int k = 0; k < GEMV_BLOCKS; k++)                                            \
                acc[b][k] = _mm512_add_ps(acc[b][k], _mm512_permutex2var_ps(lo, idx[k], hi)); \
        }                                                                                    \
    }
    GEMV_FIELD(0) GEMV_FIELD(1) GEMV_FIELD(2) GEMV_FIELD(3) GEMV_FIELD(4) GEMV_FIELD(5)
#undef GEMV_FIELD
}

/* GEMV_BLOCKS row blocks from blk0, batch rows b0..b0+NB: y[r] = Σ_g S[r,g] · Σ_t
 * table[t][field], groups in order, each group's sum scaled in parts of GEMM_WORDS words as
 * the batch kernel does (a row's result must not depend on the batch it came in). */
static inline __attribute__((always_inline)) void gemv_blocks(const gemv_job *j, int64_t blk0,
                                                              int64_t b0, const int NB)
{
    const ts_weights *w = j->w;
    const int64_t bstride = w->gpr * w->ntr * 32;
    const float *tab = j->tabs + b0 * bstride;
    int nb = w->nblk - blk0 < GEMV_BLOCKS ? (int)(w->nblk - blk0) : GEMV_BLOCKS;
    __m512 y[NB][GEMV_BLOCKS], acc[NB][GEMV_BLOCKS];
#pragma GCC unroll 8
    for (int b = 0; b < NB; b++)
#pragma GCC unroll 8
        for (int k = 0; k < GEMV_BLOCKS; k++)
            y[b][k] = _mm512_setzero_ps();
    for (int64_t g = 0; g < w->gpr; g++) {
#pragma GCC unroll 8
        for (int b = 0; b < NB; b++)
#pragma GCC unroll 8
            for (int k = 0; k < GEMV_BLOCKS; k++)
                acc[b][k] = _mm512_setzero_ps();
        for (int64_t jw = 0; jw < w->nw; jw++) {
            if (jw > 0 && jw % GEMM_WORDS == 0)
#pragma GCC unroll 8
                for (int k = 0; k < nb; k++) {
                    __m512 s = block_scales(w, j->S, blk0 + k, g);
    #pragma GCC unroll 8
                    for (int b = 0; b < NB; b++) {
                        y[b][k] = _mm512_fmadd_ps(acc[b][k], s, y[b][k]);
                        acc[b][k] = _mm512_setzero_ps();
                    }
                }
            __m512i d[GEMV_BLOCKS];
#pragma GCC unroll 8
            for (int k = 0; k < GEMV_BLOCKS; k++)   /* stored blocks: a multiple of 4 */
                d[k] = _mm512_load_si512(ts_wwords(w, blk0 + k, g, jw));
            int64_t nf = w->ntr - jw * TS_FPW < TS_FPW ? w->ntr - jw * TS_FPW : TS_FPW;
            switch (nf) {   /* a constant field count: acc stays in registers */
            case 6: gemv_word(d, 6, tab, bstride, NB, acc); break;
            case 5: gemv_word(d, 5, tab, bstride, NB, acc); break;
            case 4: gemv_word(d, 4, tab, bstride, NB, acc); break;
            case 3: gemv_word(d, 3, tab, bstride, NB, acc); break;
            case 2: gemv_word(d, 2, tab, bstride, NB, acc); break;
            default: gemv_word(d, 1, tab, bstride, NB, acc); break;
            }
            tab += 32 * nf;
        }
#pragma GCC unroll 8
        for (int k = 0; k < nb; k++) {
            __m512 s = block_scales(w, j->S, blk0 + k, g);
#pragma GCC unroll 8
            for (int b = 0; b < NB; b++)
                y[b][k] = _mm512_fmadd_ps(acc[b][k], s, y[b][k]);
        }
    }
#pragma GCC unroll 8
    for (int b = 0; b < NB; b++)
#pragma GCC unroll 8
        for (int k = 0; k < nb; k++)
            _mm512_mask_storeu_ps(j->y + (b0 + b) * w->rows + (blk0 + k) * TS_RB,
                                  rows_mask(w, blk0 + k), y[b][k]);
}

/* A thread's share: units of GEMV_BLOCKS row blocks from its home range, then what is left of
 * the others' (ts_kranges_next), every batch row (two at a time where there are two: they
 * share the words' loads and shifts). */
static void gemv_item(void *arg, int slot, int64_t i)
{
    gemv_job *j = arg;
    (void)i;
    for (int p; (p = atomic_fetch_add_explicit(&j->tab_next, 1, memory_order_relaxed)) < GEMV_TAB_PARTS;) {
        int64_t g0, g1;
        ts_ksplit(j->w->gpr, 1, GEMV_TAB_PARTS, p, &g0, &g1);
        for (int64_t b = 0; b < j->B; b++)
            gemv_build(j, b, g0, g1);
        atomic_fetch_add_explicit(&j->tab_done, 1, memory_order_release);
    }
    /* The last parts are being built by threads that are running: wait for them. */
    while (atomic_load_explicit(&j->tab_done, memory_order_acquire) < GEMV_TAB_PARTS)
        _mm_pause();
    for (int64_t u; (u = ts_kranges_next(j->ranges, j->nranges, slot, j->reverse)) >= 0;) {
        int64_t b = 0;
        for (; b + 2 <= j->B; b += 2)
            gemv_blocks(j, u * GEMV_BLOCKS, b, 2);
        if (b < j->B)
            gemv_blocks(j, u * GEMV_BLOCKS, b, 1);
    }
}

static int avx512_forward(const ts_weights *w, const float *S, const float *x, int64_t B,
                          float *y, ts_pool *pool)
{
    size_t tab_bytes = (size_t)B * (size_t)w->gpr * (size_t)w->ntr * 32 * sizeof(float);
    if (B >= GEMM_MIN_BATCH || (B > 1 && tab_bytes > GEMV_MAX_TABLES))
        return avx512_gemm_forward(w, S, x, B, y, pool);
    int slots = ts_kslots(pool, w, B);
    char *scratch = ts_kscratch_get(pool, tab_bytes + (size_t)slots * sizeof(ts_krange));
    if (!scratch)
        return -1;
    gemv_job j = {.w = w, .S = S, .x = x, .B = B, .y = y, .tabs = (float *)scratch,
                  .ranges = (ts_krange *)(scratch + tab_bytes), .nranges = slots,
                  .reverse = ts_weights_pass(w)};
    atomic_init(&j.tab_next, 0);
    atomic_init(&j.tab_done, 0);
    ts_kranges_init(j.ranges, slots, (w->nblk + GEMV_BLOCKS - 1) / GEMV_BLOCKS);
    ts_pool_run_items(slots > 1 ? pool : NULL, slots, gemv_item, &j);
    ts_kscratch_put(pool, scratch);
    return 0;
}

/* ── backward_x ── */

#define BWD_BATCH 8        /* batch rows per pass: 3·8 accumulators */
#define BWD_ITEM_GROUPS 16 /* groups per work item */
#define BWD_TILE 16        /* blocks per tile: z of 16 blocks · 8 batch rows = 8 KiB */
#define BWD_TILE_TRIPLES 256   /* wider groups: no tiles (the partial sums would not fit) */

/* z[blk][bb] = dy[b0+bb][rows of blk] · S[rows of blk, g] for bb < nb (0 for padding). */
static void bwd_z(const ts_kjob *j, int64_t g, int64_t b0, int nb, __m512 *z)
{
    const ts_weights *w = j->w;
    for (int64_t blk = 0; blk < w->nblk; blk++) {
        __mmask16 m = rows_mask(w, blk);
        __m512 s = block_scales(w, j->S, blk, g);
        for (int bb = 0; bb < nb; bb++) {
            __m512 d = _mm512_maskz_loadu_ps(m, j->dy + (b0 + bb) * w->rows + blk * TS_RB);
            z[blk * nb + bb] = _mm512_mul_ps(d, s);
        }
    }
}

/* dx of triple t of group g for batch rows b0.. (NB of them): Σ over blocks of trits · z,
 * over blocks [k0, k1): the sums start at 0 when `first`, else from io[NB·3]; they go to dx
 * when `last`, else back to io. */
#define BWD_TRIPLE(NB)                                                                           \
    static void bwd_triple_##NB(const ts_kjob *j, int64_t g, int64_t t, int64_t b0,              \
                                const __m512 *z, int64_t k0, int64_t k1, int first, int last,   \
                                __m512 *io, const __m512 *tlo, const __m512 *thi)                \
    {                                                                                            \
        const ts_weights *w = j->w;                                                              \
        __m512 acc[NB][3];                                                                       \
        _Pragma("GCC unroll 8") for (int bb = 0; bb < NB; bb++)                                  \
            for (int i = 0; i < 3; i++)                                                          \
                acc[bb][i] = first ? _mm512_setzero_ps() : io[bb * 3 + i];                       \
        __m512i shift = _mm512_set1_epi32((int)(5 * (t % TS_FPW)));                              \
        z += k0 * NB;                                                                            \
        for (int64_t blk = k0; blk < k1; blk++, z += NB) {                                       \
            if (blk + GEMM_AHEAD < w->nblk) /* a block apart: see kernel_gemm.h */               \
                _mm_prefetch((const char *)ts_wwords(w, blk + GEMM_AHEAD, g, t / TS_FPW),        \
                             _MM_HINT_T0);                                                       \
            __m512i f = _mm512_srlv_epi32(                                                       \
                _mm512_load_si512(ts_wwords(w, blk, g, t / TS_FPW)), shift);                     \
            __m512 t0 = _mm512_permutex2var_ps(tlo[0], f, thi[0]);                               \
            __m512 t1 = _mm512_permutex2var_ps(tlo[1], f, thi[1]);                               \
            __m512 t2 = _mm512_permutex2var_ps(tlo[2], f, thi[2]);                               \
            _Pragma("GCC unroll 8") for (int bb = 0; bb < NB; bb++)                              \
            {                                                                                    \
                acc[bb][0] = _mm512_fmadd_ps(t0, z[bb], acc[bb][0]);                             \
                acc[bb][1] = _mm512_fmadd_ps(t1, z[bb], acc[bb][1]);                             \
                acc[bb][2] = _mm512_fmadd_ps(t2, z[bb], acc[bb][2]);                             \
            }                                                                                    \
        }                                                                                        \
        int n = ts_wtriple_cols(w, g, t);                                                        \
        for (int bb = 0; bb < NB; bb++)                                                          \
            for (int i = 0; i < 3; i++) {                                                        \
                if (!last)                                                                       \
                    io[bb * 3 + i] = acc[bb][i];                                                 \
                else if (i < n)                                                                  \
                    j->out[(b0 + bb) * w->cols + g * w->gs + 3 * t + i] =                         \
                        _mm512_reduce_add_ps(acc[bb][i]);                                        \
            }                                                                                    \
    }
BWD_TRIPLE(1)
BWD_TRIPLE(2)
BWD_TRIPLE(4)
BWD_TRIPLE(8)

/* One group for batch rows b0..b0+nb: z for all blocks, then tiles of BWD_TILE blocks (their
 * z stays in L1 while every triple of the group runs over it; partial sums go through io). */
static void bwd_group(const ts_kjob *j, int64_t g, int64_t b0, int nb, __m512 *z, __m512 *io,
                      const __m512 *tlo, const __m512 *thi)
{
    const ts_weights *w = j->w;
    bwd_z(j, g, b0, nb, z);
    int64_t tile = w->ntr <= BWD_TILE_TRIPLES ? BWD_TILE : w->nblk;
    for (int64_t k0 = 0; k0 < w->nblk; k0 += tile) {
        int64_t k1 = k0 + tile < w->nblk ? k0 + tile : w->nblk;
        int first = k0 == 0, last = k1 == w->nblk;
        for (int64_t t = 0; t < w->ntr && ts_wtriple_cols(w, g, t) > 0; t++) {
            __m512 *o = io + t * BWD_BATCH * 3;
            if (nb == 8)
                bwd_triple_8(j, g, t, b0, z, k0, k1, first, last, o, tlo, thi);
            else if (nb == 4)
                bwd_triple_4(j, g, t, b0, z, k0, k1, first, last, o, tlo, thi);
            else if (nb == 2)
                bwd_triple_2(j, g, t, b0, z, k0, k1, first, last, o, tlo, thi);
            else
                bwd_triple_1(j, g, t, b0, z, k0, k1, first, last, o, tlo, thi);
        }
    }
}

static size_t bwd_io_vectors(const ts_weights *w)
{
    return w->ntr <= BWD_TILE_TRIPLES ? (size_t)w->ntr * BWD_BATCH * 3 : 0;
}

/* Item i: groups [16·i, 16·i + 16), every batch row. */
static void bwd_item(void *arg, int slot, int64_t i)
{
    const ts_kjob *j = arg;
    const ts_weights *w = j->w;
    __m512 tlo[3], thi[3];
    trit_tables(tlo, thi);
    __m512 *z = (__m512 *)(j->scratch + (size_t)slot * j->slot_bytes);
    __m512 *io = z + (size_t)w->nblk * BWD_BATCH;
    int64_t g0 = i * BWD_ITEM_GROUPS;
    int64_t g1 = g0 + BWD_ITEM_GROUPS < w->gpr ? g0 + BWD_ITEM_GROUPS : w->gpr;
    for (int64_t b0 = 0; b0 < j->B;) {
        int nb = j->B - b0 >= 8 ? 8 : j->B - b0 >= 4 ? 4 : j->B - b0 >= 2 ? 2 : 1;
        for (int64_t g = g0; g < g1; g++)
            bwd_group(j, g, b0, nb, z, io, tlo, thi);
        b0 += nb;
    }
}

static int avx512_backward_x(const ts_weights *w, const float *S, const float *dy, int64_t B,
                             float *dx, ts_pool *pool)
{
    if (w->rows < TS_BWD_MIN_ROWS || w->gpr > INT32_MAX / TS_RB)
        return -1;   /* small layers: the reference's order (kernel_impl.h) */
    ts_kjob j = {.w = w, .S = S, .dy = dy, .B = B, .out = dx};
    return ts_krun(pool, &j,
                   ((size_t)w->nblk * BWD_BATCH + bwd_io_vectors(w)) *
                       sizeof(__m512),
                   (w->gpr + BWD_ITEM_GROUPS - 1) / BWD_ITEM_GROUPS, bwd_item);
}

/* ── score ── */

/* sign(v) as a float (0 for zero and NaN) in one instruction: vfixupimmps maps the class of
 * each element (nibble k of this table answers class k: QNaN, SNaN, zero, +1, -inf, +inf,
 * negative, positive) to +0 (8), -1 (9) or +1 (10). */
#define SIGN_TABLE 0xA9A9A888
#define SCORE_ITEM_BLOCKS 8   /* row blocks per work item (an even number) */

/* Scores of the 32 rows of blocks blk and blk+1, group g; dyT[b] and dyT[B + b] hold
 * dy[b][rows of each block]. Two blocks share each x broadcast and give the out-of-order
 * core two independent multiply-add chains per column. The count Σ sign(dW)·T is kept in
 * float, exact below 2^24 (a group is at most 2^16 columns). */
static void score_blocks_group(const ts_kjob *j, int64_t blk, int64_t g, const __m512 *dyT,
                               const __m512 *tlo, const __m512 *thi)
{
    const ts_weights *w = j->w;
    const __m512i sign_table = _mm512_set1_epi32(SIGN_TABLE);
    const __m512 *dyT1 = dyT + j->B;
    __m512 acc0 = _mm512_setzero_ps(), acc1 = _mm512_setzero_ps();
    for (int64_t t = 0; t < w->ntr; t++) {
        int n = ts_wtriple_cols(w, g, t);
        if (n == 0)
            break;
        __m512i shift = _mm512_set1_epi32((int)(5 * (t % TS_FPW)));
        __m512i f0 = _mm512_srlv_epi32(_mm512_load_si512(ts_wwords(w, blk, g, t / TS_FPW)), shift);
        __m512i f1 = _mm512_srlv_epi32(_mm512_load_si512(ts_wwords(w, blk + 1, g, t / TS_FPW)),
                                       shift);
        for (int i = 0; i < n; i++) {
            const float *xc = j->x + g * w->gs + 3 * t + i;
            __m512 dw0 = _mm512_setzero_ps(), dw1 = _mm512_setzero_ps();
            for (int64_t b = 0; b < j->B; b++) {
                __m512 xb = _mm512_set1_ps(xc[b * w->cols]);
                dw0 = _mm512_fmadd_ps(dyT[b], xb, dw0);
                dw1 = _mm512_fmadd_ps(dyT1[b], xb, dw1);
            }
            acc0 = _mm512_fmadd_ps(_mm512_fixupimm_ps(dw0, dw0, sign_table, 0),
                                   _mm512_permutex2var_ps(tlo[i], f0, thi[i]), acc0);
            acc1 = _mm512_fmadd_ps(_mm512_fixupimm_ps(dw1, dw1, sign_table, 0),
                                   _mm512_permutex2var_ps(tlo[i], f1, thi[i]), acc1);
        }
    }
    int32_t out[2 * TS_RB] __attribute__((aligned(64)));
    _mm512_store_si512(out, _mm512_cvtps_epi32(acc0));
    _mm512_store_si512(out + TS_RB, _mm512_cvtps_epi32(acc1));
    for (int i = 0; i < 2 * TS_RB && blk * TS_RB + i < w->rows; i++)
        j->score[(blk * TS_RB + i) * w->gpr + g] = out[i];
}

/* Item i: blocks [SCORE_ITEM_BLOCKS·i, +SCORE_ITEM_BLOCKS), two at a time. */
static void score_item(void *arg, int slot, int64_t i)
{
    const ts_kjob *j = arg;
    const ts_weights *w = j->w;
    __m512 tlo[3], thi[3];
    trit_tables(tlo, thi);
    __m512 *dyT = (__m512 *)(j->scratch + (size_t)slot * j->slot_bytes);
    int64_t k1 = (i + 1) * SCORE_ITEM_BLOCKS < w->nblk ? (i + 1) * SCORE_ITEM_BLOCKS : w->nblk;
    for (int64_t blk = i * SCORE_ITEM_BLOCKS; blk < k1; blk += 2) {
        for (int64_t b = 0; b < j->B; b++)
            for (int k = 0; k < 2; k++)
                dyT[k * j->B + b] = _mm512_maskz_loadu_ps(rows_mask(w, blk + k),
                                                          j->dy + b * w->rows + (blk + k) * TS_RB);
        for (int64_t g = 0; g < w->gpr; g++)
            score_blocks_group(j, blk, g, dyT, tlo, thi);
    }
}

static int avx512_score(const ts_weights *w, const float *dy, const float *x, int64_t B,
                        int64_t *score, ts_pool *pool)
{
    ts_kjob j = {.w = w, .dy = dy, .x = x, .B = B, .score = score};
    return ts_krun(pool, &j, (2 * (size_t)B + 1) * sizeof(__m512),
                   (w->nblk + SCORE_ITEM_BLOCKS - 1) / SCORE_ITEM_BLOCKS, score_item);
}

const ts_kernel_family ts_kernel_family_avx512 = {"avx512", avx512_forward, avx512_backward_x,
                                                  avx512_score};
