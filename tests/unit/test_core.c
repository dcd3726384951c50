/* test_core.c — unit tests of the core: packing, specs, model state, init, forward,
 * feedback and the thread pool. The golden cases (tests/golden/) supply reference packing. */
#include <check.h>
#include <math.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/feedback.h"
#include "core/forward.h"
#include "core/kernel.h"
#include "core/model.h"
#include "core/pool.h"
#include "core/trits.h"
#include "golden.h"
#include "testutil.h"

/* A small deterministic generator for test data. */
static uint64_t lcg(uint64_t *s)
{
    *s = *s * 6364136223846793005ull + 1442695040888963407ull;
    return *s >> 33;
}

static void fill_floats(float *x, size_t n, uint64_t seed)
{
    for (size_t k = 0; k < n; k++)
        x[k] = (float)((double)lcg(&seed) / 2147483648.0 * 4.0 - 2.0);
}

/* ── trits ── */

START_TEST(test_pack_roundtrip_small)
{
    int8_t trits[64], back[64];
    uint8_t packed[14];
    uint64_t seed = 1;
    for (size_t n = 0; n <= 64; n++) {
        for (size_t k = 0; k < n; k++)
            trits[k] = (int8_t)(lcg(&seed) % 3) - 1;
        memset(packed, 0xee, sizeof packed);
        ts_trits_pack(trits, n, packed);
        ck_assert_uint_eq(ts_trits_packed_size(n), (n + 4) / 5);
        ck_assert_int_eq(ts_trits_pad(n), (int)((5 - n % 5) % 5));
        for (size_t k = 0; k < ts_trits_packed_size(n); k++)
            ck_assert_uint_lt(packed[k], 243);
        ck_assert_uint_eq(packed[ts_trits_packed_size(n)], 0xee);   /* wrote no further */
        ck_assert_int_eq(ts_trits_unpack(packed, n, back), 0);
        ck_assert_mem_eq(trits, back, n);
    }
}
END_TEST

