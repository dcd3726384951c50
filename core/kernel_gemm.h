/* kernel_gemm.h — forward for a batch: a table of batch vectors per triple of columns.
 *
 * Included by kernel_avx2.c (8 lanes, __m256) and kernel_avx512.c (16 lanes, __m512) after
 * they define: VEC, LANES, VZERO(), VLOAD(p), VSTORE(p, v), VADD(a, b), VSUB(a, b),
 * VFMA(a, b, c) = a·b + c, VBCAST(f), and GEMM_PREFIX(name) naming the functions.
 *
 * The batch is cut into chunks of LANES rows (one lane each). For a chunk and a triple of
 * columns (x0, x1, x2) the table holds the 27 vectors ±x0 ± x1 ± x2 (any sign or zero,
 * index v = d0 + 3·d1 + 9·d2 as in the layout), so a row adds its triple's contribution
 * for all LANES batch rows with one vector add, indexed by its 5-bit field. The table of
 * a few words of one group (GEMM_WORDS·6 triples, L1-sized) is built, then every row of
 * the range is run through it: y_r += S[r,g] · Σ table[field]. Results go through a
 * per-slot buffer yT[rows][LANES] and are transposed into y at the end.
 */

#define GEMM_WORDS 3   /* words per table: 18 triples · 27 · LANES floats (≤ 31 KiB) */
#define GEMM_TABLE (GEMM_WORDS * TS_FPW * 27)   /* vectors in one table */
#define GEMM_AHEAD 4   /* blocks to prefetch ahead */

/* Gather column c of the batch chunk into a vector (lanes past B are 0). */
static inline VEC GEMM_PREFIX(column)(const float *x, int64_t cols, int64_t b0, int64_t B,
                                      int64_t c)
{
    float v[LANES] __attribute__((aligned(64)));
    for (int l = 0; l < LANES; l++)
        v[l] = b0 + l < B ? x[(b0 + l) * cols + c] : 0.0f;
    return VLOAD(v);
}

/* The tables of triples [t0, t1) of group g into tab[(t - t0)·27 + v]. */
static void GEMM_PREFIX(build)(const ts_weights *w, const float *x, int64_t b0, int64_t B,
                               int64_t g, int64_t t0, int64_t t1, VEC *tab)
{
    for (int64_t t = t0; t < t1; t++, tab += 27) {
        int n = ts_wtriple_cols(w, g, t);
        int64_t c = g * w->gs + 3 * t;
        VEC z = VZERO(), p[3];
        for (int i = 0; i < 3; i++)
            p[i] = i < n ? GEMM_PREFIX(column)(x, w->cols, b0, B, c + i) : z;
        VEC a[3] = {VSUB(z, p[0]), z, p[0]}, b[3] = {VSUB(z, p[1]), z, p[1]};
        VEC ab[9];
        for (int d1 = 0; d1 < 3; d1++)
            for (int d0 = 0; d0 < 3; d0++)
                ab[d0 + 3 * d1] = VADD(a[d0], b[d1]);
        VEC cc[3] = {VSUB(z, p[2]), z, p[2]};
        for (int d2 = 0; d2 < 3; d2++)
            for (int k = 0; k < 9; k++)
                VSTORE(tab + 9 * d2 + k, VADD(ab[k], cc[d2]));
    }
}

/* Rows r0..r0+7 (within one block): yT[r] += S[r,g] · Σ_{words j0..j1} tab[fields]. */
static void GEMM_PREFIX(rows8)(const ts_weights *w, const float *S, int64_t r0, int64_t g,
                               int64_t j0, int64_t j1, const VEC *tab, VEC *yT)
{
    VEC a0 = VZERO(), a1 = VZERO(), a2 = VZERO(), a3 = VZERO();
    VEC a4 = VZERO(), a5 = VZERO(), a6 = VZERO(), a7 = VZERO();
    /* The rows' words of one group are a block apart (gpr·nw·64 bytes): more than the
     * hardware prefetchers follow, so fetch a few blocks ahead. */
    if (r0 % TS_RB == 0 && r0 / TS_RB + GEMM_AHEAD < w->nblk)
        for (int64_t j = j0; j < j1; j++)
            _mm_prefetch((const char *)ts_wwords(w, r0 / TS_RB + GEMM_AHEAD, g, j), _MM_HINT_T0);
    for (int64_t j = j0; j < j1; j++) {
        const uint32_t *wd = ts_wwords(w, r0 / TS_RB, g, j) + r0 % TS_RB;
        uint32_t d0 = wd[0], d1 = wd[1], d2 = wd[2], d3 = wd[3];
        uint32_t d4 = wd[4], d5 = wd[5], d6 = wd[6], d7 = wd[7];
        int64_t nf = w->ntr - j * TS_FPW < TS_FPW ? w->ntr - j * TS_FPW : TS_FPW;
        const VEC *t = tab + (j - j0) * TS_FPW * 27;
        for (int64_t f = 0; f < nf; f++, t += 27) {
#define GEMM_STEP(a, d) a = VADD(a, VLOAD((const float *)(t + (d & 31)))), d >>= 5
            GEMM_STEP(a0, d0); GEMM_STEP(a1, d1); GEMM_STEP(a2, d2); GEMM_STEP(a3, d3);
            GEMM_STEP(a4, d4); GEMM_STEP(a5, d5); GEMM_STEP(a6, d6); GEMM_STEP(a7, d7);
#undef GEMM_STEP
        }
    }
    VEC acc[8] = {a0, a1, a2, a3, a4, a5, a6, a7};
    for (int k = 0; k < 8; k++) {
        int64_t r = r0 + k;
        float s = r < w->rows ? S[r * w->gpr + g] : 0.0f;   /* padding rows: 0 */
        yT[k] = VFMA(acc[k], VBCAST(s), yT[k]);
    }
}

