/* test_kernel.c — the compute layout and every kernel family the CPU runs, against a naive
 * float reference computed from the unpacked trits, on odd shapes: rows not a multiple of
 * the 16-row block, cols not a multiple of 64 (or of gs, or of 3), gs 5/8/16/32/64 and
 * wider than cols, batches 1, 3, 9, 17 (around the AVX-512 kernel switches), 1–3 threads.
 *
 * forward and backward_x must agree within SPEC §1 (|a−b| ≤ 1e-4 + 1e-4·|b|), score exactly
 * (every family computes dW with the same fused multiply-adds as ts_kernel_dw), and each
 * family's results must be bitwise the same for every thread count, and a row's forward
 * the same alone as in any batch.
 */
#include <check.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/kernel.h"
#include "core/kernel_impl.h"
#include "core/pool.h"
#include "core/trits.h"
#include "testutil.h"

static const char *families[] = {"portable", "avx2", "avx512"};

/* A layer with random trits (about a third zero), scales and inputs. */
typedef struct {
    int64_t rows, cols, gs, gpr, B;
    int8_t *T;        /* [rows][cols] */
    uint8_t *packed;
    float *S;         /* [ts_scale_count(rows, gpr)], the kernels' order */
    float *x, *dy;    /* [B][cols], [B][rows] */
} layer;

static float frand(void) { return (float)rand() / (float)RAND_MAX * 2.0f - 1.0f; }

static layer layer_make(int64_t rows, int64_t cols, int64_t gs, int64_t B, unsigned seed)
{
    srand(seed);
    layer l = {rows, cols, gs, (cols + gs - 1) / gs, B, NULL, NULL, NULL, NULL, NULL};
    size_t n = (size_t)(rows * cols);
    l.T = malloc(n);
    l.packed = malloc(ts_trits_packed_size(n));
    l.S = aligned_alloc(64, (size_t)ts_scale_count(rows, l.gpr) * sizeof *l.S + 64);
    l.x = malloc((size_t)(B * cols) * sizeof *l.x);
    l.dy = malloc((size_t)(B * rows) * sizeof *l.dy);
    ck_assert(l.T && l.packed && l.S && l.x && l.dy);
    for (size_t i = 0; i < n; i++)
        l.T[i] = (int8_t)(rand() % 3 - 1);
    ts_trits_pack(l.T, n, l.packed);
    for (int64_t i = 0; i < ts_scale_count(rows, l.gpr); i++)
        l.S[i] = 0.0f;   /* padding rows */
    for (int64_t g = 0; g < rows * l.gpr; g++)
        l.S[ts_scale_index(l.gpr, g / l.gpr, g % l.gpr)] = exp2f((float)(rand() % 9 - 8) + frand());
    for (int64_t i = 0; i < B * cols; i++)
        l.x[i] = frand();
    for (int64_t i = 0; i < B * rows; i++)
        l.dy[i] = rand() % 7 == 0 ? 0.0f : frand();   /* some exact zeros: sign(0) = 0 */
    return l;
}

static void layer_free(layer *l)
{
    free(l->T);
    free(l->packed);
    free(l->S);
    free(l->x);
    free(l->dy);
}

static float w_eff(const layer *l, int64_t r, int64_t c)
{
    return l->S[ts_scale_index(l->gpr, r, c / l->gs)] * (float)l->T[r * l->cols + c];
}

static double tol(double b) { return 1e-4 + 1e-4 * fabs(b); }

/* Naive references. */
static void ref_forward(const layer *l, float *y)
{
    for (int64_t b = 0; b < l->B; b++)
        for (int64_t r = 0; r < l->rows; r++) {
            double acc = 0;
            for (int64_t c = 0; c < l->cols; c++)
                acc += (double)w_eff(l, r, c) * l->x[b * l->cols + c];
            y[b * l->rows + r] = (float)acc;
        }
}

static void ref_backward(const layer *l, float *dx)
{
    for (int64_t b = 0; b < l->B; b++)
        for (int64_t c = 0; c < l->cols; c++) {
            double acc = 0;
            for (int64_t r = 0; r < l->rows; r++)
                acc += (double)w_eff(l, r, c) * l->dy[b * l->rows + r];
            dx[b * l->cols + c] = (float)acc;
        }
}

