/* The string scan 16 bytes at a time (SSE2). */
#include "scan.h"

#ifdef III_SCAN_X86
#include <emmintrin.h>

#include "scan_scalar.h"

const unsigned char *iii_string_run_sse2(const unsigned char *p, const unsigned char *end) {
    const __m128i quote = _mm_set1_epi8(0x22), backslash = _mm_set1_epi8(0x5C);
    const __m128i space = _mm_set1_epi8(0x20);
    while (end - p >= 16) {
        __m128i chunk = _mm_loadu_si128((const __m128i *)p);
        /* Signed, bytes >= 0x80 are negative: one compare finds control and non-ASCII bytes. */
        __m128i stops = _mm_or_si128(
            _mm_or_si128(_mm_cmpeq_epi8(chunk, quote), _mm_cmpeq_epi8(chunk, backslash)),
            _mm_cmplt_epi8(chunk, space));
        unsigned int mask = (unsigned int)_mm_movemask_epi8(stops);
        if (__builtin_expect(!mask, 1)) { /* plain ASCII: the common case, kept a tight loop */
            p += 16;
            continue;
        }
        const unsigned char *first = p + __builtin_ctz(mask);
        if (*first < 0x80) /* '"', '\\' or a control character: the usual way out */
            return first;
        unsigned int stop_mask = mask & ~(unsigned int)_mm_movemask_epi8(chunk); /* ASCII ones */
        const unsigned char *until = p + (stop_mask ? __builtin_ctz(stop_mask) : 16);
        const unsigned char *after = iii_utf8_through(first, until, end);
        if (stop_mask || after < until) /* the stop, or UTF-8 that is not well formed */
            return after;
        p = after;
    }
    return iii_string_run_bytes(p, end);
}
#endif
