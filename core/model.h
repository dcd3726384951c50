/* model.h — a sequential TernaryScaleTensor model: its layers, their integer state,
 * and the derived float scales.
 *
 * Persistent state is integer only (what the model file and the snapshots hold):
 *   T_packed, T_pad, E, corr_accum, step, bias.
 * Derived state, rebuilt from it and never persisted:
 *   W (compute layout of T, see kernel.h) and S (float32 scale per group).
 *
 * Scale per group, float32, exactly as the reference computes it:
 *   S[g] = exp2f(E[g] + ((float)corr_accum[g] / (float)(step·gs)) · 4.0f)   when step > 0
 *   S[g] = exp2f(E[g])                                                      otherwise
 */
#ifndef TS_MODEL_H
#define TS_MODEL_H

#include <stddef.h>
#include <stdint.h>

#include "kernel.h"

typedef enum {
    TS_LAYER_LINEAR,   /* ternary_linear:  y = x · W_effᵀ + bias        [B,in] → [B,out] */
    TS_LAYER_RMSNORM,  /* ternary_rmsnorm: y = rmsnorm(x) ⊙ w_eff        [B,dim] → [B,dim] */
    TS_LAYER_RELU,
    TS_LAYER_SILU,
    TS_LAYER_GELU,     /* exact erf form */
} ts_layer_kind;

/* The architecture of one layer: what the model file's tscale.layers entry says. */
typedef struct {
    ts_layer_kind kind;
    int64_t in_dim, out_dim;   /* activations: both equal the dim through them (ts_specs_chain) */
    int64_t group_size;        /* ternary layers only */
    int has_bias;              /* ternary_linear only */
} ts_layer_spec;

typedef struct {
    ts_layer_spec spec;
    /* ternary layers only (NULL / 0 for activations): */
    int64_t rows, cols;        /* _T_shape: linear [out,in], rmsnorm [1,dim] */
    int64_t gpr;               /* groups per row: ceil(cols / gs) */
    int64_t n_groups;          /* G = rows · gpr */
    uint8_t *T_packed;         /* [ceil(rows·cols/5)]  persistent, immutable; filled between
                                * alloc and prepare, then freed (NULL): W holds T, read the
                                * bytes with ts_layer_packed */
    int64_t T_pad;             /* pad digits in the last byte of T_packed */
    int8_t *E;                 /* [G]     persistent, immutable */
    int64_t *corr_accum;       /* [G]     persistent, mutable (update_corr) */
    int64_t step;              /* step_counter, persistent, mutable */
    int32_t *bias;             /* [rows]  persistent, immutable; NULL when no bias */
    ts_weights *W;             /* derived: compute layout of T */
    float *S;                  /* [ts_scale_count(rows, gpr)] derived: scales in the kernels'
                                * order (kernel.h), see ts_layer_update_scales and
                                * ts_layer_scale */
} ts_layer;

typedef struct {
    int n_layers;
    ts_layer *layers;          /* [n_layers] */
    int64_t in_dim, out_dim;   /* of the whole model */
} ts_model;

/* Limits that keep every size computation far from overflow. */
#define TS_MAX_LAYERS 256
#define TS_MAX_DIM    (1 << 20)
#define TS_MAX_GROUP  (1 << 16)
#define TS_MAX_PARAMS ((int64_t)1 << 34)  /* trits in one layer */

/* Check that specs chain (each in_dim equals the previous out_dim; activations keep
 * the dim), that there is a ternary layer, and every size is within limits. Returns 0,
 * or -1 with a message in err. */
int ts_specs_check(const ts_layer_spec *specs, int n, char *err, size_t errlen);

/* Give every activation its dims, then ts_specs_check: an activation's dims are those of
 * the layer before it or, when no ternary layer comes before it, the in_dim of the first
 * ternary layer (a model may start with an activation). For readers of architectures
 * that do not state activation dims (the model file, the architecture text). */
int ts_specs_chain(ts_layer_spec *specs, int n, char *err, size_t errlen);

/* Allocate a model for the given architecture with zeroed state (T all 0 trits packed,
 * E = 0, corr_accum = 0, step = 0, bias = 0) and W/S not yet built.
 * Callers fill the persistent state, then call ts_model_prepare(). NULL + err on failure. */
ts_model *ts_model_alloc(const ts_layer_spec *specs, int n, char *err, size_t errlen);
void ts_model_free(ts_model *m);

/* Build W from T_packed and S from the state, for every layer, then free T_packed (W holds
 * the same trits, so a served layer keeps one copy of T). 0, or -1 + err (a T_packed byte
 * >= 243, or pad digits that are not 0, which W could not give back byte for byte). Call
 * after filling the persistent state; again after changing E, corr_accum or step. */
int ts_model_prepare(ts_model *m, char *err, size_t errlen);

/* The packed trits of ternary layer l, ts_trits_packed_size(rows·cols) bytes, into out:
 * T_packed before ts_model_prepare, rebuilt from W after it (byte-identical). */
void ts_layer_packed(const ts_layer *l, uint8_t *out);

