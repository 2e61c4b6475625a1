/*
 * test_core.c - the C core's own tests, without Python: the decoder (one test
 * per edge case, as hiredis tests its reader), the writer, pipes, rss, the
 * parent-death signal and both waiter backends.
 *
 * tests/test_sanitizers.py builds it with AddressSanitizer and
 * UndefinedBehaviorSanitizer and runs each test on its own:
 *
 *   cc -std=c99 -D_GNU_SOURCE -g -fsanitize=address,undefined \
 *      -fno-sanitize-recover=all tests/c/test_core.c csrc/io.c csrc/wait.c \
 *      -o test_core -pthread
 *   ./test_core                 # every test
 *   ./test_core --list          # their names
 *   ./test_core NAME...         # only these
 *
 * frame.c is included here instead of linked, so a test can look inside the
 * decoder (that its buffer shrinks back after a large frame). Every other
 * check goes through the public API only. Each test also checks that it
 * leaves no fd open. Exit status: 0 when every test asked for passed.
 */
#include "../../csrc/frame.c"

#include <dirent.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdbool.h>
#include <sys/time.h>
#include <sys/wait.h>
#include <time.h>

/* ---- the shared harness: CHECK, CHECK_EQ, t_count_fds, HARNESS_MAIN --- */

#include "harness.h"

static int64_t t_now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static void *t_xmalloc(size_t n) {
    void *p = malloc(n ? n : 1);
    if (p == NULL) {
        fprintf(stderr, "out of memory\n");
        exit(2);
    }
    return p;
}

/* A growable byte string: the stream a test feeds. */
typedef struct {
    char *p;
    size_t n, cap;
} t_buf;

static void t_buf_put(t_buf *b, const void *src, size_t n) {
    if (b->n + n > b->cap) {
        size_t cap = b->cap ? b->cap : 256;
        while (cap < b->n + n) cap *= 2;
        char *np = realloc(b->p, cap);
        if (np == NULL) exit(2);
        b->p = np;
        b->cap = cap;
    }
    if (n) memcpy(b->p + b->n, src, n);
    b->n += n;
}

/* What a test expects the decoder to hand out, with the frame's end offset in
 * the stream (a frame is due once that many bytes were fed). */
typedef struct {
    uint8_t kind;
    uint16_t flags;
    uint64_t id;
    uint64_t len;
    size_t payload_off;
    size_t end;
} t_expect;

typedef struct {
    t_buf s;
    t_expect *e;
    int n, cap;
} t_stream;

/* Payload bytes that differ per frame and per position. */
static void t_fill(char *p, size_t n, uint64_t seed) {
    for (size_t i = 0; i < n; i++) p[i] = (char)((i * 131 + seed * 7 + 1) & 0xff);
}

static void t_frame(t_stream *st, uint8_t kind, uint16_t flags, uint64_t id,
                    uint64_t len) {
    char h[PX_HEADER_SIZE];
    px_header_encode(h, kind, flags, id, len);
    t_buf_put(&st->s, h, sizeof(h));
    size_t off = st->s.n;
    char *payload = t_xmalloc((size_t)len);
    t_fill(payload, (size_t)len, id);
    t_buf_put(&st->s, payload, (size_t)len);
    free(payload);
    if (st->n == st->cap) {
        st->cap = st->cap ? st->cap * 2 : 16;
        st->e = realloc(st->e, sizeof(*st->e) * (size_t)st->cap);
        if (st->e == NULL) exit(2);
    }
    st->e[st->n++] = (t_expect){kind, flags, id, len, off, st->s.n};
}

static void t_stream_free(t_stream *st) {
    free(st->s.p);
    free(st->e);
}

/* Frames with lengths around the header size and the boundaries a buffer
 * might get wrong, every kind and flag, extreme ids. */
static void t_mixed_stream(t_stream *st) {
    static const uint64_t lens[] = {0, 1, 23, 24, 25, 0, 100, 1000, 4095, 0, 7};
    for (size_t i = 0; i < sizeof(lens) / sizeof(lens[0]); i++) {
        uint8_t kind = (uint8_t)(1 + i % PX_KIND_MAX);
        uint16_t flags = (uint16_t)(i % 2 ? PX_FLAG_RECYCLE : 0);
        uint64_t id = i == 3 ? UINT64_MAX : (uint64_t)i * 0x0101010101ULL;
        t_frame(st, kind, flags, id, lens[i]);
    }
}

/* Compare frame f with st->e[*got] and count it. Returns 1, or 0 (and sets
 * *bad) when it is not the frame expected. */
static int t_check_frame(const t_stream *st, int *got, int *bad, const px_frame *f) {
    if (*got >= st->n) {
        *bad = 1;
        return 0;
    }
    const t_expect *e = &st->e[*got];
    if (f->kind != e->kind || f->flags != e->flags || f->id != e->id ||
        f->length != e->len ||
        (e->len && memcmp(f->payload, st->s.p + e->payload_off, (size_t)e->len))) {
        fprintf(stderr, "frame %d differs: kind %u flags %u id %llu len %llu\n", *got,
                f->kind, f->flags, (unsigned long long)f->id,
                (unsigned long long)f->length);
        *bad = 1;
        return 0;
    }
    (*got)++;
    return 1;
}

/* 0: t_drain takes frames with px_decoder_next; n > 0: with
 * px_decoder_next_many, at most n at a time. */
static int t_many;

/* Take every complete frame from d and compare it with st->e[*got...].
 * Returns the decoder's result (0, or its negative error); sets *bad on a
 * frame that differs from the one expected. */
static int t_drain(px_decoder *d, const t_stream *st, int *got, int *bad) {
    px_frame f;
    int rc;
    if (t_many == 0) {
        while ((rc = px_decoder_next(d, &f)) == 1)
            if (!t_check_frame(st, got, bad, &f)) return 0;
        return rc;
    }
    uint64_t meta[4 * 8];
    for (;;) {
        const char *base = NULL;
        int n = px_decoder_next_many(d, meta, t_many, &base);
        if (n <= 0) return n;
        if (n > t_many) {
            *bad = 1;
            return 0;
        }
        for (int i = 0; i < n; i++) {
            f.kind = (uint8_t)(meta[4 * i] & 0xff);
            f.flags = (uint16_t)(meta[4 * i] >> 8);
            f.id = meta[4 * i + 1];
            f.payload = base + meta[4 * i + 2];
            f.length = meta[4 * i + 3];
            if (!t_check_frame(st, got, bad, &f)) return 0;
        }
    }
}

static px_decoder *t_decoder(uint64_t limit) {
    px_decoder *d = NULL;
    if (px_decoder_new(&d, limit) != 0) exit(2);
    return d;
}

static volatile sig_atomic_t t_alarms;

static void t_on_alarm(int sig) {
    (void)sig;
    t_alarms++;
}

/* SIGALRM every interval_us, with a handler installed without SA_RESTART so
 * a blocked call meets EINTR. interval_us 0 stops it. */
static void t_alarm_every(long first_us, long interval_us) {
    struct sigaction sa;
    memset(&sa, 0, sizeof(sa));
    sa.sa_handler = first_us ? t_on_alarm : SIG_IGN;
    sigemptyset(&sa.sa_mask);
    sa.sa_flags = 0;
    struct itimerval it;
    memset(&it, 0, sizeof(it));
    it.it_value.tv_sec = first_us / 1000000;
    it.it_value.tv_usec = first_us % 1000000;
    it.it_interval.tv_sec = interval_us / 1000000;
    it.it_interval.tv_usec = interval_us % 1000000;
    if (first_us) {
        t_alarms = 0;
        sigaction(SIGALRM, &sa, NULL);
        setitimer(ITIMER_REAL, &it, NULL);
    } else {
        setitimer(ITIMER_REAL, &it, NULL);
        sigaction(SIGALRM, &sa, NULL);
    }
}

/* Read exactly n bytes from a blocking fd. Returns 0 or -1. */
static int t_read_all(int fd, char *dst, size_t n) {
    while (n) {
        ssize_t r = read(fd, dst, n);
        if (r < 0 && errno == EINTR) continue;
        if (r <= 0) return -1;
        dst += r;
        n -= (size_t)r;
    }
    return 0;
}

static int t_write_all(int fd, const char *src, size_t n) {
    while (n) {
        ssize_t w = write(fd, src, n);
        if (w < 0 && errno == EINTR) continue;
        if (w <= 0) return -1;
        src += w;
        n -= (size_t)w;
    }
    return 0;
}

/* ---- decoder ----------------------------------------------------------- */

