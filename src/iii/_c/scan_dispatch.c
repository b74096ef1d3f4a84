/* Chooses the string scan variant for this CPU (at import, or by name for the tests). */
#include <string.h>

#include "scan.h"

struct variant {
    const char *name;
    iii_string_run_fn run;
};

/* Fastest first. */
static const struct variant variants[] = {
#ifdef III_SCAN_X86
    {"avx2", iii_string_run_avx2},
    {"sse2", iii_string_run_sse2},
#endif
#ifdef III_SCAN_NEON
    {"neon", iii_string_run_neon},
#endif
    {"portable", iii_string_run_portable},
};

iii_string_run_fn iii_string_run = iii_string_run_portable;
static const char *in_use = "portable";

/* Whether this CPU runs a variant this build has: only AVX2 is not a given. */
static int cpu_runs(const char *name) {
#ifdef III_SCAN_X86
    if (strcmp(name, "avx2") == 0) {
        __builtin_cpu_init();
        return __builtin_cpu_supports("avx2");
    }
#endif
    (void)name;
    return 1;
}

int iii_scan_select(const char *name) {
    size_t i;
    for (i = 0; i < sizeof variants / sizeof variants[0]; i++) {
        if ((name == NULL || strcmp(name, variants[i].name) == 0) && cpu_runs(variants[i].name)) {
            iii_string_run = variants[i].run;
            in_use = variants[i].name;
            return 1;
        }
    }
    return 0;
}

const char *iii_scan_name(void) {
    return in_use;
}
