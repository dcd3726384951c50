/* state.h — published model states: how a replica joins, and how replicas check (and
 * heal) each other's integer state by digest (SPEC §7, README "Replication").
 *
 * A state is the model file with its integer state (the export bytes), the replication
 * position it holds (repl.h ts_repl_state_position: the stream sequence and every
 * origin's high-water mark) and a digest of the integer state. Each replica publishes its
 * states to subject <stream>.state.<model>.<hash of its id> of a second stream,
 * <stream>_STATE (no age limit: states must outlive the deltas retention cuts), split in
 * chunks below the server's max_payload; once all chunks are acknowledged, its older
 * states of that model are purged, so the stream holds about one state per replica and
 * model.
 *
 * When: every --replicate-state-interval seconds a control item of each model (between
 * jobs) copies the state, but only when it is consistent — no own step of the model
 * applied and not yet journaled (ts_served.uncommitted 0: such a step may still be taken
 * back) — and changed since the last one published (step, version or stream position).
 * The interval is bounded by a quarter of --replicate-max-age, so a newest state always
 * covers the deltas retention cuts. The control item copies only what must be consistent:
 * the integer state (a ts_model_view: what a snapshot's copy costs), step, version and
 * position. The model file and the digest are written from that view on the persistence
 * thread (tens of ms for a model of millions of weights must not stall serving); the view
 * shares the served model's immutable parts, which the engine keeps allocated until the
 * write is done even if a swap or DELETE replaces the model meanwhile
 * (ts_engine_model_hold).
 *
 * Join: at set-up (before the delta subscription) every state in the stream is read. For
 * each model whose position is unknown here — a new database: the --model/built-in demo
 * state never replicated, or a model this replica does not have at all — the state with
 * the highest stream position is loaded: stored as the publisher's version number with a
 * "join" snapshot (ts_store_put_joined), swapped in (or added), its position adopted. The
 * deltas are then consumed from the oldest position a served model covers. A model
 * without a published state consumes from the stream start; when retention has cut the
 * stream's start (first sequence beyond the model's position), it is marked diverged:
 * feedback for it is refused (503) until a published state arrives and is loaded.
 *
 * Digests: a replica keeps the newest state of each other replica and model. When its own
 * position of a model equals a kept state's (the same marks: every origin's steps are
 * applied as prefixes, so equal marks are equal sets of deltas; and the same last admin
 * message, admin_seq: a restore changes the state, not the marks) and no own step waits for
 * its journal commit, it compares digests (once per received state). The digests of the
 * states at that position vote, its own included; the most common wins, and a tie goes to
 * the digest of the replica whose id sorts first. A replica whose own digest loses logs
 * both positions and digests, counts the mismatch, and resyncs: it loads the winning
 * state's integers (same position, so nothing to replay), writes a "resync" snapshot and
 * publishes its healed state. With two replicas a corrupted one is therefore healed only
 * when its id sorts after the other's; with three or more, the majority decides.
 *
 * Threads: the publisher thread of repl.c calls ts_state_set_up and ts_state_publish; the
 * subscription's callback (libnats' thread) assembles chunks; the persistence thread
 * writes captured states; everything else is on the loop. Lists cross threads under a mutex, with one ts_wake.
 */
#ifndef TS_STATE_H
#define TS_STATE_H

#include <nats/nats.h>
#include <stdint.h>

#include "proto/buf.h"
#include "server/repl/repl.h"
#include "server/store/persist.h"

/* What published states need of the daemon, which sits above replication: the objects
 * they work with, three settings, the shutdown flag, and two snapshot hooks. The daemon
 * (daemon.c) wires snapshot.h into the hooks, so this module never includes the server
 * context or the snapshots. Who owns what: everything stays the wirer's; the pointers and
 * ctx must outlive the ts_state. Both hooks are required (not NULL) and are called on the
 * loop thread only, from a control item of model s (s idle) or from a persistence job's
 * completion (a model just added); ctx is passed to each as given. */
typedef struct {
    ts_repl *repl;                 /* replica id, stream name, positions, diverged models */
    ts_engine *engine;             /* models are found, swapped, added and held through it */
    ts_persist *persist;           /* writes captured states and stores loaded ones */
    int64_t replicas;              /* --replicate-replicas: when <stream>_STATE is created */
    int64_t ack_timeout_ms;        /* --replicate-ack-timeout-ms: each chunk's PubAck wait */
    int64_t snapshot_keep;         /* --snapshot-keep: applied when a loaded state is stored */
    const int *closing;            /* loop: non-zero once shutdown began (the tick queues no
                                      control item then, and a diverged model does not heal
                                      from a received state); read only */
    void *ctx;
    /* Take a snapshot of s now, for reason (store.h's reasons: "resync" here), after its
     * integer state was replaced in place; the result is the hook's business (logged and
     * shown like any snapshot). Only from a control item of s. */
    void (*snapshot_now)(void *ctx, ts_served *s, const char *reason);
    /* Record info (the "join" snapshot a loaded state was stored as: read during the call
     * only) as s's newest snapshot, right after the state became s's model. */
    void (*snapshot_note)(void *ctx, ts_served *s, const ts_snapshot_info *info);
} ts_state_config;

/* cfg is copied (its pointers and ctx must outlive the ts_state); interval_s: how often
 * states are published (> 0). NULL when out of memory. */
ts_state *ts_state_new(const ts_state_config *cfg, int64_t interval_s);
/* Only after ts_state_stop and the loop run that closes its handles (or never started). */
void ts_state_free(ts_state *st);
/* Loop: the timer and the wake-up handle. Before ts_repl_start. 0, or -1 + err. */
int ts_state_start(ts_state *st, uv_loop_t *loop, char *err, size_t errlen);
/* ts_repl_stop, once the connection is closed: drop the subscription (before libnats
 * shuts down). */
void ts_state_unsubscribe(ts_state *st);
/* Loop, after ts_repl_stop (its threads are joined): drop what is queued, close the
 * handles (run the loop once more). */
void ts_state_stop(ts_state *st);

/* Publisher thread: create <stream>_STATE when missing and subscribe to every state in it.
 * delta_first_seq is the delta stream's first sequence now (what retention left). The join
 * completes on the loop (ts_repl_join_done) once the states published before this call are
 * read and loaded. Repeated calls after a success do nothing. 0, or -1 + err. */
int ts_state_set_up(ts_state *st, jsCtx *js, uint64_t delta_first_seq, char *err, size_t errlen);
/* Any thread: a state waits for publishing. */
int ts_state_queued(ts_state *st);
/* Publisher thread: publish the oldest queued state (chunks of at most max_payload bytes
 * with their headers), then purge this replica's older states of that model. 0, or -1 +
 * err (the state stays queued unless a newer one of its model is). */
int ts_state_publish(ts_state *st, jsCtx *js, int64_t max_payload, char *err, size_t errlen);

/* Prometheus lines: states published and loaded, digest checks, mismatches, resyncs. */
void ts_state_render_metrics(ts_state *st, ts_buf *out);

#endif
