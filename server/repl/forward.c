/* forward.c — feedback by inference id forwarded between replicas (see forward.h). */
#include "server/repl/forward.h"

#include <jansson.h>
#include <nats/nats.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "proto/safetensors.h"
#include "server/http/auth.h"
#include "server/log.h"
#include "server/wake.h"
#include "server/metrics.h"
#include "server/repl/natsmsg.h"

/* How often waiting forwards are checked against their deadlines (only while some wait). */
#define TICK_MS 10

/* A forward of ours waiting for its answer (loop). */
typedef struct ask {
    uint64_t token;              /* the last token of its reply subject */
    uint64_t deadline_ms;        /* uv_now */
    int held;                    /* a replica said it holds the id */
    int direct;                  /* asked of the replica named by the id */
    char holder[TS_TOKEN_MAX];   /* the replica that said so */
    char model[TS_MODEL_NAME_MAX];
    char *id;
    ts_byid_cb cb;
    void *arg;
    struct ask *next;
} ask;

/* A reply to one of our forwards, from libnats' thread to the loop. */
typedef struct reply {
    uint64_t token;
    int no_responders, held, status;
    char replica[TS_TOKEN_MAX];
    char *body;                  /* NUL-terminated */
    size_t len;
    struct reply *next;
} reply;

/* A request of another replica, served here as a ts_req (req first: reply_fn gets &req). */
typedef struct serving {
    ts_req req;
    ts_forward *f;
    char *reply_to;
    int broadcast;
    struct serving *next;
} serving;

struct ts_forward {
    ts_forward_config cfg;
    uv_loop_t *loop;
    natsConnection *nc;          /* repl's; NULL when off or stopped */
    natsSubscription *inbox_sub, *own_sub, *any_sub;
    char *inbox;
    char prefix[17];
    ts_wake wake;
    uv_timer_t tick;
    int started, ticking;
    int closed;                  /* loop: ts_forward_stop ran; nothing is sent any more */
    ask *asks;                   /* loop */
    int64_t n_asks;              /* loop */
    uint64_t next_token;         /* loop */
    pthread_mutex_t mu;
    int stopping;                /* mu */
    reply *replies;              /* mu */
    serving *requests;           /* mu */
    _Atomic int64_t n_serving;
    /* metrics */
    uint64_t sent, answered, misses, timeouts;   /* loop */
    _Atomic uint64_t received, refused, malformed;
};

ts_forward *ts_forward_new(const ts_forward_config *cfg) {
    ts_forward *f = calloc(1, sizeof *f);
    if (!f)
        return NULL;
    f->cfg = *cfg;
    pthread_mutex_init(&f->mu, NULL);
    ts_window_prefix(cfg->window, f->prefix);
    return f;
}

void ts_forward_free(ts_forward *f) {
    if (!f)
        return;
    pthread_mutex_destroy(&f->mu);
    free(f);
}

static int enabled(const ts_forward *f) { return f && f->nc && !f->closed; }

int64_t ts_forward_pending(const ts_forward *f) { return f ? f->n_asks : 0; }

/* ---- the request on the wire: the feedback re-encoded as an OIP body ---- */

/* Bytes of one element of a binary tensor of this datatype as the parser reads it; the
 * tensor is written back in the datatype the client sent, so the holder's checks and
 * messages see what the receiver's did. */
static size_t elem_size(const ts_oip_tensor *t) {
    if (t->type == TS_OIP_FP32)
        return strcmp(t->datatype, "FP64") == 0 ? 8 : 4;
    static const char *const one[] = {"INT8", "UINT8"}, *const two[] = {"INT16", "UINT16"},
                             *const four[] = {"INT32", "UINT32"};
    for (int i = 0; i < 2; i++) {
        if (strcmp(t->datatype, one[i]) == 0)
            return 1;
        if (strcmp(t->datatype, two[i]) == 0)
            return 2;
        if (strcmp(t->datatype, four[i]) == 0)
            return 4;
    }
    return 8;
}

