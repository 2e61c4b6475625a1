/*
 * test_arena.c - tests of the arena part of the C core (csrc/arena.c)
 * without Python: segments, mappings, the slot table (one test per edge
 * case), fd passing and the claim word (claim against revoke, also from
 * two threads at once).
 *
 * tests/test_sanitizers.py builds it with AddressSanitizer and
 * UndefinedBehaviorSanitizer and runs each test on its own:
 *
 *   cc -std=c99 -D_GNU_SOURCE -g -fsanitize=address,undefined \
 *      -fno-sanitize-recover=all tests/c/test_arena.c csrc/arena.c \
 *      -o test_arena
 *   ./test_arena                 # every test
 *   ./test_arena --list          # their names
 *   ./test_arena NAME...         # only these
 *
 * Every check goes through the public API. Each test also checks that it
 * leaves no fd open. Exit status: 0 when every test asked for passed.
 */
#include "../../csrc/pyexec.h"

#include <dirent.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

/* ---- the shared harness: CHECK, CHECK_EQ, t_count_fds, HARNESS_MAIN --- */

#include "harness.h"


#define MIB (1024ULL * 1024ULL)

/* ---- segments and mappings -------------------------------------------- */

static void test_shm_new_bad_sizes(void) {
    CHECK_EQ(px_shm_new(0), -EINVAL);
    CHECK_EQ(px_shm_new(UINT64_MAX), -EINVAL);
    CHECK_EQ(px_shm_new((uint64_t)INT64_MAX + 1), -EINVAL);
}

static void test_shm_new_sealed_and_cloexec(void) {
    int fd = px_shm_new(1 * MIB);
    CHECK(fd >= 0);
    struct stat st;
    CHECK_EQ(fstat(fd, &st), 0);
    CHECK_EQ(st.st_size, 1 * MIB);
    CHECK(fcntl(fd, F_GETFD) & FD_CLOEXEC);
#ifdef __linux__
    int seals = fcntl(fd, F_GET_SEALS);
    CHECK(seals >= 0);
    CHECK(seals & F_SEAL_SHRINK);
    CHECK(seals & F_SEAL_GROW);
    CHECK(seals & F_SEAL_SEAL);
    CHECK(!(seals & F_SEAL_WRITE));
    /* The point of the seals: nobody can shrink it under a reader. */
    CHECK_EQ(ftruncate(fd, 4096), -1);
    CHECK_EQ(errno, EPERM);
    CHECK_EQ(ftruncate(fd, 2 * MIB), -1);
    CHECK_EQ(fcntl(fd, F_ADD_SEALS, F_SEAL_WRITE), -1);
#endif
    CHECK_EQ(px_close(fd), 0);
}

static void test_map_bad_arguments(void) {
    void *p = NULL;
    int fd = px_shm_new(8192);
    CHECK(fd >= 0);
    CHECK_EQ(px_map(fd, 0, 0, &p), -EINVAL);
    CHECK_EQ(px_map(fd, 8193, 0, &p), -EINVAL); /* past the end: would SIGBUS */
    CHECK_EQ(px_map(fd, 4096, 64, &p), -EINVAL); /* unknown flag */
    CHECK_EQ(px_map(fd, 4096, 0, NULL), -EINVAL);
    CHECK_EQ(px_map(-1, 4096, 0, &p), -EINVAL);
    CHECK(p == NULL);
    int pfd[2];
    CHECK_EQ(pipe(pfd), 0);
    close(pfd[1]);
    CHECK(px_map(pfd[0], 4096, 0, &p) < 0); /* a pipe has no size */
    close(pfd[0]);
    CHECK_EQ(px_close(fd), 0);
    CHECK(px_map(fd, 4096, 0, &p) == -EBADF); /* closed */
}

static void test_map_two_views_share_pages(void) {
    int fd = px_shm_new(1 * MIB);
    CHECK(fd >= 0);
    void *a = NULL, *b = NULL;
    CHECK_EQ(px_map(fd, 1 * MIB, PX_MAP_POPULATE, &a), 0);
    CHECK_EQ(px_map(fd, 1 * MIB, PX_MAP_POPULATE | PX_MAP_SEALED, &b), 0);
    CHECK_EQ(px_close(fd), 0); /* the mappings outlive the fd */
    CHECK(a != b);
    for (size_t i = 0; i < 1 * MIB; i++) CHECK_EQ(((char *)b)[i], 0);
    memset(a, 0x5a, 1 * MIB);
    CHECK_EQ(((unsigned char *)b)[0], 0x5a);
    CHECK_EQ(((unsigned char *)b)[1 * MIB - 1], 0x5a);
    CHECK_EQ(px_unmap(a, 1 * MIB), 0);
    CHECK_EQ(((unsigned char *)b)[12345], 0x5a);
    CHECK_EQ(px_unmap(b, 1 * MIB), 0);
}

