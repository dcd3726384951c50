/* test_server.c — unit tests of the daemon's pure pieces: routing (route.h), bearer tokens
 * and the loopback rule (auth.h), the configuration table (config.h), the file hash
 * (hash.h). The rest of the daemon is tested end to end (tests/e2e/); the byte buffer
 * (proto/buf.h) in test_oip.c. */
#include <arpa/inet.h>
#include <check.h>
#include <netinet/in.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "server/http/auth.h"
#include "server/config.h"
#include "server/http/conns.h"
#include "server/http/framing.h"
#include "server/hash.h"
#include "server/http/route.h"
#include "server/engine/engine.h"
#include "testutil.h"

/* ---- route ---- */

START_TEST(route_endpoints)
{
    static const struct {
        const char *method, *url;
        ts_endpoint ep;
        const char *model, *version;
    } ok[] = {
        {"GET", "/v2/health/live", TS_EP_HEALTH_LIVE, "", ""},
        {"HEAD", "/v2/health/ready", TS_EP_HEALTH_READY, "", ""},
        {"GET", "/v2", TS_EP_SERVER_META, "", ""},
        {"GET", "/v2/", TS_EP_SERVER_META, "", ""},
        {"GET", "/v2/models/m1", TS_EP_MODEL_META, "m1", ""},
        {"GET", "/v2/models/m1/versions/3", TS_EP_MODEL_META, "m1", "3"},
        {"GET", "/v2/models/a.b-c_d/ready", TS_EP_MODEL_READY, "a.b-c_d", ""},
        {"POST", "/v2/models/m/infer", TS_EP_INFER, "m", ""},
        {"POST", "/v2/models/m/versions/12/infer?x=1", TS_EP_INFER, "m", "12"},
        {"POST", "/v2/models/m/feedback", TS_EP_FEEDBACK, "m", ""},
        {"GET", "/metrics", TS_EP_METRICS, "", ""},
        {"GET", "/admin/models", TS_EP_ADMIN_LIST, "", ""},
        {"POST", "/admin/models/m/snapshots", TS_EP_ADMIN_SNAPSHOT, "m", ""},
        {"GET", "/admin/models/m/snapshots", TS_EP_ADMIN_SNAPSHOTS, "m", ""},
        {"POST", "/admin/models/m/restore", TS_EP_ADMIN_RESTORE, "m", ""},
        {"GET", "/admin/models/m/export", TS_EP_ADMIN_EXPORT, "m", ""},
        {"PUT", "/admin/models/m", TS_EP_ADMIN_PUT, "m", ""},
        {"DELETE", "/admin/models/m", TS_EP_ADMIN_DELETE, "m", ""},
        {"GET", "/admin/models/m", TS_EP_ADMIN_GET, "m", ""},
        {"GET", "/v2/models", TS_EP_REPO_LIST, "", ""},
        {"POST", "/v2/repository/index", TS_EP_REPO_INDEX, "", ""},
        {"GET", "/v2/models/m/stats", TS_EP_MODEL_STATS, "m", ""},
        {"GET", "/v2/models/m/versions/3/stats", TS_EP_MODEL_STATS, "m", "3"},
    };
    for (size_t i = 0; i < sizeof ok / sizeof ok[0]; i++) {
        ts_route r;
        ck_assert_int_eq(ts_route_match(ok[i].method, ok[i].url, &r), 0);
        ck_assert_int_eq(r.ep, ok[i].ep);
        ck_assert_str_eq(r.model, ok[i].model);
        ck_assert_str_eq(r.version, ok[i].version);
    }
}
END_TEST

START_TEST(route_refusals)
{
    ts_route r;
    static const char *const not_found[] = {"/", "", "v2", "/v2//health", "/v3", "/v2/modelz",
                                            "/v2/models/m/x", "/admin", "/admin/models/m/x/y",
                                            "/a/b/c/d/e/f/g/h/i/j", "/metrics/x"};
    for (size_t i = 0; i < sizeof not_found / sizeof not_found[0]; i++) {
        ck_assert_int_eq(ts_route_match("GET", not_found[i], &r), 404);
        ck_assert_int_eq(r.ep, TS_EP_NONE);
        ck_assert_ptr_nonnull(r.error);
    }
    ck_assert_int_eq(ts_route_match("GET", "/v2/models/m/infer", &r), 405);
    ck_assert_str_eq(r.allow, "POST");
    ck_assert_int_eq(ts_route_match("POST", "/admin/models/m", &r), 405);
    ck_assert_str_eq(r.allow, "PUT, DELETE, GET, HEAD");
    ck_assert_int_eq(ts_route_match("DELETE", "/admin/models/m/snapshots", &r), 405);
    ck_assert_ptr_nonnull(strstr(r.allow, "GET"));
    ck_assert_ptr_nonnull(strstr(r.allow, "POST"));
    /* names that can never exist: 404, except PUT which tries to create one: 400 */
    ck_assert_int_eq(ts_route_match("GET", "/v2/models/.x", &r), 404);
    ck_assert_int_eq(ts_route_match("PUT", "/admin/models/.x", &r), 400);
    ck_assert_int_eq(ts_route_match("PUT", "/admin/models/a b", &r), 400);
    char longname[300] = "/admin/models/";
    memset(longname + strlen(longname), 'a', 200);
    ck_assert_int_eq(ts_route_match("PUT", longname, &r), 400);
    char huge[4000];
    memset(huge, 'a', sizeof huge - 1);
    huge[0] = '/';
    huge[sizeof huge - 1] = '\0';
    ck_assert_int_eq(ts_route_match("GET", huge, &r), 404);
}
END_TEST

