/* The UTF-8 check of whole frames, for the full decoder (route_frame checks strings as it scans). */
#include <stdint.h>
#include <string.h>

#include "scan.h"
#include "scan_scalar.h"

static inline uint64_t word_at(const unsigned char *p) {
    uint64_t word;
    memcpy(&word, p, 8); /* unaligned: compilers make it one load */
    return word;
}

const unsigned char *iii_utf8_check(const unsigned char *p, const unsigned char *end) {
    const uint64_t high_bits = UINT64_C(0x8080808080808080);
    while (end - p >= 32) {
        uint64_t any = word_at(p) | word_at(p + 8) | word_at(p + 16) | word_at(p + 24);
        if (__builtin_expect(!(any & high_bits), 1)) { /* ASCII, 32 bytes at a time */
            p += 32;
            continue;
        }
        const unsigned char *until = p + 32;
        p = iii_utf8_through(p, until, end);
        if (p < until)
            return p;
    }
    return iii_utf8_through(p, end, end);
}
