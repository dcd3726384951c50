/* safetensors.h — the tscale model file (SPEC §2): safetensors with tscale.* metadata.
 *
 * Layout: u64 little-endian header length N, N bytes of JSON header (padded with spaces
 * to a multiple of 8), then the raw little-endian tensor bytes. Tensor names are the
 * state_dict keys of an nn.Sequential: "{i}.T_packed", "{i}._T_shape", "{i}._T_pad",
 * "{i}.E", "{i}.corr_accum", "{i}.step_counter", "{i}.bias".
 *
 * Reading never trusts a length or an offset; every refusal names the tensor and what
 * is wrong. Writing is deterministic: the same model state gives the same bytes, so
 * export → import → export is byte-identical.
 */
#ifndef TS_SAFETENSORS_H
#define TS_SAFETENSORS_H

#include <stddef.h>
#include <stdint.h>

#include "../core/model.h"

#define TS_MODEL_NAME_MAX 128

/* Parse and validate a model file held in memory. On success returns a prepared model
 * (ts_model_prepare done) and copies "tscale.name" (or "") into name[TS_MODEL_NAME_MAX]
 * when name is not NULL. On failure returns NULL and a message in err. */
ts_model *ts_safetensors_read(const uint8_t *buf, size_t len, char *name, char *err, size_t errlen);

/* Read a model file from disk (same as above, plus I/O errors). */
ts_model *ts_safetensors_load(const char *path, char *name, char *err, size_t errlen);

/* Serialise the model's persistent state. name may be NULL (no tscale.name).
 * *out is malloc'd (caller frees). 0, or -1 + err on allocation failure. */
int ts_safetensors_write(const ts_model *m, const char *name, uint8_t **out, size_t *outlen,
                         char *err, size_t errlen);

/* Write to a file atomically (temp file + rename), mode 0600. 0 or -1 + err. */
int ts_safetensors_save(const ts_model *m, const char *name, const char *path, char *err, size_t errlen);

#endif
