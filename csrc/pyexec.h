/*
 * pyexec.h - the C core of pyexec: the one header.
 *
 * Two parts, each a handful of calls:
 *   - frames: a fixed 24-byte header plus a payload (a pickle); an incremental,
 *     bounded decoder that reads straight from a pipe and yields whole frames;
 *     a writer that sends a list of buffers without copying them.
 *   - the waiter: one wait, with the GIL released, over many fds (epoll on
 *     Linux, poll everywhere; chosen when the waiter is created).
 *   - arenas (arena.c): shared memory for big pickle buffers: anonymous
 *     segments, their mappings, a slot allocator, and fd passing.
 *
 * Rules for everything declared here:
 *   - every exported symbol starts with px_; everything else is static;
 *   - a call returns >= 0 on success and -errno on failure; C never prints
 *     and never touches a Python object;
 *   - the caller owns the memory it passes in; a create/free pair owns the
 *     rest, and every free accepts NULL.
 *
 * The text between the CDEF markers is read by pyexec/_build.py and given to
 * cffi as is, except that a "#define NAME value" becomes "#define NAME ..." so
 * the compiler supplies every value. Keep that part plain C declarations.
 */
#ifndef PYEXEC_H
#define PYEXEC_H

#include <stddef.h>
#include <stdint.h>
#include <errno.h>
#include <sys/types.h>

/* CDEF BEGIN */

/* Bumped whenever a declaration below changes meaning. Checked at import. */
#define PX_CORE_ABI 10

/* ---- frames ---------------------------------------------------------- */

/* Header layout, little-endian:
 *   0  u8   magic, PX_MAGIC (catches a stream out of step or garbage)
 *   1  u8   kind, PX_KIND_*
 *   2  u16  flags, PX_FLAG_* (bits not defined yet must be 0)
 *   4  u32  reserved, must be 0
 *   8  u64  task id
 *   16 u64  payload length in bytes
 */
#define PX_HEADER_SIZE 24
#define PX_MAGIC 167

/* Frame kinds. Parent -> worker: CALL, BATCH (several calls of one map: one
 * function, many argument tuples, one result frame each), EXIT. Worker ->
 * parent: RESULT, ERROR, EXIT_ACK, READY (id 0: the initializer is done, calls
 * run from now on, so deadlines count from now) and FATAL (id 0), which says
 * why a worker is about to exit, e.g. its initializer raised. STARTED (id of
 * a call): the call, sent with PX_FLAG_STARTED, starts now; its deadline
 * counts from here, never from before the worker read it. */
#define PX_KIND_CALL 1
#define PX_KIND_EXIT 2
#define PX_KIND_RESULT 3
#define PX_KIND_ERROR 4
#define PX_KIND_EXIT_ACK 5
#define PX_KIND_FATAL 6
#define PX_KIND_BATCH 7
#define PX_KIND_READY 8
#define PX_KIND_STARTED 9
#define PX_KIND_MAX 9

/* Flags. RECYCLE (worker -> parent, on a result): its memory is over the
 * limit, stop giving it calls. HOLD (parent -> worker, on a BATCH): results
 * may be held back briefly to leave several in one write; only set where no
 * single call's fate matters (a crash breaks the pool anyway, no deadline),
 * since held results die with the worker. STARTED (parent -> worker, on a
 * CALL or BATCH): answer STARTED before running each of its calls (calls with
 * a deadline). MARSHAL (worker -> parent, on a RESULT): the payload is
 * marshal data, not a pickle (a plain value, which marshal dumps and loads in
 * about half the time). OOB (either way, on a CALL, RESULT or ERROR): the
 * payload starts with a header naming big buffers placed in shared memory
 * (arena slots, overflow segments), slot releases of the other direction and
 * fds sent beside it on the worker's unix socket (see _payloads). */
#define PX_FLAG_RECYCLE 1
#define PX_FLAG_HOLD 2
#define PX_FLAG_STARTED 4
#define PX_FLAG_MARSHAL 8
#define PX_FLAG_OOB 16
#define PX_FLAGS_KNOWN 31

/* The largest payload any decoder accepts; a decoder may be made with a
 * smaller limit. 1 TiB: far above any pipe transfer, far below overflow. */
#define PX_MAX_PAYLOAD_LIMIT 1099511627776ULL

/* Room a decoder starts with, and the size it shrinks back to once a large
 * frame is consumed; a read asks for at least PX_READ_CHUNK bytes of room. */
#define PX_DECODER_INITIAL 65536
#define PX_READ_CHUNK 65536

