/* admin.c — the /admin endpoints (see admin.h). */
#include "server/api/admin.h"

#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "server/log.h"
#include "server/snapshot.h"

/* ---- JSON pieces ---- */

void *ts_admin_layers_json(const ts_model *m) {
    json_t *a = json_array();
    for (int i = 0; a && i < m->n_layers; i++) {
        const ts_layer_spec *sp = &m->layers[i].spec;
        json_t *l;
        if (sp->kind == TS_LAYER_LINEAR)
            l = json_pack("{s:s,s:I,s:I,s:I,s:b}", "type", ts_layer_kind_name(sp->kind), "in_dim",
                          (json_int_t)sp->in_dim, "out_dim", (json_int_t)sp->out_dim, "group_size",
                          (json_int_t)sp->group_size, "bias", sp->has_bias);
        else if (sp->kind == TS_LAYER_RMSNORM)
            l = json_pack("{s:s,s:I,s:I}", "type", ts_layer_kind_name(sp->kind), "dim",
                          (json_int_t)sp->in_dim, "group_size", (json_int_t)sp->group_size);
        else
            l = json_pack("{s:s}", "type", ts_layer_kind_name(sp->kind));
        json_array_append_new(a, l);
    }
    return a;
}

static json_t *snapshot_json(const ts_snapshot_info *info) {
    char when[32];
    ts_snapshot_time(info->created_at_ms, when, sizeof when);
    return json_pack("{s:I,s:I,s:I,s:s,s:s,s:I}", "snapshot_id", (json_int_t)info->snapshot_id,
                     "version", (json_int_t)info->version, "step", (json_int_t)info->step,
                     "created_at", when, "reason", info->reason, "bytes", (json_int_t)info->bytes);
}

static json_t *model_json(ts_served *s) {
    json_t *j = json_pack("{s:s,s:I,s:I,s:I,s:o,s:I,s:I,s:I}", "name", s->name, "version",
                          (json_int_t)s->version, "in_dim", (json_int_t)s->model->in_dim, "out_dim",
                          (json_int_t)s->model->out_dim, "layers", ts_admin_layers_json(s->model),
                          "step", (json_int_t)s->step, "feedback_steps", (json_int_t)s->feedback_steps,
                          "queue_rows", (json_int_t)s->queued_rows);
    if (!j)
        return NULL;
    json_object_set_new(j, "snapshot", s->newest.snapshot_id ? snapshot_json(&s->newest) : json_null());
    json_object_set_new(j, "snapshot_failing", json_boolean(s->snapshot_failing));
    json_object_set_new(j, "snapshot_error", s->snapshot_failing ? json_string(s->snapshot_error) : json_null());
    json_object_set_new(j, "snapshot_failures", json_integer((json_int_t)s->snapshot_failures));
    return j;
}

static void admin_list(ts_server *srv, ts_req *req) {
    json_t *arr = json_array();
    for (ts_served *s = ts_engine_first(srv->engine); s; s = s->next)
        if (!s->unloading)
            json_array_append_new(arr, model_json(s));
    ts_req_reply_json(req, 200, json_pack("{s:o}", "models", arr));
}

/* ---- POST /admin/models/{m}/snapshots ---- */

static void snapshot_replied(ts_server *srv, ts_served *s, const ts_snapshot_info *info,
                             const char *err, void *arg) {
    ts_req *req = arg;
    if (!info) {
        ts_req_reply_error(req, 500, "snapshot failed: %s", err ? err : "unknown error");
        return;
    }
    json_t *j = snapshot_json(info);
    json_object_set_new(j, "model_name", json_string(req->route.model));
    ts_req_reply_json(req, 201, j);
}

/* ---- GET /admin/models/{m}/snapshots ---- */

