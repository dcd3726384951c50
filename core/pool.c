/* pool.c — a persistent pool of compute threads (see pool.h).
 *
 * Each job splits [0, n) into k contiguous chunks; chunk 0 runs on the caller's thread,
 * chunk i on worker i. A kernel call takes ~0.1–1 ms, so waking a sleeping thread (tens of
 * microseconds under a hypervisor) would cost as much as the work: after a job, workers spin
 * on the job generation for a while (SPIN_NS) before they sleep on a condition variable,
 * and the caller spins until the workers' chunks are done. Job fields are written before
 * the generation is published (release) and read after it is seen (acquire).
 */
#include "pool.h"

#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <time.h>

#define SPIN_NS 200000   /* how long an idle worker waits for the next job before sleeping */
#define ITEMS_JOB 0x8000 /* in the generation's low 16 bits: a ts_pool_run_items job */

typedef struct {
    struct ts_pool *pool;
    int index;               /* 1..n_threads-1; 0 is the caller */
    pthread_t thread;
} ts_worker;

struct ts_pool {
    int n_threads;
    int n_started;           /* workers actually created */
    ts_worker *workers;      /* [n_threads - 1] */
    pthread_mutex_t lock;    /* guards sleeping, and the wake-up */
    pthread_cond_t wake;     /* a new job (or shutdown) */
    int sleeping;            /* workers blocked on wake */
    /* (job counter << 16) | chunks: a new value publishes a job. The chunk count travels
     * in it so that a worker without a chunk never reads a field the next job rewrites. */
    atomic_uint_fast64_t generation;
    atomic_int shutdown;
    atomic_int pending;      /* worker chunks not yet finished */
    /* the current job (written by the caller before it publishes the generation): */
    ts_pool_fn fn;
    void *arg;
    int64_t n;
    /* the current items job (ts_pool_run_items): atomics, because a worker that wakes late
     * may read them while the next job is being set up; it then fails to claim (claim's
     * job id changed) and ignores what it read. */
    _Atomic(ts_pool_item_fn) item_fn;
    _Atomic(void *) item_arg;
    atomic_int_fast64_t item_n;
    atomic_uint_fast64_t claim;        /* (job id << 32) | next item */
    atomic_int_fast64_t items_done;
    /* scratch for kernels */
    void *scratch;
    size_t scratch_bytes;
};

static void chunk_range(int64_t n, int chunks, int i, int64_t *begin, int64_t *end)
{
    /* The first n % chunks chunks get one index more. */
    int64_t q = n / chunks, r = n % chunks;
    *begin = q * i + (i < r ? i : r);
    *end = *begin + q + (i < r);
}

static int64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

static inline void cpu_relax(void)
{
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#endif
}

/* Wait until the generation differs from seen (or shutdown): spin first, then sleep. */
static uint64_t wait_job(ts_pool *pool, uint64_t seen)
{
    int64_t until = now_ns() + SPIN_NS;
    for (unsigned i = 1;; i++) {
        uint64_t g = atomic_load_explicit(&pool->generation, memory_order_acquire);
        if (g != seen || atomic_load(&pool->shutdown))
            return g;
        cpu_relax();
        if (i % 256 == 0) {
            if (now_ns() > until)
                break;
            sched_yield();   /* more threads than cores: let the one with work run */
        }
    }
    pthread_mutex_lock(&pool->lock);
    pool->sleeping++;
    uint64_t g;
    while ((g = atomic_load_explicit(&pool->generation, memory_order_acquire)) == seen &&
           !atomic_load(&pool->shutdown))
        pthread_cond_wait(&pool->wake, &pool->lock);
    pool->sleeping--;
    pthread_mutex_unlock(&pool->lock);
    return g;
}

/* Claim and run items of job `id` until none is left or the job is over. */
static void run_items(ts_pool *pool, uint32_t id, int slot)
{
    uint64_t c = atomic_load_explicit(&pool->claim, memory_order_acquire);
    for (;;) {
        /* Read after an acquire of claim: the values of the job claim names (or of a later
         * one, and then the claim below fails). */
        ts_pool_item_fn fn = atomic_load_explicit(&pool->item_fn, memory_order_relaxed);
        void *arg = atomic_load_explicit(&pool->item_arg, memory_order_relaxed);
        int64_t n = atomic_load_explicit(&pool->item_n, memory_order_relaxed);
        if ((uint32_t)(c >> 32) != id || (int64_t)(c & 0xffffffffu) >= n)
            return;
        if (!atomic_compare_exchange_weak_explicit(&pool->claim, &c, c + 1, memory_order_acq_rel,
                                                   memory_order_acquire))
            continue;   /* c holds the new value */
        fn(arg, slot, (int64_t)(c & 0xffffffffu));
        atomic_fetch_add_explicit(&pool->items_done, 1, memory_order_release);
        c = atomic_load_explicit(&pool->claim, memory_order_acquire);
    }
}