static void ref_score(const layer *l, int64_t *score)
{
    for (int64_t r = 0; r < l->rows; r++)
        for (int64_t g = 0; g < l->gpr; g++) {
            int64_t s = 0;
            for (int64_t c = g * l->gs; c < (g + 1) * l->gs && c < l->cols; c++) {
                float dw = 0.0f;
                for (int64_t b = 0; b < l->B; b++)
                    dw = fmaf(l->dy[b * l->rows + r], l->x[b * l->cols + c], dw);
                s += ((dw > 0.0f) - (dw < 0.0f)) * l->T[r * l->cols + c];
            }
            score[r * l->gpr + g] = s;
        }
}

static void check_close(const float *got, const float *want, int64_t n, const char *what,
                        const layer *l, const char *fam, int threads)
{
    for (int64_t i = 0; i < n; i++)
        ck_assert_msg(fabs((double)got[i] - want[i]) <= tol(want[i]),
                      "%s %s rows %lld cols %lld gs %lld B %lld threads %d: [%lld] = %.9g, "
                      "reference %.9g",
                      fam, what, (long long)l->rows, (long long)l->cols, (long long)l->gs,
                      (long long)l->B, threads, (long long)i, got[i], want[i]);
}

/* Every family on one shape, with 1, 2 and 3 threads. */
static void check_shape(int64_t rows, int64_t cols, int64_t gs, int64_t B)
{
    layer l = layer_make(rows, cols, gs, B, (unsigned)(rows * 7919 + cols * 31 + gs * 7 + B));
    ts_weights *w = ts_weights_build(l.packed, rows, cols, gs);
    ck_assert_ptr_nonnull(w);
    size_t ny = (size_t)(B * rows), nx = (size_t)(B * cols), ns = (size_t)(rows * l.gpr);
    float *y_ref = malloc(ny * sizeof(float)), *dx_ref = malloc(nx * sizeof(float));
    int64_t *s_ref = malloc(ns * sizeof(int64_t));
    float *y = malloc(ny * sizeof(float)), *dx = malloc(nx * sizeof(float));
    float *y1 = malloc(ny * sizeof(float)), *dx1 = malloc(nx * sizeof(float));
    int16_t *s = malloc(ns * sizeof(int16_t));
    ref_forward(&l, y_ref);
    ref_backward(&l, dx_ref);
    ref_score(&l, s_ref);
    for (size_t f = 0; f < sizeof families / sizeof *families; f++) {
        if (ts_kernel_use(families[f]) != 0)
            continue;   /* the CPU lacks it */
        for (int threads = 1; threads <= 3; threads++) {
            ts_pool *pool = threads == 1 ? NULL : ts_pool_new(threads);
            memset(y, 0xff, ny * sizeof(float));   /* NaN: every element must be written */
            memset(dx, 0xff, nx * sizeof(float));
            memset(s, 0x7f, ns * sizeof(int16_t));
            ts_kernel_forward(w, l.S, l.x, B, y, pool);
            /* again: the second pass walks the rows the other way (ts_weights_pass) */
            memcpy(y1, y, ny * sizeof(float));
            ts_kernel_forward(w, l.S, l.x, B, y, pool);
            ck_assert_msg(memcmp(y, y1, ny * sizeof(float)) == 0,
                          "%s forward differs between two passes (%d threads)", families[f], threads);
            ts_kernel_backward_x(w, l.S, l.dy, B, dx, pool);
            ts_kernel_score(w, l.dy, l.x, B, s, pool);
            check_close(y, y_ref, (int64_t)ny, "forward", &l, families[f], threads);
            check_close(dx, dx_ref, (int64_t)nx, "backward_x", &l, families[f], threads);
            for (size_t i = 0; i < ns; i++)
                ck_assert_msg(s[i] == ts_wrap16(s_ref[i]), "%s score rows %lld cols %lld gs %lld B %lld: "
                              "[%zu] = %lld, reference %lld", families[f], (long long)rows,
                              (long long)cols, (long long)gs, (long long)B, i, (long long)s[i],
                              (long long)s_ref[i]);
            if (threads == 1) {
                memcpy(y1, y, ny * sizeof(float));
                memcpy(dx1, dx, nx * sizeof(float));
                /* a row's output does not depend on the batch it came in (dynamic batching) */
                for (int64_t b = 0; b < B; b++) {
                    ts_kernel_forward(w, l.S, l.x + b * cols, 1, y, NULL);
                    ck_assert_msg(memcmp(y, y1 + b * rows, (size_t)rows * sizeof(float)) == 0,
                                  "%s forward of row %lld alone differs from in batch %lld",
                                  families[f], (long long)b, (long long)B);
                }
            } else {
                ck_assert_msg(memcmp(y, y1, ny * sizeof(float)) == 0,
                              "%s forward differs with %d threads", families[f], threads);
                ck_assert_msg(memcmp(dx, dx1, nx * sizeof(float)) == 0,
                              "%s backward_x differs with %d threads", families[f], threads);
            }
            ts_pool_free(pool);
        }
    }
    ck_assert_int_eq(ts_kernel_use("portable"), 0);
    free(y_ref), free(dx_ref), free(s_ref), free(y), free(dx), free(y1), free(dx1), free(s);
    ts_weights_free(w);
    layer_free(&l);
}

