/* journal.c — the feedback journal: encoding, group commit, failure, replay (see journal.h). */
#include "server/store/journal.h"

#include <stdatomic.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "server/hash.h"
#include "server/log.h"

/* Payload encodings: the first byte's low bits are the width in bytes of every value that
 * follows (little-endian two's complement). The journal writes INT8 or INT16 (a step's
 * scores); a sum of several steps (replication, ts_journal_encode_sum) sets ENC_SUM too, so
 * a replica from before sums, whose decoder knows only 1 and 2, refuses it as malformed
 * (logged, counted) instead of applying a sum of steps as one step. */
enum { ENC_INT8 = 1, ENC_INT16 = 2, ENC_INT32 = 4, ENC_SUM = 0x10 };

struct ts_journal {
    int enabled;
    int64_t id_window_ms;
    ts_persist *persist;
    int64_t last_seq;             /* loop */
    int64_t outstanding;          /* loop: appended, callback not yet run */
    int failing;                  /* loop: a commit failed; see journal.h */
    char failing_why[512];
    _Atomic int broken;           /* persistence thread sets it on a failed commit, so the
                                     groups behind it are not written; the loop clears it */
    ts_journal_row rows[TS_PERSIST_GROUP_MAX]; /* persistence thread: one group's rows */
    /* metrics (persistence thread writes, scrapes read) */
    _Atomic uint64_t entries, bytes, commits, failures, replayed;
    ts_hist commit_us, group_size;
    int64_t expired_ms;           /* persistence thread: when ids were last expired */
    _Atomic int64_t ids_floor_ms; /* loop sets (ts_journal_step), the thread reads */
    /* loop: payload buffers of finished entries, kept for the next ones. A big model's
     * payload (262 KB for a mid model) is above malloc's mmap threshold (server/memory.c),
     * so a fresh one cost an mmap, 64 page faults with zeroing and an munmap with a TLB
     * shootdown every step: 10 % of the loop's time in perf. At most SPARE_MAX are kept,
     * each no bigger than SPARE_BYTES_MAX. */
    uint8_t *spare[4];
    size_t spare_cap[4];
};
enum { SPARE_MAX = 4 };
#define SPARE_BYTES_MAX ((size_t)16 << 20)

typedef struct {
    ts_persist_job job;
    ts_journal *j;
    ts_journal_row row;           /* its strings and payload are owned by the entry */
    size_t payload_cap;           /* row.payload's allocated size (payload_take) */
    ts_journal_cb cb;
    void *arg;
    int rc;                       /* persistence thread: 0 written, -1 failed */
    char err[384];
} entry;

/* ---- encoding ---- */

/* Value i of a step (s16) or a sum (s32). */
static inline int32_t value_at(const int16_t *s16, const int32_t *s32, size_t i) {
    return s16 ? s16[i] : s32[i];
}

/* Store s16[0..n) as int8 in o; 1 when some value did not fit (o is then to be rewritten).
 * The inner loop has a fixed count and restrict pointers, so -O2 vectorizes it (gcc's
 * cheap cost model takes no loop it would have to version): 171 -> 44 µs for a mid
 * model's 262,144 scores, on the loop between one step and the next. */
static unsigned narrow_int8(const int16_t *restrict s16, size_t n, uint8_t *restrict o) {
    enum { BLOCK = 64 };
    unsigned wide = 0;
    size_t i = 0;
    for (; i + BLOCK <= n; i += BLOCK)
        for (size_t k = i; k < i + BLOCK; k++) {
            o[k] = (uint8_t)s16[k];
            wide |= (unsigned)(uint16_t)(s16[k] + 128) > 255u;
        }
    for (; i < n; i++) {
        o[i] = (uint8_t)s16[i];
        wide |= (unsigned)(uint16_t)(s16[i] + 128) > 255u;
    }
    return wide;
}

/* The narrowest encoding of n values, read from s16 when it is not NULL (a step), else
 * from s32 (a sum: tagged ENC_SUM); one body for both. A step is tried as int8 in one
 * pass (nearly always right: scores fit int8 for group sizes up to 127), which matters on
 * the loop: a mid model's step has 262,144 values (0.3 ms with a min/max pass first). */
