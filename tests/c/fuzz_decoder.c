/*
 * fuzz_decoder.c - a fuzz harness for the frame decoder (csrc/frame.c).
 *
 * LLVMFuzzerTestOneInput takes one input and checks the decoder against a
 * plain reference parser of the same bytes:
 *   byte 0      picks the decoder's payload limit (from a table of sizes
 *               around the header size and powers of two);
 *   byte 1      picks how the rest is cut into chunks: sizes and whether a
 *               chunk is fed (px_decoder_feed) or written to a pipe and read
 *               (px_decoder_read), when frames are drained, and whether by
 *               px_decoder_next or px_decoder_next_many (max 1, 3 or 64;
 *               every other such take through px_decoder_read_many);
 *               each chunk's size also mixes in the input byte where it
 *               starts;
 *   bytes 2..   the stream.
 * Invariants checked (a failure prints why and aborts):
 *   - every frame handed out is the reference's next frame: same kind,
 *     flags, id and length; its payload lies inside the decoder's buffer,
 *     inside the bytes fed so far, and equals those bytes; length <= limit;
 *   - an error appears only once the bad header was fed, is the reference's
 *     error (-EBADMSG or -EMSGSIZE, the latter naming the length), and stays:
 *     later feed, read and next return it, and neither the buffered count
 *     nor the message changes;
 *   - without an error, buffered == bytes fed - bytes consumed, and at the
 *     end every reference frame was handed out.
 *
 * Two ways to build it:
 *
 * 1. Stand-alone, with its own seeded mutation loop (what the tests run;
 *    gcc or clang):
 *      cc -std=c99 -D_GNU_SOURCE -O1 -g -fsanitize=address,undefined \
 *         -fno-sanitize-recover=all tests/c/fuzz_decoder.c -o fuzz_decoder
 *      ./fuzz_decoder --seconds 60 [--seed N] [--iterations N] [--max-len N]
 *      ./fuzz_decoder crash-file...      # replay inputs, e.g. a saved crash
 *    The loop builds valid frame streams and mutates them (bit flips,
 *    interesting bytes, truncation, splicing, corrupted length fields,
 *    deleted or repeated ranges). Under a sanitizer a crash writes the input
 *    to fuzz-crash-<pid>.bin (in $PYEXEC_FUZZ_CRASH_DIR, else the current
 *    directory) so it can be replayed; a failed check writes it too.
 *
 * 2. Under libFuzzer, with clang (not installed by default: apt-get install
 *    clang):
 *      clang -D_GNU_SOURCE -DPX_LIBFUZZER -O1 -g \
 *         -fsanitize=fuzzer,address,undefined tests/c/fuzz_decoder.c \
 *         -o fuzz_decoder_lf
 *      mkdir -p /tmp/corpus && cp tests/c/corpus/seed-* /tmp/corpus/
 *      ./fuzz_decoder_lf -max_total_time=300 -max_len=65536 /tmp/corpus
 *    tests/c/corpus holds a few seed inputs in the layout above.
 *
 * frame.c is included, not linked, so the harness can check that a payload
 * points inside the decoder's buffer.
 */
#include "../../csrc/frame.c"

#define FZ_NAME "fuzz_decoder"
#include "fuzz_harness.h"


static const uint64_t fz_limits[] = {
    0, 1, 23, 24, 25, 100, 255, 256, 1000, 4095, 4096, 65535, 65536, 65537, 1 << 20,
};
#define FZ_NLIMITS (sizeof(fz_limits) / sizeof(fz_limits[0]))
/* Largest chunk that goes through the pipe: well under any pipe buffer, so
 * the write never blocks and one read takes it all. */
#define FZ_PIPE_CHUNK 4096


/* ---- the reference: the whole stream at once, the header spec read plainly */

typedef struct {
    size_t off;        /* header offset in the stream */
    uint8_t kind;
    uint16_t flags;
    uint64_t id, len;
} fz_ref_frame;