/* Tensor t's values as binary data at out (little-endian, elem_size each). */
static void write_tensor(const ts_oip_tensor *t, size_t es, uint8_t *out) {
    for (int64_t i = 0; i < t->count; i++, out += es) {
        if (t->type == TS_OIP_FP32 && es == 4) {
            memcpy(out, &t->f32[i], 4);
            continue;
        }
        uint64_t bits;
        if (t->type == TS_OIP_FP32) {
            double d = t->f32[i];
            memcpy(&bits, &d, 8);
        } else {
            bits = (uint64_t)t->i64[i];
        }
        for (size_t b = 0; b < es; b++)
            out[b] = (uint8_t)(bits >> (8 * b));
    }
}

static const char *datatype_of(const ts_oip_tensor *t, size_t es) {
    if (t->type == TS_OIP_FP32)
        return es == 8 ? "FP64" : "FP32";
    return es == 8 && t->datatype[0] == 'U' ? "UINT64" : es == 8 ? "INT64" : t->datatype;
}

/* oip as a JSON header plus binary data: *out (malloc'd), *len, *json_len. 0, or -1 when
 * out of memory. */
static int encode(const ts_oip_request *oip, uint8_t **out, size_t *len, size_t *json_len) {
    json_t *doc = json_object(), *inputs = json_array();
    size_t data = 0;
    for (int i = 0; doc && inputs && i < oip->n_inputs; i++) {
        const ts_oip_tensor *t = &oip->inputs[i];
        size_t es = elem_size(t);
        json_t *shape = json_array();
        for (int d = 0; shape && d < t->ndim; d++)
            json_array_append_new(shape, json_integer(t->shape[d]));
        json_array_append_new(inputs, json_pack("{s:s,s:s,s:o,s:{s:I}}", "name", t->name, "datatype",
                                                datatype_of(t, es), "shape", shape, "parameters",
                                                "binary_data_size", (json_int_t)(t->count * es)));
        data += (size_t)t->count * es;
    }
    json_object_set_new(doc, "id", json_string(oip->id));
    json_object_set_new(doc, "inputs", inputs);
    if (oip->rows) {
        json_t *rows = json_array();
        for (int64_t k = 0; rows && k < oip->n_rows; k++)
            json_array_append_new(rows, json_integer(oip->rows[k]));
        json_object_set_new(doc, "parameters", json_pack("{s:o}", "rows", rows));
    }
    char *head = json_dumps(doc, JSON_COMPACT);
    json_decref(doc);
    *json_len = head ? strlen(head) : 0;
    *len = *json_len + data;
    *out = head ? malloc(*len) : NULL;
    if (!*out) {
        free(head);
        return -1;
    }
    memcpy(*out, head, *json_len);
    free(head);
    uint8_t *p = *out + *json_len;
    for (int i = 0; i < oip->n_inputs; i++) {
        size_t es = elem_size(&oip->inputs[i]);
        write_tensor(&oip->inputs[i], es, p);
        p += (size_t)oip->inputs[i].count * es;
    }
    return 0;
}

/* ---- asking (loop) ---- */

static void on_tick(uv_timer_t *t);

static void tick_start(ts_forward *f) {
    if (!f->ticking) {
        uv_timer_start(&f->tick, on_tick, TICK_MS, TICK_MS);
        f->ticking = 1;
    }
}

