/* snapshot.h — taking snapshots (SPEC §6) from the loop.
 *
 * A snapshot is taken at a step boundary: the state copy (ts_state_save, a memcpy) runs
 * as a control item of the model's FIFO, so it sits exactly between two compute jobs and
 * holds the loop only for the copy. The copy then goes to the persistence thread, and
 * the result comes back to the loop, which updates the model's snapshot status (and so
 * /admin/models and /metrics) and calls the caller's callback.
 *
 * When a write fails the model is marked failing: feedback is refused (503) while it is
 * (--feedback-requires-snapshot), and the timer retries it even if the state is unchanged.
 */
#ifndef TS_SNAPSHOT_H
#define TS_SNAPSHOT_H

#include "server/server.h"

/* info: the snapshot written; NULL when it failed (err says why) or was skipped because
 * nothing changed (err NULL). Runs on the loop. */
typedef void (*ts_snapshot_done)(ts_server *srv, ts_served *s, const ts_snapshot_info *info,
                                 const char *err, void *arg);

/* Queue a snapshot of s behind the work already in its FIFO. only_if_changed: skip it when
 * s's version and step equal the newest snapshot's (and the last write did not fail).
 * reason is one of store.h's reasons. cb may be NULL. 0, or -1 on allocation failure. */
int ts_snapshot_queue(ts_server *srv, ts_served *s, const char *reason, int only_if_changed,
                      ts_snapshot_done cb, void *arg);

/* Take the snapshot now: only from a control item (s idle). */
void ts_snapshot_now(ts_server *srv, ts_served *s, const char *reason, int only_if_changed,
                     ts_snapshot_done cb, void *arg);

/* The --snapshot-interval timer: queue a "timer" snapshot of every model whose state
 * changed since its newest snapshot or whose last write failed. */
void ts_snapshot_changed(ts_server *srv);

/* The one log line of a snapshot written (tools and tests read it: keep its form):
 *   snapshot ID of model 'NAME': version V, step S, reason R, B bytes, T ms */
void ts_snapshot_log(const char *name, const ts_snapshot_info *info, uint64_t dur_us);

/* Record info as s's newest snapshot (written just now, or found at start). */
void ts_snapshot_note(ts_served *s, const ts_snapshot_info *info);

/* created_at as RFC 3339 UTC with milliseconds ("2024-05-01T12:00:00.123Z"). out[32]. */
void ts_snapshot_time(int64_t ms, char *out, size_t len);

#endif