typedef struct {
    fz_ref_frame *frames;
    int n;
    int err;           /* 0, -EBADMSG or -EMSGSIZE */
    size_t err_at;     /* bytes that must be fed before err can be seen */
    uint64_t err_len;  /* the length an -EMSGSIZE names */
    size_t consumed;   /* bytes in whole frames before the end or the error */
} fz_ref;

static uint64_t fz_le(const uint8_t *p, int n) {
    uint64_t v = 0;
    for (int i = 0; i < n; i++) v |= (uint64_t)p[i] << (8 * i);
    return v;
}

static void fz_reference(const uint8_t *s, size_t n, uint64_t limit, fz_ref *r) {
    memset(r, 0, sizeof(*r));
    r->frames = malloc(sizeof(*r->frames) * (n / PX_HEADER_SIZE + 1));
    FZ_CHECK(r->frames != NULL);
    size_t off = 0;
    while (n - off >= PX_HEADER_SIZE) {
        const uint8_t *h = s + off;
        uint8_t kind = h[1];
        uint16_t flags = (uint16_t)fz_le(h + 2, 2);
        uint64_t len = fz_le(h + 16, 8);
        int bad = h[0] != PX_MAGIC || fz_le(h + 4, 4) != 0 || kind < 1 ||
                  kind > PX_KIND_MAX || (flags & ~(unsigned)PX_FLAGS_KNOWN) != 0;
        if (bad || len > limit) {
            r->err = bad ? -PX_EBADMSG : -PX_EMSGSIZE;
            r->err_at = off + PX_HEADER_SIZE;
            r->err_len = len;
            break;
        }
        if (n - off - PX_HEADER_SIZE < len) break;
        r->frames[r->n++] = (fz_ref_frame){off, kind, flags, fz_le(h + 8, 8), len};
        off += PX_HEADER_SIZE + (size_t)len;
    }
    r->consumed = off;
}

/* ---- running one input -------------------------------------------------- */

typedef struct {
    uint64_t runs, frames, bytes, ebadmsg, emsgsize, clean_end, partial_end, pipe_reads;
} fz_stats;

static fz_stats fz_st;
static int fz_pipe[2] = {-1, -1};

typedef struct {
    px_decoder *d;
    const uint8_t *s;   /* the stream */
    size_t fed;         /* bytes of s given to the decoder */
    int got;            /* frames handed out */
    int err;            /* the error seen, once seen */
    char msg[200];
    uint64_t buffered_at_err;
    const fz_ref *ref;
    uint64_t limit;
    int many;           /* 0: px_decoder_next; else px_decoder_next_many's max */
    int takes;          /* calls that took frames by many: every other one
                           goes through px_decoder_read_many (no read) */
} fz_run;

static void fz_check_sticky(fz_run *r, int rc) {
    FZ_CHECK(rc == r->err);
    FZ_CHECK(px_decoder_buffered(r->d) == r->buffered_at_err);
    FZ_CHECK(strcmp(px_decoder_error(r->d), r->msg) == 0);
}

/* A new error: the reference's, and only once its bad header is in. */
static void fz_new_error(fz_run *r, int rc) {
    FZ_CHECK(rc == r->ref->err);
    FZ_CHECK(r->fed >= r->ref->err_at);
    FZ_CHECK(r->got == r->ref->n);
    const char *msg = px_decoder_error(r->d);
    FZ_CHECK(msg[0] != '\0' && strlen(msg) < sizeof(r->msg));
    if (rc == -PX_EMSGSIZE) {
        char num[32];
        snprintf(num, sizeof(num), "%llu", (unsigned long long)r->ref->err_len);
        FZ_CHECK(strstr(msg, num) != NULL);
    }
    r->err = rc;
    snprintf(r->msg, sizeof(r->msg), "%s", msg);
    r->buffered_at_err = px_decoder_buffered(r->d);
    FZ_CHECK(r->buffered_at_err == r->fed - r->ref->consumed);
}