/* Publish the request of oip to subject with reply subject <inbox>.<token>. NATS_OK or not. */
static natsStatus send_request(ts_forward *f, const char *subject, uint64_t token, const char *model,
                               const char *version, const uint8_t *body, size_t len, size_t json_len) {
    char reply_to[256], jl[32];
    snprintf(reply_to, sizeof reply_to, "%s.%llu", f->inbox, (unsigned long long)token);
    snprintf(jl, sizeof jl, "%zu", json_len);
    natsMsg *m = NULL;
    natsStatus st = natsMsg_Create(&m, subject, reply_to, (const char *)body, (int)len);
    if (st == NATS_OK)
        st = natsMsgHeader_Set(m, "Tscale-Origin", ts_repl_id(f->cfg.repl));
    if (st == NATS_OK)
        st = natsMsgHeader_Set(m, "Tscale-Model", model);
    if (st == NATS_OK && version[0])
        st = natsMsgHeader_Set(m, "Tscale-Version", version);
    if (st == NATS_OK)
        st = natsMsgHeader_Set(m, "Tscale-Json-Length", jl);
    if (st == NATS_OK)
        st = natsConnection_PublishMsg(f->nc, m);
    natsMsg_Destroy(m);
    return st;
}

int ts_forward_ask(ts_forward *f, const char *model, const char *version, const ts_oip_request *oip,
                   ts_byid_cb cb, void *arg, char *err, size_t errlen) {
    char prefix[17], subject[256];
    if (!enabled(f) || !oip->id)
        return -1;
    int direct = ts_window_id_prefix(oip->id, prefix);
    if (direct && strcmp(prefix, f->prefix) == 0)
        return -1; /* made here: nobody else has it */
    snprintf(subject, sizeof subject, "%s.byid.%s", ts_repl_stream(f->cfg.repl), direct ? prefix : "any");
    if (f->n_asks >= TS_FORWARD_MAX_ASKS) {
        snprintf(err, errlen, "inference '%.100s' is not held by this replica and %d feedback requests are "
                 "already being forwarded to the replicas that hold theirs; retry shortly", oip->id,
                 TS_FORWARD_MAX_ASKS);
        return 503;
    }
    uint8_t *body = NULL;
    size_t len = 0, json_len = 0;
    ask *a = calloc(1, sizeof *a);
    if (!a || !(a->id = strdup(oip->id)) || encode(oip, &body, &len, &json_len) < 0) {
        if (a)
            free(a->id);
        free(a);
        snprintf(err, errlen, "out of memory forwarding the feedback to the replica that holds inference '%.100s'",
                 oip->id);
        return 503;
    }
    int64_t max = natsConnection_GetMaxPayload(f->nc);
    int status = 0;
    natsStatus st = NATS_OK;
    if (max > 0 && (int64_t)len > max) {
        snprintf(err, errlen, "inference '%.100s' is not held by this replica, and this feedback forwarded to the "
                 "others would take %zu bytes, over NATS' max_payload (%lld bytes): send it to the replica "
                 "that answered the inference, or split its rows (parameters.rows)", oip->id, len, (long long)max);
        status = 413;
    } else if ((st = send_request(f, subject, f->next_token + 1, model, version, body, len, json_len)) != NATS_OK) {
        snprintf(err, errlen, "inference '%.100s' is not held by this replica and asking the other replicas "
                 "failed (%s); retry shortly", oip->id, natsStatus_GetText(st));
        status = 503;
    }
    free(body);
    if (status) {
        free(a->id);
        free(a);
        return status;
    }
    a->token = ++f->next_token;
    a->deadline_ms = uv_now(f->loop) + (uint64_t)f->cfg.timeout_ms;
    a->direct = direct;
    snprintf(a->model, sizeof a->model, "%s", model);
    a->cb = cb;
    a->arg = arg;
    a->next = f->asks;
    f->asks = a;
    f->n_asks++;
    f->sent++;
    tick_start(f);
    return 0;
}

/* Answer a (taken off the list) and free it. */
static void ask_finish(ask *a, int status, const char *body, size_t len, const char *msg, const char *replica) {
    a->cb(a->arg, status, body, len, msg, replica);
    free(a->id);
    free(a);
}

/* Answer a with an error of ours: status and msg as {"error": msg}. */
static void ask_fail(ask *a, int status, const char *msg) {
    char *body = ts_oip_error_json(msg);
    ask_finish(a, status, body ? body : "", body ? strlen(body) : 0, msg, NULL);
    free(body);
}

