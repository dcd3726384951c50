/* daemon.c — `tscaled serve`: start-up, the loop, and shutdown (SPEC §3).
 *
 * Threads: the loop (this thread: routing, queues, batching, answers, timers, signals);
 * libmicrohttpd's polling thread(s) (sockets, body parsing; http.h); libuv's thread pool
 * (compute jobs, one at a time; engine.h) with the ts_pool's helpers; the persistence
 * thread (SQLite; persist.h). All server state is in one ts_server on this function's
 * stack; signals arrive as uv_signal_t callbacks on the loop, so no global is needed.
 *
 * Shutdown (SIGTERM/SIGINT): stop accepting work: serve what was already handed to the
 * loop, answer anything newer with 503; let every queue drain (partial batches go at
 * once); take a final snapshot of each model whose state changed; then stop accepting
 * connections, wait for the responses to be sent (bounded), close, exit 0 (1 when a final
 * snapshot failed). The listening socket stays open (answering 503) for at least
 * GRACE_MS: a client whose connection the kernel completed just before the signal gets
 * an answer rather than a reset when the socket closes.
 */
#include <signal.h>
#include <sys/stat.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "core/kernel.h"
#include "server/api/admin.h"
#include "server/api/api.h"
#include "server/cli.h"
#include "server/log.h"
#include "server/memory.h"
#include "server/recover.h"
#include "server/server.h"
#include "server/repl/state.h"
#include "server/snapshot.h"

/* How long shutdown waits for answered responses to reach their clients. */
#define FLUSH_WAIT_MS 5000
/* Least time between the signal and closing the listening socket. */
#define GRACE_MS 100

static void close_handles(ts_server *srv) {
    uv_timer_stop(&srv->shutdown_timer);
    uv_close((uv_handle_t *)&srv->shutdown_timer, NULL);
    uv_close((uv_handle_t *)&srv->snapshot_timer, NULL);
    uv_close((uv_handle_t *)&srv->sigterm, NULL);
    uv_close((uv_handle_t *)&srv->sigint, NULL);
    uv_close((uv_handle_t *)&srv->sighup, NULL);
    ts_forward_stop(srv->forward); /* answers the forwards still waiting: before HTTP stops */
    ts_http_stop(srv->http);
    ts_repl_stop(srv->repl); /* before the engine and the ids its callbacks use */
    ts_state_stop(srv->state);
    ts_persist_stop(srv->persist);
    ts_engine_free(srv->engine);
    ts_idem_free(srv->idem);
    ts_window_free(srv->window);
    ts_journal_free(srv->journal);
    /* the loop returns once these handles have closed; srv->repl (which holds two of them)
     * is freed after that, in run() */
}

static void on_shutdown_tick(uv_timer_t *t) {
    ts_server *srv = t->data;
    uint64_t now = uv_now(srv->loop);
    if (!srv->shutdown_quiesced_ms) {
        if (!ts_engine_idle(srv->engine) || ts_persist_pending(srv->persist) > 0 ||
            ts_forward_pending(srv->forward) > 0 ||
            srv->shutdown_snapshots_pending > 0 || now - srv->shutdown_started_ms < GRACE_MS)
            return;
        /* Steps waiting for their PubAck: wait while JetStream is there to give it. */
        if (ts_repl_pending(srv->repl) > 0 && ts_repl_ready(srv->repl, NULL) &&
            now - srv->shutdown_started_ms < (uint64_t)srv->cfg.replicate_ack_timeout_ms)
            return;
        ts_http_quiesce(srv->http); /* all work done: no more connections */
        srv->shutdown_quiesced_ms = now;
        return; /* one more tick, so MHD handles what it accepted last */
    }
    if (ts_http_active(srv->http) > 0 && now - srv->shutdown_quiesced_ms < FLUSH_WAIT_MS)
        return;
    ts_log_info("shut down cleanly%s", srv->shutdown_failed ? ", but a final snapshot failed" : "");
    close_handles(srv);
}