typedef struct {
    ts_persist_job job;
    ts_server *srv;
    ts_req *req;
    char name[TS_MODEL_NAME_MAX];
    int64_t snapshot_id;          /* restore: the one asked for */
    int rc, status;
    char err[512];
    ts_snapshot_info *list;
    int n;
    ts_model *model;              /* restore: loaded; put: uploaded */
    ts_snapshot_info info;
    uint64_t hash;                /* put */
    int is_new;                   /* put: the name was not served when the PUT arrived;
                                     restore: it was deleted (brought back, undelete) */
    int64_t version;              /* put */
    int created;                  /* put */
    const char *reason;           /* an admin message applied: "import" or "restore" */
    char *repl;                   /* its replication position (malloc'd) */
} admin_job;

/* A job for model name (NULL: the request's); req may be NULL (an admin message of another
 * replica: nobody to answer). */
static admin_job *new_job_for(ts_server *srv, ts_req *req, const char *name,
                              void (*work)(ts_store *, ts_persist_job *), void (*done)(ts_persist_job *)) {
    admin_job *j = calloc(1, sizeof *j);
    if (!j) {
        if (req)
            ts_req_reply_error(req, 500, "out of memory");
        return NULL;
    }
    j->job.work = work;
    j->job.done = done;
    j->srv = srv;
    j->req = req;
    snprintf(j->name, sizeof j->name, "%s", name ? name : req->route.model);
    return j;
}

static admin_job *new_job(ts_server *srv, ts_req *req, void (*work)(ts_store *, ts_persist_job *),
                          void (*done)(ts_persist_job *)) {
    return new_job_for(srv, req, NULL, work, done);
}

static void free_job(admin_job *j) {
    free(j->repl);
    free(j->list);
    ts_model_free(j->model);
    free(j);
}

static void list_work(ts_store *st, ts_persist_job *pj) {
    admin_job *j = (admin_job *)pj;
    j->rc = ts_store_list_snapshots(st, j->name, &j->list, &j->n, j->err, sizeof j->err);
}

static void list_done(ts_persist_job *pj) {
    admin_job *j = (admin_job *)pj;
    int served = ts_engine_find(j->srv->engine, j->name, 0) != NULL;
    if (j->rc < 0 && !served) {
        ts_req_reply_error(j->req, 404, "unknown model '%s' (%s)", j->name, j->err);
    } else if (j->rc < 0) {
        ts_req_reply_error(j->req, 500, "listing snapshots failed: %s", j->err);
    } else if (j->n == 0 && !served) {
        ts_req_reply_error(j->req, 404, "unknown model '%s' (no snapshots either)", j->name);
    } else {
        json_t *arr = json_array();
        for (int i = 0; i < j->n; i++)
            json_array_append_new(arr, snapshot_json(&j->list[i]));
        ts_req_reply_json(j->req, 200, json_pack("{s:s,s:o}", "model_name", j->name, "snapshots", arr));
    }
    free_job(j);
}

/* ---- swaps: restore and replace ---- */

typedef struct {
    ts_server *srv;
    ts_req *req;
    ts_model *model;
    int64_t version;
    const char *reason;           /* "restore" or "import" */
    int64_t restored_from;
    int status;                   /* 200, or 201 for a new model */
} swap_op;

/* Answer req when s was removed before the work queued for it could finish (a cancelled
 * control item or snapshot, engine.h; the daemon's own end is what removes a model with work
 * still queued): what did not run, and what that leaves. */
static void reply_removed(ts_req *req, ts_served *s, const char *what, const char *left) {
    ts_req_reply_error(req, 503, "model '%s' was removed (the daemon is shutting down?) before %s; %s: "
                       "send it again", s->name, what, left);
}

