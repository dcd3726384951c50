/* fuzz_safetensors.c — the model-file reader (proto/safetensors.c, SPEC §2) on arbitrary bytes.
 *
 * Properties:
 *  - a refusal always carries a message;
 *  - a file that is accepted round-trips: write → read gives the same architecture, name
 *    and integer state, and writing that again gives the same bytes (the writer is canonical);
 *  - the model it gives can run a forward and a feedback step (no memory error on any
 *    architecture the reader lets through).
 * Seeds: the golden and test-data model files (tests/golden, tests/data) (copied by `make fuzz`).
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "core/feedback.h"
#include "core/forward.h"
#include "core/model.h"
#include "core/trits.h"
#include "proto/safetensors.h"
#include "tests/fuzz/fuzz.h"

/* Same architecture and the same persistent state, layer by layer. */
static void fuzz_st_same_model(const ts_model *a, const ts_model *b)
{
    TS_FUZZ_CHECK(a->n_layers == b->n_layers, "layers %d vs %d after a round trip", a->n_layers,
                  b->n_layers);
    for (int i = 0; i < a->n_layers; i++) {
        const ts_layer *x = &a->layers[i], *y = &b->layers[i];
        TS_FUZZ_CHECK(memcmp(&x->spec, &y->spec, sizeof x->spec) == 0, "layer %d: spec differs", i);
        if (!x->W)
            continue;
        size_t n = (size_t)(x->rows * x->cols), G = (size_t)x->n_groups;
        TS_FUZZ_CHECK(x->rows == y->rows && x->cols == y->cols && x->T_pad == y->T_pad &&
                      x->step == y->step, "layer %d: shape, pad or step differs", i);
        uint8_t *px = malloc(ts_trits_packed_size(n)), *py = malloc(ts_trits_packed_size(n));
        TS_FUZZ_CHECK(px && py, "out of memory comparing layer %d", i);
        ts_layer_packed(x, px);
        ts_layer_packed(y, py);
        int same_t = memcmp(px, py, ts_trits_packed_size(n)) == 0;
        free(px);
        free(py);
        TS_FUZZ_CHECK(same_t &&
                      memcmp(x->E, y->E, G) == 0 &&
                      memcmp(x->corr_accum, y->corr_accum, G * sizeof *x->corr_accum) == 0,
                      "layer %d: T_packed, E or corr_accum differs after a round trip", i);
        TS_FUZZ_CHECK(!x->bias == !y->bias &&
                      (!x->bias || memcmp(x->bias, y->bias, (size_t)x->rows * sizeof *x->bias) == 0),
                      "layer %d: bias differs after a round trip", i);
    }
}

/* One forward of two rows and one feedback step with dL/dy = 1: only memory safety and
 * the error contract are checked (scales may overflow to inf on a hostile E; that is data). */
static void fuzz_st_run(ts_model *m)
{
    if (m->in_dim > 4096 || m->out_dim > 4096 || ts_model_params(m) > ((int64_t)1 << 20))
        return; /* keep one input fast */
    size_t in = (size_t)m->in_dim * 2, out = (size_t)m->out_dim * 2;
    float *x = malloc(in * sizeof *x), *y = malloc(out * sizeof *y), *g = malloc(out * sizeof *g);
    TS_FUZZ_CHECK(x && y && g, "out of memory in the fuzz target");
    for (size_t k = 0; k < in; k++)
        x[k] = (float)((int)(k % 7) - 3) * 0.25f;
    for (size_t k = 0; k < out; k++)
        g[k] = 1.0f;
    TS_FUZZ_CHECK(ts_model_forward(m, x, 2, y, NULL) == 0, "forward failed");
    ts_feedback_input fb = {.kind = TS_LOSS_GRAD, .target = g};
    char err[256] = "";
    double loss = 0;
    int64_t step = ts_model_step(m);
    int rc = ts_model_feedback(m, x, 2, &fb, &loss, NULL, err, sizeof err);
    TS_FUZZ_CHECK(rc == 0 || err[0], "feedback refused without a message");
    int has_linear = 0;
    for (int i = 0; i < m->n_layers; i++)
        has_linear |= m->layers[i].spec.kind == TS_LAYER_LINEAR;
    TS_FUZZ_CHECK(rc != 0 || !has_linear || ts_model_step(m) == step + 1,
                  "step %lld after one feedback from %lld", (long long)ts_model_step(m),
                  (long long)step);
    free(x);
    free(y);
    free(g);
}

int ts_fuzz_safetensors(const uint8_t *data, size_t size)
{
    char name[TS_MODEL_NAME_MAX], name2[TS_MODEL_NAME_MAX], err[512] = "";
    ts_model *m = ts_safetensors_read(data, size, name, err, sizeof err);
    if (!m) {
        TS_FUZZ_CHECK(err[0] != '\0', "a file was refused without a message");
        return 0;
    }
    TS_FUZZ_CHECK(memchr(name, '\0', sizeof name) != NULL, "name not terminated");
    uint8_t *out = NULL, *again = NULL;
    size_t outlen = 0, againlen = 0;
    int rc = ts_safetensors_write(m, name[0] ? name : NULL, &out, &outlen, err, sizeof err);
    TS_FUZZ_CHECK(rc == 0, "an accepted model cannot be written: %s", err);
    ts_model *m2 = ts_safetensors_read(out, outlen, name2, err, sizeof err);
    TS_FUZZ_CHECK(m2 != NULL, "the writer's own file is refused: %s", err);
    TS_FUZZ_CHECK(strcmp(name, name2) == 0, "name \"%s\" became \"%s\"", name, name2);
    fuzz_st_same_model(m, m2);
    rc = ts_safetensors_write(m2, name2[0] ? name2 : NULL, &again, &againlen, err, sizeof err);
    TS_FUZZ_CHECK(rc == 0 && againlen == outlen && memcmp(out, again, outlen) == 0,
                  "write -> read -> write is not byte-identical (%zu vs %zu bytes)", outlen,
                  againlen);
    fuzz_st_run(m);
    free(out);
    free(again);
    ts_model_free(m2);
    ts_model_free(m);
    return 0;
}

TS_FUZZ_ENTRY(ts_fuzz_safetensors)