/* A frame handed out: the reference's next one, inside what was fed. */
static void fz_frame_ok(fz_run *r, const px_frame *f) {
    FZ_CHECK(!r->err);
    FZ_CHECK(r->got < r->ref->n);
    const fz_ref_frame *e = &r->ref->frames[r->got];
    FZ_CHECK(f->length <= r->limit);
    FZ_CHECK(f->kind == e->kind && f->flags == e->flags && f->id == e->id);
    FZ_CHECK(f->length == e->len);
    const char *lo = r->d->buf, *hi = r->d->buf + r->d->end;
    FZ_CHECK(f->payload >= lo && f->payload <= hi &&
             f->length <= (uint64_t)(hi - f->payload));
    FZ_CHECK(e->off + PX_HEADER_SIZE + e->len <= r->fed);
    FZ_CHECK(memcmp(f->payload, r->s + e->off + PX_HEADER_SIZE, (size_t)f->length) == 0);
    r->got++;
    fz_st.frames++;
}

#define FZ_MANY_MAX 64

/* Take every frame there is, one at a time (px_decoder_next) or up to
 * r->many at a time (px_decoder_next_many); check each. */
static void fz_drain(fz_run *r) {
    for (;;) {
        px_frame f[FZ_MANY_MAX];
        int n;
        if (r->many == 0) {
            n = px_decoder_next(r->d, &f[0]);
            FZ_CHECK(n <= 1);
        } else {
            uint64_t meta[4 * FZ_MANY_MAX];
            const char *base = NULL;
            px_read_status status = {1, 1, 0, 0};
            int via_read_many = r->takes++ & 1;
            if (via_read_many) {
                n = px_decoder_read_many(r->d, -1, meta, r->many, &base, &status, 0);
                /* No read asked; status.error is the sticky error after the take:
                 * the call's own when it failed, else the reference's once
                 * every good frame is out and its bad header was fed. */
                FZ_CHECK(status.read == -EAGAIN);
                if (n < 0) FZ_CHECK(status.error == n);
                else if (status.error != 0)
                    FZ_CHECK(status.error == r->ref->err && r->got + n == r->ref->n &&
                             r->fed >= r->ref->err_at);
                /* The buffer as it is now: a view of it may be kept by that. */
                FZ_CHECK(status.buf == (int64_t)(intptr_t)r->d->buf &&
                         status.cap == (int64_t)r->d->cap);
            } else {
                n = px_decoder_next_many(r->d, meta, r->many, &base);
            }
            FZ_CHECK(n <= r->many);
            if (n > 0) FZ_CHECK(base == r->d->buf);
            for (int i = 0; i < n; i++) {
                f[i].kind = (uint8_t)(meta[4 * i] & 0xff);
                f[i].flags = (uint16_t)(meta[4 * i] >> 8);
                FZ_CHECK((meta[4 * i] >> 24) == 0);
                f[i].id = meta[4 * i + 1];
                FZ_CHECK(meta[4 * i + 2] <= r->d->end);
                f[i].payload = base + meta[4 * i + 2];
                f[i].length = meta[4 * i + 3];
            }
        }
        if (n == 0) break;
        if (n < 0) {
            if (r->err) fz_check_sticky(r, n);
            else fz_new_error(r, n);
            return;
        }
        for (int i = 0; i < n; i++) fz_frame_ok(r, &f[i]);
    }
    if (!r->err) {
        size_t consumed = r->got ? r->ref->frames[r->got - 1].off + PX_HEADER_SIZE +
                                       (size_t)r->ref->frames[r->got - 1].len
                                 : 0;
        FZ_CHECK(px_decoder_buffered(r->d) == r->fed - consumed);
    }
}