/* No replica said it holds a's id (in time, or nobody listens on the subject at all). */
static void ask_missed(ts_forward *f, ask *a) {
    char msg[1024];
    if (natsConnection_Status(f->nc) != NATS_CONN_STATUS_CONNECTED) { /* not a miss: nobody heard */
        snprintf(msg, sizeof msg, "the connection to NATS was lost while the replica holding inference '%.100s' "
                 "of model '%s' was asked; retry shortly", a->id, a->model);
        ask_fail(a, 503, msg);
        return;
    }
    f->misses++;
    if (a->direct)
        snprintf(msg, sizeof msg, "no replica holds inference '%.100s' of model '%s': it was made by a replica run "
                 "that is gone (a restart empties the feedback window) or that did not answer within %lld ms "
                 "(--forward-timeout-ms); send the feedback with its 'input'", a->id, a->model,
                 (long long)f->cfg.timeout_ms);
    else
        snprintf(msg, sizeof msg, "no replica holds inference '%.100s' of model '%s': it is not in this replica's "
                 "feedback window and no other replica answered within %lld ms (--forward-timeout-ms); send "
                 "the feedback with its 'input'", a->id, a->model, (long long)f->cfg.timeout_ms);
    ask_fail(a, 404, msg);
}

/* Unlink the ask of token (NULL when none: answered, timed out). */
static ask *ask_take(ts_forward *f, uint64_t token) {
    for (ask **pp = &f->asks; *pp; pp = &(*pp)->next)
        if ((*pp)->token == token) {
            ask *a = *pp;
            *pp = a->next;
            f->n_asks--;
            return a;
        }
    return NULL;
}

/* The error text of an answer's {"error": "..."} body ("" when it has none). */
static char *error_text(const char *body, size_t len) {
    json_t *doc = json_loadb(body, len, 0, NULL);
    const char *e = json_string_value(json_object_get(doc, "error"));
    char *msg = strdup(e ? e : "");
    json_decref(doc);
    return msg;
}

static void on_reply_loop(ts_forward *f, reply *r) {
    ask *a = ask_take(f, r->token);
    if (!a)
        return; /* late: its requester was answered already */
    if (r->no_responders) {
        ask_missed(f, a);
    } else if (r->held) {
        a->held = 1;
        snprintf(a->holder, sizeof a->holder, "%s", r->replica);
        a->deadline_ms = uv_now(f->loop) + (uint64_t)f->cfg.answer_timeout_ms;
        a->next = f->asks;
        f->asks = a;
        f->n_asks++;
    } else {
        f->answered++;
        char *msg = r->status == 200 ? NULL : error_text(r->body, r->len);
        ask_finish(a, r->status, r->body, r->len, msg ? msg : "", r->replica);
        free(msg);
    }
}

static void on_tick(uv_timer_t *t) {
    ts_forward *f = t->data;
    uint64_t now = uv_now(f->loop);
    for (ask **pp = &f->asks; *pp;) {
        ask *a = *pp;
        if (now < a->deadline_ms) {
            pp = &a->next;
            continue;
        }
        *pp = a->next;
        f->n_asks--;
        if (!a->held) {
            ask_missed(f, a);
            continue;
        }
        char msg[1024];
        f->timeouts++;
        snprintf(msg, sizeof msg, "replica '%.200s' holds inference '%.100s' of model '%s' but did not answer within "
                 "%lld ms (--forward-answer-timeout-ms); retry with the same id: the step is applied at most "
                 "once", a->holder, a->id, a->model, (long long)f->cfg.answer_timeout_ms);
        ask_fail(a, 504, msg);
    }
    if (!f->asks && f->ticking) {
        uv_timer_stop(&f->tick);
        f->ticking = 0;
    }
}

/* ---- libnats' threads: copy, hand to the loop ---- */