/* How far beyond the bytes it holds a decoder's buffer may grow at most
 * (or as much again as it holds, if more): the buffer grows with the bytes
 * that arrive, about doubling, never with the length a header announces, so
 * a length within the limit that no bytes follow allocates nothing. */
#define PX_DECODER_AHEAD 65536

/* Error codes the decoder uses (besides -ENOMEM), as -errno values. */
#define PX_EBADMSG EBADMSG
#define PX_EMSGSIZE EMSGSIZE

typedef struct px_decoder px_decoder;

typedef struct {
    uint8_t kind;
    uint16_t flags;
    uint64_t id;
    const char *payload;   /* points into the decoder: valid until its next
                              px_decoder_read or px_decoder_feed */
    uint64_t length;
} px_frame;

/* Encode a header into dst[0..PX_HEADER_SIZE). Never fails. */
void px_header_encode(char *dst, uint8_t kind, uint16_t flags, uint64_t id,
                      uint64_t length);

/* Create a decoder that refuses payloads longer than max_payload (at most
 * PX_MAX_PAYLOAD_LIMIT). Returns 0, -EINVAL (bad limit) or -ENOMEM. */
int px_decoder_new(px_decoder **out, uint64_t max_payload);
void px_decoder_free(px_decoder *d);

/* Append len bytes from buf. Returns 0, -ENOMEM, or the sticky error. */
int px_decoder_feed(px_decoder *d, const char *buf, size_t len);

/* One read(2) from fd into the decoder: as much as the fd has, into at least
 * PX_READ_CHUNK bytes of room (more when a frame being assembled needs it).
 * Returns bytes read (> 0), 0 at end of file, -EAGAIN when a non-blocking fd
 * has nothing, -EINTR when a signal came first (the caller retries after
 * running its handlers), another -errno, or the sticky error. */
int64_t px_decoder_read(px_decoder *d, int fd);

/* Take the next complete frame. Returns 1 and fills *out; 0 when more bytes
 * are needed; a negative sticky error (-PX_EBADMSG: bad magic, kind, flags or
 * reserved bits; -PX_EMSGSIZE: length over the limit) once the stream is
 * malformed, with px_decoder_error saying why. A frame is consumed only when
 * all its bytes are there. */
int px_decoder_next(px_decoder *d, px_frame *out);

/* Take up to max complete frames at once: for frame i, out[4*i .. 4*i+3]
 * are kind | flags << 8, id, payload offset from *base, payload length.
 * *base is the decoder's buffer; offsets and *base stay valid until the next
 * px_decoder_read or px_decoder_feed. Returns the count (0 when more bytes
 * are needed) or the sticky error, like px_decoder_next; frames taken before
 * an error are returned first, the error on the next call. One call per read
 * instead of one per frame: the per-call cost is what a tiny task pays. */
int px_decoder_next_many(px_decoder *d, uint64_t *out, int max, const char **base);

/* What px_decoder_read_many reports beside the frames it took: four int64s,
 * in this order and without padding (Python reads them with one unpack). */
typedef struct {
    int64_t read;  /* the read's result: bytes, 0 at end of file, -errno
                    * (-EAGAIN when no read was asked, fd < 0) */
    int64_t error; /* the sticky error after the take, or 0: so the caller knows
                    * without one more call that the frames it got were
                    * followed by a malformed one */
    int64_t buf;   /* the buffer's address and capacity: while both stay the */
    int64_t cap;   /* same, a view of it made earlier is still the buffer (a
                    * caller keeps one instead of making one per call) */
} px_read_status;

/* px_decoder_read(d, fd) (none when fd < 0), then px_decoder_next_many: one
 * call where a reader needs two. When the read would block and no frame is
 * complete, and spin_ns > 0, it reads again until bytes come or spin_ns
 * nanoseconds have passed (fd must be non-blocking): a reader that expects an
 * answer within microseconds then pays no sleep and wake-up, and no trip
 * back into the interpreter per try. Any other outcome of a read ends the
 * spin; a signal does not (reads that do not block are not interrupted), so
 * its Python handler runs at most spin_ns late. Each call from Python
 * releases the GIL and takes it back, and while another thread wants it
 * that round trip costs far more than the call. *status gets what else the
 * caller needs to know (see px_read_status). Returns what
 * px_decoder_next_many returns. */
int px_decoder_read_many(px_decoder *d, int fd, uint64_t *out, int max,
                         const char **base, px_read_status *status, int64_t spin_ns);

