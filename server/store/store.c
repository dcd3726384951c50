/* store.c — the SQLite database (SPEC §6): schema migrations at open, content-addressed
 * model versions, snapshots of the mutable state, load with fallback, retention, backup.
 *
 * Durability: WAL with synchronous=FULL, so a transaction is on disk when its COMMIT
 * returns and a snapshot reported taken survives kill -9 and power loss alike. (NORMAL
 * would survive kill -9 too, but could lose the last snapshots on power loss.) The cost
 * is one fsync per snapshot, at most one per model per snapshot interval.
 * Every public call that writes is one transaction: a crash leaves all of it or none.
 *
 * Blobs are little-endian: T_packed and E are bytes, bias is int32[rows], a snapshot's
 * state is int64[ts_state_len] in the ts_state_save layout. They are copied as memory,
 * hence the byte-order check below.
 */
#include "server/store/store.h"

#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <sqlite3.h>

#include "core/trits.h"
#include "proto/safetensors.h" /* TS_MODEL_NAME_MAX */
#include "server/hash.h"
#include "server/store/migrations.h"

#if !defined(__BYTE_ORDER__) || __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "store.c writes blobs as memory images: little-endian hosts only"
#endif

/* PRAGMA application_id of a tscale database: "tscl". */
#define TS_APPLICATION_ID 0x7473636c
#define TS_BUSY_TIMEOUT_MS 5000
#define TS_WHAT_MAX (TS_MODEL_NAME_MAX + 64) /* "snapshot of model '<name>'" and the like */

/* The journal's statements, prepared once: a group commit runs them all, thousands of
 * times a second, and parsing SQL was a visible part of its time. */
enum { J_BEGIN, J_COMMIT, J_MODEL, J_INSERT, J_ID_INSERT, J_ID_EXPIRE, J_COUNT };
static const char *const journal_sql[J_COUNT] = {
    "BEGIN IMMEDIATE",
    "COMMIT",
    "SELECT id FROM models WHERE name = ?1",
    "INSERT INTO journal (seq, model_id, version, step, created_at, payload, checksum) "
    "VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
    "INSERT INTO feedback_ids (seq, model_id, request_id, body_hash, answer, created_at) "
    "VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
    /* created_at grows with seq (0005_feedback_ids_by_seq.sql): delete from the start up
     * to the first row still in the window, reading only the rows it deletes. */
    "DELETE FROM feedback_ids WHERE seq < coalesce((SELECT seq FROM feedback_ids WHERE "
    "created_at >= ?1 ORDER BY seq LIMIT 1), 9223372036854775807)",
};

struct ts_store {
    sqlite3 *db;
    char *path;
    int schema;  /* user_version after migrations */
    sqlite3_stmt *journal[J_COUNT];  /* prepared on first use, finalized at close */
};

/* ---- errors: every message starts with the database path ---------------------------- */

static void verr(ts_store *s, char *err, size_t errlen, const char *fmt, va_list ap) {
    if (!err || errlen == 0)
        return;
    int n = snprintf(err, errlen, "database %s: ", s->path);
    if (n >= 0 && (size_t)n < errlen)
        vsnprintf(err + n, errlen - (size_t)n, fmt, ap);
}

/* Fill err with "database PATH: <what>"; returns -1. */
static int fail(ts_store *s, char *err, size_t errlen, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    verr(s, err, errlen, fmt, ap);
    va_end(ap);
    return -1;
}

/* As fail(), with SQLite's message for the last error appended. */
static int fail_sql(ts_store *s, char *err, size_t errlen, const char *fmt, ...) {
    char what[2 * TS_WHAT_MAX];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(what, sizeof what, fmt, ap);
    va_end(ap);
    int code = sqlite3_errcode(s->db) & 0xff, sys = sqlite3_system_errno(s->db);
    if (sys && (code == SQLITE_IOERR || code == SQLITE_FULL || code == SQLITE_CANTOPEN || code == SQLITE_READONLY))
        return fail(s, err, errlen, "%s: %s (%s)", what, sqlite3_errmsg(s->db), strerror(sys));
    return fail(s, err, errlen, "%s: %s", what, sqlite3_errmsg(s->db));
}

static int64_t now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* ---- hashing: FNV-1a 64 over a canonical serialisation ------------------------------- */

#define FNV_OFFSET TS_FNV_OFFSET
#define FNV_PRIME TS_FNV_PRIME
#define fnv_bytes ts_fnv1a

static uint64_t fnv_i64(uint64_t h, int64_t v) {
    return fnv_bytes(h, &v, sizeof v); /* little-endian host: the canonical bytes */
}

/* A snapshot's checksum: one FNV-1a step per int64 value rather than per byte (a
 * 50M-weight model's state is 12 MB). States are whole int64s, so no byte-wise tail. */
static uint64_t state_checksum(const void *p, size_t bytes) {
    return ts_fnv1a_words(FNV_OFFSET, p, bytes);
}

static int is_ternary(const ts_layer *l) {
    return l->spec.kind == TS_LAYER_LINEAR || l->spec.kind == TS_LAYER_RMSNORM;
}

static size_t packed_bytes(const ts_layer *l) {
    return ts_trits_packed_size((size_t)(l->rows * l->cols));
}

/* The packed trits of ternary layer l as a malloc'd copy (a prepared model keeps them only
 * in its compute layout), or NULL when out of memory. */
static uint8_t *packed_copy(const ts_layer *l) {
    uint8_t *p = malloc(packed_bytes(l));
    if (p)
        ts_layer_packed(l, p);
    return p;
}

/* Architecture and immutable parts; with_state adds step and corr_accum. 0, or -1 when
 * out of memory. */
static int model_hash(const ts_model *m, int with_state, uint64_t *out) {
    uint64_t h = fnv_i64(FNV_OFFSET, m->n_layers);
    for (int i = 0; i < m->n_layers; i++) {
        const ts_layer *l = &m->layers[i];
        const char *kind = ts_layer_kind_name(l->spec.kind); /* names, unlike enum values, are stable */
        h = fnv_i64(h, (int64_t)strlen(kind));
        h = fnv_bytes(h, kind, strlen(kind));
        h = fnv_i64(h, l->spec.in_dim);
        h = fnv_i64(h, l->spec.out_dim);
        if (!is_ternary(l))
            continue;
        h = fnv_i64(h, l->spec.group_size);
        h = fnv_i64(h, l->spec.has_bias);
        h = fnv_i64(h, l->T_pad);
        uint8_t *packed = packed_copy(l);
        if (!packed)
            return -1;
        h = fnv_bytes(h, packed, packed_bytes(l));
        free(packed);
        h = fnv_bytes(h, l->E, (size_t)l->n_groups);
        if (l->bias)
            h = fnv_bytes(h, l->bias, (size_t)l->rows * sizeof *l->bias);
        if (with_state) {
            h = fnv_i64(h, l->step);
            h = fnv_bytes(h, l->corr_accum, (size_t)l->n_groups * sizeof *l->corr_accum);
        }
    }
    *out = h;
    return 0;
}

uint64_t ts_store_model_hash(const ts_model *m) {
    uint64_t h;
    return model_hash(m, 1, &h) == 0 ? h : 0;
}

/* ---- small SQL helpers ----------------------------------------------------------------- */

static int exec(ts_store *s, const char *sql) {
    return sqlite3_exec(s->db, sql, NULL, NULL, NULL) == SQLITE_OK ? 0 : -1;
}

static int prepare(ts_store *s, const char *sql, sqlite3_stmt **st) {
    return sqlite3_prepare_v2(s->db, sql, -1, st, NULL) == SQLITE_OK ? 0 : -1;
}

/* Step a prepared one-value query once and finalize it: *out = the first column of its
 * first row (0 when no row). SQLITE_ROW, SQLITE_DONE, or the error code. */
static int step_int(sqlite3_stmt *st, int64_t *out) {
    int rc = sqlite3_step(st);
    *out = rc == SQLITE_ROW ? sqlite3_column_int64(st, 0) : 0;
    sqlite3_finalize(st);
    return rc;
}

/* Run a prepared statement that returns no rows, and finalize it. 0, or -1 (the error is
 * still the connection's for fail_sql). */
static int step_done(sqlite3_stmt *st) {
    int rc = sqlite3_step(st);
    sqlite3_finalize(st);
    return rc == SQLITE_DONE ? 0 : -1;
}

