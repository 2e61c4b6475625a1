/*
 * frame.c - frame headers, the incremental decoder and the writer.
 *
 * The decoder keeps one buffer: bytes [start, end) are received and not yet
 * consumed. A frame is handed out only when all its bytes are there, as a
 * pointer into the buffer, so the buffer moves (compaction, growth) only in
 * px_decoder_read and px_decoder_feed, never in px_decoder_next. A payload
 * length is checked against the limit, and sizes no allocation: the buffer
 * grows with the bytes that arrive (see reserve).
 */
#include "pyexec.h"

#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

struct px_decoder {
    char *buf;
    uint64_t cap;
    uint64_t start;
    uint64_t end;
    uint64_t max_payload;
    uint64_t need;        /* bytes the frame being assembled needs in all */
    uint64_t last;        /* start before the last take (see px_decoder_rewind) */
    int error;            /* sticky: 0 or a negative errno */
    char errmsg[160];
};

static void put_u16(char *p, uint16_t v) {
    p[0] = (char)(v & 0xff);
    p[1] = (char)(v >> 8);
}

static void put_u32(char *p, uint32_t v) {
    for (int i = 0; i < 4; i++) p[i] = (char)((v >> (8 * i)) & 0xff);
}

static void put_u64(char *p, uint64_t v) {
    for (int i = 0; i < 8; i++) p[i] = (char)((v >> (8 * i)) & 0xff);
}

static uint64_t get_le(const char *p, int n) {
    uint64_t v = 0;
    for (int i = n - 1; i >= 0; i--) v = (v << 8) | (uint8_t)p[i];
    return v;
}

void px_header_encode(char *dst, uint8_t kind, uint16_t flags, uint64_t id,
                      uint64_t length) {
    dst[0] = (char)PX_MAGIC;
    dst[1] = (char)kind;
    put_u16(dst + 2, flags);
    put_u32(dst + 4, 0);
    put_u64(dst + 8, id);
    put_u64(dst + 16, length);
}

int px_decoder_new(px_decoder **out, uint64_t max_payload) {
    *out = NULL;
    if (max_payload > PX_MAX_PAYLOAD_LIMIT) return -EINVAL;
    px_decoder *d = calloc(1, sizeof(*d));
    if (d == NULL) return -ENOMEM;
    d->buf = malloc(PX_DECODER_INITIAL);
    if (d->buf == NULL) {
        free(d);
        return -ENOMEM;
    }
    d->cap = PX_DECODER_INITIAL;
    d->max_payload = max_payload;
    d->need = PX_HEADER_SIZE;
    *out = d;
    return 0;
}

void px_decoder_free(px_decoder *d) {
    if (d == NULL) return;
    free(d->buf);
    free(d);
}

static int fail(px_decoder *d, int err, const char *msg) {
    d->error = err;
    snprintf(d->errmsg, sizeof(d->errmsg), "%s", msg);
    return err;
}

/* Make room for at least `room` more bytes after end. The buffer grows only
 * when that room is missing, geometrically (about doubling: few reallocs for a
 * large frame), and never to more than as much again as is held, or
 * PX_DECODER_AHEAD beyond it, whatever length the frame being assembled
 * announces: memory follows the bytes that arrive, so a garbage length within
 * the limit that no bytes follow allocates nothing. Moves the buffer: only
 * called from read and feed. Returns 0 or -ENOMEM. */
static int reserve(px_decoder *d, uint64_t room) {
    uint64_t held = d->end - d->start;
    /* Empty and oversized after a large frame: shrink back. */
    if (held == 0) {
        d->start = d->end = 0;
        if (d->cap > PX_DECODER_INITIAL && d->need <= PX_DECODER_INITIAL) {
            char *nb = realloc(d->buf, PX_DECODER_INITIAL);
            if (nb != NULL) {
                d->buf = nb;
                d->cap = PX_DECODER_INITIAL;
            }
        }
    }
    if (d->cap - d->end >= room) return 0;
    if (d->start > 0) {
        memmove(d->buf, d->buf + d->start, (size_t)held);
        d->start = 0;
        d->end = held;
        if (d->cap - d->end >= room) return 0;
    }
    uint64_t want = held + room;
    uint64_t grow = d->cap > UINT64_MAX / 2 ? UINT64_MAX : 2 * d->cap;
    uint64_t bound = held + (held > PX_DECODER_AHEAD ? held : PX_DECODER_AHEAD);
    if (grow > bound) grow = bound;
    if (d->need > held && grow > d->need) grow = d->need; /* the frame's end */
    if (want < grow) want = grow;
    if (want > (uint64_t)SIZE_MAX) return -ENOMEM;
    char *nb = realloc(d->buf, (size_t)want);
    if (nb == NULL) return -ENOMEM;
    d->buf = nb;
    d->cap = want;
    return 0;
}

int px_decoder_feed(px_decoder *d, const char *buf, size_t len) {
    if (d->error) return d->error;
    if (len == 0) return 0;
    int rc = reserve(d, len);
    if (rc < 0) return rc;
    memcpy(d->buf + d->end, buf, len);
    d->end += len;
    d->last = d->start;
    return 0;
}

int64_t px_decoder_read(px_decoder *d, int fd) {
    if (d->error) return d->error;
    int rc = reserve(d, PX_READ_CHUNK);
    if (rc < 0) return rc;
    d->last = d->start; /* the buffer may have moved: nothing to give back */
    uint64_t room = d->cap - d->end;
    if (room > (uint64_t)SSIZE_MAX) room = (uint64_t)SSIZE_MAX;
    ssize_t n = read(fd, d->buf + d->end, (size_t)room);
    if (n < 0) return errno == EWOULDBLOCK ? -EAGAIN : -errno;
    d->end += (uint64_t)n;
    return (int64_t)n;
}

