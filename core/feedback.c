/* feedback.c — one adaptation step (see feedback.h).
 *
 * All memory is taken before anything is computed and the model is written only at the
 * very end, after backward has run through every layer with the pre-step state (as the
 * reference backprops first, then calls update_corr on each layer): a failure leaves the
 * model unchanged.
 */
#include "feedback.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "forward.h"

typedef struct {
    float *acts;        /* Σ_i [B][dim_i]: input of every layer, then the model output */
    size_t *act_off;    /* [n_layers + 1] offsets into acts */
    float *grad[2];     /* [B][max dim] each: dL/d(output), dL/d(input) of the current layer */
    int16_t *score;     /* Σ G of the ternary_linear layers (ts_kernel_score) */
    size_t *score_off;  /* [n_layers] offsets into score */
    int score_owned;    /* score is ours (not the caller's scores buffer) */
} fb_work;

static void work_free(fb_work *w)
{
    free(w->acts);
    free(w->act_off);
    free(w->grad[0]);
    free(w->grad[1]);
    if (w->score_owned)
        free(w->score);
    free(w->score_off);
}

/* Sizes add up rows·dim over at most TS_MAX_LAYERS+1 layers of dim <= TS_MAX_DIM; B is
 * bounded here so that no product below can overflow. */
static int work_alloc(fb_work *w, const ts_model *m, int64_t B, int16_t *scores_out)
{
    memset(w, 0, sizeof *w);
    int n = m->n_layers;
    if (B < 1 || (uint64_t)B > SIZE_MAX / sizeof(float) / (uint64_t)(TS_MAX_LAYERS + 1) / TS_MAX_DIM)
        return -1;
    w->act_off = malloc((size_t)(n + 1) * sizeof *w->act_off);
    w->score_off = malloc((size_t)n * sizeof *w->score_off);
    if (!w->act_off || !w->score_off)
        return -1;
    size_t acts = 0, scores = 0, dim = (size_t)m->in_dim;
    for (int i = 0; i < n; i++) {
        const ts_layer *l = &m->layers[i];
        w->act_off[i] = acts;
        acts += (size_t)B * (size_t)l->spec.in_dim;
        w->score_off[i] = scores;
        if (l->spec.kind == TS_LAYER_LINEAR)
            scores += (size_t)l->n_groups;
        if ((size_t)l->spec.out_dim > dim)
            dim = (size_t)l->spec.out_dim;
    }
    w->act_off[n] = acts;
    acts += (size_t)B * (size_t)m->out_dim;
    w->acts = malloc(acts * sizeof *w->acts);
    w->grad[0] = malloc((size_t)B * dim * sizeof(float));
    w->grad[1] = malloc((size_t)B * dim * sizeof(float));
    w->score = scores_out ? scores_out : malloc((scores ? scores : 1) * sizeof *w->score);
    w->score_owned = !scores_out;
    return w->acts && w->grad[0] && w->grad[1] && w->score ? 0 : -1;
}

/* dL/dy into g[B][out] and the loss, as torch computes them (F.mse_loss and
 * F.cross_entropy with mean reduction, and their backward). */
static double loss_grad(const ts_feedback_input *in, const float *y, int64_t B, int64_t out,
                        float *g)
{
    int64_t n = B * out;
    if (in->kind == TS_LOSS_GRAD) {
        memcpy(g, in->target, (size_t)n * sizeof *g);
        return NAN;
    }
    if (in->kind == TS_LOSS_MSE) {
        double sum = 0.0;
        float norm = (float)(2.0 / (double)n);   /* mse_loss_backward: (y - t) · 2/N */
        for (int64_t k = 0; k < n; k++) {
            float d = y[k] - in->target[k];
            sum += (double)d * d;
            g[k] = d * norm;
        }
        return (float)(sum / (double)n);
    }
    /* cross entropy: log_softmax, then nll; backward g = onehot·(-1/B) - softmax·Σg. */
    double sum = 0.0;
    float gl = -1.0f / (float)B;
    for (int64_t b = 0; b < B; b++) {
        const float *yr = y + b * out;
        float *gr = g + b * out;
        float mx = yr[0];
        for (int64_t j = 1; j < out; j++)
            mx = yr[j] > mx ? yr[j] : mx;
        float se = 0.0f;
        for (int64_t j = 0; j < out; j++)
            se += expf(yr[j] - mx);
        float lse = logf(se);
        int64_t label = in->labels[b];
        for (int64_t j = 0; j < out; j++) {
            float lsm = yr[j] - mx - lse;
            gr[j] = (j == label ? gl : 0.0f) - expf(lsm) * gl;
        }
        sum -= (double)(yr[label] - mx - lse);
    }
    return (float)(sum / (double)B);
}

