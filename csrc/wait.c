/*
 * wait.c - the waiter: one interface, a backend chosen when it is created.
 *
 * As in Redis's ae.c, each backend is a file of static functions over a
 * private state struct, included here: wait_epoll.c (Linux only) and
 * wait_poll.c (every POSIX system, and the fallback). Unlike ae.c the choice
 * is made at run time among the backends built, so both are tested on Linux.
 *
 * Facts the callers rely on, and the hazards guarded against:
 * - Closing an fd does not always remove it from an epoll set: the set holds
 *   the open file description, which a dup or a forked child may keep alive,
 *   and the closed fd would then report events under a stale token. So the
 *   caller removes every fd (px_waiter_del) before it closes it; a worker's
 *   pipes are closed while registered only after that call.
 * - The epoll fd itself is shared with a forked child. Children never call
 *   epoll_ctl on it (pyexec closes it in every child right after fork), so
 *   the parent's set is never changed behind its back.
 * - Hang-up and error are reported as readable, so the reader meets end of
 *   file or the error on its next read instead of a wakeup it cannot act on.
 * - EINTR is normal: the wait goes on with the time left, computed from a
 *   monotonic start (as libuv does), never restarted from the full timeout.
 */
#include "pyexec.h"

#include <errno.h>
#include <stdlib.h>
#include <time.h>

typedef struct {
    int (*add)(void *st, int fd, uint32_t events, uint64_t token);
    int (*mod)(void *st, int fd, uint32_t events, uint64_t token);
    int (*del)(void *st, int fd);
    int (*wait)(void *st, px_event *events, int max, int timeout_ms);
    void (*free)(void *st);
} backend_ops;

struct px_waiter {
    int backend;
    const backend_ops *ops;
    void *st;
};

#ifdef __linux__
#include "wait_epoll.c"
#endif
#include "wait_poll.c"

static int64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

/* Whole milliseconds, rounded up so a deadline never fires early; capped so
 * the int never overflows (a longer wait is just woken and resumed). */
static int to_ms(int64_t ns) {
    if (ns < 0) return -1;
    int64_t ms = (ns + 999999) / 1000000;
    return ms > 86400000 ? 86400000 : (int)ms;
}

int px_waiter_new(px_waiter **out, int backend) {
    *out = NULL;
    px_waiter *w = calloc(1, sizeof(*w));
    if (w == NULL) return -ENOMEM;
    int rc;
    if (backend == PX_BACKEND_DEFAULT) {
#ifdef __linux__
        backend = PX_BACKEND_EPOLL;
#else
        backend = PX_BACKEND_POLL;
#endif
    }
    if (backend == PX_BACKEND_EPOLL) {
#ifdef __linux__
        w->ops = &epoll_ops;
        rc = epoll_state_new(&w->st);
#else
        rc = -ENOSYS;
#endif
    } else if (backend == PX_BACKEND_POLL) {
        w->ops = &poll_ops;
        rc = poll_state_new(&w->st);
    } else {
        rc = -EINVAL;
    }
    if (rc < 0) goto out;
    w->backend = backend;
    *out = w;
    return 0;
out:
    free(w);
    return rc;
}

void px_waiter_free(px_waiter *w) {
    if (w == NULL) return;
    w->ops->free(w->st);
    free(w);
}

int px_waiter_backend(const px_waiter *w) { return w->backend; }

int px_waiter_fd(const px_waiter *w) {
#ifdef __linux__
    if (w->backend == PX_BACKEND_EPOLL) return ((const epoll_state *)w->st)->epfd;
#endif
    return -ENOSYS;
}

int px_waiter_add(px_waiter *w, int fd, uint32_t events, uint64_t token) {
    if (fd < 0) return -EBADF;
    return w->ops->add(w->st, fd, events, token);
}

int px_waiter_mod(px_waiter *w, int fd, uint32_t events, uint64_t token) {
    return w->ops->mod(w->st, fd, events, token);
}

int px_waiter_del(px_waiter *w, int fd) { return w->ops->del(w->st, fd); }

int px_waiter_wait(px_waiter *w, px_event *events, int max, int64_t timeout_ns) {
    if (max < 1) return -EINVAL;
    int64_t start = timeout_ns >= 0 ? now_ns() : 0;
    int64_t left = timeout_ns;
    for (;;) {
        int n = w->ops->wait(w->st, events, max, to_ms(left));
        if (n != -EINTR) return n;
        if (timeout_ns >= 0) {
            left = timeout_ns - (now_ns() - start);
            if (left <= 0) return 0;
        }
    }
}
