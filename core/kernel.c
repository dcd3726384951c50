/* kernel.c — the compute layout, the portable kernels and the run-time choice of family.
 *
 * The layout (kernel_impl.h) stores each row's groups as 5-bit base-3 fields of three trits,
 * 16 rows interleaved. The portable kernels below are the readable definition of what every
 * family computes: they decode a field into its three trits and multiply-add in the plain
 * order. The SIMD families (kernel_avx2.c, kernel_avx512.c) compute the same sums with
 * lookup tables; forward and backward_x agree with these within float rounding (sums run
 * in a different order), score agrees exactly (same float operations in the same order).
 *
 * Work is split over output rows (forward, score) or input groups (backward_x), so every
 * output element is written by one thread and results do not depend on the thread count.
 */
#include "kernel.h"

#include <cpuid.h>
#include <errno.h>
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "kernel_impl.h"

/* ── the layout ── */

const int8_t ts_field_trits[32][3] = {
    {-1, -1, -1}, {0, -1, -1}, {1, -1, -1}, {-1, 0, -1}, {0, 0, -1}, {1, 0, -1}, {-1, 1, -1},
    {0, 1, -1},   {1, 1, -1},  {-1, -1, 0}, {0, -1, 0},  {1, -1, 0}, {-1, 0, 0}, {0, 0, 0},
    {1, 0, 0},    {-1, 1, 0},  {0, 1, 0},   {1, 1, 0},   {-1, -1, 1}, {0, -1, 1}, {1, -1, 1},
    {-1, 0, 1},   {0, 0, 1},   {1, 0, 1},   {-1, 1, 1},  {0, 1, 1},  {1, 1, 1},
};

/* n trits of the flat row-major sequence packed in T_packed, from flat index i0. */
static void unpack_from(const uint8_t *T_packed, size_t i0, size_t n, int8_t *out)
{
    size_t byte = i0 / 5;
    unsigned digits = T_packed[byte], k = (unsigned)(i0 % 5);
    for (unsigned s = 0; s < k; s++)
        digits /= 3;
    for (size_t i = 0; i < n; i++) {
        if (k == 5) {
            digits = T_packed[++byte];
            k = 0;
        }
        out[i] = (int8_t)((int)(digits % 3) - 1);
        digits /= 3;
        k++;
    }
}

/* Fill the words of one row from its trits. */
static void layout_row(ts_weights *w, int64_t r, const int8_t *t)
{
    for (int64_t g = 0; g < w->gpr; g++)
        for (int64_t j = 0; j < w->nw; j++) {
            uint32_t word = 0;
            for (int64_t k = 0; k < TS_FPW; k++) {
                int64_t tr = j * TS_FPW + k;
                unsigned v = TS_ZERO_FIELD;
                if (tr < w->ntr) {
                    int n = ts_wtriple_cols(w, g, tr);
                    const int8_t *p = t + g * w->gs + 3 * tr;
                    int d0 = n > 0 ? p[0] + 1 : 1, d1 = n > 1 ? p[1] + 1 : 1, d2 = n > 2 ? p[2] + 1 : 1;
                    v = (unsigned)(d0 + 3 * d1 + 9 * d2);
                }
                word |= (uint32_t)v << (5 * k);
            }
            ((uint32_t *)ts_wwords(w, r / TS_RB, g, j))[r % TS_RB] = word;
        }
}

static void fill_zero_words(uint32_t *bits, size_t n)
{
    uint32_t zero = 0;
    for (int k = 0; k < TS_FPW; k++)
        zero |= (uint32_t)TS_ZERO_FIELD << (5 * k);
    for (size_t i = 0; i < n; i++)
        bits[i] = zero;
}

void *ts_kernel_alloc(size_t bytes)
{
    const size_t huge = (size_t)2 << 20;
    if (bytes < huge)
        return aligned_alloc(64, (bytes + 63) / 64 * 64);
    size_t whole = (bytes + huge - 1) / huge * huge;
    void *p = NULL;
    if (posix_memalign(&p, huge, whole) != 0)
        return NULL;
    madvise(p, whole, MADV_HUGEPAGE);   /* a hint: may be refused */
    return p;
}

static size_t layout_words(const ts_weights *w)
{
    size_t blocks = (size_t)(w->nblk + TS_BLK_ALIGN - 1) / TS_BLK_ALIGN * TS_BLK_ALIGN;
    return blocks * (size_t)w->gpr * (size_t)w->nw * TS_RB;
}

int ts_weights_pass(const ts_weights *w)
{
    /* The counter is a hint shared by concurrent callers; w is heap memory, never const. */
    return (int)(atomic_fetch_add_explicit(&((ts_weights *)w)->passes, 1, memory_order_relaxed) & 1);
}

