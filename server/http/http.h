/* http.h — the HTTP front end: libmicrohttpd on its own polling thread(s), handing
 * complete, parsed requests to the loop.
 *
 * Why MHD runs on its own thread instead of being driven from the libuv loop: MHD's
 * external-select mode needs its fd set and timeout re-read after every call, which
 * fits libuv's readiness model badly (one uv_poll per connection, re-armed by hand); and
 * body parsing (JSON of a large tensor, a model file for PUT) would then run on the loop
 * and stall every model's queue. On its own thread MHD does all socket I/O and the
 * parsing; the loop only routes parsed requests, batches and answers. The hand-over is a
 * mutex-protected list plus a ts_wake (MHD thread -> loop) and MHD_resume_connection,
 * which is thread-safe (loop -> MHD thread).
 *
 * Life of a request (ts_req), threads in brackets:
 *   [http] headers: route (404/405), shutting down (503), auth (401/403), Content-Length
 *          over the limit (413) are answered at once, before the body is read;
 *   [http] body collected (bounded), then parsed: OIP for infer/feedback, the model file
 *          for PUT, {"snapshot_id"} for restore. A PUT that does not parse is a 400 at
 *          once; for the others the reason travels with the request (bad_body), because
 *          an unknown model or version is a 404 whatever the body (SPEC §4) and only the
 *          loop knows the models;
 *   [http] suspend the connection, push to the loop;
 *   [loop] ts_http_dispatch_fn routes it; whoever answers calls ts_req_reply*() exactly
 *          once; after that the request belongs to MHD again (freed when sent).
 */
#ifndef TS_HTTP_H
#define TS_HTTP_H

#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#include "core/model.h"
#include "proto/oip.h"
#include "server/metrics.h"
#include "server/http/route.h"

typedef struct ts_http ts_http;
typedef struct ts_req ts_req;

struct ts_req {
    ts_http *http;
    void *conn;                  /* struct MHD_Connection * */
    ts_route route;
    uint64_t t_received_us;      /* body complete (ts_now_us) */
    /* What the HTTP thread parsed, by endpoint: */
    ts_oip_request oip;          /* TS_EP_INFER, TS_EP_FEEDBACK */
    ts_model *upload;            /* TS_EP_ADMIN_PUT: the model file, owned until taken */
    uint64_t upload_hash;        /* TS_EP_ADMIN_PUT: hash of the file bytes */
    int64_t snapshot_id;         /* TS_EP_ADMIN_RESTORE */
    /* A request that did not come over HTTP: a feedback by id forwarded by another replica
     * (server/repl/forward.h). reply_fn gets its answer instead of MHD (it takes body over;
     * a 503's Retry-After is the receiving replica's to add); from_replica keeps it from
     * being forwarded again. NULL / 0 for HTTP requests. */
    void (*reply_fn)(ts_req *req, int status, void *body, size_t len);
    int from_replica;
    /* Set by the engine when another replica answered this request (forward.h): the answer
     * carries it as the header Tscale-Forwarded-To (owned by the request). */
    char forwarded_to[128];
    char bad_body[1024];         /* why the body did not parse ("" = it did); answered as a
                                    400 by ts_req_reply_bad_body after the model lookup */
    /* Private to http.c: */
    int state;
    uint8_t *body;
    size_t body_len, body_cap, discarded;
    int too_large;
    int over_budget;             /* the body did not fit --max-buffered-bytes: 503 */
    int64_t declared_length;     /* Content-Length, or -1 */
    void *tconn;                 /* the connection's ts_conn (conns.h), or NULL */
    int close_after;
    uint64_t t_start_us;         /* headers complete */
    char log_method[12], log_path[256];  /* for the access log */
    int log_status;
    size_t log_bytes;             /* answer with Connection: close (the framing was refused) */
    int has_oip;
    int arriving;                /* counted in cfg.arriving */
    void *response;              /* struct MHD_Response * once answered from the loop */
    int status;
    ts_req *next;
};

typedef void (*ts_http_dispatch_fn)(void *ctx, ts_req *req);