static const int64_t test_cols[] = {1, 7, 63, 65, 130, 1000};
static const int64_t test_gs[] = {8, 16, 32, 64};

/* _i: index into test_cols × test_gs, so each shape is its own test (and time budget). */
START_TEST(test_families_cols_gs)
{
    int64_t cols = test_cols[_i / 4], gs = test_gs[_i % 4];
    check_shape(70, cols, gs, 1);   /* 70 rows: 4 blocks and 6 rows; ≥ 64 for AVX-512 backward_x */
    check_shape(70, cols, gs, 3);
    check_shape(70, cols, gs, 9);
    check_shape(70, cols, gs, 17);
}
END_TEST

START_TEST(test_families_rows)
{
    /* rows around the 16-row block and the 4-block table unit; gs not a multiple of 3, 8, or
     * wider than the row */
    static const int64_t rows[] = {1, 15, 16, 17, 64, 65, 130};
    for (size_t i = 0; i < sizeof rows / sizeof *rows; i++) {
        check_shape(rows[i], 70, 32, 1);
        check_shape(rows[i], 70, 32, 17);
    }
    check_shape(20, 100, 5, 2);
    check_shape(20, 100, 5, 9);
    check_shape(9, 50, 128, 1);
    check_shape(9, 50, 128, 33);
    check_shape(3, 200, 200, 8);
    check_shape(70, 1000, 1000, 3);   /* 334 triples a group: backward_x without tiles */
}
END_TEST

/* score alone, every family and 1-3 threads, against ref_score on a layer whose inputs hold
 * the values where a sign is easy to get wrong: +0 and -0 products, products that round to
 * ±0 or to subnormals, dW exactly 1.0 (its own class for vfixupimmps), ±inf and NaN. */
static void check_score_special(int64_t rows, int64_t cols, int64_t gs, int64_t B)
{
    layer l = layer_make(rows, cols, gs, B, (unsigned)(rows * 31 + cols * 7 + gs + B));
    static const float xs[] = {-0.0f, 1e-30f, -1e-30f, 1e-40f, INFINITY, -INFINITY, NAN, 1.0f};
    static const float dys[] = {-0.0f, 1e-20f, -1e-20f, 1e-38f, INFINITY, 1.0f};
    for (int64_t i = 0; i < B * cols; i += 7)
        l.x[i] = xs[(i / 7) % (sizeof xs / sizeof *xs)];
    for (int64_t i = 0; i < B * rows; i += 11)
        l.dy[i] = dys[(i / 11) % (sizeof dys / sizeof *dys)];
    /* row 1: dW = dy[0][1] · x[0][c] alone, 1.0 where x is 1 */
    for (int64_t b = 0; b < B && rows > 1; b++)
        l.dy[b * rows + 1] = b == 0 ? 1.0f : 0.0f;
    for (int64_t c = 0; c < cols; c += 3)
        l.x[c] = 1.0f;
    ts_weights *w = ts_weights_build(l.packed, rows, cols, gs);
    ck_assert_ptr_nonnull(w);
    size_t ns = (size_t)(rows * l.gpr);
    int64_t *s_ref = malloc(ns * sizeof(int64_t));
    int16_t *s = malloc(ns * sizeof(int16_t));
    ref_score(&l, s_ref);
    for (size_t f = 0; f < sizeof families / sizeof *families; f++) {
        if (ts_kernel_use(families[f]) != 0)
            continue;
        for (int threads = 1; threads <= 3; threads++) {
            ts_pool *pool = threads == 1 ? NULL : ts_pool_new(threads);
            memset(s, 0x7f, ns * sizeof(int16_t));
            ts_kernel_score(w, l.dy, l.x, B, s, pool);
            for (size_t i = 0; i < ns; i++)
                ck_assert_msg(s[i] == ts_wrap16(s_ref[i]), "%s score (special values) rows %lld cols %lld "
                              "gs %lld B %lld threads %d: [%zu] = %lld, reference %lld",
                              families[f], (long long)rows, (long long)cols, (long long)gs,
                              (long long)B, threads, i, (long long)s[i], (long long)s_ref[i]);
            ts_pool_free(pool);
        }
    }
    ck_assert_int_eq(ts_kernel_use("portable"), 0);
    free(s_ref), free(s);
    ts_weights_free(w);
    layer_free(&l);
}

