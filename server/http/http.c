/* http.c — libmicrohttpd front end (see http.h for the design and a request's life). */
#include "server/http/http.h"

#include <errno.h>
#include <jansson.h>
#include <microhttpd.h>
#include <netdb.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "proto/restore.h"
#include "proto/safetensors.h"
#include "server/http/auth.h"
#include "server/http/conns.h"
#include "server/http/framing.h"
#include "server/hash.h"
#include "server/log.h"
#include "server/wake.h"

enum {
    REQ_HTTP,      /* being received / parsed on an HTTP thread */
    REQ_LOOP,      /* suspended; the loop owns it until it answers */
    REQ_ANSWERED,  /* the loop stored a response and resumed the connection */
    REQ_QUEUED,    /* response handed to MHD */
};

struct ts_http {
    ts_http_config cfg;
    struct MHD_Daemon *mhd;
    MHD_socket listen_fd;        /* after quiesce: closed after MHD_stop_daemon */
    ts_wake wake;                /* HTTP threads -> loop: requests in the list below */
    pthread_mutex_t mu;
    ts_req *in_head, *in_tail;   /* parsed requests waiting for the loop */
    _Atomic int active;          /* requests between first header and completion */
    ts_conns *conns;             /* deadlines and the soft limit (conns.h) */
    char host[256];              /* cfg.host points here (the caller's copy may not live on) */
    pthread_rwlock_t tokens_mu;  /* cfg.admin_token / cfg.feedback_token (ts_http_update_tokens) */
    _Atomic size_t buffered;     /* bytes of body buffers, all requests (--max-buffered-bytes) */
    uv_timer_t deadline_timer;   /* loop: ts_conns_expire */
    int handles_open;            /* loop handles not closed yet; h is freed at 0 */
    int stopping;                /* under mu: hand nothing more to the loop */
};

/* ---- responses ---- */

static int kind_of(ts_endpoint ep) {
    return ep == TS_EP_INFER ? TS_KIND_INFER : ep == TS_EP_FEEDBACK ? TS_KIND_FEEDBACK : -1;
}

static struct MHD_Response *make_response(ts_req *req, int status, const char *content_type,
                                          void *body, size_t len, int64_t json_len) {
    struct MHD_Response *r =
        len ? MHD_create_response_from_buffer(len, body, MHD_RESPMEM_MUST_FREE)
            : MHD_create_response_from_buffer(0, NULL, MHD_RESPMEM_PERSISTENT);
    if (!len)
        free(body);
    if (!r) {
        if (len)
            free(body);
        return NULL;
    }
    if (content_type)
        MHD_add_response_header(r, MHD_HTTP_HEADER_CONTENT_TYPE, content_type);
    if (json_len >= 0) {
        char v[32];
        snprintf(v, sizeof v, "%lld", (long long)json_len);
        MHD_add_response_header(r, "Inference-Header-Content-Length", v);
    }
    if (status == 503) {
        MHD_add_response_header(r, MHD_HTTP_HEADER_RETRY_AFTER, "1");
        if (atomic_load(req->http->cfg.shutting_down))
            MHD_add_response_header(r, MHD_HTTP_HEADER_CONNECTION, "close");
    }
    if (status == 401)
        MHD_add_response_header(r, MHD_HTTP_HEADER_WWW_AUTHENTICATE, "Bearer");
    if (req->forwarded_to[0])
        MHD_add_response_header(r, "Tscale-Forwarded-To", req->forwarded_to);
    if (req->close_after)
        MHD_add_response_header(r, MHD_HTTP_HEADER_CONNECTION, "close");
    if (status == 405 && req->route.allow[0])
        MHD_add_response_header(r, MHD_HTTP_HEADER_ALLOW, req->route.allow);
    return r;
}

static void count(ts_req *req, int status) {
    ts_http *h = req->http;
    ts_metrics_count_request(h->cfg.metrics, req->route.ep, status);
    int k = kind_of(req->route.ep);
    if (k >= 0 && req->t_received_us)
        ts_hist_observe(&h->cfg.metrics->total_us[k], ts_now_us() - req->t_received_us);
}

/* The request is no longer on its way to a batch (handed over, answered or gone). */
static void not_arriving(ts_req *req) {
    if (req->arriving) {
        req->arriving = 0;
        atomic_fetch_sub_explicit(req->http->cfg.arriving, 1, memory_order_relaxed);
    }
}

