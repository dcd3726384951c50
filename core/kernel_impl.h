/* kernel_impl.h — private to the kernel files (kernel.c, kernel_avx2.c, kernel_avx512.c).
 *
 * The compute layout of a ternary matrix, chosen for lookup-table kernels:
 *
 *   - Rows come in blocks of TS_RB = 16 (one SIMD lane per row); the last block is padded
 *     with all-zero rows.
 *   - Each group of gs columns is cut into ntr = ceil(gs/3) triples of columns; a triple's
 *     three trits are one base-3 number v = d0 + 3·d1 + 9·d2 (d = trit + 1, v < 27), stored
 *     in a 5-bit field. Columns past the group's end (or past cols) are trit 0, so a triple
 *     never straddles two groups and every kernel can treat groups alike.
 *   - Six fields fill one 32-bit word (bits 5k..5k+4 hold triple 6·j + k of word j); a group
 *     has nw = ceil(ntr/6) words per row, unused fields hold 13 (three zero trits).
 *   - Words are stored [block][group][word][row in block]: one 64-byte line holds the same
 *     word of 16 rows, which an AVX-512 kernel loads as one vector of 16 indices. (The 4
 *     blocks a kernel runs side by side are 4 streams: interleaving them into one was
 *     measured slower from DRAM, 364 µs against 299 µs for a cold 4096×4096 batch-1 forward:
 *     more streams keep more of the hardware prefetcher's requests in flight.)
 *
 * For gs a multiple of 16 that is 2 bits per weight (gs = 32: 8 bytes per row and group).
 * Why base 3 in 5 bits: vpermt2ps looks up 32 floats by a 5-bit index, so one instruction
 * adds three weights' worth of x to 16 rows at once (a 27-entry table of the partial sums
 * of three x values); and a scalar kernel can index a table of 27 batch vectors the same way.
 */
#ifndef TS_KERNEL_IMPL_H
#define TS_KERNEL_IMPL_H

#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

#include "kernel.h"

#define TS_RB 16          /* rows per block */
#define TS_FPW 6          /* 5-bit fields per 32-bit word */
#define TS_ZERO_FIELD 13  /* three zero trits: 1 + 3·1 + 9·1 */
#define TS_BLK_ALIGN 4    /* the stored blocks are a multiple of this (padding blocks are all 0),
                             so a kernel may read 4 blocks at a time */

_Static_assert(TS_RB == TS_SCALE_ROWS, "S (kernel.h) has the weights' row blocks");

struct ts_weights {
    int64_t rows, cols, gs, gpr;
    int64_t nblk;         /* ceil(rows / TS_RB); ceil to TS_BLK_ALIGN blocks are stored */
    int64_t ntr;          /* triples per group: ceil(gs / 3) */
    int64_t nw;           /* words per group and row: ceil(ntr / TS_FPW) */
    uint32_t *bits;       /* [stored blocks][gpr][nw][TS_RB], 64-byte aligned */
    atomic_uint passes;   /* small-batch forwards so far: the one field a kernel writes, a hint
                           * for the walking order (ts_weights_pass), never read for results */
};

/* Odd or even pass over w: a kernel that streams the weights walks its rows backwards on
 * odd passes. A layer slightly larger than the caches then finds, at the start of each
 * call, the rows the previous call read last still in this core's L2 (walking the same way
 * every time, least-recently-used replacement leaves nothing useful behind). */
int ts_weights_pass(const ts_weights *w);

/* The TS_RB words (one per row of the block) of word j of group g of row block blk. */
static inline const uint32_t *ts_wwords(const ts_weights *w, int64_t blk, int64_t g, int64_t j)
{
    return w->bits + ((blk * w->gpr + g) * w->nw + j) * TS_RB;
}

/* Field (triple t of group g) of row r. */
static inline unsigned ts_wfield(const ts_weights *w, int64_t r, int64_t g, int64_t t)
{
    uint32_t word = ts_wwords(w, r / TS_RB, g, t / TS_FPW)[r % TS_RB];
    return (word >> (5 * (t % TS_FPW))) & 31u;
}

/* The three trits of a field: ts_field_trits[v] = {d0-1, d1-1, d2-1} for v = d0 + 3·d1 + 9·d2
 * (entries 27..31 never occur in a layout and are zeros). */
extern const int8_t ts_field_trits[32][3];

/* Number of real columns in triple t of group g (0..3): the rest are padding. */
static inline int ts_wtriple_cols(const ts_weights *w, int64_t g, int64_t t)
{
    int64_t c0 = g * w->gs + 3 * t;
    int64_t end = (g + 1) * w->gs < w->cols ? (g + 1) * w->gs : w->cols;
    int64_t n = end - c0;
    return n <= 0 ? 0 : n >= 3 ? 3 : (int)n;
}

/* backward_x of a layer with fewer rows runs the portable kernel, which sums over rows in
 * order as the reference's matmul does there: with few rows a column of equal trits is
 * common, and then dx is a rounding residue (e.g. Σ_r dy[r] = 0 under cross_entropy) whose
 * sign follows the summation order into every dW of the layer below. */
