/* test_scales.c — the scales (core/scales.h): the portable path is the plain formula, and the
 * AVX-512 path gives the same float bits (memcmp) on every E in [-128, 127] × corr values
 * from 0 to ±2^63, steps from 0 to INT64_MAX (denom's overflow form included), lengths that
 * are not a multiple of 16, unaligned starts and strided output. On a CPU without AVX-512
 * (or a libm whose exp2f the AVX-512 path does not reproduce) only the portable path is
 * checked.
 *
 * Two slow checks run only when asked (not part of make test):
 *   TSCALE_SCALES_EXHAUSTIVE=1 build/tests/test_scales   ts_scales_exp2 (AVX-512) against
 *       libm's exp2f on every one of the 2^32 floats, values and errno (about a minute)
 *   TSCALE_SCALES_TIME=1 build/tests/test_scales         the two paths' time on 524,288
 *       groups (a 4096×4096 layer with gs 32), median of 21 runs
 */
#include <check.h>
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#ifdef __GLIBC__
#include <gnu/libc-version.h>
#endif

#include "core/scales.h"
#include "testutil.h"

static int have_avx512(void)
{
    if (ts_scales_use("avx512") == 0)
        return 1;
    fprintf(stderr, "test_scales: the AVX-512 path does not run here; checking the portable one\n");
    return 0;
}

/* S of both paths (stride 1), compared bit for bit; the portable one also against the
 * formula written out. */
static void check_paths(const int8_t *E, const int64_t *corr, int64_t n, int64_t step, int64_t gs)
{
    float denom = ts_scales_denom(step, gs);
    float *want = malloc((size_t)(n + 1) * sizeof *want), *got = malloc((size_t)(n + 1) * sizeof *got);
    ck_assert(want && got);
    ck_assert_int_eq(ts_scales_use("portable"), 0);
    ts_scales_compute(E, corr, n, step, denom, want, 1);
    for (int64_t i = 0; i < n; i++) {
        float x = step > 0 ? (float)E[i] + (float)corr[i] / denom * 4.0f : (float)E[i];
        float s = exp2f(x);
        ck_assert_msg(memcmp(&s, &want[i], sizeof s) == 0, "portable: E %d corr %lld step %lld: %a, not %a",
                      E[i], corr ? (long long)corr[i] : 0LL, (long long)step, want[i], s);
    }
    if (have_avx512()) {
        got[n] = want[n] = 42.0f;   /* a sentinel: nothing written past n */
        ts_scales_compute(E, corr, n, step, denom, got, 1);
        for (int64_t i = 0; i <= n; i++)
            ck_assert_msg(memcmp(&got[i], &want[i], sizeof *got) == 0,
                          "avx512: E %d corr %lld step %lld gs %lld (i %lld of %lld): %a, portable %a",
                          i < n ? E[i] : 0, i < n && corr ? (long long)corr[i] : 0LL, (long long)step,
                          (long long)gs, (long long)i, (long long)n, got[i], want[i]);
    }
    free(want);
    free(got);
}

static const int64_t steps[] = {0, 1, 7, 1000, (int64_t)1 << 40, INT64_MAX / 32 + 1, INT64_MAX};

/* Every E in [-128, 127] with each corr of a list: 0, ±1, ±step·gs and its half, extremes,
 * and random values of every magnitude. */
START_TEST(test_every_e)
{
    int64_t step = steps[_i], gs = 32;
    int64_t sg = step <= INT64_MAX / gs ? step * gs : INT64_MAX;
    int64_t corrs[64] = {0, 1, -1, sg, -sg, sg / 2, -sg / 2, sg - 1, -sg + 1, sg / 4 * 3,
                         (int64_t)1 << 62, -((int64_t)1 << 62), INT64_MAX, INT64_MIN, 12345, -999};
    int nc = 16;
    srand(7 + (unsigned)_i);
    while (nc < 64) {   /* random magnitudes 2^0 .. 2^62 */
        int64_t v = ((int64_t)rand() << 31 ^ rand()) & (((int64_t)1 << (rand() % 63)) - 1);
        corrs[nc++] = rand() % 2 ? v : -v;
    }
    int64_t n = 256 * nc;
    int8_t *E = malloc((size_t)n);
    int64_t *corr = malloc((size_t)n * sizeof *corr);
    ck_assert(E && corr);
    for (int64_t i = 0; i < n; i++) {
        E[i] = (int8_t)(i % 256 - 128);
        corr[i] = corrs[i / 256];
    }
    check_paths(E, corr, n, step, gs);
    check_paths(E, corr, n, step, 5);
    free(E);
    free(corr);
}
END_TEST

