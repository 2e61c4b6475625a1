/*
 * fuzz_harness.h - what the stand-alone fuzzers (fuzz_decoder.c, fuzz_slots.c)
 * share: the crash dump of the input being run, FZ_CHECK, and, outside
 * libFuzzer, the command line (--seconds, --iterations, --seed, --max-len,
 * files to replay) and the clock. Define FZ_NAME (the program's name, for
 * messages) before including it; each fuzzer sets fz_cur/fz_cur_size to the
 * input it runs and keeps its own generator and statistics.
 */
#ifndef FZ_NAME
#error "define FZ_NAME before including fuzz_harness.h"
#endif

#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#if defined(__has_feature)
#if __has_feature(address_sanitizer)
#define PX_FUZZ_ASAN 1
#endif
#endif
#if defined(__SANITIZE_ADDRESS__)
#define PX_FUZZ_ASAN 1
#endif
#if defined(PX_FUZZ_ASAN) && !defined(PX_LIBFUZZER)
#include <sanitizer/common_interface_defs.h>
#endif

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* The input being run, for the crash dump. */
static const uint8_t *fz_cur;
static size_t fz_cur_size;

/* Save the input being run to fuzz-crash-<pid>.bin (in $PYEXEC_FUZZ_CRASH_DIR,
 * else the current directory), so it can be replayed. */
static void fz_dump(void) {
    if (fz_cur == NULL) return;
    const char *dir = getenv("PYEXEC_FUZZ_CRASH_DIR");
    char path[4096];
    snprintf(path, sizeof(path), "%s/fuzz-crash-%d.bin", dir && *dir ? dir : ".",
             (int)getpid());
    FILE *f = fopen(path, "wb");
    if (f == NULL) return;
    fwrite(fz_cur, 1, fz_cur_size, f);
    fclose(f);
    fprintf(stderr, FZ_NAME ": input saved to %s\n", path);
}

#define FZ_CHECK(cond)                                                        \
    do {                                                                      \
        if (!(cond)) {                                                        \
            fprintf(stderr, FZ_NAME ": %s:%d: check failed: %s\n", __FILE__,  \
                    __LINE__, #cond);                                         \
            fz_dump();                                                        \
            abort();                                                          \
        }                                                                     \
    } while (0)

#ifndef PX_LIBFUZZER

static double fz_now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* Run one saved input (a whole file) through the checks. */
static int fz_replay(const char *path) {
    FILE *f = fopen(path, "rb");
    if (f == NULL) {
        fprintf(stderr, FZ_NAME ": cannot open %s: %s\n", path, strerror(errno));
        return 1;
    }
    uint8_t *buf = NULL;
    size_t n = 0, cap = 0, k;
    do {
        if (cap - n < 4096) {
            uint8_t *p = realloc(buf, cap = cap * 2 + 4096);
            if (p == NULL) {
                fprintf(stderr, FZ_NAME ": out of memory reading %s\n", path);
                free(buf);
                fclose(f);
                return 1;
            }
            buf = p;
        }
        k = fread(buf + n, 1, cap - n, f);
        n += k;
    } while (k > 0);
    fclose(f);
    LLVMFuzzerTestOneInput(buf, n);
    free(buf);
    printf("replayed %s: ok\n", path);
    return 0;
}

typedef struct {
    double seconds;
    uint64_t iterations, seed; /* iterations 0: run for seconds */
    size_t max_len;
} fz_opts;

/* Read the command line into o (its fields hold the defaults). Files named
 * are replayed instead: returns the exit code then (or 2 on a bad option),
 * and -1 when the mutation loop should run. */
static int fz_parse(int argc, char **argv, fz_opts *o) {
    int replayed = 0, rc = 0;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--seconds") == 0 && i + 1 < argc) {
            o->seconds = atof(argv[++i]);
        } else if (strcmp(argv[i], "--iterations") == 0 && i + 1 < argc) {
            o->iterations = strtoull(argv[++i], NULL, 10);
        } else if (strcmp(argv[i], "--seed") == 0 && i + 1 < argc) {
            o->seed = strtoull(argv[++i], NULL, 10);
        } else if (strcmp(argv[i], "--max-len") == 0 && i + 1 < argc) {
            o->max_len = (size_t)strtoull(argv[++i], NULL, 10);
        } else if (argv[i][0] == '-') {
            fprintf(stderr,
                    "usage: %s [--seconds S] [--iterations N] [--seed N] "
                    "[--max-len N] [input-file...]\n",
                    argv[0]);
            return 2;
        } else {
            rc |= fz_replay(argv[i]);
            replayed = 1;
        }
    }
    if (replayed) return rc;
#ifdef PX_FUZZ_ASAN
    __sanitizer_set_death_callback(fz_dump);
#endif
    printf("seed %llu\n", (unsigned long long)o->seed);
    fflush(stdout);
    return -1;
}

/* Whether the loop is over after it iterations (the clock read every 64th). */
static int fz_done(const fz_opts *o, uint64_t it, double start) {
    return o->iterations ? it >= o->iterations
                         : (it % 64 == 0 && fz_now() - start >= o->seconds);
}

#endif /* PX_LIBFUZZER */