/* Give back frames the last px_decoder_next_many (or read_many) handed out,
 * from the one whose header starts at offset (from *base) on; offset
 * UINT64_MAX: all of them. The next take hands them out again. For a reader
 * interrupted (an exception from a signal handler) before it used them all.
 * Valid until the next read or feed. Returns 0, or -EINVAL for an offset
 * outside what the last take handed out. */
int px_decoder_rewind(px_decoder *d, uint64_t offset);

/* Bytes held that do not yet make a whole frame (non-zero at end of file
 * means the peer stopped mid-frame). */
uint64_t px_decoder_buffered(const px_decoder *d);

/* The sticky error as text (bounded, NUL-terminated), or "" when none. */
const char *px_decoder_error(const px_decoder *d);

/* ---- writing ---------------------------------------------------------- */

typedef struct {
    const void *base;
    size_t len;
} px_iov;

/* The most buffers one px_writev call takes. */
#define PX_IOV_MAX 64

/* writev(2) of iov[0..n) until all is written, retrying EINTR. A blocking fd
 * returns only when everything is written; a non-blocking one returns the
 * bytes written so far when the pipe is full (fewer than asked), or -EAGAIN
 * when none fit. Returns -EINVAL for n outside 1..PX_IOV_MAX, another -errno
 * on failure (-EPIPE when the reader is gone). */
int64_t px_writev(int fd, const px_iov *iov, int n);

/* px_writev of one buffer: one small frame written without an iovec to fill. */
int64_t px_write(int fd, const char *buf, uint64_t len);

/* ---- pipes ------------------------------------------------------------ */

/* A pipe with O_CLOEXEC on both ends, and O_NONBLOCK on the end(s) asked
 * for (nonblock bit 1: read end, bit 2: write end). On Linux the buffer is
 * raised toward size bytes when size > 0 (best effort). Returns 0 or -errno. */
int px_pipe(int fds[2], int nonblock, int size);

/* Resident set size of this process in bytes, or -errno. Cheap: one read of
 * /proc/self/statm on Linux, task_info on macOS. */
int64_t px_rss(void);

/* Ask the kernel to send sig to this process when its parent (the thread
 * that forked it) dies, then check the parent is still expected_ppid (the
 * parent may have died before the call). Returns 0; -ESRCH when the parent
 * is already gone; -ENOSYS where there is no such facility (macOS). */
int px_parent_death_signal(int sig, int expected_ppid);

/* ---- the waiter ------------------------------------------------------- */

#define PX_READABLE 1
#define PX_WRITABLE 2

/* Backends for px_waiter_new. */
#define PX_BACKEND_DEFAULT 0
#define PX_BACKEND_EPOLL 1
#define PX_BACKEND_POLL 2

typedef struct px_waiter px_waiter;

typedef struct {
    uint64_t token;    /* what the caller gave px_waiter_add */
    uint32_t events;   /* PX_READABLE and/or PX_WRITABLE; hang-up and error
                          are reported as PX_READABLE so the reader meets end
                          of file or the error */
} px_event;

/* Create a waiter. backend: PX_BACKEND_DEFAULT (epoll on Linux, poll
 * elsewhere), _EPOLL or _POLL. Returns 0, -ENOSYS (backend not built here),
 * -ENOMEM or the -errno of epoll_create1. */
int px_waiter_new(px_waiter **out, int backend);
void px_waiter_free(px_waiter *w);

/* Which backend a waiter runs (PX_BACKEND_EPOLL or PX_BACKEND_POLL). */
int px_waiter_backend(const px_waiter *w);

/* An fd that polls readable while any fd the waiter watches is ready (the
 * epoll fd), so another thread can wait on a few fds of its own and still see
 * that this waiter has something to report. -ENOSYS on the poll backend. */
int px_waiter_fd(const px_waiter *w);

/* Watch fd for events (a mask of PX_READABLE|PX_WRITABLE, may be 0), to be
 * reported with token. Returns 0, -EEXIST, -EBADF, -ENOMEM. */
int px_waiter_add(px_waiter *w, int fd, uint32_t events, uint64_t token);
/* Change what fd is watched for. Returns 0, -ENOENT. */
int px_waiter_mod(px_waiter *w, int fd, uint32_t events, uint64_t token);
/* Stop watching fd. Call it before closing fd. Returns 0, -ENOENT. */
int px_waiter_del(px_waiter *w, int fd);

/* Wait until an fd is ready or timeout_ns passes (< 0: no limit). Fills up
 * to max events. Returns the count (0 on timeout) or -errno. A signal does
 * not end the wait early: the time left is computed from a monotonic start
 * and the wait goes on. The timeout is rounded up to whole milliseconds. */
int px_waiter_wait(px_waiter *w, px_event *events, int max, int64_t timeout_ns);