/* The single integer a query returns (0 when no row). */
static int query_int(ts_store *s, const char *sql, int64_t *out) {
    sqlite3_stmt *st;
    if (prepare(s, sql, &st) != 0)
        return -1;
    int rc = step_int(st, out);
    return rc == SQLITE_ROW || rc == SQLITE_DONE ? 0 : -1;
}

/* Writers take the lock up front (IMMEDIATE) so that a busy database waits in BEGIN
 * under the busy timeout instead of failing half-way through. */
static int tx_begin(ts_store *s, char *err, size_t errlen, const char *what) {
    if (exec(s, "BEGIN IMMEDIATE") != 0)
        return fail_sql(s, err, errlen, "%s: cannot start a transaction", what);
    return 0;
}

/* Commit when ok == 0 (reporting a failed commit), else roll back. Returns 0 or -1. */
static int tx_end(ts_store *s, int ok, char *err, size_t errlen, const char *what) {
    if (ok == 0 && exec(s, "COMMIT") == 0)
        return 0;
    if (ok == 0)
        fail_sql(s, err, errlen, "%s: commit failed", what);
    if (!sqlite3_get_autocommit(s->db))
        exec(s, "ROLLBACK");
    return -1;
}

/* ---- open: identify, configure, migrate ------------------------------------------------ */

int ts_store_schema_latest(void) {
    return ts_migrations_count > 0 ? ts_migrations[ts_migrations_count - 1].version : 0;
}

int ts_store_schema_version(ts_store *s) { return s->schema; }

/* Create the file ourselves so it is 0600 from the start; SQLite gives -wal and -shm the
 * database file's mode. An existing file keeps its mode. */
