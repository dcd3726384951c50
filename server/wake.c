/* wake.c — wake the loop from another thread (see wake.h). */
#include "server/wake.h"

#include <errno.h>
#include <stdint.h>
#include <sys/eventfd.h>
#include <unistd.h>

/* Loop thread: the eventfd is readable. Reset it, clear the flag, then run the callback:
 * a send that lands after the clear writes again, so the loop comes back for it. */
static void on_readable(uv_poll_t *p, int status, int events) {
    (void)status;
    (void)events;
    ts_wake *w = (ts_wake *)p;
    uint64_t n;
    while (read(w->fd, &n, sizeof n) < 0 && errno == EINTR)
        ;
    atomic_store(&w->armed, 0);
    w->cb(p->data);
}

int ts_wake_init(uv_loop_t *loop, ts_wake *w, void (*cb)(void *data), void *data) {
    w->fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    if (w->fd < 0)
        return -errno;
    atomic_init(&w->armed, 0);
    w->cb = cb;
    int rc = uv_poll_init(loop, &w->poll, w->fd);
    if (rc == 0)
        rc = uv_poll_start(&w->poll, UV_READABLE, on_readable);
    if (rc != 0) {
        close(w->fd);
        w->fd = -1;
        return rc;
    }
    w->poll.data = data;
    return 0;
}

void ts_wake_send(ts_wake *w) {
    if (atomic_exchange(&w->armed, 1))
        return; /* written already; the loop has not run the callback yet */
    uint64_t one = 1;
    while (write(w->fd, &one, sizeof one) < 0 && errno == EINTR)
        ;
}

void ts_wake_close(ts_wake *w, uv_close_cb closed) {
    uv_close((uv_handle_t *)&w->poll, closed); /* stops polling: the fd can go now */
    close(w->fd);
    w->fd = -1;
}