/* Recompute S of one ternary layer from E, corr_accum and step (on the pool's threads when
 * pool is not NULL: after a feedback step every scale changes). */
void ts_layer_update_scales(ts_layer *l, ts_pool *pool);
/* update_corr (SPEC §1) of one ternary_linear layer: corr_accum -= score[G] (the int16
 * scores of ts_kernel_score), step += 1, S recomputed; pool as above. */
void ts_layer_update_corr(ts_layer *l, const int16_t *score, ts_pool *pool);
/* Scores one feedback step produces: Σ G over the ternary_linear layers. */
size_t ts_model_score_len(const ts_model *m);
/* Apply a recorded step (sign +1: corr_accum -= score, step += 1 on every ternary_linear
 * layer, as update_corr does) or take one back (sign -1: the exact inverse; integer state
 * makes undo exact). scores[ts_model_score_len(m)] as ts_model_feedback_scores gives
 * them; S recomputed (on the pool when not NULL). */
void ts_model_apply_scores(ts_model *m, const int16_t *scores, int sign, ts_pool *pool);
/* Apply the sum of `steps` recorded steps at once (replication sums several steps into
 * one message): corr_accum -= sums, step += steps on every ternary_linear layer, S
 * recomputed once. The same integers as applying the steps one by one (addition
 * commutes), so the same bytes; sums[ts_model_score_len(m)] in the same order. */
void ts_model_apply_sum(ts_model *m, const int32_t *sums, int64_t steps, ts_pool *pool);
/* The scale of group g of row r (S is stored in the kernels' order). */
float ts_layer_scale(const ts_layer *l, int64_t r, int64_t g);

/* Initialise as the reference's constructors do, from a seeded RNG (not bit-identical
 * to torch.randn; the procedure is the same): linear: w ~ N(0, std²) with std 0.1
 * (0.02 with bias), T = ternarise(w, 0.05), E = clamp(round(log2(max(0.5·in^-0.5, 2^-8))), -8, 0),
 * bias 0; rmsnorm: w ~ N(0, 0.02²), T = ternarise(w, 0.01), E = -4. corr_accum = step = 0.
 * Returns a prepared model, or NULL + err. */
ts_model *ts_model_init(const ts_layer_spec *specs, int n, uint64_t seed, char *err, size_t errlen);

/* Parse a short architecture text such as "rmsnorm:64,linear:64x128,relu,linear:128x10"
 * with optional per-layer suffixes "/gsN" (group size, default 32) and "+bias":
 *   "linear:64x128/gs16+bias". Activations take their dims by ts_specs_chain; spaces around
 * items are ignored; "ternary_linear"/"ternary_rmsnorm" are accepted as names too.
 * Fills specs[max] and *n. 0, or -1 + err naming the item that is wrong. */
int ts_specs_parse(const char *text, ts_layer_spec *specs, int max, int *n, char *err, size_t errlen);

/* The built-in `demo` model served when nothing else is configured: ts_model_init of
 * "rmsnorm:16/gs8,linear:16x64/gs8+bias,gelu,linear:64x4/gs16" with a fixed seed
 * (16 inputs, 4 outputs; see core/init.c). */
ts_model *ts_model_demo(char *err, size_t errlen);

/* A model's step: step_counter of its first ternary_linear layer (0 when it has none). */
int64_t ts_model_step(const ts_model *m);

/* Mutable state (what a snapshot holds): for each ternary layer in order, its step then
 * its corr_accum[G]. ts_state_len() is the number of int64 values. */
size_t ts_state_len(const ts_model *m);
void ts_state_save(const ts_model *m, int64_t *out);
/* Load state saved from a model of the same architecture; recomputes S. */
void ts_state_load(ts_model *m, const int64_t *in);

/* Deep copy (persistent state + derived), or NULL on allocation failure. */
ts_model *ts_model_clone(const ts_model *m);

/* A frozen view of m's persistent state, for serialising it on another thread while m
 * serves (a published replication state, server/repl/state.c): it shares m's immutable
 * parts (W / T_packed, E, bias, the specs) and holds its own copy of the mutable integer
 * state (step, corr_accum) as of now. Costs what ts_state_save costs (a copy of the layer
 * table and the state), not a clone of the weights. Its S is NULL: only read it with
 * ts_safetensors_write, ts_state_save, ts_model_step (never infer, prepare or load state).
 * Valid only while m is allocated (the caller keeps m alive); free it with
 * ts_model_view_free, never ts_model_free. NULL on allocation failure. */
ts_model *ts_model_view(const ts_model *m);
void ts_model_view_free(ts_model *v);

/* Total trits, total groups, bytes in memory (state + compute layout + scales). */
int64_t ts_model_params(const ts_model *m);
int64_t ts_model_groups(const ts_model *m);
size_t ts_model_bytes(const ts_model *m);

const char *ts_layer_kind_name(ts_layer_kind k); /* "ternary_linear", "relu", ... */
int ts_layer_kind_parse(const char *name, ts_layer_kind *out); /* 0 or -1 */

#endif