static void final_snapshot_done(ts_server *srv, ts_served *s, const ts_snapshot_info *info,
                                const char *err, void *arg) {
    srv->shutdown_snapshots_pending--;
    if (err)
        srv->shutdown_failed = 1;
}

static void begin_shutdown(ts_server *srv, int signum) {
    if (atomic_exchange(&srv->shutting_down, 1)) {
        ts_log_info("received %s again: already shutting down", strsignal(signum));
        return;
    }
    ts_log_info("received %s: shutting down (finishing queued work, then final snapshots)",
                strsignal(signum));
    ts_http_drain_inbound(srv->http); /* accepted before the signal: serve it */
    srv->closing = 1;
    ts_repl_drain(srv->repl); /* deltas from now on are consumed again at the next start */
    ts_admin_cancel_waits(srv);
    uv_timer_stop(&srv->snapshot_timer);
    for (ts_served *s = ts_engine_first(srv->engine); s; s = s->next) {
        if (s->unloading)
            continue;
        srv->shutdown_snapshots_pending++;
        if (ts_snapshot_queue(srv, s, "shutdown", 1, final_snapshot_done, NULL) < 0) {
            srv->shutdown_snapshots_pending--;
            srv->shutdown_failed = 1;
            ts_log_error("final snapshot of model '%s': out of memory", s->name);
        }
    }
    ts_engine_drain(srv->engine);
    srv->shutdown_started_ms = uv_now(srv->loop);
    uv_timer_start(&srv->shutdown_timer, on_shutdown_tick, 1, 5);
}

static void on_signal(uv_signal_t *h, int signum) { begin_shutdown(h->data, signum); }

static void on_snapshot_timer(uv_timer_t *t) { ts_snapshot_changed(t->data); }

/* A token file others can write lets them choose the token: say so (the start goes on;
 * refusing would break setups whose secrets are mounted with loose modes). */
static void warn_token_mode(const char *path) {
    struct stat st;
    if (path && stat(path, &st) == 0 && (st.st_mode & (S_IWGRP | S_IWOTH)))
        ts_log_warn("token file %s is writable by its group or by everyone (mode %03o): anyone "
                    "who can write it can choose the token; chmod go-w it", path,
                    (unsigned)(st.st_mode & 0777));
}

static int load_tokens(ts_server *srv, char *err, size_t errlen) {
    warn_token_mode(srv->cfg.admin_token_file);
    warn_token_mode(srv->cfg.feedback_token_file);
    if (srv->cfg.admin_token_file &&
        ts_auth_load_token(srv->cfg.admin_token_file, srv->admin_token, err, errlen) < 0)
        return -1;
    if (srv->cfg.feedback_token_file &&
        ts_auth_load_token(srv->cfg.feedback_token_file, srv->feedback_token, err, errlen) < 0)
        return -1;
    return 0;
}

/* Exactly-once records of the id window, back from the database. */
static int load_id(void *arg, const ts_journal_row *r) {
    ts_server *srv = arg;
    ts_idem_load(srv->idem, r->model, r->request_id, r->body_hash, r->answer, r->created_at_ms, ts_wall_ms());
    return 0;
}

