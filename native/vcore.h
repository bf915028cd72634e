/* The volume I/O core: one open volume's decrypted bytes, served to any number of threads.
 *
 * This header is the seam between the two halves of the native data path (issue 12):
 *   - the core (vcore.c and the stores behind it: XTS, GCM, null; range locks; read-modify-write
 *     of partial sectors; the capture session of a live snapshot; the backing file with its
 *     optional power-loss recorder) implements it;
 *   - the FUSE request engine (fuse_engine.c) and the Python face of the core (the
 *     volumed._native.VolumeCore type) call it.
 * Neither side includes the other's internals. No Python here: every function may be called from
 * any thread without the GIL, and none of them takes the GIL.
 *
 * Contract:
 *   - Offsets and lengths are bytes of the decrypted volume ([0, vc_size)). The caller keeps every
 *     request inside the volume (vc_read: off + len <= size; the engine clamps reads at the end
 *     and refuses writes past it itself); the core still checks and answers VC_E_RANGE.
 *   - Overlapping requests behave as some serial order; disjoint ones run in parallel.
 *   - vc_flush: every write or discard that returned before vc_flush was called is durable when
 *     it returns 0. It is the only durability point.
 *   - After vc_wipe_key returns, the key is gone (wiped from locked memory) and every later call
 *     answers VC_E_KEY. vc_wipe_key waits for the calls in flight to finish first.
 *   - A reference count keeps the core alive while an engine thread or a Python object uses it;
 *     the last vc_unref wipes the key and releases everything (closing the core's own file
 *     descriptor; the caller's descriptor is never closed by the core).
 *
 * Return values: 0 on success, or a negative code: -errno for an error of the backing file
 * (ENOSPC, EDQUOT, EIO, EROFS, ... exactly as the system call reported it), or one of the VC_E_*
 * domain codes below. What each code becomes is decided at the boundaries: the FUSE engine maps
 * it to an errno (the one mapping table of the native path, which must agree with
 * volumed/mount/errno_map.py for the pyfuse3 path), the Python face to a volumed.errors exception. vc_last_error gives
 * the calling thread's message for its last failed call (sector numbers, never data or keys). */
#ifndef VOLUMED_VCORE_H
#define VOLUMED_VCORE_H

#include <stddef.h>
#include <stdint.h>

typedef struct vcore vcore;

enum {
    VC_E_KEY = -10001,       /* the key was wiped (revocation, close): KeyAccessError / EIO */
    VC_E_INTEGRITY = -10002, /* a sector or metadata page failed authentication: IntegrityError / EIO */
    VC_E_RANGE = -10003,     /* outside the volume: UsageError / EINVAL */
    VC_E_STATE = -10004,     /* e.g. GCM nonce space used, volume read-only: StateError / EROFS */
    VC_E_NOMEM = -10005,     /* allocation failed: MemoryError / ENOMEM */
};

uint64_t vc_size(const vcore *c);

/* Copy len decrypted bytes at off into out. */
int vc_read(vcore *c, uint64_t off, size_t len, unsigned char *out);

/* Write len bytes of in at off (partial sectors are read-modify-written under the range lock). */
int vc_write(vcore *c, uint64_t off, const unsigned char *in, size_t len);

/* Make [off, off+len) read as zeros (whole sectors give their space back). */
int vc_discard(vcore *c, uint64_t off, uint64_t len);

/* The durability point (see the contract above). */
int vc_flush(vcore *c);

/* Wait for calls in flight, then wipe the key; later calls answer VC_E_KEY. Idempotent. */
void vc_wipe_key(vcore *c);

void vc_ref(vcore *c);
void vc_unref(vcore *c);

/* The calling thread's message for its last failed call ("" if none). */
const char *vc_last_error(void);

/* ---- Additions (issue 12, the core's side; additive only) -------------------------------------
 * Opening a core, its geometry, resizing, the raw records a snapshot copies and the copy-on-write
 * capture session of a snapshot of a live volume. The engine needs none of these: it gets its
 * core from a volumed._native.VolumeCore object (vcore_py.h). Stores: XTS, null and GCM format 2
 * (vc_gcmstore.c; volumed/volume/gcmstore.py is its reference). */

typedef enum { VC_CIPHER_NULL = 0, VC_CIPHER_XTS = 1, VC_CIPHER_GCM = 2 } vc_cipher;

/* A GCM format-2 session, begun by the Python side (volumed.volume.gcmstore.GcmStore's session
 * start: the note read, doubtful ranges, their resolution past 64, the first reservation, all
 * durable) and continued here. The header's varying fields are rendered into templates made by
 * volumed.volume.gcmformat.header_templates: \x01D doubtful, \x01F nonce_flushed, \x01R
 * nonce_reserved, \x01M the MAC (quoted base64; only in hdr_tmpl). */
typedef struct {
    const unsigned char *meta_key, *note_key, *mac_key; /* 32 bytes each; copied to locked memory */
    const unsigned char *uuid;   /* 16 bytes: HKDF salt of the subkeys, AAD */
    const unsigned char *salt;   /* 16 bytes: this session's salt */
    uint64_t next, reserved, flushed, seqid, note_seq;
    uint64_t reserve_chunk;      /* counters per reservation (gcmstore.RESERVE_CHUNK, 2^20) */
    uint64_t nonce_limit;        /* the last counter ever used (gcmstore.NONCE_LIMIT, 2^63-1) */
    const uint64_t *doubtful;    /* ndoubtful (lo, hi] pairs */
    size_t ndoubtful;
    const char *mac_tmpl, *hdr_tmpl; /* NUL-terminated */
} vc_gcm_session;

