/* test_store.c — the SQLite store (SPEC §6): open/refuse/migrate, content-addressed
 * versions, snapshots with retention, load with fallback past damaged rows, damaged
 * versions, deactivate, backup, and a write fault (file size limit = disk full). */
#include <check.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

#include "core/model.h"
#include "server/store/migrations.h"
#include "server/store/store.h"
#include "testutil.h"

#define ARCH "rmsnorm:12/gs5,linear:12x7/gs4+bias,gelu,linear:7x9/gs3,relu,linear:9x5/gs8+bias"

static char dir[64], db[128];
static char err[512];

static void setup(void) {
    snprintf(dir, sizeof dir, "/tmp/ts-store-XXXXXX");
    ck_assert_ptr_nonnull(mkdtemp(dir));
    snprintf(db, sizeof db, "%s/tscale.db", dir);
    err[0] = '\0';
}

static void teardown(void) {
    char cmd[160];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    ck_assert_int_eq(system(cmd), 0);
}

/* ---- helpers -------------------------------------------------------------------------- */

/* Give m a recognisable state: step k in every ternary layer, corr_accum from k. */
static void model_set_state(ts_model *m, int64_t k) {
    for (int i = 0; i < m->n_layers; i++) {
        ts_layer *l = &m->layers[i];
        if (!l->corr_accum)
            continue;
        l->step = k;
        for (int64_t g = 0; g < l->n_groups; g++)
            l->corr_accum[g] = (k * 1000 + g * 7 + i) * (g % 2 ? -1 : 1);
        ts_layer_update_scales(l, NULL);
    }
}

static int64_t *state_of(const ts_model *m, size_t *n) {
    *n = ts_state_len(m);
    int64_t *s = malloc(*n * sizeof *s);
    ts_state_save(m, s);
    return s;
}

static int put_state(ts_store *s, const char *name, int64_t version, const ts_model *m, const char *reason,
                     int keep, ts_snapshot_info *info) {
    size_t n;
    int64_t *st = state_of(m, &n);
    int rc = ts_store_put_snapshot(s, name, version, st, n, ts_model_step(m), reason, NULL, keep, info, err, sizeof err);
    free(st);
    return rc;
}

static ts_store *open_ok(const char *path) {
    ts_store *s = ts_store_open(path, err, sizeof err);
    ck_assert_msg(s != NULL, "%s", err);
    return s;
}

/* Raw SQL on the database through a second connection (the store may be open). */
static int64_t sql_int(const char *sql) {
    sqlite3 *d;
    sqlite3_stmt *st;
    ck_assert_int_eq(sqlite3_open(db, &d), SQLITE_OK);
    ck_assert_msg(sqlite3_prepare_v2(d, sql, -1, &st, NULL) == SQLITE_OK, "%s: %s", sql, sqlite3_errmsg(d));
    ck_assert_int_eq(sqlite3_step(st), SQLITE_ROW);
    int64_t v = sqlite3_column_int64(st, 0);
    sqlite3_finalize(st);
    sqlite3_close(d);
    return v;
}

static void sql_exec(const char *sql) {
    sqlite3 *d;
    ck_assert_int_eq(sqlite3_open(db, &d), SQLITE_OK);
    sqlite3_busy_timeout(d, 5000);
    ck_assert_msg(sqlite3_exec(d, sql, NULL, NULL, NULL) == SQLITE_OK, "%s: %s", sql, sqlite3_errmsg(d));
    sqlite3_close(d);
}

static int64_t rows(const char *table) {
    char sql[96];
    snprintf(sql, sizeof sql, "SELECT count(*) FROM %s", table);
    return sql_int(sql);
}

static ts_model *load_ok(ts_store *s, const char *name, int64_t id, ts_snapshot_info *info, int *skipped) {
    ts_model *m = ts_store_load(s, name, id, info, skipped, err, sizeof err);
    ck_assert_msg(m != NULL, "%s", err);
    return m;
}

static void assert_err_has(const char *a, const char *b) {
    ck_assert_msg(strstr(err, a) != NULL, "error '%s' lacks '%s'", err, a);
    if (b)
        ck_assert_msg(strstr(err, b) != NULL, "error '%s' lacks '%s'", err, b);
}

/* Store m as version 1 of name with one snapshot; returns the open store. */
static ts_store *store_with(const char *name, const ts_model *m) {
    ts_store *s = open_ok(db);
    int64_t v;
    int created;
    ck_assert_msg(ts_store_put_model(s, name, m, 42, "import", 0, &v, &created, NULL, err, sizeof err) == 0,
                  "%s", err);
    ck_assert_int_eq(v, 1);
    ck_assert_int_eq(created, 1);
    return s;
}

/* ---- open, identify, migrate ------------------------------------------------------------- */

START_TEST(test_migrations_compiled_in_order) {
    ck_assert_int_ge(ts_migrations_count, 2);
    for (int i = 0; i < ts_migrations_count; i++) {
        ck_assert_int_eq(ts_migrations[i].version, i + 1);
        ck_assert_int_eq(atoi(ts_migrations[i].name), i + 1);
        /* the SQL text is embedded: every migration creates or alters something */
        ck_assert(strstr(ts_migrations[i].sql, "CREATE") || strstr(ts_migrations[i].sql, "ALTER TABLE"));
    }
    ck_assert_int_eq(ts_store_schema_latest(), ts_migrations_count);
}
END_TEST

