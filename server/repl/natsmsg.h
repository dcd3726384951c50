/* natsmsg.h — reading the Tscale-* headers of a NATS message: replication's deltas (repl.h)
 * and feedback forwarding's requests and answers (forward.h) carry their metadata there.
 * Any thread. */
#ifndef TS_NATSMSG_H
#define TS_NATSMSG_H

#include <nats/nats.h>
#include <stdint.h>

/* The value of header key, or NULL when m has none. Owned by m. */
const char *ts_natsmsg_header(natsMsg *m, const char *key);
/* Header key as a non-negative decimal integer into *out: 0, or -1 when absent or not one
 * (nothing written). */
int ts_natsmsg_int(natsMsg *m, const char *key, int64_t *out);

#endif
