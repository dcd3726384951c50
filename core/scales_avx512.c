/* scales_avx512.c — the scales, 16 groups at a time (compiled with -mavx512f/bw/vl/dq -mfma;
 * used by scales.c only on CPUs that have them, and only when libm's exp2f is the one below).
 *
 * The exponent is the same IEEE float32 operations as the plain loop, lane by lane: int8 and
 * int64 (vcvtqq2ps) to float, a float division by denom, a multiply by 4, an add. Then exp2f
 * as glibc 2.36 (Debian 12) computes it (e_exp2f.c, from ARM's optimized-routines; on x86-64
 * CPUs with FMA its -mfma build, where the polynomial's a·b + c are fused), in double:
 *     x = k/32 + r, |r| <= 1/64            (k = x·32 rounded to nearest, by adding 1.5·2^47)
 *     2^x = 2^(k/32) · 2^r,  2^r ≈ 1 + C2·r + C1·r² + C0·r³ (as (C0·r + C1)·r² + (C2·r + 1))
 * rounded once to float at the end. (The same steps unfused give the same float for every
 * input, checked, so the build without FMA agrees too.) Lanes outside [-149, 128) take libm's
 * exp2f: overflow, inf, nan, and x < -149, where libm sets errno (ERANGE) as well, so errno is
 * set as by the plain loop. ts_scales_exp2 is checked against libm on every float, values and
 * errno (tests/unit/test_scales.c).
 */
#include <immintrin.h>
#include <math.h>
#include <string.h>

#include "scales.h"

/* 2^(i/32) rounded to the nearest double, i = 0..31 (glibc's __exp2f_data.tab holds the
 * same values, as their bits minus i << 47). */
static const double exp2_32nds[32] __attribute__((aligned(64))) = {
    0x1.0000000000000p+0, 0x1.059b0d3158574p+0, 0x1.0b5586cf9890fp+0, 0x1.11301d0125b51p+0,
    0x1.172b83c7d517bp+0, 0x1.1d4873168b9aap+0, 0x1.2387a6e756238p+0, 0x1.29e9df51fdee1p+0,
    0x1.306fe0a31b715p+0, 0x1.371a7373aa9cbp+0, 0x1.3dea64c123422p+0, 0x1.44e086061892dp+0,
    0x1.4bfdad5362a27p+0, 0x1.5342b569d4f82p+0, 0x1.5ab07dd485429p+0, 0x1.6247eb03a5585p+0,
    0x1.6a09e667f3bcdp+0, 0x1.71f75e8ec5f74p+0, 0x1.7a11473eb0187p+0, 0x1.82589994cce13p+0,
    0x1.8ace5422aa0dbp+0, 0x1.93737b0cdc5e5p+0, 0x1.9c49182a3f090p+0, 0x1.a5503b23e255dp+0,
    0x1.ae89f995ad3adp+0, 0x1.b7f76f2fb5e47p+0, 0x1.c199bdd85529cp+0, 0x1.cb720dcef9069p+0,
    0x1.d5818dcfba487p+0, 0x1.dfc97337b9b5fp+0, 0x1.ea4afa2a490dap+0, 0x1.f50765b6e4540p+0,
};

/* glibc's polynomial coefficients of 2^r on [-1/64, 1/64] (__exp2f_data.poly). */
#define C0 0x1.c6af84b912394p-5
#define C1 0x1.ebfce50fac4f3p-3
#define C2 0x1.62e42ff0c52d6p-1