/* Answer a PUT or restore once the model's snapshot is written (or failed). */
static void reply_swapped(ts_req *req, ts_served *s, const ts_snapshot_info *info, const char *err,
                          int64_t restored_from, int status) {
    if (!info && s->removed) { /* its snapshot was cancelled (engine.h): no timer retries it */
        reply_removed(req, s, "its snapshot was written", "the change may not be in the database");
        return;
    }
    if (!info) {
        ts_req_reply_error(req, 500, "model '%s' is now version %s, step %lld, but its snapshot "
                           "failed: %s (it is retried on the snapshot timer)", s->name,
                           s->version_str, (long long)s->step, err ? err : "unknown error");
        return;
    }
    json_t *j = json_pack("{s:s,s:s,s:I,s:I}", "model_name", s->name, "model_version",
                          s->version_str, "step", (json_int_t)info->step, "snapshot_id",
                          (json_int_t)info->snapshot_id);
    if (restored_from)
        json_object_set_new(j, "restored_from", json_integer((json_int_t)restored_from));
    ts_req_reply_json(req, status, j);
}

static void swap_replied(ts_server *srv, ts_served *s, const ts_snapshot_info *info,
                         const char *err, void *arg) {
    swap_op *op = arg;
    reply_swapped(op->req, s, info, err, op->restored_from, op->status);
    free(op);
}

/* Control item: s is idle, so its model can be swapped whole, between two jobs. */
static void swap_control(ts_engine *e, ts_served *s, void *arg) {
    swap_op *op = arg;
    if (s->removed) { /* cancelled (engine.h): the model went first */
        ts_model_free(op->model);
        if (op->req) {
            char what[64];
            snprintf(what, sizeof what, "this %s ran", op->reason);
            reply_removed(op->req, s, what, "nothing changed");
        }
        free(op);
        return;
    }
    ts_engine_swap(e, s, op->model, op->version);
    op->model = NULL;
    if (op->restored_from)
        ts_log_info("model '%s' restored from snapshot %lld: version %lld, step %lld", s->name,
                    (long long)op->restored_from, (long long)s->version, (long long)s->step);
    else
        ts_log_info("model '%s' replaced: version %lld, step %lld", s->name, (long long)s->version,
                    (long long)s->step);
    ts_snapshot_now(op->srv, s, op->reason, 0, swap_replied, op);
}

static void queue_swap(ts_server *srv, ts_served *s, ts_req *req, ts_model *m, int64_t version,
                       const char *reason, int64_t restored_from, int status) {
    swap_op *op = calloc(1, sizeof *op);
    if (op) {
        *op = (swap_op){srv, req, m, version, reason, restored_from, status};
        if (ts_engine_control(srv->engine, s, swap_control, op) == 0)
            return;
        free(op);
    }
    ts_model_free(m);
    ts_req_reply_error(req, 500, "out of memory");
}

/* ---- replicated: PUT, restore and DELETE as admin messages (repl.h "Admin everywhere") ---- */

/* A request of this replica whose admin message has not come back from the stream yet. */
typedef struct ts_admin_wait {
    char id[96];
    ts_req *req;
    int64_t restored_from;
    struct ts_admin_wait *next;
} ts_admin_wait;

/* Publish `what` for model name (its file and state from m; none for "delete") and answer
 * req once the message has taken effect here (ts_admin_apply). */
static void publish_admin(ts_server *srv, ts_req *req, const char *name, const char *what, int64_t version,
                          const ts_model *m, int64_t restored_from) {
    const char *why = NULL;
    char err[256];
    uint8_t *bytes = NULL;
    size_t len = 0;
    if (!ts_repl_model_ready(srv->repl, name, &why)) {
        ts_req_reply_error(req, 503, "replication is not available (%s): the %s is not published, nothing "
                           "changed; retry", why, what);
        return;
    }
    if (m && ts_safetensors_write(m, name, &bytes, &len, err, sizeof err) < 0) {
        ts_req_reply_error(req, 500, "%s", err);
        return;
    }
    ts_admin_wait *w = calloc(1, sizeof *w);
    if (!w || ts_repl_publish_admin(srv->repl, name, what, version, bytes, len, w->id, sizeof w->id) < 0) {
        free(w);
        free(bytes);
        ts_req_reply_error(req, 500, "out of memory publishing the %s", what);
        return;
    }
    free(bytes);
    w->req = req;
    w->restored_from = restored_from;
    w->next = srv->admin_waits;
    srv->admin_waits = w;
}

