/* bench.c — build/tscale-bench: time one ternary linear layer against dense OpenBLAS.
 *
 *   tscale-bench --op forward|feedback|feedback-dx --out N --in K --batch B --threads T
 *                [--gs GS] [--cold | --cold-clean | --cold-weights] [--reps R] [--kernel NAME]
 *                [--json]
 *
 * forward:  y = x · W_effᵀ (ts_kernel_forward) vs sgemm (sgemv at batch 1) on the dense
 *           float32 W of the same shape.
 * feedback: one feedback step (ts_model_feedback with grad_output dy) of a model that is
 *           this one layer: forward, score (sign(dyᵀ·x)·T per group), update_corr and the
 *           refresh of every scale; no dx, as no layer lies below (the reference's autograd
 *           skips it too) — vs the dense equivalent: sgemm forward, dW = dyᵀ · x. It also
 *           times the parts alone, the forward for the feedback/forward ratio, and dx = dy·W
 *           (backward_x), which a layer with layers below it adds to its step.
 * feedback-dx: the full step of a layer with layers below it, as ts_model_feedback runs it
 *           for such a layer: forward, score, backward_x (dx = dy·W_eff, for the layers
 *           below), update_corr and the scale refresh — vs sgemm forward, dW = dyᵀ·x and
 *           dx = dy·W. The parts are timed alone as for feedback.
 * --kernel amx: asks for the AMX tile unit (ts_kernel_amx_request) and stops with the
 *           reason when the CPU or the OS refuses; there is no AMX kernel family yet.
 * --cold:   before every timed run, write a buffer of twice the last-level cache, so the
 *           weights (and scales) come from DRAM, as for a model not used in a while. The
 *           caches are then full of dirty lines: each line the run reads first writes one
 *           back, so DRAM moves twice the bytes (the worst case).
 * --cold-clean: the same, but the buffer is read, not written: the caches hold clean lines
 *           (what other models' weights leave behind).
 * --cold-weights: flush exactly the layer's layout and scales from every cache level
 *           (clflush), nothing else: "weights cold", with x, the scratch and the code
 *           where the previous run left them.
 *
 * Prints the median, min and max over R runs (default: as many as fit in about a second,
 * 5..200) and the ratio to OpenBLAS in the same run; --json prints one JSON object per line.
 * OpenBLAS 0.3.21 misdetects Sapphire Rapids, so on a CPU with AVX-512 the program re-executes
 * itself with OPENBLAS_CORETYPE=SkylakeX (unless set; elsewhere OpenBLAS's own choice stands:
 * SkylakeX kernels are illegal instructions on an AVX2-only CPU) and OPENBLAS_NUM_THREADS=T
 * before OpenBLAS starts.
 */
#include <cblas.h>
#include <immintrin.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "core/feedback.h"
#include "core/kernel.h"
#include "core/kernel_impl.h"   /* the layout's memory, for --cold-weights */
#include "core/model.h"
#include "core/pool.h"
#include "core/trits.h"

enum { COLD_CACHE = 1, COLD_CACHE_CLEAN, COLD_WEIGHTS };
static const char *const cold_names[] = {"hot", "cold", "cold-clean", "cold-weights"};

typedef struct {
    const char *op, *kernel;
    int64_t out, in, batch, gs;
    int threads, cold, json, reps;   /* cold: 0, or one of the COLD_ modes */
} options;

static void usage(void)
{
    fprintf(stderr, "usage: tscale-bench --op forward|feedback|feedback-dx --out N --in K "
                    "--batch B --threads T [--gs GS] [--cold | --cold-clean | --cold-weights] "
                    "[--reps R] [--kernel portable|avx2|avx512|amx] "
                    "[--json]\n");
    exit(2);
}

static int64_t arg_int(const char *flag, const char *v, int64_t lo, int64_t hi)
{
    char *end;
    long long n = v ? strtoll(v, &end, 10) : 0;
    if (!v || *end || n < lo || n > hi) {
        fprintf(stderr, "tscale-bench: %s needs an integer in [%lld, %lld]\n", flag,
                (long long)lo, (long long)hi);
        exit(2);
    }
    return n;
}

