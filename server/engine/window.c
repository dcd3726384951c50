/* window.c — the feedback window (see window.h).
 *
 * Each entry is one allocation (bookkeeping, then the input's floats), in three structures:
 * a chained hash table by (model, id) (table.h), the global list in arrival order (the age
 * and byte bounds drop its head), and its model's list in arrival order (the row bound drops
 * that list's head). Arrival times are monotonic, so the global head is also the oldest.
 * Evicted ids go into a ring of (key, why), searched newest first only on a miss.
 */
#include "server/engine/window.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>
#include <unistd.h>

#include "server/hash.h"
#include "server/metrics.h"
#include "server/engine/table.h"

#define BUCKETS_MIN 256

typedef struct shelf shelf;

typedef struct entry {
    ts_table_node node;              /* first: key = hash of model and id */
    uint64_t serial;
    char *id;
    shelf *shelf;                    /* its model's list */
    int64_t rows, in_dim, out_dim, t_ms;
    size_t bytes;                    /* what it costs against max_bytes */
    int in_use;                      /* taken by a feedback not settled yet */
    struct entry *older, *newer;     /* all models, arrival order */
    struct entry *m_older, *m_newer; /* its model, arrival order */
    float x[];                       /* [rows][in_dim] */
} entry;

/* One model's entries. Freed when it has none. */
struct shelf {
    char *model;
    int64_t rows;
    entry *oldest, *newest;
    shelf *next;
};

typedef struct {
    uint64_t key;
    uint8_t why;                     /* ts_window_gone */
} gone_rec;

struct ts_window {
    ts_window_limits lim;
    ts_table table;
    entry *oldest, *newest;
    shelf *shelves;
    int64_t entries, rows;
    size_t bytes;
    gone_rec gone[TS_WINDOW_GONE_MAX];
    size_t gone_next, gone_n;        /* ring: next slot to write, slots used */
    uint64_t prefix, counter, serial;
    uint64_t hits, misses, gone_hits, stored, not_stored, evicted_rows, evicted_bytes, expired;
};

ts_window *ts_window_new(const ts_window_limits *lim) {
    ts_window *w = calloc(1, sizeof *w);
    if (!w || ts_table_init(&w->table, BUCKETS_MIN) < 0) {
        free(w);
        return NULL;
    }
    w->lim = *lim;
    /* Random per run, so ids of two runs or replicas differ; the clock when getrandom
     * cannot answer (it only fails before the kernel's pool is ready). */
    if (getrandom(&w->prefix, sizeof w->prefix, GRND_NONBLOCK) != (ssize_t)sizeof w->prefix) {
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        w->prefix = (uint64_t)ts.tv_sec * 1000000007ull ^ (uint64_t)ts.tv_nsec ^ ((uint64_t)getpid() << 40);
    }
    return w;
}

int ts_window_enabled(const ts_window *w) {
    return w->lim.max_rows > 0 && w->lim.max_bytes > 0 && w->lim.max_age_ms > 0;
}

void ts_window_make_id(ts_window *w, char out[TS_WINDOW_ID_MAX]) {
    snprintf(out, TS_WINDOW_ID_MAX, "%016llx-%llu", (unsigned long long)w->prefix,
             (unsigned long long)++w->counter);
}

int ts_window_id_prefix(const char *id, char out[17]) {
    size_t n = strlen(id);
    if (n < 18 || n >= TS_WINDOW_ID_MAX || id[16] != '-' || strspn(id, "0123456789abcdef") != 16 ||
        strspn(id + 17, "0123456789") != n - 17)
        return 0;
    memcpy(out, id, 16);
    out[16] = '\0';
    return 1;
}

void ts_window_prefix(const ts_window *w, char out[17]) {
    snprintf(out, 17, "%016llx", (unsigned long long)w->prefix);
}

/* malloc's own header of each of an entry's two allocations (the entry, its id): glibc's is
 * 8 bytes, rounded to 16; counted so that the bound is on memory, not only on payload. */
#define MALLOC_OVERHEAD 16

size_t ts_window_entry_bytes(const char *id, int64_t rows, int64_t in_dim) {
    return sizeof(entry) + 2 * MALLOC_OVERHEAD + strlen(id) + 1 +
           (size_t)rows * (size_t)in_dim * sizeof(float);
}

static void remember_gone(ts_window *w, uint64_t key, ts_window_gone why) {
    w->gone[w->gone_next] = (gone_rec){.key = key, .why = (uint8_t)why};
    w->gone_next = (w->gone_next + 1) % TS_WINDOW_GONE_MAX;
    if (w->gone_n < TS_WINDOW_GONE_MAX)
        w->gone_n++;
}

/* The newest record of key in the ring: 1 and *why, or 0. */
static int find_gone(const ts_window *w, uint64_t key, ts_window_gone *why) {
    for (size_t k = 1; k <= w->gone_n; k++) {
        const gone_rec *g = &w->gone[(w->gone_next + TS_WINDOW_GONE_MAX - k) % TS_WINDOW_GONE_MAX];
        if (g->key == key) {
            *why = (ts_window_gone)g->why;
            return 1;
        }
    }
    return 0;
}