START_TEST(test_open_create_reopen) {
    ts_store *s = open_ok(db);
    ck_assert_int_eq(ts_store_schema_version(s), ts_store_schema_latest());
    struct stat st;
    const char *suffix[] = {"", "-wal", "-shm"};
    for (int i = 0; i < 3; i++) {
        char p[160];
        snprintf(p, sizeof p, "%s%s", db, suffix[i]);
        ck_assert_msg(stat(p, &st) == 0, "%s missing", p);
        ck_assert_msg((st.st_mode & 0777) == 0600, "%s has mode %o", p, st.st_mode & 0777);
    }
    sqlite3 *d;
    sqlite3_stmt *q;
    ck_assert_int_eq(sqlite3_open(db, &d), SQLITE_OK);
    ck_assert_int_eq(sqlite3_prepare_v2(d, "PRAGMA journal_mode", -1, &q, NULL), SQLITE_OK);
    ck_assert_int_eq(sqlite3_step(q), SQLITE_ROW);
    ck_assert_str_eq((const char *)sqlite3_column_text(q, 0), "wal");
    sqlite3_finalize(q);
    sqlite3_close(d);
    char **names;
    int n;
    ck_assert_int_eq(ts_store_list_models(s, &names, &n, err, sizeof err), 0);
    ck_assert_int_eq(n, 0);
    ts_store_names_free(names, n);
    ts_store_close(s);
    s = open_ok(db);
    ck_assert_int_eq(ts_store_schema_version(s), ts_store_schema_latest());
    ts_store_close(s);
}
END_TEST

/* A new database gets 16 KiB pages (store.c, configure: a big model's journal entry is a
 * quarter as many WAL frames); one made with SQLite's default 4 KiB keeps them and opens. */
START_TEST(test_page_size_new_and_existing) {
    ts_store *s = open_ok(db);
    ts_store_close(s);
    ck_assert_int_eq(sql_int("PRAGMA page_size"), 16384);
    static const char *const files[] = {"", "-wal", "-shm", "-journal"};
    for (size_t i = 0; i < sizeof files / sizeof *files; i++) { /* the whole database goes */
        char path[160];
        snprintf(path, sizeof path, "%s%s", db, files[i]);
        unlink(path);
    }
    sql_exec("PRAGMA page_size=4096; PRAGMA journal_mode=WAL");
    s = open_ok(db);
    ck_assert_int_eq(ts_store_schema_version(s), ts_store_schema_latest());
    ts_store_close(s);
    ck_assert_int_eq(sql_int("PRAGMA page_size"), 4096);
}
END_TEST

START_TEST(test_migrations_idempotent) {
    ts_model *m = model_from(ARCH, 1);
    ts_store *s = store_with("m", m);
    ts_store_close(s);
    int64_t objects = sql_int("SELECT count(*) FROM sqlite_master");
    int64_t version = sql_int("PRAGMA user_version");
    for (int i = 0; i < 3; i++) {
        s = open_ok(db);
        ts_store_close(s);
    }
    ck_assert_int_eq(sql_int("SELECT count(*) FROM sqlite_master"), objects);
    ck_assert_int_eq(sql_int("PRAGMA user_version"), version);
    ck_assert_int_eq(rows("versions"), 1);
    ck_assert_int_eq(rows("snapshots"), 1);
    ts_model_free(m);
}
END_TEST

START_TEST(test_upgrade_from_schema_1) {
    ts_model *m = model_from(ARCH, 2);
    model_set_state(m, 5);
    /* A database as schema 1 left it: written by today's code, then everything the later
     * migrations add taken away again (today's code writes columns schema 1 lacks). */
    ts_store *s = open_ok(db);
    int64_t v;
    int created;
    ck_assert_int_eq(ts_store_put_model(s, "m", m, 7, "import", 0, &v, &created, NULL, err, sizeof err), 0);
    ts_store_close(s);
    sql_exec("DROP INDEX snapshots_by_model; DROP INDEX versions_by_file; DROP TABLE journal; "
             "DROP TABLE feedback_ids; ALTER TABLE snapshots DROP COLUMN journal_seq; "
             "ALTER TABLE snapshots DROP COLUMN repl; "
             "PRAGMA user_version = 1");
    s = ts_store_open_version(db, 1, err, sizeof err);
    ck_assert_msg(s != NULL, "%s", err);
    ck_assert_int_eq(ts_store_schema_version(s), 1);
    ts_store_close(s);
    ck_assert_int_eq(sql_int("PRAGMA user_version"), 1);
    ck_assert_int_eq(sql_int("SELECT count(*) FROM sqlite_master WHERE name = 'snapshots_by_model'"), 0);

    s = open_ok(db);
    ck_assert_int_eq(ts_store_schema_version(s), ts_store_schema_latest());
    ck_assert_int_eq(sql_int("SELECT count(*) FROM sqlite_master WHERE name = 'snapshots_by_model'"), 1);
    ts_model *back = load_ok(s, "m", 0, NULL, NULL);
    ck_assert_uint_eq(ts_store_model_hash(back), ts_store_model_hash(m));
    ts_model_free(back);
    ts_store_close(s);
    ts_model_free(m);
}
END_TEST

static int collect_ids(void *arg, const ts_journal_row *r) {
    char *out = arg;
    snprintf(out + strlen(out), 256 - strlen(out), "%s:%lld;", r->request_id, (long long)r->seq);
    return 0;
}

/* 0005 rebuilds feedback_ids keyed by seq: the records of a schema-4 database survive. */
START_TEST(test_upgrade_keeps_feedback_ids) {
    ts_model *m = model_from(ARCH, 2);
    ts_store *s = ts_store_open_version(db, 4, err, sizeof err);
    ck_assert_msg(s != NULL, "%s", err);
    int64_t v;
    int created;
    ck_assert_int_eq(ts_store_put_model(s, "m", m, 7, "import", 0, &v, &created, NULL, err, sizeof err), 0);
    ts_store_close(s);
    sql_exec("INSERT INTO feedback_ids (model_id, request_id, body_hash, seq, answer, created_at) VALUES "
             "(1, 'b', 2, 9, '{}', 1000), (1, 'a', 1, 4, '{}', 900)");
    s = open_ok(db);
    char got[256] = "";
    ck_assert_int_eq(ts_store_feedback_ids(s, 0, collect_ids, got, err, sizeof err), 0);
    ck_assert_str_eq(got, "a:4;b:9;");
    ck_assert_int_eq(sql_int("SELECT count(*) FROM sqlite_master WHERE name = 'feedback_ids_by_time'"), 0);
    ts_store_close(s);
    ts_model_free(m);
}
END_TEST