START_TEST(test_pack_roundtrip_large)
{
    size_t n = 1000003;
    int8_t *t = malloc(n), *back = malloc(n);
    uint8_t *p = malloc(ts_trits_packed_size(n));
    uint64_t seed = 7;
    for (size_t k = 0; k < n; k++)
        t[k] = (int8_t)(lcg(&seed) % 3) - 1;
    ts_trits_pack(t, n, p);
    ck_assert_int_eq(ts_trits_unpack(p, n, back), 0);
    ck_assert_int_eq(memcmp(t, back, n), 0);
    free(t);
    free(back);
    free(p);
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

/* Every ternary layer of every golden case: our packing of the reference's trits is the
 * reference's T_packed, byte for byte, and unpacks back to them. */
START_TEST(test_pack_matches_reference)
{
    int n_cases, layers_seen = 0;
    char **cases = golden_cases(&n_cases);
    ck_assert_msg(cases != NULL, "tests/golden/cases.txt is missing (run from the repo root)");
    for (int i = 0; i < n_cases; i++) {
        json_t *c = golden_load(cases[i]);
        ck_assert(c != NULL);
        const json_t *state = json_object_get(c, "state");
        for (size_t k = 0; k < json_array_size(state); k++) {
            const json_t *s = json_array_get(state, k);
            if (json_is_null(s))
                continue;
            const json_t *T = json_object_get(s, "T"), *P = json_object_get(s, "T_packed");
            size_t n = json_array_size(T), nb = json_array_size(P);
            ck_assert_uint_eq(ts_trits_packed_size(n), nb);
            ck_assert_int_eq(ts_trits_pad(n), golden_int(s, "T_pad"));
            int8_t *t = malloc(n), *back = malloc(n);
            uint8_t *p = malloc(nb);
            for (size_t j = 0; j < n; j++)
                t[j] = (int8_t)json_integer_value(json_array_get(T, j));
            ts_trits_pack(t, n, p);
            for (size_t j = 0; j < nb; j++)
                ck_assert_int_eq(p[j], json_integer_value(json_array_get(P, j)));
            ck_assert_int_eq(ts_trits_unpack(p, n, back), 0);
            ck_assert_int_eq(memcmp(t, back, n), 0);
            free(t);
            free(back);
            free(p);
            layers_seen++;
        }
        json_decref(c);
    }
    ck_assert_int_ge(layers_seen, 9);
    golden_cases_free(cases, n_cases);
}
END_TEST

START_TEST(test_unpack_refuses_243)
{
    uint8_t p[2] = {121, 243};
    int8_t out[10];
    ck_assert_int_eq(ts_trits_unpack(p, 10, out), -1);
    p[1] = 255;
    ck_assert_int_eq(ts_trits_unpack(p, 10, out), -1);
    p[1] = 242;
    ck_assert_int_eq(ts_trits_unpack(p, 10, out), 0);
    ck_assert_int_eq(out[5], 1);   /* 242 = 2·(1+3+9+27+81): all +1 */
    ck_assert_int_eq(out[0], 0);   /* 121: all 0 */
    ts_weights *w = ts_weights_build(p, 2, 5, 5);
    ck_assert_ptr_nonnull(w);
    ck_assert_int_eq(ts_weights_trit(w, 1, 4), 1);
    ts_weights_free(w);
    p[1] = 243;
    ck_assert_ptr_null(ts_weights_build(p, 2, 5, 5));
}
END_TEST

/* ── specs ── */

START_TEST(test_specs_parse_ok)
{
    ts_layer_spec s[8];
    int n;
    char err[256];
    ck_assert_int_eq(ts_specs_parse("rmsnorm:64,linear:64x128/gs16+bias, relu ,linear:128x10",
                                    s, 8, &n, err, sizeof err), 0);
    ck_assert_int_eq(n, 4);
    ck_assert_int_eq(s[0].kind, TS_LAYER_RMSNORM);
    ck_assert_int_eq(s[0].in_dim, 64);
    ck_assert_int_eq(s[0].out_dim, 64);
    ck_assert_int_eq(s[0].group_size, 32);
    ck_assert_int_eq(s[1].kind, TS_LAYER_LINEAR);
    ck_assert_int_eq(s[1].in_dim, 64);
    ck_assert_int_eq(s[1].out_dim, 128);
    ck_assert_int_eq(s[1].group_size, 16);
    ck_assert_int_eq(s[1].has_bias, 1);
    ck_assert_int_eq(s[2].kind, TS_LAYER_RELU);
    ck_assert_int_eq(s[2].in_dim, 128);
    ck_assert_int_eq(s[2].out_dim, 128);
    ck_assert_int_eq(s[3].has_bias, 0);
    ck_assert_int_eq(ts_specs_parse("linear:3x4+bias/gs2,silu,gelu", s, 8, &n, err, sizeof err), 0);
    ck_assert_int_eq(n, 3);
    ck_assert_int_eq(s[0].group_size, 2);
    ck_assert_int_eq(s[0].has_bias, 1);
    ck_assert_int_eq(s[2].kind, TS_LAYER_GELU);
    ck_assert_int_eq(s[2].in_dim, 4);
    /* activations first take the first ternary layer's in_dim (valid PyTorch) */
    ck_assert_int_eq(ts_specs_parse("relu,gelu,linear:5x3,silu", s, 8, &n, err, sizeof err), 0);
    ck_assert_int_eq(n, 4);
    for (int i = 0; i < 2; i++) {
        ck_assert_int_eq(s[i].in_dim, 5);
        ck_assert_int_eq(s[i].out_dim, 5);
    }
    ck_assert_int_eq(s[3].in_dim, 3);
    ck_assert_int_eq(s[3].out_dim, 3);
}
END_TEST

/* ts_specs_chain fills activation dims whatever they held; a model of only activations
 * has no dims and is refused, also by ts_specs_check. */
START_TEST(test_specs_chain)
{
    char err[256];
    ts_layer_spec s[3] = {
        {.kind = TS_LAYER_SILU, .in_dim = 99, .out_dim = 7},
        {.kind = TS_LAYER_RMSNORM, .in_dim = 6, .out_dim = 6, .group_size = 4},
        {.kind = TS_LAYER_RELU},
    };
    ck_assert_int_eq(ts_specs_chain(s, 3, err, sizeof err), 0);
    ck_assert_int_eq(s[0].in_dim, 6);
    ck_assert_int_eq(s[0].out_dim, 6);
    ck_assert_int_eq(s[2].in_dim, 6);
    ts_layer_spec acts[2] = {{.kind = TS_LAYER_RELU, .in_dim = 4, .out_dim = 4},
                             {.kind = TS_LAYER_GELU, .in_dim = 4, .out_dim = 4}};
    ck_assert_int_eq(ts_specs_check(acts, 2, err, sizeof err), -1);
    ck_assert_ptr_nonnull(strstr(err, "ternary_linear or ternary_rmsnorm"));
    err[0] = '\0';
    ck_assert_int_eq(ts_specs_chain(acts, 2, err, sizeof err), -1);
    ck_assert_ptr_nonnull(strstr(err, "activations alone"));
    ck_assert_int_eq(ts_specs_chain(acts, 0, err, sizeof err), -1);
    ck_assert_ptr_null(ts_model_alloc(acts, 2, err, sizeof err));
}
END_TEST

/* Each bad text is refused with a message containing the given words. */
START_TEST(test_specs_parse_errors)
{
    static const struct { const char *text, *says; } bad[] = {
        {"", "item 1"},
        {"linear:4x4,,relu", "item 2"},
        {"linear:4x4,", "item 2"},
        {"conv:3x3", "unknown layer type"},
        {"relu,gelu", "activations alone"},
        {"relu", "ternary_linear or ternary_rmsnorm"},
        {"linear:4", "INxOUT"},
        {"linear", "':INxOUT'"},
        {"linear:0x4", "positive"},
        {"linear:4x-1", "INxOUT"},
        {"linear:4x4/gs0", "group size"},
        {"linear:4x4/gs", "group size"},
        {"linear:4x4/gs8/gs8", "at most once"},
        {"linear:4x4+bias+bias", "at most once"},
        {"rmsnorm:4+bias", "item 1"},
        {"relu:4", "item 1"},
        {"linear:4x4,linear:5x2", "does not match"},
        {"linear:99999999999999999999x2", "positive dimension"},
        {"linear:4x2097152", "out of range"},
        {"linear:4x4/gs100000", "group_size"},
        {"linear:4x4 junk", "item 1"},
        {"linear:4x4,relu,relu,relu,relu,relu,relu,relu,relu", "more than 8"},
    };
    ts_layer_spec s[8];
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        char err[256] = "";
        int n = -1;
        ck_assert_msg(ts_specs_parse(bad[i].text, s, 8, &n, err, sizeof err) == -1,
                      "'%s' was accepted", bad[i].text);
        ck_assert_msg(strstr(err, bad[i].says) != NULL, "'%s': message '%s' lacks '%s'",
                      bad[i].text, err, bad[i].says);
    }
}
END_TEST

