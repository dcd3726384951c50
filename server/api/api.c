/* api.c — routing of parsed requests on the loop (see api.h). */
#include "server/api/api.h"

#include <jansson.h>
#include <stdlib.h>
#include <string.h>

#include "server/api/admin.h"
#include "server/memory.h"

static void model_metadata(ts_served *s, ts_req *req) {
    json_t *j = json_pack("{s:s,s:[s],s:s,s:[{s:s,s:s,s:[I,I]}],s:[{s:s,s:s,s:[I,I]}]}",
                          "name", s->name, "versions", s->version_str, "platform", "tscale",
                          "inputs", "name", "input", "datatype", "FP32", "shape", (json_int_t)-1,
                          (json_int_t)s->model->in_dim,
                          "outputs", "name", "output", "datatype", "FP32", "shape", (json_int_t)-1,
                          (json_int_t)s->model->out_dim);
    ts_req_reply_json(req, 200, j);
}

static void metrics(ts_server *srv, ts_req *req) {
    ts_buf b = {0};
    ts_metrics_render(&srv->metrics, &b);
    ts_engine_render_metrics(srv->engine, &b);
    ts_journal_render_metrics(srv->journal, &b);
    ts_window_expire(srv->window, (int64_t)(ts_now_us() / 1000));
    ts_window_render_metrics(srv->window, &b);
    ts_repl_render_metrics(srv->repl, &b);
    ts_forward_render_metrics(srv->forward, &b);
    ts_buf_printf(&b, "# HELP tscale_feedback_ids Feedback ids remembered for exactly-once.\n"
                      "# TYPE tscale_feedback_ids gauge\ntscale_feedback_ids %lld\n"
                      "# HELP tscale_feedback_ids_bytes Memory the exactly-once records take.\n"
                      "# TYPE tscale_feedback_ids_bytes gauge\ntscale_feedback_ids_bytes %lld\n"
                      "# HELP tscale_feedback_ids_limit_bytes --feedback-id-bytes.\n"
                      "# TYPE tscale_feedback_ids_limit_bytes gauge\ntscale_feedback_ids_limit_bytes %lld\n"
                      "# HELP tscale_feedback_ids_evicted_total Feedback ids forgotten before their window "
                      "ended, to stay within --feedback-id-bytes.\n"
                      "# TYPE tscale_feedback_ids_evicted_total counter\ntscale_feedback_ids_evicted_total %lld\n",
                  (long long)(srv->idem ? ts_idem_count(srv->idem) : 0),
                  (long long)(srv->idem ? ts_idem_bytes(srv->idem) : 0), (long long)srv->cfg.feedback_id_bytes,
                  (long long)(srv->idem ? ts_idem_evicted(srv->idem) : 0));
    ts_memory_render(&b);
    size_t len;
    char *text = ts_buf_take(&b, &len);
    if (!text)
        ts_req_reply_error(req, 500, "out of memory rendering metrics");
    else
        ts_req_reply(req, 200, "text/plain; version=0.0.4; charset=utf-8", text, len, -1);
}

/* GET /v2/models ({"models":[{name, version, state}]}) and Triton's POST
 * /v2/repository/index ([{name, version, state}]): every model served is READY (one being
 * deleted is no longer listed). */
static void repository(ts_server *srv, ts_req *req) {
    json_t *arr = json_array();
    for (ts_served *s = ts_engine_first(srv->engine); s; s = s->next)
        if (!s->unloading)
            json_array_append_new(arr, json_pack("{s:s,s:s,s:s}", "name", s->name, "version",
                                                 s->version_str, "state", "READY"));
    ts_req_reply_json(req, 200, req->route.ep == TS_EP_REPO_LIST ? json_pack("{s:o}", "models", arr) : arr);
}

/* The order of the checks is SPEC §4's: an unknown model or version is a 404 whatever the
 * body, then a body that did not parse is a 400, then the endpoint's own checks. */
static void model_endpoint(ts_server *srv, ts_req *req) {
    ts_served *s = ts_engine_find(srv->engine, req->route.model, 0);
    if (!s) {
        ts_req_reply_error(req, 404, "unknown model '%s'", req->route.model);
        return;
    }
    if (req->route.version[0] && strcmp(req->route.version, s->version_str) != 0) {
        ts_req_reply_error(req, 404, "model '%s' has no version '%s' (the current version is %s)",
                           s->name, req->route.version, s->version_str);
        return;
    }
    if (ts_req_reply_bad_body(req))
        return;
    switch (req->route.ep) {
    case TS_EP_INFER: ts_engine_infer(srv->engine, s, req); break;
    case TS_EP_FEEDBACK: ts_engine_feedback(srv->engine, s, req); break;
    case TS_EP_MODEL_META: model_metadata(s, req); break;
    case TS_EP_MODEL_STATS:
        ts_req_reply_json(req, 200, json_pack("{s:[o]}", "model_stats",
                                              ts_stats_json(&s->stats, s->name, s->version_str)));
        break;
    default: ts_req_reply_json(req, 200, json_pack("{s:s,s:b}", "name", s->name, "ready", 1)); break;
    }
}

void ts_api_dispatch_begin(void *ctx) { ts_engine_hold(((ts_server *)ctx)->engine); }
void ts_api_dispatch_end(void *ctx) { ts_engine_release(((ts_server *)ctx)->engine); }

void ts_api_dispatch(void *ctx, ts_req *req) {
    ts_server *srv = ctx;
    ts_endpoint ep = req->route.ep;
    if (srv->closing && ep != TS_EP_HEALTH_READY && ep != TS_EP_METRICS) {
        ts_req_reply_error(req, 503, "shutting down");
        return;
    }
    switch (ep) {
    case TS_EP_HEALTH_READY:
        if (atomic_load(&srv->shutting_down))
            ts_req_reply_json(req, 503, json_pack("{s:b}", "ready", 0));
        else
            ts_req_reply_json(req, 200, json_pack("{s:b}", "ready", 1));
        break;
    case TS_EP_METRICS: metrics(srv, req); break;
    case TS_EP_REPO_LIST:
    case TS_EP_REPO_INDEX: repository(srv, req); break;
    case TS_EP_MODEL_META:
    case TS_EP_MODEL_STATS:
    case TS_EP_MODEL_READY:
    case TS_EP_INFER:
    case TS_EP_FEEDBACK: model_endpoint(srv, req); break;
    default:
        if (ts_endpoint_is_admin(ep))
            ts_admin_handle(srv, req);
        else
            ts_req_reply_error(req, 404, "no such path");
        break;
    }
}