START_TEST(test_score_batches)
{
    /* around the AVX-512 score's 8-row batch chunks, and groups split between x tiles
     * (a tile holds 32768 floats: 3000 columns × 33 rows do not fit) */
    static const int64_t batches[] = {1, 2, 7, 8, 9, 16, 24, 64};
    for (size_t i = 0; i < sizeof batches / sizeof *batches; i++) {
        check_score_special(45, 130, 32, batches[i]);
        check_score_special(70, 101, 16, batches[i]);
    }
    check_score_special(33, 3000, 3000, 33);   /* one group in 4 tiles */
    check_score_special(20, 3000, 2500, 20);   /* 3 tiles, then a group of 500 columns */
    check_score_special(17, 1000, 8, 70);      /* 4 groups a tile, 250 tiles */
}
END_TEST

/* dW must be the chain of fused multiply-adds (ts_kernel_dw), not products rounded first:
 * with dy·x = -(1+2^-11) at b = 0 and (1+2^-12)² = 1+2^-11+2^-24 at b = 1, the fused chain
 * leaves dW = 2^-24 > 0, a multiply then add rounds the product to 1+2^-11 and gives 0. */
START_TEST(test_score_fused)
{
    layer l = layer_make(40, 70, 32, 2, 13);
    int64_t n = l.rows * l.cols;
    for (int64_t i = 0; i < n; i++)
        l.T[i] = 1;
    ts_trits_pack(l.T, (size_t)n, l.packed);
    float a = 1.0f + 0x1p-12f;
    for (int64_t c = 0; c < l.cols; c++)
        l.x[c] = 1.0f, l.x[l.cols + c] = a;
    for (int64_t r = 0; r < l.rows; r++)
        l.dy[r] = -(1.0f + 0x1p-11f), l.dy[l.rows + r] = a;
    ts_weights *w = ts_weights_build(l.packed, l.rows, l.cols, l.gs);
    ck_assert_ptr_nonnull(w);
    for (size_t f = 0; f < sizeof families / sizeof *families; f++) {
        if (ts_kernel_use(families[f]) != 0)
            continue;
        int16_t score[40 * 3];
        ts_kernel_score(w, l.dy, l.x, 2, score, NULL);
        for (int64_t i = 0; i < l.rows * l.gpr; i++)
            ck_assert_msg(score[i] == (i % l.gpr == 2 ? 6 : 32), "%s score[%lld] = %d: dW not fused",
                          families[f], (long long)i, score[i]);
    }
    ts_weights_free(w);
    layer_free(&l);
}
END_TEST

START_TEST(test_empty_batch)
{
    /* B = 0: score is all zeros (every dW is 0), forward and backward_x write nothing */
    layer l = layer_make(70, 65, 16, 1, 9);
    ts_weights *w = ts_weights_build(l.packed, 70, 65, 16);
    ck_assert_ptr_nonnull(w);
    for (size_t f = 0; f < sizeof families / sizeof *families; f++) {
        if (ts_kernel_use(families[f]) != 0)
            continue;
        int16_t score[70 * 5];
        float y = 42.0f, dx = 42.0f;
        memset(score, 0x7f, sizeof score);
        ts_kernel_score(w, l.dy, l.x, 0, score, NULL);
        for (int i = 0; i < 70 * 5; i++)
            ck_assert_int_eq(score[i], 0);
        ts_kernel_forward(w, l.S, l.x, 0, &y, NULL);
        ts_kernel_backward_x(w, l.S, l.dy, 0, &dx, NULL);
        ck_assert(y == 42.0f && dx == 42.0f);
    }
    ts_weights_free(w);
    layer_free(&l);
}
END_TEST