static size_t encode_values(const int16_t *s16, const int32_t *s32, size_t n, uint8_t *out) {
    uint8_t *o = out + 1;
    int w = ENC_INT8;
    if (s16) {
        w = narrow_int8(s16, n, o) ? ENC_INT16 : ENC_INT8;
    } else {
        int32_t lo = 0, hi = 0;
        for (size_t i = 0; i < n; i++) {
            lo = s32[i] < lo ? s32[i] : lo;
            hi = s32[i] > hi ? s32[i] : hi;
        }
        w = lo >= INT8_MIN && hi <= INT8_MAX ? ENC_INT8 : lo >= INT16_MIN && hi <= INT16_MAX ? ENC_INT16 : ENC_INT32;
    }
    out[0] = (uint8_t)(s16 ? w : w | ENC_SUM);
    if (w == ENC_INT8 && !s16) {
        for (size_t i = 0; i < n; i++)
            o[i] = (uint8_t)s32[i];
    } else if (w == ENC_INT16) {
        for (size_t i = 0; i < n; i++) {
            uint16_t v = (uint16_t)value_at(s16, s32, i);
            o[2 * i] = (uint8_t)v;
            o[2 * i + 1] = (uint8_t)(v >> 8);
        }
    } else if (w == ENC_INT32) {
        for (size_t i = 0; i < n; i++) {
            uint32_t v = (uint32_t)s32[i];
            for (int b = 0; b < 4; b++)
                o[4 * i + (size_t)b] = (uint8_t)(v >> (8 * b));
        }
    }
    return 1 + (size_t)w * n;
}

/* Value i of the payload body o at width w, sign-extended. */
static inline int32_t value_read(const uint8_t *o, int w, size_t i) {
    if (w == ENC_INT8)
        return (int8_t)o[i];
    if (w == ENC_INT16)
        return (int16_t)(uint16_t)(o[2 * i] | o[2 * i + 1] << 8);
    return (int32_t)((uint32_t)o[4 * i] | (uint32_t)o[4 * i + 1] << 8 | (uint32_t)o[4 * i + 2] << 16 |
                     (uint32_t)o[4 * i + 3] << 24);
}

/* Decode into s16 (when not NULL: a step, INT8 or INT16) or s32 (a step or a sum, any
 * width). 0, or -1 when the tag is unknown or not for this output, or the length is not
 * 1 + width·n. */
static int decode_values(const uint8_t *p, size_t len, int16_t *s16, int32_t *s32, size_t n) {
    int tag = len ? p[0] : 0, w = tag & ~ENC_SUM;
    if ((s16 && tag != ENC_INT8 && tag != ENC_INT16) || (w != ENC_INT8 && w != ENC_INT16 && w != ENC_INT32) ||
        (w == ENC_INT32 && tag != (ENC_INT32 | ENC_SUM)) || len != 1 + (size_t)w * n)
        return -1;
    const uint8_t *o = p + 1;
    if (s16) {
        for (size_t i = 0; i < n; i++)
            s16[i] = (int16_t)value_read(o, w, i);
    } else {
        for (size_t i = 0; i < n; i++)
            s32[i] = value_read(o, w, i);
    }
    return 0;
}

size_t ts_journal_encode(const int16_t *scores, size_t n, uint8_t *out) {
    return encode_values(scores, NULL, n, out);
}

int ts_journal_decode(const uint8_t *p, size_t len, int16_t *scores, size_t n) {
    return decode_values(p, len, scores, NULL, n);
}

size_t ts_journal_encode_sum(const int32_t *sums, size_t n, uint8_t *out) {
    return encode_values(NULL, sums, n, out);
}

int ts_journal_decode_sum(const uint8_t *p, size_t len, int32_t *sums, size_t n) {
    return decode_values(p, len, NULL, sums, n);
}

/* The checksum's start: FNV-1a over an entry's seq, version and step. */
static uint64_t checksum_head(int64_t seq, int64_t version, int64_t step) {
    int64_t head[3] = {seq, version, step}; /* little-endian host (store.c checks) */
    return ts_fnv1a(TS_FNV_OFFSET, head, sizeof head);
}

