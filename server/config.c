/* config.c — table-driven configuration (see config.h).
 *
 * Like Redis' config.c, a setting exists in exactly one place: its row in `options`.
 * Parsing flags, reading TSCALE_* variables, applying defaults, checking bounds and
 * printing --help all walk that table, so they cannot drift apart. Precedence: a flag
 * replaces its variable entirely (TSCALE_MODEL included: --model flags replace the list).
 */
#include "server/config.h"

#include <ctype.h>
#include <errno.h>
#include <limits.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#include "server/log.h"

typedef enum {
    OPT_STRING,  /* char * */
    OPT_INT,     /* int64_t within [min, max] */
    OPT_BYTES,   /* int64_t within [min, max], with an optional K/M/G suffix (powers of 1024) */
    OPT_BOOL,    /* int64_t 0/1: yes/no, true/false, on/off, 1/0; "--flag" alone and
                    "--no-flag" too */
    OPT_MODEL,   /* repeatable [NAME=]FILE, appended to models[] */
    OPT_HELP,    /* action flags: take no value, not read from the environment */
    OPT_VERSION,
} opt_type;

typedef struct {
    const char *name;     /* flag without the leading "--" */
    opt_type type;
    size_t offset;        /* field in ts_config */
    const char *def;      /* default as text; NULL = unset */
    int64_t min, max;     /* OPT_INT / OPT_BYTES bounds */
    const char *metavar;
    const char *help;
    int (*check)(const char *value, char *err, size_t errlen);  /* extra validation */
} ts_option;

static int check_listen(const char *v, char *err, size_t errlen);
static int check_log_level(const char *v, char *err, size_t errlen);
static int check_nats_urls(const char *v, char *err, size_t errlen);
static int check_stream(const char *v, char *err, size_t errlen);
static int check_access_log(const char *v, char *err, size_t errlen);