START_TEST(test_layout_roundtrip)
{
    layer l = layer_make(45, 101, 16, 1, 5);
    ts_weights *w = ts_weights_build(l.packed, 45, 101, 16);
    ck_assert_ptr_nonnull(w);
    for (int64_t r = 0; r < 45; r++)
        for (int64_t c = 0; c < 101; c++)
            ck_assert_int_eq(ts_weights_trit(w, r, c), l.T[r * 101 + c]);
    size_t n = ts_trits_packed_size(45 * 101);
    uint8_t *back = malloc(n);
    ts_weights_pack(w, back);
    ck_assert_mem_eq(back, l.packed, n);
    free(back);
    ts_weights_free(w);
    layer_free(&l);
}
END_TEST

START_TEST(test_layout_bytes)
{
    /* 2 bits per weight for gs a multiple of 16: the budget is 0.7 bytes per weight
     * for everything, and this is the biggest part */
    int64_t rows = 256, cols = 1024;
    size_t n = ts_trits_packed_size((size_t)(rows * cols));
    uint8_t *packed = calloc(n, 1);
    ts_weights *w = ts_weights_build(packed, rows, cols, 32);
    ck_assert_ptr_nonnull(w);
    ck_assert_uint_le(ts_weights_bytes(w), (size_t)(rows * cols) / 4 + 256);
    ck_assert_uint_ge(ts_weights_bytes(w), (size_t)(rows * cols) / 4);
    ts_weights_free(w);
    free(packed);
}
END_TEST

START_TEST(test_build_refuses_bad_input)
{
    uint8_t packed[4] = {0, 121, 242, 243};   /* last byte corrupt */
    ck_assert_ptr_null(ts_weights_build(packed, 4, 5, 2));
    packed[3] = 121;
    ts_weights *w = ts_weights_build(packed, 4, 5, 2);
    ck_assert_ptr_nonnull(w);
    ck_assert_int_eq(ts_weights_trit(w, 0, 0), -1);
    ck_assert_int_eq(ts_weights_trit(w, 3, 4), 0);
    ts_weights_free(w);
    ck_assert_ptr_null(ts_weights_build(packed, 0, 5, 2));
    ck_assert_ptr_null(ts_weights_build(packed, 4, 5, 0));
    ck_assert_ptr_null(ts_weights_build(packed, 4, -1, 2));
    ts_weights_free(NULL);
    ck_assert_uint_eq(ts_weights_bytes(NULL), 0);
}
END_TEST

START_TEST(test_family_choice)
{
    ck_assert_int_eq(ts_kernel_use("no-such-family"), -1);
    ck_assert_int_eq(ts_kernel_use(""), -1);
    ck_assert_int_eq(ts_kernel_use("portable"), 0);
    ck_assert_str_eq(ts_kernel_name(), "portable");
    if (ts_kernel_use("avx512") == 0)
        ck_assert_str_eq(ts_kernel_name(), "avx512");
}
END_TEST

START_TEST(test_pool_scratch)
{
    ck_assert_ptr_null(ts_pool_scratch(NULL, 10));
    ts_pool *pool = ts_pool_new(2);
    char *a = ts_pool_scratch(pool, 100);
    ck_assert_ptr_nonnull(a);
    ck_assert_uint_eq((uintptr_t)a % 64, 0);
    memset(a, 1, 100);
    ck_assert_ptr_eq(ts_pool_scratch(pool, 64), a);   /* kept while big enough */
    char *b = ts_pool_scratch(pool, 1 << 20);
    ck_assert_ptr_nonnull(b);
    memset(b, 2, 1 << 20);
    ts_pool_free(pool);
}
END_TEST

/* ts_pool_run_items: every item once, slots in range, over many back-to-back jobs (a worker
 * that wakes late must not run items of a job that is over, nor miss the next one). */
typedef struct {
    int threads;
    int64_t n;
    _Atomic int hits[1000];
    _Atomic int bad_slot;
} items_check;

static void count_item(void *arg, int slot, int64_t item)
{
    items_check *c = arg;
    if (slot < 0 || slot >= c->threads || item < 0 || item >= c->n)
        c->bad_slot = 1;
    else
        c->hits[item]++;
}