START_TEST(test_specs_check_errors)
{
    char err[256];
    ts_layer_spec s[2] = {
        {.kind = TS_LAYER_LINEAR, .in_dim = 8, .out_dim = 4, .group_size = 8},
        {.kind = TS_LAYER_RMSNORM, .in_dim = 4, .out_dim = 4, .group_size = 4},
    };
    ck_assert_int_eq(ts_specs_check(s, 2, err, sizeof err), 0);
    ck_assert_int_eq(ts_specs_check(s, 0, err, sizeof err), -1);
    ck_assert_int_eq(ts_specs_check(s, TS_MAX_LAYERS + 1, err, sizeof err), -1);
    s[1].out_dim = 5;
    ck_assert_int_eq(ts_specs_check(s, 2, err, sizeof err), -1);
    ck_assert_ptr_nonnull(strstr(err, "must be equal"));
    s[1].out_dim = 4;
    s[1].has_bias = 1;
    ck_assert_int_eq(ts_specs_check(s, 2, err, sizeof err), -1);
    ck_assert_ptr_nonnull(strstr(err, "bias"));
    s[1].has_bias = 0;
    s[0].in_dim = TS_MAX_DIM;
    s[0].out_dim = TS_MAX_DIM;
    s[1].in_dim = s[1].out_dim = TS_MAX_DIM;
    ck_assert_int_eq(ts_specs_check(s, 2, err, sizeof err), -1);   /* 2^40 trits */
    ck_assert_ptr_nonnull(strstr(err, "exceed"));
    s[0].kind = (ts_layer_kind)99;
    ck_assert_int_eq(ts_specs_check(s, 1, err, sizeof err), -1);
    ck_assert_ptr_nonnull(strstr(err, "unknown"));
    ck_assert_ptr_null(ts_model_alloc(s, 1, err, sizeof err));
}
END_TEST

START_TEST(test_kind_names)
{
    for (int k = TS_LAYER_LINEAR; k <= TS_LAYER_GELU; k++) {
        ts_layer_kind back;
        ck_assert_int_eq(ts_layer_kind_parse(ts_layer_kind_name((ts_layer_kind)k), &back), 0);
        ck_assert_int_eq(back, k);
    }
    ck_assert_str_eq(ts_layer_kind_name(TS_LAYER_LINEAR), "ternary_linear");
    ck_assert_str_eq(ts_layer_kind_name(TS_LAYER_RMSNORM), "ternary_rmsnorm");
    ts_layer_kind k;
    ck_assert_int_eq(ts_layer_kind_parse("linear", &k), -1);
    ck_assert_int_eq(ts_layer_kind_parse("", &k), -1);
}
END_TEST

/* ── model ── */

START_TEST(test_alloc_zero_state)
{
    ts_model *m = model_from("linear:7x3/gs4+bias", 1);
    ts_model_free(m);
    ts_layer_spec s = {.kind = TS_LAYER_LINEAR, .in_dim = 7, .out_dim = 3, .group_size = 4,
                       .has_bias = 1};
    char err[256];
    m = ts_model_alloc(&s, 1, err, sizeof err);
    ck_assert_ptr_nonnull(m);
    ck_assert_int_eq(ts_model_prepare(m, err, sizeof err), 0);
    ts_layer *l = &m->layers[0];
    ck_assert_int_eq(l->gpr, 2);
    ck_assert_int_eq(l->n_groups, 6);
    ck_assert_int_eq(l->T_pad, 4);
    for (int64_t r = 0; r < 3; r++)
        for (int64_t c = 0; c < 7; c++)
            ck_assert_int_eq(ts_weights_trit(l->W, r, c), 0);
    for (int g = 0; g < 6; g++)
        ck_assert(ts_layer_scale(l, g / l->gpr, g % l->gpr) == 1.0f);
    ck_assert_int_eq(ts_model_params(m), 21);
    ck_assert_int_eq(ts_model_groups(m), 6);
    ck_assert_uint_gt(ts_model_bytes(m), 21 / 5 + 6 * 13 + 12);
    /* prepare keeps T only in W, and gives the bytes back from it */
    ck_assert_ptr_null(l->T_packed);
    uint8_t zeros[5];
    ts_layer_packed(l, zeros);
    for (int k = 0; k < 4; k++)
        ck_assert_int_eq(zeros[k], 121);   /* five trits 0: digits 1 */
    ck_assert_int_eq(zeros[4], 1);         /* one trit 0, four pad digits 0 */
    ts_model_free(m);
    /* corrupt data, pad digits that are not 0 and a wrong pad are refused by prepare, with
     * the layer named */
    m = ts_model_alloc(&s, 1, err, sizeof err);
    l = &m->layers[0];
    l->T_packed[2] = 250;
    ck_assert_int_eq(ts_model_prepare(m, err, sizeof err), -1);
    ck_assert_ptr_nonnull(strstr(err, "layer 0"));
    ck_assert_ptr_nonnull(strstr(err, "243"));
    l->T_packed[2] = 121;
    l->T_packed[4] = 1 + 3;
    ck_assert_int_eq(ts_model_prepare(m, err, sizeof err), -1);
    ck_assert_ptr_nonnull(strstr(err, "pad digits"));
    l->T_packed[4] = 1;
    l->T_pad = 1;
    ck_assert_int_eq(ts_model_prepare(m, err, sizeof err), -1);
    ck_assert_ptr_nonnull(strstr(err, "_T_pad"));
    ts_model_free(m);
}
END_TEST

