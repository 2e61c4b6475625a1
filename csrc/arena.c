/*
 * arena.c - shared memory for big pickle buffers: segments, mappings, the
 * slot allocator of an arena, and fd passing (SCM_RIGHTS).
 *
 * Facts this code guards against (measured or documented):
 *   - truncating a mapped file SIGBUSes whoever touches the lost pages: a
 *     segment is sealed against shrink and grow (Linux), px_map refuses a
 *     file shorter than the mapping, and PX_MAP_SEALED refuses an unsealed
 *     one (a segment from the other process);
 *   - F_SEAL_WRITE cannot be added while a writable shared mapping exists,
 *     so segments are never write-sealed; ownership (a slot is not reused
 *     before its release) is what keeps a held view unchanged;
 *   - SCM_RIGHTS carries at most SCM_MAX_FD (253) fds a message, and a
 *     receiver whose ancillary buffer is too small (or who is at its fd
 *     limit) loses fds silently but for MSG_CTRUNC: checked, and every fd
 *     that did come is closed;
 *   - the first touch of a page costs far more than a copy into it on a VM:
 *     PX_MAP_POPULATE faults everything in at map time (MAP_POPULATE on a
 *     shared mapping read-faults, which for shmem allocates the page and
 *     maps it writable, as no write-notify is needed);
 *   - the slot table lives in one process (the sender of a direction), so it
 *     needs no lock shared between processes; a caller that uses one table
 *     from several threads serializes the calls itself.
 */
#include "pyexec.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <time.h>
#include <unistd.h>

/* ---- segments and mappings -------------------------------------------- */

#if defined(__linux__) && defined(MFD_CLOEXEC) && defined(F_ADD_SEALS)
#define PX_HAVE_MEMFD 1
#endif

/* An shm_open'ed segment, unlinked before it is returned: the name exists
 * for a few microseconds only. Returns the fd or -errno. */
static int shm_anonymous(void) {
    static unsigned counter;
    char name[64];
    for (int tries = 0; tries < 64; tries++) {
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        snprintf(name, sizeof(name), "/pyexec-%d-%u-%ld", (int)getpid(), counter++,
                 (long)ts.tv_nsec);
        int fd = shm_open(name, O_RDWR | O_CREAT | O_EXCL, 0600);
        if (fd >= 0) {
            shm_unlink(name);
            int cur = fcntl(fd, F_GETFD);
            if (cur < 0 || fcntl(fd, F_SETFD, cur | FD_CLOEXEC) < 0) {
                int rc = -errno;
                close(fd);
                return rc;
            }
            return fd;
        }
        if (errno != EEXIST) return -errno;
    }
    return -EEXIST;
}

int px_shm_new(uint64_t size) {
    int fd = -1, rc;
    if (size == 0 || size > (uint64_t)INT64_MAX || (uint64_t)(off_t)size != size)
        return -EINVAL;
#ifdef PX_HAVE_MEMFD
    fd = memfd_create("pyexec-arena", MFD_CLOEXEC | MFD_ALLOW_SEALING);
    if (fd < 0 && errno != ENOSYS) return -errno;
#endif
    if (fd < 0 && (fd = shm_anonymous()) < 0) return fd;
    if (ftruncate(fd, (off_t)size) < 0) {
        rc = -errno;
        goto out;
    }
#ifdef PX_HAVE_MEMFD
    /* An shm_open fallback on Linux cannot be sealed (EINVAL): fine. */
    if (fcntl(fd, F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL) < 0 &&
        errno != EINVAL) {
        rc = -errno;
        goto out;
    }
#endif
    return fd;
out:
    close(fd);
    return rc;
}