uint64_t ts_journal_checksum(int64_t seq, int64_t version, int64_t step, const void *payload, size_t len) {
    return ts_fnv1a_words(checksum_head(seq, version, step), payload, len);
}

/* The checksum of entries written before ts_journal_checksum went word-wise (2026-12):
 * byte-wise FNV-1a, 8x slower on a large payload. Replay still accepts it, so the journal
 * of a database last served by an older build is replayed, not cut as damaged. */
static uint64_t checksum_bytewise(const ts_journal_row *r) {
    return ts_fnv1a(checksum_head(r->seq, r->version, r->step), r->payload, r->len);
}

static int checksum_ok(const ts_journal_row *r) {
    return ts_journal_checksum(r->seq, r->version, r->step, r->payload, r->len) == r->checksum ||
           checksum_bytewise(r) == r->checksum;
}

/* ---- life cycle ---- */

ts_journal *ts_journal_new(int enabled, int64_t id_window_ms) {
    ts_journal *j = calloc(1, sizeof *j);
    if (!j)
        return NULL;
    j->enabled = enabled;
    j->id_window_ms = id_window_ms;
    ts_hist_init_latency(&j->commit_us);
    ts_hist_init_counts(&j->group_size);
    return j;
}

void ts_journal_start(ts_journal *j, ts_persist *p, int64_t last_seq) {
    j->persist = p;
    j->last_seq = last_seq;
}

void ts_journal_free(ts_journal *j) {
    if (!j)
        return;
    for (int i = 0; i < SPARE_MAX; i++)
        free(j->spare[i]);
    free(j);
}

/* Loop: a payload buffer of at least need bytes (a spare one when one is big enough). */
static uint8_t *payload_take(ts_journal *j, size_t need, size_t *cap) {
    for (int i = 0; i < SPARE_MAX; i++)
        if (j->spare[i] && j->spare_cap[i] >= need) {
            uint8_t *b = j->spare[i];
            *cap = j->spare_cap[i];
            j->spare[i] = NULL;
            return b;
        }
    *cap = need;
    return malloc(need);
}

/* Loop: keep b for a later entry, or free it. */
static void payload_give(ts_journal *j, uint8_t *b, size_t cap) {
    if (!b)
        return;
    for (int i = 0; i < SPARE_MAX && cap <= SPARE_BYTES_MAX; i++)
        if (!j->spare[i]) {
            j->spare[i] = b;
            j->spare_cap[i] = cap;
            return;
        }
    free(b);
}
int ts_journal_enabled(const ts_journal *j) { return j->enabled; }

int ts_journal_failing(const ts_journal *j, const char **why) {
    if (j->failing && why)
        *why = j->failing_why;
    return j->failing;
}

/* ---- group commit ---- */

static void entry_free(entry *e) {
    free((void *)e->row.model);
    payload_give(e->j, (uint8_t *)e->row.payload, e->payload_cap);
    free((void *)e->row.request_id);
    free((void *)e->row.answer);
    free(e);
}

/* Persistence thread: the entries of one group in one transaction. */
static void commit_group(ts_store *st, ts_persist_job **jobs, int n) {
    ts_journal *j = ((entry *)jobs[0])->j;
    char err[384] = "";
    int rc = -1;
    if (atomic_load(&j->broken)) {
        snprintf(err, sizeof err, "an earlier journal commit failed and this step was computed on "
                                  "top of it");
    } else {
        uint64_t bytes = 0, t0 = ts_now_us();
        for (int i = 0; i < n; i++) {
            /* The checksum is computed here, not on the loop: a mid-sized model's entry is
             * 262 KB (42 µs word-wise; byte-wise FNV-1a took 0.35 ms). */
            ts_journal_row *r = &((entry *)jobs[i])->row;
            r->checksum = ts_journal_checksum(r->seq, r->version, r->step, r->payload, r->len);
            j->rows[i] = *r;
            bytes += j->rows[i].len;
        }
        /* Expiring ids scans their time index: once a second is plenty. */
        int64_t now = ts_wall_ms(), before = 0;
        if (now - j->expired_ms >= 1000) {
            int64_t floor = atomic_load(&j->ids_floor_ms);
            before = now - j->id_window_ms > floor ? now - j->id_window_ms : floor;
            j->expired_ms = now;
        }
        rc = ts_store_journal_append(st, j->rows, n, before, err, sizeof err);
        ts_hist_observe(&j->commit_us, ts_now_us() - t0);
        if (rc == 0) {
            ts_hist_observe(&j->group_size, (uint64_t)n);
            atomic_fetch_add(&j->commits, 1);
            atomic_fetch_add(&j->entries, (uint64_t)n);
            atomic_fetch_add(&j->bytes, bytes);
        } else {
            atomic_fetch_add(&j->failures, 1);
            atomic_store(&j->broken, 1);
        }
    }
    for (int i = 0; i < n; i++) {
        entry *e = (entry *)jobs[i];
        e->rc = rc;
        if (rc != 0)
            snprintf(e->err, sizeof e->err, "%s", err);
    }
}