START_TEST(test_refuse_newer_schema) {
    ts_store_close(open_ok(db));
    char sql[64];
    snprintf(sql, sizeof sql, "PRAGMA user_version = %d", ts_store_schema_latest() + 5);
    sql_exec(sql);
    ck_assert_ptr_null(ts_store_open(db, err, sizeof err));
    char want[128];
    snprintf(want, sizeof want, "schema version %d is newer than this binary's %d; upgrade tscale",
             ts_store_schema_latest() + 5, ts_store_schema_latest());
    assert_err_has(db, want);
}
END_TEST

START_TEST(test_refuse_foreign_sqlite) {
    sql_exec("CREATE TABLE notes (id INTEGER PRIMARY KEY, body TEXT)");
    ck_assert_ptr_null(ts_store_open(db, err, sizeof err));
    assert_err_has(db, "not a tscale database");
    /* Nothing was changed in it. */
    ck_assert_int_eq(sql_int("SELECT count(*) FROM sqlite_master"), 1);
    ck_assert_int_eq(sql_int("PRAGMA user_version"), 0);
    ck_assert_int_eq(sql_int("PRAGMA application_id"), 0);
    /* Another application's id on an empty database is refused too. */
    sql_exec("DROP TABLE notes; PRAGMA application_id = 1234");
    ck_assert_ptr_null(ts_store_open(db, err, sizeof err));
    assert_err_has("not a tscale database", "1234");
}
END_TEST

START_TEST(test_refuse_random_bytes) {
    uint8_t junk[4096];
    uint64_t x = 88172645463325252ull;
    for (size_t i = 0; i < sizeof junk; i++) {
        x ^= x << 13, x ^= x >> 7, x ^= x << 17;
        junk[i] = (uint8_t)x;
    }
    write_file(db, junk, sizeof junk);
    ck_assert_ptr_null(ts_store_open(db, err, sizeof err));
    assert_err_has(db, "not a tscale database");
    /* A text file that happens to be short. */
    write_file(db, "hello\n", 6);
    ck_assert_ptr_null(ts_store_open(db, err, sizeof err));
    assert_err_has(db, "not a tscale database");
    struct stat st;
    ck_assert_int_eq(stat(db, &st), 0);
    ck_assert_int_eq(st.st_size, 6); /* untouched */
}
END_TEST

START_TEST(test_empty_file_and_bad_path) {
    write_file(db, "", 0);
    ts_store_close(open_ok(db));
    char bad[200];
    snprintf(bad, sizeof bad, "%s/no/such/dir/x.db", dir);
    ck_assert_ptr_null(ts_store_open(bad, err, sizeof err));
    assert_err_has(bad, "cannot create");
}
END_TEST

/* ---- versions --------------------------------------------------------------------------------- */

START_TEST(test_put_version_content_addressed) {
    ts_model *a = model_from(ARCH, 3), *b = model_from(ARCH, 4);
    ts_store *s = open_ok(db);
    int64_t v;
    int created;
    ck_assert_int_eq(ts_store_put_version(s, "m", a, 100, &v, &created, err, sizeof err), 0);
    ck_assert_int_eq(v, 1);
    ck_assert_int_eq(created, 1);
    int64_t w = rows("weights"), wl = rows("weight_layers");
    ck_assert_int_eq(w, 1);
    ck_assert_int_eq(wl, a->n_layers);

    /* The same file again: the same version, nothing new. */
    ck_assert_int_eq(ts_store_put_version(s, "m", a, 100, &v, &created, err, sizeof err), 0);
    ck_assert_int_eq(v, 1);
    ck_assert_int_eq(created, 0);
    ck_assert_int_eq(rows("weights"), w);
    ck_assert_int_eq(rows("weight_layers"), wl);
    ck_assert_int_eq(rows("versions"), 1);

    /* A different model file: version 2 with its own weights. */
    ck_assert_int_eq(ts_store_put_version(s, "m", b, 200, &v, &created, err, sizeof err), 0);
    ck_assert_int_eq(v, 2);
    ck_assert_int_eq(created, 1);
    ck_assert_int_eq(rows("weights"), 2);

    /* Same immutable parts from another file (e.g. an export after feedback): a new
     * version, but the weights are shared. So is the same file under another name. */
    ck_assert_int_eq(ts_store_put_version(s, "m", a, 300, &v, &created, err, sizeof err), 0);
    ck_assert_int_eq(v, 3);
    ck_assert_int_eq(ts_store_put_version(s, "other", a, 100, &v, &created, err, sizeof err), 0);
    ck_assert_int_eq(v, 1);
    ck_assert_int_eq(created, 1);
    ck_assert_int_eq(rows("weights"), 2);
    ck_assert_int_eq(rows("weight_layers"), 2 * wl);

    ck_assert_int_eq(ts_store_find_version(s, "m", 200, &v, err, sizeof err), 0);
    ck_assert_int_eq(v, 2);
    ck_assert_int_eq(ts_store_find_version(s, "m", 999, &v, err, sizeof err), 0);
    ck_assert_int_eq(v, 0);
    ck_assert_int_eq(ts_store_find_version(s, "nobody", 100, &v, err, sizeof err), 0);
    ck_assert_int_eq(v, 0);
    ck_assert_int_eq(sql_int("SELECT current_version FROM models WHERE name = 'm'"), 3);
    ts_store_close(s);
    ts_model_free(a);
    ts_model_free(b);
}
END_TEST

