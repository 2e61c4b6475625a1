/*
 * fuzz_slots.c - a fuzz harness for the slot protocol (px_slots_* in
 * csrc/arena.c), checked against a plain model.
 *
 * LLVMFuzzerTestOneInput takes one input and runs it as a sequence of
 * operations on one slot table:
 *   byte 0      picks the arena size and the table's slot count (tables);
 *   then, per operation, one byte picks what (alloc of a small, medium,
 *               large or edge size, release of a live slot, a bad release:
 *               a double release, a stale id, an id never handed out; a
 *               release_many mixing both; a reset) and the next bytes its
 *               argument.
 * The model is the list of live slots (id, offset, length). Checks (a
 * failure prints why, saves the input and aborts):
 *   - an allocation returns -EINVAL exactly for size 0, -EFBIG exactly for
 *     a size over half the arena; otherwise it succeeds exactly when the
 *     model has a free slot and a gap that fits the aligned size, and then
 *     at the model's first fit: inside the arena, aligned, overlapping no
 *     live slot, with an id that is not 0 and not live;
 *   - releasing a live id succeeds; a released, stale (before a reset) or
 *     made-up id fails with -EINVAL and changes nothing; release_many
 *     counts exactly the ids that were not live;
 *   - px_slots_stats always equals the model's count, bytes and largest gap.
 *
 * Built and run by tests/test_sanitizers.py like fuzz_decoder.c:
 *   cc -std=c99 -D_GNU_SOURCE -O1 -g -fsanitize=address,undefined \
 *      -fno-sanitize-recover=all tests/c/fuzz_slots.c csrc/arena.c -o fuzz_slots
 *   ./fuzz_slots --seconds 60 [--seed N] [--iterations N]
 *   ./fuzz_slots crash-file...           # replay saved inputs
 * or under libFuzzer (clang -DPX_LIBFUZZER -fsanitize=fuzzer,address,...).
 */
#include "../../csrc/pyexec.h"

#include <stdbool.h>

#define FZ_NAME "fuzz_slots"
#include "fuzz_harness.h"


static const struct {
    uint64_t size;
    uint32_t slots;
} fz_tables[] = {
    {64, 1}, {128, 2}, {4096, 4}, {4096, 64}, {65536, 8}, {65536, 1024},
    {1000, 16}, {1 << 20, 32}, {1 << 20, 3}, {(1ULL << 40), 256}, {8191, 7},
};
#define FZ_NTABLES (sizeof(fz_tables) / sizeof(fz_tables[0]))
#define FZ_MAX_LIVE 1024
#define FZ_MAX_DEAD 256


typedef struct {
    uint64_t runs, ops, allocs, releases, bad_releases, enospc, efbig, einval, resets, many;
} fz_stats;
static fz_stats fz_st;

typedef struct {
    uint32_t id;
    uint64_t off, len; /* len aligned */
} fz_live;

typedef struct {
    uint64_t arena;
    uint32_t max;
    fz_live live[FZ_MAX_LIVE];
    int n;
    uint32_t dead[FZ_MAX_DEAD]; /* ids released or reset: never live again
                                   within one run (generations do not wrap) */
    int ndead;
} fz_model;

static uint64_t fz_align(uint64_t n) {
    return (n + PX_SLOT_ALIGN - 1) & ~(uint64_t)(PX_SLOT_ALIGN - 1);
}

static int fz_cmp(const void *a, const void *b) {
    const fz_live *x = a, *y = b;
    return x->off < y->off ? -1 : x->off > y->off;
}

/* The model's first fit for need bytes, or UINT64_MAX. */
static uint64_t fz_first_fit(fz_model *m, uint64_t need) {
    qsort(m->live, (size_t)m->n, sizeof(m->live[0]), fz_cmp);
    uint64_t at = 0;
    for (int i = 0; i < m->n; i++) {
        if (m->live[i].off - at >= need) return at;
        at = m->live[i].off + m->live[i].len;
    }
    return m->arena - at >= need ? at : UINT64_MAX;
}