/* The waiting request of admin message id (taken off the list), or NULL. */
static ts_admin_wait *take_wait(ts_server *srv, const char *id) {
    for (ts_admin_wait **pp = &srv->admin_waits; *pp; pp = &(*pp)->next)
        if (strcmp((*pp)->id, id) == 0) {
            ts_admin_wait *w = *pp;
            *pp = w->next;
            return w;
        }
    return NULL;
}

void ts_admin_cancel_waits(ts_server *srv) {
    while (srv->admin_waits) {
        ts_admin_wait *w = take_wait(srv, srv->admin_waits->id);
        ts_req_reply_error(w->req, 503, "shutting down before the change took effect here; it is published "
                           "and takes effect on every replica (this one at its next start) in stream order");
        free(w);
    }
}

static void applied_work(ts_store *st, ts_persist_job *pj) {
    admin_job *j = (admin_job *)pj;
    j->rc = ts_store_put_joined(st, j->name, j->model, j->version, j->reason, j->repl,
                                (int)j->srv->cfg.snapshot_keep, &j->info, j->err, sizeof j->err);
}

static void applied_done(ts_persist_job *pj) {
    admin_job *j = (admin_job *)pj;
    ts_served *s = ts_engine_find(j->srv->engine, j->name, 1);
    if (j->rc == 0 && s) {
        ts_snapshot_note(s, &j->info);
        ts_snapshot_log(s->name, &j->info, 0);
    } else if (j->rc < 0) {
        ts_log_error("replication: model '%s': storing the replaced model failed: %s; feedback for it is "
                     "refused until a published state is loaded", j->name, j->err);
        ts_repl_set_diverged(j->srv->repl, j->name, "the model replaced by an admin message could not be stored");
    }
    if (j->req && s)
        reply_swapped(j->req, s, j->rc == 0 ? &j->info : NULL, j->err, j->snapshot_id, j->status);
    else if (j->req)
        ts_req_reply_error(j->req, 404, "model '%s' was unloaded", j->name);
    free_job(j);
}

/* Store the model an admin message made current (j->model, a copy) with its position. */
static void store_applied(ts_server *srv, admin_job *j, const char *what, int64_t version,
                          int64_t restored_from, int status) {
    j->version = version;
    j->reason = strcmp(what, "restore") == 0 ? "restore" : "import";
    j->snapshot_id = restored_from;
    j->status = status;
    j->repl = ts_repl_position(srv->repl, j->name);
    ts_persist_submit(srv->persist, &j->job);
}

/* An admin message adds a model not served here (a PUT of a new name, a restore of a
 * deleted one): served from now on (the deltas after it in the stream reach its FIFO), then
 * stored as a PUT of a new model would be — made current and active under the message's
 * version number, with its snapshot and the position the message starts (repl.c). */
static void admin_add(ts_server *srv, ts_req *req, const char *what, int64_t version, const uint8_t *bytes,
                      size_t len, const char *origin, int64_t restored_from) {
    char err[256], name[TS_MODEL_NAME_MAX];
    ts_model *m = ts_safetensors_read(bytes, len, name, err, sizeof err);
    admin_job *j = m ? new_job_for(srv, req, name, applied_work, applied_done) : NULL;
    if (j)
        j->model = ts_model_clone(m); /* the store's copy: the served one changes with feedback */
    if (m && !name[0])
        snprintf(err, sizeof err, "its model file names no model");
    int ok = j && j->model && name[0];
    ts_served *s = ok ? ts_engine_add(srv->engine, name, m, version) : NULL; /* owns m */
    if (!ok)
        ts_model_free(m);
    if (!s) {
        ts_log_error("replication: the %s published by replica '%s' cannot be applied: %s; the model is not "
                     "served here (restart this replica to consume it again)", what, origin,
                     m && name[0] ? "out of memory" : err);
        if (req)
            ts_req_reply_error(req, 500, "the %s could not be applied here: %s", what,
                               m && name[0] ? "out of memory" : err);
        if (j)
            free_job(j);
        return;
    }
    ts_log_info("model '%s' %s by replica '%s': version %lld, step %lld", s->name,
                strcmp(what, "restore") == 0 ? "brought back" : "added", origin, (long long)version,
                (long long)s->step);
    store_applied(srv, j, what, version, restored_from, strcmp(what, "restore") == 0 ? 200 : 201);
}

