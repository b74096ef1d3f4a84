/* The string scan 32 bytes at a time (AVX2); compiled for AVX2 by its target attribute alone,
   so the rest of the extension runs on any x86-64 and the dispatcher picks this one only where
   the CPU has AVX2. */
#include "scan.h"

#ifdef III_SCAN_X86
#include <immintrin.h>

#include "scan_scalar.h"

__attribute__((target("avx2")))
const unsigned char *iii_string_run_avx2(const unsigned char *p, const unsigned char *end) {
    const __m256i quote = _mm256_set1_epi8(0x22), backslash = _mm256_set1_epi8(0x5C);
    const __m256i space = _mm256_set1_epi8(0x20);
    while (end - p >= 32) {
        __m256i chunk = _mm256_loadu_si256((const __m256i *)p);
        /* Signed, bytes >= 0x80 are negative: one compare finds control and non-ASCII bytes. */
        __m256i stops = _mm256_or_si256(
            _mm256_or_si256(_mm256_cmpeq_epi8(chunk, quote), _mm256_cmpeq_epi8(chunk, backslash)),
            _mm256_cmpgt_epi8(space, chunk));
        unsigned int mask = (unsigned int)_mm256_movemask_epi8(stops);
        if (__builtin_expect(!mask, 1)) { /* plain ASCII: the common case, kept a tight loop */
            p += 32;
            continue;
        }
        const unsigned char *first = p + __builtin_ctz(mask);
        if (*first < 0x80) /* '"', '\\' or a control character: the usual way out */
            return first;
        unsigned int stop_mask = mask & ~(unsigned int)_mm256_movemask_epi8(chunk); /* ASCII ones */
        const unsigned char *until = p + (stop_mask ? __builtin_ctz(stop_mask) : 32);
        const unsigned char *after = iii_utf8_through(first, until, end);
        if (stop_mask || after < until) /* the stop, or UTF-8 that is not well formed */
            return after;
        p = after;
    }
    return iii_string_run_sse2(p, end);
}
#endif
