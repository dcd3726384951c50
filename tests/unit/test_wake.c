/* test_wake.c — ts_wake (server/wake.h): sends from other threads are never lost, and
 * coalesce into fewer callbacks than sends. */
#include <check.h>
#include <pthread.h>
#include <uv.h>

#include "server/wake.h"
#include "tests/unit/testutil.h"

enum { SENDERS = 2, PER_SENDER = 20000 };

typedef struct {
    ts_wake wake;
    pthread_mutex_t mu;
    long pushed;      /* under mu: items the senders made */
    long taken;       /* loop: items the callback took */
    long callbacks;   /* loop */
} box;

static void on_wake(void *data) {
    box *b = data;
    b->callbacks++;
    pthread_mutex_lock(&b->mu);
    b->taken = b->pushed;
    pthread_mutex_unlock(&b->mu);
}

static void *sender(void *arg) {
    box *b = arg;
    for (int i = 0; i < PER_SENDER; i++) {
        pthread_mutex_lock(&b->mu);
        b->pushed++;
        pthread_mutex_unlock(&b->mu);
        ts_wake_send(&b->wake); /* the item is where the callback looks before the send */
    }
    return NULL;
}

START_TEST(test_every_send_is_seen) {
    uv_loop_t loop;
    uv_loop_init(&loop);
    box b = {0};
    pthread_mutex_init(&b.mu, NULL);
    ck_assert_int_eq(ts_wake_init(&loop, &b.wake, on_wake, &b), 0);
    pthread_t t[SENDERS];
    for (int i = 0; i < SENDERS; i++)
        pthread_create(&t[i], NULL, sender, &b);
    /* A lost wake-up would leave the loop waiting here for ever (the timeout fails it). */
    while (b.taken < (long)SENDERS * PER_SENDER)
        uv_run(&loop, UV_RUN_ONCE);
    for (int i = 0; i < SENDERS; i++)
        pthread_join(t[i], NULL);
    ts_wake_close(&b.wake, NULL);
    uv_run(&loop, UV_RUN_DEFAULT);
    ck_assert_int_eq(b.taken, (long)SENDERS * PER_SENDER);
    ck_assert_int_ge(b.callbacks, 1);
    ck_assert_int_le(b.callbacks, (long)SENDERS * PER_SENDER);
    ck_assert_int_eq(uv_loop_close(&loop), 0);
    pthread_mutex_destroy(&b.mu);
}
END_TEST

int main(void) {
    Suite *s = suite_create("wake");
    TCase *tc = tcase_create("wake");
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, test_every_send_is_seen);
    suite_add_tcase(s, tc);
    return run_suite(s);
}