static int create_private(ts_store *s, char *err, size_t errlen) {
    int fd = open(s->path, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
    if (fd >= 0)
        return close(fd);
    if (errno == EEXIST)
        return 0;
    return fail(s, err, errlen, "cannot create: %s", strerror(errno));
}

/* Refuse anything but an empty file or a tscale database this binary can handle. */
static int identify(ts_store *s, char *err, size_t errlen) {
    int64_t app, version, objects;
    if (query_int(s, "PRAGMA application_id", &app) != 0 ||
        query_int(s, "PRAGMA user_version", &version) != 0 ||
        query_int(s, "SELECT count(*) FROM sqlite_master", &objects) != 0) {
        if (sqlite3_errcode(s->db) == SQLITE_NOTADB)
            return fail(s, err, errlen, "not a tscale database (not an SQLite file at all)");
        return fail_sql(s, err, errlen, "cannot read");
    }
    if (app != TS_APPLICATION_ID && (app != 0 || version != 0 || objects != 0))
        return fail(s, err, errlen,
                    "not a tscale database (an SQLite file with application_id %lld and %lld "
                    "schema objects); refusing to change it",
                    (long long)app, (long long)objects);
    if (version > ts_store_schema_latest())
        return fail(s, err, errlen, "schema version %lld is newer than this binary's %d; upgrade tscale",
                    (long long)version, ts_store_schema_latest());
    s->schema = (int)version;
    return 0;
}

static int configure(ts_store *s, char *err, size_t errlen) {
    if (sqlite3_db_readonly(s->db, "main") == 1)
        return fail(s, err, errlen, "opened read-only (check the file's and directory's permissions)");
    /* 16 KiB pages for a new database (no effect on an existing one: SQLite fixes the page
     * size with the first table, and WAL mode keeps it). A journal entry of the mid model of
     * bench/journal_bench.py (262 KB) is 64 overflow pages at SQLite's default 4 KiB, each its
     * own WAL frame and write; at 16 KiB the persistence thread's time per step went from
     * 1.18-1.29 to 0.91-0.98 ms and mid's feedback with the journal from 134-143 to 152-156
     * steps/s. demo's throughput did not move (2 pages a commit; its persistence thread 0-3
     * us more per step, 2.3x the bytes written); 64 KiB pages made demo 30 % slower (SQLite
     * checksums and copies whole pages). README "What the journal costs". */
    if (exec(s, "PRAGMA page_size=16384") != 0)
        return fail_sql(s, err, errlen, "cannot configure");
    sqlite3_stmt *st;
    if (prepare(s, "PRAGMA journal_mode=WAL", &st) != 0)
        return fail_sql(s, err, errlen, "cannot enable WAL mode");
    int rc = sqlite3_step(st);
    int wal = rc == SQLITE_ROW && strcmp((const char *)sqlite3_column_text(st, 0), "wal") == 0;
    sqlite3_finalize(st);
    if (!wal)
        return rc == SQLITE_ROW ? fail(s, err, errlen, "cannot enable WAL mode (is it on a network file system?)")
                                : fail_sql(s, err, errlen, "cannot enable WAL mode");
    /* A small page cache (256 KiB, SQLite's default is 2 MB): the daemon reads the database
     * once at start and otherwise writes blobs, which a cache does not speed up; 2 MB was
     * 9 % of the resident memory of a 33.5M-weight model (bench/rss.py). */
    if (exec(s, "PRAGMA synchronous=FULL; PRAGMA foreign_keys=ON; PRAGMA cache_size=-256") != 0)
        return fail_sql(s, err, errlen, "cannot configure");
    return 0;
}

/* Apply each migration up to target not yet applied, each in its own transaction that
 * also records the version. The version is re-read inside the transaction, so two
 * processes opening a new database at once do not both apply a migration. */
static int migrate(ts_store *s, int target, char *err, size_t errlen) {
    for (int i = 0; i < ts_migrations_count && ts_migrations[i].version <= target; i++) {
        const ts_migration *mg = &ts_migrations[i];
        int64_t cur;
        char what[96], mark[128];
        snprintf(what, sizeof what, "migration %s", mg->name);
        if (tx_begin(s, err, errlen, what) != 0)
            return -1;
        int rc = query_int(s, "PRAGMA user_version", &cur);
        if (rc == 0 && mg->version > cur) {
            snprintf(mark, sizeof mark, "PRAGMA application_id=%d; PRAGMA user_version=%d",
                     TS_APPLICATION_ID, mg->version);
            rc = exec(s, mg->sql) == 0 && exec(s, mark) == 0 ? 0 : -1;
            if (rc != 0)
                fail_sql(s, err, errlen, "%s failed", what);
        }
        if (tx_end(s, rc, err, errlen, what) != 0)
            return -1;
        if (mg->version > s->schema)
            s->schema = mg->version;
    }
    return 0;
}

ts_store *ts_store_open_version(const char *path, int target, char *err, size_t errlen) {
    ts_store *s = calloc(1, sizeof *s);
    if (!s || !(s->path = strdup(path))) {
        free(s);
        snprintf(err, errlen, "database %s: out of memory", path);
        return NULL;
    }
    int rc = create_private(s, err, errlen);
    if (rc == 0 && sqlite3_open_v2(path, &s->db, SQLITE_OPEN_READWRITE, NULL) != SQLITE_OK)
        rc = s->db ? fail_sql(s, err, errlen, "cannot open") : fail(s, err, errlen, "cannot open: out of memory");
    if (rc == 0) {
        sqlite3_extended_result_codes(s->db, 1);
        sqlite3_busy_timeout(s->db, TS_BUSY_TIMEOUT_MS);
        rc = identify(s, err, errlen);
    }
    if (rc == 0)
        rc = configure(s, err, errlen);
    if (rc == 0)
        rc = migrate(s, target, err, errlen);
    if (rc != 0) {
        ts_store_close(s);
        return NULL;
    }
    return s;
}

ts_store *ts_store_open(const char *path, char *err, size_t errlen) {
    return ts_store_open_version(path, ts_store_schema_latest(), err, errlen);
}

void ts_store_close(ts_store *s) {
    if (!s)
        return;
    for (int i = 0; i < J_COUNT; i++)
        sqlite3_finalize(s->journal[i]);
    sqlite3_close(s->db); /* NULL-safe; all other statements are finalized by their users */
    free(s->path);
    free(s);
}

/* ---- models ------------------------------------------------------------------------- */

static sqlite3_stmt *journal_stmt(ts_store *s, int i);

/* id of model name; 0 when unknown (create: insert it). 0, or -1 + err. */
static int model_id(ts_store *s, const char *name, int create, int64_t *id, char *err, size_t errlen) {
    sqlite3_stmt *st = journal_stmt(s, J_MODEL); /* cached: every group commit looks it up */
    *id = 0;
    if (!st)
        return fail_sql(s, err, errlen, "model '%s': lookup failed", name);
    sqlite3_bind_text(st, 1, name, -1, SQLITE_STATIC);
    int rc = sqlite3_step(st);
    *id = rc == SQLITE_ROW ? sqlite3_column_int64(st, 0) : 0;
    sqlite3_reset(st);
    if (rc != SQLITE_ROW && rc != SQLITE_DONE)
        return fail_sql(s, err, errlen, "model '%s': lookup failed", name);
    if (*id || !create)
        return 0;
    if (prepare(s, "INSERT INTO models (name, created_at, updated_at) VALUES (?1, ?2, ?2)", &st) != 0)
        return fail_sql(s, err, errlen, "model '%s': cannot add", name);
    sqlite3_bind_text(st, 1, name, -1, SQLITE_STATIC);
    sqlite3_bind_int64(st, 2, now_ms());
    if (step_done(st) != 0)
        return fail_sql(s, err, errlen, "model '%s': cannot add", name);
    *id = sqlite3_last_insert_rowid(s->db);
    return 0;
}

/* As model_id, but an unknown name is an error. */
static int model_known(ts_store *s, const char *name, int64_t *id, char *err, size_t errlen) {
    if (model_id(s, name, 0, id, err, errlen) != 0)
        return -1;
    return *id ? 0 : fail(s, err, errlen, "model '%s' not found", name);
}

/* ---- weights: the immutable parts, content-addressed ------------------------------------ */

static const char *const layer_columns =
    "idx, kind, in_dim, out_dim, group_size, has_bias, t_pad, t_packed, e, bias";

/* Does the blob in column col hold exactly n bytes equal to p (or is NULL when p is)? */
static int blob_is(sqlite3_stmt *st, int col, const void *p, size_t n) {
    const void *b = sqlite3_column_blob(st, col);
    size_t len = (size_t)sqlite3_column_bytes(st, col);
    if (!p)
        return sqlite3_column_type(st, col) == SQLITE_NULL;
    return len == n && (n == 0 || memcmp(b, p, n) == 0);
}

/* Byte-for-byte: is weights row id the immutable part of m? (The content hash only
 * finds candidates; a 64-bit hash is not proof of equality.) 1, 0, or -1 on error. */
static int weights_equal(ts_store *s, int64_t id, const ts_model *m) {
    char sql[256];
    sqlite3_stmt *st;
    snprintf(sql, sizeof sql, "SELECT %s FROM weight_layers WHERE weights_id = ?1 ORDER BY idx", layer_columns);
    if (prepare(s, sql, &st) != 0)
        return -1;
    sqlite3_bind_int64(st, 1, id);
    int i = 0, same = 1, rc = SQLITE_DONE;
    while (same == 1 && (rc = sqlite3_step(st)) == SQLITE_ROW) {
        const ts_layer *l = i < m->n_layers ? &m->layers[i] : NULL;
        same = l && sqlite3_column_int64(st, 0) == i &&
               strcmp((const char *)sqlite3_column_text(st, 1), ts_layer_kind_name(l->spec.kind)) == 0 &&
               sqlite3_column_int64(st, 2) == l->spec.in_dim && sqlite3_column_int64(st, 3) == l->spec.out_dim;
        if (same && is_ternary(l)) {
            uint8_t *packed = packed_copy(l);
            same = !packed ? -1
                   : sqlite3_column_int64(st, 4) == l->spec.group_size &&
                     sqlite3_column_int64(st, 5) == l->spec.has_bias && sqlite3_column_int64(st, 6) == l->T_pad &&
                     blob_is(st, 7, packed, packed_bytes(l)) && blob_is(st, 8, l->E, (size_t)l->n_groups) &&
                     blob_is(st, 9, l->bias, (size_t)l->rows * sizeof(int32_t));
            free(packed);
        }
        i++;
    }
    if (same && rc != SQLITE_DONE)
        same = -1;
    sqlite3_finalize(st);
    return same == 1 && i != m->n_layers ? 0 : same;
}

static int bind_blob(sqlite3_stmt *st, int col, const void *p, size_t n) {
    return p ? sqlite3_bind_blob64(st, col, p, n, SQLITE_STATIC) : sqlite3_bind_null(st, col);
}

static int layers_insert(ts_store *s, int64_t weights_id, const ts_model *m) {
    char sql[256];
    sqlite3_stmt *st;
    snprintf(sql, sizeof sql, "INSERT INTO weight_layers (weights_id, %s) VALUES (?1,?2,?3,?4,?5,?6,?7,?8,?9,?10,?11)",
             layer_columns);
    if (prepare(s, sql, &st) != 0)
        return -1;
    int rc = SQLITE_DONE;
    for (int i = 0; i < m->n_layers && rc == SQLITE_DONE; i++) {
        const ts_layer *l = &m->layers[i];
        int t = is_ternary(l);
        sqlite3_reset(st);
        sqlite3_bind_int64(st, 1, weights_id);
        sqlite3_bind_int64(st, 2, i);
        sqlite3_bind_text(st, 3, ts_layer_kind_name(l->spec.kind), -1, SQLITE_STATIC);
        sqlite3_bind_int64(st, 4, l->spec.in_dim);
        sqlite3_bind_int64(st, 5, l->spec.out_dim);
        sqlite3_bind_int64(st, 6, t ? l->spec.group_size : 0);
        sqlite3_bind_int64(st, 7, t && l->spec.has_bias);
        sqlite3_bind_int64(st, 8, t ? l->T_pad : 0);
        uint8_t *packed = t ? packed_copy(l) : NULL;
        if (t && !packed) {
            rc = SQLITE_NOMEM;
            break;
        }
        bind_blob(st, 9, packed, t ? packed_bytes(l) : 0);
        bind_blob(st, 10, t ? l->E : NULL, t ? (size_t)l->n_groups : 0);
        bind_blob(st, 11, t ? l->bias : NULL, t ? (size_t)l->rows * sizeof(int32_t) : 0);
        rc = sqlite3_step(st);
        free(packed);   /* bound SQLITE_STATIC: used until the step is done */
    }
    sqlite3_finalize(st);
    return rc == SQLITE_DONE ? 0 : -1;
}

static int64_t weights_bytes(const ts_model *m) {
    int64_t n = 0;
    for (int i = 0; i < m->n_layers; i++) {
        const ts_layer *l = &m->layers[i];
        if (is_ternary(l))
            n += (int64_t)packed_bytes(l) + l->n_groups + (l->bias ? l->rows * 4 : 0);
    }
    return n;
}

/* The weights row holding m's immutable parts, inserted when there is none. In a
 * transaction. 0, or -1 (SQLite error). */
static int weights_put(ts_store *s, const ts_model *m, int64_t *id) {
    uint64_t h;
    sqlite3_stmt *st;
    if (model_hash(m, 0, &h) != 0)
        return -1;
    if (prepare(s, "SELECT id FROM weights WHERE content_hash = ?1 AND n_layers = ?2", &st) != 0)
        return -1;
    sqlite3_bind_int64(st, 1, (int64_t)h);
    sqlite3_bind_int64(st, 2, m->n_layers);
    int rc = SQLITE_DONE, eq = 0;
    while (!eq && (rc = sqlite3_step(st)) == SQLITE_ROW) {
        *id = sqlite3_column_int64(st, 0);
        eq = weights_equal(s, *id, m);
    }
    sqlite3_finalize(st);
    if (eq)
        return eq == 1 ? 0 : -1;
    if (rc != SQLITE_DONE ||
        prepare(s, "INSERT INTO weights (content_hash, n_layers, state_len, bytes, created_at) "
                   "VALUES (?1, ?2, ?3, ?4, ?5)", &st) != 0)
        return -1;
    sqlite3_bind_int64(st, 1, (int64_t)h);
    sqlite3_bind_int64(st, 2, m->n_layers);
    sqlite3_bind_int64(st, 3, (int64_t)ts_state_len(m));
    sqlite3_bind_int64(st, 4, weights_bytes(m));
    sqlite3_bind_int64(st, 5, now_ms());
    if (step_done(st) != 0)
        return -1;
    *id = sqlite3_last_insert_rowid(s->db);
    return layers_insert(s, *id, m);
}

/* ---- versions --------------------------------------------------------------------------- */

/* In a transaction: model mid (name) is active with version number as current. */
static int version_current(ts_store *s, const char *name, int64_t mid, int64_t number, char *err, size_t errlen) {
    sqlite3_stmt *st;
    if (prepare(s, "UPDATE models SET active = 1, current_version = ?2, updated_at = ?3 WHERE id = ?1", &st) != 0)
        return fail_sql(s, err, errlen, "model '%s': cannot update", name);
    sqlite3_bind_int64(st, 1, mid);
    sqlite3_bind_int64(st, 2, number);
    sqlite3_bind_int64(st, 3, now_ms());
    return step_done(st) == 0 ? 0 : fail_sql(s, err, errlen, "model '%s': cannot update", name);
}

/* In a transaction: the version of name holding m as it came from file_hash, added
 * (number = last + 1) when there is none; name becomes active with it as current. */
static int version_put(ts_store *s, const char *name, const ts_model *m, uint64_t file_hash, int64_t *number,
                       int *created, char *err, size_t errlen) {
    int64_t mid, wid;
    sqlite3_stmt *st;
    if (model_id(s, name, 1, &mid, err, errlen) != 0)
        return -1;
    if (weights_put(s, m, &wid) != 0)
        return fail_sql(s, err, errlen, "model '%s': cannot store the weights", name);
    *created = 0;
    *number = 0;
    if (prepare(s, "SELECT number FROM versions WHERE model_id = ?1 AND file_hash = ?2 AND weights_id = ?3 "
                   "ORDER BY number DESC LIMIT 1", &st) != 0)
        return fail_sql(s, err, errlen, "model '%s': version lookup failed", name);
    sqlite3_bind_int64(st, 1, mid);
    sqlite3_bind_int64(st, 2, (int64_t)file_hash);
    sqlite3_bind_int64(st, 3, wid);
    int rc = step_int(st, number);
    if (rc == SQLITE_DONE) {
        *created = 1;
        if (prepare(s, "INSERT INTO versions (model_id, number, weights_id, file_hash, created_at) "
                       "VALUES (?1, (SELECT coalesce(max(number), 0) + 1 FROM versions WHERE model_id = ?1), "
                       "?2, ?3, ?4) RETURNING number", &st) != 0)
            return fail_sql(s, err, errlen, "model '%s': cannot add a version", name);
        sqlite3_bind_int64(st, 1, mid);
        sqlite3_bind_int64(st, 2, wid);
        sqlite3_bind_int64(st, 3, (int64_t)file_hash);
        sqlite3_bind_int64(st, 4, now_ms());
        rc = sqlite3_step(st);
        *number = rc == SQLITE_ROW ? sqlite3_column_int64(st, 0) : 0;
        rc = rc == SQLITE_ROW ? sqlite3_step(st) : rc;
        sqlite3_finalize(st);
    }
    if (rc != SQLITE_ROW && rc != SQLITE_DONE)
        return fail_sql(s, err, errlen, "model '%s': cannot add a version", name);
    return version_current(s, name, mid, *number, err, errlen);
}

int ts_store_put_version(ts_store *s, const char *name, const ts_model *m, uint64_t file_hash, int64_t *version,
                         int *created, char *err, size_t errlen) {
    char what[TS_WHAT_MAX];
    snprintf(what, sizeof what, "storing a version of model '%s'", name);
    if (tx_begin(s, err, errlen, what) != 0)
        return -1;
    int rc = version_put(s, name, m, file_hash, version, created, err, errlen);
    return tx_end(s, rc, err, errlen, what);
}

int ts_store_find_version(ts_store *s, const char *name, uint64_t file_hash, int64_t *version, char *err,
                          size_t errlen) {
    sqlite3_stmt *st;
    *version = 0;
    if (prepare(s, "SELECT v.number FROM versions v JOIN models m ON m.id = v.model_id "
                   "WHERE m.name = ?1 AND v.file_hash = ?2 ORDER BY v.number DESC LIMIT 1", &st) != 0)
        return fail_sql(s, err, errlen, "model '%s': version lookup failed", name);
    sqlite3_bind_text(st, 1, name, -1, SQLITE_STATIC);
    sqlite3_bind_int64(st, 2, (int64_t)file_hash);
    int rc = step_int(st, version);
    if (rc != SQLITE_ROW && rc != SQLITE_DONE)
        return fail_sql(s, err, errlen, "model '%s': version lookup failed", name);
    return 0;
}

/* ---- snapshots ---------------------------------------------------------------------------- */

/* Delete all but the newest keep snapshots of model mid (keep <= 0: none). */
static int retention(ts_store *s, int64_t mid, int keep) {
    if (keep <= 0)
        return 0;
    sqlite3_stmt *st;
    if (prepare(s, "DELETE FROM snapshots WHERE model_id = ?1 AND id <= "
                   "(SELECT id FROM snapshots WHERE model_id = ?1 ORDER BY id DESC LIMIT 1 OFFSET ?2)", &st) != 0)
        return -1;
    sqlite3_bind_int64(st, 1, mid);
    sqlite3_bind_int64(st, 2, keep);
    return step_done(st);
}

/* The newest journal sequence number used: the journal's, or a snapshot's journal_seq. */
#define JOURNAL_LAST_SQL "max(coalesce((SELECT max(seq) FROM journal), 0), " \
                         "coalesce((SELECT max(journal_seq) FROM snapshots), 0))"

/* Delete model mid's journal entries that its second-newest snapshot covers: the newest
 * covers them too, and one snapshot back remains recoverable exactly should the newest be
 * found damaged. So the journal holds one to two snapshot intervals of steps. */
static int journal_prune(ts_store *s, int64_t mid) {
    sqlite3_stmt *st;
    if (prepare(s, "DELETE FROM journal WHERE model_id = ?1 AND seq <= (SELECT journal_seq FROM "
                   "snapshots WHERE model_id = ?1 ORDER BY id DESC LIMIT 1 OFFSET 1)", &st) != 0)
        return -1;
    sqlite3_bind_int64(st, 1, mid);
    return step_done(st);
}

/* The row ids of name's version and model, and the state length that version needs. */
static int version_ids(ts_store *s, const char *name, int64_t version, int64_t *vid, int64_t *mid,
                       int64_t *state_len, char *err, size_t errlen) {
    sqlite3_stmt *st;
    if (prepare(s, "SELECT v.id, m.id, w.state_len FROM models m JOIN versions v ON v.model_id = m.id "
                   "JOIN weights w ON w.id = v.weights_id WHERE m.name = ?1 AND v.number = ?2", &st) != 0)
        return fail_sql(s, err, errlen, "model '%s': version lookup failed", name);
    sqlite3_bind_text(st, 1, name, -1, SQLITE_STATIC);
    sqlite3_bind_int64(st, 2, version);
    int rc = sqlite3_step(st);
    if (rc == SQLITE_ROW) {
        *vid = sqlite3_column_int64(st, 0);
        *mid = sqlite3_column_int64(st, 1);
        *state_len = sqlite3_column_int64(st, 2);
    }
    sqlite3_finalize(st);
    if (rc == SQLITE_DONE)
        return fail(s, err, errlen, "model '%s' has no version %lld", name, (long long)version);
    return rc == SQLITE_ROW ? 0 : fail_sql(s, err, errlen, "model '%s': version lookup failed", name);
}

/* In a transaction: append the snapshot, then apply retention. */
static int snapshot_put(ts_store *s, const char *name, int64_t version, const int64_t *state, size_t state_len,
                        int64_t step, const char *reason, const char *repl, int keep, ts_snapshot_info *out,
                        char *err, size_t errlen) {
    int64_t vid = 0, mid = 0, need = 0, bytes = (int64_t)(state_len * sizeof *state);
    if (!reason || !reason[0] || strlen(reason) >= sizeof out->reason)
        return fail(s, err, errlen, "snapshot of model '%s': reason must be 1 to %zu characters", name,
                    sizeof out->reason - 1);
    if (version_ids(s, name, version, &vid, &mid, &need, err, errlen) != 0)
        return -1;
    if ((int64_t)state_len != need)
        return fail(s, err, errlen, "snapshot of model '%s': state has %zu values, version %lld needs %lld", name,
                    state_len, (long long)version, (long long)need);
    sqlite3_stmt *st;
    int64_t at = now_ms();
    /* The snapshot covers every journal entry written before it: the persistence thread
     * writes entries and snapshots in the order the loop made them (journal.h). When the
     * journal is empty, the newest journal_seq of any snapshot keeps the sequence monotonic. */
    if (prepare(s, "INSERT INTO snapshots (model_id, version_id, step, created_at, reason, state, checksum, bytes, "
                   "repl, journal_seq) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, " JOURNAL_LAST_SQL ")", &st) != 0)
        return fail_sql(s, err, errlen, "snapshot of model '%s'", name);
    sqlite3_bind_int64(st, 1, mid);
    sqlite3_bind_int64(st, 2, vid);
    sqlite3_bind_int64(st, 3, step);
    sqlite3_bind_int64(st, 4, at);
    sqlite3_bind_text(st, 5, reason, -1, SQLITE_STATIC);
    sqlite3_bind_blob64(st, 6, state_len ? (const void *)state : "", (sqlite3_uint64)bytes, SQLITE_STATIC);
    sqlite3_bind_int64(st, 7, (int64_t)state_checksum(state, (size_t)bytes));
    sqlite3_bind_int64(st, 8, bytes);
    if (repl)
        sqlite3_bind_text(st, 9, repl, -1, SQLITE_STATIC);
    else
        sqlite3_bind_null(st, 9);
    if (step_done(st) != 0)
        return fail_sql(s, err, errlen, "snapshot of model '%s'", name);
    int64_t sid = sqlite3_last_insert_rowid(s->db), jseq = 0;
    char sql[96];
    snprintf(sql, sizeof sql, "SELECT journal_seq FROM snapshots WHERE id = %lld", (long long)sid);
    if (query_int(s, sql, &jseq) != 0)
        return fail_sql(s, err, errlen, "snapshot of model '%s'", name);
    if (out) {
        *out = (ts_snapshot_info){.snapshot_id = sid, .version = version, .step = step,
                                  .created_at_ms = at, .bytes = bytes, .journal_seq = jseq};
        snprintf(out->reason, sizeof out->reason, "%s", reason);
    }
    if (retention(s, mid, keep) != 0)
        return fail_sql(s, err, errlen, "model '%s': deleting old snapshots failed", name);
    if (journal_prune(s, mid) != 0)
        return fail_sql(s, err, errlen, "model '%s': deleting covered journal entries failed", name);
    return 0;
}

int ts_store_put_snapshot(ts_store *s, const char *name, int64_t version, const int64_t *state, size_t state_len,
                          int64_t step, const char *reason, const char *repl, int keep, ts_snapshot_info *out,
                          char *err, size_t errlen) {
    char what[TS_WHAT_MAX];
    snprintf(what, sizeof what, "snapshot of model '%s'", name);
    if (tx_begin(s, err, errlen, what) != 0)
        return -1;
    int rc = snapshot_put(s, name, version, state, state_len, step, reason, repl, keep, out, err, errlen);
    return tx_end(s, rc, err, errlen, what);
}

/* In a transaction: name's version number `version` holds m's weights — found, or added
 * under exactly that number — and is name's current version. */
static int version_put_as(ts_store *s, const char *name, const ts_model *m, int64_t version, char *err,
                          size_t errlen) {
    int64_t mid, wid, held = 0;
    uint64_t hash;
    sqlite3_stmt *st;
    if (model_id(s, name, 1, &mid, err, errlen) != 0)
        return -1;
    if (weights_put(s, m, &wid) != 0 || model_hash(m, 1, &hash) != 0)
        return fail_sql(s, err, errlen, "model '%s': cannot store the weights", name);
    if (prepare(s, "SELECT weights_id FROM versions WHERE model_id = ?1 AND number = ?2", &st) != 0)
        return fail_sql(s, err, errlen, "model '%s': version lookup failed", name);
    sqlite3_bind_int64(st, 1, mid);
    sqlite3_bind_int64(st, 2, version);
    int rc = step_int(st, &held);
    if (rc == SQLITE_ROW && held != wid)
        return fail(s, err, errlen, "model '%s': this database's version %lld holds other weights than the "
                    "published state's version %lld (a replica must start with the same model files as the "
                    "others, or with an empty database)", name, (long long)version, (long long)version);
    if (rc == SQLITE_DONE) {
        if (prepare(s, "INSERT INTO versions (model_id, number, weights_id, file_hash, created_at) "
                       "VALUES (?1, ?2, ?3, ?4, ?5)", &st) != 0)
            return fail_sql(s, err, errlen, "model '%s': cannot add version %lld", name, (long long)version);
        sqlite3_bind_int64(st, 1, mid);
        sqlite3_bind_int64(st, 2, version);
        sqlite3_bind_int64(st, 3, wid);
        sqlite3_bind_int64(st, 4, (int64_t)hash);
        sqlite3_bind_int64(st, 5, now_ms());
        rc = step_done(st) == 0 ? SQLITE_DONE : SQLITE_ERROR;
    }
    if (rc != SQLITE_ROW && rc != SQLITE_DONE)
        return fail_sql(s, err, errlen, "model '%s': cannot add version %lld", name, (long long)version);
    return version_current(s, name, mid, version, err, errlen);
}

/* A version of m (as_version > 0: exactly that number, version_put_as; else
 * version_put's) and a snapshot of m's state, in one transaction. */
static int model_put(ts_store *s, const char *name, const ts_model *m, uint64_t file_hash, int64_t as_version,
                     const char *reason, const char *repl, int keep, int64_t *version, int *created,
                     ts_snapshot_info *out, char *err, size_t errlen) {
    size_t n = ts_state_len(m);
    int64_t *state = malloc((n ? n : 1) * sizeof *state);
    if (!state)
        return fail(s, err, errlen, "model '%s': out of memory", name);
    ts_state_save(m, state);
    char what[TS_WHAT_MAX];
    snprintf(what, sizeof what, "storing model '%s'", name);
    int rc = tx_begin(s, err, errlen, what);
    if (rc == 0) {
        *created = 0;
        *version = as_version;
        rc = as_version > 0 ? version_put_as(s, name, m, as_version, err, errlen)
                            : version_put(s, name, m, file_hash, version, created, err, errlen);
        if (rc == 0)
            rc = snapshot_put(s, name, *version, state, n, ts_model_step(m), reason, repl, keep, out, err, errlen);
        rc = tx_end(s, rc, err, errlen, what);
    }
    free(state);
    return rc;
}

int ts_store_put_model(ts_store *s, const char *name, const ts_model *m, uint64_t file_hash, const char *reason,
                       int keep, int64_t *version, int *created, ts_snapshot_info *out, char *err, size_t errlen) {
    return model_put(s, name, m, file_hash, 0, reason, NULL, keep, version, created, out, err, errlen);
}

int ts_store_put_joined(ts_store *s, const char *name, const ts_model *m, int64_t version, const char *reason,
                        const char *repl, int keep, ts_snapshot_info *out, char *err, size_t errlen) {
    int64_t v;
    int created;
    if (version <= 0)
        return fail(s, err, errlen, "model '%s': version %lld is not a version number", name, (long long)version);
    return model_put(s, name, m, 0, version, reason, repl, keep, &v, &created, out, err, errlen);
}

int ts_store_next_version(ts_store *s, const char *name, int64_t *next, char *err, size_t errlen) {
    sqlite3_stmt *st;
    if (prepare(s, "SELECT coalesce(max(v.number), 0) + 1 FROM versions v JOIN models m ON m.id = v.model_id "
                   "WHERE m.name = ?1", &st) != 0)
        return fail_sql(s, err, errlen, "model '%s': version lookup failed", name);
    sqlite3_bind_text(st, 1, name, -1, SQLITE_STATIC);
    int rc = step_int(st, next);
    return rc == SQLITE_ROW ? 0 : fail_sql(s, err, errlen, "model '%s': version lookup failed", name);
}

int ts_store_snapshot_repl(ts_store *s, int64_t snapshot_id, char **repl, char *err, size_t errlen) {
    sqlite3_stmt *st;
    *repl = NULL;
    if (prepare(s, "SELECT repl FROM snapshots WHERE id = ?1", &st) != 0)
        return fail_sql(s, err, errlen, "snapshot %lld: reading its replication position", (long long)snapshot_id);
    sqlite3_bind_int64(st, 1, snapshot_id);
    int rc = sqlite3_step(st);
    const unsigned char *t = rc == SQLITE_ROW ? sqlite3_column_text(st, 0) : NULL;
    if (t && !(*repl = strdup((const char *)t))) {
        sqlite3_finalize(st);
        return fail(s, err, errlen, "snapshot %lld: out of memory", (long long)snapshot_id);
    }
    sqlite3_finalize(st);
    if (rc == SQLITE_ROW || rc == SQLITE_DONE)
        return 0;
    return fail_sql(s, err, errlen, "snapshot %lld: reading its replication position", (long long)snapshot_id);
}

static void info_read(sqlite3_stmt *st, ts_snapshot_info *info) {
    *info = (ts_snapshot_info){.snapshot_id = sqlite3_column_int64(st, 0),
                               .version = sqlite3_column_int64(st, 1),
                               .step = sqlite3_column_int64(st, 2),
                               .created_at_ms = sqlite3_column_int64(st, 3),
                               .bytes = sqlite3_column_int64(st, 4),
                               .journal_seq = sqlite3_column_int64(st, 6)};
    const unsigned char *r = sqlite3_column_text(st, 5);
    snprintf(info->reason, sizeof info->reason, "%s", r ? (const char *)r : "");
}

#define SNAPSHOT_INFO_COLUMNS "s.id, v.number, s.step, s.created_at, s.bytes, s.reason, s.journal_seq"

int ts_store_list_snapshots(ts_store *s, const char *name, ts_snapshot_info **out, int *n, char *err,
                            size_t errlen) {
    int64_t mid, count;
    sqlite3_stmt *st;
    *out = NULL;
    *n = 0;
    if (model_id(s, name, 0, &mid, err, errlen) != 0)
        return -1;
    char sql[128];
    snprintf(sql, sizeof sql, "SELECT count(*) FROM snapshots WHERE model_id = %lld", (long long)mid);
    if (query_int(s, sql, &count) != 0 ||
        prepare(s, "SELECT " SNAPSHOT_INFO_COLUMNS " FROM snapshots s JOIN versions v ON v.id = s.version_id "
                   "WHERE s.model_id = ?1 ORDER BY s.id DESC", &st) != 0)
        return fail_sql(s, err, errlen, "model '%s': listing snapshots failed", name);
    *out = calloc((size_t)count + 1, sizeof **out);
    if (!*out) {
        sqlite3_finalize(st);
        return fail(s, err, errlen, "model '%s': out of memory listing snapshots", name);
    }
    sqlite3_bind_int64(st, 1, mid);
    int rc = SQLITE_DONE;
    while (*n < count && (rc = sqlite3_step(st)) == SQLITE_ROW)
        info_read(st, &(*out)[(*n)++]);
    sqlite3_finalize(st);
    if (*n < count && rc != SQLITE_DONE) {
        free(*out);
        *out = NULL;
        *n = 0;
        return fail_sql(s, err, errlen, "model '%s': listing snapshots failed", name);
    }
    return 0;
}

/* ---- load ----------------------------------------------------------------------------------- */

/* Read the architecture of a weight_layers query (layer_columns, ORDER BY idx) into
 * specs. 0; -1 + why when the rows are damaged; -2 on an SQLite error. */
static int specs_read(sqlite3_stmt *st, ts_layer_spec *specs, int *n, char *why, size_t whylen) {
    int rc;
    *n = 0;
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        const char *kind = (const char *)sqlite3_column_text(st, 1);
        ts_layer_spec *sp = &specs[*n];
        if (*n >= TS_MAX_LAYERS)
            return snprintf(why, whylen, "more than %d layers", TS_MAX_LAYERS), -1;
        if (sqlite3_column_int64(st, 0) != *n)
            return snprintf(why, whylen, "layer %d is missing", *n), -1;
        memset(sp, 0, sizeof *sp);
        if (!kind || ts_layer_kind_parse(kind, &sp->kind) != 0)
            return snprintf(why, whylen, "layer %d has unknown type '%s'", *n, kind ? kind : "(null)"), -1;
        sp->in_dim = sqlite3_column_int64(st, 2);
        sp->out_dim = sqlite3_column_int64(st, 3);
        sp->group_size = sqlite3_column_int64(st, 4);
        sp->has_bias = sqlite3_column_int64(st, 5) != 0;
        (*n)++;
    }
    if (rc != SQLITE_DONE)
        return -2;
    return *n ? 0 : (snprintf(why, whylen, "it has no layers"), -1);
}

