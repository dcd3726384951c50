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
#define GEMV_PREFETCH 4 /* groups ahead */

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
     * any lookup: for a 4096-wide x one thread took 10–12 µs with x and the scratch in cache,
     * 26–56 µs with the whole cache evicted. */
    atomic_int tab_next, tab_done;
} gemv_job;

#define GEMV_TAB_PARTS 16

/* Tables for batch row b, groups [g0, g1); clo/chi from trit_tables. */
static void gemv_build(const gemv_job *j, int64_t b, int64_t g0, int64_t g1, const __m512 clo[3],
                       const __m512 chi[3])
{
    const ts_weights *w = j->w;
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
    const char *pf_w[GEMV_BLOCKS], *pf_s[GEMV_BLOCKS];   /* GEMV_PREFETCH groups ahead */
#pragma GCC unroll 8
    for (int k = 0; k < GEMV_BLOCKS; k++) {   /* stored blocks are a multiple of 4; S is not */
        int64_t sb = blk0 + k < w->nblk ? blk0 + k : blk0;
        pf_w[k] = (const char *)ts_wwords(w, blk0 + k, GEMV_PREFETCH, 0);
        pf_s[k] = (const char *)(j->S + ts_scale_index(w->gpr, sb * TS_RB, GEMV_PREFETCH));
    }
    for (int64_t g = 0; g < w->gpr; g++) {
        /* The words and scales a few groups ahead, from each of the blocks' 8 streams: from
         * DRAM the hardware prefetchers alone leave the cores waiting (measured: 4096×4096
         * batch 1 with the weights flushed, 2 threads, 266 µs without, 245 µs with; 134 → 140
         * µs with them in cache).
         * Pointers stepped once per group: address arithmetic here competes with the
         * lookups for ports. */
        if (g + GEMV_PREFETCH < w->gpr) {
#pragma GCC unroll 8
            for (int k = 0; k < GEMV_BLOCKS; k++) {
                for (int64_t l = 0; l < w->nw; l++)
                    _mm_prefetch(pf_w[k] + 64 * l, _MM_HINT_T0);
                _mm_prefetch(pf_s[k], _MM_HINT_T0);
                pf_w[k] += 64 * w->nw;
                pf_s[k] += 64;
            }
        }
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
    __m512 clo[3], chi[3];
    trit_tables(clo, chi);
    for (int p; (p = atomic_fetch_add_explicit(&j->tab_next, 1, memory_order_relaxed)) < GEMV_TAB_PARTS;) {
        int64_t g0, g1;
        ts_ksplit(j->w->gpr, 1, GEMV_TAB_PARTS, p, &g0, &g1);
        for (int64_t b = 0; b < j->B; b++)
            gemv_build(j, b, g0, g1, clo, chi);
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

/* ── score ──
 * Per row block (16 rows in the lanes), a step takes 9 columns (3 triples, one word's
 * fields shifted): their 9 dW chains of fused multiply-adds over the batch interleave, x
 * broadcast from memory, dy of 8 batch rows in registers; then per column one vfixupimmps
 * (the sign), one vpermt2ps (the trits of the field) and one multiply-add into the count.
 * That is B + 3 vector operations per column and 16 rows, the multiply-adds being the
 * bound. With B ≤ 8, x is read in place; with more, in chunks of 8 batch rows, from a
 * tile of x transposed once per work item ([chunk][column][8]: one pointer, constant
 * offsets; rows of x 4 KiB apart would share L1 sets). The counts of 16 groups are
 * transposed so that each row's 8 groups go out in one store. */

/* sign(v) as a float (0 for zero and NaN) in one instruction: vfixupimmps maps the class of
 * each element (nibble k of this table answers class k: QNaN, SNaN, zero, +1, -inf, +inf,
 * negative, positive) to +0 (8), -1 (9) or +1 (10). */
#define SIGN_TABLE 0xA9A9A888
#define SCORE_NT 3            /* triples per step (1, 2 or 3): their dW chains interleave */
#define SCORE_NACC 3          /* accumulators per step (shorter add chains) */
#define SCORE_BC 8            /* batch rows per chunk: a chunk's dy stay in registers */
#define SCORE_XT_FLOATS 32768 /* an x tile's size (floats), at least */
#define SCORE_ITEM_BLOCKS 8   /* row blocks per work item when B ≤ SCORE_BC */
#define SCORE_SPW (TS_FPW / SCORE_NT)   /* steps per word of fields */
#define SCORE_INLINE static inline __attribute__((always_inline))

/* Row block blk. x is read in place when B ≤ SCORE_BC (row b at byte xoff[b] from row 0),
 * else from an x tile, chunk by chunk of 8 batch rows. */
typedef struct {
    const ts_kjob *j;
    int64_t blk;
    int64_t chunks;          /* whole chunks before the last one (0 when B ≤ 8) */
    int64_t cstride;         /* floats from one chunk of the x tile to the next */
    int64_t xoff[SCORE_BC];
    const __m512 *dyT;       /* [b]: dy[b][rows of block blk] */
    __m512 dy[SCORE_BC];     /* the same in registers when B ≤ 8 */
    __m512 tlo[3], thi[3];   /* trit_tables */
} score_ctx;

/* dW chains of n columns continued over bc batch rows (n, bc constants after inlining);
 * q is x at the chunk's first row and the first column: x[b][i] is q[8i + b] in an x tile,
 * at byte xoff[b] from &q[i] in place. b outermost, so that the n chains interleave. */
SCORE_INLINE void score_fma(const score_ctx *c, const float *q, int n, int bc, int tiled,
                            const __m512 *dy, __m512 *dw)
{
#pragma GCC unroll 8
    for (int b = 0; b < bc; b++)
#pragma GCC unroll 9
        for (int i = 0; i < n; i++)
            dw[i] = _mm512_fmadd_ps(
                dy[b],
                _mm512_set1_ps(tiled ? q[SCORE_BC * i + b]
                                     : *(const float *)((const char *)(q + i) + c->xoff[b])),
                dw[i]);
}

/* acc += sign(dW)·T for n consecutive columns (x at q), T looked up from the fields f of the
 * first column's triple. With chunked, dW goes over the whole chunks (their dy loaded for
 * each: few loads next to the multiply-adds), then over the last chunk of bc rows. The
 * count is kept in float, exact below 2^24 (a group is at most 2^16 columns). */
SCORE_INLINE void score_cols(const score_ctx *c, const float *q, int n, int bc, int chunked,
                             __m512i f, __m512 *acc)
{
    __m512 dw[3 * SCORE_NT], dy[SCORE_BC];
#pragma GCC unroll 9
    for (int i = 0; i < n; i++)
        dw[i] = _mm512_setzero_ps();
    if (chunked) {
        const __m512 *d = c->dyT;
        for (int64_t ch = 0; ch < c->chunks; ch++, q += c->cstride, d += SCORE_BC)
            score_fma(c, q, n, SCORE_BC, 1, d, dw);
        memcpy(dy, d, (size_t)bc * sizeof *dy);
        score_fma(c, q, n, bc, 1, dy, dw);
    } else {
        memcpy(dy, c->dy, sizeof dy);
        score_fma(c, q, n, bc, 0, dy, dw);
    }
    const __m512i sign_table = _mm512_set1_epi32(SIGN_TABLE);
#pragma GCC unroll 9
    for (int i = 0; i < n; i++) {
        __m512i fi = i < 3 ? f : _mm512_srli_epi32(f, 5 * (i / 3));
        acc[i % SCORE_NACC] =
            _mm512_fmadd_ps(_mm512_fixupimm_ps(dw[i], dw[i], sign_table, 0),
                            _mm512_permutex2var_ps(c->tlo[i % 3], fi, c->thi[i % 3]),
                            acc[i % SCORE_NACC]);
    }
}

/* score_cols for n < 3·SCORE_NT columns (a part's last step: its remaining whole triples
 * and the group's partial one), n a constant in each case. */
SCORE_INLINE void score_cols_rest(const score_ctx *c, const float *q, int n, int bc,
                                  int chunked, __m512i f, __m512 *acc)
{
    switch (n) {
#define SCORE_REST(m)                                                                          \
    case m:                                                                                    \
        score_cols(c, q, m, bc, chunked, f, acc);                                              \
        break;
        SCORE_REST(1) SCORE_REST(2) SCORE_REST(3) SCORE_REST(4) SCORE_REST(5) SCORE_REST(6)
        SCORE_REST(7) SCORE_REST(8)
#undef SCORE_REST
    }
}

/* A part of group g: triples [t0, t1) (t0 a multiple of TS_FPW) in whole steps of
 * SCORE_NT triples, then a last step of what is left (its whole triples and the group's
 * partial one). All whole groups but the row's last have one shape, so the loops'
 * branches are predicted. */
typedef struct {
    int64_t g, t0, t1;
    int64_t steps;
    int rest;   /* columns of the last step, < 3·SCORE_NT */
} score_part;

static inline score_part score_part_of(const ts_weights *w, int64_t g, int64_t t0, int64_t t1)
{
    int64_t ncols = w->cols - g * w->gs < w->gs ? w->cols - g * w->gs : w->gs;
    int64_t t3 = ncols / 3 < t1 ? ncols / 3 : t1;   /* triples of 3 columns end here */
    int tail = t1 > ncols / 3 ? (int)(ncols % 3) : 0;
    score_part pt = {g, t0, t1, (t3 - t0) / SCORE_NT, (int)(3 * ((t3 - t0) % SCORE_NT)) + tail};
    return pt;
}

/* acc += the counts of part pt for the block's rows; q is x at the part's first column. A
 * step's fields are its word's (loaded at the word's first step) shifted down by the steps
 * before. */
SCORE_INLINE void score_run_part(const score_ctx *c, score_part pt, const float *q, int bc,
                                 int chunked, __m512 *acc)
{
    const uint32_t *wp = ts_wwords(c->j->w, c->blk, pt.g, pt.t0 / TS_FPW);
    __m512i f = _mm512_setzero_si512();
    int r = 0;   /* steps of the current word done */
    for (int64_t st = 0; st <= pt.steps; st++) {
        if (st == pt.steps && pt.rest == 0)
            break;
        f = r == 0 ? _mm512_load_si512(wp) : _mm512_srli_epi32(f, 5 * SCORE_NT);
        if (st < pt.steps)
            score_cols(c, q, 3 * SCORE_NT, bc, chunked, f, acc);
        else
            score_cols_rest(c, q, pt.rest, bc, chunked, f, acc);
        q += 3 * SCORE_NT * (chunked ? SCORE_BC : 1);
        if (++r == SCORE_SPW)
            r = 0, wp += TS_RB;
    }
}

/* o[m] = lanes 2m of r[0..8) and then lanes 2m + 1 of r[0..8): an 8×16 block transposed in
 * registers (unpacks give each lane's r[0..4) and r[4..8) in 128-bit lanes, two permutes
 * put a lane pair's 8 values together). */
static inline void score_transpose8(const __m512 r[8], __m512 o[8])
{
#define PD(v) _mm512_castps_pd(v)
#define PS(v) _mm512_castpd_ps(v)
    const __m512i pair0 = _mm512_setr_epi64(0, 1, 8, 9, 2, 3, 10, 11);
    const __m512i pair1 = _mm512_setr_epi64(4, 5, 12, 13, 6, 7, 14, 15);
    __m512 t[8], u[8], v[4][2];
#pragma GCC unroll 4
    for (int b = 0; b < 8; b += 2) {
        t[b] = _mm512_unpacklo_ps(r[b], r[b + 1]);
        t[b + 1] = _mm512_unpackhi_ps(r[b], r[b + 1]);
    }
#pragma GCC unroll 2
    for (int h = 0; h < 8; h += 4) {   /* r[h..h+4): u[h + k] = lane 4L + k */
        u[h] = PS(_mm512_unpacklo_pd(PD(t[h]), PD(t[h + 2])));
        u[h + 1] = PS(_mm512_unpackhi_pd(PD(t[h]), PD(t[h + 2])));
        u[h + 2] = PS(_mm512_unpacklo_pd(PD(t[h + 1]), PD(t[h + 3])));
        u[h + 3] = PS(_mm512_unpackhi_pd(PD(t[h + 1]), PD(t[h + 3])));
    }
#pragma GCC unroll 4
    for (int k = 0; k < 4; k++) {   /* v[k][P] = lanes 8P + k and 8P + 4 + k */
        v[k][0] = PS(_mm512_permutex2var_pd(PD(u[k]), pair0, PD(u[4 + k])));
        v[k][1] = PS(_mm512_permutex2var_pd(PD(u[k]), pair1, PD(u[4 + k])));
    }
#pragma GCC unroll 2
    for (int P = 0; P < 2; P++)
#pragma GCC unroll 2
        for (int k = 0; k < 4; k += 2) {   /* lanes 8P + k + {0, 1}, and + 4 */
            o[4 * P + k / 2] = _mm512_shuffle_f32x4(v[k][P], v[k + 1][P], 0x44);
            o[4 * P + 2 + k / 2] = _mm512_shuffle_f32x4(v[k][P], v[k + 1][P], 0xee);
        }
#undef PD
#undef PS
}

/* score[rows of block blk, g0 + gg] for gg < ng ≤ 16 from sc[gg] (the rows' counts for
 * group g0 + gg as int32): transposed 8 groups at a time, each row gets its run of groups
 * in one store instead of a scattered store per row and group (masked stores only for a
 * row's last groups: they cost more); vpmovdw narrows to int16 modulo 2^16, as
 * ts_wrap16. */
static void score_flush(const ts_kjob *j, int64_t blk, int64_t g0, int ng, const __m512 *sc)
{
    const ts_weights *w = j->w;
    for (int h = 0; h < ng; h += 8) {
        __mmask8 m = (__mmask8)(ng - h >= 8 ? 0xff : (1u << (ng - h)) - 1);
        __m512 o[8];
        score_transpose8(sc + h, o);
#pragma GCC unroll 16
        for (int i = 0; i < TS_RB; i++) {
            if (blk * TS_RB + i >= w->rows)
                break;
            int16_t *dst = j->score + (blk * TS_RB + i) * w->gpr + g0 + h;
            __m256i pair = _mm512_cvtepi32_epi16(_mm512_castps_si512(o[i / 2]));
            __m128i row = i % 2 ? _mm256_extracti128_si256(pair, 1) : _mm256_castsi256_si128(pair);
            if (m == 0xff)
                _mm_storeu_si128((__m128i *)dst, row);
            else
                _mm_mask_storeu_epi16(dst, m, row);
        }
    }
}

/* How a call is split into items, each a range of row blocks and one set of x tiles.
 * With B ≤ SCORE_BC the set is the whole row, x read in place. Else x is transposed into
 * tiles of up to 16 whole groups (SCORE_XT_FLOATS, columns rounded up to 16 per chunk), or
 * when one group is bigger, a set is the tiles of `per` triples of one group, in order; a
 * tile is transposed once per item, so there are few row ranges. */
typedef struct {
    int64_t groups;     /* groups per tile set, or 0 when groups are split */
    int64_t per;        /* triples per tile of a split group */
    int64_t cpad;       /* columns per chunk in an x tile (a multiple of 16) */
    int64_t sets;       /* tile sets of a row */
    int64_t rblocks;    /* row blocks per item */
    int64_t items;
} score_plan;

static score_plan score_plan_of(const ts_weights *w, int64_t B, int slots)
{
    score_plan pl = {w->gpr, 0, 0, 1, SCORE_ITEM_BLOCKS, 0};
    if (B > SCORE_BC) {
        int64_t chunk_cols = SCORE_XT_FLOATS / (SCORE_BC * ((B + SCORE_BC - 1) / SCORE_BC));
        pl.groups = chunk_cols / w->gs < TS_RB ? chunk_cols / w->gs : TS_RB;
        if (pl.groups > 0) {
            pl.cpad = (pl.groups * w->gs + 15) / 16 * 16;
            pl.sets = (w->gpr + pl.groups - 1) / pl.groups;
        } else {
            pl.per = chunk_cols / 3 / TS_FPW * TS_FPW > TS_FPW ? chunk_cols / 3 / TS_FPW * TS_FPW
                                                               : TS_FPW;
            pl.cpad = (3 * pl.per + 15) / 16 * 16;
            pl.sets = w->gpr;
        }
        /* enough items that the threads end together (a tile's transpose is little next
         * to the item's multiply-adds) */
        int64_t ranges = (16 * slots + pl.sets - 1) / pl.sets;
        ranges = ranges < w->nblk ? ranges : w->nblk;
        pl.rblocks = (w->nblk + ranges - 1) / ranges;
    }
    pl.items = pl.sets * ((w->nblk + pl.rblocks - 1) / pl.rblocks);
    return pl;
}

/* A slot's scratch. */
typedef struct {
    float *xT;       /* an x tile: [chunk][column][8] */
    __m512 *dyT;     /* [b]: dy of the block's rows */
    __m512 *sc;      /* [16]: counts of up to 16 groups, waiting for score_flush */
    __m512 *held;    /* [block of the item][SCORE_NACC]: acc of a split group between tiles */
    __m512 tlo[3], thi[3];   /* trit_tables */
} score_scratch;

static size_t score_scratch_at(const score_plan *pl, int64_t B, char *base, score_scratch *ss)
{
    int64_t rows8 = (B + SCORE_BC - 1) / SCORE_BC * SCORE_BC;
    size_t xt = (size_t)(rows8 * pl->cpad) * sizeof(float);
    size_t dyt = (size_t)(B > SCORE_BC ? B : 0) * sizeof(__m512);
    size_t sc = TS_RB * sizeof(__m512);
    size_t held = (size_t)(pl->groups > 0 ? 0 : pl->rblocks * SCORE_NACC) * sizeof(__m512);
    if (ss) {
        ss->xT = (float *)base;
        ss->dyT = (__m512 *)(base + xt);
        ss->sc = (__m512 *)(base + xt + dyt);
        ss->held = (__m512 *)(base + xt + dyt + sc);
    }
    return xt + dyt + sc + held;
}

/* The x tile: xT[ch][c - c0][b] = x[8·ch + b][c] for c in [c0, c1) (0 past B and, up to a
 * multiple of 16 columns, past c1), cpad·8 floats per chunk. */
static void score_transpose(const ts_kjob *j, int64_t c0, int64_t c1, int64_t cpad, float *xT)
{
    const ts_weights *w = j->w;
    for (int64_t b0 = 0; b0 < j->B; b0 += SCORE_BC)
        for (int64_t c = c0; c < c1; c += 16) {
            __mmask16 m = c1 - c >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << (c1 - c)) - 1);
            __m512 r[8], o[8];
            for (int b = 0; b < 8; b++)
                r[b] = b0 + b < j->B ? _mm512_maskz_loadu_ps(m, j->x + (b0 + b) * w->cols + c)
                                     : _mm512_setzero_ps();
            score_transpose8(r, o);
            float *dst = xT + ((b0 / SCORE_BC) * cpad + (c - c0)) * SCORE_BC;
            for (int k = 0; k < 8; k++)
                _mm512_store_ps(dst + 2 * SCORE_BC * k, o[k]);
        }
}

/* Row blocks [blk0, blk1) over groups [g0, g1), or when split (t1 short of a group's end)
 * over triples [t0, t1) of group g0, `held` keeping the counts between the parts. x is read
 * in place, or from the tile at xT that starts at column g0·gs + 3·t0. The batch's last
 * chunk has bc rows (a constant after inlining); with chunked = 0 it is the only one. */
SCORE_INLINE void score_rows(const ts_kjob *j, const score_scratch *ss, int64_t blk0,
                             int64_t blk1, int64_t g0, int64_t g1, int64_t t0, int64_t t1,
                             int64_t cpad, int bc, int chunked)
{
    const ts_weights *w = j->w;
    score_ctx c = {.j = j, .chunks = (j->B - bc) / SCORE_BC, .cstride = cpad * SCORE_BC,
                   .dyT = ss->dyT};
    memcpy(c.tlo, ss->tlo, sizeof c.tlo);
    memcpy(c.thi, ss->thi, sizeof c.thi);
    for (int b = 0; b < SCORE_BC; b++)
        c.xoff[b] = b * w->cols * (int64_t)sizeof(float);
    int64_t ntr = (w->gs + 2) / 3, c0 = g0 * w->gs + 3 * t0;
    int ends = t1 == ntr || g0 * w->gs + 3 * t1 >= w->cols;   /* the last part of its group */
    score_part whole = score_part_of(w, 0, 0, ntr);           /* of all groups but the last */
    for (int64_t blk = blk0; blk < blk1; blk++) {
        c.blk = blk;
        for (int64_t b = 0; b < (chunked ? j->B : bc); b++) {
            __m512 d = _mm512_maskz_loadu_ps(rows_mask(w, blk), j->dy + b * w->rows + blk * TS_RB);
            if (chunked)
                ss->dyT[b] = d;
            else
                c.dy[b] = d;
        }
        __m512 *held = ss->held + (blk - blk0) * SCORE_NACC;
        for (int64_t g = g0; g < g1; g++) {
            score_part pt = g < w->gpr - 1 && t0 == 0 && t1 == ntr ? whole
                                                                   : score_part_of(w, g, t0, t1);
            pt.g = g;
            __m512 acc[SCORE_NACC];
            for (int a = 0; a < SCORE_NACC; a++)
                acc[a] = t0 == 0 ? _mm512_setzero_ps() : held[a];
            int64_t col = g * w->gs + 3 * t0;
            score_run_part(&c, pt, chunked ? ss->xT + (col - c0) * SCORE_BC : j->x + col, bc,
                           chunked, acc);
            if (!ends) {   /* the group goes on in the next tile */
                memcpy(held, acc, sizeof acc);
                break;
            }
            for (int a = 1; a < SCORE_NACC; a++)
                acc[0] = _mm512_add_ps(acc[0], acc[a]);
            int64_t gg = (g - g0) % TS_RB;
            ss->sc[gg] = _mm512_castsi512_ps(_mm512_cvtps_epi32(acc[0]));
            if (gg == TS_RB - 1 || g == g1 - 1)
                score_flush(j, blk, g - gg, (int)gg + 1, ss->sc);
        }
    }
}

typedef void (*score_rows_fn)(const ts_kjob *j, const score_scratch *ss, int64_t blk0,
                              int64_t blk1, int64_t g0, int64_t g1, int64_t t0, int64_t t1,
                              int64_t cpad);
#define SCORE_ROWS_FN(bc)                                                                      \
    static void score_rows_##bc(const ts_kjob *j, const score_scratch *ss, int64_t blk0,     \
                                int64_t blk1, int64_t g0, int64_t g1, int64_t t0, int64_t t1, \
                                int64_t cpad)                                                \
    {                                                                                          \
        score_rows(j, ss, blk0, blk1, g0, g1, t0, t1, cpad, bc, 0);                            \
    }                                                                                          \
    static void score_rows_chunked_##bc(const ts_kjob *j, const score_scratch *ss,           \
                                        int64_t blk0, int64_t blk1, int64_t g0, int64_t g1,  \
                                        int64_t t0, int64_t t1, int64_t cpad)                \
    {                                                                                          \
        score_rows(j, ss, blk0, blk1, g0, g1, t0, t1, cpad, bc, 1);                            \
    }
