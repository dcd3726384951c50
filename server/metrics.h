/* metrics.h — the daemon's counters and histograms, rendered as Prometheus text.
 *
 * Updated from the HTTP threads (requests they answer themselves), the loop and the
 * persistence thread, so every field is a relaxed atomic: a scrape may see one counter a
 * moment ahead of another, which Prometheus tolerates, and nobody ever waits on a lock.
 * Per-model gauges (step, last loss, queue depth) live with the models; the engine
 * renders them after ts_metrics_render.
 */
#ifndef TS_METRICS_H
#define TS_METRICS_H

#include <stdatomic.h>
#include <stdint.h>

#include "proto/buf.h"
#include "server/endpoint.h"

#define TS_HIST_BUCKETS 20

typedef struct {
    const double *bounds;           /* upper bounds, ascending, n_bounds of them */
    int n_bounds;
    double scale;                   /* observed value units per rendered unit (1e6: µs -> s) */
    _Atomic uint64_t buckets[TS_HIST_BUCKETS + 1]; /* non-cumulative; last = +Inf */
    _Atomic uint64_t count;
    _Atomic uint64_t sum;           /* in observed units */
} ts_hist;

/* Status codes counted individually; anything else is counted as "other". */
#define TS_METRIC_CODES 12

typedef enum { TS_KIND_INFER, TS_KIND_FEEDBACK, TS_KIND_COUNT } ts_work_kind;

typedef struct {
    _Atomic uint64_t requests[TS_EP_COUNT + 1][TS_METRIC_CODES]; /* [TS_EP_COUNT]: unroutable */
    ts_hist queue_us[TS_KIND_COUNT];    /* enqueued -> compute start */
    ts_hist compute_us[TS_KIND_COUNT];  /* compute job duration */
    ts_hist total_us[TS_KIND_COUNT];    /* request fully received -> response ready */
    ts_hist batch_rows;                 /* rows per inference forward */
    ts_hist snapshot_us;                /* snapshot write duration (persistence thread) */
    ts_hist snapshot_copy_us;           /* snapshot state copy: the loop's stall (SPEC §6) */
    _Atomic uint64_t batches;
    _Atomic uint64_t snapshots_ok, snapshots_failed;
    _Atomic uint64_t queue_full;        /* 503s because the queue was full */
} ts_metrics;

void ts_metrics_init(ts_metrics *m);
void ts_metrics_count_request(ts_metrics *m, ts_endpoint ep, int status);
void ts_hist_observe(ts_hist *h, uint64_t value);
/* Set up a histogram of latencies observed in µs (rendered in seconds, 50 µs .. 10 s), or
 * of counts (powers of two, 1 .. 65536), for modules that keep their own. */
void ts_hist_init_latency(ts_hist *h);
void ts_hist_init_counts(ts_hist *h);
/* Append the text exposition of everything in m. */
void ts_metrics_render(ts_metrics *m, ts_buf *out);
/* The HELP and TYPE lines of one metric family; its samples must follow at once (Prometheus
 * wants a family's lines together). */
void ts_metrics_family(ts_buf *out, const char *name, const char *type, const char *help);
/* One counter with its HELP and TYPE lines; one histogram family (HELP, TYPE, then the
 * histogram without labels). For modules that keep their own counters. */
void ts_metrics_render_counter(ts_buf *out, const char *name, const char *help, _Atomic uint64_t *v);
void ts_hist_render_family(ts_hist *h, const char *name, const char *help, ts_buf *out);
/* Render one histogram as NAME{labels} (labels may be "" or e.g. "kind=\"infer\""). */
void ts_hist_render(ts_hist *h, const char *name, const char *labels, ts_buf *out);

/* Monotonic microseconds, for latencies. */
uint64_t ts_now_us(void);
/* Unix time in milliseconds (wall clock: records that outlive the process). */
int64_t ts_wall_ms(void);

#endif