int px_decoder_next(px_decoder *d, px_frame *out) {
    if (d->error) return d->error;
    uint64_t held = d->end - d->start;
    if (held < PX_HEADER_SIZE) {
        d->need = PX_HEADER_SIZE;
        return 0;
    }
    const char *h = d->buf + d->start;
    uint8_t magic = (uint8_t)h[0];
    uint8_t kind = (uint8_t)h[1];
    uint16_t flags = (uint16_t)get_le(h + 2, 2);
    uint32_t reserved = (uint32_t)get_le(h + 4, 4);
    uint64_t id = get_le(h + 8, 8);
    uint64_t length = get_le(h + 16, 8);
    char msg[160];
    if (magic != PX_MAGIC || reserved != 0) {
        snprintf(msg, sizeof(msg),
                 "garbage frame header (magic 0x%02x, reserved 0x%08x)",
                 magic, reserved);
        return fail(d, -PX_EBADMSG, msg);
    }
    if (kind == 0 || kind > PX_KIND_MAX) {
        snprintf(msg, sizeof(msg), "unknown frame kind %u", kind);
        return fail(d, -PX_EBADMSG, msg);
    }
    if (flags & ~PX_FLAGS_KNOWN) {
        snprintf(msg, sizeof(msg), "unknown frame flags 0x%04x", flags);
        return fail(d, -PX_EBADMSG, msg);
    }
    if (length > d->max_payload) {
        snprintf(msg, sizeof(msg),
                 "frame payload of %llu bytes exceeds the maximum of %llu",
                 (unsigned long long)length,
                 (unsigned long long)d->max_payload);
        return fail(d, -PX_EMSGSIZE, msg);
    }
    if (held - PX_HEADER_SIZE < length) {
        d->need = PX_HEADER_SIZE + length;
        return 0;
    }
    out->kind = kind;
    out->flags = flags;
    out->id = id;
    out->payload = h + PX_HEADER_SIZE;
    out->length = length;
    d->start += PX_HEADER_SIZE + length;
    d->need = PX_HEADER_SIZE;
    return 1;
}

int px_decoder_next_many(px_decoder *d, uint64_t *out, int max, const char **base) {
    int n = 0;
    px_frame f;
    *base = d->buf;
    d->last = d->start;
    while (n < max) {
        int rc = px_decoder_next(d, &f);
        if (rc < 0) return n > 0 ? n : rc;
        if (rc == 0) break;
        out[4 * n] = (uint64_t)f.kind | ((uint64_t)f.flags << 8);
        out[4 * n + 1] = f.id;
        out[4 * n + 2] = (uint64_t)(f.payload - d->buf);
        out[4 * n + 3] = f.length;
        n++;
    }
    return n;
}

int px_decoder_read_many(px_decoder *d, int fd, uint64_t *out, int max,
                         const char **base, px_read_status *status, int64_t spin_ns) {
    status->read = fd >= 0 ? px_decoder_read(d, fd) : -EAGAIN;
    int n = px_decoder_next_many(d, out, max, base);
    if (n == 0 && status->read == -EAGAIN && fd >= 0 && spin_ns > 0) {
        struct timespec t0, t;
        clock_gettime(CLOCK_MONOTONIC, &t0);
        do {
            status->read = px_decoder_read(d, fd);
            if (status->read != -EAGAIN) break;
            clock_gettime(CLOCK_MONOTONIC, &t);
        } while ((t.tv_sec - t0.tv_sec) * 1000000000LL + (t.tv_nsec - t0.tv_nsec) < spin_ns);
        n = px_decoder_next_many(d, out, max, base);
    }
    status->error = d->error;
    status->buf = (int64_t)(intptr_t)d->buf;
    status->cap = (int64_t)d->cap;
    return n;
}

int px_decoder_rewind(px_decoder *d, uint64_t offset) {
    if (offset == UINT64_MAX) offset = d->last;
    if (offset < d->last || offset > d->start) return -EINVAL;
    d->start = offset;
    d->need = PX_HEADER_SIZE;
    return 0;
}

uint64_t px_decoder_buffered(const px_decoder *d) {
    return d->end - d->start;
}

const char *px_decoder_error(const px_decoder *d) {
    return d->errmsg;
}

int64_t px_writev(int fd, const px_iov *iov, int n) {
    if (n < 1 || n > PX_IOV_MAX) return -EINVAL;
    struct iovec v[PX_IOV_MAX];
    for (int i = 0; i < n; i++) {
        v[i].iov_base = (void *)iov[i].base;
        v[i].iov_len = iov[i].len;
    }
    struct iovec *cur = v;
    int left = n;
    int64_t total = 0;
    while (left > 0) {
        ssize_t w = writev(fd, cur, left);
        if (w < 0) {
            if (errno == EINTR) continue;
            int err = (errno == EWOULDBLOCK) ? EAGAIN : errno;
            if (total > 0 && err == EAGAIN) return total;
            return -err;
        }
        total += w;
        size_t done = (size_t)w;
        while (left > 0 && done >= cur->iov_len) {
            done -= cur->iov_len;
            cur++;
            left--;
        }
        if (left > 0) {
            cur->iov_base = (char *)cur->iov_base + done;
            cur->iov_len -= done;
        }
    }
    return total;
}

int64_t px_write(int fd, const char *buf, uint64_t len) {
    if (len > (uint64_t)SSIZE_MAX) return -EINVAL;
    px_iov one = {buf, (size_t)len};
    return px_writev(fd, &one, 1);
}
