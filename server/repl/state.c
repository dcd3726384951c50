/* state.c — published model states: join, digests, resync (see state.h). */
#include "server/repl/state.h"

#include <errno.h>
#include <inttypes.h>
#include <jansson.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "proto/safetensors.h"
#include "server/hash.h"
#include "server/repl/chunks.h"
#include "server/repl/natsmsg.h"
#include "server/log.h"
#include "server/metrics.h"
#include "server/wake.h"

/* The loop's tick; the join gives up waiting for the states it expects after JOIN_WAIT_MS
 * (a state purged while being read) and loads what it has. */
#define TICK_MS 250
#define JOIN_WAIT_MS 15000
#define ID_MAX 512

/* A published state, as received (or as queued for publishing). Owned by its list. */
typedef struct rstate {
    char model[TS_MODEL_NAME_MAX];
    char origin[ID_MAX];
    int64_t version, step;
    uint64_t digest;
    uint64_t stream_seq;         /* of the position */
    char *position;              /* JSON (repl.h) */
    uint8_t *bytes;              /* the model file with its integer state */
    size_t len;
    int checked;                 /* loop: its digest was compared */
    int marker;                  /* not a state: the join's states are all read */
    struct rstate *next;
} rstate;

/* Chunks of one subject being put together (the subscription's callback only). */
typedef struct assembly {
    char subject[256];
    char id[ID_MAX + 32];
    rstate *rs;                  /* the state's headers; NULL: none (malformed) */
    ts_chunks ch;                /* its bytes so far */
    struct assembly *next_a;
} assembly;

/* Per model, on the loop: what was published last, and what is queued. */
typedef struct mrec {
    char model[TS_MODEL_NAME_MAX];
    int64_t step, version;
    uint64_t stream_seq;
    int published, dirty, capture_queued, check_queued;
    struct mrec *next;
} mrec;

struct ts_state {
    ts_state_config cfg;         /* the daemon's (state.h) */
    int64_t interval_ms;
    uv_loop_t *loop;
    ts_wake wake;
    uv_timer_t tick;
    int started;
    pthread_mutex_t mu;
    rstate *in_head, *in_tail;   /* mu: received, for the loop */
    rstate *out_head;            /* mu: queued for publishing, oldest first */
    _Atomic int n_out;
    natsSubscription *sub;       /* publisher thread */
    char stream[128];            /* <stream>_STATE */
    _Atomic uint64_t join_last;  /* the join's states end at this stream sequence */
    _Atomic uint64_t first_seq;  /* the delta stream's first sequence at set-up */
    _Atomic int marker_sent;
    assembly *asm_head;          /* callback */
    /* loop */
    int joining;                 /* 1 from start until the join is done */
    int join_pending;            /* loads under way */
    int join_marked;             /* the marker arrived (or the wait timed out) */
    uint64_t t_start_ms, t_capture_ms;
    int64_t counter;             /* states published by this process (their ids) */
    rstate *have;                /* the newest received state per (model, origin) */
    mrec *models;
    _Atomic uint64_t published, chunks, loaded, resyncs, checks, mismatches, failures;
};

static void rstate_free(rstate *rs) {
    if (!rs)
        return;
    free(rs->position);
    free(rs->bytes);
    free(rs);
}

static mrec *mrec_get(ts_state *st, const char *model) {
    for (mrec *m = st->models; m; m = m->next)
        if (strcmp(m->model, model) == 0)
            return m;
    mrec *m = calloc(1, sizeof *m);
    if (!m)
        return NULL;
    snprintf(m->model, sizeof m->model, "%s", model);
    m->next = st->models;
    st->models = m;
    return m;
}

ts_state *ts_state_new(const ts_state_config *cfg, int64_t interval_s) {
    ts_state *st = calloc(1, sizeof *st);
    if (!st)
        return NULL;
    st->cfg = *cfg;
    st->interval_ms = interval_s * 1000;
    st->joining = 1;
    pthread_mutex_init(&st->mu, NULL);
    snprintf(st->stream, sizeof st->stream, "%s_STATE", ts_repl_stream(cfg->repl));
    return st;
}

static void free_list(rstate *rs) {
    while (rs) {
        rstate *n = rs->next;
        rstate_free(rs);
        rs = n;
    }
}

void ts_state_free(ts_state *st) {
    if (!st)
        return;
    free_list(st->in_head);
    free_list(st->out_head);
    free_list(st->have);
    while (st->asm_head) {
        assembly *a = st->asm_head;
        st->asm_head = a->next_a;
        rstate_free(a->rs);
        ts_chunks_free(&a->ch);
        free(a);
    }
    while (st->models) {
        mrec *m = st->models;
        st->models = m->next;
        free(m);
    }
    pthread_mutex_destroy(&st->mu);
    free(st);
}

/* The digest of s's integer state: every layer's step and corr_accum, and the version. */
static uint64_t digest_of(const ts_model *m, int64_t version) {
    size_t n = ts_state_len(m);
    int64_t *buf = malloc((n ? n : 1) * sizeof *buf);
    if (!buf)
        return 0;
    ts_state_save(m, buf);
    uint64_t h = ts_fnv1a(ts_hash_bytes((const uint8_t *)buf, n * sizeof *buf), &version, sizeof version);
    free(buf);
    return h;
}

