/* mhd_baseline.c — a bare libmicrohttpd server that reads the request body and answers
 * every request with a fixed inference-shaped JSON response. It uses the same MHD mode as
 * tscaled (one internal epoll polling thread), so `wrk` against it gives the ceiling the
 * daemon's HTTP path is compared with (bench/http_bench.sh):
 *
 *   build/mhd-baseline [PORT]        (default 8090; Ctrl-C to stop)
 */
#include <microhttpd.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static const char answer[] =
    "{\"model_name\":\"demo\",\"model_version\":\"1\",\"outputs\":[{\"name\":\"output\","
    "\"datatype\":\"FP32\",\"shape\":[1,4],\"data\":[0.00048683272,0.00043558716,"
    "0.00050142023,-0.00015588509]}]}";

static enum MHD_Result on_access(void *cls, struct MHD_Connection *conn, const char *url,
                                 const char *method, const char *version, const char *data,
                                 size_t *size, void **con_cls) {
    (void)cls, (void)url, (void)method, (void)version, (void)data;
    static int marker;
    if (!*con_cls) { /* headers: wait for the body */
        *con_cls = &marker;
        return MHD_YES;
    }
    if (*size) { /* body bytes: consume and drop */
        *size = 0;
        return MHD_YES;
    }
    struct MHD_Response *r =
        MHD_create_response_from_buffer(sizeof answer - 1, (void *)answer, MHD_RESPMEM_PERSISTENT);
    MHD_add_response_header(r, MHD_HTTP_HEADER_CONTENT_TYPE, "application/json");
    enum MHD_Result ok = MHD_queue_response(conn, MHD_HTTP_OK, r);
    MHD_destroy_response(r);
    return ok;
}

static volatile sig_atomic_t stop;
static void on_signal(int sig) { (void)sig; stop = 1; }

int main(int argc, char **argv) {
    int port = argc > 1 ? atoi(argv[1]) : 8090;
    struct MHD_Daemon *d = MHD_start_daemon(MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_EPOLL,
                                            (uint16_t)port, NULL, NULL, on_access, NULL,
                                            MHD_OPTION_CONNECTION_LIMIT, 1024u, MHD_OPTION_END);
    if (!d) {
        fprintf(stderr, "mhd-baseline: cannot listen on port %d\n", port);
        return 1;
    }
    fprintf(stderr, "mhd-baseline: listening on http://127.0.0.1:%d\n", port);
    signal(SIGINT, on_signal);
    signal(SIGTERM, on_signal);
    while (!stop)
        pause();
    MHD_stop_daemon(d);
    return 0;
}
