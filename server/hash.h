/* hash.h — the identity of a model file's bytes (SPEC §3: restarting with the same
 * --model file keeps the recovered state; a different file is a new version). Used for
 * --model files and PUT /admin/models/{m} bodies alike, so both name a file the same way. */
#ifndef TS_HASH_H
#define TS_HASH_H

#include <stddef.h>
#include <stdint.h>

/* 64-bit FNV-1a of buf[len], computed 8 lanes at a time and then combined, so a large
 * file hashes at memory speed rather than one multiply per byte. Stable across builds:
 * the value is stored in the database. */
uint64_t ts_hash_bytes(const uint8_t *buf, size_t len);

/* The key of a (model, id) pair in the in-memory tables keyed by both (idem.c, window.c). */
uint64_t ts_hash_pair(const char *a, const char *b);

/* Plain FNV-1a 64 over p[n], one byte at a time, continuing from h (TS_FNV_OFFSET to start):
 * for small canonical serialisations — content hashes of models, journal checksums. Stable
 * across builds: stored in the database. */
#define TS_FNV_OFFSET 0xcbf29ce484222325ULL
#define TS_FNV_PRIME 0x100000001b3ULL
uint64_t ts_fnv1a(uint64_t h, const void *p, size_t n);

/* FNV-1a 64 with one step per 8-byte little-endian word of p[n] (the bytes after the last
 * whole word one at a time), continuing from h: 8x fewer dependent multiplies than
 * ts_fnv1a, for checksums of large blobs (snapshot states, journal payloads). Each step
 * is a bijection of h, so a change to any one word always changes the result. Stable
 * across builds: stored in the database. p need not be aligned. */
uint64_t ts_fnv1a_words(uint64_t h, const void *p, size_t n);

#endif
