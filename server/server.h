/* server.h — the daemon's one context: everything the loop owns, plus what the HTTP and
 * persistence threads share with it. It is the daemon's only global (daemon.c keeps a
 * pointer for the signal handlers' sake; everything else receives it as an argument). */
#ifndef TS_SERVER_H
#define TS_SERVER_H

#include <stdatomic.h>
#include <uv.h>

#include "core/pool.h"
#include "server/http/auth.h"
#include "server/config.h"
#include "server/store/dblock.h"
#include "server/engine/engine.h"
#include "server/http/http.h"
#include "server/metrics.h"
#include "server/store/persist.h"
#include "server/repl/forward.h"
#include "server/repl/repl.h"

typedef struct ts_server {
    ts_config cfg;
    uv_loop_t *loop;
    ts_metrics metrics;
    ts_pool *pool;
    ts_engine *engine;
    ts_persist *persist;
    ts_journal *journal;                /* feedback journal (journal.h) */
    ts_idem *idem;                      /* exactly-once feedback ids (idem.h); NULL: off */
    ts_window *window;                  /* inputs kept for feedback by id (window.h) */
    ts_repl *repl;                      /* replication (repl.h); always there, maybe off */
    struct ts_admin_wait *admin_waits;  /* PUT/restore/DELETE requests waiting for their admin
                                           message to come back from the stream (admin.c) */
    struct ts_state *state;             /* published states (server/repl/state.h); NULL when
                                           replication is off */
    ts_forward *forward;                /* feedback by id across replicas (forward.h); off with
                                           replication */
    ts_http *http;
    ts_dblock dblock;                   /* the database's exclusive lock (dblock.h) */
    int listen_fd;                      /* bound before the database is opened; -1 once
                                           MHD owns it */
    int bound_port;
    char admin_token[TS_TOKEN_MAX];     /* "" when not configured */
    char feedback_token[TS_TOKEN_MAX];
    _Atomic int shutting_down;          /* read by the HTTP threads */
    _Atomic int arriving;               /* inference requests the HTTP threads are reading */
    int closing;                        /* loop: shutdown began and the requests handed
                                           over before it were dispatched; later ones 503 */
    int shutdown_snapshots_pending;     /* final snapshots not written yet */
    int shutdown_failed;                /* a final snapshot failed: exit status 1 */
    uint64_t shutdown_started_ms;       /* uv_now when the signal came */
    uint64_t shutdown_quiesced_ms;      /* uv_now when the listening socket closed, or 0 */
    uv_signal_t sigterm, sigint, sighup;
    uv_timer_t snapshot_timer;
    uv_timer_t shutdown_timer;
} ts_server;

#endif