START_TEST(route_names)
{
    ck_assert(ts_route_name_valid("demo"));
    ck_assert(ts_route_name_valid("A-z_0.9"));
    ck_assert(!ts_route_name_valid(""));
    ck_assert(!ts_route_name_valid(".hidden"));
    ck_assert(!ts_route_name_valid("a/b"));
    ck_assert(!ts_route_name_valid("a%20b"));
    ck_assert(!ts_route_name_valid("é"));
    char n[TS_ROUTE_NAME_MAX + 1];
    memset(n, 'x', sizeof n);
    n[TS_ROUTE_NAME_MAX - 1] = '\0';
    ck_assert(ts_route_name_valid(n)); /* 127 bytes */
    n[TS_ROUTE_NAME_MAX - 1] = 'x';
    n[TS_ROUTE_NAME_MAX] = '\0';
    ck_assert(!ts_route_name_valid(n)); /* 128 bytes */
    for (int e = 0; e < TS_EP_COUNT; e++)
        ck_assert_str_ne(ts_endpoint_name((ts_endpoint)e), "unknown");
    ck_assert(ts_endpoint_is_admin(TS_EP_ADMIN_DELETE));
    ck_assert(!ts_endpoint_is_admin(TS_EP_FEEDBACK));
}
END_TEST

/* ---- auth ---- */

START_TEST(auth_equal_and_check)
{
    ck_assert(ts_auth_equal("abc", "abc"));
    ck_assert(!ts_auth_equal("abc", "abd"));
    ck_assert(!ts_auth_equal("abc", "ab"));
    ck_assert(!ts_auth_equal("ab", "abc"));
    ck_assert(!ts_auth_equal("", "a"));
    ck_assert(ts_auth_equal("", ""));
    ck_assert_int_eq(ts_auth_check(NULL, "t", NULL), TS_AUTH_MISSING);
    ck_assert_int_eq(ts_auth_check("Basic dA==", "t", NULL), TS_AUTH_MISSING);
    ck_assert_int_eq(ts_auth_check("Bearer", "t", NULL), TS_AUTH_MISSING);
    ck_assert_int_eq(ts_auth_check("Bearer   ", "t", NULL), TS_AUTH_MISSING);
    ck_assert_int_eq(ts_auth_check("Bearer t", "t", NULL), TS_AUTH_OK);
    ck_assert_int_eq(ts_auth_check("bearer t", "t", NULL), TS_AUTH_OK);
    ck_assert_int_eq(ts_auth_check("Bearer u", "t", NULL), TS_AUTH_WRONG);
    ck_assert_int_eq(ts_auth_check("Bearer t2", "t", NULL), TS_AUTH_WRONG);
    ck_assert_int_eq(ts_auth_check("Bearer admin", "fb", "admin"), TS_AUTH_OK);
    ck_assert_int_eq(ts_auth_check("Bearer fb", "fb", "admin"), TS_AUTH_OK);
    ck_assert_int_eq(ts_auth_check("Bearer x", "fb", ""), TS_AUTH_WRONG);
}
END_TEST

static void v4(struct sockaddr_in *a, const char *ip)
{
    memset(a, 0, sizeof *a);
    a->sin_family = AF_INET;
    ck_assert_int_eq(inet_pton(AF_INET, ip, &a->sin_addr), 1);
}

static void v6(struct sockaddr_in6 *a, const char *ip)
{
    memset(a, 0, sizeof *a);
    a->sin6_family = AF_INET6;
    ck_assert_int_eq(inet_pton(AF_INET6, ip, &a->sin6_addr), 1);
}