static options parse(int argc, char **argv)
{
    options o = {"forward", NULL, 4096, 4096, 1, 32, 1, 0, 0, 0};
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(a, "--op") && v &&
            (!strcmp(v, "forward") || !strcmp(v, "feedback") || !strcmp(v, "feedback-dx")))
            o.op = argv[++i];
        else if (!strcmp(a, "--out"))
            o.out = arg_int(a, v, 1, 1 << 20), i++;
        else if (!strcmp(a, "--in"))
            o.in = arg_int(a, v, 1, 1 << 20), i++;
        else if (!strcmp(a, "--batch"))
            o.batch = arg_int(a, v, 1, 1 << 16), i++;
        else if (!strcmp(a, "--threads"))
            o.threads = (int)arg_int(a, v, 1, 256), i++;
        else if (!strcmp(a, "--gs"))
            o.gs = arg_int(a, v, 1, 1 << 16), i++;
        else if (!strcmp(a, "--reps"))
            o.reps = (int)arg_int(a, v, 1, 100000), i++;
        else if (!strcmp(a, "--kernel") && v)
            o.kernel = argv[++i];
        else if (!strcmp(a, "--cold"))
            o.cold = COLD_CACHE;
        else if (!strcmp(a, "--cold-clean"))
            o.cold = COLD_CACHE_CLEAN;
        else if (!strcmp(a, "--cold-weights"))
            o.cold = COLD_WEIGHTS;
        else if (!strcmp(a, "--json"))
            o.json = 1;
        else
            usage();
    }
    return o;
}

/* OpenBLAS reads its settings when the library loads: set them, then start again. */
static void openblas_env(char **argv, int threads)
{
    char want[16];
    snprintf(want, sizeof want, "%d", threads);
    const char *have = getenv("OPENBLAS_NUM_THREADS");
    __builtin_cpu_init();
    int avx512 = __builtin_cpu_supports("avx512f");
    if ((getenv("OPENBLAS_CORETYPE") || !avx512) && have && !strcmp(have, want))
        return;
    if (avx512)
        setenv("OPENBLAS_CORETYPE", "SkylakeX", 0);
    setenv("OPENBLAS_NUM_THREADS", want, 1);
    execv("/proc/self/exe", argv);
    perror("tscale-bench: re-exec with OpenBLAS settings");   /* run on without them */
}

static double now_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1e6 + (double)ts.tv_nsec / 1e3;
}

static float randn(void)
{
    double u = ((double)rand() + 1.0) / ((double)RAND_MAX + 2.0), v = (double)rand() / RAND_MAX;
    return (float)(sqrt(-2.0 * log(u)) * cos(2.0 * M_PI * v));
}

/* The layer under test, in both forms. */
typedef struct {
    ts_model *m;                  /* a model of this one layer */
    const ts_weights *w;          /* its compute layout and scales */
    const float *S;
    float *x, *y, *dy, *dx;       /* tscale buffers */
    int16_t *score;
    float *W, *yd, *dW;           /* dense: W [out][in], outputs, dW [out][in] */
    size_t packed_bytes, groups;
} layer;

/* A one-layer model with the trits t, E = -7 and a lived-in state (step 100, corr_accum
 * spread so that S = 2^(-7 + 0.25·N(0,1)) roughly), prepared for serving. */
static ts_model *model_make(const options *o, const uint8_t *packed)
{
    ts_layer_spec spec = {.kind = TS_LAYER_LINEAR, .in_dim = o->in, .out_dim = o->out,
                          .group_size = o->gs};
    char err[256];
    ts_model *m = ts_model_alloc(&spec, 1, err, sizeof err);
    if (!m) {
        fprintf(stderr, "tscale-bench: %s\n", err);
        exit(1);
    }
    ts_layer *l = &m->layers[0];
    memcpy(l->T_packed, packed, ts_trits_packed_size((size_t)(o->out * o->in)));
    l->step = 100;
    int64_t lim = l->step * o->gs;
    for (int64_t g = 0; g < l->n_groups; g++) {
        l->E[g] = -7;
        int64_t c = (int64_t)lrintf(randn() * 0.0625f * (float)lim);
        l->corr_accum[g] = c > lim ? lim : c < -lim ? -lim : c;
    }
    if (ts_model_prepare(m, err, sizeof err) != 0) {
        fprintf(stderr, "tscale-bench: %s\n", err);
        exit(1);
    }
    return m;
}

