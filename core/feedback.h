/* feedback.h — one adaptation step (SPEC §1): forward keeping activations, dL/dy from the
 * client or from a loss, backward through every layer, update_corr on every ternary_linear.
 *
 * update_corr, per ternary_linear layer:
 *   dW = dyᵀ · x (summed over the batch);  score[g] = Σ_{c∈g} sign(dW[r][c]) · T[r][c]
 *   corr_accum[g] -= score[g];  step += 1;  S recomputed.
 * ternary_rmsnorm layers never change.
 */
#ifndef TS_FEEDBACK_H
#define TS_FEEDBACK_H

#include "model.h"
#include "pool.h"

typedef enum {
    TS_LOSS_GRAD,  /* target is dL/dy [B][out_dim], given by the client */
    TS_LOSS_MSE,   /* target is [B][out_dim]; L = mean over all elements of (y - t)² */
    TS_LOSS_XENT,  /* labels [B] in [0, out_dim); L = mean over rows of -log softmax(y)[label] */
} ts_loss_kind;

typedef struct {
    ts_loss_kind kind;
    const float *target;    /* TS_LOSS_GRAD, TS_LOSS_MSE: [B][out_dim] */
    const int64_t *labels;  /* TS_LOSS_XENT: [B] */
} ts_feedback_input;

/* Apply one step for the batch x[B][in_dim]. On success returns 0 and, when loss is not
 * NULL, stores the loss (NAN for TS_LOSS_GRAD): torch's float32 value, or, when that
 * overflows, the same loss computed in double (infinite only when the outputs are). Returns -1 + err without changing the
 * model when a label is out of range or memory runs out. */
int ts_model_feedback(ts_model *m, const float *x, int64_t B, const ts_feedback_input *in,
                      double *loss, ts_pool *pool, char *err, size_t errlen);

/* As ts_model_feedback, and when scores is not NULL the step's whole integer effect lands in
 * scores[ts_model_score_len(m)]: for every ternary_linear layer in order, its score[G].
 * ts_model_apply_scores(m, scores, +1) on the state before the step gives the state after
 * it, bit for bit: that is what the journal records and replays. */
int ts_model_feedback_scores(ts_model *m, const float *x, int64_t B, const ts_feedback_input *in,
                             double *loss, int16_t *scores, ts_pool *pool, char *err, size_t errlen);

#endif
