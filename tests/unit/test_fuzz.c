/* test_fuzz.c — replay the fuzz targets' seed corpora and every saved regression input
 * (tests/fuzz/regress/<target>/: inputs that once crashed or broke a property) through the
 * same target code `make fuzz` runs, with its properties as Check assertions. Under
 * `make unit-asan` and `make valgrind` this is also a memory-error check of each input.
 */
#define TS_FUZZ_REPLAY 1
#include <check.h>
#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "tests/fuzz/fuzz_admin.c"
#include "tests/fuzz/fuzz_framing.c"
#include "tests/fuzz/fuzz_json.c"
#include "tests/fuzz/fuzz_oip.c"
#include "tests/fuzz/fuzz_oip_binary.c"
#include "tests/fuzz/fuzz_safetensors.c"
#include "testutil.h"

typedef int (*fuzz_fn)(const uint8_t *, size_t);

/* Run fn on every regular file in dir whose name ends with suffix (NULL: any); returns how
 * many. A missing directory counts as empty. */
static int replay_dir(fuzz_fn fn, const char *dir, const char *suffix)
{
    DIR *d = opendir(dir);
    if (!d)
        return 0;
    int n = 0;
    struct dirent *e;
    while ((e = readdir(d))) {
        char path[1024];
        struct stat st;
        size_t l = strlen(e->d_name), sl = suffix ? strlen(suffix) : 0;
        if (e->d_name[0] == '.' || (suffix && (l < sl || strcmp(e->d_name + l - sl, suffix) != 0)))
            continue;
        snprintf(path, sizeof path, "%s/%s", dir, e->d_name);
        if (stat(path, &st) != 0 || !S_ISREG(st.st_mode))
            continue;
        size_t len;
        uint8_t *buf = slurp(path, &len);
        /* The input in an allocation of exactly its size, as libFuzzer gives it. */
        uint8_t *exact = malloc(len ? len : 1);
        memcpy(exact, buf, len);
        free(buf);
        fn(exact, len);
        free(exact);
        n++;
    }
    closedir(d);
    return n;
}

static int replay(fuzz_fn fn, const char *target)
{
    char dir[256];
    snprintf(dir, sizeof dir, "tests/fuzz/corpus/%s", target);
    int n = replay_dir(fn, dir, NULL);
    snprintf(dir, sizeof dir, "tests/fuzz/regress/%s", target);
    return n + replay_dir(fn, dir, NULL);
}

START_TEST(safetensors_seeds_and_regressions)
{
    int n = replay(ts_fuzz_safetensors, "safetensors");
    n += replay_dir(ts_fuzz_safetensors, "tests/golden", ".safetensors");
    n += replay_dir(ts_fuzz_safetensors, "tests/data", ".safetensors");
    ck_assert_int_ge(n, 10);
}
END_TEST

START_TEST(oip_seeds_and_regressions)
{
    ck_assert_int_ge(replay(ts_fuzz_oip, "oip"), 10);
}
END_TEST

START_TEST(oip_binary_seeds_and_regressions)
{
    ck_assert_int_ge(replay(ts_fuzz_oip_binary, "oip_binary"), 5);
}
END_TEST

START_TEST(admin_seeds_and_regressions)
{
    ck_assert_int_ge(replay(ts_fuzz_admin, "admin"), 10);
}
END_TEST

START_TEST(framing_seeds_and_regressions)
{
    ck_assert_int_ge(replay(ts_fuzz_framing, "framing"), 10);
}
END_TEST

START_TEST(json_seeds_and_regressions)
{
    ck_assert_int_ge(replay(ts_fuzz_json, "json"), 5);
}
END_TEST

/* The targets' own edge cases: empty and one-byte inputs reach every steering default. */
START_TEST(tiny_inputs)
{
    static const uint8_t bytes[4] = {0xff, 0x00, 0x01, 0x80};
    fuzz_fn fns[] = {ts_fuzz_safetensors, ts_fuzz_oip, ts_fuzz_oip_binary, ts_fuzz_json, ts_fuzz_admin,
                    ts_fuzz_framing};
    for (size_t f = 0; f < sizeof fns / sizeof fns[0]; f++)
        for (size_t len = 0; len <= sizeof bytes; len++)
            ck_assert_int_eq(fns[f](bytes, len), 0);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("fuzz-replay");
    TCase *tc = tcase_create("replay");
    tcase_set_timeout(tc, 300);
    tcase_add_test(tc, safetensors_seeds_and_regressions);
    tcase_add_test(tc, oip_seeds_and_regressions);
    tcase_add_test(tc, oip_binary_seeds_and_regressions);
    tcase_add_test(tc, json_seeds_and_regressions);
    tcase_add_test(tc, admin_seeds_and_regressions);
    tcase_add_test(tc, framing_seeds_and_regressions);
    tcase_add_test(tc, tiny_inputs);
    suite_add_tcase(s, tc);
    return run_suite(s);
}
