/* repl.c — replication through NATS JetStream (see repl.h). */
#include "server/repl/repl.h"

#include <jansson.h>
#include <nats/nats.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "proto/safetensors.h"
#include "server/http/auth.h"
#include "server/engine/engine.h"
#include "server/repl/chunks.h"
#include "server/repl/natsmsg.h"
#include "server/repl/state.h"
#include "server/store/journal.h"
#include "server/log.h"
#include "server/wake.h"

/* How often the loop looks for late steps, and the publisher's pause after a failure. */
#define TICK_MS 100
#define RETRY_MS 200
/* The ordered consumer's idle heartbeat: a consumer lost with a restarted server is
 * noticed (and recreated where it stopped) after a few of these. */
#define HEARTBEAT_NS 1000000000LL

/* ---- positions (loop) ---- */

typedef struct origin {
    char id[TS_TOKEN_MAX];
    int64_t seq;                 /* high-water mark: every step <= seq of it is in the state */
    uint64_t applied;            /* metrics: its deltas applied since start */
    struct origin *next;
} origin;

typedef struct position {
    char model[TS_MODEL_NAME_MAX];
    uint64_t stream_seq;         /* every delta of the stream <= this is in the state */
    int known;                   /* loaded from a snapshot or advanced since start */
    int64_t journaled;           /* this replica's highest own step of the model handed over
                                    for publishing (journaled): what a published state holds */
    char *diverged;              /* why feedback is refused (malloc'd), or NULL (ts_repl_model_ready) */
    int64_t own_seen;            /* the highest own step consumed from the stream */
    uint64_t admin_seq;          /* stream sequence of the last admin message applied: part of
                                    what a state holds (digests compare it with the marks) */
    /* Own steps applied locally to a state that an admin message replaced, and after that
     * message in the stream: applied again when consumed (repl.h "Admin everywhere"). */
    int64_t reapply_lo, reapply_hi; /* seq in (lo, hi] */
    int split_next;              /* the next own step queued is published alone */
    int deletes_queued;          /* DELETE admin messages in the model's FIFO, not yet applied */
    int64_t *reapply;            /* and these (journaled after the replacement) */
    size_t n_reapply;
    origin *origins;
    struct position *next;
} position;

/* One step to publish: owned by the queue until acknowledged or given up. */
typedef struct pub {
    char model[TS_MODEL_NAME_MAX];
    int64_t version, seq;
    char admin[16];              /* an admin message: "import", "restore" or "delete"; "" = a step */
    char admin_id[96];           /* its id, and this chunk of how many */
    int chunk, chunks;
    uint8_t *payload;
    size_t len;
    size_t n;                    /* scores in payload (0: unknown, never summed) */
    int single;                  /* published alone (republished from the journal; repl.h) */
    uint64_t t_queued_ms;        /* uv_now when queued */
    int64_t t_queued_ns;         /* monotonic, when queued: the publisher's summing window */
    int late;                    /* loop: TS_STEP_LATE reported */
    ts_step_cb cb;
    void *arg;
    struct pub *next;            /* todo / acked lists (mu) */
    struct pub *lnext;           /* loop: every step not yet acknowledged, oldest first */
} pub;

/* One message of the stream, on its way to its model's FIFO. */
typedef struct delta {
    ts_repl *r;
    char admin[16];              /* an admin message (pub's), its payload the model file */
    char admin_id[96];
    ts_chunks ch;                /* being assembled (the subscription's callback) */
    struct delta *next_asm;
    char model[TS_MODEL_NAME_MAX];
    char origin[TS_TOKEN_MAX];
    int64_t version, seq;        /* seq: the last step it covers */
    int64_t first_seq, steps;    /* the first step it covers, and how many (repl.h, Summing) */
    uint64_t stream_seq;
    int64_t stored_ns;           /* when JetStream stored it (Unix ns; 0: unknown) */
    int counted;                 /* a DELETE counted in its position's deletes_queued */
    uint8_t *payload;
    size_t len;
    struct delta *next;
} delta;

struct ts_repl {
    ts_repl_config cfg;          /* strings owned below */
    char *urls, *id, *token_file, *stream;
    uv_loop_t *loop;
    struct ts_engine *engine;
    position *positions;         /* loop */
    int started;
    /* NATS */
    natsConnection *nc;
    jsCtx *js;
    natsSubscription *sub;
    uint64_t start_seq;          /* where consuming starts (set before the thread runs, or by
                                    ts_repl_join_done once published states are loaded) */
    ts_state *state;             /* published states (state.h), or NULL */
    ts_repl_admin_fn admin_fn;   /* applies admin messages (ts_repl_set_admin) */
    void *admin_arg;
    delta *asm_head;             /* the subscription's callback: admin messages in chunks */
    uint64_t admin_counter;      /* loop: admin messages published by this process */
    int joined;                  /* mu: ts_repl_join_done ran */
    pthread_t thread;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int stopping;                /* mu */
    pub *todo_head, *todo_tail;  /* mu: the head is being published */
    pub *acked_head, *acked_tail;/* mu: acknowledged, for the loop */
    delta *in_head, *in_tail;    /* mu: consumed, for the loop */
    delta *held;                 /* loop: messages that bring back a model still being unloaded
                                    (and those after them for it), in stream order (drain_in) */
    ts_wake wake;                 /* libnats' threads -> loop: acks and deltas in the lists */
    uv_timer_t tick;
    _Atomic int connected, set_up;
    pub *lhead, *ltail;          /* loop: the same steps as todo, in the same order (walked
                                    without the lock; acknowledgements come in this order) */
    int64_t pending;             /* loop: queued and not acknowledged */
    int draining;                /* loop: shutdown began; consumed deltas are dropped */
    int64_t queued_deltas;       /* loop: handed to FIFOs, not yet applied */
    int any_late;                /* loop: a queued step is late */
    char why[256];               /* loop: ts_repl_ready's reason */
    /* metrics */
    _Atomic uint64_t published, publish_failures, duplicates, other_version, malformed, unknown_model;
    _Atomic uint64_t messages, straddles; /* messages published; straddling deltas skipped */
    ts_hist steps_per_message;   /* publisher thread observes, scrapes read */
    _Atomic uint64_t num_pending; /* the consumer's NumPending at the newest message */
    _Atomic int64_t applied_ns;   /* loop writes: stored_ns of the newest delta taken (applied or
                                     skipped) — the lag in seconds is measured from it */
};

static void position_free(position *p) {
    free(p->diverged);
    free(p->reapply);
    while (p->origins) {
        origin *o = p->origins;
        p->origins = o->next;
        free(o);
    }
    free(p);
}

/* The position of model, created empty (NULL when out of memory). */
static position *position_get(ts_repl *r, const char *model) {
    for (position *p = r->positions; p; p = p->next)
        if (strcmp(p->model, model) == 0)
            return p;
    position *p = calloc(1, sizeof *p);
    if (!p)
        return NULL;
    snprintf(p->model, sizeof p->model, "%s", model);
    p->next = r->positions;
    r->positions = p;
    return p;
}

static origin *origin_get(position *p, const char *id) {
    for (origin *o = p->origins; o; o = o->next)
        if (strcmp(o->id, id) == 0)
            return o;
    origin *o = calloc(1, sizeof *o);
    if (!o)
        return NULL;
    snprintf(o->id, sizeof o->id, "%s", id);
    o->next = p->origins;
    p->origins = o;
    return o;
}

/* p as JSON (malloc'd; NULL when out of memory). self (when not NULL) is this replica's
 * id, whose mark is raised to at least self_mark; marks of 0 are left out then. */
