/* repl.h — replication through NATS JetStream (SPEC §7, --replicate): replicas that learn
 * from each other's feedback and converge to byte-identical state.
 *
 * Why it can be exact: a feedback step changes only integers (corr_accum -= score, step
 * += 1; core/model.h ts_model_apply_scores), and integer addition commutes. Replicas
 * exchange a step's integer scores — the journal's encoding of them — never floats, so
 * two replicas that have applied the same set of deltas hold the same bytes, whatever
 * order they came in.
 *
 * Publish: the journal is the source of truth for a replica's own steps. Once a step is
 * durable in the local journal, the engine hands it here with its journal seq. One
 * thread publishes the steps in seq order to subject <stream>.delta.<model>, with headers
 * Tscale-Origin (replica id), Tscale-Seq (journal seq), Tscale-Version, Tscale-Model and
 * Nats-Msg-Id "<origin>:<seq>" (JetStream drops a repeat within its duplicate window);
 * a step is retried until JetStream acknowledges it (at-least-once: consumers dedupe).
 * A step not acknowledged within --replicate-ack-timeout-ms is reported late (the engine
 * answers 503) and stays queued: it is acknowledged when NATS is back.
 *
 * Summing (--replicate-batch-ms W > 0): the publisher sums the scores of consecutive queued
 * steps of the same model and version into one message (int32 sums, journal.h's widened
 * encoding), at most --replicate-batch-max of them, with headers Tscale-Seq = the last
 * step's seq, Tscale-First-Seq = the first's, Tscale-Steps = how many (seqs are global
 * across models, so the count is not last - first + 1) and Nats-Msg-Id
 * "<origin>:<first>-<last>"; a message of one step keeps the single-step form above.
 * Steps that queue up while the previous message waits for its PubAck join the next one;
 * that group then waits for more only while it can still grow (not full, no other model's
 * or version's step queued behind it) and at most W ms after its first step was queued. A
 * step that reaches an idle publisher goes at once: a steady trickle pays no window (the
 * measurements are in README, "What replication costs"). Every step of a message is
 * answered when its PubAck comes.
 *
 * Why the consumers' high-water rule stays exact with sums. A consumer's mark for an
 * origin is the highest Tscale-Seq of that origin's messages it has consumed (or of the
 * stream prefix a snapshot covers); it skips a message whose last seq is <= the mark and
 * applies one whose first seq is above it. It could do neither — the message straddles
 * the mark, first <= mark < last — only if the origin published a message that overlaps
 * an earlier one without being a copy of it. The publisher never does:
 *   (1) one thread publishes in seq order and starts a message only at the head of its
 *       queue, i.e. after the last acknowledged step, once every earlier message is
 *       acknowledged;
 *   (2) a message whose publish failed (it may still have been stored: a PubAck lost in
 *       a reconnect) is retried with exactly the same steps, never regrouped, until it is
 *       acknowledged — a copy, which JetStream's duplicate window drops by Nats-Msg-Id or,
 *       past the window, the consumer skips (last <= mark);
 *   (3) after a restart the journal's steps above the acknowledged mark are published one
 *       per message: the dead process may have stored a group of them unacknowledged, and
 *       a single step can't straddle; new groups start after all of them are acknowledged.
 * So by induction over the origin's messages in stream order, every message is either a
 * copy of an earlier one (last <= mark) or starts after every earlier one ended (first >
 * mark). A straddling message would be a bug; it is skipped, logged and counted
 * (tscale_repl_deltas_skipped_total{reason="straddles"}). Messages without
 * Tscale-First-Seq (one step, and everything a replica before summing published) are
 * first = last, steps = 1.
 *
 * Consume: an ordered push consumer on <stream>.delta.> from the oldest stream position
 * any served model's state covers. Each message becomes a control item of its model's
 * FIFO (engine.h), so it is applied between jobs, never inside a batch or a step. A
 * message is skipped when the model's state covers its stream position already, when it
 * is this replica's own (applied locally before it was published), when its (origin,
 * seq) is at or below the origin's high-water mark, or when it is for another version of
 * the model (counted and logged).
 *
 * Position: per model, the stream sequence the state covers and each origin's high-water
 * mark (for this replica's own id: its highest step acknowledged by JetStream). It
 * changes only in control items, so a snapshot's state copy (also a control item) and its
 * position always agree; snapshots store it (snapshots.repl, ts_repl_position). At start
 * (ts_repl_recover) the newest snapshot's position is loaded; the local journal's steps
 * after it were replayed (recover.c; remote deltas are not journaled, so a replicated
 * journal has step gaps) and its own entries above the acknowledged mark are published
 * again; remote deltas after the position are consumed again.
 *
 * Published states (state.h): at set-up, before the delta subscription, the publisher
 * thread reads the published model states; the loop loads them for models whose position
 * is unknown (a join) and then calls ts_repl_join_done, which sets where consuming starts.
 * The publisher thread publishes queued states when no step waits.
 *
 * Admin everywhere: PUT (replace, or add a new name), restore (of a served or a deleted
 * model) and DELETE are published to the model's delta subject as an admin message (headers Tscale-Admin "import", "restore"
 * or "delete", Tscale-Admin-Id, Tscale-Chunk "i/n": a model file larger than max_payload
 * goes in chunks, assembled per origin) and take effect on every replica, the originating
 * one included, when consumed: a control item of the model's FIFO at the stream position
 * of the last chunk, like a delta (ts_repl_set_admin's hook does the swap or unload; the
 * originating replica answers its request then). So every replica replaces the state at
 * the same point of the delta sequence. An "import" or "restore" for a model a replica does
 * not serve adds it there (no FIFO to queue it in): its position starts at the message
 * (other origins' marks dropped, as on a replica that never served the name), then the hook
 * serves and stores it, so the deltas after it reach the new model's FIFO. One that arrives
 * while an earlier DELETE of the name is still queued in its FIFO or unloading waits, with
 * every later message of that model, until the model is gone (retried on each drain and
 * tick): a DELETE then an add ends the same everywhere. An add at or below a position still
 * held in memory (consumed again) is skipped.
 *
 * The rule for a replica's own steps around an admin message X (position p, stream seq
 * S): every replica applies the deltas before S to the old state and those after S to the
 * new one. A replica applies its own steps at once, before they are in the stream, so at
 * the moment it applies X, its own steps of the model fall in three groups:
 *   - consumed already (seq <= own_seen, the highest own step seen in the stream): before
 *     S everywhere, replaced by X everywhere — nothing to do;
 *   - journaled and not yet consumed (own_seen < seq <= journaled): after S in the stream
 *     (one publisher, in seq order), so the others apply them on top of X: this replica
 *     applies them again when they come (reapply_lo/hi);
 *   - applied and not yet journaled (waiting for their commit): they get a seq later and
 *     are published after S too; the engine sees that the model was swapped since the step
 *     was computed (ts_served.generation) and registers the seq (ts_repl_reapply).
 * Steps computed after X was applied are on the new state and are skipped when consumed,
 * as always. A summed message (Summing) is applied again or not as a whole, so it never
 * mixes the groups: the first step queued after X is published alone, and so is every
 * registered step. The journaled group is summed among itself only (it was queued before
 * X; a message judged by its last seq). Deltas of an older version are skipped everywhere alike (other_version), so
 * a replacement by another version makes the groups moot; a restore of the same version
 * needs them. The range and the registered seqs are stored with the position (snapshots)
 * so a restart keeps them.
 *
 * Threads: libnats runs its own (connection, the subscription's callback); a publisher
 * thread of this module owns the JetStream calls. Everything they produce reaches the
 * loop through mutex-guarded lists and one ts_wake (server/wake.h, like persist.c). All functions are
 * loop thread only unless said otherwise. With replication off the object only carries
 * each model's stored position forward into new snapshots.
 */
