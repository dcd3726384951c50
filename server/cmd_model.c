/* cmd_model.c — `tscaled init` (write a new model file) and `tscaled inspect` (describe one).
 * Exit status: 0 done, 1 failed (bad file, I/O), 2 usage error. */
#include <errno.h>
#include <inttypes.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "server/cli.h"
#include "core/model.h"
#include "proto/safetensors.h"

static const char init_usage[] =
    "usage: tscaled init --layers SPEC --out FILE [--seed N] [--name NAME] [--force]\n"
    "\n"
    "Write a new model file (safetensors, SPEC §2) with freshly initialised state.\n"
    "\n"
    "  --layers SPEC  the architecture, comma-separated, e.g.\n"
    "                 rmsnorm:64,linear:64x128/gs16+bias,relu,linear:128x10\n"
    "                 items: linear:INxOUT, rmsnorm:DIM, relu, silu, gelu;\n"
    "                 suffixes: /gsN group size (default 32), +bias (linear only)\n"
    "  --out FILE     where to write (refuses to overwrite an existing file without --force)\n"
    "  --seed N       RNG seed of the initial weights (default 1)\n"
    "  --name NAME    the model's default name, stored as tscale.name\n"
    "  --force        overwrite FILE if it exists\n";

static const char inspect_usage[] =
    "usage: tscaled inspect [--json] FILE\n"
    "\n"
    "Validate a model file and describe it: name, layers (dims, group size, bias, groups,\n"
    "step), total parameters and groups, the model's step, bytes on disk and in memory.\n"
    "\n"
    "  --json  print the description as one JSON object\n";

/* "--key value" or "--key=value" at argv[*i]; advances *i past what it used. NULL when
 * argv[*i] is not that option; *missing set when the option has no value. */
static const char *opt_value(int argc, char **argv, int *i, const char *key, int *missing)
{
    size_t n = strlen(key);
    if (strncmp(argv[*i], key, n) != 0)
        return NULL;
    if (argv[*i][n] == '=')
        return argv[*i] + n + 1;
    if (argv[*i][n] != '\0')
        return NULL;
    if (*i + 1 >= argc) {
        *missing = 1;
        return NULL;
    }
    return argv[++*i];
}

static int usage_error(const char *cmd, const char *usage, const char *fmt, const char *arg)
{
    fprintf(stderr, "tscaled %s: ", cmd);
    fprintf(stderr, fmt, arg);
    fprintf(stderr, "\n\n%s", usage);
    return 2;
}

static int parse_seed(const char *text, uint64_t *seed)
{
    char *end;
    errno = 0;
    unsigned long long v = strtoull(text, &end, 10);
    if (errno || end == text || *end || text[0] == '-')
        return -1;
    *seed = v;
    return 0;
}

int ts_cmd_init(int argc, char **argv)
{
    const char *layers = NULL, *out = NULL, *name = NULL, *v;
    uint64_t seed = 1;
    int force = 0;
    for (int i = 1; i < argc; i++) {
        int missing = 0;
        if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) {
            fputs(init_usage, stdout);
            return 0;
        } else if (!strcmp(argv[i], "--force")) {
            force = 1;
        } else if ((v = opt_value(argc, argv, &i, "--layers", &missing))) {
            layers = v;
        } else if ((v = opt_value(argc, argv, &i, "--out", &missing))) {
            out = v;
        } else if ((v = opt_value(argc, argv, &i, "--name", &missing))) {
            name = v;
        } else if ((v = opt_value(argc, argv, &i, "--seed", &missing))) {
            if (parse_seed(v, &seed) != 0)
                return usage_error("init", init_usage, "--seed wants a non-negative integer, not '%s'", v);
        } else {
            return usage_error("init", init_usage, missing ? "%s needs a value" : "unknown argument '%s'",
                               argv[i]);
        }
    }
    if (!layers || !out)
        return usage_error("init", init_usage, "%s is required", !layers ? "--layers" : "--out");
    struct stat st;
    if (!force && stat(out, &st) == 0) {
        fprintf(stderr, "tscaled init: %s already exists (use --force to overwrite it)\n", out);
        return 1;
    }
    char err[512];
    ts_layer_spec specs[TS_MAX_LAYERS];
    int n;
    if (ts_specs_parse(layers, specs, TS_MAX_LAYERS, &n, err, sizeof err) != 0) {
        fprintf(stderr, "tscaled init: --layers: %s\n", err);
        return 2;
    }
    ts_model *m = ts_model_init(specs, n, seed, err, sizeof err);
    if (!m || ts_safetensors_save(m, name, out, err, sizeof err) != 0) {
        fprintf(stderr, "tscaled init: %s\n", err);
        ts_model_free(m);
        return 1;
    }
    printf("wrote %s: %d layers, %" PRId64 " -> %" PRId64 ", %" PRId64 " ternary parameters\n", out,
           m->n_layers, m->in_dim, m->out_dim, ts_model_params(m));
    ts_model_free(m);
    return 0;
}

