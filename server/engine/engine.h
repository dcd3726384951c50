/* engine.h — the served models and their work: per-model FIFO, dynamic batching, and the
 * compute lane. Loop thread only, except where a comment says otherwise.
 *
 * Design (why): a model's state changes only in feedback steps, restores and replaces,
 * and SPEC §1 wants each step atomic with respect to inference batches and steps applied
 * in arrival order. The simplest design that is obviously correct: every model has one
 * FIFO of items (inference, feedback, export, and "control" items such as a state copy
 * for a snapshot or a model swap), and at most one compute job runs at a time. A job is
 * either one feedback step, or one export, or a batch of consecutive inference items from
 * the head of a FIFO; control items run on the loop when they reach the head and nothing
 * computes. So a batch never overlaps a step, steps run in arrival order, and a snapshot
 * or restore happens exactly between two jobs.
 *
 * One compute lane for all models (not one per model): the compute job gets the whole
 * ts_pool (--threads) for intra-op parallelism, and a pool runs one job at a time. With
 * several models, the lane serves them round-robin. Jobs run on libuv's thread pool
 * (uv_queue_work), so the loop stays free to accept, batch and answer meanwhile.
 *
 * Dynamic batching (Triton's rule): a forward starts when the inference rows at the head
 * of a FIFO reach --max-batch, or the oldest of them has waited --max-queue-delay-us, or
 * a non-inference item follows them (later rows could not join anyway), or the daemon is
 * draining. A request with more rows than --max-batch runs alone. Rows are independent in
 * the forward, so a request's output does not depend on what it was batched with. The
 * delay is timed with a timerfd (libuv's timers have millisecond resolution; the default
 * delay is 500 µs).
 *
 * The delay is the longest a request waits (SPEC §3), not a fixed wait: when the HTTP
 * threads hold no inference request that is still being received or parsed, nothing can
 * join the batch in time, so it starts at once (--eager-batching, default on). Under load the lane is busy and rows pile
 * up behind it anyway; when idle, a lone request does not pay the delay for nothing.
 * Requests handed over together are queued before the engine looks (ts_engine_hold).
 *
 * Small jobs run on the compute thread alone: waking the pool's helpers costs more than
 * splitting a few microseconds of work saves, and on a busy machine idle helpers spinning
 * for the next job steal the CPU the HTTP threads need. Tiny jobs (≤ 2^16 weight·rows, a
 * feedback step counted as three forwards: a few µs, the demo model's batches and steps) run
 * on the loop itself: the two hand-offs to a compute thread and back cost more than the
 * compute (perf: 1.65 -> 0.78 context switches per batch-1 request under wrk,
 * bench/README.md; demo feedback under wrk -c16: daemon CPU per step 83-97 -> 48-57 µs).
 * They are still jobs of the one lane, between the same FIFO boundaries, so nothing above
 * changes.
 */
#ifndef TS_ENGINE_H
#define TS_ENGINE_H

#include <stdint.h>
#include <uv.h>

#include "core/model.h"
#include "core/pool.h"
#include "proto/buf.h"
#include "proto/oip.h"
#include "proto/safetensors.h"
#include "server/http/http.h"
#include "server/engine/idem.h"
#include "server/store/journal.h"
#include "server/metrics.h"
#include "server/engine/stats.h"
#include "server/store/store.h"
#include "server/engine/window.h"

typedef struct ts_engine ts_engine;
typedef struct ts_item ts_item;

/* One served model. The engine owns the struct; other modules read it and update the
 * snapshot fields (snapshot.c). */