/* Copy one stored layer's immutable parts into l (allocated for its architecture),
 * checking every size first. 0, or -1 + why. */
static int layer_fill(sqlite3_stmt *st, ts_layer *l, char *why, size_t whylen) {
    if (!is_ternary(l))
        return 0;
    const struct {
        int col;
        void *dst;
        size_t n;
        const char *name;
    } parts[] = {
        {7, l->T_packed, packed_bytes(l), "T_packed"},
        {8, l->E, (size_t)l->n_groups, "E"},
        {9, l->bias, l->bias ? (size_t)l->rows * sizeof(int32_t) : 0, "bias"},
    };
    for (size_t i = 0; i < sizeof parts / sizeof parts[0]; i++) {
        const void *b = sqlite3_column_blob(st, parts[i].col);
        size_t len = (size_t)sqlite3_column_bytes(st, parts[i].col);
        int present = sqlite3_column_type(st, parts[i].col) != SQLITE_NULL;
        if (!parts[i].dst && present)
            return snprintf(why, whylen, "%s present but the layer has none", parts[i].name), -1;
        if (parts[i].dst && (!present || len != parts[i].n))
            return snprintf(why, whylen, "%s has %zu bytes, its shape needs %zu", parts[i].name, len, parts[i].n), -1;
        if (parts[i].dst && len)
            memcpy(parts[i].dst, b, len);
    }
    int64_t pad = (int64_t)packed_bytes(l) * 5 - l->rows * l->cols;
    if (sqlite3_column_int64(st, 6) != pad)
        return snprintf(why, whylen, "T_pad is %lld, its shape needs %lld", (long long)sqlite3_column_int64(st, 6),
                        (long long)pad), -1;
    l->T_pad = pad;
    return 0;
}

