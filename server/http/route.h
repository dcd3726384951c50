/* route.h — the HTTP API's paths and methods (SPEC §4), as one table.
 *
 * Pure string work with no server state, so the HTTP threads route a request (and refuse
 * unknown paths, wrong methods and malformed names) before its body is read.
 */
#ifndef TS_ROUTE_H
#define TS_ROUTE_H

#define TS_ROUTE_NAME_MAX 128  /* a model name's bytes + 1; equals TS_MODEL_NAME_MAX */
#define TS_ROUTE_VERSION_MAX 32

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

typedef struct {
    ts_endpoint ep;       /* TS_EP_NONE when status != 0 */
    int status;           /* 0 = routed; else 400 / 404 / 405 */
    const char *error;    /* static message when status != 0 */
    char allow[64];       /* 405: the methods the path accepts ("GET, HEAD") */
    char model[TS_ROUTE_NAME_MAX];      /* {m}, or "" */
    char version[TS_ROUTE_VERSION_MAX]; /* {v}, or "" when the path has none */
} ts_route;

/* Route method + url (path only, already percent-decoded; a query string is ignored).
 * HEAD is accepted wherever GET is. Returns r->status (0 when routed). */
int ts_route_match(const char *method, const char *url, ts_route *r);

/* A model name is 1..127 bytes of [A-Za-z0-9._-], not starting with '.'. */
int ts_route_name_valid(const char *name);

/* Stable snake_case name for metrics labels ("infer", "admin_restore", ...). */
const char *ts_endpoint_name(ts_endpoint ep);
/* 1 for endpoints under /admin. */
int ts_endpoint_is_admin(ts_endpoint ep);

#endif
