/* store.h — the SQLite database: model versions, snapshots, migrations (SPEC §6).
 *
 * A ts_store is one SQLite connection and is used by one thread at a time (the daemon's
 * persistence thread; the CLI at start-up). Every call is synchronous and does its writes
 * in one transaction, so a crash leaves either all of a call's effect or none of it.
 *
 * Storage model:
 *   model version = the immutable parts of one model file (layers, T_packed, E, bias),
 *                   content-addressed: storing the same file again stores nothing new;
 *                   versions of one name are numbered 1, 2, ...
 *   snapshot      = the mutable state (ts_state_save layout) at one step, with reason,
 *                   time and a checksum, referring to its version.
 */
#ifndef TS_STORE_H
#define TS_STORE_H

#include <stddef.h>
#include <stdint.h>

#include "core/model.h"

typedef struct ts_store ts_store;

typedef struct {
    int64_t snapshot_id;
    int64_t version;       /* model version number (per name, from 1) */
    int64_t step;
    int64_t created_at_ms; /* Unix time in milliseconds */
    int64_t bytes;         /* bytes of the snapshot row's state blob */
    char reason[16];       /* "timer", "admin", "import", "shutdown", "restore", "join", "resync" */
    int64_t journal_seq;   /* every journal entry with seq <= this is in the state */
} ts_snapshot_info;

/* Open (creating if needed) the database at path: file mode 0600, WAL, foreign keys,
 * busy timeout, then apply the compiled-in migrations in order. A database whose schema
 * is newer than this binary, or a file that is not a tscale database, is refused with a
 * message naming both. NULL + err on failure. */
ts_store *ts_store_open(const char *path, char *err, size_t errlen);
/* As ts_store_open, but apply migrations only up to schema version target (tests use it
 * to build an older database and check that it upgrades). */
ts_store *ts_store_open_version(const char *path, int target, char *err, size_t errlen);
void ts_store_close(ts_store *s);

/* Schema version recorded in the database / compiled into this binary. */
int ts_store_schema_version(ts_store *s);
int ts_store_schema_latest(void);

/* Store the model file m of `name` as a version (or find the existing identical one) and
 * mark name active. file_hash identifies the whole file that m came from (so a restart
 * with the same --model file can tell it is the version already held); pass the value
 * of ts_store_model_hash(m) when m did not come from a file. *version receives the
 * version number, *created 1 when it is new. 0, or -1 + err. */
int ts_store_put_version(ts_store *s, const char *name, const ts_model *m, uint64_t file_hash,
                         int64_t *version, int *created, char *err, size_t errlen);

/* ts_store_put_version and a snapshot of m's state (ts_state_save, ts_model_step) in one
 * transaction, so that a crash never leaves a new version without its state: use it for
 * --model files and PUT /admin/models/{m}. The other arguments as for the two calls. */
int ts_store_put_model(ts_store *s, const char *name, const ts_model *m, uint64_t file_hash,
                       const char *reason, int keep, int64_t *version, int *created,
                       ts_snapshot_info *out, char *err, size_t errlen);

/* A replica joining from a published state (server/repl/state.h): name's version number
 * `version` (the publisher's: deltas name it) holds m's weights — the existing one when its
 * weights are m's (refused when they differ), else added under that number — and becomes
 * current, with a snapshot of m's state (reason: "join"; "import" or "restore" for an
 * admin message of another replica; replication position repl) in the same transaction.
 * Also for admin messages (PUT, restore) applied from the stream, which name their version
 * number too. The other arguments as for ts_store_put_model. 0, or -1 + err. */
int ts_store_put_joined(ts_store *s, const char *name, const ts_model *m, int64_t version, const char *reason,
                        const char *repl, int keep, ts_snapshot_info *out, char *err, size_t errlen);
/* The number a new version of name would get here (1 for a name never stored). 0 or -1 + err. */
int ts_store_next_version(ts_store *s, const char *name, int64_t *next, char *err, size_t errlen);

/* The version of name whose file_hash equals file_hash, or 0 in *version when none. */
int ts_store_find_version(ts_store *s, const char *name, uint64_t file_hash, int64_t *version,
                          char *err, size_t errlen);

/* A stable 64-bit hash of the model's whole persistent state (architecture, immutable
 * and mutable parts). Pure function; usable from any thread. 0 when out of memory. */
uint64_t ts_store_model_hash(const ts_model *m);

/* Append a snapshot of name at version: state[state_len] as from ts_state_save, step as
 * ts_model_step, repl the replication position of that state (repl.h; NULL: none). Then
 * delete all but the newest `keep` snapshots of name (keep <= 0: keep all). Fills *out
 * when not NULL. 0, or -1 + err (disk full, read-only, I/O). */