static void fz_give(fz_run *r, const uint8_t *chunk, size_t k, int via_pipe) {
    if (via_pipe && fz_pipe[0] >= 0) {
        fz_st.pipe_reads++;
        ssize_t w = write(fz_pipe[1], chunk, k);
        FZ_CHECK(w == (ssize_t)k);
        int64_t n = px_decoder_read(r->d, fz_pipe[0]);
        if (r->err) {
            fz_check_sticky(r, (int)n);
            /* Nothing was read: empty the pipe for the next chunk. */
            char sink[FZ_PIPE_CHUNK];
            FZ_CHECK(read(fz_pipe[0], sink, sizeof(sink)) == (ssize_t)k);
            return;
        }
        FZ_CHECK(n == (int64_t)k);
    } else {
        int rc = px_decoder_feed(r->d, (const char *)chunk, k);
        if (r->err) {
            fz_check_sticky(r, rc);
            return;
        }
        FZ_CHECK(rc == 0);
    }
    r->fed += k;
}

static uint64_t fz_mix(uint64_t x) {
    x ^= x >> 33;
    x *= 0xff51afd7ed558ccdULL;
    x ^= x >> 33;
    x *= 0xc4ceb9fe1a85ec53ULL;
    x ^= x >> 33;
    return x;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (size < 2) return 0;
    fz_cur = data;
    fz_cur_size = size;
    if (fz_pipe[0] < 0 && pipe(fz_pipe) < 0) fz_pipe[0] = fz_pipe[1] = -1;
    uint64_t limit = fz_limits[data[0] % FZ_NLIMITS];
    uint8_t mode = data[1];
    const uint8_t *s = data + 2;
    size_t n = size - 2;

    fz_ref ref;
    fz_reference(s, n, limit, &ref);
    px_decoder *d = NULL;
    FZ_CHECK(px_decoder_new(&d, limit) == 0);
    /* Mode bits 6-7: px_decoder_next, or px_decoder_next_many by 1, 3, 64. */
    static const int manys[] = {0, 1, 3, FZ_MANY_MAX};
    fz_run r = {d, s, 0, 0, 0, "", 0, &ref, limit, manys[(mode >> 6) & 3], 0};

    /* Chunk sizes: up to 8, 64, 4096 bytes, or everything at once. */
    static const size_t maxes[] = {8, 64, FZ_PIPE_CHUNK, (size_t)-1};
    size_t max = maxes[mode & 3];
    int pipe_share = (mode >> 2) & 3;   /* 0..3 eighths of chunks read */
    int drain_every = (mode >> 4) & 1;  /* else drain on a coin flip */
    int feed_after_end = (mode >> 5) & 1;
    uint64_t state = fz_mix(mode * 0x9e3779b97f4a7c15ULL ^ (uint64_t)n);
    size_t off = 0;
    while (off < n) {
        state = fz_mix(state ^ s[off]);
        size_t k = max == (size_t)-1 ? n - off : 1 + (size_t)(state % max);
        if (k > n - off) k = n - off;
        int via_pipe = k <= FZ_PIPE_CHUNK && (int)((state >> 40) & 7) < pipe_share;
        fz_give(&r, s + off, k, via_pipe);
        off += k;
        if (drain_every || ((state >> 50) & 1)) fz_drain(&r);
    }
    fz_drain(&r);

    /* The end: the reference's frames and error, or a partial frame left. */
    FZ_CHECK(r.got == ref.n);
    FZ_CHECK(r.err == ref.err);
    if (r.err) {
        if (r.err == -PX_EBADMSG) fz_st.ebadmsg++;
        else fz_st.emsgsize++;
        /* Sticky to the end: more bytes, a read, another next. */
        for (int i = 0; i < 2; i++) {
            fz_give(&r, s, n < 16 ? n : 16, i);
            px_frame f;
            fz_check_sticky(&r, px_decoder_next(d, &f));
        }
    } else {
        FZ_CHECK(px_decoder_buffered(d) == n - ref.consumed);
        if (ref.consumed == n) fz_st.clean_end++;
        else fz_st.partial_end++;
        if (feed_after_end && ref.consumed == n) {
            /* A clean end, then the whole stream again: the same frames. */
            r.got = 0;
            r.fed = 0;
            fz_give(&r, s, n, 0);
            fz_drain(&r);
            FZ_CHECK(r.got == ref.n && !r.err);
        }
    }
    fz_st.runs++;
    fz_st.bytes += n;
    px_decoder_free(d);
    free(ref.frames);
    fz_cur = NULL;
    return 0;
}

