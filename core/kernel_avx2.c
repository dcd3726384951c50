/* kernel_avx2.c — the AVX2 family (compiled with -mavx2 -mfma; chosen at run time by
 * kernel.c only on CPUs that have them).
 *
 * forward: kernel_gemm.h with 8 batch lanes, for every batch size (one batch row uses one
 * lane of eight, still several times the portable kernel). backward_x: kernel_bwd.h.
 * score: the portable kernel's multiply-add chains, 32 columns of a row at a time (below).
 */
#include <immintrin.h>
#include <string.h>

#include "kernel_impl.h"

#define VEC __m256
#define LANES 8
#define VZERO() _mm256_setzero_ps()
#define VLOAD(p) _mm256_load_ps(p)
#define VSTORE(p, v) _mm256_store_ps((float *)(p), v)
#define VADD(a, b) _mm256_add_ps(a, b)
#define VSUB(a, b) _mm256_sub_ps(a, b)
#define VFMA(a, b, c) _mm256_fmadd_ps(a, b, c)
#define VBCAST(f) _mm256_set1_ps(f)
#define GEMM_PREFIX(name) avx2_gemm_##name
#define GEMM_OFFSETS(words, off) avx2_offsets(words, off)

/* off[f][k] = field f of words[k] times 32 (the bytes of one table vector). */
static inline void avx2_offsets(const uint32_t *words, uint32_t off[TS_FPW][TS_RB])
{
    __m256i m = _mm256_set1_epi32(31 << 5);
    for (int h = 0; h < TS_RB; h += 8) {
        __m256i d = _mm256_load_si256((const __m256i *)(words + h));
        _mm256_store_si256((__m256i *)(off[0] + h), _mm256_and_si256(_mm256_slli_epi32(d, 5), m));
        _mm256_store_si256((__m256i *)(off[1] + h), _mm256_and_si256(d, m));
        _mm256_store_si256((__m256i *)(off[2] + h), _mm256_and_si256(_mm256_srli_epi32(d, 5), m));
        _mm256_store_si256((__m256i *)(off[3] + h), _mm256_and_si256(_mm256_srli_epi32(d, 10), m));
        _mm256_store_si256((__m256i *)(off[4] + h), _mm256_and_si256(_mm256_srli_epi32(d, 15), m));
        _mm256_store_si256((__m256i *)(off[5] + h), _mm256_and_si256(_mm256_srli_epi32(d, 20), m));
    }
}
#include "kernel_gemm.h"

#define BV __m256
#define BV_ZERO() _mm256_setzero_ps()
#define BV_LOAD(p) _mm256_load_ps(p)
#define BV_STORE(p, v) _mm256_store_ps(p, v)
#define BV_ADD(a, b) _mm256_add_ps(a, b)
#define BV_SUB(a, b) _mm256_sub_ps(a, b)
#define BV_MUL(a, b) _mm256_mul_ps(a, b)
#define BV_BCAST(f) _mm256_set1_ps(f)
#define BWD_PREFIX(name) avx2_bwd_##name
#define BWD_OFFSETS(words, off) avx2_offsets(words, off)
#include "kernel_bwd.h"

static int avx2_backward_x(const ts_weights *w, const float *S, const float *dy, int64_t B,
                           float *dx, ts_pool *pool)
{
    if (w->rows < TS_BWD_MIN_ROWS)
        return -1;   /* small layers: the reference's order (kernel_impl.h) */
    return avx2_bwd_backward_x(w, S, dy, B, dx, pool);
}

/* ── score ──
 * score[r,g] = Σ_{c∈g} sign(dW[r][c]) · T[r][c] with dW[r][c] the same chain of fused
 * multiply-adds over b from 0 as ts_kernel_dw (so every sign is the portable kernel's), 8
 * columns to a vector, 4 vectors (32 columns) of 2 rows side by side: 8 independent chains
 * hide the FMAs' latency (with 4 chains of one row the kernel was latency-bound: ~24 ms of
 * CPU per 4096x4096 batch-8 call against ~17.6 ms, perf). A row's group is decoded once
 * into int32 trits (zero past its real columns); sign(dW)·T is (T & [dW > 0]) − (T & [dW < 0])
 * in integer lanes, so a NaN or ±0 dW adds 0, as in the portable kernel. Rows are split
 * between threads. */
#define SCORE_MAX_GS 1024   /* the decoded trits live on the stack; wider groups: portable */

typedef struct {
    const ts_weights *w;
    const float *dy, *x;
    int64_t B;
    int16_t *score;
} avx2_score_job;