/* S = exp2f(E + ((float)corr / (float)(step·gs)) · 4) in float32, exp2f(E) at step 0. */
START_TEST(test_update_scales)
{
    ts_layer_spec s = {.kind = TS_LAYER_LINEAR, .in_dim = 6, .out_dim = 1, .group_size = 3};
    char err[256];
    ts_model *m = ts_model_alloc(&s, 1, err, sizeof err);
    ts_layer *l = &m->layers[0];
    l->E[0] = -3;
    l->E[1] = 0;
    l->corr_accum[0] = 5;
    l->corr_accum[1] = -7;
    ts_layer_update_scales(l, NULL);
    ck_assert(ts_layer_scale(l, 0, 0) == 0.125f);   /* step 0: corr_accum is ignored */
    ck_assert(ts_layer_scale(l, 0, 1) == 1.0f);
    l->step = 7;
    ts_layer_update_scales(l, NULL);
    volatile float d = 21.0f, c0 = 5.0f, c1 = -7.0f;
    ck_assert(ts_layer_scale(l, 0, 0) == exp2f(-3.0f + (c0 / d) * 4.0f));
    ck_assert(ts_layer_scale(l, 0, 1) == exp2f(0.0f + (c1 / d) * 4.0f));
    ck_assert_float_eq_tol(ts_layer_scale(l, 0, 1), powf(2.0f, -4.0f / 3.0f), 1e-6f);
    ts_model_free(m);
}
END_TEST

START_TEST(test_state_save_load)
{
    ts_model *m = model_from("rmsnorm:10/gs4,linear:10x6/gs4+bias,relu,linear:6x3/gs8", 3);
    ck_assert_uint_eq(ts_state_len(m), (1 + 3) + (1 + 18) + (1 + 3));
    size_t len = ts_state_len(m);
    int64_t *saved = malloc(len * sizeof *saved), *after = malloc(len * sizeof *after);
    ts_state_save(m, saved);
    float x[2 * 10], y0[6], y1[6], t[6];
    fill_floats(x, 20, 5);
    fill_floats(t, 6, 6);
    ck_assert_int_eq(ts_model_forward(m, x, 2, y0, NULL), 0);
    char err[256];
    ts_feedback_input in = {.kind = TS_LOSS_MSE, .target = t};
    for (int k = 0; k < 3; k++)
        ck_assert_int_eq(ts_model_feedback(m, x, 2, &in, NULL, NULL, err, sizeof err), 0);
    ck_assert_int_eq(ts_model_step(m), 3);
    ts_state_save(m, after);
    ck_assert_int_eq(after[0], 0);   /* rmsnorm never steps */
    ck_assert_int_eq(after[4], 3);   /* first linear's step */
    ck_assert_int_ne(memcmp(saved, after, len * sizeof *saved), 0);
    ts_state_load(m, saved);
    ck_assert_int_eq(ts_model_step(m), 0);
    ck_assert_int_eq(ts_model_forward(m, x, 2, y1, NULL), 0);
    ck_assert_mem_eq(y0, y1, sizeof y0);   /* S recomputed from the loaded state */
    ts_state_load(m, after);
    ts_state_save(m, saved);
    ck_assert_mem_eq(saved, after, len * sizeof *saved);
    free(saved);
    free(after);
    ts_model_free(m);
}
END_TEST

START_TEST(test_clone)
{
    ts_model *m = model_from("linear:9x5/gs4+bias,gelu,linear:5x2/gs2", 4);
    m->layers[0].bias[1] = -2;
    m->layers[2].step = 5;
    m->layers[2].corr_accum[0] = -3;
    ts_layer_update_scales(&m->layers[2], NULL);
    ts_model *c = ts_model_clone(m);
    ck_assert_ptr_nonnull(c);
    float x[9], ym[2], yc[2];
    fill_floats(x, 9, 8);
    ts_model_forward(m, x, 1, ym, NULL);
    ts_model_forward(c, x, 1, yc, NULL);
    ck_assert_mem_eq(ym, yc, sizeof ym);
    ck_assert_uint_eq(ts_model_bytes(c), ts_model_bytes(m));
    /* independent: a step on the clone leaves the original alone */
    int64_t label = 1;
    char err[256];
    ts_feedback_input in = {.kind = TS_LOSS_XENT, .labels = &label};
    ck_assert_int_eq(ts_model_feedback(c, x, 1, &in, NULL, NULL, err, sizeof err), 0);
    ck_assert_int_eq(c->layers[2].step, 6);
    ck_assert_int_eq(m->layers[2].step, 5);
    ck_assert_int_eq(m->layers[0].step, 0);
    ck_assert_int_eq(c->layers[0].bias[1], -2);
    ck_assert_ptr_ne(c->layers[0].bias, m->layers[0].bias);
    ts_model_free(c);
    ts_model_free(m);
}
END_TEST

static double nonzero_fraction(const ts_layer *l, int *balance)
{
    int64_t nz = 0;
    *balance = 0;
    for (int64_t r = 0; r < l->rows; r++)
        for (int64_t c = 0; c < l->cols; c++) {
            int t = ts_weights_trit(l->W, r, c);
            nz += t != 0;
            *balance += t;
        }
    return (double)nz / (double)(l->rows * l->cols);
}

/* The reference's init: P(|N(0,0.1²)| > 0.05) = P(|z| > 0.5) = 0.617,
 * P(|N(0,0.02²)| > 0.05) = P(|z| > 2.5) = 0.0124, rmsnorm P(|N(0,0.02²)| > 0.01) = 0.617. */