ts_weights *ts_weights_build(const uint8_t *T_packed, int64_t rows, int64_t cols, int64_t gs)
{
    if (rows < 1 || cols < 1 || gs < 1 || rows > INT32_MAX || cols > INT32_MAX || gs > INT32_MAX)
        return NULL;
    size_t n = (size_t)rows * (size_t)cols, nbytes = n / 5 + (n % 5 != 0);
    for (size_t i = 0; i < nbytes; i++)
        if (T_packed[i] >= 243)
            return NULL;
    ts_weights *w = calloc(1, sizeof *w);
    int8_t *t = malloc((size_t)cols);
    if (!w || !t)
        goto fail;
    atomic_init(&w->passes, 0);
    w->rows = rows;
    w->cols = cols;
    w->gs = gs;
    w->gpr = (cols + gs - 1) / gs;
    w->nblk = (rows + TS_RB - 1) / TS_RB;
    w->ntr = (gs + 2) / 3;
    w->nw = (w->ntr + TS_FPW - 1) / TS_FPW;
    size_t bytes = layout_words(w) * sizeof(uint32_t);
    w->bits = ts_kernel_alloc(bytes);
    if (!w->bits)
        goto fail;
    fill_zero_words(w->bits, layout_words(w));   /* padding rows of the last block */
    for (int64_t r = 0; r < rows; r++) {
        unpack_from(T_packed, (size_t)r * (size_t)cols, (size_t)cols, t);
        layout_row(w, r, t);
    }
    free(t);
    return w;
fail:
    free(t);
    ts_weights_free(w);
    return NULL;
}

void ts_weights_free(ts_weights *w)
{
    if (!w)
        return;
    free(w->bits);
    free(w);
}

size_t ts_weights_bytes(const ts_weights *w)
{
    return w ? sizeof *w + layout_words(w) * sizeof(uint32_t) : 0;
}

int ts_weights_trit(const ts_weights *w, int64_t r, int64_t c)
{
    int64_t g = c / w->gs, i = c % w->gs;
    return ts_field_trits[ts_wfield(w, r, g, i / 3)][i % 3];
}

void ts_weights_pack(const ts_weights *w, uint8_t *T_packed)
{
    size_t n = (size_t)w->rows * (size_t)w->cols, i = 0;
    for (size_t byte = 0; byte < n / 5 + (n % 5 != 0); byte++) {
        unsigned v = 0, mul = 1;
        for (int k = 0; k < 5; k++, i++, mul *= 3) {
            int64_t r = (int64_t)(i / (size_t)w->cols), c = (int64_t)(i % (size_t)w->cols);
            v += mul * (unsigned)(i < n ? ts_weights_trit(w, r, c) + 1 : 0);   /* pad digit 0 */
        }
        T_packed[byte] = (uint8_t)v;
    }
}

/* ── portable forward: y[b][r] = Σ_g S[r,g] · Σ_{c∈g} T[r][c] · x[b][c] ── */
typedef struct {
    const ts_weights *w;
    const float *S, *x, *dy;
    int64_t B;
    float *out;
    int16_t *score;
} port_job;

static float group_dot(const ts_weights *w, int64_t r, int64_t g, const float *x)
{
    float sum = 0.0f;
    for (int64_t t = 0; t < w->ntr; t++) {
        const int8_t *tr = ts_field_trits[ts_wfield(w, r, g, t)];
        const float *xc = x + g * w->gs + 3 * t;
        for (int j = 0; j < ts_wtriple_cols(w, g, t); j++)
            sum += (float)tr[j] * xc[j];
    }
    return sum;
}

static void forward_rows(void *arg, int64_t r0, int64_t r1)
{
    const port_job *j = arg;
    const ts_weights *w = j->w;
    for (int64_t b = 0; b < j->B; b++)
        for (int64_t r = r0; r < r1; r++) {
            float acc = 0.0f;
            for (int64_t g = 0; g < w->gpr; g++)
                acc += j->S[ts_scale_index(w->gpr, r, g)] * group_dot(w, r, g, j->x + b * w->cols);
            j->out[b * w->rows + r] = acc;
        }
}