/* A prepared model with the architecture and immutable parts of weights row wid and
 * zero state. A damaged row is an error naming the model, version and what is wrong. */
static ts_model *weights_load(ts_store *s, int64_t wid, const char *name, int64_t version, char *err,
                              size_t errlen) {
    char sql[256], why[256] = "", lwhy[200];
    sqlite3_stmt *st;
    ts_layer_spec specs[TS_MAX_LAYERS];
    ts_model *m = NULL;
    int n = 0, rc;
    snprintf(sql, sizeof sql, "SELECT %s FROM weight_layers WHERE weights_id = ?1 ORDER BY idx", layer_columns);
    if (prepare(s, sql, &st) != 0) {
        fail_sql(s, err, errlen, "model '%s' version %lld: reading the weights failed", name, (long long)version);
        return NULL;
    }
    sqlite3_bind_int64(st, 1, wid);
    rc = specs_read(st, specs, &n, why, sizeof why);
    if (rc == 0 && !(m = ts_model_alloc(specs, n, why, sizeof why)))
        rc = -1;
    sqlite3_reset(st);
    for (int i = 0; rc == 0 && i < n; i++) {
        if (sqlite3_step(st) != SQLITE_ROW)
            rc = -2;
        else if (layer_fill(st, &m->layers[i], lwhy, sizeof lwhy) != 0)
            rc = -1, snprintf(why, sizeof why, "layer %d: %s", i, lwhy);
    }
    if (rc == -2)
        fail_sql(s, err, errlen, "model '%s' version %lld: reading the weights failed", name, (long long)version);
    sqlite3_finalize(st);
    if (rc == 0 && ts_model_prepare(m, why, sizeof why) != 0)
        rc = -1;
    if (rc == -1)
        fail(s, err, errlen, "model '%s' version %lld is damaged: %s", name, (long long)version, why);
    if (rc != 0 && m) {
        ts_model_free(m);
        m = NULL;
    }
    return m;
}