START_TEST(test_init_statistics)
{
    ts_model *m = model_from("rmsnorm:4096/gs64,linear:4096x64/gs32,linear:64x4096+bias", 11);
    int bal;
    double f = nonzero_fraction(&m->layers[0], &bal);
    ck_assert_msg(fabs(f - 0.617) < 0.03, "rmsnorm nonzero fraction %f", f);
    ck_assert_int_lt(abs(bal), 300);
    f = nonzero_fraction(&m->layers[1], &bal);
    ck_assert_msg(fabs(f - 0.617) < 0.01, "linear nonzero fraction %f", f);
    ck_assert_int_lt(abs(bal), 2000);
    f = nonzero_fraction(&m->layers[2], &bal);
    ck_assert_msg(fabs(f - 0.0124) < 0.003, "linear+bias nonzero fraction %f", f);
    ck_assert_int_eq(m->layers[0].E[0], -4);
    ck_assert_int_eq(m->layers[1].E[0], -7);   /* round(log2(0.5/64)) = -7 */
    ck_assert_int_eq(m->layers[1].E[m->layers[1].n_groups - 1], -7);
    ck_assert_int_eq(m->layers[2].E[0], -4);   /* round(log2(0.5/8)) = -4 */
    ck_assert_int_eq(m->layers[2].bias[0], 0);
    ck_assert_int_eq(ts_model_step(m), 0);
    ts_model_free(m);
}
END_TEST

/* E = clamp(round(log2(max(0.5·in^-0.5, 2^-8))), -8, 0), round half to even as Python. */
START_TEST(test_init_E)
{
    static const struct { int in, E; } want[] = {
        {1, -1}, {2, -2}, {3, -2}, {8, -2}, {32, -4}, {100000, -8},
    };
    for (size_t i = 0; i < sizeof want / sizeof want[0]; i++) {
        char text[64];
        snprintf(text, sizeof text, "linear:%dx1", want[i].in);
        ts_model *m = model_from(text, 1);
        ck_assert_msg(m->layers[0].E[0] == want[i].E, "in %d: E %d, want %d", want[i].in,
                      m->layers[0].E[0], want[i].E);
        ts_model_free(m);
    }
}
END_TEST

START_TEST(test_init_seeded)
{
    ts_model *a = model_from("linear:40x30", 99), *b = model_from("linear:40x30", 99),
             *c = model_from("linear:40x30", 100);
    size_t nb = ts_trits_packed_size(40 * 30);
    uint8_t pa[240], pb[240], pc[240];
    ts_layer_packed(&a->layers[0], pa);
    ts_layer_packed(&b->layers[0], pb);
    ts_layer_packed(&c->layers[0], pc);
    ck_assert_mem_eq(pa, pb, nb);
    ck_assert_int_ne(memcmp(pa, pc, nb), 0);
    ts_model_free(a);
    ts_model_free(b);
    ts_model_free(c);
}
END_TEST

START_TEST(test_demo)
{
    char err[256];
    ts_model *m = ts_model_demo(err, sizeof err), *m2 = ts_model_demo(err, sizeof err);
    ck_assert_msg(m != NULL, "%s", err);
    ck_assert_int_eq(m->n_layers, 4);
    ck_assert_int_eq(m->in_dim, 16);
    ck_assert_int_eq(m->out_dim, 4);
    ck_assert_int_eq(ts_model_params(m), 16 + 16 * 64 + 64 * 4);
    ck_assert_int_eq(ts_model_groups(m), 2 + 64 * 2 + 4 * 4);
    uint8_t p1[205], p2[205];
    ts_layer_packed(&m->layers[1], p1);
    ts_layer_packed(&m2->layers[1], p2);
    ck_assert_mem_eq(p1, p2, ts_trits_packed_size(1024));
    float x[16], y[4];
    fill_floats(x, 16, 1);
    ck_assert_int_eq(ts_model_forward(m, x, 1, y, NULL), 0);
    for (int k = 0; k < 4; k++)
        ck_assert(isfinite(y[k]));
    ts_model_free(m);
    ts_model_free(m2);
}
END_TEST

/* ── forward ── */

START_TEST(test_forward_batch_equals_rows)
{
    ts_model *m = model_from("rmsnorm:37/gs8,linear:37x50/gs16+bias,silu,linear:50x20/gs8,"
                             "gelu,linear:20x7/gs64,relu", 21);
    enum { B = 9 };
    float x[B * 37], yb[B * 7], yr[7];
    fill_floats(x, sizeof x / sizeof x[0], 3);
    ck_assert_int_eq(ts_model_forward(m, x, B, yb, NULL), 0);
    for (int b = 0; b < B; b++) {
        ck_assert_int_eq(ts_model_forward(m, x + b * 37, 1, yr, NULL), 0);
        ck_assert_mem_eq(yr, yb + b * 7, sizeof yr);
    }
    ck_assert_int_eq(ts_model_forward(m, x, 0, yb, NULL), 0);
    ck_assert_int_eq(ts_model_forward(m, x, -1, yb, NULL), -1);
    ts_model_free(m);
}
END_TEST

START_TEST(test_activations)
{
    ck_assert_float_eq_tol(ts_gelu(1.0f), 0.8413447f, 1e-6f);
    ck_assert_float_eq_tol(ts_gelu(-2.0f), -0.04550026f, 1e-7f);
    ck_assert_float_eq_tol(ts_silu(1.0f), 0.7310586f, 1e-6f);
    ck_assert(ts_silu(0.0f) == 0.0f);
    ts_model *m = model_from("linear:2x2,relu", 1);
    const ts_layer *relu = &m->layers[1];
    float x[3] = {-1.0f, 0.0f, 2.5f}, y[3];
    ts_layer_forward(relu, x, 1, y, NULL);   /* in_dim 2: only the first two */
    ck_assert(y[0] == 0.0f && y[1] == 0.0f);
    ts_model_free(m);
}
END_TEST