START_TEST(test_hash_collision_is_not_equality) {
    /* Two weights rows with the same content hash but different bytes (what a 64-bit
     * hash collision would give): putting a must reuse the row holding a's bytes. */
    ts_model *a = model_from(ARCH, 5), *b = model_from(ARCH, 6);
    ts_store *s = open_ok(db);
    int64_t v;
    int created;
    ck_assert_int_eq(ts_store_put_version(s, "b", b, 1, &v, &created, err, sizeof err), 0);
    ck_assert_int_eq(ts_store_put_version(s, "a", a, 2, &v, &created, err, sizeof err), 0);
    sql_exec("UPDATE weights SET content_hash = (SELECT content_hash FROM weights ORDER BY id DESC LIMIT 1)");
    ck_assert_int_eq(ts_store_put_model(s, "a2", a, 3, "import", 0, &v, &created, NULL, err, sizeof err), 0);
    ck_assert_int_eq(rows("weights"), 2);
    ck_assert_int_eq(sql_int("SELECT v.weights_id FROM versions v JOIN models m ON m.id = v.model_id "
                             "WHERE m.name = 'a2'"),
                     sql_int("SELECT v.weights_id FROM versions v JOIN models m ON m.id = v.model_id "
                             "WHERE m.name = 'a'"));
    ts_model *back = load_ok(s, "a2", 0, NULL, NULL);
    ck_assert_uint_eq(ts_store_model_hash(back), ts_store_model_hash(a));
    ts_model_free(back);
    ts_store_close(s);
    ts_model_free(a);
    ts_model_free(b);
}
END_TEST

/* ---- snapshots ------------------------------------------------------------------------------- */

START_TEST(test_snapshots_order_and_retention) {
    ts_model *m = model_from(ARCH, 7);
    ts_store *s = store_with("m", m);
    ts_snapshot_info info;
    const char *reasons[] = {"timer", "admin", "timer", "shutdown", "restore"};
    int64_t ids[5];
    for (int k = 0; k < 5; k++) {
        model_set_state(m, k + 1);
        ck_assert_msg(put_state(s, "m", 1, m, reasons[k], 0, &info) == 0, "%s", err);
        ck_assert_int_eq(info.step, k + 1);
        ck_assert_int_eq(info.version, 1);
        ck_assert_int_eq(info.bytes, (int64_t)(ts_state_len(m) * 8));
        ck_assert_str_eq(info.reason, reasons[k]);
        ids[k] = info.snapshot_id;
        ck_assert(k == 0 || ids[k] > ids[k - 1]);
    }
    ts_snapshot_info *list;
    int n;
    ck_assert_int_eq(ts_store_list_snapshots(s, "m", &list, &n, err, sizeof err), 0);
    ck_assert_int_eq(n, 6); /* + the import */
    for (int k = 0; k < 5; k++) {
        ck_assert_int_eq(list[k].snapshot_id, ids[4 - k]);
        ck_assert_int_eq(list[k].step, 5 - k);
        ck_assert_str_eq(list[k].reason, reasons[4 - k]);
        ck_assert(list[k].created_at_ms >= list[k + 1].created_at_ms);
    }
    ck_assert_str_eq(list[5].reason, "import");
    free(list);

    /* keep = 3: only the three newest remain, and ids are not reused afterwards. */
    model_set_state(m, 6);
    ck_assert_int_eq(put_state(s, "m", 1, m, "timer", 3, &info), 0);
    ck_assert_int_eq(ts_store_list_snapshots(s, "m", &list, &n, err, sizeof err), 0);
    ck_assert_int_eq(n, 3);
    ck_assert_int_eq(list[0].step, 6);
    ck_assert_int_eq(list[2].step, 4);
    free(list);
    ck_assert_int_eq(put_state(s, "m", 1, m, "timer", 1, &info), 0);
    ck_assert_int_gt(info.snapshot_id, ids[4] + 1);
    ck_assert_int_eq(rows("snapshots"), 1);

    /* The stored blob is the ts_state_save array, little-endian. */
    size_t len;
    int64_t *st = state_of(m, &len);
    char sql[128];
    snprintf(sql, sizeof sql, "SELECT length(state) = %zu AND hex(substr(state, 1, 8)) = '%016llX' FROM snapshots",
             len * 8, (unsigned long long)__builtin_bswap64((uint64_t)st[0]));
    ck_assert_int_eq(sql_int(sql), 1);
    free(st);

    ck_assert_int_eq(ts_store_list_snapshots(s, "nobody", &list, &n, err, sizeof err), 0);
    ck_assert_int_eq(n, 0);
    free(list);
    ts_store_close(s);
    ts_model_free(m);
}
END_TEST

