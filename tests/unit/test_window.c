/* test_window.c — the feedback window (server/engine/window.h): the row, byte and age bounds and
 * their eviction order, 404 (never seen) against 410 (gone, and why), take/settle, replacing
 * an id, forgetting a model, the ids it makes. */
#include <check.h>
#include <stdio.h>
#include <string.h>

#include "server/engine/window.h"
#include "testutil.h"

#define DIM 4

static float row[8 * DIM];

static ts_window *window(int64_t rows, int64_t bytes, int64_t age_ms) {
    ts_window_limits lim = {.max_rows = rows, .max_bytes = bytes, .max_age_ms = age_ms};
    ts_window *w = ts_window_new(&lim);
    ck_assert_ptr_nonnull(w);
    return w;
}

static int put(ts_window *w, const char *model, const char *id, int64_t rows, int64_t now) {
    for (int i = 0; i < 8 * DIM; i++)
        row[i] = (float)(id[0] * 100 + i);
    return ts_window_put(w, model, id, row, rows, DIM, 3, now);
}

static ts_window_found take(ts_window *w, const char *model, const char *id, int64_t now, ts_window_view *v) {
    ts_window_view tmp;
    return ts_window_take(w, model, id, now, v ? v : &tmp);
}

/* Found and then given back unused, so it can be looked at again. */
static int present(ts_window *w, const char *model, const char *id, int64_t now) {
    ts_window_view v;
    ts_window_found f = take(w, model, id, now, &v);
    if (f == TS_WINDOW_HIT)
        ts_window_settle(w, v.ticket, 0);
    return f == TS_WINDOW_HIT;
}

START_TEST(test_rows_bound_drops_the_models_oldest) {
    ts_window *w = window(5, 1 << 20, 60000);
    ck_assert_int_eq(put(w, "a", "1", 2, 0), 0);
    ck_assert_int_eq(put(w, "b", "1", 2, 1), 0); /* another model: its own row bound */
    ck_assert_int_eq(put(w, "a", "2", 2, 2), 0);
    ck_assert_int_eq(put(w, "a", "3", 2, 3), 0); /* 6 rows > 5: a/1 goes, not b/1 */
    ts_window_view v;
    ck_assert_int_eq(take(w, "a", "1", 4, &v), TS_WINDOW_GONE);
    ck_assert_int_eq(v.why, TS_GONE_EVICTED);
    ck_assert(present(w, "b", "1", 4));
    ck_assert(present(w, "a", "2", 4));
    ck_assert(present(w, "a", "3", 4));
    ts_window_stats st;
    ts_window_get_stats(w, &st);
    ck_assert_int_eq(st.rows, 6);
    ck_assert_int_eq(st.entries, 3);
    ck_assert_uint_eq(st.evicted_rows, 1);
    ts_window_free(w);
}
END_TEST

START_TEST(test_bytes_bound_drops_the_oldest_of_any_model) {
    size_t one = ts_window_entry_bytes("x", 1, DIM);
    ck_assert_uint_gt(one, DIM * sizeof(float));
    ts_window *w = window(1000, (int64_t)(3 * one), 60000);
    ck_assert_int_eq(put(w, "a", "1", 1, 0), 0);
    ck_assert_int_eq(put(w, "b", "2", 1, 1), 0);
    ck_assert_int_eq(put(w, "a", "3", 1, 2), 0);
    ts_window_stats st;
    ts_window_get_stats(w, &st);
    ck_assert_uint_eq(st.bytes, 3 * one);
    ck_assert_int_eq(put(w, "b", "4", 1, 3), 0); /* the oldest of all (a/1) goes */
    ck_assert_int_eq(take(w, "a", "1", 4, NULL), TS_WINDOW_GONE);
    ck_assert(present(w, "b", "2", 4));
    ck_assert_int_eq(put(w, "c", "5", 2, 5), 0); /* two rows: room for two old entries */
    ts_window_get_stats(w, &st);
    ck_assert_uint_le(st.bytes, 3 * one);
    ck_assert_int_eq(take(w, "b", "2", 6, NULL), TS_WINDOW_GONE);
    ck_assert_int_eq(take(w, "a", "3", 6, NULL), TS_WINDOW_GONE);
    ck_assert(present(w, "b", "4", 6));
    ck_assert(present(w, "c", "5", 6));
    ts_window_free(w);
}
END_TEST

