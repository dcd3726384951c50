/* persist.h — the persistence thread: the only user of the daemon's ts_store while it
 * serves (SPEC §6: SQLite never runs on the loop, so a slow disk never stalls requests).
 *
 * A job is a pair of callbacks: work() runs on the persistence thread with the store,
 * done() runs afterwards on the loop thread. Jobs run one at a time in submission order,
 * which keeps e.g. "snapshot, then list snapshots" in the order the loop asked.
 * Embed ts_persist_job in your own struct and recover it in the callbacks.
 */
#ifndef TS_PERSIST_H
#define TS_PERSIST_H

#include <stddef.h>
#include <uv.h>

#include "server/store/store.h"

typedef struct ts_persist ts_persist;
typedef struct ts_persist_job ts_persist_job;

struct ts_persist_job {
    void (*work)(ts_store *store, ts_persist_job *job);  /* persistence thread */
    void (*done)(ts_persist_job *job);                   /* loop thread; may free the job */
    /* Optional (NULL: run work()). Jobs with the same group function that stand next to
     * each other in the queue run as one call group(store, jobs, n), in queue order, instead
     * of work() each: the journal's group commit, one transaction and one fsync for every
     * entry queued while the previous commit ran. done() still runs for each job. Ordering
     * with other jobs is kept: a group never takes a job from behind another kind of job. */
    void (*group)(ts_store *store, ts_persist_job **jobs, int n);
    ts_persist_job *next;                                /* private */
};

/* At most this many jobs in one group call. */
#define TS_PERSIST_GROUP_MAX 4096

/* Start the thread; it owns store from now on (closes it in ts_persist_stop).
 * NULL + err on failure (the store is then still the caller's). */
ts_persist *ts_persist_start(uv_loop_t *loop, ts_store *store, char *err, size_t errlen);

/* Loop thread only. */
void ts_persist_submit(ts_persist *p, ts_persist_job *job);
/* Jobs submitted or held whose done() has not run yet. */
int ts_persist_pending(const ts_persist *p);

/* Like ts_persist_submit, but the job may wait on the loop, behind any job held before
 * it: the engine holds the journal entries of tiny feedback steps that run back to back,
 * so that a group commit takes several of them, not the first one that reaches an idle
 * thread. Held jobs go to the thread, in order, as soon as
 *   - a hold finds the thread idle and TS_PERSIST_HOLD_MIN jobs held (so with many
 *     clients one group commits while the steps of the next one compute), or
 *     TS_PERSIST_HOLD_MAX held in any case,
 *   - a job is submitted (it goes behind them), or ts_persist_flush is called.
 * The caller must flush when nothing more follows. */
void ts_persist_hold(ts_persist *p, ts_persist_job *job);
void ts_persist_flush(ts_persist *p);
#define TS_PERSIST_HOLD_MIN 8
#define TS_PERSIST_HOLD_MAX 64

/* Loop thread, once ts_persist_pending() is 0: join the thread, close the store, and close
 * the loop handle (run the loop once more to finish closing), then free. */
void ts_persist_stop(ts_persist *p);

#endif
