/* engine.c — per-model FIFOs, dynamic batching and the compute lane (see engine.h). */
#include "server/engine/engine.h"

#include <errno.h>
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/timerfd.h>
#include <unistd.h>

#include "core/feedback.h"
#include "core/forward.h"
#include "proto/oip.h"
#include "proto/safetensors.h"
#include "server/hash.h"
#include "server/log.h"

typedef enum { ITEM_INFER, ITEM_FEEDBACK, ITEM_EXPORT, ITEM_CONTROL } item_kind;

struct ts_item {
    item_kind kind;
    ts_req *req;               /* NULL for control items */
    int64_t rows;
    size_t bytes;              /* tensor bytes held while queued */
    uint64_t t_enq;            /* ts_now_us at enqueue */
    const float *x;            /* [rows][in_dim]: into req->oip, or x_owned */
    float *x_owned;            /* integer input converted to float */
    ts_feedback_input fin;
    float *t_owned;            /* integer grad_output/target converted to float */
    int16_t *scores;           /* feedback: the step's integer effect (journal) */
    uint64_t body_hash;        /* feedback: hash of its tensors (exactly-once) */
    ts_idem_rec *idem;         /* feedback with an id: its pending exactly-once record */
    ts_window_ticket win;      /* feedback by id: the window entry it took (serial 0: none) */
    int binary;                /* infer: answer with binary tensor data */
    int64_t in_dim, out_dim;   /* infer/feedback: the model dims it was validated against */
    ts_control_fn fn;
    void *arg;
    /* the answer, written by the compute thread */
    int status;
    void *body;
    size_t len;
    int64_t json_len;
    const char *ctype;
    ts_item *next;
};

typedef struct {
    uv_work_t work;
    ts_engine *e;
    ts_served *s;
    item_kind kind;
    ts_item *items;            /* n of them, FIFO order */
    int n;
    int64_t rows;
    uint64_t t_start, t_end;
    double loss;
} ts_job;

struct ts_engine {
    uv_loop_t *loop;
    ts_engine_config cfg;
    ts_served *models;
    int n_models;
    ts_served *rr;             /* round-robin cursor: the model considered first */
    int lane_busy;
    int tiny_feedback;          /* the running job is a feedback step below POOL_MIN_WORK */
    int draining;
    int pumping, pump_again;   /* pump() re-entrancy guard */
    int holding;               /* ts_engine_hold: queue without scheduling */
    int64_t queued_rows;
    size_t queued_bytes;
    int timer_fd;              /* batching deadline (µs resolution) */
    uv_poll_t timer_poll;
    uint64_t timer_deadline;   /* armed deadline in ts_now_us, 0 = none */
    struct model_hold *holds;  /* models read off the loop (ts_engine_model_hold) */
};

/* A held model: freed by the last release once a swap or removal retired it. */
typedef struct model_hold {
    ts_model *m;
    int refs;
    int retired;               /* no longer served: the last release frees it */
    struct model_hold *next;
} model_hold;

static void pump(ts_engine *e);

/* ---- items ---- */

static void item_free(ts_item *it) {
    free(it->scores);
    free(it->x_owned);
    free(it->t_owned);
    free(it->body);
    free(it);
}

/* The item's answer, sent when its job is done (json_len: ts_req_reply's). */
static void item_answer(ts_item *it, int status, void *body, size_t len, int64_t json_len, const char *ctype) {
    it->status = status;
    it->body = body;
    it->len = len;
    it->json_len = json_len;
    it->ctype = ctype;
}

/* The step of a feedback item with an id was not applied: forget the id so that a retry
 * applies it, answer the requests parked behind it the same way, and give a stored input
 * it took back to the feedback window (a retry by id finds it again). */
static void item_drop_id(ts_engine *e, ts_item *it, int status, const char *msg) {
    if (it->idem)
        ts_idem_drop(e->cfg.idem, it->idem, status, msg);
    it->idem = NULL;
    ts_window_settle(e->cfg.window, it->win, 0);
    it->win.serial = 0;
}

static void item_set_error(ts_item *it, int status, const char *msg) {
    free(it->body);
    char *body = ts_oip_error_json(msg);
    item_answer(it, status, body, body ? strlen(body) : 0, -1, "application/json");
}

/* Was the request made for other dims than s's model has now (a swap to another
 * architecture came between; for feedback by id: between the inference and now)? */
static int item_stale(const ts_served *s, const ts_item *it) {
    return (it->kind == ITEM_INFER || it->kind == ITEM_FEEDBACK) &&
           (it->in_dim != s->model->in_dim || it->out_dim != s->model->out_dim);
}

/* The 409 of a stale request (item_stale). */
static void stale_text(const ts_served *s, const ts_item *it, char *msg, size_t n) {
    snprintf(msg, n, "model '%s' was replaced by version %s (input [B,%lld], output [B,%lld]); this "
             "request%s was made for input [B,%lld], output [B,%lld]: nothing was computed, resend it "
             "for the new model", s->name, s->version_str, (long long)s->model->in_dim,
             (long long)s->model->out_dim, it->win.serial ? " (its stored inference)" : "",
             (long long)it->in_dim, (long long)it->out_dim);
}

/* ---- request validation (loop) ---- */

static void shape_text(const ts_oip_tensor *t, char *out, size_t n) {
    size_t k = (size_t)snprintf(out, n, "[");
    for (int i = 0; i < t->ndim && k < n; i++)
        k += (size_t)snprintf(out + k, n - k, "%s%lld", i ? "," : "", (long long)t->shape[i]);
    if (k < n)
        snprintf(out + k, n - k, "]");
}

/* t must be [B, cols] (B >= 1): *rows = B and *data = float view (converted from integers
 * into *owned when needed). 0, or -1 + err. */
static int tensor_matrix(const ts_oip_tensor *t, int64_t cols, const float **data, float **owned,
                         int64_t *rows, char *err, size_t errlen) {
    if (t->ndim != 2 || t->shape[1] != cols || t->shape[0] < 1) {
        char got[128];
        shape_text(t, got, sizeof got);
        snprintf(err, errlen, "input '%s' must have shape [B,%lld] with B >= 1; got %s", t->name,
                 (long long)cols, got);
        return -1;
    }
    *rows = t->shape[0];
    if (t->type == TS_OIP_FP32) {
        *data = t->f32;
        return 0;
    }
    float *f = malloc((size_t)t->count * sizeof *f);
    if (!f) {
        snprintf(err, errlen, "out of memory converting input '%s' to FP32", t->name);
        return -1;
    }
    for (int64_t i = 0; i < t->count; i++)
        f[i] = (float)t->i64[i];
    *owned = f;
    *data = f;
    return 0;
}

static int check_input(ts_engine *e, ts_served *s, ts_req *req, ts_item *it, char *err, size_t errlen) {
    const ts_oip_tensor *t = ts_oip_find_input(&req->oip, "input");
    if (!t) {
        snprintf(err, errlen, "missing input 'input' (FP32 [B,%lld])", (long long)s->model->in_dim);
        return -1;
    }
    if (tensor_matrix(t, s->model->in_dim, &it->x, &it->x_owned, &it->rows, err, errlen) < 0)
        return -1;
    if (it->rows > e->cfg.max_rows) {
        snprintf(err, errlen, "batch of %lld rows is over the limit of %lld rows per request "
                 "(--max-rows)", (long long)it->rows, (long long)e->cfg.max_rows);
        return -1;
    }
    it->bytes = (size_t)it->rows * (size_t)(s->model->in_dim + s->model->out_dim) * sizeof(float);
    it->in_dim = s->model->in_dim;
    it->out_dim = s->model->out_dim;
    return 0;
}

