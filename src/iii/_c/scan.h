/* The C under iii/_codec.pyx: the string scan of route_frame, which skips the plain bytes of a
   JSON string and validates their UTF-8 on the way (one variant per instruction set, scan_*.c;
   scan_dispatch.c chooses one at import), and the UTF-8 check of the full decoder (utf8.c). */
#ifndef III_SCAN_H
#define III_SCAN_H

/* GCC and Clang on x86 with SSE2 (all of x86-64): SSE2 is baseline there, AVX2 is compiled with
   a target attribute and chosen only where the CPU has it. */
#if defined(__GNUC__) && (defined(__x86_64__) || defined(__i386__)) && defined(__SSE2__)
#define III_SCAN_X86 1
#endif
/* NEON is part of every AArch64 CPU. */
#if defined(__GNUC__) && defined(__aarch64__)
#define III_SCAN_NEON 1
#endif

/* Internal to the extension: calls between these files stay direct (no PLT, no GOT). */
#if defined(__GNUC__)
#pragma GCC visibility push(hidden)
#endif

/* Returns the first byte in [p, end) that ends a run of plain string bytes: '"', '\\', a control
   character (< 0x20) or the first byte of UTF-8 that is not well formed; end if none. A returned
   byte >= 0x80 is therefore always an encoding error. */
typedef const unsigned char *(*iii_string_run_fn)(const unsigned char *p, const unsigned char *end);

/* The variant in use. */
extern iii_string_run_fn iii_string_run;

/* Chooses the variant: name NULL for the fastest this CPU runs, else "avx2", "sse2", "neon" or
   "portable". Returns 0 (and changes nothing) if this build or CPU has no such variant. */
int iii_scan_select(const char *name);
/* The name of the variant in use. */
const char *iii_scan_name(void);

const unsigned char *iii_string_run_portable(const unsigned char *p, const unsigned char *end);
#ifdef III_SCAN_X86
const unsigned char *iii_string_run_sse2(const unsigned char *p, const unsigned char *end);
const unsigned char *iii_string_run_avx2(const unsigned char *p, const unsigned char *end);
#endif
#ifdef III_SCAN_NEON
const unsigned char *iii_string_run_neon(const unsigned char *p, const unsigned char *end);
#endif

/* The first byte of UTF-8 in [p, end) that is not well formed (where Python's decoder would
   report it), or end. */
const unsigned char *iii_utf8_check(const unsigned char *p, const unsigned char *end);

#if defined(__GNUC__)
#pragma GCC visibility pop
#endif

#endif