/* ---- the subscription (libnats' thread) ---- */

static void push_in(ts_state *st, rstate *rs) {
    pthread_mutex_lock(&st->mu);
    if (st->in_tail)
        st->in_tail->next = rs;
    else
        st->in_head = rs;
    st->in_tail = rs;
    pthread_mutex_unlock(&st->mu);
}

static assembly *assembly_get(ts_state *st, const char *subject) {
    for (assembly *a = st->asm_head; a; a = a->next_a)
        if (strcmp(a->subject, subject) == 0)
            return a;
    assembly *a = calloc(1, sizeof *a);
    if (!a)
        return NULL;
    snprintf(a->subject, sizeof a->subject, "%s", subject);
    a->next_a = st->asm_head;
    st->asm_head = a;
    return a;
}

/* Start a state from its first chunk's headers (a->rs NULL when they are malformed). */
static void assembly_begin(assembly *a, natsMsg *m, const char *id, int n) {
    rstate_free(a->rs);
    a->rs = calloc(1, sizeof *a->rs);
    const char *o = ts_natsmsg_header(m, "Tscale-Origin"), *model = ts_natsmsg_header(m, "Tscale-Model"), *pos = ts_natsmsg_header(m, "Tscale-Position");
    const char *v = ts_natsmsg_header(m, "Tscale-Version"), *step = ts_natsmsg_header(m, "Tscale-Step"), *dg = ts_natsmsg_header(m, "Tscale-Digest");
    json_error_t je;
    json_t *pj = pos ? json_loads(pos, 0, &je) : NULL;
    json_t *ss = pj ? json_object_get(pj, "stream_seq") : NULL;
    if (!a->rs || !o || !model || !v || !step || !dg || !json_is_integer(ss) || strlen(o) >= ID_MAX ||
        strlen(model) >= TS_MODEL_NAME_MAX || !(a->rs->position = strdup(pos))) {
        rstate_free(a->rs);
        a->rs = NULL;
    } else {
        snprintf(a->rs->origin, sizeof a->rs->origin, "%s", o);
        snprintf(a->rs->model, sizeof a->rs->model, "%s", model);
        a->rs->version = strtoll(v, NULL, 10);
        a->rs->step = strtoll(step, NULL, 10);
        a->rs->digest = strtoull(dg, NULL, 16);
        a->rs->stream_seq = (uint64_t)json_integer_value(ss);
    }
    json_decref(pj);
    snprintf(a->id, sizeof a->id, "%s", id);
    ts_chunks_begin(&a->ch, n);
}

/* Append chunk i of a's state; the complete state goes to the loop. */
static void assembly_add(ts_state *st, assembly *a, natsMsg *m, int i) {
    int rc = a->rs ? ts_chunks_add(&a->ch, i, natsMsg_GetData(m), (size_t)natsMsg_GetDataLength(m)) : -1;
    if (rc < 0) { /* a chunk missing (purged meanwhile): this state is incomplete */
        rstate_free(a->rs);
        a->rs = NULL;
    } else if (rc == 1) {
        a->rs->bytes = ts_chunks_take(&a->ch, &a->rs->len);
        push_in(st, a->rs);
        a->rs = NULL;
    }
}

/* Who owns what: libnats hands msg over (destroyed here). */
static void on_state_msg(natsConnection *nc, natsSubscription *sub, natsMsg *msg, void *closure) {
    ts_state *st = closure;
    jsMsgMetaData *meta = NULL;
    const char *id = ts_natsmsg_header(msg, "Tscale-State"), *chunk = ts_natsmsg_header(msg, "Tscale-Chunk");
    int i = -1, n = 0;
    if (natsMsg_GetMetaData(&meta, msg) == NATS_OK && id && ts_chunk_parse(chunk, &i, &n) == 0) {
        assembly *a = assembly_get(st, natsMsg_GetSubject(msg));
        if (a && i == 0)
            assembly_begin(a, msg, id, n);
        if (a && strcmp(a->id, id) == 0)
            assembly_add(st, a, msg, i);
    }
    uint64_t seq = meta ? meta->Sequence.Stream : 0;
    if (seq >= atomic_load(&st->join_last) && !atomic_exchange(&st->marker_sent, 1)) {
        rstate *mk = calloc(1, sizeof *mk);
        if (mk) {
            mk->marker = 1;
            push_in(st, mk);
        }
    }
    jsMsgMetaData_Destroy(meta);
    natsMsg_Destroy(msg);
    ts_wake_send(&st->wake);
}

/* ---- the publisher thread ---- */