/* The replication object (repl.h; carries stored positions along even when off). */
static int new_repl(ts_server *srv, char *err, size_t errlen) {
    ts_config *c = &srv->cfg;
    char id[300];
    if (c->replicate && !c->replicate[0]) { /* empty: off */
        free(c->replicate);
        c->replicate = NULL;
    }
    if (c->replicate && !c->journal) {
        snprintf(err, errlen, "--replicate needs --journal yes: a replica publishes its steps from the "
                 "journal, so that none is lost between its answer and its publication");
        return -1;
    }
    if (c->replica_id) {
        snprintf(id, sizeof id, "%s", c->replica_id);
    } else { /* hostname:port of --listen */
        char host[256] = "localhost";
        const char *colon = strrchr(c->listen, ':');
        gethostname(host, sizeof host - 1);
        snprintf(id, sizeof id, "%s:%s", host, colon ? colon + 1 : "0");
    }
    ts_repl_config rc = {.urls = c->replicate, .replica_id = id, .token_file = c->replicate_token_file,
                         .stream = c->replicate_stream, .ack_timeout_ms = c->replicate_ack_timeout_ms,
                         .max_age_s = c->replicate_max_age, .replicas = c->replicate_replicas,
                         .batch_ms = c->replicate_batch_ms, .batch_max = c->replicate_batch_max};
    srv->repl = ts_repl_new(&rc, err, errlen);
    return srv->repl ? 0 : -1;
}

