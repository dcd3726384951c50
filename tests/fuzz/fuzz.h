/* fuzz.h — what every fuzz target (tests/fuzz/fuzz_*.c) shares.
 *
 * A target is one function  int ts_fuzz_<name>(const uint8_t *data, size_t size)  that
 * feeds the bytes to the code under test and checks properties of what comes back
 * (a refusal carries a message; what parses survives a round trip; ...).
 *
 * Two builds use it:
 *  - `make fuzz`: clang -fsanitize=fuzzer,address,undefined; the target file defines
 *    LLVMFuzzerTestOneInput, and a failed property aborts with a message, which libFuzzer
 *    reports as a crash and saves as an artifact.
 *  - tests/unit/test_fuzz.c (`make test`, plain, ASan+UBSan and valgrind): includes the
 *    target files with TS_FUZZ_REPLAY defined and replays the seed corpora and every saved
 *    regression input (tests/fuzz/regress/<name>/) through them; a failed property is a
 *    Check failure.
 */
#ifndef TS_FUZZ_H
#define TS_FUZZ_H

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#ifdef TS_FUZZ_REPLAY
#include <check.h>
#define TS_FUZZ_CHECK(cond, ...) ck_assert_msg(cond, __VA_ARGS__)
#define TS_FUZZ_ENTRY(fn)
#else
#define TS_FUZZ_CHECK(cond, ...)                                                     \
    do {                                                                             \
        if (!(cond)) {                                                               \
            fprintf(stderr, "fuzz property failed (%s:%d): ", __FILE__, __LINE__);   \
            fprintf(stderr, __VA_ARGS__);                                            \
            fputc('\n', stderr);                                                     \
            abort();                                                                 \
        }                                                                            \
    } while (0)
/* The libFuzzer entry point of a target file. */
#define TS_FUZZ_ENTRY(fn)                                                            \
    int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);                    \
    int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) { return fn(data, size); }
#endif

/* Bytes consumed from the front of a fuzz input to steer a target (modes, lengths):
 * reading past the end gives zeros, so every input is usable. */
typedef struct {
    const uint8_t *p;
    size_t n;
} ts_fuzz_bytes;

static inline uint64_t ts_fuzz_take(ts_fuzz_bytes *b, int nbytes)
{
    uint64_t v = 0;
    for (int k = 0; k < nbytes; k++) {
        uint64_t byte = 0;
        if (b->n) {
            byte = *b->p++;
            b->n--;
        }
        v |= byte << (8 * k);
    }
    return v;
}

#endif