START_TEST(test_age_bound_and_too_large) {
    ts_window *w = window(4, 1 << 20, 100);
    ck_assert_int_eq(put(w, "a", "old", 1, 0), 0);
    ck_assert_int_eq(put(w, "a", "new", 1, 60), 0);
    ts_window_view v;
    ck_assert(present(w, "a", "old", 100)); /* exactly the bound: still kept */
    ck_assert_int_eq(take(w, "a", "old", 101, &v), TS_WINDOW_GONE);
    ck_assert_int_eq(v.why, TS_GONE_EXPIRED);
    ck_assert(present(w, "a", "new", 101));
    ck_assert_int_eq(put(w, "a", "huge", 5, 102), 1); /* more rows than the bound: not stored */
    ck_assert_int_eq(take(w, "a", "huge", 102, &v), TS_WINDOW_GONE);
    ck_assert_int_eq(v.why, TS_GONE_TOO_LARGE);
    ck_assert(present(w, "a", "new", 102)); /* nothing was dropped for it */
    ck_assert_int_eq(take(w, "a", "never", 102, NULL), TS_WINDOW_MISS);
    ts_window_free(w);
}
END_TEST

START_TEST(test_take_settle_used_and_busy) {
    ts_window *w = window(100, 1 << 20, 60000);
    ck_assert_int_eq(put(w, "m", "q", 3, 0), 0);
    ts_window_view v;
    ck_assert_int_eq(take(w, "m", "q", 1, &v), TS_WINDOW_HIT);
    ck_assert_int_eq(v.rows, 3);
    ck_assert_int_eq(v.in_dim, DIM);
    ck_assert_int_eq(v.out_dim, 3);
    ck_assert(v.x[0] == (float)('q' * 100) && v.x[3 * DIM - 1] == (float)('q' * 100 + 3 * DIM - 1));
    ck_assert_int_eq(take(w, "m", "q", 1, NULL), TS_WINDOW_BUSY); /* a feedback is running on it */
    ts_window_settle(w, v.ticket, 0);                            /* not applied: back */
    ck_assert_int_eq(take(w, "m", "q", 2, &v), TS_WINDOW_HIT);
    ts_window_settle(w, v.ticket, 1);                            /* applied: gone, used */
    ck_assert_int_eq(take(w, "m", "q", 3, &v), TS_WINDOW_GONE);
    ck_assert_int_eq(v.why, TS_GONE_USED);
    ts_window_stats st;
    ts_window_get_stats(w, &st);
    ck_assert_int_eq(st.entries, 0);
    ck_assert_uint_eq(st.bytes, 0);
    ck_assert_uint_eq(st.hits, 2);
    ck_assert_uint_eq(st.gone, 1);
    ts_window_free(w);
}
END_TEST

START_TEST(test_replaced_id_and_stale_ticket) {
    ts_window *w = window(100, 1 << 20, 60000);
    ck_assert_int_eq(put(w, "m", "q", 1, 0), 0);
    ts_window_view v;
    ck_assert_int_eq(take(w, "m", "q", 1, &v), TS_WINDOW_HIT);
    ck_assert_int_eq(put(w, "m", "q", 2, 2), 0); /* a newer inference with the same id */
    ts_window_settle(w, v.ticket, 1);            /* the old entry's ticket: nothing happens */
    ck_assert_int_eq(take(w, "m", "q", 3, &v), TS_WINDOW_HIT);
    ck_assert_int_eq(v.rows, 2);
    ts_window_stats st;
    ts_window_get_stats(w, &st);
    ck_assert_int_eq(st.entries, 1);
    ts_window_free(w);
}
END_TEST