#define F(field) offsetof(ts_config, field)
#define MIB ((int64_t)1 << 20)
static const ts_option options[] = {
    {"listen", OPT_STRING, F(listen), "127.0.0.1:8080", 0, 0, "HOST:PORT",
     "HTTP address; port 0 picks a free port and logs it", check_listen},
    {"db", OPT_STRING, F(db), "./tscale.db", 0, 0, "PATH",
     "SQLite database; created and migrated on first start", NULL},
    {"model", OPT_MODEL, 0, NULL, 0, 0, "[NAME=]FILE",
     "load (or replace) model NAME from a model file; without NAME=, the name is the file's "
     "tscale.name, else its file name without directory and .safetensors; repeatable (env: "
     "comma-separated)", NULL},
    {"snapshot-interval", OPT_INT, F(snapshot_interval), "30", 0, 365 * 86400, "SEC",
     "snapshot each model whose state changed, at most this often; 0 = never on a timer", NULL},
    {"snapshot-keep", OPT_INT, F(snapshot_keep), "20", 0, 1000000, "N",
     "snapshots kept per model (older ones are deleted); 0 = keep all", NULL},
    {"journal", OPT_BOOL, F(journal), "yes", 0, 1, "BOOL",
     "answer a feedback step only once it is committed to the journal in the database "
     "(group commit); no = answer at once, a crash loses the steps since the newest snapshot", NULL},
    {"feedback-id-window", OPT_INT, F(feedback_id_window), "600", 0, 30 * 86400, "SEC",
     "a feedback request's OIP id is applied at most once within this window (a repeat "
     "answers the first answer); 0 = ids are not tracked", NULL},
    {"feedback-id-bytes", OPT_BYTES, F(feedback_id_bytes), "256M", 1 << 20, (int64_t)1 << 40, "BYTES",
     "memory for the remembered feedback ids, all models together (about 290 bytes each); when "
     "full, the oldest are forgotten before their window ends and a repeat of one applies again", NULL},
    {"feedback-window-rows", OPT_INT, F(feedback_window_rows), "65536", 0, (int64_t)1 << 32, "ROWS",
     "feedback by id: input rows of recent inferences kept per model (oldest dropped first); "
     "0 = keep none", NULL},
    {"feedback-window-bytes", OPT_BYTES, F(feedback_window_bytes), "64M", 0, (int64_t)1 << 40, "BYTES",
     "feedback by id: memory for the kept inputs, all models together (oldest dropped first); "
     "0 = keep none", NULL},
    {"feedback-window-seconds", OPT_INT, F(feedback_window_seconds), "3600", 0, 30 * 86400, "SEC",
     "feedback by id: how long an inference's input is kept; 0 = keep none", NULL},
    {"feedback-requires-snapshot", OPT_BOOL, F(feedback_requires_snapshot), "yes", 0, 1, "BOOL",
     "refuse feedback (503) while a model's snapshots are failing", NULL},
    {"threads", OPT_INT, F(threads), "0", 0, 1024, "N", "compute threads; 0 = one per core", NULL},
    {"max-batch", OPT_INT, F(max_batch), "64", 1, 1 << 20, "ROWS",
     "dynamic batching: most rows in one forward", NULL},
    {"max-queue-delay-us", OPT_INT, F(max_queue_delay_us), "500", 0, 10000000, "US",
     "dynamic batching: longest a request waits for others", NULL},
    {"eager-batching", OPT_BOOL, F(eager_batching), "yes", 0, 1, "BOOL",
     "start a batch before the delay when no inference request is on its way", NULL},
    {"admin-token-file", OPT_STRING, F(admin_token_file), NULL, 0, 0, "FILE",
     "bearer token for /admin/* (without one, /admin answers loopback clients only)", NULL},
    {"feedback-token-file", OPT_STRING, F(feedback_token_file), NULL, 0, 0, "FILE",
     "bearer token required for feedback (the admin token also works)", NULL},
    {"allowed-hosts", OPT_STRING, F(allowed_hosts), NULL, 0, 0, "NAMES",
     "comma-separated Host names (besides localhost and the listen address) that /admin and "
     "feedback accept when they answer without a token (a DNS rebinding guard)", NULL},
    {"max-body-bytes", OPT_BYTES, F(max_body_bytes), "64M", 1024, (int64_t)1 << 34, "BYTES",
     "largest request body (413 past it); also bounds PUT model files", NULL},
    {"max-buffered-bytes", OPT_BYTES, F(max_buffered_bytes), "256M", 1024, (int64_t)1 << 40, "BYTES",
     "most bytes of request bodies held while they arrive, all connections together (503 "
     "past it; buffers grow with the bytes received, not with Content-Length)", NULL},
    {"max-rows", OPT_INT, F(max_rows), "65536", 1, (int64_t)1 << 30, "ROWS",
     "most rows (batch size) in one request", NULL},
    {"max-queue-rows", OPT_INT, F(max_queue_rows), "65536", 1, (int64_t)1 << 32, "ROWS",
     "most rows waiting for compute, all models together (503 past it)", NULL},
    {"max-queue-bytes", OPT_BYTES, F(max_queue_bytes), "512M", 1024, (int64_t)1 << 40, "BYTES",
     "most tensor bytes waiting for compute, all models together (503 past it)", NULL},
    {"max-response-bytes", OPT_BYTES, F(max_response_bytes), "64M", 1024, (int64_t)1 << 40, "BYTES",
     "largest inference answer: a request whose output could be larger is refused (413) "
     "before it is computed (JSON counts 16 bytes a value, binary output 4)", NULL},
    {"max-connections", OPT_INT, F(max_connections), "1024", 1, 1000000, "N",
     "most simultaneous HTTP connections; beyond it (up to N/8+4 more) a connection is "
     "answered for /v2/health/* and /metrics only, anything else 503 at once", NULL},
    {"max-connections-per-client", OPT_INT, F(max_connections_per_client), "0", 0, 1000000, "N",
     "most simultaneous connections from one client address (more are closed at once); "
     "0 = half of --max-connections (behind a reverse proxy every connection has the proxy's "
     "address: set it to --max-connections there)", NULL},
    {"request-timeout", OPT_INT, F(request_timeout), "60", 1, 86400, "SEC",
     "close a connection idle (no bytes from the client) this long", NULL},
    {"header-timeout", OPT_INT, F(header_timeout), "10", 1, 86400, "SEC",
     "close a connection whose request head (line and headers) is not complete this long "
     "after it opened or after its previous response, however steadily it trickles", NULL},
    {"body-timeout", OPT_INT, F(body_timeout), "120", 1, 86400, "SEC",
     "close a connection whose request body is not complete this long after its headers", NULL},
    {"http-threads", OPT_INT, F(http_threads), "1", 1, 64, "N",
     "HTTP polling threads (request parsing runs on them)", NULL},
    {"replicate", OPT_STRING, F(replicate), NULL, 0, 0, "URLS",
     "replicate learning through NATS JetStream: nats://HOST:PORT[,nats://HOST2:PORT...] "
     "(default and empty: off, a single node)", check_nats_urls},
    {"replica-id", OPT_STRING, F(replica_id), NULL, 0, 0, "ID",
     "this replica's name in the stream; stable across restarts, unique among replicas "
     "(default: hostname:port of --listen)", NULL},
    {"replicate-token-file", OPT_STRING, F(replicate_token_file), NULL, 0, 0, "FILE",
     "NATS token (a file ending in .creds is a NATS credentials file)", NULL},
    {"replicate-stream", OPT_STRING, F(replicate_stream), "tscale", 0, 0, "NAME",
     "JetStream stream of the deltas (subjects NAME.delta.>; created if missing)", check_stream},
    {"replicate-ack-timeout-ms", OPT_INT, F(replicate_ack_timeout_ms), "5000", 10, 600000, "MS",
     "a feedback step is answered 503 when JetStream has not acknowledged it within this", NULL},
    {"replicate-max-age", OPT_INT, F(replicate_max_age), "604800", 1, 10LL * 365 * 86400, "SEC",
     "stream retention when the stream is created: deltas older than this are deleted", NULL},
    {"replicate-replicas", OPT_INT, F(replicate_replicas), "1", 1, 5, "N",
     "JetStream replicas of the stream when it is created (3 in a NATS cluster)", NULL},
    {"replicate-state-interval", OPT_INT, F(replicate_state_interval), "0", 0, 10LL * 365 * 86400, "SEC",
     "publish each model's state (what a joining replica loads, and what digests are compared "
     "with) at most this often; 0 = --snapshot-interval (30 without one), capped at a quarter "
     "of --replicate-max-age", NULL},
    {"replicate-batch-ms", OPT_INT, F(replicate_batch_ms), "2", 0, 1000, "MS",
     "sum consecutive steps of a model into one message: steps queued while the previous "
     "message awaits its PubAck wait up to this long for more (0: one message per step)", NULL},
    {"replicate-batch-max", OPT_INT, F(replicate_batch_max), "256", 1, 65536, "N",
     "at most this many steps in one summed message", NULL},
    {"forward-timeout-ms", OPT_INT, F(forward_timeout_ms), "1000", 10, 60000, "MS",
     "feedback by id for an inference another replica made: how long to wait for the replica "
     "that holds it to say so before answering 404", NULL},
    {"forward-answer-timeout-ms", OPT_INT, F(forward_answer_timeout_ms), "15000", 100, 600000, "MS",
     "then how long to wait for its answer (the step, journal and JetStream acknowledgement) "
     "before answering 504 (a retry with the same id applies it at most once)", NULL},
    {"log-level", OPT_STRING, F(log_level), "info", 0, 0, "LEVEL",
     "debug, info, warn or error", check_log_level},
    {"access-log", OPT_STRING, F(access_log), "off", 0, 0, "LEVEL",
     "one line per request at this log level (debug, info, ...): method, path (no query), "
     "status, response bytes, microseconds; never bodies or tokens; off = none", check_access_log},
    {"help", OPT_HELP, 0, NULL, 0, 0, NULL, "print this help and exit", NULL},
    {"version", OPT_VERSION, 0, NULL, 0, 0, NULL, "print the version and exit", NULL},
};
#undef F
#define N_OPTIONS (sizeof options / sizeof options[0])