int ts_state_set_up(ts_state *st, jsCtx *js, uint64_t delta_first_seq, char *err, size_t errlen) {
    if (st->sub)
        return 0;
    char subject[160];
    snprintf(subject, sizeof subject, "%s.state.>", ts_repl_stream(st->cfg.repl));
    jsErrCode jerr = 0;
    jsStreamInfo *si = NULL;
    natsStatus s = js_GetStreamInfo(&si, js, st->stream, NULL, &jerr);
    if (s == NATS_NOT_FOUND) {
        const char *subjects[1] = {subject};
        jsStreamConfig sc;
        jsStreamConfig_Init(&sc);
        sc.Name = st->stream;
        sc.Subjects = subjects;
        sc.SubjectsLen = 1;
        sc.Storage = js_FileStorage;
        sc.Replicas = st->cfg.replicas;
        s = js_AddStream(&si, js, &sc, NULL, &jerr);
        if (s == NATS_OK)
            ts_log_info("replication: created stream '%s' for published states (subjects %s, no age limit)",
                        st->stream, subject);
    }
    uint64_t last = si && si->State.Msgs ? si->State.LastSeq : 0;
    jsStreamInfo_Destroy(si);
    if (s == NATS_OK) {
        atomic_store(&st->first_seq, delta_first_seq);
        atomic_store(&st->join_last, last ? last : UINT64_MAX);
        jsSubOptions so;
        jsSubOptions_Init(&so);
        so.Stream = st->stream;
        so.Ordered = true;
        so.Config.Heartbeat = 1000000000LL;
        so.Config.DeliverPolicy = js_DeliverAll;
        s = js_Subscribe(&st->sub, js, subject, on_state_msg, st, NULL, &so, &jerr);
    }
    if (s != NATS_OK) {
        snprintf(err, errlen, "published states: %s (JetStream error %d): %s", natsStatus_GetText(s), (int)jerr,
                 nats_GetLastError(NULL));
        return -1;
    }
    if (!last && !atomic_exchange(&st->marker_sent, 1)) { /* nothing published yet */
        rstate *mk = calloc(1, sizeof *mk);
        if (mk) {
            mk->marker = 1;
            push_in(st, mk);
        }
        ts_wake_send(&st->wake);
    }
    return 0;
}

int ts_state_queued(ts_state *st) { return atomic_load(&st->n_out) > 0; }

/* Publish one chunk with the state's headers and wait for its PubAck (*seq). */
static natsStatus publish_chunk(ts_state *st, jsCtx *js, const rstate *rs, const char *subject, const char *id,
                                int i, int n, size_t off, size_t len, uint64_t *seq) {
    char chunk[32], v[32], step[32], dg[32];
    ts_chunk_format(i, n, chunk, sizeof chunk);
    snprintf(v, sizeof v, "%" PRId64, rs->version);
    snprintf(step, sizeof step, "%" PRId64, rs->step);
    snprintf(dg, sizeof dg, "%016" PRIx64, rs->digest);
    natsMsg *m = NULL;
    jsPubAck *ack = NULL;
    jsErrCode jerr = 0;
    jsPubOptions po;
    jsPubOptions_Init(&po);
    po.MaxWait = st->cfg.ack_timeout_ms;
    natsStatus s = natsMsg_Create(&m, subject, NULL, (const char *)rs->bytes + off, (int)len);
    const char *keys[] = {"Tscale-State", "Tscale-Chunk", "Tscale-Origin", "Tscale-Model", "Tscale-Version",
                          "Tscale-Step", "Tscale-Digest", "Tscale-Position"};
    const char *vals[] = {id, chunk, rs->origin, rs->model, v, step, dg, rs->position};
    for (int k = 0; k < 8 && s == NATS_OK && (i == 0 || k < 2); k++)
        s = natsMsgHeader_Set(m, keys[k], vals[k]);
    if (s == NATS_OK)
        s = js_PublishMsg(&ack, js, m, &po, &jerr);
    if (s == NATS_OK)
        *seq = ack->Sequence;
    jsPubAck_Destroy(ack);
    natsMsg_Destroy(m);
    return s;
}

