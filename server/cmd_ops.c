/* cmd_ops.c — operator subcommands.
 *
 *   tscaled healthcheck [--url URL] [--timeout SEC]
 *       exit 0 when GET URL (default: /v2/health/ready of the address in TSCALE_LISTEN, else
 *       http://127.0.0.1:8080) answers 200, 1 otherwise, 2 on a usage error. Plain sockets, so a
 *       container image needs no curl or wget for its HEALTHCHECK.
 *   tscaled backup [--db PATH] DEST
 *       copy the database, consistently, while the daemon runs (see ts_cmd_backup).
 */
#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <time.h>
#include <unistd.h>

#include "server/cli.h"
#include "server/store/store.h"

#define HC_DEFAULT_URL "http://127.0.0.1:8080/v2/health/ready"
#define HC_READY_PATH "/v2/health/ready"

typedef struct {
    char host[256]; /* name or address, IPv6 without the brackets */
    char port[8];
    char path[512];
} hc_url;

static int64_t now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* Split "http://HOST[:PORT][/PATH]" (HOST may be "[v6]"). Only plain http: the daemon
 * serves no TLS itself. A URL without a path probes /v2/health/ready. */
static int hc_url_parse(const char *url, hc_url *u, char *err, size_t errlen) {
    const char *p = url, *end, *colon = NULL;
    if (strncmp(p, "http://", 7) != 0) {
        snprintf(err, errlen, "only http:// URLs are supported");
        return -1;
    }
    p += 7;
    end = p + strcspn(p, "/");
    if (*p == '[') { /* [v6]:port */
        const char *rb = memchr(p, ']', (size_t)(end - p));
        if (!rb || (rb + 1 != end && rb[1] != ':')) {
            snprintf(err, errlen, "bad IPv6 address (write http://[::1]:8080)");
            return -1;
        }
        if (rb[1] == ':') colon = rb + 1;
        p++;
        snprintf(u->host, sizeof u->host, "%.*s", (int)(rb - p), p);
    } else {
        colon = memchr(p, ':', (size_t)(end - p));
        const char *hend = colon ? colon : end;
        snprintf(u->host, sizeof u->host, "%.*s", (int)(hend - p), p);
    }
    if (colon) {
        size_t n = (size_t)(end - colon - 1);
        if (n == 0 || n > 5 || strspn(colon + 1, "0123456789") < n || atoi(colon + 1) < 1 || atoi(colon + 1) > 65535) {
            snprintf(err, errlen, "the port must be a number from 1 to 65535");
            return -1;
        }
        snprintf(u->port, sizeof u->port, "%.*s", (int)n, colon + 1);
    } else {
        snprintf(u->port, sizeof u->port, "80");
    }
    if (u->host[0] == '\0') {
        snprintf(err, errlen, "no host");
        return -1;
    }
    snprintf(u->path, sizeof u->path, "%s", *end ? end : HC_READY_PATH);
    return 0;
}

static int host_is(const char *host, int hostlen, const char *name) {
    return (size_t)hostlen == strlen(name) && memcmp(host, name, (size_t)hostlen) == 0;
}

/* The URL to probe when none is given: the daemon's own TSCALE_LISTEN (as the container
 * sets it), with a wildcard host replaced by loopback, so HEALTHCHECK follows the config. */
static void hc_default_url(char *url, size_t len) {
    const char *listen = getenv("TSCALE_LISTEN");
    const char *colon = listen ? strrchr(listen, ':') : NULL;
    if (!colon || colon[1] == '\0') {
        snprintf(url, len, "%s", HC_DEFAULT_URL);
        return;
    }
    int hostlen = (int)(colon - listen);
    const char *host = listen;
    if (hostlen == 0 || host_is(listen, hostlen, "0.0.0.0") || host_is(listen, hostlen, "*")) {
        host = "127.0.0.1";
        hostlen = 9;
    } else if (host_is(listen, hostlen, "[::]")) {
        host = "[::1]";
        hostlen = 5;
    }
    snprintf(url, len, "http://%.*s:%s%s", hostlen, host, colon + 1, HC_READY_PATH);
}

