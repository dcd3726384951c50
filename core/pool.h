/* pool.h — a persistent pool of compute threads for data-parallel kernels.
 *
 * ts_pool_run() splits [0, n) into contiguous chunks and runs fn on each, one chunk per
 * thread, the caller's thread included; it returns when every chunk is done. A pool runs
 * one ts_pool_run at a time (callers serialise; the server gives each compute job the
 * whole pool). A NULL pool runs fn(arg, 0, n) on the caller's thread.
 */
#ifndef TS_POOL_H
#define TS_POOL_H

#include <stddef.h>
#include <stdint.h>

typedef struct ts_pool ts_pool;

/* fn handles indices [begin, end). */
typedef void (*ts_pool_fn)(void *arg, int64_t begin, int64_t end);

/* n_threads >= 1 (the caller counts as one). NULL on failure. */
ts_pool *ts_pool_new(int n_threads);
void ts_pool_free(ts_pool *pool);
int ts_pool_threads(const ts_pool *pool);

/* Run fn over [0, n) in chunks of at least min_chunk indices. Chunk i (of k = min(threads,
 * ceil(n/min_chunk)) equal contiguous chunks) runs on thread i, the caller being thread 0;
 * so with n = ts_pool_threads(pool) and min_chunk 1 each call of fn gets one index. */
void ts_pool_run(ts_pool *pool, int64_t n, int64_t min_chunk, ts_pool_fn fn, void *arg);

/* fn(arg, slot, item) for every item of [0, n_items) (n_items < 2^32): each thread, the
 * caller included, claims the next item until none is left, so a thread the scheduler keeps
 * waiting costs little: the others do its share. slot (0 for the caller, < threads) names
 * the thread, for its scratch; items run in any order, each once. Returns when every item
 * is done. A NULL or one-thread pool runs them in order on the caller's thread. */
typedef void (*ts_pool_item_fn)(void *arg, int slot, int64_t item);
void ts_pool_run_items(ts_pool *pool, int64_t n_items, ts_pool_item_fn fn, void *arg);

/* Scratch memory for the kernels of the pool's jobs (so that the hot path does not
 * allocate): at least `bytes`, 64-byte aligned, owned by the pool and kept until a larger
 * request or ts_pool_free. Like ts_pool_run, one user at a time. NULL when memory is short
 * or pool is NULL. */
void *ts_pool_scratch(ts_pool *pool, size_t bytes);

#endif