/* exp2f of 8 floats (as doubles) in [-149, 128). */
static inline __m256 exp2_8(__m512d x)
{
    const __m512d shift = _mm512_set1_pd(0x1.8p47);   /* its ulp is 1/32 */
    __m512d kd = _mm512_add_pd(x, shift);              /* k/32 + shift, k in the low bits */
    __m512i ki = _mm512_castpd_si512(kd);
    __m512d r = _mm512_sub_pd(x, _mm512_sub_pd(kd, shift));
    /* 2^(k/32) = 2^((k mod 32)/32) · 2^floor(k/32): the table entry (two 16-entry
     * permutes, bit 4 picks one) with floor(k/32) added to its exponent */
    const double *t = exp2_32nds;
    __m512d lo = _mm512_permutex2var_pd(_mm512_load_pd(t), ki, _mm512_load_pd(t + 8));
    __m512d hi = _mm512_permutex2var_pd(_mm512_load_pd(t + 16), ki, _mm512_load_pd(t + 24));
    __m512d tab = _mm512_mask_blend_pd(_mm512_test_epi64_mask(ki, _mm512_set1_epi64(16)), lo, hi);
    __m512i scale = _mm512_slli_epi64(_mm512_srli_epi64(ki, 5), 52);
    __m512d s = _mm512_castsi512_pd(_mm512_add_epi64(_mm512_castpd_si512(tab), scale));
    __m512d z = _mm512_fmadd_pd(_mm512_set1_pd(C0), r, _mm512_set1_pd(C1));
    __m512d r2 = _mm512_mul_pd(r, r);
    __m512d y = _mm512_fmadd_pd(_mm512_set1_pd(C2), r, _mm512_set1_pd(1.0));
    y = _mm512_fmadd_pd(z, r2, y);
    return _mm512_cvtpd_ps(_mm512_mul_pd(y, s));
}

/* out[0..16) = exp2f(x), bit for bit. */
static inline void exp2_16(__m512 x, float *out)
{
    __m256 lo = exp2_8(_mm512_cvtps_pd(_mm512_castps512_ps256(x)));
    __m256 hi = exp2_8(_mm512_cvtps_pd(_mm512_extractf32x8_ps(x, 1)));
    _mm512_storeu_ps(out, _mm512_insertf32x8(_mm512_castps256_ps512(lo), hi, 1));
    __mmask16 in_range = _mm512_cmp_ps_mask(x, _mm512_set1_ps(-149.0f), _CMP_GE_OQ) &
                         _mm512_cmp_ps_mask(x, _mm512_set1_ps(128.0f), _CMP_LT_OQ);
    if (in_range != 0xFFFF) {
        float xs[16];
        _mm512_storeu_ps(xs, x);
        for (int j = 0; j < 16; j++)
            if (!(in_range >> j & 1))
                out[j] = exp2f(xs[j]);
    }
}

/* E[j] + ((float)corr[j] / denom) · 4 for 16 groups (E[j] alone when step <= 0). */
static inline __m512 exponent_16(const int8_t *E, const int64_t *corr, int64_t step, __m512 denom)
{
    __m512 e = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)E)));
    if (step <= 0)
        return e;
    __m256 c0 = _mm512_cvtepi64_ps(_mm512_loadu_si512(corr));
    __m256 c1 = _mm512_cvtepi64_ps(_mm512_loadu_si512(corr + 8));
    __m512 mean = _mm512_div_ps(_mm512_insertf32x8(_mm512_castps256_ps512(c0), c1, 1), denom);
    return _mm512_add_ps(e, _mm512_mul_ps(mean, _mm512_set1_ps(4.0f)));
}

void ts_scales_compute_avx512(const int8_t *E, const int64_t *corr, int64_t n, int64_t step,
                              float denom, float *S, int64_t stride)
{
    const __m512 d = _mm512_set1_ps(denom);
    float buf[16];
    for (int64_t i = 0; i < n; i += 16) {
        int64_t m = n - i < 16 ? n - i : 16;
        __m512 x;
        if (m == 16) {
            x = exponent_16(E + i, step > 0 ? corr + i : NULL, step, d);
        } else {   /* the tail, from zero-padded copies (no load past the arrays) */
            int8_t e[16] = {0};
            int64_t c[16] = {0};
            memcpy(e, E + i, (size_t)m);
            if (step > 0)
                memcpy(c, corr + i, (size_t)m * sizeof *c);
            x = exponent_16(e, c, step, d);
        }
        float *out = stride == 1 && m == 16 ? S + i : buf;
        exp2_16(x, out);
        if (out == buf)
            for (int64_t j = 0; j < m; j++)
                S[(i + j) * stride] = buf[j];
    }
}

void ts_scales_exp2_avx512(const float *x, int64_t n, float *y)
{
    int64_t i = 0;
    for (; i + 16 <= n; i += 16)
        exp2_16(_mm512_loadu_ps(x + i), y + i);
    if (i < n) {
        float xs[16] = {0}, buf[16];
        memcpy(xs, x + i, (size_t)(n - i) * sizeof *xs);
        exp2_16(_mm512_loadu_ps(xs), buf);
        memcpy(y + i, buf, (size_t)(n - i) * sizeof *buf);
    }
}