/* Connect to one address, giving up at deadline (ms, monotonic). fd or -1 + err. */
static int hc_connect_one(const struct addrinfo *ai, int64_t deadline, char *err, size_t errlen) {
    int fd = socket(ai->ai_family, ai->ai_socktype | SOCK_NONBLOCK | SOCK_CLOEXEC, ai->ai_protocol);
    if (fd < 0) {
        snprintf(err, errlen, "socket: %s", strerror(errno));
        return -1;
    }
    if (connect(fd, ai->ai_addr, ai->ai_addrlen) == 0) return fd;
    if (errno != EINPROGRESS) {
        snprintf(err, errlen, "connect: %s", strerror(errno));
        close(fd);
        return -1;
    }
    struct pollfd pfd = {.fd = fd, .events = POLLOUT};
    int64_t left = deadline - now_ms();
    int r = left > 0 ? poll(&pfd, 1, (int)left) : 0;
    int soerr = 0;
    socklen_t sl = sizeof soerr;
    if (r <= 0) {
        snprintf(err, errlen, "connect: %s", r == 0 ? "timed out" : strerror(errno));
    } else if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &soerr, &sl) != 0 || soerr != 0) {
        snprintf(err, errlen, "connect: %s", strerror(soerr ? soerr : errno));
    } else {
        return fd;
    }
    close(fd);
    return -1;
}

static int hc_connect(const hc_url *u, int64_t deadline, char *err, size_t errlen) {
    struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM}, *res = NULL;
    int rc = getaddrinfo(u->host, u->port, &hints, &res);
    if (rc != 0) {
        snprintf(err, errlen, "%s: %s", u->host, gai_strerror(rc));
        return -1;
    }
    int fd = -1;
    for (struct addrinfo *ai = res; ai && fd < 0; ai = ai->ai_next)
        fd = hc_connect_one(ai, deadline, err, errlen);
    freeaddrinfo(res);
    return fd;
}

/* Wait until fd is ready for events, or the deadline passes. 1 ready, 0 timed out, -1 error. */
static int hc_wait(int fd, short events, int64_t deadline) {
    struct pollfd pfd = {.fd = fd, .events = events};
    for (;;) {
        int64_t left = deadline - now_ms();
        if (left <= 0) return 0;
        int r = poll(&pfd, 1, (int)left);
        if (r >= 0 || errno != EINTR) return r > 0 ? 1 : r;
    }
}

/* Send a GET for u->path on the connected fd and return the response's status code
 * (reading only the status line), or -1 + err. */
static int hc_get_status(int fd, const hc_url *u, int64_t deadline, char *err, size_t errlen) {
    char req[1024], buf[256];
    int n = snprintf(req, sizeof req,
                     "GET %s HTTP/1.1\r\nHost: %s:%s\r\nUser-Agent: tscaled-healthcheck\r\n"
                     "Connection: close\r\n\r\n", u->path, u->host, u->port);
    for (int sent = 0; sent < n;) {
        int ready = hc_wait(fd, POLLOUT, deadline);
        ssize_t w = ready == 1 ? send(fd, req + sent, (size_t)(n - sent), MSG_NOSIGNAL) : -1;
        if (w < 0 && (ready != 1 || (errno != EAGAIN && errno != EINTR))) {
            snprintf(err, errlen, "send: %s", ready == 0 ? "timed out" : strerror(errno));
            return -1;
        }
        if (w > 0) sent += (int)w;
    }
    size_t got = 0;
    while (got < sizeof buf - 1 && !memchr(buf, '\n', got)) {
        int ready = hc_wait(fd, POLLIN, deadline);
        ssize_t r = ready == 1 ? recv(fd, buf + got, sizeof buf - 1 - got, 0) : -1;
        if (r == 0) break;
        if (r < 0 && (ready != 1 || (errno != EAGAIN && errno != EINTR))) {
            snprintf(err, errlen, "no response: %s", ready == 0 ? "timed out" : strerror(errno));
            return -1;
        }
        if (r > 0) got += (size_t)r;
    }
    buf[got] = '\0';
    int status = 0;
    if (sscanf(buf, "HTTP/%*d.%*d %3d", &status) != 1 || status < 100) {
        snprintf(err, errlen, "not an HTTP response: '%.40s'", buf);
        return -1;
    }
    return status;
}