int ts_state_publish(ts_state *st, jsCtx *js, int64_t max_payload, char *err, size_t errlen) {
    pthread_mutex_lock(&st->mu);
    rstate *rs = st->out_head;
    pthread_mutex_unlock(&st->mu);
    if (!rs)
        return 0;
    size_t room = ts_chunk_room(max_payload);
    int n = ts_chunk_count(rs->len, room);
    char subject[400], id[ID_MAX + 32];
    snprintf(subject, sizeof subject, "%s.state.%s.%016" PRIx64, ts_repl_stream(st->cfg.repl), rs->model,
             ts_fnv1a(TS_FNV_OFFSET, rs->origin, strlen(rs->origin)));
    snprintf(id, sizeof id, "%s:%" PRIu64 ":%" PRIu64, rs->origin, rs->stream_seq, (uint64_t)rs->step);
    uint64_t first = 0, seq = 0;
    natsStatus s = NATS_OK;
    for (int i = 0; i < n && s == NATS_OK; i++) {
        size_t off = (size_t)i * room, len = rs->len - off < room ? rs->len - off : room;
        s = publish_chunk(st, js, rs, subject, id, i, n, off, len, &seq);
        if (i == 0)
            first = seq;
    }
    /* This replica's older states of the model are not needed any more. (A purge up to
     * sequence 1 would purge the whole subject: the server reads 1 as "no sequence".) */
    if (s == NATS_OK && first > 1) {
        jsOptions o;
        jsOptions_Init(&o);
        o.Stream.Purge.Subject = subject;
        o.Stream.Purge.Sequence = first;
        jsErrCode jerr = 0;
        if (js_PurgeStream(js, st->stream, &o, &jerr) != NATS_OK)
            ts_log_warn("replication: purging older states of model '%s' failed: %s (they stay in stream '%s' "
                        "until the next state is published)", rs->model, nats_GetLastError(NULL), st->stream);
    }
    if (s == NATS_OK) {
        atomic_fetch_add(&st->chunks, (uint64_t)n); /* first: a reader never sees a state without its chunks */
        atomic_fetch_add(&st->published, 1);
        ts_log_debug("replication: published the state of model '%s' (step %lld, stream position %llu, %zu "
                     "bytes in %d chunks)", rs->model, (long long)rs->step, (unsigned long long)rs->stream_seq,
                     rs->len, n);
    } else {
        atomic_fetch_add(&st->failures, 1);
        snprintf(err, errlen, "%s: %s", natsStatus_GetText(s), nats_GetLastError(NULL));
    }
    pthread_mutex_lock(&st->mu);
    if (s == NATS_OK || (rs->next && strcmp(rs->next->model, rs->model) == 0)) {
        st->out_head = rs->next; /* done, or superseded */
        atomic_fetch_sub(&st->n_out, 1);
        rstate_free(rs);
    }
    pthread_mutex_unlock(&st->mu);
    return s == NATS_OK ? 0 : -1;
}

/* ---- capturing states (loop) ---- */

/* Queue rs for publishing, dropping a queued older state of its model. */
static void queue_out(ts_state *st, rstate *rs) {
    pthread_mutex_lock(&st->mu);
    rstate **pp = &st->out_head;
    while (*pp) {
        if (strcmp((*pp)->model, rs->model) == 0 && *pp != st->out_head) {
            rstate *old = *pp; /* the head may be being published: left alone */
            *pp = old->next;
            rstate_free(old);
            atomic_fetch_sub(&st->n_out, 1);
            continue;
        }
        pp = &(*pp)->next;
    }
    *pp = rs;
    rs->next = NULL;
    atomic_fetch_add(&st->n_out, 1);
    pthread_mutex_unlock(&st->mu);
    ts_repl_wake(st->cfg.repl);
}

static uint64_t position_seq(const char *pos) {
    json_error_t je;
    json_t *j = json_loads(pos, 0, &je);
    uint64_t v = (uint64_t)json_integer_value(json_object_get(j, "stream_seq"));
    json_decref(j);
    return v;
}

/* A state being written off the loop: the view (taken on the loop) holds the integer state
 * and shares the immutable parts of `held`, which the engine keeps allocated until done. */
typedef struct {
    ts_persist_job job;
    ts_state *st;
    ts_model *held;              /* ts_engine_model_hold'd: released in capture_done */
    ts_model *view;              /* ts_model_view of held (owned) */
    rstate *rs;                  /* owned until queued */
    int rc;
    char err[256];
    uint64_t work_us;            /* the write and digest, off the loop (logged at debug) */
} capture_job;

/* Persistence thread: the model file and the digest, from the view only. */
static void capture_work(ts_store *store, ts_persist_job *pj) {
    capture_job *j = (capture_job *)pj;
    uint64_t t0 = ts_now_us();
    j->rc = ts_safetensors_write(j->view, j->rs->model, &j->rs->bytes, &j->rs->len, j->err, sizeof j->err);
    j->rs->digest = digest_of(j->view, j->rs->version);
    j->work_us = ts_now_us() - t0;
}

/* Loop: queue the written state, let the model go. */
static void capture_done(ts_persist_job *pj) {
    capture_job *j = (capture_job *)pj;
    ts_state *st = j->st;
    ts_engine_model_release(st->cfg.engine, j->held);
    ts_model_view_free(j->view);
    if (j->rc < 0) {
        ts_log_error("replication: model '%s': writing the state to publish failed: %s (the next interval "
                     "tries again)", j->rs->model, j->err);
        mrec *mr = mrec_get(st, j->rs->model);
        if (mr)
            mr->dirty = 1;
        rstate_free(j->rs);
    } else {
        ts_log_debug("replication: model '%s': state to publish written off the loop in %.1f ms (%zu bytes)",
                     j->rs->model, (double)j->work_us / 1000.0, j->rs->len);
        queue_out(st, j->rs);
    }
    free(j);
}

/* A control item: when s's state is consistent and changed, copy what must be consistent
 * (the integer state, step, version, position: a memcpy, the loop's only cost) and write
 * the model file and its digest on the persistence thread. */