/* In-register 16×16 transpose: r[i][j] becomes r[j][i]. */
static inline void transpose16(__m512 r[16])
{
    __m512 t[16];
    for (int i = 0; i < 16; i += 2) {
        t[i] = _mm512_unpacklo_ps(r[i], r[i + 1]);
        t[i + 1] = _mm512_unpackhi_ps(r[i], r[i + 1]);
    }
    for (int i = 0; i < 16; i += 4) {
        r[i] = _mm512_castpd_ps(_mm512_unpacklo_pd(_mm512_castps_pd(t[i]), _mm512_castps_pd(t[i + 2])));
        r[i + 1] = _mm512_castpd_ps(_mm512_unpackhi_pd(_mm512_castps_pd(t[i]), _mm512_castps_pd(t[i + 2])));
        r[i + 2] = _mm512_castpd_ps(_mm512_unpacklo_pd(_mm512_castps_pd(t[i + 1]), _mm512_castps_pd(t[i + 3])));
        r[i + 3] = _mm512_castpd_ps(_mm512_unpackhi_pd(_mm512_castps_pd(t[i + 1]), _mm512_castps_pd(t[i + 3])));
    }
    for (int h = 0; h < 16; h += 8)
        for (int i = 0; i < 4; i++) {
            t[h + i] = _mm512_shuffle_f32x4(r[h + i], r[h + i + 4], 0x88);
            t[h + i + 4] = _mm512_shuffle_f32x4(r[h + i], r[h + i + 4], 0xdd);
        }
    for (int i = 0; i < 8; i++) {
        r[i] = _mm512_shuffle_f32x4(t[i], t[i + 8], 0x88);
        r[i + 8] = _mm512_shuffle_f32x4(t[i], t[i + 8], 0xdd);
    }
}

/* corr[0..16) -= score[0..16) (update_corr, 16 groups). */
static inline void update_16(int64_t *corr, const int16_t *score)
{
    __m256i s = _mm256_loadu_si256((const __m256i *)score);
    __m512i lo = _mm512_cvtepi16_epi64(_mm256_castsi256_si128(s));
    __m512i hi = _mm512_cvtepi16_epi64(_mm256_extracti128_si256(s, 1));
    _mm512_storeu_si512(corr, _mm512_sub_epi64(_mm512_loadu_si512(corr), lo));
    _mm512_storeu_si512(corr + 8, _mm512_sub_epi64(_mm512_loadu_si512(corr + 8), hi));
}

/* 16 groups of 16 rows at a time: update_corr of their corr when there is a score, then each
 * row's 16 scales as ts_scales_compute makes them, and a register transpose, so the stores
 * are whole lines (16 rows of one group). The rest (a block of fewer rows, the last groups)
 * row by row. */
void ts_scales_block_avx512(const int8_t *E, int64_t *corr, const int16_t *score, int64_t gpr,
                            int nrows, int64_t step, float denom, float *S)
{
    const __m512 d = _mm512_set1_ps(denom);
    int64_t g0 = 0;
    if (nrows == 16)
        for (; g0 + 16 <= gpr; g0 += 16) {
            float tile[16][16] __attribute__((aligned(64)));
            for (int r = 0; r < 16; r++) {
                if (score)
                    update_16(corr + r * gpr + g0, score + r * gpr + g0);
                exp2_16(exponent_16(E + r * gpr + g0, step > 0 ? corr + r * gpr + g0 : NULL, step, d),
                        tile[r]);
            }
            __m512 v[16];
            for (int r = 0; r < 16; r++)
                v[r] = _mm512_load_ps(tile[r]);
            transpose16(v);
            for (int g = 0; g < 16; g++)
                _mm512_store_ps(S + (g0 + g) * 16, v[g]);
        }
    if (g0 < gpr)
        for (int r = 0; r < nrows; r++) {
            if (score)
                for (int64_t g = g0; g < gpr; g++)
                    corr[r * gpr + g] -= score[r * gpr + g];
            ts_scales_compute_avx512(E + r * gpr + g0, step > 0 ? corr + r * gpr + g0 : NULL,
                                     gpr - g0, step, denom, S + g0 * 16 + r, 16);
        }
}