START_TEST(auth_loopback)
{
    struct sockaddr_in a4;
    struct sockaddr_in6 a6;
    static const char *const yes4[] = {"127.0.0.1", "127.255.0.9"};
    static const char *const no4[] = {"10.0.0.1", "128.0.0.1", "0.0.0.0", "192.168.1.127"};
    for (size_t i = 0; i < 2; i++) {
        v4(&a4, yes4[i]);
        ck_assert(ts_auth_is_loopback((struct sockaddr *)&a4));
    }
    for (size_t i = 0; i < 4; i++) {
        v4(&a4, no4[i]);
        ck_assert(!ts_auth_is_loopback((struct sockaddr *)&a4));
    }
    v6(&a6, "::1");
    ck_assert(ts_auth_is_loopback((struct sockaddr *)&a6));
    v6(&a6, "::ffff:127.0.0.1");
    ck_assert(ts_auth_is_loopback((struct sockaddr *)&a6));
    v6(&a6, "::ffff:10.0.0.1");
    ck_assert(!ts_auth_is_loopback((struct sockaddr *)&a6));
    v6(&a6, "fe80::1");
    ck_assert(!ts_auth_is_loopback((struct sockaddr *)&a6));
    v6(&a6, "::2");
    ck_assert(!ts_auth_is_loopback((struct sockaddr *)&a6));
    ck_assert(!ts_auth_is_loopback(NULL));
}
END_TEST

START_TEST(auth_token_files)
{
    char dir[] = "/tmp/tscale-auth-XXXXXX";
    ck_assert_ptr_nonnull(mkdtemp(dir));
    char path[256], tok[TS_TOKEN_MAX], err[512];
    snprintf(path, sizeof path, "%s/t", dir);
    write_file(path, "s3cret\r\n\n", 9);
    ck_assert_int_eq(ts_auth_load_token(path, tok, err, sizeof err), 0);
    ck_assert_str_eq(tok, "s3cret");
    write_file(path, "\n", 1);
    ck_assert_int_eq(ts_auth_load_token(path, tok, err, sizeof err), -1);
    ck_assert_ptr_nonnull(strstr(err, "empty"));
    write_file(path, "two words\n", 10);
    ck_assert_int_eq(ts_auth_load_token(path, tok, err, sizeof err), -1);
    ck_assert_ptr_null(strstr(err, "two")); /* never echo the content */
    static char big[TS_TOKEN_MAX + 10];
    memset(big, 'a', sizeof big);
    write_file(path, big, sizeof big);
    ck_assert_int_eq(ts_auth_load_token(path, tok, err, sizeof err), -1);
    unlink(path);
    ck_assert_int_eq(ts_auth_load_token(path, tok, err, sizeof err), -1);
    ck_assert_ptr_nonnull(strstr(err, path));
    rmdir(dir);
}
END_TEST

/* ---- config ---- */

static ts_config_result parse(ts_config *c, char *err, const char *a0, ...)
{
    char *argv[32];
    int argc = 0;
    argv[argc++] = "tscaled";
    va_list ap;
    va_start(ap, a0);
    for (const char *a = a0; a; a = va_arg(ap, const char *))
        argv[argc++] = (char *)a;
    va_end(ap);
    FILE *out = fopen("/dev/null", "w");
    ts_config_result r = ts_config_parse(c, argc, argv, out, err, 512);
    fclose(out);
    return r;
}