static void test_header_layout(void) {
    unsigned char h[PX_HEADER_SIZE];
    px_header_encode((char *)h, PX_KIND_RESULT, 0x0201, 0x0807060504030201ULL,
                     0x100f0e0d0c0b0a09ULL);
    CHECK_EQ(h[0], PX_MAGIC);
    CHECK_EQ(h[1], PX_KIND_RESULT);
    CHECK_EQ(h[2], 0x01);
    CHECK_EQ(h[3], 0x02);
    for (int i = 4; i < 8; i++) CHECK_EQ(h[i], 0);
    for (int i = 8; i < 24; i++) CHECK_EQ(h[i], i - 7);
}

static void test_decoder_new_limits(void) {
    px_decoder *d = (px_decoder *)&failed; /* must be reset to NULL */
    CHECK_EQ(px_decoder_new(&d, PX_MAX_PAYLOAD_LIMIT + 1), -EINVAL);
    CHECK(d == NULL);
    CHECK_EQ(px_decoder_new(&d, PX_MAX_PAYLOAD_LIMIT), 0);
    CHECK(d != NULL);
    px_decoder_free(d);
    px_decoder_free(NULL);
    /* Limit 0: only empty payloads. */
    d = t_decoder(0);
    char h[PX_HEADER_SIZE];
    px_header_encode(h, PX_KIND_CALL, 0, 1, 0);
    CHECK_EQ(px_decoder_feed(d, h, sizeof(h)), 0);
    px_frame f;
    CHECK_EQ(px_decoder_next(d, &f), 1);
    CHECK_EQ(f.length, 0);
    px_header_encode(h, PX_KIND_CALL, 0, 2, 1);
    CHECK_EQ(px_decoder_feed(d, h, sizeof(h)), 0);
    CHECK_EQ(px_decoder_next(d, &f), -PX_EMSGSIZE);
    px_decoder_free(d);
}

static void test_decoder_empty(void) {
    px_decoder *d = t_decoder(1000);
    px_frame f;
    CHECK_EQ(px_decoder_next(d, &f), 0);
    CHECK_EQ(px_decoder_buffered(d), 0);
    CHECK(strcmp(px_decoder_error(d), "") == 0);
    CHECK_EQ(px_decoder_feed(d, NULL, 0), 0);
    CHECK_EQ(px_decoder_next(d, &f), 0);
    px_decoder_free(d);
}

/* Every frame appears exactly when its last byte arrives, never before. */
static void byte_by_byte(void) {
    t_stream st = {0};
    t_mixed_stream(&st);
    px_decoder *d = t_decoder(1 << 20);
    int got = 0, bad = 0;
    for (size_t i = 0; i < st.s.n && !bad; i++) {
        CHECK_EQ(px_decoder_feed(d, st.s.p + i, 1), 0);
        CHECK_EQ(t_drain(d, &st, &got, &bad), 0);
        int due = 0;
        while (due < st.n && st.e[due].end <= i + 1) due++;
        CHECK_EQ(got, due);
        size_t consumed = got ? st.e[got - 1].end : 0;
        CHECK_EQ(px_decoder_buffered(d), i + 1 - consumed);
    }
    CHECK(!bad);
    CHECK_EQ(got, st.n);
    CHECK_EQ(px_decoder_buffered(d), 0);
    px_decoder_free(d);
    t_stream_free(&st);
}

/* The stream split in two at every byte boundary. */
static void every_two_way_split(void) {
    t_stream st = {0};
    t_mixed_stream(&st);
    for (size_t cut = 0; cut <= st.s.n; cut++) {
        px_decoder *d = t_decoder(1 << 20);
        int got = 0, bad = 0;
        CHECK_EQ(px_decoder_feed(d, st.s.p, cut), 0);
        CHECK_EQ(t_drain(d, &st, &got, &bad), 0);
        CHECK_EQ(px_decoder_feed(d, st.s.p + cut, st.s.n - cut), 0);
        CHECK_EQ(t_drain(d, &st, &got, &bad), 0);
        CHECK(!bad);
        CHECK_EQ(got, st.n);
        CHECK_EQ(px_decoder_buffered(d), 0);
        px_decoder_free(d);
    }
    t_stream_free(&st);
}

static void test_decoder_byte_by_byte(void) {
    for (t_many = 0; t_many <= 3 && !failed; t_many++) byte_by_byte();
    t_many = 0;
}

static void test_decoder_every_two_way_split(void) {
    for (t_many = 0; t_many <= 3 && !failed; t_many += 3) every_two_way_split();
    t_many = 0;
}

/* One frame's header split in three at every pair of boundaries. */
static void test_decoder_every_three_way_split_of_one_frame(void) {
    t_stream st = {0};
    t_frame(&st, PX_KIND_ERROR, PX_FLAG_RECYCLE, 77, 40);
    size_t n = st.s.n;
    for (size_t a = 0; a <= n; a++) {
        for (size_t b = a; b <= n; b++) {
            px_decoder *d = t_decoder(100);
            int got = 0, bad = 0;
            CHECK_EQ(px_decoder_feed(d, st.s.p, a), 0);
            CHECK_EQ(t_drain(d, &st, &got, &bad), 0);
            CHECK_EQ(px_decoder_feed(d, st.s.p + a, b - a), 0);
            CHECK_EQ(t_drain(d, &st, &got, &bad), 0);
            CHECK_EQ(got, b == n ? 1 : 0);
            CHECK_EQ(px_decoder_feed(d, st.s.p + b, n - b), 0);
            CHECK_EQ(t_drain(d, &st, &got, &bad), 0);
            CHECK(!bad);
            CHECK_EQ(got, 1);
            px_decoder_free(d);
        }
    }
    t_stream_free(&st);
}

static void test_decoder_many_frames_one_feed(void) {
    t_stream st = {0};
    for (int i = 0; i < 20000; i++)
        t_frame(&st, (uint8_t)(1 + i % PX_KIND_MAX), 0, (uint64_t)i, (uint64_t)(i % 50));
    px_decoder *d = t_decoder(1000);
    int got = 0, bad = 0;
    CHECK_EQ(px_decoder_feed(d, st.s.p, st.s.n), 0);
    CHECK_EQ(t_drain(d, &st, &got, &bad), 0);
    CHECK(!bad);
    CHECK_EQ(got, st.n);
    CHECK_EQ(px_decoder_buffered(d), 0);
    px_decoder_free(d);
    t_stream_free(&st);
}

static void test_decoder_zero_length_payload(void) {
    t_stream st = {0};
    t_frame(&st, PX_KIND_EXIT, 0, 5, 0);
    px_decoder *d = t_decoder(1000);
    px_frame f;
    CHECK_EQ(px_decoder_feed(d, st.s.p, PX_HEADER_SIZE - 1), 0);
    CHECK_EQ(px_decoder_next(d, &f), 0);
    CHECK_EQ(px_decoder_feed(d, st.s.p + PX_HEADER_SIZE - 1, 1), 0);
    CHECK_EQ(px_decoder_next(d, &f), 1);
    CHECK_EQ(f.kind, PX_KIND_EXIT);
    CHECK_EQ(f.id, 5);
    CHECK_EQ(f.length, 0);
    CHECK_EQ(px_decoder_next(d, &f), 0);
    CHECK_EQ(px_decoder_buffered(d), 0);
    px_decoder_free(d);
    t_stream_free(&st);
}

static void test_decoder_max_length_payload(void) {
    t_stream st = {0};
    t_frame(&st, PX_KIND_RESULT, 0, 9, 1000);
    px_decoder *d = t_decoder(1000);
    int got = 0, bad = 0;
    CHECK_EQ(px_decoder_feed(d, st.s.p, st.s.n - 1), 0);
    CHECK_EQ(t_drain(d, &st, &got, &bad), 0);
    CHECK_EQ(got, 0);
    CHECK_EQ(px_decoder_feed(d, st.s.p + st.s.n - 1, 1), 0);
    CHECK_EQ(t_drain(d, &st, &got, &bad), 0);
    CHECK(!bad);
    CHECK_EQ(got, 1);
    px_decoder_free(d);
    t_stream_free(&st);
}

/* One byte over: refused from the header alone, before any payload byte. */
static void test_decoder_one_over_max(void) {
    px_decoder *d = t_decoder(1000);
    char h[PX_HEADER_SIZE];
    px_header_encode(h, PX_KIND_RESULT, 0, 9, 1001);
    CHECK_EQ(px_decoder_feed(d, h, sizeof(h)), 0);
    px_frame f;
    CHECK_EQ(px_decoder_next(d, &f), -PX_EMSGSIZE);
    const char *msg = px_decoder_error(d);
    CHECK(strstr(msg, "1001") != NULL);
    CHECK(strstr(msg, "1000") != NULL);
    CHECK_EQ(px_decoder_next(d, &f), -PX_EMSGSIZE);
    px_decoder_free(d);
}