static char *position_json(const position *p, const char *self, int64_t self_mark) {
    json_t *origins = json_object(), *doc = json_object();
    for (const origin *o = p->origins; origins && o; o = o->next) {
        int64_t v = self && strcmp(o->id, self) == 0 && self_mark > o->seq ? self_mark : o->seq;
        if (!self || v > 0)
            json_object_set_new(origins, o->id, json_integer(v));
    }
    if (origins && self && self_mark > 0 && !json_object_get(origins, self))
        json_object_set_new(origins, self, json_integer(self_mark));
    if (doc && p->admin_seq)
        json_object_set_new(doc, "admin_seq", json_integer((json_int_t)p->admin_seq));
    if (doc && !self && (p->reapply_hi > p->reapply_lo || p->n_reapply)) { /* this replica's own business */
        json_t *a = json_pack("[I,I]", (json_int_t)p->reapply_lo, (json_int_t)p->reapply_hi);
        for (size_t i = 0; a && i < p->n_reapply; i++)
            json_array_append_new(a, json_integer(p->reapply[i]));
        json_object_set_new(doc, "reapply", a);
    }
    char *out = NULL;
    if (origins && doc && json_object_set_new(doc, "stream_seq", json_integer((json_int_t)p->stream_seq)) == 0 &&
        json_object_set(doc, "origins", origins) == 0)
        out = json_dumps(doc, JSON_COMPACT | JSON_SORT_KEYS);
    json_decref(origins);
    json_decref(doc);
    return out;
}

static position *position_find(ts_repl *r, const char *model) {
    position *p = r->positions;
    while (p && strcmp(p->model, model) != 0)
        p = p->next;
    return p;
}

char *ts_repl_position(ts_repl *r, const char *model) {
    position *p = position_find(r, model);
    return p && p->known ? position_json(p, NULL, 0) : NULL;
}

char *ts_repl_state_position(ts_repl *r, const char *model) {
    position *p = position_find(r, model);
    return p && ts_repl_enabled(r) ? position_json(p, r->id, p->journaled) : NULL;
}

int ts_repl_position_known(ts_repl *r, const char *model) {
    position *p = position_find(r, model);
    return p && p->known;
}

/* Load a position stored by ts_repl_position. 0, or -1 when it does not parse. */
static int position_load(ts_repl *r, const char *model, const char *text) {
    json_error_t jerr;
    json_t *doc = json_loads(text, 0, &jerr);
    json_t *seq = doc ? json_object_get(doc, "stream_seq") : NULL;
    json_t *origins = doc ? json_object_get(doc, "origins") : NULL;
    position *p = seq && json_is_integer(seq) && json_is_object(origins) ? position_get(r, model) : NULL;
    int rc = p ? 0 : -1;
    json_t *re = doc ? json_object_get(doc, "reapply") : NULL;
    if (p)
        p->admin_seq = (uint64_t)json_integer_value(json_object_get(doc, "admin_seq"));
    if (p && json_array_size(re) >= 2) {
        p->reapply_lo = json_integer_value(json_array_get(re, 0));
        p->reapply_hi = json_integer_value(json_array_get(re, 1));
        for (size_t i = 2; i < json_array_size(re); i++)
            ts_repl_reapply(r, model, json_integer_value(json_array_get(re, i)));
    }
    if (p) {
        p->stream_seq = (uint64_t)json_integer_value(seq);
        p->known = 1;
        const char *id;
        json_t *v;
        json_object_foreach(origins, id, v) {
            origin *o = json_is_integer(v) ? origin_get(p, id) : NULL;
            if (o)
                o->seq = json_integer_value(v);
            else
                rc = -1;
        }
    }
    json_decref(doc);
    return rc;
}

int ts_repl_position_adopt(ts_repl *r, const char *model, const char *text) {
    position *p = position_get(r, model);
    if (!p)
        return -1;
    while (p->origins) {
        origin *o = p->origins;
        p->origins = o->next;
        free(o);
    }
    free(p->diverged);
    p->diverged = NULL;
    p->reapply_lo = p->reapply_hi = 0;
    p->n_reapply = 0;
    return position_load(r, model, text);
}

void ts_repl_set_diverged(ts_repl *r, const char *model, const char *why) {
    position *p = position_get(r, model);
    if (p) {
        free(p->diverged);
        p->diverged = why ? strdup(why) : NULL;
    }
}

int ts_repl_model_ready(const ts_repl *r, const char *model, const char **why) {
    if (!ts_repl_ready(r, why))
        return 0;
    if (!ts_repl_enabled(r))
        return 1;
    for (position *p = r->positions; p; p = p->next)
        if (p->diverged && strcmp(p->model, model) == 0) {
            if (why)
                *why = p->diverged;
            return 0;
        }
    return 1;
}

int64_t ts_repl_max_age(const ts_repl *r) { return r->cfg.max_age_s; }

void ts_repl_set_state(ts_repl *r, ts_state *st) { r->state = st; }

void ts_repl_wake(ts_repl *r) {
    pthread_mutex_lock(&r->mu);
    pthread_cond_signal(&r->cv);
    pthread_mutex_unlock(&r->mu);
}

/* Where consuming starts: the oldest stream position a served model's state covers. */
static uint64_t consume_from(ts_repl *r) {
    uint64_t start = UINT64_MAX;
    for (ts_served *s = ts_engine_first(r->engine); s; s = s->next) {
        position *p = position_get(r, s->name);
        uint64_t from = p && p->known ? p->stream_seq + 1 : 1;
        start = from < start ? from : start;
    }
    return start == UINT64_MAX ? 1 : start;
}

void ts_repl_join_done(ts_repl *r) {
    uint64_t start = consume_from(r);
    pthread_mutex_lock(&r->mu);
    r->start_seq = start;
    r->joined = 1;
    pthread_cond_signal(&r->cv);
    pthread_mutex_unlock(&r->mu);
}

/* ---- life cycle ---- */

ts_repl *ts_repl_new(const ts_repl_config *cfg, char *err, size_t errlen) {
    ts_repl *r = calloc(1, sizeof *r);
    if (!r) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    r->cfg = *cfg;
    if (!cfg->urls)
        return r;
    pthread_mutex_init(&r->mu, NULL);
    pthread_cond_init(&r->cv, NULL);
    ts_hist_init_counts(&r->steps_per_message);
    r->urls = strdup(cfg->urls);
    r->id = strdup(cfg->replica_id);
    r->stream = strdup(cfg->stream);
    r->token_file = cfg->token_file ? strdup(cfg->token_file) : NULL;
    r->cfg.urls = r->urls;
    r->cfg.replica_id = r->id;
    r->cfg.stream = r->stream;
    r->cfg.token_file = r->token_file;
    if (!r->urls || !r->id || !r->stream || (cfg->token_file && !r->token_file))
        snprintf(err, errlen, "out of memory");
    else if (!r->id[0] || strlen(r->id) >= TS_TOKEN_MAX)
        snprintf(err, errlen, "--replica-id must be 1 to %d characters", TS_TOKEN_MAX - 1);
    else
        return r;
    ts_repl_free(r);
    return NULL;
}

static void pub_free(pub *p) {
    free(p->payload);
    free(p);
}

static void delta_free(delta *d) {
    ts_chunks_free(&d->ch);
    free(d->payload);
    free(d);
}

void ts_repl_free(ts_repl *r) {
    if (!r)
        return;
    while (r->asm_head) {
        delta *d = r->asm_head;
        r->asm_head = d->next_asm;
        delta_free(d);
    }
    while (r->held) {
        delta *d = r->held;
        r->held = d->next;
        delta_free(d);
    }
    while (r->positions) {
        position *p = r->positions;
        r->positions = p->next;
        position_free(p);
    }
    if (r->cfg.urls) {
        pthread_mutex_destroy(&r->mu);
        pthread_cond_destroy(&r->cv);
    }
    free(r->urls);
    free(r->id);
    free(r->stream);
    free(r->token_file);
    free(r);
}

int ts_repl_enabled(const ts_repl *r) { return r && r->cfg.urls != NULL; }
int64_t ts_repl_pending(const ts_repl *r) { return ts_repl_enabled(r) ? r->pending : 0; }

int ts_repl_ready(const ts_repl *r, const char **why) {
    const char *w = NULL;
    if (!ts_repl_enabled(r))
        return 1;
    if (!atomic_load(&r->connected))
        w = "NATS is not reachable";
    else if (!atomic_load(&r->set_up))
        w = "the replication stream is not set up yet";
    else if (r->any_late)
        w = "JetStream has not acknowledged earlier steps in time";
    if (w && why)
        *why = w;
    return w == NULL;
}

/* ---- publishing ---- */

/* Append p to a list linked through next (todo or acked; mu held). */
static void pub_push(pub **head, pub **tail, pub *p) {
    p->next = NULL;
    if (*tail)
        (*tail)->next = p;
    else
        *head = p;
    *tail = p;
}