/* Lengths 0..40 from unaligned starts (the tail of zero-padded copies, the full blocks);
 * at step 0 without corr. */
START_TEST(test_lengths)
{
    enum { N = 64 };
    int8_t E[N];
    int64_t corr[N];
    srand(11);
    for (int i = 0; i < N; i++) {
        E[i] = (int8_t)(rand() % 24 - 16);
        corr[i] = rand() % 20001 - 10000;
    }
    for (int off = 0; off < 4; off++)
        for (int n = 0; n <= 40; n++)
            for (int s = 0; s < 3; s++)
                check_paths(E + off, s ? corr + off : NULL, n, (int64_t[]){0, 1, 313}[s], 32);
}
END_TEST

/* Strided output (a row of a blocked S): S[i·stride] written, everything between untouched. */
START_TEST(test_stride)
{
    enum { N = 37, STRIDE = 16 };
    int8_t E[N];
    int64_t corr[N];
    srand(13);
    for (int i = 0; i < N; i++) {
        E[i] = (int8_t)(rand() % 256 - 128);
        corr[i] = rand() % 4001 - 2000;
    }
    float denom = ts_scales_denom(100, 20), flat[N];
    ck_assert_int_eq(ts_scales_use("portable"), 0);
    ts_scales_compute(E, corr, N, 100, denom, flat, 1);
    int avx = ts_scales_use("avx512") == 0;
    for (int k = 0; k < 1 + avx; k++) {
        ck_assert_int_eq(ts_scales_use(k ? "avx512" : "portable"), 0);
        float S[N * STRIDE];
        for (int i = 0; i < N * STRIDE; i++)
            S[i] = -1.0f;
        ts_scales_compute(E, corr, N, 100, denom, S, STRIDE);
        for (int i = 0; i < N * STRIDE; i++)
            ck_assert_msg(i % STRIDE ? S[i] == -1.0f : memcmp(&S[i], &flat[i / STRIDE], sizeof *S) == 0,
                          "%s: S[%d] = %a", ts_scales_name(), i, S[i]);
    }
}
END_TEST

/* ts_scales_block: a block of rows in the kernels' order, the same bits as row by row; rows
 * past nrows untouched; full 16×16 tiles and the groups and rows left over; with a score,
 * corr -= score first (update_corr), rows past nrows untouched too. */
