/* trits.h — base-3 packing of ternary weights, byte-identical to the reference.
 *
 * A trit t ∈ {-1,0,+1} is stored as digit d = t+1 ∈ {0,1,2}. Five digits make a byte:
 *   byte = d0 + 3·d1 + 9·d2 + 27·d3 + 81·d4        (always < 243)
 * Trits are flattened row-major; the last byte is padded with digit 0 (trit -1), and
 * the number of pad digits is the model file's `_T_pad`.
 */
#ifndef TS_TRITS_H
#define TS_TRITS_H

#include <stddef.h>
#include <stdint.h>

/* Bytes needed to pack n trits: ceil(n/5). */
size_t ts_trits_packed_size(size_t n);
/* Pad digits in the last byte for n trits: (-n) mod 5. */
int ts_trits_pad(size_t n);

/* Pack n trits (each -1, 0 or +1) into out[ts_trits_packed_size(n)]. */
void ts_trits_pack(const int8_t *trits, size_t n, uint8_t *out);

/* Unpack n trits from packed[ts_trits_packed_size(n)] into out[n].
 * Returns 0, or -1 when a byte is >= 243 (corrupt data); out is then unspecified. */
int ts_trits_unpack(const uint8_t *packed, size_t n, int8_t *out);

#endif