/* ── feedback ── */

START_TEST(test_feedback_failure_leaves_model)
{
    ts_model *m = model_from("linear:6x4/gs4+bias,relu,linear:4x3/gs2", 2);
    m->layers[2].step = 4;
    size_t len = ts_state_len(m);
    int64_t *before = malloc(len * sizeof *before), *after = malloc(len * sizeof *after);
    ts_state_save(m, before);
    float x[2 * 6];
    fill_floats(x, 12, 9);
    char err[256];
    double loss = 123.0;
    int64_t labels[2] = {1, 3};   /* 3 is out of range for out_dim 3 */
    ts_feedback_input in = {.kind = TS_LOSS_XENT, .labels = labels};
    ck_assert_int_eq(ts_model_feedback(m, x, 2, &in, &loss, NULL, err, sizeof err), -1);
    ck_assert_ptr_nonnull(strstr(err, "label 3 of row 1"));
    labels[1] = -1;
    ck_assert_int_eq(ts_model_feedback(m, x, 2, &in, &loss, NULL, err, sizeof err), -1);
    ck_assert_int_eq(ts_model_feedback(m, x, 0, &in, &loss, NULL, err, sizeof err), -1);
    in.labels = NULL;
    ck_assert_int_eq(ts_model_feedback(m, x, 1, &in, &loss, NULL, err, sizeof err), -1);
    ts_feedback_input nt = {.kind = TS_LOSS_MSE};
    ck_assert_int_eq(ts_model_feedback(m, x, 1, &nt, &loss, NULL, err, sizeof err), -1);
    ck_assert_ptr_nonnull(strstr(err, "target"));
    ck_assert(loss == 123.0);
    ts_state_save(m, after);
    ck_assert_mem_eq(before, after, len * sizeof *before);
    /* and a good step does change it */
    labels[1] = 2;
    in.labels = labels;
    ck_assert_int_eq(ts_model_feedback(m, x, 2, &in, &loss, NULL, err, sizeof err), 0);
    ck_assert(loss > 0 && isfinite(loss));
    ck_assert_int_eq(m->layers[0].step, 1);
    ck_assert_int_eq(m->layers[2].step, 5);
    free(before);
    free(after);
    ts_model_free(m);
}
END_TEST

/* A loss past float32's range (outputs ~2^100, MSE ~2^200) is answered in double, finite,
 * instead of inf (which JSON can only say as null). */
START_TEST(test_feedback_loss_past_float32)
{
    ts_model *m = model_from("linear:4x3/gs2", 5);
    ts_layer *l = &m->layers[0];
    for (int64_t g = 0; g < l->n_groups; g++)
        l->E[g] = 100;
    ts_layer_update_scales(l, NULL);
    float x[4] = {1, -1, 1, -1}, y[3], t[3] = {0, 0, 0};
    ts_model_forward(m, x, 1, y, NULL);
    double biggest = 0;
    for (int j = 0; j < 3; j++)
        biggest = fabs(y[j]) > biggest ? fabs(y[j]) : biggest;
    ck_assert(isfinite(biggest) && biggest > 1e20);   /* the outputs are finite, their square is not */
    double loss = 0;
    char err[256];
    ts_feedback_input in = {.kind = TS_LOSS_MSE, .target = t};
    ck_assert_int_eq(ts_model_feedback(m, x, 1, &in, &loss, NULL, err, sizeof err), 0);
    ck_assert(isfinite(loss));
    ck_assert(loss >= biggest * biggest / 3 * 0.999);
    ts_model_free(m);
}
END_TEST

/* grad_output: no loss (NAN); a zero gradient steps but leaves corr_accum. */
START_TEST(test_feedback_grad_zero)
{
    ts_model *m = model_from("linear:5x3/gs2", 8);
    float x[5], g[3] = {0};
    fill_floats(x, 5, 2);
    double loss = 0;
    char err[256];
    ts_feedback_input in = {.kind = TS_LOSS_GRAD, .target = g};
    ck_assert_int_eq(ts_model_feedback(m, x, 1, &in, &loss, NULL, err, sizeof err), 0);
    ck_assert(isnan(loss));
    ck_assert_int_eq(m->layers[0].step, 1);
    for (int64_t k = 0; k < m->layers[0].n_groups; k++)
        ck_assert_int_eq(m->layers[0].corr_accum[k], 0);
    ts_model_free(m);
}
END_TEST

/* The reference sums each group's score as int16: a 40000-wide group of +1 trits with
 * dW > 0 everywhere scores 40000, which wraps to -25536 (checked with tscale_mini.py). */
START_TEST(test_feedback_score_int16)
{
    ts_layer_spec s = {.kind = TS_LAYER_LINEAR, .in_dim = 40000, .out_dim = 1, .group_size = 40000};
    char err[256];
    ts_model *m = ts_model_alloc(&s, 1, err, sizeof err);
    memset(m->layers[0].T_packed, 242, ts_trits_packed_size(40000));   /* all +1 */
    ck_assert_int_eq(ts_model_prepare(m, err, sizeof err), 0);
    float *x = malloc(40000 * sizeof *x), g = 1.0f;
    for (int k = 0; k < 40000; k++)
        x[k] = 1.0f;
    ts_feedback_input in = {.kind = TS_LOSS_GRAD, .target = &g};
    ck_assert_int_eq(ts_model_feedback(m, x, 1, &in, NULL, NULL, err, sizeof err), 0);
    ck_assert_int_eq(m->layers[0].corr_accum[0], 25536);
    free(x);
    ts_model_free(m);
}
END_TEST