static void test_map_sealed_refuses_unsealed(void) {
#ifdef __linux__
    int fd = memfd_create("t", MFD_CLOEXEC | MFD_ALLOW_SEALING);
    CHECK(fd >= 0);
    CHECK_EQ(ftruncate(fd, 4096), 0);
    void *p = NULL;
    CHECK_EQ(px_map(fd, 4096, PX_MAP_SEALED, &p), -EPERM);
    CHECK_EQ(px_map(fd, 4096, 0, &p), 0);
    CHECK_EQ(px_unmap(p, 4096), 0);
    close(fd);
#endif
}

static void test_unmap_and_close_accept_nothing(void) {
    CHECK_EQ(px_unmap(NULL, 4096), 0);
    CHECK_EQ(px_unmap(NULL, 0), 0);
    CHECK_EQ(px_close(-1), 0);
    px_slots_free(NULL);
    px_slots_reset(NULL);
    uint64_t st[3] = {9, 9, 9};
    px_slots_stats(NULL, st);
    CHECK_EQ(st[0] + st[1] + st[2], 0);
}

static void test_map_across_fork(void) {
    int fd = px_shm_new(64 * 1024);
    CHECK(fd >= 0);
    void *p = NULL;
    CHECK_EQ(px_map(fd, 64 * 1024, PX_MAP_POPULATE, &p), 0);
    pid_t pid = fork();
    CHECK(pid >= 0);
    if (pid == 0) {
        void *q = NULL;
        int code = px_map(fd, 64 * 1024, PX_MAP_SEALED, &q) == 0 ? 0 : 1;
        if (code == 0) memset(q, 7, 64 * 1024);
        _exit(code);
    }
    int status = 0;
    CHECK_EQ(waitpid(pid, &status, 0), pid);
    CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0);
    CHECK_EQ(((char *)p)[0], 7);
    CHECK_EQ(((char *)p)[64 * 1024 - 1], 7);
    CHECK_EQ(px_unmap(p, 64 * 1024), 0);
    CHECK_EQ(px_close(fd), 0);
}

/* Two mappings of one new segment of size bytes (its fd closed): what one
 * writes, the other sees. */
static void t_two_views(uint64_t size, unsigned char **a, unsigned char **b) {
    int fd = px_shm_new(size);
    CHECK(fd >= 0);
    CHECK_EQ(px_map(fd, size, 0, (void **)a), 0);
    CHECK_EQ(px_map(fd, size, 0, (void **)b), 0);
    CHECK_EQ(px_close(fd), 0);
}

static void test_populate(void) {
    const uint64_t size = 64 * 4096;
    unsigned char *a = NULL, *b = NULL;
    t_two_views(size, &a, &b);
    memset(a, 4, size);
    int rc = px_populate(b, size); /* must not change what is there */
    int zero = px_populate(b, 0);
    int null = px_populate(NULL, 4096);
    bool ok = b[0] == 4 && b[size - 1] == 4;
    px_unmap(a, size);
    px_unmap(b, size);
    CHECK_EQ(rc, 0);
    CHECK_EQ(zero, 0);
    CHECK_EQ(null, -EINVAL);
    CHECK(ok);
}

static void test_copy(void) {
    char a[100], b[100];
    memset(a, 3, sizeof(a));
    memset(b, 0, sizeof(b));
    px_copy(b, a, 0);
    CHECK_EQ(b[0], 0);
    px_copy(b, a, 100);
    CHECK_EQ(memcmp(a, b, 100), 0);
    px_copy(NULL, a, 0);
}

/* Into a malloc'ed buffer that starts and ends inside pages: every byte
 * copied, and the bytes around it (in the same pages) unchanged. */
static void test_copy_fresh(void) {
    const size_t n = 3 * 4096 + 123;
    unsigned char *src = malloc(n), *buf = malloc(n + 64);
    CHECK(src != NULL && buf != NULL);
    if (src == NULL || buf == NULL) {
        free(src);
        free(buf);
        return;
    }
    for (size_t i = 0; i < n; i++) src[i] = (unsigned char)(i * 7 + 1);
    memset(buf, 0xAB, n + 64);
    px_copy_fresh(buf + 17, src, n);
    CHECK_EQ(memcmp(buf + 17, src, n), 0);
    CHECK_EQ(buf[16], 0xAB);
    CHECK_EQ(buf[17 + n], 0xAB);
    px_copy_fresh(buf, src, 0); /* nothing */
    px_copy_fresh(NULL, src, 5);
    px_copy_fresh(buf, NULL, 5);
    CHECK_EQ(buf[0], 0xAB);
    free(src);
    free(buf);
}

