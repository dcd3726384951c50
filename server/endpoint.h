/* endpoint.h — the HTTP API's endpoints as an enum, with their metrics names.
 *
 * Its own small module, below both http (route.h maps paths and methods to these) and
 * metrics (its request counters are indexed by them): metrics is used by the layers under
 * http too (engine, store), so it must not include http; both include this instead.
 */
#ifndef TS_ENDPOINT_H
#define TS_ENDPOINT_H

typedef enum {
    TS_EP_NONE = -1,
    TS_EP_HEALTH_LIVE,
    TS_EP_HEALTH_READY,
    TS_EP_SERVER_META,
    TS_EP_MODEL_META,
    TS_EP_MODEL_READY,
    TS_EP_INFER,
    TS_EP_FEEDBACK,
    TS_EP_MODEL_STATS,          /* GET /v2/models/{m}/stats (Triton's statistics extension) */
    TS_EP_REPO_LIST,            /* GET /v2/models */
    TS_EP_REPO_INDEX,           /* POST /v2/repository/index (Triton's repository index) */
    TS_EP_METRICS,
    TS_EP_ADMIN_LIST,
    TS_EP_ADMIN_SNAPSHOT,       /* POST: take one */
    TS_EP_ADMIN_SNAPSHOTS,      /* GET: list */
    TS_EP_ADMIN_RESTORE,
    TS_EP_ADMIN_EXPORT,
    TS_EP_ADMIN_PUT,
    TS_EP_ADMIN_DELETE,
    TS_EP_ADMIN_GET,            /* GET /admin/models/{m}: one model of the list */
    TS_EP_COUNT
} ts_endpoint;

/* Stable snake_case name for metrics labels ("infer", "admin_restore", ...). */
const char *ts_endpoint_name(ts_endpoint ep);
/* 1 for endpoints under /admin. */
int ts_endpoint_is_admin(ts_endpoint ep);

#endif