int px_map(int fd, uint64_t size, int flags, void **out) {
    struct stat st;
    if (out == NULL || size == 0 || size > (uint64_t)SIZE_MAX || fd < 0) return -EINVAL;
    if ((flags & ~(PX_MAP_POPULATE | PX_MAP_SEALED)) != 0) return -EINVAL;
    if (fstat(fd, &st) < 0) return -errno;
    if (st.st_size < 0 || (uint64_t)st.st_size < size) return -EINVAL;
#ifdef PX_HAVE_MEMFD
    if (flags & PX_MAP_SEALED) {
        int seals = fcntl(fd, F_GET_SEALS);
        if (seals < 0 || !(seals & F_SEAL_SHRINK)) return -EPERM;
    }
#endif
    int mflags = MAP_SHARED;
#ifdef MAP_POPULATE
    if (flags & PX_MAP_POPULATE) mflags |= MAP_POPULATE;
#endif
    void *p = mmap(NULL, (size_t)size, PROT_READ | PROT_WRITE, mflags, fd, 0);
    if (p == MAP_FAILED) return -errno;
#ifndef MAP_POPULATE
    if (flags & PX_MAP_POPULATE) {
        /* Read-touch every page: a write would race with the other side. */
        long page = sysconf(_SC_PAGESIZE);
        volatile const char *c = p;
        for (uint64_t i = 0; i < size; i += (uint64_t)(page > 0 ? page : 4096)) (void)c[i];
    }
#endif
    *out = p;
    return 0;
}

int px_populate(void *addr, uint64_t size) {
    if (addr == NULL || size == 0 || size > (uint64_t)SIZE_MAX) return size == 0 ? 0 : -EINVAL;
#if defined(__linux__) && defined(MADV_POPULATE_WRITE)
    if (madvise(addr, (size_t)size, MADV_POPULATE_WRITE) == 0) return 0;
    if (errno != EINVAL) return -errno; /* EINVAL: a kernel before 5.14 */
#endif
    long page = sysconf(_SC_PAGESIZE);
    volatile const char *c = addr;
    for (uint64_t i = 0; i < size; i += (uint64_t)(page > 0 ? page : 4096)) (void)c[i];
    return 0;
}

int px_unmap(void *addr, uint64_t size) {
    if (addr == NULL || size == 0) return 0;
    if (size > (uint64_t)SIZE_MAX) return -EINVAL;
    return munmap(addr, (size_t)size) < 0 ? -errno : 0;
}

int px_close(int fd) {
    if (fd < 0) return 0;
    /* Not retried on EINTR: the fd is gone either way (Linux, POSIX 2024). */
    return close(fd) < 0 && errno != EINTR ? -errno : 0;
}

void px_copy(void *dst, const void *src, uint64_t n) {
    if (n > 0 && dst != NULL && src != NULL) memcpy(dst, src, (size_t)n);
}

void px_copy_fresh(void *dst, const void *src, uint64_t n) {
    if (n == 0 || dst == NULL || src == NULL || n > (uint64_t)SIZE_MAX) return;
#if defined(__linux__) && defined(MADV_POPULATE_WRITE)
    long page = sysconf(_SC_PAGESIZE);
    uintptr_t pg = (uintptr_t)(page > 0 ? page : 4096);
    uintptr_t start = (uintptr_t)dst & ~(pg - 1);
    if ((uintptr_t)dst <= UINTPTR_MAX - pg && (uintptr_t)n <= UINTPTR_MAX - pg - (uintptr_t)dst) {
        uintptr_t end = ((uintptr_t)dst + (uintptr_t)n + pg - 1) & ~(pg - 1);
        (void)madvise((void *)start, end - start, MADV_POPULATE_WRITE); /* a hint */
    }
#endif
    memcpy(dst, src, (size_t)n);
}

int px_discard(void *addr, uint64_t size) {
#if defined(__linux__) && defined(MADV_REMOVE)
    long page = sysconf(_SC_PAGESIZE);
    uintptr_t pg = (uintptr_t)(page > 0 ? page : 4096);
    uintptr_t start = (uintptr_t)addr, end;
    if (addr == NULL || size == 0 || size > (uint64_t)(UINTPTR_MAX - start)) return 0;
    end = (start + (uintptr_t)size) & ~(pg - 1);
    start = (start + pg - 1) & ~(pg - 1);
    if (end <= start) return 0;
    return madvise((void *)start, end - start, MADV_REMOVE) < 0 ? -errno : 0;
#else
    (void)addr;
    (void)size;
    return 0;
#endif
}

/* ---- the slot table --------------------------------------------------- */

