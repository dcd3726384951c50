/* conns.h — the connection budget: deadlines and the soft connection limit.
 *
 * libmicrohttpd's own timeout (--request-timeout) counts idle time only, so a client that
 * trickles one header byte a second holds its connection forever, and twenty such clients
 * held every slot (health probes then timed out). Here every connection has a phase and
 * the time it entered it:
 *   HEAD     from accept, or from the previous response on a kept-alive connection, until
 *            the request's headers are complete: at most --header-timeout;
 *   BODY     until the body is complete: at most --body-timeout;
 *   SERVING  the daemon's own work and the response: no deadline here.
 * ts_conns_expire (a timer on the loop) shuts down the socket of a connection past its
 * deadline; libmicrohttpd then sees the end of the stream and closes it.
 *
 * The soft limit: libmicrohttpd accepts up to --max-connections plus a spare band. A
 * connection accepted beyond --max-connections is marked `over`: it is answered only for
 * the health and metrics endpoints (so probes keep working when the daemon is full), every
 * other request gets a fast 503, and its HEAD deadline is short (TS_CONNS_OVER_HEAD_US).
 *
 * Threads: open/close/phase on libmicrohttpd's threads, expire on the loop; one mutex.
 * The fd stays valid while its entry is registered: libmicrohttpd reports a connection
 * closed (ts_conns_close) before it closes the socket.
 */
#ifndef TS_CONNS_H
#define TS_CONNS_H

#include <stdint.h>

#define TS_CONNS_OVER_HEAD_US 2000000u

typedef enum { TS_CONN_HEAD, TS_CONN_BODY, TS_CONN_SERVING } ts_conn_phase;

typedef struct ts_conn ts_conn;
typedef struct ts_conns ts_conns;

/* soft_limit: --max-connections; head_us / body_us: the deadlines (0 = none). NULL when
 * out of memory. */
ts_conns *ts_conns_new(int64_t soft_limit, uint64_t head_us, uint64_t body_us);
void ts_conns_free(ts_conns *cs);

/* A connection was accepted on fd at now_us (phase HEAD). NULL when out of memory (the
 * connection then has no deadline; libmicrohttpd's idle timeout still applies). */
ts_conn *ts_conns_open(ts_conns *cs, int fd, uint64_t now_us);
/* It is closed (before its socket is): unregister and free it. NULL is ignored. */
void ts_conns_close(ts_conns *cs, ts_conn *c);
/* It entered phase at now_us. NULL is ignored. */
void ts_conns_phase(ts_conns *cs, ts_conn *c, ts_conn_phase phase, uint64_t now_us);
/* 1 when it was accepted beyond the soft limit. */
int ts_conns_over(const ts_conn *c);

/* Shut down every connection past its phase's deadline at now_us (each once); returns how
 * many this call shut down. */
int ts_conns_expire(ts_conns *cs, uint64_t now_us);
/* Connections registered now. */
int64_t ts_conns_count(ts_conns *cs);

#endif