/* A length far beyond the limit allocates nothing. */
static void test_decoder_huge_length_allocates_nothing(void) {
    static const uint64_t lens[] = {UINT64_MAX, UINT64_MAX - PX_HEADER_SIZE + 1,
                                    PX_MAX_PAYLOAD_LIMIT + 1, (uint64_t)1 << 63};
    for (size_t i = 0; i < sizeof(lens) / sizeof(lens[0]); i++) {
        px_decoder *d = t_decoder(PX_MAX_PAYLOAD_LIMIT);
        char h[PX_HEADER_SIZE];
        px_header_encode(h, PX_KIND_RESULT, 0, 1, lens[i]);
        CHECK_EQ(px_decoder_feed(d, h, sizeof(h)), 0);
        px_frame f;
        CHECK_EQ(px_decoder_next(d, &f), -PX_EMSGSIZE);
        CHECK_EQ(d->cap, PX_DECODER_INITIAL);
        char more[100] = {0};
        CHECK_EQ(px_decoder_feed(d, more, sizeof(more)), -PX_EMSGSIZE);
        CHECK_EQ(d->cap, PX_DECODER_INITIAL);
        px_decoder_free(d);
    }
}

/* A length within the limit (here the largest) that only a few bytes follow
 * allocates nothing for it: the buffer stays as it was made. */
static void test_decoder_garbage_length_allocates_nothing(void) {
    px_decoder *d = t_decoder(PX_MAX_PAYLOAD_LIMIT);
    char h[PX_HEADER_SIZE + 10] = {0};
    px_header_encode(h, PX_KIND_RESULT, 0, 1, PX_MAX_PAYLOAD_LIMIT);
    CHECK_EQ(px_decoder_feed(d, h, sizeof(h)), 0);
    px_frame f;
    CHECK_EQ(px_decoder_next(d, &f), 0);
    CHECK_EQ(d->cap, PX_DECODER_INITIAL);
    /* A read asks for PX_READ_CHUNK of room: no more than that beside what is held. */
    int p[2];
    CHECK_EQ(pipe(p), 0);
    CHECK_EQ(write(p[1], h, 10), 10);
    CHECK_EQ(px_decoder_read(d, p[0]), 10);
    CHECK_EQ(px_decoder_next(d, &f), 0);
    CHECK(d->cap <= sizeof(h) + 10 + PX_READ_CHUNK + PX_DECODER_AHEAD);
    close(p[0]);
    close(p[1]);
    px_decoder_free(d);
}

/* As the bytes of a frame longer than any buffer come, the buffer grows with
 * them: never beyond twice what is held plus PX_DECODER_AHEAD and the chunk
 * just fed, and geometrically (a few reallocs per doubling, not one per feed). */
static void test_decoder_grows_with_the_bytes(void) {
    px_decoder *d = t_decoder(PX_MAX_PAYLOAD_LIMIT);
    char h[PX_HEADER_SIZE];
    px_header_encode(h, PX_KIND_RESULT, 0, 1, PX_MAX_PAYLOAD_LIMIT);
    CHECK_EQ(px_decoder_feed(d, h, sizeof(h)), 0);
    px_frame f;
    CHECK_EQ(px_decoder_next(d, &f), 0);
    enum { CHUNK = 1 << 16, FEEDS = 1280 }; /* 80 MiB in 64 KiB pieces */
    char *chunk = calloc(1, CHUNK);
    CHECK(chunk != NULL);
    uint64_t held = PX_HEADER_SIZE, cap = d->cap;
    int grew = 0;
    for (int i = 0; i < FEEDS; i++) {
        CHECK_EQ(px_decoder_feed(d, chunk, CHUNK), 0);
        held += CHUNK;
        CHECK_EQ(px_decoder_buffered(d), held);
        CHECK(d->cap <= 2 * held + PX_DECODER_AHEAD + CHUNK);
        if (d->cap != cap) grew++;
        cap = d->cap;
        CHECK_EQ(px_decoder_next(d, &f), 0);
    }
    CHECK(grew <= 40); /* 80 MiB from 64 KiB: 11 doublings */
    free(chunk);
    px_decoder_free(d);
}

/* Frames a take handed out can be given back, all or from one on, and come
 * out again, the same; nothing outside the last take can be. */
static void test_decoder_rewind(void) {
    px_decoder *d = t_decoder(1000);
    t_stream st = {0};
    for (int i = 0; i < 3; i++) t_frame(&st, PX_KIND_RESULT, 0, (uint64_t)(i + 1), (uint64_t)(10 + i));
    CHECK_EQ(px_decoder_feed(d, st.s.p, st.s.n), 0);
    uint64_t meta[4 * 4];
    const char *base;
    CHECK_EQ(px_decoder_next_many(d, meta, 4, &base), 3);
    CHECK_EQ(px_decoder_buffered(d), 0);
    CHECK_EQ(px_decoder_rewind(d, meta[4 * 1 + 2] - PX_HEADER_SIZE), 0); /* frames 2, 3 */
    uint64_t again[4 * 4];
    CHECK_EQ(px_decoder_next_many(d, again, 4, &base), 2);
    CHECK_EQ(again[1], 2);
    CHECK_EQ(again[5], 3);
    CHECK_EQ(again[2], meta[6]);
    CHECK_EQ(px_decoder_rewind(d, UINT64_MAX), 0); /* the last take: 2 and 3 */
    CHECK_EQ(px_decoder_next_many(d, again, 4, &base), 2);
    CHECK_EQ(again[1], 2);
    /* Frame 1 was taken before the last take: not given back. */
    CHECK_EQ(px_decoder_rewind(d, meta[2] - PX_HEADER_SIZE), -EINVAL);
    CHECK_EQ(px_decoder_rewind(d, st.s.n + 1), -EINVAL);
    /* After a feed nothing can be given back. */
    CHECK_EQ(px_decoder_feed(d, st.s.p, PX_HEADER_SIZE), 0);
    CHECK_EQ(px_decoder_rewind(d, meta[6] - PX_HEADER_SIZE), -EINVAL);
    CHECK_EQ(px_decoder_rewind(d, UINT64_MAX), 0); /* a no-op */
    CHECK_EQ(px_decoder_buffered(d), PX_HEADER_SIZE);
    px_decoder_free(d);
    t_stream_free(&st);
}

/* Each kind of garbage header: a sticky -EBADMSG naming what is wrong. */
static void test_decoder_garbage_headers(void) {
    struct {
        int byte;           /* which header byte to change */
        unsigned char val;
        const char *word;   /* expected in the message */
    } cases[] = {
        {0, 0, "magic"},        {0, PX_MAGIC + 1, "magic"}, {0, 0xff, "magic"},
        {4, 1, "reserved"},     {5, 0x80, "reserved"},      {6, 1, "reserved"},
        {7, 0xff, "reserved"},  {1, 0, "kind"},             {1, PX_KIND_MAX + 1, "kind"},
        {1, 0xff, "kind"},      {2, PX_FLAGS_KNOWN + 1, "flags"}, {2, 0xfe, "flags"},
        {3, 0x80, "flags"},     {3, 1, "flags"},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        char h[PX_HEADER_SIZE];
        px_header_encode(h, PX_KIND_CALL, 0, 1, 0);
        h[cases[i].byte] = (char)cases[i].val;
        px_decoder *d = t_decoder(1000);
        CHECK_EQ(px_decoder_feed(d, h, sizeof(h)), 0);
        px_frame f;
        CHECK_EQ(px_decoder_next(d, &f), -PX_EBADMSG);
        if (strstr(px_decoder_error(d), cases[i].word) == NULL) {
            fprintf(stderr, "case %zu: message %s lacks %s\n", i,
                    px_decoder_error(d), cases[i].word);
            CHECK(0);
        }
        CHECK(strlen(px_decoder_error(d)) < 160);
        px_decoder_free(d);
    }
}

/* Frames before the garbage are still handed out, in order. */
static void test_decoder_frames_before_garbage(void) {
    t_stream st = {0};
    t_frame(&st, PX_KIND_RESULT, 0, 1, 10);
    t_frame(&st, PX_KIND_RESULT, 0, 2, 0);
    char junk[PX_HEADER_SIZE] = {1, 2, 3};
    t_buf_put(&st.s, junk, sizeof(junk));
    px_decoder *d = t_decoder(1000);
    int got = 0, bad = 0;
    CHECK_EQ(px_decoder_feed(d, st.s.p, st.s.n), 0);
    CHECK_EQ(t_drain(d, &st, &got, &bad), -PX_EBADMSG);
    CHECK(!bad);
    CHECK_EQ(got, 2);
    px_decoder_free(d);
    t_stream_free(&st);
}

/* After an error, nothing moves: feed, read and next all return it, the
 * buffered count and the message stay, and a read leaves the fd untouched. */