/* Does the state blob of the current snapshot row (columns 7, 8) match its checksum? */
static int state_intact(sqlite3_stmt *st) {
    const void *blob = sqlite3_column_blob(st, 7);
    size_t bytes = (size_t)sqlite3_column_bytes(st, 7);
    return bytes % sizeof(int64_t) == 0 &&
           (int64_t)state_checksum(blob, bytes) == sqlite3_column_int64(st, 8);
}

/* Load the current row's state into m. 1 when it fits m and gives the row's step; 0 when
 * it does not (a damaged row); -1 out of memory. */
static int state_apply(sqlite3_stmt *st, ts_model *m) {
    const void *blob = sqlite3_column_blob(st, 7);
    size_t bytes = (size_t)sqlite3_column_bytes(st, 7), n = ts_state_len(m);
    if (bytes != n * sizeof(int64_t))
        return 0;
    int64_t *state = malloc(bytes ? bytes : 1); /* an aligned copy of the blob */
    if (!state)
        return -1;
    if (bytes)
        memcpy(state, blob, bytes);
    ts_state_load(m, state);
    free(state);
    return ts_model_step(m) == sqlite3_column_int64(st, 2);
}

/* Walk name's snapshots newest first (or just snapshot_id) to the first intact one and
 * rebuild the model from it into *out. *bad counts the damaged ones passed over.
 * 1 found; 0 none intact; -1 + err on an error (a damaged version is one). */