/* Discarding pages of one view punches a hole the other view sees; bytes
 * outside whole pages are kept. */
static void test_discard(void) {
    const uint64_t size = 16 * 4096;
    unsigned char *a = NULL, *b = NULL;
    t_two_views(size, &a, &b);
    memset(a, 9, size);
    /* From the middle of page 1 to the middle of page 5: pages 2..4 go. */
    int rc = px_discard(b + 4096 + 100, 4 * 4096);
    int none = px_discard(b + 10, 100); /* no whole page inside */
    int null = px_discard(NULL, 4096);
    bool ok = a[4096 + 100] == 9 && a[2 * 4096 - 1] == 9 && a[5 * 4096] == 9;
#ifdef __linux__
    ok = ok && a[2 * 4096] == 0 && a[5 * 4096 - 1] == 0 && b[3 * 4096] == 0;
#endif
    ok = ok && a[10] == 9;
    px_unmap(a, size);
    px_unmap(b, size);
    CHECK_EQ(rc, 0);
    CHECK_EQ(none, 0);
    CHECK_EQ(null, 0);
    CHECK(ok);
}

/* ---- the slot table ---------------------------------------------------- */

static px_slots *t_slots(uint64_t size, uint32_t max) {
    px_slots *s = NULL;
    if (px_slots_new(&s, size, max) != 0) return NULL;
    return s;
}

static void test_slots_new_limits(void) {
    px_slots *s = NULL;
    CHECK_EQ(px_slots_new(&s, 0, 8), -EINVAL);
    CHECK_EQ(px_slots_new(&s, 4096, 0), -EINVAL);
    CHECK_EQ(px_slots_new(&s, 4096, PX_SLOTS_MAX + 1), -EINVAL);
    CHECK_EQ(px_slots_new(NULL, 4096, 8), -EINVAL);
    CHECK(s == NULL);
    CHECK_EQ(px_slots_new(&s, 4096, PX_SLOTS_MAX), 0);
    px_slots_free(s);
}

static void test_slots_size_zero(void) {
    px_slots *s = t_slots(1 * MIB, 8);
    CHECK(s != NULL);
    uint32_t id = 0;
    uint64_t off = 99;
    int rc = px_slots_alloc(s, 0, &id, &off);
    uint64_t st[3];
    px_slots_stats(s, st);
    px_slots_free(s);
    CHECK_EQ(rc, -EINVAL);
    CHECK_EQ(off, 99);
    CHECK_EQ(st[0], 0);
}

static void test_slots_over_half_is_overflow(void) {
    px_slots *s = t_slots(1 * MIB, 8);
    CHECK(s != NULL);
    uint32_t id = 0;
    uint64_t off = 0;
    int over = px_slots_alloc(s, 1 * MIB / 2 + 1, &id, &off);
    int over_all = px_slots_alloc(s, 2 * MIB, &id, &off);
    int huge = px_slots_alloc(s, UINT64_MAX, &id, &off);
    int half = px_slots_alloc(s, 1 * MIB / 2, &id, &off);
    px_slots_free(s);
    CHECK_EQ(over, -EFBIG);
    CHECK_EQ(over_all, -EFBIG);
    CHECK_EQ(huge, -EFBIG);
    CHECK_EQ(half, 0);
    CHECK_EQ(off, 0);
}

/* Every live slot inside the arena, aligned, and no two overlapping. */
static bool t_disjoint(const uint64_t *off, const uint64_t *len, int n, uint64_t size) {
    for (int i = 0; i < n; i++) {
        if (off[i] % PX_SLOT_ALIGN != 0 || off[i] + len[i] > size) return false;
        for (int j = 0; j < i; j++)
            if (off[i] < off[j] + len[j] && off[j] < off[i] + len[i]) return false;
    }
    return true;
}

static void test_slots_exhaust_arena(void) {
    enum { N = 64 };
    px_slots *s = t_slots(64 * 1000, 1000);
    CHECK(s != NULL);
    uint32_t ids[N];
    uint64_t off[N], len[N];
    int n = 0, rc = 0;
    while (n < N && (rc = px_slots_alloc(s, 1000, &ids[n], &off[n])) == 0) len[n++] = 1000;
    uint64_t st[3];
    px_slots_stats(s, st);
    bool ok = t_disjoint(off, len, n, 64 * 1000);
    /* 1000 rounds up to 1024: 62 fit in 64000 bytes, with 512 left. */
    int small = px_slots_alloc(s, 512, &ids[N - 1], &off[N - 1]);
    px_slots_free(s);
    CHECK_EQ(rc, -ENOSPC);
    CHECK_EQ(n, 62);
    CHECK(ok);
    CHECK_EQ(st[0], 62);
    CHECK_EQ(st[1], 62 * 1024);
    CHECK_EQ(st[2], 512);
    CHECK_EQ(small, 0);
}