static int check_infer(ts_engine *e, ts_served *s, ts_req *req, ts_item *it, char *err, size_t errlen) {
    const ts_oip_request *o = &req->oip;
    for (int i = 0; i < o->n_inputs; i++)
        if (strcmp(o->inputs[i].name, "input") != 0) {
            snprintf(err, errlen, "unknown input '%s': the model takes one input named 'input'",
                     o->inputs[i].name);
            return -1;
        }
    if (check_input(e, s, req, it, err, errlen) < 0)
        return -1;
    for (int i = 0; i < o->n_outputs; i++)
        if (strcmp(o->outputs[i].name, "output") != 0) {
            snprintf(err, errlen, "unknown output '%s': the model has one output named 'output'",
                     o->outputs[i].name);
            return -1;
        }
    it->binary = ts_oip_output_binary(o, "output");
    if (!o->id) { /* every answer names its inference, for feedback by id */
        char id[TS_WINDOW_ID_MAX];
        ts_window_make_id(e->cfg.window, id);
        if (!(req->oip.id = strdup(id))) {
            snprintf(err, errlen, "out of memory making the inference's id");
            return -1;
        }
    }
    return 0;
}

static int check_labels(const ts_oip_tensor *t, int64_t rows, int64_t classes, char *err, size_t errlen) {
    if (t->type != TS_OIP_INT64) {
        snprintf(err, errlen, "'label' must be INT32 or INT64 (got %s)", t->datatype);
        return -1;
    }
    if (!((t->ndim == 1 && t->shape[0] == rows) || (t->ndim == 2 && t->shape[0] == rows && t->shape[1] == 1))) {
        char got[128];
        shape_text(t, got, sizeof got);
        snprintf(err, errlen, "'label' must have shape [%lld] (one class per input row); got %s",
                 (long long)rows, got);
        return -1;
    }
    for (int64_t i = 0; i < rows; i++)
        if (t->i64[i] < 0 || t->i64[i] >= classes) {
            snprintf(err, errlen, "label[%lld] = %lld is not a class in [0, %lld)", (long long)i,
                     (long long)t->i64[i], (long long)classes);
            return -1;
        }
    return 0;
}

/* The one feedback signal of a request: 'grad_output', 'target' or 'label', with no other
 * inputs besides 'input'. NULL + err otherwise. */
static const ts_oip_tensor *find_signal(const ts_oip_request *o, char *err, size_t errlen) {
    const ts_oip_tensor *signal = NULL;
    int n_signals = 0;
    for (int i = 0; i < o->n_inputs; i++) {
        const char *n = o->inputs[i].name;
        if (strcmp(n, "grad_output") == 0 || strcmp(n, "target") == 0 || strcmp(n, "label") == 0) {
            signal = &o->inputs[i];
            n_signals++;
        } else if (strcmp(n, "input") != 0) {
            snprintf(err, errlen, "unknown input '%s': feedback takes 'input' (or the 'id' of an "
                     "earlier inference) and one of 'grad_output', 'target', 'label'", n);
            return NULL;
        }
    }
    if (n_signals != 1) {
        snprintf(err, errlen, "feedback needs exactly one of 'grad_output', 'target', 'label' "
                 "besides 'input' (got %d)", n_signals);
        return NULL;
    }
    return signal;
}

/* The signal against the item's rows and s's output: fin set. 0, or -1 + err. */
static int check_signal(ts_served *s, ts_item *it, const ts_oip_tensor *signal, char *err, size_t errlen) {
    if (strcmp(signal->name, "label") == 0) {
        if (check_labels(signal, it->rows, s->model->out_dim, err, errlen) < 0)
            return -1;
        it->fin.kind = TS_LOSS_XENT;
        it->fin.labels = signal->i64;
        return 0;
    }
    int64_t rows;
    if (tensor_matrix(signal, s->model->out_dim, &it->fin.target, &it->t_owned, &rows, err, errlen) < 0)
        return -1;
    if (rows != it->rows) {
        snprintf(err, errlen, "'%s' has %lld rows but the input has %lld", signal->name,
                 (long long)rows, (long long)it->rows);
        return -1;
    }
    it->fin.kind = strcmp(signal->name, "target") == 0 ? TS_LOSS_MSE : TS_LOSS_GRAD;
    return 0;
}

static int check_feedback(ts_engine *e, ts_served *s, ts_req *req, ts_item *it, char *err, size_t errlen) {
    const ts_oip_tensor *signal = find_signal(&req->oip, err, errlen);
    if (!signal)
        return -1;
    if (req->oip.rows) {
        snprintf(err, errlen, "parameters.rows selects rows of a stored inference (feedback by id, "
                 "without 'input'); with 'input', send just the rows to learn from");
        return -1;
    }
    if (check_input(e, s, req, it, err, errlen) < 0)
        return -1;
    return check_signal(s, it, signal, err, errlen);
}

/* ---- queueing ---- */

static void append(ts_engine *e, ts_served *s, ts_item *it) {
    it->t_enq = ts_now_us();
    it->next = NULL;
    if (s->tail)
        s->tail->next = it;
    else
        s->head = it;
    s->tail = it;
    s->queued_rows += it->rows;
    s->queued_items++;
    e->queued_rows += it->rows;
    e->queued_bytes += it->bytes;
}

static ts_item *pop(ts_engine *e, ts_served *s) {
    ts_item *it = s->head;
    s->head = it->next;
    if (!s->head)
        s->tail = NULL;
    it->next = NULL;
    s->queued_rows -= it->rows;
    s->queued_items--;
    e->queued_rows -= it->rows;
    e->queued_bytes -= it->bytes;
    return it;
}

/* Bytes of JSON one FP32 output value can take: "-1.17549435e-38," */
#define JSON_FLOAT_MAX 16

/* 413 for a request that no state of the queue could take (larger than its limits by
 * itself: a 503 would be retried forever), or whose answer would be over
 * --max-response-bytes (refused before it is computed). 1 when it answered. */
static int refuse_oversized(ts_engine *e, ts_served *s, ts_item *it) {
    if (it->rows > e->cfg.max_queue_rows || it->bytes > (size_t)e->cfg.max_queue_bytes) {
        ts_req_reply_error(it->req, 413, "this request alone (%lld rows, %zu bytes) is larger "
                           "than the queue (--max-queue-rows %lld, --max-queue-bytes %lld): split it",
                           (long long)it->rows, it->bytes, (long long)e->cfg.max_queue_rows,
                           (long long)e->cfg.max_queue_bytes);
        return 1;
    }
    uint64_t per = it->binary ? sizeof(float) : JSON_FLOAT_MAX;
    uint64_t est = (uint64_t)it->rows * (uint64_t)s->model->out_dim * per;
    if (it->kind == ITEM_INFER && est > (uint64_t)e->cfg.max_response_bytes) {
        ts_req_reply_error(it->req, 413, "the response (%lld x %lld outputs) could take %llu "
                           "bytes, over --max-response-bytes (%lld): ask for fewer rows%s",
                           (long long)it->rows, (long long)s->model->out_dim,
                           (unsigned long long)est, (long long)e->cfg.max_response_bytes,
                           it->binary ? "" : ", or for binary output (4 bytes a value)");
        return 1;
    }
    return 0;
}