/* Monotonic nanoseconds (the publisher's summing window). */
static int64_t mono_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static void enqueue_pub(ts_repl *r, pub *p) {
    p->t_queued_ms = r->loop ? uv_now(r->loop) : 0;
    p->t_queued_ns = mono_ns();
    position *pos = position_get(r, p->model);
    if (pos && p->seq > pos->journaled)
        pos->journaled = p->seq;
    p->lnext = NULL;
    if (r->ltail)
        r->ltail->lnext = p;
    else
        r->lhead = p;
    r->ltail = p;
    r->pending++;
    pthread_mutex_lock(&r->mu);
    pub_push(&r->todo_head, &r->todo_tail, p);
    pthread_cond_signal(&r->cv);
    pthread_mutex_unlock(&r->mu);
}

/* A step of seq whose encoded payload[len] is copied. NULL when out of memory. */
static pub *pub_new(const char *model, int64_t version, int64_t seq, const uint8_t *payload, size_t len) {
    pub *p = calloc(1, sizeof *p);
    if (p && !(p->payload = malloc(len ? len : 1))) {
        free(p);
        return NULL;
    }
    if (!p)
        return NULL;
    snprintf(p->model, sizeof p->model, "%s", model);
    p->version = version;
    p->seq = seq;
    memcpy(p->payload, payload, len);
    p->len = len;
    return p;
}

int ts_repl_publish(ts_repl *r, const char *model, int64_t version, int64_t seq, const int16_t *scores,
                    size_t n, ts_step_cb cb, void *arg) {
    uint8_t *enc = malloc(1 + 2 * n);
    pub *p = enc ? pub_new(model, version, seq, enc, ts_journal_encode(scores, n, enc)) : NULL;
    free(enc);
    if (!p)
        return -1;
    p->n = n;
    p->cb = cb;
    p->arg = arg;
    /* Around an admin message, a summed message must not mix steps that are applied again
     * with steps that are not (repl.h): the first step queued after one, and every step to
     * apply again that is queued after it, go alone. */
    position *pos = position_get(r, model);
    if (pos && pos->split_next) {
        p->single = 1;
        pos->split_next = 0;
    }
    for (size_t i = 0; pos && i < pos->n_reapply; i++)
        p->single |= pos->reapply[i] == seq;
    enqueue_pub(r, p);
    return 0;
}

int ts_repl_publish_admin(ts_repl *r, const char *model, const char *what, int64_t version,
                          const uint8_t *bytes, size_t len, char *id, size_t idlen) {
    size_t room = ts_chunk_room(atomic_load(&r->connected) && r->nc ? natsConnection_GetMaxPayload(r->nc) : 0);
    int chunks = ts_chunk_count(len, room);
    snprintf(id, idlen, "%s:admin:%llu:%llu", r->id, (unsigned long long)(ts_now_us() / 1000),
             (unsigned long long)++r->admin_counter);
    pub **ps = calloc((size_t)chunks, sizeof *ps);
    if (!ps)
        return -1;
    for (int i = 0; i < chunks; i++) {
        size_t off = (size_t)i * room, n = len - off < room ? len - off : room;
        ps[i] = pub_new(model, version, 0, bytes ? bytes + off : (const uint8_t *)"", len ? n : 0);
        if (!ps[i]) {
            while (i-- > 0)
                pub_free(ps[i]);
            free(ps);
            return -1;
        }
        snprintf(ps[i]->admin, sizeof ps[i]->admin, "%s", what);
        snprintf(ps[i]->admin_id, sizeof ps[i]->admin_id, "%s", id);
        ps[i]->chunk = i;
        ps[i]->chunks = chunks;
        ps[i]->single = 1; /* never summed with steps */
    }
    for (int i = 0; i < chunks; i++)
        enqueue_pub(r, ps[i]); /* behind the steps journaled before it */
    free(ps);
    return 0;
}

void ts_repl_set_admin(ts_repl *r, ts_repl_admin_fn fn, void *arg) {
    r->admin_fn = fn;
    r->admin_arg = arg;
}

void ts_repl_reapply(ts_repl *r, const char *model, int64_t seq) {
    position *p = position_get(r, model);
    int64_t *a = p ? realloc(p->reapply, (p->n_reapply + 1) * sizeof *a) : NULL;
    if (!a) {
        ts_log_error("replication: model '%s': out of memory remembering step %lld to apply again", model,
                     (long long)seq);
        return;
    }
    a[p->n_reapply++] = seq;
    p->reapply = a;
}

/* Whether own step seq of p is to be applied again (once: an extra is forgotten). */
static int reapply_take(position *p, int64_t seq) {
    if (seq > p->reapply_lo && seq <= p->reapply_hi)
        return 1;
    for (size_t i = 0; i < p->n_reapply; i++)
        if (p->reapply[i] == seq) {
            p->reapply[i] = p->reapply[--p->n_reapply];
            return 1;
        }
    return 0;
}

/* Publisher thread: the payload of the n steps from first (queued, so not freed under
 * us; only their own fields are read, never the last one's next): the step's own payload
 * when n is 1, else the sum of their scores (repl.h, Summing). *out is malloc'd when
 * summed, else the first step's. 0, or -1 when out of memory or a payload does not decode. */
static int group_payload(const pub *first, size_t n, uint8_t **out, size_t *len) {
    if (n == 1) {
        *out = first->payload;
        *len = first->len;
        return 0;
    }
    size_t g = first->n;
    int32_t *sums = calloc(g ? g : 1, sizeof *sums);
    int16_t *one = malloc((g ? g : 1) * sizeof *one);
    uint8_t *enc = malloc(1 + 4 * g);
    int rc = sums && one && enc ? 0 : -1;
    const pub *p = first;
    for (size_t i = 0; rc == 0 && i < n; i++) {
        rc = ts_journal_decode(p->payload, p->len, one, g);
        for (size_t k = 0; rc == 0 && k < g; k++)
            sums[k] += one[k]; /* |sum| <= TS_REPL_BATCH_MAX · 32768 = 2^31: repl.h */
        if (i + 1 < n)
            p = p->next;
    }
    if (rc == 0) {
        *len = ts_journal_encode_sum(sums, g, enc);
        *out = enc;
    } else {
        free(enc);
    }
    free(sums);
    free(one);
    return rc;
}

/* Publisher thread: publish the n steps from first (the last is last) as one message and
 * wait for its PubAck. NATS_OK or why not in err. */
static natsStatus publish_group(ts_repl *r, const pub *first, const pub *last, size_t n, char *err,
                                size_t errlen) {
    char subj[256], v[32], s[32], f[32], c[32], chunk[32], msgid[TS_TOKEN_MAX + 64];
    snprintf(subj, sizeof subj, "%s.delta.%s", r->stream, first->model);
    snprintf(v, sizeof v, "%lld", (long long)first->version);
    snprintf(s, sizeof s, "%lld", (long long)last->seq);
    snprintf(f, sizeof f, "%lld", (long long)first->seq);
    snprintf(c, sizeof c, "%zu", n);
    if (first->admin[0]) { /* an admin message (alone, never summed): its id, no step seq */
        snprintf(msgid, sizeof msgid, "%s:%d", first->admin_id, first->chunk);
        ts_chunk_format(first->chunk, first->chunks, chunk, sizeof chunk);
    } else if (n == 1)
        snprintf(msgid, sizeof msgid, "%s:%lld", r->id, (long long)last->seq);
    else
        snprintf(msgid, sizeof msgid, "%s:%lld-%lld", r->id, (long long)first->seq, (long long)last->seq);
    uint8_t *payload = NULL;
    size_t len = 0;
    if (group_payload(first, n, &payload, &len) < 0) {
        snprintf(err, errlen, "out of memory summing %zu steps (or a queued payload does not decode)", n);
        return NATS_NO_MEMORY;
    }
    natsMsg *m = NULL;
    jsPubAck *ack = NULL;
    jsErrCode jerr = 0;
    jsPubOptions po;
    jsPubOptions_Init(&po);
    po.MaxWait = r->cfg.ack_timeout_ms;
    natsStatus st = natsMsg_Create(&m, subj, NULL, (const char *)payload, (int)len);
    if (st == NATS_OK)
        st = natsMsgHeader_Set(m, "Tscale-Origin", r->id);
    if (st == NATS_OK)
        st = first->admin[0] ? natsMsgHeader_Set(m, "Tscale-Admin", first->admin)
                             : natsMsgHeader_Set(m, "Tscale-Seq", s);
    if (st == NATS_OK && first->admin[0])
        st = natsMsgHeader_Set(m, "Tscale-Admin-Id", first->admin_id);
    if (st == NATS_OK && first->admin[0])
        st = natsMsgHeader_Set(m, "Tscale-Chunk", chunk);
    if (st == NATS_OK && n > 1)
        st = natsMsgHeader_Set(m, "Tscale-First-Seq", f);
    if (st == NATS_OK && n > 1)
        st = natsMsgHeader_Set(m, "Tscale-Steps", c);
    if (st == NATS_OK)
        st = natsMsgHeader_Set(m, "Tscale-Version", v);
    if (st == NATS_OK)
        st = natsMsgHeader_Set(m, "Tscale-Model", first->model);
    if (st == NATS_OK)
        st = natsMsgHeader_Set(m, "Nats-Msg-Id", msgid);
    if (st == NATS_OK)
        st = js_PublishMsg(&ack, r->js, m, &po, &jerr);
    if (st != NATS_OK)
        snprintf(err, errlen, "%s%s", natsStatus_GetText(st), jerr ? " (JetStream error)" : "");
    jsPubAck_Destroy(ack);
    natsMsg_Destroy(m);
    if (payload != first->payload)
        free(payload);
    return st;
}