/* The loss in double precision throughout, for when the float32 one (torch's) overflowed:
 * an MSE of outputs near 1e20 is 1e40, past float32 but an answer the client can use.
 * Infinite only when the outputs themselves are. */
static double loss_wide(const ts_feedback_input *in, const float *y, int64_t B, int64_t out)
{
    double sum = 0.0;
    if (in->kind == TS_LOSS_MSE) {
        for (int64_t k = 0; k < B * out; k++) {
            double d = (double)y[k] - (double)in->target[k];
            sum += d * d;
        }
        return sum / (double)(B * out);
    }
    for (int64_t b = 0; b < B; b++) {
        const float *yr = y + b * out;
        double mx = yr[0], se = 0.0;
        for (int64_t j = 1; j < out; j++)
            mx = yr[j] > mx ? yr[j] : mx;
        for (int64_t j = 0; j < out; j++)
            se += exp((double)yr[j] - mx);
        sum -= (double)yr[in->labels[b]] - mx - log(se);
    }
    return sum / (double)B;
}

/* rmsnorm backward, with n = x·r, r = rsqrt(mean(x²)+ε), y = n ⊙ w:
 *   dx = dn·r + 2x · (Σ dn·x) · (-r³/2) / D,   dn = dy ⊙ w */
static void rmsnorm_backward(const ts_layer *l, const float *x, const float *dy, int64_t B,
                             float *dx)
{
    int64_t dim = l->cols;
    for (int64_t b = 0; b < B; b++) {
        const float *xr = x + b * dim, *dyr = dy + b * dim;
        float *dxr = dx + b * dim;
        float r = ts_rmsnorm_rscale(xr, dim), dot = 0.0f;
        for (int64_t c = 0; c < dim; c++) {
            dxr[c] = dyr[c] * ts_rmsnorm_weight(l, c);   /* dn */
            dot += dxr[c] * xr[c];
        }
        float dms = dot * (-0.5f * r * r * r) / (float)dim;
        for (int64_t c = 0; c < dim; c++)
            dxr[c] = dxr[c] * r + 2.0f * xr[c] * dms;
    }
}

/* d gelu(x)/dx = Φ(x) + x·φ(x). PyTorch's CPU backward (oneDNN's gelu_erf, the path the
 * reference takes for any tensor of two or more elements) returns exactly 0 at and below
 * x = -6.1513515 where the formula leaves a tiny negative value; sign(dW) sees the
 * difference, so corr_accum would drift from the reference's without this cut. */
static float gelu_grad(float x)
{
    if (x <= -6.151351451873779f)
        return 0.0f;
    float cdf = 0.5f * (1.0f + erff(x * (float)M_SQRT1_2));
    float pdf = expf(-0.5f * x * x) * 0.3989422804014327f;   /* 1/sqrt(2π) */
    return cdf + x * pdf;
}

static float silu_grad(float x)
{
    float s = 1.0f / (1.0f + expf(-x));
    return s * (1.0f + x * (1.0f - s));
}

/* dx of one activation layer; ReLU's gradient at 0 is 0. */
static void activation_backward(ts_layer_kind kind, const float *x, const float *dy, int64_t n,
                                float *dx)
{
    for (int64_t k = 0; k < n; k++) {
        float d = kind == TS_LAYER_RELU ? (x[k] > 0.0f ? 1.0f : 0.0f)
                : kind == TS_LAYER_SILU ? silu_grad(x[k])
                                        : gelu_grad(x[k]);
        dx[k] = dy[k] * d;
    }
}

/* Does any layer before i have state that feedback changes (so dx must flow there)? */
static int needs_dx(const ts_model *m, int i)
{
    for (int k = 0; k < i; k++)
        if (m->layers[k].spec.kind == TS_LAYER_LINEAR)
            return 1;
    return 0;
}