static int snapshot_find(ts_store *s, const char *name, int64_t mid, int64_t snapshot_id, ts_model **out,
                         ts_snapshot_info *info, int *bad, char *err, size_t errlen) {
    sqlite3_stmt *st;
    ts_model *m = NULL;
    int64_t wid = 0;
    int rc = SQLITE_DONE, status = 0;
    *out = NULL;
    if (prepare(s, "SELECT " SNAPSHOT_INFO_COLUMNS ", s.state, s.checksum, v.weights_id FROM snapshots s "
                   "JOIN versions v ON v.id = s.version_id WHERE s.model_id = ?1 AND (?2 = 0 OR s.id = ?2) "
                   "ORDER BY s.id DESC", &st) != 0)
        return fail_sql(s, err, errlen, "model '%s': reading snapshots failed", name);
    sqlite3_bind_int64(st, 1, mid);
    sqlite3_bind_int64(st, 2, snapshot_id > 0 ? snapshot_id : 0);
    while (status == 0 && (rc = sqlite3_step(st)) == SQLITE_ROW) {
        if (!state_intact(st)) {
            (*bad)++;
            continue;
        }
        if (!m || sqlite3_column_int64(st, 9) != wid) {
            if (m)
                ts_model_free(m);
            wid = sqlite3_column_int64(st, 9);
            if (!(m = weights_load(s, wid, name, sqlite3_column_int64(st, 1), err, errlen))) {
                status = -1;
                break;
            }
        }
        int ok = state_apply(st, m);
        if (ok < 0)
            status = fail(s, err, errlen, "model '%s': out of memory loading a snapshot", name);
        else if (ok == 0)
            (*bad)++;
        else if ((status = 1) && info)
            info_read(st, info);
    }
    if (status == 0 && rc != SQLITE_DONE)
        status = fail_sql(s, err, errlen, "model '%s': reading snapshots failed", name);
    sqlite3_finalize(st);
    if (status != 1 && m)
        ts_model_free(m);
    else
        *out = m;
    return status;
}

ts_model *ts_store_load(ts_store *s, const char *name, int64_t snapshot_id, ts_snapshot_info *info, int *skipped,
                        char *err, size_t errlen) {
    int64_t mid;
    int bad = 0, found = -1;
    ts_model *m = NULL;
    /* One read transaction: the snapshot and its version are read as of one moment. */
    if (exec(s, "BEGIN") != 0) {
        fail_sql(s, err, errlen, "model '%s': cannot start reading", name);
        return NULL;
    }
    if (model_known(s, name, &mid, err, errlen) == 0)
        found = snapshot_find(s, name, mid, snapshot_id, &m, info, &bad, err, errlen);
    if (!sqlite3_get_autocommit(s->db))
        exec(s, "ROLLBACK");
    if (skipped)
        *skipped = bad;
    if (found == 0 && snapshot_id > 0)
        fail(s, err, errlen, bad ? "snapshot %lld of model '%s' is damaged (checksum, size or step mismatch)"
                                 : "snapshot %lld of model '%s' not found",
             (long long)snapshot_id, name);
    else if (found == 0)
        fail(s, err, errlen, bad ? "model '%s': all %d of its snapshots are damaged" : "model '%s' has no snapshot",
             name, bad);
    return m;
}

/* ---- models: list, deactivate ------------------------------------------------------------- */

void ts_store_names_free(char **names, int n) {
    for (int i = 0; names && i < n; i++)
        free(names[i]);
    free(names);
}

int ts_store_list_models(ts_store *s, char ***names, int *n, char *err, size_t errlen) {
    sqlite3_stmt *st;
    int cap = 0, rc;
    *names = NULL;
    *n = 0;
    /* A name with no snapshot yet (a crash between storing a version and its first
     * snapshot) has no state to load: it is not listed, rather than failing the start. */
    if (prepare(s, "SELECT name FROM models m WHERE active = 1 AND "
                   "EXISTS (SELECT 1 FROM snapshots s WHERE s.model_id = m.id) ORDER BY name", &st) != 0)
        return fail_sql(s, err, errlen, "listing models failed");
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        if (*n == cap) {
            char **grown = realloc(*names, (size_t)(cap = cap ? 2 * cap : 8) * sizeof *grown);
            if (!grown)
                break;
            *names = grown;
        }
        if (!((*names)[*n] = strdup((const char *)sqlite3_column_text(st, 0))))
            break;
        (*n)++;
    }
    sqlite3_finalize(st);
    if (rc == SQLITE_DONE)
        return 0;
    rc == SQLITE_ROW ? fail(s, err, errlen, "listing models: out of memory") : fail_sql(s, err, errlen, "listing models failed");
    ts_store_names_free(*names, *n);
    *names = NULL;
    *n = 0;
    return -1;
}

/* active = 0 (DELETE) or 1 (a deleted model restored). */
static int set_active(ts_store *s, const char *name, int active, char *err, size_t errlen) {
    sqlite3_stmt *st;
    const char *what = active ? "activate" : "deactivate";
    if (prepare(s, "UPDATE models SET active = ?3, updated_at = ?2 WHERE name = ?1", &st) != 0)
        return fail_sql(s, err, errlen, "model '%s': cannot %s", name, what);
    sqlite3_bind_text(st, 1, name, -1, SQLITE_STATIC);
    sqlite3_bind_int64(st, 2, now_ms());
    sqlite3_bind_int(st, 3, active);
    if (step_done(st) != 0)
        return fail_sql(s, err, errlen, "model '%s': cannot %s", name, what);
    return sqlite3_changes(s->db) ? 0 : fail(s, err, errlen, "model '%s' not found", name);
}

int ts_store_deactivate(ts_store *s, const char *name, char *err, size_t errlen) {
    return set_active(s, name, 0, err, errlen);
}

int ts_store_activate(ts_store *s, const char *name, char *err, size_t errlen) {
    return set_active(s, name, 1, err, errlen);
}

/* ---- backup ----------------------------------------------------------------------------------- */

/* ---- the feedback journal ------------------------------------------------------------------ */

/* The cached statement i, reset for new bindings; NULL on an SQLite error. */
static sqlite3_stmt *journal_stmt(ts_store *s, int i) {
    if (!s->journal[i] && sqlite3_prepare_v3(s->db, journal_sql[i], -1, SQLITE_PREPARE_PERSISTENT,
                                             &s->journal[i], NULL) != SQLITE_OK)
        return NULL;
    sqlite3_reset(s->journal[i]);
    sqlite3_clear_bindings(s->journal[i]);
    return s->journal[i];
}

/* Run a cached statement once (it stays prepared). 0, or -1. */
static int journal_run(sqlite3_stmt *st) {
    int rc = sqlite3_step(st);
    sqlite3_reset(st);
    return rc == SQLITE_DONE ? 0 : -1;
}

static int journal_insert(ts_store *s, const ts_journal_row *r, int64_t mid) {
    sqlite3_stmt *st = journal_stmt(s, J_INSERT);
    if (!st)
        return -1;
    sqlite3_bind_int64(st, 1, r->seq);
    sqlite3_bind_int64(st, 2, mid);
    sqlite3_bind_int64(st, 3, r->version);
    sqlite3_bind_int64(st, 4, r->step);
    sqlite3_bind_int64(st, 5, r->created_at_ms);
    sqlite3_bind_blob64(st, 6, r->len ? r->payload : "", (sqlite3_uint64)r->len, SQLITE_STATIC);
    sqlite3_bind_int64(st, 7, (int64_t)r->checksum);
    if (journal_run(st) != 0)
        return -1;
    if (!r->request_id)
        return 0;
    if (!(st = journal_stmt(s, J_ID_INSERT)))
        return -1;
    sqlite3_bind_int64(st, 1, r->seq);
    sqlite3_bind_int64(st, 2, mid);
    sqlite3_bind_text(st, 3, r->request_id, -1, SQLITE_STATIC);
    sqlite3_bind_int64(st, 4, (int64_t)r->body_hash);
    sqlite3_bind_text(st, 5, r->answer ? r->answer : "", -1, SQLITE_STATIC);
    sqlite3_bind_int64(st, 6, r->created_at_ms);
    return journal_run(st);
}