/* Headroom for a message's headers under the server's payload limit. */
#define HEADERS_MAX 1024

/* Publisher thread, mu held, todo not empty: how many steps from the head the next message
 * takes — `frozen` when a failed message is being retried (never regrouped: repl.h), else
 * the head's run of steps of the same model and version, up to --replicate-batch-max. 0
 * while that group can still grow and its window is open (the head was queued while the
 * previous message waited for its PubAck, at or before done_ns, and less than
 * --replicate-batch-ms ago): wait until *wake_ns. A step queued while nothing was in
 * flight goes at once, so a steady trickle pays no window. A model whose sums could
 * outgrow the server's max_payload (4 bytes a group) is never summed. */
static size_t group_next(ts_repl *r, size_t frozen, int64_t done_ns, int64_t *wake_ns) {
    pub *h = r->todo_head, *p = h;
    if (frozen || r->cfg.batch_ms <= 0 || h->single || !h->n ||
        (int64_t)(1 + 4 * h->n) + HEADERS_MAX > natsConnection_GetMaxPayload(r->nc))
        return frozen ? frozen : 1;
    size_t n = 1;
    for (; n < (size_t)r->cfg.batch_max && p->next; p = p->next, n++) {
        const pub *q = p->next;
        if (q->single || q->version != h->version || q->n != h->n || strcmp(q->model, h->model) != 0)
            return n; /* closed: a step that can't join is queued behind it */
    }
    *wake_ns = h->t_queued_ns + r->cfg.batch_ms * 1000000LL;
    return n == (size_t)r->cfg.batch_max || h->t_queued_ns > done_ns || mono_ns() >= *wake_ns ? n : 0;
}

/* ---- consuming (libnats' subscription thread) ---- */

static void push_in(ts_repl *r, delta *d) {
    pthread_mutex_lock(&r->mu);
    if (r->in_tail)
        r->in_tail->next = d;
    else
        r->in_head = d;
    r->in_tail = d;
    pthread_mutex_unlock(&r->mu);
    ts_wake_send(&r->wake);
}

/* One chunk of an admin message (the subscription's callback): assembled per origin (one
 * publisher thread per replica sends them in order); the whole message goes to the loop
 * with the stream sequence of its last chunk, where it takes effect. 0, or -1 (malformed). */
static int admin_chunk(ts_repl *r, natsMsg *msg, const jsMsgMetaData *meta) {
    const char *o = ts_natsmsg_header(msg, "Tscale-Origin"), *model = ts_natsmsg_header(msg, "Tscale-Model");
    const char *id = ts_natsmsg_header(msg, "Tscale-Admin-Id"), *what = ts_natsmsg_header(msg, "Tscale-Admin");
    const char *chunk = ts_natsmsg_header(msg, "Tscale-Chunk");
    int i = -1, n = 0;
    int64_t version = 0;
    if (!o || !model || !id || ts_chunk_parse(chunk, &i, &n) < 0 ||
        strlen(o) >= TS_TOKEN_MAX || strlen(model) >= TS_MODEL_NAME_MAX || strlen(id) >= 96 || strlen(what) >= 16 ||
        ts_natsmsg_int(msg, "Tscale-Version", &version) != 0)
        return -1;
    delta **pp = &r->asm_head;
    while (*pp && strcmp((*pp)->origin, o) != 0)
        pp = &(*pp)->next_asm;
    delta *d = *pp;
    if (i == 0 && d) { /* a new message: an unfinished one of this origin is dropped */
        *pp = d->next_asm;
        delta_free(d);
        d = NULL;
    }
    if (i == 0 && (d = calloc(1, sizeof *d)) != NULL) {
        d->r = r;
        snprintf(d->origin, sizeof d->origin, "%s", o);
        snprintf(d->model, sizeof d->model, "%s", model);
        snprintf(d->admin, sizeof d->admin, "%s", what);
        snprintf(d->admin_id, sizeof d->admin_id, "%s", id);
        d->version = version;
        ts_chunks_begin(&d->ch, n);
        d->next_asm = r->asm_head;
        r->asm_head = d;
    }
    if (!d || strcmp(d->admin_id, id) != 0)
        return -1; /* out of memory, or its first chunk missing */
    int rc = ts_chunks_add(&d->ch, i, natsMsg_GetData(msg), (size_t)natsMsg_GetDataLength(msg));
    if (rc <= 0)
        return rc; /* more to come, or a chunk missing */
    d->payload = ts_chunks_take(&d->ch, &d->len);
    for (pp = &r->asm_head; *pp != d; pp = &(*pp)->next_asm)
        ;
    *pp = d->next_asm;
    d->stream_seq = meta->Sequence.Stream;
    push_in(r, d);
    return 0;
}

/* The steps a delta covers (repl.h, Summing): Tscale-First-Seq and Tscale-Steps, both or
 * neither (a single step: first = seq, steps = 1). 0, or -1 when they don't fit seq. */
static int parse_span(natsMsg *msg, delta *d) {
    const char *f = ts_natsmsg_header(msg, "Tscale-First-Seq"), *c = ts_natsmsg_header(msg, "Tscale-Steps");
    if (!f && !c) {
        d->first_seq = d->seq;
        d->steps = 1;
        return 0;
    }
    return ts_natsmsg_int(msg, "Tscale-First-Seq", &d->first_seq) == 0 &&
                   ts_natsmsg_int(msg, "Tscale-Steps", &d->steps) == 0 && d->first_seq >= 1 &&
                   d->first_seq < d->seq && d->steps >= 2 && d->steps <= d->seq - d->first_seq + 1 &&
                   d->steps <= TS_REPL_BATCH_MAX
               ? 0
               : -1;
}

/* Who owns what: libnats hands msg over (destroyed here); the delta goes to the loop. */
static void on_msg(natsConnection *nc, natsSubscription *sub, natsMsg *msg, void *closure) {
    ts_repl *r = closure;
    if (ts_natsmsg_header(msg, "Tscale-Admin")) {
        jsMsgMetaData *am = NULL;
        if (natsMsg_GetMetaData(&am, msg) != NATS_OK || admin_chunk(r, msg, am) < 0)
            atomic_fetch_add(&r->malformed, 1);
        if (am)
            atomic_store(&r->num_pending, am->NumPending);
        jsMsgMetaData_Destroy(am);
        natsMsg_Destroy(msg);
        return;
    }
    jsMsgMetaData *meta = NULL;
    delta *d = calloc(1, sizeof *d);
    const char *o = ts_natsmsg_header(msg, "Tscale-Origin"), *model = ts_natsmsg_header(msg, "Tscale-Model");
    int len = natsMsg_GetDataLength(msg);
    int ok = d && natsMsg_GetMetaData(&meta, msg) == NATS_OK && o && model && strlen(o) < sizeof d->origin &&
             strlen(model) < sizeof d->model && ts_natsmsg_int(msg, "Tscale-Seq", &d->seq) == 0 &&
             ts_natsmsg_int(msg, "Tscale-Version", &d->version) == 0 && parse_span(msg, d) == 0 &&
             (d->payload = malloc(len > 0 ? (size_t)len : 1)) != NULL;
    if (ok) {
        d->r = r;
        snprintf(d->origin, sizeof d->origin, "%s", o);
        snprintf(d->model, sizeof d->model, "%s", model);
        d->stream_seq = meta->Sequence.Stream;
        d->stored_ns = meta->Timestamp;
        d->len = (size_t)len;
        memcpy(d->payload, natsMsg_GetData(msg), d->len);
        atomic_store(&r->num_pending, meta->NumPending);
        push_in(r, d);
    } else {
        atomic_fetch_add(&r->malformed, 1);
        if (d)
            delta_free(d);
    }
    jsMsgMetaData_Destroy(meta);
    natsMsg_Destroy(msg);
}

