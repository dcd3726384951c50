/* trits.c — base-3 packing of ternary weights (see trits.h). */
#include "trits.h"

size_t ts_trits_packed_size(size_t n) { return n / 5 + (n % 5 != 0); }

int ts_trits_pad(size_t n) { return (int)((5 - n % 5) % 5); }

void ts_trits_pack(const int8_t *trits, size_t n, uint8_t *out)
{
    size_t nbytes = ts_trits_packed_size(n);
    for (size_t i = 0; i < nbytes; i++) {
        unsigned byte = 0, mul = 1;
        for (size_t k = 0; k < 5; k++) {
            size_t j = i * 5 + k;
            /* Pad digits are 0 (trit -1), as the reference pads with zero bytes. */
            unsigned d = j < n ? (unsigned)(trits[j] + 1) : 0u;
            byte += d * mul;
            mul *= 3;
        }
        out[i] = (uint8_t)byte;
    }
}

int ts_trits_unpack(const uint8_t *packed, size_t n, int8_t *out)
{
    size_t nbytes = ts_trits_packed_size(n);
    for (size_t i = 0; i < nbytes; i++) {
        unsigned byte = packed[i];
        if (byte >= 243)
            return -1;
        for (size_t k = 0; k < 5; k++, byte /= 3) {
            size_t j = i * 5 + k;
            if (j < n)
                out[j] = (int8_t)((int)(byte % 3) - 1);
        }
    }
    return 0;
}