static layer layer_make(const options *o)
{
    layer l;
    size_t n = (size_t)(o->out * o->in), gpr = (size_t)((o->in + o->gs - 1) / o->gs);
    int8_t *t = malloc(n);
    l.packed_bytes = ts_trits_packed_size(n);
    l.groups = (size_t)o->out * gpr;
    uint8_t *packed = malloc(l.packed_bytes);
    l.W = malloc(n * sizeof(float));
    l.x = malloc((size_t)(o->batch * o->in) * sizeof(float));
    l.y = malloc((size_t)(o->batch * o->out) * sizeof(float));
    l.dy = malloc((size_t)(o->batch * o->out) * sizeof(float));
    l.dx = malloc((size_t)(o->batch * o->in) * sizeof(float));
    l.yd = malloc((size_t)(o->batch * o->out) * sizeof(float));
    l.dW = malloc(n * sizeof(float));
    l.score = malloc(l.groups * sizeof *l.score);
    if (!t || !packed || !l.W || !l.x || !l.y || !l.dy || !l.dx || !l.yd ||
        !l.dW || !l.score) {
        fprintf(stderr, "tscale-bench: out of memory for a %lldx%lld layer\n",
                (long long)o->out, (long long)o->in);
        exit(1);
    }
    srand(1);
    for (size_t i = 0; i < n; i++) {   /* the reference's init: ternarise N(0, 0.1²) at 0.05 */
        float v = 0.1f * randn();
        t[i] = (int8_t)(v > 0.05f ? 1 : v < -0.05f ? -1 : 0);
    }
    ts_trits_pack(t, n, packed);
    l.m = model_make(o, packed);
    l.w = l.m->layers[0].W;
    l.S = l.m->layers[0].S;
    for (size_t i = 0; i < n; i++)
        l.W[i] = ts_layer_scale(&l.m->layers[0], (int64_t)(i / (size_t)o->in),
                                (int64_t)((i % (size_t)o->in) / (size_t)o->gs)) * (float)t[i];
    for (int64_t i = 0; i < o->batch * o->in; i++)
        l.x[i] = randn();
    for (int64_t i = 0; i < o->batch * o->out; i++)
        l.dy[i] = randn();
    free(t);
    free(packed);
    return l;
}

/* ── what is timed ── */

typedef struct {
    const options *o;
    layer *l;
    ts_pool *pool;
} ctx;

static void run_forward(ctx *c)
{
    ts_kernel_forward(c->l->w, c->l->S, c->l->x, c->o->batch, c->l->y, c->pool);
}

static void run_feedback(ctx *c)
{
    ts_feedback_input in = {.kind = TS_LOSS_GRAD, .target = c->l->dy};
    char err[256];
    if (ts_model_feedback(c->l->m, c->l->x, c->o->batch, &in, NULL, c->pool, err, sizeof err) != 0) {
        fprintf(stderr, "tscale-bench: feedback: %s\n", err);
        exit(1);
    }
}

/* The step of a layer with layers below: what ts_model_feedback runs for it (its forward,
 * score and backward_x with the pre-step state, then update_corr with the scale refresh). */
static void run_feedback_dx(ctx *c)
{
    layer *l = c->l;
    ts_kernel_forward(l->w, l->S, l->x, c->o->batch, l->y, c->pool);
    ts_kernel_score(l->w, l->dy, l->x, c->o->batch, l->score, c->pool);
    ts_kernel_backward_x(l->w, l->S, l->dy, c->o->batch, l->dx, c->pool);
    ts_layer_update_corr(&l->m->layers[0], l->score, c->pool);
}

static void run_scales(ctx *c)
{
    ts_layer_update_scales(&c->l->m->layers[0], c->pool);
}

static void run_backward(ctx *c)
{
    ts_kernel_backward_x(c->l->w, c->l->S, c->l->dy, c->o->batch, c->l->dx, c->pool);
}

static void run_score(ctx *c)
{
    ts_kernel_score(c->l->w, c->l->dy, c->l->x, c->o->batch, c->l->score, c->pool);
}

static void dense_forward(ctx *c)
{
    const options *o = c->o;
    layer *l = c->l;
    if (o->batch == 1)
        cblas_sgemv(CblasRowMajor, CblasNoTrans, (int)o->out, (int)o->in, 1.0f, l->W, (int)o->in,
                    l->x, 1, 0.0f, l->yd, 1);
    else
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)o->batch, (int)o->out,
                    (int)o->in, 1.0f, l->x, (int)o->in, l->W, (int)o->in, 0.0f, l->yd, (int)o->out);
}

static void dense_feedback(ctx *c)
{
    const options *o = c->o;
    layer *l = c->l;
    int B = (int)o->batch, N = (int)o->out, K = (int)o->in;
    dense_forward(c);
    cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, N, K, B, 1.0f, l->dy, N, l->x, K, 0.0f,
                l->dW, K);
}

static void dense_feedback_dx(ctx *c)
{
    layer *l = c->l;
    int B = (int)c->o->batch, N = (int)c->o->out, K = (int)c->o->in;
    dense_feedback(c);
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, B, K, N, 1.0f, l->dy, N, l->W, K, 0.0f,
                l->dx, K);
}