/* Loop: one entry is back. */
static void entry_done(ts_persist_job *pj) {
    entry *e = (entry *)pj;
    ts_journal *j = e->j;
    j->outstanding--;
    if (e->rc != 0 && !j->failing) {
        j->failing = 1;
        snprintf(j->failing_why, sizeof j->failing_why, "%s", e->err);
        ts_log_error("journal commit failed: %s; feedback is refused (503) and the steps not "
                     "written are taken back, until a commit succeeds", e->err);
    }
    e->cb(e->arg, e->rc == 0 ? NULL : e->err);
    if (j->failing && j->outstanding == 0) {
        /* Every step computed on top of the failed one has come back and been taken back:
         * the next step may try again. */
        j->failing = 0;
        atomic_store(&j->broken, 0);
        ts_log_info("journal: every step in flight came back; the next feedback step tries to "
                    "commit again");
    }
    entry_free(e);
}

static char *dup_or_null(const char *s, int *oom) {
    if (!s)
        return NULL;
    char *d = strdup(s);
    *oom |= !d;
    return d;
}

int ts_journal_append(ts_journal *j, const ts_journal_step *s, ts_journal_cb cb, void *arg,
                      int64_t *seq_out) {
    *seq_out = 0;
    if (!j->enabled) {
        cb(arg, NULL);
        return 0;
    }
    entry *e = calloc(1, sizeof *e);
    size_t cap = 0;
    uint8_t *payload = e ? payload_take(j, 1 + 2 * s->n, &cap) : NULL;
    if (!payload) {
        free(e);
        return -1;
    }
    e->j = j;
    e->payload_cap = cap;
    if (s->ids_floor_ms > atomic_load(&j->ids_floor_ms))
        atomic_store(&j->ids_floor_ms, s->ids_floor_ms);
    int oom = 0;
    int64_t seq = j->last_seq + 1;
    size_t len = ts_journal_encode(s->scores, s->n, payload);
    e->row = (ts_journal_row){.model = dup_or_null(s->model, &oom), .seq = seq, .version = s->version,
                              .step = s->step, .created_at_ms = ts_wall_ms(), .payload = payload, .len = len,
                              /* .checksum: by the persistence thread (commit_group) */
                              .request_id = dup_or_null(s->request_id, &oom), .body_hash = s->body_hash,
                              .answer = s->request_id ? dup_or_null(s->answer, &oom) : NULL};
    if (oom) {
        entry_free(e);
        return -1;
    }
    j->last_seq = seq;
    *seq_out = seq;
    e->cb = cb;
    e->arg = arg;
    e->job.group = commit_group;
    e->job.done = entry_done;
    j->outstanding++;
    if (s->hold)
        ts_persist_hold(j->persist, &e->job);
    else
        ts_persist_submit(j->persist, &e->job);
    return 0;
}

void ts_journal_flush(ts_journal *j) {
    if (j && j->enabled && j->persist)
        ts_persist_flush(j->persist);
}

/* ---- replay ---- */

typedef struct {
    ts_model *m;
    int64_t version, replayed, bad_seq;
    int step_gaps;
    int64_t last_step;            /* the step of the entry replayed last (0: none yet) */
    int16_t *scores;
    size_t n;
    char why[256];
} replay_ctx;

