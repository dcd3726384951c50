/* idem.c — exactly-once feedback by request id (see idem.h).
 *
 * A chained hash table (table.h) of records keyed by (model, id), plus a FIFO of the same
 * records in creation order: the window is one constant, so the oldest record expires first and
 * expiry pops from the FIFO's head. A pending record (its step still running) never
 * expires: its parked requests are waiting for it.
 *
 * Records and their strings live in an arena (arena.h), not in malloc's heap among the
 * steps' work buffers: a record lives for the whole window, and made with malloc each one
 * pinned a hole the size of a step's buffers (2.16 GB of heap for 27 MB of records).
 */
#include "server/engine/idem.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "server/hash.h"
#include "server/log.h"
#include "server/engine/arena.h"
#include "server/engine/table.h"

#define BUCKETS_MIN 1024

typedef struct parked {
    ts_req *req;
    struct parked *next;
} parked;

struct ts_idem_rec {
    ts_table_node node;       /* first: key = hash of model and id */
    char *model, *id;         /* in the same arena allocation as the record */
    uint64_t body_hash;
    char *answer;             /* NULL while pending; an arena allocation of its own */
    int64_t created_ms;
    parked *waiting;          /* requests with the same id that came while pending */
    ts_idem_rec *older, *newer; /* creation order */
};

struct ts_idem {
    int64_t window_ms;
    int64_t max_bytes;        /* 0: no bound */
    int64_t evicted;          /* forgotten early because of max_bytes */
    int64_t evict_logged_ms;  /* when eviction was last logged (0: never) */
    ts_table table;
    ts_idem_rec *oldest, *newest;
    ts_arena arena;           /* the records, their ids and answers */
};

ts_idem *ts_idem_new(int64_t window_ms, int64_t max_bytes) {
    ts_idem *t = calloc(1, sizeof *t);
    if (t && ts_table_init(&t->table, BUCKETS_MIN) < 0) {
        free(t);
        return NULL;
    }
    if (t) {
        t->window_ms = window_ms;
        t->max_bytes = max_bytes;
        ts_arena_init(&t->arena);
    }
    return t;
}

static void answer_parked(ts_idem_rec *r, int status, const char *msg) {
    for (parked *p = r->waiting, *next; p; p = next) {
        next = p->next;
        if (status == 200) {
            char *body = strdup(msg);
            if (body)
                ts_req_reply(p->req, 200, "application/json", body, strlen(body), -1);
            else
                ts_req_reply_error(p->req, 500, "out of memory answering a repeated feedback id");
        } else {
            ts_req_reply_error(p->req, status, "%s", msg);
        }
        free(p);
    }
    r->waiting = NULL;
}

static void rec_free(ts_idem *t, ts_idem_rec *r) {
    ts_arena_free(&t->arena, r->answer);
    ts_arena_free(&t->arena, r);
}

/* Take r out of the bucket chain and the creation order, and free it. */
static void rec_remove(ts_idem *t, ts_idem_rec *r) {
    ts_table_remove(&t->table, &r->node);
    if (r->older)
        r->older->newer = r->newer;
    else
        t->oldest = r->newer;
    if (r->newer)
        r->newer->older = r->older;
    else
        t->newest = r->older;
    rec_free(t, r);
}

void ts_idem_free(ts_idem *t) {
    if (!t)
        return;
    while (t->oldest) {
        answer_parked(t->oldest, 503, "the daemon is shutting down; retry with the same id");
        rec_remove(t, t->oldest);
    }
    ts_table_free(&t->table);
    ts_arena_release(&t->arena);
    free(t);
}

/* Drop finished records older than the window (the FIFO's head first). */
static void expire(ts_idem *t, int64_t now_ms) {
    while (t->oldest && t->oldest->answer && now_ms - t->oldest->created_ms > t->window_ms)
        rec_remove(t, t->oldest);
}

/* Over max_bytes: forget the oldest answered records (memory comes back a chunk at a time).
 * A pending oldest record stops it: its parked requests wait for it. */
static void bound(ts_idem *t, int64_t now_ms) {
    int64_t n = 0;
    while (t->max_bytes && ts_idem_bytes(t) > t->max_bytes && t->oldest && t->oldest->answer) {
        rec_remove(t, t->oldest);
        n++;
    }
    t->evicted += n;
    if (n && (!t->evict_logged_ms || now_ms - t->evict_logged_ms >= 60000)) {
        t->evict_logged_ms = now_ms;
        ts_log_warn("exactly-once records reached --feedback-id-bytes (%lld bytes): feedback ids are "
                    "forgotten before --feedback-id-window ends, oldest first (%lld so far), and a repeat "
                    "of a forgotten id is applied again; raise --feedback-id-bytes or lower "
                    "--feedback-id-window (logged at most once a minute)",
                    (long long)t->max_bytes, (long long)t->evicted);
    }
}

