/* testutil.h — small helpers every unit test file may need: whole files in and out, a
 * model from architecture text, and the Check runner. Header-only (static inline): each test is one file with its own main. */
#ifndef TS_TESTUTIL_H
#define TS_TESTUTIL_H

#include <check.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#include "core/model.h"

/* The whole file at path (malloc'd, with a NUL after the last byte, so text can be used as
 * a string); *len its size. Fails the test when the file cannot be read. */
static inline uint8_t *slurp(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    ck_assert_msg(f != NULL, "cannot open %s (run the tests from the repository root)", path);
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    ck_assert_msg(n >= 0, "cannot size %s", path);
    fseek(f, 0, SEEK_SET);
    uint8_t *buf = malloc((size_t)n + 1);
    ck_assert_uint_eq(fread(buf, 1, (size_t)n, f), (size_t)n);
    fclose(f);
    buf[n] = '\0';
    *len = (size_t)n;
    return buf;
}

/* Replace the file at path with p[n]; fails the test when it cannot. */
static inline void write_file(const char *path, const void *p, size_t n)
{
    FILE *f = fopen(path, "wb");
    ck_assert_msg(f != NULL, "cannot create %s", path);
    ck_assert_uint_eq(fwrite(p, 1, n, f), n);
    fclose(f);
}

/* A model of the architecture text (ts_specs_parse) with weights drawn from seed
 * (ts_model_init); fails the test when either refuses. */
static inline ts_model *model_from(const char *text, uint64_t seed)
{
    ts_layer_spec specs[TS_MAX_LAYERS];
    int n;
    char err[256];
    ck_assert_msg(ts_specs_parse(text, specs, TS_MAX_LAYERS, &n, err, sizeof err) == 0, "%s: %s", text, err);
    ts_model *m = ts_model_init(specs, n, seed, err, sizeof err);
    ck_assert_msg(m != NULL, "%s: %s", text, err);
    return m;
}

/* Run every test of s; the exit status for main (failure when any test failed). */
static inline int run_suite(Suite *s)
{
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}

#endif
