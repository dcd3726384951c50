/* admin.h — the /admin API (SPEC §4): list, snapshots, restore, export, put, delete.
 * Loop thread. Database work goes to the persistence thread; state changes (restore,
 * replace, unload) run as control items of the model's FIFO, i.e. between two jobs. */
#ifndef TS_ADMIN_H
#define TS_ADMIN_H

#include "server.h"

/* Answer an /admin request (auth was checked on the HTTP thread). */
void ts_admin_handle(ts_server *srv, ts_req *req);

/* The restore body {"snapshot_id": N}, N a positive integer: 0 and *snapshot_id, or -1
 * with the reason (a 400). Runs on the HTTP thread; pure (fuzzed by tests/fuzz/fuzz_admin.c). */
int ts_admin_parse_restore(const uint8_t *body, size_t len, int64_t *snapshot_id, char *err,
                           size_t errlen);

/* The layers of m as the model file's tscale.layers entries (a jansson json_t *). */
void *ts_admin_layers_json(const ts_model *m);

#endif