START_TEST(config_defaults_flags_env)
{
    ts_config c;
    char err[512];
    unsetenv("TSCALE_MAX_BATCH");
    unsetenv("TSCALE_MODEL");
    ck_assert_int_eq(parse(&c, err, NULL), TS_CONFIG_OK);
    ck_assert_str_eq(c.listen, "127.0.0.1:8080");
    ck_assert_str_eq(c.db, "./tscale.db");
    ck_assert_int_eq(c.snapshot_interval, 30);
    ck_assert_int_eq(c.max_batch, 64);
    ck_assert_int_eq(c.max_queue_delay_us, 500);
    ck_assert_int_eq(c.snapshot_keep, 20);
    ck_assert_int_eq(c.feedback_requires_snapshot, 1);
    ck_assert_int_ge(c.threads, 1);
    ck_assert_int_eq(c.max_body_bytes, 64 << 20);
    ck_assert_ptr_null(c.admin_token_file);
    ts_config_free(&c);

    setenv("TSCALE_MAX_BATCH", "7", 1);
    setenv("TSCALE_MODEL", "a=x.st,b=y.st", 1);
    ck_assert_int_eq(parse(&c, err, "--db=/tmp/d", "--max-body-bytes", "2K", "--no-feedback-requires-snapshot",
                           "--threads", "3", NULL), TS_CONFIG_OK);
    ck_assert_int_eq(c.max_batch, 7);
    ck_assert_int_eq(c.n_models, 2);
    ck_assert_str_eq(c.models[1].name, "b");
    ck_assert_str_eq(c.models[1].path, "y.st");
    ck_assert_str_eq(c.db, "/tmp/d");
    ck_assert_int_eq(c.max_body_bytes, 2048);
    ck_assert_int_eq(c.feedback_requires_snapshot, 0);
    ck_assert_int_eq(c.threads, 3);
    ts_config_free(&c);

    /* flags win, --model flags replace TSCALE_MODEL as a whole */
    ck_assert_int_eq(parse(&c, err, "--max-batch", "9", "--model", "c=z.st", NULL), TS_CONFIG_OK);
    ck_assert_int_eq(c.max_batch, 9);
    ck_assert_int_eq(c.n_models, 1);
    ck_assert_str_eq(c.models[0].name, "c");
    ts_config_free(&c);
    /* --model FILE: no name yet (the file names it, recover.c); NAME= twice is refused,
     * FILE twice is left to the names the files give */
    ck_assert_int_eq(parse(&c, err, "--model", "dir/m.safetensors", "--model", "m=dir/m.safetensors",
                           "--model", "dir/m.safetensors", NULL), TS_CONFIG_OK);
    ck_assert_int_eq(c.n_models, 3);
    ck_assert_ptr_null(c.models[0].name);
    ck_assert_str_eq(c.models[0].path, "dir/m.safetensors");
    ck_assert_str_eq(c.models[1].name, "m");
    ts_config_free(&c);
    ck_assert_int_eq(parse(&c, err, "--feedback-requires-snapshot=off", NULL), TS_CONFIG_OK);
    ck_assert_int_eq(c.feedback_requires_snapshot, 0);
    ts_config_free(&c);
    ck_assert_int_eq(parse(&c, err, "--eager-batching", "no", "--db", "x", NULL), TS_CONFIG_OK);
    ck_assert_int_eq(c.eager_batching, 0);
    ck_assert_str_eq(c.db, "x");
    ts_config_free(&c);
    ck_assert_int_eq(parse(&c, err, "--eager-batching", "--db", "x", NULL), TS_CONFIG_OK);
    ck_assert_int_eq(c.eager_batching, 1);
    ts_config_free(&c);
    unsetenv("TSCALE_MAX_BATCH");
    unsetenv("TSCALE_MODEL");
}
END_TEST