/* A slot id: the index in the table in its low 16 bits, the index's
 * generation (1..65535, bumped at each release) in the high 16. A stale id
 * (released, or from before a reset) no longer matches its generation. */
#define ID_INDEX(id) ((id) & 0xFFFFu)
#define ID_GEN(id) ((id) >> 16)

typedef struct {
    uint64_t offset, size; /* size: aligned; 0 when free */
    uint16_t gen;
} slot_rec;

struct px_slots {
    uint64_t arena_size;
    uint32_t max;
    uint32_t live;       /* entries in order[] */
    uint64_t bytes;      /* sum of live sizes */
    slot_rec *rec;       /* [max] */
    uint32_t *order;     /* [max]: live indices sorted by offset */
    uint32_t *free_idx;  /* [max]: a stack of free indices */
    uint32_t nfree;
};

int px_slots_new(px_slots **out, uint64_t arena_size, uint32_t max_slots) {
    px_slots *s = NULL;
    if (out == NULL) return -EINVAL;
    *out = NULL;
    if (arena_size == 0 || max_slots == 0 || max_slots > PX_SLOTS_MAX) return -EINVAL;
    s = calloc(1, sizeof(*s));
    if (s == NULL) return -ENOMEM;
    s->arena_size = arena_size;
    s->max = max_slots;
    s->rec = calloc(max_slots, sizeof(*s->rec));
    s->order = calloc(max_slots, sizeof(*s->order));
    s->free_idx = calloc(max_slots, sizeof(*s->free_idx));
    if (s->rec == NULL || s->order == NULL || s->free_idx == NULL) {
        px_slots_free(s);
        return -ENOMEM;
    }
    for (uint32_t i = 0; i < max_slots; i++) s->rec[i].gen = 1;
    px_slots_reset(s);
    *out = s;
    return 0;
}

void px_slots_free(px_slots *s) {
    if (s == NULL) return;
    free(s->rec);
    free(s->order);
    free(s->free_idx);
    free(s);
}

static uint16_t next_gen(uint16_t g) { return g == 0xFFFFu ? 1 : (uint16_t)(g + 1); }

void px_slots_reset(px_slots *s) {
    if (s == NULL) return;
    for (uint32_t k = 0; k < s->live; k++) {
        slot_rec *r = &s->rec[s->order[k]];
        r->gen = next_gen(r->gen);
        r->size = 0;
    }
    s->live = 0;
    s->bytes = 0;
    /* Lowest index on top, so ids are handed out in a predictable order. */
    s->nfree = s->max;
    for (uint32_t i = 0; i < s->max; i++) s->free_idx[i] = s->max - 1 - i;
}

int px_slots_alloc(px_slots *s, uint64_t size, uint32_t *id, uint64_t *offset) {
    if (s == NULL || id == NULL || offset == NULL || size == 0) return -EINVAL;
    if (size > s->arena_size / 2) return -EFBIG;
    /* No overflow: size <= arena_size / 2 < UINT64_MAX - PX_SLOT_ALIGN. */
    uint64_t need = (size + PX_SLOT_ALIGN - 1) & ~(uint64_t)(PX_SLOT_ALIGN - 1);
    if (s->nfree == 0) return -ENOSPC;
    /* First fit over the gaps between live slots, in offset order. */
    uint64_t at = 0;
    uint32_t pos = 0;
    for (; pos < s->live; pos++) {
        const slot_rec *r = &s->rec[s->order[pos]];
        if (r->offset - at >= need) break;
        at = r->offset + r->size;
    }
    if (pos == s->live && (at > s->arena_size || s->arena_size - at < need)) return -ENOSPC;
    uint32_t idx = s->free_idx[--s->nfree];
    slot_rec *r = &s->rec[idx];
    r->offset = at;
    r->size = need;
    memmove(&s->order[pos + 1], &s->order[pos], (s->live - pos) * sizeof(*s->order));
    s->order[pos] = idx;
    s->live++;
    s->bytes += need;
    *id = ((uint32_t)r->gen << 16) | idx;
    *offset = at;
    return 0;
}