typedef struct ts_served {
    char name[TS_MODEL_NAME_MAX];
    ts_model *model;            /* the compute job uses it while busy; the loop otherwise */
    int64_t version;
    char version_str[24];
    int unloading;              /* DELETE accepted: looked-up as absent, takes no new work */
    int removed;                /* ts_engine_remove is dropping s: a control item still queued
                                   runs once more only to let go of its arg (ts_engine_control) */
    /* queue */
    ts_item *head, *tail;
    int64_t queued_rows, queued_items;
    int busy;                   /* a compute job on this model is running */
    uint64_t generation;        /* bumped by every swap (ts_engine_swap): a step taken back
                                   after a failed journal commit must be of this model */
    struct ts_undo *undo;       /* steps to take back once the running job is done */
    int64_t uncommitted;        /* own steps applied and not yet journaled (they may still be
                                   taken back): a published state must not hold them (state.h) */
    int64_t step;               /* ts_model_step, refreshed on the loop between jobs (so the
                                   loop never reads state a running step is writing) */
    /* snapshots (snapshot.c) */
    int64_t snap_step, snap_version;  /* state of the newest snapshot written (-1: none) */
    ts_snapshot_info newest;    /* newest snapshot (snapshot_id 0: none known) */
    int snapshot_queued;        /* a timer/shutdown snapshot is waiting or being written */
    int snapshot_failing;       /* the last snapshot write failed */
    char snapshot_error[512];
    uint64_t snapshot_failures;
    /* metrics */
    uint64_t feedback_steps;
    double last_loss;           /* NAN until a feedback step computed one */
    ts_model_stats stats;       /* GET /v2/models/{m}/stats (stats.h) */
    struct ts_served *next;
} ts_served;

/* ---- what the engine asks of replication ----
 *
 * Replication (server/repl/) sits above the engine: it queues control items, finds models
 * and applies deltas through this header. So the engine never includes it; it declares here
 * the little it asks of replication, and whoever sits above wires the real functions in
 * (daemon.c: repl.h's and forward.h's, which take these types as they are). Every hook is
 * called by the engine on the loop thread and calls back on the loop; ctx is the wirer's,
 * passed to every hook, and must outlive the engine. A NULL hook means replication is off
 * (a zeroed struct: no replication, as in the unit tests). */

/* What became of a journaled step handed to publish. */
typedef enum {
    TS_STEP_ACKED,    /* the replicas' log (JetStream) acknowledged it: the last call */
    TS_STEP_LATE,     /* not acknowledged within the timeout; still queued: ACKED or GAVE_UP follows */
    TS_STEP_GAVE_UP,  /* shutting down before an acknowledgement: the last call (the step is in
                         the journal and is published again at the next start) */
} ts_step_event;
/* Who owns what: arg stays the caller's (the engine's); the callback runs on the loop. */
typedef void (*ts_step_cb)(void *arg, ts_step_event ev);

/* The answer to a by-id feedback asked of another replica, on the loop, exactly once: the
 * HTTP status, the JSON body (NUL-terminated) and, when status is not 200, the error text of
 * the body (for requests parked behind this one); replica: the id of the replica that
 * answered, or NULL when none did (404 nobody holds it, 504, 503). Who owns what: body, msg
 * and replica are valid during the call only; arg stays the caller's (the engine's). */
typedef void (*ts_byid_cb)(void *arg, int status, const char *body, size_t len, const char *msg,
                           const char *replica);

typedef struct {
    void *ctx;
    /* Replication is on: a journaled step is published (publish) before it is answered. */
    int (*enabled)(void *ctx);
    /* Feedback for model can be accepted now; when not, *why says why (owned by ctx's side,
     * valid until the loop runs again). NULL hook: always. */
    int (*model_ready)(void *ctx, const char *model, const char **why);
    /* Queue the step of journal entry seq (model's version, its scores[n]: read during the
     * call only) for publishing, once it is durable in the journal; cb is told what becomes
     * of it. 0, or -1 when out of memory (nothing queued, cb not called). Only when on. */
    int (*publish)(void *ctx, const char *model, int64_t version, int64_t seq, const int16_t *scores,
                   size_t n, ts_step_cb cb, void *arg);
    /* Own step seq of model was computed on a state since replaced by a swap: it is to be
     * applied again when it comes back from the replicas. Only when on. */
    void (*reapply)(void *ctx, const char *model, int64_t seq);
    /* Ask the other replicas to apply by-id feedback oip whose inference this replica never
     * held (the path named model and version, "" for none; oip is read during the call only).
     * 0 when sent (cb follows); -1 when it is not forwarded (off, or the id was made by this
     * run: the local 404 stands); or an HTTP status (413, 503) with err. NULL hook: -1. */
    int (*ask)(void *ctx, const char *model, const char *version, const ts_oip_request *oip,
               ts_byid_cb cb, void *arg, char *err, size_t errlen);
} ts_engine_repl;