/* The journal, the exactly-once table and replication, before the engine that uses them. */
static int start_journal(ts_server *srv, char *err, size_t errlen) {
    int64_t window_ms = srv->cfg.feedback_id_window * 1000;
    srv->journal = ts_journal_new((int)srv->cfg.journal, window_ms);
    srv->idem = window_ms > 0 ? ts_idem_new(window_ms, srv->cfg.feedback_id_bytes) : NULL;
    ts_window_limits wl = {.max_rows = srv->cfg.feedback_window_rows,
                           .max_bytes = srv->cfg.feedback_window_bytes,
                           .max_age_ms = srv->cfg.feedback_window_seconds * 1000};
    srv->window = ts_window_new(&wl);
    if (!srv->journal || (window_ms > 0 && !srv->idem) || !srv->window) {
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    if (new_repl(srv, err, errlen) < 0)
        return -1;
    ts_forward_config fc = {.repl = srv->repl, .window = srv->window, .idem = srv->idem,
                            .timeout_ms = srv->cfg.forward_timeout_ms,
                            .answer_timeout_ms = srv->cfg.forward_answer_timeout_ms,
                            .max_elements = srv->cfg.max_body_bytes / 2 + 1, /* as HTTP's parser */
                            .dispatch = ts_api_dispatch, .dispatch_ctx = srv};
    if (!(srv->forward = ts_forward_new(&fc))) {
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    return 0;
}

typedef struct {
    ts_server *srv;
    const char *admin, *feedback;  /* the files' new tokens */
} token_swap;

static void swap_tokens(void *ctx) {
    token_swap *t = ctx;
    memcpy(t->srv->admin_token, t->admin, TS_TOKEN_MAX);
    memcpy(t->srv->feedback_token, t->feedback, TS_TOKEN_MAX);
}

/* SIGHUP: read the token files again (rotation without a restart). Both or neither: a
 * file that cannot be read keeps the tokens in force, and says why. */
static void on_sighup(uv_signal_t *h, int signum) {
    ts_server *srv = h->data;
    char admin[TS_TOKEN_MAX], feedback[TS_TOKEN_MAX];
    char err[512];
    memcpy(admin, srv->admin_token, TS_TOKEN_MAX);
    memcpy(feedback, srv->feedback_token, TS_TOKEN_MAX);
    const char *af = srv->cfg.admin_token_file, *ff = srv->cfg.feedback_token_file;
    if ((af && ts_auth_load_token(af, admin, err, sizeof err) < 0) ||
        (ff && ts_auth_load_token(ff, feedback, err, sizeof err) < 0)) {
        ts_log_error("SIGHUP: %s; the tokens in force are kept", err);
    } else if (srv->http) {
        warn_token_mode(af);
        warn_token_mode(ff);
        token_swap t = {srv, admin, feedback};
        ts_http_update_tokens(srv->http, swap_tokens, &t);
        ts_log_info("SIGHUP: token files read again (%s%s%s)", af ? "admin" : "",
                    af && ff ? ", " : "", ff ? "feedback" : af ? "" : "none configured");
    }
    memset(admin, 0, sizeof admin);
    memset(feedback, 0, sizeof feedback);
}

/* What the engine asks of replication (ts_engine_repl, engine.h), wired to repl.h and
 * forward.h: ctx is the ts_server, whose repl and forward outlive the engine. Loop only. */
static int repl_enabled(void *ctx) { return ts_repl_enabled(((ts_server *)ctx)->repl); }

static int repl_model_ready(void *ctx, const char *model, const char **why) {
    return ts_repl_model_ready(((ts_server *)ctx)->repl, model, why);
}

static int repl_publish(void *ctx, const char *model, int64_t version, int64_t seq, const int16_t *scores,
                        size_t n, ts_step_cb cb, void *arg) {
    return ts_repl_publish(((ts_server *)ctx)->repl, model, version, seq, scores, n, cb, arg);
}

static void repl_reapply(void *ctx, const char *model, int64_t seq) {
    ts_repl_reapply(((ts_server *)ctx)->repl, model, seq);
}

static int repl_ask(void *ctx, const char *model, const char *version, const ts_oip_request *oip,
                    ts_byid_cb cb, void *arg, char *err, size_t errlen) {
    return ts_forward_ask(((ts_server *)ctx)->forward, model, version, oip, cb, arg, err, errlen);
}

/* Open the store, recover the models (snapshots + journal), start the persistence thread. */
static int start_models(ts_server *srv, char *err, size_t errlen) {
    if (start_journal(srv, err, errlen) < 0)
        return -1;
    ts_engine_config ec = {
        .max_batch = srv->cfg.max_batch,
        .max_queue_delay_us = srv->cfg.max_queue_delay_us,
        .max_rows = srv->cfg.max_rows,
        .max_queue_rows = srv->cfg.max_queue_rows,
        .max_queue_bytes = srv->cfg.max_queue_bytes,
        .max_response_bytes = srv->cfg.max_response_bytes,
        .feedback_requires_snapshot = (int)srv->cfg.feedback_requires_snapshot,
        .pool = srv->pool,
        .metrics = &srv->metrics,
        .arriving = srv->cfg.eager_batching ? &srv->arriving : NULL,
        .journal = srv->journal,
        .idem = srv->idem,
        .window = srv->window,
        .repl = {.ctx = srv, .enabled = repl_enabled, .model_ready = repl_model_ready,
                 .publish = repl_publish, .reapply = repl_reapply, .ask = repl_ask},
    };
    srv->engine = ts_engine_new(srv->loop, &ec, err, errlen);
    if (!srv->engine)
        return -1;
    ts_store *st = ts_store_open(srv->cfg.db, err, errlen);
    if (!st)
        return -1;
    int64_t replayed = 0, last_seq = 0;
    if (ts_recover_models(st, &srv->cfg, srv->engine, &replayed, err, errlen) < 0 ||
        ts_store_journal_last(st, &last_seq, err, errlen) < 0 ||
        ts_repl_recover(srv->repl, st, srv->engine, err, errlen) < 0 ||
        (srv->idem && ts_store_feedback_ids(st, ts_wall_ms() - srv->cfg.feedback_id_window * 1000,
                                            load_id, srv, err, errlen) < 0)) {
        ts_store_close(st);
        return -1;
    }
    ts_journal_note_replayed(srv->journal, replayed);
    srv->persist = ts_persist_start(srv->loop, st, err, errlen);
    if (!srv->persist) {
        ts_store_close(st);
        return -1;
    }
    ts_journal_start(srv->journal, srv->persist, last_seq);
    if (srv->idem && ts_idem_count(srv->idem))
        ts_log_info("%lld feedback ids of the last %lld s recovered (exactly-once)",
                    (long long)ts_idem_count(srv->idem), (long long)srv->cfg.feedback_id_window);
    return 0;
}

/* Everything a start can fail on without writing: the listening port (bound now, served
 * later), the --model files, the database's lock. Only then is the database opened. */
static int start_checks(ts_server *srv, char *err, size_t errlen) {
    char host[256];
    int port;
    if (ts_config_split_listen(srv->cfg.listen, host, sizeof host, &port, err, errlen) < 0)
        return -1;
    srv->listen_fd = ts_http_bind(host, port, &srv->bound_port, err, errlen);
    if (srv->listen_fd < 0)
        return -1;
    if (ts_recover_check_files(&srv->cfg, err, errlen) < 0)
        return -1;
    return ts_dblock_acquire(&srv->dblock, srv->cfg.db, err, errlen);
}

/* Which routes need what, once at start; a loud warning when feedback (which changes the
 * models) answers anyone who reaches a non-loopback address. */
static void log_protection(ts_server *srv, const char *host) {
    int local = strcmp(host, "localhost") == 0 || strcmp(host, "::1") == 0 ||
                strncmp(host, "127.", 4) == 0;
    const char *fb = srv->feedback_token[0] ? "the feedback (or admin) token"
                   : srv->admin_token[0]    ? "the admin token"
                                            : "no token";
    ts_log_info("routes: /admin/* needs %s; feedback needs %s; inference, metadata, health and "
                "/metrics need none", srv->admin_token[0] ? "the admin token" : "a loopback client",
                fb);
    if (!local && !srv->feedback_token[0] && !srv->admin_token[0])
        ts_log_warn("feedback changes the models and answers every client that reaches %s "
                    "without a token: configure --feedback-token-file (or --admin-token-file)",
                    srv->cfg.listen);
}

/* --access-log: "off" -> -1, else its level (config.c checked it). */
static int access_log_level(const char *v) {
    ts_log_level l;
    return strcmp(v, "off") != 0 && ts_log_level_parse(v, &l) == 0 ? (int)l : -1;
}

static int start_http(ts_server *srv, char *err, size_t errlen) {
    char host[256];
    int port;
    if (ts_config_split_listen(srv->cfg.listen, host, sizeof host, &port, err, errlen) < 0)
        return -1;
    /* Largest tensor a body can carry: every element takes at least 1 byte of JSON or 4 of
     * binary data, so the body limit bounds it; the parser needs a number. */
    ts_http_config hc = {
        .host = host,
        .port = port,
        .listen_fd = srv->listen_fd,
        .threads = (int)srv->cfg.http_threads,
        .max_body_bytes = srv->cfg.max_body_bytes,
        .max_buffered_bytes = srv->cfg.max_buffered_bytes,
        .max_connections = srv->cfg.max_connections,
        .max_per_client = srv->cfg.max_connections_per_client,
        .request_timeout_s = srv->cfg.request_timeout,
        .header_timeout_s = srv->cfg.header_timeout,
        .body_timeout_s = srv->cfg.body_timeout,
        .max_elements = srv->cfg.max_body_bytes / 2 + 1,
        .allowed_hosts = srv->cfg.allowed_hosts,
        .access_log = access_log_level(srv->cfg.access_log),
        .admin_token = srv->admin_token,
        .feedback_token = srv->feedback_token,
        .shutting_down = &srv->shutting_down,
        .metrics = &srv->metrics,
        .dispatch = ts_api_dispatch,
        .dispatch_begin = ts_api_dispatch_begin,
        .dispatch_end = ts_api_dispatch_end,
        .dispatch_ctx = srv,
        .arriving = &srv->arriving,
        .feedback_by_id = ts_window_enabled(srv->window),
    };
    srv->listen_fd = -1; /* MHD's now, whatever happens */
    srv->http = ts_http_start(srv->loop, &hc, err, errlen);
    if (!srv->http)
        return -1;
    int v6 = strchr(host, ':') != NULL;
    ts_log_info("listening on http://%s%s%s:%d", v6 ? "[" : "", host, v6 ? "]" : "",
                srv->bound_port);
    log_protection(srv, host);
    return 0;
}

/* Signals first of all: one that arrives while the models load is held by libuv and
 * handled as soon as the loop runs (a clean shutdown right after start), instead of
 * killing a daemon that may be writing its first snapshots. */
static void start_signals(ts_server *srv) {
    uv_signal_init(srv->loop, &srv->sigterm);
    uv_signal_init(srv->loop, &srv->sigint);
    srv->sigterm.data = srv->sigint.data = srv;
    uv_signal_start(&srv->sigterm, on_signal, SIGTERM);
    uv_signal_start(&srv->sigint, on_signal, SIGINT);
    uv_signal_init(srv->loop, &srv->sighup);
    srv->sighup.data = srv;
    uv_signal_start(&srv->sighup, on_sighup, SIGHUP);
}

/* What published states ask of the snapshots (ts_state_config, state.h), wired to
 * snapshot.h: ctx is the ts_server, which outlives the ts_state. Loop only. */
static void state_snapshot_now(void *ctx, ts_served *s, const char *reason) {
    ts_snapshot_now(ctx, s, reason, 0, NULL, NULL);
}

static void state_snapshot_note(void *ctx, ts_served *s, const ts_snapshot_info *info) {
    (void)ctx;
    ts_snapshot_note(s, info);
}

/* Published states (state.h): every --replicate-state-interval seconds (0: the snapshot
 * interval, or 30 s without one), and at least four times per --replicate-max-age, so that
 * a newest state always covers what retention cuts. */
static int start_states(ts_server *srv, char *err, size_t errlen) {
    int64_t every = srv->cfg.replicate_state_interval;
    int64_t quarter = srv->cfg.replicate_max_age / 4 > 0 ? srv->cfg.replicate_max_age / 4 : 1;
    if (every > quarter) {
        snprintf(err, errlen, "--replicate-state-interval %lld is longer than a quarter of --replicate-max-age "
                 "%lld: retention could cut deltas no published state covers; make it at most %lld",
                 (long long)every, (long long)srv->cfg.replicate_max_age, (long long)quarter);
        return -1;
    }
    if (!every)
        every = srv->cfg.snapshot_interval > 0 ? srv->cfg.snapshot_interval : 30;
    every = every < quarter ? every : quarter;
    ts_state_config sc = {.repl = srv->repl, .engine = srv->engine, .persist = srv->persist,
                          .replicas = srv->cfg.replicate_replicas,
                          .ack_timeout_ms = srv->cfg.replicate_ack_timeout_ms,
                          .snapshot_keep = srv->cfg.snapshot_keep, .closing = &srv->closing, .ctx = srv,
                          .snapshot_now = state_snapshot_now, .snapshot_note = state_snapshot_note};
    srv->state = ts_state_new(&sc, every);
    if (!srv->state) {
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    ts_repl_set_state(srv->repl, srv->state);
    if (ts_state_start(srv->state, srv->loop, err, errlen) < 0)
        return -1;
    ts_log_info("replication: publishing model states every %lld s to stream '%s_STATE'", (long long)every,
                ts_repl_stream(srv->repl));
    return 0;
}

static void start_timers(ts_server *srv) {
    uv_timer_init(srv->loop, &srv->snapshot_timer);
    srv->snapshot_timer.data = srv;
    if (srv->cfg.snapshot_interval > 0) {
        uint64_t ms = (uint64_t)srv->cfg.snapshot_interval * 1000u;
        uv_timer_start(&srv->snapshot_timer, on_snapshot_timer, ms, ms);
    }
    uv_timer_init(srv->loop, &srv->shutdown_timer);
    srv->shutdown_timer.data = srv;
}

static int run(ts_server *srv, uv_loop_t *loop) {
    char err[1024];
    srv->loop = loop;
    ts_metrics_init(&srv->metrics);
    start_signals(srv);
    ts_log_info("tscaled %s starting: pid %d, %lld compute threads, kernels %s, database %s", TS_VERSION,
                (int)getpid(), (long long)srv->cfg.threads, ts_kernel_name(), srv->cfg.db);
    char unknown[512];
    int n_unknown = ts_config_unknown_env(environ, unknown, sizeof unknown);
    if (n_unknown)
        ts_log_warn("%d TSCALE_* variable(s) are no setting and are ignored: %s (tscaled --help "
                    "lists the settings; the variable of --some-flag is TSCALE_SOME_FLAG)",
                    n_unknown, unknown);
    if (load_tokens(srv, err, sizeof err) < 0 || start_checks(srv, err, sizeof err) < 0)
        goto fail;
    srv->pool = ts_pool_new((int)srv->cfg.threads);
    if (!srv->pool) {
        snprintf(err, sizeof err, "cannot start %lld compute threads", (long long)srv->cfg.threads);
        goto fail;
    }
    if (start_models(srv, err, sizeof err) < 0)
        goto fail;
    if (ts_repl_enabled(srv->repl) && start_states(srv, err, sizeof err) < 0)
        goto fail;
    ts_repl_set_admin(srv->repl, ts_admin_apply, srv);
    if (ts_repl_start(srv->repl, loop, srv->engine, err, sizeof err) < 0 ||
        ts_forward_start(srv->forward, loop, err, sizeof err) < 0 || start_http(srv, err, sizeof err) < 0) {
        ts_forward_stop(srv->forward);
        ts_repl_stop(srv->repl);
        ts_persist_stop(srv->persist);
        goto fail;
    }
    start_timers(srv);
    uv_run(loop, UV_RUN_DEFAULT);
    ts_forward_free(srv->forward);
    ts_repl_free(srv->repl);
    ts_state_free(srv->state);
    ts_pool_free(srv->pool);
    ts_dblock_release(&srv->dblock, srv->cfg.db, 0); /* the store is closed */
    return srv->shutdown_failed ? 1 : 0;
fail:
    ts_log_error("cannot start: %s", err);
    if (srv->listen_fd >= 0)
        close(srv->listen_fd);
    ts_dblock_release(&srv->dblock, srv->cfg.db, 1);
    uv_close((uv_handle_t *)&srv->sigterm, NULL);
    uv_close((uv_handle_t *)&srv->sigint, NULL);
    uv_close((uv_handle_t *)&srv->sighup, NULL);
    if (srv->engine)
        ts_engine_free(srv->engine);
    ts_idem_free(srv->idem);
    ts_window_free(srv->window);
    ts_journal_free(srv->journal);
    uv_run(loop, UV_RUN_DEFAULT); /* finish closing handles */
    ts_forward_free(srv->forward);
    ts_repl_free(srv->repl);
    if (srv->pool)
        ts_pool_free(srv->pool);
    return 1;
}

int ts_cmd_serve(int argc, char **argv) {
    static ts_server srv; /* large (metrics, tokens); static storage rather than the stack */
    memset(&srv, 0, sizeof srv);
    srv.listen_fd = -1;
    srv.dblock.fd = -1;
    char err[1024];
    ts_config_result r = ts_config_parse(&srv.cfg, argc, argv, stdout, err, sizeof err);
    if (r == TS_CONFIG_EXIT)
        return 0;
    if (r == TS_CONFIG_ERROR) {
        fprintf(stderr, "tscaled: %s\n", err);
        return 2;
    }
    ts_log_level level = TS_LOG_INFO;
    ts_log_level_parse(srv.cfg.log_level, &level);
    ts_log_set_level(level);
    signal(SIGPIPE, SIG_IGN); /* a client that hangs up must not kill the daemon */
    ts_memory_setup();
    uv_loop_t loop;
    uv_loop_init(&loop);
    int rc = run(&srv, &loop);
    uv_loop_close(&loop);
    memset(srv.admin_token, 0, sizeof srv.admin_token);
    memset(srv.feedback_token, 0, sizeof srv.feedback_token);
    ts_config_free(&srv.cfg);
    return rc;
}
