/* recover.c — models served at start (see recover.h). */
#include "server/recover.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "proto/safetensors.h"
#include "server/hash.h"
#include "server/log.h"
#include "server/metrics.h"
#include "server/http/route.h"
#include "server/snapshot.h"

/* Serve m as name at version, replacing what is served under that name. */
static ts_served *serve(ts_engine *e, const char *name, ts_model *m, int64_t version) {
    ts_served *old = ts_engine_find(e, name, 1);
    if (old)
        ts_engine_remove(e, old);
    return ts_engine_add(e, name, m, version);
}

/* Store m as a version of name together with its "import" snapshot (one transaction, so
 * a crash never leaves a version without state), then serve it. */
static int import_model(ts_store *st, const ts_config *cfg, ts_engine *e, const char *name,
                        ts_model *m, uint64_t hash, const char *from, char *err, size_t errlen) {
    int64_t version;
    int created;
    ts_snapshot_info info;
    uint64_t t0 = ts_now_us();
    if (ts_store_put_model(st, name, m, hash, "import", (int)cfg->snapshot_keep, &version, &created,
                           &info, err, errlen) < 0) {
        ts_model_free(m);
        return -1;
    }
    uint64_t dur = ts_now_us() - t0;
    ts_served *s = serve(e, name, m, version);
    if (!s) {
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    ts_snapshot_note(s, &info);
    ts_log_info("model '%s' loaded from %s: version %lld%s, step %lld, %d layers, in %lld, out %lld",
                name, from, (long long)version, created ? " (new)" : "", (long long)s->step,
                m->n_layers, (long long)m->in_dim, (long long)m->out_dim);
    ts_snapshot_log(name, &info, dur);
    return 0;
}

static int recover_stored(ts_store *st, const ts_config *cfg, ts_engine *e, int64_t *total_replayed, char *err,
                          size_t errlen) {
    char **names = NULL;
    int n = 0;
    if (ts_store_list_models(st, &names, &n, err, errlen) < 0)
        return -1;
    int rc = 0;
    for (int i = 0; i < n && rc == 0; i++) {
        ts_snapshot_info info;
        int skipped = 0;
        char why[512];
        ts_model *m = ts_store_load(st, names[i], 0, &info, &skipped, why, sizeof why);
        if (!m) {
            snprintf(err, errlen, "cannot recover model '%s' from the database: %s", names[i], why);
            rc = -1;
            break;
        }
        if (skipped)
            ts_log_warn("model '%s': skipped %d damaged snapshot(s), recovering from snapshot %lld",
                        names[i], skipped, (long long)info.snapshot_id);
        int64_t replayed = 0;
        if (ts_journal_replay(st, names[i], m, info.version, info.journal_seq, cfg->replicate != NULL, &replayed,
                              err, errlen) < 0) {
            ts_model_free(m);
            rc = -1;
            break;
        }
        *total_replayed += replayed;
        if (replayed)
            ts_log_info("model '%s': replayed %lld journal entries after snapshot %lld (step %lld -> %lld)",
                        names[i], (long long)replayed, (long long)info.snapshot_id, (long long)info.step,
                        (long long)ts_model_step(m));
        ts_served *s = serve(e, names[i], m, info.version);
        if (!s) {
            snprintf(err, errlen, "out of memory");
            rc = -1;
            break;
        }
        ts_snapshot_note(s, &info);
        ts_log_info("model '%s' recovered: version %lld, step %lld, snapshot %lld, %d layers, in %lld, "
                    "out %lld", s->name, (long long)s->version, (long long)s->step,
                    (long long)info.snapshot_id, m->n_layers, (long long)m->in_dim, (long long)m->out_dim);
    }
    ts_store_names_free(names, n);
    return rc;
}

static uint8_t *read_file(const char *path, size_t *len, char *err, size_t errlen) {
    FILE *f = fopen(path, "rb");
    struct stat st;
    if (!f || fstat(fileno(f), &st) < 0 || !S_ISREG(st.st_mode)) {
        snprintf(err, errlen, "cannot read %s: %s", path, f ? "not a regular file" : strerror(errno));
        if (f)
            fclose(f);
        return NULL;
    }
    uint8_t *buf = malloc(st.st_size ? (size_t)st.st_size : 1);
    size_t n = buf ? fread(buf, 1, (size_t)st.st_size, f) : 0;
    fclose(f);
    if (!buf || n != (size_t)st.st_size) {
        snprintf(err, errlen, "cannot read %s: %s", path, buf ? "short read" : "out of memory");
        free(buf);
        return NULL;
    }
    *len = n;
    return buf;
}

#define NAME_RULE "a model name is 1-127 characters of A-Z a-z 0-9 . _ - and does not start with '.'"

/* The name --model FILE serves under (no NAME= given): the file's tscale.name, else its
 * file name without directory and ".safetensors" (SPEC §2: tscale.name is the model's
 * default name). 0, or -1 + err naming the file. */
static int default_name(const char *path, const char *file_name, char *name, char *err,
                        size_t errlen) {
    const char *from = "its tscale.name";
    if (file_name[0]) {
        snprintf(name, TS_MODEL_NAME_MAX, "%s", file_name);
    } else {
        const char *base = strrchr(path, '/');
        base = base ? base + 1 : path;
        size_t n = strlen(base), ext = strlen(".safetensors");
        if (n > ext && strcmp(base + n - ext, ".safetensors") == 0)
            n -= ext;
        from = "its file name (the file has no tscale.name)";
        if (n >= TS_MODEL_NAME_MAX) {
            n = 0; /* invalid, and said so below */
            from = "its file name (over 127 characters; the file has no tscale.name)";
        }
        memcpy(name, base, n);
        name[n] = '\0';
    }
    if (ts_route_name_valid(name))
        return 0;
    snprintf(err, errlen, "--model %s: the model name '%s' from %s is not valid (%s); give one "
             "with --model NAME=%s", path, name, from, NAME_RULE, path);
    return -1;
}

/* Load one --model file; name[] receives the name it is served under. With st NULL, only
 * read, check and name it. */
static int apply_model_file(ts_store *st, const ts_config *cfg, ts_engine *e, const ts_model_arg *a,
                            char *name, char *err, size_t errlen) {
    char why[512], file_name[TS_MODEL_NAME_MAX] = "";
    if (a->name && !ts_route_name_valid(a->name)) {
        snprintf(err, errlen, "--model %s=...: " NAME_RULE, a->name);
        return -1;
    }
    size_t len = 0;
    uint8_t *buf = read_file(a->path, &len, why, sizeof why);
    ts_model *m = buf ? ts_safetensors_read(buf, len, file_name, why, sizeof why) : NULL;
    uint64_t hash = buf ? ts_hash_bytes(buf, len) : 0;
    free(buf);
    if (!m) {
        snprintf(err, errlen, "--model %s%s%s: %s", a->name ? a->name : "", a->name ? "=" : "",
                 a->path, why);
        return -1;
    }
    if (a->name)
        snprintf(name, TS_MODEL_NAME_MAX, "%s", a->name);
    else if (default_name(a->path, file_name, name, err, errlen) < 0) {
        ts_model_free(m);
        return -1;
    }
    if (!st) { /* ts_recover_check_files: the file is usable under this name */
        ts_model_free(m);
        return 0;
    }
    int64_t held = 0;
    ts_served *cur = ts_engine_find(e, name, 1);
    if (ts_store_find_version(st, name, hash, &held, err, errlen) < 0) {
        ts_model_free(m);
        return -1;
    }
    if (cur && held != 0 && held == cur->version) {
        ts_log_info("model '%s': %s is version %lld, already held; keeping the recovered state "
                    "(step %lld)", name, a->path, (long long)held, (long long)cur->step);
        ts_model_free(m);
        return 0;
    }
    return import_model(st, cfg, e, name, m, hash, a->path, err, errlen);
}

/* Every --model file, in order; two that end up with the same name are an error (the
 * second would silently replace the first). With st and e NULL, only check them. */
static int apply_model_files(ts_store *st, const ts_config *cfg, ts_engine *e, char *err,
                             size_t errlen) {
    char (*names)[TS_MODEL_NAME_MAX] = calloc((size_t)cfg->n_models + 1, sizeof *names);
    if (!names) {
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    int rc = 0;
    for (int i = 0; i < cfg->n_models && rc == 0; i++) {
        rc = apply_model_file(st, cfg, e, &cfg->models[i], names[i], err, errlen);
        for (int j = 0; j < i && rc == 0; j++)
            if (strcmp(names[i], names[j]) == 0) {
                snprintf(err, errlen, "--model %s and --model %s both name model '%s' (give "
                         "another name with --model NAME=FILE)", cfg->models[j].path,
                         cfg->models[i].path, names[i]);
                rc = -1;
            }
    }
    free(names);
    return rc;
}

static int add_demo(ts_store *st, const ts_config *cfg, ts_engine *e, char *err, size_t errlen) {
    ts_model *m = ts_model_demo(err, errlen);
    if (!m)
        return -1;
    return import_model(st, cfg, e, "demo", m, ts_store_model_hash(m),
                        "the built-in demo (nothing else configured)", err, errlen);
}

/* The demo for a database that never held a model; one whose models were all deleted
 * stays empty (a deleted model, the demo too, stays deleted across restarts). */
static int add_demo_once(ts_store *st, const ts_config *cfg, ts_engine *e, char *err, size_t errlen) {
    int64_t ever = 0;
    if (ts_store_count_models(st, &ever, err, errlen) < 0)
        return -1;
    if (ever == 0)
        return add_demo(st, cfg, e, err, errlen);
    ts_log_warn("serving no model: every model of the database was deleted (PUT "
                "/admin/models/NAME with a model file, or start with --model, to serve one)");
    return 0;
}

int ts_recover_models(ts_store *st, const ts_config *cfg, ts_engine *e, int64_t *replayed, char *err,
                      size_t errlen) {
    *replayed = 0;
    if (recover_stored(st, cfg, e, replayed, err, errlen) < 0)
        return -1;
    if (apply_model_files(st, cfg, e, err, errlen) < 0)
        return -1;
    return ts_engine_count(e) == 0 ? add_demo_once(st, cfg, e, err, errlen) : 0;
}

int ts_recover_check_files(const ts_config *cfg, char *err, size_t errlen) {
    return apply_model_files(NULL, cfg, NULL, err, errlen);
}
