/* auth.c — bearer tokens and the loopback rule (see auth.h). */
#include "server/http/auth.h"

#include <errno.h>
#include <netinet/in.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>

int ts_auth_load_token(const char *path, char *out, char *err, size_t errlen) {
    FILE *f = fopen(path, "rb");
    if (!f) {
        snprintf(err, errlen, "cannot read token file %s: %s", path, strerror(errno));
        return -1;
    }
    size_t n = fread(out, 1, TS_TOKEN_MAX, f);
    int bad_read = ferror(f), too_long = n == TS_TOKEN_MAX;
    fclose(f);
    if (bad_read || too_long) {
        snprintf(err, errlen, "token file %s: %s", path,
                 bad_read ? "read error" : "longer than 4095 bytes");
        return -1;
    }
    while (n > 0 && (out[n - 1] == '\n' || out[n - 1] == '\r' || out[n - 1] == ' ' || out[n - 1] == '\t'))
        n--;
    out[n] = '\0';
    if (n == 0) {
        snprintf(err, errlen, "token file %s is empty: put the token in it", path);
        return -1;
    }
    for (size_t i = 0; i < n; i++)
        if ((unsigned char)out[i] <= ' ' || out[i] == 0x7f) {
            memset(out, 0, TS_TOKEN_MAX);
            snprintf(err, errlen, "token file %s: the token holds spaces or control characters "
                     "(one token on one line is expected)", path);
            return -1;
        }
    return 0;
}

int ts_auth_equal(const char *a, const char *b) {
    size_t la = strlen(a), lb = strlen(b);
    /* Walk the longer length, reading past neither string, so the time does not reveal
     * the position of the first difference. */
    size_t n = la > lb ? la : lb;
    volatile unsigned char diff = (unsigned char)(la != lb);
    for (size_t i = 0; i < n; i++) {
        unsigned char x = i < la ? (unsigned char)a[i] : 0;
        unsigned char y = i < lb ? (unsigned char)b[i] : 0;
        diff |= (unsigned char)(x ^ y);
    }
    return diff == 0;
}

ts_auth_result ts_auth_check(const char *header, const char *token_a, const char *token_b) {
    if (!header || strncasecmp(header, "Bearer ", 7) != 0)
        return TS_AUTH_MISSING;
    const char *given = header + 7;
    while (*given == ' ')
        given++;
    if (!*given)
        return TS_AUTH_MISSING;
    int ok = 0;
    if (token_a && *token_a)
        ok |= ts_auth_equal(given, token_a);
    if (token_b && *token_b)
        ok |= ts_auth_equal(given, token_b);
    return ok ? TS_AUTH_OK : TS_AUTH_WRONG;
}

int ts_auth_is_loopback(const struct sockaddr *addr) {
    if (!addr)
        return 0;
    if (addr->sa_family == AF_INET) {
        const struct sockaddr_in *in = (const struct sockaddr_in *)addr;
        return (ntohl(in->sin_addr.s_addr) >> 24) == 127;
    }
    if (addr->sa_family == AF_INET6) {
        const struct in6_addr *a = &((const struct sockaddr_in6 *)addr)->sin6_addr;
        if (IN6_IS_ADDR_LOOPBACK(a))
            return 1;
        return IN6_IS_ADDR_V4MAPPED(a) && a->s6_addr[12] == 127;
    }
    return 0;
}

/* ---- browsers: cross-site requests and DNS rebinding ---- */

/* The host part of a Host header value ("name", "name:port", "[v6]:port") into out. */
static void host_part(const char *v, char *out, size_t outlen) {
    const char *start = v, *end;
    if (*v == '[') {
        start = v + 1;
        end = strchr(start, ']');
        if (!end)
            end = start + strlen(start);
    } else {
        end = strchr(v, ':');
        if (!end)
            end = v + strlen(v);
    }
    size_t n = (size_t)(end - start);
    if (n >= outlen)
        n = 0; /* too long to be an allowed name */
    memcpy(out, start, n);
    out[n] = '\0';
}

/* Is name one of the comma-separated names in list? (Case-insensitive, spaces ignored.) */
static int in_list(const char *name, const char *list) {
    if (!list)
        return 0;
    size_t n = strlen(name);
    for (const char *p = list; *p;) {
        while (*p == ' ' || *p == ',')
            p++;
        const char *e = p;
        while (*e && *e != ',' && *e != ' ')
            e++;
        if ((size_t)(e - p) == n && n && strncasecmp(p, name, n) == 0)
            return 1;
        p = e;
    }
    return 0;
}

int ts_auth_host_allowed(const char *host_header, const char *listen_host, const char *allowed) {
    if (!host_header || !*host_header)
        return 0;
    char h[256];
    host_part(host_header, h, sizeof h);
    if (!h[0])
        return 0;
    if (strcasecmp(h, "localhost") == 0 || strcmp(h, "::1") == 0 || strncmp(h, "127.", 4) == 0)
        return 1;
    int wildcard = strcmp(listen_host, "0.0.0.0") == 0 || strcmp(listen_host, "::") == 0;
    if (!wildcard && strcasecmp(h, listen_host) == 0)
        return 1;
    return in_list(h, allowed);
}

int ts_auth_origin_same(const char *origin, const char *host_header) {
    if (!origin)
        return 1; /* not sent by a browser on a cross-site request */
    const char *authority = strstr(origin, "://");
    if (!authority || !host_header)
        return 0; /* "null" (sandboxed pages, file://) or malformed */
    authority += 3;
    return strcasecmp(authority, host_header) == 0;
}

int ts_auth_content_type_ok(const char *content_type) {
    if (!content_type)
        return 0;
    static const char *const ok[] = {"application/json", "application/octet-stream"};
    for (size_t i = 0; i < sizeof ok / sizeof ok[0]; i++) {
        size_t n = strlen(ok[i]);
        if (strncasecmp(content_type, ok[i], n) == 0 &&
            (content_type[n] == '\0' || content_type[n] == ';' || content_type[n] == ' '))
            return 1;
    }
    return 0;
}
