/* persist.c — the persistence thread (see persist.h).
 *
 * Two singly linked FIFOs under one mutex: `todo` (loop -> thread, signalled with a
 * condition variable) and `finished` (thread -> loop, signalled with a ts_wake, which
 * coalesces wake-ups; the loop drains the whole list each time).
 */
#include "server/store/persist.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "server/wake.h"

struct ts_persist {
    ts_store *store;
    ts_wake wake;                /* thread -> loop: jobs finished */
    pthread_t thread;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    ts_persist_job *todo_head, *todo_tail;
    ts_persist_job *done_head, *done_tail;
    int stopping;
    int pending;   /* loop thread only */
    ts_persist_job *held_head, *held_tail; /* loop thread only: ts_persist_hold */
    int held;
    ts_persist_job *group[TS_PERSIST_GROUP_MAX];  /* persistence thread: the jobs of one call */
};

static void push(ts_persist_job **head, ts_persist_job **tail, ts_persist_job *job) {
    job->next = NULL;
    if (*tail)
        (*tail)->next = job;
    else
        *head = job;
    *tail = job;
}

static void *thread_main(void *arg) {
    ts_persist *p = arg;
    pthread_mutex_lock(&p->mu);
    for (;;) {
        while (!p->todo_head && !p->stopping)
            pthread_cond_wait(&p->cv, &p->mu);
        ts_persist_job *job = p->todo_head;
        if (!job)
            break; /* stopping and nothing left */
        /* Take the head, and with a group job every job of the same group right behind it. */
        int n = 0;
        ts_persist_job *last = job;
        do {
            p->group[n++] = last;
            last = last->next;
        } while (job->group && last && last->group == job->group && n < TS_PERSIST_GROUP_MAX);
        p->todo_head = last;
        if (!p->todo_head)
            p->todo_tail = NULL;
        pthread_mutex_unlock(&p->mu);
        if (job->group)
            job->group(p->store, p->group, n);
        else
            job->work(p->store, job);
        pthread_mutex_lock(&p->mu);
        for (int i = 0; i < n; i++)
            push(&p->done_head, &p->done_tail, p->group[i]);
        ts_wake_send(&p->wake);
    }
    pthread_mutex_unlock(&p->mu);
    return NULL;
}

static void on_finished(void *data) {
    ts_persist *p = data;
    pthread_mutex_lock(&p->mu);
    ts_persist_job *job = p->done_head;
    p->done_head = p->done_tail = NULL;
    pthread_mutex_unlock(&p->mu);
    while (job) {
        ts_persist_job *next = job->next; /* done() may free the job */
        p->pending--;
        job->done(job);
        job = next;
    }
}

ts_persist *ts_persist_start(uv_loop_t *loop, ts_store *store, char *err, size_t errlen) {
    ts_persist *p = calloc(1, sizeof *p);
    if (!p) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    p->store = store;
    pthread_mutex_init(&p->mu, NULL);
    pthread_cond_init(&p->cv, NULL);
    int rc = ts_wake_init(loop, &p->wake, on_finished, p);
    if (rc != 0) {
        snprintf(err, errlen, "cannot create the persistence wake-up handle: %s", uv_strerror(rc));
        free(p);
        return NULL;
    }
    rc = pthread_create(&p->thread, NULL, thread_main, p);
    if (rc != 0) {
        snprintf(err, errlen, "cannot start the persistence thread: %s", strerror(rc));
        ts_wake_close(&p->wake, NULL);
        uv_run(loop, UV_RUN_NOWAIT);
        free(p);
        return NULL;
    }
    return p;
}

/* Loop thread: hand the held jobs, then job (NULL: none), to the thread. */
static void send_jobs(ts_persist *p, ts_persist_job *job) {
    pthread_mutex_lock(&p->mu);
    if (p->held_head) {
        if (p->todo_tail)
            p->todo_tail->next = p->held_head;
        else
            p->todo_head = p->held_head;
        p->todo_tail = p->held_tail;
        p->held_head = p->held_tail = NULL;
        p->held = 0;
    }
    if (job)
        push(&p->todo_head, &p->todo_tail, job);
    pthread_cond_signal(&p->cv);
    pthread_mutex_unlock(&p->mu);
}

void ts_persist_submit(ts_persist *p, ts_persist_job *job) {
    p->pending++;
    send_jobs(p, job);
}

void ts_persist_hold(ts_persist *p, ts_persist_job *job) {
    p->pending++;
    push(&p->held_head, &p->held_tail, job);
    p->held++;
    int idle = p->pending == p->held; /* no job with the thread */
    if (p->held >= TS_PERSIST_HOLD_MAX || (idle && p->held >= TS_PERSIST_HOLD_MIN))
        send_jobs(p, NULL);
}

void ts_persist_flush(ts_persist *p) {
    if (p->held_head)
        send_jobs(p, NULL);
}

int ts_persist_pending(const ts_persist *p) { return p->pending; }

static void on_closed(uv_handle_t *h) {
    ts_persist *p = h->data;
    pthread_mutex_destroy(&p->mu);
    pthread_cond_destroy(&p->cv);
    free(p);
}

void ts_persist_stop(ts_persist *p) {
    pthread_mutex_lock(&p->mu);
    p->stopping = 1;
    pthread_cond_signal(&p->cv);
    pthread_mutex_unlock(&p->mu);
    pthread_join(p->thread, NULL);
    ts_store_close(p->store);
    p->store = NULL;
    ts_wake_close(&p->wake, on_closed);
}