START_TEST(test_forget_model_and_off) {
    ts_window *w = window(100, 1 << 20, 60000);
    for (int i = 0; i < 300; i++) { /* past the first bucket count: the table grows */
        char id[16];
        snprintf(id, sizeof id, "%d", i);
        ck_assert_int_eq(put(w, i % 2 ? "a" : "b", id, 1, i), 0);
    }
    ts_window_stats st;
    ts_window_get_stats(w, &st);
    ck_assert_int_eq(st.entries, 200); /* 100 rows per model */
    ck_assert(present(w, "a", "299", 300));
    ck_assert_int_eq(take(w, "a", "1", 300, NULL), TS_WINDOW_GONE);
    ts_window_forget(w, "a");
    ts_window_get_stats(w, &st);
    ck_assert_int_eq(st.entries, 100);
    ck_assert_int_eq(take(w, "a", "299", 300, NULL), TS_WINDOW_MISS);
    ck_assert(present(w, "b", "298", 300));
    ts_window_free(w);

    w = window(0, 1 << 20, 60000);
    ck_assert(!ts_window_enabled(w));
    ck_assert_int_eq(put(w, "m", "q", 1, 0), 1);
    ck_assert_int_eq(take(w, "m", "q", 0, NULL), TS_WINDOW_MISS);
    ts_window_free(w);
}
END_TEST

START_TEST(test_made_ids_are_unique_per_window) {
    ts_window *a = window(1, 1, 1), *b = window(1, 1, 1);
    char x[TS_WINDOW_ID_MAX], y[TS_WINDOW_ID_MAX], z[TS_WINDOW_ID_MAX];
    ts_window_make_id(a, x);
    ts_window_make_id(a, y);
    ts_window_make_id(b, z);
    ck_assert_str_ne(x, y);
    ck_assert_int_eq(strlen(x), 16 + 1 + 1);
    ck_assert_int_eq(memcmp(x, y, 17), 0);  /* one prefix per window (daemon run) */
    ck_assert_int_ne(memcmp(x, z, 16), 0);  /* random per run */
    ck_assert_str_eq(x + 17, "1");
    ts_window_free(a);
    ts_window_free(b);
}
END_TEST

/* What forwarding (server/repl/forward.h) asks of the window: which run made an id, and
 * whether an id is known here without taking it. */
START_TEST(test_id_prefix_and_knows) {
    ts_window *w = window(4, 1 << 20, 1000);
    char id[TS_WINDOW_ID_MAX], p[17], own[17];
    ts_window_make_id(w, id);
    ts_window_prefix(w, own);
    ck_assert_int_eq(ts_window_id_prefix(id, p), 1);
    ck_assert_str_eq(p, own);
    ck_assert_int_eq(ts_window_id_prefix("0123456789abcdef-42", p), 1);
    ck_assert_str_eq(p, "0123456789abcdef");
    static const char *const not_made[] = {"rec-42", "0123456789abcdef-", "0123456789ABCDEF-1",
                                           "0123456789abcdef-1x", "0123456789abcde-12", "0123456789abcdef1"};
    for (size_t i = 0; i < sizeof not_made / sizeof *not_made; i++)
        ck_assert_msg(ts_window_id_prefix(not_made[i], p) == 0, "%s read as made by a run", not_made[i]);
    ck_assert_int_eq(put(w, "m", "a", 1, 0), 0);
    ck_assert_int_eq(ts_window_knows(w, "m", "a", 10), 1);
    ck_assert_int_eq(ts_window_knows(w, "other", "a", 10), 0);
    ck_assert_int_eq(ts_window_knows(w, "m", "b", 10), 0);
    ck_assert_int_eq(present(w, "m", "a", 10), 1); /* knowing took nothing */
    ck_assert_int_eq(ts_window_knows(w, "m", "a", 2000), 1); /* expired: gone, still known (410) */
    ck_assert_int_eq(take(w, "m", "a", 2000, NULL), TS_WINDOW_GONE);
    ts_window_free(w);
}
END_TEST

int main(void) {
    Suite *s = suite_create("window");
    TCase *tc = tcase_create("window");
    tcase_add_test(tc, test_rows_bound_drops_the_models_oldest);
    tcase_add_test(tc, test_bytes_bound_drops_the_oldest_of_any_model);
    tcase_add_test(tc, test_age_bound_and_too_large);
    tcase_add_test(tc, test_take_settle_used_and_busy);
    tcase_add_test(tc, test_replaced_id_and_stale_ticket);
    tcase_add_test(tc, test_forget_model_and_off);
    tcase_add_test(tc, test_made_ids_are_unique_per_window);
    tcase_add_test(tc, test_id_prefix_and_knows);
    suite_add_tcase(s, tc);
    return run_suite(s);
}
