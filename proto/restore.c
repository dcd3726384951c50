/* restore.c — the restore request body (see restore.h). */
#include "restore.h"

#include <jansson.h>
#include <stdio.h>

int ts_restore_parse(const uint8_t *body, size_t len, int64_t *snapshot_id, char *err, size_t errlen) {
    json_error_t je;
    json_t *j = json_loadb((const char *)body, len, 0, &je);
    json_t *id = j ? json_object_get(j, "snapshot_id") : NULL;
    int ok = id && json_is_integer(id) && json_integer_value(id) > 0;
    if (ok)
        *snapshot_id = json_integer_value(id);
    else if (!j)
        snprintf(err, errlen, "body is not JSON (%s); expected {\"snapshot_id\": N}", je.text);
    else
        snprintf(err, errlen, "expected {\"snapshot_id\": N} with N a positive integer");
    json_decref(j);
    return ok ? 0 : -1;
}