int ts_store_put_snapshot(ts_store *s, const char *name, int64_t version, const int64_t *state,
                          size_t state_len, int64_t step, const char *reason, const char *repl, int keep,
                          ts_snapshot_info *out, char *err, size_t errlen);
/* The replication position stored with snapshot snapshot_id: *repl malloc'd (free it), or
 * NULL when the snapshot has none. 0, or -1 + err. */
int ts_store_snapshot_repl(ts_store *s, int64_t snapshot_id, char **repl, char *err, size_t errlen);

/* Snapshots of name, newest first (none for a name never stored); *out malloc'd (free it),
 * *n entries. 0, or -1 + err. */
int ts_store_list_snapshots(ts_store *s, const char *name, ts_snapshot_info **out, int *n,
                            char *err, size_t errlen);

/* Rebuild name's model from a snapshot: snapshot_id > 0 that one; 0 the newest whose
 * checksum verifies (a damaged newer one is skipped, and *skipped counts them, so the
 * caller can log it). Returns a prepared model and fills *info, or NULL + err
 * (unknown name or snapshot: the message says which). */
ts_model *ts_store_load(ts_store *s, const char *name, int64_t snapshot_id, ts_snapshot_info *info,
                        int *skipped, char *err, size_t errlen);

/* Names of the active models that have a snapshot (what to load at start; a name stored
 * without any snapshot, e.g. by a crash right after ts_store_put_version, has no state and
 * is left out), sorted; *names malloc'd array of malloc'd strings; free with
 * ts_store_names_free. 0, or -1 + err. */
int ts_store_list_models(ts_store *s, char ***names, int *n, char *err, size_t errlen);
void ts_store_names_free(char **names, int n);

/* How many model names the database has ever held, deleted ones included (the built-in
 * demo is added only to a database that never held one). 0, or -1 + err. */
int ts_store_count_models(ts_store *s, int64_t *n, char *err, size_t errlen);

/* Mark name active again (a deleted model restored: loaded at the next start again).
 * 0, or -1 + err. */
int ts_store_activate(ts_store *s, const char *name, char *err, size_t errlen);

/* Mark name inactive (DELETE /admin/models/{m}: unloaded, not loaded at the next start;
 * its versions and snapshots stay). 0, or -1 + err. */
int ts_store_deactivate(ts_store *s, const char *name, char *err, size_t errlen);

/* ---- the feedback journal (server/store/journal.h has its design) ----------------------------- */

/* One journal entry: a feedback step of model `model`, and, when the request carried an
 * OIP id, its exactly-once record. */
typedef struct {
    const char *model;
    int64_t seq;              /* global order, assigned by the loop */
    int64_t version, step;    /* the version it applied to, the model's step after it */
    int64_t created_at_ms;
    const void *payload;      /* encoded scores (journal.c) */
    size_t len;
    uint64_t checksum;        /* over seq, version, step and payload (journal.c) */
    const char *request_id;   /* NULL: no exactly-once record */
    uint64_t body_hash;
    const char *answer;       /* the JSON answered */
} ts_journal_row;

/* Append rows in one transaction (the group commit; synchronous=FULL makes it durable when
 * this returns 0), and delete exactly-once records older than ids_before_ms (0: skip that).
 * 0, or -1 +
 * err (disk full, I/O error: then nothing of the group was written). */
int ts_store_journal_append(ts_store *s, const ts_journal_row *rows, int n, int64_t ids_before_ms,
                            char *err, size_t errlen);
/* Call fn for each entry of model name with seq > after, in seq order (request fields are
 * not read); fn returns nonzero to stop. Row pointers are valid during the call only. */
int ts_store_journal_scan(ts_store *s, const char *name, int64_t after,
                          int (*fn)(void *arg, const ts_journal_row *r), void *arg, char *err,
                          size_t errlen);
/* Delete model name's entries with seq >= from (a damaged tail, cut at the last good one). */
int ts_store_journal_cut(ts_store *s, const char *name, int64_t from, char *err, size_t errlen);
/* The newest sequence number ever used (entries and snapshots' journal_seq); the loop goes
 * on after it. */
int ts_store_journal_last(ts_store *s, int64_t *seq, char *err, size_t errlen);
/* Journal entries and their payload bytes now in the database (metrics, tests). */
int ts_store_journal_size(ts_store *s, int64_t *entries, int64_t *bytes, char *err, size_t errlen);
/* Call fn for each exactly-once record created at or after since_ms, oldest first (model,
 * request_id, body_hash, answer, seq, created_at_ms are set). */
int ts_store_feedback_ids(ts_store *s, int64_t since_ms, int (*fn)(void *arg, const ts_journal_row *r),
                          void *arg, char *err, size_t errlen);

/* Online backup of the whole database to dest (SQLite backup API, safe while running). */
int ts_store_backup(ts_store *s, const char *dest, char *err, size_t errlen);

#endif