START_TEST(config_errors)
{
    ts_config c;
    char err[512];
    static const struct {
        const char *a, *b, *word;
    } bad[] = {
        {"--max-batch", "0", "--max-batch"},
        {"--max-batch", "1x", "whole number"},
        {"--max-body-bytes", "5Q", "suffix"},
        {"--threads", "-1", "range"},
        {"--listen", "8080", "HOST:PORT"},
        {"--listen", "h:99999", "port"},
        {"--log-level", "loud", "debug"},
        {"--model", "=x", "NAME=FILE"},
        {"--model", "x=", "NAME=FILE"},
        {"--feedback-requires-snapshot=maybe", NULL, "yes/no"},
        {"--eager-batching", "yess", "'yess' is not yes/no, true/false, on/off or 1/0"},
        {"--access-log", "loud", "off, debug"},
        {"--nope", NULL, "unknown flag"},
        {"positional", NULL, "unexpected"},
        {"--db", NULL, "needs a value"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        ck_assert_int_eq(parse(&c, err, bad[i].a, bad[i].b, NULL), TS_CONFIG_ERROR);
        ck_assert_msg(strstr(err, bad[i].word), "'%s' lacks '%s'", err, bad[i].word);
    }
    ck_assert_int_eq(parse(&c, err, "--model", "a=1", "--model", "a=2", NULL), TS_CONFIG_ERROR);
    /* a bare boolean still sets it, before another flag or at the end */
    ck_assert_int_eq(parse(&c, err, "--eager-batching", "--max-batch", "8", NULL), TS_CONFIG_OK);
    ck_assert_int_eq(c.eager_batching, 1);
    ts_config_free(&c);
    ck_assert_int_eq(parse(&c, err, "--max-batch", "8", "--no-eager-batching", NULL), TS_CONFIG_OK);
    ck_assert_int_eq(c.eager_batching, 0);
    ts_config_free(&c);
    setenv("TSCALE_SNAPSHOT_INTERVAL", "soon", 1);
    ck_assert_int_eq(parse(&c, err, NULL), TS_CONFIG_ERROR);
    ck_assert_ptr_nonnull(strstr(err, "TSCALE_SNAPSHOT_INTERVAL"));
    /* a variable under a flag is not used, so not checked either */
    ck_assert_int_eq(parse(&c, err, "--snapshot-interval", "5", NULL), TS_CONFIG_OK);
    ck_assert_int_eq(c.snapshot_interval, 5);
    ts_config_free(&c);
    unsetenv("TSCALE_SNAPSHOT_INTERVAL");
    ck_assert_int_eq(parse(&c, err, "--help", NULL), TS_CONFIG_EXIT);
    ck_assert_int_eq(parse(&c, err, "--version", NULL), TS_CONFIG_EXIT);
    ck_assert_int_eq(parse(&c, err, "-h", NULL), TS_CONFIG_EXIT);
    ck_assert_int_eq(parse(&c, err, "--db", "x", "-V", NULL), TS_CONFIG_EXIT);
    ck_assert_int_eq(parse(&c, err, "-v", NULL), TS_CONFIG_ERROR);
}
END_TEST

START_TEST(config_listen_split)
{
    char host[64], err[256];
    int port;
    ck_assert_int_eq(ts_config_split_listen("0.0.0.0:80", host, sizeof host, &port, err, sizeof err), 0);
    ck_assert_str_eq(host, "0.0.0.0");
    ck_assert_int_eq(port, 80);
    ck_assert_int_eq(ts_config_split_listen("[::1]:0", host, sizeof host, &port, err, sizeof err), 0);
    ck_assert_str_eq(host, "::1");
    ck_assert_int_eq(port, 0);
    ck_assert_int_eq(ts_config_split_listen(":80", host, sizeof host, &port, err, sizeof err), -1);
    ck_assert_int_eq(ts_config_split_listen("h:", host, sizeof host, &port, err, sizeof err), -1);
    ck_assert_int_eq(ts_config_split_listen("h:-1", host, sizeof host, &port, err, sizeof err), -1);
}
END_TEST

/* ---- framing ---- */

/* The verdict on a list of "name", "value" pairs ending with NULL. */
static int framing_of(const char *first, ...)
{
    ts_framing f;
    ts_framing_init(&f);
    va_list ap;
    va_start(ap, first);
    for (const char *name = first; name; name = va_arg(ap, const char *))
        ts_framing_add(&f, name, va_arg(ap, const char *));
    va_end(ap);
    char err[256] = "";
    int v = ts_framing_verdict(&f, err, sizeof err);
    ck_assert(v == 0 || err[0]);
    return v;
}

START_TEST(framing_verdicts)
{
    ck_assert_int_eq(framing_of("Host", "x", "Content-Length", "5", NULL), 0);
    ck_assert_int_eq(framing_of("Transfer-Encoding", "Chunked", NULL), 0);
    ck_assert_int_eq(framing_of("Host", "x", NULL), 0);
    /* Request smuggling: two lengths (even equal ones), a length beside chunked. */
    ck_assert_int_eq(framing_of("Content-Length", "5", "content-length", "7", NULL), 400);
    ck_assert_int_eq(framing_of("Content-Length", "5", "Content-Length", "5", NULL), 400);
    ck_assert_int_eq(framing_of("Content-Length", "5", "Transfer-Encoding", "chunked", NULL), 400);
    ck_assert_int_eq(framing_of("Transfer-Encoding", "chunked", "Content-Length", "0", NULL), 400);
    ck_assert_int_eq(framing_of("Content-Length", "+5", NULL), 400);
    ck_assert_int_eq(framing_of("Content-Length", "5, 5", NULL), 400);
    ck_assert_int_eq(framing_of("Content-Length", "", NULL), 400);
    ck_assert_int_eq(framing_of("Content-Length", "4611686018427387904000", NULL), 0);
    ck_assert_int_eq(framing_of("Host", "a", "Host", "b", NULL), 400);
    ck_assert_int_eq(framing_of("Transfer-Encoding", "gzip, chunked", NULL), 501);
    ck_assert_int_eq(framing_of("Transfer-Encoding", "chunked", "Transfer-Encoding", "chunked", NULL), 501);
    ts_framing f;
    ts_framing_init(&f);
    ts_framing_add(&f, "content-LENGTH", "999999999999999999");
    ck_assert_int_eq(f.content_length, 999999999999999999LL);
    ts_framing_init(&f);
    ts_framing_add(&f, "Content-Length", "9223372036854775808");
    ck_assert_int_eq(f.content_length, INT64_MAX);
}
END_TEST

/* ---- connection deadlines ---- */

/* 1 when the peer of sv[0] was shut down (its reads see the end of the stream). */
static int was_shut(int fd)
{
    char c;
    return recv(fd, &c, 1, MSG_DONTWAIT) == 0;
}

START_TEST(conns_deadlines_and_soft_limit)
{
    int a[2], b[2], c[2];
    ck_assert_int_eq(socketpair(AF_UNIX, SOCK_STREAM, 0, a), 0);
    ck_assert_int_eq(socketpair(AF_UNIX, SOCK_STREAM, 0, b), 0);
    ck_assert_int_eq(socketpair(AF_UNIX, SOCK_STREAM, 0, c), 0);
    ts_conns *cs = ts_conns_new(2, 10000000, 60000000); /* head 10 s, body 60 s */
    ts_conn *ca = ts_conns_open(cs, a[0], 0), *cb = ts_conns_open(cs, b[0], 0);
    ts_conn *cc = ts_conns_open(cs, c[0], 0);
    ck_assert_int_eq(ts_conns_count(cs), 3);
    ck_assert(!ts_conns_over(ca) && !ts_conns_over(cb) && ts_conns_over(cc));
    /* a trickles its head: phase changes only when the head is complete */
    ts_conns_phase(cs, cb, TS_CONN_BODY, 5000000);
    ck_assert_int_eq(ts_conns_expire(cs, 2000000), 0);
    ck_assert_int_eq(ts_conns_expire(cs, 2000001), 1);  /* c: over the limit, 2 s head */
    ck_assert(was_shut(c[1]) && !was_shut(a[1]) && !was_shut(b[1]));
    ck_assert_int_eq(ts_conns_expire(cs, 10000001), 1);  /* a: past --header-timeout */
    ck_assert(was_shut(a[1]) && !was_shut(b[1]));
    ck_assert_int_eq(ts_conns_expire(cs, 60000000), 0);  /* each is shut down once */
    ts_conns_phase(cs, cb, TS_CONN_SERVING, 6000000);    /* the daemon's own time: no limit */
    ck_assert_int_eq(ts_conns_expire(cs, 1000000000), 0);
    ts_conns_phase(cs, cb, TS_CONN_HEAD, 1000000000);    /* kept alive: a new head deadline */
    ck_assert_int_eq(ts_conns_expire(cs, 1010000001), 1);
    ck_assert(was_shut(b[1]));
    ts_conns_close(cs, cc);
    ck_assert_int_eq(ts_conns_count(cs), 2);
    ck_assert(ts_conns_over(ts_conns_open(cs, -1, 0)));  /* a and b hold the 2 slots */
    ts_conns_close(cs, ca);
    ck_assert(ts_conns_over(ts_conns_open(cs, -1, 0)));  /* b and the one above */
    ts_conns_free(cs); /* frees what is still registered */
    for (int i = 0; i < 2; i++) {
        close(a[i]);
        close(b[i]);
        close(c[i]);
    }
}
END_TEST

/* ---- hash ---- */

START_TEST(hash_stable_and_sensitive)
{
    uint8_t buf[1000];
    for (int i = 0; i < 1000; i++)
        buf[i] = (uint8_t)(i * 7);
    uint64_t h = ts_hash_bytes(buf, sizeof buf);
    ck_assert_uint_eq(h, ts_hash_bytes(buf, sizeof buf));
    /* Stored in databases: the value must never change between builds. */
    ck_assert_uint_eq(ts_hash_bytes((const uint8_t *)"", 0), ts_hash_bytes(buf, 0));
    for (int i = 0; i < 1000; i += 37) {
        buf[i] ^= 1;
        ck_assert_uint_ne(ts_hash_bytes(buf, sizeof buf), h);
        buf[i] ^= 1;
    }
    ck_assert_uint_ne(ts_hash_bytes(buf, 999), h);
    uint8_t zeros[16] = {0};
    ck_assert_uint_ne(ts_hash_bytes(zeros, 8), ts_hash_bytes(zeros, 16));
}
END_TEST

/* Word-wise FNV-1a: stored in databases (snapshot and journal checksums), so its definition
 * is pinned here: one step per little-endian 8-byte word, then the tail byte by byte. */
START_TEST(fnv1a_words_definition)
{
    uint8_t buf[19];
    for (int i = 0; i < 19; i++)
        buf[i] = (uint8_t)(i * 29 + 3);
    uint64_t w0 = 0, w1 = 0;
    for (int i = 7; i >= 0; i--) {
        w0 = w0 << 8 | buf[i];
        w1 = w1 << 8 | buf[8 + i];
    }
    uint64_t h = ((TS_FNV_OFFSET ^ w0) * TS_FNV_PRIME ^ w1) * TS_FNV_PRIME;
    ck_assert_uint_eq(ts_fnv1a_words(TS_FNV_OFFSET, buf, 16), h);
    uint64_t all = ts_fnv1a(h, buf + 16, 3);
    ck_assert_uint_eq(ts_fnv1a_words(TS_FNV_OFFSET, buf, 19), all);
    ck_assert_uint_eq(ts_fnv1a_words(42, buf, 0), 42);
    for (int i = 0; i < 19; i++) { /* a flipped bit anywhere, the tail too, shows */
        buf[i] ^= 4;
        ck_assert_uint_ne(ts_fnv1a_words(TS_FNV_OFFSET, buf, 19), all);
        buf[i] ^= 4;
    }
}
END_TEST

/* An engine on its own loop and feedback window, as the daemon makes one (the engine tests'
 * common ground). */
typedef struct {
    uv_loop_t loop;
    ts_window *w;
    ts_engine *e;
} engine_rig;

static void rig_open(engine_rig *r, ts_engine_config cfg) {
    char err[256];
    ck_assert_int_eq(uv_loop_init(&r->loop), 0);
    ts_window_limits lim = {0};
    r->w = ts_window_new(&lim);
    ck_assert_ptr_nonnull(r->w);
    cfg.max_batch = 8;
    cfg.window = r->w;
    r->e = ts_engine_new(&r->loop, &cfg, err, sizeof err);
    ck_assert_msg(r->e != NULL, "%s", err);
}

static ts_served *rig_add(engine_rig *r, const char *name, ts_model *m) {
    ck_assert_ptr_nonnull(m);
    ts_served *s = ts_engine_add(r->e, name, m, 1);
    ck_assert_ptr_nonnull(s);
    return s;
}

/* Frees the engine; its loop must then have nothing left to run. */
static void rig_close(engine_rig *r) {
    ts_engine_free(r->e);
    ck_assert_int_eq(uv_run(&r->loop, UV_RUN_DEFAULT), 0);
    ck_assert_int_eq(uv_loop_close(&r->loop), 0);
    ts_window_free(r->w);
}

/* A held model (what a published state is written from off the loop) outlives its swap and
 * its removal, and the last release frees it (ASan: a use after free or a leak fails). */
START_TEST(engine_model_hold_outlives_swap_and_remove)
{
    char err[256];
    engine_rig r;
    rig_open(&r, (ts_engine_config){0});
    ts_engine *e = r.e;
    ts_model *a = ts_model_demo(err, sizeof err), *b = ts_model_demo(err, sizeof err);
    ck_assert_ptr_nonnull(b);
    ts_served *s = rig_add(&r, "m", a);
    ck_assert_int_eq(ts_engine_model_hold(e, a), 0);
    ck_assert_int_eq(ts_engine_model_hold(e, a), 0); /* holds nest */
    ts_engine_swap(e, s, b, 2);
    ck_assert_ptr_eq(s->model, b);
    ck_assert_int_eq(ts_model_step(a), 0); /* still allocated */
    ts_engine_model_release(e, a);
    ck_assert_int_eq((int)a->in_dim, 16); /* one hold left */
    ts_engine_model_release(e, a); /* freed here */
    ck_assert_int_eq(ts_engine_model_hold(e, b), 0);
    ts_engine_remove(e, s);
    ck_assert_int_eq((int)b->out_dim, 4); /* removed, still held */
    ts_engine_model_release(e, b);
    ck_assert_int_eq(ts_engine_count(e), 0);
    rig_close(&r);
}
END_TEST

/* A control item runs exactly once: at once on an idle model, and when its model is removed
 * while the item still waits, from ts_engine_remove with s->removed set, so that what it
 * holds is let go (ASan: the arg below leaks if it is not). */
typedef struct {
    int runs, removed;
    char *held;
} control_probe;

static void probe_control(ts_engine *e, ts_served *s, void *arg) {
    (void)e;
    control_probe *p = arg;
    p->runs++;
    p->removed = s->removed;
    free(p->held);
    p->held = NULL;
}

START_TEST(engine_control_runs_once_also_when_cancelled)
{
    char err[256];
    engine_rig r;
    rig_open(&r, (ts_engine_config){0});
    ts_engine *e = r.e;
    ts_served *s = rig_add(&r, "m", ts_model_demo(err, sizeof err));
    control_probe idle = {.held = malloc(16)}, queued = {.held = malloc(16)};
    ck_assert_int_eq(ts_engine_control(e, s, probe_control, &idle), 0);
    ck_assert_int_eq(idle.runs, 1); /* idle model: at once */
    ck_assert_int_eq(idle.removed, 0);
    ts_engine_hold(e); /* nothing runs now: the item waits in the FIFO */
    ck_assert_int_eq(ts_engine_control(e, s, probe_control, &queued), 0);
    ck_assert_int_eq(queued.runs, 0);
    ts_engine_remove(e, s);
    ck_assert_int_eq(queued.runs, 1);
    ck_assert_int_eq(queued.removed, 1);
    ck_assert_ptr_null(queued.held);
    ts_engine_release(e);
    ck_assert_int_eq(queued.runs, 1); /* not again */
    rig_close(&r);
}
END_TEST

/* What the engine asks of replication goes through ts_engine_repl (engine.h), whatever sits
 * above wires in: a model not ready refuses feedback 503 with the hook's reason, and a by-id
 * feedback this replica never held is asked of the others (their refusal is the answer),
 * unless it came from another replica. */
typedef struct {
    int asks;
    char asked[64];
} fake_repl;

static int fake_model_ready(void *ctx, const char *model, const char **why) {
    *why = "fake: NATS is down";
    return strcmp(model, "down") != 0;
}

static int fake_ask(void *ctx, const char *model, const char *version, const ts_oip_request *oip,
                    ts_byid_cb cb, void *arg, char *err, size_t errlen) {
    fake_repl *f = ctx;
    f->asks++;
    snprintf(f->asked, sizeof f->asked, "%s/%s", model, oip->id);
    snprintf(err, errlen, "fake: too many forwards");
    return 503;
}

typedef struct {
    ts_req req;  /* first: reply_fn gets it back */
    int status;
    char body[1024];
} test_req;

static void test_reply(ts_req *req, int status, void *body, size_t len) {
    test_req *t = (test_req *)req;
    t->status = status;
    snprintf(t->body, sizeof t->body, "%.*s", (int)len, body ? (const char *)body : "");
    free(body);
}

/* Feedback of one target row for inference `id` (no input: by id) on model s; the answer. */
static void feedback_by_id(ts_engine *e, ts_served *s, int from_replica, test_req *t) {
    static const char json[] = "{\"id\":\"client-7\",\"inputs\":[{\"name\":\"target\",\"shape\":[1,4],"
                               "\"datatype\":\"FP32\",\"data\":[0,1,0,0]}]}";
    char err[256];
    memset(t, 0, sizeof *t);
    t->req.reply_fn = test_reply;
    t->req.from_replica = from_replica;
    ck_assert_msg(ts_oip_parse_request((const uint8_t *)json, strlen(json), -1, NULL, &t->req.oip, err,
                                       sizeof err) == 0, "%s", err);
    ts_engine_feedback(e, s, &t->req);
    ts_oip_request_free(&t->req.oip);
}

START_TEST(engine_asks_replication_through_its_hooks)
{
    char err[256];
    fake_repl f = {0};
    engine_rig r;
    rig_open(&r, (ts_engine_config){.repl = {.ctx = &f, .model_ready = fake_model_ready, .ask = fake_ask}});
    ts_engine *e = r.e;
    ts_served *down = rig_add(&r, "down", ts_model_demo(err, sizeof err));
    ts_served *up = rig_add(&r, "up", ts_model_demo(err, sizeof err));
    test_req t;
    feedback_by_id(e, down, 0, &t);
    ck_assert_int_eq(t.status, 503);
    ck_assert_ptr_nonnull(strstr(t.body, "replication is not available (fake: NATS is down)"));
    ck_assert_int_eq(f.asks, 0);
    feedback_by_id(e, up, 0, &t);
    ck_assert_int_eq(t.status, 503);
    ck_assert_ptr_nonnull(strstr(t.body, "fake: too many forwards"));
    ck_assert_int_eq(f.asks, 1);
    ck_assert_str_eq(f.asked, "up/client-7");
    feedback_by_id(e, up, 1, &t); /* forwarded to us: answered here, never asked on */
    ck_assert_int_eq(t.status, 404);
    ck_assert_ptr_nonnull(strstr(t.body, "no inference with id 'client-7'"));
    ck_assert_int_eq(f.asks, 1);
    ck_assert(ts_engine_idle(e));
    ts_engine_remove(e, down);
    ts_engine_remove(e, up);
    rig_close(&r);
}
END_TEST

static Suite *server_suite(void)
{
    Suite *s = suite_create("server");
    TCase *tc = tcase_create("all");
    tcase_add_test(tc, route_endpoints);
    tcase_add_test(tc, engine_model_hold_outlives_swap_and_remove);
    tcase_add_test(tc, engine_control_runs_once_also_when_cancelled);
    tcase_add_test(tc, engine_asks_replication_through_its_hooks);
    tcase_add_test(tc, route_refusals);
    tcase_add_test(tc, route_names);
    tcase_add_test(tc, auth_equal_and_check);
    tcase_add_test(tc, auth_loopback);
    tcase_add_test(tc, auth_token_files);
    tcase_add_test(tc, config_defaults_flags_env);
    tcase_add_test(tc, config_errors);
    tcase_add_test(tc, config_listen_split);
    tcase_add_test(tc, framing_verdicts);
    tcase_add_test(tc, conns_deadlines_and_soft_limit);
    tcase_add_test(tc, hash_stable_and_sensitive);
    tcase_add_test(tc, fnv1a_words_definition);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    return run_suite(server_suite());
}