START_TEST(test_pool_items)
{
    for (int threads = 1; threads <= 3; threads++) {
        ts_pool *pool = ts_pool_new(threads);
        ck_assert_ptr_nonnull(pool);
        items_check *c = calloc(1, sizeof *c);
        c->threads = threads;
        for (int job = 0; job < 600; job++) {
            c->n = job % 7 == 0 ? 0 : job % 1000;
            for (int64_t i = 0; i < c->n; i++)
                c->hits[i] = 0;
            ts_pool_run_items(pool, c->n, count_item, c);
            for (int64_t i = 0; i < c->n; i++)
                ck_assert_msg(c->hits[i] == 1, "threads %d job %d: item %lld ran %d times",
                              threads, job, (long long)i, c->hits[i]);
            ck_assert_int_eq(c->bad_slot, 0);
        }
        free(c);
        ts_pool_free(pool);
    }
    items_check one = {.threads = 1, .n = 5};
    ts_pool_run_items(NULL, 5, count_item, &one);   /* no pool: in order, on this thread */
    for (int i = 0; i < 5; i++)
        ck_assert_int_eq(one.hits[i], 1);
}
END_TEST

/* ts_kranges_next hands every unit out once, whichever threads ask and from which end. */
typedef struct {
    ts_krange ranges[3];
    int n, reverse;
    int hits[1000];
    int64_t order[3][1000];   /* the units each slot got, in order */
    int got[3];
} ranges_check;

static void take_units(void *arg, int slot, int64_t item)
{
    ranges_check *c = arg;
    (void)item;
    for (int64_t u; (u = ts_kranges_next(c->ranges, c->n, slot, c->reverse)) >= 0;) {
        __atomic_fetch_add(&c->hits[u], 1, __ATOMIC_RELAXED);
        c->order[slot][c->got[slot]++] = u;
    }
}

START_TEST(test_kranges)
{
    for (int threads = 1; threads <= 3; threads++) {
        ts_pool *pool = ts_pool_new(threads);
        ranges_check *c = calloc(1, sizeof *c);
        for (int job = 0; job < 200; job++) {
            int64_t units = job % 13 == 0 ? 0 : job * 5 % 1000;
            memset(c->hits, 0, sizeof c->hits);
            memset(c->got, 0, sizeof c->got);
            c->n = threads;
            c->reverse = job & 1;
            ts_kranges_init(c->ranges, c->n, units);
            ts_pool_run_items(pool, threads, take_units, c);
            for (int64_t u = 0; u < units; u++)
                ck_assert_msg(c->hits[u] == 1, "threads %d job %d: unit %lld taken %d times",
                              threads, job, (long long)u, c->hits[u]);
        }
        free(c);
        ts_pool_free(pool);
    }
    /* one thread alone: its home range front to back (back to front when reversed), then
     * the others' from their far ends */
    ranges_check *c = calloc(1, sizeof *c);
    c->n = 2;
    c->reverse = 1;
    ts_kranges_init(c->ranges, 2, 6);   /* ranges [0,3) and [3,6) */
    take_units(c, 1, 0);
    static const int64_t want[6] = {5, 4, 3, 0, 1, 2};
    ck_assert_int_eq(c->got[1], 6);
    for (int i = 0; i < 6; i++)
        ck_assert_int_eq(c->order[1][i], want[i]);
    free(c);
}
END_TEST

static Suite *kernel_suite(void)
{
    Suite *s = suite_create("kernel");
    TCase *tc = tcase_create("families");
    tcase_set_timeout(tc, 120);
    tcase_add_loop_test(tc, test_families_cols_gs, 0, 24);
    tcase_add_test(tc, test_families_rows);
    tcase_add_test(tc, test_empty_batch);
    tcase_add_test(tc, test_score_fused);
    tcase_add_test(tc, test_score_batches);
    suite_add_tcase(s, tc);
    tc = tcase_create("layout");
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, test_layout_roundtrip);
    tcase_add_test(tc, test_layout_bytes);
    tcase_add_test(tc, test_build_refuses_bad_input);
    tcase_add_test(tc, test_family_choice);
    tcase_add_test(tc, test_pool_scratch);
    tcase_add_test(tc, test_pool_items);
    tcase_add_test(tc, test_kranges);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    /* Split even the small test shapes between the threads (see ts_kslots). */
    setenv("TSCALE_KERNEL_SLOT_WORK", "64", 1);
    return run_suite(kernel_suite());
}