/* ---- arenas: shared memory for big buffers (arena.c) ------------------- */

/* A segment is an anonymous shared-memory file: a memfd on Linux (never in
 * /dev/shm, so nothing is left behind whatever kills the process), elsewhere
 * an shm_open'ed name unlinked at once. On Linux it is sealed against
 * shrinking and growing (and against further seals) as soon as it has its
 * size: a truncate of a mapped file would SIGBUS the reader, and the seal
 * makes that impossible. Writes are not sealed (F_SEAL_WRITE cannot be set
 * while a writable mapping exists, and the sender needs one).
 *
 * A slot table is the allocator of one arena, kept by the sender of that
 * direction only: the receiver never allocates, it maps the segment and
 * sends slot ids back once it is done with them. */

/* Offsets and sizes of slots are multiples of this (a cache line; numpy
 * wants at most 16). */
#define PX_SLOT_ALIGN 64
/* The most slots one table may have (slot ids carry a 16-bit index). */
#define PX_SLOTS_MAX 65536
/* The most fds px_send_fds sends or px_recv_fds takes in one message
 * (SCM_MAX_FD in Linux; more are refused, and a receiver given a smaller
 * ancillary buffer would drop the rest silently). */
#define PX_FDS_MAX 253

/* px_map flags. POPULATE: fault every page in now (first touch of a page
 * costs far more than copying it on this kind of VM). SEALED: refuse (-EPERM)
 * a segment that could still shrink, i.e. one without F_SEAL_SHRINK (Linux;
 * ignored elsewhere). */
#define PX_MAP_POPULATE 1
#define PX_MAP_SEALED 2

typedef struct px_slots px_slots;

/* A new segment of size bytes (> 0), zero-filled, O_CLOEXEC; sealed on Linux
 * as said above. Returns the fd (>= 0) or -errno (-EINVAL for size 0 or one
 * that does not fit an off_t; the -errno of memfd_create, ftruncate,
 * fcntl or shm_open). The caller owns the fd. */
int px_shm_new(uint64_t size);

/* mmap(2) size bytes (> 0) of fd from offset 0, shared, read and write, with
 * flags PX_MAP_*. The file must hold at least size bytes (-EINVAL otherwise:
 * a mapping past the end would SIGBUS on first touch). *out gets the address.
 * The fd may be closed at once; the mapping stays until px_unmap. Returns 0
 * or -errno. */
int px_map(int fd, uint64_t size, int flags, void **out);

/* Fault in every page of [addr, addr + size) of a mapping now, writable
 * (MADV_POPULATE_WRITE on Linux 5.14+; elsewhere, or on older kernels, a read
 * of each page, which for shared memory allocates it too). For a mapping made
 * without PX_MAP_POPULATE: a thread of its own can pay the faults (the GIL is
 * released around the call) while the process starts. Returns 0 or -errno. */
int px_populate(void *addr, uint64_t size);

/* munmap(2) what px_map gave. NULL (or size 0) does nothing. Returns 0 or
 * -errno. */
int px_unmap(void *addr, uint64_t size);

/* close(2) that accepts -1 (does nothing). Returns 0 or -errno. */
int px_close(int fd);

/* memcpy of n bytes (no overlap): a call of its own so that a copy of many
 * megabytes runs with the GIL released. n = 0 does nothing. */
void px_copy(void *dst, const void *src, uint64_t n);

/* px_copy into memory never written before (a new object's malloc'ed
 * buffer): its pages are first faulted in writable with one call
 * (MADV_POPULATE_WRITE, Linux 5.14+: a quarter less than taking one fault
 * per page inside memcpy, measured here for 8 MiB); where that call does not
 * exist, or fails, a plain copy. dst need not be page-aligned: the pages
 * that hold [dst, dst + n) are the caller's. n = 0 does nothing. */
void px_copy_fresh(void *dst, const void *src, uint64_t n);

/* Give back the memory of the whole pages inside [addr, addr + size) of a
 * shared mapping (madvise MADV_REMOVE: a hole is punched in the segment, and
 * reads there see zeros from now on, in every process). For the parts of an
 * overflow segment whose views have died while others still hold the rest.
 * Returns 0 (also when no whole page is inside, or where the call does not
 * exist) or -errno. */
int px_discard(void *addr, uint64_t size);

/* A slot table for an arena of arena_size bytes with room for max_slots live
 * slots (1..PX_SLOTS_MAX). Returns 0, -EINVAL or -ENOMEM. */
int px_slots_new(px_slots **out, uint64_t arena_size, uint32_t max_slots);
void px_slots_free(px_slots *s);

