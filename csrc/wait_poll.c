/*
 * wait_poll.c - the poll(2) backend (macOS and any POSIX). Included by wait.c.
 * A flat array of pollfds with their tokens; lookups are linear, which is
 * fine for the few fds a pool has (two per worker and a wake fd).
 */
#include <fcntl.h>
#include <poll.h>

typedef struct {
    int n;
    int cap;
    struct pollfd *fds;
    uint64_t *tokens;
} poll_state;

static int poll_state_new(void **out) {
    poll_state *s = calloc(1, sizeof(*s));
    if (s == NULL) return -ENOMEM;
    *out = s;
    return 0;
}

static void poll_free_state(void *st) {
    poll_state *s = st;
    free(s->fds);
    free(s->tokens);
    free(s);
}

static short to_poll(uint32_t events) {
    short e = 0;
    if (events & PX_READABLE) e |= POLLIN;
    if (events & PX_WRITABLE) e |= POLLOUT;
    return e;
}

static int poll_find(poll_state *s, int fd) {
    for (int i = 0; i < s->n; i++)
        if (s->fds[i].fd == fd) return i;
    return -1;
}

static int poll_add(void *st, int fd, uint32_t events, uint64_t token) {
    poll_state *s = st;
    if (poll_find(s, fd) >= 0) return -EEXIST;
    /* Refuse an fd that is not open, as epoll_ctl does: poll(2) would take it
     * and report POLLNVAL (readable) on every wait from then on. */
    if (fcntl(fd, F_GETFD) < 0) return -errno;
    if (s->n == s->cap) {
        int cap = s->cap ? s->cap * 2 : 16;
        struct pollfd *nf = realloc(s->fds, sizeof(*nf) * (size_t)cap);
        if (nf == NULL) return -ENOMEM;
        s->fds = nf;
        uint64_t *nt = realloc(s->tokens, sizeof(*nt) * (size_t)cap);
        if (nt == NULL) return -ENOMEM;
        s->tokens = nt;
        s->cap = cap;
    }
    s->fds[s->n].fd = fd;
    s->fds[s->n].events = to_poll(events);
    s->fds[s->n].revents = 0;
    s->tokens[s->n] = token;
    s->n++;
    return 0;
}

static int poll_mod(void *st, int fd, uint32_t events, uint64_t token) {
    poll_state *s = st;
    int i = poll_find(s, fd);
    if (i < 0) return -ENOENT;
    s->fds[i].events = to_poll(events);
    s->tokens[i] = token;
    return 0;
}

static int poll_del(void *st, int fd) {
    poll_state *s = st;
    int i = poll_find(s, fd);
    if (i < 0) return -ENOENT;
    s->n--;
    s->fds[i] = s->fds[s->n];
    s->tokens[i] = s->tokens[s->n];
    return 0;
}

static int poll_wait_px(void *st, px_event *events, int max, int timeout_ms) {
    poll_state *s = st;
    int rc = poll(s->fds, (nfds_t)s->n, timeout_ms);
    if (rc < 0) return -errno;
    int n = 0;
    for (int i = 0; i < s->n && n < max; i++) {
        short e = s->fds[i].revents;
        if (e == 0) continue;
        uint32_t out = 0;
        if (e & (POLLIN | POLLHUP | POLLERR | POLLNVAL)) out |= PX_READABLE;
        if (e & (POLLOUT | POLLERR)) out |= PX_WRITABLE;
        events[n].token = s->tokens[i];
        events[n].events = out;
        n++;
    }
    return n;
}

static const backend_ops poll_ops = {
    poll_add, poll_mod, poll_del, poll_wait_px, poll_free_state,
};