typedef struct {
    const char *host;            /* the listen host (copied): messages and the Host check */
    int port;
    int listen_fd;               /* from ts_http_bind; MHD owns it once started */
    int threads;                 /* MHD polling threads */
    int64_t max_body_bytes;
    int64_t max_buffered_bytes;  /* all body buffers together (503 past it) */
    int64_t max_connections;     /* soft: beyond it probes only, others 503 (conns.h) */
    int64_t max_per_client;      /* connections from one client address (hard) */
    int64_t request_timeout_s;   /* idle */
    int64_t header_timeout_s;    /* total, per request head (conns.h) */
    int64_t body_timeout_s;      /* total, per request body */
    int64_t max_elements;        /* per tensor, for the OIP parser */
    int access_log;              /* ts_log_level of the access log lines, -1 = none */
    const char *allowed_hosts;   /* --allowed-hosts (comma-separated) or NULL */
    const char *admin_token;     /* "" = none configured */
    const char *feedback_token;  /* "" = none configured */
    const _Atomic int *shutting_down;
    ts_metrics *metrics;
    ts_http_dispatch_fn dispatch;  /* loop thread */
    void (*dispatch_begin)(void *ctx);  /* around each group of handed-over requests */
    void (*dispatch_end)(void *ctx);
    void *dispatch_ctx;
    _Atomic int *arriving;       /* inference requests being received or parsed */
    int feedback_by_id;          /* GET /v2 lists the feedback_by_id extension (the window is on) */
} ts_http_config;

/* Bind and listen on host:port, non-blocking; *bound_port receives the actual port (port 0
 * picks one). Done before the database is opened, so that a port in use stops the start
 * before anything is written. The socket, or -1 + err. */
int ts_http_bind(const char *host, int port, int *bound_port, char *err, size_t errlen);

/* Serve on cfg->listen_fd (which MHD then owns, even on failure). The config's strings must
 * outlive the ts_http. NULL + err on failure. */
ts_http *ts_http_start(uv_loop_t *loop, const ts_http_config *cfg, char *err, size_t errlen);

/* Stop accepting new connections (existing ones keep being served). Loop thread. */
void ts_http_quiesce(ts_http *h);
/* Dispatch now every request already handed over (loop thread; used at shutdown so that
 * what was accepted before it is served, not refused). */
void ts_http_drain_inbound(ts_http *h);
/* Run update(ctx) while no HTTP thread reads the config's token strings: the only way to
 * change them after the start (SIGHUP re-reads the token files; daemon.c). Loop thread. */
void ts_http_update_tokens(ts_http *h, void (*update)(void *ctx), void *ctx);
/* Requests received but not yet fully sent back (any thread). */
int ts_http_active(ts_http *h);
/* Connections accepted beyond max_connections for probes (libmicrohttpd's hard limit is
 * the sum): max_connections / 8 + 4. */
int64_t ts_http_spare(int64_t max_connections);
/* Close every connection and stop the threads; close the loop handle. Requests still in
 * the hand-over list are dispatched first (the loop answers them: 503 when closing);
 * call it only when the loop holds no other request. Then run the loop to finish. */
void ts_http_stop(ts_http *h);

/* ---- answering (loop thread; exactly one call per request) ---- */

/* body is malloc'd and taken over (freed by MHD after sending); may be NULL when len 0.
 * json_len >= 0 adds Inference-Header-Content-Length (binary tensor responses). */
void ts_req_reply(ts_req *req, int status, const char *content_type, void *body, size_t len,
                  int64_t json_len);
/* {"error": msg}; 503 adds Retry-After; 401 adds WWW-Authenticate. */
void ts_req_reply_error(ts_req *req, int status, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
/* A jansson value (json_t *), serialised compactly; the reference is stolen. */
void ts_req_reply_json(ts_req *req, int status, void *json);
/* When the HTTP thread could not parse the body, answer 400 with the reason and return 1;
 * else 0. Call it once the model (and version) named by the path is known to exist. */
int ts_req_reply_bad_body(ts_req *req);

#endif
