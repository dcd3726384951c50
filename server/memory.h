/* memory.h — the daemon's resident memory: how glibc's allocator is set up, and what the
 * process holds (for /metrics).
 *
 * Why: a served model is a few large buffers (layout, scales, corr_accum) that live as long
 * as the model, plus large short-lived ones: the model file read at load, the packed trits
 * while the layout is built, snapshot state copies, recovered blobs. glibc's default mmap
 * threshold is dynamic: the first large buffer freed raises it to that buffer's size (up to
 * 32 MiB), so every later large buffer comes from the heap, and the heap cannot give back
 * what sits below a live allocation. Measured on a served
 * `linear:4096x4096,relu,linear:4096x4096` (bench/rss.py): 1.46 B/weight anon after load,
 * 1.74 after 30 s of feedback with snapshots, for a model of 0.656. A fixed threshold keeps
 * large buffers on their own mappings, so freeing one returns its pages at once: 0.69 / 0.73
 * (with SQLite's page cache at 256 KiB, store.c). malloc_trim after the load gained only
 * 0.004 B/weight more, so the daemon does not call it.
 */
#ifndef TS_MEMORY_H
#define TS_MEMORY_H

#include <stdint.h>

#include "proto/buf.h"

/* Fix glibc's mmap threshold (buffers from TS_MEMORY_MMAP_MIN up get their own mapping and
 * go back to the kernel when freed). Call once at start, before any large allocation. */
#define TS_MEMORY_MMAP_MIN (128 * 1024)
void ts_memory_setup(void);

/* The process's resident bytes, and of them the anonymous ones (heap, mappings: what
 * the daemon itself allocated, not the mapped binary and libraries); from /proc/self/statm.
 * 0 on failure (no /proc): callers show nothing then. Any thread. */
int ts_memory_measure(int64_t *resident, int64_t *anon);

/* Append the Prometheus gauges process_resident_memory_bytes (the name Prometheus' client
 * libraries give it) and tscale_resident_anon_bytes; nothing when /proc is missing. */
void ts_memory_render(ts_buf *out);

#endif
