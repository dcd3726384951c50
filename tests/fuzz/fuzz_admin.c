/* fuzz_admin.c — what the daemon decides from a request before any model is involved:
 * the method and path (server/http/route.c: "/v2/models/../", long names, odd segments) and
 * the Authorization header (server/http/auth.c).
 *
 * Input: byte 0 picks the method (GET HEAD POST PUT DELETE OPTIONS, or the bytes up to the
 * first NUL when bit 7 is set); the rest is split at the first NUL into the URL (as MHD
 * hands it over: percent-decoded) and an Authorization header value; the header's token
 * is also compared with a fixed token. The whole input is also parsed as a restore body.
 * Properties:
 *  - routing answers 0/400/404/405 with a message; 405 lists allowed methods;
 *  - a routed request names a valid model (never "..", "/", empty or over 127 bytes) and
 *    the endpoint the path spells; admin endpoints only under /admin/;
 *  - ts_auth_equal is string equality; ts_auth_check is OK exactly when the header is
 *    "Bearer <token>" (any case, spaces after "Bearer") for one of the tokens;
 *  - the restore body parser (server/api/admin.c) accepts only a positive snapshot_id and
 *    otherwise says why.
 */
#include <string.h>
#include <strings.h>

#include "proto/restore.h"
#include "server/http/auth.h"
#include "server/http/route.h"
#include "tests/fuzz/fuzz.h"

static void fuzz_admin_route(const char *method, const char *url)
{
    ts_route r;
    int status = ts_route_match(method, url, &r);
    TS_FUZZ_CHECK(status == r.status, "returned %d, r.status %d", status, r.status);
    if (status != 0) {
        TS_FUZZ_CHECK((status == 400 || status == 404 || status == 405) && r.error && r.error[0] &&
                      r.ep == TS_EP_NONE, "refusal %d without a message or with an endpoint", status);
        TS_FUZZ_CHECK(status != 405 || r.allow[0], "405 without Allow");
        return;
    }
    TS_FUZZ_CHECK(r.ep > TS_EP_NONE && r.ep < TS_EP_COUNT, "endpoint %d", (int)r.ep);
    TS_FUZZ_CHECK(memchr(r.model, '\0', sizeof r.model) && memchr(r.version, '\0', sizeof r.version),
                  "unterminated capture");
    if (r.model[0])
        TS_FUZZ_CHECK(ts_route_name_valid(r.model) && strcmp(r.model, "..") != 0 &&
                      !strchr(r.model, '/') && strlen(r.model) <= 127,
                      "routed to an invalid model name \"%s\"", r.model);
    /* The model was not truncated: it appears whole as a segment of the URL. */
    if (r.model[0]) {
        char seg[TS_ROUTE_NAME_MAX + 2];
        snprintf(seg, sizeof seg, "/%s", r.model);
        size_t sl = strlen(seg);
        const char *at = url;
        while ((at = strstr(at, seg)) && !strchr("/?#", at[sl]))   /* strchr finds '\0' too */
            at++;
        TS_FUZZ_CHECK(at != NULL, "model \"%s\" is not a whole segment of %s", r.model, url);
    }
    TS_FUZZ_CHECK(ts_endpoint_is_admin(r.ep) == (strncmp(url, "/admin/", 7) == 0),
                  "endpoint %s for %s", ts_endpoint_name(r.ep), url);
}

static void fuzz_admin_auth(const char *header)
{
    static const char token[] = "s3cret-token";
    static const char other[] = "feedback-token";
    const char *given = NULL;
    if (strncasecmp(header, "Bearer ", 7) == 0) {
        given = header + 7;
        while (*given == ' ')
            given++;
    }
    TS_FUZZ_CHECK(ts_auth_equal(header, token) == (strcmp(header, token) == 0), "auth_equal");
    ts_auth_result want = !given || !*given ? TS_AUTH_MISSING
                        : strcmp(given, token) == 0 || strcmp(given, other) == 0 ? TS_AUTH_OK
                        : TS_AUTH_WRONG;
    TS_FUZZ_CHECK(ts_auth_check(header, token, other) == want, "auth_check(%s)", header);
    TS_FUZZ_CHECK(ts_auth_check(header, "", NULL) != TS_AUTH_OK, "no token configured but OK");
}

static void fuzz_admin_restore(const uint8_t *data, size_t size)
{
    int64_t id = 0;
    char err[256] = "";
    if (ts_restore_parse(data, size, &id, err, sizeof err) == 0)
        TS_FUZZ_CHECK(id > 0, "accepted snapshot_id %lld", (long long)id);
    else
        TS_FUZZ_CHECK(err[0] != '\0', "refused without a reason");
}

int ts_fuzz_admin(const uint8_t *data, size_t size)
{
    static const char *const methods[] = {"GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS"};
    ts_fuzz_bytes b = {data, size};
    unsigned m = (unsigned)ts_fuzz_take(&b, 1);
    /* NUL-terminated copies of the parts, each in its own allocation (for ASan). */
    char *text = calloc(1, b.n + 2);
    memcpy(text, b.p, b.n);
    char *method_own = NULL;
    const char *method = methods[m % 6];
    char *rest = text;
    if (m & 0x80) {
        method_own = strdup(text);
        method = method_own;
        rest = text + strlen(text) + (strlen(text) < b.n);
    }
    char *url = strdup(rest);
    size_t ul = strlen(rest);
    char *header = strdup(rest + ul + (rest + ul < text + b.n));
    fuzz_admin_route(method, url);
    fuzz_admin_auth(header);
    fuzz_admin_restore(data, size);
    free(url);
    free(header);
    free(method_own);
    free(text);
    return 0;
}

TS_FUZZ_ENTRY(ts_fuzz_admin)