/* Queue item for the loop unless stopping. 1 when queued (the loop owns it now). */
static int hand_over(ts_forward *f, reply *r, serving *s) {
    pthread_mutex_lock(&f->mu);
    int ok = !f->stopping;
    if (ok && r) {
        r->next = f->replies;
        f->replies = r;
    } else if (ok) {
        s->next = f->requests;
        f->requests = s;
    }
    if (ok)
        ts_wake_send(&f->wake);
    pthread_mutex_unlock(&f->mu);
    return ok;
}

/* A reply on our inbox. Who owns what: libnats hands msg over (destroyed here). */
static void on_reply(natsConnection *nc, natsSubscription *sub, natsMsg *msg, void *closure) {
    ts_forward *f = closure;
    const char *subj = natsMsg_GetSubject(msg), *dot = strrchr(subj, '.');
    const char *held = ts_natsmsg_header(msg, "Tscale-Held"), *replica = ts_natsmsg_header(msg, "Tscale-Replica");
    int64_t status = 0;
    int len = natsMsg_GetDataLength(msg);
    reply *r = calloc(1, sizeof *r);
    if (r && dot && (r->body = malloc((size_t)len + 1)) != NULL) {
        r->token = strtoull(dot + 1, NULL, 10);
        r->no_responders = natsMsg_IsNoResponders(msg);
        r->held = held != NULL;
        snprintf(r->replica, sizeof r->replica, "%s", held ? held : replica ? replica : "?");
        memcpy(r->body, natsMsg_GetData(msg), (size_t)len);
        r->body[len] = '\0';
        r->len = (size_t)len;
        int ok = r->no_responders || r->held ||
                 (ts_natsmsg_int(msg, "Tscale-Status", &status) == 0 && status >= 100 && status < 600);
        r->status = (int)status;
        if (ok && hand_over(f, r, NULL))
            r = NULL;
        else if (!ok)
            atomic_fetch_add(&f->malformed, 1);
    }
    if (r)
        free(r->body);
    free(r);
    natsMsg_Destroy(msg);
}

static void reply_status(ts_forward *f, const char *to, int status, const char *body, size_t len);
static void serving_reply(ts_req *req, int status, void *body, size_t len);

/* The forwarded request in msg as a ts_req to serve, or NULL (malformed; counted). */
static serving *serving_new(ts_forward *f, natsMsg *msg, int broadcast) {
    const char *model = ts_natsmsg_header(msg, "Tscale-Model"), *version = ts_natsmsg_header(msg, "Tscale-Version");
    const char *reply_to = natsMsg_GetReply(msg);
    int64_t json_len = -1;
    serving *s = calloc(1, sizeof *s);
    if (!s || !model || !reply_to || strlen(model) >= sizeof s->req.route.model ||
        (version && strlen(version) >= sizeof s->req.route.version) ||
        ts_natsmsg_int(msg, "Tscale-Json-Length", &json_len) < 0 || !(s->reply_to = strdup(reply_to))) {
        atomic_fetch_add(&f->malformed, 1);
        free(s);
        return NULL;
    }
    s->f = f;
    s->broadcast = broadcast;
    s->req.route.ep = TS_EP_FEEDBACK;
    snprintf(s->req.route.model, sizeof s->req.route.model, "%s", model);
    snprintf(s->req.route.version, sizeof s->req.route.version, "%s", version ? version : "");
    s->req.reply_fn = serving_reply;
    s->req.from_replica = 1;
    s->req.t_received_us = ts_now_us();
    char err[sizeof s->req.bad_body];
    ts_oip_limits lim = {.max_elements = f->cfg.max_elements, .max_depth = 32};
    static const uint8_t empty[1];
    int len = natsMsg_GetDataLength(msg);
    const uint8_t *data = len ? (const uint8_t *)natsMsg_GetData(msg) : empty;
    if (ts_oip_parse_request(data, (size_t)len, json_len, &lim, &s->req.oip, err, sizeof err) < 0)
        snprintf(s->req.bad_body, sizeof s->req.bad_body, "%s", err); /* answered as over HTTP */
    return s;
}

