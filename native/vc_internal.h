/* Internals of the native volume core (vcore.c and the vc_*.c files behind it). Nothing outside
 * the core includes this: the FUSE engine and the Python face see only vcore.h.
 *
 * Layers, bottom up:
 *   vc_backing    pread/pwrite/punch/fdatasync on the core's own descriptor (a dup of the
 *                 caller's), with the optional power-loss recorder: before each write or hole punch
 *                 the pre-image goes to an undo journal, and fdatasync empties the journal (the
 *                 semantics of volumed.volume.backing.RecordingBackingFile, same record format).
 *   vc_rangelock  exclusive (write) and shared (read) locks on half-open sector ranges plus a
 *                 whole-space barrier.
 *   vc_store      whole-sector read/write/discard/flush of one format: XTS (LUKS2 aes-xts-plain64,
 *                 all-zero on-disk sector = hole), GCM format 2 (vc_gcmstore.c: two slots per
 *                 sector, session subkeys, metadata groups as lock units, a barrier flush) and
 *                 null (plain bytes, benchmark only).
 *   vc_capture    the copy-on-write capture session of a snapshot of a live volume.
 *   vcore.c       the vcore.h API: range checks, key latch, partial-sector read-modify-write. */
#ifndef VOLUMED_VC_INTERNAL_H
#define VOLUMED_VC_INTERNAL_H

#include <pthread.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

#include "sector_core.h"
#include "vcore.h"

