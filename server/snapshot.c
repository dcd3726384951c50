/* snapshot.c — state copy at a step boundary, write on the persistence thread (see snapshot.h). */
#include "server/snapshot.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "server/log.h"

typedef struct {
    ts_persist_job job;
    ts_server *srv;
    char name[TS_MODEL_NAME_MAX];
    char reason[16];
    int only_if_changed;
    int counted;            /* queued through ts_snapshot_queue: counts in snapshot_queued */
    ts_snapshot_done cb;
    void *arg;
    /* the copy */
    int64_t version, step;
    int64_t *state;
    size_t len;
    char *repl;             /* the replication position of the copy (repl.h), or NULL */
    /* the result */
    int rc;
    ts_snapshot_info info;
    char err[512];
    uint64_t dur_us;
} snap_job;

void ts_snapshot_log(const char *name, const ts_snapshot_info *info, uint64_t dur_us) {
    ts_log_info("snapshot %lld of model '%s': version %lld, step %lld, reason %s, %lld bytes, "
                "%.1f ms", (long long)info->snapshot_id, name, (long long)info->version,
                (long long)info->step, info->reason, (long long)info->bytes, (double)dur_us / 1000.0);
}

void ts_snapshot_note(ts_served *s, const ts_snapshot_info *info) {
    s->newest = *info;
    s->snap_step = info->step;
    s->snap_version = info->version;
}

void ts_snapshot_time(int64_t ms, char *out, size_t len) {
    time_t sec = (time_t)(ms / 1000);
    struct tm tm;
    gmtime_r(&sec, &tm);
    snprintf(out, len, "%04d-%02d-%02dT%02d:%02d:%02d.%03dZ", tm.tm_year + 1900, tm.tm_mon + 1,
             tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec, (int)(ms % 1000));
}

static void snap_work(ts_store *store, ts_persist_job *pj) {
    snap_job *j = (snap_job *)pj;
    uint64_t t0 = ts_now_us();
    j->rc = ts_store_put_snapshot(store, j->name, j->version, j->state, j->len, j->step, j->reason,
                                  j->repl, (int)j->srv->cfg.snapshot_keep, &j->info, j->err, sizeof j->err);
    j->dur_us = ts_now_us() - t0;
}

static void snap_done(ts_persist_job *pj) {
    snap_job *j = (snap_job *)pj;
    ts_server *srv = j->srv;
    ts_metrics *m = &srv->metrics;
    /* Models are removed only by a persistence job submitted after every snapshot of
     * theirs (the jobs run in order), so the model is still here; look it up anyway. */
    ts_served *s = ts_engine_find(srv->engine, j->name, 1);
    ts_hist_observe(&m->snapshot_us, j->dur_us);
    if (j->rc == 0) {
        atomic_fetch_add_explicit(&m->snapshots_ok, 1, memory_order_relaxed);
        ts_snapshot_log(j->name, &j->info, j->dur_us);
        if (s) {
            if (s->snapshot_failing)
                ts_log_info("snapshots of model '%s' work again; feedback is accepted", j->name);
            ts_snapshot_note(s, &j->info);
            s->snapshot_failing = 0;
            s->snapshot_error[0] = '\0';
        }
    } else {
        atomic_fetch_add_explicit(&m->snapshots_failed, 1, memory_order_relaxed);
        ts_log_error("snapshot of model '%s' (step %lld, reason %s) failed: %s%s", j->name,
                     (long long)j->step, j->reason, j->err,
                     srv->cfg.feedback_requires_snapshot ? "; refusing feedback until one succeeds" : "");
        if (s) {
            s->snapshot_failing = 1;
            s->snapshot_failures++;
            snprintf(s->snapshot_error, sizeof s->snapshot_error, "%s", j->err);
        }
    }
    if (s && j->counted)
        s->snapshot_queued--;
    if (j->cb)
        j->cb(srv, s, j->rc == 0 ? &j->info : NULL, j->rc == 0 ? NULL : j->err, j->arg);
    free(j->state);
    free(j->repl);
    free(j);
}

