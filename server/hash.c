/* hash.c — content hash of model files (see hash.h). */
#include "server/hash.h"

#include <string.h>

#define FNV_OFFSET TS_FNV_OFFSET
#define FNV_PRIME TS_FNV_PRIME

uint64_t ts_fnv1a(uint64_t h, const void *p, size_t n) {
    const uint8_t *b = p;
    for (size_t i = 0; i < n; i++)
        h = (h ^ b[i]) * FNV_PRIME;
    return h;
}

uint64_t ts_fnv1a_words(uint64_t h, const void *p, size_t n) {
    const uint8_t *b = p;
    size_t i = 0;
    for (; i + sizeof(uint64_t) <= n; i += sizeof(uint64_t)) {
        uint64_t v;
        memcpy(&v, b + i, sizeof v); /* little-endian host (store.c checks) */
        h = (h ^ v) * FNV_PRIME;
    }
    return ts_fnv1a(h, b + i, n - i);
}

uint64_t ts_hash_bytes(const uint8_t *buf, size_t len) {
    /* Lane k hashes bytes k, k+8, k+16, ... of the whole 8-byte blocks; the tail and the
     * lane results are then folded through plain FNV-1a together with the length. */
    uint64_t lane[8];
    for (int k = 0; k < 8; k++)
        lane[k] = FNV_OFFSET ^ (uint64_t)k;
    size_t blocks = len / 8;
    for (size_t b = 0; b < blocks; b++)
        for (int k = 0; k < 8; k++) {
            lane[k] ^= buf[b * 8 + (size_t)k];
            lane[k] *= FNV_PRIME;
        }
    uint64_t h = FNV_OFFSET;
    for (int k = 0; k < 8; k++) {
        uint8_t bytes[8];
        for (int i = 0; i < 8; i++)
            bytes[i] = (uint8_t)(lane[k] >> (8 * i));
        h = ts_fnv1a(h, bytes, 8);
    }
    h = ts_fnv1a(h, buf + blocks * 8, len - blocks * 8);
    uint8_t lb[8];
    for (int i = 0; i < 8; i++)
        lb[i] = (uint8_t)((uint64_t)len >> (8 * i));
    return ts_fnv1a(h, lb, 8);
}

uint64_t ts_hash_pair(const char *a, const char *b) {
    uint64_t ha = ts_hash_bytes((const uint8_t *)a, strlen(a));
    uint64_t hb = ts_hash_bytes((const uint8_t *)b, strlen(b));
    return ha * 0x9e3779b97f4a7c15ull ^ hb;
}