/* The usual short forms; only of action flags, which take no value. */
static const struct {
    char letter;
    const char *name;
} short_flags[] = {{'h', "help"}, {'V', "version"}};
#define N_SHORT (sizeof short_flags / sizeof short_flags[0])

/* The letter of o's short form, or 0. */
static char short_of(const ts_option *o) {
    for (size_t k = 0; k < N_SHORT; k++)
        if (strcmp(short_flags[k].name, o->name) == 0)
            return short_flags[k].letter;
    return 0;
}

int ts_config_split_listen(const char *listen, char *host, size_t hostlen, int *port, char *err,
                           size_t errlen) {
    const char *colon = strrchr(listen, ':');
    if (!colon || colon == listen) {
        snprintf(err, errlen, "'%s' is not HOST:PORT (e.g. 127.0.0.1:8080)", listen);
        return -1;
    }
    const char *h = listen;
    size_t hl = (size_t)(colon - listen);
    if (h[0] == '[' && hl >= 2 && h[hl - 1] == ']') { /* [::1]:8080 */
        h++;
        hl -= 2;
    }
    if (hl == 0 || hl >= hostlen) {
        snprintf(err, errlen, "'%s': the host part is empty or too long", listen);
        return -1;
    }
    char *end;
    errno = 0;
    long p = strtol(colon + 1, &end, 10);
    if (errno || end == colon + 1 || *end || p < 0 || p > 65535) {
        snprintf(err, errlen, "'%s': the port must be a number from 0 to 65535", listen);
        return -1;
    }
    memcpy(host, h, hl);
    host[hl] = '\0';
    *port = (int)p;
    return 0;
}

