/* natsmsg.c — Tscale-* headers of NATS messages (see natsmsg.h). */
#include "server/repl/natsmsg.h"

#include <errno.h>
#include <stdlib.h>

const char *ts_natsmsg_header(natsMsg *m, const char *key) {
    const char *v = NULL;
    return natsMsgHeader_Get(m, key, &v) == NATS_OK ? v : NULL;
}

int ts_natsmsg_int(natsMsg *m, const char *key, int64_t *out) {
    const char *s = ts_natsmsg_header(m, key);
    char *end;
    if (!s || !*s)
        return -1;
    errno = 0;
    long long v = strtoll(s, &end, 10);
    if (errno || *end || v < 0)
        return -1;
    *out = v;
    return 0;
}