static void serving_free(serving *s) {
    ts_oip_request_free(&s->req.oip);
    free(s->reply_to);
    free(s);
}

/* A feedback another replica forwards (direct: to this run's prefix; else a broadcast).
 * Who owns what: libnats hands msg over (destroyed here); the request goes to the loop. */
static void on_request(natsConnection *nc, natsSubscription *sub, natsMsg *msg, void *closure, int broadcast) {
    ts_forward *f = closure;
    const char *origin = ts_natsmsg_header(msg, "Tscale-Origin");
    pthread_mutex_lock(&f->mu);
    int stopping = f->stopping;
    pthread_mutex_unlock(&f->mu);
    if (stopping || (origin && strcmp(origin, ts_repl_id(f->cfg.repl)) == 0)) {
        natsMsg_Destroy(msg); /* shutting down, or our own broadcast */
        return;
    }
    if (atomic_fetch_add(&f->n_serving, 1) >= TS_FORWARD_MAX_SERVING) {
        atomic_fetch_sub(&f->n_serving, 1);
        atomic_fetch_add(&f->refused, 1);
        const char *to = natsMsg_GetReply(msg);
        static const char busy[] = "{\"error\":\"the replica that holds this inference is serving too many "
                                   "forwarded feedback requests at once; retry shortly\"}";
        if (!broadcast && to)
            reply_status(f, to, 503, busy, sizeof busy - 1);
        natsMsg_Destroy(msg);
        return;
    }
    serving *s = serving_new(f, msg, broadcast);
    if (s && !broadcast) /* the subject names this run: it holds the id or nobody does */
        reply_status(f, s->reply_to, 0, "", 0);
    natsMsg_Destroy(msg);
    if (s && hand_over(f, NULL, s))
        return;
    static const char down[] = "{\"error\":\"the replica that holds this inference is shutting down (its "
                               "feedback window goes with it): send the feedback with its 'input'\"}";
    if (s && !broadcast) /* told "held" above: say why no answer follows */
        reply_status(f, s->reply_to, 503, down, sizeof down - 1);
    if (s)
        serving_free(s);
    atomic_fetch_sub(&f->n_serving, 1);
}

static void on_direct(natsConnection *nc, natsSubscription *sub, natsMsg *msg, void *closure) {
    on_request(nc, sub, msg, closure, 0);
}

static void on_broadcast(natsConnection *nc, natsSubscription *sub, natsMsg *msg, void *closure) {
    on_request(nc, sub, msg, closure, 1);
}

/* ---- serving others' requests (loop) ---- */

/* Publish an answer (or, status 0, the "held" notice) to the reply subject `to`. Any
 * thread (libnats' publish is thread-safe and does not wait). */
static void reply_status(ts_forward *f, const char *to, int status, const char *body, size_t len) {
    char st[16];
    natsMsg *m = NULL;
    natsStatus rc = natsMsg_Create(&m, to, NULL, body, (int)len);
    snprintf(st, sizeof st, "%d", status);
    if (rc == NATS_OK)
        rc = status ? natsMsgHeader_Set(m, "Tscale-Status", st) : natsMsgHeader_Set(m, "Tscale-Held",
                                                                                   ts_repl_id(f->cfg.repl));
    if (rc == NATS_OK && status)
        rc = natsMsgHeader_Set(m, "Tscale-Replica", ts_repl_id(f->cfg.repl));
    if (rc == NATS_OK)
        rc = natsConnection_PublishMsg(f->nc, m);
    if (rc != NATS_OK)
        ts_log_warn("forwarding: answering another replica's feedback failed: %s (it answers its client "
                    "404 or 504; a retry with the same id gets this answer)", natsStatus_GetText(rc));
    natsMsg_Destroy(m);
}

/* reply_fn of a served request (http.h): send the answer back, free the request. A
 * broadcast's 404 stays unsaid: another replica may hold the id. */
