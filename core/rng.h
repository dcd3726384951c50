/* rng.h — a small seeded RNG for model initialisation: splitmix64 + Box–Muller.
 * Deterministic across platforms for a given seed (integer core; libm for the normals). */
#ifndef TS_RNG_H
#define TS_RNG_H

#include <math.h>
#include <stdint.h>

typedef struct {
    uint64_t state;
    int has_spare;   /* Box–Muller makes normals in pairs */
    double spare;
} ts_rng;

static inline void ts_rng_seed(ts_rng *r, uint64_t seed)
{
    r->state = seed;
    r->has_spare = 0;
    r->spare = 0.0;
}

static inline uint64_t ts_rng_next(ts_rng *r)
{
    uint64_t z = (r->state += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

/* Uniform in (0, 1]: never 0, so log() below is finite. */
static inline double ts_rng_uniform(ts_rng *r)
{
    return (double)((ts_rng_next(r) >> 11) + 1) * 0x1.0p-53;
}

/* Standard normal. */
static inline double ts_rng_normal(ts_rng *r)
{
    if (r->has_spare) {
        r->has_spare = 0;
        return r->spare;
    }
    double u1 = ts_rng_uniform(r), u2 = ts_rng_uniform(r);
    double rad = sqrt(-2.0 * log(u1)), th = 2.0 * 3.14159265358979323846 * u2;
    r->spare = rad * sin(th);
    r->has_spare = 1;
    return rad * cos(th);
}

#endif