static void fz_check_stats(px_slots *s, fz_model *m) {
    uint64_t st[3], bytes = 0, gap = 0, at = 0;
    qsort(m->live, (size_t)m->n, sizeof(m->live[0]), fz_cmp);
    for (int i = 0; i < m->n; i++) {
        bytes += m->live[i].len;
        if (m->live[i].off - at > gap) gap = m->live[i].off - at;
        at = m->live[i].off + m->live[i].len;
    }
    if (m->arena - at > gap) gap = m->arena - at;
    px_slots_stats(s, st);
    FZ_CHECK(st[0] == (uint64_t)m->n);
    FZ_CHECK(st[1] == bytes);
    FZ_CHECK(st[2] == gap);
}

static void fz_mark_dead(fz_model *m, uint32_t id) {
    if (m->ndead < FZ_MAX_DEAD)
        m->dead[m->ndead++] = id;
    else
        m->dead[id % FZ_MAX_DEAD] = id;
}

static bool fz_is_live(const fz_model *m, uint32_t id) {
    for (int i = 0; i < m->n; i++)
        if (m->live[i].id == id) return true;
    return false;
}

static void fz_alloc(px_slots *s, fz_model *m, uint64_t size) {
    uint32_t id = 0;
    uint64_t off = 0;
    int rc = px_slots_alloc(s, size, &id, &off);
    if (size == 0) {
        FZ_CHECK(rc == -EINVAL);
        fz_st.einval++;
        return;
    }
    if (size > m->arena / 2) {
        FZ_CHECK(rc == -EFBIG);
        fz_st.efbig++;
        return;
    }
    uint64_t need = fz_align(size);
    uint64_t fit = (uint32_t)m->n < m->max ? fz_first_fit(m, need) : UINT64_MAX;
    if (fit == UINT64_MAX) {
        FZ_CHECK(rc == -ENOSPC);
        fz_st.enospc++;
        return;
    }
    FZ_CHECK(rc == 0);
    FZ_CHECK(off == fit);
    FZ_CHECK(off % PX_SLOT_ALIGN == 0 && off + need <= m->arena);
    FZ_CHECK(id != 0);
    FZ_CHECK(!fz_is_live(m, id));
    for (int i = 0; i < m->n; i++)
        FZ_CHECK(off + need <= m->live[i].off || m->live[i].off + m->live[i].len <= off);
    FZ_CHECK(m->n < FZ_MAX_LIVE);
    m->live[m->n++] = (fz_live){id, off, need};
    fz_st.allocs++;
}

static void fz_release_live(px_slots *s, fz_model *m, int k) {
    uint32_t id = m->live[k].id;
    FZ_CHECK(px_slots_release(s, id) == 0);
    m->live[k] = m->live[--m->n];
    fz_mark_dead(m, id);
    fz_st.releases++;
}