int ts_cmd_healthcheck(int argc, char **argv) {
    char url[600], err[512];
    double timeout = 5.0;
    hc_default_url(url, sizeof url);
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0) {
            printf("usage: tscaled healthcheck [--url http://HOST:PORT[/PATH]] [--timeout SEC]\n"
                   "Exit 0 when the URL (default: %s on the TSCALE_LISTEN address, else %s)\n"
                   "answers 200, 1 when not (or not at all), 2 on a usage error.\n",
                   HC_READY_PATH, HC_DEFAULT_URL);
            return 0;
        } else if (strcmp(argv[i], "--url") == 0 && i + 1 < argc) {
            snprintf(url, sizeof url, "%s", argv[++i]);
        } else if (strcmp(argv[i], "--timeout") == 0 && i + 1 < argc) {
            char *e;
            timeout = strtod(argv[++i], &e);
            if (*e || !(timeout > 0 && timeout <= 3600)) {
                fprintf(stderr, "tscaled: healthcheck: --timeout wants seconds in (0, 3600], not '%s'\n", argv[i]);
                return 2;
            }
        } else {
            fprintf(stderr, "tscaled: healthcheck: unknown or incomplete argument '%s' (see --help)\n", argv[i]);
            return 2;
        }
    }
    hc_url u;
    if (hc_url_parse(url, &u, err, sizeof err) != 0) {
        fprintf(stderr, "tscaled: healthcheck: '%s': %s\n", url, err);
        return 2;
    }
    int64_t deadline = now_ms() + (int64_t)(timeout * 1000);
    int fd = hc_connect(&u, deadline, err, sizeof err);
    int status = fd < 0 ? -1 : hc_get_status(fd, &u, deadline, err, sizeof err);
    if (fd >= 0) close(fd);
    if (status == 200) {
        printf("%s: ready\n", url);
        return 0;
    }
    if (status > 0) snprintf(err, sizeof err, "status %d", status);
    fprintf(stderr, "tscaled: healthcheck: %s: not ready: %s\n", url, err);
    return 1;
}

/* Back up the database at db to dest: into a temporary file beside dest, renamed into place
 * only when complete, so dest is never a partial copy. 0, or -1 + err. */
static int backup_to(const char *db, const char *dest, char *err, size_t errlen) {
    char tmp[4096];
    if ((size_t)snprintf(tmp, sizeof tmp, "%s.partial-%ld", dest, (long)getpid()) >= sizeof tmp) {
        snprintf(err, errlen, "destination path too long");
        return -1;
    }
    /* ts_store_open also applies pending migrations: run the backup with the binary that
     * serves this database (in a container: docker exec ... tscaled backup). */
    ts_store *s = ts_store_open(db, err, errlen);
    if (!s) return -1;
    int rc = ts_store_backup(s, tmp, err, errlen);
    ts_store_close(s);
    if (rc == 0 && rename(tmp, dest) != 0) {
        snprintf(err, errlen, "cannot rename the finished copy into place: %s", strerror(errno));
        rc = -1;
    }
    if (rc != 0) unlink(tmp);
    return rc;
}

int ts_cmd_backup(int argc, char **argv) {
    const char *db = getenv("TSCALE_DB"), *dest = NULL;
    char err[1024];
    if (!db || !*db) db = "./tscale.db"; /* the daemon's default */
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0) {
            printf("usage: tscaled backup [--db PATH] DEST\n"
                   "Copy the database (default: $TSCALE_DB, else ./tscale.db) to the new file DEST with\n"
                   "SQLite's online backup: consistent, and safe while the daemon serves and writes.\n");
            return 0;
        } else if (strcmp(argv[i], "--db") == 0 && i + 1 < argc) {
            db = argv[++i];
        } else if (strncmp(argv[i], "--db=", 5) == 0) {
            db = argv[i] + 5;
        } else if (argv[i][0] != '-' && !dest) {
            dest = argv[i];
        } else {
            fprintf(stderr, "tscaled: backup: unexpected argument '%s' (usage: tscaled backup [--db PATH] DEST)\n", argv[i]);
            return 2;
        }
    }
    if (!dest) {
        fprintf(stderr, "tscaled: backup: no destination (usage: tscaled backup [--db PATH] DEST)\n");
        return 2;
    }
    struct stat st;
    if (stat(db, &st) != 0) { /* opening would create an empty database: not a backup */
        fprintf(stderr, "tscaled: backup: no database at %s: %s (give --db PATH or set TSCALE_DB)\n", db, strerror(errno));
        return 1;
    }
    if (lstat(dest, &st) == 0 || errno != ENOENT) {
        fprintf(stderr, "tscaled: backup: %s already exists: back up to a new file\n", dest);
        return 1;
    }
    if (backup_to(db, dest, err, sizeof err) != 0) {
        fprintf(stderr, "tscaled: backup: %s -> %s: %s\n", db, dest, err);
        return 1;
    }
    long long bytes = stat(dest, &st) == 0 ? (long long)st.st_size : -1;
    printf("tscaled: backup: %s -> %s (%lld bytes)\n", db, dest, bytes);
    return 0;
}