/* ---- the publisher thread: set-up, then publish in order ---- */

/* Create the stream when missing, then subscribe. 0, or -1 + err (retried later). */
static int set_up(ts_repl *r, char *err, size_t errlen) {
    jsErrCode jerr = 0;
    jsStreamInfo *si = NULL;
    natsStatus st = r->js ? NATS_OK : natsConnection_JetStream(&r->js, r->nc, NULL);
    if (st == NATS_OK)
        st = js_GetStreamInfo(&si, r->js, r->stream, NULL, &jerr);
    if (st == NATS_NOT_FOUND) {
        char subject[128];
        const char *subjects[1] = {subject};
        snprintf(subject, sizeof subject, "%s.delta.>", r->stream);
        jsStreamConfig sc;
        jsStreamConfig_Init(&sc);
        sc.Name = r->stream;
        sc.Subjects = subjects;
        sc.SubjectsLen = 1;
        sc.Storage = js_FileStorage;
        sc.MaxAge = r->cfg.max_age_s * 1000000000LL;
        sc.Replicas = r->cfg.replicas;
        st = js_AddStream(&si, r->js, &sc, NULL, &jerr);
        if (st == NATS_OK)
            ts_log_info("replication: created stream '%s' (subjects %s, file storage, max age %lld s, "
                        "%lld replicas)", r->stream, subject, (long long)r->cfg.max_age_s,
                        (long long)r->cfg.replicas);
    }
    uint64_t first_seq = si ? si->State.FirstSeq : 0;
    jsStreamInfo_Destroy(si);
    if (st == NATS_OK && r->state && !r->sub) { /* join: published states first (state.h) */
        if (ts_state_set_up(r->state, r->js, first_seq, err, errlen) < 0)
            return -1;
        pthread_mutex_lock(&r->mu);
        while (!r->joined && !r->stopping)
            pthread_cond_wait(&r->cv, &r->mu);
        int stopping = r->stopping;
        pthread_mutex_unlock(&r->mu);
        if (stopping) {
            snprintf(err, errlen, "shutting down");
            return -1;
        }
    }
    if (st == NATS_OK && !r->sub) {
        char subject[128];
        snprintf(subject, sizeof subject, "%s.delta.>", r->stream);
        jsSubOptions so;
        jsSubOptions_Init(&so);
        so.Stream = r->stream;
        so.Ordered = true;
        so.Config.Heartbeat = HEARTBEAT_NS;
        so.Config.DeliverPolicy = r->start_seq > 1 ? js_DeliverByStartSequence : js_DeliverAll;
        so.Config.OptStartSeq = r->start_seq > 1 ? r->start_seq : 0;
        st = js_Subscribe(&r->sub, r->js, subject, on_msg, r, NULL, &so, &jerr);
        if (st == NATS_OK)
            ts_log_info("replication: consuming stream '%s' from sequence %llu as replica '%s'", r->stream,
                        (unsigned long long)(r->start_seq ? r->start_seq : 1), r->id);
    }
    if (st != NATS_OK)
        snprintf(err, errlen, "%s (JetStream error %d): %s", natsStatus_GetText(st), (int)jerr,
                 nats_GetLastError(NULL));
    return st == NATS_OK ? 0 : -1;
}

/* Wait up to ns on the condition variable (mu held); returns at once when stopping, and
 * when a step is queued (enqueue_pub signals). */
static void pause_ns_locked(ts_repl *r, int64_t ns) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    ts.tv_sec += (time_t)(ns / 1000000000LL);
    ts.tv_nsec += (long)(ns % 1000000000LL);
    if (ts.tv_nsec >= 1000000000L) {
        ts.tv_sec++;
        ts.tv_nsec -= 1000000000L;
    }
    if (!r->stopping && ns > 0)
        pthread_cond_timedwait(&r->cv, &r->mu, &ts);
}

static void pause_locked(ts_repl *r, int64_t ms) { pause_ns_locked(r, ms * 1000000LL); }

/* One failure log line per streak, so a long outage does not flood the log. */
static void note_failure(ts_repl *r, int *streak, const char *what, const char *err) {
    atomic_fetch_add(&r->publish_failures, 1);
    if ((*streak)++ == 0)
        ts_log_warn("replication: %s failed: %s; retrying every %d ms", what, err, RETRY_MS);
}

/* Publisher thread, mu held: the n steps at the head of todo were acknowledged. */
static void ack_group(ts_repl *r, size_t n) {
    atomic_fetch_add(&r->published, n);
    atomic_fetch_add(&r->messages, 1);
    ts_hist_observe(&r->steps_per_message, n);
    for (size_t i = 0; i < n; i++) {
        pub *p = r->todo_head;
        r->todo_head = p->next;
        if (!r->todo_head)
            r->todo_tail = NULL;
        pub_push(&r->acked_head, &r->acked_tail, p);
    }
    ts_wake_send(&r->wake);
}

static void *thread_main(void *arg) {
    ts_repl *r = arg;
    int streak = 0;
    size_t frozen = 0;   /* steps of the message being retried (0: none) */
    int64_t done_ns = 0; /* when the last message's publish returned */
    char err[512];
    pthread_mutex_lock(&r->mu);
    while (!r->stopping) {
        if (atomic_load(&r->set_up) && !r->todo_head && atomic_load(&r->connected) && r->state &&
            ts_state_queued(r->state)) { /* states only when no step waits */
            pthread_mutex_unlock(&r->mu);
            int rc = ts_state_publish(r->state, r->js, natsConnection_GetMaxPayload(r->nc), err, sizeof err);
            pthread_mutex_lock(&r->mu);
            if (rc < 0) {
                note_failure(r, &streak, "publishing a model state", err);
                pause_locked(r, RETRY_MS);
            }
            continue;
        }
        if (!atomic_load(&r->set_up) || !r->todo_head || !atomic_load(&r->connected)) {
            if (!atomic_load(&r->set_up) && atomic_load(&r->connected)) {
                pthread_mutex_unlock(&r->mu);
                int ok = set_up(r, err, sizeof err) == 0;
                pthread_mutex_lock(&r->mu);
                if (ok) {
                    atomic_store(&r->set_up, 1);
                    ts_wake_send(&r->wake);
                    streak = 0;
                    continue;
                }
                note_failure(r, &streak, "setting up the stream", err);
            }
            pause_locked(r, RETRY_MS);
            continue;
        }
        int64_t wake_ns = 0;
        size_t n = group_next(r, frozen, done_ns, &wake_ns);
        if (!n) { /* the summing window is open and the group can grow */
            pause_ns_locked(r, wake_ns - mono_ns());
            continue;
        }
        pub *first = r->todo_head, *last = first; /* stay queued (and owned by the queue) until acknowledged */
        for (size_t i = 1; i < n; i++)
            last = last->next;
        frozen = n;
        pthread_mutex_unlock(&r->mu);
        natsStatus st = publish_group(r, first, last, n, err, sizeof err);
        done_ns = mono_ns();
        pthread_mutex_lock(&r->mu);
        if (st != NATS_OK) {
            note_failure(r, &streak, "publishing a step", err);
            pause_locked(r, RETRY_MS);
            continue;
        }
        if (streak)
            ts_log_info("replication: JetStream acknowledges steps again");
        streak = 0;
        frozen = 0;
        ack_group(r, n);
    }
    pthread_mutex_unlock(&r->mu);
    return NULL;
}