START_TEST(test_put_snapshot_errors) {
    ts_model *m = model_from(ARCH, 8);
    ts_store *s = store_with("m", m);
    size_t n;
    int64_t *st = state_of(m, &n);
    ck_assert_int_eq(ts_store_put_snapshot(s, "m", 9, st, n, 0, "timer", NULL, 0, NULL, err, sizeof err), -1);
    assert_err_has(db, "model 'm' has no version 9");
    ck_assert_int_eq(ts_store_put_snapshot(s, "x", 1, st, n, 0, "timer", NULL, 0, NULL, err, sizeof err), -1);
    assert_err_has("model 'x' has no version 1", NULL);
    ck_assert_int_eq(ts_store_put_snapshot(s, "m", 1, st, n - 1, 0, "timer", NULL, 0, NULL, err, sizeof err), -1);
    assert_err_has("state has", "needs");
    ck_assert_int_eq(ts_store_put_snapshot(s, "m", 1, st, n, 0, "", NULL, 0, NULL, err, sizeof err), -1);
    assert_err_has("reason", NULL);
    ck_assert_int_eq(ts_store_put_snapshot(s, "m", 1, st, n, 0, "a-reason-much-too-long", NULL, 0, NULL, err, sizeof err),
                     -1);
    ck_assert_int_eq(rows("snapshots"), 1);
    /* A failed put_model leaves no version behind (one transaction). */
    int64_t v;
    int created;
    ck_assert_int_eq(ts_store_put_model(s, "new", m, 5, "", 0, &v, &created, NULL, err, sizeof err), -1);
    ck_assert_int_eq(rows("versions"), 1);
    ck_assert_int_eq(rows("models"), 1);
    /* The store still works after the errors. */
    ck_assert_int_eq(ts_store_put_snapshot(s, "m", 1, st, n, 0, "timer", NULL, 0, NULL, err, sizeof err), 0);
    /* The replication position is kept with the state (NULL: none). */
    ts_snapshot_info info;
    const char *pos = "{\"origins\":{\"r1\":12},\"stream_seq\":40}";
    ck_assert_int_eq(ts_store_put_snapshot(s, "m", 1, st, n, 0, "timer", pos, 0, &info, err, sizeof err), 0);
    char *got = NULL;
    ck_assert_int_eq(ts_store_snapshot_repl(s, info.snapshot_id, &got, err, sizeof err), 0);
    ck_assert_str_eq(got, pos);
    free(got);
    ck_assert_int_eq(ts_store_snapshot_repl(s, info.snapshot_id - 1, &got, err, sizeof err), 0);
    ck_assert_ptr_null(got);
    free(st);
    ts_store_close(s);
    ts_model_free(m);
}
END_TEST

/* ---- load ------------------------------------------------------------------------------------ */

START_TEST(test_load_newest_and_by_id) {
    ts_model *m = model_from(ARCH, 9);
    ts_store *s = store_with("m", m);
    ts_snapshot_info info, got;
    uint64_t hashes[3];
    int64_t ids[3];
    for (int k = 0; k < 3; k++) {
        model_set_state(m, 10 + k);
        ck_assert_int_eq(put_state(s, "m", 1, m, "timer", 0, &info), 0);
        hashes[k] = ts_store_model_hash(m);
        ids[k] = info.snapshot_id;
    }
    int skipped = -1;
    ts_model *back = load_ok(s, "m", 0, &got, &skipped);
    ck_assert_int_eq(skipped, 0);
    ck_assert_uint_eq(ts_store_model_hash(back), hashes[2]);
    ck_assert_int_eq(got.snapshot_id, ids[2]);
    ck_assert_int_eq(got.step, 12);
    ck_assert_str_eq(got.reason, "timer");
    /* Prepared: compute layout and scales are built and equal the original's. */
    for (int i = 0; i < back->n_layers; i++) {
        if (!back->layers[i].corr_accum)
            continue;
        ck_assert_ptr_nonnull(back->layers[i].W);
        ck_assert_mem_eq(back->layers[i].S, m->layers[i].S, (size_t)m->layers[i].n_groups * sizeof(float));
    }
    ts_model_free(back);

    back = load_ok(s, "m", ids[0], &got, &skipped);
    ck_assert_uint_eq(ts_store_model_hash(back), hashes[0]);
    ck_assert_int_eq(got.step, 10);
    ts_model_free(back);

    ck_assert_ptr_null(ts_store_load(s, "nobody", 0, NULL, NULL, err, sizeof err));
    assert_err_has(db, "model 'nobody' not found");
    ck_assert_ptr_null(ts_store_load(s, "m", ids[2] + 100, NULL, NULL, err, sizeof err));
    assert_err_has(db, "not found");

    /* Another model's snapshot id is not this model's. */
    ts_model *o = model_from("linear:3x2", 1);
    int64_t v;
    int created;
    ck_assert_int_eq(ts_store_put_model(s, "o", o, 1, "import", 0, &v, &created, &info, err, sizeof err), 0);
    ck_assert_ptr_null(ts_store_load(s, "m", info.snapshot_id, NULL, NULL, err, sizeof err));
    assert_err_has("of model 'm' not found", NULL);

    /* A version stored without any snapshot cannot be loaded, says so, and is not
     * listed for loading at start. */
    ck_assert_int_eq(ts_store_put_version(s, "bare", o, 1, &v, &created, err, sizeof err), 0);
    ck_assert_ptr_null(ts_store_load(s, "bare", 0, NULL, NULL, err, sizeof err));
    assert_err_has("model 'bare' has no snapshot", NULL);
    char **names;
    int n;
    ck_assert_int_eq(ts_store_list_models(s, &names, &n, err, sizeof err), 0);
    ck_assert_int_eq(n, 2);
    ck_assert_str_eq(names[0], "m");
    ck_assert_str_eq(names[1], "o");
    ts_store_names_free(names, n);
    ts_model_free(o);
    ts_store_close(s);
    ts_model_free(m);
}
END_TEST