static void capture(ts_engine *e, ts_served *s, void *arg) {
    ts_state *st = arg;
    mrec *mr = mrec_get(st, s->name);
    if (!mr)
        return;
    mr->capture_queued = 0;
    if (s->removed)
        return; /* cancelled (engine.h) */
    char *pos = s->uncommitted ? NULL : ts_repl_state_position(st->cfg.repl, s->name);
    uint64_t seq = pos ? position_seq(pos) : 0;
    if (!pos || (mr->published && !mr->dirty && mr->step == s->step && mr->version == s->version &&
                 mr->stream_seq == seq)) {
        free(pos);
        return; /* not consistent now (next tick), or nothing new to publish */
    }
    uint64_t t0 = ts_now_us();
    capture_job *j = calloc(1, sizeof *j);
    rstate *rs = j ? calloc(1, sizeof *rs) : NULL;
    ts_model *view = rs ? ts_model_view(s->model) : NULL;
    if (!view || ts_engine_model_hold(e, s->model) < 0) {
        ts_log_error("replication: model '%s': out of memory copying the state to publish (the next interval "
                     "tries again)", s->name);
        ts_model_view_free(view);
        free(pos);
        free(rs);
        free(j);
        return;
    }
    snprintf(rs->model, sizeof rs->model, "%s", s->name);
    snprintf(rs->origin, sizeof rs->origin, "%s", ts_repl_id(st->cfg.repl));
    rs->version = s->version;
    rs->step = s->step;
    rs->position = pos;
    rs->stream_seq = seq;
    *mr = (mrec){.step = s->step, .version = s->version, .stream_seq = seq, .published = 1,
                 .check_queued = mr->check_queued, .next = mr->next};
    snprintf(mr->model, sizeof mr->model, "%s", s->name);
    *j = (capture_job){.job = {.work = capture_work, .done = capture_done}, .st = st, .held = s->model,
                       .view = view, .rs = rs};
    ts_persist_submit(st->cfg.persist, &j->job);
    ts_log_debug("replication: model '%s': state copied on the loop in %.3f ms for publishing", s->name,
                 (double)(ts_now_us() - t0) / 1000.0);
}

/* ---- comparing digests (loop) ---- */

/* Whether two positions hold the same deltas: the same origins' marks (zeros ignored), and
 * the same last admin message (a restore or replace changes the state, not the marks). */
static int same_marks(const char *a, const char *b) {
    json_error_t je;
    json_t *ja = json_loads(a, 0, &je), *jb = json_loads(b, 0, &je);
    json_t *oa = json_object_get(ja, "origins"), *ob = json_object_get(jb, "origins");
    json_int_t admin_a = json_integer_value(json_object_get(ja, "admin_seq"));
    int same = json_is_object(oa) && json_is_object(ob) &&
               admin_a == json_integer_value(json_object_get(jb, "admin_seq"));
    const char *k;
    json_t *v;
    for (int pass = 0; same && pass < 2; pass++)
        json_object_foreach(pass ? ob : oa, k, v) {
            json_t *w = json_object_get(pass ? oa : ob, k);
            if (json_integer_value(v) != (w ? json_integer_value(w) : 0))
                same = 0;
        }
    json_decref(ja);
    json_decref(jb);
    return same;
}

/* Load rs's integers into s (same version and architecture): the resync. 0 or -1. */
static int load_ints(ts_served *s, const rstate *rs, char *err, size_t errlen) {
    ts_model *m = ts_safetensors_read(rs->bytes, rs->len, NULL, err, errlen);
    if (m && ts_state_len(m) != ts_state_len(s->model)) {
        snprintf(err, errlen, "its architecture differs from the served model's");
        ts_model_free(m);
        m = NULL;
    }
    size_t n = m ? ts_state_len(m) : 0;
    int64_t *buf = m ? malloc((n ? n : 1) * sizeof *buf) : NULL;
    if (m && !buf)
        snprintf(err, errlen, "out of memory");
    if (buf) {
        ts_state_save(m, buf);
        ts_state_load(s->model, buf);
        s->step = ts_model_step(s->model);
    }
    free(buf);
    ts_model_free(m);
    return buf ? 0 : -1;
}

/* The votes for digest d among the kept states at position mine (plus one for this
 * replica when d is its own), and the id sorting first among its holders in *first. */
static int votes_for(ts_state *st, ts_served *s, const char *mine, uint64_t d, uint64_t my_digest,
                     const char **first) {
    int votes = d == my_digest;
    *first = d == my_digest ? ts_repl_id(st->cfg.repl) : NULL;
    for (rstate *o = st->have; o; o = o->next)
        if (strcmp(o->model, s->name) == 0 && o->version == s->version && o->digest == d &&
            strcmp(o->origin, ts_repl_id(st->cfg.repl)) != 0 && same_marks(o->position, mine)) {
            votes++;
            *first = !*first || strcmp(o->origin, *first) < 0 ? o->origin : *first;
        }
    return votes;
}