static void test_slots_exhaust_ids(void) {
    px_slots *s = t_slots(1 * MIB, 3);
    CHECK(s != NULL);
    uint32_t id[4];
    uint64_t off[4];
    int rc[4];
    for (int i = 0; i < 4; i++) rc[i] = px_slots_alloc(s, 64, &id[i], &off[i]);
    int rel = px_slots_release(s, id[1]);
    int again = px_slots_alloc(s, 64, &id[3], &off[3]);
    px_slots_free(s);
    CHECK(rc[0] == 0 && rc[1] == 0 && rc[2] == 0);
    CHECK_EQ(rc[3], -ENOSPC);
    CHECK_EQ(rel, 0);
    CHECK_EQ(again, 0);
    CHECK(id[3] != id[1]); /* same index, new generation */
    CHECK_EQ(off[3], off[1]);
}

static void test_slots_release_out_of_order(void) {
    enum { N = 8 };
    px_slots *s = t_slots(N * 4096, 64);
    CHECK(s != NULL);
    uint32_t id[N];
    uint64_t off[N];
    int bad = 0;
    for (int i = 0; i < N; i++) bad |= px_slots_alloc(s, 4096, &id[i], &off[i]);
    uint32_t x;
    uint64_t xo;
    int full = px_slots_alloc(s, 64, &x, &xo);
    /* Release 5, 2, 3 (2 and 3 make a hole of 8192), then 7. */
    bad |= px_slots_release(s, id[5]);
    bad |= px_slots_release(s, id[2]);
    bad |= px_slots_release(s, id[3]);
    bad |= px_slots_release(s, id[7]);
    uint32_t big;
    uint64_t big_off = 1;
    int rc_big = px_slots_alloc(s, 8192, &big, &big_off);
    uint32_t a, b;
    uint64_t a_off = 1, b_off = 1;
    int rc_a = px_slots_alloc(s, 4096, &a, &a_off);
    int rc_b = px_slots_alloc(s, 4096, &b, &b_off);
    uint64_t st[3];
    px_slots_stats(s, st);
    px_slots_free(s);
    CHECK_EQ(bad, 0);
    CHECK_EQ(full, -ENOSPC);
    CHECK_EQ(rc_big, 0);
    CHECK_EQ(big_off, off[2]); /* the coalesced hole */
    CHECK_EQ(rc_a, 0);
    CHECK_EQ(a_off, off[5]);
    CHECK_EQ(rc_b, 0);
    CHECK_EQ(b_off, off[7]);
    CHECK_EQ(st[0], 7);
    CHECK_EQ(st[2], 0);
}

static void test_slots_double_release(void) {
    px_slots *s = t_slots(1 * MIB, 8);
    CHECK(s != NULL);
    uint32_t a, b;
    uint64_t ao, bo;
    int rc = px_slots_alloc(s, 100, &a, &ao) | px_slots_alloc(s, 100, &b, &bo);
    int first = px_slots_release(s, a);
    int second = px_slots_release(s, a);
    /* The index of a is handed out again: the old id still must not free it. */
    uint32_t c;
    uint64_t co;
    int rc_c = px_slots_alloc(s, 100, &c, &co);
    int stale = px_slots_release(s, a);
    uint64_t st[3];
    px_slots_stats(s, st);
    int rel_b = px_slots_release(s, b);
    int rel_c = px_slots_release(s, c);
    px_slots_free(s);
    CHECK_EQ(rc, 0);
    CHECK_EQ(first, 0);
    CHECK_EQ(second, -EINVAL);
    CHECK_EQ(rc_c, 0);
    CHECK_EQ((c & 0xFFFF), (a & 0xFFFF));
    CHECK(c != a);
    CHECK_EQ(stale, -EINVAL);
    CHECK_EQ(st[0], 2);
    CHECK_EQ(rel_b, 0);
    CHECK_EQ(rel_c, 0);
}

