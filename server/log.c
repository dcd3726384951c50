/* log.c — timestamped one-line events on stderr (see log.h). */
#include "server/log.h"

#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

/* The threshold is process-wide configuration set once at start; atomic because the HTTP,
 * compute and persistence threads all read it. */
static _Atomic int log_threshold = TS_LOG_INFO;

static const char *const level_names[] = {"debug", "info", "warn", "error"};

void ts_log_set_level(ts_log_level level) { atomic_store(&log_threshold, (int)level); }

int ts_log_level_parse(const char *name, ts_log_level *out) {
    for (int i = 0; i <= TS_LOG_ERROR; i++)
        if (strcmp(name, level_names[i]) == 0) {
            *out = (ts_log_level)i;
            return 0;
        }
    return -1;
}

void ts_log(ts_log_level level, const char *fmt, ...) {
    if ((int)level < atomic_load(&log_threshold))
        return;
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    struct tm tm;
    gmtime_r(&ts.tv_sec, &tm);
    char msg[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    /* Keep the line a line: a message that carries a newline (e.g. from a library) would
     * otherwise split one event over two lines. */
    for (char *p = msg; *p; p++)
        if (*p == '\n' || *p == '\r')
            *p = ' ';
    fprintf(stderr, "%04d-%02d-%02dT%02d:%02d:%02d.%03ldZ tscaled[%d] %s: %s\n", tm.tm_year + 1900,
            tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec, ts.tv_nsec / 1000000L,
            (int)getpid(), level_names[level], msg);
}