/* ---- connection events (libnats' threads) ---- */

static void on_connected(natsConnection *nc, void *closure) {
    ts_repl *r = closure;
    atomic_store(&r->connected, 1);
    ts_log_info("replication: connected to NATS");
    pthread_mutex_lock(&r->mu);
    pthread_cond_signal(&r->cv);
    pthread_mutex_unlock(&r->mu);
}

static void on_disconnected(natsConnection *nc, void *closure) {
    ts_repl *r = closure;
    if (atomic_exchange(&r->connected, 0))
        ts_log_warn("replication: disconnected from NATS; feedback is refused (503) until it is back, "
                    "inference goes on");
}

/* ---- the loop side ---- */

static void apply_delta(struct ts_engine *e, ts_served *s, void *arg);
static void apply_admin(struct ts_engine *e, ts_served *s, void *arg);

/* The acknowledged steps: marks and callbacks. */
static void drain_acked(ts_repl *r) {
    pthread_mutex_lock(&r->mu);
    pub *acked = r->acked_head;
    r->acked_head = r->acked_tail = NULL;
    pthread_mutex_unlock(&r->mu);
    for (pub *p; (p = acked) != NULL;) {
        acked = p->next;
        r->lhead = p->lnext; /* acknowledged in queue order: p is the oldest */
        if (!r->lhead)
            r->ltail = NULL;
        r->pending--;
        position *pos = position_get(r, p->model);
        origin *self = pos ? origin_get(pos, r->id) : NULL;
        if (self && p->seq > self->seq)
            self->seq = p->seq; /* acknowledged: not published again after a restart */
        if (p->cb)
            p->cb(p->arg, TS_STEP_ACKED);
        pub_free(p);
    }
}

/* Whether admin message d adds its model (a PUT of a new name, a restore of a deleted one). */
static int adds_model(const delta *d) { return d->admin[0] && strcmp(d->admin, "delete") != 0; }

/* Whether d must wait (drain_in): it adds a model that an earlier DELETE is still unloading
 * here (queued in its FIFO, or unloading), or an earlier message of its model waits already
 * (stream order). */
static int must_wait(ts_repl *r, const delta *d) {
    for (const delta *h = r->held; h; h = h->next)
        if (strcmp(h->model, d->model) == 0)
            return 1;
    if (!adds_model(d))
        return 0;
    ts_served *s = ts_engine_find(r->engine, d->model, 1);
    const position *pos = position_find(r, d->model);
    return s && (s->unloading || (pos && pos->deletes_queued > 0));
}

static void add_position(ts_repl *r, const delta *d);

/* An admin message for a model not served here: an add takes effect now (its position
 * starts at the message, then the hook adds the model, so the deltas after it find the
 * model's FIFO); anything else has nothing to apply, but a request waiting for it is
 * answered. */
static void admin_unserved(ts_repl *r, const delta *d) {
    position *pos = position_find(r, d->model);
    if (adds_model(d) && pos && pos->known && d->stream_seq <= pos->stream_seq)
        return; /* consumed before (the model was deleted after it) */
    if (adds_model(d))
        add_position(r, d);
    if (r->admin_fn)
        r->admin_fn(r->admin_arg, NULL, d->admin, d->version, adds_model(d) ? d->payload : NULL,
                    adds_model(d) ? d->len : 0, d->origin, d->admin_id);
}

/* The consumed deltas, each to its model's FIFO (or dropped while shutting down: the
 * position does not move, so the next start consumes them again). The held ones (must_wait)
 * go first, retried on every drain and tick until the unload is done. */
static void drain_in(ts_repl *r) {
    pthread_mutex_lock(&r->mu);
    delta *in = r->in_head;
    r->in_head = r->in_tail = NULL;
    pthread_mutex_unlock(&r->mu);
    delta **tail = &r->held, *first_new = in;
    int is_new = 0;
    while (*tail)
        tail = &(*tail)->next;
    *tail = in;
    in = r->held;
    r->held = NULL;
    tail = &r->held;
    for (delta *d; (d = in) != NULL;) {
        in = d->next;
        d->next = NULL;
        is_new |= d == first_new; /* the held ones come first */
        ts_served *s = r->draining ? NULL : ts_engine_find(r->engine, d->model, 0);
        if (!r->draining && must_wait(r, d)) {
            if (is_new && adds_model(d))
                ts_log_info("replication: model '%s': the %s by replica '%s' waits until the unload of the "
                            "model (an earlier DELETE) is done here", d->model, d->admin, d->origin);
            *tail = d;
            tail = &d->next;
            continue;
        }
        /* A DELETE that takes effect: an add behind it waits until the model is gone. Counted
         * before it is queued: an idle model runs (and frees) it at once. */
        position *pos = s && d->admin[0] && !adds_model(d) ? position_get(r, d->model) : NULL;
        if (pos && !(pos->known && d->stream_seq <= pos->stream_seq)) {
            pos->deletes_queued++;
            d->counted = 1;
        }
        if (s && ts_engine_control(r->engine, s, d->admin[0] ? apply_admin : apply_delta, d) == 0) {
            r->queued_deltas++;
            continue;
        }
        if (d->counted)
            pos->deletes_queued--;
        if (!s && !r->draining && d->admin[0])
            admin_unserved(r, d);
        else if (!s && !r->draining && atomic_fetch_add(&r->unknown_model, 1) == 0)
            ts_log_warn("replication: a delta for model '%s', which this replica does not serve, was "
                        "skipped (counted in tscale_repl_deltas_skipped_total)", d->model);
        else if (s)
            ts_log_error("replication: out of memory queueing a delta of model '%s'", d->model);
        delta_free(d);
    }
}

static void on_wake(void *data) {
    ts_repl *r = data;
    drain_acked(r);
    drain_in(r);
}

void ts_repl_drain(ts_repl *r) {
    if (r)
        r->draining = 1;
}

/* Whether the steps of d are in the state by origin o's high-water mark (repl.h, Summing):
 * all of them (1: last <= mark) or none (0: first > mark). Straddling the mark can't happen
 * (the proof is in repl.h); if it does it is skipped (2), logged and counted, and the mark
 * moves past it so the origin's later deltas still apply. */
static int span_seen(ts_repl *r, const position *pos, const delta *d, origin *o) {
    if (d->seq <= o->seq)
        return 1;
    if (d->first_seq > o->seq)
        return 0;
    atomic_fetch_add(&r->straddles, 1);
    ts_log_error("replication: model '%s': a delta of replica '%s' sums steps %lld..%lld but its steps up to "
                 "%lld are applied already, so it was skipped (a bug: please report it with this line); this "
                 "replica may now lack some of those steps — compare GET /admin/models/%s/export with another "
                 "replica's", pos->model, d->origin, (long long)d->first_seq, (long long)d->seq,
                 (long long)o->seq, pos->model);
    o->seq = d->seq;
    return 2;
}

/* Whether d is already in s's state (1; 2: it straddles the mark, span_seen); advances the
 * marks that say so when it is not. */
static int delta_seen(ts_repl *r, position *pos, const delta *d, origin **o) {
    if (d->stream_seq <= pos->stream_seq)
        return 1;
    pos->stream_seq = d->stream_seq;
    pos->known = 1;
    if (strcmp(d->origin, r->id) == 0) {
        pos->own_seen = d->seq > pos->own_seen ? d->seq : pos->own_seen;
        if (!reapply_take(pos, d->seq))
            return 1; /* applied locally before it was published (and in the journal) */
        *o = origin_get(pos, d->origin); /* applied here to a state since replaced: again */
        return *o == NULL;
    }
    *o = origin_get(pos, d->origin);
    return *o ? span_seen(r, pos, d, *o) : 0;
}

/* pos takes admin message d (stream order): own steps journaled and not yet consumed are
 * after it in the stream, so the others apply them to the new state and this replica
 * applies them again when they come; steps still waiting for their journal commit are
 * added by the engine (ts_repl_reapply) once journaled. */