static void test_decoder_error_sticky(void) {
    px_decoder *d = t_decoder(1000);
    char h[PX_HEADER_SIZE];
    px_header_encode(h, PX_KIND_CALL, 0, 1, 0);
    h[0] = 0;
    CHECK_EQ(px_decoder_feed(d, h, sizeof(h)), 0);
    px_frame f;
    CHECK_EQ(px_decoder_next(d, &f), -PX_EBADMSG);
    char msg[200];
    snprintf(msg, sizeof(msg), "%s", px_decoder_error(d));
    CHECK(msg[0] != '\0');

    t_stream good = {0};
    t_frame(&good, PX_KIND_CALL, 0, 2, 3);
    for (int round = 0; round < 3; round++) {
        CHECK_EQ(px_decoder_feed(d, good.s.p, good.s.n), -PX_EBADMSG);
        CHECK_EQ(px_decoder_next(d, &f), -PX_EBADMSG);
        CHECK_EQ(px_decoder_buffered(d), PX_HEADER_SIZE);
        CHECK(strcmp(px_decoder_error(d), msg) == 0);
    }
    int p[2];
    CHECK_EQ(px_pipe(p, 1, 0), 0);
    CHECK_EQ(write(p[1], "abc", 3), 3);
    CHECK_EQ(px_decoder_read(d, p[0]), -PX_EBADMSG);
    char back[4];
    CHECK_EQ(read(p[0], back, sizeof(back)), 3);
    close(p[0]);
    close(p[1]);
    px_decoder_free(d);
    t_stream_free(&good);
}

/* EAGAIN on an empty non-blocking pipe, then frames, then 0 at end of file. */
static void test_decoder_read_pipe_eagain_eof(void) {
    int p[2];
    CHECK_EQ(px_pipe(p, 1, 0), 0);
    px_decoder *d = t_decoder(1000);
    CHECK_EQ(px_decoder_read(d, p[0]), -EAGAIN);
    t_stream small = {0};
    for (int i = 0; i < 10; i++) t_frame(&small, PX_KIND_RESULT, 0, (uint64_t)i, 100);
    CHECK_EQ(t_write_all(p[1], small.s.p, small.s.n), 0);
    int64_t n = px_decoder_read(d, p[0]);
    CHECK_EQ(n, (int64_t)small.s.n);
    int got = 0, bad = 0;
    CHECK_EQ(t_drain(d, &small, &got, &bad), 0);
    CHECK(!bad);
    CHECK_EQ(got, 10);
    CHECK_EQ(px_decoder_read(d, p[0]), -EAGAIN);
    close(p[1]);
    CHECK_EQ(px_decoder_read(d, p[0]), 0);
    CHECK_EQ(px_decoder_buffered(d), 0);
    close(p[0]);
    px_decoder_free(d);
    t_stream_free(&small);
}

/* The peer stops mid-payload: end of file with bytes still buffered. */
static void test_decoder_truncated_then_eof(void) {
    int p[2];
    CHECK_EQ(px_pipe(p, 0, 0), 0);
    t_stream st = {0};
    t_frame(&st, PX_KIND_RESULT, 0, 1, 500);
    CHECK_EQ(t_write_all(p[1], st.s.p, st.s.n - 100), 0);
    close(p[1]);
    px_decoder *d = t_decoder(1000);
    int64_t n, total = 0;
    while ((n = px_decoder_read(d, p[0])) > 0) total += n;
    CHECK_EQ(n, 0);
    CHECK_EQ(total, (int64_t)st.s.n - 100);
    px_frame f;
    CHECK_EQ(px_decoder_next(d, &f), 0);
    CHECK_EQ(px_decoder_buffered(d), st.s.n - 100);
    CHECK(strcmp(px_decoder_error(d), "") == 0);
    close(p[0]);
    px_decoder_free(d);
    t_stream_free(&st);
}

/* A signal during a blocking read: -EINTR, not sticky; the next read works. */
static void test_decoder_read_eintr(void) {
    int p[2];
    CHECK_EQ(px_pipe(p, 0, 0), 0);
    px_decoder *d = t_decoder(1000);
    t_alarm_every(20000, 0);
    int64_t rc = px_decoder_read(d, p[0]);
    t_alarm_every(0, 0);
    CHECK_EQ(rc, -EINTR);
    CHECK(t_alarms >= 1);
    t_stream st = {0};
    t_frame(&st, PX_KIND_RESULT, 0, 3, 10);
    CHECK_EQ(t_write_all(p[1], st.s.p, st.s.n), 0);
    CHECK_EQ(px_decoder_read(d, p[0]), (int64_t)st.s.n);
    int got = 0, bad = 0;
    CHECK_EQ(t_drain(d, &st, &got, &bad), 0);
    CHECK_EQ(got, 1);
    CHECK(!bad);
    close(p[0]);
    close(p[1]);
    px_decoder_free(d);
    t_stream_free(&st);
}

/* A failed read(2) is reported, not sticky. */
static void test_decoder_read_bad_fd(void) {
    px_decoder *d = t_decoder(1000);
    CHECK_EQ(px_decoder_read(d, -1), -EBADF);
    CHECK(strcmp(px_decoder_error(d), "") == 0);
    t_stream st = {0};
    t_frame(&st, PX_KIND_CALL, 0, 1, 1);
    CHECK_EQ(px_decoder_feed(d, st.s.p, st.s.n), 0);
    int got = 0, bad = 0;
    CHECK_EQ(t_drain(d, &st, &got, &bad), 0);
    CHECK_EQ(got, 1);
    px_decoder_free(d);
    t_stream_free(&st);
}

typedef struct {
    int fd;
    const t_stream *st;
    int rc;
    long delay_us; /* before the first byte */
} t_writer_arg;

static void *t_writer_main(void *arg) {
    t_writer_arg *a = arg;
    if (a->delay_us > 0) usleep((useconds_t)a->delay_us);
    a->rc = t_write_all(a->fd, a->st->s.p, a->st->s.n);
    close(a->fd);
    return NULL;
}

/* 8 MiB frames between small ones, through a real pipe; afterwards the
 * buffer is back to its initial size. */
static void test_decoder_large_frames_through_pipe(void) {
    t_stream st = {0};
    for (int i = 0; i < 3; i++) {
        t_frame(&st, PX_KIND_RESULT, 0, (uint64_t)(10 * i + 1), 5);
        t_frame(&st, PX_KIND_RESULT, 0, (uint64_t)(10 * i + 2), (8u << 20) + (uint64_t)i);
        t_frame(&st, PX_KIND_ERROR, 0, (uint64_t)(10 * i + 3), 0);
    }
    t_frame(&st, PX_KIND_RESULT, 0, 99, 3);
    int p[2];
    CHECK_EQ(px_pipe(p, 0, 0), 0);
    t_writer_arg a = {p[1], &st, -1, 0};
    pthread_t th;
    CHECK_EQ(pthread_create(&th, NULL, t_writer_main, &a), 0);
    px_decoder *d = t_decoder(16u << 20);
    int got = 0, bad = 0;
    uint64_t max_cap = 0;
    int64_t n;
    while ((n = px_decoder_read(d, p[0])) > 0 || n == -EINTR) {
        if (d->cap > max_cap) max_cap = d->cap;
        if (t_drain(d, &st, &got, &bad) != 0 || bad) break;
    }
    pthread_join(th, NULL);
    close(p[0]);
    CHECK_EQ(a.rc, 0);
    CHECK_EQ(n, 0);
    CHECK(!bad);
    CHECK_EQ(got, st.n);
    CHECK_EQ(px_decoder_buffered(d), 0);
    CHECK(max_cap >= (8u << 20));
    /* Shrinks on the next read or feed once empty. */
    t_stream tail = {0};
    t_frame(&tail, PX_KIND_RESULT, 0, 1, 1);
    CHECK_EQ(px_decoder_feed(d, tail.s.p, tail.s.n), 0);
    CHECK_EQ(d->cap, PX_DECODER_INITIAL);
    got = 0;
    CHECK_EQ(t_drain(d, &tail, &got, &bad), 0);
    CHECK_EQ(got, 1);
    CHECK(!bad);
    px_decoder_free(d);
    t_stream_free(&st);
    t_stream_free(&tail);
}

/* After a large frame, fed in pieces, the buffer shrinks back and small
 * frames split anywhere still decode. */