static int replay_one(void *arg, const ts_journal_row *r) {
    replay_ctx *c = arg;
    int64_t step = ts_model_step(c->m);
    if (!checksum_ok(r))
        snprintf(c->why, sizeof c->why, "its checksum does not match (damaged)");
    else if (r->version != c->version)
        snprintf(c->why, sizeof c->why, "it is for version %lld, the state is version %lld",
                 (long long)r->version, (long long)c->version);
    else if (c->step_gaps ? r->step <= step || r->step <= c->last_step : r->step != step + 1)
        snprintf(c->why, sizeof c->why, "it ends at step %lld, the state is at step %lld%s",
                 (long long)r->step, (long long)step, c->step_gaps ? " and it must end past the previous entry" : "");
    else if (ts_journal_decode(r->payload, r->len, c->scores, c->n) != 0)
        snprintf(c->why, sizeof c->why, "its payload (%zu bytes) does not fit the model's %zu groups",
                 r->len, c->n);
    else {
        ts_model_apply_scores(c->m, c->scores, +1, NULL);
        c->replayed++;
        c->last_step = r->step;
        return 0;
    }
    c->bad_seq = r->seq;
    return 1;
}

int ts_journal_replay(ts_store *st, const char *name, ts_model *m, int64_t version, int64_t after_seq,
                      int step_gaps, int64_t *replayed, char *err, size_t errlen) {
    replay_ctx c = {.m = m, .version = version, .step_gaps = step_gaps, .n = ts_model_score_len(m)};
    c.scores = malloc((c.n ? c.n : 1) * sizeof *c.scores);
    if (!c.scores) {
        snprintf(err, errlen, "model '%s': out of memory replaying the journal", name);
        return -1;
    }
    int rc = ts_store_journal_scan(st, name, after_seq, replay_one, &c, err, errlen);
    free(c.scores);
    *replayed = c.replayed;
    if (rc != 0 || !c.bad_seq)
        return rc;
    ts_log_warn("model '%s': journal entry %lld cannot be replayed (%s); cutting the journal there "
                "(%lld entries replayed, step %lld)", name, (long long)c.bad_seq, c.why,
                (long long)c.replayed, (long long)ts_model_step(m));
    return ts_store_journal_cut(st, name, c.bad_seq, err, errlen);
}

void ts_journal_note_replayed(ts_journal *j, int64_t n) { atomic_fetch_add(&j->replayed, (uint64_t)n); }

/* ---- metrics ---- */

void ts_journal_render_metrics(ts_journal *j, ts_buf *out) {
    ts_buf_printf(out, "# HELP tscale_journal_enabled 1 when feedback is journaled (--journal yes).\n"
                       "# TYPE tscale_journal_enabled gauge\ntscale_journal_enabled %d\n",
                  j->enabled);
    static const struct {
        const char *name, *help;
        size_t offset;
    } counters[] = {
        {"tscale_journal_entries_total", "Feedback steps committed to the journal.",
         offsetof(ts_journal, entries)},
        {"tscale_journal_bytes_total", "Payload bytes committed to the journal.", offsetof(ts_journal, bytes)},
        {"tscale_journal_commits_total", "Journal group commits (one fsync each).",
         offsetof(ts_journal, commits)},
        {"tscale_journal_commit_failures_total", "Journal commits that failed.", offsetof(ts_journal, failures)},
        {"tscale_journal_replayed_entries_total", "Journal entries replayed at start.",
         offsetof(ts_journal, replayed)},
    };
    for (size_t i = 0; i < sizeof counters / sizeof counters[0]; i++)
        ts_metrics_render_counter(out, counters[i].name, counters[i].help,
                                  (_Atomic uint64_t *)((char *)j + counters[i].offset));
    ts_hist_render_family(&j->commit_us, "tscale_journal_commit_seconds", "Journal group commit duration.",
                          out);
    ts_hist_render_family(&j->group_size, "tscale_journal_group_entries", "Steps per journal group commit.",
                          out);
    ts_buf_printf(out, "# HELP tscale_journal_failing 1 while feedback is refused after a failed "
                       "journal commit.\n# TYPE tscale_journal_failing gauge\ntscale_journal_failing %d\n",
                  j->failing);
}