START_TEST(test_block)
{
    static const int64_t gprs[] = {1, 15, 16, 17, 40, 128};
    static const int rows[] = {1, 2, 7, 15, 16};
    srand(17);
    for (size_t q = 0; q < sizeof gprs / sizeof gprs[0]; q++)
        for (size_t qr = 0; qr < sizeof rows / sizeof rows[0]; qr++) {
            int64_t gpr = gprs[q], n = 16 * gpr;
            int nrows = rows[qr];
            int8_t *E = malloc((size_t)n);
            int16_t *score = malloc((size_t)n * sizeof *score);
            int64_t *corr = malloc((size_t)n * sizeof *corr), *want = malloc((size_t)n * sizeof *want);
            int64_t *work = malloc((size_t)n * sizeof *work);
            float *flat = malloc((size_t)n * sizeof *flat), *S = malloc((size_t)n * sizeof *S);
            for (int64_t i = 0; i < n; i++) {
                E[i] = (int8_t)(rand() % 16 - 12);
                corr[i] = rand() % 6401 - 3200;
                score[i] = (int16_t)(rand() % 65 - 32);
            }
            for (int with_score = 0; with_score <= 1; with_score++)
                for (int64_t step = 0; step <= 100; step += 100) {
                    for (int64_t i = 0; i < n; i++)
                        want[i] = corr[i] - (with_score && i < nrows * gpr ? score[i] : 0);
                    float denom = ts_scales_denom(step, 32);
                    ck_assert_int_eq(ts_scales_use("portable"), 0);
                    ts_scales_compute(E, want, n, step, denom, flat, 1);   /* row-major */
                    int avx = ts_scales_use("avx512") == 0;
                    for (int k = 0; k < 1 + avx; k++) {
                        ck_assert_int_eq(ts_scales_use(k ? "avx512" : "portable"), 0);
                        memcpy(work, corr, (size_t)n * sizeof *work);
                        for (int64_t i = 0; i < n; i++)
                            S[i] = -1.0f;
                        ts_scales_block(E, work, with_score ? score : NULL, gpr, nrows, step, denom, S);
                        ck_assert_msg(memcmp(work, want, (size_t)n * sizeof *work) == 0,
                                      "%s gpr %lld rows %d: corr after update_corr", ts_scales_name(),
                                      (long long)gpr, nrows);
                        for (int64_t g = 0; g < gpr; g++)
                            for (int r = 0; r < 16; r++) {
                                float got = S[g * 16 + r];
                                ck_assert_msg(r >= nrows ? got == -1.0f
                                                         : memcmp(&got, &flat[r * gpr + g], sizeof got) == 0,
                                              "%s gpr %lld rows %d step %lld score %d: [%lld][%d] = %a",
                                              ts_scales_name(), (long long)gpr, nrows, (long long)step,
                                              with_score, (long long)g, r, got);
                            }
                    }
                }
            free(E), free(score), free(corr), free(want), free(work), free(flat), free(S);
        }
}
END_TEST

START_TEST(test_denom)
{
    ck_assert(ts_scales_denom(0, 32) == 1.0f);
    ck_assert(ts_scales_denom(-5, 32) == 1.0f);
    ck_assert(ts_scales_denom(7, 0) == 1.0f);
    ck_assert(ts_scales_denom(7, 32) == 224.0f);
    /* float32 of the product: 2^24 + 1 is not a float, it rounds to 2^24 */
    ck_assert(ts_scales_denom(((int64_t)1 << 24) + 1, 1) == 0x1p24f);
    /* the product overflows int64: the product of the two floats */
    int64_t big = INT64_MAX / 3;
    ck_assert(ts_scales_denom(big, 5) == (float)big * 5.0f);
    ck_assert(ts_scales_denom(INT64_MAX, INT64_MAX) == 0x1p126f);
    ck_assert(ts_scales_denom(INT64_MAX / 32, 32) == (float)(INT64_MAX / 32 * 32));
}
END_TEST

/* ts_scales_exp2 of both paths on the points where the table index and exponent change
 * (k/32 and its neighbours, across the whole range), random bit patterns and specials. */