static void test_slots_bad_ids(void) {
    px_slots *s = t_slots(1 * MIB, 8);
    CHECK(s != NULL);
    uint32_t a;
    uint64_t ao;
    int rc = px_slots_alloc(s, 100, &a, &ao);
    int r0 = px_slots_release(s, 0);
    int r1 = px_slots_release(s, 8);                 /* index past the table */
    int r2 = px_slots_release(s, 0xFFFFFFFFu);
    int r3 = px_slots_release(s, a ^ 0x10000u);      /* wrong generation */
    int r4 = px_slots_release(s, (a & 0xFFFF0000u) | 1); /* a free index */
    int r5 = px_slots_release(NULL, a);
    uint64_t st[3];
    px_slots_stats(s, st);
    int ok = px_slots_release(s, a);
    px_slots_free(s);
    CHECK_EQ(rc, 0);
    CHECK(a != 0);
    CHECK_EQ(r0, -EINVAL);
    CHECK_EQ(r1, -EINVAL);
    CHECK_EQ(r2, -EINVAL);
    CHECK_EQ(r3, -EINVAL);
    CHECK_EQ(r4, -EINVAL);
    CHECK_EQ(r5, -EINVAL);
    CHECK_EQ(st[0], 1);
    CHECK_EQ(ok, 0);
}

static void test_slots_release_many(void) {
    px_slots *s = t_slots(1 * MIB, 8);
    CHECK(s != NULL);
    uint32_t ids[5];
    uint64_t off;
    int rc = 0;
    for (int i = 0; i < 3; i++) rc |= px_slots_alloc(s, 1000, &ids[i], &off);
    ids[3] = ids[0]; /* a double release within one message */
    ids[4] = 12345;
    int bad = px_slots_release_many(s, ids, 5);
    uint64_t st[3];
    px_slots_stats(s, st);
    int none = px_slots_release_many(s, NULL, 0);
    px_slots_free(s);
    CHECK_EQ(rc, 0);
    CHECK_EQ(bad, 2);
    CHECK_EQ(st[0], 0);
    CHECK_EQ(st[1], 0);
    CHECK_EQ(st[2], 1 * MIB);
    CHECK_EQ(none, 0);
}

static void test_slots_reset_invalidates(void) {
    px_slots *s = t_slots(1 * MIB, 4);
    CHECK(s != NULL);
    uint32_t a, b, c;
    uint64_t ao, bo, co;
    int rc = px_slots_alloc(s, 1000, &a, &ao) | px_slots_alloc(s, 1000, &b, &bo);
    px_slots_reset(s);
    uint64_t st[3];
    px_slots_stats(s, st);
    int ra = px_slots_release(s, a);
    int rc_c = px_slots_alloc(s, 1000, &c, &co);
    int rb = px_slots_release(s, b);
    px_slots_free(s);
    CHECK_EQ(rc, 0);
    CHECK_EQ(st[0], 0);
    CHECK_EQ(st[2], 1 * MIB);
    CHECK_EQ(ra, -EINVAL);
    CHECK_EQ(rc_c, 0);
    CHECK_EQ(co, 0);
    CHECK(c != a);
    CHECK_EQ(rb, -EINVAL);
}

static void test_slots_alignment(void) {
    px_slots *s = t_slots(1 * MIB, 16);
    CHECK(s != NULL);
    uint64_t off[4], len[4] = {1, 63, 65, 129};
    uint32_t id;
    int rc = 0;
    for (int i = 0; i < 4; i++) rc |= px_slots_alloc(s, len[i], &id, &off[i]);
    px_slots_free(s);
    CHECK_EQ(rc, 0);
    CHECK_EQ(off[0], 0);
    CHECK_EQ(off[1], 64);
    CHECK_EQ(off[2], 128);
    CHECK_EQ(off[3], 256);
}

/* ---- fd passing -------------------------------------------------------- */