#ifndef PX_LIBFUZZER
/* ---- the stand-alone mutation loop -------------------------------------- */

static uint64_t rng_state;

static uint64_t rnd(void) {
    rng_state += 0x9e3779b97f4a7c15ULL;
    return fz_mix(rng_state);
}

static size_t rnd_below(size_t n) { return n ? (size_t)(rnd() % n) : 0; }

typedef struct {
    uint8_t *p;
    size_t n, cap;
    size_t starts[256];  /* header offsets, for length corruption */
    int nstarts;
} gen_buf;

static void gb_put(gen_buf *b, const void *src, size_t n) {
    if (b->n + n > b->cap) {
        size_t cap = b->cap ? b->cap : 1024;
        while (cap < b->n + n) cap *= 2;
        uint8_t *np = realloc(b->p, cap);
        FZ_CHECK(np != NULL);
        b->p = np;
        b->cap = cap;
    }
    if (n) memcpy(b->p + b->n, src, n);
    b->n += n;
}

static uint64_t pick_len(uint64_t limit) {
    switch (rnd_below(10)) {
    case 0: return limit;
    case 1: return limit + 1;
    case 2: return limit ? limit - 1 : 0;
    case 3: return rnd_below(5000);
    case 4: return rnd_below(1000);
    default: return rnd_below(65);
    }
}

/* Two control bytes, then a valid stream of frames under the limit they
 * choose (some over it: the length cases the decoder must refuse). */
static void gen_stream(gen_buf *b, size_t max_len) {
    b->n = 0;
    b->nstarts = 0;
    uint8_t ctl[2] = {(uint8_t)rnd(), (uint8_t)rnd()};
    gb_put(b, ctl, 2);
    uint64_t limit = fz_limits[ctl[0] % FZ_NLIMITS];
    int frames = (int)rnd_below(24);
    for (int i = 0; i < frames; i++) {
        uint64_t len = pick_len(limit);
        if (len > limit && rnd_below(4)) len = limit;
        if (b->n + PX_HEADER_SIZE + len > max_len) break;
        char h[PX_HEADER_SIZE];
        uint64_t id = rnd_below(3) == 0 ? UINT64_MAX - rnd_below(2) : rnd();
        px_header_encode(h, (uint8_t)(1 + rnd_below(PX_KIND_MAX)),
                         (uint16_t)rnd_below(PX_FLAGS_KNOWN + 1), id, len);
        if (b->nstarts < 256) b->starts[b->nstarts++] = b->n;
        gb_put(b, h, sizeof(h));
        uint8_t pat[64];
        for (size_t j = 0; j < sizeof(pat); j++) pat[j] = (uint8_t)rnd();
        for (uint64_t left = len; left;) {
            size_t k = left < sizeof(pat) ? (size_t)left : sizeof(pat);
            gb_put(b, pat, k);
            left -= k;
        }
    }
}

static const uint64_t interesting_lens[] = {
    0, 1, 23, 24, 25, 255, 256, 1000, 1001, 4096, 65536, 65537, (1 << 20) + 1,
    PX_MAX_PAYLOAD_LIMIT, PX_MAX_PAYLOAD_LIMIT + 1, UINT64_MAX, UINT64_MAX - 23,
    (uint64_t)1 << 63,
};
static const uint8_t interesting_bytes[] = {0, 1, 2, 6, 7, 0x7f, 0x80, 0xff, PX_MAGIC};