/* Queue a request's item, or refuse it: 413 when it could never fit, 503 when the queue
 * is full now. */
static void enqueue_request(ts_engine *e, ts_served *s, ts_item *it) {
    if (refuse_oversized(e, s, it)) {
        item_drop_id(e, it, 413, "the first request with this id was too large");
        item_free(it);
        return;
    }
    if (e->queued_rows + it->rows > e->cfg.max_queue_rows ||
        e->queued_bytes + it->bytes > (size_t)e->cfg.max_queue_bytes) {
        atomic_fetch_add_explicit(&e->cfg.metrics->queue_full, 1, memory_order_relaxed);
        ts_req_reply_error(it->req, 503, "the queue is full (%lld rows, %zu bytes waiting); retry "
                           "later", (long long)e->queued_rows, e->queued_bytes);
        item_drop_id(e, it, 503, "the queue was full; retry with the same id");
        item_free(it);
        return;
    }
    append(e, s, it);
    pump(e);
}

static ts_item *new_item(ts_req *req, item_kind kind) {
    ts_item *it = calloc(1, sizeof *it);
    if (!it)
        ts_req_reply_error(req, 500, "out of memory queueing the request");
    else {
        it->kind = kind;
        it->req = req;
    }
    return it;
}

typedef int (*check_fn)(ts_engine *e, ts_served *s, ts_req *req, ts_item *it, char *err, size_t errlen);

/* Validate a request into an item (400 with the reason when it is wrong), then queue it. */
static void submit(ts_engine *e, ts_served *s, ts_req *req, item_kind kind, check_fn check) {
    ts_item *it = new_item(req, kind);
    if (!it)
        return;
    char err[512];
    if (check(e, s, req, it, err, sizeof err) < 0) {
        ts_req_reply_error(req, 400, "%s", err);
        item_free(it);
        return;
    }
    enqueue_request(e, s, it);
}

void ts_engine_infer(ts_engine *e, ts_served *s, ts_req *req) {
    submit(e, s, req, ITEM_INFER, check_infer);
}

/* The identity of a feedback request's content, for exactly-once: the same id with another
 * body is a conflict. Tensors as validated (integers converted), so JSON and binary forms of
 * the same numbers are the same request. */
static uint64_t feedback_hash(const ts_served *s, const ts_item *it) {
    uint64_t h[4] = {(uint64_t)it->fin.kind, (uint64_t)it->rows,
                     ts_hash_bytes((const uint8_t *)it->x, (size_t)(it->rows * s->model->in_dim) * sizeof(float)), 0};
    if (it->fin.kind == TS_LOSS_XENT)
        h[3] = ts_hash_bytes((const uint8_t *)it->fin.labels, (size_t)it->rows * sizeof(int64_t));
    else
        h[3] = ts_hash_bytes((const uint8_t *)it->fin.target,
                             (size_t)(it->rows * s->model->out_dim) * sizeof(float));
    return ts_hash_bytes((const uint8_t *)h, sizeof h);
}

/* The identity of a feedback-by-id request: its signal and its rows selection (the stored
 * input is not needed, so a repeat is recognised after the input left the window or the
 * daemon restarted). Tagged, so it never equals a by-input request's hash. */
static uint64_t byid_hash(const ts_served *s, const ts_item *it) {
    char err[512];
    const ts_oip_request *o = &it->req->oip;
    const ts_oip_tensor *sig = find_signal(o, err, sizeof err);
    size_t esize = sig->type == TS_OIP_FP32 ? sizeof(float) : sizeof(int64_t);
    const void *data = sig->type == TS_OIP_FP32 ? (const void *)sig->f32 : (const void *)sig->i64;
    uint64_t h[5] = {0x6279696466656564ull /* "byidfeed" */,
                     ts_hash_bytes((const uint8_t *)sig->name, strlen(sig->name)),
                     ts_hash_bytes((const uint8_t *)sig->shape, (size_t)sig->ndim * sizeof(int64_t)),
                     ts_hash_bytes((const uint8_t *)data, (size_t)sig->count * esize),
                     o->rows ? ts_hash_bytes((const uint8_t *)o->rows, (size_t)o->n_rows * sizeof(int64_t))
                             : 0};
    return ts_hash_bytes((const uint8_t *)h, sizeof h);
}

/* A feedback request with an OIP id: claim it (idem.h), its identity hashed by hash. 1 when
 * the request is answered or parked (do not queue it), 0 to go on (it->idem set), -1
 * answered with an error. */
static int claim_id(ts_engine *e, ts_served *s, ts_req *req, ts_item *it,
                    uint64_t (*hash)(const ts_served *, const ts_item *)) {
    const char *id = req->oip.id;
    if (!e->cfg.idem || !id || !id[0])
        return 0;
    it->body_hash = hash(s, it);
    ts_idem_status st;
    const char *answer = NULL;
    if (ts_idem_claim(e->cfg.idem, s->name, id, it->body_hash, ts_wall_ms(), req, &it->idem, &answer,
                      &st) < 0) {
        ts_req_reply_error(req, 500, "out of memory recording feedback id '%s'", id);
        return -1;
    }
    if (st == TS_IDEM_NEW || st == TS_IDEM_WAITING)
        return st == TS_IDEM_NEW ? 0 : 1;
    if (st == TS_IDEM_CONFLICT) {
        ts_req_reply_error(req, 409, "feedback id '%s' of model '%s' was already used with a different "
                           "body; a retry must send the same tensors, a new step needs a new id", id,
                           s->name);
        return -1;
    }
    char *body = strdup(answer); /* a repeat: the first answer again, nothing applied */
    if (body)
        ts_req_reply(req, 200, "application/json", body, strlen(body), -1);
    else
        ts_req_reply_error(req, 500, "out of memory answering a repeated feedback id");
    return 1;
}

/* Why a stored input left the window, for the 410. */
static const char *gone_text(ts_window_gone why) {
    switch (why) {
    case TS_GONE_EXPIRED: return "it expired (older than --feedback-window-seconds)";
    case TS_GONE_EVICTED:
        return "newer inferences pushed it out (--feedback-window-rows, --feedback-window-bytes)";
    case TS_GONE_USED: return "it already received its feedback (each inference takes one)";
    default: return "it was larger than the window holds (--feedback-window-rows, --feedback-window-bytes)";
    }
}

/* Look up the stored input of inference id and take it: 0, or the status to answer + err. */
static int take_stored(ts_engine *e, ts_served *s, const char *id, ts_window_view *v, char *err,
                       size_t errlen) {
    switch (ts_window_take(e->cfg.window, s->name, id, (int64_t)(ts_now_us() / 1000), v)) {
    case TS_WINDOW_HIT: return 0;
    case TS_WINDOW_GONE:
        snprintf(err, errlen, "the input of inference '%s' of model '%s' is no longer kept: %s; "
                 "send the feedback with its 'input'", id, s->name, gone_text(v->why));
        return 410;
    case TS_WINDOW_BUSY:
        snprintf(err, errlen, "a feedback on inference '%s' of model '%s' is still running; each "
                 "inference takes one feedback", id, s->name);
        return 409;
    default:
        snprintf(err, errlen, "no inference with id '%s' in the feedback window of model '%s'%s", id, s->name,
                 ts_window_enabled(e->cfg.window) ? "" : " (the window is off: a --feedback-window-* "
                 "flag is 0)");
        return 404;
    }
}