#ifndef TS_REPL_H
#define TS_REPL_H

#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#include "proto/buf.h"
#include "server/engine/engine.h"
#include "server/store/store.h"

struct ts_engine;
struct ts_served;
typedef struct ts_repl ts_repl;

typedef struct {
    const char *urls;            /* nats://h:p[,...]; NULL = replication off */
    const char *replica_id;      /* this replica's origin name (stable across restarts) */
    const char *token_file;      /* NULL, a token file, or a NATS .creds file */
    const char *stream;          /* stream name; subjects <stream>.delta.> */
    int64_t ack_timeout_ms;      /* a step is late after this */
    int64_t max_age_s;           /* stream retention, when this replica creates it */
    int64_t replicas;            /* stream replicas, when this replica creates it */
    int64_t batch_ms;            /* summing window (see "Summing"); 0 = one message per step */
    int64_t batch_max;           /* steps per summed message, 1 .. TS_REPL_BATCH_MAX */
} ts_repl_config;

/* The most steps one message sums: with scores in int16, 65536 of them sum within int32
 * (65536 · 32767 < 2^31 and 65536 · -32768 = -2^31), the widest payload encoding. */
#define TS_REPL_BATCH_MAX 65536

/* The strings are copied. NULL + err when out of memory or the token file is unreadable. */
ts_repl *ts_repl_new(const ts_repl_config *cfg, char *err, size_t errlen);
/* Only after ts_repl_stop and the loop run that closes its handles (or when never started). */
void ts_repl_free(ts_repl *r);
int ts_repl_enabled(const ts_repl *r);

/* Start-up, on the thread that owns st, after recovery (recover.h) and before
 * ts_repl_start: load each served model's position from its newest snapshot; when
 * replicating, queue its own journal entries above its acknowledged mark for publishing.
 * 0, or -1 + err (SQLite). */
int ts_repl_recover(ts_repl *r, ts_store *st, struct ts_engine *e, char *err, size_t errlen);

/* Replication on: connect in the background (NATS need not be up yet; it reconnects for
 * ever), create the stream if missing, subscribe, publish. 0, or -1 + err. */
int ts_repl_start(ts_repl *r, uv_loop_t *loop, struct ts_engine *e, char *err, size_t errlen);
/* Shutdown began: deltas consumed from now on are dropped, not queued (the position does
 * not move, so the next start consumes them again); the FIFOs can drain. */
