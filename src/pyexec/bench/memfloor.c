/* mem_floor MIB REPS: what moving one buffer of MIB MiB costs this machine, the
   floor under the big-payload rows (big-array, big-bytes, array-roundtrip).
   Prints one line per measure, "name milliseconds-per-buffer" (the median of
   REPS), each a copy of the same warm source buffer into:

     copy_warm       memory this process wrote before (a plain memcpy)
     pwrite_warm     a shared-memory segment whose pages exist (pwrite(2))
     pwrite_fresh    a new segment (its pages are allocated by the write)
     copy_fresh      new private memory (mmap'ed; its pages faulted in first by
                     one MADV_POPULATE_WRITE where the kernel has it, as
                     pyexec does, else by the copy)
     pwrite_fresh_2p two processes doing pwrite_fresh at once: wall time per
                     buffer over both, so half of pwrite_fresh when two cores
                     double the throughput, pwrite_fresh or more when they do not

   Linux (memfd_create); exits 2 when a segment or mapping cannot be made. */
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static double now_ms(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec * 1e3 + t.tv_nsec / 1e6;
}

static int cmp(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static double median(double *v, int n) {
    qsort(v, (size_t)n, sizeof(*v), cmp);
    return n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}

/* All of src into fd at offset 0; 0 or -1. */
static int pwrite_all(int fd, const char *src, size_t n) {
    size_t done = 0;
    while (done < n) {
        ssize_t k = pwrite(fd, src + done, n - done, (off_t)done);
        if (k <= 0) return -1;
        done += (size_t)k;
    }
    return 0;
}

/* A new segment of n bytes with src written into it: the ms it took, or -1.
   fd_out gets the fd (kept open by the caller, as a held result would be). */
static double fresh_segment(const char *src, size_t n, int *fd_out) {
    int fd = memfd_create("mem_floor", MFD_CLOEXEC);
    if (fd < 0 || ftruncate(fd, (off_t)n) < 0) return -1;
    double t = now_ms();
    if (pwrite_all(fd, src, n) < 0) return -1;
    t = now_ms() - t;
    *fd_out = fd;
    return t;
}

int main(int argc, char **argv) {
    long mib = argc > 1 ? atol(argv[1]) : 8;
    int reps = argc > 2 ? atoi(argv[2]) : 10;
    if (mib < 1 || mib > 4096 || reps < 1 || reps > 1000) return 2;
    size_t n = (size_t)mib << 20;
    double *v = calloc((size_t)reps, sizeof(double));
    int *fds = calloc((size_t)reps, sizeof(int));
    char *src = malloc(n), *dst = malloc(n);
    if (v == NULL || fds == NULL || src == NULL || dst == NULL) return 2;
    memset(src, 7, n);
    memset(dst, 1, n);

    for (int i = 0; i < reps; i++) {
        double t = now_ms();
        memcpy(dst, src, n);
        v[i] = now_ms() - t;
        if (dst[n - 1] != src[n - 1]) return 2; /* keeps the copy */
    }
    printf("copy_warm %.3f\n", median(v, reps));

    int warm = memfd_create("mem_floor", MFD_CLOEXEC);
    if (warm < 0 || ftruncate(warm, (off_t)n) < 0 || pwrite_all(warm, src, n) < 0) return 2;
    for (int i = 0; i < reps; i++) {
        double t = now_ms();
        if (pwrite_all(warm, src, n) < 0) return 2;
        v[i] = now_ms() - t;
    }
    close(warm);
    printf("pwrite_warm %.3f\n", median(v, reps));

    /* Held meanwhile, as big-array's results are: no page is freed and reused. */
    for (int i = 0; i < reps; i++)
        if ((v[i] = fresh_segment(src, n, &fds[i])) < 0) return 2;
    for (int i = 0; i < reps; i++) close(fds[i]);
    printf("pwrite_fresh %.3f\n", median(v, reps));

    char **maps = calloc((size_t)reps, sizeof(char *));
    if (maps == NULL) return 2;
    for (int i = 0; i < reps; i++) {
        maps[i] = mmap(NULL, n, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (maps[i] == MAP_FAILED) return 2;
        double t = now_ms();
#ifdef MADV_POPULATE_WRITE
        (void)madvise(maps[i], n, MADV_POPULATE_WRITE);
#endif
        memcpy(maps[i], src, n);
        v[i] = now_ms() - t;
    }
    for (int i = 0; i < reps; i++) munmap(maps[i], n);
    printf("copy_fresh %.3f\n", median(v, reps));

    /* Two processes, each reps fresh segments, started together. */
    fflush(stdout);
    double t0 = now_ms();
    pid_t kid = fork();
    if (kid < 0) return 2;
    for (int i = 0; i < reps; i++)
        if (fresh_segment(src, n, &fds[i]) < 0) _exit(2);
    for (int i = 0; i < reps; i++) close(fds[i]);
    if (kid == 0) _exit(0);
    int status = 0;
    if (waitpid(kid, &status, 0) < 0 || !WIFEXITED(status) || WEXITSTATUS(status)) return 2;
    printf("pwrite_fresh_2p %.3f\n", (now_ms() - t0) / (2.0 * reps));
    return 0;
}
