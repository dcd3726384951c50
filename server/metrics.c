/* metrics.c — Prometheus text exposition of the daemon's counters (see metrics.h). */
#include "server/metrics.h"

#include <stdio.h>
#include <string.h>
#include <time.h>

static const int codes[TS_METRIC_CODES] = {200, 201, 400, 401, 403, 404, 405, 413, 500, 503, 504, 0};

/* Latencies in µs, rendered in seconds: 50µs .. 10s. */
static const double latency_bounds[] = {50e-6, 100e-6, 250e-6, 500e-6, 1e-3, 2.5e-3, 5e-3, 10e-3,
                                        25e-3, 50e-3, 100e-3, 250e-3, 500e-3, 1, 2.5, 5, 10};
/* Rows per forward: powers of two. */
static const double batch_bounds[] = {1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 4096, 16384, 65536};

static void hist_init(ts_hist *h, const double *bounds, int n, double scale) {
    memset(h, 0, sizeof *h);
    h->bounds = bounds;
    h->n_bounds = n;
    h->scale = scale;
}

#define NB(a) ((int)(sizeof a / sizeof a[0]))

void ts_hist_init_latency(ts_hist *h) { hist_init(h, latency_bounds, NB(latency_bounds), 1e6); }
void ts_hist_init_counts(ts_hist *h) { hist_init(h, batch_bounds, NB(batch_bounds), 1); }

void ts_metrics_init(ts_metrics *m) {
    memset(m, 0, sizeof *m);
    for (int k = 0; k < TS_KIND_COUNT; k++) {
        hist_init(&m->queue_us[k], latency_bounds, NB(latency_bounds), 1e6);
        hist_init(&m->compute_us[k], latency_bounds, NB(latency_bounds), 1e6);
        hist_init(&m->total_us[k], latency_bounds, NB(latency_bounds), 1e6);
    }
    hist_init(&m->batch_rows, batch_bounds, NB(batch_bounds), 1);
    hist_init(&m->snapshot_us, latency_bounds, NB(latency_bounds), 1e6);
    hist_init(&m->snapshot_copy_us, latency_bounds, NB(latency_bounds), 1e6);
}

void ts_metrics_count_request(ts_metrics *m, ts_endpoint ep, int status) {
    if (ep < 0 || ep >= TS_EP_COUNT)
        ep = TS_EP_COUNT; /* unknown paths and methods: endpoint="unknown" */
    int slot = TS_METRIC_CODES - 1;
    for (int i = 0; i < TS_METRIC_CODES - 1; i++)
        if (codes[i] == status)
            slot = i;
    atomic_fetch_add_explicit(&m->requests[ep][slot], 1, memory_order_relaxed);
}

void ts_hist_observe(ts_hist *h, uint64_t value) {
    int i = 0;
    double v = (double)value / h->scale;
    while (i < h->n_bounds && v > h->bounds[i])
        i++;
    atomic_fetch_add_explicit(&h->buckets[i], 1, memory_order_relaxed);
    atomic_fetch_add_explicit(&h->count, 1, memory_order_relaxed);
    atomic_fetch_add_explicit(&h->sum, value, memory_order_relaxed);
}

void ts_hist_render(ts_hist *h, const char *name, const char *labels, ts_buf *out) {
    uint64_t cum = 0;
    const char *sep = labels[0] ? "," : "";
    for (int i = 0; i <= h->n_bounds; i++) {
        cum += atomic_load_explicit(&h->buckets[i], memory_order_relaxed);
        if (i < h->n_bounds)
            ts_buf_printf(out, "%s_bucket{%s%sle=\"%g\"} %llu\n", name, labels, sep, h->bounds[i],
                          (unsigned long long)cum);
        else
            ts_buf_printf(out, "%s_bucket{%s%sle=\"+Inf\"} %llu\n", name, labels, sep,
                          (unsigned long long)cum);
    }
    const char *open = labels[0] ? "{" : "", *close = labels[0] ? "}" : "";
    ts_buf_printf(out, "%s_sum%s%s%s %.6f\n", name, open, labels, close,
                  (double)atomic_load_explicit(&h->sum, memory_order_relaxed) / h->scale);
    ts_buf_printf(out, "%s_count%s%s%s %llu\n", name, open, labels, close,
                  (unsigned long long)atomic_load_explicit(&h->count, memory_order_relaxed));
}

