/* stats.h — per-model statistics in the shape of Triton's statistics extension
 * (GET /v2/models/{m}/stats): cumulative counts and times, since the daemon started.
 *
 * Kept by the engine on the loop thread (after each compute job), read by the API on the
 * loop thread: no locking. Times are nanoseconds as in Triton's answer (measured in
 * microseconds here, so their last three digits are 0).
 */
#ifndef TS_STATS_H
#define TS_STATS_H

#include <stdint.h>

typedef struct {
    uint64_t count, ns;
} ts_stat;

typedef struct {
    uint64_t inference_count;   /* rows inferred (Triton counts each row of a batch) */
    uint64_t execution_count;   /* forward passes (batches) */
    uint64_t last_inference_ms; /* wall clock of the newest, ms since the epoch; 0 = none */
    ts_stat success, fail;      /* inference requests: from the body received to the answer */
    ts_stat queue;              /* inference requests: waiting for their batch */
    ts_stat compute_infer;      /* inference requests: their batch's forward */
    ts_stat feedback, feedback_fail;  /* feedback requests, as success/fail */
} ts_model_stats;

/* One finished compute job of n_rows rows (infer: 1 when a forward pass). */
void ts_stats_note_job(ts_model_stats *st, int infer, int64_t rows);
/* One of its requests: ok or not, microseconds from received to answered, in the queue
 * and in compute. */
void ts_stats_note_request(ts_model_stats *st, int infer, int ok, uint64_t total_us,
                           uint64_t queue_us, uint64_t compute_us);

/* {"name","version","last_inference","inference_count","execution_count","inference_stats":
 * {...},"batch_stats":[],"feedback_stats":{...}} as a jansson json_t *, or NULL. */
void *ts_stats_json(const ts_model_stats *st, const char *name, const char *version);

#endif
