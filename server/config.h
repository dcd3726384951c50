/* config.h — the daemon's configuration (SPEC §3).
 *
 * One table in config.c drives everything about a setting: its flag, its environment
 * variable (TSCALE_<FLAG>, dashes as underscores), its default, its bounds, and its line
 * in --help. Precedence: defaults, then the environment, then flags (flags win).
 */
#ifndef TS_CONFIG_H
#define TS_CONFIG_H

#include <stdint.h>
#include <stdio.h>

typedef struct {
    char *name;   /* NAME of --model NAME=FILE; NULL for --model FILE (named when the file
                     is read: its tscale.name, else its file name, see recover.h) */
    char *path;   /* FILE */
} ts_model_arg;

typedef struct {
    char *listen;                  /* HOST:PORT */
    char *db;
    ts_model_arg *models;          /* --model, repeatable */
    int n_models;
    int64_t snapshot_interval;     /* seconds; 0 = no timer */
    int64_t snapshot_keep;         /* snapshots kept per model; 0 = all */
    int64_t feedback_requires_snapshot; /* bool: refuse feedback while snapshots fail */
    int64_t journal;                    /* bool: answer feedback once journaled (journal.h) */
    int64_t feedback_id_window;         /* seconds an OIP id of a feedback is remembered */
    int64_t feedback_id_bytes;          /* memory for the remembered ids (oldest forgotten first) */
    int64_t feedback_window_rows;       /* feedback by id: input rows kept per model (window.h) */
    int64_t feedback_window_bytes;      /* feedback by id: bytes kept, all models */
    int64_t feedback_window_seconds;    /* feedback by id: how long an input is kept */
    int64_t threads;               /* compute threads (resolved: >= 1) */
    int64_t max_batch;             /* rows per forward */
    int64_t max_queue_delay_us;
    int64_t eager_batching;        /* bool: start early when nothing else can join */
    char *admin_token_file;
    char *feedback_token_file;
    char *allowed_hosts;           /* extra Host names for tokenless /admin and feedback */
    int64_t max_body_bytes;        /* per request body */
    int64_t max_buffered_bytes;    /* all request bodies being received together */
    int64_t max_rows;              /* rows per request */
    int64_t max_queue_rows;        /* rows waiting, all models */
    int64_t max_queue_bytes;       /* tensor bytes waiting, all models */
    int64_t max_response_bytes;    /* an inference answer's size bound */
    int64_t max_connections;
    int64_t max_connections_per_client; /* 0 = half of max_connections (resolved) */
    int64_t request_timeout;       /* seconds of client inactivity before a connection closes */
    int64_t header_timeout;        /* seconds for a request's whole head */
    int64_t body_timeout;          /* seconds for a request's whole body */
    int64_t http_threads;          /* libmicrohttpd polling threads */
    char *log_level;
    /* replication (repl.h); replicate NULL = off */
    char *replicate;               /* nats://h:p[,nats://h2:p...]; "" is off too */
    char *replica_id;              /* NULL: hostname:port of listen */
    char *replicate_token_file;
    char *replicate_stream;
    int64_t replicate_ack_timeout_ms;
    int64_t replicate_max_age;     /* seconds, when the stream is created */
    int64_t replicate_replicas;    /* when the stream is created */
    int64_t replicate_state_interval; /* seconds between published states; 0 = derived */
    int64_t replicate_batch_ms;    /* summing window (repl.h); 0 = a message per step */
    int64_t replicate_batch_max;   /* steps per summed message */
    int64_t forward_timeout_ms;    /* feedback by id forwarded to the holder (forward.h) */
    int64_t forward_answer_timeout_ms;
    char *access_log;              /* "off" or a log level */
} ts_config;

typedef enum { TS_CONFIG_OK, TS_CONFIG_EXIT, TS_CONFIG_ERROR } ts_config_result;

/* Fill cfg from defaults, the environment (envp-style lookups through getenv) and
 * argv[1..argc-1]. TS_CONFIG_EXIT: --help or --version was printed to out; exit 0.
 * TS_CONFIG_ERROR: err holds a message naming the flag (or variable) and the problem. */
ts_config_result ts_config_parse(ts_config *cfg, int argc, char **argv, FILE *out, char *err,
                                 size_t errlen);
void ts_config_free(ts_config *cfg);

/* The TSCALE_* variables of envp (NAME=value strings, NULL-terminated) that are no setting:
 * a misspelt one would otherwise be ignored without a word. Their names, comma-separated,
 * go to out[outlen] (as many as fit); returns how many there are. */
int ts_config_unknown_env(char *const *envp, char *out, size_t outlen);

/* The --help text. */
void ts_config_usage(FILE *out);

/* Split "HOST:PORT" ("[v6]:PORT" too) into host[hostlen] and *port. 0, or -1 + err. */
int ts_config_split_listen(const char *listen, char *host, size_t hostlen, int *port, char *err,
                           size_t errlen);

#endif