static int check_listen(const char *v, char *err, size_t errlen) {
    char host[256];
    int port;
    return ts_config_split_listen(v, host, sizeof host, &port, err, errlen);
}

/* nats://HOST:PORT[,nats://HOST:PORT...] (tls:// too): libnats parses the rest. Empty is
 * off (an environment that passes the variable through unset). */
static int check_nats_urls(const char *v, char *err, size_t errlen) {
    for (const char *p = v; *v;) {
        size_t n = strcspn(p, ",");
        if (!((n > 7 && strncmp(p, "nats://", 7) == 0) || (n > 6 && strncmp(p, "tls://", 6) == 0))) {
            snprintf(err, errlen, "'%.*s' is not a NATS URL (nats://HOST:PORT); give one or more, "
                     "separated by commas", (int)n, p);
            return -1;
        }
        if (!p[n])
            return 0;
        p += n + 1;
    }
    return 0;
}

/* A JetStream stream name that is also a subject token: letters, digits, - and _. */
static int check_stream(const char *v, char *err, size_t errlen) {
    size_t n = strlen(v);
    if (n == 0 || n > 64 || strspn(v, "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_") != n) {
        snprintf(err, errlen, "'%s': a stream name is 1-64 characters of A-Z a-z 0-9 - _", v);
        return -1;
    }
    return 0;
}

static int check_log_level(const char *v, char *err, size_t errlen) {
    ts_log_level l;
    if (ts_log_level_parse(v, &l) == 0)
        return 0;
    snprintf(err, errlen, "'%s' is not one of debug, info, warn, error", v);
    return -1;
}

static int check_access_log(const char *v, char *err, size_t errlen) {
    ts_log_level l;
    if (strcmp(v, "off") == 0 || ts_log_level_parse(v, &l) == 0)
        return 0;
    snprintf(err, errlen, "'%s' is not one of off, debug, info, warn, error", v);
    return -1;
}

static int parse_int(const ts_option *o, const char *v, int64_t *out, char *err, size_t errlen) {
    char *end;
    errno = 0;
    long long x = strtoll(v, &end, 10);
    if (errno || end == v) {
        snprintf(err, errlen, "'%s' is not a number", v);
        return -1;
    }
    if (o->type == OPT_BYTES && *end) {
        int shift = 0;
        switch (toupper((unsigned char)*end)) {
        case 'K': shift = 10; break;
        case 'M': shift = 20; break;
        case 'G': shift = 30; break;
        default: break;
        }
        if (shift && (end[1] == '\0' || ((end[1] == 'B' || end[1] == 'b') && end[2] == '\0')) &&
            x >= 0 && x <= (LLONG_MAX >> shift)) {
            x <<= shift;
            end += strlen(end);
        }
    }
    if (*end) {
        snprintf(err, errlen, "'%s' is not a whole number%s", v,
                 o->type == OPT_BYTES ? " (optionally with a K, M or G suffix)" : "");
        return -1;
    }
    if (x < o->min || x > o->max) {
        snprintf(err, errlen, "%lld is out of range [%lld, %lld]", x, (long long)o->min,
                 (long long)o->max);
        return -1;
    }
    *out = x;
    return 0;
}

static int parse_bool(const char *v, int64_t *out, char *err, size_t errlen) {
    static const char *const yes[] = {"yes", "true", "on", "1"}, *const no[] = {"no", "false", "off", "0"};
    for (int i = 0; i < 4; i++) {
        if (strcasecmp(v, yes[i]) == 0) return *out = 1, 0;
        if (strcasecmp(v, no[i]) == 0) return *out = 0, 0;
    }
    snprintf(err, errlen, "'%s' is not yes/no, true/false, on/off or 1/0", v);
    return -1;
}

