/* log.h — the daemon's event log: one line per event on stderr.
 *
 *   2024-05-01T12:00:00.123Z tscaled[4242] info: listening on http://127.0.0.1:8080
 *
 * Never pass request contents or tokens here (SPEC §3, §5): callers log names, sizes,
 * counts and error messages only. One fprintf per line, so lines from different threads
 * never interleave (stdio locks the stream per call).
 */
#ifndef TS_LOG_H
#define TS_LOG_H

typedef enum { TS_LOG_DEBUG, TS_LOG_INFO, TS_LOG_WARN, TS_LOG_ERROR } ts_log_level;

/* Lines below level are dropped. The default is TS_LOG_INFO. */
void ts_log_set_level(ts_log_level level);
/* "debug", "info", "warn", "error" -> 0, or -1 when unknown. */
int ts_log_level_parse(const char *name, ts_log_level *out);

void ts_log(ts_log_level level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

#define ts_log_debug(...) ts_log(TS_LOG_DEBUG, __VA_ARGS__)
#define ts_log_info(...) ts_log(TS_LOG_INFO, __VA_ARGS__)
#define ts_log_warn(...) ts_log(TS_LOG_WARN, __VA_ARGS__)
#define ts_log_error(...) ts_log(TS_LOG_ERROR, __VA_ARGS__)

#endif