static void unload_control(ts_engine *e, ts_served *s, void *arg);
static void deactivate_work(ts_store *st, ts_persist_job *pj);
static void deactivate_done(ts_persist_job *pj);

void ts_admin_apply(void *arg, ts_served *s, const char *what, int64_t version, const uint8_t *bytes, size_t len,
                    const char *origin, const char *id) {
    ts_server *srv = arg;
    ts_admin_wait *w = take_wait(srv, id);
    ts_req *req = w ? w->req : NULL;
    int64_t restored_from = w ? w->restored_from : 0;
    free(w);
    if (!s && bytes) {
        admin_add(srv, req, what, version, bytes, len, origin, restored_from);
        return;
    }
    if (!s) {
        if (req)
            ts_req_reply_error(req, 404, "the model was unloaded (by an earlier DELETE in the stream) before "
                               "this %s took effect", what);
        return;
    }
    if (strcmp(what, "delete") == 0) {
        admin_job *j = new_job_for(srv, req, s->name, deactivate_work, deactivate_done);
        if (j) {
            s->unloading = 1; /* no new work from now on */
            unload_control(srv->engine, s, j);
        }
        return;
    }
    char err[256];
    ts_model *m = ts_safetensors_read(bytes, len, NULL, err, sizeof err);
    admin_job *j = m ? new_job_for(srv, req, s->name, applied_work, applied_done) : NULL;
    if (j)
        j->model = ts_model_clone(m); /* the store's copy: the served one changes with feedback */
    if (!j || !j->model) {
        ts_log_error("replication: model '%s': the %s published by replica '%s' cannot be applied: %s; feedback "
                     "for it is refused until a published state is loaded", s->name, what, origin,
                     m ? "out of memory" : err);
        ts_repl_set_diverged(srv->repl, s->name, "an admin message could not be applied (see the log)");
        if (req && j)
            ts_req_reply_error(req, 500, "the %s could not be applied here", what);
        else if (req)
            ts_req_reply_error(req, 500, "the %s could not be applied here: %s", what, m ? "out of memory" : err);
        ts_model_free(m);
        if (j)
            free_job(j);
        return;
    }
    ts_engine_swap(srv->engine, s, m, version);
    ts_log_info("model '%s' %s by replica '%s': version %lld, step %lld", s->name,
                strcmp(what, "restore") == 0 ? "restored" : "replaced", origin, (long long)version,
                (long long)s->step);
    store_applied(srv, j, what, version, restored_from, 200);
}

/* PUT of a served model while replicating: its version number is this database's next, for
 * every replica (ts_store_put_joined stores it under that number). */
static void next_version_work(ts_store *st, ts_persist_job *pj) {
    admin_job *j = (admin_job *)pj;
    j->rc = ts_store_next_version(st, j->name, &j->version, j->err, sizeof j->err);
}

static void next_version_done(ts_persist_job *pj) {
    admin_job *j = (admin_job *)pj;
    if (j->rc < 0)
        ts_req_reply_error(j->req, 500, "%s", j->err);
    else
        publish_admin(j->srv, j->req, j->name, "import", j->version, j->model, 0);
    free_job(j);
}

/* ---- POST /admin/models/{m}/restore ---- */