/* The digests at s's position vote (state.h); a losing own digest resyncs. */
static void vote(ts_state *st, ts_served *s, const char *mine, uint64_t my_digest) {
    const char *me = ts_repl_id(st->cfg.repl), *best_first = NULL, *my_first = NULL;
    const rstate *best = NULL;
    int best_votes = 0, compared = 0;
    for (rstate *rs = st->have; rs; rs = rs->next) {
        if (strcmp(rs->model, s->name) != 0 || rs->version != s->version || strcmp(rs->origin, me) == 0 ||
            !same_marks(rs->position, mine))
            continue;
        compared += !rs->checked;
        rs->checked = 1;
        const char *first = NULL;
        int votes = rs->digest == my_digest ? 0 : votes_for(st, s, mine, rs->digest, my_digest, &first);
        if (votes > best_votes || (votes && votes == best_votes && strcmp(first, best_first) < 0))
            best = rs, best_votes = votes, best_first = first;
    }
    if (!compared)
        return;
    atomic_fetch_add(&st->checks, 1);
    if (!best)
        return;
    int my_votes = votes_for(st, s, mine, my_digest, my_digest, &my_first);
    atomic_fetch_add(&st->mismatches, 1);
    int lose = best_votes > my_votes || (best_votes == my_votes && strcmp(best_first, my_first) < 0);
    ts_log_error("replication: model '%s': digest mismatch at position %s: this replica ('%s') has %016" PRIx64
                 ", replica '%s' published %016" PRIx64 " for the same position%s", s->name, mine, me, my_digest,
                 best->origin, best->digest, lose ? "; resyncing from its state" : "; this replica's digest wins "
                 "the vote, the other replica resyncs");
    if (!lose)
        return;
    char err[256];
    if (load_ints(s, best, err, sizeof err) < 0) {
        ts_log_error("replication: model '%s': resync from replica '%s' failed: %s", s->name, best->origin, err);
        return;
    }
    atomic_fetch_add(&st->resyncs, 1);
    ts_log_warn("replication: model '%s' resynced from the state of replica '%s' (step %lld, digest %016" PRIx64
                ")", s->name, best->origin, (long long)s->step, best->digest);
    mrec *mr = mrec_get(st, s->name);
    if (mr)
        mr->dirty = 1; /* publish the healed state */
    st->cfg.snapshot_now(st->cfg.ctx, s, "resync");
}

/* A control item: compare s's digest with the states kept for its position now. */
static void check(ts_engine *e, ts_served *s, void *arg) {
    ts_state *st = arg;
    mrec *mr = mrec_get(st, s->name);
    if (mr)
        mr->check_queued = 0;
    if (s->removed)
        return; /* cancelled (engine.h) */
    if (s->uncommitted)
        return; /* the next tick tries again */
    char *mine = ts_repl_state_position(st->cfg.repl, s->name);
    if (mine)
        vote(st, s, mine, digest_of(s->model, s->version));
    free(mine);
}

/* ---- loading a state: join, and a diverged model (loop) ---- */

typedef struct {
    ts_persist_job job;
    ts_state *st;
    rstate *rs;
    ts_model *m;
    int rc;
    ts_snapshot_info info;
    char err[512];
} load_job;

static void join_finish(ts_state *st);

static void load_end(ts_state *st, load_job *j) {
    if (st->joining && --st->join_pending == 0 && st->join_marked)
        join_finish(st);
    ts_model_free(j->m);
    rstate_free(j->rs);
    free(j);
}

/* The loaded state becomes s's (a control item: s is idle). */
static void swap_in(ts_engine *e, ts_served *s, void *arg) {
    load_job *j = arg;
    if (s->removed) { /* cancelled (engine.h) */
        ts_log_warn("replication: model '%s' was removed before the state published by replica '%s' was "
                    "loaded into it", s->name, j->rs->origin);
        load_end(j->st, j);
        return;
    }
    ts_engine_swap(e, s, j->m, j->rs->version);
    j->m = NULL;
    j->st->cfg.snapshot_note(j->st->cfg.ctx, s, &j->info);
    if (ts_repl_position_adopt(j->st->cfg.repl, s->name, j->rs->position) < 0)
        ts_log_error("replication: model '%s': the published position %s does not parse", s->name,
                     j->rs->position);
    atomic_fetch_add(&j->st->loaded, 1);
    ts_log_info("replication: model '%s' loaded the state published by replica '%s': version %lld, step %lld, "
                "stream position %llu (replaces this replica's own unreplicated state)", s->name, j->rs->origin,
                (long long)j->rs->version, (long long)s->step, (unsigned long long)j->rs->stream_seq);
    load_end(j->st, j);
}

static void load_work(ts_store *store, ts_persist_job *pj) {
    load_job *j = (load_job *)pj;
    j->rc = ts_store_put_joined(store, j->rs->model, j->m, j->rs->version, "join", j->rs->position,
                                (int)j->st->cfg.snapshot_keep, &j->info, j->err, sizeof j->err);
}