START_TEST(test_exp2)
{
    enum { N = 3 * (278 * 32 + 1) + 40000 + 12 };
    float *x = malloc(N * sizeof *x), *want = malloc(N * sizeof *want), *got = malloc(N * sizeof *got);
    ck_assert(x && want && got);
    int n = 0;
    for (int k = -150 * 32; k <= 128 * 32; k++) {
        float c = (float)k / 32.0f;
        x[n++] = c;
        x[n++] = nextafterf(c, -INFINITY);
        x[n++] = nextafterf(c, INFINITY);
    }
    srand(17);
    for (int i = 0; i < 40000; i++) {
        uint32_t u = (uint32_t)rand() << 16 ^ (uint32_t)rand();
        memcpy(&x[n++], &u, sizeof u);
    }
    const float specials[] = {0.0f, -0.0f, INFINITY, -INFINITY, NAN, -NAN, 0x1p-149f, -0x1p-149f,
                              1e30f, -1e30f, 0x1.fffffep+127f, -0x1.fffffep+127f};
    for (int i = 0; i < 12; i++)
        x[n++] = specials[i];
    ck_assert_int_eq(n, N);
    ck_assert_int_eq(ts_scales_use("portable"), 0);
    ts_scales_exp2(x, n, want);
    for (int i = 0; i < n; i++) {
        float s = exp2f(x[i]);
        ck_assert(memcmp(&s, &want[i], sizeof s) == 0);
    }
    ck_assert(want[n - 12] == 1.0f && want[n - 10] == INFINITY && want[n - 9] == 0.0f);
    if (have_avx512()) {
        ts_scales_exp2(x, n, got);
        for (int i = 0; i < n; i++)
            ck_assert_msg(memcmp(&got[i], &want[i], sizeof *got) == 0, "exp2(%a): %a, libm %a", x[i],
                          got[i], want[i]);
    }
    free(x);
    free(want);
    free(got);
}
END_TEST

/* Lanes where libm sets errno (overflow, x < -149) go through libm: errno is set as the plain
 * loop sets it, and only there. */
static int errno_of(float x)
{
    float in[20] = {0}, out[20];
    in[19] = x;
    errno = 0;
    ts_scales_exp2(in, 20, out);
    return errno;
}

START_TEST(test_errno)
{
    for (int k = 0; k < 2; k++) {
        if (ts_scales_use(k ? "avx512" : "portable") != 0)
            continue;
        ck_assert_int_eq(errno_of(200.0f), ERANGE);
        ck_assert_int_eq(errno_of(128.0f), ERANGE);
        ck_assert_int_eq(errno_of(-150.0f), ERANGE);
        ck_assert_int_eq(errno_of(-149.5f), ERANGE);
        ck_assert_int_eq(errno_of(-149.0f), 0);
        ck_assert_int_eq(errno_of(-140.0f), 0);
        ck_assert_int_eq(errno_of(127.5f), 0);
    }
}
END_TEST

/* On glibc 2.36 (the libm the AVX-512 path reproduces, checked on every float) a CPU with
 * AVX-512 must get it: the start-up check refusing it would hide a wrong AVX-512 path. */
static int avx512_expected(void)
{
    __builtin_cpu_init();
    if (!__builtin_cpu_supports("avx512f") || !__builtin_cpu_supports("avx512bw") ||
        !__builtin_cpu_supports("avx512vl") || !__builtin_cpu_supports("avx512dq"))
        return 0;
#ifdef __GLIBC__
    return strcmp(gnu_get_libc_version(), "2.36") == 0;
#else
    return 0;
#endif
}

START_TEST(test_choice)
{
    if (avx512_expected())
        ck_assert_msg(ts_scales_use("avx512") == 0, "the AVX-512 path is refused on glibc 2.36: "
                      "it no longer gives libm's exp2f on the probes of core/scales.c");
    ck_assert_int_eq(ts_scales_use("avx2"), -1);
    ck_assert_int_eq(ts_scales_use(""), -1);
    ck_assert_int_eq(ts_scales_use(NULL), -1);
    ck_assert_int_eq(ts_scales_use("portable"), 0);
    ck_assert_str_eq(ts_scales_name(), "portable");
    if (ts_scales_use("avx512") == 0)
        ck_assert_str_eq(ts_scales_name(), "avx512");
    else
        ck_assert_str_eq(ts_scales_name(), "portable");   /* a refused switch changes nothing */
    __builtin_cpu_init();
    if (!__builtin_cpu_supports("avx512f") || !__builtin_cpu_supports("avx512dq"))
        ck_assert_int_eq(ts_scales_use("avx512"), -1);
}
END_TEST

/* ── the slow checks, on request ── */

