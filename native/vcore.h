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

#endif
