/* golden.h — reading the golden cases of tests/golden/ (written by tests/golden/gen.py
 * from the PyTorch reference) for the unit tests. Header-only: each test is one file. */
#ifndef TS_TEST_GOLDEN_H
#define TS_TEST_GOLDEN_H

#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/model.h"

#define GOLDEN_DIR "tests/golden/"

/* The case names, from tests/golden/cases.txt; *n set. NULL when the list is missing. */
static inline char **golden_cases(int *n)
{
    FILE *f = fopen(GOLDEN_DIR "cases.txt", "r");
    if (!f)
        return NULL;
    char **names = NULL, line[256];
    *n = 0;
    while (fgets(line, sizeof line, f)) {
        line[strcspn(line, "\r\n")] = '\0';
        if (!line[0])
            continue;
        names = realloc(names, (size_t)(*n + 1) * sizeof *names);
        names[(*n)++] = strdup(line);
    }
    fclose(f);
    return names;
}

static inline void golden_cases_free(char **names, int n)
{
    for (int i = 0; i < n; i++)
        free(names[i]);
    free(names);
}

static inline json_t *golden_load(const char *name)
{
    char path[512];
    json_error_t e;
    snprintf(path, sizeof path, GOLDEN_DIR "%s.json", name);
    json_t *j = json_load_file(path, 0, &e);
    if (!j)
        fprintf(stderr, "%s:%d: %s\n", path, e.line, e.text);
    return j;
}

static inline int64_t golden_int(const json_t *obj, const char *key)
{
    return (int64_t)json_integer_value(json_object_get(obj, key));
}

/* A [B][n] array of numbers as a float array (malloc'd); *B and *n set. */
static inline float *golden_matrix(const json_t *rows, int64_t *B, int64_t *n)
{
    *B = (int64_t)json_array_size(rows);
    *n = *B ? (int64_t)json_array_size(json_array_get(rows, 0)) : 0;
    float *m = malloc((size_t)(*B * *n + 1) * sizeof *m);
    for (int64_t b = 0; b < *B; b++)
        for (int64_t k = 0; k < *n; k++)
            m[b * *n + k] = (float)json_number_value(json_array_get(json_array_get(rows, (size_t)b), (size_t)k));
    return m;
}

/* The layer specs of a case's "layers" (the tscale.layers form); returns the count. */
static inline int golden_specs(const json_t *c, ts_layer_spec *specs, int max)
{
    const json_t *layers = json_object_get(c, "layers");
    int n = (int)json_array_size(layers);
    if (n > max)
        return -1;
    for (int i = 0; i < n; i++) {
        const json_t *l = json_array_get(layers, (size_t)i);
        ts_layer_spec *s = &specs[i];
        memset(s, 0, sizeof *s);
        if (ts_layer_kind_parse(json_string_value(json_object_get(l, "type")), &s->kind) != 0)
            return -1;
        if (s->kind == TS_LAYER_LINEAR) {
            s->in_dim = golden_int(l, "in_dim");
            s->out_dim = golden_int(l, "out_dim");
            s->has_bias = json_is_true(json_object_get(l, "bias"));
        } else if (s->kind == TS_LAYER_RMSNORM) {
            s->in_dim = s->out_dim = golden_int(l, "dim");
        } else {
            s->in_dim = s->out_dim = i ? specs[i - 1].out_dim : 0;
        }
        s->group_size = golden_int(l, "group_size");
    }
    return n;
}

static inline void golden_ints64(const json_t *a, int64_t *out)
{
    for (size_t k = 0; k < json_array_size(a); k++)
        out[k] = (int64_t)json_integer_value(json_array_get(a, k));
}

/* The case's initial model: ts_model_alloc, its "state" filled in, ts_model_prepare. */
static inline ts_model *golden_model(const json_t *c, char *err, size_t errlen)
{
    ts_layer_spec specs[TS_MAX_LAYERS];
    int n = golden_specs(c, specs, TS_MAX_LAYERS);
    if (n < 0) {
        snprintf(err, errlen, "bad layers in the golden case");
        return NULL;
    }
    ts_model *m = ts_model_alloc(specs, n, err, errlen);
    if (!m)
        return NULL;
    const json_t *state = json_object_get(c, "state");
    for (int i = 0; i < n; i++) {
        const json_t *s = json_array_get(state, (size_t)i);
        ts_layer *l = &m->layers[i];
        if (json_is_null(s))
            continue;
        const json_t *tp = json_object_get(s, "T_packed"), *E = json_object_get(s, "E");
        for (size_t k = 0; k < json_array_size(tp); k++)
            l->T_packed[k] = (uint8_t)json_integer_value(json_array_get(tp, k));
        for (size_t k = 0; k < json_array_size(E); k++)
            l->E[k] = (int8_t)json_integer_value(json_array_get(E, k));
        l->T_pad = golden_int(s, "T_pad");
        l->step = golden_int(s, "step");
        golden_ints64(json_object_get(s, "corr_accum"), l->corr_accum);
        const json_t *bias = json_object_get(s, "bias");
        for (size_t k = 0; l->bias && k < json_array_size(bias); k++)
            l->bias[k] = (int32_t)json_integer_value(json_array_get(bias, k));
    }
    if (ts_model_prepare(m, err, errlen) != 0) {
        ts_model_free(m);
        return NULL;
    }
    return m;
}

#endif
