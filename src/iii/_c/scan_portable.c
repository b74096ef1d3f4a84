/* The string scan a byte at a time, for CPUs without a vector variant. */
#include "scan.h"
#include "scan_scalar.h"

const unsigned char *iii_string_run_portable(const unsigned char *p, const unsigned char *end) {
    return iii_string_run_bytes(p, end);
}
