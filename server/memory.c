/* memory.c — glibc allocator settings and resident memory (see memory.h). */
#include "server/memory.h"

#include <malloc.h>
#include <stdio.h>
#include <unistd.h>

void ts_memory_setup(void) {
    /* Setting the threshold also turns off its dynamic adjustment (mallopt(3)). */
    mallopt(M_MMAP_THRESHOLD, TS_MEMORY_MMAP_MIN);
}

int ts_memory_measure(int64_t *resident, int64_t *anon) {
    /* statm: size resident shared text lib data dt, in pages; shared = file-backed + shmem */
    FILE *f = fopen("/proc/self/statm", "r");
    long long size, res, shared;
    int n = f ? fscanf(f, "%lld %lld %lld", &size, &res, &shared) : 0;
    if (f)
        fclose(f);
    if (n != 3)
        return 0;
    long page = sysconf(_SC_PAGESIZE);
    *resident = (int64_t)res * page;
    *anon = (int64_t)(res - shared) * page;
    return 1;
}

void ts_memory_render(ts_buf *out) {
    int64_t resident, anon;
    if (!ts_memory_measure(&resident, &anon))
        return;
    ts_buf_printf(out, "# HELP process_resident_memory_bytes Resident memory size in bytes.\n"
                       "# TYPE process_resident_memory_bytes gauge\n"
                       "process_resident_memory_bytes %lld\n"
                       "# HELP tscale_resident_anon_bytes Resident anonymous memory (what the daemon "
                       "allocated: models, buffers, caches; not the mapped binary and libraries).\n"
                       "# TYPE tscale_resident_anon_bytes gauge\n"
                       "tscale_resident_anon_bytes %lld\n",
                  (long long)resident, (long long)anon);
}