static void test_decoder_shrinks_back(void) {
    t_stream st = {0};
    t_frame(&st, PX_KIND_RESULT, 0, 1, 1 << 20);
    for (int i = 0; i < 50; i++) t_frame(&st, PX_KIND_RESULT, 0, (uint64_t)(i + 2), (uint64_t)i);
    px_decoder *d = t_decoder(2 << 20);
    int got = 0, bad = 0;
    size_t big_end = st.e[0].end, off = 0;
    while (off < big_end) {
        size_t k = big_end - off < 70000 ? big_end - off : 70000;
        CHECK_EQ(px_decoder_feed(d, st.s.p + off, k), 0);
        off += k;
        CHECK_EQ(t_drain(d, &st, &got, &bad), 0);
    }
    CHECK_EQ(got, 1);
    CHECK(d->cap > PX_DECODER_INITIAL);
    size_t step = 7;
    while (off < st.s.n) {
        size_t k = st.s.n - off < step ? st.s.n - off : step;
        CHECK_EQ(px_decoder_feed(d, st.s.p + off, k), 0);
        off += k;
        CHECK_EQ(t_drain(d, &st, &got, &bad), 0);
        CHECK_EQ(d->cap, PX_DECODER_INITIAL);
        step = step % 97 + 13;
    }
    CHECK(!bad);
    CHECK_EQ(got, st.n);
    px_decoder_free(d);
    t_stream_free(&st);
}

/* Bytes keep coming while nobody calls next: the buffer grows to hold them. */
static void test_decoder_feed_without_next(void) {
    t_stream st = {0};
    for (int i = 0; i < 300; i++) t_frame(&st, PX_KIND_CALL, 0, (uint64_t)i, 1000);
    px_decoder *d = t_decoder(1000);
    for (size_t off = 0; off < st.s.n; off += 1000) {
        size_t k = st.s.n - off < 1000 ? st.s.n - off : 1000;
        CHECK_EQ(px_decoder_feed(d, st.s.p + off, k), 0);
    }
    CHECK_EQ(px_decoder_buffered(d), st.s.n);
    int got = 0, bad = 0;
    CHECK_EQ(t_drain(d, &st, &got, &bad), 0);
    CHECK(!bad);
    CHECK_EQ(got, st.n);
    px_decoder_free(d);
    t_stream_free(&st);
}

/* Frames taken one after another stay valid until the next feed. */
static void test_decoder_payloads_valid_until_feed(void) {
    t_stream st = {0};
    for (int i = 0; i < 5; i++) t_frame(&st, PX_KIND_RESULT, 0, (uint64_t)i, 200);
    px_decoder *d = t_decoder(1000);
    CHECK_EQ(px_decoder_feed(d, st.s.p, st.s.n), 0);
    px_frame f[5];
    for (int i = 0; i < 5; i++) CHECK_EQ(px_decoder_next(d, &f[i]), 1);
    for (int i = 0; i < 5; i++) {
        CHECK_EQ(f[i].id, i);
        CHECK(memcmp(f[i].payload, st.s.p + st.e[i].payload_off, 200) == 0);
    }
    px_decoder_free(d);
    t_stream_free(&st);
}

/* Many frames per call: never more than max, offsets from *base, frames
 * before an error first and the error on the next call. */
static void test_decoder_next_many(void) {
    t_stream st = {0};
    t_mixed_stream(&st);
    char junk[PX_HEADER_SIZE] = {0};
    t_buf_put(&st.s, junk, sizeof(junk));
    px_decoder *d = t_decoder(1 << 20);
    CHECK_EQ(px_decoder_feed(d, st.s.p, st.s.n), 0);
    uint64_t meta[4 * 64];
    const char *base = NULL;
    CHECK_EQ(px_decoder_next_many(d, meta, 0, &base), 0);
    CHECK_EQ(px_decoder_buffered(d), st.s.n);
    int got = 0;
    for (;;) {
        int n = px_decoder_next_many(d, meta, 4, &base);
        CHECK(n <= 4);
        if (n <= 0) {
            CHECK_EQ(n, -PX_EBADMSG);
            break;
        }
        for (int i = 0; i < n; i++, got++) {
            const t_expect *e = &st.e[got];
            CHECK_EQ(meta[4 * i], e->kind | ((uint64_t)e->flags << 8));
            CHECK(meta[4 * i + 1] == e->id);
            CHECK_EQ(meta[4 * i + 3], e->len);
            CHECK(memcmp(base + meta[4 * i + 2], st.s.p + e->payload_off, (size_t)e->len) == 0);
        }
    }
    CHECK_EQ(got, st.n);
    CHECK_EQ(px_decoder_next_many(d, meta, 64, &base), -PX_EBADMSG);
    CHECK_EQ(px_decoder_buffered(d), PX_HEADER_SIZE);
    px_decoder_free(d);
    t_stream_free(&st);
}

/* read_many with spin_ns: an empty pipe is read again until the time is up;
 * bytes or end of file end the spin at once; a frame already complete is
 * returned without spinning. */
static void test_decoder_read_many_spins(void) {
    int p[2];
    CHECK_EQ(px_pipe(p, 1, 0), 0);
    px_decoder *d = t_decoder(1000);
    uint64_t meta[4 * 4];
    const char *base = NULL;
    px_read_status status;
    int64_t t0 = t_now_ns();
    CHECK_EQ(px_decoder_read_many(d, p[0], meta, 4, &base, &status, 3000000), 0);
    CHECK_EQ(status.read, -EAGAIN);
    CHECK(t_now_ns() - t0 >= 3000000); /* it did spin its 3 ms */
    /* A frame written 20 ms into a 30 s spin: taken as it comes. */
    t_stream st = {0};
    t_frame(&st, PX_KIND_RESULT, 0, 7, 10);
    t_writer_arg a = {p[1], &st, -1, 20000};
    pthread_t th;
    CHECK_EQ(pthread_create(&th, NULL, t_writer_main, &a), 0);
    t0 = t_now_ns();
    int n = px_decoder_read_many(d, p[0], meta, 4, &base, &status, 30000000000LL);
    int64_t took = t_now_ns() - t0;
    pthread_join(th, NULL);
    CHECK_EQ(a.rc, 0);
    CHECK_EQ(n, 1);
    CHECK_EQ(status.read, (int64_t)st.s.n);
    CHECK(meta[1] == 7 && meta[3] == 10);
    CHECK(took < 10000000000LL);
    /* Writer closed: end of file ends the spin. */
    CHECK_EQ(px_decoder_read_many(d, p[0], meta, 4, &base, &status, 30000000000LL), 0);
    CHECK_EQ(status.read, 0);
    close(p[0]);
    /* A complete frame already held: returned, no read needed, no spin. */
    CHECK_EQ(px_pipe(p, 1, 0), 0);
    CHECK_EQ(px_decoder_feed(d, st.s.p, st.s.n), 0);
    t0 = t_now_ns();
    CHECK_EQ(px_decoder_read_many(d, p[0], meta, 4, &base, &status, 30000000000LL), 1);
    CHECK(t_now_ns() - t0 < 10000000000LL);
    close(p[0]);
    close(p[1]);
    px_decoder_free(d);
    t_stream_free(&st);
}

/* ---- writer ------------------------------------------------------------ */

static void test_writev_bad_count(void) {
    int p[2];
    CHECK_EQ(px_pipe(p, 3, 0), 0);
    px_iov iov[PX_IOV_MAX + 1];
    char byte = 'x';
    for (int i = 0; i <= PX_IOV_MAX; i++) iov[i] = (px_iov){&byte, 1};
    CHECK_EQ(px_writev(p[1], iov, 0), -EINVAL);
    CHECK_EQ(px_writev(p[1], iov, -1), -EINVAL);
    CHECK_EQ(px_writev(p[1], iov, PX_IOV_MAX + 1), -EINVAL);
    CHECK_EQ(px_writev(p[1], iov, PX_IOV_MAX), PX_IOV_MAX);
    CHECK_EQ(px_writev(-1, iov, 1), -EBADF);
    close(p[0]);
    close(p[1]);
}

/* The most buffers, some empty, in one call: the bytes arrive in order. */
static void test_writev_many_buffers(void) {
    int p[2];
    CHECK_EQ(px_pipe(p, 0, 0), 0);
    px_iov iov[PX_IOV_MAX];
    char *bufs[PX_IOV_MAX];
    t_buf want = {0};
    for (int i = 0; i < PX_IOV_MAX; i++) {
        size_t n = (size_t)(i % 5 == 0 ? 0 : i * 11);
        bufs[i] = t_xmalloc(n);
        t_fill(bufs[i], n, (uint64_t)i);
        iov[i] = (px_iov){bufs[i], n};
        t_buf_put(&want, bufs[i], n);
    }
    CHECK_EQ(px_writev(p[1], iov, PX_IOV_MAX), (int64_t)want.n);
    char *got = t_xmalloc(want.n);
    CHECK_EQ(t_read_all(p[0], got, want.n), 0);
    CHECK(memcmp(got, want.p, want.n) == 0);
    px_iov empty = {NULL, 0};
    CHECK_EQ(px_writev(p[1], &empty, 1), 0);
    free(got);
    free(want.p);
    for (int i = 0; i < PX_IOV_MAX; i++) free(bufs[i]);
    close(p[0]);
    close(p[1]);
}