static void load_done(ts_persist_job *pj) {
    load_job *j = (load_job *)pj;
    ts_state *st = j->st;
    ts_engine *e = st->cfg.engine;
    ts_served *s = ts_engine_find(e, j->rs->model, 0);
    if (j->rc < 0) {
        ts_log_error("replication: model '%s': loading the state published by replica '%s' failed: %s", j->rs->model,
                     j->rs->origin, j->err);
        ts_repl_set_diverged(st->cfg.repl, j->rs->model, "the published state could not be loaded (see the log)");
    } else if (s) {
        if (ts_engine_control(e, s, swap_in, j) == 0)
            return;
        ts_log_error("replication: model '%s': out of memory queueing the published state", j->rs->model);
    } else if ((s = ts_engine_add(e, j->rs->model, j->m, j->rs->version)) != NULL) {
        j->m = NULL;
        st->cfg.snapshot_note(st->cfg.ctx, s, &j->info);
        ts_repl_position_adopt(st->cfg.repl, s->name, j->rs->position);
        atomic_fetch_add(&st->loaded, 1);
        ts_log_info("replication: model '%s' (new here) loaded the state published by replica '%s': version %lld, "
                    "step %lld, stream position %llu", s->name, j->rs->origin, (long long)j->rs->version,
                    (long long)s->step, (unsigned long long)j->rs->stream_seq);
    }
    load_end(st, j);
}

/* Load a copy of rs as its model's state (stored, then served). */
static void load(ts_state *st, const rstate *rs) {
    load_job *j = calloc(1, sizeof *j);
    rstate *c = j ? calloc(1, sizeof *c) : NULL;
    char err[256];
    if (c) {
        *c = *rs;
        c->next = NULL;
        c->position = strdup(rs->position);
        c->bytes = malloc(rs->len ? rs->len : 1);
        if (c->bytes)
            memcpy(c->bytes, rs->bytes, rs->len);
    }
    if (!c || !c->position || !c->bytes) {
        ts_log_error("replication: model '%s': out of memory loading the published state", rs->model);
        rstate_free(c);
        free(j);
        return;
    }
    j->st = st;
    j->rs = c;
    j->m = ts_safetensors_read(c->bytes, c->len, NULL, err, sizeof err);
    if (!j->m) {
        ts_log_error("replication: model '%s': the state published by replica '%s' is not a model file: %s",
                     rs->model, rs->origin, err);
        rstate_free(c);
        free(j);
        return;
    }
    j->job.work = load_work;
    j->job.done = load_done;
    if (st->joining)
        st->join_pending++;
    ts_persist_submit(st->cfg.persist, &j->job);
}

/* Each model without a position here loads the newest state published for it; a model
 * with neither is checked against what retention cut. */
static void join_start(ts_state *st) {
    st->join_marked = 1;
    st->join_pending++; /* held until every load is queued */
    for (rstate *rs = st->have; rs; rs = rs->next) {
        const rstate *best = rs;
        for (rstate *o = st->have; o; o = o->next)
            if (strcmp(o->model, rs->model) == 0 && o->stream_seq > best->stream_seq)
                best = o;
        if (best != rs || ts_repl_position_known(st->cfg.repl, rs->model))
            continue;
        ts_served *s = ts_engine_find(st->cfg.engine, rs->model, 1);
        if (s && s->unloading)
            continue;
        load(st, rs);
    }
    if (--st->join_pending == 0)
        join_finish(st);
}

static void join_finish(ts_state *st) {
    uint64_t first = atomic_load(&st->first_seq);
    ts_repl *r = st->cfg.repl;
    for (ts_served *s = ts_engine_first(st->cfg.engine); s; s = s->next) {
        char *pos = ts_repl_state_position(r, s->name);
        uint64_t from = pos && ts_repl_position_known(r, s->name) ? position_seq(pos) + 1 : 1;
        free(pos);
        if (first > from) {
            char why[512];
            snprintf(why, sizeof why, "the stream's retention cut deltas this replica never applied (model '%s' "
                     "needs sequence %llu, the stream starts at %llu) and no published state covers them yet",
                     s->name, (unsigned long long)from, (unsigned long long)first);
            ts_log_error("replication: %s; feedback for it is refused until a replica publishes a state",
                         why);
            ts_repl_set_diverged(r, s->name, why);
        } else if (!ts_repl_position_known(r, s->name)) {
            ts_log_info("replication: model '%s': no published state; consuming the stream from its start",
                        s->name);
        }
    }
    st->joining = 0;
    ts_repl_join_done(r);
}

/* ---- received states (loop) ---- */

/* Keep rs as the newest of its (model, origin); a diverged model loads it. */
static void received(ts_state *st, rstate *rs) {
    for (rstate **pp = &st->have; *pp; pp = &(*pp)->next)
        if (strcmp((*pp)->model, rs->model) == 0 && strcmp((*pp)->origin, rs->origin) == 0) {
            rstate *old = *pp;
            rs->next = old->next;
            *pp = rs;
            rstate_free(old);
            rs = NULL;
            break;
        }
    if (rs) {
        rs->next = st->have;
        st->have = rs;
    }
}