/* Rows of the stored input into the item, in the order of parameters.rows (all when absent). 0, or
 * -1 + err. */
static int gather_rows(const ts_oip_request *o, const ts_window_view *v, ts_item *it, char *err,
                       size_t errlen) {
    int64_t n = o->rows ? o->n_rows : v->rows;
    uint8_t *seen = calloc((size_t)v->rows, 1);
    float *x = malloc((size_t)(n ? n : 1) * (size_t)v->in_dim * sizeof *x);
    int ok = seen && x;
    if (!ok)
        snprintf(err, errlen, "out of memory copying the stored input");
    if (ok && n < 1) {
        snprintf(err, errlen, "parameters.rows is empty: list at least one row, or leave it out for all");
        ok = 0;
    }
    for (int64_t k = 0; ok && k < n; k++) {
        int64_t r = o->rows ? o->rows[k] : k;
        if (r >= v->rows || seen[r]) {
            snprintf(err, errlen, "parameters.rows[%lld] = %lld %s", (long long)k, (long long)r,
                     r >= v->rows ? "is not a row of the inference" : "is listed twice");
            ok = 0;
            break;
        }
        seen[r] = 1;
        memcpy(x + k * v->in_dim, v->x + r * v->in_dim, (size_t)v->in_dim * sizeof *x);
    }
    free(seen);
    if (!ok) {
        free(x);
        return -1;
    }
    it->x = it->x_owned = x;
    it->rows = n;
    it->bytes = (size_t)n * (size_t)(v->in_dim + v->out_dim) * sizeof(float);
    return 0;
}

/* A by-id item from the window, validated against s's model. 0, or the status + err. */
static int check_by_id(ts_engine *e, ts_served *s, ts_req *req, ts_item *it, const ts_oip_tensor *signal,
                       char *err, size_t errlen) {
    ts_window_view v;
    int status = take_stored(e, s, req->oip.id, &v, err, errlen);
    if (status)
        return status;
    it->win = v.ticket;
    it->in_dim = v.in_dim;
    it->out_dim = v.out_dim;
    if (item_stale(s, it)) {
        stale_text(s, it, err, errlen);
        return 409;
    }
    if (gather_rows(&req->oip, &v, it, err, errlen) < 0 || check_signal(s, it, signal, err, errlen) < 0)
        return 400;
    return 0;
}

/* A forwarded by-id feedback (forward_by_id) while the holder is asked. */
typedef struct {
    ts_engine *e;
    ts_item *it;
} forwarding;

/* The holder's answer (or the forward's failure) is this request's: the exactly-once record
 * claimed here takes it too (a repeat to this replica answers it without asking again; a
 * failure frees the id for a retry), and so do requests parked behind it. */
static void forwarded(void *arg, int status, const char *body, size_t len, const char *msg,
                      const char *replica) {
    forwarding *fw = arg;
    ts_item *it = fw->it;
    if (replica)
        snprintf(it->req->forwarded_to, sizeof it->req->forwarded_to, "%s", replica);
    if (it->idem && status == 200)
        ts_idem_finish(fw->e->cfg.idem, it->idem, body);
    else if (it->idem)
        ts_idem_drop(fw->e->cfg.idem, it->idem, status, msg);
    it->idem = NULL;
    char *copy = malloc(len + 1);
    if (copy) {
        memcpy(copy, body, len);
        ts_req_reply(it->req, status, "application/json", copy, len, -1);
    } else {
        ts_req_reply_error(it->req, 500, "out of memory relaying the answer of the replica holding the inference");
    }
    item_free(it);
    free(fw);
}

/* A by-id feedback whose inference this replica never held: with replication, ask the
 * replica that holds it (forward.h). 0 when asked (answered later, it kept), else the
 * status to answer now: 404 (not forwarded; err as it was) or the forward's refusal. */
static int forward_by_id(ts_engine *e, ts_served *s, ts_req *req, ts_item *it, char *err, size_t errlen) {
    if (!e->cfg.repl.ask || req->from_replica)
        return 404;
    forwarding *fw = malloc(sizeof *fw);
    if (!fw)
        return 404;
    *fw = (forwarding){e, it};
    int rc = e->cfg.repl.ask(e->cfg.repl.ctx, s->name, req->route.version, &req->oip, forwarded, fw, err, errlen);
    if (rc != 0)
        free(fw);
    return rc < 0 ? 404 : rc;
}

/* Feedback without 'input': one step on the stored input of inference req->oip.id. The id
 * is claimed before the window is looked at, so a repeat answers the first answer even when
 * the input is gone. Returns with the request answered or queued. */
static void feedback_by_id(ts_engine *e, ts_served *s, ts_req *req, ts_item *it) {
    char err[600];
    const ts_oip_tensor *signal = find_signal(&req->oip, err, sizeof err);
    if (signal && (!req->oip.id || !req->oip.id[0]))
        snprintf(err, sizeof err, "feedback needs 'input' [B,%lld], or (feedback by id) the 'id' of an "
                 "earlier inference of model '%s' and no 'input'", (long long)s->model->in_dim, s->name);
    if (!signal || !req->oip.id || !req->oip.id[0]) {
        ts_req_reply_error(req, 400, "%s", err);
        item_free(it);
        return;
    }
    if (claim_id(e, s, req, it, byid_hash) != 0) {
        item_free(it);
        return;
    }
    int status = check_by_id(e, s, req, it, signal, err, sizeof err);
    if (status == 404 && (status = forward_by_id(e, s, req, it, err, sizeof err)) == 0)
        return; /* asked of the replica that holds it */
    if (status) {
        item_drop_id(e, it, status, err);
        ts_req_reply_error(req, status, "%s", err);
        item_free(it);
        return;
    }
    enqueue_request(e, s, it);
}

void ts_engine_feedback(ts_engine *e, ts_served *s, ts_req *req) {
    const char *why = NULL;
    if (e->cfg.feedback_requires_snapshot && s->snapshot_failing) {
        ts_req_reply_error(req, 503, "snapshots of model '%s' are failing (%s); feedback is refused "
                           "until one succeeds", s->name, s->snapshot_error);
        return;
    }
    if (e->cfg.journal && ts_journal_failing(e->cfg.journal, &why)) {
        ts_req_reply_error(req, 503, "the feedback journal cannot be written (%s); feedback is refused "
                           "until it can: nothing was applied", why);
        return;
    }
    if (e->cfg.repl.model_ready && !e->cfg.repl.model_ready(e->cfg.repl.ctx, s->name, &why)) {
        ts_req_reply_error(req, 503, "replication is not available (%s); feedback is refused until it is, "
                           "nothing was applied (inference goes on)", why);
        return;
    }
    ts_item *it = new_item(req, ITEM_FEEDBACK);
    if (!it)
        return;
    if (!ts_oip_find_input(&req->oip, "input")) {
        feedback_by_id(e, s, req, it);
        return;
    }
    char err[512];
    if (check_feedback(e, s, req, it, err, sizeof err) < 0) {
        ts_req_reply_error(req, 400, "%s", err);
        item_free(it);
        return;
    }
    if (claim_id(e, s, req, it, feedback_hash) != 0) {
        item_free(it);
        return;
    }
    enqueue_request(e, s, it);
}