/* Lanes [0, n) of a vector, n clamped to 0..8. */
static inline __m256i lanes_below(int64_t n)
{
    __m256i idx = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    return _mm256_cmpgt_epi32(_mm256_set1_epi32((int)(n < 0 ? 0 : n > 8 ? 8 : n)), idx);
}

/* sign(dW)·t summed into int32 lanes: (t & [dW > 0]) − (t & [dW < 0]). */
static inline __m256i signed_trits(__m256 dw, const int32_t *t)
{
    __m256i tk = _mm256_loadu_si256((const __m256i *)t);
    __m256i pos = _mm256_castps_si256(_mm256_cmp_ps(dw, _mm256_setzero_ps(), _CMP_GT_OQ));
    __m256i neg = _mm256_castps_si256(_mm256_cmp_ps(dw, _mm256_setzero_ps(), _CMP_LT_OQ));
    return _mm256_sub_epi32(_mm256_and_si256(tk, pos), _mm256_and_si256(tk, neg));
}

/* Σ sign(dW)·t over 32 columns from x + c (n of them real, n ≤ 32) of row r. The four
 * chains are named variables: as an array the compiler kept them in memory. */
static inline __m256i score32(const avx2_score_job *j, int64_t r, int64_t c, int64_t n,
                              const int32_t *t)
{
    const ts_weights *w = j->w;
    const float *dy = j->dy + r, *x = j->x + c;
    __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
    if (n == 32) {
        for (int64_t b = 0; b < j->B; b++, dy += w->rows, x += w->cols) {
            __m256 d = _mm256_broadcast_ss(dy);
            a0 = _mm256_fmadd_ps(d, _mm256_loadu_ps(x), a0);
            a1 = _mm256_fmadd_ps(d, _mm256_loadu_ps(x + 8), a1);
            a2 = _mm256_fmadd_ps(d, _mm256_loadu_ps(x + 16), a2);
            a3 = _mm256_fmadd_ps(d, _mm256_loadu_ps(x + 24), a3);
        }
    } else {   /* a short group, or the end of x: masked loads never touch what is past n */
        __m256i m0 = lanes_below(n), m1 = lanes_below(n - 8), m2 = lanes_below(n - 16),
                m3 = lanes_below(n - 24);
        for (int64_t b = 0; b < j->B; b++, dy += w->rows, x += w->cols) {
            __m256 d = _mm256_broadcast_ss(dy);
            a0 = _mm256_fmadd_ps(d, _mm256_maskload_ps(x, m0), a0);
            a1 = _mm256_fmadd_ps(d, _mm256_maskload_ps(x + 8, m1), a1);
            a2 = _mm256_fmadd_ps(d, _mm256_maskload_ps(x + 16, m2), a2);
            a3 = _mm256_fmadd_ps(d, _mm256_maskload_ps(x + 24, m3), a3);
        }
    }
    __m256i s01 = _mm256_add_epi32(signed_trits(a0, t), signed_trits(a1, t + 8));
    __m256i s23 = _mm256_add_epi32(signed_trits(a2, t + 16), signed_trits(a3, t + 24));
    return _mm256_add_epi32(s01, s23);
}

/* score32 for rows r and r + 1 over 32 real columns: eight chains, and each x vector loaded
 * once for both rows. */
static inline void score32x2(const avx2_score_job *j, int64_t r, int64_t c, const int32_t *t,
                             const int32_t *u, __m256i *sum_r, __m256i *sum_u)
{
    const ts_weights *w = j->w;
    const float *dy = j->dy + r, *x = j->x + c;
    __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0, b0 = a0, b1 = a0, b2 = a0, b3 = a0;
    for (int64_t b = 0; b < j->B; b++, dy += w->rows, x += w->cols) {
        __m256 d = _mm256_broadcast_ss(dy), e = _mm256_broadcast_ss(dy + 1);
        __m256 x0 = _mm256_loadu_ps(x), x1 = _mm256_loadu_ps(x + 8);
        __m256 x2 = _mm256_loadu_ps(x + 16), x3 = _mm256_loadu_ps(x + 24);
        a0 = _mm256_fmadd_ps(d, x0, a0);
        b0 = _mm256_fmadd_ps(e, x0, b0);
        a1 = _mm256_fmadd_ps(d, x1, a1);
        b1 = _mm256_fmadd_ps(e, x1, b1);
        a2 = _mm256_fmadd_ps(d, x2, a2);
        b2 = _mm256_fmadd_ps(e, x2, b2);
        a3 = _mm256_fmadd_ps(d, x3, a3);
        b3 = _mm256_fmadd_ps(e, x3, b3);
    }
    *sum_r = _mm256_add_epi32(*sum_r, _mm256_add_epi32(_mm256_add_epi32(signed_trits(a0, t), signed_trits(a1, t + 8)),
                                                       _mm256_add_epi32(signed_trits(a2, t + 16), signed_trits(a3, t + 24))));
    *sum_u = _mm256_add_epi32(*sum_u, _mm256_add_epi32(_mm256_add_epi32(signed_trits(b0, u), signed_trits(b1, u + 8)),
                                                       _mm256_add_epi32(signed_trits(b2, u + 16), signed_trits(b3, u + 24))));
}