void ts_metrics_family(ts_buf *out, const char *name, const char *type, const char *help) {
    ts_buf_printf(out, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
}

static void render_kind_hist(ts_hist *hs, const char *name, const char *help, ts_buf *out) {
    static const char *const kinds[TS_KIND_COUNT] = {"infer", "feedback"};
    ts_metrics_family(out, name, "histogram", help);
    for (int k = 0; k < TS_KIND_COUNT; k++) {
        char labels[32];
        snprintf(labels, sizeof labels, "kind=\"%s\"", kinds[k]);
        ts_hist_render(&hs[k], name, labels, out);
    }
}

void ts_metrics_render_counter(ts_buf *out, const char *name, const char *help, _Atomic uint64_t *v) {
    ts_metrics_family(out, name, "counter", help);
    ts_buf_printf(out, "%s %llu\n", name, (unsigned long long)atomic_load_explicit(v, memory_order_relaxed));
}

void ts_hist_render_family(ts_hist *h, const char *name, const char *help, ts_buf *out) {
    ts_metrics_family(out, name, "histogram", help);
    ts_hist_render(h, name, "", out);
}

void ts_metrics_render(ts_metrics *m, ts_buf *out) {
    ts_buf_printf(out, "# HELP tscale_requests_total HTTP requests answered, by endpoint and status.\n"
                       "# TYPE tscale_requests_total counter\n");
    for (int e = 0; e <= TS_EP_COUNT; e++)
        for (int c = 0; c < TS_METRIC_CODES; c++) {
            uint64_t v = atomic_load_explicit(&m->requests[e][c], memory_order_relaxed);
            if (!v)
                continue;
            char code[8];
            if (codes[c])
                snprintf(code, sizeof code, "%d", codes[c]);
            else
                snprintf(code, sizeof code, "other");
            ts_buf_printf(out, "tscale_requests_total{endpoint=\"%s\",code=\"%s\"} %llu\n",
                          ts_endpoint_name((ts_endpoint)e), code, (unsigned long long)v);
        }
    render_kind_hist(m->queue_us, "tscale_queue_seconds",
                     "Time from a request entering its model's queue to its compute starting.", out);
    render_kind_hist(m->compute_us, "tscale_compute_seconds",
                     "Duration of compute jobs (one forward batch or one feedback step).", out);
    render_kind_hist(m->total_us, "tscale_request_seconds",
                     "Time from a request fully received to its response ready.", out);
    ts_buf_printf(out, "# HELP tscale_batch_rows Rows per inference forward (dynamic batching).\n"
                       "# TYPE tscale_batch_rows histogram\n");
    ts_hist_render(&m->batch_rows, "tscale_batch_rows", "", out);
    ts_metrics_render_counter(out, "tscale_batches_total", "Inference forwards run.", &m->batches);
    ts_metrics_render_counter(out, "tscale_queue_full_total", "Requests refused (503) because the queue was full.",
                   &m->queue_full);
    ts_metrics_render_counter(out, "tscale_snapshots_total", "Snapshots written.", &m->snapshots_ok);
    ts_metrics_render_counter(out, "tscale_snapshot_failures_total", "Snapshot writes that failed.",
                   &m->snapshots_failed);
    ts_hist_render_family(&m->snapshot_us, "tscale_snapshot_seconds", "Snapshot write duration.", out);
    ts_buf_printf(out, "# HELP tscale_snapshot_copy_seconds Snapshot state copy on the serving loop "
                       "(serving of the model waits for it).\n"
                       "# TYPE tscale_snapshot_copy_seconds histogram\n");
    ts_hist_render(&m->snapshot_copy_us, "tscale_snapshot_copy_seconds", "", out);
}

uint64_t ts_now_us(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000u + (uint64_t)ts.tv_nsec / 1000u;
}

int64_t ts_wall_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}
