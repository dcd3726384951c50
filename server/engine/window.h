/* window.h — the feedback window: the inputs of recent inferences, kept by inference id so
 * that a label that arrives later can be applied without the client sending the input again
 * (feedback by id, README "Feedback by inference id"; it extends SPEC §4).
 *
 * Why: in online learning the label comes seconds or hours after the prediction, often from
 * another process that no longer has the features. The daemon already had them.
 *
 * Bounds (memory strictly bounded, oldest dropped first):
 *   - max_rows per model (--feedback-window-rows): a model's oldest entries go first;
 *   - max_bytes for all models together (--feedback-window-bytes): an entry costs its input
 *     (rows × in_dim × 4 bytes) plus its id and bookkeeping, malloc's headers included
 *     (ts_window_entry_bytes), and the oldest entry of any model goes first; the hash table's
 *     buckets (at most 16 bytes per entry the window held at once: they never shrink) and the
 *     record of evicted ids (TS_WINDOW_GONE_MAX × 16 bytes) come on top;
 *   - max_age_ms (--feedback-window-seconds): an entry older than this is dropped.
 * Any bound 0 turns the window off: nothing is stored, every lookup misses.
 *
 * Lookups tell a never-seen id (404) from one that was here (410): the keys of the last
 * TS_WINDOW_GONE_MAX ids that left the window are remembered with why (expired, evicted by
 * a bound, already used by a feedback, too large to store). Older ones read as never seen.
 *
 * Ids the daemon makes (ts_window_make_id) are "<16 hex digits>-<counter>": the hex part is
 * random per daemon run (getrandom), so ids of two runs or two replicas do not collide and
 * an id names the run (replica) that holds its input.
 *
 * In memory only: a restart empties the window. Loop thread only.
 */
#ifndef TS_WINDOW_H
#define TS_WINDOW_H

#include <stddef.h>
#include <stdint.h>

#include "proto/buf.h"

/* Evicted ids remembered for a 410 (about 16 bytes each). */
#define TS_WINDOW_GONE_MAX 8192
/* Longest id ts_window_make_id writes, with its NUL. */
#define TS_WINDOW_ID_MAX 40

typedef struct ts_window ts_window;

typedef struct {
    int64_t max_rows;    /* per model; 0 = off */
    int64_t max_bytes;   /* all models; 0 = off */
    int64_t max_age_ms;  /* 0 = off */
} ts_window_limits;

/* NULL when out of memory. */
ts_window *ts_window_new(const ts_window_limits *lim);
void ts_window_free(ts_window *w);
/* Stores anything at all (every bound > 0). */
int ts_window_enabled(const ts_window *w);

/* A fresh id for an inference that came without one (see above). */
void ts_window_make_id(ts_window *w, char out[TS_WINDOW_ID_MAX]);

/* Whether id has the form ts_window_make_id gives ("<16 hex>-<counter>"); when it has,
 * out receives its 16 hex digits, the run (replica) that made it (feedback forwarding,
 * server/repl/forward.h, asks that replica only). 1 or 0. */
int ts_window_id_prefix(const char *id, char out[17]);
/* This run's 16 hex digits (the prefix of every id it makes). */
void ts_window_prefix(const ts_window *w, char out[17]);

/* What one entry of rows × in_dim floats with this id costs against max_bytes. */
size_t ts_window_entry_bytes(const char *id, int64_t rows, int64_t in_dim);

/* Keep a copy of x[rows][in_dim] — the input of inference `id` of `model`, whose output
 * had out_dim columns — at now_ms (monotonic). An entry with the same (model, id) is
 * replaced: the newest inference owns the id. Older entries are dropped to make room. An
 * input larger than a bound on its own is not stored (its id reads as gone, "too large").
 * 0 stored, 1 not stored (window off or too large), -1 out of memory (nothing stored). */
int ts_window_put(ts_window *w, const char *model, const char *id, const float *x, int64_t rows,
                  int64_t in_dim, int64_t out_dim, int64_t now_ms);

typedef enum { TS_WINDOW_HIT, TS_WINDOW_MISS, TS_WINDOW_GONE, TS_WINDOW_BUSY } ts_window_found;
typedef enum { TS_GONE_EXPIRED, TS_GONE_EVICTED, TS_GONE_USED, TS_GONE_TOO_LARGE } ts_window_gone;

/* Names one taken entry for ts_window_settle (serial 0: none). */
typedef struct {
    uint64_t key, serial;
} ts_window_ticket;

/* An entry as found. x is owned by the window and valid until the next call into it. */
typedef struct {
    const float *x;              /* [rows][in_dim] */
    int64_t rows, in_dim, out_dim;
    ts_window_ticket ticket;
    ts_window_gone why;          /* TS_WINDOW_GONE: why it left */
} ts_window_view;

/* Find (model, id) at now_ms and mark it in use:
 *   TS_WINDOW_HIT   *v is the entry; it is in use until ts_window_settle(v->ticket);
 *   TS_WINDOW_BUSY  a feedback on it is already running (not settled yet);
 *   TS_WINDOW_GONE  it was here; v->why says why it left;
 *   TS_WINDOW_MISS  never seen (or gone longer ago than the record reaches).
 * An entry in use can still be dropped by a bound, replaced or forgotten: the caller copies
 * the rows it needs before its next call into the window. */
ts_window_found ts_window_take(ts_window *w, const char *model, const char *id, int64_t now_ms,
                               ts_window_view *v);
/* Whether (model, id) is here or was (a lookup would not be TS_WINDOW_MISS); nothing is
 * taken or counted. Forwarding asks it before claiming a broadcast request. */
int ts_window_knows(ts_window *w, const char *model, const char *id, int64_t now_ms);
/* The feedback on the entry of ticket t is over: used = 1 — it was applied; the entry leaves
 * the window and its id reads as gone ("used") —, used = 0 — it was not; the entry can be
 * taken again. Nothing happens when the entry left meanwhile. */
void ts_window_settle(ts_window *w, ts_window_ticket t, int used);

/* Drop every entry of model (it was unloaded); their ids read as never seen. */
void ts_window_forget(ts_window *w, const char *model);
/* Drop the entries older than the age bound. */
void ts_window_expire(ts_window *w, int64_t now_ms);

/* Prometheus lines: entries, rows, bytes, hits, misses, gone, evictions by cause. */
void ts_window_render_metrics(ts_window *w, ts_buf *out);

/* Counters, for tests. */
typedef struct {
    int64_t entries, rows;
    size_t bytes;
    uint64_t hits, misses, gone, stored, not_stored;
    uint64_t evicted_rows, evicted_bytes, expired;
} ts_window_stats;
void ts_window_get_stats(const ts_window *w, ts_window_stats *st);

#endif