static void admin_position(position *pos, const delta *d) {
    pos->stream_seq = d->stream_seq;
    pos->admin_seq = d->stream_seq;
    pos->known = 1;
    pos->reapply_lo = pos->own_seen;
    pos->reapply_hi = pos->journaled;
    pos->n_reapply = 0;
    pos->split_next = 1;
    ts_log_info("replication: model '%s': %s by replica '%s' takes effect at stream sequence %llu (own steps "
                "with journal seq in (%lld, %lld] are after it in the stream: applied again when they come)",
                pos->model, d->admin, d->origin, (unsigned long long)d->stream_seq, (long long)pos->reapply_lo,
                (long long)pos->reapply_hi);
}

/* An admin message adds model d->model (not served here): its position starts at the
 * message. Other origins' marks are dropped (each replica has the same view then, whether
 * it served the name before or not: every delta after the message is on the new state);
 * this replica's own mark stays (its steps are acknowledged up to there). */
static void add_position(ts_repl *r, const delta *d) {
    position *pos = position_get(r, d->model);
    if (!pos)
        return; /* out of memory: the snapshot is stored without a position */
    for (origin **pp = &pos->origins; *pp;) {
        origin *o = *pp;
        if (strcmp(o->id, r->id) != 0) {
            *pp = o->next;
            free(o);
        } else {
            pp = &o->next;
        }
    }
    free(pos->diverged);
    pos->diverged = NULL;
    pos->deletes_queued = 0; /* any still counted went with the old model's FIFO */
    admin_position(pos, d);
}

/* A control item of s's FIFO (s idle): an admin message takes effect here, in stream order
 * (repl.h "Admin everywhere"). Owns d. */
static void apply_admin(struct ts_engine *e, ts_served *s, void *arg) {
    delta *d = arg;
    ts_repl *r = d->r;
    r->queued_deltas--;
    position *pos = position_get(r, s->name);
    if (pos && d->counted && pos->deletes_queued > 0)
        pos->deletes_queued--;
    if (s->removed) /* cancelled (engine.h) */
        ts_log_warn("replication: model '%s' was removed before its queued '%s' from replica '%s' took "
                    "effect here", s->name, d->admin, d->origin);
    else if (pos && d->stream_seq > pos->stream_seq) {
        admin_position(pos, d);
        if (r->admin_fn)
            r->admin_fn(r->admin_arg, s, d->admin, d->version, d->payload, d->len, d->origin, d->admin_id);
    }
    delta_free(d);
}

/* A control item of s's FIFO (s idle): apply one consumed delta. Owns d. */
static void apply_delta(struct ts_engine *e, ts_served *s, void *arg) {
    delta *d = arg;
    ts_repl *r = d->r;
    r->queued_deltas--;
    if (s->removed) { /* cancelled (engine.h): not applied, not marked seen */
        delta_free(d);
        return;
    }
    if (d->stored_ns)
        atomic_store(&r->applied_ns, d->stored_ns);
    position *pos = position_get(r, s->name);
    origin *o = NULL;
    int seen = pos ? delta_seen(r, pos, d, &o) : 1;
    if (seen) {
        if (pos && seen == 1 && strcmp(d->origin, r->id) != 0)
            atomic_fetch_add(&r->duplicates, 1);
        delta_free(d);
        return;
    }
    if (!o) { /* out of memory for the origin's mark: applying it could apply it twice later */
        ts_log_error("replication: model '%s': out of memory recording replica '%s''s mark; its delta "
                     "(seq %lld) is skipped and this replica's state may differ until a digest check "
                     "resyncs it", s->name, d->origin, (long long)d->seq);
        atomic_fetch_add(&r->malformed, 1);
        delta_free(d);
        return;
    }
    if (d->seq > o->seq)
        o->seq = d->seq; /* applied or skipped for good: either way not again */
    size_t n = ts_model_score_len(s->model);
    int32_t *scores = malloc((n ? n : 1) * sizeof *scores);
    if (d->version != s->version) {
        if (atomic_fetch_add(&r->other_version, 1) == 0 || d->version > s->version)
            ts_log_warn("replication: model '%s': skipped a delta of replica '%s' for version %lld "
                        "(this replica serves version %lld; versions are not replicated yet)",
                        s->name, d->origin, (long long)d->version, (long long)s->version);
    } else if (!scores || ts_journal_decode_sum(d->payload, d->len, scores, n) != 0) {
        atomic_fetch_add(&r->malformed, 1);
        ts_log_error("replication: model '%s': a delta of replica '%s' (seq %lld, %zu bytes) does not fit "
                     "the model's %zu groups%s; skipped", s->name, d->origin, (long long)d->seq, d->len, n,
                     scores ? "" : " (out of memory)");
    } else {
        ts_model_apply_sum(s->model, scores, d->steps, NULL);
        s->step = ts_model_step(s->model);
        o->applied += (uint64_t)d->steps;
    }
    free(scores);
    delta_free(d);
}

/* Report the steps queued longer than the ack timeout as late (their answer is a 503). */
static void on_tick(uv_timer_t *t) {
    ts_repl *r = t->data;
    uint64_t now = uv_now(r->loop);
    int late = 0;
    for (pub *p = r->lhead; p && now - p->t_queued_ms >= (uint64_t)r->cfg.ack_timeout_ms; p = p->lnext) {
        late = 1;
        if (!p->late && p->cb) {
            p->late = 1;
            p->cb(p->arg, TS_STEP_LATE);
        }
    }
    r->any_late = late;
    if (r->held)
        drain_in(r); /* a model being unloaded may be gone now */
}

/* --replicate's comma-separated URLs as the server list of opts. */
static natsStatus set_servers(natsOptions *opts, const char *urls) {
    char *copy = strdup(urls), *save = NULL;
    const char *list[32];
    int n = 0;
    if (!copy)
        return NATS_NO_MEMORY;
    for (char *t = strtok_r(copy, ",", &save); t && n < 32; t = strtok_r(NULL, ",", &save))
        list[n++] = t;
    natsStatus st = natsOptions_SetServers(opts, list, n);
    free(copy);
    return st;
}

static int connect_nats(ts_repl *r, char *err, size_t errlen) {
    natsOptions *opts = NULL;
    char token[TS_TOKEN_MAX] = "";
    size_t tl = r->token_file ? strlen(r->token_file) : 0;
    int creds = tl > 6 && strcmp(r->token_file + tl - 6, ".creds") == 0;
    if (r->token_file && !creds && ts_auth_load_token(r->token_file, token, err, errlen) < 0)
        return -1;
    natsStatus st = natsOptions_Create(&opts);
    if (st == NATS_OK)
        st = set_servers(opts, r->urls);
    if (st == NATS_OK)
        st = natsOptions_SetName(opts, r->id);
    if (st == NATS_OK)
        st = natsOptions_SetMaxReconnect(opts, -1);
    if (st == NATS_OK)
        st = natsOptions_SetReconnectWait(opts, 250);
    if (st == NATS_OK)
        st = natsOptions_SetRetryOnFailedConnect(opts, true, on_connected, r);
    if (st == NATS_OK)
        st = natsOptions_SetDisconnectedCB(opts, on_disconnected, r);
    if (st == NATS_OK)
        st = natsOptions_SetReconnectedCB(opts, on_connected, r);
    if (st == NATS_OK && token[0])
        st = natsOptions_SetToken(opts, token);
    if (st == NATS_OK && creds)
        st = natsOptions_SetUserCredentialsFromFiles(opts, r->token_file, NULL);
    memset(token, 0, sizeof token);
    if (st == NATS_OK) {
        st = natsConnection_Connect(&r->nc, opts);
        if (st == NATS_OK)
            on_connected(r->nc, r);
        else if (st == NATS_NOT_YET_CONNECTED)
            st = NATS_OK; /* connects in the background */
    }
    natsOptions_Destroy(opts);
    if (st != NATS_OK)
        snprintf(err, errlen, "--replicate %s: %s: %s", r->urls, natsStatus_GetText(st), nats_GetLastError(NULL));
    return st == NATS_OK ? 0 : -1;
}

