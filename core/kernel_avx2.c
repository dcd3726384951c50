/* kernel_avx2.c — the AVX2 family (compiled with -mavx2 -mfma; chosen at run time by
 * kernel.c only on CPUs that have them).
 *
 * forward: kernel_gemm.h with 8 batch lanes, for every batch size (one batch row uses one
 * lane of eight, still several times the portable kernel). backward_x: kernel_bwd.h.
 * AVX2 has no 32-entry permute to decode 16 rows' trits at once, so score is left to the
 * portable kernel.
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

const ts_kernel_family ts_kernel_family_avx2 = {"avx2", avx2_gemm_forward, avx2_backward_x, NULL};