void ts_req_reply(ts_req *req, int status, const char *content_type, void *body, size_t len,
                  int64_t json_len) {
    if (req->reply_fn) { /* not an HTTP request (see http.h) */
        req->reply_fn(req, status, body, len);
        return;
    }
    not_arriving(req);
    req->log_status = status;
    req->log_bytes = len;
    struct MHD_Response *r = make_response(req, status, content_type, body, len, json_len);
    count(req, status);
    struct MHD_Connection *conn = req->conn;
    if (req->state == REQ_HTTP) {
        /* On the HTTP thread, inside the access handler: queue directly. A NULL response
         * (out of memory) makes MHD close the connection, the only thing left to do. */
        if (r) {
            MHD_queue_response(conn, (unsigned)status, r);
            MHD_destroy_response(r);
        }
        req->state = REQ_QUEUED;
        return;
    }
    /* On the loop: store it and wake the connection; the access handler queues it. After
     * MHD_resume_connection the request is MHD's again: do not touch req afterwards. */
    req->response = r;
    req->status = status;
    req->state = REQ_ANSWERED;
    MHD_resume_connection(conn);
}

void ts_req_reply_error(ts_req *req, int status, const char *fmt, ...) {
    char msg[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    if (status >= 500 && status != 503) /* the daemon's own failures; 4xx are the client's */
        ts_log_error("%s %s: %d %s", ts_endpoint_name(req->route.ep),
                     req->route.model[0] ? req->route.model : "-", status, msg);
    char *body = ts_oip_error_json(msg);
    ts_req_reply(req, status, "application/json", body, body ? strlen(body) : 0, -1);
}

void ts_req_reply_json(ts_req *req, int status, void *json) {
    char *body = json ? json_dumps((json_t *)json, JSON_COMPACT) : NULL;
    json_decref((json_t *)json);
    if (!body) {
        ts_req_reply_error(req, 500, "out of memory building the response");
        return;
    }
    ts_req_reply(req, status, "application/json", body, strlen(body), -1);
}

int ts_req_reply_bad_body(ts_req *req) {
    if (!req->bad_body[0])
        return 0;
    ts_req_reply_error(req, 400, "%s", req->bad_body);
    return 1;
}

/* ---- the access handler's steps ---- */

static int takes_body(ts_endpoint ep) {
    return ep == TS_EP_INFER || ep == TS_EP_FEEDBACK || ep == TS_EP_ADMIN_PUT ||
           ep == TS_EP_ADMIN_RESTORE;
}

/* Endpoints on an existing model: a body that does not parse is answered on the loop,
 * after the lookup (404 first). PUT creates its model, so its 400 needs no lookup. */
static int needs_model(ts_endpoint ep) {
    return ep == TS_EP_INFER || ep == TS_EP_FEEDBACK || ep == TS_EP_ADMIN_RESTORE;
}

static enum MHD_Result framing_header(void *cls, enum MHD_ValueKind kind, const char *key,
                                     const char *value) {
    ts_framing_add(cls, key, value);
    return MHD_YES;
}

/* Refuse ambiguous framing (framing.h) with Connection: close. 1 when it answered. */
static int check_framing(ts_req *req, struct MHD_Connection *conn) {
    ts_framing f;
    ts_framing_init(&f);
    MHD_get_connection_values(conn, MHD_HEADER_KIND, framing_header, &f);
    char err[256];
    int status = ts_framing_verdict(&f, err, sizeof err);
    req->declared_length = f.content_length;
    if (!status)
        return 0;
    req->close_after = 1;
    ts_req_reply_error(req, status, "%s", err);
    return 1;
}

static int is_probe(ts_endpoint ep) {
    return ep == TS_EP_HEALTH_LIVE || ep == TS_EP_HEALTH_READY || ep == TS_EP_METRICS;
}

/* A connection accepted beyond --max-connections (conns.h) serves probes only, and only
 * once. 1 when it answered. */
static int check_over(ts_req *req) {
    if (!ts_conns_over(req->tconn))
        return 0;
    req->close_after = 1;
    if (is_probe(req->route.ep))
        return 0;
    ts_req_reply_error(req, 503, "the daemon is at its connection limit (--max-connections "
                       "%lld); retry shortly", (long long)req->http->cfg.max_connections);
    return 1;
}

/* Does the endpoint answer without a token? (auth.h: the Host check applies only then.) */
static int tokenless(const ts_http *h, ts_endpoint ep) {
    if (ts_endpoint_is_admin(ep))
        return !h->cfg.admin_token[0];
    return ep == TS_EP_FEEDBACK && !h->cfg.feedback_token[0] && !h->cfg.admin_token[0];
}

/* The browser guards of the state-changing routes (auth.h). 1 when it answered. */
static int check_browser(ts_req *req, struct MHD_Connection *conn) {
    ts_http *h = req->http;
    ts_endpoint ep = req->route.ep;
    if (!ts_endpoint_is_admin(ep) && ep != TS_EP_FEEDBACK)
        return 0;
    const char *host = MHD_lookup_connection_value(conn, MHD_HEADER_KIND, MHD_HTTP_HEADER_HOST);
    const char *origin = MHD_lookup_connection_value(conn, MHD_HEADER_KIND, "Origin");
    const char *ctype = MHD_lookup_connection_value(conn, MHD_HEADER_KIND, MHD_HTTP_HEADER_CONTENT_TYPE);
    if (!ts_auth_origin_same(origin, host)) {
        ts_req_reply_error(req, 403, "cross-origin request refused: /admin and feedback do not "
                           "answer web pages of other origins (Origin: %.200s)", origin);
        return 1;
    }
    if (tokenless(h, ep) && !ts_auth_host_allowed(host, h->cfg.host, h->cfg.allowed_hosts)) {
        ts_req_reply_error(req, 403, "Host '%.200s' is not this daemon's address; without a token "
                           "this route answers only requests for localhost, the listen address or "
                           "a name in --allowed-hosts", host ? host : "");
        return 1;
    }
    if ((ep == TS_EP_FEEDBACK || ep == TS_EP_ADMIN_RESTORE) && ctype && !ts_auth_content_type_ok(ctype)) {
        ts_req_reply_error(req, 415, "Content-Type must be application/json (or "
                           "application/octet-stream for binary tensor data), not '%.100s'", ctype);
        return 1;
    }
    return 0;
}

static int check_headers_locked(ts_req *req, struct MHD_Connection *conn);

/* Checks that need only the headers, the tokens held still meanwhile. 1 when it answered. */
static int check_headers(ts_req *req, struct MHD_Connection *conn) {
    pthread_rwlock_rdlock(&req->http->tokens_mu);
    int answered = check_headers_locked(req, conn);
    pthread_rwlock_unlock(&req->http->tokens_mu);
    return answered;
}

void ts_http_update_tokens(ts_http *h, void (*update)(void *ctx), void *ctx) {
    pthread_rwlock_wrlock(&h->tokens_mu);
    update(ctx);
    pthread_rwlock_unlock(&h->tokens_mu);
}

static int check_headers_locked(ts_req *req, struct MHD_Connection *conn) {
    ts_http *h = req->http;
    ts_route *rt = &req->route;
    if (check_framing(req, conn))
        return 1;
    if (rt->status) {
        ts_req_reply_error(req, rt->status, "%s", rt->error);
        return 1;
    }
    if (atomic_load(h->cfg.shutting_down) && !is_probe(rt->ep)) {
        ts_req_reply_error(req, 503, "shutting down");
        return 1;
    }
    const char *authz = MHD_lookup_connection_value(conn, MHD_HEADER_KIND, MHD_HTTP_HEADER_AUTHORIZATION);
    ts_auth_result a = TS_AUTH_OK;
    if (ts_endpoint_is_admin(rt->ep)) {
        if (h->cfg.admin_token[0]) {
            a = ts_auth_check(authz, h->cfg.admin_token, NULL);
        } else {
            const union MHD_ConnectionInfo *ci =
                MHD_get_connection_info(conn, MHD_CONNECTION_INFO_CLIENT_ADDRESS);
            if (!ci || !ts_auth_is_loopback(ci->client_addr)) {
                ts_req_reply_error(req, 403, "the admin API answers loopback clients only "
                                             "(configure --admin-token-file for remote access)");
                return 1;
            }
        }
    } else if (rt->ep == TS_EP_FEEDBACK && (h->cfg.feedback_token[0] || h->cfg.admin_token[0])) {
        /* with only an admin token, feedback (which changes the model) needs it too */
        a = ts_auth_check(authz, h->cfg.feedback_token, h->cfg.admin_token);
    }
    if (a == TS_AUTH_MISSING) {
        ts_req_reply_error(req, 401, "missing credentials: send Authorization: Bearer <token>");
        return 1;
    }
    if (a == TS_AUTH_WRONG) {
        ts_req_reply_error(req, 403, "the bearer token is not valid for this endpoint");
        return 1;
    }
    if (check_browser(req, conn))
        return 1;
    /* The declared length only refuses: the buffer grows with the bytes that arrive
     * (collect), so announcing a large body costs the daemon nothing. */
    if (takes_body(rt->ep) && req->declared_length > h->cfg.max_body_bytes) {
        ts_req_reply_error(req, 413, "request body of %lld bytes is over the limit of %lld "
                           "(--max-body-bytes)", (long long)req->declared_length,
                           (long long)h->cfg.max_body_bytes);
        return 1;
    }
    return 0;
}

/* How much of an oversized body is read and dropped so that the client still gets its
 * 413 (MHD queues a response only once the upload is over); past it the connection is
 * closed instead, so a client cannot keep the daemon reading forever. */
#define DISCARD_MAX ((size_t)64 << 20)

/* Free the body buffer and give its bytes back to the budget (--max-buffered-bytes). */
static void body_release(ts_req *req) {
    if (req->body_cap)
        atomic_fetch_sub(&req->http->buffered, req->body_cap);
    free(req->body);
    req->body = NULL;
    req->body_len = req->body_cap = 0;
}

/* Grow the body buffer to hold need bytes, within the budget shared by every body being
 * received. 0; -1 over the budget (the request is refused with 503, the buffer freed);
 * -2 out of memory. */
static int body_reserve(ts_req *req, size_t need) {
    ts_http *h = req->http;
    size_t cap = req->body_cap ? req->body_cap : 4096;
    while (cap < need)
        cap *= 2;
    if (cap > (size_t)h->cfg.max_body_bytes)
        cap = (size_t)h->cfg.max_body_bytes;
    size_t add = cap - req->body_cap;
    if (atomic_fetch_add(&h->buffered, add) + add > (size_t)h->cfg.max_buffered_bytes) {
        atomic_fetch_sub(&h->buffered, add);
        req->over_budget = 1;
        body_release(req);
        return -1;
    }
    uint8_t *p = realloc(req->body, cap);
    if (!p) {
        atomic_fetch_sub(&h->buffered, add);
        return -2;
    }
    req->body = p;
    req->body_cap = cap;
    return 0;
}

/* Append upload data. Past the body limit or the budget, keep reading and discarding up
 * to DISCARD_MAX, so that the client gets its answer. */
static enum MHD_Result collect(ts_req *req, const char *data, size_t *size) {
    ts_http *h = req->http;
    size_t n = *size;
    *size = 0;
    if (!takes_body(req->route.ep))
        return MHD_YES; /* a body where none is expected is ignored */
    if (req->too_large || req->over_budget) {
        req->discarded += n;
        return req->discarded > DISCARD_MAX ? MHD_NO : MHD_YES;
    }
    if (req->body_len + n > (size_t)h->cfg.max_body_bytes) {
        req->too_large = 1;
        body_release(req);
        return MHD_YES;
    }
    if (req->body_len + n > req->body_cap) {
        int rc = body_reserve(req, req->body_len + n);
        if (rc == -2)
            return MHD_NO;
        if (rc == -1)
            return collect(req, data, &n); /* discard this piece too */
    }
    memcpy(req->body + req->body_len, data, n);
    req->body_len += n;
    return MHD_YES;
}

/* Parse the complete body. 0, or -1 with the reason (a 400). */
static int parse_body(ts_req *req, struct MHD_Connection *conn, char *err, size_t errlen) {
    ts_http *h = req->http;
    switch (req->route.ep) {
    case TS_EP_INFER:
    case TS_EP_FEEDBACK: {
        int64_t json_len = -1;
        const char *v = MHD_lookup_connection_value(conn, MHD_HEADER_KIND, "Inference-Header-Content-Length");
        if (v) {
            char *end;
            errno = 0;
            long long n = strtoll(v, &end, 10);
            if (errno || end == v || *end || n < 0 || (unsigned long long)n > req->body_len) {
                snprintf(err, errlen, "Inference-Header-Content-Length '%.32s' is not a length "
                         "within the %zu-byte body", v, req->body_len);
                return -1;
            }
            json_len = n;
        }
        ts_oip_limits lim = {.max_elements = h->cfg.max_elements, .max_depth = 32};
        static const uint8_t empty[1];
        if (ts_oip_parse_request(req->body ? req->body : empty, req->body_len, json_len, &lim,
                                 &req->oip, err, errlen) < 0)
            return -1;
        req->has_oip = 1;
        return 0;
    }
    case TS_EP_ADMIN_PUT: {
        char name[TS_MODEL_NAME_MAX], why[512];
        if (!req->body_len) {
            snprintf(err, errlen, "the body must be a model file (safetensors); it is empty");
            return -1;
        }
        req->upload = ts_safetensors_read(req->body, req->body_len, name, why, sizeof why);
        if (!req->upload) {
            snprintf(err, errlen, "model file refused: %s", why);
            return -1;
        }
        req->upload_hash = ts_hash_bytes(req->body, req->body_len);
        return 0;
    }
    case TS_EP_ADMIN_RESTORE:
        return ts_restore_parse(req->body, req->body_len, &req->snapshot_id, err, errlen);
    default: return 0;
    }
}

/* Endpoints that need no server state are answered on the HTTP thread. 1 when answered. */
static int answer_static(ts_req *req) {
    json_t *j = NULL;
    if (req->route.ep == TS_EP_HEALTH_LIVE)
        j = json_pack("{s:b}", "live", 1);
    else if (req->route.ep == TS_EP_SERVER_META)
        j = json_pack("{s:s,s:s,s:[s,s,s*]}", "name", "tscale", "version", TS_VERSION, "extensions",
                      "binary_tensor_data", "feedback",
                      req->http->cfg.feedback_by_id ? "feedback_by_id" : NULL);
    else
        return 0;
    ts_req_reply_json(req, 200, j);
    return 1;
}

static void hand_to_loop(ts_req *req, struct MHD_Connection *conn) {
    ts_http *h = req->http;
    pthread_mutex_lock(&h->mu);
    if (h->stopping) { /* the loop takes nothing more: answer here (see ts_http_stop) */
        pthread_mutex_unlock(&h->mu);
        ts_req_reply_error(req, 503, "shutting down");
        return;
    }
    req->state = REQ_LOOP;
    MHD_suspend_connection(conn);
    not_arriving(req);
    req->next = NULL;
    if (h->in_tail)
        h->in_tail->next = req;
    else
        h->in_head = req;
    h->in_tail = req;
    pthread_mutex_unlock(&h->mu);
    ts_wake_send(&h->wake);
}

/* The access log keeps the method and the path (never the query, a body or a header: no
 * token can reach it), with bytes that are not printable as '?'. */
static void access_log_note(ts_req *req, const char *method, const char *url) {
    snprintf(req->log_method, sizeof req->log_method, "%s", method);
    size_t i = 0;
    for (; url[i] && url[i] != '?' && i + 1 < sizeof req->log_path; i++)
        req->log_path[i] = (url[i] > ' ' && url[i] < 0x7f) ? url[i] : '?';
    req->log_path[i] = '\0';
}

static void access_log(const ts_req *req, enum MHD_RequestTerminationCode toe) {
    const ts_http *h = req->http;
    if (h->cfg.access_log < 0)
        return;
    ts_log((ts_log_level)h->cfg.access_log, "access: %s %s %d %zu bytes %llu us%s", req->log_method,
           req->log_path, req->log_status, req->log_bytes,
           (unsigned long long)(ts_now_us() - req->t_start_us),
           toe == MHD_REQUEST_TERMINATED_COMPLETED_OK ? "" : " (not sent whole: connection ended)");
}

static enum MHD_Result on_access(void *cls, struct MHD_Connection *conn, const char *url,
                                 const char *method, const char *version, const char *upload_data,
                                 size_t *upload_data_size, void **con_cls) {
    ts_http *h = cls;
    ts_req *req = *con_cls;
    if (!req) { /* headers complete */
        req = calloc(1, sizeof *req);
        if (!req)
            return MHD_NO;
        *con_cls = req;
        req->http = h;
        req->conn = conn;
        req->t_start_us = ts_now_us();
        if (h->cfg.access_log >= 0)
            access_log_note(req, method, url);
        atomic_fetch_add(&h->active, 1);
        ts_route_match(method, url, &req->route);
        if (req->route.ep == TS_EP_INFER && h->cfg.arriving) {
            req->arriving = 1;
            atomic_fetch_add_explicit(h->cfg.arriving, 1, memory_order_relaxed);
        }
        const union MHD_ConnectionInfo *ci =
            MHD_get_connection_info(conn, MHD_CONNECTION_INFO_SOCKET_CONTEXT);
        req->tconn = ci ? ci->socket_context : NULL;
        ts_conns_phase(h->conns, req->tconn, TS_CONN_BODY, ts_now_us());
        if (check_over(req) || check_headers(req, conn))
            ts_conns_phase(h->conns, req->tconn, TS_CONN_SERVING, ts_now_us());
        return MHD_YES;
    }
    if (req->state == REQ_ANSWERED) { /* resumed by the loop */
        struct MHD_Response *r = req->response;
        req->response = NULL;
        req->state = REQ_QUEUED;
        if (!r)
            return MHD_NO;
        enum MHD_Result ok = MHD_queue_response(conn, (unsigned)req->status, r);
        MHD_destroy_response(r);
        return ok;
    }
    if (req->state != REQ_HTTP)
        return MHD_YES;
    if (*upload_data_size)
        return collect(req, upload_data, upload_data_size);
    /* The body is complete. */
    req->t_received_us = ts_now_us();
    ts_conns_phase(h->conns, req->tconn, TS_CONN_SERVING, req->t_received_us);
    if (req->too_large) {
        ts_req_reply_error(req, 413, "request body is over the limit of %lld bytes (--max-body-bytes)",
                           (long long)h->cfg.max_body_bytes);
        return MHD_YES;
    }
    if (req->over_budget) {
        ts_req_reply_error(req, 503, "the request bodies being received together exceed "
                           "--max-buffered-bytes (%lld); retry shortly",
                           (long long)h->cfg.max_buffered_bytes);
        return MHD_YES;
    }
    char err[sizeof req->bad_body];
    int rc = parse_body(req, conn, err, sizeof err);
    body_release(req);
    if (rc < 0 && needs_model(req->route.ep)) {
        snprintf(req->bad_body, sizeof req->bad_body, "%s", err);
        hand_to_loop(req, conn);
    } else if (rc < 0) {
        ts_req_reply_error(req, 400, "%s", err);
    } else if (!answer_static(req)) {
        hand_to_loop(req, conn);
    }
    return MHD_YES;
}

static void on_completed(void *cls, struct MHD_Connection *conn, void **con_cls,
                         enum MHD_RequestTerminationCode toe) {
    ts_http *h = cls;
    ts_req *req = *con_cls;
    if (!req)
        return;
    *con_cls = NULL;
    access_log(req, toe);
    ts_conns_phase(h->conns, req->tconn, TS_CONN_HEAD, ts_now_us()); /* the next request's */
    not_arriving(req);
    if (req->response)
        MHD_destroy_response(req->response);
    if (req->has_oip)
        ts_oip_request_free(&req->oip);
    ts_model_free(req->upload);
    body_release(req);
    free(req);
    atomic_fetch_sub(&h->active, 1);
}

/* ---- the loop side ---- */

void ts_http_drain_inbound(ts_http *h) {
    pthread_mutex_lock(&h->mu);
    ts_req *req = h->in_head;
    h->in_head = h->in_tail = NULL;
    pthread_mutex_unlock(&h->mu);
    if (!req)
        return;
    if (h->cfg.dispatch_begin)
        h->cfg.dispatch_begin(h->cfg.dispatch_ctx);
    while (req) {
        ts_req *next = req->next; /* dispatch may answer, after which req is MHD's */
        h->cfg.dispatch(h->cfg.dispatch_ctx, req);
        req = next;
    }
    if (h->cfg.dispatch_end)
        h->cfg.dispatch_end(h->cfg.dispatch_ctx);
}

static void on_inbound(void *data) { ts_http_drain_inbound(data); }

/* libmicrohttpd's threads: register each connection with the budget (conns.h). The entry
 * is the connection's socket_context, freed here when it closes. */
static void on_connection(void *cls, struct MHD_Connection *conn, void **socket_context,
                          enum MHD_ConnectionNotificationCode toe) {
    ts_http *h = cls;
    if (toe == MHD_CONNECTION_NOTIFY_CLOSED) {
        ts_conns_close(h->conns, *socket_context);
        *socket_context = NULL;
        return;
    }
    const union MHD_ConnectionInfo *ci = MHD_get_connection_info(conn, MHD_CONNECTION_INFO_CONNECTION_FD);
    *socket_context = ci ? ts_conns_open(h->conns, ci->connect_fd, ts_now_us()) : NULL;
}

static void on_deadline_tick(uv_timer_t *t) {
    ts_http *h = t->data;
    int n = ts_conns_expire(h->conns, ts_now_us());
    if (n)
        ts_log_debug("http: closed %d connection(s) past --header-timeout/--body-timeout", n);
}

static void mhd_log(void *cls, const char *fmt, va_list ap) {
    char msg[512];
    vsnprintf(msg, sizeof msg, fmt, ap);
    ts_log_debug("http: %s", msg);
}

static int resolve(const char *host, int port, struct sockaddr_storage *ss, char *err, size_t errlen) {
    struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM, .ai_flags = AI_PASSIVE};
    struct addrinfo *res = NULL;
    int rc = getaddrinfo(host, NULL, &hints, &res);
    if (rc != 0 || !res) {
        snprintf(err, errlen, "cannot resolve listen host '%s': %s", host, gai_strerror(rc));
        return -1;
    }
    memcpy(ss, res->ai_addr, res->ai_addrlen);
    freeaddrinfo(res);
    if (ss->ss_family == AF_INET)
        ((struct sockaddr_in *)ss)->sin_port = htons((uint16_t)port);
    else
        ((struct sockaddr_in6 *)ss)->sin6_port = htons((uint16_t)port);
    return 0;
}