static void test_send_fds_limits(void) {
    int sv[2];
    CHECK_EQ(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
    int fds[PX_FDS_MAX + 1];
    for (int i = 0; i < PX_FDS_MAX + 1; i++) fds[i] = sv[0];
    int64_t too_many = px_send_fds(sv[0], fds, PX_FDS_MAX + 1, "x", 1);
    int64_t negative = px_send_fds(sv[0], fds, -1, "x", 1);
    int64_t no_data = px_send_fds(sv[0], fds, 1, "x", 0);
    int64_t null_fds = px_send_fds(sv[0], NULL, 1, "x", 1);
    char buf[4];
    int got[4], n = 7;
    int64_t bad_max = px_recv_fds(sv[1], buf, 4, got, PX_FDS_MAX + 1, &n);
    int64_t zero_len = px_recv_fds(sv[1], buf, 0, got, 1, &n);
    close(sv[0]);
    close(sv[1]);
    CHECK_EQ(too_many, -EINVAL);
    CHECK_EQ(negative, -EINVAL);
    CHECK_EQ(no_data, -EINVAL);
    CHECK_EQ(null_fds, -EINVAL);
    CHECK_EQ(bad_max, -EINVAL);
    CHECK_EQ(zero_len, -EINVAL);
    CHECK_EQ(n, 0);
}

static void test_send_recv_max_fds(void) {
    int sv[2];
    CHECK_EQ(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
    int seg = px_shm_new(4096);
    CHECK(seg >= 0);
    int fds[PX_FDS_MAX];
    for (int i = 0; i < PX_FDS_MAX; i++) fds[i] = seg;
    int64_t sent = px_send_fds(sv[0], fds, PX_FDS_MAX, "hello", 5);
    char buf[16];
    int got[PX_FDS_MAX], n = 0;
    int64_t rcvd = px_recv_fds(sv[1], buf, sizeof(buf), got, PX_FDS_MAX, &n);
    bool cloexec = true, same = true;
    struct stat a, b;
    fstat(seg, &a);
    for (int i = 0; i < n; i++) {
        if (!(fcntl(got[i], F_GETFD) & FD_CLOEXEC)) cloexec = false;
        if (fstat(got[i], &b) != 0 || b.st_ino != a.st_ino) same = false;
        close(got[i]);
    }
    close(seg);
    close(sv[0]);
    close(sv[1]);
    CHECK_EQ(sent, 5);
    CHECK_EQ(rcvd, 5);
    CHECK_EQ(memcmp(buf, "hello", 5), 0);
    CHECK_EQ(n, PX_FDS_MAX);
    CHECK(cloexec);
    CHECK(same);
}

static void test_recv_fds_truncated(void) {
    int sv[2];
    CHECK_EQ(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
    int fds[3] = {sv[0], sv[0], sv[0]};
    int fds_before = t_count_fds();
    int64_t sent = px_send_fds(sv[0], fds, 3, "abc", 3);
    char buf[8];
    int got[3] = {-1, -1, -1}, n = 9;
    int64_t rcvd = px_recv_fds(sv[1], buf, sizeof(buf), got, 1, &n);
    int fds_after = t_count_fds(); /* none of the three stayed open */
    /* Data only (max 0) while fds come: also a truncation. */
    int64_t sent2 = px_send_fds(sv[0], fds, 2, "d", 1);
    int64_t rcvd2 = px_recv_fds(sv[1], buf, sizeof(buf), NULL, 0, &n);
    int fds_after2 = t_count_fds();
    close(sv[0]);
    close(sv[1]);
    CHECK_EQ(sent, 3);
    CHECK_EQ(rcvd, -EMSGSIZE);
    CHECK_EQ(n, 0);
    CHECK_EQ(fds_after, fds_before);
    CHECK_EQ(sent2, 1);
    CHECK_EQ(rcvd2, -EMSGSIZE);
    CHECK_EQ(fds_after2, fds_before);
}

static void test_recv_fds_data_only_and_eof(void) {
    int sv[2];
    CHECK_EQ(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
    int64_t sent = px_send_fds(sv[0], NULL, 0, "xyz", 3);
    char buf[8];
    int got[2], n = 5;
    int64_t rcvd = px_recv_fds(sv[1], buf, sizeof(buf), got, 2, &n);
    int n1 = n;
    close(sv[0]);
    int64_t eof = px_recv_fds(sv[1], buf, sizeof(buf), got, 2, &n);
    close(sv[1]);
    CHECK_EQ(sent, 3);
    CHECK_EQ(rcvd, 3);
    CHECK_EQ(n1, 0);
    CHECK_EQ(eof, 0);
    CHECK_EQ(n, 0);
}

static void test_send_fds_peer_gone(void) {
    int sv[2];
    CHECK_EQ(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
    close(sv[1]);
    int64_t rc = px_send_fds(sv[0], &sv[0], 1, "x", 1); /* no SIGPIPE either */
    close(sv[0]);
    CHECK_EQ(rc, -EPIPE);
}

/* The overflow path end to end: a buffer over half the arena is refused by
 * the table, goes into its own sealed segment, crosses a socket, is mapped
 * by the receiver, and its fd closed at once. */
static void test_overflow_path(void) {
    const uint64_t arena = 1 * MIB, big = 600 * 1024;
    px_slots *s = t_slots(arena, 8);
    CHECK(s != NULL);
    uint32_t id;
    uint64_t off;
    int rc = px_slots_alloc(s, big, &id, &off);
    px_slots_free(s);
    CHECK_EQ(rc, -EFBIG);
    int seg = px_shm_new(big);
    CHECK(seg >= 0);
    void *w = NULL;
    CHECK_EQ(px_map(seg, big, PX_MAP_POPULATE, &w), 0);
    for (uint64_t i = 0; i < big; i++) ((unsigned char *)w)[i] = (unsigned char)(i * 7);
    CHECK_EQ(px_unmap(w, big), 0);
    int sv[2];
    CHECK_EQ(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
    int64_t sent = px_send_fds(sv[0], &seg, 1, "o", 1);
    px_close(seg);
    char c;
    int got = -1, n = 0;
    int64_t rcvd = px_recv_fds(sv[1], &c, 1, &got, 1, &n);
    close(sv[0]);
    close(sv[1]);
    CHECK_EQ(sent, 1);
    CHECK_EQ(rcvd, 1);
    CHECK_EQ(n, 1);
    void *r = NULL;
    rc = px_map(got, big, PX_MAP_POPULATE | PX_MAP_SEALED, &r);
    px_close(got);
    CHECK_EQ(rc, 0);
    bool same = true;
    for (uint64_t i = 0; i < big; i++)
        if (((unsigned char *)r)[i] != (unsigned char)(i * 7)) same = false;
    CHECK_EQ(px_unmap(r, big), 0);
    CHECK(same);
}

/* ---- claims ------------------------------------------------------------ */

#define T_WORD(claimed, skip) (((uint64_t)(skip) << 32) | (uint32_t)(claimed))

static void test_claim_then_revoke(void) {
    /* Through a real segment, two mappings: as the worker and parent see it. */
    int fd = px_shm_new(PX_CLAIM_SIZE);
    CHECK(fd >= 0);
    void *worker = NULL, *parent = NULL;
    CHECK_EQ(px_map(fd, PX_CLAIM_SIZE, PX_MAP_SEALED, &worker), 0);
    CHECK_EQ(px_map(fd, PX_CLAIM_SIZE, PX_MAP_SEALED, &parent), 0);
    CHECK_EQ(px_close(fd), 0);
    CHECK_EQ(px_claim_peek(parent), 0);
    CHECK_EQ(px_claim(worker, 1), 1);
    CHECK_EQ(px_claim(worker, 2), 1);
    CHECK_EQ(px_claim_peek(parent), T_WORD(2, 2));
    /* Calls 3..6 sent; the worker runs 2: 3..6 are revoked. */
    CHECK_EQ(px_revoke(parent, 6), 2);
    CHECK_EQ(px_claim_peek(worker), T_WORD(2, 6));
    for (uint32_t k = 3; k <= 6; k++) CHECK_EQ(px_claim(worker, k), 0);
    CHECK_EQ(px_claim_peek(parent), T_WORD(2, 6)); /* a refusal changes nothing */
    /* Calls sent after the revoke run as usual. */
    CHECK_EQ(px_claim(worker, 7), 1);
    CHECK_EQ(px_claim_peek(parent), T_WORD(7, 7));
    /* A revoke with nothing beyond the claimed call revokes nothing. */
    CHECK_EQ(px_revoke(parent, 7), 7);
    CHECK_EQ(px_claim(worker, 8), 1);
    /* The head not yet claimed is revoked too. */
    CHECK_EQ(px_revoke(parent, 10), 8);
    CHECK_EQ(px_claim(worker, 9), 0);
    CHECK_EQ(px_claim(worker, 10), 0);
    CHECK_EQ(px_claim(worker, 11), 1);
    CHECK_EQ(px_unmap(worker, PX_CLAIM_SIZE), 0);
    CHECK_EQ(px_unmap(parent, PX_CLAIM_SIZE), 0);
}

static void test_claim_wraps(void) {
    /* Numbers are modulo 2^32: a revoke across the wrap, claims across it. */
    uint64_t word = T_WORD(0xFFFFFFFDu, 0xFFFFFFFDu);
    CHECK_EQ(px_claim(&word, 0xFFFFFFFEu), 1);
    CHECK_EQ(px_revoke(&word, 2), 0xFFFFFFFEu);
    CHECK_EQ(px_claim(&word, 0xFFFFFFFFu), 0);
    CHECK_EQ(px_claim(&word, 0), 0);
    CHECK_EQ(px_claim(&word, 1), 0);
    CHECK_EQ(px_claim(&word, 2), 0);
    CHECK_EQ(px_claim(&word, 3), 1);
    CHECK_EQ(px_claim_peek(&word), T_WORD(3, 3));
}

static void test_claim_drags_skip(void) {
    /* A SKIP behind the claim is brought along to it, so it never falls 2^31
     * behind (where it would look ahead, modulo 2^32, and revoke). */
    uint64_t word = T_WORD(100, 3);
    CHECK_EQ(px_claim(&word, 101), 1);
    CHECK_EQ(px_claim_peek(&word), T_WORD(101, 101));
    for (uint32_t k = 0x7FFFFF00u; k != 0x80000100u; k++) CHECK_EQ(px_claim(&word, k), 1);
    CHECK_EQ(px_claim_peek(&word), T_WORD(0x800000FFu, 0x800000FFu));
    /* A SKIP ahead of the claim is kept. */
    word = T_WORD(10, 10);
    CHECK_EQ(px_revoke(&word, 12), 10);
    CHECK_EQ(px_claim(&word, 11), 0);
    CHECK_EQ(px_claim(&word, 12), 0);
    CHECK_EQ(px_claim(&word, 13), 1);
    CHECK_EQ(px_claim_peek(&word), T_WORD(13, 13));
}

/* Two threads, as worker and parent: the worker claims 1..T_CALLS in order as
 * they are "sent"; the parent sends in bursts and revokes everything beyond
 * the claimed call now and then. Every call must end claimed or revoked,
 * never both, never neither. */
#define T_CALLS 200000u

typedef struct {
    uint64_t word;
    uint32_t sent;      /* atomic: calls sent so far */
    uint8_t *claimed;   /* [seq]: the worker's px_claim said 1 */
} t_race;

static void *t_claimer(void *arg) {
    t_race *r = (t_race *)arg;
    for (uint32_t seq = 1; seq <= T_CALLS; seq++) {
        while (__atomic_load_n(&r->sent, __ATOMIC_ACQUIRE) < seq) {
        }
        r->claimed[seq] = (uint8_t)px_claim(&r->word, seq);
    }
    return NULL;
}

static void test_claim_against_revoke_two_threads(void) {
    t_race r;
    memset(&r, 0, sizeof(r));
    r.claimed = calloc(T_CALLS + 1, 1);
    uint8_t *revoked = calloc(T_CALLS + 1, 1);
    CHECK(r.claimed != NULL && revoked != NULL);
    pthread_t t;
    CHECK_EQ(pthread_create(&t, NULL, t_claimer, &r), 0);
    uint64_t seed = 0x9E3779B97F4A7C15ULL;
    uint32_t sent = 0, revokes = 0;
    while (sent < T_CALLS) {
        seed ^= seed << 13, seed ^= seed >> 7, seed ^= seed << 17;
        uint32_t burst = 1 + (uint32_t)(seed % 8);
        if (burst > T_CALLS - sent) burst = T_CALLS - sent;
        sent += burst;
        __atomic_store_n(&r.sent, sent, __ATOMIC_RELEASE);
        if (seed >> 60 == 0) { /* one time in 16: revoke what is queued */
            uint32_t c = px_revoke(&r.word, sent);
            CHECK(c <= sent);
            for (uint32_t k = c + 1; k <= sent; k++) revoked[k] = 1;
            revokes++;
        }
    }
    CHECK_EQ(pthread_join(t, NULL), 0);
    uint32_t bad = 0, ran = 0;
    for (uint32_t k = 1; k <= T_CALLS; k++) {
        if (r.claimed[k] == revoked[k]) bad++;
        ran += r.claimed[k];
    }
    free(r.claimed);
    free(revoked);
    CHECK_EQ(bad, 0);
    CHECK(revokes > 0);
    CHECK(ran > 0 && ran < T_CALLS);
}

#define TESTS(X)                                        \
    X(shm_new_bad_sizes)                                \
    X(shm_new_sealed_and_cloexec)                       \
    X(map_bad_arguments)                                \
    X(map_two_views_share_pages)                        \
    X(map_sealed_refuses_unsealed)                      \
    X(unmap_and_close_accept_nothing)                   \
    X(map_across_fork)                                  \
    X(populate)                                         \
    X(copy)                                             \
    X(copy_fresh)                                       \
    X(discard)                                          \
    X(slots_new_limits)                                 \
    X(slots_size_zero)                                  \
    X(slots_over_half_is_overflow)                      \
    X(slots_exhaust_arena)                              \
    X(slots_exhaust_ids)                                \
    X(slots_release_out_of_order)                       \
    X(slots_double_release)                             \
    X(slots_bad_ids)                                    \
    X(slots_release_many)                               \
    X(slots_reset_invalidates)                          \
    X(slots_alignment)                                  \
    X(send_fds_limits)                                  \
    X(send_recv_max_fds)                                \
    X(recv_fds_truncated)                               \
    X(recv_fds_data_only_and_eof)                       \
    X(send_fds_peer_gone)                               \
    X(overflow_path)                                  \
    X(claim_then_revoke)                              \
    X(claim_wraps)                                    \
    X(claim_drags_skip)                               \
    X(claim_against_revoke_two_threads)

HARNESS_MAIN(TESTS)