static inline int16_t hsum16(__m256i sum)
{
    __m128i s4 = _mm_add_epi32(_mm256_castsi256_si128(sum), _mm256_extracti128_si256(sum, 1));
    s4 = _mm_add_epi32(s4, _mm_shuffle_epi32(s4, 0x4e));
    s4 = _mm_add_epi32(s4, _mm_shuffle_epi32(s4, 0xb1));
    return ts_wrap16(_mm_cvtsi128_si32(s4));
}

/* The trits of row r's group g into t[0, 3·ntr) (columns past the group's end are 0 in the
 * layout already). */
static inline void decode_group(const ts_weights *w, int64_t r, int64_t g, int32_t *t)
{
    const uint32_t *words = ts_wwords(w, r / TS_RB, g, 0) + r % TS_RB;
    int64_t tr = 0;
    for (int64_t jw = 0; jw < w->nw; jw++) {
        uint32_t word = words[jw * TS_RB];
        for (int k = 0; k < TS_FPW && tr < w->ntr; k++, tr++, word >>= 5) {
            const int8_t *f = ts_field_trits[word & 31u];
            t[3 * tr] = f[0], t[3 * tr + 1] = f[1], t[3 * tr + 2] = f[2];
        }
    }
}

/* Rows [r0, r1) in runs of up to 16 rows, each run group by group: the batch's x columns of
 * a group (B·gs floats) stay in L1 while the run's rows read them. */
static void avx2_score_rows(void *arg, int64_t r0, int64_t r1)
{
    const avx2_score_job *j = arg;
    const ts_weights *w = j->w;
    /* trits of one group: 3·ntr decoded per row, zeros after them up to whole 32-column steps */
    int32_t t[2][SCORE_MAX_GS + 34] __attribute__((aligned(32)));
    memset(t, 0, sizeof t);
    for (int64_t rb = r0; rb < r1; rb += 16) {
        int64_t re = rb + 16 < r1 ? rb + 16 : r1;
        for (int64_t g = 0; g < w->gpr; g++) {
            int64_t c0 = g * w->gs, n = (w->cols - c0 < w->gs ? w->cols - c0 : w->gs);
            for (int64_t r = rb; r < re; r += 2) {
                int pair = r + 1 < re;
                decode_group(w, r, g, t[0]);
                if (pair)
                    decode_group(w, r + 1, g, t[1]);
                __m256i s0 = _mm256_setzero_si256(), s1 = s0;
                int64_t k = 0;
                for (; pair && k + 32 <= n; k += 32)
                    score32x2(j, r, c0 + k, t[0] + k, t[1] + k, &s0, &s1);
                for (int64_t k1 = k; k1 < n; k1 += 32)   /* a short last step, or one row */
                    s0 = _mm256_add_epi32(s0, score32(j, r, c0 + k1, n - k1 < 32 ? n - k1 : 32, t[0] + k1));
                for (int64_t k1 = k; pair && k1 < n; k1 += 32)
                    s1 = _mm256_add_epi32(s1, score32(j, r + 1, c0 + k1, n - k1 < 32 ? n - k1 : 32, t[1] + k1));
                j->score[r * w->gpr + g] = hsum16(s0);
                if (pair)
                    j->score[(r + 1) * w->gpr + g] = hsum16(s1);
            }
        }
    }
}

static int avx2_score(const ts_weights *w, const float *dy, const float *x, int64_t B,
                      int16_t *score, ts_pool *pool)
{
    if (w->gs > SCORE_MAX_GS)
        return -1;
    avx2_score_job j = {w, dy, x, B, score};
    ts_pool_run(pool, w->rows, 16, avx2_score_rows, &j);
    return 0;
}

const ts_kernel_family ts_kernel_family_avx2 = {"avx2", avx2_gemm_forward, avx2_backward_x, avx2_score};
