/* stats.c — per-model statistics (see stats.h). */
#include "server/engine/stats.h"

#include <jansson.h>
#include <time.h>

static void add(ts_stat *s, uint64_t us) {
    s->count++;
    s->ns += us * 1000u;
}

void ts_stats_note_job(ts_model_stats *st, int infer, int64_t rows) {
    if (!infer)
        return;
    struct timespec now;
    clock_gettime(CLOCK_REALTIME, &now);
    st->execution_count++;
    st->inference_count += (uint64_t)rows;
    st->last_inference_ms = (uint64_t)now.tv_sec * 1000u + (uint64_t)now.tv_nsec / 1000000u;
}

void ts_stats_note_request(ts_model_stats *st, int infer, int ok, uint64_t total_us,
                           uint64_t queue_us, uint64_t compute_us) {
    if (!infer) {
        add(ok ? &st->feedback : &st->feedback_fail, total_us);
        return;
    }
    add(ok ? &st->success : &st->fail, total_us);
    add(&st->queue, queue_us);
    add(&st->compute_infer, compute_us);
}

static json_t *stat_json(const ts_stat *s) {
    return json_pack("{s:I,s:I}", "count", (json_int_t)s->count, "ns", (json_int_t)s->ns);
}

void *ts_stats_json(const ts_model_stats *st, const char *name, const char *version) {
    static const ts_stat none;
    return json_pack("{s:s,s:s,s:I,s:I,s:I,s:{s:o,s:o,s:o,s:o,s:o,s:o},s:[],s:{s:o,s:o}}",
                     "name", name, "version", version,
                     "last_inference", (json_int_t)st->last_inference_ms,
                     "inference_count", (json_int_t)st->inference_count,
                     "execution_count", (json_int_t)st->execution_count,
                     "inference_stats", "success", stat_json(&st->success), "fail",
                     stat_json(&st->fail), "queue", stat_json(&st->queue), "compute_input",
                     stat_json(&none), "compute_infer", stat_json(&st->compute_infer),
                     "compute_output", stat_json(&none), "batch_stats",
                     "feedback_stats", "success", stat_json(&st->feedback), "fail",
                     stat_json(&st->feedback_fail));
}