typedef struct {
    int fd;
    size_t n;
    char *dst;
    int slow;
    int rc;
} t_reader_arg;

static void *t_reader_main(void *arg) {
    t_reader_arg *a = arg;
    size_t off = 0;
    a->rc = 0;
    while (off < a->n) {
        size_t k = a->slow ? 3000 : a->n - off;
        if (k > a->n - off) k = a->n - off;
        ssize_t r = read(a->fd, a->dst + off, k);
        if (r < 0 && errno == EINTR) continue;
        if (r <= 0) {
            a->rc = -1;
            break;
        }
        off += (size_t)r;
        if (a->slow && off % 7 == 0) {
            struct timespec ts = {0, 100000};
            nanosleep(&ts, NULL);
        }
    }
    return NULL;
}

/* A blocking write of several MiB returns only when all of it is written,
 * resuming at the right byte after every partial write, even while signals
 * keep interrupting it. */
static void test_writev_blocking_big_with_signals(void) {
    int p[2];
    CHECK_EQ(px_pipe(p, 0, 0), 0);
    size_t sizes[3] = {(3u << 20) + 17, 1, (1u << 20) + 5};
    t_buf want = {0};
    char *bufs[3];
    px_iov iov[3];
    for (int i = 0; i < 3; i++) {
        bufs[i] = t_xmalloc(sizes[i]);
        t_fill(bufs[i], sizes[i], (uint64_t)i + 100);
        iov[i] = (px_iov){bufs[i], sizes[i]};
        t_buf_put(&want, bufs[i], sizes[i]);
    }
    char *got = t_xmalloc(want.n);
    t_reader_arg a = {p[0], want.n, got, 1, -1};
    pthread_t th;
    CHECK_EQ(pthread_create(&th, NULL, t_reader_main, &a), 0);
    t_alarm_every(1000, 1000);
    int64_t rc = px_writev(p[1], iov, 3);
    t_alarm_every(0, 0);
    pthread_join(th, NULL);
    CHECK_EQ(rc, (int64_t)want.n);
    CHECK_EQ(a.rc, 0);
    CHECK(memcmp(got, want.p, want.n) == 0);
    free(got);
    free(want.p);
    for (int i = 0; i < 3; i++) free(bufs[i]);
    close(p[0]);
    close(p[1]);
}

/* A non-blocking pipe: a partial count when it fills, -EAGAIN when full,
 * the rest once the reader drains. */
static void test_writev_nonblocking_full(void) {
    int p[2];
    CHECK_EQ(px_pipe(p, 2, 0), 0);
    size_t n = 1u << 20;
    char *src = t_xmalloc(n);
    t_fill(src, n, 5);
    char *dst = t_xmalloc(n);
    size_t sent = 0, recvd = 0;
    int saw_partial = 0, saw_eagain = 0;
    while (recvd < n) {
        px_iov iov = {src + sent, n - sent};
        if (sent < n) {
            int64_t w = px_writev(p[1], &iov, 1);
            if (w == -EAGAIN) {
                saw_eagain = 1;
            } else {
                CHECK(w > 0);
                if ((size_t)w < n - sent) saw_partial = 1;
                sent += (size_t)w;
            }
        }
        /* Drain only when the pipe is full, as the waiter would tell. */
        if (saw_eagain || sent == n) {
            ssize_t r = read(p[0], dst + recvd, n - recvd);
            CHECK(r > 0);
            recvd += (size_t)r;
        }
    }
    CHECK(saw_partial);
    CHECK(saw_eagain);
    CHECK(memcmp(src, dst, n) == 0);
    free(src);
    free(dst);
    close(p[0]);
    close(p[1]);
}

static void test_writev_epipe(void) {
    struct sigaction ign, old;
    memset(&ign, 0, sizeof(ign));
    ign.sa_handler = SIG_IGN;
    sigaction(SIGPIPE, &ign, &old);
    int p[2];
    CHECK_EQ(px_pipe(p, 2, 0), 0);
    close(p[0]);
    px_iov iov = {"abc", 3};
    int64_t rc = px_writev(p[1], &iov, 1);
    sigaction(SIGPIPE, &old, NULL);
    close(p[1]);
    CHECK_EQ(rc, -EPIPE);
}

/* ---- pipes, rss, parent death, identity --------------------------------- */

static void test_pipe_flags(void) {
    for (int nb = 0; nb < 4; nb++) {
        int p[2] = {-1, -1};
        CHECK_EQ(px_pipe(p, nb, 0), 0);
        for (int end = 0; end < 2; end++) {
            CHECK(fcntl(p[end], F_GETFD) & FD_CLOEXEC);
            int want_nb = (nb >> end) & 1;
            CHECK_EQ(!!(fcntl(p[end], F_GETFL) & O_NONBLOCK), want_nb);
        }
        close(p[0]);
        close(p[1]);
    }
#if defined(__linux__) && defined(F_GETPIPE_SZ)
    int p[2];
    CHECK_EQ(px_pipe(p, 0, 0), 0);
    int dflt = fcntl(p[1], F_GETPIPE_SZ);
    close(p[0]);
    close(p[1]);
    CHECK_EQ(px_pipe(p, 3, 256 * 1024), 0);
    int sz = fcntl(p[1], F_GETPIPE_SZ);
    close(p[0]);
    close(p[1]);
    /* Best effort: raised, or left alone when the limit refuses it. */
    CHECK(sz == dflt || sz >= 256 * 1024);
#endif
}

static void test_rss(void) {
    int64_t before = px_rss();
#if defined(__linux__) || defined(__APPLE__)
    CHECK(before > 0);
    size_t n = 64u << 20;
    char *p = t_xmalloc(n);
    memset(p, 1, n);
    int64_t after = px_rss();
    CHECK(after - before >= (int64_t)(n / 2));
    free(p);
#else
    CHECK_EQ(before, -ENOSYS);
#endif
}

static void test_parent_death_signal(void) {
    pid_t pid = fork();
    CHECK(pid >= 0);
    if (pid == 0) {
        int code = 0;
        if (px_parent_death_signal(SIGUSR1, (int)getppid()) != 0) code |= 1;
        if (px_parent_death_signal(SIGUSR1, (int)getppid() + 1) != -ESRCH) code |= 2;
        _exit(code);
    }
    int status = 0;
    CHECK_EQ(waitpid(pid, &status, 0), pid);
    CHECK(WIFEXITED(status));
    CHECK_EQ(WEXITSTATUS(status), 0);
}

static void test_identity(void) {
    CHECK_EQ(px_core_abi(), PX_CORE_ABI);
    CHECK(px_build_stamp() != NULL);
    CHECK(strlen(px_build_stamp()) > 0);
}

/* ---- the waiter, each test run on both backends ------------------------- */

static const int t_backends[] = {PX_BACKEND_EPOLL, PX_BACKEND_POLL};
#define FOR_EACH_BACKEND(w)                                                \
    for (size_t bi_ = 0; bi_ < sizeof(t_backends) / sizeof(t_backends[0]); bi_++) \
        for (px_waiter *w = t_waiter(t_backends[bi_]); w != NULL;          \
             px_waiter_free(w), w = NULL)

static px_waiter *t_waiter(int backend) {
    px_waiter *w = NULL;
    if (px_waiter_new(&w, backend) != 0) exit(2);
    return w;
}

