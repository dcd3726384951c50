/* admin.h — the /admin API (SPEC §4): list, snapshots, restore, export, put, delete.
 * Loop thread. Database work goes to the persistence thread; state changes (restore,
 * replace, unload) run as control items of the model's FIFO, i.e. between two jobs. */
#ifndef TS_ADMIN_H
#define TS_ADMIN_H

#include "server/server.h"

/* Answer an /admin request (auth was checked on the HTTP thread). */
void ts_admin_handle(ts_server *srv, ts_req *req);

/* Replicating (repl.h "Admin everywhere"): apply an admin message — the ts_repl_admin_fn
 * hook, arg the ts_server; s NULL: the model is not served here — added when bytes is
 * not NULL (PUT of a new name, restore of a deleted one), else nothing to do. A request of
 * this replica waiting for it is answered. */
void ts_admin_apply(void *arg, ts_served *s, const char *what, int64_t version, const uint8_t *bytes, size_t len,
                    const char *origin, const char *id);
/* Shutdown: answer the requests still waiting for their admin message (503). */
void ts_admin_cancel_waits(ts_server *srv);

/* The layers of m as the model file's tscale.layers entries (a jansson json_t *). */
void *ts_admin_layers_json(const ts_model *m);

#endif