static void serving_reply(ts_req *req, int status, void *body, size_t len) {
    serving *s = (serving *)req;
    ts_forward *f = s->f;
    if (!f->closed && !(s->broadcast && status == 404)) {
        reply_status(f, s->reply_to, status, body ? body : "", body ? len : 0);
    }
    free(body);
    atomic_fetch_sub(&f->n_serving, 1);
    serving_free(s);
}

/* Whether this replica knows the id of a broadcast request (else it stays silent). */
static int knows(ts_forward *f, const ts_req *req) {
    const char *id = req->oip.id, *model = req->route.model;
    return id && (ts_window_knows(f->cfg.window, model, id, (int64_t)(ts_now_us() / 1000)) ||
                  (f->cfg.idem && ts_idem_knows(f->cfg.idem, model, id, ts_wall_ms())));
}

static void serve(ts_forward *f, serving *s) {
    if (s->broadcast && !knows(f, &s->req)) {
        atomic_fetch_sub(&f->n_serving, 1);
        serving_free(s);
        return;
    }
    atomic_fetch_add(&f->received, 1);
    if (s->broadcast) /* held: the asker now waits for the answer (a direct one was told) */
        reply_status(f, s->reply_to, 0, "", 0);
    f->cfg.dispatch(f->cfg.dispatch_ctx, &s->req);
}

/* Take what libnats' threads handed over: the replies are matched to their forwards here;
 * the requests of others are returned (newest first) for the caller to serve or drop. */
static serving *take_all(ts_forward *f) {
    pthread_mutex_lock(&f->mu);
    reply *replies = f->replies;
    serving *requests = f->requests;
    f->replies = NULL;
    f->requests = NULL;
    pthread_mutex_unlock(&f->mu);
    for (reply *r; (r = replies) != NULL;) {
        replies = r->next;
        on_reply_loop(f, r);
        free(r->body);
        free(r);
    }
    return requests;
}

static void on_wake(void *data) {
    ts_forward *f = data;
    serving *requests = take_all(f);
    for (serving *s; (s = requests) != NULL;) {
        requests = s->next;
        serve(f, s);
    }
}

/* ---- life cycle ---- */

static natsStatus subscribe(ts_forward *f, char *err, size_t errlen) {
    char own[256], any[256], inbox[300];
    const char *stream = ts_repl_stream(f->cfg.repl);
    snprintf(own, sizeof own, "%s.byid.%s", stream, f->prefix);
    snprintf(any, sizeof any, "%s.byid.any", stream);
    natsInbox *ib = NULL;
    natsStatus st = natsInbox_Create(&ib);
    if (st == NATS_OK && !(f->inbox = strdup(ib)))
        st = NATS_NO_MEMORY;
    natsInbox_Destroy(ib);
    snprintf(inbox, sizeof inbox, "%s.*", f->inbox ? f->inbox : "_INBOX");
    if (st == NATS_OK)
        st = natsConnection_Subscribe(&f->inbox_sub, f->nc, inbox, on_reply, f);
    if (st == NATS_OK)
        st = natsConnection_Subscribe(&f->own_sub, f->nc, own, on_direct, f);
    if (st == NATS_OK)
        st = natsConnection_Subscribe(&f->any_sub, f->nc, any, on_broadcast, f);
    if (st != NATS_OK)
        snprintf(err, errlen, "feedback forwarding: subscribing to %s: %s", own, natsStatus_GetText(st));
    else
        ts_log_info("feedback by id: this run's ids start with %s; feedback for other replicas' inferences "
                    "is forwarded over NATS (%s.byid.*)", f->prefix, stream);
    return st;
}

int ts_forward_start(ts_forward *f, uv_loop_t *loop, char *err, size_t errlen) {
    natsConnection *nc = ts_repl_connection(f->cfg.repl);
    if (!nc)
        return 0;
    f->loop = loop;
    int rc = ts_wake_init(loop, &f->wake, on_wake, f);
    if (rc != 0) {
        snprintf(err, errlen, "feedback forwarding: cannot create its wake-up handle: %s", uv_strerror(rc));
        return -1;
    }
    uv_timer_init(loop, &f->tick);
    f->tick.data = f;
    f->started = 1;
    f->nc = nc;
    if (subscribe(f, err, errlen) != NATS_OK) {
        f->nc = NULL;
        return -1;
    }
    return 0;
}