/* ── inspect ── */

static json_t *layer_json(const ts_layer *l, int i)
{
    const ts_layer_spec *s = &l->spec;
    json_t *o = json_pack("{s:i, s:s, s:I, s:I}", "index", i, "type", ts_layer_kind_name(s->kind),
                          "in_dim", (json_int_t)s->in_dim, "out_dim", (json_int_t)s->out_dim);
    if (o && (s->kind == TS_LAYER_LINEAR || s->kind == TS_LAYER_RMSNORM)) {
        json_object_set_new(o, "group_size", json_integer(s->group_size));
        json_object_set_new(o, "bias", json_boolean(s->has_bias));
        json_object_set_new(o, "groups", json_integer(l->n_groups));
        json_object_set_new(o, "params", json_integer(l->rows * l->cols));
        json_object_set_new(o, "step", json_integer(l->step));
    }
    return o;
}

static int print_json(const ts_model *m, const char *path, const char *name, long long disk)
{
    json_t *layers = json_array();
    for (int i = 0; i < m->n_layers; i++)
        json_array_append_new(layers, layer_json(&m->layers[i], i));
    json_t *o = json_pack("{s:s, s:s, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:o}", "file", path,
                          "name", name, "in_dim", (json_int_t)m->in_dim,
                          "out_dim", (json_int_t)m->out_dim, "params", (json_int_t)ts_model_params(m),
                          "groups", (json_int_t)ts_model_groups(m), "step", (json_int_t)ts_model_step(m),
                          "bytes_on_disk", (json_int_t)disk,
                          "bytes_in_memory", (json_int_t)ts_model_bytes(m), "layers", layers);
    char *text = o ? json_dumps(o, JSON_COMPACT) : NULL;
    json_decref(o);
    if (!text) {
        fprintf(stderr, "tscaled inspect: out of memory\n");
        return 1;
    }
    puts(text);
    free(text);
    return 0;
}

static void print_text(const ts_model *m, const char *path, const char *name, long long disk)
{
    printf("file     %s\n", path);
    printf("name     %s\n", name[0] ? name : "(none)");
    printf("shape    [B,%" PRId64 "] -> [B,%" PRId64 "]\n", m->in_dim, m->out_dim);
    printf("layers   %d\n", m->n_layers);
    for (int i = 0; i < m->n_layers; i++) {
        const ts_layer *l = &m->layers[i];
        const ts_layer_spec *s = &l->spec;
        char dims[64];
        if (s->kind == TS_LAYER_LINEAR)
            snprintf(dims, sizeof dims, "%" PRId64 " -> %" PRId64 "%s", s->in_dim, s->out_dim,
                     s->has_bias ? " +bias" : "");
        else
            snprintf(dims, sizeof dims, "%" PRId64, s->in_dim);
        if (s->kind == TS_LAYER_LINEAR || s->kind == TS_LAYER_RMSNORM)
            printf("  %3d  %-16s %-20s  gs %-5" PRId64 " groups %-8" PRId64 " step %" PRId64 "\n", i,
                   ts_layer_kind_name(s->kind), dims, s->group_size, l->n_groups, l->step);
        else
            printf("  %3d  %-16s %s\n", i, ts_layer_kind_name(s->kind), dims);
    }
    printf("params   %" PRId64 " ternary weights\n", ts_model_params(m));
    printf("groups   %" PRId64 "\n", ts_model_groups(m));
    printf("step     %" PRId64 "\n", ts_model_step(m));
    printf("bytes    %lld on disk, %zu in memory\n", disk, ts_model_bytes(m));
}

int ts_cmd_inspect(int argc, char **argv)
{
    const char *path = NULL;
    int as_json = 0;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) {
            fputs(inspect_usage, stdout);
            return 0;
        } else if (!strcmp(argv[i], "--json")) {
            as_json = 1;
        } else if (argv[i][0] == '-' && argv[i][1] != '\0') {
            return usage_error("inspect", inspect_usage, "unknown option '%s'", argv[i]);
        } else if (path) {
            return usage_error("inspect", inspect_usage, "one FILE only (extra '%s')", argv[i]);
        } else {
            path = argv[i];
        }
    }
    if (!path)
        return usage_error("inspect", inspect_usage, "%s", "FILE is required");
    char err[768], name[TS_MODEL_NAME_MAX];
    ts_model *m = ts_safetensors_load(path, name, err, sizeof err);
    if (!m) {
        fprintf(stderr, "tscaled inspect: %s\n", err);
        return 1;
    }
    struct stat st;
    long long disk = stat(path, &st) == 0 ? (long long)st.st_size : -1;
    int rc = 0;
    if (as_json)
        rc = print_json(m, path, name, disk);
    else
        print_text(m, path, name, disk);
    ts_model_free(m);
    return rc;
}