SCORE_ROWS_FN(1)
SCORE_ROWS_FN(2)
SCORE_ROWS_FN(3)
SCORE_ROWS_FN(4)
SCORE_ROWS_FN(5)
SCORE_ROWS_FN(6)
SCORE_ROWS_FN(7)
SCORE_ROWS_FN(8)
#undef SCORE_ROWS_FN

/* Item i: tile set i % sets for row range i / sets. */
static void score_item(void *arg, int slot, int64_t i)
{
    static const score_rows_fn by_last_chunk[2][SCORE_BC] = {
        {score_rows_1, score_rows_2, score_rows_3, score_rows_4, score_rows_5, score_rows_6,
         score_rows_7, score_rows_8},
        {score_rows_chunked_1, score_rows_chunked_2, score_rows_chunked_3,
         score_rows_chunked_4, score_rows_chunked_5, score_rows_chunked_6,
         score_rows_chunked_7, score_rows_chunked_8}};
    const ts_kjob *j = arg;
    const ts_weights *w = j->w;
    score_plan pl = score_plan_of(w, j->B, j->slots);
    score_scratch ss;
    score_scratch_at(&pl, j->B, j->scratch + (size_t)slot * j->slot_bytes, &ss);
    trit_tables(ss.tlo, ss.thi);
    score_rows_fn fn = by_last_chunk[j->B > SCORE_BC][(j->B - 1) % SCORE_BC];
    int64_t set = i % pl.sets, blk0 = i / pl.sets * pl.rblocks;
    int64_t blk1 = blk0 + pl.rblocks < w->nblk ? blk0 + pl.rblocks : w->nblk;
    int64_t ntr = (w->gs + 2) / 3;
    if (j->B <= SCORE_BC) {
        fn(j, &ss, blk0, blk1, 0, w->gpr, 0, ntr, 0);
    } else if (pl.groups > 0) {
        int64_t g0 = set * pl.groups, g1 = g0 + pl.groups < w->gpr ? g0 + pl.groups : w->gpr;
        score_transpose(j, g0 * w->gs, g1 * w->gs < w->cols ? g1 * w->gs : w->cols, pl.cpad,
                        ss.xT);
        fn(j, &ss, blk0, blk1, g0, g1, 0, ntr, pl.cpad);
    } else {   /* the parts of group `set`, one tile each */
        int64_t c0 = set * w->gs, c1 = c0 + w->gs < w->cols ? c0 + w->gs : w->cols;
        for (int64_t t0 = 0; c0 + 3 * t0 < c1; t0 += pl.per) {
            int64_t t1 = t0 + pl.per < ntr ? t0 + pl.per : ntr;
            score_transpose(j, c0 + 3 * t0, c0 + 3 * t1 < c1 ? c0 + 3 * t1 : c1, pl.cpad, ss.xT);
            fn(j, &ss, blk0, blk1, set, set + 1, t0, t1, pl.cpad);
        }
    }
}

static int avx512_score(const ts_weights *w, const float *dy, const float *x, int64_t B,
                        int16_t *score, ts_pool *pool)
{
    if (B <= 0)
        return -1;   /* every score is 0: the portable kernel writes them */
    ts_kjob j = {.w = w, .dy = dy, .x = x, .B = B, .score = score};
    score_plan pl = score_plan_of(w, B, ts_kslots(pool, w, B));
    return ts_krun(pool, &j, score_scratch_at(&pl, B, NULL, NULL), pl.items, score_item);
}

const ts_kernel_family ts_kernel_family_avx512 = {"avx512", avx512_forward, avx512_backward_x,
                                                  avx512_score};
