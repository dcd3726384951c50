/* route.h — the HTTP API's paths and methods (SPEC §4), as one table.
 *
 * Pure string work with no server state, so the HTTP threads route a request (and refuse
 * unknown paths, wrong methods and malformed names) before its body is read.
 */
#ifndef TS_ROUTE_H
#define TS_ROUTE_H

#include "server/endpoint.h"

#define TS_ROUTE_NAME_MAX 128  /* a model name's bytes + 1; equals TS_MODEL_NAME_MAX */
#define TS_ROUTE_VERSION_MAX 32

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

#endif
