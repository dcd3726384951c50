/* api.h — the loop's entry point for every request the HTTP threads hand over: OIP
 * health/metadata, inference and feedback, /metrics, and /admin (admin.h). */
#ifndef TS_API_H
#define TS_API_H

#include "server/server.h"

/* ts_http_dispatch_fn: ctx is the ts_server. */
void ts_api_dispatch(void *ctx, ts_req *req);
/* Around a group of dispatches: requests handed over together are queued together, so
 * they can share a batch (ts_engine_hold / ts_engine_release). */
void ts_api_dispatch_begin(void *ctx);
void ts_api_dispatch_end(void *ctx);

#endif