void ts_repl_drain(ts_repl *r);
/* Close the connection, join the threads, and call every queued step's callback with
 * TS_STEP_GAVE_UP. Then run the loop once more to close the handles. No-op when off. */
void ts_repl_stop(ts_repl *r);

/* Whether new feedback can be accepted: connected, the stream is set up, and no queued
 * step is late. *why (when not NULL) says what is wrong; owned by r. Always 1 when off. */
int ts_repl_ready(const ts_repl *r, const char **why);

/* Queue the step of journal entry seq (the model's version, its scores[n]) for publishing;
 * cb (may be NULL) is told what becomes of it (ts_step_event, engine.h: the engine owns the
 * type, as it sits below and asks this of replication through ts_engine_repl; ACKED is
 * JetStream's acknowledgement). 0, or -1 when out of memory (nothing queued, cb not
 * called). Replication must be on. */
int ts_repl_publish(ts_repl *r, const char *model, int64_t version, int64_t seq, const int16_t *scores,
                    size_t n, ts_step_cb cb, void *arg);
/* Steps queued and not yet acknowledged. */
int64_t ts_repl_pending(const ts_repl *r);

/* The position of model's state now, as JSON for snapshots.repl (malloc'd; free it), or
 * NULL when it has none (never replicated) or when out of memory. */
char *ts_repl_position(ts_repl *r, const char *model);

/* ---- for published states (state.h; loop thread unless said otherwise) ---- */

typedef struct ts_state ts_state;
/* Published states and digests (state.h) run with this replication: before ts_repl_start.
 * st stays the caller's. */
void ts_repl_set_state(ts_repl *r, ts_state *st);
/* The position a state of model held now would be published with (JSON as
 * ts_repl_position, malloc'd), or NULL when replication is off or out of memory. Its mark
 * for this replica is its highest own step journaled (not only acknowledged): a state
 * copied while no own step waits for its journal commit holds exactly those steps, and
 * the ones not yet acknowledged reach the stream later, where their marks skip them. */
char *ts_repl_state_position(ts_repl *r, const char *model);
/* Whether model's position is known (stored in a snapshot or advanced since start). */
int ts_repl_position_known(ts_repl *r, const char *model);
/* Replace model's position by text (a published state's; its diverged mark is cleared).
 * 0, or -1 when text does not parse or out of memory. Only from a control item of model. */
int ts_repl_position_adopt(ts_repl *r, const char *model, const char *text);
/* Mark model diverged (why copied; NULL clears it): its feedback is refused (503, why)
 * until a published state is loaded. */
void ts_repl_set_diverged(ts_repl *r, const char *model, const char *why);
/* ts_repl_ready, and model not diverged. *why as there. */
int ts_repl_model_ready(const ts_repl *r, const char *model, const char **why);
/* The published states are loaded: consume the deltas from the oldest position a served
 * model covers now (the publisher thread waits for this before it subscribes). */
void ts_repl_join_done(ts_repl *r);
/* Wake the publisher thread (a state was queued). Any thread. */
void ts_repl_wake(ts_repl *r);
int64_t ts_repl_max_age(const ts_repl *r);

/* ---- admin everywhere (see the top comment) ---- */

/* Publish an admin message for model: what is "import" (PUT), "restore" or "delete";
 * version the version number the replicas serve after it; bytes[len] the model file with
 * its state (copied; none for "delete"). Its id (unique, for matching the hook's call) in
 * id[idlen]. 0, or -1 when out of memory. Replication must be on and ready. */
int ts_repl_publish_admin(ts_repl *r, const char *model, const char *what, int64_t version,
                          const uint8_t *bytes, size_t len, char *id, size_t idlen);
/* Apply an admin message: a control item of s (idle), its position advanced past it; s
 * NULL when the model is not served here: an add (bytes not NULL; its position is set
 * already) is served and stored by the hook, anything else (e.g. deleted by an earlier
 * message) has nothing to apply, but a request waiting for it is answered. Who owns what:
 * bytes, origin and id are r's, valid during the call. */
typedef void (*ts_repl_admin_fn)(void *arg, struct ts_served *s, const char *what, int64_t version,
                                 const uint8_t *bytes, size_t len, const char *origin, const char *id);
void ts_repl_set_admin(ts_repl *r, ts_repl_admin_fn fn, void *arg);
/* Own step seq of model was computed on a state an admin message has replaced since: it
 * is applied again when consumed (the engine, when the step's journal commit lands). */
void ts_repl_reapply(ts_repl *r, const char *model, int64_t seq);

/* For feedback forwarding (forward.h), which shares this replica's NATS connection: the
 * connection (NULL when off or not started; libnats' type, nats.h's natsConnection), the
 * replica id and the stream name (the prefix of the forwarding subjects). Owned by r. */
struct __natsConnection *ts_repl_connection(ts_repl *r);
const char *ts_repl_id(const ts_repl *r);
const char *ts_repl_stream(const ts_repl *r);

/* Prometheus lines (nothing when off): connected, published, applied by origin,
 * duplicates skipped, other-version deltas skipped, lag, publish failures. */
void ts_repl_render_metrics(ts_repl *r, ts_buf *out);

#endif