typedef struct {
    int fd;                   /* the backing file, read-write; the core keeps its own dup */
    int journal_fd;           /* -1, or the power-loss recorder's undo journal (O_APPEND; dup'd):
                                 the RecordingBackingFile record format and semantics. Set it
                                 explicitly: 0 is a descriptor. */
    vc_cipher cipher;
    const unsigned char *key; /* XTS: 64 bytes (halves must differ), copied into locked memory;
                                 the caller wipes its copy. NULL for the null cipher. */
    size_t key_len;
    uint64_t data_offset;     /* byte offset of sector 0 in the backing file */
    uint64_t size;            /* volume bytes, a multiple of sector_size */
    uint32_t sector_size;     /* 4096 (a multiple of 512) */
    const char *name;         /* the volume's path, for messages (copied) */
    int history_fd;           /* -1, or (with journal_fd) a second, append-only copy of every journal
                                 record that flushes do not empty: the fault layer's memory of each
                                 page's previous image (rollback). Emptied whenever it would pass
                                 history_max_bytes (0: no history, whatever history_fd says). */
    uint64_t history_max_bytes;
    const vc_gcm_session *gcm; /* VC_CIPHER_GCM only (key: the 32-byte data key) */
} vc_config;

/* A new core with one reference. 0, or a negative code (VC_E_RANGE for a bad config, -errno). */
int vc_open(const vc_config *cfg, vcore **out);

uint32_t vc_sector_size(const vcore *c);

/* Simulated power loss (the fault layer): waits for requests in flight (the barrier), then every
 * later backing call fails with -err until the core is closed. */
void vc_fail_backing(vcore *c, int err);

/* Grow the volume (under the barrier: no request in flight). VC_E_RANGE if smaller or unaligned.
 * The caller has grown the backing file and written the new header first. */
int vc_set_size(vcore *c, uint64_t size);

/* The records of sectors [first, first+n) as stored (XTS ciphertext; null: the bytes), n*ss bytes
 * into out; present[i] = 0 for a hole (an all-zero sector). No lock taken: the caller holds the
 * volume still. VC_E_KEY once the key was wiped. */
int vc_read_records(vcore *c, uint64_t first, size_t n, unsigned char *out, unsigned char *present);

/* Sectors [first, first+n) as a standard LUKS2 reader expects them (n*ss bytes into out): the stored
 * ciphertext, and for a hole the encryption of zeros (XTS; null: the bytes). Takes the range lock.
 * For exporting a volume to a plain LUKS2 image. */
int vc_read_sealed(vcore *c, uint64_t first, size_t n, unsigned char *out);

/* Bytes of one raw record (vc_read_records, vc_capture_read): the sector size, or for GCM
 * salt (16) + nonce (12) + tag (16) + the slot's data page. */
size_t vc_record_size(const vcore *c);

/* The clean end of a session under the barrier: flush, then (GCM) record in the header that no
 * reserved counter is outstanding. The key stays; the caller wipes it. */
int vc_close_clean(vcore *c);

/* What a dying process does (the crash tests): wipe the key with no bookkeeping I/O. (vc_wipe_key
 * first records a clean GCM session when nothing was written since the last flush.) */
void vc_kill(vcore *c);

/* GCM: grow to size under the barrier: seal the new groups' metadata pages, extend the file,
 * then write the header rendered from the new templates. VC_E_STATE for another format. */
int vc_gcm_grow(vcore *c, uint64_t size, const char *mac_tmpl, const char *hdr_tmpl);

/* GCM: the header state the core keeps (seqid, nonce_reserved, nonce_flushed, next counter). */
int vc_gcm_state(vcore *c, uint64_t out[4]);

/* Capture session (volumed.volume.records.CaptureSession's contract): vc_capture_begin, under the
 * barrier, flushes and opens the session (VC_E_STATE if one is open); from then on every write or
 * discard first preserves, under the range lock it holds, the old records of the sectors it changes
 * that the copier has not passed (at most max_kept_bytes held; past it the session fails, never the
 * write). vc_capture_read returns the records as they were at the barrier for consecutive ranges
 * from sector 0 (VC_E_STATE with vc_last_error's reason if the session failed, VC_E_RANGE if not
 * consecutive). vc_capture_end closes it and frees what it holds. */
typedef struct {
    uint64_t captured;   /* sectors preserved before a write */
    uint64_t peak_kept;  /* most records held at once */
    uint64_t kept_bytes; /* bytes held now */
    int failed;
} vc_capture_stats;

int vc_capture_begin(vcore *c, uint64_t max_kept_bytes);
int vc_capture_read(vcore *c, uint64_t first, size_t n, unsigned char *out, unsigned char *present);
int vc_capture_stats_get(vcore *c, vc_capture_stats *st); /* VC_E_STATE if no session */
void vc_capture_end(vcore *c);

/* The calling thread's wait hook (the FUSE engine's CPU slots, fuse_engine.c "CPU slots and I/O
 * depth"): while one is set on a thread, that thread's backing reads first try the page cache
 * alone (preadv2 RWF_NOWAIT) and call fn(ctx) only before a read that must wait for the disk; a
 * backing fdatasync or durable write calls it first always. fn must not block and must not call
 * the core. NULL clears it. Threads with no hook (the Python face, the tests) read as before. */
void vc_set_wait_hook(void (*fn)(void *ctx), void *ctx);

#endif
