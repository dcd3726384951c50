/* auth.h — bearer tokens (SPEC §5).
 *
 * Decisions (the same for /admin and feedback, so clients see one rule):
 *   - no Authorization header, or one that is not "Bearer <token>"  -> 401 (with
 *     WWW-Authenticate: Bearer): the client did not authenticate;
 *   - a bearer token that matches no accepted token                  -> 403: it did, wrongly;
 *   - /admin without a configured admin token answers loopback clients only; others -> 403.
 * Tokens are compared in constant time and never logged.
 */
#ifndef TS_AUTH_H
#define TS_AUTH_H

#include <stddef.h>
#include <sys/socket.h>

#define TS_TOKEN_MAX 4096

typedef enum { TS_AUTH_OK, TS_AUTH_MISSING, TS_AUTH_WRONG } ts_auth_result;

/* Read a token file: its content with trailing newlines/CR/spaces removed. An unreadable,
 * empty or oversized file, or one whose token holds control characters or spaces, is
 * refused: 0, or -1 + err (naming the path, never the content). out[TS_TOKEN_MAX]. */
int ts_auth_load_token(const char *path, char *out, char *err, size_t errlen);

/* Check an Authorization header value (NULL when absent) against up to two accepted
 * tokens (NULL or "" entries are skipped). Every accepted token is compared, each in
 * constant time, so timing reveals neither which one matched nor how much of it. */
ts_auth_result ts_auth_check(const char *header, const char *token_a, const char *token_b);

/* Constant-time equality of two NUL-terminated strings (time depends only on the lengths). */
int ts_auth_equal(const char *a, const char *b);

/* 1 when addr is a loopback address (127.0.0.0/8, ::1, ::ffff:127.0.0.0/104). */
int ts_auth_is_loopback(const struct sockaddr *addr);

/* ---- browsers (issue 13): a web page the operator visits must not drive the daemon ----
 * A browser sends cross-site POSTs with Content-Type text/plain or a form type without
 * asking first (no CORS preflight), and with DNS rebinding a page's own origin can resolve
 * to 127.0.0.1. So the state-changing routes (/admin, feedback) refuse: a foreign Origin
 * (browsers send one on every cross-site POST); on POST, a Content-Type other than
 * application/json or application/octet-stream (none at all is accepted: curl and the
 * OIP clients may send none, and a browser that sends none sends an Origin); and, when
 * answered without a token, a Host that is not this daemon's. (PUT and DELETE are never
 * sent cross-site without a CORS preflight, which the daemon does not answer.) */

/* 1 when the Host header names this daemon: localhost, 127.x.y.z, ::1, the listen host
 * (unless it is a wildcard address), or one of the comma-separated names in allowed. */
int ts_auth_host_allowed(const char *host_header, const char *listen_host, const char *allowed);
/* 1 when there is no Origin header, or its host[:port] is the Host header's. */
int ts_auth_origin_same(const char *origin, const char *host_header);
/* 1 for application/json or application/octet-stream (parameters allowed). */
int ts_auth_content_type_ok(const char *content_type);

#endif