static void mutate(gen_buf *b, gen_buf *other, size_t max_len) {
    int rounds = 1 + (int)rnd_below(4);
    for (int i = 0; i < rounds && b->n > 2; i++) {
        size_t body = b->n - 2;
        switch (rnd_below(9)) {
        case 0: /* bit flip */
            b->p[2 + rnd_below(body)] ^= (uint8_t)(1u << rnd_below(8));
            break;
        case 1: /* an interesting byte */
            b->p[2 + rnd_below(body)] =
                interesting_bytes[rnd_below(sizeof(interesting_bytes))];
            break;
        case 2: /* truncate */
            b->n = 2 + rnd_below(body + 1);
            break;
        case 3: /* corrupt a length field */
        case 4: {
            if (b->nstarts == 0) break;
            size_t at = b->starts[rnd_below((size_t)b->nstarts)] + 16;
            if (at + 8 > b->n) break;
            uint64_t v = rnd_below(2)
                             ? interesting_lens[rnd_below(sizeof(interesting_lens) /
                                                          sizeof(interesting_lens[0]))]
                             : rnd() >> rnd_below(64);
            if (rnd_below(3) == 0) v += rnd_below(3) - 1;
            put_u64((char *)b->p + at, v);
            break;
        }
        case 5: { /* splice: our head, another stream's tail */
            if (other->n <= 2) break;
            size_t cut = 2 + rnd_below(body + 1);
            size_t from = 2 + rnd_below(other->n - 2);
            size_t k = other->n - from;
            if (cut + k > max_len) k = max_len > cut ? max_len - cut : 0;
            b->n = cut;
            gb_put(b, other->p + from, k);
            break;
        }
        case 6: { /* delete a range */
            size_t a = 2 + rnd_below(body), k = 1 + rnd_below(b->n - a);
            memmove(b->p + a, b->p + a + k, b->n - a - k);
            b->n -= k;
            break;
        }
        case 7: { /* repeat a range (a frame sent twice, a header torn) */
            size_t a = 2 + rnd_below(body), k = 1 + rnd_below(b->n - a);
            if (k > 512) k = 512;
            if (b->n + k > max_len) break;
            uint8_t tmp[512];
            memcpy(tmp, b->p + a, k);
            size_t at = 2 + rnd_below(b->n - 2 + 1);
            gb_put(b, tmp, k); /* grow, then shift the tail */
            memmove(b->p + at + k, b->p + at, b->n - k - at);
            memcpy(b->p + at, tmp, k);
            break;
        }
        default: /* new control bytes: another limit, another chunking */
            b->p[rnd_below(2)] = (uint8_t)rnd();
            break;
        }
    }
}


int main(int argc, char **argv) {
    fz_opts o = {10, 0, (uint64_t)time(NULL), 64 * 1024};
    int rc = fz_parse(argc, argv, &o);
    if (rc >= 0) return rc;
    size_t max_len = o.max_len < 64 ? 64 : o.max_len;
    rng_state = o.seed;
    gen_buf cur = {0}, other = {0};
    double start = fz_now();
    for (uint64_t it = 0; !fz_done(&o, it, start); it++) {
        if (it % 16 == 0) gen_stream(&other, max_len);
        gen_stream(&cur, max_len);
        if (rnd_below(8)) mutate(&cur, &other, max_len);
        LLVMFuzzerTestOneInput(cur.p, cur.n);
    }
    free(cur.p);
    free(other.p);
    if (fz_pipe[0] >= 0) {
        close(fz_pipe[0]);
        close(fz_pipe[1]);
    }
    printf("runs %llu frames %llu bytes %llu ebadmsg %llu emsgsize %llu "
           "clean_end %llu partial_end %llu pipe_reads %llu seconds %.1f\n",
           (unsigned long long)fz_st.runs, (unsigned long long)fz_st.frames,
           (unsigned long long)fz_st.bytes, (unsigned long long)fz_st.ebadmsg,
           (unsigned long long)fz_st.emsgsize, (unsigned long long)fz_st.clean_end,
           (unsigned long long)fz_st.partial_end, (unsigned long long)fz_st.pipe_reads,
           fz_now() - start);
    return 0;
}
#endif /* PX_LIBFUZZER */