static void on_wake(void *data) {
    ts_state *st = data;
    pthread_mutex_lock(&st->mu);
    rstate *in = st->in_head;
    st->in_head = st->in_tail = NULL;
    pthread_mutex_unlock(&st->mu);
    while (in) {
        rstate *rs = in;
        in = rs->next;
        rs->next = NULL;
        if (rs->marker) {
            rstate_free(rs);
            if (st->joining && !st->join_marked)
                join_start(st);
            continue;
        }
        ts_log_debug("replication: received the state of model '%s' published by replica '%s' (step %lld, "
                     "position %s, digest %016" PRIx64 ", %zu bytes)", rs->model, rs->origin, (long long)rs->step,
                     rs->position, rs->digest, rs->len);
        int mine = strcmp(rs->origin, ts_repl_id(st->cfg.repl)) == 0;
        char model[TS_MODEL_NAME_MAX];
        snprintf(model, sizeof model, "%s", rs->model);
        received(st, rs);
        const char *why = NULL;
        if (!st->joining && !mine && !*st->cfg.closing && !ts_repl_model_ready(st->cfg.repl, model, &why) && why &&
            strstr(why, "retention"))
            for (rstate *h2 = st->have; h2; h2 = h2->next)
                if (strcmp(h2->model, model) == 0 && strcmp(h2->origin, ts_repl_id(st->cfg.repl)) != 0) {
                    load(st, h2); /* a diverged model heals from the first state it sees */
                    break;
                }
    }
}

/* Queue the control items due: captures every interval, digest checks of unchecked states. */
static void on_tick(uv_timer_t *t) {
    ts_state *st = t->data;
    uint64_t now = uv_now(st->loop);
    if (*st->cfg.closing)
        return; /* shutting down: no new control items */
    if (st->joining) {
        if (!st->join_marked && now - st->t_start_ms > JOIN_WAIT_MS && atomic_load(&st->join_last)) {
            ts_log_warn("replication: the published states expected at start did not all arrive within %d s; "
                        "joining with those read", JOIN_WAIT_MS / 1000);
            join_start(st);
        }
        return;
    }
    int capture_due = now - st->t_capture_ms >= (uint64_t)st->interval_ms;
    if (capture_due)
        st->t_capture_ms = now;
    for (ts_served *s = ts_engine_first(st->cfg.engine); s; s = s->next) {
        mrec *mr = mrec_get(st, s->name);
        const char *why = NULL;
        if (!mr || s->unloading || !ts_repl_model_ready(st->cfg.repl, s->name, &why))
            continue;
        /* The flags are set first: a control item of an idle model runs at once. */
        if ((capture_due || mr->dirty) && !mr->capture_queued) {
            mr->capture_queued = 1;
            if (ts_engine_control(st->cfg.engine, s, capture, st) < 0)
                mr->capture_queued = 0;
        }
        int unchecked = 0;
        for (rstate *rs = st->have; rs; rs = rs->next)
            unchecked |= !rs->checked && strcmp(rs->model, s->name) == 0 &&
                         strcmp(rs->origin, ts_repl_id(st->cfg.repl)) != 0;
        if (unchecked && !mr->check_queued) {
            mr->check_queued = 1;
            if (ts_engine_control(st->cfg.engine, s, check, st) < 0)
                mr->check_queued = 0;
        }
    }
}

int ts_state_start(ts_state *st, uv_loop_t *loop, char *err, size_t errlen) {
    st->loop = loop;
    st->t_start_ms = st->t_capture_ms = uv_now(loop);
    int rc = ts_wake_init(loop, &st->wake, on_wake, st);
    if (rc != 0) {
        snprintf(err, errlen, "replication states: cannot create their wake-up handle: %s", uv_strerror(rc));
        return -1;
    }
    uv_timer_init(loop, &st->tick);
    st->tick.data = st;
    uv_timer_start(&st->tick, on_tick, TICK_MS, TICK_MS);
    st->started = 1;
    return 0;
}

void ts_state_unsubscribe(ts_state *st) {
    if (!st)
        return;
    natsSubscription_Destroy(st->sub);
    st->sub = NULL;
}

void ts_state_stop(ts_state *st) {
    if (!st || !st->started)
        return;
    uv_timer_stop(&st->tick);
    uv_close((uv_handle_t *)&st->tick, NULL);
    ts_wake_close(&st->wake, NULL);
    st->started = 0;
}

/* ---- metrics ---- */

void ts_state_render_metrics(ts_state *st, ts_buf *out) {
    if (!st)
        return;
    static const char *const names[] = {"states_published", "state_chunks_published", "states_loaded", "resyncs",
                                        "digest_checks", "digest_mismatches", "state_publish_failures"};
    static const char *const helps[] = {
        "Model states this replica published (the join and resync source of others).",
        "Messages those states took (a state larger than the server's max_payload is split).",
        "Published states loaded here (a join, or a model whose deltas retention cut).",
        "Digest mismatches healed by loading another replica's state for the same position.",
        "Digest comparisons with other replicas' states for the same position.",
        "Digest comparisons that differed (the replica that loses the vote resyncs).",
        "Failed attempts to publish a state (each is retried)."};
    _Atomic uint64_t *v[] = {&st->published, &st->chunks, &st->loaded, &st->resyncs, &st->checks, &st->mismatches,
                             &st->failures};
    for (int i = 0; i < 7; i++)
        ts_buf_printf(out, "# HELP tscale_repl_%s_total %s\n# TYPE tscale_repl_%s_total counter\n"
                           "tscale_repl_%s_total %llu\n", names[i], helps[i], names[i], names[i],
                      (unsigned long long)atomic_load(v[i]));
}