START_TEST(test_load_skips_damaged_snapshots) {
    ts_model *m = model_from(ARCH, 10);
    ts_store *s = store_with("m", m);
    ts_snapshot_info info;
    model_set_state(m, 20);
    ck_assert_int_eq(put_state(s, "m", 1, m, "timer", 0, &info), 0);
    uint64_t good = ts_store_model_hash(m);
    model_set_state(m, 21);
    ck_assert_int_eq(put_state(s, "m", 1, m, "timer", 0, &info), 0);
    char sql[160];
    /* Flip one byte in the newest blob (as a torn or rotted write would). */
    snprintf(sql, sizeof sql,
             "UPDATE snapshots SET state = substr(state, 1, 20) || x'5A' || substr(state, 22) WHERE id = %lld",
             (long long)info.snapshot_id);
    sql_exec(sql);
    int skipped = 0;
    ts_snapshot_info got;
    ts_model *back = load_ok(s, "m", 0, &got, &skipped);
    ck_assert_int_eq(skipped, 1);
    ck_assert_int_eq(got.step, 20);
    ck_assert_uint_eq(ts_store_model_hash(back), good);
    ts_model_free(back);

    ck_assert_ptr_null(ts_store_load(s, "m", info.snapshot_id, NULL, NULL, err, sizeof err));
    assert_err_has(db, "is damaged");

    /* A blob cut short, then a row whose step disagrees with its (intact) state: each
     * is skipped too. */
    sql_exec("UPDATE snapshots SET state = substr(state, 1, 16) WHERE step = 20");
    back = load_ok(s, "m", 0, &got, &skipped);
    ck_assert_int_eq(skipped, 2);
    ck_assert_str_eq(got.reason, "import");
    ts_model_free(back);
    sql_exec("UPDATE snapshots SET step = 77 WHERE reason = 'import'");
    ck_assert_ptr_null(ts_store_load(s, "m", 0, NULL, &skipped, err, sizeof err));
    ck_assert_int_eq(skipped, 3);
    assert_err_has(db, "all 3 of its snapshots are damaged");
    ts_store_close(s);
    ts_model_free(m);
}
END_TEST

START_TEST(test_damaged_version_is_an_error) {
    ts_model *m = model_from(ARCH, 11);
    ts_store *s = store_with("m", m);
    const char *damage[][2] = {
        {"UPDATE weight_layers SET t_packed = x'00' WHERE idx = 1", "T_packed has 1 bytes"},
        {"UPDATE weight_layers SET t_packed = x'FA' || substr(t_packed, 2) WHERE idx = 1", "must be < 243"},
        {"UPDATE weight_layers SET e = NULL WHERE idx = 3", "E has 0 bytes"},
        {"UPDATE weight_layers SET bias = x'0000' WHERE idx = 5", "bias has 2 bytes"},
        {"UPDATE weight_layers SET bias = x'00000000' WHERE idx = 3", "bias present"},
        {"UPDATE weight_layers SET t_pad = 4 WHERE idx = 0", "T_pad is 4"},
        {"UPDATE weight_layers SET kind = 'conv2d' WHERE idx = 2", "unknown type 'conv2d'"},
        {"DELETE FROM weight_layers WHERE idx = 2", "layer 2 is missing"},
        {"UPDATE weight_layers SET in_dim = 13 WHERE idx = 1", "version 1 is damaged"},
        {"DELETE FROM weight_layers", "no layers"},
    };
    sql_exec("CREATE TABLE saved AS SELECT * FROM weight_layers");
    for (size_t i = 0; i < sizeof damage / sizeof damage[0]; i++) {
        sql_exec("DELETE FROM weight_layers; INSERT INTO weight_layers SELECT * FROM saved");
        sql_exec(damage[i][0]);
        ck_assert_ptr_null(ts_store_load(s, "m", 0, NULL, NULL, err, sizeof err));
        ck_assert_msg(strstr(err, "model 'm' version 1 is damaged") && strstr(err, damage[i][1]),
                      "%s: error '%s'", damage[i][0], err);
    }
    sql_exec("DELETE FROM weight_layers; INSERT INTO weight_layers SELECT * FROM saved");
    ts_model *back = load_ok(s, "m", 0, NULL, NULL);
    ts_model_free(back);
    ts_store_close(s);
    ts_model_free(m);
}
END_TEST

START_TEST(test_snapshot_of_older_version_loads_its_weights) {
    ts_model *a = model_from(ARCH, 12), *b = model_from("linear:4x4/gs2", 13);
    ts_store *s = store_with("m", a);
    ts_snapshot_info first;
    int64_t v;
    int created;
    ck_assert_int_eq(ts_store_put_model(s, "m", b, 2, "import", 0, &v, &created, &first, err, sizeof err), 0);
    ck_assert_int_eq(v, 2);
    ts_snapshot_info *list;
    int n;
    ck_assert_int_eq(ts_store_list_snapshots(s, "m", &list, &n, err, sizeof err), 0);
    ck_assert_int_eq(n, 2);
    ck_assert_int_eq(list[0].version, 2);
    ck_assert_int_eq(list[1].version, 1);
    ts_model *back = load_ok(s, "m", list[1].snapshot_id, NULL, NULL);
    ck_assert_uint_eq(ts_store_model_hash(back), ts_store_model_hash(a));
    ts_model_free(back);
    back = ts_store_load(s, "m", 0, NULL, NULL, err, sizeof err);
    ck_assert_uint_eq(ts_store_model_hash(back), ts_store_model_hash(b));
    ts_model_free(back);
    free(list);
    ts_store_close(s);
    ts_model_free(a);
    ts_model_free(b);
}
END_TEST

/* A replica joining from a published state (server/repl/state.h) stores it as the
 * publisher's version number: the existing version when its weights are the state's, a new
 * one under exactly that number otherwise, refused when that number holds other weights. */