int ts_http_bind(const char *host, int port, int *bound_port, char *err, size_t errlen) {
    struct sockaddr_storage ss;
    memset(&ss, 0, sizeof ss);
    if (resolve(host, port, &ss, err, errlen) < 0)
        return -1;
    int fd = socket(ss.ss_family, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    int one = 1;
    socklen_t len = ss.ss_family == AF_INET6 ? sizeof(struct sockaddr_in6) : sizeof(struct sockaddr_in);
    if (fd < 0 || setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one) < 0 ||
        (ss.ss_family == AF_INET6 && setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof one) < 0) ||
        bind(fd, (struct sockaddr *)&ss, len) < 0 || listen(fd, SOMAXCONN) < 0 ||
        getsockname(fd, (struct sockaddr *)&ss, &len) < 0) {
        snprintf(err, errlen, "cannot listen on %s:%d: %s (is the port in use, or the address "
                 "not local?)", host, port, strerror(errno));
        if (fd >= 0)
            close(fd);
        return -1;
    }
    *bound_port = ntohs(ss.ss_family == AF_INET6 ? ((struct sockaddr_in6 *)&ss)->sin6_port
                                                 : ((struct sockaddr_in *)&ss)->sin_port);
    return fd;
}

static int hex_digit(char c) {
    return c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10
         : c >= 'A' && c <= 'F' ? c - 'A' + 10 : -1;
}

