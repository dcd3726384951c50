/* endpoint.c — the endpoints' metrics names (see endpoint.h). */
#include "server/endpoint.h"

static const char *const ep_names[TS_EP_COUNT] = {
    "health_live", "health_ready", "server_metadata", "model_metadata", "model_ready",
    "infer", "feedback", "model_stats", "repository_list", "repository_index", "metrics",
    "admin_list", "admin_snapshot", "admin_snapshots", "admin_restore", "admin_export",
    "admin_put", "admin_delete", "admin_get",
};

const char *ts_endpoint_name(ts_endpoint ep) {
    return ep >= 0 && ep < TS_EP_COUNT ? ep_names[ep] : "unknown";
}

int ts_endpoint_is_admin(ts_endpoint ep) { return ep >= TS_EP_ADMIN_LIST && ep < TS_EP_COUNT; }