void ts_engine_export(ts_engine *e, ts_served *s, ts_req *req) {
    ts_item *it = new_item(req, ITEM_EXPORT);
    if (it)
        enqueue_request(e, s, it);
}

int ts_engine_control(ts_engine *e, ts_served *s, ts_control_fn fn, void *arg) {
    ts_item *it = calloc(1, sizeof *it);
    if (!it)
        return -1;
    it->kind = ITEM_CONTROL;
    it->fn = fn;
    it->arg = arg;
    append(e, s, it);
    pump(e);
    return 0;
}

/* ---- compute (thread pool) ---- */

/* Below this many trit-row products a job runs on the compute thread alone (see engine.h):
 * about a hundred microseconds of kernel time. */
#define POOL_MIN_WORK ((int64_t)1 << 20)
/* Inference batches with at most this many weight·rows (a few µs of compute) run on the
 * loop itself instead of the thread pool (launch). */
#define INLINE_MAX_WORK ((int64_t)1 << 16)

/* A forward of the job's rows, in weight·rows. */
static int64_t forward_work(const ts_job *j) { return j->rows * ts_model_params(j->s->model); }

/* A job's compute in weight·rows: a feedback step is a forward, a backward and the scores,
 * about three forwards. Exports are never tiny. */
static int64_t job_work(const ts_job *j) {
    int64_t fwd = forward_work(j);
    return j->kind == ITEM_INFER ? fwd : j->kind == ITEM_FEEDBACK ? 3 * fwd : INT64_MAX;
}

static ts_pool *pool_for(const ts_job *j) {
    return forward_work(j) >= POOL_MIN_WORK ? j->e->cfg.pool : NULL;
}

static void run_infer(ts_job *j) {
    ts_model *m = j->s->model;
    int64_t in = m->in_dim, out = m->out_dim;
    const float *x = j->items->x;
    float *xbuf = NULL;
    if (j->n > 1) { /* concatenate the batch's rows */
        xbuf = malloc((size_t)j->rows * (size_t)in * sizeof *xbuf);
        int64_t off = 0;
        for (ts_item *it = j->items; xbuf && it; it = it->next) {
            memcpy(xbuf + off * in, it->x, (size_t)(it->rows * in) * sizeof *xbuf);
            off += it->rows;
        }
        x = xbuf;
    }
    float *y = malloc((size_t)j->rows * (size_t)out * sizeof *y);
    if (!y || (j->n > 1 && !xbuf) || ts_model_forward(m, x, j->rows, y, pool_for(j)) < 0) {
        for (ts_item *it = j->items; it; it = it->next)
            item_set_error(it, 500, "out of memory running the forward");
    } else {
        int64_t off = 0;
        for (ts_item *it = j->items; it; it = it->next) {
            const ts_oip_request *o = &it->req->oip;
            uint8_t *body = NULL;
            size_t len = 0;
            int64_t json_len = -1;
            if (ts_oip_build_response(j->s->name, j->s->version_str, o->id, "output", y + off * out,
                                      it->rows, out, it->binary, &body, &len, &json_len) < 0) {
                item_set_error(it, 500, "out of memory building the response");
            } else {
                item_answer(it, 200, body, len, json_len,
                            json_len >= 0 ? "application/octet-stream" : "application/json");
            }
            off += it->rows;
        }
    }
    free(xbuf);
    free(y);
}

static void run_feedback(ts_job *j) {
    ts_item *it = j->items;
    char err[256];
    double loss = NAN;
    size_t n = ts_model_score_len(j->s->model);
    it->scores = malloc((n ? n : 1) * sizeof *it->scores);
    if (!it->scores) {
        item_set_error(it, 500, "out of memory for the feedback step's scores");
        return;
    }
    if (ts_model_feedback_scores(j->s->model, it->x, it->rows, &it->fin, &loss, it->scores, pool_for(j),
                                 err, sizeof err) < 0) {
        char msg[300];
        snprintf(msg, sizeof msg, "feedback step failed: %s", err);
        item_set_error(it, 500, msg);
        return;
    }
    j->loss = loss;
    char *body = ts_oip_build_feedback_response(j->s->name, j->s->version_str, it->req->oip.id,
                                                ts_model_step(j->s->model),
                                                it->fin.kind == TS_LOSS_GRAD ? NAN : loss);
    if (!body) {
        item_set_error(it, 500, "out of memory building the response");
        return;
    }
    item_answer(it, 200, body, strlen(body), -1, "application/json");
}

static void run_export(ts_job *j) {
    ts_item *it = j->items;
    uint8_t *out = NULL;
    size_t len = 0;
    char err[256];
    if (ts_safetensors_write(j->s->model, j->s->name, &out, &len, err, sizeof err) < 0) {
        char msg[300];
        snprintf(msg, sizeof msg, "export failed: %s", err);
        item_set_error(it, 500, msg);
        return;
    }
    item_answer(it, 200, out, len, -1, "application/octet-stream");
}

static void work_cb(uv_work_t *w) {
    ts_job *j = w->data;
    j->t_start = ts_now_us();
    if (j->kind == ITEM_INFER)
        run_infer(j);
    else if (j->kind == ITEM_FEEDBACK)
        run_feedback(j);
    else
        run_export(j);
    j->t_end = ts_now_us();
}

/* ---- job completion (loop) ---- */

/* A step whose journal commit failed, to be taken back once s's running job is done. */
typedef struct ts_undo {
    int16_t *scores;
    struct ts_undo *next;
} ts_undo;

/* Take back the steps whose commit failed (between jobs: s is idle now). */
static void undo_pending(ts_served *s) {
    while (s->undo) {
        ts_undo *u = s->undo;
        s->undo = u->next;
        ts_model_apply_scores(s->model, u->scores, -1, NULL);
        free(u->scores);
        free(u);
    }
    s->step = ts_model_step(s->model);
}

/* A feedback step waiting for its journal commit: the answer is held until then. */
typedef struct {
    ts_engine *e;
    char name[TS_MODEL_NAME_MAX];
    uint64_t generation;         /* of the model the step was applied to */
    int64_t version, seq;        /* the model version and the step's journal entry */
    size_t n;                    /* scores of the step */
    ts_item *it;                 /* req (NULL once answered), body (the answer), scores, idem */
} step_ack;

/* The step is durable (and, replicating, acknowledged by JetStream): answer it. */
static void step_answer(step_ack *a) {
    ts_item *it = a->it;
    if (it->idem)
        ts_idem_finish(a->e->cfg.idem, it->idem, it->body);
    it->idem = NULL;
    ts_window_settle(a->e->cfg.window, it->win, 1); /* applied: the input leaves the window */
    it->win.serial = 0;
    if (it->req) {
        ts_req_reply(it->req, it->status, it->ctype, it->body, it->len, it->json_len);
        it->body = NULL;
    }
    item_free(it);
    free(a);
}

