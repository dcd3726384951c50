/* journal.h — the feedback journal (SPEC §6): a feedback step is answered only once its
 * integer effect is durable in the daemon's SQLite database.
 *
 * Why: snapshots alone lose every step since the newest one on kill -9 or power loss,
 * although each was answered 200. The journal is the promise of Redis's appendfsync always
 * and PostgreSQL's commit: what was acknowledged survives, and the price is one fsync per
 * group of steps, not per step.
 *
 * How:
 *   - A step's state changes in memory at once (the next step's compute never waits for a
 *     commit); the engine then hands the step to ts_journal_append with its scores — the
 *     step's whole integer effect (core/feedback.h) — and holds the answer.
 *   - The loop gives each entry the next global sequence number and encodes the scores
 *     (1 byte per group when every score fits in int8 — always for group sizes up to 127 —
 *     else 2). The persistence thread adds an FNV-1a checksum over seq, version, step and
 *     payload just before the insert (off the loop: a big model's payload is 262 KB).
 *   - The entry goes to the persistence thread as a group job (persist.h): every entry that
 *     queued up while the previous commit ran is written in one transaction
 *     (synchronous=FULL: one fsync). Jobs run in the order the loop made them, so a snapshot
 *     is written after every entry its state contains and before every later one; it
 *     records the last sequence number it covers (snapshots.journal_seq).
 *   - When the commit returns, the callback runs on the loop: the engine answers.
 *   - Recovery (ts_journal_replay): the newest intact snapshot, then every entry after its
 *     journal_seq, in order, each checked (checksum, version, step + 1). The first that
 *     fails ends the replay and it and everything after it are cut, with a log line.
 *   - A commit that fails (disk full, I/O error) is reported to every entry in it and in
 *     every group queued behind it (their state was computed on top of it): the engine
 *     answers 503 + Retry-After and takes those steps back (ts_model_apply_scores, -1), so
 *     memory never runs ahead of the disk. The journal stays "failing" — the engine refuses
 *     new feedback with 503 — until every entry in flight has come back; the next step
 *     then tries again, so it recovers by itself once the disk does.
 *
 * Entries are deleted once a model's second-newest snapshot covers them (store.c), so the
 * journal holds one to two snapshot intervals of steps.
 * Loop thread only, except where said.
 */
#ifndef TS_JOURNAL_H
#define TS_JOURNAL_H

#include <stddef.h>
#include <stdint.h>

#include "core/model.h"
#include "proto/buf.h"
#include "server/metrics.h"
#include "server/store/persist.h"
#include "server/store/store.h"

typedef struct ts_journal ts_journal;

/* enabled: --journal (0 = steps are answered at once; snapshots only). id_window_ms:
 * exactly-once records older than this are deleted. NULL when out of memory. */
ts_journal *ts_journal_new(int enabled, int64_t id_window_ms);
/* Once recovery is done and the persistence thread runs: commits go to p, and sequence
 * numbers continue after last_seq (ts_store_journal_last). */
void ts_journal_start(ts_journal *j, ts_persist *p, int64_t last_seq);
void ts_journal_free(ts_journal *j);
int ts_journal_enabled(const ts_journal *j);
/* A commit failed and entries of it (or behind it) are still coming back: refuse feedback. */
int ts_journal_failing(const ts_journal *j, const char **why);

/* One step, as the engine hands it over. The journal copies what it keeps. */
typedef struct {
    const char *model;
    int64_t version, step;       /* the version it applied to; the model's step after it */
    const int16_t *scores;       /* [n]: ts_model_feedback_scores */
    size_t n;
    const char *request_id;      /* NULL, or the OIP id (an exactly-once record is written) */
    uint64_t body_hash;
    const char *answer;          /* the JSON to answer (kept for repeats of request_id) */
    int64_t ids_floor_ms;        /* exactly-once rows made before this (Unix ms) are no longer
                                    remembered (ts_idem_floor_ms): they are deleted with the
                                    expired ones, so the table stays within --feedback-id-bytes
                                    as memory does. 0: the window alone decides */
    int hold;                    /* 1: more tiny steps follow at once; the entry may wait on the
                                    loop for them (ts_persist_hold) until ts_journal_flush or
                                    the next append without hold */
} ts_journal_step;

/* Runs on the loop when the entry is durable (err NULL) or failed (err says why). */
typedef void (*ts_journal_cb)(void *arg, const char *err);

/* Queue step for the next group commit; cb(arg, ...) runs later, exactly once. *seq
 * receives the entry's sequence number before cb can run (0 with the journal disabled,
 * when cb runs at once, inside this call, with err NULL). -1 when out of memory (cb is not
 * called; nothing was queued). */
int ts_journal_append(ts_journal *j, const ts_journal_step *step, ts_journal_cb cb, void *arg,
                      int64_t *seq);

/* Send held entries (step.hold) to be committed. Cheap when none are held. */
void ts_journal_flush(ts_journal *j);

/* Start-up, on the thread that owns st: apply to m (recovered from a snapshot of version
 * `version` covering after_seq) every entry of model name after after_seq. A damaged or
 * out-of-order entry ends the replay; it and every later entry of the model are deleted
 * and the reason logged. In order means: the entry's step is the state's step + 1; with
 * step_gaps (replicating: other replicas' deltas advanced the step between local entries
 * and are not journaled; they are consumed again from the stream, repl.h), any step
 * past both the state's and the previous entry's. *replayed counts what was applied. 0, or -1 + err (SQLite). */
int ts_journal_replay(ts_store *st, const char *name, ts_model *m, int64_t version, int64_t after_seq,
                      int step_gaps, int64_t *replayed, char *err, size_t errlen);

/* Prometheus lines: entries, bytes, commits, commit latency, group sizes, failures. */
void ts_journal_render_metrics(ts_journal *j, ts_buf *out);
/* Entries replayed at start (for the metrics). */
void ts_journal_note_replayed(ts_journal *j, int64_t n);

/* The encoding, for tests and tools: payload of scores[n] into out (size at least
 * 1 + 2n); returns its length. Decoding checks the length against n: 0, or -1. */
size_t ts_journal_encode(const int16_t *scores, size_t n, uint8_t *out);
int ts_journal_decode(const uint8_t *payload, size_t len, int16_t *scores, size_t n);
/* The same encoding widened for the sum of several steps' scores (replication sums the
 * steps of one message, repl.h): 1, 2 or 4 bytes per value, the narrowest that holds every
 * sum, and a tag of its own, which ts_journal_decode (and so a replica from before sums)
 * refuses rather than taking a sum for one step. out: at least 1 + 4n. Decoding accepts
 * sums and single steps' payloads: 0, or -1 when the tag is unknown or the length does not
 * fit n. */
size_t ts_journal_encode_sum(const int32_t *sums, size_t n, uint8_t *out);
int ts_journal_decode_sum(const uint8_t *payload, size_t len, int32_t *sums, size_t n);
uint64_t ts_journal_checksum(int64_t seq, int64_t version, int64_t step, const void *payload, size_t len);

#endif