static shelf *find_shelf(ts_window *w, const char *model) {
    for (shelf *sh = w->shelves; sh; sh = sh->next)
        if (strcmp(sh->model, model) == 0)
            return sh;
    return NULL;
}

static void shelf_free(ts_window *w, shelf *dead) {
    for (shelf **p = &w->shelves; *p; p = &(*p)->next)
        if (*p == dead) {
            *p = dead->next;
            break;
        }
    free(dead->model);
    free(dead);
}

/* Take e out of every structure and free it (and its shelf when that is empty now). */
static void entry_remove(ts_window *w, entry *e) {
    ts_table_remove(&w->table, &e->node);
    *(e->older ? &e->older->newer : &w->oldest) = e->newer;
    *(e->newer ? &e->newer->older : &w->newest) = e->older;
    shelf *sh = e->shelf;
    *(e->m_older ? &e->m_older->m_newer : &sh->oldest) = e->m_newer;
    *(e->m_newer ? &e->m_newer->m_older : &sh->newest) = e->m_older;
    sh->rows -= e->rows;
    w->rows -= e->rows;
    w->entries--;
    w->bytes -= e->bytes;
    free(e->id);
    free(e);
    if (!sh->oldest)
        shelf_free(w, sh);
}

/* Drop e because a bound needs its room (or its time is up): its id reads as gone. */
static void entry_evict(ts_window *w, entry *e, ts_window_gone why, uint64_t *counter) {
    remember_gone(w, e->node.key, why);
    (*counter)++;
    entry_remove(w, e);
}

void ts_window_expire(ts_window *w, int64_t now_ms) {
    while (w->oldest && now_ms - w->oldest->t_ms > w->lim.max_age_ms)
        entry_evict(w, w->oldest, TS_GONE_EXPIRED, &w->expired);
}

static entry *find(ts_window *w, const char *model, const char *id, uint64_t key) {
    for (ts_table_node *n = ts_table_bucket(&w->table, key); n; n = n->chain) {
        entry *e = (entry *)n;
        if (n->key == key && strcmp(e->id, id) == 0 && strcmp(e->shelf->model, model) == 0)
            return e;
    }
    return NULL;
}

/* Make room for an entry of `rows` rows and `bytes` bytes in sh (NULL: a new model). */
static void make_room(ts_window *w, shelf *sh, int64_t rows, size_t bytes) {
    while (sh && sh->rows + rows > w->lim.max_rows)
        entry_evict(w, sh->oldest, TS_GONE_EVICTED, &w->evicted_rows);
    while (w->oldest && w->bytes + bytes > (size_t)w->lim.max_bytes)
        entry_evict(w, w->oldest, TS_GONE_EVICTED, &w->evicted_bytes);
}

/* Link a new entry e into every structure (sh exists). */
static void entry_link(ts_window *w, shelf *sh, entry *e) {
    ts_table_insert(&w->table, &e->node);
    e->shelf = sh;
    e->older = w->newest;
    *(w->newest ? &w->newest->newer : &w->oldest) = e;
    w->newest = e;
    e->m_older = sh->newest;
    *(sh->newest ? &sh->newest->m_newer : &sh->oldest) = e;
    sh->newest = e;
    sh->rows += e->rows;
    w->rows += e->rows;
    w->entries++;
    w->bytes += e->bytes;
}

static shelf *shelf_get(ts_window *w, const char *model) {
    shelf *sh = find_shelf(w, model);
    if (sh)
        return sh;
    if (!(sh = calloc(1, sizeof *sh)) || !(sh->model = strdup(model))) {
        free(sh);
        return NULL;
    }
    sh->next = w->shelves;
    w->shelves = sh;
    return sh;
}

int ts_window_put(ts_window *w, const char *model, const char *id, const float *x, int64_t rows,
                  int64_t in_dim, int64_t out_dim, int64_t now_ms) {
    if (!ts_window_enabled(w))
        return 1;
    uint64_t key = ts_hash_pair(model, id);
    entry *old = find(w, model, id, key);
    if (old)
        entry_remove(w, old); /* the newest inference owns the id */
    ts_window_expire(w, now_ms);
    size_t bytes = ts_window_entry_bytes(id, rows, in_dim);
    if (rows > w->lim.max_rows || bytes > (size_t)w->lim.max_bytes) {
        remember_gone(w, key, TS_GONE_TOO_LARGE);
        w->not_stored++;
        return 1;
    }
    make_room(w, find_shelf(w, model), rows, bytes);
    size_t nx = (size_t)rows * (size_t)in_dim;
    entry *e = malloc(sizeof *e + nx * sizeof(float));
    char *idc = strdup(id);
    shelf *sh = e && idc ? shelf_get(w, model) : NULL;
    if (!sh) {
        free(e);
        free(idc);
        return -1;
    }
    *e = (entry){.node = {.key = key}, .serial = ++w->serial, .id = idc, .rows = rows, .in_dim = in_dim,
                 .out_dim = out_dim, .t_ms = now_ms, .bytes = bytes};
    memcpy(e->x, x, nx * sizeof(float));
    entry_link(w, sh, e);
    w->stored++;
    return 0;
}