#define TS_BWD_MIN_ROWS 64

/* A kernel family: entries left NULL fall back to the portable kernel. Each entry returns
 * 0 when done, or -1 when it cannot run this call (no scratch memory, or a shape it does
 * not handle); the caller then runs the portable kernel. */
typedef struct {
    const char *name;
    int (*forward)(const ts_weights *w, const float *S, const float *x, int64_t B, float *y,
                   ts_pool *pool);
    int (*backward_x)(const ts_weights *w, const float *S, const float *dy, int64_t B, float *dx,
                      ts_pool *pool);
    int (*score)(const ts_weights *w, const float *dy, const float *x, int64_t B, int16_t *score,
                 ts_pool *pool);
} ts_kernel_family;

/* dW[r][c] = Σ_b dy[b][r] · x[b][c] as a chain of fused multiply-adds over b from 0.0f,
 * as a float32 GEMM computes it; every family's score uses exactly this sequence. */
float ts_kernel_dw(const float *dy, int64_t rows, const float *x, int64_t cols, int64_t B,
                   int64_t r, int64_t c);

extern const ts_kernel_family ts_kernel_family_avx2;
extern const ts_kernel_family ts_kernel_family_avx512;

/* Scratch for one kernel call: the pool's buffer (kept between calls, so the hot path does
 * not allocate), or with a NULL pool a malloc'ed one that ts_kscratch_put frees. NULL when
 * memory is short. */
void *ts_kscratch_get(ts_pool *pool, size_t bytes);
void ts_kscratch_put(ts_pool *pool, void *p);

/* The number of threads a kernel call uses: the pool's, but no more than one per
 * TS_KSLOT_WORK weight·batch rows (~25 µs of work): on a busy machine waking a thread can
 * cost more than splitting a small call saves. Each thread owns slice `slot` of the
 * scratch. */
#define TS_KSLOT_WORK ((int64_t)1 << 20)
int64_t ts_kslot_work(void);   /* TS_KSLOT_WORK, or TSCALE_KERNEL_SLOT_WORK (for tests) */
static inline int ts_kslots(ts_pool *pool, const ts_weights *w, int64_t B)
{
    int64_t by_work = w->rows * w->cols * (B > 0 ? B : 1) / ts_kslot_work();
    int threads = ts_pool_threads(pool);
    return by_work < 1 ? 1 : by_work < threads ? (int)by_work : threads;
}

/* One kernel call split into items (ts_pool_run_items): its operands and the slots'
 * (threads') scratch. */
typedef struct {
    const ts_weights *w;
    const float *S, *x, *dy;   /* what the call reads (the others NULL) */
    int64_t B;
    float *out;                /* y or dx */
    int16_t *score;
    int64_t parts;             /* the kernel's own split (e.g. row parts per batch chunk) */
    char *scratch;             /* slot s owns slot_bytes from s·slot_bytes (64-aligned) */
    size_t slot_bytes;
    int slots;
} ts_kjob;

/* Run fn(j, slot, item) for every item of [0, n_items) on up to ts_kslots threads, with
 * slot_bytes of scratch per thread (rounded up to 64). Returns 0, or -1 when there is no
 * memory for the scratch (nothing ran). */
int ts_krun(ts_pool *pool, ts_kjob *j, size_t slot_bytes, int64_t n_items, ts_pool_item_fn fn);

/* Units of work (e.g. groups of row blocks) in n contiguous home ranges, one per thread:
 * a thread walks its home range from one end and, when it is done, takes units from the
 * other end of the others' ranges. Home ranges keep a core on the same rows call after call
 * (see ts_weights_pass); taking the others' leftovers keeps a thread the scheduler delays
 * from holding up the call. Each unit is handed out once. */
typedef struct {
    atomic_uint_fast64_t span;   /* (first unit left << 32) | end: units [first, end) left */
    char pad[64 - sizeof(atomic_uint_fast64_t)];   /* one range per cache line */
} ts_krange;
void ts_kranges_init(ts_krange *r, int n, int64_t units);
/* The next unit for a thread at home in range `home` (any slot number: taken modulo n),
 * from the front of its range (the back when `reverse`), then from the others; -1 when no
 * unit is left. */
int64_t ts_kranges_next(ts_krange *r, int n, int home, int reverse);

/* Split [0, n) into `parts` contiguous ranges aligned to `align`; range i is [*b, *e). */
static inline void ts_ksplit(int64_t n, int64_t align, int parts, int i, int64_t *b, int64_t *e)
{
    int64_t units = (n + align - 1) / align;
    int64_t q = units / parts, rem = units % parts;
    int64_t u0 = q * i + (i < rem ? i : rem), u1 = u0 + q + (i < rem);
    *b = u0 * align < n ? u0 * align : n;
    *e = u1 * align < n ? u1 * align : n;
}

#endif