static void restore_work(ts_store *st, ts_persist_job *pj) {
    admin_job *j = (admin_job *)pj;
    /* Check that the snapshot is this model's first, so an unknown id is a clear 404. */
    if (ts_store_list_snapshots(st, j->name, &j->list, &j->n, j->err, sizeof j->err) < 0) {
        j->status = 500;
        return;
    }
    int found = 0;
    for (int i = 0; i < j->n; i++)
        found |= j->list[i].snapshot_id == j->snapshot_id;
    if (!found) {
        j->status = 404;
        if (j->is_new)
            snprintf(j->err, sizeof j->err, "unknown model '%s' (no deleted model of that name "
                     "has snapshot %lld either)", j->name, (long long)j->snapshot_id);
        else
            snprintf(j->err, sizeof j->err, "model '%s' has no snapshot %lld", j->name,
                     (long long)j->snapshot_id);
        return;
    }
    int skipped = 0;
    j->model = ts_store_load(st, j->name, j->snapshot_id, &j->info, &skipped, j->err, sizeof j->err);
    j->status = j->model ? 200 : 500;
    /* Replicating, it is activated where the admin message is applied (ts_store_put_joined). */
    if (j->model && j->is_new && !ts_repl_enabled(j->srv->repl) &&
        ts_store_activate(st, j->name, j->err, sizeof j->err) < 0) {
        ts_model_free(j->model); /* a deleted model comes back: loaded at the next start again */
        j->model = NULL;
        j->status = 500;
    }
}

/* A deleted model restored: served again, then its "restore" snapshot is written (so the
 * state a restart loads is the one restored) and the client answered. */
static void serve_restored(admin_job *j) {
    ts_server *srv = j->srv;
    ts_served *s = ts_engine_add(srv->engine, j->name, j->model, j->info.version);
    j->model = NULL;
    if (!s) {
        ts_req_reply_error(j->req, 500, "out of memory");
        return;
    }
    ts_log_info("model '%s' brought back from snapshot %lld: version %lld, step %lld", s->name,
                (long long)j->snapshot_id, (long long)s->version, (long long)s->step);
    swap_op *op = calloc(1, sizeof *op);
    if (op)
        *op = (swap_op){srv, j->req, NULL, s->version, "restore", j->snapshot_id, 200};
    if (!op || ts_snapshot_queue(srv, s, "restore", 0, swap_replied, op) < 0) {
        free(op);
        ts_req_reply_error(j->req, 500, "out of memory");
    }
}

static void restore_done(ts_persist_job *pj) {
    admin_job *j = (admin_job *)pj;
    ts_served *s = ts_engine_find(j->srv->engine, j->name, 0);
    if (j->status != 200)
        ts_req_reply_error(j->req, j->status, "restore failed: %s", j->err);
    else if (!s && j->is_new && !ts_engine_find(j->srv->engine, j->name, 1) && !ts_repl_enabled(j->srv->repl))
        serve_restored(j);
    else if (!s && !(j->is_new && !ts_engine_find(j->srv->engine, j->name, 1)))
        ts_req_reply_error(j->req, 404, "model '%s' was unloaded", j->name);
    else if (ts_repl_enabled(j->srv->repl))
        publish_admin(j->srv, j->req, j->name, "restore", j->info.version, j->model, j->snapshot_id);
    else {
        queue_swap(j->srv, s, j->req, j->model, j->info.version, "restore", j->snapshot_id, 200);
        j->model = NULL;
    }
    free_job(j);
}

/* ---- PUT /admin/models/{m} ---- */

/* A new name is stored with its "import" snapshot in one transaction (a crash cannot
 * leave it without state). A replacement stores only the version here; the swap and its
 * snapshot follow in the model's FIFO, so that the import snapshot is written after any
 * snapshot of the old model still queued (the newest snapshot decides what a restart
 * loads: it must be the new model's, and a crash in between recovers the old one whole). */