/* Percent-decoding of the path and query arguments, as MHD's default except that "%00" is
 * kept as it is: a decoded NUL would cut the path short for everything after MHD, so
 * "/v2/models/m%00x/ready" would be routed as "/v2/models/m" and "DELETE
 * /admin/models/m%00junk" would delete m. Kept, it is an invalid name character (404). */
static size_t unescape_keep_nul(void *cls, struct MHD_Connection *conn, char *s) {
    char *out = s;
    for (const char *p = s; *p;) {
        int hi, lo;
        if (p[0] == '%' && (hi = hex_digit(p[1])) >= 0 && (lo = hex_digit(p[2])) >= 0 && (hi | lo)) {
            *out++ = (char)(hi << 4 | lo);
            p += 3;
        } else {
            *out++ = *p++;
        }
    }
    *out = '\0';
    return (size_t)(out - s);
}

ts_http *ts_http_start(uv_loop_t *loop, const ts_http_config *cfg, char *err, size_t errlen) {
    ts_http *h = calloc(1, sizeof *h);
    if (h && !(h->conns = ts_conns_new(cfg->max_connections, (uint64_t)cfg->header_timeout_s * 1000000u,
                                       (uint64_t)cfg->body_timeout_s * 1000000u))) {
        free(h);
        h = NULL;
    }
    if (!h) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    h->cfg = *cfg;
    snprintf(h->host, sizeof h->host, "%s", cfg->host);
    h->cfg.host = h->host;
    h->listen_fd = MHD_INVALID_SOCKET;
    pthread_mutex_init(&h->mu, NULL);
    pthread_rwlock_init(&h->tokens_mu, NULL);
    int wrc = ts_wake_init(loop, &h->wake, on_inbound, h);
    if (wrc != 0) {
        snprintf(err, errlen, "cannot create the HTTP wake-up handle: %s", uv_strerror(wrc));
        pthread_mutex_destroy(&h->mu);
        pthread_rwlock_destroy(&h->tokens_mu);
        ts_conns_free(h->conns);
        free(h);
        return NULL;
    }
    unsigned flags = MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_EPOLL | MHD_ALLOW_SUSPEND_RESUME |
                     MHD_USE_ITC | MHD_USE_ERROR_LOG;
    /* The pool-size option only when a pool is wanted: MHD warns on stderr about 0. */
    struct MHD_OptionItem pool_opt[] = {
        {MHD_OPTION_THREAD_POOL_SIZE, cfg->threads, NULL},
        {MHD_OPTION_END, 0, NULL},
    };
    h->mhd = MHD_start_daemon(
        flags, (uint16_t)cfg->port, NULL, NULL, on_access, h,
        MHD_OPTION_LISTEN_SOCKET, (MHD_socket)cfg->listen_fd,
        MHD_OPTION_ARRAY, cfg->threads > 1 ? pool_opt : pool_opt + 1,
        MHD_OPTION_CONNECTION_LIMIT, (unsigned)(cfg->max_connections + ts_http_spare(cfg->max_connections)),
        MHD_OPTION_PER_IP_CONNECTION_LIMIT, (unsigned)cfg->max_per_client,
        MHD_OPTION_NOTIFY_CONNECTION, on_connection, h,
        MHD_OPTION_CONNECTION_TIMEOUT, (unsigned)cfg->request_timeout_s,
        MHD_OPTION_UNESCAPE_CALLBACK, unescape_keep_nul, NULL,
        MHD_OPTION_NOTIFY_COMPLETED, on_completed, h,
        MHD_OPTION_EXTERNAL_LOGGER, mhd_log, NULL,
        MHD_OPTION_END);
    if (!h->mhd) {
        snprintf(err, errlen, "cannot serve HTTP on %s:%d: %s", cfg->host, cfg->port,
                 errno ? strerror(errno) : "libmicrohttpd refused");
        ts_wake_close(&h->wake, NULL);
        uv_run(loop, UV_RUN_NOWAIT);
        pthread_mutex_destroy(&h->mu);
        pthread_rwlock_destroy(&h->tokens_mu);
        ts_conns_free(h->conns);
        free(h);
        return NULL;
    }
    h->handles_open = 2; /* wake, deadline_timer */
    uv_timer_init(loop, &h->deadline_timer);
    h->deadline_timer.data = h;
    uv_timer_start(&h->deadline_timer, on_deadline_tick, 200, 200);
    return h;
}

