/* kernel_bwd.h — backward_x with the batch in lanes: rows binned by their fields.
 *
 * Included by kernel_avx2.c and kernel_avx512.c after they define: BV (an 8-float vector
 * type), BV_ZERO(), BV_LOAD(p), BV_STORE(p, v), BV_ADD(a, b), BV_SUB(a, b), BV_MUL(a, b),
 * BV_BCAST(f), BWD_PREFIX(name) naming the functions, and BWD_OFFSETS(words, off):
 * off[f][k] = ((words[k] >> 5f) & 31) · 32 for the 16 words of a block.
 *
 * dx[b][c] = Σ_r T[r][c] · z[b][r] with z[b][r] = dy[b][r] · S[r,g] (c in group g). A triple
 * of columns has only 27 trit patterns, so each row adds its z (8 batch rows in lanes) into
 * the bin of its field, bins[t][v] += z_r: one vector add per row and triple, for 3 columns
 * × 8 batch rows. After all rows, column i of the triple is Σ_v trit_i(v) · bins[t][v].
 * Rows are added in order, one thread per group, so results do not depend on the threads.
 */

#define BWD_LANES 8
#define BWD_SGROUPS 16   /* groups whose scales are copied out at a time */

/* dyT[r] = dy[b0 + l][r] for the lanes l (0 past B). */
static void BWD_PREFIX(transpose_dy)(const ts_kjob *j, int64_t b0, float *dyT)
{
    const ts_weights *w = j->w;
    for (int64_t r = 0; r < w->rows; r++)
        for (int l = 0; l < BWD_LANES; l++)
            dyT[r * BWD_LANES + l] = b0 + l < j->B ? j->dy[(b0 + l) * w->rows + r] : 0.0f;
}

/* ST[r][gg] = S[r, g0 + gg]: the scales of BWD_SGROUPS groups, row by row. */
static void BWD_PREFIX(scales)(const ts_weights *w, const float *S, int64_t g0, float *ST)
{
    int64_t n = w->gpr - g0 < BWD_SGROUPS ? w->gpr - g0 : BWD_SGROUPS;
    for (int64_t r = 0; r < w->rows; r++)
        for (int64_t k = 0; k < BWD_SGROUPS; k++)
            ST[r * BWD_SGROUPS + k] = k < n ? S[ts_scale_index(w->gpr, r, g0 + k)] : 0.0f;
}

/* The bins of group g: every row's z added into bins[t·27 + field]. */
static void BWD_PREFIX(bin_rows)(const ts_kjob *j, int64_t g, const float *dyT,
                                 const float *Sg, BV *bins)
{
    const ts_weights *w = j->w;
    uint32_t off[TS_FPW][TS_RB] __attribute__((aligned(64)));
    for (int64_t i = 0; i < w->ntr * 27; i++)
        bins[i] = BV_ZERO();
    for (int64_t blk = 0; blk < w->nblk; blk++) {
        int64_t nr = w->rows - blk * TS_RB < TS_RB ? w->rows - blk * TS_RB : TS_RB;
        if (blk + 4 < w->nblk)   /* the next blocks' words are far apart: see kernel_gemm.h */
            _mm_prefetch((const char *)ts_wwords(w, blk + 4, g, 0), _MM_HINT_T0);
        for (int64_t jw = 0; jw < w->nw; jw++) {
            BWD_OFFSETS(ts_wwords(w, blk, g, jw), off);
            int64_t nf = w->ntr - jw * TS_FPW < TS_FPW ? w->ntr - jw * TS_FPW : TS_FPW;
            char *b = (char *)(bins + jw * TS_FPW * 27);
            for (int64_t k = 0; k < nr; k++) {
                int64_t r = blk * TS_RB + k;
                BV z = BV_MUL(BV_LOAD(dyT + r * BWD_LANES), BV_BCAST(Sg[r * BWD_SGROUPS]));
                char *bf = b;
                for (int64_t f = 0; f < nf; f++, bf += 27 * sizeof(BV)) {
                    BV *bin = (BV *)(bf + off[f][k]);
                    *bin = BV_ADD(*bin, z);
                }
            }
        }
    }
}

/* dx of group g for the lanes' batch rows, from its bins. */
static void BWD_PREFIX(unbin)(const ts_kjob *j, int64_t g, int64_t b0, const BV *bins)
{
    const ts_weights *w = j->w;
    for (int64_t t = 0; t < w->ntr; t++, bins += 27) {
        int n = ts_wtriple_cols(w, g, t);
        for (int i = 0, p = 1; i < n; i++, p *= 3) {
            BV sum = BV_ZERO();
            for (int v = 0; v < 27; v++) {   /* digit i of v: 0 → -1, 1 → 0, 2 → +1 */
                int d = v / p % 3;
                sum = d == 2 ? BV_ADD(sum, bins[v]) : d == 0 ? BV_SUB(sum, bins[v]) : sum;
            }
            float out[BWD_LANES] __attribute__((aligned(32)));
            BV_STORE(out, sum);
            for (int l = 0; l < BWD_LANES && b0 + l < j->B; l++)
                j->out[(b0 + l) * w->cols + g * w->gs + 3 * t + i] = out[l];
        }
    }
}

/* Item i: groups [BWD_SGROUPS·i, +BWD_SGROUPS), every batch row. */
static void BWD_PREFIX(item)(void *arg, int slot, int64_t i)
{
    const ts_kjob *j = arg;
    const ts_weights *w = j->w;
    BV *bins = (BV *)(j->scratch + (size_t)slot * j->slot_bytes);
    float *dyT = (float *)(bins + w->ntr * 27);
    float *ST = dyT + w->rows * BWD_LANES;
    int64_t g0 = i * BWD_SGROUPS, g1 = g0 + BWD_SGROUPS < w->gpr ? g0 + BWD_SGROUPS : w->gpr;
    BWD_PREFIX(scales)(w, j->S, g0, ST);
    for (int64_t b0 = 0; b0 < j->B; b0 += BWD_LANES) {
        BWD_PREFIX(transpose_dy)(j, b0, dyT);
        for (int64_t g = g0; g < g1; g++) {
            BWD_PREFIX(bin_rows)(j, g, dyT, ST + (g - g0), bins);
            BWD_PREFIX(unbin)(j, g, b0, bins);
        }
    }
}

static int BWD_PREFIX(backward_x)(const ts_weights *w, const float *S, const float *dy, int64_t B,
                                  float *dx, ts_pool *pool)
{
    size_t bins = (size_t)w->ntr * 27 * sizeof(BV);
    ts_kjob j = {.w = w, .S = S, .dy = dy, .B = B, .out = dx};
    return ts_krun(pool, &j, bins + (size_t)w->rows * (BWD_LANES + BWD_SGROUPS) * sizeof(float),
                   (w->gpr + BWD_SGROUPS - 1) / BWD_SGROUPS, BWD_PREFIX(item));
}