/* An id that is certainly not live: a dead one, or one made up. */
static uint32_t fz_bad_id(const fz_model *m, uint8_t how, uint8_t arg) {
    uint32_t id;
    switch (how % 4) {
    case 0:
        if (m->ndead > 0) return m->dead[arg % m->ndead];
        /* fall through */
    case 1:
        id = 0;
        break;
    case 2:
        id = (uint32_t)arg | ((uint32_t)(arg ^ 0x5a) << 16);
        break;
    default:
        id = 0xFFFF0000u | (uint32_t)(m->max + arg); /* index past the table */
        break;
    }
    return fz_is_live(m, id) ? 0 : id;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    static fz_model m;
    if (size < 1) return 0;
    fz_cur = data;
    fz_cur_size = size;
    fz_st.runs++;
    memset(&m, 0, sizeof(m));
    m.arena = fz_tables[data[0] % FZ_NTABLES].size;
    m.max = fz_tables[data[0] % FZ_NTABLES].slots;
    px_slots *s = NULL;
    FZ_CHECK(px_slots_new(&s, m.arena, m.max) == 0);
    size_t i = 1;
#define NEXT() (i < size ? data[i++] : 0)
    while (i < size) {
        uint8_t op = NEXT();
        fz_st.ops++;
        switch (op % 10) {
        case 0: case 1: case 2: { /* small: up to ~16 KiB */
            uint64_t lo = NEXT(), hi = NEXT() & 0x3f;
            fz_alloc(s, &m, lo | hi << 8);
            break;
        }
        case 3: { /* a fraction of the arena, around its edges */
            uint8_t f = NEXT(), d = NEXT();
            uint64_t base = f < 32 ? m.arena / 2 : f < 64 ? m.arena / 4 : m.arena / (f % 16 + 2);
            uint64_t n = d & 1 ? base + (d >> 1) % 130 : base - (base < (d >> 1) ? base : (d >> 1));
            fz_alloc(s, &m, n);
            break;
        }
        case 4: /* edge sizes */
            switch (NEXT() % 5) {
            case 0: fz_alloc(s, &m, 0); break;
            case 1: fz_alloc(s, &m, 1); break;
            case 2: fz_alloc(s, &m, UINT64_MAX); break;
            case 3: fz_alloc(s, &m, m.arena / 2 + 1); break;
            default: fz_alloc(s, &m, PX_SLOT_ALIGN); break;
            }
            break;
        case 5: case 6: /* release a live slot, any of them */
            if (m.n > 0) fz_release_live(s, &m, NEXT() % m.n);
            break;
        case 7: { /* a bad release */
            uint8_t how = NEXT(), arg = NEXT();
            uint32_t id = fz_bad_id(&m, how, arg);
            FZ_CHECK(px_slots_release(s, id) == -EINVAL);
            fz_st.bad_releases++;
            break;
        }
        case 8: { /* release_many: live ones, bad ones and a duplicate */
            uint32_t ids[8];
            uint8_t k = NEXT() % 8, expect_bad = 0;
            uint32_t nids = 0;
            for (uint8_t j = 0; j < k; j++) {
                uint8_t b = NEXT();
                if ((b & 1) && m.n > 0) {
                    int at = (b >> 1) % m.n;
                    ids[nids++] = m.live[at].id;
                    fz_mark_dead(&m, m.live[at].id);
                    m.live[at] = m.live[--m.n];
                    fz_st.releases++;
                } else if (b & 2 && nids > 0) {
                    ids[nids] = ids[nids - 1]; /* a double release */
                    nids++;
                    expect_bad++;
                } else {
                    ids[nids++] = fz_bad_id(&m, b >> 2, NEXT());
                    expect_bad++;
                }
            }
            FZ_CHECK(px_slots_release_many(s, ids, nids) == expect_bad);
            fz_st.many++;
            break;
        }
        default: /* a reset, now and then */
            if (NEXT() < 24) {
                px_slots_reset(s);
                for (int j = 0; j < m.n; j++) fz_mark_dead(&m, m.live[j].id);
                m.n = 0;
                fz_st.resets++;
            }
            break;
        }
        fz_check_stats(s, &m);
    }
#undef NEXT
    /* Everything live can still be released, once. */
    while (m.n > 0) fz_release_live(s, &m, m.n - 1);
    fz_check_stats(s, &m);
    px_slots_free(s);
    fz_cur = NULL;
    return 0;
}

#ifndef PX_LIBFUZZER

static uint64_t rng_state;

static uint64_t rnd(void) {
    rng_state = rng_state * 6364136223846793005ULL + 1442695040888963407ULL;
    return rng_state >> 33;
}


int main(int argc, char **argv) {
    fz_opts o = {20, 0, (uint64_t)time(NULL), 0};
    int rc = fz_parse(argc, argv, &o);
    if (rc >= 0) return rc;
    rng_state = o.seed;
    static uint8_t buf[4096];
    double start = fz_now();
    for (uint64_t it = 0; !fz_done(&o, it, start); it++) {
        size_t n = 1 + rnd() % sizeof(buf);
        /* Bias ops toward allocations early and releases late, so runs
         * both fill the table up and drain it. */
        for (size_t j = 0; j < n; j++) buf[j] = (uint8_t)rnd();
        if (rnd() % 2) {
            for (size_t j = 1; j < n / 2; j += 3) buf[j] = (uint8_t)(rnd() % 3);
        }
        LLVMFuzzerTestOneInput(buf, n);
    }
    printf("runs %llu ops %llu allocs %llu releases %llu bad_releases %llu enospc %llu "
           "efbig %llu einval %llu resets %llu many %llu seconds %.1f\n",
           (unsigned long long)fz_st.runs, (unsigned long long)fz_st.ops,
           (unsigned long long)fz_st.allocs, (unsigned long long)fz_st.releases,
           (unsigned long long)fz_st.bad_releases, (unsigned long long)fz_st.enospc,
           (unsigned long long)fz_st.efbig, (unsigned long long)fz_st.einval,
           (unsigned long long)fz_st.resets, (unsigned long long)fz_st.many,
           fz_now() - start);
    return 0;
}
#endif /* PX_LIBFUZZER */
