/* wake.h — wake the loop from another thread (MHD's thread, the persistence thread).
 *
 * Why not uv_async_t: in libuv 1.44 (Debian 12) every wake-up of the loop walks all the
 * loop's async handles and, for each one whose sender is between "pending" and the end of
 * its write() to the shared eventfd, spins (997 pauses, then sched_yield, again). On a
 * small machine whose threads outnumber its cores a sender is often preempted right
 * there: a profile of 16 clients sending feedback on 2 cores found 10 % of the loop
 * thread's time in that spin. A ts_wake has an eventfd of its own, watched with a
 * uv_poll_t, and an atomic "armed" flag: a sender writes only when the flag was clear, the
 * loop clears it before it runs the callback, so nothing is ever lost or waited for.
 *
 * Lifecycle: ts_wake_init (loop thread) → ts_wake_send (any thread, any number of times) →
 * ts_wake_close (loop thread; no send may follow it) → the close callback.
 * The callback runs on the loop after one or more sends; the sender's data must already be
 * where the callback looks (e.g. pushed onto a mutex-guarded list before the send).
 */
#ifndef TS_WAKE_H
#define TS_WAKE_H

#include <stdatomic.h>
#include <uv.h>

typedef struct ts_wake {
    uv_poll_t poll;               /* poll.data is the caller's data (also in the close callback) */
    int fd;                       /* eventfd */
    _Atomic int armed;            /* a send has written and the loop has not run the callback yet */
    void (*cb)(void *data);       /* loop thread */
} ts_wake;

/* 0, or a negative errno (no eventfd, or the poll handle failed; nothing to close then). */
int ts_wake_init(uv_loop_t *loop, ts_wake *w, void (*cb)(void *data), void *data);
/* Any thread: make the loop run the callback soon. Async-signal-safe. */
void ts_wake_send(ts_wake *w);
/* Loop thread: stop and close; closed(handle) runs later with handle->data = data. */
void ts_wake_close(ts_wake *w, uv_close_cb closed);

#endif
