/* The UTF-8 check of whole frames, for the full decoder (route_frame checks strings as it scans). */
#include <stdint.h>
#include <string.h>

#include "scan.h"
#include "scan_scalar.h"

const unsigned char *iii_utf8_check(const unsigned char *p, const unsigned char *end) {
    const uint64_t high_bits = UINT64_C(0x8080808080808080);
    uint64_t words[4];
    while (end - p >= 32) {
        memcpy(words, p, 32);
        if ((words[0] | words[1] | words[2] | words[3]) & high_bits) { /* else ASCII: skipped */
            const unsigned char *until = p + 32;
            p = iii_utf8_through(p, until, end);
            if (p < until)
                return p;
        } else {
            p += 32;
        }
    }
    return iii_utf8_through(p, end, end);
}