/* Write (clean: read) a buffer of twice the last-level cache (at least 64 MiB): whatever was
 * cached is out. */
static void evict(int clean)
{
    static char *buf;
    static size_t size;
    if (!buf) {
        long llc = sysconf(_SC_LEVEL3_CACHE_SIZE);
        size = llc > 32L << 20 ? (size_t)llc * 2 : (size_t)64 << 20;
        if (size > (size_t)1 << 30)
            size = (size_t)1 << 30;
        buf = malloc(size);
        if (!buf) {
            fprintf(stderr, "tscale-bench: no memory for the --cold eviction buffer\n");
            exit(1);
        }
    }
    static unsigned char v;
    if (!clean || v == 0) {
        memset(buf, ++v, size);   /* the first clean pass still writes: pages are mapped */
        if (!clean)
            return;
    }
    static volatile unsigned long sink;   /* keeps the loads */
    const unsigned long *p = (const unsigned long *)buf;
    unsigned long sum = 0;
    for (size_t i = 0; i < size / sizeof *p; i += 8)   /* one load per 64-byte line */
        sum += p[i];
    sink += sum;
}

/* Flush the layer's layout and scales out of every cache level. */
static void flush_weights(const layer *l)
{
    const char *spans[2] = {(const char *)l->w->bits, (const char *)l->S};
    size_t bytes[2] = {ts_weights_bytes(l->w) - sizeof *l->w,
                       (size_t)ts_scale_count(l->m->layers[0].rows, l->m->layers[0].gpr) * sizeof(float)};
    for (int k = 0; k < 2; k++)
        for (size_t i = 0; i < bytes[k]; i += 64)
            _mm_clflush(spans[k] + i);
    _mm_mfence();
}

typedef struct {
    double median, min, max;
    /* mean process CPU time per run, all threads (summed over the runs: Linux adds a running
     * thread's time to the process clock at ticks, so one run's difference misses a pool
     * thread that never sleeps); about threads × median when nothing else takes the cores */
    double cpu;
    int reps;
} stats;

static double cpu_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
    return (double)ts.tv_sec * 1e6 + (double)ts.tv_nsec / 1e3;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static void noop(void *arg, int64_t begin, int64_t end) { (void)arg, (void)begin, (void)end; }

static double median(const double *sorted, int n)
{
    return n % 2 ? sorted[n / 2] : 0.5 * (sorted[n / 2 - 1] + sorted[n / 2]);
}

static stats measure(void (*fn)(ctx *), ctx *c)
{
    fn(c);   /* warm-up: scratch, OpenBLAS buffers, page faults */
    fn(c);
    double t0 = now_us();
    fn(c);
    double one = now_us() - t0;
    int reps = c->o->reps ? c->o->reps : (int)(1e6 / (one + (c->o->cold ? 60000 : 0)));
    if (!c->o->reps)
        reps = reps < 5 ? 5 : reps > 200 ? 200 : reps;
    double *t = malloc(2 * (size_t)reps * sizeof *t), *cpu = t + reps;
    for (int i = 0; i < reps; i++) {
        if (c->o->cold) {
            if (c->o->cold == COLD_WEIGHTS)
                flush_weights(c->l);
            else
                evict(c->o->cold == COLD_CACHE_CLEAN);
            /* Wake the pool's threads (they sleep after a while idle): --cold measures cold
             * weights, not the scheduler. */
            ts_pool_run(c->pool, ts_pool_threads(c->pool), 1, noop, NULL);
        }
        double c0 = cpu_us();
        t0 = now_us();
        fn(c);
        t[i] = now_us() - t0;
        cpu[i] = cpu_us() - c0;
    }
    qsort(t, (size_t)reps, sizeof *t, cmp_double);
    double cpu_sum = 0;
    for (int i = 0; i < reps; i++)
        cpu_sum += cpu[i];
    stats s = {median(t, reps), t[0], t[reps - 1], cpu_sum / reps, reps};
    free(t);
    return s;
}