static void *worker_main(void *p)
{
    ts_worker *w = p;
    ts_pool *pool = w->pool;
    uint64_t seen = 0;
    for (;;) {
        seen = wait_job(pool, seen);
        if (atomic_load(&pool->shutdown))
            break;
        if (seen & ITEMS_JOB) {
            run_items(pool, (uint32_t)(seen >> 16), w->index);
            continue;
        }
        int chunks = (int)(seen & 0xffff);
        if (w->index >= chunks)
            continue;   /* this job has fewer chunks than threads */
        int64_t begin, end;
        chunk_range(pool->n, chunks, w->index, &begin, &end);
        pool->fn(pool->arg, begin, end);
        atomic_fetch_sub_explicit(&pool->pending, 1, memory_order_release);
    }
    return NULL;
}

ts_pool *ts_pool_new(int n_threads)
{
    if (n_threads < 1 || n_threads >= ITEMS_JOB)
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
    atomic_init(&pool->generation, 0);
    atomic_init(&pool->shutdown, 0);
    atomic_init(&pool->pending, 0);
    atomic_init(&pool->item_fn, NULL);
    atomic_init(&pool->item_arg, NULL);
    atomic_init(&pool->item_n, 0);
    atomic_init(&pool->claim, 0);
    atomic_init(&pool->items_done, 0);
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
    atomic_store(&pool->shutdown, 1);
    pthread_cond_broadcast(&pool->wake);
    pthread_mutex_unlock(&pool->lock);
    for (int i = 0; i < pool->n_started; i++)
        pthread_join(pool->workers[i].thread, NULL);
    pthread_cond_destroy(&pool->wake);
    pthread_mutex_destroy(&pool->lock);
    free(pool->scratch);
    free(pool->workers);
    free(pool);
}

int ts_pool_threads(const ts_pool *pool) { return pool ? pool->n_threads : 1; }

/* Publish the next job (what the generation's low 16 bits say) and wake the workers. */
static void publish(ts_pool *pool, uint64_t low)
{
    uint64_t g = atomic_load_explicit(&pool->generation, memory_order_relaxed);
    atomic_store_explicit(&pool->generation, ((g >> 16) + 1) << 16 | low, memory_order_release);
    /* A worker that checked the generation before the increment is either still spinning
     * (it will see it) or counted in sleeping under the lock (it gets the broadcast). */
    pthread_mutex_lock(&pool->lock);
    if (pool->sleeping)
        pthread_cond_broadcast(&pool->wake);
    pthread_mutex_unlock(&pool->lock);
}

static void wait_until(atomic_int_fast64_t *counter, int64_t value)
{
    for (unsigned i = 1; atomic_load_explicit(counter, memory_order_acquire) < value; i++) {
        cpu_relax();
        if (i % 1024 == 0)
            sched_yield();   /* a worker was descheduled: let it run */
    }
}

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
    pool->fn = fn;
    pool->arg = arg;
    pool->n = n;
    atomic_store_explicit(&pool->pending, chunks - 1, memory_order_relaxed);
    publish(pool, (uint64_t)chunks);

    int64_t begin, end;
    chunk_range(n, chunks, 0, &begin, &end);
    fn(arg, begin, end);

    for (unsigned i = 1; atomic_load_explicit(&pool->pending, memory_order_acquire) > 0; i++) {
        cpu_relax();
        if (i % 1024 == 0)
            sched_yield();   /* a worker was descheduled: let it run */
    }
}

void ts_pool_run_items(ts_pool *pool, int64_t n_items, ts_pool_item_fn fn, void *arg)
{
    if (n_items <= 0)
        return;
    if (!pool || pool->n_threads == 1 || n_items == 1 || n_items > (int64_t)0xffffffff) {
        for (int64_t i = 0; i < n_items; i++)
            fn(arg, 0, i);
        return;
    }
    /* The job id is the generation's counter that publish() is about to set. */
    uint64_t g = atomic_load_explicit(&pool->generation, memory_order_relaxed);
    uint32_t id = (uint32_t)((g >> 16) + 1);
    atomic_store_explicit(&pool->item_fn, fn, memory_order_relaxed);
    atomic_store_explicit(&pool->item_arg, arg, memory_order_relaxed);
    atomic_store_explicit(&pool->item_n, n_items, memory_order_relaxed);
    atomic_store_explicit(&pool->items_done, 0, memory_order_relaxed);
    atomic_store_explicit(&pool->claim, (uint64_t)id << 32, memory_order_release);
    publish(pool, ITEMS_JOB);
    run_items(pool, id, 0);
    wait_until(&pool->items_done, n_items);
}

void *ts_pool_scratch(ts_pool *pool, size_t bytes)
{
    if (!pool)
        return NULL;
    if (bytes > pool->scratch_bytes) {
        size_t size = (bytes + 63) / 64 * 64;
        void *p = aligned_alloc(64, size);
        if (!p)
            return NULL;
        free(pool->scratch);
        pool->scratch = p;
        pool->scratch_bytes = size;
    }
    return pool->scratch;
}
