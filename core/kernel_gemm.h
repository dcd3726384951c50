/* kernel_gemm.h — forward for a batch: a table of batch vectors per triple of columns.
 *
 * Included by kernel_avx2.c (8 lanes, __m256) and kernel_avx512.c (16 lanes, __m512) after
 * they define: VEC, LANES, VZERO(), VLOAD(p), VSTORE(p, v), VADD(a, b), VSUB(a, b),
 * VFMA(a, b, c) = a·b + c, VBCAST(f), GEMM_PREFIX(name) naming the functions, and
 * GEMM_OFFSETS(words, off): off[f][k] = ((words[k] >> 5f) & 31) · sizeof(VEC) for the
 * 16 words of a block (f < 6, k < 16).
 *
 * The batch is cut into chunks of LANES rows (one lane each). For a chunk and a triple of
 * columns (x0, x1, x2) the table holds the 27 vectors ±x0 ± x1 ± x2 (any sign or zero,
 * index v = d0 + 3·d1 + 9·d2 as in the layout), so a row adds its triple's contribution
 * for all LANES batch rows with one vector add, indexed by its 5-bit field. A pass builds
 * the tables of a few groups (GEMM_WORDS words: 24 triples, about L1-sized), then runs
 * every row of the range through them: y_r += Σ_g S[r,g] · Σ table[field]. Results
 * accumulate in a per-slot buffer yT[rows][LANES], transposed into y at the end.
 */

#define GEMM_WORDS 4   /* words per table: 24 triples · 27 · LANES floats (≤ 41 KiB) */
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

/* One block of 16 rows from r0, one pass (groups g0..g0+ng, words j0..j1 of each):
 * yT[r] = fma(S[r,g], Σ_words tab[fields], yT[r]) group after group: the very operations
 * of the per-row kernel (avx512 gemv_blocks), so a row's result does not depend on the
 * batch it came in. The fields are first turned into byte offsets
 * into the table with vector shifts (GEMM_OFFSETS), all of the pass's before any lookup (a
 * load right after the vector store that wrote it would wait for the store to complete), so
 * the lookup loop is loads and adds only: a pair of rows' offsets is one 64-bit load, and
 * each row adds its table vector straight from memory. The rows go in two halves of eight,
 * so that the group sums and the scaled sums of a half stay in registers. */
static void GEMM_PREFIX(block)(const ts_weights *w, const float *S, int64_t r0, int64_t g0,
                               int64_t ng, int64_t j0, int64_t j1, const VEC *tab, VEC *yT)
{
    uint32_t offs[GEMM_WORDS][TS_FPW][TS_RB] __attribute__((aligned(64)));
    int64_t blk = r0 / TS_RB, nwp = j1 - j0;
    for (int64_t g = g0, i = 0; g < g0 + ng; g++) {
        /* The rows' words of one group are a block apart (gpr·nw·64 bytes): more than the
         * hardware prefetchers follow, so fetch a few blocks ahead. */
        for (int64_t j = j0; j < j1; j++, i++) {
            if (blk + GEMM_AHEAD < w->nblk)
                _mm_prefetch((const char *)ts_wwords(w, blk + GEMM_AHEAD, g, j), _MM_HINT_T0);
            GEMM_OFFSETS(ts_wwords(w, blk, g, j), offs[i]);
        }
    }
    for (int h = 0; h < TS_RB; h += 8) {
        VEC *yh = yT + h;
        VEC y0 = yh[0], y1 = yh[1], y2 = yh[2], y3 = yh[3];
        VEC y4 = yh[4], y5 = yh[5], y6 = yh[6], y7 = yh[7];
        const VEC *tg = tab;
        for (int64_t g = g0; g < g0 + ng; g++) {
            VEC a0 = VZERO(), a1 = VZERO(), a2 = VZERO(), a3 = VZERO();
            VEC a4 = VZERO(), a5 = VZERO(), a6 = VZERO(), a7 = VZERO();
            for (int64_t j = j0; j < j1; j++, tg += TS_FPW * 27) {
                uint32_t (*off)[TS_RB] = offs[(g - g0) * nwp + (j - j0)];
                int64_t nf = w->ntr - j * TS_FPW < TS_FPW ? w->ntr - j * TS_FPW : TS_FPW;
                const char *t = (const char *)tg;
                for (int64_t f = 0; f < nf; f++, t += 27 * sizeof(VEC)) {
                    const uint64_t *o = (const uint64_t *)(off[f] + h);
                    uint64_t p;
#define GEMM_PAIR(i, a, b) p = o[i], a = VADD(a, VLOAD((const float *)(t + (uint32_t)p))), \
                           b = VADD(b, VLOAD((const float *)(t + (p >> 32))))
                    GEMM_PAIR(0, a0, a1); GEMM_PAIR(1, a2, a3);
                    GEMM_PAIR(2, a4, a5); GEMM_PAIR(3, a6, a7);
#undef GEMM_PAIR
                }
            }
            const float *s = S + ts_scale_index(w->gpr, r0, g) + h;   /* rows r0+h.. */
#define GEMM_SCALE(k) y##k = VFMA(a##k, VBCAST(s[k]), y##k)
            GEMM_SCALE(0); GEMM_SCALE(1); GEMM_SCALE(2); GEMM_SCALE(3);
            GEMM_SCALE(4); GEMM_SCALE(5); GEMM_SCALE(6); GEMM_SCALE(7);
#undef GEMM_SCALE
        }
        yh[0] = y0, yh[1] = y1, yh[2] = y2, yh[3] = y3;
        yh[4] = y4, yh[5] = y5, yh[6] = y6, yh[7] = y7;
    }
}