START_TEST(test_put_joined_keeps_the_version_number) {
    ts_model *a = model_from(ARCH, 16), *b = model_from("linear:4x4/gs2", 17);
    ts_store *s = store_with("m", a);
    model_set_state(a, 5);
    ts_snapshot_info info;
    ck_assert_msg(ts_store_put_joined(s, "m", a, 1, "join", "{\"origins\":{},\"stream_seq\":7}", 0, &info, err,
                                      sizeof err) == 0, "%s", err);
    ck_assert_int_eq(info.version, 1);
    ck_assert_str_eq(info.reason, "join");
    char *repl = NULL;
    ck_assert_int_eq(ts_store_snapshot_repl(s, info.snapshot_id, &repl, err, sizeof err), 0);
    ck_assert_str_eq(repl, "{\"origins\":{},\"stream_seq\":7}");
    free(repl);
    ts_model *back = load_ok(s, "m", 0, NULL, NULL);
    ck_assert_uint_eq(ts_store_model_hash(back), ts_store_model_hash(a));
    ts_model_free(back);
    /* A name this database never held, at version 3 as numbered by the publisher. */
    ck_assert_int_eq(ts_store_put_joined(s, "n", b, 3, "join", NULL, 0, &info, err, sizeof err), 0);
    ck_assert_int_eq(info.version, 3);
    int64_t next = 0;
    ck_assert_int_eq(ts_store_next_version(s, "n", &next, err, sizeof err), 0);
    ck_assert_int_eq(next, 4);
    ck_assert_int_eq(ts_store_next_version(s, "never", &next, err, sizeof err), 0);
    ck_assert_int_eq(next, 1);
    back = load_ok(s, "n", 0, NULL, NULL);
    ck_assert_uint_eq(ts_store_model_hash(back), ts_store_model_hash(b));
    ts_model_free(back);
    /* Version 1 of m holds a's weights: b's state under that number is refused. */
    ck_assert_int_eq(ts_store_put_joined(s, "m", b, 1, "join", NULL, 0, &info, err, sizeof err), -1);
    assert_err_has("holds other weights", "same model files");
    ck_assert_int_eq(ts_store_put_joined(s, "m", b, 0, "join", NULL, 0, &info, err, sizeof err), -1);
    ts_store_close(s);
    ts_model_free(a);
    ts_model_free(b);
}
END_TEST

/* ---- models, backup, faults ------------------------------------------------------------------- */

START_TEST(test_deactivate) {
    ts_model *m = model_from(ARCH, 14);
    ts_store *s = store_with("zeta", m);
    int64_t v;
    int created;
    ck_assert_int_eq(ts_store_put_model(s, "alpha", m, 1, "import", 0, &v, &created, NULL, err, sizeof err), 0);
    char **names;
    int n;
    ck_assert_int_eq(ts_store_list_models(s, &names, &n, err, sizeof err), 0);
    ck_assert_int_eq(n, 2);
    ck_assert_str_eq(names[0], "alpha");
    ck_assert_str_eq(names[1], "zeta");
    ts_store_names_free(names, n);
    ck_assert_int_eq(ts_store_deactivate(s, "zeta", err, sizeof err), 0);
    ck_assert_int_eq(ts_store_list_models(s, &names, &n, err, sizeof err), 0);
    ck_assert_int_eq(n, 1);
    ck_assert_str_eq(names[0], "alpha");
    ts_store_names_free(names, n);
    /* Its snapshots stay loadable (restore of an inactive name is the caller's call). */
    ts_model *back = load_ok(s, "zeta", 0, NULL, NULL);
    ts_model_free(back);
    ck_assert_int_eq(ts_store_deactivate(s, "nobody", err, sizeof err), -1);
    assert_err_has(db, "model 'nobody' not found");
    /* Putting it again makes it active again. */
    ck_assert_int_eq(ts_store_put_version(s, "zeta", m, 42, &v, &created, err, sizeof err), 0);
    ck_assert_int_eq(created, 0);
    ck_assert_int_eq(ts_store_list_models(s, &names, &n, err, sizeof err), 0);
    ck_assert_int_eq(n, 2);
    ts_store_names_free(names, n);
    ts_store_close(s);
    ts_model_free(m);
}
END_TEST

START_TEST(test_backup) {
    ts_model *m = model_from(ARCH, 15);
    model_set_state(m, 3);
    ts_store *s = store_with("m", m);
    char dest[160];
    snprintf(dest, sizeof dest, "%s/backup.db", dir);
    ck_assert_msg(ts_store_backup(s, dest, err, sizeof err) == 0, "%s", err);
    struct stat st;
    ck_assert_int_eq(stat(dest, &st), 0);
    ck_assert_int_eq(st.st_mode & 0777, 0600);
    /* Changes after the backup are not in it. */
    model_set_state(m, 4);
    ck_assert_int_eq(put_state(s, "m", 1, m, "timer", 0, NULL), 0);
    ts_store *c = open_ok(dest);
    ts_snapshot_info info;
    ts_model *back = load_ok(c, "m", 0, &info, NULL);
    ck_assert_int_eq(info.step, 3);
    ck_assert_int_eq(ts_model_step(back), 3);
    ts_model_free(back);
    ts_store_close(c);

    ck_assert_int_eq(ts_store_backup(s, db, err, sizeof err), -1);
    assert_err_has("the database itself", NULL);
    snprintf(dest, sizeof dest, "%s/missing/backup.db", dir);
    ck_assert_int_eq(ts_store_backup(s, dest, err, sizeof err), -1);
    assert_err_has(dest, "cannot create");
    ts_store_close(s);
    ts_model_free(m);
}
END_TEST

/* Writes fail while the process may not write a single byte to any file (RLIMIT_FSIZE 0
 * behaves as a full disk and binds root too, unlike file permissions). */
static int put_with_no_space(ts_store *s, const ts_model *m) {
    struct rlimit old, none;
    ck_assert_int_eq(getrlimit(RLIMIT_FSIZE, &old), 0);
    none = (struct rlimit){0, old.rlim_max};
    void (*prev)(int) = signal(SIGXFSZ, SIG_IGN);
    /* No ck_assert until the limit is lifted: Check writes to a file itself. */
    setrlimit(RLIMIT_FSIZE, &none);
    int rc = put_state(s, "m", 1, m, "timer", 0, NULL);
    setrlimit(RLIMIT_FSIZE, &old);
    signal(SIGXFSZ, prev);
    return rc;
}