/* ── portable backward_x: dx[b][c] = Σ_r (dy[b][r] · S[r,g]) · T[r][c], c ∈ group g ── */
static void backward_groups(void *arg, int64_t g0, int64_t g1)
{
    const port_job *j = arg;
    const ts_weights *w = j->w;
    for (int64_t b = 0; b < j->B; b++) {
        float *dx = j->out + b * w->cols;
        const float *dy = j->dy + b * w->rows;
        int64_t c1 = g1 * w->gs < w->cols ? g1 * w->gs : w->cols;
        memset(dx + g0 * w->gs, 0, (size_t)(c1 - g0 * w->gs) * sizeof *dx);
        for (int64_t r = 0; r < w->rows; r++)
            for (int64_t g = g0; g < g1; g++) {
                float z = dy[r] * j->S[ts_scale_index(w->gpr, r, g)];
                for (int64_t t = 0; t < w->ntr; t++) {
                    const int8_t *tr = ts_field_trits[ts_wfield(w, r, g, t)];
                    for (int k = 0; k < ts_wtriple_cols(w, g, t); k++)
                        dx[g * w->gs + 3 * t + k] += z * (float)tr[k];
                }
            }
    }
}

/* ── portable score[r,g] = Σ_{c∈g} sign(dW[r][c]) · T[r][c], dW = Σ_b dy[b][r] · x[b][c] ──
 * dW is a chain of fused multiply-adds over b from 0, as a float32 GEMM computes it. */
float ts_kernel_dw(const float *dy, int64_t rows, const float *x, int64_t cols, int64_t B,
                   int64_t r, int64_t c)
{
    float dw = 0.0f;
    for (int64_t b = 0; b < B; b++)
        dw = fmaf(dy[b * rows + r], x[b * cols + c], dw);
    return dw;
}

static void score_rows(void *arg, int64_t r0, int64_t r1)
{
    const port_job *j = arg;
    const ts_weights *w = j->w;
    for (int64_t r = r0; r < r1; r++)
        for (int64_t g = 0; g < w->gpr; g++) {
            int64_t s = 0;
            for (int64_t t = 0; t < w->ntr; t++) {
                const int8_t *tr = ts_field_trits[ts_wfield(w, r, g, t)];
                for (int k = 0; k < ts_wtriple_cols(w, g, t); k++) {
                    if (tr[k] == 0)
                        continue;   /* contributes 0 whatever dW's sign */
                    float dw = ts_kernel_dw(j->dy, w->rows, j->x, w->cols, j->B, r,
                                            g * w->gs + 3 * t + k);
                    s += ((dw > 0.0f) - (dw < 0.0f)) * tr[k];
                }
            }
            j->score[r * w->gpr + g] = ts_wrap16(s);
        }
}

static const ts_kernel_family family_portable = {"portable", NULL, NULL, NULL};

/* ── choosing the family ──
 * The choice depends only on the CPU (and TSCALE_KERNEL, for tests and benchmarks), so it
 * is made once per process, with the work per thread (TSCALE_KERNEL_SLOT_WORK: tests set
 * it low so that their small shapes are split between threads too). */
static const ts_kernel_family *chosen;
static int64_t slot_work = TS_KSLOT_WORK;
static pthread_once_t chosen_once = PTHREAD_ONCE_INIT;