/* Where idx sits in order[] (binary search by offset), or -1. */
static int64_t order_pos(const px_slots *s, uint32_t idx) {
    uint64_t off = s->rec[idx].offset;
    uint32_t lo = 0, hi = s->live;
    while (lo < hi) {
        uint32_t mid = lo + (hi - lo) / 2;
        if (s->rec[s->order[mid]].offset < off)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo < s->live && s->order[lo] == idx ? (int64_t)lo : -1;
}

int px_slots_release(px_slots *s, uint32_t id) {
    if (s == NULL) return -EINVAL;
    uint32_t idx = ID_INDEX(id);
    if (idx >= s->max) return -EINVAL;
    slot_rec *r = &s->rec[idx];
    if (r->size == 0 || ID_GEN(id) != r->gen) return -EINVAL;
    int64_t pos = order_pos(s, idx);
    if (pos < 0) return -EINVAL; /* cannot happen: a live slot is in order[] */
    memmove(&s->order[pos], &s->order[pos + 1],
            (s->live - (uint32_t)pos - 1) * sizeof(*s->order));
    s->live--;
    s->bytes -= r->size;
    r->size = 0;
    r->gen = next_gen(r->gen);
    s->free_idx[s->nfree++] = idx;
    return 0;
}

int px_slots_release_many(px_slots *s, const uint32_t *ids, uint32_t n) {
    int bad = 0;
    if (ids == NULL) return n > 0 ? (int)(n > INT_MAX ? INT_MAX : n) : 0;
    for (uint32_t i = 0; i < n; i++)
        if (px_slots_release(s, ids[i]) < 0 && bad < INT_MAX) bad++;
    return bad;
}

void px_slots_stats(const px_slots *s, uint64_t out[3]) {
    if (out == NULL) return;
    out[0] = out[1] = out[2] = 0;
    if (s == NULL) return;
    uint64_t at = 0, gap = 0;
    for (uint32_t k = 0; k < s->live; k++) {
        const slot_rec *r = &s->rec[s->order[k]];
        if (r->offset - at > gap) gap = r->offset - at;
        at = r->offset + r->size;
    }
    if (s->arena_size > at && s->arena_size - at > gap) gap = s->arena_size - at;
    out[0] = s->live;
    out[1] = s->bytes;
    out[2] = gap;
}

/* ---- fd passing ------------------------------------------------------- */

int64_t px_send_fds(int sock, const int *fds, int n, const char *data, uint64_t len) {
    if (n < 0 || n > PX_FDS_MAX || (n > 0 && fds == NULL) || data == NULL || len == 0 ||
        len > (uint64_t)SSIZE_MAX)
        return -EINVAL;
    union {
        struct cmsghdr align;
        char buf[CMSG_SPACE(sizeof(int) * PX_FDS_MAX)];
    } ctl;
    struct iovec iov = {.iov_base = (void *)data, .iov_len = (size_t)len};
    struct msghdr msg;
    memset(&msg, 0, sizeof(msg));
    msg.msg_iov = &iov;
    msg.msg_iovlen = 1;
    if (n > 0) {
        memset(&ctl, 0, sizeof(ctl));
        msg.msg_control = ctl.buf;
        msg.msg_controllen = CMSG_SPACE(sizeof(int) * (size_t)n);
        struct cmsghdr *c = CMSG_FIRSTHDR(&msg);
        c->cmsg_level = SOL_SOCKET;
        c->cmsg_type = SCM_RIGHTS;
        c->cmsg_len = CMSG_LEN(sizeof(int) * (size_t)n);
        memcpy(CMSG_DATA(c), fds, sizeof(int) * (size_t)n);
    }
    for (;;) {
        ssize_t k = sendmsg(sock, &msg, MSG_NOSIGNAL);
        if (k >= 0) return (int64_t)k;
        if (errno != EINTR) return -errno;
    }
}

int64_t px_recv_fds(int sock, char *buf, uint64_t len, int *fds, int max_fds, int *nfds) {
    if (nfds == NULL) return -EINVAL;
    *nfds = 0;
    if (buf == NULL || len == 0 || len > (uint64_t)SSIZE_MAX || max_fds < 0 ||
        max_fds > PX_FDS_MAX || (max_fds > 0 && fds == NULL))
        return -EINVAL;
    union {
        struct cmsghdr align;
        char buf[CMSG_SPACE(sizeof(int) * PX_FDS_MAX)];
    } ctl;
    struct iovec iov = {.iov_base = buf, .iov_len = (size_t)len};
    struct msghdr msg;
    ssize_t k;
    int flags = 0;
#ifdef MSG_CMSG_CLOEXEC
    flags |= MSG_CMSG_CLOEXEC;
#endif
    for (;;) {
        memset(&msg, 0, sizeof(msg));
        memset(&ctl, 0, sizeof(ctl));
        msg.msg_iov = &iov;
        msg.msg_iovlen = 1;
        /* Room for max_fds only: a sender of more gets MSG_CTRUNC below. */
        msg.msg_control = ctl.buf;
        msg.msg_controllen = max_fds > 0 ? CMSG_SPACE(sizeof(int) * (size_t)max_fds) : 0;
        if (max_fds == 0) msg.msg_control = NULL;
        k = recvmsg(sock, &msg, flags);
        if (k >= 0) break;
        if (errno != EINTR) return -errno;
    }
    int got = 0, dropped = 0;
    for (struct cmsghdr *c = msg.msg_controllen ? CMSG_FIRSTHDR(&msg) : NULL; c != NULL;
         c = CMSG_NXTHDR(&msg, c)) {
        if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS) continue;
        if (c->cmsg_len < CMSG_LEN(0)) continue;
        size_t count = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
        const unsigned char *p = CMSG_DATA(c);
        for (size_t i = 0; i < count; i++) {
            int fd;
            memcpy(&fd, p + i * sizeof(int), sizeof(int));
            if (got < max_fds) {
#ifndef MSG_CMSG_CLOEXEC
                (void)fcntl(fd, F_SETFD, FD_CLOEXEC);
#endif
                fds[got++] = fd;
            } else {
                close(fd);
                dropped = 1;
            }
        }
    }
    if (dropped || (msg.msg_flags & MSG_CTRUNC)) {
        for (int i = 0; i < got; i++) close(fds[i]);
        return -EMSGSIZE;
    }
    *nfds = got;
    return (int64_t)k;
}