void ts_http_quiesce(ts_http *h) {
    if (h->listen_fd == MHD_INVALID_SOCKET)
        h->listen_fd = MHD_quiesce_daemon(h->mhd);
}

int ts_http_active(ts_http *h) { return atomic_load(&h->active); }

int64_t ts_http_spare(int64_t max_connections) { return max_connections / 8 + 4; }

static void on_handle_closed(uv_handle_t *handle) {
    ts_http *h = handle->data;
    if (--h->handles_open > 0)
        return;
    pthread_mutex_destroy(&h->mu);
    pthread_rwlock_destroy(&h->tokens_mu);
    ts_conns_free(h->conns);
    free(h);
}

void ts_http_stop(ts_http *h) {
    /* No request may stay suspended in the hand-over list when MHD stops (it would close
     * the connection and free the request under the list): close the list, answer what
     * is in it, then stop. */
    pthread_mutex_lock(&h->mu);
    h->stopping = 1;
    pthread_mutex_unlock(&h->mu);
    ts_http_drain_inbound(h);
    MHD_stop_daemon(h->mhd);
    if (h->listen_fd != MHD_INVALID_SOCKET)
        close(h->listen_fd);
    uv_timer_stop(&h->deadline_timer);
    uv_close((uv_handle_t *)&h->deadline_timer, on_handle_closed);
    ts_wake_close(&h->wake, on_handle_closed);
}