/* Backward through every layer, from the gradient of the model output in w->grad[0];
 * scores of the linear layers land in w->score. Reads the model only. */
static void backward(const ts_model *m, int64_t B, fb_work *w, ts_pool *pool)
{
    int cur = 0;
    for (int i = m->n_layers - 1; i >= 0; i--) {
        const ts_layer *l = &m->layers[i];
        const float *x = w->acts + w->act_off[i], *dy = w->grad[cur];
        float *dx = w->grad[1 - cur];
        if (l->spec.kind == TS_LAYER_LINEAR)
            ts_kernel_score(l->W, dy, x, B, w->score + w->score_off[i], pool);
        if (!needs_dx(m, i))
            break;
        if (l->spec.kind == TS_LAYER_LINEAR)
            ts_kernel_backward_x(l->W, l->S, dy, B, dx, pool);
        else if (l->spec.kind == TS_LAYER_RMSNORM)
            rmsnorm_backward(l, x, dy, B, dx);
        else
            activation_backward(l->spec.kind, x, dy, B * l->spec.in_dim, dx);
        cur = 1 - cur;
    }
}

/* update_corr of every ternary_linear layer. */
static void apply_scores(ts_model *m, const fb_work *w, ts_pool *pool)
{
    for (int i = 0; i < m->n_layers; i++)
        if (m->layers[i].spec.kind == TS_LAYER_LINEAR)
            ts_layer_update_corr(&m->layers[i], w->score + w->score_off[i], pool);
}

static int check_input(const ts_model *m, int64_t B, const ts_feedback_input *in, char *err,
                       size_t errlen)
{
    if (B < 1) {
        snprintf(err, errlen, "feedback needs at least one row, got %lld", (long long)B);
        return -1;
    }
    if (in->kind == TS_LOSS_XENT) {
        if (!in->labels) {
            snprintf(err, errlen, "cross_entropy feedback needs labels");
            return -1;
        }
        for (int64_t b = 0; b < B; b++) {
            if (in->labels[b] < 0 || in->labels[b] >= m->out_dim) {
                snprintf(err, errlen, "label %lld of row %lld is out of range [0, %lld)",
                         (long long)in->labels[b], (long long)b, (long long)m->out_dim);
                return -1;
            }
        }
    } else if (in->kind != TS_LOSS_GRAD && in->kind != TS_LOSS_MSE) {
        snprintf(err, errlen, "unknown feedback kind %d", (int)in->kind);
        return -1;
    } else if (!in->target) {
        snprintf(err, errlen, "%s feedback needs a [B, %lld] tensor",
                 in->kind == TS_LOSS_GRAD ? "grad_output" : "target", (long long)m->out_dim);
        return -1;
    }
    return 0;
}

int ts_model_feedback(ts_model *m, const float *x, int64_t B, const ts_feedback_input *in,
                      double *loss, ts_pool *pool, char *err, size_t errlen)
{
    return ts_model_feedback_scores(m, x, B, in, loss, NULL, pool, err, errlen);
}

int ts_model_feedback_scores(ts_model *m, const float *x, int64_t B, const ts_feedback_input *in,
                             double *loss, int16_t *scores, ts_pool *pool, char *err, size_t errlen)
{
    if (check_input(m, B, in, err, errlen) != 0)
        return -1;
    fb_work w;
    if (work_alloc(&w, m, B, scores) != 0) {
        work_free(&w);
        snprintf(err, errlen, "out of memory for a feedback step of %lld rows", (long long)B);
        return -1;
    }
    /* 1. forward, keeping every layer's input */
    memcpy(w.acts, x, (size_t)B * (size_t)m->in_dim * sizeof *x);
    for (int i = 0; i < m->n_layers; i++)
        ts_layer_forward(&m->layers[i], w.acts + w.act_off[i], B, w.acts + w.act_off[i + 1], pool);
    /* 2. dL/dy */
    double l = loss_grad(in, w.acts + w.act_off[m->n_layers], B, m->out_dim, w.grad[0]);
    if (isinf(l))
        l = loss_wide(in, w.acts + w.act_off[m->n_layers], B, m->out_dim);
    /* 3. backward with the pre-step state, 4. update_corr */
    backward(m, B, &w, pool);
    apply_scores(m, &w, pool);
    work_free(&w);
    if (loss)
        *loss = l;
    return 0;
}