START_TEST(test_write_fault_fails_cleanly_then_recovers) {
    ts_model *m = model_from(ARCH, 16);
    ts_store *s = store_with("m", m);
    /* Grow past the WAL's first frames so that the failing write is an append. */
    for (int k = 1; k <= 3; k++) {
        model_set_state(m, k);
        ck_assert_int_eq(put_state(s, "m", 1, m, "timer", 0, NULL), 0);
    }
    model_set_state(m, 50);
    ck_assert_int_eq(put_with_no_space(s, m), -1);
    assert_err_has(db, "snapshot of model 'm'");
    ts_snapshot_info info;
    ts_model *back = load_ok(s, "m", 0, &info, NULL);
    ck_assert_int_eq(info.step, 3);
    ts_model_free(back);
    /* The fault cleared: the same connection writes again. */
    ck_assert_msg(put_state(s, "m", 1, m, "timer", 0, NULL) == 0, "%s", err);
    ts_store_close(s);
    s = open_ok(db);
    back = load_ok(s, "m", 0, &info, NULL);
    ck_assert_int_eq(info.step, 50);
    ck_assert_uint_eq(ts_store_model_hash(back), ts_store_model_hash(m));
    ts_model_free(back);
    ts_store_close(s);
    ts_model_free(m);
}
END_TEST

/* The model of test_model_hash, its last T_packed byte t1 (one trit and four pad digits 0). */
static ts_model *hash_model(uint8_t t1) {
    ts_layer_spec specs[TS_MAX_LAYERS];
    int n;
    ck_assert_int_eq(ts_specs_parse("linear:3x2/gs2+bias,relu", specs, TS_MAX_LAYERS, &n, err, sizeof err), 0);
    ts_model *m = ts_model_alloc(specs, n, err, sizeof err);
    ck_assert_ptr_nonnull(m);
    ts_layer *l = &m->layers[0];
    for (int64_t i = 0; i < l->n_groups; i++)
        l->E[i] = (int8_t)(-1 - i), l->corr_accum[i] = 3 * i - 2;
    l->T_packed[0] = 100, l->T_packed[1] = t1;
    l->bias[0] = 5, l->bias[1] = -6;
    l->step = 9;
    ck_assert_int_eq(ts_model_prepare(m, err, sizeof err), 0);
    return m;
}

START_TEST(test_model_hash) {
    ts_model *m = hash_model(1);
    /* Pinned: the serialisation is part of the database (file_hash of models that did
     * not come from a file); changing it must be a deliberate migration. The value was
     * computed independently in Python: FNV-1a 64 over i64 n_layers, then per layer
     * i64 len(kind name), the name, i64 in_dim, out_dim, and for ternary layers i64
     * group_size, has_bias, T_pad, the T_packed bytes, E bytes, bias as LE i32, i64
     * step, corr_accum as LE i64. (The T_packed bytes come back from the compute layout:
     * the model keeps no T_packed after prepare.) */
    ck_assert_uint_eq(ts_store_model_hash(m), 0x8419e0d0a29d13f9ull);
    ts_model *c = ts_model_clone(m);
    ck_assert_uint_eq(ts_store_model_hash(c), ts_store_model_hash(m));
    uint64_t h = ts_store_model_hash(m);
    c->layers[0].corr_accum[1]++;
    ck_assert_uint_ne(ts_store_model_hash(c), h);
    c->layers[0].corr_accum[1]--;
    c->layers[0].step++;
    ck_assert_uint_ne(ts_store_model_hash(c), h);
    c->layers[0].step--;
    c->layers[0].bias[1] = 0;
    ck_assert_uint_ne(ts_store_model_hash(c), h);
    ts_model_free(c);
    c = hash_model(2);   /* the last trit +1 instead of 0 */
    ck_assert_uint_ne(ts_store_model_hash(c), h);
    ts_model_free(c);
    ts_model_free(m);
}
END_TEST

START_TEST(test_two_connections) {
    ts_model *m = model_from(ARCH, 17);
    ts_store *a = store_with("m", m), *b = open_ok(db);
    model_set_state(m, 8);
    ck_assert_int_eq(put_state(a, "m", 1, m, "timer", 0, NULL), 0);
    ts_snapshot_info info;
    ts_model *back = load_ok(b, "m", 0, &info, NULL);
    ck_assert_int_eq(info.step, 8);
    ts_model_free(back);
    ts_store_close(a);
    ts_store_close(b);
    ts_model_free(m);
}
END_TEST

int main(void) {
    Suite *s = suite_create("store");
    TCase *tc = tcase_create("store");
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, test_migrations_compiled_in_order);
    tcase_add_test(tc, test_open_create_reopen);
    tcase_add_test(tc, test_page_size_new_and_existing);
    tcase_add_test(tc, test_migrations_idempotent);
    tcase_add_test(tc, test_upgrade_from_schema_1);
    tcase_add_test(tc, test_refuse_newer_schema);
    tcase_add_test(tc, test_refuse_foreign_sqlite);
    tcase_add_test(tc, test_refuse_random_bytes);
    tcase_add_test(tc, test_empty_file_and_bad_path);
    tcase_add_test(tc, test_put_version_content_addressed);
    tcase_add_test(tc, test_hash_collision_is_not_equality);
    tcase_add_test(tc, test_snapshots_order_and_retention);
    tcase_add_test(tc, test_put_snapshot_errors);
    tcase_add_test(tc, test_load_newest_and_by_id);
    tcase_add_test(tc, test_load_skips_damaged_snapshots);
    tcase_add_test(tc, test_damaged_version_is_an_error);
    tcase_add_test(tc, test_snapshot_of_older_version_loads_its_weights);
    tcase_add_test(tc, test_put_joined_keeps_the_version_number);
    tcase_add_test(tc, test_deactivate);
    tcase_add_test(tc, test_backup);
    tcase_add_test(tc, test_write_fault_fails_cleanly_then_recovers);
    tcase_add_test(tc, test_model_hash);
    tcase_add_test(tc, test_upgrade_keeps_feedback_ids);
    tcase_add_test(tc, test_two_connections);
    suite_add_tcase(s, tc);
    return run_suite(s);
}
