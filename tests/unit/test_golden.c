/* test_golden.c — the core against the PyTorch reference: for every case of
 * tests/golden/ (see gen.py), forward before, every feedback step's loss, corr_accum and
 * step (exact), and forward after the sequence. Each case runs without a pool and with a
 * 3-thread pool. Prints the largest forward error of each case. */
#include <check.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/feedback.h"
#include "core/forward.h"
#include "core/model.h"
#include "core/pool.h"
#include "golden.h"
#include "testutil.h"

static char **g_cases;   /* case names, read in main before the tests are registered */
static int g_n_cases;

/* SPEC §1: |a − b| ≤ 1e-4 + 1e-4·|b| */
static double tol(double b) { return 1e-4 + 1e-4 * fabs(b); }

typedef struct {
    double max_err, max_ratio;   /* largest |a-b|, largest |a-b| / tolerance */
} errs;

static void check_value(double got, double want, errs *e, const char *what, const char *name,
                        int64_t b, int64_t k)
{
    double d = fabs(got - want);
    if (d > e->max_err)
        e->max_err = d;
    if (d / tol(want) > e->max_ratio)
        e->max_ratio = d / tol(want);
    ck_assert_msg(d <= tol(want), "%s: %s [%lld][%lld] is %.9g, reference %.9g", name, what,
                  (long long)b, (long long)k, got, want);
}

static void check_forwards(const ts_model *m, const json_t *list, ts_pool *pool, errs *e,
                           const char *name, const char *what)
{
    for (size_t i = 0; i < json_array_size(list); i++) {
        const json_t *f = json_array_get(list, i);
        int64_t B, n, Bo, no;
        float *x = golden_matrix(json_object_get(f, "input"), &B, &n);
        float *want = golden_matrix(json_object_get(f, "output"), &Bo, &no);
        ck_assert_int_eq(n, m->in_dim);
        ck_assert_int_eq(no, m->out_dim);
        float *y = malloc((size_t)(B * no) * sizeof *y);
        ck_assert_int_eq(ts_model_forward(m, x, B, y, pool), 0);
        for (int64_t b = 0; b < B; b++)
            for (int64_t k = 0; k < no; k++)
                check_value(y[b * no + k], want[b * no + k], e, what, name, b, k);
        free(x);
        free(want);
        free(y);
    }
}

/* One feedback step of the case, then corr_accum and step of every layer, exactly. */
static void check_step(ts_model *m, const json_t *s, ts_pool *pool, errs *le, const char *name,
                       size_t idx)
{
    int64_t B, n, Bt = 0, nt = 0;
    float *x = golden_matrix(json_object_get(s, "input"), &B, &n);
    float *t = NULL;
    int64_t *labels = NULL;
    const char *kind = json_string_value(json_object_get(s, "kind"));
    ts_feedback_input in = {0};
    if (strcmp(kind, "label") == 0) {
        in.kind = TS_LOSS_XENT;
        labels = malloc((size_t)B * sizeof *labels);
        golden_ints64(json_object_get(s, "label"), labels);
        in.labels = labels;
    } else {
        in.kind = strcmp(kind, "target") == 0 ? TS_LOSS_MSE : TS_LOSS_GRAD;
        t = golden_matrix(json_object_get(s, kind), &Bt, &nt);
        ck_assert_int_eq(Bt, B);
        in.target = t;
    }
    char err[256];
    double loss = 0;
    ck_assert_msg(ts_model_feedback(m, x, B, &in, &loss, pool, err, sizeof err) == 0, "%s", err);
    const json_t *want_loss = json_object_get(s, "loss");
    if (json_is_null(want_loss))
        ck_assert(isnan(loss));
    else
        check_value(loss, json_number_value(want_loss), le, "loss", name, (int64_t)idx, 0);

    const json_t *after = json_object_get(s, "after");
    for (int i = 0; i < m->n_layers; i++) {
        const json_t *a = json_array_get(after, (size_t)i);
        const ts_layer *l = &m->layers[i];
        if (json_is_null(a))
            continue;
        ck_assert_msg(l->step == golden_int(a, "step"), "%s step %zu: layer %d step %lld, "
                      "reference %lld", name, idx, i, (long long)l->step,
                      (long long)golden_int(a, "step"));
        const json_t *ca = json_object_get(a, "corr_accum");
        ck_assert_int_eq((int64_t)json_array_size(ca), l->n_groups);
        for (int64_t g = 0; g < l->n_groups; g++) {
            int64_t want = (int64_t)json_integer_value(json_array_get(ca, (size_t)g));
            ck_assert_msg(l->corr_accum[g] == want, "%s step %zu: layer %d corr_accum[%lld] = "
                          "%lld, reference %lld", name, idx, i, (long long)g,
                          (long long)l->corr_accum[g], (long long)want);
        }
    }
    free(x);
    free(t);
    free(labels);
}

/* Loop index i: case i/2, without a pool (even) or with 3 threads (odd). */
START_TEST(test_golden_case)
{
    const char *name = g_cases[_i / 2];
    int threads = _i % 2 ? 3 : 1;
    json_t *c = golden_load(name);
    ck_assert_msg(c != NULL, "cannot read golden case %s", name);
    char err[256];
    ts_model *m = golden_model(c, err, sizeof err);
    ck_assert_msg(m != NULL, "%s: %s", name, err);
    ts_pool *pool = threads > 1 ? ts_pool_new(threads) : NULL;

    errs fe = {0, 0}, le = {0, 0};
    check_forwards(m, json_object_get(c, "forward"), pool, &fe, name, "forward");
    const json_t *steps = json_object_get(c, "feedback");
    ck_assert_uint_ge(json_array_size(steps), 5);
    for (size_t k = 0; k < json_array_size(steps); k++)
        check_step(m, json_array_get(steps, k), pool, &le, name, k);
    check_forwards(m, json_object_get(c, "final_forward"), pool, &fe, name, "final forward");

    printf("golden %-22s threads %d: %zu steps exact; largest forward error %.3g (%.3f of "
           "tolerance), loss %.3g\n", name, threads, json_array_size(steps), fe.max_err,
           fe.max_ratio, le.max_err);
    ts_pool_free(pool);
    ts_model_free(m);
    json_decref(c);
}
END_TEST

/* The golden list itself: a missing or short list would make the test above vacuous. */
START_TEST(test_golden_list)
{
    ck_assert_int_ge(g_n_cases, 9);
}
END_TEST

int main(void)
{
    g_cases = golden_cases(&g_n_cases);
    Suite *s = suite_create("golden");
    TCase *tc = tcase_create("reference");
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, test_golden_list);
    tcase_add_loop_test(tc, test_golden_case, 0, 2 * g_n_cases);
    suite_add_tcase(s, tc);
    int rc = run_suite(s);
    golden_cases_free(g_cases, g_n_cases);
    return rc;
}
