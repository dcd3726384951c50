/* pool.c — a persistent pool of compute threads (see pool.h).
 *
 * Workers sleep on a condition variable and wake when the job generation changes.
 * Each job splits [0, n) into k contiguous chunks; chunk 0 runs on the caller's thread,
 * chunk i on worker i. The caller waits until every worker chunk is done. A mutex guards
 * every shared field, so the pool is simple to reason about (and TSan clean).
 */
#include "pool.h"

#include <pthread.h>
#include <stdlib.h>

typedef struct {
    struct ts_pool *pool;
    int index;               /* 1..n_threads-1; 0 is the caller */
    pthread_t thread;
} ts_worker;

struct ts_pool {
    int n_threads;
    int n_started;           /* workers actually created */
    ts_worker *workers;      /* [n_threads - 1] */
    pthread_mutex_t lock;
    pthread_cond_t wake;     /* a new job (or shutdown) */
    pthread_cond_t done;     /* pending reached 0 */
    uint64_t generation;     /* job counter */
    int shutdown;
    /* the current job: */
    ts_pool_fn fn;
    void *arg;
    int64_t n;
    int chunks;
    int pending;             /* worker chunks not yet finished */
};

static void chunk_range(int64_t n, int chunks, int i, int64_t *begin, int64_t *end)
{
    /* The first n % chunks chunks get one index more. */
    int64_t q = n / chunks, r = n % chunks;
    *begin = q * i + (i < r ? i : r);
    *end = *begin + q + (i < r);
}

static void *worker_main(void *p)
{
    ts_worker *w = p;
    ts_pool *pool = w->pool;
    uint64_t seen = 0;
    pthread_mutex_lock(&pool->lock);
    for (;;) {
        while (!pool->shutdown && pool->generation == seen)
            pthread_cond_wait(&pool->wake, &pool->lock);
        if (pool->shutdown)
            break;
        seen = pool->generation;
        if (w->index >= pool->chunks)
            continue;   /* this job has fewer chunks than threads */
        ts_pool_fn fn = pool->fn;
        void *arg = pool->arg;
        int64_t begin, end;
        chunk_range(pool->n, pool->chunks, w->index, &begin, &end);
        pthread_mutex_unlock(&pool->lock);
        fn(arg, begin, end);
        pthread_mutex_lock(&pool->lock);
        if (--pool->pending == 0)
            pthread_cond_signal(&pool->done);
    }
    pthread_mutex_unlock(&pool->lock);
    return NULL;
}

ts_pool *ts_pool_new(int n_threads)
{
    if (n_threads < 1)
        return NULL;
    ts_pool *pool = calloc(1, sizeof *pool);
    if (!pool)
        return NULL;
    pool->n_threads = n_threads;
    pool->workers = calloc((size_t)n_threads, sizeof *pool->workers);
    if (!pool->workers) {
        free(pool);
        return NULL;
    }
    pthread_mutex_init(&pool->lock, NULL);
    pthread_cond_init(&pool->wake, NULL);
    pthread_cond_init(&pool->done, NULL);
    for (int i = 1; i < n_threads; i++) {
        ts_worker *w = &pool->workers[i - 1];
        w->pool = pool;
        w->index = i;
        if (pthread_create(&w->thread, NULL, worker_main, w) != 0) {
            ts_pool_free(pool);
            return NULL;
        }
        pool->n_started = i;
    }
    return pool;
}

void ts_pool_free(ts_pool *pool)
{
    if (!pool)
        return;
    pthread_mutex_lock(&pool->lock);
    pool->shutdown = 1;
    pthread_cond_broadcast(&pool->wake);
    pthread_mutex_unlock(&pool->lock);
    for (int i = 0; i < pool->n_started; i++)
        pthread_join(pool->workers[i].thread, NULL);
    pthread_cond_destroy(&pool->done);
    pthread_cond_destroy(&pool->wake);
    pthread_mutex_destroy(&pool->lock);
    free(pool->workers);
    free(pool);
}

int ts_pool_threads(const ts_pool *pool) { return pool ? pool->n_threads : 1; }

void ts_pool_run(ts_pool *pool, int64_t n, int64_t min_chunk, ts_pool_fn fn, void *arg)
{
    if (n <= 0)
        return;
    if (min_chunk < 1)
        min_chunk = 1;
    int64_t by_size = (n + min_chunk - 1) / min_chunk;
    int chunks = pool ? pool->n_threads : 1;
    if (by_size < chunks)
        chunks = (int)by_size;
    if (chunks <= 1) {
        fn(arg, 0, n);
        return;
    }
    pthread_mutex_lock(&pool->lock);
    pool->fn = fn;
    pool->arg = arg;
    pool->n = n;
    pool->chunks = chunks;
    pool->pending = chunks - 1;
    pool->generation++;
    pthread_cond_broadcast(&pool->wake);
    pthread_mutex_unlock(&pool->lock);

    int64_t begin, end;
    chunk_range(n, chunks, 0, &begin, &end);
    fn(arg, begin, end);

    pthread_mutex_lock(&pool->lock);
    while (pool->pending > 0)
        pthread_cond_wait(&pool->done, &pool->lock);
    pthread_mutex_unlock(&pool->lock);
}