/* Allocate size bytes (rounded up to PX_SLOT_ALIGN) at the lowest offset
 * where they fit. Returns 0 and fills *id and *offset; -EINVAL for size 0;
 * -EFBIG for a size over half the arena (send it through its own segment);
 * -ENOSPC when no gap is large enough or every slot is live. A slot is never
 * handed out again before it is released. An id is never 0. */
int px_slots_alloc(px_slots *s, uint64_t size, uint32_t *id, uint64_t *offset);

/* Release the slot id (the receiver is done with it). Returns 0, or -EINVAL
 * for an id that is not live: never allocated, already released, or from
 * before a px_slots_reset; the table is unchanged then. */
int px_slots_release(px_slots *s, uint32_t id);

/* px_slots_release of ids[0..n): every live id is released. Returns how many
 * were not live (0 when all were). */
int px_slots_release_many(px_slots *s, const uint32_t *ids, uint32_t n);

/* Forget every live slot (the receiver died): the arena is all free, and any
 * id handed out before is invalid from now on. */
void px_slots_reset(px_slots *s);

/* out[0] live slots, out[1] bytes they cover (aligned sizes), out[2] the
 * largest free gap in bytes. */
void px_slots_stats(const px_slots *s, uint64_t out[3]);

/* sendmsg(2) of len bytes (>= 1) of data with fds[0..n) as SCM_RIGHTS
 * (0 <= n <= PX_FDS_MAX; n = 0 sends data only), retrying EINTR. Returns
 * bytes sent (on a stream socket possibly fewer than len: the fds went with
 * the first byte, the caller sends the rest without them), or -errno
 * (-EINVAL for n or len out of range). The caller still owns (and closes)
 * fds[]. */
int64_t px_send_fds(int sock, const int *fds, int n, const char *data, uint64_t len);

/* recvmsg(2) into buf[0..len) (len >= 1), taking up to max_fds (0..
 * PX_FDS_MAX) fds into fds[], O_CLOEXEC, retrying EINTR. *nfds gets how many
 * came; the caller owns them. Returns bytes received (0: end of file),
 * -EAGAIN on a non-blocking socket with nothing, -EMSGSIZE when fds were
 * dropped (more were sent than max_fds, or the process is at its fd limit:
 * MSG_CTRUNC; every fd that did come is closed, *nfds is 0, and the channel
 * is out of step: treat it as broken), or another -errno. */
int64_t px_recv_fds(int sock, char *buf, uint64_t len, int *fds, int max_fds, int *nfds);

/* ---- claims: which queued calls a worker may still run (arena.c) ------ */

/* A claim word is 64 bits of shared memory (a segment of PX_CLAIM_SIZE bytes
 * of its own, one per worker: a cache line) that says which of the calls
 * sent to one worker it may still run. The parent numbers the calls it sends
 * to that worker 1, 2, ... (modulo 2^32), and the worker counts the calls it
 * reads the same way. Low half: CLAIMED, the
 * last call the worker started (written by the worker only). High half:
 * SKIP, written by the parent only: calls numbered up to SKIP and beyond
 * CLAIMED are revoked, never to be run by this worker. Both change only by
 * compare-and-swap of the whole word, so a call is either claimed or revoked,
 * never both, whatever the two processes do at the same time (and the parent
 * needs nothing from a worker that is stopped or stuck in a call). Numbers
 * are compared modulo 2^32 (serial number arithmetic): a worker's window is
 * far smaller than 2^31. */
#define PX_CLAIM_SIZE 64

/* Claim call seq before running it (the worker, calls in order): 1 when it
 * may run (CLAIMED is now seq), 0 when the parent revoked it (the word is
 * unchanged: skip it, and send nothing for it). word: the mapping's address,
 * 8-byte aligned. */
int px_claim(void *word, uint32_t seq);

/* Revoke every call not yet claimed up to through (the parent: the last call
 * it sent): SKIP becomes through, atomically with reading CLAIMED, which is
 * returned. Calls numbered CLAIMED+1 .. through will never run in this
 * worker; those after through run as usual. */
uint32_t px_revoke(void *word, uint32_t through);

/* The word as it is now (CLAIMED | SKIP << 32), for tests and messages. */
uint64_t px_claim_peek(const void *word);

/* ---- identity --------------------------------------------------------- */

/* PX_CORE_ABI as compiled, and the build stamp ("<version> <source hash>")
 * given by the builder. */
int px_core_abi(void);
const char *px_build_stamp(void);

/* CDEF END */

#endif /* PYEXEC_H */