static void take(ts_server *srv, ts_served *s, const char *reason, int only_if_changed, int counted,
                 ts_snapshot_done cb, void *arg) {
    int64_t step = ts_model_step(s->model);
    if (only_if_changed && step == s->snap_step && s->version == s->snap_version &&
        !s->snapshot_failing) {
        s->snapshot_queued -= counted;
        if (cb)
            cb(srv, s, NULL, NULL, arg);
        return;
    }
    uint64_t t0 = ts_now_us(); /* the loop's stall: allocating and filling the copy */
    snap_job *j = calloc(1, sizeof *j);
    size_t len = ts_state_len(s->model);
    int64_t *state = j ? malloc((len ? len : 1) * sizeof *state) : NULL;
    if (!state) {
        free(j);
        s->snapshot_failing = 1;
        s->snapshot_failures++;
        snprintf(s->snapshot_error, sizeof s->snapshot_error, "out of memory copying the state");
        s->snapshot_queued -= counted;
        if (cb)
            cb(srv, s, NULL, s->snapshot_error, arg);
        return;
    }
    ts_state_save(s->model, state); /* the only time the loop holds serving: a memcpy */
    j->repl = ts_repl_position(srv->repl, s->name); /* of this very state (both change in control items) */
    uint64_t copy_us = ts_now_us() - t0;
    ts_hist_observe(&srv->metrics.snapshot_copy_us, copy_us);
    ts_log_debug("snapshot of model '%s': state copied on the loop in %.2f ms (%zu bytes)", s->name,
                 (double)copy_us / 1000.0, len * sizeof *state);
    j->job.work = snap_work;
    j->job.done = snap_done;
    j->srv = srv;
    snprintf(j->name, sizeof j->name, "%s", s->name);
    snprintf(j->reason, sizeof j->reason, "%s", reason);
    j->only_if_changed = only_if_changed;
    j->counted = counted;
    j->cb = cb;
    j->arg = arg;
    j->version = s->version;
    j->step = step;
    j->state = state;
    j->len = len;
    ts_persist_submit(srv->persist, &j->job);
}

void ts_snapshot_now(ts_server *srv, ts_served *s, const char *reason, int only_if_changed,
                     ts_snapshot_done cb, void *arg) {
    take(srv, s, reason, only_if_changed, 0, cb, arg);
}

typedef struct {
    ts_server *srv;
    char reason[16];
    int only_if_changed;
    ts_snapshot_done cb;
    void *arg;
} snap_request;

static void snap_control(ts_engine *e, ts_served *s, void *arg) {
    snap_request *r = arg;
    if (s->removed) { /* cancelled (engine.h) */
        if (r->cb)
            r->cb(r->srv, s, NULL, "the model was removed before its snapshot was taken", r->arg);
        free(r);
        return;
    }
    take(r->srv, s, r->reason, r->only_if_changed, 1, r->cb, r->arg);
    free(r);
}

int ts_snapshot_queue(ts_server *srv, ts_served *s, const char *reason, int only_if_changed,
                      ts_snapshot_done cb, void *arg) {
    snap_request *r = calloc(1, sizeof *r);
    if (!r)
        return -1;
    r->srv = srv;
    snprintf(r->reason, sizeof r->reason, "%s", reason);
    r->only_if_changed = only_if_changed;
    r->cb = cb;
    r->arg = arg;
    s->snapshot_queued++;
    if (ts_engine_control(srv->engine, s, snap_control, r) < 0) {
        s->snapshot_queued--;
        free(r);
        return -1;
    }
    return 0;
}

void ts_snapshot_changed(ts_server *srv) {
    for (ts_served *s = ts_engine_first(srv->engine); s; s = s->next) {
        if (s->unloading || s->snapshot_queued)
            continue; /* one at a time: a slow disk must not pile up copies */
        if (s->step != s->snap_step || s->version != s->snap_version || s->snapshot_failing)
            if (ts_snapshot_queue(srv, s, "timer", 1, NULL, NULL) < 0)
                ts_log_error("snapshot of model '%s': out of memory queueing it", s->name);
    }
}