typedef struct {
    int64_t max_batch, max_queue_delay_us, max_rows, max_queue_rows, max_queue_bytes;
    int64_t max_response_bytes;   /* an inference answer's bound (413 before computing) */
    int feedback_requires_snapshot;
    ts_pool *pool;
    ts_metrics *metrics;
    const _Atomic int *arriving;  /* inference requests the HTTP threads are still reading or
                                     parsing (NULL: always wait the full delay) */
    ts_journal *journal;          /* a step is answered once its entry is durable */
    ts_idem *idem;                /* exactly-once feedback by OIP id (NULL: ids not tracked) */
    ts_window *window;            /* inputs of recent inferences, for feedback by id (required;
                                     bounds 0: the window keeps nothing) */
    ts_engine_repl repl;          /* replication (zeroed or off: none); when on, a step is
                                     answered once journaled and acknowledged by JetStream, and
                                     feedback by id for an inference this replica does not hold
                                     is asked of the replica that does (else 404 here) */
} ts_engine_config;

ts_engine *ts_engine_new(uv_loop_t *loop, const ts_engine_config *cfg, char *err, size_t errlen);
/* Close the engine's handles (run the loop afterwards to finish) and free every model.
 * Only when ts_engine_idle(). */
void ts_engine_free(ts_engine *e);

/* Serve m as name (takes ownership). NULL on allocation failure (m is then freed). */
ts_served *ts_engine_add(ts_engine *e, const char *name, ts_model *m, int64_t version);
/* Serve m (taken over) as s's model from now on: only from a control item (s idle). The
 * old model is freed; queued requests that no longer fit are answered 409. */
void ts_engine_swap(ts_engine *e, ts_served *s, ts_model *m, int64_t version);
/* Stop serving s now and free it (its queue must be empty and it must not be busy). */
void ts_engine_remove(ts_engine *e, ts_served *s);
/* Keep model m (a served one: s->model) allocated until the matching release, even when a
 * swap or a removal replaces or drops it meanwhile (it is then freed by the last release):
 * for work off the loop that reads its immutable parts (state.c writes a published state
 * from a ts_model_view of it on the persistence thread). Loop only; holds nest. 0, or -1
 * when out of memory (then not held). */
int ts_engine_model_hold(ts_engine *e, ts_model *m);
void ts_engine_model_release(ts_engine *e, ts_model *m);
/* The served model of that name; unloading ones are absent unless include_unloading. */
ts_served *ts_engine_find(ts_engine *e, const char *name, int include_unloading);
ts_served *ts_engine_first(ts_engine *e);
int ts_engine_count(ts_engine *e);

/* Validate and queue an inference / a feedback step; answers the request (now when it
 * is refused, after the compute otherwise). The caller has checked the path's version
 * and that the body parsed (api.c). An inference without an OIP id gets one
 * (ts_window_make_id) and its answer carries it; its input goes into the feedback window
 * when it is answered. A feedback without an 'input' tensor is feedback by id: the
 * stored input of inference `id` (all its rows, or parameters.rows), answered 404 when the
 * id was never in the window, 410 when it left it (README "Feedback by inference id"); with
 * replication, an id never in this replica's window is asked of the others (forward.h) and
 * their answer is this request's. */
void ts_engine_infer(ts_engine *e, ts_served *s, ts_req *req);
void ts_engine_feedback(ts_engine *e, ts_served *s, ts_req *req);
/* Queue an export (the model file of the state at that point in the FIFO). */
void ts_engine_export(ts_engine *e, ts_served *s, ts_req *req);

/* Queue fn to run on the loop when this item reaches the head of s's FIFO and s is idle
 * (no compute job): the place for state copies and swaps. 0, or -1 on allocation failure.
 * fn runs exactly once. When s is removed first (ts_engine_remove: unloaded, or the engine
 * freed), fn runs from there with s->removed set: s's fields are still readable, but fn must
 * only release arg and answer whatever request it holds (its model is about to go). */
typedef void (*ts_control_fn)(ts_engine *e, ts_served *s, void *arg);
int ts_engine_control(ts_engine *e, ts_served *s, ts_control_fn fn, void *arg);

/* Hold scheduling while a group of requests is queued, then look once (release). */
void ts_engine_hold(ts_engine *e);
void ts_engine_release(ts_engine *e);

/* Draining: every queued partial batch starts without waiting (shutdown). */
void ts_engine_drain(ts_engine *e);
/* No item queued on any model and no compute job running. */
int ts_engine_idle(ts_engine *e);

/* Per-model Prometheus lines (step, feedback steps, last loss, queue depth, snapshots). */
void ts_engine_render_metrics(ts_engine *e, ts_buf *out);

#endif