START_TEST(test_exhaustive)
{
    if (!getenv("TSCALE_SCALES_EXHAUSTIVE") || !have_avx512())
        return;
    enum { C = 1 << 20 };
    float *x = malloc(C * sizeof *x), *y = malloc(C * sizeof *y);
    ck_assert(x && y);
    uint64_t bad = 0;
    for (uint64_t base = 0; base < (uint64_t)1 << 32; base += C) {
        for (uint32_t i = 0; i < C; i++) {
            uint32_t u = (uint32_t)(base + i);
            memcpy(&x[i], &u, sizeof u);
        }
        ts_scales_exp2(x, C, y);
        for (uint32_t i = 0; i < C; i++) {
            errno = 0;
            float s = exp2f(x[i]);
            if (memcmp(&s, &y[i], sizeof s) != 0 && bad++ < 10)
                fprintf(stderr, "exp2(%a): avx512 %a, libm %a\n", x[i], y[i], s);
            /* the AVX-512 lanes never set errno: libm must not either there */
            if (errno != 0 && x[i] >= -149.0f && x[i] < 128.0f && bad++ < 10)
                fprintf(stderr, "exp2(%a): libm sets errno %d\n", x[i], errno);
        }
    }
    printf("exhaustive: ts_scales_exp2 (avx512) vs libm exp2f on all 2^32 floats: %llu differ "
           "(in value, or libm setting errno where the AVX-512 lanes do not)\n",
           (unsigned long long)bad);
    ck_assert_uint_eq(bad, 0);
    free(x);
    free(y);
}
END_TEST

static double now_us(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec * 1e6 + (double)t.tv_nsec / 1e3;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

START_TEST(test_time)
{
    if (!getenv("TSCALE_SCALES_TIME"))
        return;
    enum { G = 4096 * 4096 / 32, RUNS = 21 };
    int64_t step = 1000, gs = 32;
    int8_t *E = malloc(G);
    int64_t *corr = malloc(G * sizeof *corr);
    float *S[2] = {malloc(G * sizeof(float)), malloc(G * sizeof(float))};
    ck_assert(E && corr && S[0] && S[1]);
    srand(19);
    for (int i = 0; i < G; i++) {   /* as a trained layer: E near -7, |mean corr| < 1 */
        E[i] = (int8_t)(rand() % 5 - 9);
        corr[i] = rand() % (2 * step * gs + 1) - step * gs;
    }
    const char *names[2] = {"portable", "avx512"};
    for (int k = 0; k < 2; k++) {
        if (ts_scales_use(names[k]) != 0)
            continue;
        double us[RUNS];
        for (int r = 0; r < RUNS; r++) {
            double t0 = now_us();
            ts_scales_compute(E, corr, G, step, ts_scales_denom(step, gs), S[k], 1);
            us[r] = now_us() - t0;
        }
        qsort(us, RUNS, sizeof *us, cmp_double);
        printf("time: %s, %d groups: median %.1f us (min %.1f, max %.1f) over %d runs\n", names[k], G,
               us[RUNS / 2], us[0], us[RUNS - 1], RUNS);
    }
    if (ts_scales_use("avx512") == 0)
        ck_assert(memcmp(S[0], S[1], G * sizeof(float)) == 0);
    free(E);
    free(corr);
    free(S[0]);
    free(S[1]);
}
END_TEST

static Suite *scales_suite(void)
{
    Suite *s = suite_create("scales");
    TCase *tc = tcase_create("paths");
    tcase_set_timeout(tc, 60);
    tcase_add_loop_test(tc, test_every_e, 0, (int)(sizeof steps / sizeof steps[0]));
    tcase_add_test(tc, test_lengths);
    tcase_add_test(tc, test_stride);
    tcase_add_test(tc, test_block);
    tcase_add_test(tc, test_denom);
    tcase_add_test(tc, test_exp2);
    tcase_add_test(tc, test_errno);
    tcase_add_test(tc, test_choice);
    suite_add_tcase(s, tc);
    tc = tcase_create("slow");
    tcase_set_timeout(tc, 1200);
    tcase_add_test(tc, test_exhaustive);
    tcase_add_test(tc, test_time);
    suite_add_tcase(s, tc);
    return s;
}

int main(void) { return run_suite(scales_suite()); }