int ts_store_journal_append(ts_store *s, const ts_journal_row *rows, int n, int64_t ids_before_ms,
                            char *err, size_t errlen) {
    sqlite3_stmt *begin = journal_stmt(s, J_BEGIN);
    if (!begin || journal_run(begin) != 0)
        return fail_sql(s, err, errlen, "journal commit: cannot start a transaction");
    int rc = 0;
    const char *last = NULL;
    int64_t mid = 0;
    for (int i = 0; i < n && rc == 0; i++) {
        if (!last || strcmp(last, rows[i].model) != 0) { /* groups are mostly one model */
            rc = model_known(s, rows[i].model, &mid, err, errlen);
            last = rows[i].model;
        }
        if (rc == 0 && journal_insert(s, &rows[i], mid) != 0)
            rc = fail_sql(s, err, errlen, "journal entry %lld of model '%s'", (long long)rows[i].seq,
                          rows[i].model);
    }
    if (rc == 0 && ids_before_ms > 0) {
        sqlite3_stmt *st = journal_stmt(s, J_ID_EXPIRE);
        if (st)
            sqlite3_bind_int64(st, 1, ids_before_ms);
        if (!st || journal_run(st) != 0)
            rc = fail_sql(s, err, errlen, "expiring feedback ids");
    }
    if (rc == 0) {
        sqlite3_stmt *commit = journal_stmt(s, J_COMMIT);
        if (commit && journal_run(commit) == 0)
            return 0;
        rc = fail_sql(s, err, errlen, "journal commit: commit failed");
    }
    return tx_end(s, rc, err, errlen, "journal commit"); /* rolls back */
}

static void journal_row_read(sqlite3_stmt *st, ts_journal_row *r) {
    *r = (ts_journal_row){.seq = sqlite3_column_int64(st, 0), .version = sqlite3_column_int64(st, 1),
                          .step = sqlite3_column_int64(st, 2), .created_at_ms = sqlite3_column_int64(st, 3),
                          .payload = sqlite3_column_blob(st, 4),
                          .len = (size_t)sqlite3_column_bytes(st, 4),
                          .checksum = (uint64_t)sqlite3_column_int64(st, 5)};
}

/* Step st, calling fn for each row read by read(); finalizes st. 0, or -1 (SQLite error). */
static int rows_each(sqlite3_stmt *st, void (*read)(sqlite3_stmt *, ts_journal_row *),
                     int (*fn)(void *arg, const ts_journal_row *r), void *arg) {
    int rc;
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        ts_journal_row r;
        read(st, &r);
        if (fn(arg, &r) != 0) {
            rc = SQLITE_DONE;
            break;
        }
    }
    sqlite3_finalize(st);
    return rc == SQLITE_DONE ? 0 : -1;
}

int ts_store_journal_scan(ts_store *s, const char *name, int64_t after,
                          int (*fn)(void *arg, const ts_journal_row *r), void *arg, char *err,
                          size_t errlen) {
    int64_t mid;
    sqlite3_stmt *st;
    if (model_known(s, name, &mid, err, errlen) != 0)
        return -1;
    if (prepare(s, "SELECT seq, version, step, created_at, payload, checksum FROM journal "
                   "WHERE model_id = ?1 AND seq > ?2 ORDER BY seq", &st) != 0)
        return fail_sql(s, err, errlen, "model '%s': reading the journal failed", name);
    sqlite3_bind_int64(st, 1, mid);
    sqlite3_bind_int64(st, 2, after);
    if (rows_each(st, journal_row_read, fn, arg) != 0)
        return fail_sql(s, err, errlen, "model '%s': reading the journal failed", name);
    return 0;
}

int ts_store_journal_cut(ts_store *s, const char *name, int64_t from, char *err, size_t errlen) {
    int64_t mid;
    sqlite3_stmt *st;
    if (model_known(s, name, &mid, err, errlen) != 0)
        return -1;
    /* The exactly-once records of the steps cut go too: a retry must apply them again. */
    for (int i = 0; i < 2; i++) {
        if (prepare(s, i == 0 ? "DELETE FROM journal WHERE model_id = ?1 AND seq >= ?2"
                              : "DELETE FROM feedback_ids WHERE model_id = ?1 AND seq >= ?2", &st) != 0)
            return fail_sql(s, err, errlen, "model '%s': cutting the journal failed", name);
        sqlite3_bind_int64(st, 1, mid);
        sqlite3_bind_int64(st, 2, from);
        if (step_done(st) != 0)
            return fail_sql(s, err, errlen, "model '%s': cutting the journal failed", name);
    }
    return 0;
}

int ts_store_journal_last(ts_store *s, int64_t *seq, char *err, size_t errlen) {
    if (query_int(s, "SELECT " JOURNAL_LAST_SQL, seq) != 0)
        return fail_sql(s, err, errlen, "reading the journal's last sequence number failed");
    return 0;
}

int ts_store_journal_size(ts_store *s, int64_t *entries, int64_t *bytes, char *err, size_t errlen) {
    if (query_int(s, "SELECT count(*) FROM journal", entries) != 0 ||
        query_int(s, "SELECT coalesce(sum(length(payload)), 0) FROM journal", bytes) != 0)
        return fail_sql(s, err, errlen, "measuring the journal failed");
    return 0;
}

static void id_row_read(sqlite3_stmt *st, ts_journal_row *r) {
    *r = (ts_journal_row){.model = (const char *)sqlite3_column_text(st, 0),
                          .request_id = (const char *)sqlite3_column_text(st, 1),
                          .body_hash = (uint64_t)sqlite3_column_int64(st, 2),
                          .seq = sqlite3_column_int64(st, 3),
                          .answer = (const char *)sqlite3_column_text(st, 4),
                          .created_at_ms = sqlite3_column_int64(st, 5)};
}

int ts_store_feedback_ids(ts_store *s, int64_t since_ms, int (*fn)(void *arg, const ts_journal_row *r),
                          void *arg, char *err, size_t errlen) {
    sqlite3_stmt *st;
    if (prepare(s, "SELECT m.name, f.request_id, f.body_hash, f.seq, f.answer, f.created_at FROM "
                   "feedback_ids f JOIN models m ON m.id = f.model_id WHERE f.created_at >= ?1 "
                   "ORDER BY f.seq", &st) != 0)
        return fail_sql(s, err, errlen, "reading feedback ids failed");
    sqlite3_bind_int64(st, 1, since_ms);
    if (rows_each(st, id_row_read, fn, arg) != 0)
        return fail_sql(s, err, errlen, "reading feedback ids failed");
    return 0;
}

/* The online backup API copies the pages under a read transaction, so the copy is one
 * consistent moment of the database even while the daemon writes to it. */
int ts_store_backup(ts_store *s, const char *dest, char *err, size_t errlen) {
    struct stat a, b;
    if (stat(s->path, &a) == 0 && stat(dest, &b) == 0 && a.st_dev == b.st_dev && a.st_ino == b.st_ino)
        return fail(s, err, errlen, "backup to %s: that is the database itself", dest);
    int fd = open(dest, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
    if (fd < 0)
        return fail(s, err, errlen, "backup to %s: cannot create: %s", dest, strerror(errno));
    close(fd);
    sqlite3 *d = NULL;
    if (sqlite3_open_v2(dest, &d, SQLITE_OPEN_READWRITE, NULL) != SQLITE_OK) {
        fail(s, err, errlen, "backup to %s: cannot open: %s", dest, d ? sqlite3_errmsg(d) : "out of memory");
        sqlite3_close(d);
        return -1;
    }
    sqlite3_backup *bk = sqlite3_backup_init(d, "main", s->db, "main");
    int rc = bk ? SQLITE_OK : sqlite3_errcode(d);
    for (int tries = 0; bk && tries < TS_BUSY_TIMEOUT_MS / 20; tries++) {
        rc = sqlite3_backup_step(bk, -1);
        if (rc != SQLITE_BUSY && rc != SQLITE_LOCKED)
            break;
        sqlite3_sleep(20); /* another process writes the destination: wait as the busy timeout would */
    }
    if (bk)
        sqlite3_backup_finish(bk);
    if (rc != SQLITE_DONE)
        fail(s, err, errlen, "backup to %s failed: %s", dest, bk ? sqlite3_errstr(rc) : sqlite3_errmsg(d));
    sqlite3_close(d);
    return rc == SQLITE_DONE ? 0 : -1;
}

int ts_store_count_models(ts_store *s, int64_t *n, char *err, size_t errlen) {
    if (query_int(s, "SELECT count(*) FROM models", n) != 0)
        return fail_sql(s, err, errlen, "counting models failed");
    return 0;
}
