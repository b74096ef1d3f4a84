/* The string scan 16 bytes at a time (AArch64 NEON). */
#include "scan.h"

#ifdef III_SCAN_NEON
#include <arm_neon.h>
#include <stdint.h>

#include "scan_scalar.h"

/* NEON has no movemask: narrowing each 16-bit lane by 4 bits leaves 4 bits per byte. */
static inline uint64_t nibble_mask(uint8x16_t bytes) {
    return vget_lane_u64(vreinterpret_u64_u8(vshrn_n_u16(vreinterpretq_u16_u8(bytes), 4)), 0);
}

const unsigned char *iii_string_run_neon(const unsigned char *p, const unsigned char *end) {
    const uint8x16_t quote = vdupq_n_u8(0x22), backslash = vdupq_n_u8(0x5C);
    const int8x16_t space = vdupq_n_s8(0x20);
    while (end - p >= 16) {
        uint8x16_t chunk = vld1q_u8(p);
        /* Signed, bytes >= 0x80 are negative: one compare finds control and non-ASCII bytes. */
        uint8x16_t stops = vorrq_u8(
            vorrq_u8(vceqq_u8(chunk, quote), vceqq_u8(chunk, backslash)),
            vcltq_s8(vreinterpretq_s8_u8(chunk), space));
        uint64_t mask = nibble_mask(stops);
        if (__builtin_expect(!mask, 1)) { /* plain ASCII: the common case, kept a tight loop */
            p += 16;
            continue;
        }
        const unsigned char *first = p + (__builtin_ctzll(mask) >> 2);
        if (*first < 0x80) /* '"', '\\' or a control character: the usual way out */
            return first;
        uint64_t stop_mask = mask & ~nibble_mask(vcltzq_s8(vreinterpretq_s8_u8(chunk))); /* ASCII ones */
        const unsigned char *until = p + (stop_mask ? __builtin_ctzll(stop_mask) >> 2 : 16);
        const unsigned char *after = iii_utf8_through(first, until, end);
        if (stop_mask || after < until) /* the stop, or UTF-8 that is not well formed */
            return after;
        p = after;
    }
    return iii_string_run_bytes(p, end);
}
#endif
