/*
 * wait_epoll.c - the epoll backend (Linux). Included by wait.c.
 * Level-triggered: a caller that leaves bytes unread is told again.
 */
#include <sys/epoll.h>
#include <unistd.h>

typedef struct {
    int epfd;
    int cap;
    struct epoll_event *evs;
} epoll_state;

static int epoll_state_new(void **out) {
    epoll_state *s = calloc(1, sizeof(*s));
    if (s == NULL) return -ENOMEM;
    s->epfd = epoll_create1(EPOLL_CLOEXEC);
    if (s->epfd < 0) {
        int err = -errno;
        free(s);
        return err;
    }
    *out = s;
    return 0;
}

static void epoll_free_state(void *st) {
    epoll_state *s = st;
    close(s->epfd);
    free(s->evs);
    free(s);
}

static uint32_t to_epoll(uint32_t events) {
    uint32_t e = 0;
    if (events & PX_READABLE) e |= EPOLLIN;
    if (events & PX_WRITABLE) e |= EPOLLOUT;
    return e;
}

static int epoll_ctl_px(void *st, int op, int fd, uint32_t events, uint64_t token) {
    epoll_state *s = st;
    struct epoll_event ev = {0};
    ev.events = to_epoll(events);
    ev.data.u64 = token;
    if (epoll_ctl(s->epfd, op, fd, &ev) < 0) return -errno;
    return 0;
}

static int epoll_add(void *st, int fd, uint32_t events, uint64_t token) {
    return epoll_ctl_px(st, EPOLL_CTL_ADD, fd, events, token);
}

static int epoll_mod(void *st, int fd, uint32_t events, uint64_t token) {
    return epoll_ctl_px(st, EPOLL_CTL_MOD, fd, events, token);
}

static int epoll_del(void *st, int fd) {
    epoll_state *s = st;
    struct epoll_event ev = {0};  /* non-NULL for kernels before 2.6.9 */
    if (epoll_ctl(s->epfd, EPOLL_CTL_DEL, fd, &ev) < 0) return -errno;
    return 0;
}

static int epoll_wait_px(void *st, px_event *events, int max, int timeout_ms) {
    epoll_state *s = st;
    if (s->cap < max) {
        struct epoll_event *nb = realloc(s->evs, sizeof(*nb) * (size_t)max);
        if (nb == NULL) return -ENOMEM;
        s->evs = nb;
        s->cap = max;
    }
    int n = epoll_wait(s->epfd, s->evs, max, timeout_ms);
    if (n < 0) return -errno;
    for (int i = 0; i < n; i++) {
        uint32_t e = s->evs[i].events, out = 0;
        if (e & (EPOLLIN | EPOLLHUP | EPOLLERR)) out |= PX_READABLE;
        if (e & EPOLLOUT) out |= PX_WRITABLE;
        /* A write end whose reader is gone reports EPOLLERR only: let the
         * writer meet EPIPE too. */
        if (e & EPOLLERR) out |= PX_WRITABLE;
        events[i].token = s->evs[i].data.u64;
        events[i].events = out;
    }
    return n;
}

static const backend_ops epoll_ops = {
    epoll_add, epoll_mod, epoll_del, epoll_wait_px, epoll_free_state,
};