static ts_idem_rec *find(ts_idem *t, const char *model, const char *id, uint64_t key) {
    for (ts_table_node *n = ts_table_bucket(&t->table, key); n; n = n->chain) {
        ts_idem_rec *r = (ts_idem_rec *)n;
        if (n->key == key && strcmp(r->id, id) == 0 && strcmp(r->model, model) == 0)
            return r;
    }
    return NULL;
}

static ts_idem_rec *insert(ts_idem *t, const char *model, const char *id, uint64_t key,
                           uint64_t body_hash, int64_t created_ms) {
    size_t model_len = strlen(model) + 1, id_len = strlen(id) + 1;
    ts_idem_rec *r = ts_arena_alloc(&t->arena, sizeof *r + model_len + id_len);
    if (!r)
        return NULL;
    memset(r, 0, sizeof *r);
    r->model = memcpy((char *)(r + 1), model, model_len);
    r->id = memcpy(r->model + model_len, id, id_len);
    r->node.key = key;
    r->body_hash = body_hash;
    r->created_ms = created_ms;
    ts_table_insert(&t->table, &r->node);
    r->older = t->newest;
    if (t->newest)
        t->newest->newer = r;
    else
        t->oldest = r;
    t->newest = r;
    return r;
}

int ts_idem_claim(ts_idem *t, const char *model, const char *id, uint64_t body_hash, int64_t now_ms,
                  ts_req *req, ts_idem_rec **rec, const char **answer, ts_idem_status *status) {
    expire(t, now_ms);
    uint64_t key = ts_hash_pair(model, id);
    ts_idem_rec *r = find(t, model, id, key);
    if (r && r->body_hash != body_hash) {
        *status = TS_IDEM_CONFLICT;
        return 0;
    }
    if (r && r->answer) {
        *status = TS_IDEM_REPEAT;
        *answer = r->answer;
        return 0;
    }
    if (r) {
        parked *p = malloc(sizeof *p);
        if (!p)
            return -1;
        p->req = req;
        p->next = r->waiting;
        r->waiting = p;
        *status = TS_IDEM_WAITING;
        return 0;
    }
    if (!(r = insert(t, model, id, key, body_hash, now_ms)))
        return -1;
    bound(t, now_ms);
    *rec = r;
    *status = TS_IDEM_NEW;
    return 0;
}

/* The window counts from the claim (the record's created time), as the database's
 * created_at counts from the step's journaling: finishing does not restart it. */
void ts_idem_finish(ts_idem *t, ts_idem_rec *rec, const char *answer) {
    rec->answer = ts_arena_strdup(&t->arena, answer);
    answer_parked(rec, 200, answer);
    if (!rec->answer) /* out of memory: forget it rather than answer a repeat wrongly */
        rec_remove(t, rec);
    else
        bound(t, rec->created_ms);
}

void ts_idem_drop(ts_idem *t, ts_idem_rec *rec, int status, const char *msg) {
    answer_parked(rec, status, msg);
    rec_remove(t, rec);
}

void ts_idem_load(ts_idem *t, const char *model, const char *id, uint64_t body_hash,
                  const char *answer, int64_t created_ms, int64_t now_ms) {
    if (now_ms - created_ms > t->window_ms)
        return;
    uint64_t key = ts_hash_pair(model, id);
    ts_idem_rec *r = find(t, model, id, key);
    if (r)
        rec_remove(t, r); /* the newer record wins */
    r = insert(t, model, id, key, body_hash, created_ms);
    if (r && !(r->answer = ts_arena_strdup(&t->arena, answer)))
        rec_remove(t, r);
    else if (r)
        bound(t, now_ms);
}

int ts_idem_knows(ts_idem *t, const char *model, const char *id, int64_t now_ms) {
    expire(t, now_ms);
    return find(t, model, id, ts_hash_pair(model, id)) != NULL;
}

int64_t ts_idem_count(const ts_idem *t) { return (int64_t)t->table.count; }

int64_t ts_idem_evicted(const ts_idem *t) { return t->evicted; }

int64_t ts_idem_floor_ms(const ts_idem *t) { return t->oldest ? t->oldest->created_ms : 0; }

int64_t ts_idem_bytes(const ts_idem *t) {
    return (int64_t)(t->arena.bytes + t->table.n_buckets * sizeof *t->table.buckets);
}