static void put_work(ts_store *st, ts_persist_job *pj) {
    admin_job *j = (admin_job *)pj;
    /* The uploaded model is this job's alone, so the store may read it here. */
    if (j->is_new)
        j->rc = ts_store_put_model(st, j->name, j->model, j->hash, "import",
                                   (int)j->srv->cfg.snapshot_keep, &j->version, &j->created,
                                   &j->info, j->err, sizeof j->err);
    else
        j->rc = ts_store_put_version(st, j->name, j->model, j->hash, &j->version, &j->created,
                                     j->err, sizeof j->err);
}

static void put_new(admin_job *j) {
    ts_server *srv = j->srv;
    ts_served *s = ts_engine_add(srv->engine, j->name, j->model, j->version);
    j->model = NULL;
    if (!s) {
        ts_req_reply_error(j->req, 500, "out of memory");
        return;
    }
    ts_log_info("model '%s' loaded: version %lld, %d layers, in %lld, out %lld", s->name,
                (long long)s->version, s->model->n_layers, (long long)s->model->in_dim,
                (long long)s->model->out_dim);
    if (j->is_new) { /* stored with its snapshot already */
        ts_snapshot_note(s, &j->info);
        ts_snapshot_log(s->name, &j->info, 0);
        reply_swapped(j->req, s, &j->info, NULL, 0, 201);
        return;
    }
    swap_op *op = calloc(1, sizeof *op); /* unloaded meanwhile: snapshot it now */
    if (op)
        *op = (swap_op){srv, j->req, NULL, j->version, "import", 0, 201};
    if (!op || ts_snapshot_queue(srv, s, "import", 0, swap_replied, op) < 0) {
        free(op);
        ts_req_reply_error(j->req, 500, "out of memory");
    }
}

static void put_done(ts_persist_job *pj) {
    admin_job *j = (admin_job *)pj;
    ts_server *srv = j->srv;
    ts_served *s = ts_engine_find(srv->engine, j->name, 1);
    if (j->rc < 0) {
        ts_req_reply_error(j->req, 500, "storing the model failed: %s", j->err);
    } else if (s && s->unloading) {
        ts_req_reply_error(j->req, 503, "model '%s' is being unloaded; retry", j->name);
    } else if (s) {
        queue_swap(srv, s, j->req, j->model, j->version, "import", 0, 200);
        j->model = NULL;
    } else {
        put_new(j);
    }
    free_job(j);
}

/* ---- DELETE /admin/models/{m} ---- */

static void deactivate_work(ts_store *st, ts_persist_job *pj) {
    admin_job *j = (admin_job *)pj;
    j->rc = ts_store_deactivate(st, j->name, j->err, sizeof j->err);
}

static void deactivate_done(ts_persist_job *pj) {
    admin_job *j = (admin_job *)pj;
    ts_served *s = ts_engine_find(j->srv->engine, j->name, 1);
    if (j->rc < 0) {
        if (s)
            s->unloading = 0;
        ts_log_error("model '%s': unloading failed (the model is still served): %s", j->name, j->err);
        if (j->req)
            ts_req_reply_error(j->req, 500, "unloading failed (the model is still served): %s", j->err);
    } else {
        if (s)
            ts_engine_remove(j->srv->engine, s);
        ts_log_info("model '%s' unloaded (its snapshots stay in the database)", j->name);
        if (j->req)
            ts_req_reply_json(j->req, 200, json_pack("{s:s,s:b}", "model_name", j->name, "unloaded", 1));
    }
    free_job(j);
}

/* After the model's last snapshot (taken when its state changed), mark it inactive. */
static void unload_snapshotted(ts_server *srv, ts_served *s, const ts_snapshot_info *info,
                               const char *err, void *arg) {
    admin_job *j = arg;
    if (err)
        ts_log_warn("model '%s': the snapshot before unloading failed (%s); unloading anyway", j->name, err);
    ts_persist_submit(srv->persist, &j->job);
}

static void unload_control(ts_engine *e, ts_served *s, void *arg) {
    admin_job *j = arg;
    if (s->removed) { /* cancelled (engine.h): only the engine's own end removes it first */
        if (j->req)
            reply_removed(j->req, s, "this DELETE ran", "it is still in the database");
        free_job(j);
        return;
    }
    ts_snapshot_now(j->srv, s, "delete", 1, unload_snapshotted, j);
}