int main(int argc, char **argv)
{
    options o = parse(argc, argv);
    if (o.kernel && !strcmp(o.kernel, "amx")) {   /* before the re-exec: one message */
        char why[512];
        if (ts_kernel_amx_request(why, sizeof why) != 0)
            fprintf(stderr, "tscale-bench: --kernel amx: %s\n", why);
        else
            fprintf(stderr, "tscale-bench: --kernel amx: AMX is granted on this machine, but "
                            "tscale has no AMX kernel family yet (issue 14)\n");
        return 2;
    }
    openblas_env(argv, o.threads);
    if (o.kernel && ts_kernel_use(o.kernel) != 0) {
        fprintf(stderr, "tscale-bench: kernel family '%s' is unknown or this CPU lacks it\n",
                o.kernel);
        return 2;
    }
    layer l = layer_make(&o);
    ts_pool *pool = o.threads > 1 ? ts_pool_new(o.threads) : NULL;
    if (o.threads > 1 && !pool) {
        fprintf(stderr, "tscale-bench: cannot start %d threads\n", o.threads);
        return 1;
    }
    ctx c = {&o, &l, pool};
    int with_dx = !strcmp(o.op, "feedback-dx"), feedback = with_dx || !strcmp(o.op, "feedback");
    stats ts = measure(with_dx ? run_feedback_dx : feedback ? run_feedback : run_forward, &c);
    stats none = {0, 0, 0, 0, 0};
    stats fw = feedback ? measure(run_forward, &c) : ts;
    stats bw = feedback ? measure(run_backward, &c) : none;
    stats sc = feedback ? measure(run_score, &c) : none;
    stats up = feedback ? measure(run_scales, &c) : none;
    stats blas = measure(with_dx ? dense_feedback_dx : feedback ? dense_feedback : dense_forward, &c);
    /* the step of a layer with layers below: measured (feedback-dx) or feedback + backward_x */
    double dx_step = with_dx ? ts.median : ts.median + bw.median;
    double params = (double)o.out * (double)o.in;
    /* resident state of the layer, all of it: compute layout, S, E, corr_accum, step */
    double state = (double)ts_model_bytes(l.m) - (double)sizeof(ts_model) - (double)sizeof(ts_layer);
    double bpw = state / params, bpw_packed = (state + (double)l.packed_bytes) / params;
    const char *blas_name = o.batch == 1 && !feedback ? "sgemv" : "sgemm";
    if (o.json) {
        printf("{\"op\":\"%s\",\"out\":%lld,\"in\":%lld,\"batch\":%lld,\"threads\":%d,\"cold\":%s,\"cold_mode\":\"%s\","
               "\"gs\":%lld,\"kernel\":\"%s\",\"median_us\":%.1f,\"min_us\":%.1f,\"max_us\":%.1f,"
               "\"reps\":%d,\"cpu_us\":%.1f,\"openblas\":\"%s\",\"openblas_median_us\":%.1f,"
               "\"ratio_to_openblas\":%.3f,\"forward_median_us\":%.1f,"
               "\"backward_x_median_us\":%.1f,\"score_median_us\":%.1f,"
               "\"scales_median_us\":%.1f,\"over_forward\":%.2f,"
               "\"with_backward_x_over_forward\":%.2f,\"bytes_per_weight\":%.3f,"
               "\"bytes_per_weight_with_T_packed\":%.3f}\n",
               o.op, (long long)o.out, (long long)o.in, (long long)o.batch, o.threads,
               o.cold ? "true" : "false", cold_names[o.cold], (long long)o.gs, ts_kernel_name(), ts.median, ts.min,
               ts.max, ts.reps, ts.cpu, blas_name, blas.median, ts.median / blas.median, fw.median,
               bw.median, sc.median, up.median, ts.median / fw.median,
               dx_step / fw.median, bpw, bpw_packed);
    } else {
        printf("%s %lldx%lld batch %lld threads %d gs %lld %s: tscale (%s) median %.1f us "
               "(min %.1f, max %.1f, %d runs; cpu %.1f us); OpenBLAS %s median %.1f us "
               "(cpu %.1f us); ratio %.3f\n",
               o.op, (long long)o.out, (long long)o.in, (long long)o.batch, o.threads,
               (long long)o.gs, cold_names[o.cold], ts_kernel_name(), ts.median, ts.min,
               ts.max, ts.reps, ts.cpu, blas_name, blas.median, blas.cpu,
               ts.median / blas.median);
        if (feedback)
            printf("  alone: forward %.1f us, score %.1f us, scale refresh %.1f us, backward_x "
                   "%.1f us (medians); %s / forward = %.2f (with backward_x, for a layer "
                   "with layers below: %.2f)\n", fw.median, sc.median, up.median, bw.median,
                   o.op, ts.median / fw.median, dx_step / fw.median);
        printf("  resident state %.3f bytes/weight (%.3f with T_packed kept)\n", bpw, bpw_packed);
    }
    ts_pool_free(pool);
    ts_model_free(l.m);
    return 0;
}