/* What became of a journaled step's publication (ts_step_event, engine.h). A late step stays
 * applied and journaled: it is answered 503 now, and a retry with the same id (parked
 * meanwhile on its pending exactly-once record) gets the 200 once JetStream acknowledges it. */
static void step_published(void *arg, ts_step_event ev) {
    step_ack *a = arg;
    ts_item *it = a->it;
    if (ev == TS_STEP_ACKED) {
        step_answer(a);
        return;
    }
    if (it->req)
        ts_req_reply_error(it->req, 503, "the feedback step is kept and journaled locally but %s: it is "
                           "replicated when NATS is reachable again; a retry with the same id answers once "
                           "it is", ev == TS_STEP_LATE ? "JetStream has not acknowledged it in time"
                                                       : "the daemon is shutting down before JetStream "
                                                         "acknowledged it");
    it->req = NULL;
    if (ev == TS_STEP_GAVE_UP) { /* published from the journal at the next start */
        ts_window_settle(a->e->cfg.window, it->win, 1); /* applied (and journaled) */
        item_free(it);
        free(a);
    }
}

static void step_acked(void *arg, const char *err) {
    step_ack *a = arg;
    ts_engine *e = a->e;
    ts_item *it = a->it;
    ts_served *cs = ts_engine_find(e, a->name, 1);
    if (cs && cs->generation == a->generation && cs->uncommitted > 0)
        cs->uncommitted--; /* journaled now, or taken back below */
    const ts_engine_repl *r = &e->cfg.repl;
    if (!err && r->enabled && r->enabled(r->ctx)) {
        if (cs && cs->generation != a->generation)
            r->reapply(r->ctx, a->name, a->seq); /* its model was replaced meanwhile (repl.h) */
        if (r->publish(r->ctx, a->name, a->version, a->seq, it->scores, a->n, step_published, a) == 0)
            return;
        ts_log_error("model '%s': out of memory queueing journal entry %lld for replication; it is "
                     "published at the next start", a->name, (long long)a->seq);
        step_published(a, TS_STEP_GAVE_UP);
        return;
    }
    if (!err) {
        step_answer(a);
        return;
    }
    /* Not durable, so not applied: take the step back (exactly: integer state), unless
     * the model was swapped since (the swap discarded it already). */
    ts_served *s = ts_engine_find(e, a->name, 1);
    ts_undo *u = s && s->generation == a->generation ? malloc(sizeof *u) : NULL;
    if (u) {
        u->scores = it->scores;
        it->scores = NULL;
        u->next = s->undo;
        s->undo = u;
        if (!s->busy)
            undo_pending(s);
    } else if (s && s->generation == a->generation) {
        ts_log_error("model '%s': out of memory taking back a step whose journal commit failed",
                     a->name);
    }
    char msg[600];
    snprintf(msg, sizeof msg, "the feedback step could not be made durable (%s): it was taken "
             "back, nothing was applied; retry", err);
    item_drop_id(e, it, 503, msg);
    ts_req_reply_error(it->req, 503, "%s", msg);
    item_free(it);
    free(a);
}

/* Hand a computed step to the journal; it is answered in step_acked. Called in after_cb,
 * while s is between jobs. hold: a tiny step, whose entry may wait for the next ones
 * (pump() flushes unless another tiny feedback step runs now). */
static void step_commit(ts_engine *e, ts_served *s, ts_item *it, int hold) {
    step_ack *a = malloc(sizeof *a);
    if (!a) { /* cannot journal it: take it back now and refuse it */
        ts_model_apply_scores(s->model, it->scores, -1, NULL);
        item_drop_id(e, it, 503, "out of memory; retry");
        ts_req_reply_error(it->req, 503, "out of memory journaling the feedback step: it was taken "
                           "back, nothing was applied; retry");
        item_free(it);
        return;
    }
    *a = (step_ack){.e = e, .generation = s->generation, .version = s->version,
                    .n = ts_model_score_len(s->model), .it = it};
    snprintf(a->name, sizeof a->name, "%s", s->name);
    s->uncommitted++;
    ts_journal_step st = {.model = s->name, .version = s->version, .step = ts_model_step(s->model),
                          .scores = it->scores, .n = a->n,
                          .request_id = it->idem ? it->req->oip.id : NULL,
                          .body_hash = it->body_hash, .answer = it->body, .hold = hold,
                          .ids_floor_ms = e->cfg.idem ? ts_idem_floor_ms(e->cfg.idem) : 0};
    if (!e->cfg.journal) {
        step_acked(a, NULL);
        return;
    }
    if (ts_journal_append(e->cfg.journal, &st, step_acked, a, &a->seq) != 0)
        step_acked(a, "out of memory journaling it");
}

/* An answered inference's input goes into the feedback window (feedback by id). */
static void keep_input(ts_engine *e, ts_served *s, ts_item *it) {
    if (ts_window_put(e->cfg.window, s->name, it->req->oip.id, it->x, it->rows, it->in_dim, it->out_dim,
                      (int64_t)(ts_now_us() / 1000)) < 0)
        ts_log_warn("model '%s': out of memory keeping the input of inference '%s' for feedback by id",
                    s->name, it->req->oip.id);
}

/* The model's statistics (stats.h) of a finished infer or feedback job. */
static void note_stats(ts_served *s, const ts_job *j) {
    int infer = j->kind == ITEM_INFER;
    uint64_t now = ts_now_us();
    ts_stats_note_job(&s->stats, infer && j->items->status == 200, j->rows);
    for (const ts_item *it = j->items; it; it = it->next) {
        uint64_t t0 = it->req->t_received_us ? it->req->t_received_us : it->t_enq;
        ts_stats_note_request(&s->stats, infer, it->status == 200, now > t0 ? now - t0 : 0,
                              j->t_start > it->t_enq ? j->t_start - it->t_enq : 0,
                              j->t_end - j->t_start);
    }
}

static void after_cb(uv_work_t *w, int status) {
    ts_job *j = w->data;
    ts_engine *e = j->e;
    ts_served *s = j->s;
    ts_metrics *mt = e->cfg.metrics;
    int kind = j->kind == ITEM_FEEDBACK ? TS_KIND_FEEDBACK : TS_KIND_INFER;
    if (j->kind != ITEM_EXPORT)
        ts_hist_observe(&mt->compute_us[kind], j->t_end - j->t_start);
    if (j->kind == ITEM_INFER) {
        ts_hist_observe(&mt->batch_rows, (uint64_t)j->rows);
        atomic_fetch_add_explicit(&mt->batches, 1, memory_order_relaxed);
    }
    if (j->kind == ITEM_FEEDBACK && j->items->status == 200) {
        s->feedback_steps++;
        if (j->items->fin.kind != TS_LOSS_GRAD)
            s->last_loss = j->loss;
    }
    undo_pending(s);
    s->step = ts_model_step(s->model);
    if (j->kind != ITEM_EXPORT)
        note_stats(s, j);
    for (ts_item *it = j->items, *next; it; it = next) {
        next = it->next;
        if (j->kind != ITEM_EXPORT && j->t_start >= it->t_enq)
            ts_hist_observe(&mt->queue_us[kind], j->t_start - it->t_enq);
        if (j->kind == ITEM_FEEDBACK && it->status == 200) {
            step_commit(e, s, it, !pool_for(j)); /* answered once durable */
            continue;
        }
        if (j->kind == ITEM_INFER && it->status == 200)
            keep_input(e, s, it);
        item_drop_id(e, it, it->status, "the first request with this id failed; retry");
        ts_req_reply(it->req, it->status, it->ctype, it->body, it->len, it->json_len);
        it->body = NULL; /* the response owns it now */
        item_free(it);
    }
    undo_pending(s); /* a step refused just now (out of memory) */
    s->busy = 0;
    e->lane_busy = 0;
    free(j);
    pump(e);
}