int ts_repl_start(ts_repl *r, uv_loop_t *loop, struct ts_engine *e, char *err, size_t errlen) {
    if (!ts_repl_enabled(r))
        return 0;
    r->loop = loop;
    r->engine = e;
    r->start_seq = consume_from(r); /* ts_repl_join_done sets it again after a join */
    for (pub *p = r->lhead; p; p = p->lnext) /* queued at recovery */
        p->t_queued_ms = uv_now(loop);
    int rc = ts_wake_init(loop, &r->wake, on_wake, r);
    if (rc != 0) {
        snprintf(err, errlen, "replication: cannot create its wake-up handle: %s", uv_strerror(rc));
        return -1;
    }
    uv_timer_init(loop, &r->tick);
    r->tick.data = r;
    uv_timer_start(&r->tick, on_tick, TICK_MS, TICK_MS);
    r->started = 1;
    if (connect_nats(r, err, errlen) < 0)
        return -1;
    rc = pthread_create(&r->thread, NULL, thread_main, r);
    if (rc != 0) {
        snprintf(err, errlen, "cannot start the replication thread: %s", strerror(rc));
        return -1;
    }
    r->started = 2;
    ts_log_info("replication: replica '%s', NATS %s, stream '%s', %lld steps to publish from the journal",
                r->id, r->urls, r->stream, (long long)r->pending);
    return 0;
}

void ts_repl_stop(ts_repl *r) {
    if (!ts_repl_enabled(r) || !r->started)
        return;
    pthread_mutex_lock(&r->mu);
    r->stopping = 1;
    pthread_cond_signal(&r->cv);
    pthread_mutex_unlock(&r->mu);
    if (r->nc)
        natsConnection_Close(r->nc); /* a publish waiting for its ack returns now */
    if (r->started == 2)
        pthread_join(r->thread, NULL);
    natsSubscription_Destroy(r->sub);
    ts_state_unsubscribe(r->state);
    jsCtx_Destroy(r->js);
    natsConnection_Destroy(r->nc);
    nats_CloseAndWait(2000); /* libnats' own threads and memory, so leak checks stay clean */
    r->sub = NULL;
    r->js = NULL;
    r->nc = NULL;
    r->draining = 1;
    on_wake(r); /* what was acknowledged meanwhile; deltas are dropped */
    for (pub *p; (p = r->lhead) != NULL;) {
        r->lhead = p->lnext;
        r->pending--;
        if (p->cb)
            p->cb(p->arg, TS_STEP_GAVE_UP);
        pub_free(p);
    }
    r->ltail = NULL;
    r->todo_head = r->todo_tail = NULL;
    uv_timer_stop(&r->tick);
    uv_close((uv_handle_t *)&r->tick, NULL);
    ts_wake_close(&r->wake, NULL);
    r->started = 0;
}

/* ---- start-up ---- */

typedef struct {
    ts_repl *r;
    const char *model;
    int64_t queued;
    int oom;
} republish_ctx;

static int republish_one(void *arg, const ts_journal_row *row) {
    republish_ctx *c = arg;
    pub *p = pub_new(c->model, row->version, row->seq, row->payload, row->len);
    if (!p) {
        c->oom = 1;
        return 1;
    }
    p->single = 1; /* the dead process may have stored a group of these: repl.h, Summing (3) */
    enqueue_pub(c->r, p);
    c->queued++;
    return 0;
}

int ts_repl_recover(ts_repl *r, ts_store *st, struct ts_engine *e, char *err, size_t errlen) {
    for (ts_served *s = ts_engine_first(e); s; s = s->next) {
        char *text = NULL;
        if (s->newest.snapshot_id && ts_store_snapshot_repl(st, s->newest.snapshot_id, &text, err, errlen) < 0)
            return -1;
        if (text && position_load(r, s->name, text) < 0)
            ts_log_warn("model '%s': the replication position of snapshot %lld does not parse; consuming the "
                        "stream from its start (deltas already applied are skipped by their marks)",
                        s->name, (long long)s->newest.snapshot_id);
        free(text);
        if (!ts_repl_enabled(r))
            continue;
        position *pos = position_get(r, s->name);
        origin *self = pos ? origin_get(pos, r->id) : NULL;
        if (!self) {
            snprintf(err, errlen, "out of memory");
            return -1;
        }
        republish_ctx c = {.r = r, .model = s->name};
        if (ts_store_journal_scan(st, s->name, self->seq, republish_one, &c, err, errlen) < 0)
            return -1;
        if (c.oom) {
            snprintf(err, errlen, "out of memory queueing journal entries to publish");
            return -1;
        }
        if (c.queued)
            ts_log_info("model '%s': %lld journal entries after the last acknowledged step (seq %lld) are "
                        "published again", s->name, (long long)c.queued, (long long)self->seq);
    }
    return 0;
}

/* ---- sharing the connection (forward.h) ---- */

natsConnection *ts_repl_connection(ts_repl *r) { return ts_repl_enabled(r) ? r->nc : NULL; }
const char *ts_repl_id(const ts_repl *r) { return r->id; }
const char *ts_repl_stream(const ts_repl *r) { return r->stream; }

/* ---- metrics ---- */

static void metric(ts_buf *out, const char *name, const char *type, const char *help, double v) {
    ts_buf_printf(out, "# HELP %s %s\n# TYPE %s %s\n%s %.17g\n", name, help, name, type, name, v);
}

void ts_repl_render_metrics(ts_repl *r, ts_buf *out) {
    if (!ts_repl_enabled(r))
        return;
    ts_state_render_metrics(r->state, out);
    metric(out, "tscale_repl_connected", "gauge", "1 while connected to NATS and the stream is set up.",
           atomic_load(&r->connected) && atomic_load(&r->set_up));
    metric(out, "tscale_repl_deltas_published_total", "counter", "Own steps acknowledged by JetStream.",
           (double)atomic_load(&r->published));
    metric(out, "tscale_repl_messages_published_total", "counter",
           "Messages acknowledged by JetStream (each sums one or more own steps: --replicate-batch-ms).",
           (double)atomic_load(&r->messages));
    ts_hist_render_family(&r->steps_per_message, "tscale_repl_steps_per_message",
                          "Own steps summed into each acknowledged message.", out);
    metric(out, "tscale_repl_publish_failures_total", "counter",
           "Failed publish or stream set-up attempts (each is retried).", (double)atomic_load(&r->publish_failures));
    metric(out, "tscale_repl_publish_pending", "gauge", "Own steps not yet acknowledged by JetStream.",
           (double)r->pending);
    double lag = (double)atomic_load(&r->num_pending) + (double)r->queued_deltas;
    metric(out, "tscale_repl_lag_messages", "gauge",
           "Stream messages not yet applied: the consumer's pending count plus deltas queued here.", lag);
    /* Seconds behind: 0 when nothing waits; else how long ago JetStream stored the newest
     * delta this replica has taken — what it serves is at most that stale (plus clock skew
     * between the NATS server and this machine). */
    struct timespec now;
    clock_gettime(CLOCK_REALTIME, &now);
    int64_t taken = atomic_load(&r->applied_ns), now_ns = (int64_t)now.tv_sec * 1000000000 + now.tv_nsec;
    metric(out, "tscale_repl_lag_seconds", "gauge",
           "0 when no stream message waits; else the age of the newest delta applied here (JetStream's "
           "store time).", lag > 0 && taken > 0 && now_ns > taken ? (double)(now_ns - taken) / 1e9 : 0.0);
    ts_buf_printf(out, "# HELP tscale_repl_deltas_skipped_total Deltas consumed and not applied, by reason.\n"
                       "# TYPE tscale_repl_deltas_skipped_total counter\n");
    static const char *const reasons[] = {"duplicate", "other_version", "malformed", "unknown_model", "straddles"};
    _Atomic uint64_t *counts[] = {&r->duplicates, &r->other_version, &r->malformed, &r->unknown_model,
                                  &r->straddles};
    for (int i = 0; i < 5; i++)
        ts_buf_printf(out, "tscale_repl_deltas_skipped_total{reason=\"%s\"} %llu\n", reasons[i],
                      (unsigned long long)atomic_load(counts[i]));
    ts_buf_printf(out, "# HELP tscale_repl_deltas_applied_total Other replicas' deltas applied, by model and "
                       "origin.\n# TYPE tscale_repl_deltas_applied_total counter\n");
    for (position *p = r->positions; p; p = p->next)
        for (origin *o = p->origins; o; o = o->next)
            if (strcmp(o->id, r->id) != 0)
                ts_buf_printf(out, "tscale_repl_deltas_applied_total{model=\"%s\",origin=\"%s\"} %llu\n",
                              p->model, o->id, (unsigned long long)o->applied);
}