/* ---- errors ---------------------------------------------------------------------------- */
/* Set the calling thread's message (vc_last_error) and return code. */
int vc_fail(int code, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* ---- backing file ---------------------------------------------------------------------- */
typedef struct {
    int fd;              /* the core's own descriptor */
    int jfd;             /* undo journal (O_APPEND) or -1 */
    int hfd;             /* history: the journal's records, never emptied by a flush; or -1 */
    uint64_t hbytes, hmax;
    _Atomic int dead;    /* errno every call fails with after a simulated power loss, or 0 */
    _Atomic int lost;    /* an fdatasync failed: every later vb_sync fails (see vb_sync) */
    _Atomic int no_nowait; /* the file system refused RWF_NOWAIT once: read as before */
    pthread_mutex_t jmu; /* one journal record at a time; flush's truncate */
} vc_backing;

int vb_open(vc_backing *b, int fd, int journal_fd, int history_fd, uint64_t history_max);
/* dups the descriptors; 0 or -errno */
void vb_close(vc_backing *b);
int vb_pread(vc_backing *b, uint64_t off, size_t len, unsigned char *buf); /* zeros past EOF */
int vb_pwrite(vc_backing *b, uint64_t off, size_t len, const unsigned char *buf);
int vb_punch(vc_backing *b, uint64_t off, uint64_t len);
/* fdatasync (then the journal starts over). Once one failed, every later call fails with EIO
 * until the core is closed: the kernel reports a write-back error once and leaves the failed
 * pages clean, so a later fdatasync would succeed without their data ever reaching the disk. */
int vb_sync(vc_backing *b);
/* Durable once it returns (RWF_DSYNC; pwrite + fdatasync where the flag is missing); not
 * journalled, as RecordingBackingFile.pwrite_durable (the GCM nonce note). */
int vb_pwrite_durable(vc_backing *b, uint64_t off, size_t len, const unsigned char *buf);
int vb_truncate_up(vc_backing *b, uint64_t size); /* grow the file to at least size */

/* ---- range locks ----------------------------------------------------------------------- */
typedef struct {
    uint64_t lo, hi;
    int shared;
} vc_range;

typedef struct {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    vc_range *held;     /* granted */
    vc_range *wait;     /* exclusive requests waiting for their turn */
    size_t nheld, cap, nwait, wcap;
    int barrier;
} vc_rangelock;

int rl_init(vc_rangelock *rl);
void rl_destroy(vc_rangelock *rl);
/* Exclusive (writes) or shared (reads: exclude only exclusive holders) on [lo, hi); 0 or
 * VC_E_NOMEM. Unlock with the same range and mode. */
int rl_lock(vc_rangelock *rl, uint64_t lo, uint64_t hi);
void rl_unlock(vc_rangelock *rl, uint64_t lo, uint64_t hi);
int rl_lock_shared(vc_rangelock *rl, uint64_t lo, uint64_t hi);
void rl_unlock_shared(vc_rangelock *rl, uint64_t lo, uint64_t hi);
void rl_exclusive(vc_rangelock *rl);
void rl_exclusive_end(vc_rangelock *rl);

/* ---- stores ---------------------------------------------------------------------------- */
typedef struct vc_store vc_store;
typedef struct {
    const char *name;
    /* n whole sectors from sector first; buffers are n*ss bytes. */
    int (*read)(vc_store *s, uint64_t first, size_t n, unsigned char *out);
    int (*write)(vc_store *s, uint64_t first, size_t n, const unsigned char *in);
    int (*discard)(vc_store *s, uint64_t first, uint64_t n);
    int (*flush)(vc_store *s);
    void (*wipe)(vc_store *s);
    /* Encrypt n all-zero sectors from first in place (holes made explicit for export). */
    int (*seal_zeros)(vc_store *s, uint64_t first, size_t n, unsigned char *buf);
    /* Raw records of n sectors (rec_size bytes each), present[i] = 0 for none. */
    int (*records)(vc_store *s, uint64_t first, size_t n, unsigned char *out, unsigned char *present);
    /* The clean end of a session, under the barrier (XTS: the flush). */
    int (*close)(vc_store *s);
    /* Free what the store holds (after the wipe); NULL when nothing. */
    void (*release)(vc_store *s);
} vc_store_ops;

struct vc_store {
    const vc_store_ops *ops;
    vc_backing *b;
    uint64_t base; /* byte offset of sector 0 in the backing file */
    size_t ss;
    sc_key key;    /* XTS */
    int keyed;
    size_t rec_size;       /* bytes of one raw record */
    uint64_t unit;         /* sectors per lock unit: 1, or a GCM group (a write rewrites its page) */
    int flush_is_barrier;  /* GCM: flush runs with no request in flight */
    int killed;            /* vc_kill: the wipe does no bookkeeping I/O */
    void *priv;            /* the GCM store's state */
    const char *name;
};

extern const vc_store_ops vc_xts_ops, vc_null_ops, vc_gcm_ops;
/* Set up the GCM store in s (b, name, ss set); 0 or a code. gcm_free releases what it holds. */
int vc_gcm_open(vc_store *s, const unsigned char *key, size_t key_len, const vc_gcm_session *g);
int vc_gcm_grow_store(vc_store *s, uint64_t old_size, uint64_t size, const char *mac_tmpl,
                      const char *hdr_tmpl);
void vc_gcm_state_get(vc_store *s, uint64_t out[4]);
/* Threads for one large cipher batch (volumed._native.set_threads; sector_cipher.c). A store
 * splits a batch of at least VC_PAR_MIN_BYTES across the workpool in chunks of
 * VC_PAR_CHUNK_BYTES. */
#define VC_PAR_MIN_BYTES (128 * 1024)
#define VC_PAR_CHUNK_BYTES (32 * 1024)
int native_pool_threads(void);
int vc_is_zero(const unsigned char *p, size_t len);
/* Raw records (what a snapshot keeps): n records (rec_size each), present[i] = 0 for none. */
int vc_store_records(vc_store *s, uint64_t first, size_t n, unsigned char *out,
                     unsigned char *present);

/* ---- capture session ------------------------------------------------------------------- */
typedef struct vc_capture vc_capture;
vc_capture *cap_new(uint64_t sectors, uint64_t max_kept_bytes, size_t rec_size);
void cap_free(vc_capture *cap);
/* Called holding the range lock of [first, last), before anything changes. Never fails. */
void cap_before_write(vc_capture *cap, vc_store *s, uint64_t first, uint64_t last);
/* Called holding the range lock of [first, first+n). */
int cap_read(vc_capture *cap, vc_store *s, uint64_t first, size_t n, unsigned char *out,
             unsigned char *present);
void cap_stats(vc_capture *cap, vc_capture_stats *st);

/* ---- the core -------------------------------------------------------------------------- */
struct vcore {
    atomic_int refs;
    vc_backing backing;
    vc_store store;
    _Atomic uint64_t size;
    size_t ss;
    vc_rangelock locks;
    pthread_mutex_t mu; /* the key latch's wake-up (with cv); the capture pointer's changes */
    pthread_cond_t cv;
    atomic_int keyed;   /* key present and not being wiped */
    atomic_long inflight;
    vc_capture *cap;    /* open capture session: changed only under the barrier (and mu), so a
                           request holding a range lock reads it without mu */
    char *name;         /* for messages: the volume's path */
};

#endif
