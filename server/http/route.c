/* route.c — path and method table of the HTTP API (see route.h). */
#include "server/http/route.h"

#include <stdio.h>
#include <string.h>

/* One row per (method, path pattern). In patterns "{m}" captures the model name and "{v}"
 * the version; every other segment matches literally. */
static const struct {
    const char *method;
    const char *pattern;
    ts_endpoint ep;
} routes[] = {
    {"GET", "/v2/health/live", TS_EP_HEALTH_LIVE},
    {"GET", "/v2/health/ready", TS_EP_HEALTH_READY},
    {"GET", "/v2", TS_EP_SERVER_META},
    {"GET", "/v2/models/{m}", TS_EP_MODEL_META},
    {"GET", "/v2/models/{m}/versions/{v}", TS_EP_MODEL_META},
    {"GET", "/v2/models/{m}/ready", TS_EP_MODEL_READY},
    {"GET", "/v2/models/{m}/versions/{v}/ready", TS_EP_MODEL_READY},
    {"POST", "/v2/models/{m}/infer", TS_EP_INFER},
    {"POST", "/v2/models/{m}/versions/{v}/infer", TS_EP_INFER},
    {"POST", "/v2/models/{m}/feedback", TS_EP_FEEDBACK},
    {"POST", "/v2/models/{m}/versions/{v}/feedback", TS_EP_FEEDBACK},
    {"GET", "/v2/models/{m}/stats", TS_EP_MODEL_STATS},
    {"GET", "/v2/models/{m}/versions/{v}/stats", TS_EP_MODEL_STATS},
    {"GET", "/v2/models", TS_EP_REPO_LIST},
    {"POST", "/v2/repository/index", TS_EP_REPO_INDEX},
    {"GET", "/metrics", TS_EP_METRICS},
    {"GET", "/admin/models", TS_EP_ADMIN_LIST},
    {"POST", "/admin/models/{m}/snapshots", TS_EP_ADMIN_SNAPSHOT},
    {"GET", "/admin/models/{m}/snapshots", TS_EP_ADMIN_SNAPSHOTS},
    {"POST", "/admin/models/{m}/restore", TS_EP_ADMIN_RESTORE},
    {"GET", "/admin/models/{m}/export", TS_EP_ADMIN_EXPORT},
    {"PUT", "/admin/models/{m}", TS_EP_ADMIN_PUT},
    {"DELETE", "/admin/models/{m}", TS_EP_ADMIN_DELETE},
    {"GET", "/admin/models/{m}", TS_EP_ADMIN_GET},
};
#define N_ROUTES (sizeof routes / sizeof routes[0])

int ts_route_name_valid(const char *name) {
    size_t n = strlen(name);
    if (n == 0 || n >= TS_ROUTE_NAME_MAX || name[0] == '.')
        return 0;
    for (size_t i = 0; i < n; i++) {
        char c = name[i];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '.' || c == '_' || c == '-'))
            return 0;
    }
    return 1;
}

#define MAX_SEGS 8

/* Split the path into at most MAX_SEGS segments (pointers into buf). A trailing '/' is
 * ignored; empty segments ("//") make the path unroutable (-1). */
static int split(const char *url, char *buf, size_t buflen, const char **segs) {
    size_t n = strcspn(url, "?#");
    if (n >= buflen || url[0] != '/')
        return -1;
    memcpy(buf, url, n);
    buf[n] = '\0';
    if (n > 1 && buf[n - 1] == '/')
        buf[--n] = '\0';
    int k = 0;
    for (char *p = buf + 1; *p || k == 0;) {
        if (k == MAX_SEGS || *p == '/' || (*p == '\0' && n > 1))
            return -1;
        segs[k++] = p;
        char *slash = strchr(p, '/');
        if (!slash)
            break;
        *slash = '\0';
        p = slash + 1;
        if (!*p)
            return -1;
    }
    return k;
}

/* Match a pattern against segs; captures {m} and {v} into r. 1 on match; *bad_name is set
 * when the {m} segment is not a valid model name (checked before copying, so a long name
 * is not mistaken for its valid truncation). */
static int match(const char *pattern, const char **segs, int nseg, ts_route *r, int *bad_name) {
    char pbuf[64];
    const char *psegs[MAX_SEGS];
    int np = split(pattern, pbuf, sizeof pbuf, psegs);
    if (np != nseg)
        return 0;
    for (int i = 0; i < np; i++) {
        if (strcmp(psegs[i], "{m}") == 0 || strcmp(psegs[i], "{v}") == 0)
            continue;
        if (strcmp(psegs[i], segs[i]) != 0)
            return 0;
    }
    *bad_name = 0;
    for (int i = 0; i < np; i++) {
        if (strcmp(psegs[i], "{m}") == 0) {
            *bad_name = !ts_route_name_valid(segs[i]);
            snprintf(r->model, sizeof r->model, "%s", segs[i]);
        }
        else if (strcmp(psegs[i], "{v}") == 0)
            snprintf(r->version, sizeof r->version, "%s", segs[i]);
    }
    return 1;
}

static int refuse(ts_route *r, int status, const char *msg) {
    r->ep = TS_EP_NONE;
    r->status = status;
    r->error = msg;
    return status;
}

static int method_is(const char *method, const char *want) {
    return strcmp(method, want) == 0 || (strcmp(want, "GET") == 0 && strcmp(method, "HEAD") == 0);
}

int ts_route_match(const char *method, const char *url, ts_route *r) {
    memset(r, 0, sizeof *r);
    r->ep = TS_EP_NONE;
    char buf[1024];
    const char *segs[MAX_SEGS];
    int nseg = split(url, buf, sizeof buf, segs);
    if (nseg <= 0)
        return refuse(r, 404, "no such path");
    int path_matched = 0, bad_name = 0;
    for (size_t i = 0; i < N_ROUTES; i++) {
        if (!match(routes[i].pattern, segs, nseg, r, &bad_name))
            continue;
        if (!method_is(method, routes[i].method)) {
            if (!strstr(r->allow, routes[i].method)) {
                size_t len = strlen(r->allow);
                snprintf(r->allow + len, sizeof r->allow - len, "%s%s%s", len ? ", " : "",
                         routes[i].method, strcmp(routes[i].method, "GET") == 0 ? ", HEAD" : "");
            }
            path_matched = 1;
            continue;
        }
        r->ep = routes[i].ep;
        if (bad_name) {
            /* A name that can never exist: for PUT the client asked to create it (400);
             * elsewhere there is simply no such model (404). */
            if (r->ep == TS_EP_ADMIN_PUT)
                return refuse(r, 400, "a model name is 1-127 characters of A-Z a-z 0-9 . _ - "
                                      "and does not start with '.'");
            return refuse(r, 404, "unknown model");
        }
        r->allow[0] = '\0';
        return 0;
    }
    if (path_matched)
        return refuse(r, 405, "method not allowed for this path");
    r->model[0] = r->version[0] = '\0';
    return refuse(r, 404, "no such path");
}
