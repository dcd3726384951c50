/* restore.h — the body of POST /admin/models/{m}/restore (SPEC §4): {"snapshot_id": N}.
 * A wire format like the others in proto/, so the HTTP thread parses it without knowing
 * the admin handlers (it answers a malformed body 400 after the model lookup). */
#ifndef TS_RESTORE_H
#define TS_RESTORE_H

#include <stddef.h>
#include <stdint.h>

/* N must be a positive integer: 0 and *snapshot_id, or -1 with the reason (a 400). Pure;
 * any thread (fuzzed by tests/fuzz/fuzz_admin.c). */
int ts_restore_parse(const uint8_t *body, size_t len, int64_t *snapshot_id, char *err, size_t errlen);

#endif