/* ---- dispatch ---- */

static void submit(ts_server *srv, admin_job *j) {
    if (j)
        ts_persist_submit(srv->persist, &j->job);
}

/* POST /admin/models/{m}/restore of a model that is not served: a deleted one comes back
 * from that snapshot (restore_work: 404 when the database has no such snapshot of m). */
static void undelete(ts_server *srv, ts_req *req) {
    if (req->bad_body[0]) { /* SPEC §4: an unknown model is a 404 whatever the body */
        ts_req_reply_error(req, 404, "unknown model '%s'", req->route.model);
        return;
    }
    admin_job *j = new_job(srv, req, restore_work, restore_done);
    if (j) {
        j->snapshot_id = req->snapshot_id;
        j->is_new = 1;
        submit(srv, j);
    }
}

/* PUT /admin/models/{m}: stored here, or (replicating) its version number looked up first
 * and then published as an admin message. */
static void admin_put(ts_server *srv, ts_req *req) {
    int repl = ts_repl_enabled(srv->repl);
    admin_job *j = repl ? new_job(srv, req, next_version_work, next_version_done)
                        : new_job(srv, req, put_work, put_done);
    if (!j)
        return;
    j->model = req->upload; /* the job owns the parsed file from here */
    j->hash = req->upload_hash;
    j->is_new = !ts_engine_find(srv->engine, j->name, 1);
    req->upload = NULL;
    submit(srv, j);
}

void ts_admin_handle(ts_server *srv, ts_req *req) {
    ts_endpoint ep = req->route.ep;
    if (ep == TS_EP_ADMIN_LIST) {
        admin_list(srv, req);
        return;
    }
    if (ep == TS_EP_ADMIN_SNAPSHOTS) {
        submit(srv, new_job(srv, req, list_work, list_done));
        return;
    }
    if (ep == TS_EP_ADMIN_PUT) {
        admin_put(srv, req);
        return;
    }
    ts_served *s = ts_engine_find(srv->engine, req->route.model, 0);
    if (!s && ep == TS_EP_ADMIN_RESTORE && !ts_engine_find(srv->engine, req->route.model, 1)) {
        undelete(srv, req);
        return;
    }
    if (!s) {
        ts_req_reply_error(req, 404, "unknown model '%s'", req->route.model);
        return;
    }
    if (ep == TS_EP_ADMIN_GET) {
        ts_req_reply_json(req, 200, model_json(s));
        return;
    }
    if (ts_req_reply_bad_body(req)) /* restore: 404 first, whatever the body */
        return;
    switch (ep) {
    case TS_EP_ADMIN_SNAPSHOT:
        if (ts_snapshot_queue(srv, s, "admin", 0, snapshot_replied, req) < 0)
            ts_req_reply_error(req, 500, "out of memory");
        break;
    case TS_EP_ADMIN_RESTORE: {
        admin_job *j = new_job(srv, req, restore_work, restore_done);
        if (j) {
            j->snapshot_id = req->snapshot_id;
            submit(srv, j);
        }
        break;
    }
    case TS_EP_ADMIN_EXPORT: ts_engine_export(srv->engine, s, req); break;
    case TS_EP_ADMIN_DELETE: {
        if (ts_repl_enabled(srv->repl)) {
            publish_admin(srv, req, s->name, "delete", s->version, NULL, 0);
            break;
        }
        admin_job *j = new_job(srv, req, deactivate_work, deactivate_done);
        if (!j)
            break;
        s->unloading = 1; /* no new work from now on; what is queued finishes first */
        if (ts_engine_control(srv->engine, s, unload_control, j) < 0) {
            s->unloading = 0;
            ts_req_reply_error(req, 500, "out of memory");
            free_job(j);
        }
        break;
    }
    default: ts_req_reply_error(req, 404, "no such path"); break;
    }
}