static const ts_kernel_family *family_named(const char *name)
{
    if (!name || !*name)
        return NULL;
    if (strcmp(name, "portable") == 0)
        return &family_portable;
    __builtin_cpu_init();
    if (strcmp(name, "avx2") == 0 && __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma"))
        return &ts_kernel_family_avx2;
    if (strcmp(name, "avx512") == 0 && __builtin_cpu_supports("avx512f") &&
        __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl") &&
        __builtin_cpu_supports("avx512dq"))
        return &ts_kernel_family_avx512;
    return NULL;
}

static void choose_family(void)
{
    const char *work = getenv("TSCALE_KERNEL_SLOT_WORK");
    if (work && atoll(work) > 0)
        slot_work = atoll(work);
    const ts_kernel_family *f = family_named(getenv("TSCALE_KERNEL"));
    if (!f)
        f = family_named("avx512");
    if (!f)
        f = family_named("avx2");
    chosen = f ? f : &family_portable;
}

static const ts_kernel_family *family(void)
{
    pthread_once(&chosen_once, choose_family);
    return chosen;
}

int ts_kernel_use(const char *name)
{
    const ts_kernel_family *f = family_named(name);
    if (!f)
        return -1;
    pthread_once(&chosen_once, choose_family);
    chosen = f;
    return 0;
}

const char *ts_kernel_name(void) { return family()->name; }

/* Linux's arch_prctl codes for AMX (asm/prctl.h; XFEATURE_XTILEDATA is state component 18). */
#define TS_ARCH_REQ_XCOMP_PERM 0x1023
#define TS_XFEATURE_XTILEDATA 18

int ts_kernel_amx_request(char *err, size_t errlen)
{
    unsigned a, b, c, d;
    /* CPUID leaf 7, subleaf 0: EDX bit 22 AMX-BF16, bit 24 AMX-TILE */
    if (!__get_cpuid_count(7, 0, &a, &b, &c, &d) || !(d >> 24 & 1) || !(d >> 22 & 1)) {
        snprintf(err, errlen, "this CPU has no AMX (CPUID lacks amx_tile/amx_bf16; AMX needs an "
                 "Intel Xeon of the Sapphire Rapids generation or later): use the avx512, avx2 "
                 "or portable kernels");
        return -1;
    }
    if (syscall(SYS_arch_prctl, TS_ARCH_REQ_XCOMP_PERM, TS_XFEATURE_XTILEDATA) != 0) {
        snprintf(err, errlen, "the CPU has AMX but Linux refused this process the tile data "
                 "state (arch_prctl ARCH_REQ_XCOMP_PERM: %s); AMX needs Linux 5.16 or later "
                 "and, in a VM, a hypervisor that passes AMX through", strerror(errno));
        return -1;
    }
    return 0;
}

int64_t ts_kslot_work(void)
{
    pthread_once(&chosen_once, choose_family);
    return slot_work;
}

/* ── entry points: the chosen family, or the portable kernel ── */

void ts_kernel_forward(const ts_weights *w, const float *S, const float *x, int64_t B,
                       float *y, ts_pool *pool)
{
    const ts_kernel_family *f = family();
    if (B < 1 || (f->forward && f->forward(w, S, x, B, y, pool) == 0))
        return;
    port_job j = {.w = w, .S = S, .x = x, .B = B, .out = y};
    ts_pool_run(pool, w->rows, 16, forward_rows, &j);
}

void ts_kernel_backward_x(const ts_weights *w, const float *S, const float *dy, int64_t B,
                          float *dx, ts_pool *pool)
{
    const ts_kernel_family *f = family();
    if (B < 1 || (f->backward_x && f->backward_x(w, S, dy, B, dx, pool) == 0))
        return;
    port_job j = {.w = w, .S = S, .dy = dy, .B = B, .out = dx};
    ts_pool_run(pool, w->gpr, 1, backward_groups, &j);
}

void ts_kernel_score(const ts_weights *w, const float *dy, const float *x, int64_t B,
                     int16_t *score, ts_pool *pool)
{
    const ts_kernel_family *f = family();
    if (f->score && f->score(w, dy, x, B, score, pool) == 0)
        return;
    port_job j = {.w = w, .dy = dy, .x = x, .B = B, .score = score};
    ts_pool_run(pool, w->rows, 16, score_rows, &j);
}

/* ── scratch ── */

void *ts_kscratch_get(ts_pool *pool, size_t bytes)
{
    if (pool)
        return ts_pool_scratch(pool, bytes);
    return aligned_alloc(64, (bytes + 63) / 64 * 64);
}

void ts_kscratch_put(ts_pool *pool, void *p)
{
    if (!pool)
        free(p);
}

void ts_kranges_init(ts_krange *r, int n, int64_t units)
{
    for (int i = 0; i < n; i++) {
        int64_t b, e;
        ts_ksplit(units, 1, n, i, &b, &e);
        atomic_init(&r[i].span, (uint64_t)b << 32 | (uint64_t)e);
    }
}

/* Take one unit of range r from its front or back; -1 when it is empty. */
static int64_t krange_take(ts_krange *r, int back)
{
    uint64_t v = atomic_load_explicit(&r->span, memory_order_relaxed);
    for (;;) {
        uint64_t lo = v >> 32, hi = v & 0xffffffffu;
        if (lo >= hi)
            return -1;
        uint64_t next = back ? lo << 32 | (hi - 1) : (lo + 1) << 32 | hi;
        if (atomic_compare_exchange_weak_explicit(&r->span, &v, next, memory_order_relaxed,
                                                  memory_order_relaxed))
            return (int64_t)(back ? hi - 1 : lo);
    }
}

int64_t ts_kranges_next(ts_krange *r, int n, int home, int reverse)
{
    home %= n;
    int64_t u = krange_take(&r[home], reverse);
    for (int k = 1; u < 0 && k < n; k++)
        u = krange_take(&r[(home + k) % n], !reverse);
    return u;
}

int ts_krun(ts_pool *pool, ts_kjob *j, size_t slot_bytes, int64_t n_items, ts_pool_item_fn fn)
{
    j->slots = ts_kslots(pool, j->w, j->B);
    j->slot_bytes = (slot_bytes + 63) / 64 * 64;
    j->scratch = ts_kscratch_get(pool, j->slot_bytes * (size_t)j->slots);
    if (!j->scratch)
        return -1;
    ts_pool_run_items(j->slots > 1 ? pool : NULL, n_items, fn, j);
    ts_kscratch_put(pool, j->scratch);
    return 0;
}