static void unsubscribe(natsSubscription **sub) {
    if (*sub) {
        natsSubscription_Unsubscribe(*sub);
        natsSubscription_Destroy(*sub);
        *sub = NULL;
    }
}

void ts_forward_stop(ts_forward *f) {
    if (!f || !f->started)
        return;
    pthread_mutex_lock(&f->mu);
    f->stopping = 1;
    pthread_mutex_unlock(&f->mu);
    unsubscribe(&f->inbox_sub);
    unsubscribe(&f->own_sub);
    unsubscribe(&f->any_sub);
    /* What arrived before: replies are matched; requests are dropped (shutting down; their
     * askers time out and the client retries elsewhere). */
    for (serving *s, *requests = take_all(f); (s = requests) != NULL;) {
        requests = s->next;
        atomic_fetch_sub(&f->n_serving, 1);
        serving_free(s);
    }
    for (ask *a; (a = f->asks) != NULL;) {
        f->asks = a->next;
        f->n_asks--;
        ask_fail(a, 503, "shutting down while the replica holding this inference was asked; retry "
                 "with the same id on another replica");
    }
    f->closed = 1; /* requests still served here are answered to nobody (their askers time out) */
    uv_timer_stop(&f->tick);
    uv_close((uv_handle_t *)&f->tick, NULL);
    ts_wake_close(&f->wake, NULL);
    free(f->inbox);
    f->inbox = NULL;
    f->started = 0;
}

/* ---- metrics ---- */

void ts_forward_render_metrics(ts_forward *f, ts_buf *out) {
    if (!enabled(f))
        return;
    ts_buf_printf(out,
                  "# HELP tscale_forward_sent_total Feedback by id forwarded to the replica holding the inference.\n"
                  "# TYPE tscale_forward_sent_total counter\ntscale_forward_sent_total %llu\n"
                  "# HELP tscale_forward_answered_total Forwarded feedback answered by the holder.\n"
                  "# TYPE tscale_forward_answered_total counter\ntscale_forward_answered_total %llu\n"
                  "# HELP tscale_forward_misses_total Forwarded feedback no replica held (404).\n"
                  "# TYPE tscale_forward_misses_total counter\ntscale_forward_misses_total %llu\n"
                  "# HELP tscale_forward_timeouts_total Forwarded feedback whose holder did not answer in time (504).\n"
                  "# TYPE tscale_forward_timeouts_total counter\ntscale_forward_timeouts_total %llu\n"
                  "# HELP tscale_forward_waiting Forwarded feedback waiting for its answer.\n"
                  "# TYPE tscale_forward_waiting gauge\ntscale_forward_waiting %lld\n"
                  "# HELP tscale_forward_received_total Other replicas' feedback served here (this replica held the id).\n"
                  "# TYPE tscale_forward_received_total counter\ntscale_forward_received_total %llu\n"
                  "# HELP tscale_forward_refused_total Other replicas' feedback refused here (too many at once).\n"
                  "# TYPE tscale_forward_refused_total counter\ntscale_forward_refused_total %llu\n"
                  "# HELP tscale_forward_malformed_total Forwarding messages that did not parse (dropped).\n"
                  "# TYPE tscale_forward_malformed_total counter\ntscale_forward_malformed_total %llu\n",
                  (unsigned long long)f->sent, (unsigned long long)f->answered, (unsigned long long)f->misses,
                  (unsigned long long)f->timeouts, (long long)f->n_asks,
                  (unsigned long long)atomic_load(&f->received), (unsigned long long)atomic_load(&f->refused),
                  (unsigned long long)atomic_load(&f->malformed));
}