/* Only a CHECK that fails leaves the loop body early; free the waiter then. */
#define WCHECK_EQ(w, a, b)                                                 \
    do {                                                                   \
        long long a_ = (long long)(a), b_ = (long long)(b);                \
        if (a_ != b_) {                                                    \
            fprintf(stderr, "%s:%d: %s [%s]: %s == %s failed: %lld != %lld\n", \
                    __FILE__, __LINE__, __func__,                          \
                    px_waiter_backend(w) == PX_BACKEND_EPOLL ? "epoll" : "poll", \
                    #a, #b, a_, b_);                                       \
            failed = 1;                                                    \
            px_waiter_free(w);                                             \
            return;                                                        \
        }                                                                  \
    } while (0)

static void test_waiter_new(void) {
    px_waiter *w = (px_waiter *)&failed;
    CHECK_EQ(px_waiter_new(&w, 99), -EINVAL);
    CHECK(w == NULL);
    CHECK_EQ(px_waiter_new(&w, PX_BACKEND_DEFAULT), 0);
#ifdef __linux__
    CHECK_EQ(px_waiter_backend(w), PX_BACKEND_EPOLL);
#else
    CHECK_EQ(px_waiter_backend(w), PX_BACKEND_POLL);
#endif
    px_waiter_free(w);
    px_waiter_free(NULL);
    FOR_EACH_BACKEND(w) {
        WCHECK_EQ(w, px_waiter_backend(w), t_backends[bi_]);
        px_event ev[1];
        WCHECK_EQ(w, px_waiter_wait(w, ev, 0, 0), -EINVAL);
    }
}

static void test_waiter_readable(void) {
    FOR_EACH_BACKEND(w) {
        int p[2];
        WCHECK_EQ(w, px_pipe(p, 3, 0), 0);
        WCHECK_EQ(w, px_waiter_add(w, p[0], PX_READABLE, 1234), 0);
        px_event ev[4];
        WCHECK_EQ(w, px_waiter_wait(w, ev, 4, 0), 0);
        WCHECK_EQ(w, write(p[1], "x", 1), 1);
        WCHECK_EQ(w, px_waiter_wait(w, ev, 4, 1000000000), 1);
        WCHECK_EQ(w, ev[0].token, 1234);
        WCHECK_EQ(w, ev[0].events, PX_READABLE);
        /* Level-triggered: still there until read. */
        WCHECK_EQ(w, px_waiter_wait(w, ev, 4, 0), 1);
        char c;
        WCHECK_EQ(w, read(p[0], &c, 1), 1);
        WCHECK_EQ(w, px_waiter_wait(w, ev, 4, 0), 0);
        WCHECK_EQ(w, px_waiter_del(w, p[0]), 0);
        close(p[0]);
        close(p[1]);
    }
}

static void test_waiter_writable(void) {
    FOR_EACH_BACKEND(w) {
        int p[2];
        WCHECK_EQ(w, px_pipe(p, 3, 0), 0);
        WCHECK_EQ(w, px_waiter_add(w, p[1], PX_WRITABLE, 7), 0);
        px_event ev[4];
        WCHECK_EQ(w, px_waiter_wait(w, ev, 4, 0), 1);
        WCHECK_EQ(w, ev[0].token, 7);
        WCHECK_EQ(w, ev[0].events, PX_WRITABLE);
        /* Fill it: no longer writable. */
        char buf[4096];
        memset(buf, 0, sizeof(buf));
        while (write(p[1], buf, sizeof(buf)) > 0) {
        }
        WCHECK_EQ(w, errno, EAGAIN);
        WCHECK_EQ(w, px_waiter_wait(w, ev, 4, 0), 0);
        /* Drain it: writable again. */
        while (read(p[0], buf, sizeof(buf)) > 0) {
        }
        WCHECK_EQ(w, px_waiter_wait(w, ev, 4, 0), 1);
        WCHECK_EQ(w, ev[0].events, PX_WRITABLE);
        WCHECK_EQ(w, px_waiter_del(w, p[1]), 0);
        close(p[0]);
        close(p[1]);
    }
}

/* The writer closed: the reader is woken as readable and meets end of file;
 * this holds even when it watches for nothing. */
static void test_waiter_hangup_is_readable(void) {
    FOR_EACH_BACKEND(w) {
        for (uint32_t mask = 0; mask <= PX_READABLE; mask += PX_READABLE) {
            int p[2];
            WCHECK_EQ(w, px_pipe(p, 3, 0), 0);
            WCHECK_EQ(w, px_waiter_add(w, p[0], mask, 5), 0);
            px_event ev[4];
            WCHECK_EQ(w, px_waiter_wait(w, ev, 4, 0), 0);
            close(p[1]);
            WCHECK_EQ(w, px_waiter_wait(w, ev, 4, 1000000000), 1);
            WCHECK_EQ(w, ev[0].token, 5);
            WCHECK_EQ(w, ev[0].events & PX_READABLE, PX_READABLE);
            char c;
            WCHECK_EQ(w, read(p[0], &c, 1), 0);
            WCHECK_EQ(w, px_waiter_del(w, p[0]), 0);
            close(p[0]);
        }
    }
}

/* The reader closed: a writer waiting for room is woken and meets EPIPE. */
static void test_waiter_reader_gone_is_writable(void) {
    FOR_EACH_BACKEND(w) {
        int p[2];
        WCHECK_EQ(w, px_pipe(p, 3, 0), 0);
        char buf[4096];
        memset(buf, 0, sizeof(buf));
        while (write(p[1], buf, sizeof(buf)) > 0) {
        }
        WCHECK_EQ(w, px_waiter_add(w, p[1], PX_WRITABLE, 8), 0);
        px_event ev[4];
        WCHECK_EQ(w, px_waiter_wait(w, ev, 4, 0), 0);
        close(p[0]);
        WCHECK_EQ(w, px_waiter_wait(w, ev, 4, 1000000000), 1);
        WCHECK_EQ(w, ev[0].token, 8);
        WCHECK_EQ(w, ev[0].events & PX_WRITABLE, PX_WRITABLE);
        WCHECK_EQ(w, px_waiter_del(w, p[1]), 0);
        close(p[1]);
    }
}

/* Nothing ready: 0 events, and never before the timeout. */
static void test_waiter_timeout(void) {
    FOR_EACH_BACKEND(w) {
        int p[2];
        WCHECK_EQ(w, px_pipe(p, 3, 0), 0);
        WCHECK_EQ(w, px_waiter_add(w, p[0], PX_READABLE, 1), 0);
        px_event ev[4];
        static const int64_t timeouts[] = {0, 1, 999999, 1000001, 50000000};
        for (size_t i = 0; i < sizeof(timeouts) / sizeof(timeouts[0]); i++) {
            int64_t t0 = t_now_ns();
            WCHECK_EQ(w, px_waiter_wait(w, ev, 4, timeouts[i]), 0);
            int64_t took = t_now_ns() - t0;
            if (took < timeouts[i]) {
                fprintf(stderr, "timeout %lld ns returned after %lld ns\n",
                        (long long)timeouts[i], (long long)took);
                WCHECK_EQ(w, 0, 1);
            }
        }
        WCHECK_EQ(w, px_waiter_del(w, p[0]), 0);
        close(p[0]);
        close(p[1]);
    }
}

/* Signals keep arriving: the wait still lasts its whole timeout. */
static void test_waiter_eintr_keeps_waiting(void) {
    FOR_EACH_BACKEND(w) {
        int p[2];
        WCHECK_EQ(w, px_pipe(p, 3, 0), 0);
        WCHECK_EQ(w, px_waiter_add(w, p[0], PX_READABLE, 1), 0);
        px_event ev[4];
        int64_t timeout = 200000000;
        t_alarm_every(10000, 10000);
        int64_t t0 = t_now_ns();
        int n = px_waiter_wait(w, ev, 4, timeout);
        int64_t took = t_now_ns() - t0;
        t_alarm_every(0, 0);
        WCHECK_EQ(w, n, 0);
        WCHECK_EQ(w, took >= timeout, 1);
        WCHECK_EQ(w, t_alarms >= 3, 1);
        WCHECK_EQ(w, px_waiter_del(w, p[0]), 0);
        close(p[0]);
        close(p[1]);
    }
}

typedef struct {
    int fd;
    long delay_us;
} t_late_arg;

static void *t_late_writer(void *arg) {
    t_late_arg *a = arg;
    struct timespec ts = {a->delay_us / 1000000, (a->delay_us % 1000000) * 1000};
    while (nanosleep(&ts, &ts) < 0 && errno == EINTR) {
    }
    if (write(a->fd, "y", 1) != 1) abort();
    return NULL;
}

/* A wait without a limit is not ended by signals either: it returns the
 * event that comes later. */
static void test_waiter_eintr_no_timeout(void) {
    FOR_EACH_BACKEND(w) {
        int p[2];
        WCHECK_EQ(w, px_pipe(p, 3, 0), 0);
        WCHECK_EQ(w, px_waiter_add(w, p[0], PX_READABLE, 42), 0);
        t_late_arg a = {p[1], 150000};
        pthread_t th;
        /* Block SIGALRM in the writer so it goes to the waiting thread. */
        sigset_t set, old;
        sigemptyset(&set);
        sigaddset(&set, SIGALRM);
        pthread_sigmask(SIG_BLOCK, &set, &old);
        int rc = pthread_create(&th, NULL, t_late_writer, &a);
        pthread_sigmask(SIG_SETMASK, &old, NULL);
        WCHECK_EQ(w, rc, 0);
        t_alarm_every(10000, 10000);
        px_event ev[4];
        int n = px_waiter_wait(w, ev, 4, -1);
        t_alarm_every(0, 0);
        pthread_join(th, NULL);
        WCHECK_EQ(w, n, 1);
        WCHECK_EQ(w, ev[0].token, 42);
        WCHECK_EQ(w, t_alarms >= 3, 1);
        WCHECK_EQ(w, px_waiter_del(w, p[0]), 0);
        close(p[0]);
        close(p[1]);
    }
}

static void test_waiter_add_mod_del(void) {
    FOR_EACH_BACKEND(w) {
        int p[2];
        WCHECK_EQ(w, px_pipe(p, 3, 0), 0);
        WCHECK_EQ(w, write(p[1], "z", 1), 1);
        px_event ev[4];
        WCHECK_EQ(w, px_waiter_add(w, -1, PX_READABLE, 1), -EBADF);
        WCHECK_EQ(w, px_waiter_mod(w, p[0], PX_READABLE, 1), -ENOENT);
        WCHECK_EQ(w, px_waiter_del(w, p[0]), -ENOENT);
        /* Watched for nothing: silent although readable. */
        WCHECK_EQ(w, px_waiter_add(w, p[0], 0, 1), 0);
        WCHECK_EQ(w, px_waiter_add(w, p[0], PX_READABLE, 1), -EEXIST);
        WCHECK_EQ(w, px_waiter_wait(w, ev, 4, 0), 0);
        WCHECK_EQ(w, px_waiter_mod(w, p[0], PX_READABLE, 2), 0);
        WCHECK_EQ(w, px_waiter_wait(w, ev, 4, 0), 1);
        WCHECK_EQ(w, ev[0].token, 2);
        /* A new token replaces the old one. */
        WCHECK_EQ(w, px_waiter_mod(w, p[0], PX_READABLE, UINT64_MAX), 0);
        WCHECK_EQ(w, px_waiter_wait(w, ev, 4, 0), 1);
        WCHECK_EQ(w, ev[0].token == UINT64_MAX, 1);
        WCHECK_EQ(w, px_waiter_mod(w, p[0], 0, 3), 0);
        WCHECK_EQ(w, px_waiter_wait(w, ev, 4, 0), 0);
        WCHECK_EQ(w, px_waiter_del(w, p[0]), 0);
        WCHECK_EQ(w, px_waiter_del(w, p[0]), -ENOENT);
        WCHECK_EQ(w, px_waiter_mod(w, p[0], PX_READABLE, 1), -ENOENT);
        WCHECK_EQ(w, px_waiter_wait(w, ev, 4, 0), 0);
        /* Both directions on one fd, under one token. */
        WCHECK_EQ(w, px_waiter_add(w, p[1], PX_READABLE | PX_WRITABLE, 9), 0);
        WCHECK_EQ(w, px_waiter_wait(w, ev, 4, 0), 1);
        WCHECK_EQ(w, ev[0].token, 9);
        WCHECK_EQ(w, ev[0].events, PX_WRITABLE);
        WCHECK_EQ(w, px_waiter_del(w, p[1]), 0);
        /* Re-added after removal. */
        WCHECK_EQ(w, px_waiter_add(w, p[0], PX_READABLE, 4), 0);
        WCHECK_EQ(w, px_waiter_wait(w, ev, 4, 0), 1);
        WCHECK_EQ(w, ev[0].token, 4);
        WCHECK_EQ(w, px_waiter_del(w, p[0]), 0);
        close(p[0]);
        close(p[1]);
        /* A closed fd is refused by both backends, as the header says. */
        WCHECK_EQ(w, px_waiter_add(w, p[0], PX_READABLE, 1), -EBADF);
    }
}

/* Removed, closed, and the number reused by a new pipe: only the new token
 * is ever reported. */
static void test_waiter_fd_reuse_after_del(void) {
    FOR_EACH_BACKEND(w) {
        int p[2], q[2];
        WCHECK_EQ(w, px_pipe(p, 3, 0), 0);
        WCHECK_EQ(w, px_waiter_add(w, p[0], PX_READABLE, 100), 0);
        WCHECK_EQ(w, px_waiter_del(w, p[0]), 0);
        close(p[0]);
        close(p[1]);
        WCHECK_EQ(w, px_pipe(q, 3, 0), 0);
        WCHECK_EQ(w, q[0], p[0]);
        WCHECK_EQ(w, px_waiter_add(w, q[0], PX_READABLE, 200), 0);
        WCHECK_EQ(w, write(q[1], "q", 1), 1);
        px_event ev[4];
        WCHECK_EQ(w, px_waiter_wait(w, ev, 4, 0), 1);
        WCHECK_EQ(w, ev[0].token, 200);
        WCHECK_EQ(w, px_waiter_del(w, q[0]), 0);
        close(q[0]);
        close(q[1]);
    }
}

/* Hundreds of fds, a third of them ready: exactly those, each once; fewer
 * slots than ready fds: never more than max. */
static void test_waiter_many_fds(void) {
    enum { NPIPES = 400 };
    static int p[NPIPES][2];
    FOR_EACH_BACKEND(w) {
        for (int i = 0; i < NPIPES; i++) {
            WCHECK_EQ(w, px_pipe(p[i], 3, 0), 0);
            WCHECK_EQ(w, px_waiter_add(w, p[i][0], PX_READABLE, (uint64_t)i + 1000), 0);
        }
        for (int i = 0; i < NPIPES; i += 3) WCHECK_EQ(w, write(p[i][1], "m", 1), 1);
        static px_event ev[NPIPES * 2];
        int n = px_waiter_wait(w, ev, NPIPES * 2, 1000000000);
        WCHECK_EQ(w, n, (NPIPES + 2) / 3);
        static char seen[NPIPES];
        memset(seen, 0, sizeof(seen));
        for (int i = 0; i < n; i++) {
            uint64_t k = ev[i].token - 1000;
            WCHECK_EQ(w, k < NPIPES, 1);
            WCHECK_EQ(w, k % 3, 0);
            WCHECK_EQ(w, seen[k], 0);
            WCHECK_EQ(w, ev[i].events, PX_READABLE);
            seen[k] = 1;
        }
        WCHECK_EQ(w, px_waiter_wait(w, ev, 10, 0), 10);
        /* Remove every ready one but the last: only it is left. */
        for (int i = 0; i < NPIPES - 3; i += 3) WCHECK_EQ(w, px_waiter_del(w, p[i][0]), 0);
        int last = ((NPIPES - 1) / 3) * 3;
        WCHECK_EQ(w, px_waiter_wait(w, ev, NPIPES, 0), 1);
        WCHECK_EQ(w, ev[0].token, (uint64_t)last + 1000);
        for (int i = 0; i < NPIPES; i++) {
            if (i % 3 != 0 || i == last) WCHECK_EQ(w, px_waiter_del(w, p[i][0]), 0);
            close(p[i][0]);
            close(p[i][1]);
        }
        WCHECK_EQ(w, px_waiter_wait(w, ev, 4, 0), 0);
    }
}

/* ---- main --------------------------------------------------------------- */

#define TESTS(X)                                        \
    X(header_layout)                                    \
    X(decoder_new_limits)                               \
    X(decoder_empty)                                    \
    X(decoder_byte_by_byte)                             \
    X(decoder_every_two_way_split)                      \
    X(decoder_every_three_way_split_of_one_frame)       \
    X(decoder_many_frames_one_feed)                     \
    X(decoder_zero_length_payload)                      \
    X(decoder_max_length_payload)                       \
    X(decoder_one_over_max)                             \
    X(decoder_huge_length_allocates_nothing)            \
    X(decoder_garbage_length_allocates_nothing)         \
    X(decoder_grows_with_the_bytes)                     \
    X(decoder_rewind)                                   \
    X(decoder_garbage_headers)                          \
    X(decoder_frames_before_garbage)                    \
    X(decoder_error_sticky)                             \
    X(decoder_read_pipe_eagain_eof)                     \
    X(decoder_truncated_then_eof)                       \
    X(decoder_read_eintr)                               \
    X(decoder_read_bad_fd)                              \
    X(decoder_large_frames_through_pipe)                \
    X(decoder_shrinks_back)                             \
    X(decoder_feed_without_next)                        \
    X(decoder_payloads_valid_until_feed)                \
    X(decoder_next_many)                                \
    X(decoder_read_many_spins)                          \
    X(writev_bad_count)                                 \
    X(writev_many_buffers)                              \
    X(writev_blocking_big_with_signals)                 \
    X(writev_nonblocking_full)                          \
    X(writev_epipe)                                     \
    X(pipe_flags)                                       \
    X(rss)                                              \
    X(parent_death_signal)                              \
    X(identity)                                         \
    X(waiter_new)                                       \
    X(waiter_readable)                                  \
    X(waiter_writable)                                  \
    X(waiter_hangup_is_readable)                        \
    X(waiter_reader_gone_is_writable)                   \
    X(waiter_timeout)                                   \
    X(waiter_eintr_keeps_waiting)                       \
    X(waiter_eintr_no_timeout)                          \
    X(waiter_add_mod_del)                               \
    X(waiter_fd_reuse_after_del)                        \
    X(waiter_many_fds)

HARNESS_MAIN(TESTS)