/* ---- scheduling (loop) ---- */

static void launch(ts_engine *e, ts_served *s, item_kind kind, int n) {
    ts_job *j = calloc(1, sizeof *j);
    if (!j) {
        for (int i = 0; i < n; i++) {
            ts_item *it = pop(e, s);
            item_drop_id(e, it, 500, "out of memory starting the compute job; retry");
            ts_req_reply_error(it->req, 500, "out of memory starting the compute job");
            item_free(it);
        }
        return;
    }
    j->e = e;
    j->s = s;
    j->kind = kind;
    j->work.data = j;
    ts_item **tail = &j->items;
    for (int i = 0; i < n; i++) {
        ts_item *it = pop(e, s);
        j->rows += it->rows;
        *tail = it;
        tail = &it->next;
    }
    j->n = n;
    s->busy = 1;
    e->lane_busy = 1;
    e->tiny_feedback = kind == ITEM_FEEDBACK && !pool_for(j);
    if (job_work(j) <= INLINE_MAX_WORK) {
        /* A tiny forward or step runs here: the loop waits a few µs, where the thread pool's
         * two hand-offs (wake a worker, wake the loop back) cost more than the compute. pump()
         * is guarded against re-entry, so after_cb's pump() only marks it to run again. */
        work_cb(&j->work);
        after_cb(&j->work, 0);
        return;
    }
    /* Other jobs run off the loop: the loop never waits on real compute. */
    uv_queue_work(e->loop, &j->work, work_cb, after_cb);
}

/* A request is validated against the model served when it is queued (check_input), but a
 * control item ahead of it may swap in a model of another architecture (PUT, restore).
 * After every control item, answer 409 to each queued request whose dims no longer match
 * the model that would run it: a compute over the wrong shape would read past its input
 * and write garbage into corr_accum. Same dims mean the validation still holds (labels
 * are checked against out_dim). */
static void drop_stale(ts_engine *e, ts_served *s) {
    ts_item *keep = NULL, **tail = &keep;
    while (s->head) {
        ts_item *it = pop(e, s);
        if (!item_stale(s, it)) {
            *tail = it;
            tail = &it->next;
            continue;
        }
        char msg[600];
        stale_text(s, it, msg, sizeof msg);
        item_drop_id(e, it, 409, "the first request with this id was refused: its model was replaced");
        ts_req_reply_error(it->req, 409, "%s", msg);
        item_free(it);
    }
    for (ts_item *it = keep, *next; it; it = next) {
        next = it->next;
        uint64_t t_enq = it->t_enq;
        append(e, s, it); /* same order; keeps the counters right */
        it->t_enq = t_enq;
    }
}

/* Run the control items at the head of every idle model's FIFO. */
static void run_controls(ts_engine *e) {
    for (ts_served *s = e->models; s; s = s->next)
        while (!s->busy && s->head && s->head->kind == ITEM_CONTROL) {
            ts_item *it = pop(e, s);
            it->fn(e, s, it->arg);
            item_free(it);
        }
}

/* How many inference items at the head of s form the next batch, and whether it should
 * start now; otherwise *deadline is when it should. */
static int infer_batch(ts_engine *e, ts_served *s, uint64_t now, int *ready, uint64_t *deadline) {
    int n = 0;
    int64_t rows = 0;
    ts_item *it = s->head;
    *ready = e->draining;
    for (; it && it->kind == ITEM_INFER; it = it->next) {
        if (n > 0 && rows + it->rows > e->cfg.max_batch) {
            *ready = 1; /* the next request does not fit: nothing else can join */
            break;
        }
        rows += it->rows;
        n++;
        if (rows >= e->cfg.max_batch) {
            *ready = 1;
            break;
        }
    }
    if (it && it->kind != ITEM_INFER)
        *ready = 1; /* a step or control item follows: later rows could not join */
    if (e->cfg.arriving && atomic_load_explicit(e->cfg.arriving, memory_order_relaxed) == 0)
        *ready = 1; /* no inference request is on its way: waiting cannot fill the batch */
    *deadline = s->head->t_enq + (uint64_t)e->cfg.max_queue_delay_us;
    if (now >= *deadline)
        *ready = 1;
    return n;
}

static void arm_timer(ts_engine *e, uint64_t deadline, uint64_t now) {
    if (deadline == e->timer_deadline)
        return;
    e->timer_deadline = deadline;
    uint64_t d = deadline > now ? deadline - now : 1;
    struct itimerspec its = {.it_value = {.tv_sec = (time_t)(d / 1000000u),
                                          .tv_nsec = (long)(d % 1000000u) * 1000}};
    timerfd_settime(e->timer_fd, 0, &its, NULL);
}

static void start_next_job(ts_engine *e) {
    if (!e->models)
        return;
    uint64_t now = ts_now_us(), earliest = UINT64_MAX;
    ts_served *start = e->rr ? e->rr : e->models;
    ts_served *s = start;
    do {
        if (!s->busy && s->head && s->head->kind != ITEM_CONTROL) {
            if (s->head->kind != ITEM_INFER) {
                e->rr = s->next;
                launch(e, s, s->head->kind, 1);
                return;
            }
            int ready;
            uint64_t deadline;
            int n = infer_batch(e, s, now, &ready, &deadline);
            if (ready) {
                e->rr = s->next;
                launch(e, s, ITEM_INFER, n);
                return;
            }
            if (deadline < earliest)
                earliest = deadline;
        }
        s = s->next ? s->next : e->models;
    } while (s != start);
    if (earliest != UINT64_MAX)
        arm_timer(e, earliest, now);
}

/* Journal entries of tiny steps are held while the next tiny step runs (step_commit), so a
 * group commit takes several steps of a burst (persist.h says when held entries go on
 * their own), where it took 2-3 (measured: 16 clients on the demo model, 89 % of steps
 * had more feedback queued behind them). Anything else running, or nothing: send. */
static void flush_journal(ts_engine *e) {
    if (!e->lane_busy || !e->tiny_feedback)
        ts_journal_flush(e->cfg.journal);
}

static void pump(ts_engine *e) {
    if (e->holding) {
        flush_journal(e);
        return;
    }
    if (e->pumping) {
        e->pump_again = 1;
        return;
    }
    e->pumping = 1;
    do {
        e->pump_again = 0;
        run_controls(e);
        if (!e->lane_busy)
            start_next_job(e);
    } while (e->pump_again);
    e->pumping = 0;
    flush_journal(e);
}

static void on_timer(uv_poll_t *p, int status, int events) {
    ts_engine *e = p->data;
    uint64_t expirations;
    if (read(e->timer_fd, &expirations, sizeof expirations) < 0 && errno != EAGAIN)
        ts_log_warn("batching timer: read failed: %s", strerror(errno));
    e->timer_deadline = 0;
    pump(e);
}