/* The scores of a step are its whole integer effect: applying them to a copy of the state
 * before the step gives the state after it, bit for bit (journal replay), and -1 takes the
 * step back exactly (a failed journal commit). */
START_TEST(test_feedback_scores_replay_and_undo)
{
    ts_model *m = model_from("rmsnorm:12/gs5,linear:12x7/gs4+bias,gelu,linear:7x9/gs3", 21);
    ts_model *copy = ts_model_clone(m);
    size_t n = ts_model_score_len(m), len = ts_state_len(m);
    ck_assert_uint_eq(n, 7 * 3 + 9 * 3);
    int16_t *scores = malloc(n * sizeof *scores);
    int64_t *before = malloc(len * sizeof *before), *after = malloc(len * sizeof *after),
            *replayed = malloc(len * sizeof *replayed);
    float x[2 * 12], t[2 * 9];
    fill_floats(x, 24, 3);
    fill_floats(t, 18, 4);
    char err[256];
    ts_feedback_input in = {.kind = TS_LOSS_MSE, .target = t};
    ts_state_save(m, before);
    for (int k = 0; k < 3; k++) {
        ck_assert_int_eq(ts_model_feedback_scores(m, x, 2, &in, NULL, scores, NULL, err, sizeof err), 0);
        ts_model_apply_scores(copy, scores, +1, NULL);
    }
    ts_state_save(m, after);
    ts_state_save(copy, replayed);
    ck_assert_int_eq(memcmp(after, replayed, len * sizeof *after), 0);
    ck_assert_int_eq(memcmp(after, before, len * sizeof *after) != 0, 1);
    for (int64_t g = 0; g < m->layers[1].n_groups; g++) /* S agrees too */
        ck_assert_float_eq(m->layers[1].S[g], copy->layers[1].S[g]);
    ts_model_apply_scores(m, scores, -1, NULL); /* take the last step back */
    ts_model_apply_scores(copy, scores, -1, NULL);
    ts_model_apply_scores(copy, scores, +1, NULL);
    ts_model_apply_scores(copy, scores, -1, NULL);
    ts_state_save(m, after);
    ts_state_save(copy, replayed);
    ck_assert_int_eq(memcmp(after, replayed, len * sizeof *after), 0);
    ck_assert_int_eq(ts_model_step(m), 2);
    ck_assert_int_eq(m->layers[0].step, 0); /* rmsnorm never steps */
    free(scores);
    free(before);
    free(after);
    free(replayed);
    ts_model_free(m);
    ts_model_free(copy);
}
END_TEST

/* Several steps' scores summed in int32 and applied at once (a replica applying a summed
 * message, server/repl/repl.h) give the same state, bit for bit, as applying them one by
 * one, and so the same scales. */
START_TEST(test_apply_sum_equals_steps)
{
    ts_layer_spec s = {.kind = TS_LAYER_LINEAR, .in_dim = 10, .out_dim = 3, .group_size = 5};
    char err[256];
    ts_model *m = ts_model_alloc(&s, 1, err, sizeof err);
    ck_assert_ptr_nonnull(m);
    memset(m->layers[0].T_packed, 242, ts_trits_packed_size(10 * 3)); /* every trit +1 */
    ck_assert_int_eq(ts_model_prepare(m, err, sizeof err), 0);
    ts_model *summed = ts_model_clone(m);
    size_t n = ts_model_score_len(m), len = ts_state_len(m);
    int16_t *scores = malloc(n * sizeof *scores);
    int32_t *sums = calloc(n, sizeof *sums);
    int64_t *want = malloc(len * sizeof *want), *got = malloc(len * sizeof *got);
    float x[10], g[3];
    ts_feedback_input in = {.kind = TS_LOSS_GRAD, .target = g};
    for (int k = 0; k < 5; k++) {
        fill_floats(x, 10, 10 + (uint64_t)k);
        fill_floats(g, 3, 20 + (uint64_t)k);
        ck_assert_int_eq(ts_model_feedback_scores(m, x, 1, &in, NULL, scores, NULL, err, sizeof err), 0);
        for (size_t i = 0; i < n; i++)
            sums[i] += scores[i];
    }
    int any = 0;
    for (size_t i = 0; i < n; i++)
        any |= sums[i] != 0;
    ck_assert(any); /* the steps changed corr_accum */
    ts_model_apply_sum(summed, sums, 5, NULL);
    ts_state_save(m, want);
    ts_state_save(summed, got);
    ck_assert_int_eq(memcmp(want, got, len * sizeof *want), 0);
    ck_assert_int_eq(ts_model_step(summed), 5);
    ck_assert_int_eq(memcmp(m->layers[0].S, summed->layers[0].S,
                            ts_scale_count(m->layers[0].rows, m->layers[0].gpr) * sizeof(float)), 0);
    free(scores);
    free(sums);
    free(want);
    free(got);
    ts_model_free(m);
    ts_model_free(summed);
}
END_TEST

/* A model whose only ternary layer is rmsnorm: feedback runs and changes nothing. */
START_TEST(test_feedback_rmsnorm_only)
{
    ts_model *m = model_from("rmsnorm:6/gs4,gelu", 5);
    float x[6], t[6];
    fill_floats(x, 6, 1);
    fill_floats(t, 6, 2);
    char err[256];
    ts_feedback_input in = {.kind = TS_LOSS_MSE, .target = t};
    ck_assert_int_eq(ts_model_feedback(m, x, 1, &in, NULL, NULL, err, sizeof err), 0);
    ck_assert_int_eq(m->layers[0].step, 0);
    ck_assert_int_eq(ts_model_step(m), 0);
    ts_model_free(m);
}
END_TEST

