/* test_core.c — unit tests of the core: packing, specs, model state, forward, feedback, pool. */
#include <check.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/feedback.h"
#include "core/forward.h"
#include "core/model.h"
#include "core/pool.h"
#include "core/trits.h"

/* ── trits ── */

START_TEST(test_pack_roundtrip_small)
{
    int8_t trits[64], back[64];
    uint8_t packed[13];
    srand(1);
    for (size_t n = 0; n <= 64; n++) {
        for (size_t k = 0; k < n; k++)
            trits[k] = (int8_t)(rand() % 3 - 1);
        ts_trits_pack(trits, n, packed);
        ck_assert_uint_eq(ts_trits_packed_size(n), (n + 4) / 5);
        ck_assert_int_eq(ts_trits_pad(n), (int)((5 - n % 5) % 5));
        for (size_t k = 0; k < ts_trits_packed_size(n); k++)
            ck_assert_uint_lt(packed[k], 243);
        ck_assert_int_eq(ts_trits_unpack(packed, n, back), 0);
        ck_assert_mem_eq(trits, back, n);
    }
}
END_TEST

START_TEST(test_pack_known_bytes)
{
    /* digits d = t+1: (-1,0,1,1,0) → 0 + 1·3 + 2·9 + 2·27 + 1·81 = 156; pad digits are 0 */
    int8_t t[7] = {-1, 0, 1, 1, 0, 1, 1};
    uint8_t p[2];
    ts_trits_pack(t, 7, p);
    ck_assert_uint_eq(p[0], 156);
    ck_assert_uint_eq(p[1], 2 + 2 * 3);
    ck_assert_int_eq(ts_trits_pad(7), 3);
}
END_TEST

START_TEST(test_unpack_refuses_243)
{
    uint8_t p[2] = {121, 243};
    int8_t out[10];
    ck_assert_int_eq(ts_trits_unpack(p, 10, out), -1);
    p[1] = 242;
    ck_assert_int_eq(ts_trits_unpack(p, 10, out), 0);
    ck_assert_int_eq(out[5], 1);   /* 242 = 2·(1+3+9+27+81): all +1 */
}
END_TEST

/* ── model ── */

START_TEST(test_demo_forward_feedback)
{
    char err[256];
    ts_model *m = ts_model_demo(err, sizeof err);
    ck_assert_msg(m != NULL, "%s", err);
    ck_assert_int_eq(m->in_dim, 16);
    ck_assert_int_eq(m->out_dim, 4);
    float x[2 * 16], y[2 * 4], t[2 * 4] = {0};
    for (int k = 0; k < 32; k++)
        x[k] = (float)sin(k * 0.7);
    ck_assert_int_eq(ts_model_forward(m, x, 2, y, NULL), 0);
    for (int k = 0; k < 8; k++)
        ck_assert(isfinite(y[k]));
    ts_feedback_input in = {.kind = TS_LOSS_MSE, .target = t};
    double loss = 0;
    ck_assert_int_eq(ts_model_feedback(m, x, 2, &in, &loss, NULL, err, sizeof err), 0);
    ck_assert(loss > 0);
    ck_assert_int_eq(ts_model_step(m), 1);
    ts_model_free(m);
}
END_TEST

static Suite *core_suite(void)
{
    Suite *s = suite_create("core");
    TCase *tc = tcase_create("trits");
    tcase_add_test(tc, test_pack_roundtrip_small);
    tcase_add_test(tc, test_pack_known_bytes);
    tcase_add_test(tc, test_unpack_refuses_243);
    suite_add_tcase(s, tc);
    tc = tcase_create("model");
    tcase_add_test(tc, test_demo_forward_feedback);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    SRunner *sr = srunner_create(core_suite());
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