ts_window_found ts_window_take(ts_window *w, const char *model, const char *id, int64_t now_ms,
                               ts_window_view *v) {
    ts_window_expire(w, now_ms);
    uint64_t key = ts_hash_pair(model, id);
    entry *e = find(w, model, id, key);
    memset(v, 0, sizeof *v);
    if (e && e->in_use)
        return TS_WINDOW_BUSY;
    if (e) {
        e->in_use = 1;
        w->hits++;
        *v = (ts_window_view){.x = e->x, .rows = e->rows, .in_dim = e->in_dim, .out_dim = e->out_dim,
                              .ticket = {.key = key, .serial = e->serial}};
        return TS_WINDOW_HIT;
    }
    if (find_gone(w, key, &v->why)) {
        w->gone_hits++;
        return TS_WINDOW_GONE;
    }
    w->misses++;
    return TS_WINDOW_MISS;
}

int ts_window_knows(ts_window *w, const char *model, const char *id, int64_t now_ms) {
    ts_window_expire(w, now_ms);
    uint64_t key = ts_hash_pair(model, id);
    ts_window_gone why;
    return find(w, model, id, key) != NULL || find_gone(w, key, &why);
}

void ts_window_settle(ts_window *w, ts_window_ticket t, int used) {
    if (!t.serial)
        return;
    for (ts_table_node *n = ts_table_bucket(&w->table, t.key); n; n = n->chain) {
        entry *e = (entry *)n;
        if (e->serial != t.serial)
            continue;
        if (!used) {
            e->in_use = 0;
            return;
        }
        remember_gone(w, t.key, TS_GONE_USED);
        entry_remove(w, e);
        return;
    }
}

void ts_window_forget(ts_window *w, const char *model) {
    shelf *sh;
    while ((sh = find_shelf(w, model))) /* entry_remove frees the shelf with its last entry */
        entry_remove(w, sh->oldest);
}

void ts_window_free(ts_window *w) {
    if (!w)
        return;
    while (w->oldest)
        entry_remove(w, w->oldest);
    ts_table_free(&w->table);
    free(w);
}

void ts_window_get_stats(const ts_window *w, ts_window_stats *st) {
    *st = (ts_window_stats){.entries = w->entries, .rows = w->rows, .bytes = w->bytes, .hits = w->hits,
                            .misses = w->misses, .gone = w->gone_hits, .stored = w->stored,
                            .not_stored = w->not_stored, .evicted_rows = w->evicted_rows,
                            .evicted_bytes = w->evicted_bytes, .expired = w->expired};
}

void ts_window_render_metrics(ts_window *w, ts_buf *out) {
    ts_metrics_family(out, "tscale_feedback_window_entries", "gauge",
                      "Inferences whose input is kept for feedback by id.");
    ts_buf_printf(out, "tscale_feedback_window_entries %lld\n", (long long)w->entries);
    ts_metrics_family(out, "tscale_feedback_window_rows", "gauge", "Input rows kept for feedback by id.");
    ts_buf_printf(out, "tscale_feedback_window_rows %lld\n", (long long)w->rows);
    ts_metrics_family(out, "tscale_feedback_window_bytes", "gauge",
           "Bytes the kept inputs cost against --feedback-window-bytes.");
    ts_buf_printf(out, "tscale_feedback_window_bytes %zu\n", w->bytes);
    ts_metrics_family(out, "tscale_feedback_window_limit_bytes", "gauge",
                      "--feedback-window-bytes (0: the window is off).");
    ts_buf_printf(out, "tscale_feedback_window_limit_bytes %lld\n",
                  (long long)(ts_window_enabled(w) ? w->lim.max_bytes : 0));
    ts_metrics_family(out, "tscale_feedback_by_id_total", "counter",
           "Feedback-by-id lookups by result: hit, miss (404: never seen), gone (410: left the window).");
    ts_buf_printf(out, "tscale_feedback_by_id_total{result=\"hit\"} %llu\n"
                       "tscale_feedback_by_id_total{result=\"miss\"} %llu\n"
                       "tscale_feedback_by_id_total{result=\"gone\"} %llu\n",
                  (unsigned long long)w->hits, (unsigned long long)w->misses,
                  (unsigned long long)w->gone_hits);
    ts_metrics_family(out, "tscale_feedback_window_dropped_total", "counter",
           "Inputs that left the window without a feedback, by cause (too_large: never stored).");
    ts_buf_printf(out, "tscale_feedback_window_dropped_total{cause=\"rows\"} %llu\n"
                       "tscale_feedback_window_dropped_total{cause=\"bytes\"} %llu\n"
                       "tscale_feedback_window_dropped_total{cause=\"age\"} %llu\n"
                       "tscale_feedback_window_dropped_total{cause=\"too_large\"} %llu\n",
                  (unsigned long long)w->evicted_rows, (unsigned long long)w->evicted_bytes,
                  (unsigned long long)w->expired, (unsigned long long)w->not_stored);
}
