/* test_persist.c — the persistence thread's queue (server/store/persist.h): jobs run in
 * the order the loop made them, held jobs wait on the loop until a flush or a submit, and
 * group jobs standing together run as one call. */
#include <check.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <uv.h>

#include "server/store/persist.h"
#include "server/store/store.h"
#include "testutil.h"

static char dir[64], db[128];
static char err[512];

typedef struct {
    ts_persist_job job;
    char name;
    char *log;         /* persistence thread appends what ran: "A", or "(AB)" for a group */
    int *done;         /* loop: done() calls */
} tjob;

static void work(ts_store *st, ts_persist_job *j) {
    (void)st;
    tjob *t = (tjob *)j;
    size_t n = strlen(t->log);
    t->log[n] = t->name;
    t->log[n + 1] = '\0';
}

static void group(ts_store *st, ts_persist_job **jobs, int n) {
    (void)st;
    char *log = ((tjob *)jobs[0])->log;
    strcat(log, "(");
    for (int i = 0; i < n; i++)
        work(st, jobs[i]);
    strcat(log, ")");
}

static void done(ts_persist_job *j) { (*((tjob *)j)->done)++; }

typedef struct {
    uv_loop_t loop;
    ts_persist *p;
    char log[64];
    int done;
    tjob jobs[16];
} fixture;

static void start(fixture *f) {
    snprintf(dir, sizeof dir, "/tmp/ts-persist-XXXXXX");
    ck_assert_ptr_nonnull(mkdtemp(dir));
    snprintf(db, sizeof db, "%s/t.db", dir);
    uv_loop_init(&f->loop);
    ts_store *st = ts_store_open(db, err, sizeof err);
    ck_assert_msg(st != NULL, "%s", err);
    f->p = ts_persist_start(&f->loop, st, err, sizeof err);
    ck_assert_msg(f->p != NULL, "%s", err);
}

static tjob *job(fixture *f, int i, char name, int grouped) {
    tjob *t = &f->jobs[i];
    *t = (tjob){.job = {.work = work, .done = done, .group = grouped ? group : NULL}, .name = name,
                .log = f->log, .done = &f->done};
    return t;
}

/* Run the loop until every job submitted or flushed has come back. */
static void settle(fixture *f, int want_done) {
    while (f->done < want_done)
        uv_run(&f->loop, UV_RUN_ONCE);
}

static void stop(fixture *f) {
    ck_assert_int_eq(ts_persist_pending(f->p), 0);
    ts_persist_stop(f->p);
    uv_run(&f->loop, UV_RUN_DEFAULT);
    ck_assert_int_eq(uv_loop_close(&f->loop), 0);
    char cmd[160];
    snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
    ck_assert_int_eq(system(cmd), 0);
}

START_TEST(test_held_jobs_go_first_and_together) {
    fixture f = {0};
    start(&f);
    ts_persist_hold(f.p, &job(&f, 0, 'A', 1)->job);
    ts_persist_hold(f.p, &job(&f, 1, 'B', 1)->job);
    ck_assert_int_eq(ts_persist_pending(f.p), 2);
    /* A plain job submitted behind them: the held ones are sent first, as one group. */
    ts_persist_submit(f.p, &job(&f, 2, 'C', 0)->job);
    settle(&f, 3);
    ck_assert_str_eq(f.log, "(AB)C");
    stop(&f);
}
END_TEST

START_TEST(test_held_job_waits_for_flush) {
    fixture f = {0};
    start(&f);
    ts_persist_hold(f.p, &job(&f, 0, 'A', 1)->job);
    for (int i = 0; i < 5; i++)
        uv_run(&f.loop, UV_RUN_NOWAIT);
    ck_assert_str_eq(f.log, ""); /* still on the loop */
    ck_assert_int_eq(f.done, 0);
    ts_persist_flush(f.p);
    settle(&f, 1);
    ck_assert_str_eq(f.log, "(A)");
    ts_persist_flush(f.p); /* nothing held: no-op */
    stop(&f);
}
END_TEST

START_TEST(test_enough_held_go_to_an_idle_thread) {
    fixture f = {0};
    start(&f);
    ck_assert_int_le(TS_PERSIST_HOLD_MIN, 16);
    char want[32] = "(";
    for (int i = 0; i < TS_PERSIST_HOLD_MIN; i++) {
        ts_persist_hold(f.p, &job(&f, i, (char)('A' + i), 1)->job);
        want[i + 1] = (char)('A' + i);
    }
    strcat(want, ")");
    settle(&f, TS_PERSIST_HOLD_MIN); /* no flush: TS_PERSIST_HOLD_MIN held and the thread idle */
    ck_assert_str_eq(f.log, want);
    stop(&f);
}
END_TEST

int main(void) {
    Suite *s = suite_create("persist");
    TCase *tc = tcase_create("persist");
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, test_held_jobs_go_first_and_together);
    tcase_add_test(tc, test_held_job_waits_for_flush);
    tcase_add_test(tc, test_enough_held_go_to_an_idle_thread);
    suite_add_tcase(s, tc);
    return run_suite(s);
}