/* Batch chunk starting at b0, rows [r0, r1) (block-aligned): y = x · W_effᵀ. */
static void GEMM_PREFIX(chunk)(const ts_weights *w, const float *S, const float *x, int64_t B,
                               int64_t b0, int64_t r0, int64_t r1, float *y, VEC *tab, VEC *yT)
{
    int64_t rpad = (r1 - r0 + TS_RB - 1) / TS_RB * TS_RB;   /* whole blocks */
    for (int64_t r = 0; r < rpad; r++)
        yT[r] = VZERO();
    for (int64_t g = 0; g < w->gpr; g++)
        for (int64_t j0 = 0; j0 < w->nw; j0 += GEMM_WORDS) {
            int64_t j1 = j0 + GEMM_WORDS < w->nw ? j0 + GEMM_WORDS : w->nw;
            int64_t t1 = j1 * TS_FPW < w->ntr ? j1 * TS_FPW : w->ntr;
            GEMM_PREFIX(build)(w, x, b0, B, g, j0 * TS_FPW, t1, tab);
            for (int64_t r = 0; r < rpad; r += 8)
                GEMM_PREFIX(rows8)(w, S, r0 + r, g, j0, j1, tab, yT + r);
        }
    for (int l = 0; l < LANES && b0 + l < B; l++)
        for (int64_t r = r0; r < r1; r++)
            y[(b0 + l) * w->rows + r] = ((const float *)(yT + (r - r0)))[l];
}

typedef struct {
    const ts_weights *w;
    const float *S, *x;
    int64_t B;
    float *y;
    char *scratch;
    size_t slot_bytes;
    int slots;
} GEMM_PREFIX(job);

/* One slot: whole batch chunks when there are at least as many as slots, else a share of
 * the rows of one chunk. */
static void GEMM_PREFIX(slot)(void *arg, int64_t s0, int64_t s1)
{
    const GEMM_PREFIX(job) *j = arg;
    int64_t nbc = (j->B + LANES - 1) / LANES, rows = j->w->rows;
    for (int64_t s = s0; s < s1; s++) {
        VEC *tab = (VEC *)(j->scratch + (size_t)s * j->slot_bytes), *yT = tab + GEMM_TABLE;
        if (nbc >= j->slots) {
            int64_t c0, c1;
            ts_ksplit(nbc, 1, j->slots, (int)s, &c0, &c1);
            for (int64_t c = c0; c < c1; c++)
                GEMM_PREFIX(chunk)(j->w, j->S, j->x, j->B, c * LANES, 0, rows, j->y, tab, yT);
        } else {
            int64_t c = s % nbc, parts = (j->slots - c + nbc - 1) / nbc, r0, r1;
            ts_ksplit(rows, TS_RB, (int)parts, (int)(s / nbc), &r0, &r1);
            if (r0 < r1)
                GEMM_PREFIX(chunk)(j->w, j->S, j->x, j->B, c * LANES, r0, r1, j->y, tab, yT);
        }
    }
}

static int GEMM_PREFIX(forward)(const ts_weights *w, const float *S, const float *x, int64_t B,
                                float *y, ts_pool *pool)
{
    int slots = ts_kslots(pool);
    int64_t nbc = (B + LANES - 1) / LANES;
    int64_t max_rows = nbc >= slots ? w->rows : (w->rows + TS_RB - 1) / TS_RB * TS_RB;
    size_t slot_bytes = (GEMM_TABLE + (size_t)max_rows + TS_RB) * sizeof(VEC);
    char *scratch = ts_kscratch_get(pool, slot_bytes * (size_t)slots);
    if (!scratch)
        return -1;
    GEMM_PREFIX(job) j = {w, S, x, B, y, scratch, slot_bytes, slots};
    ts_pool_run(pool, slots, 1, GEMM_PREFIX(slot), &j);
    ts_kscratch_put(pool, scratch);
    return 0;
}