/* Batch chunk starting at b0, rows [r0, r1) (block-aligned): y = x · W_effᵀ. */
static void GEMM_PREFIX(chunk)(const ts_weights *w, const float *S, const float *x, int64_t B,
                               int64_t b0, int64_t r0, int64_t r1, float *y, VEC *tab, VEC *yT)
{
    int64_t rpad = (r1 - r0 + TS_RB - 1) / TS_RB * TS_RB;   /* whole blocks */
    for (int64_t r = 0; r < rpad; r++)
        yT[r] = VZERO();
    /* A pass: the table of GEMM_WORDS words, i.e. of several whole groups or of a part of
     * one wide group. */
    int64_t per = GEMM_WORDS / w->nw > 1 ? GEMM_WORDS / w->nw : 1;
    for (int64_t g0 = 0; g0 < w->gpr;) {
        int64_t ng = per < w->gpr - g0 ? per : w->gpr - g0;
        for (int64_t j0 = 0; j0 < w->nw; j0 += GEMM_WORDS) {
            int64_t j1 = j0 + GEMM_WORDS < w->nw ? j0 + GEMM_WORDS : w->nw;
            int64_t t1 = j1 * TS_FPW < w->ntr ? j1 * TS_FPW : w->ntr;
            for (int64_t q = 0; q < ng; q++)
                GEMM_PREFIX(build)(w, x, b0, B, g0 + q, j0 * TS_FPW, t1,
                                   tab + q * (j1 - j0) * TS_FPW * 27);
            for (int64_t r = 0; r < rpad; r += TS_RB)
                GEMM_PREFIX(block)(w, S, r0 + r, g0, ng, j0, j1, tab, yT + r);
        }
        g0 += ng;
    }
    for (int l = 0; l < LANES && b0 + l < B; l++)
        for (int64_t r = r0; r < r1; r++)
            y[(b0 + l) * w->rows + r] = ((const float *)(yT + (r - r0)))[l];
}

/* Item i: rows part i % parts of batch chunk i / parts. */
static void GEMM_PREFIX(item)(void *arg, int slot, int64_t i)
{
    const ts_kjob *j = arg;
    VEC *tab = (VEC *)(j->scratch + (size_t)slot * j->slot_bytes), *yT = tab + GEMM_TABLE;
    int64_t r0, r1;
    ts_ksplit(j->w->rows, TS_RB, (int)j->parts, (int)(i % j->parts), &r0, &r1);
    if (r0 < r1)
        GEMM_PREFIX(chunk)(j->w, j->S, j->x, j->B, i / j->parts * LANES, r0, r1, j->out, tab, yT);
}

static int GEMM_PREFIX(forward)(const ts_weights *w, const float *S, const float *x, int64_t B,
                                float *y, ts_pool *pool)
{
    /* Whole batch chunks when there are enough to share; else each chunk in row parts, two
     * per thread (a thread the scheduler keeps waiting leaves less behind). */
    int slots = ts_kslots(pool, w, B);
    int64_t nbc = (B + LANES - 1) / LANES;
    int64_t parts = nbc >= 2 * slots ? 1 : (2 * slots + nbc - 1) / nbc;
    parts = parts < w->nblk ? parts : w->nblk;
    size_t rows_pad = (size_t)((w->nblk + parts - 1) / parts + 1) * TS_RB;
    ts_kjob j = {.w = w, .S = S, .x = x, .B = B, .out = y, .parts = parts};
    return ts_krun(pool, &j,
                   (GEMM_TABLE + rows_pad) * sizeof(VEC),
                   nbc * parts, GEMM_PREFIX(item));
}