/* ---- models ---- */

ts_engine *ts_engine_new(uv_loop_t *loop, const ts_engine_config *cfg, char *err, size_t errlen) {
    ts_engine *e = calloc(1, sizeof *e);
    if (!e) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    e->loop = loop;
    e->cfg = *cfg;
    e->timer_fd = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC);
    if (e->timer_fd < 0 || uv_poll_init(loop, &e->timer_poll, e->timer_fd) != 0) {
        snprintf(err, errlen, "cannot create the batching timer: %s", strerror(errno));
        if (e->timer_fd >= 0)
            close(e->timer_fd);
        free(e);
        return NULL;
    }
    e->timer_poll.data = e;
    uv_poll_start(&e->timer_poll, UV_READABLE, on_timer);
    return e;
}

static void on_timer_closed(uv_handle_t *h) {
    ts_engine *e = h->data;
    close(e->timer_fd);
    free(e);
}

void ts_engine_free(ts_engine *e) {
    while (e->models)
        ts_engine_remove(e, e->models);
    while (e->holds) { /* every reader is done: the persistence thread has stopped */
        model_hold *h = e->holds;
        e->holds = h->next;
        ts_model_free(h->m);
        free(h);
    }
    uv_poll_stop(&e->timer_poll);
    uv_close((uv_handle_t *)&e->timer_poll, on_timer_closed);
}

ts_served *ts_engine_add(ts_engine *e, const char *name, ts_model *m, int64_t version) {
    ts_served *s = calloc(1, sizeof *s);
    if (!s) {
        ts_model_free(m);
        return NULL;
    }
    snprintf(s->name, sizeof s->name, "%s", name);
    s->model = m;
    s->version = version;
    snprintf(s->version_str, sizeof s->version_str, "%lld", (long long)version);
    s->step = ts_model_step(m);
    s->snap_step = s->snap_version = -1;
    s->last_loss = NAN;
    /* Append, so listings keep the order models were loaded in. */
    ts_served **p = &e->models;
    while (*p)
        p = &(*p)->next;
    *p = s;
    e->n_models++;
    return s;
}

static model_hold **hold_find(ts_engine *e, const ts_model *m) {
    model_hold **pp = &e->holds;
    while (*pp && (*pp)->m != m)
        pp = &(*pp)->next;
    return pp;
}

int ts_engine_model_hold(ts_engine *e, ts_model *m) {
    model_hold **pp = hold_find(e, m);
    if (!*pp && !(*pp = calloc(1, sizeof **pp)))
        return -1;
    (*pp)->m = m;
    (*pp)->refs++;
    return 0;
}

void ts_engine_model_release(ts_engine *e, ts_model *m) {
    model_hold **pp = hold_find(e, m), *h = *pp;
    if (!h || --h->refs > 0)
        return;
    *pp = h->next;
    if (h->retired)
        ts_model_free(h->m);
    free(h);
}

/* A model no longer served: freed now, or by its last release when held. */
static void model_retire(ts_engine *e, ts_model *m) {
    model_hold *h = *hold_find(e, m);
    if (h)
        h->retired = 1;
    else
        ts_model_free(m);
}

void ts_engine_swap(ts_engine *e, ts_served *s, ts_model *m, int64_t version) {
    model_retire(e, s->model);
    s->model = m;
    s->version = version;
    snprintf(s->version_str, sizeof s->version_str, "%lld", (long long)version);
    s->step = ts_model_step(m);
    s->generation++;
    s->uncommitted = 0; /* the old model's steps no longer count (step_acked checks generation) */
    drop_stale(e, s);
}

void ts_engine_remove(ts_engine *e, ts_served *s) {
    for (ts_served **p = &e->models; *p; p = &(*p)->next)
        if (*p == s) {
            *p = s->next;
            break;
        }
    if (e->rr == s)
        e->rr = s->next;
    e->n_models--;
    s->removed = 1;
    while (s->head) { /* nothing should be left; answer anything that is */
        ts_item *it = pop(e, s);
        if (it->kind == ITEM_CONTROL) {
            ts_log_warn("model '%s': a queued control item was cancelled (the model was removed)", s->name);
            it->fn(e, s, it->arg); /* s->removed: it only lets go of arg (engine.h) */
            item_free(it);
            continue;
        }
        item_drop_id(e, it, 404, "the model was unloaded");
        if (it->req)
            ts_req_reply_error(it->req, 404, "model '%s' was unloaded", s->name);
        item_free(it);
    }
    undo_pending(s);
    ts_window_forget(e->cfg.window, s->name);
    model_retire(e, s->model);
    free(s);
}

ts_served *ts_engine_find(ts_engine *e, const char *name, int include_unloading) {
    for (ts_served *s = e->models; s; s = s->next)
        if (strcmp(s->name, name) == 0)
            return s->unloading && !include_unloading ? NULL : s;
    return NULL;
}

ts_served *ts_engine_first(ts_engine *e) { return e->models; }
int ts_engine_count(ts_engine *e) { return e->n_models; }

void ts_engine_hold(ts_engine *e) { e->holding = 1; }

void ts_engine_release(ts_engine *e) {
    e->holding = 0;
    pump(e);
}

void ts_engine_drain(ts_engine *e) {
    e->draining = 1;
    pump(e);
}

int ts_engine_idle(ts_engine *e) {
    if (e->lane_busy)
        return 0;
    for (ts_served *s = e->models; s; s = s->next)
        if (s->head)
            return 0;
    return 1;
}

void ts_engine_render_metrics(ts_engine *e, ts_buf *out) {
    static const struct {
        const char *name, *type, *help;
    } fams[] = {
        {"tscale_model_step", "gauge", "The model's step (step_counter of its first ternary_linear layer)."},
        {"tscale_model_version", "gauge", "The version number being served."},
        {"tscale_feedback_steps_total", "counter", "Feedback steps applied since start."},
        {"tscale_feedback_last_loss", "gauge", "Loss of the newest feedback step that computed one."},
        {"tscale_queue_rows", "gauge", "Rows waiting in the model's queue."},
        {"tscale_queue_requests", "gauge", "Items waiting in the model's queue."},
        {"tscale_model_snapshot_failing", "gauge", "1 while the model's snapshots are failing."},
        {"tscale_model_snapshot_failures_total", "counter", "Failed snapshot writes of the model."},
    };
    for (size_t f = 0; f < sizeof fams / sizeof fams[0]; f++) {
        ts_buf_printf(out, "# HELP %s %s\n# TYPE %s %s\n", fams[f].name, fams[f].help, fams[f].name,
                      fams[f].type);
        for (ts_served *s = e->models; s; s = s->next) {
            double v;
            switch (f) {
            case 0: v = (double)s->step; break;
            case 1: v = (double)s->version; break;
            case 2: v = (double)s->feedback_steps; break;
            case 3: v = s->last_loss; break;
            case 4: v = (double)s->queued_rows; break;
            case 5: v = (double)s->queued_items; break;
            case 6: v = s->snapshot_failing; break;
            default: v = (double)s->snapshot_failures; break;
            }
            if (isnan(v))
                continue;
            ts_buf_printf(out, "%s{model=\"%s\"} %.17g\n", fams[f].name, s->name, v);
        }
    }
}