/* NAME=FILE, or FILE alone (name NULL: recover.c names it from the file). */
static int add_model(ts_config *cfg, const char *v, char *err, size_t errlen) {
    const char *eq = strchr(v, '=');
    if (eq == v || (eq && !eq[1])) {
        snprintf(err, errlen, "'%s' is not NAME=FILE or FILE", v);
        return -1;
    }
    ts_model_arg *grown = realloc(cfg->models, (size_t)(cfg->n_models + 1) * sizeof *grown);
    if (!grown) {
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    cfg->models = grown;
    ts_model_arg *a = &cfg->models[cfg->n_models];
    a->name = eq ? strndup(v, (size_t)(eq - v)) : NULL;
    a->path = strdup(eq ? eq + 1 : v);
    if ((eq && !a->name) || !a->path) {
        free(a->name);
        free(a->path);
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    cfg->n_models++;
    return 0;
}

static void clear_models(ts_config *cfg) {
    for (int i = 0; i < cfg->n_models; i++) {
        free(cfg->models[i].name);
        free(cfg->models[i].path);
    }
    free(cfg->models);
    cfg->models = NULL;
    cfg->n_models = 0;
}

/* Set option o from text v. The environment's TSCALE_MODEL holds a comma-separated list. */
static int set_option(ts_config *cfg, const ts_option *o, const char *v, int from_env, char *err,
                      size_t errlen) {
    void *field = (char *)cfg + o->offset;
    if (o->check && o->check(v, err, errlen) < 0)
        return -1;
    switch (o->type) {
    case OPT_STRING: {
        char *copy = strdup(v);
        if (!copy) return snprintf(err, errlen, "out of memory"), -1;
        free(*(char **)field);
        *(char **)field = copy;
        return 0;
    }
    case OPT_INT:
    case OPT_BYTES: return parse_int(o, v, (int64_t *)field, err, errlen);
    case OPT_BOOL: return parse_bool(v, (int64_t *)field, err, errlen);
    case OPT_MODEL:
        if (!from_env)
            return add_model(cfg, v, err, errlen);
        for (const char *p = v; *p;) {
            size_t n = strcspn(p, ",");
            char item[4096];
            if (n >= sizeof item) return snprintf(err, errlen, "an entry is too long"), -1;
            memcpy(item, p, n);
            item[n] = '\0';
            if (n && add_model(cfg, item, err, errlen) < 0)
                return -1;
            p += n + (p[n] == ',');
        }
        return 0;
    default: return 0;
    }
}

static const ts_option *find_option(const char *name, size_t len) {
    for (size_t i = 0; i < N_OPTIONS; i++)
        if (strlen(options[i].name) == len && strncmp(options[i].name, name, len) == 0)
            return &options[i];
    return NULL;
}

static void env_name(const ts_option *o, char *out, size_t len) {
    size_t n = (size_t)snprintf(out, len, "TSCALE_%s", o->name);
    for (size_t i = 7; i < n && i < len; i++)
        out[i] = out[i] == '-' ? '_' : (char)toupper((unsigned char)out[i]);
}

int ts_config_unknown_env(char *const *envp, char *out, size_t outlen) {
    /* deploy/tscale.env.example's compose-only variables: read by compose, not the daemon */
    static const char *const compose_only[] = {"TSCALE_PUBLISH", "TSCALE_IMAGE",
                                               "TSCALE_SECRETS_DIR", "TSCALE_MODELS_DIR"};
    int n = 0;
    size_t used = 0;
    out[0] = '\0';
    for (; envp && *envp; envp++) {
        const char *eq = strchr(*envp, '=');
        size_t len = eq ? (size_t)(eq - *envp) : strlen(*envp);
        if (len <= 7 || strncmp(*envp, "TSCALE_", 7) != 0)
            continue;
        int known = 0;
        char var[64];
        for (size_t i = 0; i < N_OPTIONS && !known; i++) {
            env_name(&options[i], var, sizeof var);
            known = options[i].type != OPT_HELP && options[i].type != OPT_VERSION &&
                    strlen(var) == len && strncmp(var, *envp, len) == 0;
        }
        for (size_t i = 0; i < sizeof compose_only / sizeof compose_only[0] && !known; i++)
            known = strlen(compose_only[i]) == len && strncmp(compose_only[i], *envp, len) == 0;
        if (known)
            continue;
        if (used + len + 3 < outlen) {
            used += (size_t)snprintf(out + used, outlen - used, "%s%.*s", n ? ", " : "", (int)len, *envp);
        }
        n++;
    }
    return n;
}

#define HELP_COL 37    /* where the help texts start */
#define HELP_WIDTH 100 /* and the column they wrap before */

/* text from column HELP_COL (where the cursor is), wrapped between words; "[default X]"
 * stays on one line. */
static void print_wrapped(FILE *out, const char *text) {
    int col = HELP_COL;
    for (const char *p = text; *p;) {
        const char *close = strncmp(p, "[default ", 9) == 0 ? strchr(p, ']') : NULL;
        int w = close ? (int)(close - p) + 1 : (int)strcspn(p, " ");
        if (col > HELP_COL && col + 1 + w > HELP_WIDTH) {
            fprintf(out, "\n%*s", HELP_COL, "");
            col = HELP_COL;
        } else if (col > HELP_COL) {
            fputc(' ', out);
            col++;
        }
        fprintf(out, "%.*s", w, p);
        col += w;
        p += w;
        while (*p == ' ')
            p++;
    }
    fputc('\n', out);
}

void ts_config_usage(FILE *out) {
    fprintf(out, "usage: tscaled [serve] [--flag VALUE | --flag=VALUE]...\n\n"
                 "Serves ternary-weight models over HTTP (Open Inference Protocol) and adapts them\n"
                 "from feedback. Every flag can also be set as TSCALE_<FLAG> in the environment\n"
                 "(dashes as underscores); flags win.\n\nflags:\n");
    for (size_t i = 0; i < N_OPTIONS; i++) {
        const ts_option *o = &options[i];
        char left[64];
        char letter = short_of(o);
        size_t k = letter ? (size_t)snprintf(left, sizeof left, "-%c, ", letter) : 0;
        snprintf(left + k, sizeof left - k, "--%s%s%s", o->name, o->metavar ? " " : "",
                 o->metavar ? o->metavar : "");
        char text[512];
        snprintf(text, sizeof text, "%s%s%s%s", o->help, o->def ? " [default " : "",
                 o->def ? o->def : "", o->def ? "]" : "");
        fprintf(out, "  %-*s ", HELP_COL - 3, left);
        print_wrapped(out, text);
    }
}

static ts_config_result fail(ts_config *cfg, char *err, size_t errlen, const char *where,
                             const char *why) {
    snprintf(err, errlen, "%.80s: %.400s", where, why);
    ts_config_free(cfg);
    return TS_CONFIG_ERROR;
}

/* Defaults for every option; then the environment for those no flag sets (a variable
 * under a flag is not used at all, so not even checked: the command line can override
 * a stale or broken deployment variable). */
static ts_config_result apply_defaults_and_env(ts_config *cfg, const int *flagged, char *err,
                                               size_t errlen) {
    char why[512], var[64];
    for (size_t i = 0; i < N_OPTIONS; i++) {
        const ts_option *o = &options[i];
        if (o->def && set_option(cfg, o, o->def, 0, why, sizeof why) < 0)
            return fail(cfg, err, errlen, o->name, why); /* a bad table row: a bug */
        if (o->type == OPT_HELP || o->type == OPT_VERSION || flagged[i])
            continue;
        env_name(o, var, sizeof var);
        const char *v = getenv(var);
        if (v && set_option(cfg, o, v, 1, why, sizeof why) < 0)
            return fail(cfg, err, errlen, var, why);
    }
    return TS_CONFIG_OK;
}

/* One command-line flag at argv[*i]: its option and value (advancing *i past a separate
 * value). 0, or -1 + err. */
static int next_flag(int argc, char **argv, int *i, const ts_option **opt, const char **value,
                     char *err, size_t errlen) {
    const char *a = argv[*i];
    for (size_t k = 0; a[0] == '-' && a[1] && !a[2] && k < N_SHORT; k++)
        if (short_flags[k].letter == a[1]) { /* -h, -V */
            *opt = find_option(short_flags[k].name, strlen(short_flags[k].name));
            *value = NULL;
            return 0;
        }
    if (strncmp(a, "--", 2) != 0) {
        snprintf(err, errlen, "%s: unexpected argument (flags start with --; see --help)", a);
        return -1;
    }
    const char *eq = strchr(a + 2, '=');
    size_t len = eq ? (size_t)(eq - a - 2) : strlen(a + 2);
    const ts_option *o = find_option(a + 2, len);
    int negated = 0;
    if (!o && len > 3 && strncmp(a + 2, "no-", 3) == 0) { /* --no-BOOL */
        o = find_option(a + 5, len - 3);
        negated = o && o->type == OPT_BOOL && !eq;
        if (!negated)
            o = NULL;
    }
    if (!o) {
        snprintf(err, errlen, "%s: unknown flag (see --help)", a);
        return -1;
    }
    *opt = o;
    int64_t ignored;
    char why[256];
    if (o->type == OPT_HELP || o->type == OPT_VERSION)
        *value = NULL;
    else if (o->type == OPT_BOOL && !eq && !negated && *i + 1 < argc && argv[*i + 1][0] != '-' &&
             parse_bool(argv[*i + 1], &ignored, why, sizeof why) < 0) {
        /* serve takes no other arguments: "--flag word" meant word as the value */
        snprintf(err, errlen, "%s %s: %s", a, argv[*i + 1], why);
        return -1;
    } else if (o->type == OPT_BOOL && !eq &&
             (negated || *i + 1 >= argc || parse_bool(argv[*i + 1], &ignored, why, sizeof why) < 0))
        *value = negated ? "no" : "yes"; /* a bare boolean flag sets it */
    else if (eq)
        *value = eq + 1;
    else if (*i + 1 < argc)
        *value = argv[++*i];
    else {
        snprintf(err, errlen, "%s: needs a value", a);
        return -1;
    }
    return 0;
}

ts_config_result ts_config_parse(ts_config *cfg, int argc, char **argv, FILE *out, char *err,
                                 size_t errlen) {
    memset(cfg, 0, sizeof *cfg);
    /* Pass 1: which options the command line sets; --help and --version act at once. */
    int flagged[N_OPTIONS] = {0};
    for (int i = 1; i < argc; i++) {
        const ts_option *o;
        const char *v;
        if (next_flag(argc, argv, &i, &o, &v, err, errlen) < 0)
            return TS_CONFIG_ERROR;
        if (o->type == OPT_HELP) {
            ts_config_usage(out);
            return TS_CONFIG_EXIT;
        }
        if (o->type == OPT_VERSION) {
            fprintf(out, "tscaled %s\n", TS_VERSION);
            return TS_CONFIG_EXIT;
        }
        flagged[o - options] = 1;
    }
    if (apply_defaults_and_env(cfg, flagged, err, errlen) != TS_CONFIG_OK)
        return TS_CONFIG_ERROR;
    /* Pass 2: the flags themselves. */
    char why[512];
    for (int i = 1; i < argc; i++) {
        const ts_option *o;
        const char *v;
        next_flag(argc, argv, &i, &o, &v, why, sizeof why); /* pass 1 checked it */
        if (set_option(cfg, o, v, 0, why, sizeof why) < 0) {
            char where[80];
            snprintf(where, sizeof where, "--%s", o->name);
            return fail(cfg, err, errlen, where, why);
        }
    }
    if (cfg->threads == 0) {
        long n = sysconf(_SC_NPROCESSORS_ONLN);
        cfg->threads = n > 0 ? n : 1;
    }
    if (cfg->max_connections_per_client == 0)
        cfg->max_connections_per_client = cfg->max_connections >= 2 ? cfg->max_connections / 2 : 1;
    for (int i = 0; i < cfg->n_models; i++)
        for (int j = 0; j < i; j++)
            if (cfg->models[i].name && cfg->models[j].name &&
                strcmp(cfg->models[i].name, cfg->models[j].name) == 0)
                return fail(cfg, err, errlen, "--model", "the same NAME is given twice");
    return TS_CONFIG_OK;
}

void ts_config_free(ts_config *cfg) {
    for (size_t i = 0; i < N_OPTIONS; i++)
        if (options[i].type == OPT_STRING) {
            char **field = (char **)((char *)cfg + options[i].offset);
            free(*field);
            *field = NULL;
        }
    clear_models(cfg);
}
