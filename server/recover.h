/* recover.h — what the daemon serves at start (SPEC §3, §6), before it listens:
 *   1. every active model of the database, from its newest snapshot that verifies, plus the
 *      feedback journal's entries after it (journal.h); *replayed counts them;
 *   2. each --model NAME=FILE: a file that is the version already held for NAME keeps the
 *      recovered state (so the same command line restarts forever); any other file
 *      becomes NAME's new version, snapshotted with reason "import". --model FILE names
 *      the model by the file's tscale.name, else by its file name without directory and
 *      ".safetensors"; two files may not end up with the same name;
 *   3. with nothing at all to serve and a database that never held a model, the built-in
 *      demo model as "demo" (deleted models, the demo included, stay deleted).
 * Runs on the main thread, which owns the store until the persistence thread starts. */
#ifndef TS_RECOVER_H
#define TS_RECOVER_H

#include "server/config.h"
#include "server/engine/engine.h"
#include "server/store/journal.h"
#include "server/store/store.h"

/* 0, or -1 + err (the daemon then refuses to start: serving a silently different set of
 * models than configured would be worse). */
int ts_recover_models(ts_store *st, const ts_config *cfg, ts_engine *e, int64_t *replayed, char *err,
                      size_t errlen);

/* Read and check every --model file and the names they serve under, touching no store:
 * the daemon calls it before it opens the database, so that a bad --model stops the start
 * before anything is written. 0, or -1 + err (the same message recovery would give). */
int ts_recover_check_files(const ts_config *cfg, char *err, size_t errlen);

#endif