/* ---- claims ----------------------------------------------------------- */

/* See pyexec.h. The word is read and swapped with the GCC/Clang __atomic
 * builtins (lock-free for 8 aligned bytes on every platform pyexec builds
 * on), sequentially consistent: the two halves change together or not at
 * all, and each side's CAS fails (and retries) when the other moved first. */

/* a - b as a signed distance modulo 2^32 (serial number arithmetic). */
static int32_t serial_diff(uint32_t a, uint32_t b) {
    return (int32_t)(a - b);
}

int px_claim(void *word, uint32_t seq) {
    uint64_t *w = (uint64_t *)word;
    uint64_t old = __atomic_load_n(w, __ATOMIC_SEQ_CST);
    for (;;) {
        uint32_t skip = (uint32_t)(old >> 32);
        uint32_t claimed = (uint32_t)old;
        if (serial_diff(seq, claimed) > 0 && serial_diff(skip, seq) >= 0) return 0; /* revoked */
        /* SKIP is dragged along to seq when it is behind (revoking nothing
         * either way): it then stays within a window of CLAIMED, and the
         * modulo comparisons stay valid however many calls a worker runs. */
        uint32_t keep = serial_diff(skip, seq) > 0 ? skip : seq;
        uint64_t want = ((uint64_t)keep << 32) | seq;
        if (__atomic_compare_exchange_n(w, &old, want, 0, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST))
            return 1;
    }
}

uint32_t px_revoke(void *word, uint32_t through) {
    uint64_t *w = (uint64_t *)word;
    uint64_t old = __atomic_load_n(w, __ATOMIC_SEQ_CST);
    for (;;) {
        uint64_t want = ((uint64_t)through << 32) | (old & 0xFFFFFFFFULL);
        if (__atomic_compare_exchange_n(w, &old, want, 0, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST))
            return (uint32_t)old;
    }
}

uint64_t px_claim_peek(const void *word) {
    return __atomic_load_n((const uint64_t *)word, __ATOMIC_SEQ_CST);
}