/* ── pool ── */

typedef struct {
    _Atomic int *hits;
} mark_job;

static void mark(void *arg, int64_t begin, int64_t end)
{
    mark_job *j = arg;
    for (int64_t i = begin; i < end; i++)
        atomic_fetch_add(&j->hits[i], 1);
}

START_TEST(test_pool_covers_range)
{
    ck_assert_ptr_null(ts_pool_new(0));
    ck_assert_int_eq(ts_pool_threads(NULL), 1);
    for (int threads = 1; threads <= 4; threads++) {
        ts_pool *p = ts_pool_new(threads);
        ck_assert_ptr_nonnull(p);
        ck_assert_int_eq(ts_pool_threads(p), threads);
        static const int64_t sizes[] = {0, 1, 2, 3, 5, 17, 100, 1001};
        for (size_t s = 0; s < sizeof sizes / sizeof sizes[0]; s++) {
            for (int64_t min_chunk = 0; min_chunk <= 8; min_chunk += 4) {
                int64_t n = sizes[s];
                _Atomic int *hits = calloc((size_t)n + 1, sizeof *hits);
                mark_job j = {hits};
                ts_pool_run(p, n, min_chunk, mark, &j);
                for (int64_t i = 0; i < n; i++)
                    ck_assert_int_eq(hits[i], 1);
                free(hits);
            }
        }
        ts_pool_free(p);
    }
    ts_pool_free(NULL);
}
END_TEST

/* Forward and feedback give bit-identical results with no pool and 1..4 threads. */
START_TEST(test_pool_same_results)
{
    const char *text = "rmsnorm:70/gs8,linear:70x130/gs16+bias,gelu,linear:130x33/gs32,relu,"
                       "linear:33x5/gs8";
    ts_model *ref = model_from(text, 31);
    enum { B = 6 };
    float x[B * 70], t[B * 5], yref[B * 5], y[B * 5];
    fill_floats(x, sizeof x / sizeof x[0], 4);
    fill_floats(t, sizeof t / sizeof t[0], 5);
    char err[256];
    ts_feedback_input in = {.kind = TS_LOSS_MSE, .target = t};
    double lref, l;
    ck_assert_int_eq(ts_model_feedback(ref, x, B, &in, &lref, NULL, err, sizeof err), 0);
    ck_assert_int_eq(ts_model_forward(ref, x, B, yref, NULL), 0);
    size_t len = ts_state_len(ref);
    int64_t *sref = malloc(len * sizeof *sref), *s = malloc(len * sizeof *s);
    ts_state_save(ref, sref);
    for (int threads = 1; threads <= 4; threads++) {
        ts_pool *p = ts_pool_new(threads);
        ts_model *m = model_from(text, 31);
        ck_assert_int_eq(ts_model_feedback(m, x, B, &in, &l, p, err, sizeof err), 0);
        ck_assert(l == lref);
        ck_assert_int_eq(ts_model_forward(m, x, B, y, p), 0);
        ck_assert_mem_eq(y, yref, sizeof y);
        ts_state_save(m, s);
        ck_assert_mem_eq(s, sref, len * sizeof *s);
        ts_model_free(m);
        ts_pool_free(p);
    }
    free(sref);
    free(s);
    ts_model_free(ref);
}
END_TEST

static Suite *core_suite(void)
{
    Suite *s = suite_create("core");
    TCase *tc = tcase_create("trits");
    tcase_add_test(tc, test_pack_roundtrip_small);
    tcase_add_test(tc, test_pack_roundtrip_large);
    tcase_add_test(tc, test_pack_known_bytes);
    tcase_add_test(tc, test_pack_matches_reference);
    tcase_add_test(tc, test_unpack_refuses_243);
    suite_add_tcase(s, tc);

    tc = tcase_create("specs");
    tcase_add_test(tc, test_specs_parse_ok);
    tcase_add_test(tc, test_specs_chain);
    tcase_add_test(tc, test_specs_parse_errors);
    tcase_add_test(tc, test_specs_check_errors);
    tcase_add_test(tc, test_kind_names);
    suite_add_tcase(s, tc);

    tc = tcase_create("model");
    tcase_set_timeout(tc, 30);
    tcase_add_test(tc, test_alloc_zero_state);
    tcase_add_test(tc, test_update_scales);
    tcase_add_test(tc, test_state_save_load);
    tcase_add_test(tc, test_clone);
    tcase_add_test(tc, test_init_statistics);
    tcase_add_test(tc, test_init_E);
    tcase_add_test(tc, test_init_seeded);
    tcase_add_test(tc, test_demo);
    suite_add_tcase(s, tc);

    tc = tcase_create("forward_feedback");
    tcase_set_timeout(tc, 30);
    tcase_add_test(tc, test_forward_batch_equals_rows);
    tcase_add_test(tc, test_activations);
    tcase_add_test(tc, test_feedback_failure_leaves_model);
    tcase_add_test(tc, test_feedback_grad_zero);
    tcase_add_test(tc, test_feedback_loss_past_float32);
    tcase_add_test(tc, test_feedback_score_int16);
    tcase_add_test(tc, test_feedback_rmsnorm_only);
    tcase_add_test(tc, test_feedback_scores_replay_and_undo);
    tcase_add_test(tc, test_apply_sum_equals_steps);
    suite_add_tcase(s, tc);

    tc = tcase_create("pool");
    tcase_set_timeout(tc, 30);
    tcase_add_test(tc, test_pool_covers_range);
    tcase_add_test(tc, test_pool_same_results);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    return run_suite(core_suite());
}
