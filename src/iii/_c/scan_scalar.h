/* The scalar parts the string scan variants share, inlined into each: UTF-8 checks and the scan
   a byte at a time. */
#ifndef III_SCAN_SCALAR_H
#define III_SCAN_SCALAR_H

#include <stddef.h>

/* The length of the well-formed UTF-8 sequence at p (whose lead byte is >= 0x80), or 0 if it is
   not well formed: overlong forms, UTF-16 surrogates (U+D800..DFFF), code points past U+10FFFF
   and sequences cut short are rejected (the Unicode standard's table 3-7, as Python's decoder). */
static inline size_t iii_utf8_sequence(const unsigned char *p, const unsigned char *end) {
    unsigned char lead = p[0], low = 0x80, high = 0xBF; /* the range of the second byte */
    size_t size, i;
    if (lead >= 0xC2 && lead <= 0xDF) {
        size = 2;
    } else if (lead >= 0xE0 && lead <= 0xEF) {
        size = 3;
        if (lead == 0xE0)
            low = 0xA0; /* below: overlong */
        else if (lead == 0xED)
            high = 0x9F; /* above: a surrogate */
    } else if (lead >= 0xF0 && lead <= 0xF4) {
        size = 4;
        if (lead == 0xF0)
            low = 0x90; /* below: overlong */
        else if (lead == 0xF4)
            high = 0x8F; /* above: past U+10FFFF */
    } else {
        return 0; /* a continuation byte, an overlong C0/C1 lead or F5..FF */
    }
    if ((size_t)(end - p) < size || p[1] < low || p[1] > high)
        return 0;
    for (i = 2; i < size; i++)
        if ((p[i] & 0xC0) != 0x80)
            return 0;
    return size;
}

/* For the vector variants, which found a non-ASCII byte at p and no '"', '\\' or control
   character before until: checks the UTF-8 of [p, until) a byte at a time (one pass over the
   chunk, rather than a vector load per sequence). Returns the lead byte (>= 0x80) of the first
   sequence that is not well formed, else until or, if the last sequence runs on, the byte
   after it. */
static inline const unsigned char *iii_utf8_through(const unsigned char *p, const unsigned char *until,
                                                    const unsigned char *end) {
    size_t size;
    while (p < until) {
        if (*p < 0x80) {
            p++;
            continue;
        }
        size = iii_utf8_sequence(p, end);
        if (!size)
            return p;
        p += size;
    }
    return p;
}

/* The string scan a byte at a time (see scan.h): vector variants finish their tails with it. */
static inline const unsigned char *iii_string_run_bytes(const unsigned char *p, const unsigned char *end) {
    size_t size;
    while (p < end) {
        signed char c = (signed char)*p; /* signed, bytes >= 0x80 are below 0x20 too */
        if (c >= 0x20 && c != 0x22 && c != 0x5C) {
            p++;
        } else if (c >= 0) { /* '"', '\\' or a control character */
            return p;
        } else {
            size = iii_utf8_sequence(p, end);
            if (!size)
                return p;
            p += size;
        }
    }
    return p;
}

#endif
